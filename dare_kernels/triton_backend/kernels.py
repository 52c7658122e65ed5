"""Triton kernels of the search stage: scores and exact top-k in one pass over the keys.

Every (score, position) pair is packed into one int64 whose descending order is the
contract's order (NaN first, equal scores by ascending position, -0 == +0), so a
selection is a plain integer comparison and every key is distinct. Padding is NEG,
below every real key.

_search_kernel: one program per (row, split), in two phases.
- Score pass: streams the program's keys in chunks of C, stores each score's int32 order
  key to a row-sized buffer (4 bytes a key, read back later in the same launch) and keeps
  the largest key at each chunk offset (C group maxima). The loop holds no selection and
  no reduction; its one barrier is Triton's layout conversion for the coalesced store.
  Alone it streams at 77-78% of the copy bandwidth (H200, d = 16).
- Select: the k-th largest group maximum is a lower bound of the row's k-th key (k keys
  of distinct groups reach it); for random scores ~1.5% of the row passes it. One pass
  over the order keys puts those in per-lane slots (W per key offset of a step, no
  reduction per step), one scan gathers them, and one sort of K_PAD + P_CAP keys keeps
  the best k. Where a lane overflows (ties, sorted rows), a filter pass appends to a
  scratch list instead, folded by the same sort whenever it passes P_CAP/2; each fold
  raises the bound, so adversarial orders stay exact and bounded.
A split row's programs publish their group maxima; the last to finish (an atomic ticket)
selects for the row: one launch per call. A single sort size and a single fold site keep
compilation short.

Layouts: a position that a mask leaves out stores INT_MIN, which no select takes; jagged
rows (offsets) are read in place, their order keys at [t*N + start, t*N + end): the rows
of one target are disjoint, so the buffer is T*N, not B*T*N.
"""
import triton
import triton.language as tl

NEG = tl.constexpr(-(2**63))
INT_MIN = tl.constexpr(-(2**31))


@triton.jit
def order_key(score):
    """int32 whose order is the contract's order of float32 scores (NaN first, -0 == +0);
    every real score's key is above INT_MIN, which marks "no key"."""
    s = tl.where(score == 0.0, 0.0, score)
    bits = s.to(tl.int32, bitcast=True)
    okey = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return tl.where(s != s, 0x7FFFFFFE, okey)


@triton.jit
def pack_okey(okey, pos):
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
def _row(len_ptr, off_ptr, okey_ptr, T, L, span, HAS_LEN: tl.constexpr, JAGGED: tl.constexpr):
    """The program's row r = b * T + t: b, row0 (jagged: the row's first of the N = L
    values, int64; else 0), its length n, the program's span [start, end) of it and the
    row's order keys."""
    r = tl.program_id(0)
    b = r // T
    row0, n = _extent(len_ptr, off_ptr, b, L, HAS_LEN, JAGGED)
    if JAGGED:
        # No host-known length: the row's programs share what it has.
        span = tl.cdiv(n, tl.num_programs(1))
        okey_row = okey_ptr + (r % T).to(tl.int64) * L + row0
    else:
        okey_row = okey_ptr + r.to(tl.int64) * L
    start = tl.program_id(1) * span
    return r, b, row0, n, start, tl.minimum(start + span, n), okey_row


@triton.jit
def _extent(len_ptr, off_ptr, b, L, HAS_LEN: tl.constexpr, JAGGED: tl.constexpr):
    """Row b's first value (jagged: of the N = L values, int64; else 0) and its length n."""
    row0 = 0
    n = L
    if JAGGED:
        # Clamped as the reference clamps: on a GPU no check reads the offsets (a sync).
        row0 = tl.minimum(tl.maximum(tl.load(off_ptr + b).to(tl.int64), 0), L)
        n = (tl.minimum(tl.maximum(tl.load(off_ptr + b + 1).to(tl.int64), row0), L) - row0).to(tl.int32)
    elif HAS_LEN:
        n = tl.minimum(tl.maximum(tl.load(len_ptr + b), 0), L).to(tl.int32)
    return row0, n


@triton.jit
def _live(m_row, pos, end, stride_ml, HAS_MASK: tl.constexpr):
    """Which positions of a chunk take part: before the span's end and, with a mask, in it."""
    live = pos < end
    if HAS_MASK:
        live &= tl.load(m_row + pos.to(tl.int64) * stride_ml, mask=live, other=0) != 0
    return live


@triton.jit
def _scores(kv, q, scale):
    # float32 after scaling: torch.compile passes a Python-float scale as fp64.
    return (tl.sum(kv.to(tl.float32) * q[None, :], axis=1) * scale).to(tl.float32)


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
def _emit(scratch, n_best, out_s_ptr, out_i_ptr, r, k, K_PAD: tl.constexpr):
    j = tl.arange(0, K_PAD)
    score, idx = unpack(tl.load(scratch + j, mask=j < n_best, other=NEG))
    tl.store(out_s_ptr + r.to(tl.int64) * k + j, score, mask=j < k)
    tl.store(out_i_ptr + r.to(tl.int64) * k + j, idx, mask=j < k)


@triton.jit
def _bound(gmax, k):
    """A lower bound of the row's k-th key: the k-th largest group maximum (k keys of
    distinct groups reach it), rounded down to a multiple of 2**16 in int32 order-key
    space. 16 bisection steps, not 32: each is a block-wide reduction, and the last 16
    would only trim a few survivors (B = 8, d = 32 on an H200: 26.7 -> 23.5 us). INT_MIN
    (no bound) if fewer than k groups hold a key."""
    lo = tl.full([], INT_MIN, tl.int64)
    hi = tl.full([], -INT_MIN, tl.int64)
    for _ in range(16):
        mid = (lo + hi) >> 1
        enough = tl.sum((gmax >= mid).to(tl.int32), axis=0) >= k
        lo = tl.where(enough, mid, lo)
        hi = tl.where(enough, hi, mid)
    return lo


@triton.jit
def _load_okeys(okey_row, pos, n):
    # .cg: the row's other programs wrote them from other SMs.
    return tl.load(okey_row + pos, mask=pos < n, other=INT_MIN, cache_modifier=".cg")


@triton.jit
def _select(okey_row, n, bound, k, scratch, out_s_ptr, out_i_ptr, r, BOUND_PASS: tl.constexpr,
            C2: tl.constexpr, W: tl.constexpr, K_PAD: tl.constexpr, P_CAP: tl.constexpr, M_S: tl.constexpr):
    """Top k of a row's n order keys (in L2) that are >= bound, into the outputs."""
    bound = tl.maximum(bound, INT_MIN + 1)  # INT_MIN: a position the mask leaves out
    lane = tl.arange(0, C2)
    if BOUND_PASS:
        # Too few group maxima for a bound (wide keys: short chunks): C2 groups of the order keys.
        gmax = tl.full([C2], INT_MIN, tl.int32)
        okey = _load_okeys(okey_row, lane, n)
        for c0 in range(0, n, C2):
            okey_next = _load_okeys(okey_row, c0 + C2 + lane, n)
            gmax = tl.maximum(gmax, okey)
            okey = okey_next
        bound = tl.maximum(bound, _bound(gmax, k))
    # Lane pass: every lane (key offset in a step of C2) appends the keys that pass to its
    # own W slots, so a step has no reduction and no barrier; one scan then gathers them.
    slots = scratch + K_PAD + P_CAP // 2 + C2 + lane * W  # after the best and pending lists (Plan.scratch)
    held = tl.zeros([C2], tl.int32)
    okey = _load_okeys(okey_row, lane, n)
    for c0 in range(0, n, C2):
        pos = c0 + lane
        okey_next = _load_okeys(okey_row, pos + C2, n)  # in flight during this step
        take = (pos < n) & (okey >= bound)
        tl.store(slots + held, pack_okey(okey, pos), mask=take & (held < W))
        held += take.to(tl.int32)
        okey = okey_next
    n_pend = tl.sum(tl.minimum(held, W), axis=0)
    # A lane past W slots (ties, sorted rows) or too many keys for one fold: the filter
    # pass below, whose bound rises with every fold.
    fast = (tl.max(held, axis=0) <= W) & (n_pend <= P_CAP)
    if fast:
        tl.debug_barrier()  # the slots may be read by other threads than wrote them
        base = tl.cumsum(held, axis=0) - held
        for w in range(W):
            tl.store(scratch + K_PAD + base + w, tl.load(slots + w, mask=w < held), mask=w < held)
    else:
        n_pend = n_pend * 0
    m = tl.where(fast, 0, n)  # keys the filter pass reads: none when the lanes held them all
    thr = bound << 32  # the lowest packed key whose order key is `bound`
    n_best = tl.zeros([], tl.int32)
    okey = _load_okeys(okey_row, lane, m)
    # One extra, empty step flushes the pending list (one call site: one sort compiled).
    for c0 in range(0, m + C2, C2):
        pos = c0 + lane
        okey_next = _load_okeys(okey_row, pos + C2, m)  # in flight during this step's selection
        thr, n_best, n_pend = _offer(scratch, pack_okey(okey, pos), pos < m, thr, n_best, n_pend, k, c0 >= m,
                                     K_PAD, P_CAP, M_S)
        okey = okey_next
    _emit(scratch, n_best, out_s_ptr, out_i_ptr, r, k, K_PAD)


@triton.jit
def _finish(okey_row, gmax, n, k, scratch_ptr, scratch_stride, out_s_ptr, out_i_ptr, gmax_ptr, ticket_ptr, r, s,
            C: tl.constexpr, C2: tl.constexpr, W: tl.constexpr, CG: tl.constexpr, G: tl.constexpr,
            K_PAD: tl.constexpr, P_CAP: tl.constexpr, M_S: tl.constexpr, SPLIT: tl.constexpr):
    """After a program's score pass (its order keys stored, gmax its group maxima):
    the select, by this program (unsplit row) or by the row's last program to finish."""
    if SPLIT:
        # The row's last program to finish (an atomic ticket) selects for the whole row,
        # bounded by the maxima of all of its programs' groups (CG of each).
        n_split = tl.num_programs(1)
        g = tl.arange(0, CG)
        tl.store(gmax_ptr + (r.to(tl.int64) * n_split + s) * CG + g, tl.max(tl.reshape(gmax, [CG, C // CG]), axis=1))
        tl.debug_barrier()  # every key and maximum is stored before the ticket is taken (acq_rel, gpu)
        if tl.atomic_add(ticket_ptr + r, 1, sem="acq_rel") == n_split - 1:
            tl.atomic_xchg(ticket_ptr + r, 0)  # reset: the next launch (or an autotuning rerun) starts at 0
            j = tl.arange(0, G)
            every = tl.load(gmax_ptr + r.to(tl.int64) * n_split * CG + j, mask=j < n_split * CG, other=INT_MIN,
                            cache_modifier=".cg")
            _select(okey_row, n, _bound(every, k), k, scratch_ptr + r.to(tl.int64) * scratch_stride, out_s_ptr,
                    out_i_ptr, r, G < 2 * K_PAD, C2, W, K_PAD, P_CAP, M_S)
    else:
        tl.debug_barrier()  # the row's keys, stored by all threads, are read by others
        _select(okey_row, n, _bound(gmax, k), k, scratch_ptr + r.to(tl.int64) * scratch_stride, out_s_ptr,
                out_i_ptr, r, C < 2 * K_PAD, C2, W, K_PAD, P_CAP, M_S)



@triton.jit
def _search_kernel(q_ptr, k_ptr, len_ptr, m_ptr, off_ptr, out_s_ptr, out_i_ptr, okey_ptr, gmax_ptr, ticket_ptr,
                   scratch_ptr, T, L, D, k, span, scratch_stride, scale, stride_kb, stride_kl, stride_mb, stride_ml,
                   DB: tl.constexpr, C: tl.constexpr, C2: tl.constexpr, W: tl.constexpr, CG: tl.constexpr,
                   G: tl.constexpr,
                   K_PAD: tl.constexpr, P_CAP: tl.constexpr, M_S: tl.constexpr, HAS_LEN: tl.constexpr,
                   HAS_MASK: tl.constexpr, JAGGED: tl.constexpr, SPLIT: tl.constexpr):
    """Jagged keys come with stride_kb = 0: row b starts at its first value."""
    r, b, row0, n, start, end, okey_row = _row(len_ptr, off_ptr, okey_ptr, T, L, span, HAS_LEN, JAGGED)
    q = _load_query(q_ptr, r, D, DB)
    k_row = k_ptr + b.to(tl.int64) * stride_kb + row0 * stride_kl
    m_row = m_ptr + b.to(tl.int64) * stride_mb

    # Score pass: no selection and no reduction in the loop, so loads stream back to back.
    # Group maxima: gmax[j] is the largest key at offset j of the program's chunks.
    # The mask is read two chunks ahead, so that a chunk's key loads never wait for it.
    gmax = tl.full([C], INT_MIN, tl.int32)
    pos = start + tl.arange(0, C)
    live = _live(m_row, pos, end, stride_ml, HAS_MASK)
    live_next = _live(m_row, pos + C, end, stride_ml, HAS_MASK)
    kv = _load_keys(k_row, pos, live, D, stride_kl, DB)
    for c0 in range(start, end, C):
        pos = c0 + tl.arange(0, C)
        live_after = _live(m_row, pos + 2 * C, end, stride_ml, HAS_MASK)
        # The next chunk's loads are issued before this chunk's scores: in flight meanwhile.
        kv_next = _load_keys(k_row, pos + C, live_next, D, stride_kl, DB)
        okey = tl.where(live, order_key(_scores(kv, q, scale)), INT_MIN)
        tl.store(okey_row + pos, okey, mask=pos < end)
        gmax = tl.maximum(gmax, okey)
        kv = kv_next
        live = live_next
        live_next = live_after
    _finish(okey_row, gmax, n, k, scratch_ptr, scratch_stride, out_s_ptr, out_i_ptr, gmax_ptr, ticket_ptr, r,
            tl.program_id(1), C, C2, W, CG, G, K_PAD, P_CAP, M_S, SPLIT)


@triton.jit
def _field_scores(t_ptr, i_ptr, sib, sil, n_rows, d_f, off, q_row, b, pos, valid, DB: tl.constexpr):
    """One field's part of a chunk's scores: the rows of the chunk's ids dotted with
    the query's slice [off, off + d_f). An id out of [0, n_rows) is never read: NaN."""
    ids = tl.load(i_ptr + b.to(tl.int64) * sib + pos.to(tl.int64) * sil, mask=valid, other=0).to(tl.int64)
    ok = valid & (ids >= 0) & (ids < n_rows)
    dd = tl.arange(0, DB)
    rows = tl.load(t_ptr + ids[:, None] * d_f + dd[None, :], mask=ok[:, None] & (dd < d_f)[None, :], other=0.0)
    q = tl.load(q_row + off + dd, mask=dd < d_f, other=0.0).to(tl.float32)
    part = tl.sum(rows.to(tl.float32) * q[None, :], axis=1)
    return tl.where(valid & ~ok, float("nan"), part)


@triton.jit
def _search_ids_kernel(q_ptr, len_ptr, m_ptr, off_ptr, out_s_ptr, out_i_ptr, okey_ptr, gmax_ptr, ticket_ptr,
                       scratch_ptr, t0, i0, t1, i1, t2, i2, t3, i3,
                       sb0, sl0, n0, d0, o0, sb1, sl1, n1, d1, o1, sb2, sl2, n2, d2, o2, sb3, sl3, n3, d3, o3,
                       T, L, D, k, span, scratch_stride, scale, stride_mb, stride_ml,
                       F: tl.constexpr, DB0: tl.constexpr, DB1: tl.constexpr, DB2: tl.constexpr, DB3: tl.constexpr,
                       C: tl.constexpr, C2: tl.constexpr, W: tl.constexpr, CG: tl.constexpr, G: tl.constexpr,
                       K_PAD: tl.constexpr, P_CAP: tl.constexpr, M_S: tl.constexpr, HAS_LEN: tl.constexpr,
                       HAS_MASK: tl.constexpr, JAGGED: tl.constexpr, SPLIT: tl.constexpr):
    """_search_kernel with keys looked up from F <= 4 fields: key j of row b is
    [t0[i0[b, j]] | t1[i1[b, j]] | ...]. Per field f: the ids' row and position strides
    (sb, sl; sb = 0: shared by every row, or jagged), the table's rows and width (n, d;
    rows contiguous) and the field's offset in the query (o)."""
    r, b, row0, n, start, end, okey_row = _row(len_ptr, off_ptr, okey_ptr, T, L, span, HAS_LEN, JAGGED)
    q_row = q_ptr + r.to(tl.int64) * D
    m_row = m_ptr + b.to(tl.int64) * stride_mb
    gmax = tl.full([C], INT_MIN, tl.int32)
    for c0 in range(start, end, C):
        pos = c0 + tl.arange(0, C)
        live = _live(m_row, pos, end, stride_ml, HAS_MASK)
        at = row0 + pos  # the ids' position: jagged rows start at row0
        # Fields add in order 0, 1, ...: a key's score depends on its ids alone.
        acc = _field_scores(t0, i0, sb0, sl0, n0, d0, o0, q_row, b, at, live, DB0)
        if F > 1:
            acc += _field_scores(t1, i1, sb1, sl1, n1, d1, o1, q_row, b, at, live, DB1)
        if F > 2:
            acc += _field_scores(t2, i2, sb2, sl2, n2, d2, o2, q_row, b, at, live, DB2)
        if F > 3:
            acc += _field_scores(t3, i3, sb3, sl3, n3, d3, o3, q_row, b, at, live, DB3)
        okey = tl.where(live, order_key((acc * scale).to(tl.float32)), INT_MIN)
        tl.store(okey_row + pos, okey, mask=pos < end)
        gmax = tl.maximum(gmax, okey)
    _finish(okey_row, gmax, n, k, scratch_ptr, scratch_stride, out_s_ptr, out_i_ptr, gmax_ptr, ticket_ptr, r,
            tl.program_id(1), C, C2, W, CG, G, K_PAD, P_CAP, M_S, SPLIT)


# ---------------------------------------------------------------------------
# Many targets sharing one sequence (query (B, T, d), T >= TARGETS_MIN): two launches.
# _targets_score_kernel: one program per (row b, tile of TT targets, split) reads each chunk
# of the row's keys once for the tile's TT targets and scores them with tl.dot (tensor cores
# for 16-bit keys; float32 keys in IEEE float32, not TF32), storing every target's order
# keys and publishing each target's group maxima. _targets_select_kernel: one program per
# (b, t) selects as a split row's last program does (_finish). The order keys are the ones
# _search_kernel stores, so selection, ties and NaN are shared; the summation order is
# tl.dot's, the same at every position (a key's score depends on the query and the key
# alone within a call), and may differ in the last bits from a one-target call's.

@triton.jit
def _targets_score_kernel(q_ptr, k_ptr, len_ptr, m_ptr, off_ptr, okey_ptr, gmax_ptr,
                          T, L, D, span, scale, stride_kb, stride_kl, stride_mb, stride_ml,
                          DB: tl.constexpr, TT: tl.constexpr, C: tl.constexpr, CG: tl.constexpr,
                          HAS_LEN: tl.constexpr, HAS_MASK: tl.constexpr, JAGGED: tl.constexpr,
                          IEEE: tl.constexpr, DOT: tl.constexpr):
    b = tl.program_id(0)
    s = tl.program_id(2)
    n_split = tl.num_programs(2)
    t = tl.program_id(1) * TT + tl.arange(0, TT)
    t_ok = t < T
    r = b.to(tl.int64) * T + t
    row0, n = _extent(len_ptr, off_ptr, b, L, HAS_LEN, JAGGED)
    if JAGGED:
        span = tl.cdiv(n, n_split)
        okey_rows = okey_ptr + t.to(tl.int64) * L + row0  # jagged rows of one target are disjoint
    else:
        okey_rows = okey_ptr + r * L
    start = s * span
    end = tl.minimum(start + span, n)
    dd = tl.arange(0, DB)
    q = tl.load(q_ptr + r[:, None] * D + dd[None, :], mask=t_ok[:, None] & (dd < D)[None, :], other=0.0)
    k_row = k_ptr + b.to(tl.int64) * stride_kb + row0 * stride_kl
    m_row = m_ptr + b.to(tl.int64) * stride_mb
    gmax = tl.full([TT, C], INT_MIN, tl.int32)
    for c0 in range(start, end, C):
        pos = c0 + tl.arange(0, C)
        live = _live(m_row, pos, end, stride_ml, HAS_MASK)
        kv = _load_keys(k_row, pos, live, D, stride_kl, DB)
        if not DOT:
            # The interpreter's tl.dot is numpy's matmul, whose sums differ between positions
            # (BLAS edge tiles): identical keys would not tie. A per-element sum does.
            acc = tl.sum(q[:, None, :].to(tl.float32) * kv[None, :, :].to(tl.float32), axis=2)
        elif IEEE:
            acc = tl.dot(q, tl.trans(kv), input_precision="ieee")
        else:
            acc = tl.dot(q, tl.trans(kv))
        okey = tl.where(live[None, :], order_key((acc * scale).to(tl.float32)), INT_MIN)
        tl.store(okey_rows[:, None] + pos[None, :], okey, mask=t_ok[:, None] & (pos < end)[None, :])
        gmax = tl.maximum(gmax, okey)
    g = tl.max(tl.reshape(gmax, [TT, CG, C // CG]), axis=2)
    cg = tl.arange(0, CG)
    tl.store(gmax_ptr + (r * n_split + s)[:, None] * CG + cg[None, :], g, mask=t_ok[:, None])


@triton.jit
def _targets_select_kernel(len_ptr, off_ptr, okey_ptr, gmax_ptr, scratch_ptr, out_s_ptr, out_i_ptr,
                           T, L, k, n_split, scratch_stride,
                           C2: tl.constexpr, W: tl.constexpr, CG: tl.constexpr, G: tl.constexpr,
                           K_PAD: tl.constexpr, P_CAP: tl.constexpr, M_S: tl.constexpr,
                           HAS_LEN: tl.constexpr, JAGGED: tl.constexpr):
    r, b, row0, n, start, end, okey_row = _row(len_ptr, off_ptr, okey_ptr, T, L, L, HAS_LEN, JAGGED)
    j = tl.arange(0, G)
    every = tl.load(gmax_ptr + r.to(tl.int64) * n_split * CG + j, mask=j < n_split * CG, other=INT_MIN)
    _select(okey_row, n, _bound(every, k), k, scratch_ptr + r.to(tl.int64) * scratch_stride, out_s_ptr, out_i_ptr,
            r, G < 2 * K_PAD, C2, W, K_PAD, P_CAP, M_S)
