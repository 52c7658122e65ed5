"""Pure-PyTorch implementation of the contract: the oracle of the tests (with
acc_dtype=torch.float64) and the fallback backend on any device. It builds the
full B×L score matrix, which the fused kernels exist to avoid."""
from __future__ import annotations

from typing import Optional

import torch

from ._contract import table_gradient
from ._check import check_embedding_inputs, check_inputs, jagged_positions, jagged_rows, valid_positions


def _scores(q: torch.Tensor, keys: torch.Tensor, scale: float, acc_dtype: torch.dtype) -> torch.Tensor:
    """(B, T, L) scores of q (B, T, d) against keys (B, L, d): for every key the
    same sum, q[0]·x[0] + q[1]·x[1] + ... in order, one elementwise step per dim.
    A matmul (einsum) blocks the positions and rounds one key differently at
    different positions (CPU, float32: 60-80% of rows of 299 copies of one key
    held unequal scores), so identical keys would not tie."""
    kt = keys.to(acc_dtype).transpose(1, 2).contiguous()  # (B, d, L): each dim's values contiguous
    qa = q.to(acc_dtype)
    acc = qa[:, :, 0, None] * kt[:, None, 0, :]
    for c in range(1, q.shape[-1]):
        acc += qa[:, :, c, None] * kt[:, None, c, :]
    # -0.0 and +0.0 are one score (ordered by position, like every tie).
    return acc * scale + 0.0


class _Values(torch.autograd.Function):
    """The selected scores' values, with the gradient of `live` (the same scores
    recomputed differentiably from the selected keys)."""

    @staticmethod
    def forward(ctx, values, live):
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        return None, grad


def padded_rows(offsets: torch.Tensor, N: int, k: int):
    """Jagged rows as padded ones: (index (B, Lp) into the N values, lengths (B,)),
    Lp = max(longest row, k). Reads the offsets on the host. Offsets out of order
    or range are clamped as the CUDA kernels clamp them: start = clamp(offsets[b],
    0, N), end = clamp(offsets[b+1], start, N)."""
    start, end = jagged_rows(offsets, N)
    lengths = end - start
    Lp = max(int(lengths.max()) if lengths.numel() else 0, k)
    return jagged_positions(offsets, torch.arange(Lp, device=start.device).expand(len(start), Lp), N), lengths


def topk_attention(query: torch.Tensor, keys: torch.Tensor, k: int,
                   lengths: Optional[torch.Tensor] = None, scale: float = 1.0,
                   mask: Optional[torch.Tensor] = None, offsets: Optional[torch.Tensor] = None, *,
                   acc_dtype: torch.dtype = torch.float32,
                   check_length_values: Optional[bool] = None):
    """Differentiable w.r.t. query and keys, through the selected keys only."""
    if check_length_values is None:
        check_length_values = keys.device.type == "cpu"
    s = check_inputs(query, keys, k, lengths, check_length_values=check_length_values, scale=scale,
                     mask=mask, offsets=offsets)
    if keys.dtype == torch.float8_e4m3fn:
        keys = keys.detach()  # the contract: no gradient reaches fp8 keys
    if offsets is not None:
        index, lengths = padded_rows(offsets, s.L, k)
        padded = keys[index] if s.L > 0 else keys.new_zeros(s.B, index.shape[1], s.d)
        return topk_attention(query, padded, k, lengths, scale, acc_dtype=acc_dtype, check_length_values=False)
    return _search(query, keys, k, s, lengths, scale, mask, acc_dtype,
                   keys.requires_grad, lambda flat, ok: keys.to(acc_dtype).gather(1, flat[..., None].expand(-1, -1, s.d)))


def _search(query, keys, k: int, s, lengths, scale: float, mask, acc_dtype: torch.dtype,
            keys_need_grad: bool, selected):
    """The search over checked, padded keys (B, L, d). selected(flat, ok) gives
    the selected keys (B, T*k, d) in acc_dtype, differentiably, from their
    positions flat (B, T*k) (clamped to >= 0) and which of them are real, ok."""
    q = query.reshape(s.B, s.T, s.d)
    with torch.no_grad():
        scores = _scores(q, keys, scale, acc_dtype)
    valid = valid_positions(s.B, s.L, lengths, mask)
    if valid is None:
        valid = torch.ones(s.B, s.L, dtype=torch.bool, device=keys.device)
    # Stable descending sort: equal scores keep ascending position, NaN first;
    # positions that take no part sort after every real score (-inf included).
    rank = torch.where(valid[:, None, :], 0, 1).expand(s.B, s.T, s.L)
    order = torch.sort(scores.masked_fill(~valid[:, None, :], float("-inf")), dim=-1, descending=True,
                       stable=True).indices
    order = order.gather(-1, torch.sort(rank.gather(-1, order), dim=-1, stable=True).indices)[..., :k]
    top = scores.gather(-1, order)
    ok = valid[:, None, :].expand(s.B, s.T, s.L).gather(-1, order)
    if torch.is_grad_enabled() and (query.requires_grad or keys_need_grad):
        # Gathered in acc_dtype: a key that several targets select sums its gradients in
        # acc_dtype, rounded once to the keys' dtype. A short row's padding slots hold keys
        # that take no part (NaN in masked layouts): zeroed, or 0 * NaN reaches the query.
        flat_ok = ok.reshape(s.B, s.T * k)
        sel = selected(order.reshape(s.B, s.T * k), flat_ok)
        sel = sel.masked_fill(~flat_ok[..., None], 0.0)
        live = torch.einsum("btd,btkd->btk", q.to(acc_dtype), sel.reshape(s.B, s.T, k, s.d)) * scale
        top = _Values.apply(top, live)
    top = top.to(torch.float32 if acc_dtype != torch.float64 else acc_dtype)
    top = top.masked_fill(~ok, float("-inf"))
    idx = order.masked_fill(~ok, -1)
    if not s.multi_target:
        top, idx = top[:, 0], idx[:, 0]
    return top, idx


class _Rows(torch.autograd.Function):
    """table[index] in acc_dtype. The table's gradient sums in acc_dtype and is
    rounded once to the table's dtype (the contract's float32 accumulation,
    whatever the table's dtype), over the rows where `touched`: dense, or with
    sparse the coalesced sparse COO tensor of those rows."""

    @staticmethod
    def forward(ctx, table, index, touched, acc_dtype, sparse):
        ctx.save_for_backward(index, touched)
        ctx.shape, ctx.dtype, ctx.sparse = table.shape, table.dtype, sparse
        return table[index].to(acc_dtype)

    @staticmethod
    def backward(ctx, grad):
        index, touched = ctx.saved_tensors
        n, d = ctx.shape
        g = table_gradient(index.reshape(-1), grad.reshape(-1, d), n, ctx.dtype, ctx.sparse, touched.reshape(-1))
        return g, None, None, None, None


def lookup(tables, ids, B: int) -> torch.Tensor:
    """The (B, L, d) keys of topk_attention_embedding: [tables[0][ids[0]] | ...]."""
    return torch.cat([t[i.expand(B, i.shape[-1]) if i.dim() == 1 else i] for t, i in zip(tables, ids)], -1)


def topk_attention_embedding(query: torch.Tensor, tables, ids, k: int,
                             lengths: Optional[torch.Tensor] = None, scale: float = 1.0,
                             mask: Optional[torch.Tensor] = None, offsets: Optional[torch.Tensor] = None,
                             sparse: bool = False, *,
                             acc_dtype: torch.dtype = torch.float32,
                             check_values: Optional[bool] = None):
    """topk_attention over the keys looked up in acc_dtype. Positions that take no
    part (past a row's length, masked out) are never looked up (their ids may be
    anything). Differentiable w.r.t. query and tables: the tables' gradients sum
    in acc_dtype, dense or (sparse) coalesced sparse COO tensors."""
    if check_values is None:
        check_values = query.device.type == "cpu"
    s = check_embedding_inputs(query, tables, ids, k, lengths, check_values=check_values, scale=scale,
                               mask=mask, offsets=offsets)
    if offsets is not None:
        index, lengths = padded_rows(offsets, s.L, k)
        ids = [i[index] if s.L > 0 else index for i in ids]  # padding positions read value 0 (never used)
        return topk_attention_embedding(query, tables, ids, k, lengths, scale, sparse=sparse, acc_dtype=acc_dtype,
                                        check_values=False)
    if s.B == 0:
        return topk_attention(query, query.new_empty(0, s.L, s.d), k, lengths, scale, mask, acc_dtype=acc_dtype)
    valid = valid_positions(s.B, s.L, lengths, mask)
    safe = list(ids)
    if valid is not None or not check_values:
        # Positions that take no part (and, on GPU, out-of-range ids, which score NaN) read row 0.
        if valid is None:
            valid = torch.ones(s.B, s.L, dtype=torch.bool, device=query.device)
        safe, bad = [], torch.zeros(s.B, s.L, dtype=torch.bool, device=query.device)
        for t, i in zip(tables, ids):
            i = i.expand(s.B, s.L) if i.dim() == 1 else i
            oob = (i < 0) | (i >= t.shape[0])
            bad |= oob & valid
            safe.append(torch.where(valid & ~oob, i, 0))
    safe = [i.expand(s.B, s.L) if i.dim() == 1 else i for i in safe]
    with torch.no_grad():
        keys = lookup(tables, safe, s.B)
        if valid is not None:
            keys = keys.masked_fill(bad[..., None], float("nan"))

    def selected(flat, ok):
        # The selected rows alone, looked up differentiably: only they take a gradient.
        if valid is not None:
            ok = ok & ~bad.gather(1, flat)
        sel = torch.cat([_Rows.apply(t, i.gather(1, flat), ok, acc_dtype, sparse) for t, i in zip(tables, safe)], -1)
        return sel if valid is None else sel.masked_fill(~ok[..., None], float("nan"))

    return _search(query, keys, k, s, lengths, scale, mask, acc_dtype,
                   any(t.requires_grad for t in tables), selected)
