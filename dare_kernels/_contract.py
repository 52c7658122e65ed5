"""The ops' contract below the router: fake (meta) shapes and the one backward
formula of each op, registered for the compiled ops and the Triton ops alike.

Every backend module imports this one; it imports no backend. Adding an op is:
its schema (csrc/ops.cpp), its check (_check.py), its reference (reference.py),
a fake and a backward here, one file per backend and a row in each backend's
table entry (backends.py)."""
from __future__ import annotations

import torch

from . import _library
from ._check import check_embedding_inputs, check_inputs, jagged_positions, output_shape


def _empty_outputs(query, shape):
    return (query.new_empty(shape, dtype=torch.float32), query.new_empty(shape, dtype=torch.int64))


# ---------------------------------------------------------------------------
# topk_attention(query, keys, k, lengths, scale)

KEYS_BACKWARD_OP = "dare::topk_attention_backward"


def topk_attention_backward(grad: torch.Tensor, query: torch.Tensor, keys: torch.Tensor,
                            indices: torch.Tensor, scale: float,
                            need_query: bool = True, need_keys: bool = True, offsets=None):
    """Gradients of the selected scores, in one call of dare::topk_attention_backward.
    Touches only the B·T·k selected keys: no B×L intermediate (grad_keys is dense
    because keys are). With offsets, keys are jagged (N, d) and indices count from
    each row's start. Float8 keys take no gradient."""
    need_keys = need_keys and keys.dtype != torch.float8_e4m3fn
    op = torch.ops.dare.topk_attention_backward if _library.loaded else keys_backward_formula
    gq, gk = op(grad, query, keys, indices, scale, offsets, need_keys)
    return (gq if need_query else None), (gk if need_keys else None)


def keys_backward_formula(grad, query, keys, indices, scale=1.0, offsets=None, need_keys=True):
    """dare::topk_attention_backward's contract in PyTorch ops (its CUDA kernel
    where neither the library nor Triton's takes the case): (grad_query,
    grad_keys), grad_keys empty without need_keys or for float8 keys."""
    B = query.shape[0]
    d = keys.shape[-1]
    T = query.shape[1] if query.dim() == 3 else 1
    k = indices.shape[-1]
    idx = indices.reshape(B, T * k)
    valid = idx >= 0
    g = torch.where(valid, grad.reshape(B, T * k).float() * scale, 0.0)
    if offsets is not None:
        if keys.shape[0] == 0:  # no history at all: nothing was selected
            return torch.zeros_like(query), (torch.zeros_like(keys) if need_keys else keys.new_empty(0))
        rows = jagged_positions(offsets, idx, keys.shape[0])  # into the N values (padding: zeroed below)
    grad_keys = keys.new_empty(0)
    fp8 = keys.dtype == torch.float8_e4m3fn  # quantised keys take no gradient
    need_keys = need_keys and not fp8
    if offsets is not None:
        sel = keys[rows.reshape(-1)].reshape(B, T * k, d).float()
    else:
        src = keys.view(torch.uint8) if fp8 else keys  # no gather kernel for float8
        sel = src.gather(1, idx.clamp(min=0)[..., None].expand(B, T * k, d))
        sel = (sel.view(keys.dtype) if fp8 else sel).float()
    sel = torch.where(valid[..., None], sel, 0.0)
    grad_query = torch.einsum("btk,btkd->btd", g.view(B, T, k), sel.view(B, T, k, d))
    grad_query = grad_query.reshape(query.shape).to(query.dtype)
    if need_keys:
        src = g.view(B, T, k, 1) * query.reshape(B, T, 1, d).float()
        src = torch.where(valid[..., None], src.reshape(B, T * k, d), 0.0)
        if offsets is not None:
            # Rows may overlap (offsets are the caller's): float32 sums, rounded once.
            acc = torch.zeros(keys.shape, dtype=torch.float32, device=keys.device)
            return grad_query, acc.index_add_(0, rows.reshape(-1), src.reshape(-1, d)).to(keys.dtype)
        # With one target a row selects each position at most once: nothing
        # accumulates (padding adds zeros), so the dense B×L×d gradient is built
        # in the keys' dtype, rounded once, as float32 accumulation would give,
        # at a fraction of the memory traffic for 16-bit keys. Several targets
        # may select one key: those sums stay in float32.
        acc = keys.dtype if T == 1 else torch.float32
        grad_keys = torch.zeros(keys.shape, dtype=acc, device=keys.device)
        gather_idx = idx.clamp(min=0)[..., None].expand(B, T * k, d)
        grad_keys = grad_keys.scatter_add_(1, gather_idx, src.to(acc)).to(keys.dtype)
    return grad_query, grad_keys


def _fake_keys_backward(grad, query, keys, indices, scale=1.0, offsets=None, need_keys=True):
    keep = need_keys and keys.dtype != torch.float8_e4m3fn
    return query.new_empty(query.shape), keys.new_empty(keys.shape if keep else (0,))


def _fake(query, keys, k, lengths=None, scale=1.0, mask=None, offsets=None):
    s = check_inputs(query, keys, k, lengths, check_length_values=False, mask=mask, offsets=offsets)
    return _empty_outputs(query, output_shape(s, k))


def _setup_context(ctx, inputs, output):
    query, keys, _k, _lengths, scale, *layout = inputs
    offsets = layout[1] if len(layout) > 1 else None
    ctx.save_for_backward(query, keys, output[1], offsets)
    ctx.scale = scale


def _backward(ctx, grad_scores, _grad_indices):
    query, keys, indices, offsets = ctx.saved_tensors
    gq, gk = topk_attention_backward(grad_scores, query, keys, indices, ctx.scale,
                                     ctx.needs_input_grad[0], ctx.needs_input_grad[1], offsets)
    return (gq, gk) + (None,) * (len(ctx.needs_input_grad) - 2)


# ---------------------------------------------------------------------------
# topk_attention_embedding(query, tables, ids, k, lengths, scale, mask, offsets, sparse)

def behaviour_ids(ids: torch.Tensor, B: int) -> torch.Tensor:
    """A field's ids as (B, L): (L,) ids are shared by every row (a stride-0 view)."""
    return ids.expand(B, ids.shape[-1]) if ids.dim() == 1 else ids


def selected_rows(ids: torch.Tensor, idx: torch.Tensor, n_rows: int, offsets=None):
    """(rows, ok): the table rows of the selected positions idx (B, n) (-1: padding)
    and which of them are real and in range (others read as row 0, contribute nothing).
    With offsets, ids are jagged values (N,) and idx counts from each row's start."""
    B = idx.shape[0]
    if offsets is not None:
        N = ids.shape[0]
        rows = ids[jagged_positions(offsets, idx, N)].long() if N > 0 else torch.zeros_like(idx)
    else:
        rows = behaviour_ids(ids, B).gather(1, idx.clamp(min=0)).long()
    ok = (idx >= 0) & (rows >= 0) & (rows < n_rows)
    return torch.where(ok, rows, 0), ok


def per_slot(device) -> bool:
    """Whether sparse table gradients on `device` keep one entry per selected slot:
    on a GPU, yes (uncoalesced, B·T·k rows a table: no host synchronisation, so
    the backward can be captured in a CUDA graph); elsewhere they are coalesced."""
    return torch.device(device).type == "cuda"


def slot_rows(rows: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Per-slot rows where a padding slot (not ok) repeats the first real slot's row
    (its value is zero, so coalesce() still sums to exactly the touched rows); with
    no real slot in the whole batch, row 0. Device-side: no synchronisation."""
    if rows.numel() == 0:
        return rows
    first = ok.to(torch.uint8).argmax().view(1)  # index ops, not t[i]: no .item()
    return torch.where(ok, rows, torch.where(ok.index_select(0, first), rows.index_select(0, first), 0))


def table_gradient(rows: torch.Tensor, values: torch.Tensor, n_rows: int, dtype: torch.dtype,
                   sparse: bool = False, ok=None, slots: bool = False) -> torch.Tensor:
    """The gradient of an (n_rows, d) table of `dtype` whose row rows[i] received
    values[i] (float32 or float64, where ok[i]): duplicate rows sum in that
    precision and are rounded once to dtype. Dense, as nn.Embedding's; or, with
    sparse, a coalesced sparse COO tensor of the touched rows alone, as
    nn.Embedding(sparse=True)'s after coalesce() (the sparse optimisers' input;
    building it reads nnz on the host: a synchronisation on a GPU); or, with
    sparse and slots, an uncoalesced one with an entry per slot (slot_rows), each
    value rounded to dtype, summed in float32 by coalesce() or the optimiser."""
    d = values.shape[-1]
    if not sparse:
        if ok is not None:
            values = torch.where(ok[:, None], values, 0.0)
        return values.new_zeros(n_rows, d).index_add_(0, rows, values).to(dtype)
    if slots:
        if ok is not None:
            rows, values = slot_rows(rows, ok), torch.where(ok[:, None], values, 0.0)
        return torch.sparse_coo_tensor(rows[None], values.to(dtype), (n_rows, d), is_coalesced=False,
                                       check_invariants=False)
    if ok is not None:
        rows, values = rows[ok], values[ok]
    g = torch.sparse_coo_tensor(rows[None], values, (n_rows, d), check_invariants=False).coalesce()
    if g.dtype == dtype:
        return g
    return torch.sparse_coo_tensor(g.indices(), g.values().to(dtype), (n_rows, d), is_coalesced=True,
                                   check_invariants=False)


BACKWARD_OP = "dare::topk_attention_embedding_backward"


def backward_formula(grad, query, tables, ids, indices, scale=1.0, offsets=None, sparse=False, need_tables=True):
    """dare::topk_attention_embedding_backward's contract in PyTorch ops: the
    op's CUDA kernel where the library has none and Triton does not take it
    (backends.register_backward), and the function itself where no library loads.
    (grad_query, rows, values): per table, with sparse the touched rows (ascending)
    and their gradients, on a GPU one row and value per slot (per_slot), else no
    rows and the dense gradient. Only the B·T·k selected behaviours are read (no
    B×L tensor)."""
    slots = sparse and per_slot(query.device)
    B = query.shape[0]
    T = query.shape[1] if query.dim() == 3 else 1
    k = indices.shape[-1]
    idx = indices.reshape(B, T * k)
    g = torch.where(idx >= 0, grad.reshape(B, T * k).float() * scale, 0.0)  # (B, T*k)
    q = query.reshape(B, T, query.shape[-1]).float()
    grad_q, rows_out, values_out, off = [], [], [], 0
    for table, field_ids in zip(tables, ids):
        n, d = table.shape
        rows, ok = selected_rows(field_ids, idx, n, offsets)
        gf = torch.where(ok, g, 0.0)
        sel = table[rows].float()  # (B, T*k, d)
        grad_q.append(torch.einsum("btk,btkd->btd", gf.view(B, T, k), sel.view(B, T, k, d)))
        if need_tables:
            src = gf.view(B, T, k, 1) * q[..., off:off + d].reshape(B, T, 1, d)
            gt = table_gradient(rows.reshape(-1), src.reshape(-1, d), n, table.dtype, sparse,
                                ok.reshape(-1) if sparse else None, slots)
            rows_out.append(gt._indices()[0] if sparse else rows.new_empty(0))
            values_out.append(gt._values() if sparse else gt)
        off += d
    return torch.cat(grad_q, -1).reshape(query.shape).to(query.dtype), rows_out, values_out


def topk_attention_embedding_backward(grad: torch.Tensor, query: torch.Tensor, tables, ids,
                                      indices: torch.Tensor, scale: float,
                                      need_query: bool = True, need_tables: bool = True, offsets=None,
                                      sparse: bool = False):
    """Gradients of the selected scores w.r.t. the query and the tables, in one
    call of dare::topk_attention_embedding_backward. Only the B·T·k selected
    behaviours are touched: a table's gradient is dense, like nn.Embedding's, or
    with sparse a sparse COO tensor of the selected rows (float32 accumulation
    either way: duplicate ids sum exactly as index_add does): coalesced, or on a GPU
    one entry per slot (per_slot: no host synchronisation, CUDA-graph capturable)."""
    op = torch.ops.dare.topk_attention_embedding_backward if _library.loaded else backward_formula
    gq, rows, values = op(grad, query, list(tables), list(ids), indices, scale, offsets, sparse, need_tables)
    if not need_tables:
        return (gq if need_query else None), None
    if sparse:
        coalesced = not per_slot(query.device)
        values = [torch.sparse_coo_tensor(r[None], v, t.shape, is_coalesced=coalesced, check_invariants=False)
                  for r, v, t in zip(rows, values, tables)]
    return (gq if need_query else None), list(values)


def _fake_backward(grad, query, tables, ids, indices, scale=1.0, offsets=None, sparse=False, need_tables=True):
    rows, values = [], []
    if need_tables:
        for t in tables:
            if not sparse:
                n = 0
            elif per_slot(query.device):
                n = indices.numel()
            else:
                n = torch.library.get_ctx().new_dynamic_size()
            rows.append(t.new_empty(n, dtype=torch.int64))
            values.append(t.new_empty(n if sparse else t.shape[0], t.shape[1]))
    return query.new_empty(query.shape), rows, values


def _fake_embedding(query, tables, ids, k, lengths=None, scale=1.0, mask=None, offsets=None, sparse=False):
    s = check_embedding_inputs(query, tables, ids, k, lengths, check_values=False, scale=scale,
                               mask=mask, offsets=offsets)
    return _empty_outputs(query, output_shape(s, k))


def _setup_context_embedding(ctx, inputs, output):
    query, tables, ids, _k, _lengths, scale, *layout = inputs
    offsets = layout[1] if len(layout) > 1 else None
    ctx.sparse = bool(layout[2]) if len(layout) > 2 else False
    ctx.n_fields = len(tables)
    ctx.save_for_backward(query, output[1], offsets, *tables, *ids)
    ctx.scale = scale


def _backward_embedding(ctx, grad_scores, _grad_indices):
    query, indices, offsets, *rest = ctx.saved_tensors
    F = ctx.n_fields
    tables, ids = rest[:F], rest[F:]
    need_tables = ctx.needs_input_grad[1]
    need_tables = any(need_tables) if isinstance(need_tables, (list, tuple)) else bool(need_tables)
    gq, gt = topk_attention_embedding_backward(grad_scores, query, tables, ids, indices, ctx.scale,
                                               ctx.needs_input_grad[0], need_tables, offsets, ctx.sparse)
    return _fit_inputs(ctx, (gq, gt if gt is not None else [None] * F, [None] * F) + (None,) * 6)


def _fit_inputs(ctx, grads: tuple) -> tuple:
    """One gradient per argument the op was called with: the dispatcher drops
    trailing arguments equal to their defaults (lengths=None, scale=1.0), and
    torch 2.11's Tensor[] autograd wrapper (the GPU machine's) checks the
    returned structure against the arguments it saw; 2.14 accepts either count.
    ctx.needs_input_grad has that structure (lists for the Tensor[] arguments)."""
    seen = ctx.needs_input_grad
    if not any(isinstance(x, (list, tuple)) for x in seen):
        return grads
    n = len(seen)
    return tuple(grads[:n]) + (None,) * (n - len(grads))


# ---------------------------------------------------------------------------

_AUTOGRAD = {
    "topk_attention": (_backward, _setup_context),
    "topk_attention_embedding": (_backward_embedding, _setup_context_embedding),
}
FAKES = {"topk_attention": _fake, "topk_attention_embedding": _fake_embedding}


def register_autograd(qualname: str, op: str):
    """The one backward formula of `op`, for the compiled op and the Triton op alike."""
    backward, setup = _AUTOGRAD[op]
    torch.library.register_autograd(qualname, backward, setup_context=setup)


def register_compiled():
    """Fake of the compiled library's ops (dare::<op>); their autograd is the
    library's own (csrc/autograd.cpp: the same formula, without the Python
    wrapper's host time), this one where a library built before it has none."""
    for op, fake in FAKES.items():
        torch.library.register_fake(f"dare::{op}", fake)
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"dare::{op}", "Autograd"):
            register_autograd(f"dare::{op}", op)
    torch.library.register_fake(BACKWARD_OP, _fake_backward)
    torch.library.register_fake(KEYS_BACKWARD_OP, _fake_keys_backward)
    torch.library.register_fake("dare::row_adam_", lambda *args: None)  # in place, no outputs
