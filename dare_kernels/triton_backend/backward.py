"""topk_attention_embedding's backward on the GPU: one kernel for every field
together, plus the tables' gradients in the form asked for: per slot (the GPU's
sparse form, _contract.per_slot: one row and value per selected slot, no host
synchronisation), dense (float32 sums in the kernel, rounded once), or
coalesced (sparse off the GPU: two host synchronisations, the number of touched
rows sets the shapes).

The kernel reads, per target row, its k selected positions: it looks up each
field's id (jagged rows and shared ids as the forward reads them) and adds
g * table[id] to the query's gradient. Sparse: it writes each entry's row
(base + id; `sentinel`, past every table, where the entry is padding or its id
is out of range) and its gradient row g * q[field's columns] into the field's
own buffers (the op's outputs: no two alias). Dense: it adds that row into a
zeroed float32 buffer of the table's shape (atomics). Per slot: padding entries take a real
slot's row (value zero), as _contract.slot_rows. Coalesced: a sort-based unique
per field, one index_add of its entries into their rows (float32: duplicates sum
exactly as index_add does). _contract.backward_formula is the same in PyTorch ops,
and the query's gradient is the same whichever form the tables' take."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _field(table, ids, n, d, sib, sil, off, b, pos, ok_pos, g, q_row, D, r, K, base, sentinel, rows_out,
           vals_out, grad_q, kk, DB: tl.constexpr, NEED_TABLES: tl.constexpr, DENSE: tl.constexpr):
    i = tl.load(ids + b * sib + pos * sil, mask=ok_pos, other=-1).to(tl.int64)
    ok = ok_pos & (i >= 0) & (i < n)
    c = tl.arange(0, DB)
    cm = c < d
    x = tl.load(table + tl.where(ok, i, 0)[:, None] * d + c[None, :], mask=ok[:, None] & cm[None, :],
                other=0.0).to(tl.float32)
    gf = tl.where(ok, g, 0.0)
    tl.store(grad_q + r * D + off + c, tl.sum(gf[:, None] * x, axis=0), mask=cm)
    if NEED_TABLES:
        q = tl.load(q_row + off + c, mask=cm, other=0.0)
        v = gf[:, None] * q[None, :]
        if DENSE:
            tl.atomic_add(vals_out + tl.where(ok, i, 0)[:, None] * d + c[None, :], v,
                          mask=ok[:, None] & cm[None, :], sem="relaxed")
        else:
            e = r * K + kk
            tl.store(rows_out + e, tl.where(ok, base + i, sentinel), mask=kk < K)
            tl.store(vals_out + e[:, None] * d + c[None, :], v, mask=(kk < K)[:, None] & cm[None, :])


@triton.jit
def _backward_kernel(grad, idx, Q, starts, grad_q,
                     t0, i0, r0, v0, t1, i1, r1, v1, t2, i2, r2, v2, t3, i3, r3, v3,
                     n0, d0, sib0, sil0, off0, base0,
                     n1, d1, sib1, sil1, off1, base1,
                     n2, d2, sib2, sil2, off2, base2,
                     n3, d3, sib3, sil3, off3, base3,
                     T, K, D, N, scale, sentinel,
                     F: tl.constexpr, JAGGED: tl.constexpr, BK: tl.constexpr,
                     DB0: tl.constexpr, DB1: tl.constexpr, DB2: tl.constexpr, DB3: tl.constexpr,
                     NEED_TABLES: tl.constexpr, DENSE: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    b = r // T
    kk = tl.arange(0, BK)
    j = tl.load(idx + r * K + kk, mask=kk < K, other=-1)
    ok_pos = j >= 0
    g = tl.where(ok_pos, tl.load(grad + r * K + kk, mask=kk < K, other=0.0) * scale, 0.0)
    if JAGGED:
        pos = tl.minimum(tl.load(starts + b) + tl.maximum(j, 0), tl.maximum(N - 1, 0))
        bb = 0
    else:
        pos = tl.maximum(j, 0)
        bb = b
    q_row = Q + r * D
    _field(t0, i0, n0, d0, sib0, sil0, off0, bb, pos, ok_pos, g, q_row, D, r, K, base0, sentinel,
           r0, v0, grad_q, kk, DB0, NEED_TABLES, DENSE)
    if F > 1:
        _field(t1, i1, n1, d1, sib1, sil1, off1, bb, pos, ok_pos, g, q_row, D, r, K, base1, sentinel,
               r1, v1, grad_q, kk, DB1, NEED_TABLES, DENSE)
    if F > 2:
        _field(t2, i2, n2, d2, sib2, sil2, off2, bb, pos, ok_pos, g, q_row, D, r, K, base2, sentinel,
               r2, v2, grad_q, kk, DB2, NEED_TABLES, DENSE)
    if F > 3:
        _field(t3, i3, n3, d3, sib3, sil3, off3, bb, pos, ok_pos, g, q_row, D, r, K, base3, sentinel,
               r3, v3, grad_q, kk, DB3, NEED_TABLES, DENSE)


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def embedding_backward(grad, query, tables, ids, indices, scale=1.0, offsets=None, sparse=False, need_tables=True,
                       slots=None):
    """(grad_query, rows, values) as dare::topk_attention_embedding_backward
    returns them. Per table: sparse, its touched rows (ascending) and their
    gradients (float32 sums rounded once to the table's dtype), or with slots
    (None: on a GPU) one row and value (in the table's dtype) per selected slot;
    dense, no rows and the gradient (float32 sums rounded once)."""
    from .._contract import per_slot, slot_rows
    slots = sparse and (per_slot(query.device) if slots is None else slots)
    B = query.shape[0]
    T = query.shape[1] if query.dim() == 3 else 1
    K = indices.shape[-1]
    D = query.shape[-1]
    R = B * T
    F = len(tables)
    device = query.device
    tables = [t.contiguous() for t in tables]
    grad_q = torch.empty(R, D, dtype=torch.float32, device=device)
    entries = R * K
    # Field f's rows are bases[f] + id (distinct across fields); sentinel, past every table, marks padding.
    bases = [sum(t.shape[0] for t in tables[:f]) for f in range(F)]
    sentinel = sum(t.shape[0] for t in tables)
    dense = need_tables and not sparse
    if dense:
        rows = [grad_q] * F  # not written
        vals = [torch.zeros(t.shape, dtype=torch.float32, device=device) for t in tables]
    elif need_tables:
        rows = [torch.empty(max(entries, 1), dtype=torch.int64, device=device) for _ in tables]
        vals = [torch.empty(max(entries, 1), t.shape[1], dtype=torch.float32, device=device) for t in tables]
    else:
        rows = vals = [grad_q] * F
    if R > 0:
        Q = query.reshape(R, D).float().contiguous()
        starts = offsets.long()[:-1].clamp(0, ids[0].shape[0]) if offsets is not None else grad_q
        meta, off = [], 0
        for t, i, base in zip(tables, ids, bases):
            sib, sil = (0, i.stride(0)) if i.dim() == 1 else (i.stride(0), i.stride(1))
            meta += [t.shape[0], t.shape[1], sib, sil, off, base]
            off += t.shape[1]
        meta += [1, 1, 0, 0, 0, 0] * (4 - F)
        fields = [(tables[f], ids[f], rows[f], vals[f]) if f < F else (tables[0], ids[0], rows[0], vals[0])
                  for f in range(4)]
        DBs = [_pow2(tables[f].shape[1]) if f < F else 1 for f in range(4)]
        N = ids[0].shape[0] if offsets is not None else 0
        _backward_kernel[(R,)](
            grad.reshape(R, K).float().contiguous(), indices.reshape(R, K).contiguous(), Q, starts, grad_q,
            *(x for field in fields for x in field), *meta, T, K, D, N, float(scale), sentinel,
            F=F, JAGGED=offsets is not None, BK=_pow2(max(K, 1)),
            DB0=DBs[0], DB1=DBs[1], DB2=DBs[2], DB3=DBs[3], NEED_TABLES=need_tables, DENSE=dense, num_warps=4)
    gq = grad_q.reshape(query.shape).to(query.dtype)
    if not need_tables:
        return gq, [], []
    if dense:
        return gq, [rows_empty(device) for _ in tables], [v.to(t.dtype) for v, t in zip(vals, tables)]
    if entries == 0:
        return gq, [rows_empty(device) for _ in tables], [t.new_empty(0, t.shape[1]) for t in tables]
    out_rows, out_values = [], []
    for r, v, t, base in zip(rows, vals, tables, bases):
        if slots:
            out_rows.append(slot_rows(r - base, r != sentinel))
            out_values.append(v.to(t.dtype))
            continue
        uniq, inverse = torch.unique(r, sorted=True, return_inverse=True)
        sums = torch.zeros(uniq.shape[0], t.shape[1], dtype=torch.float32, device=device).index_add_(0, inverse, v)
        real = int((uniq != sentinel).sum())  # the sentinel sorts last
        out_rows.append(uniq[:real] - base)
        out_values.append(sums[:real].to(t.dtype))
    return gq, out_rows, out_values


def rows_empty(device) -> torch.Tensor:
    return torch.empty(0, dtype=torch.int64, device=device)


@triton.jit
def _keys_backward_kernel(grad, idx, query, keys, grad_q, grad_keys, L, K, d, sb, sl, scale,
                          CK: tl.constexpr, BD: tl.constexpr, NEED_KEYS: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BD)
    q = tl.load(query + b * d + c, mask=c < d, other=0.0).to(tl.float32)
    acc = tl.zeros([BD], dtype=tl.float32)
    for k0 in range(0, K, CK):
        kk = k0 + tl.arange(0, CK)
        j = tl.load(idx + b * K + kk, mask=kk < K, other=-1)
        ok = j >= 0
        g = tl.where(ok, tl.load(grad + b * K + kk, mask=kk < K, other=0.0) * scale, 0.0)
        live = ok[:, None] & (c < d)[None, :]
        jj = tl.maximum(j, 0)
        x = tl.load(keys + b * sb + jj[:, None] * sl + c[None, :], mask=live, other=0.0).to(tl.float32)
        acc += tl.sum(g[:, None] * x, axis=0)
        if NEED_KEYS:
            out = grad_keys + b * L * d + jj[:, None] * d + c[None, :]
            tl.store(out, (g[:, None] * q[None, :]).to(grad_keys.dtype.element_ty), mask=live)
    tl.store(grad_q + b * d + c, acc, mask=c < d)


def keys_backward(grad, query, keys, indices, scale=1.0, need_keys=True):
    """(grad_query, grad_keys) as dare::topk_attention_backward returns them, for one
    target per row and padded keys whose last dim is contiguous: a row selects each
    of its positions at most once, so every selected key's gradient row is written
    once, rounded once, into the zero-filled gradient (one fill and one launch)."""
    B, K = indices.shape
    L, d = keys.shape[1], keys.shape[2]
    grad_q = torch.empty(B, d, dtype=torch.float32, device=query.device)
    grad_keys = torch.zeros(keys.shape, dtype=keys.dtype, device=keys.device) if need_keys else keys.new_empty(0)
    if B > 0 and K > 0:
        bd = _pow2(d)
        _keys_backward_kernel[(B,)](grad.float().contiguous(), indices.contiguous(), query.contiguous(), keys,
                                    grad_q, grad_keys, L, K, d, keys.stride(0), keys.stride(1), float(scale),
                                    CK=max(16, min(_pow2(K), 4096 // bd)), BD=bd, NEED_KEYS=need_keys, num_warps=4)
    else:
        grad_q.zero_()
    return grad_q.to(query.dtype), grad_keys
