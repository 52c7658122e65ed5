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
}


def sample_input(name: str, dtype: torch.dtype, device, seed: int) -> Sample:
    g = torch.Generator().manual_seed(seed)
    return SAMPLES[name][0](g, dtype, torch.device(device))
