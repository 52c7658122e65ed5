"""The one sample-inputs matrix: every backend is checked on all of it against
the float64 reference (python_tests/test_topk_attention.py)."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch


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

    def args(self):
        return (self.query, self.keys, self.k, self.lengths, self.scale)


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
    "targets_mma": (_targets_mma, False),
    "targets_mma_exact": (_targets_mma_exact, False),
    "targets_mma_wide": (_targets_mma_wide, True),
    "targets_mma_d128": (_targets_mma_d128, True),
    "duplicates": (_duplicates, False),
    "duplicates_odd_d": (_duplicates_odd_d, False),
    "duplicates_targets": (_duplicates_targets, False),
    "duplicates_long": (_duplicates_long, True),
}


def sample_input(name: str, dtype: torch.dtype, device, seed: int) -> Sample:
    g = torch.Generator().manual_seed(seed)
    return SAMPLES[name][0](g, dtype, torch.device(device))
