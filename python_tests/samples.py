"""The one sample-inputs matrix: every backend is checked on all of it against
the float64 reference (python_tests/test_topk_attention.py, through
python_tests/oracle.py)."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from dare_kernels import reference
from dare_kernels._check import valid_positions

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@dataclasses.dataclass
class Sample:
    query: torch.Tensor
    keys: torch.Tensor
    k: int
    lengths: Optional[torch.Tensor] = None
    scale: float = 1.0
    # Inputs whose products and sums are exact in float32: the returned
    # indices must equal the reference's exactly, ties included.
    exact: bool = False
    mask: Optional[torch.Tensor] = None
    offsets: Optional[torch.Tensor] = None  # keys (N, d): jagged rows

    def args(self):
        return (self.query, self.keys, self.k, self.lengths, self.scale, self.mask, self.offsets)

    def kwargs(self) -> dict:
        return dict(lengths=self.lengths, scale=self.scale, mask=self.mask, offsets=self.offsets)

    def padded(self) -> "Sample":
        """The same search with (B, L, d) keys (jagged rows padded, with lengths), for the oracle."""
        if self.offsets is None:
            return self
        index, lengths = reference.padded_rows(self.offsets, self.keys.shape[0], self.k)
        keys = self.keys[index] if self.keys.shape[0] else self.keys.new_zeros(*index.shape, self.keys.shape[1])
        return Sample(self.query, keys, self.k, lengths, self.scale, self.exact)

    def valid(self) -> torch.Tensor:
        """(B, L) bool on the CPU: the positions that take part (padded form)."""
        s = self.padded()
        B, L, _ = s.keys.shape
        cpu = [None if t is None else t.cpu() for t in (s.lengths, s.mask)]
        valid = valid_positions(B, L, *cpu)
        return torch.ones(B, L, dtype=torch.bool) if valid is None else valid


def _randn(g, *shape, dtype, device):
    return torch.randn(*shape, generator=g, dtype=torch.float32).to(dtype).to(device)


def _ints(g, *shape, dtype, device, lo=-2, hi=3):
    return torch.randint(lo, hi, shape, generator=g).to(dtype).to(device)


def _lengths(values, device, dtype=torch.int64):
    return torch.tensor(values, dtype=dtype, device=device)


def _basic(g, dtype, device):
    return Sample(_randn(g, 3, 5, dtype=dtype, device=device), _randn(g, 3, 37, 5, dtype=dtype, device=device), 7)


def _d1(g, dtype, device):
    return Sample(_randn(g, 2, 1, dtype=dtype, device=device), _randn(g, 2, 20, 1, dtype=dtype, device=device), 4)


def _k1(g, dtype, device):
    return Sample(_randn(g, 4, 9, dtype=dtype, device=device), _randn(g, 4, 23, 9, dtype=dtype, device=device), 1)


def _k_eq_L(g, dtype, device):
    return Sample(_randn(g, 2, 6, dtype=dtype, device=device), _randn(g, 2, 13, 6, dtype=dtype, device=device), 13)


def _targets(g, dtype, device):
    return Sample(_randn(g, 2, 4, 8, dtype=dtype, device=device), _randn(g, 2, 50, 8, dtype=dtype, device=device), 6)


def _lengths_ragged(g, dtype, device):
    L = 41
    return Sample(_randn(g, 4, 7, dtype=dtype, device=device), _randn(g, 4, L, 7, dtype=dtype, device=device), 10,
                  lengths=_lengths([0, L, 3, 17], device))


def _lengths_targets_int32(g, dtype, device):
    L = 29
    return Sample(_randn(g, 3, 5, 3, dtype=dtype, device=device), _randn(g, 3, L, 3, dtype=dtype, device=device), 8,
                  lengths=_lengths([L, 5, 0], device, torch.int32))


def _ties(g, dtype, device):
    # Values in {-2..2}: many exactly equal scores, ordered by position.
    L = 300
    return Sample(_ints(g, 3, 2, 6, dtype=dtype, device=device), _ints(g, 3, L, 6, dtype=dtype, device=device), 40,
                  lengths=_lengths([L, 123, 7], device), exact=True)


def _all_equal(g, dtype, device):
    return Sample(torch.ones(2, 4, dtype=dtype, device=device), torch.ones(2, 70, 4, dtype=dtype, device=device), 9,
                  exact=True)


def _nan_inf(g, dtype, device):
    keys = _ints(g, 2, 60, 4, dtype=torch.float32, device="cpu")
    keys[0, 5, 1] = float("nan")
    keys[0, 40, 0] = float("nan")
    keys[0, 11, 2] = float("inf")
    keys[0, 12, 3] = float("-inf")
    keys[1, 0, 0] = float("-inf")
    keys[1, 59, 0] = float("nan")
    keys[1, 30] = float("-inf")
    query = _ints(g, 2, 4, dtype=torch.float32, device="cpu", lo=1, hi=3)
    return Sample(query.to(dtype).to(device), keys.to(dtype).to(device), 12,
                  lengths=_lengths([60, 45], device), exact=True)


def _neg_scale(g, dtype, device):
    # A negative scale turns +0 into -0: both zeros must tie.
    return Sample(_ints(g, 2, 5, dtype=dtype, device=device, lo=0, hi=2),
                  _ints(g, 2, 33, 5, dtype=dtype, device=device, lo=0, hi=2), 11, scale=-2.0, exact=True)


def _monotone(g, dtype, device):
    # Row 0 ascends (every key beats all before it: a streaming threshold never
    # filters), row 1 descends, row 2 is random; integers, exact in every dtype.
    B, L, d = 3, 250, 3
    keys = _ints(g, B, L, d, dtype=torch.float32, device="cpu", lo=-3, hi=4)
    keys[0] = 0.0
    keys[0, :, 1] = torch.arange(L, dtype=torch.float32)
    keys[1] = keys[0].flip(0)
    query = torch.tensor([[0.0, 1.0, 0.0]] * 2 + [[1.0, 1.0, 1.0]])
    return Sample(query.to(dtype).to(device), keys.to(dtype).to(device), 20, exact=True)


def _scaled(g, dtype, device):
    return Sample(_randn(g, 3, 16, dtype=dtype, device=device), _randn(g, 3, 200, 16, dtype=dtype, device=device), 17,
                  scale=0.25)


def _noncontiguous(g, dtype, device):
    B, L, d = 3, 31, 6
    keys = _randn(g, B, d, L, dtype=dtype, device=device).transpose(1, 2)  # (B, L, d), stride 1 on L
    query = _randn(g, 2 * d, B, dtype=dtype, device=device).t()[:, ::2]   # (B, d) strided
    lengths = _lengths([L, 0, 9, 4, 20, 1], device)[::2]                    # (B,) strided
    return Sample(query, keys, 5, lengths=lengths)


def _empty_batch(g, dtype, device):
    return Sample(_randn(g, 0, 8, dtype=dtype, device=device), _randn(g, 0, 10, 8, dtype=dtype, device=device), 3)


def _odd_d(g, dtype, device):
    return Sample(_randn(g, 2, 3, 33, dtype=dtype, device=device), _randn(g, 2, 129, 33, dtype=dtype, device=device), 20)


def _long(g, dtype, device):
    L = 3001
    return Sample(_randn(g, 3, 16, dtype=dtype, device=device), _randn(g, 3, L, 16, dtype=dtype, device=device), 128,
                  lengths=_lengths([L, 2500, 100], device))


def _big_k(g, dtype, device):
    L = 1500
    return Sample(_randn(g, 2, 32, dtype=dtype, device=device), _randn(g, 2, L, 32, dtype=dtype, device=device), 1024,
                  lengths=_lengths([L, 700], device))


def _huge_k(g, dtype, device):
    # Beyond the CUDA kernel's in-shared-memory k: the exact large-k path.
    L = 3000
    return Sample(_randn(g, 2, 8, dtype=dtype, device=device), _randn(g, 2, L, 8, dtype=dtype, device=device), 2000,
                  lengths=_lengths([L, 1500], device))


def _wide(g, dtype, device):
    return Sample(_randn(g, 2, 256, dtype=dtype, device=device), _randn(g, 2, 300, 256, dtype=dtype, device=device), 64)


def _targets_mma(g, dtype, device):
    # T >= 8, d in {16, 32, 64, 128}, 16-bit keys: the CUDA many-targets kernel.
    # T = 11: the second group of 8 targets is partly padding; a row shorter than k.
    L = 333
    return Sample(_randn(g, 3, 11, 32, dtype=dtype, device=device), _randn(g, 3, L, 32, dtype=dtype, device=device),
                  40, lengths=_lengths([L, 0, 25], device), scale=0.5)


def _targets_mma_exact(g, dtype, device):
    # Integers (ties everywhere), NaN and inf keys, many targets.
    L = 200
    keys = _ints(g, 2, L, 16, dtype=torch.float32, device="cpu")
    keys[0, 17, 3] = float("nan")
    keys[0, 90, 0] = float("inf")
    keys[1, 5, 7] = float("-inf")
    query = _ints(g, 2, 9, 16, dtype=torch.float32, device="cpu")
    return Sample(query.to(dtype).to(device), keys.to(dtype).to(device), 30, lengths=_lengths([L, 150], device),
                  exact=True)


def _targets_mma_wide(g, dtype, device):
    # d = 64 and 128 with k = 256 > the lengths: padded lists.
    return Sample(_randn(g, 2, 16, 64, dtype=dtype, device=device), _randn(g, 2, 300, 64, dtype=dtype, device=device),
                  256, lengths=_lengths([300, 100], device))


def _targets_mma_d128(g, dtype, device):
    return Sample(_randn(g, 2, 8, 128, dtype=dtype, device=device), _randn(g, 2, 150, 128, dtype=dtype, device=device),
                  128)


def _boundaries(n):
    """Positions where a kernel's blocks of keys meet, for a row of n keys: the
    last 8, the starts of the partial blocks of 8, 32 and 256 at the row's end,
    every multiple of 256, and the borders of the row split into 2..24 spans."""
    pos = set(range(n - 8, n))
    for m in (8, 32, 256):
        pos |= {n - n % m - 1, n - n % m}
    pos |= {j + e for j in range(256, n, 256) for e in (-1, 0)}
    for s in range(2, 25):
        span = -(-n // s)
        pos |= {j * span + e for j in range(1, s) for e in (-1, 0)}
    return pos


def _duplicated_keys(g, B, L, d, lengths=None, sources=8):
    """Random keys where a few vectors repeat, bit for bit, at many positions of
    each row: an eighth of the positions at random plus every block boundary of
    the row and of its length (_boundaries). The repeated vectors are 4x longer
    than the others, so copies fill the top k and its cut falls among them."""
    keys = torch.randn(B, L, d, generator=g)
    for b in range(B):
        n = L if lengths is None else int(lengths[b])
        pos = set(torch.randperm(L, generator=g)[: L // 8].tolist()) | _boundaries(L) | _boundaries(n)
        pos = torch.tensor(sorted(p for p in pos if 0 <= p < L))
        src = 4 * torch.randn(sources, d, generator=g)
        keys[b, pos] = src[torch.randint(sources, (len(pos),), generator=g)]
    return keys


def _duplicates(g, dtype, device):
    # Identical keys must tie (bit for bit) wherever they sit: L % 8, L % 32 and
    # L % 256 nonzero, lengths that end mid-block.
    B, L, d = 3, 601, 16
    lengths = [L, 333, 44]
    keys = _duplicated_keys(g, B, L, d, lengths)
    return Sample(_randn(g, B, d, dtype=dtype, device=device), keys.to(dtype).to(device), 40,
                  lengths=_lengths(lengths, device))


def _duplicates_odd_d(g, dtype, device):
    # d = 13: the vector paths' tail dims; d = 13 also takes the CUDA generic path.
    B, L, d = 2, 299, 13
    keys = _duplicated_keys(g, B, L, d)
    return Sample(_randn(g, B, d, dtype=dtype, device=device), keys.to(dtype).to(device), 30, scale=0.3)


def _duplicates_targets(g, dtype, device):
    # T = 9, d = 32: the CUDA many-targets (MMA) kernel for 16-bit keys when forced.
    B, T, L, d = 2, 9, 213, 32
    lengths = [L, 150]
    keys = _duplicated_keys(g, B, L, d, lengths)
    return Sample(_randn(g, B, T, d, dtype=dtype, device=device), keys.to(dtype).to(device), 24,
                  lengths=_lengths(lengths, device))


def _duplicates_long(g, dtype, device):
    # Rows long enough that the GPU kernels split them at this batch size: copies
    # on both sides of every span border; d = 64 (CUDA: the long-key path).
    B, L, d = 2, 5037, 64
    lengths = [L, 4003]
    keys = _duplicated_keys(g, B, L, d, lengths)
    return Sample(_randn(g, B, d, dtype=dtype, device=device), keys.to(dtype).to(device), 128,
                  lengths=_lengths(lengths, device))


def _one_row_targets(g, dtype, device):
    # Serving: one history, many targets: the CPU kernels split its targets over
    # work items (with two threads, items of 7 and 6 targets); d = 24.
    L = 300
    return Sample(_randn(g, 1, 13, 24, dtype=dtype, device=device), _randn(g, 1, L, 24, dtype=dtype, device=device),
                  20, lengths=_lengths([250], device))


# name -> (builder, large): large samples are skipped under the Triton interpreter.
SAMPLES: dict[str, tuple[Callable, bool]] = {
    "basic": (_basic, False),
    "d1": (_d1, False),
    "k1": (_k1, False),
    "k_eq_L": (_k_eq_L, False),
    "targets": (_targets, False),
    "lengths": (_lengths_ragged, False),
    "lengths_targets_int32": (_lengths_targets_int32, False),
    "ties": (_ties, False),
    "all_equal": (_all_equal, False),
    "nan_inf": (_nan_inf, False),
    "neg_scale": (_neg_scale, False),
    "monotone": (_monotone, False),
    "scaled": (_scaled, False),
    "noncontiguous": (_noncontiguous, False),
    "empty_batch": (_empty_batch, False),
    "odd_d": (_odd_d, False),
    "long": (_long, True),
    "big_k": (_big_k, True),
    "huge_k": (_huge_k, True),
    "wide": (_wide, True),
    "one_row_targets": (_one_row_targets, False),
    "targets_mma": (_targets_mma, False),
    "targets_mma_exact": (_targets_mma_exact, False),
    "targets_mma_wide": (_targets_mma_wide, True),
    "targets_mma_d128": (_targets_mma_d128, True),
    "duplicates": (_duplicates, False),
    "duplicates_odd_d": (_duplicates_odd_d, False),
    "duplicates_targets": (_duplicates_targets, False),
    "duplicates_long": (_duplicates_long, True),
}


# The layouts users' histories come in; every sample runs in each. "padded":
# right padding with lengths, as built; "mask": a strided (B, L) bool mask over
# a random 3/4 of the positions, with the lengths too, and NaN keys where it is
# False; "left": the rows moved to the end, a mask of the left padding, NaN keys
# in the padding; "jagged": keys (N, d) and offsets (B+1,), no padding at all.
LAYOUTS = ("padded", "mask", "left", "jagged")


def _row_lengths(lengths, B: int, L: int) -> list:
    return [L] * B if lengths is None else lengths.cpu().clamp(0, L).tolist()


def _mask_layout(g, B: int, L: int, lengths, device, layout: str) -> torch.Tensor:
    n = _row_lengths(lengths, B, L)
    if layout == "left":
        return (torch.arange(L)[None, :] >= L - torch.tensor(n, dtype=torch.long)[:, None]).to(device)
    keep = torch.rand(L, B, generator=g) < 0.75
    return keep.to(device).t()  # (B, L) with stride 1 over B: strided mask loads


def _left(x: torch.Tensor, lengths, fill) -> torch.Tensor:
    """Row b's first n_b positions moved to its end; the rest `fill`."""
    B, L = x.shape[:2]
    out = torch.full_like(x, fill)
    for b, n in enumerate(_row_lengths(lengths, B, L)):
        out[b, L - n:] = x[b, :n]
    return out


def _jagged(x: torch.Tensor, lengths, fill, ends):
    """(values, offsets): the first n_b positions of each row, concatenated, between
    ends = (front, back) values that belong to no row (`fill`: NaN keys, out-of-range
    ids), so offsets[0] > 0 and offsets[B] < N."""
    B, L = x.shape[:2]
    n = _row_lengths(lengths, B, L)
    front, back = ends
    junk = lambda m: torch.full((m, *x.shape[2:]), fill, dtype=x.dtype, device=x.device)  # noqa: E731
    values = torch.cat([junk(front)] + [x[b, :n[b]] for b in range(B)] + [junk(back)])
    offsets = front + torch.tensor([0] + n, dtype=torch.long).cumsum(0)
    if front == 2:  # int32 offsets in a third of the samples
        offsets = offsets.to(torch.int32)
    return values, offsets.to(x.device)


def _ends(g) -> tuple:
    return tuple(int(v) for v in torch.randint(1, 4, (2,), generator=g))


def with_layout(s: Sample, layout: str, g) -> Sample:
    if layout == "padded":
        return s
    B, L, _ = s.keys.shape
    if layout == "jagged":
        keys, offsets = _jagged(s.keys, s.lengths, float("nan"), _ends(g))
        return Sample(s.query, keys, s.k, None, s.scale, s.exact, offsets=offsets)
    mask = _mask_layout(g, B, L, s.lengths, s.keys.device, layout)
    if layout == "left":
        return Sample(s.query, _left(s.keys, s.lengths, float("nan")), s.k, None, s.scale, s.exact, mask=mask)
    keys = s.keys.masked_fill(~mask[..., None], float("nan"))
    return Sample(s.query, keys, s.k, s.lengths, s.scale, s.exact, mask=mask)


def sample_input(name: str, dtype: torch.dtype, device, seed: int, layout: str = "padded") -> Sample:
    g = torch.Generator().manual_seed(seed)
    return with_layout(SAMPLES[name][0](g, dtype, torch.device(device)), layout, g)


# ---------------------------------------------------------------------------
# topk_attention_embedding joins the same matrix: every sample's keys become
# embedding tables and ids (the keys' rows, permuted among extra rows, split
# into fields), so the op must return what topk_attention returns on the
# looked-up keys, checked by the same float64 oracle. A few samples only the
# embedding op has (shared position ids, duplicate ids, out-of-range padding).

@dataclasses.dataclass
class EmbeddingSample:
    query: torch.Tensor
    tables: list
    ids: list
    k: int
    lengths: Optional[torch.Tensor] = None
    scale: float = 1.0
    exact: bool = False
    mask: Optional[torch.Tensor] = None
    offsets: Optional[torch.Tensor] = None  # ids (N,): jagged rows

    def args(self):
        return (self.query, self.tables, self.ids, self.k, self.lengths, self.scale, self.mask, self.offsets)

    def kwargs(self) -> dict:
        return dict(lengths=self.lengths, scale=self.scale, mask=self.mask, offsets=self.offsets)

    def keys(self) -> torch.Tensor:
        """The looked-up (B, L, d) keys ((N, d) when jagged); padding positions read row 0."""
        B = self.query.shape[0]
        ids = []
        for t, i in zip(self.tables, self.ids):
            i = i.expand(B, i.shape[-1]) if i.dim() == 1 and self.offsets is None else i
            ids.append(torch.where((i >= 0) & (i < t.shape[0]), i, 0))
        return torch.cat([t[i] for t, i in zip(self.tables, ids)], -1)

    def as_sample(self) -> Sample:
        """The same search as topk_attention's inputs, for the oracle."""
        return Sample(self.query, self.keys(), self.k, self.lengths, self.scale, self.exact, self.mask, self.offsets)


def _widths(d: int) -> list:
    if d >= 4:
        return [d // 2, d // 4, d - d // 2 - d // 4]
    return [1, d - 1] if d > 1 else [1]


def _as_embedding(s: Sample, g) -> EmbeddingSample:
    B, L, d = s.keys.shape
    device = s.keys.device
    tables, ids, c0 = [], [], 0
    for f, w in enumerate(_widths(d)):
        rows = s.keys[..., c0:c0 + w].reshape(B * L, w)
        extra = int(torch.randint(1, 9, (1,), generator=g))
        n = B * L + extra
        perm = torch.randperm(n, generator=g)
        table = torch.empty(n, w, dtype=s.keys.dtype)
        table[perm[B * L:]] = _randn(g, extra, w, dtype=s.keys.dtype, device="cpu")
        table[perm[:B * L]] = rows.cpu()
        i = perm[:B * L].view(B, L)
        if f == 1:
            i = i.to(torch.int32)
        if f == 0 and L > 1:
            i = i.t().contiguous().t()  # (B, L) with stride 1 over B: strided id loads
        tables.append(table.to(device))
        ids.append(i.to(device))
        c0 += w
    return EmbeddingSample(s.query, tables, ids, s.k, s.lengths, s.scale, s.exact)


def _emb_shared_positions(g, dtype, device):
    # Item ids per row, category ids a stride-0 expand of one (L,) tensor, position
    # ids (L,) shared by every row (as a model's position buckets).
    B, L = 5, 301
    items = _randn(g, 500, 8, dtype=dtype, device=device)
    cats = _randn(g, 11, 8, dtype=dtype, device=device)
    pos = _randn(g, 19, 16, dtype=dtype, device=device)
    item_ids = torch.randint(0, 500, (B, L), generator=g).to(device)
    cat_ids = torch.randint(0, 11, (L,), generator=g).to(device).expand(B, L)
    pos_ids = torch.randint(0, 19, (L,), generator=g, dtype=torch.int32).to(device)
    return EmbeddingSample(_randn(g, B, 32, dtype=dtype, device=device), [items, cats, pos],
                           [item_ids, cat_ids, pos_ids], 33, lengths=_lengths([L, 0, 150, 7, 300], device))


def _emb_duplicates(g, dtype, device):
    # A 13-row table over a 700-long history: every key repeats ~50 times, so
    # equal scores (bit for bit) must come out by ascending position.
    B, L = 3, 700
    table = _randn(g, 13, 24, dtype=dtype, device=device)
    ids = torch.randint(0, 13, (B, L), generator=g).to(device)
    return EmbeddingSample(_randn(g, B, 2, 24, dtype=dtype, device=device), [table], [ids], 60,
                           lengths=_lengths([L, 333, 699], device))


def _emb_padding_ids(g, dtype, device):
    # Ids past a row's length are out of range (and negative): never read.
    B, L = 3, 90
    t0 = _randn(g, 40, 4, dtype=dtype, device=device)
    t1 = _randn(g, 7, 4, dtype=dtype, device=device)
    i0 = torch.randint(0, 40, (B, L), generator=g)
    i1 = torch.randint(0, 7, (B, L), generator=g)
    lengths = [90, 31, 2]
    for b, n in enumerate(lengths):
        i0[b, n:] = 10**6
        i1[b, n:] = -5
    return EmbeddingSample(_randn(g, B, 8, dtype=dtype, device=device), [t0, t1], [i0.to(device), i1.to(device)],
                           9, lengths=_lengths(lengths, device))


def _emb_wide_fields(g, dtype, device):
    # Three 128-wide fields: 384-wide keys (more than the CUDA fused path's 32 vectors).
    B, L = 2, 120
    tables = [_randn(g, 60, 128, dtype=dtype, device=device) for _ in range(3)]
    ids = [torch.randint(0, 60, (B, L), generator=g).to(device) for _ in range(3)]
    return EmbeddingSample(_randn(g, B, 384, dtype=dtype, device=device), tables, ids, 16)


def _emb_long_split(g, dtype, device):
    # One 16-wide field, long rows and few of them: GPU kernels split the rows.
    B, L = 2, 9001
    table = _randn(g, 4000, 16, dtype=dtype, device=device)
    ids = torch.randint(0, 4000, (B, L), generator=g).to(device)
    return EmbeddingSample(_randn(g, B, 16, dtype=dtype, device=device), [table], [ids], 128,
                           lengths=_lengths([L, 5000], device))


# name -> (builder, large): the embedding-only samples.
EMBEDDING_ONLY: dict[str, tuple[Callable, bool]] = {
    "emb_shared_positions": (_emb_shared_positions, False),
    "emb_duplicates": (_emb_duplicates, False),
    "emb_padding_ids": (_emb_padding_ids, False),
    "emb_wide_fields": (_emb_wide_fields, True),
    "emb_long_split": (_emb_long_split, True),
}
EMBEDDING_SAMPLES: dict[str, bool] = {**{n: large for n, (_, large) in SAMPLES.items()},
                                      **{n: large for n, (_, large) in EMBEDDING_ONLY.items()}}


def embedding_input(name: str, dtype: torch.dtype, device, seed: int, layout: str = "padded") -> EmbeddingSample:
    g = torch.Generator().manual_seed(seed)
    if name in EMBEDDING_ONLY:
        e = EMBEDDING_ONLY[name][0](g, dtype, torch.device(device))
    else:
        e = _as_embedding(SAMPLES[name][0](g, dtype, torch.device(device)), g)
    return embedding_layout(e, layout, g)


def embedding_layout(e: EmbeddingSample, layout: str, g) -> EmbeddingSample:
    """As with_layout, on the ids; positions that take no part hold out-of-range
    ids (never read)."""
    if layout == "padded":
        return e
    B = e.query.shape[0]
    ids = [i.expand(B, i.shape[-1]) if i.dim() == 1 else i for i in e.ids]
    L = ids[0].shape[1]
    if layout == "jagged":
        ends = _ends(g)
        pairs = [_jagged(i, e.lengths, -3, ends) for i in ids]
        return EmbeddingSample(e.query, e.tables, [v for v, _ in pairs], e.k, None, e.scale, e.exact,
                               offsets=pairs[0][1])
    mask = _mask_layout(g, B, L, e.lengths, e.query.device, layout)
    bad = [10**6, -5, 2**31 - 1, -1]
    if layout == "left":
        ids = [_left(i, e.lengths, bad[f]) for f, i in enumerate(ids)]
        return EmbeddingSample(e.query, e.tables, ids, e.k, None, e.scale, e.exact, mask=mask)
    ids = [i.masked_fill(~mask, bad[f]) for f, i in enumerate(ids)]
    return EmbeddingSample(e.query, e.tables, ids, e.k, e.lengths, e.scale, e.exact, mask=mask)
