"""The attention's weighted sum over the selected behaviours' representation
rows, every field in one launch each way (the reference models' model.attend on
a GPU): out[r] = [Σ_j w[r, j] · T_f[ids_f[r, j]]]_f over up to 4 fields.

Forward: one program a sum reads its n rows of every field once. Backward: one
program a sum reads them again for the weights' gradient (x · g per selected
row) and writes, for the fields that take sparse rows, each slot's gradient row
w · g (the per-slot sparse gradient, as embedding_bag(sparse=True)'s); the
dense fields' gradients are summed by the caller. In place of three
embedding_bag calls, their per-sample-weights backward, the gathers that feed
it and the per-slot values' index_select and scaling."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _sum_field(table, ids, pad, w, r, kk, live, d, off, out, D, DB: tl.constexpr):
    i = tl.load(ids + kk, mask=live, other=0).to(tl.int64)
    ok = live & (i != pad)  # the padding id adds nothing
    c = tl.arange(0, DB)
    x = tl.load(table + i[:, None] * d + c[None, :], mask=ok[:, None] & (c < d)[None, :], other=0.0)
    tl.store(out + r * D + off + c, tl.sum(w[:, None] * x.to(tl.float32), axis=0), mask=c < d)


@triton.jit
def _forward_kernel(out, w_ptr, t0, i0, t1, i1, t2, i2, t3, i3, d0, d1, d2, d3, o0, o1, o2, o3, p0, p1, p2, p3, K, D,
                    F: tl.constexpr, BK: tl.constexpr, DB0: tl.constexpr, DB1: tl.constexpr, DB2: tl.constexpr,
                    DB3: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    kk = tl.arange(0, BK)
    live = kk < K
    w = tl.load(w_ptr + r * K + kk, mask=live, other=0.0).to(tl.float32)
    _sum_field(t0, i0 + r * K, p0, w, r, kk, live, d0, o0, out, D, DB0)
    if F > 1:
        _sum_field(t1, i1 + r * K, p1, w, r, kk, live, d1, o1, out, D, DB1)
    if F > 2:
        _sum_field(t2, i2 + r * K, p2, w, r, kk, live, d2, o2, out, D, DB2)
    if F > 3:
        _sum_field(t3, i3 + r * K, p3, w, r, kk, live, d3, o3, out, D, DB3)


@triton.jit
def _grad_field(table, ids, pad, w, r, kk, live, d, off, g_row, vals, K, SPARSE: tl.constexpr, DB: tl.constexpr):
    """This field's share of the weights' gradient, (BK,); with SPARSE, each slot's row
    w · g (zero for the padding id, which receives nothing)."""
    i = tl.load(ids + kk, mask=live, other=0).to(tl.int64)
    ok = live & (i != pad)
    c = tl.arange(0, DB)
    cm = c < d
    g = tl.load(g_row + off + c, mask=cm, other=0.0).to(tl.float32)
    x = tl.load(table + i[:, None] * d + c[None, :], mask=ok[:, None] & cm[None, :], other=0.0).to(tl.float32)
    if SPARSE:
        e = r * K + kk
        v = tl.where(ok[:, None], w[:, None] * g[None, :], 0.0)
        tl.store(vals + e[:, None] * d + c[None, :], v, mask=live[:, None] & cm[None, :])
    return tl.sum(x * g[None, :], axis=1)


@triton.jit
def _backward_kernel(grad, w_ptr, grad_w, t0, i0, v0, t1, i1, v1, t2, i2, v2, t3, i3, v3,
                     d0, d1, d2, d3, o0, o1, o2, o3, p0, p1, p2, p3, K, D,
                     F: tl.constexpr, BK: tl.constexpr, S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr,
                     S3: tl.constexpr, DB0: tl.constexpr, DB1: tl.constexpr, DB2: tl.constexpr, DB3: tl.constexpr,
                     NEED_W: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    kk = tl.arange(0, BK)
    live = kk < K
    w = tl.load(w_ptr + r * K + kk, mask=live, other=0.0).to(tl.float32)
    g_row = grad + r * D
    gw = _grad_field(t0, i0 + r * K, p0, w, r, kk, live, d0, o0, g_row, v0, K, S0, DB0)
    if F > 1:
        gw += _grad_field(t1, i1 + r * K, p1, w, r, kk, live, d1, o1, g_row, v1, K, S1, DB1)
    if F > 2:
        gw += _grad_field(t2, i2 + r * K, p2, w, r, kk, live, d2, o2, g_row, v2, K, S2, DB2)
    if F > 3:
        gw += _grad_field(t3, i3 + r * K, p3, w, r, kk, live, d3, o3, g_row, v3, K, S3, DB3)
    if NEED_W:
        tl.store(grad_w + r * K + kk, gw, mask=live)


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _fields(*columns):
    """The kernels' per-field pointer arguments (one column a kind: tables, ids,
    ...), field by field, padded to 4 fields with the first one's."""
    fields = list(zip(*columns))
    return [x for field in fields + fields[:1] * (4 - len(fields)) for x in field]


def _pads(pads):
    return [-1 if p is None else int(p) for p in pads] + [-1] * (4 - len(pads))


def _meta(tables):
    widths = [t.shape[1] for t in tables]
    offs = [sum(widths[:f]) for f in range(len(widths))]
    pad = 4 - len(tables)
    return widths + [1] * pad, offs + [0] * pad, [_pow2(w) for w in widths] + [1] * pad


def bag_forward(tables, ids, weights, pads) -> torch.Tensor:
    """[Σ_j weights[:, j] · tables[f][ids[f][:, j]]]_f, (N, Σ d_f) float32; ids (N, n)
    in range, weights (N, n); pads[f]: field f's padding id (adds nothing), or -1."""
    N, K = weights.shape
    tables = [t.contiguous() for t in tables]  # rows at table + id·d
    D = sum(t.shape[1] for t in tables)
    out = torch.empty(N, D, dtype=torch.float32, device=weights.device)
    if N == 0:
        return out
    if K == 0:
        return out.zero_()
    widths, offs, dbs = _meta(tables)
    _forward_kernel[(N,)](out, weights, *_fields(tables, ids), *widths, *offs, *_pads(pads), K, D,
                          F=len(tables), BK=_pow2(K), DB0=dbs[0], DB1=dbs[1], DB2=dbs[2], DB3=dbs[3], num_warps=4)
    return out


def bag_backward(grad, tables, ids, weights, pads, sparse, need_weights=True):
    """(the weights' gradient (N, n) float32 or None, per field the per-slot
    gradient rows (N·n, d_f) float32 where sparse[f] (zero at the padding id),
    else None)."""
    N, K = weights.shape
    D = grad.shape[1]
    dev = weights.device
    tables = [t.contiguous() for t in tables]
    grad = grad.float().contiguous()
    grad_w = torch.zeros(N, K, dtype=torch.float32, device=dev) if need_weights else grad
    vals = [torch.empty(N * K, t.shape[1], dtype=torch.float32, device=dev) if s else grad
            for t, s in zip(tables, sparse)]
    if N and K:
        widths, offs, dbs = _meta(tables)
        flags = list(sparse) + [False] * (4 - len(tables))
        _backward_kernel[(N,)](grad, weights, grad_w, *_fields(tables, ids, vals), *widths, *offs, *_pads(pads), K, D,
                               F=len(tables), BK=_pow2(K), S0=flags[0], S1=flags[1], S2=flags[2], S3=flags[3],
                               DB0=dbs[0], DB1=dbs[1], DB2=dbs[2], DB3=dbs[3], NEED_W=need_weights, num_warps=4)
    return (grad_w if need_weights else None), [v if s else None for v, s in zip(vals, sparse)]
