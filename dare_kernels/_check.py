"""Input validation for the Python-side paths (fake/meta, Triton, reference).

Twin of csrc/check.cpp, which guards the compiled kernels when the op is called
raw; python_tests/test_errors.py holds every entry point to the same exception
types and messages."""
from __future__ import annotations

import math
import numbers
import operator
from typing import NamedTuple, Optional

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FP8 = torch.float8_e4m3fn  # keys only: 1 byte a dim, with a query of any FLOAT_DTYPES


class Shape(NamedTuple):
    B: int
    T: int
    L: int
    d: int
    multi_target: bool


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


FLOAT32_MAX = 3.4028234663852886e38


def check_k_type(op: str, k):
    """k as an int, as torch.topk takes it: an int, a torch.SymInt (traced), or any
    integer-like object but bool (operator.index: numpy.int64, ...); a bool (numpy's
    too), a Tensor, a float or anything else raises TypeError."""
    if type(k) is int or isinstance(k, torch.SymInt):
        return k
    if not isinstance(k, (bool, torch.Tensor)):
        try:
            return operator.index(k)
        except TypeError:
            pass
    raise TypeError(f"{op}: k must be an int, got {type(k).__name__}")


def check_args(query, keys, k, lengths=None, scale=1.0, mask=None, offsets=None) -> int:
    """The arguments' Python types (TypeError) and scale's value (ValueError),
    reading no tensor: cheap enough for every call of every backend. Returns k as
    an int (an integer-like k, e.g. numpy.int64, converted). Keys that look
    transposed (shapes only) raise check_inputs' error, whose hint the compiled
    kernels' check (csrc/check.cpp) does not give.

    The raw op cannot repeat these: its schema (int k, Tensor? lengths, float
    scale) converts a bool or a one-element tensor k to int and a bool or tensor
    scale to float before the kernel runs, and rejects other types with the
    dispatcher's RuntimeError. scale is checked again by the C++ kernels
    (csrc/check.cpp check_scale, same message)."""
    if not isinstance(query, torch.Tensor):
        raise TypeError(f"topk_attention: query must be a Tensor, got {type(query).__name__}")
    if not isinstance(keys, torch.Tensor):
        raise TypeError(f"topk_attention: keys must be a Tensor, got {type(keys).__name__}")
    k = check_k_type("topk_attention", k)
    _check_optional_tensors("topk_attention", lengths=lengths, mask=mask, offsets=offsets)
    _check_scale(scale, "topk_attention")
    if _looks_transposed(query, keys):
        _check_keys(query, keys, offsets is not None)
    return k


def _check_optional_tensors(op: str, **named) -> None:
    for name, t in named.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a Tensor or None, got {type(t).__name__}")


def _check_scale(scale, op: str) -> None:
    if isinstance(scale, (torch.SymFloat, torch.SymInt)) or torch.compiler.is_compiling():
        return  # traced: its value is not known here (the compiled kernels check it when they run)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"{op}: scale must be a float, got {type(scale).__name__}")
    # The kernels scale float32 scores by float32(scale): 1e39 would make every score inf.
    if not (math.isfinite(scale) and abs(scale) <= FLOAT32_MAX):
        value = "nan" if math.isnan(scale) else repr(float(scale))
        raise ValueError(f"{op}: scale must be finite in float32, got {value}")


def _looks_transposed(query: torch.Tensor, keys: torch.Tensor) -> bool:
    """keys (B, d, L) or (d, N) where (B, L, d) or (N, d) was meant: the query's d
    sits in keys' second-to-last dim, not in the last."""
    return query.dim() >= 1 and keys.dim() >= 2 and keys.shape[-1] != query.shape[-1] \
        and keys.shape[-2] == query.shape[-1]


def _check_keys(query: torch.Tensor, keys: torch.Tensor, jagged: bool) -> tuple:
    """check_inputs' shape, dtype and device part (query and keys); returns (B, L, d)."""
    if jagged and keys.dim() != 2:
        raise ValueError(f"topk_attention: with offsets, keys must have shape (N, d), got shape {_shape(keys)}")
    if not jagged and keys.dim() != 3:
        raise ValueError(f"topk_attention: keys must have shape (B, L, d), got shape {_shape(keys)}")
    if query.dim() not in (2, 3):
        raise ValueError(
            f"topk_attention: query must have shape (B, d) or (B, T, d), got shape {_shape(query)}")
    if keys.dtype not in FLOAT_DTYPES and keys.dtype != FP8:
        raise TypeError(
            f"topk_attention: keys must be float32, float16, bfloat16 or float8_e4m3fn, got {keys.dtype}")
    if keys.dtype == FP8:
        if query.dtype not in FLOAT_DTYPES:
            raise TypeError(f"topk_attention: with float8_e4m3fn keys, query must be float32, float16 or "
                            f"bfloat16, got {query.dtype}")
    elif query.dtype != keys.dtype:
        raise TypeError(
            f"topk_attention: query dtype must equal keys dtype {keys.dtype}, got {query.dtype}")
    if query.device != keys.device:
        raise ValueError(
            f"topk_attention: query must be on the keys device {keys.device}, got {query.device}")
    if jagged:
        B, (L, d) = query.shape[0], keys.shape
    else:
        B, L, d = keys.shape
        if query.shape[0] != B:
            raise ValueError(
                f"topk_attention: query batch size must equal keys batch size B={B}, got {query.shape[0]}")
    if query.shape[-1] != d:
        hint = ""
        if _looks_transposed(query, keys):
            hint = f" (keys look transposed: expected {'(N, d)' if jagged else '(B, L, d)'})"
        raise ValueError(
            f"topk_attention: query feature size must equal keys feature size d={d}, got {query.shape[-1]}{hint}")
    if d < 1:
        raise ValueError(f"topk_attention: keys feature size d must be >= 1, got {d}")
    if L >= 2**31:
        what = "rows N" if jagged else "length L"
        raise ValueError(f"topk_attention: keys {what} must be < 2**31, got {L}")
    return B, L, d


def check_inputs(query: torch.Tensor, keys: torch.Tensor, k: int,
                 lengths: Optional[torch.Tensor] = None, *,
                 check_length_values: bool = True, scale: float = 1.0,
                 mask: Optional[torch.Tensor] = None, offsets: Optional[torch.Tensor] = None) -> Shape:
    """Raises ValueError/TypeError naming the argument and the expected value.

    With offsets, keys are jagged: (N, d), row b = keys[offsets[b]:offsets[b+1]],
    and Shape.L is N. Length and offset values are read only when
    check_length_values is set (it costs a host synchronisation on a GPU)."""
    check_args(query, keys, k, lengths, scale, mask, offsets)
    jagged = offsets is not None
    B, L, d = _check_keys(query, keys, jagged)
    check_k("topk_attention", k, L, jagged)
    check_layout("topk_attention", lengths, mask, offsets, B, L, keys.device, "keys", check_length_values)
    multi = query.dim() == 3
    return Shape(B, query.shape[1] if multi else 1, L, d, multi)


def check_k(op: str, k: int, L: int, jagged: bool) -> None:
    """Padded rows: 1 <= k <= L (as torch.topk). Jagged rows have no common L:
    1 <= k < 2**31 (rows shorter than k are padded; the cap keeps k an int32, as
    the kernels hold it)."""
    if jagged:
        if not 1 <= k < 2**31:
            raise ValueError(f"{op}: k must satisfy 1 <= k < 2**31, got {k}")
    elif not 1 <= k <= L:
        raise ValueError(f"{op}: k must satisfy 1 <= k <= L={L}, got {k}")


def output_shape(s: Shape, k: int) -> tuple:
    return (s.B, s.T, k) if s.multi_target else (s.B, k)


MAX_FIELDS = 4


def _tensor_list(x, name: str, op: str) -> list:
    if isinstance(x, torch.Tensor) or not isinstance(x, (list, tuple)):
        raise TypeError(f"{op}: {name} must be a list of Tensors, got {type(x).__name__}")
    for i, t in enumerate(x):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name}[{i}] must be a Tensor, got {type(t).__name__}")
    return list(x)


def check_lengths(op: str, lengths: Optional[torch.Tensor], B: int, L: int, device, device_of: str,
                  check_values: bool) -> None:
    """The lengths check of both ops (`device_of`: the argument that sets the device).
    Values are read only when check_values is set (a host synchronisation on a GPU)."""
    if lengths is None:
        return
    if lengths.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: lengths must be int32 or int64, got {lengths.dtype}")
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"{op}: lengths must have shape (B,)=({B},), got shape {_shape(lengths)}")
    if lengths.device != device:
        raise ValueError(f"{op}: lengths must be on the {device_of} device {device}, got {lengths.device}")
    if check_values and B > 0:
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > L:
            raise ValueError(f"{op}: lengths values must be in [0, L={L}], got min {lo}, max {hi}")


def check_layout(op: str, lengths, mask, offsets, B: int, L: int, device, device_of: str,
                 check_values: bool) -> None:
    """Which positions take part, in one of the layouts users' histories come in:
    right padding (lengths), any mask (B, L) bool (left padding included; with
    lengths too, both must hold), or jagged rows (offsets (B+1,), alone; L is then
    the number of keys N). Offset values are read only when check_values is set."""
    if offsets is not None:
        if lengths is not None:
            raise ValueError(f"{op}: lengths must be None with offsets (row b's length is offsets[b+1] - offsets[b])")
        if mask is not None:
            raise ValueError(f"{op}: mask must be None with offsets (jagged rows hold only the positions that take part)")
        if offsets.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{op}: offsets must be int32 or int64, got {offsets.dtype}")
        if offsets.dim() != 1 or offsets.shape[0] != B + 1:
            raise ValueError(f"{op}: offsets must have shape (B+1,)=({B + 1},), got shape {_shape(offsets)}")
        if offsets.device != device:
            raise ValueError(f"{op}: offsets must be on the {device_of} device {device}, got {offsets.device}")
        if check_values:
            o = offsets.long().cpu()
            if int(o[0]) < 0 or int(o[-1]) > L or bool((o[1:] < o[:-1]).any()):
                raise ValueError(f"{op}: offsets must be nondecreasing from offsets[0] >= 0 to offsets[B] <= N={L}, "
                                 f"got {_values(o)}")
        return
    check_lengths(op, lengths, B, L, device, device_of, check_values)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"{op}: mask must be torch.bool (True = takes part, e.g. ids != 0), got {mask.dtype}")
        if mask.dim() != 2 or tuple(mask.shape) != (B, L):
            raise ValueError(f"{op}: mask must have shape (B, L)=({B}, {L}), got shape {_shape(mask)}")
        if mask.device != device:
            raise ValueError(f"{op}: mask must be on the {device_of} device {device}, got {mask.device}")


def _values(t: torch.Tensor) -> str:
    v = t.tolist()
    return str(v) if len(v) <= 8 else "[" + ", ".join(map(str, v[:4])) + ", ..., " + ", ".join(map(str, v[-3:])) + "]"


def check_embedding_args(query, tables, ids, k, lengths=None, scale=1.0, mask=None, offsets=None) -> int:
    """check_args' twin for topk_attention_embedding: the arguments' Python types
    (TypeError; tables and ids lists of Tensors) and scale's value, reading no
    tensor. Returns k as an int (an integer-like k, e.g. numpy.int64, converted)."""
    op = "topk_attention_embedding"
    if not isinstance(query, torch.Tensor):
        raise TypeError(f"{op}: query must be a Tensor, got {type(query).__name__}")
    _check_scale(scale, op)
    _tensor_list(tables, "tables", op)
    _tensor_list(ids, "ids", op)
    _check_optional_tensors(op, lengths=lengths, mask=mask, offsets=offsets)
    return check_k_type(op, k)


def check_embedding_inputs(query: torch.Tensor, tables, ids, k: int,
                           lengths: Optional[torch.Tensor] = None, *,
                           check_values: bool = True, scale: float = 1.0,
                           mask: Optional[torch.Tensor] = None, offsets: Optional[torch.Tensor] = None) -> Shape:
    """topk_attention_embedding's check: the keys are [tables[0][ids[0]] | ... ],
    so (B, L) come from the ids and d = sum of the tables' widths; with offsets
    every ids[f] holds jagged values (N,) and L is N. Raises ValueError/TypeError
    naming the argument. Id, length and offset values are read only when
    check_values is set (a host synchronisation on a GPU)."""
    op = "topk_attention_embedding"
    check_embedding_args(query, tables, ids, k, lengths, scale, mask, offsets)
    tables, ids = list(tables), list(ids)
    F = len(tables)
    if not 1 <= F <= MAX_FIELDS:
        raise ValueError(f"{op}: tables must hold 1 to {MAX_FIELDS} fields, got {F}")
    if len(ids) != F:
        raise ValueError(f"{op}: ids must hold one Tensor per table ({F}), got {len(ids)}")
    if query.dim() not in (2, 3):
        raise ValueError(f"{op}: query must have shape (B, d) or (B, T, d), got shape {_shape(query)}")
    if query.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: query must be float32, float16 or bfloat16, got {query.dtype}")
    jagged = offsets is not None
    B = query.shape[0]
    L = None
    for f in range(F):
        t, i = tables[f], ids[f]
        if t.dim() != 2:
            raise ValueError(f"{op}: tables[{f}] must have shape (N, d), got shape {_shape(t)}")
        if t.dtype != query.dtype:
            raise TypeError(f"{op}: tables[{f}] dtype must equal query dtype {query.dtype}, got {t.dtype}")
        if t.device != query.device:
            raise ValueError(f"{op}: tables[{f}] must be on the query device {query.device}, got {t.device}")
        if t.shape[0] < 1 or t.shape[1] < 1:
            raise ValueError(f"{op}: tables[{f}] must have at least one row and one column, got shape {_shape(t)}")
        if i.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{op}: ids[{f}] must be int32 or int64, got {i.dtype}")
        if i.device != query.device:
            raise ValueError(f"{op}: ids[{f}] must be on the query device {query.device}, got {i.device}")
        if jagged and i.dim() != 1:
            raise ValueError(f"{op}: with offsets, ids[{f}] must have shape (N,) (jagged values), "
                             f"got shape {_shape(i)}")
        if i.dim() not in (1, 2) or (i.dim() == 2 and i.shape[0] != B):
            raise ValueError(f"{op}: ids[{f}] must have shape (B, L) with B={B} or (L,), got shape {_shape(i)}")
        if L is None:
            L = i.shape[-1]
        elif i.shape[-1] != L:
            what = "N" if jagged else "L"
            raise ValueError(f"{op}: ids[{f}] length must equal ids[0] length {what}={L}, got {i.shape[-1]}")
    d = sum(t.shape[1] for t in tables)
    if query.shape[-1] != d:
        raise ValueError(f"{op}: query feature size must equal the tables' total width d={d}, got {query.shape[-1]}")
    if L >= 2**31:
        raise ValueError(f"{op}: ids length {'N' if jagged else 'L'} must be < 2**31, got {L}")
    check_k(op, k, L, jagged)
    check_layout(op, lengths, mask, offsets, B, L, query.device, "query", check_values)
    if check_values and B > 0 and L > 0:
        check_id_values(tables, ids, B, L, valid_positions(B, L, lengths, mask, offsets, query.device))
    multi = query.dim() == 3
    return Shape(B, query.shape[1] if multi else 1, L, d, multi)


def jagged_rows(offsets: torch.Tensor, N: int):
    """(start, end) of each jagged row among the N values, clamped as every kernel
    clamps them: start = clamp(offsets[b], 0, N), end = clamp(offsets[b+1], start, N)."""
    o = offsets.long()
    start = o[:-1].clamp(0, N)
    return start, torch.maximum(o[1:].clamp(0, N), start)


def jagged_positions(offsets: torch.Tensor, idx: torch.Tensor, N: int) -> torch.Tensor:
    """Positions among the N values of row-relative indices idx (B, n); a padding
    slot (-1) reads its row's start; all clamped into [0, N)."""
    return (jagged_rows(offsets, N)[0][:, None] + idx.clamp(min=0)).clamp(max=max(N - 1, 0))


def valid_positions(B: int, L: int, lengths=None, mask=None, offsets=None, device=None) -> Optional[torch.Tensor]:
    """Which positions take part: (B, L) bool for padded rows (None: all), or, with
    offsets, (N,) bool over the jagged values (those inside some row)."""
    if offsets is not None:
        start, end = jagged_rows(offsets, L)
        counts = torch.zeros(L + 1, dtype=torch.long, device=start.device)
        counts.index_add_(0, start, torch.ones_like(start))
        counts.index_add_(0, end, -torch.ones_like(end))
        return counts.cumsum(0)[:L] > 0
    valid = None
    if lengths is not None:
        valid = torch.arange(L, device=lengths.device)[None, :] < lengths.clamp(0, L)[:, None]
    if mask is not None:
        valid = mask if valid is None else valid & mask
    return valid


def check_id_values(tables, ids, B: int, L: int, valid: Optional[torch.Tensor]) -> None:
    """ValueError naming the field and the value of an id out of [0, N) at a
    position that takes part (`valid`, from valid_positions); others are never read."""
    for f, (t, i) in enumerate(zip(tables, ids)):
        if valid is None or valid.dim() == 2:
            i = i.expand(B, L) if i.dim() == 1 else i
        bad = (i < 0) | (i >= t.shape[0])
        if valid is not None:
            bad &= valid
        if bool(bad.any()):
            v = int(i[bad][0])
            raise ValueError(f"topk_attention_embedding: ids[{f}] values must be in [0, {t.shape[0]}) "
                             f"(rows of tables[{f}]), got {v}")
