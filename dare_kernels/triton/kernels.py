"""Triton kernels of the search stage: scores and exact top-k in one pass over the keys.

Every (score, position) pair is packed into one int64 whose descending order is the
contract's order (NaN first, equal scores by ascending position, -0 == +0), so a
selection is a plain integer comparison and every key is distinct. Padding is NEG,
below every real key.

_search_kernel: one program per (row, split). It streams the split in chunks of C keys
(scores stay in registers), keeps a lower bound `thr` of the row's k-th key, and appends
only keys >= thr to a per-program scratch list (a few KB, cache-resident). When that
list grows past P_CAP/2 it is sorted together with the current best k, which raises
`thr`. For random scores after the first chunks only ~k/position of the keys pass, so
selection costs about one compare per key. Before the best list is full, the k-th
largest of the chunk's group maxima (groups of G keys) bounds thr from below: at least
k distinct keys reach it, so the first chunk appends at most k*G keys.
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
def _scores(q_row, k_row, pos, valid, stride_kl, scale, D: tl.constexpr, DB: tl.constexpr, C: tl.constexpr):
    acc = tl.zeros([C], dtype=tl.float32)
    for d0 in tl.static_range(0, D, DB):
        dd = d0 + tl.arange(0, DB)
        dmask = dd < D
        kv = tl.load(k_row + pos.to(tl.int64)[:, None] * stride_kl + dd[None, :],
                     mask=valid[:, None] & dmask[None, :], other=0.0)
        qv = tl.load(q_row + dd, mask=dmask, other=0.0)
        acc += tl.sum(kv.to(tl.float32) * qv.to(tl.float32)[None, :], axis=1)
    return acc * scale


@triton.jit
def _reduce(scratch, thr, n_best, n_pend, k, K_PAD: tl.constexpr, M: tl.constexpr):
    """Best k of (best list, pending list) back into the best list; returns the new
    (thr, n_best, n_pend). Needs K_PAD + n_pend <= M."""
    tl.debug_barrier()  # the pending keys were stored by other threads
    i = tl.arange(0, M)
    live = (i < n_best) | ((i >= K_PAD) & (i < K_PAD + n_pend))
    x = tl.sort(tl.load(scratch + i, mask=live, other=NEG), descending=True)
    tl.debug_barrier()  # everyone has read before the best list is overwritten
    tl.store(scratch + i, x, mask=i < K_PAD)
    tl.debug_barrier()
    n_best = tl.minimum(n_best + n_pend, k)
    kth = tl.max(tl.where(i == k - 1, x, NEG), axis=0)
    thr = tl.where(n_best == k, tl.maximum(thr, kth), thr)
    return thr, n_best, n_pend * 0


@triton.jit
def _search_kernel(q_ptr, k_ptr, len_ptr, out_s_ptr, out_i_ptr, part_ptr, scratch_ptr,
                   T, L, k, span, scratch_stride, scale, stride_kb, stride_kl,
                   D: tl.constexpr, DB: tl.constexpr, C: tl.constexpr, G: tl.constexpr,
                   K_PAD: tl.constexpr, P_CAP: tl.constexpr, M_S: tl.constexpr, M_L: tl.constexpr,
                   HAS_LEN: tl.constexpr, SPLIT: tl.constexpr):
    r = tl.program_id(0)  # row b * T + t
    s = tl.program_id(1)  # split of the row
    n_split = tl.num_programs(1)
    b = r // T
    n = L
    if HAS_LEN:
        n = tl.minimum(tl.maximum(tl.load(len_ptr + b), 0), L).to(tl.int32)
    start = s * span
    end = tl.minimum(start + span, n)
    prog = r.to(tl.int64) * n_split + s
    scratch = scratch_ptr + prog * scratch_stride
    q_row = q_ptr + r.to(tl.int64) * D
    k_row = k_ptr + b.to(tl.int64) * stride_kb

    thr = tl.full([], NEG, tl.int64)
    n_best = tl.zeros([], tl.int32)
    n_pend = tl.zeros([], tl.int32)
    for c0 in range(start, end, C):
        pos = c0 + tl.arange(0, C)
        valid = pos < end
        key = tl.where(valid, pack(_scores(q_row, k_row, pos, valid, stride_kl, scale, D, DB, C), pos), NEG)
        if G > 0:
            if n_best < k:
                gmax = tl.max(tl.reshape(key, [C // G, G]), axis=1)
                gs = tl.sort(gmax, descending=True)
                bound = tl.max(tl.where(tl.arange(0, C // G) == k - 1, gs, NEG), axis=0)
                thr = tl.maximum(thr, bound)
        sel = valid & (key >= thr)
        sel32 = sel.to(tl.int32)
        cnt = tl.sum(sel32, axis=0)
        if cnt > 0:
            dst = K_PAD + n_pend + tl.cumsum(sel32, axis=0) - 1
            tl.store(scratch + dst, key, mask=sel)
            n_pend += cnt
            if n_pend > P_CAP // 2:
                if K_PAD + n_pend <= M_S:
                    thr, n_best, n_pend = _reduce(scratch, thr, n_best, n_pend, k, K_PAD, M_S)
                else:
                    thr, n_best, n_pend = _reduce(scratch, thr, n_best, n_pend, k, K_PAD, M_L)
    if n_pend > 0:
        if K_PAD + n_pend <= M_S:
            thr, n_best, n_pend = _reduce(scratch, thr, n_best, n_pend, k, K_PAD, M_S)
        else:
            thr, n_best, n_pend = _reduce(scratch, thr, n_best, n_pend, k, K_PAD, M_L)
    j = tl.arange(0, K_PAD)
    best = tl.load(scratch + j, mask=j < n_best, other=NEG)
    if SPLIT:
        tl.store(part_ptr + prog * K_PAD + j, best)
    else:
        score, idx = unpack(best)
        tl.store(out_s_ptr + r.to(tl.int64) * k + j, score, mask=j < k)
        tl.store(out_i_ptr + r.to(tl.int64) * k + j, idx, mask=j < k)


@triton.jit
def _merge_kernel(part_ptr, out_s_ptr, out_i_ptr, n_part, k, M: tl.constexpr):
    """Top k of a row's split lists (n_part keys, each list sorted, NEG-padded)."""
    r = tl.program_id(0)
    i = tl.arange(0, M)
    x = tl.load(part_ptr + r.to(tl.int64) * n_part + i, mask=i < n_part, other=NEG)
    score, idx = unpack(tl.sort(x, descending=True))
    tl.store(out_s_ptr + r.to(tl.int64) * k + i, score, mask=i < k)
    tl.store(out_i_ptr + r.to(tl.int64) * k + i, idx, mask=i < k)


@triton.jit
def _keys_kernel(q_ptr, k_ptr, len_ptr, keys_ptr, T, L, scale, stride_kb, stride_kl,
                 D: tl.constexpr, DB: tl.constexpr, C: tl.constexpr, HAS_LEN: tl.constexpr):
    """Packed keys of every position (large k: the selection then runs in torch.topk)."""
    r = tl.program_id(0)
    c0 = tl.program_id(1) * C
    b = r // T
    n = L
    if HAS_LEN:
        n = tl.minimum(tl.maximum(tl.load(len_ptr + b), 0), L).to(tl.int32)
    pos = c0 + tl.arange(0, C)
    valid = pos < n
    key = pack(_scores(q_ptr + r.to(tl.int64) * D, k_ptr + b.to(tl.int64) * stride_kb, pos, valid,
                       stride_kl, scale, D, DB, C), pos)
    tl.store(keys_ptr + r.to(tl.int64) * L + pos, tl.where(valid, key, NEG), mask=pos < L)
