"""Triton kernels of the search stage: scores and exact top-k in one pass over the keys.

Every (score, position) pair is packed into one int64 whose descending order is the
contract's order (NaN first, equal scores by ascending position, -0 == +0), so a
selection is a plain integer comparison and every key is distinct. Padding is NEG,
below every real key.

_search_kernel: one program per (row, split). It streams its keys in chunks of C
(scores stay in registers), keeps a lower bound `thr` of the row's k-th key, and appends
only keys >= thr to a per-program scratch list (a few KB, cache-resident). When that list
passes P_CAP/2 it is folded into the best k by one sort of K_PAD + P_CAP keys, which
raises `thr`. For random scores ~k/position of the keys pass once the first chunk is
folded, so selection costs about one compare per key. Split rows are merged by the same
filter (_merge_kernel). A single sort size and a single fold site keep compilation short.
"""
import triton
import triton.language as tl

NEG = tl.constexpr(-(2**63))


@triton.jit
def pack(score, pos):
    s = tl.where(score == 0.0, 0.0, score)  # -0 ties with +0
    bits = s.to(tl.int32, bitcast=True)
    okey = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    okey = tl.where(s != s, 0x7FFFFFFE, okey)  # every NaN above +inf
    # (okey << 32) | (2**32 - 1 - pos), written without constants wider than int32.
    return ((okey.to(tl.int64) + 1) << 32) - 1 - pos.to(tl.int64)


@triton.jit
def unpack(key):
    okey = (key >> 32).to(tl.int32)
    pos = ((okey.to(tl.int64) + 1) << 32) - 1 - key
    bits = tl.where(okey >= 0, okey, okey ^ 0x7FFFFFFF)
    pad = key == NEG
    score = tl.where(pad, float("-inf"), bits.to(tl.float32, bitcast=True))
    return score, tl.where(pad, -1, pos)


@triton.jit
def _load_keys(k_row, pos, valid, D, stride_kl, DB: tl.constexpr):
    dd = tl.arange(0, DB)
    return tl.load(k_row + pos.to(tl.int64)[:, None] * stride_kl + dd[None, :],
                   mask=valid[:, None] & (dd < D)[None, :], other=0.0)


@triton.jit
def _load_query(q_ptr, r, D, DB: tl.constexpr):
    dd = tl.arange(0, DB)
    return tl.load(q_ptr + r.to(tl.int64) * D + dd, mask=dd < D, other=0.0).to(tl.float32)


@triton.jit
def _row_length(len_ptr, b, L, HAS_LEN: tl.constexpr):
    n = L
    if HAS_LEN:
        n = tl.minimum(tl.maximum(tl.load(len_ptr + b), 0), L).to(tl.int32)
    return n


@triton.jit
def _packed_scores(kv, q, scale, pos):
    # float32 after scaling: torch.compile passes a Python-float scale as fp64.
    return pack((tl.sum(kv.to(tl.float32) * q[None, :], axis=1) * scale).to(tl.float32), pos)


@triton.jit
def _reduce(scratch, thr, n_best, n_pend, k, K_PAD: tl.constexpr, P_CAP: tl.constexpr, M_S: tl.constexpr):
    """Folds the pending list into the best list, P_CAP keys at a time (one sort size,
    M_S = K_PAD + P_CAP, however many are pending); returns (thr, n_best, n_pend=0)."""
    i = tl.arange(0, M_S)
    for w in range(0, n_pend, P_CAP):
        tl.debug_barrier()  # pending keys and the best list were stored by other threads
        n_w = tl.minimum(n_pend - w, P_CAP)
        live = (i < n_best) | ((i >= K_PAD) & (i < K_PAD + n_w))
        x = tl.load(scratch + tl.where(i < K_PAD, i, i + w), mask=live, other=NEG)
        x = tl.sort(x, descending=True)
        tl.debug_barrier()  # all have read before the best list is overwritten
        tl.store(scratch + i, x, mask=i < K_PAD)
        n_best = tl.minimum(n_best + n_w, k)
    tl.debug_barrier()
    if n_best == k:
        thr = tl.maximum(thr, tl.load(scratch + k - 1))
    return thr, n_best, n_pend * 0


@triton.jit
def _offer(scratch, key, valid, thr, n_best, n_pend, k, flush,
           K_PAD: tl.constexpr, P_CAP: tl.constexpr, M_S: tl.constexpr):
    """Appends the keys >= thr to the pending list; folds it when it passes P_CAP/2
    or on `flush`. Keys are distinct, so none equals the k-th best held."""
    sel = valid & (key >= thr)
    sel32 = sel.to(tl.int32)
    cnt = tl.sum(sel32, axis=0)
    if cnt > 0:
        tl.store(scratch + K_PAD + n_pend + tl.cumsum(sel32, axis=0) - 1, key, mask=sel)
        n_pend += cnt
    if (n_pend > P_CAP // 2) | (flush & (n_pend > 0)):
        thr, n_best, n_pend = _reduce(scratch, thr, n_best, n_pend, k, K_PAD, P_CAP, M_S)
    return thr, n_best, n_pend


@triton.jit
def _best(scratch, n_best, K_PAD: tl.constexpr):
    j = tl.arange(0, K_PAD)
    return tl.load(scratch + j, mask=j < n_best, other=NEG)


@triton.jit
def _emit(scratch, n_best, out_s_ptr, out_i_ptr, r, k, K_PAD: tl.constexpr):
    j = tl.arange(0, K_PAD)
    score, idx = unpack(_best(scratch, n_best, K_PAD))
    tl.store(out_s_ptr + r.to(tl.int64) * k + j, score, mask=j < k)
    tl.store(out_i_ptr + r.to(tl.int64) * k + j, idx, mask=j < k)


@triton.jit
def _search_kernel(q_ptr, k_ptr, len_ptr, out_s_ptr, out_i_ptr, part_ptr, scratch_ptr,
                   T, L, D, k, span, scratch_stride, scale, stride_kb, stride_kl,
                   DB: tl.constexpr, C: tl.constexpr, K_PAD: tl.constexpr, P_CAP: tl.constexpr,
                   M_S: tl.constexpr, HAS_LEN: tl.constexpr, SPLIT: tl.constexpr):
    r = tl.program_id(0)  # row b * T + t
    s = tl.program_id(1)  # split of the row
    b = r // T
    start = s * span
    end = tl.minimum(start + span, _row_length(len_ptr, b, L, HAS_LEN))
    prog = r.to(tl.int64) * tl.num_programs(1) + s
    scratch = scratch_ptr + prog * scratch_stride
    q = _load_query(q_ptr, r, D, DB)
    k_row = k_ptr + b.to(tl.int64) * stride_kb

    thr = tl.full([], NEG, tl.int64)
    n_best = tl.zeros([], tl.int32)
    n_pend = tl.zeros([], tl.int32)
    pos = start + tl.arange(0, C)
    kv = _load_keys(k_row, pos, pos < end, D, stride_kl, DB)
    # One extra, empty chunk flushes the pending list (one call site: one sort compiled).
    for c0 in range(start, tl.maximum(end, start) + C, C):
        pos = c0 + tl.arange(0, C)
        valid = pos < end
        # The next chunk's loads are issued before this chunk's selection: in flight meanwhile.
        kv_next = _load_keys(k_row, pos + C, pos + C < end, D, stride_kl, DB)
        key = _packed_scores(kv, q, scale, pos)
        thr, n_best, n_pend = _offer(scratch, key, valid, thr, n_best, n_pend, k, c0 >= end, K_PAD, P_CAP, M_S)
        kv = kv_next
    if SPLIT:
        tl.store(part_ptr + prog * K_PAD + tl.arange(0, K_PAD), _best(scratch, n_best, K_PAD))
    else:
        _emit(scratch, n_best, out_s_ptr, out_i_ptr, r, k, K_PAD)


@triton.jit
def _merge_kernel(part_ptr, scratch_ptr, out_s_ptr, out_i_ptr, n_part, k, scratch_stride,
                  C: tl.constexpr, K_PAD: tl.constexpr, P_CAP: tl.constexpr, M_S: tl.constexpr):
    """Top k of a row's split lists (n_part keys, NEG-padded), by the same threshold filter."""
    r = tl.program_id(0)
    scratch = scratch_ptr + r.to(tl.int64) * scratch_stride
    thr = tl.full([], NEG, tl.int64)
    n_best = tl.zeros([], tl.int32)
    n_pend = tl.zeros([], tl.int32)
    for c0 in range(0, n_part + C, C):
        pos = c0 + tl.arange(0, C)
        key = tl.load(part_ptr + r.to(tl.int64) * n_part + pos, mask=pos < n_part, other=NEG)
        thr, n_best, n_pend = _offer(scratch, key, key != NEG, thr, n_best, n_pend, k, c0 >= n_part,
                                     K_PAD, P_CAP, M_S)
    _emit(scratch, n_best, out_s_ptr, out_i_ptr, r, k, K_PAD)


@triton.jit
def _keys_kernel(q_ptr, k_ptr, len_ptr, keys_ptr, T, L, D, scale, stride_kb, stride_kl,
                 DB: tl.constexpr, C: tl.constexpr, HAS_LEN: tl.constexpr):
    """Packed keys of every position (large k: the selection then runs in torch.topk)."""
    r = tl.program_id(0)
    c0 = tl.program_id(1) * C
    b = r // T
    pos = c0 + tl.arange(0, C)
    valid = pos < _row_length(len_ptr, b, L, HAS_LEN)
    kv = _load_keys(k_ptr + b.to(tl.int64) * stride_kb, pos, valid, D, stride_kl, DB)
    key = _packed_scores(kv, _load_query(q_ptr, r, D, DB), scale, pos)
    tl.store(keys_ptr + r.to(tl.int64) * L + pos, tl.where(valid, key, NEG), mask=pos < L)
