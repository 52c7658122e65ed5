"""The oracle every backend's output is checked against: the float64 reference
(dare_kernels.reference) recomputed on the CPU, with float32 rounding bounds.
Used with the sample matrix in samples.py."""
import torch

from dare_kernels import reference

from samples import Sample

EPS32 = 2.0**-24


def assert_matches_reference(out, s: Sample):
    """Exact top-k up to float32 rounding: the returned scores are the float64
    scores of the returned positions within the float32 accumulation bound, the
    sorted values equal the reference's, the order is descending with ties by
    position and NaN first, padding is exact, and where the inputs make float32
    exact, the indices equal the reference's."""
    scores, idx = out
    device = s.keys.device
    s = s.padded()  # jagged rows: the same search on padded keys (indices count from the row's start)
    valid = s.valid()
    # The oracle runs on the CPU: no GPU library sits between the test and float64.
    cpu = [None if t is None else t.cpu() for t in (s.lengths, s.mask)]
    ref_s, ref_i = reference.topk_attention(s.query.cpu(), s.keys.cpu(), s.k, cpu[0], s.scale, cpu[1],
                                            acc_dtype=torch.float64)
    assert scores.dtype == torch.float32 and idx.dtype == torch.int64
    assert scores.shape == ref_s.shape and idx.shape == ref_i.shape
    assert scores.device == device and idx.device == device
    B, L, d = s.keys.shape
    if B == 0:
        return
    scores, idx = scores.cpu().double().reshape(B, -1, s.k), idx.cpu().reshape(B, -1, s.k)
    ref_s, ref_i = ref_s.reshape(B, -1, s.k), ref_i.reshape(B, -1, s.k)
    T = scores.shape[1]

    def first_bad_row(bad):
        b, t = [int(v) for v in bad.reshape(B, T, -1).any(-1).nonzero()[0]]
        return (f"row b={b} t={t}:\n got idx {idx[b, t].tolist()}\n want idx {ref_i[b, t].tolist()}"
                f"\n got scores {scores[b, t].tolist()}\n want scores {ref_s[b, t].tolist()}")

    pad = ref_i == -1
    assert torch.equal(idx == -1, pad), "padding slots differ from the reference; " + first_bad_row((idx == -1) != pad)
    assert torch.all(scores[pad] == float("-inf"))

    q = s.query.cpu().double().reshape(B, T, d)
    K = s.keys.cpu().double()
    safe = idx.clamp(min=0)
    sel = K.gather(1, safe.reshape(B, T * s.k, 1).expand(-1, -1, d)).reshape(B, T, s.k, d)
    exact = torch.einsum("btd,btkd->btk", q, sel) * s.scale
    bound = torch.einsum("btd,btkd->btk", q.abs(), sel.abs()) * abs(s.scale)
    tol = torch.nan_to_num(2 * (d + 2) * EPS32 * bound, nan=0.0, posinf=0.0) + 1e-30
    ok = ~pad
    assert idx[ok].min() >= 0 and idx[ok].max() < L
    taken = valid[:, None, :].expand(B, T, L).gather(-1, safe)
    assert torch.all(taken[ok]), "an index of a position that takes no part (past the length, masked out)"
    sorted_idx = torch.where(ok, idx, torch.arange(L, L + s.k).expand_as(idx)).sort(-1).values
    assert torch.all(sorted_idx[..., 1:] != sorted_idx[..., :-1]), "an index appears twice"

    got, want = scores[ok], exact[ok]
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan), "NaN scores at different positions"
    inf = torch.isinf(want)
    assert torch.equal(got[inf], want[inf])
    fin = ~nan & ~inf
    assert torch.all((got[fin] - want[fin]).abs() <= tol[ok][fin]), "scores differ from the float64 recomputation"

    # The k-th order statistic moves no more than the scores do.
    ref_ok = ref_s[ok]
    assert torch.equal(torch.isnan(ref_ok), nan), "a different number of NaN scores; " + first_bad_row(
        torch.isnan(ref_s) != torch.isnan(exact))
    row_tol = tol.amax(-1, keepdim=True).expand_as(tol)[ok]
    fin_ref = ~torch.isnan(ref_ok) & ~torch.isinf(ref_ok)
    assert torch.equal(torch.isinf(ref_ok), inf) and torch.equal(ref_ok[inf], got[inf])
    assert torch.all((got[fin_ref] - ref_ok[fin_ref]).abs() <= 2 * row_tol[fin_ref]), \
        "top-k values differ from the reference"

    # Descending, NaN first, ties by ascending position.
    key = torch.where(torch.isnan(scores), float("inf"), scores)
    nan_rank = torch.isnan(scores).to(torch.int8)
    prev, nxt = (slice(None), slice(None), slice(None, -1)), (slice(None), slice(None), slice(1, None))
    both = ok[prev] & ok[nxt]
    order_ok = (nan_rank[prev] > nan_rank[nxt]) | (
        (nan_rank[prev] == nan_rank[nxt]) & ((key[prev] > key[nxt]) | ((key[prev] == key[nxt]) & (idx[prev] < idx[nxt]))))
    assert torch.all(order_ok[both]), "not sorted by (score desc, index asc)"

    assert_duplicates_in_order(idx, s, valid)

    if s.exact:
        assert torch.equal(idx, ref_i), "indices differ from the reference on exact inputs; " + first_bad_row(idx != ref_i)


def assert_duplicates_in_order(idx, s: Sample, valid: torch.Tensor):
    """A key's score is a function of the query and that key alone, so bit-identical
    keys tie: among a row's returned indices, copies of one key vector come in
    ascending position, and a selected copy's earlier copies (among the positions
    that take part, `valid` (B, L)) are selected too. idx: (B, T, k) on the CPU;
    s in padded form."""
    B, L, d = s.keys.shape
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[s.keys.element_size()]
    keys = s.keys.detach().cpu().contiguous().view(bits)
    for b in range(B):
        pos = valid[b].nonzero().flatten()  # the row's positions that take part
        n = len(pos)
        if n == 0:
            continue
        rank_of = torch.full((L,), -1, dtype=torch.long)
        rank_of[pos] = torch.arange(n)
        # Which vector each position holds, and how many earlier positions hold it.
        _, vec = torch.unique(keys[b, pos], dim=0, return_inverse=True)
        if int(vec.max()) == n - 1 and len(vec.unique()) == n:
            continue  # no two positions alike
        order = torch.sort(vec * n + torch.arange(n)).indices  # by vector, then position
        first = torch.ones(n, dtype=torch.bool)
        first[1:] = vec[order[1:]] != vec[order[:-1]]
        run = torch.arange(n) - torch.cummax(torch.where(first, torch.arange(n), 0), 0).values
        occurrence = torch.empty(n, dtype=torch.long)
        occurrence[order] = run
        for t in range(idx.shape[1]):
            sel = rank_of[idx[b, t][idx[b, t] >= 0]]
            v = vec[sel]
            # Copies returned before this one, of the same vector: its occurrence number.
            before = (v[:, None] == v[None, :]).tril(-1).sum(1)
            bad = occurrence[sel] != before
            assert not bool(bad.any()), (
                f"row b={b} t={t}: copies of one key out of position order (or an earlier copy left out) at "
                f"returned slots {bad.nonzero().flatten().tolist()[:8]}; idx {sel.tolist()}")
