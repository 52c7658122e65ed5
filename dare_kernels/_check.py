"""Input validation for the Python-side paths (fake/meta, Triton, reference).

Twin of csrc/check.cpp, which guards the compiled kernels when the op is called
raw; python_tests/test_errors.py holds every entry point to the same exception
types and messages."""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class Shape(NamedTuple):
    B: int
    T: int
    L: int
    d: int
    multi_target: bool


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


FLOAT32_MAX = 3.4028234663852886e38


def check_args(query, keys, k, lengths=None, scale=1.0) -> None:
    """The arguments' Python types (TypeError) and scale's value (ValueError),
    reading no tensor: cheap enough for every call of every backend.

    The raw op cannot repeat these: its schema (int k, Tensor? lengths, float
    scale) converts a bool or a one-element tensor k to int and a bool or tensor
    scale to float before the kernel runs, and rejects other types with the
    dispatcher's RuntimeError. scale is checked again by the C++ kernels
    (csrc/check.cpp check_scale, same message)."""
    if not isinstance(query, torch.Tensor):
        raise TypeError(f"topk_attention: query must be a Tensor, got {type(query).__name__}")
    if not isinstance(keys, torch.Tensor):
        raise TypeError(f"topk_attention: keys must be a Tensor, got {type(keys).__name__}")
    if isinstance(k, bool) or not isinstance(k, (int, torch.SymInt)):
        raise TypeError(f"topk_attention: k must be an int, got {type(k).__name__}")
    if lengths is not None and not isinstance(lengths, torch.Tensor):
        raise TypeError(f"topk_attention: lengths must be a Tensor or None, got {type(lengths).__name__}")
    if isinstance(scale, (torch.SymFloat, torch.SymInt)):
        return  # traced: its value is not known here
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"topk_attention: scale must be a float, got {type(scale).__name__}")
    # The kernels scale float32 scores by float32(scale): 1e39 would make every score inf.
    if not (math.isfinite(scale) and abs(scale) <= FLOAT32_MAX):
        value = "nan" if math.isnan(scale) else repr(float(scale))
        raise ValueError(f"topk_attention: scale must be finite in float32, got {value}")


def check_inputs(query: torch.Tensor, keys: torch.Tensor, k: int,
                 lengths: Optional[torch.Tensor] = None, *,
                 check_length_values: bool = True, scale: float = 1.0) -> Shape:
    """Raises ValueError/TypeError naming the argument and the expected value.

    Length values are read only when check_length_values is set (it costs a
    host synchronisation on a GPU)."""
    check_args(query, keys, k, lengths, scale)
    if keys.dim() != 3:
        raise ValueError(f"topk_attention: keys must have shape (B, L, d), got shape {_shape(keys)}")
    if query.dim() not in (2, 3):
        raise ValueError(
            f"topk_attention: query must have shape (B, d) or (B, T, d), got shape {_shape(query)}")
    if keys.dtype not in FLOAT_DTYPES:
        raise TypeError(f"topk_attention: keys must be float32, float16 or bfloat16, got {keys.dtype}")
    if query.dtype != keys.dtype:
        raise TypeError(
            f"topk_attention: query dtype must equal keys dtype {keys.dtype}, got {query.dtype}")
    if query.device != keys.device:
        raise ValueError(
            f"topk_attention: query must be on the keys device {keys.device}, got {query.device}")
    B, L, d = keys.shape
    if query.shape[0] != B:
        raise ValueError(
            f"topk_attention: query batch size must equal keys batch size B={B}, got {query.shape[0]}")
    if query.shape[-1] != d:
        raise ValueError(
            f"topk_attention: query feature size must equal keys feature size d={d}, got {query.shape[-1]}")
    if d < 1:
        raise ValueError(f"topk_attention: keys feature size d must be >= 1, got {d}")
    if L >= 2**31:
        raise ValueError(f"topk_attention: keys length L must be < 2**31, got {L}")
    if not 1 <= k <= L:
        raise ValueError(f"topk_attention: k must satisfy 1 <= k <= L={L}, got {k}")
    if lengths is not None:
        if lengths.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"topk_attention: lengths must be int32 or int64, got {lengths.dtype}")
        if lengths.dim() != 1 or lengths.shape[0] != B:
            raise ValueError(
                f"topk_attention: lengths must have shape (B,)=({B},), got shape {_shape(lengths)}")
        if lengths.device != keys.device:
            raise ValueError(
                f"topk_attention: lengths must be on the keys device {keys.device}, got {lengths.device}")
        if check_length_values and B > 0:
            lo, hi = int(lengths.min()), int(lengths.max())
            if lo < 0 or hi > L:
                raise ValueError(
                    f"topk_attention: lengths values must be in [0, L={L}], got min {lo}, max {hi}")
    multi = query.dim() == 3
    return Shape(B, query.shape[1] if multi else 1, L, d, multi)


def output_shape(s: Shape, k: int) -> tuple:
    return (s.B, s.T, k) if s.multi_target else (s.B, k)
