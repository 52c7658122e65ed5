"""The Triton backend: launch plan, autotuning and the `dare::topk_attention_triton` op.

`torch.library.triton_op` lets torch.compile trace through the launcher to the kernels;
the op shares the public op's input check, fake shapes and autograd formula."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from typing import Optional

import torch
import triton
from torch.library import triton_op, wrap_triton

from .. import reference
from .._check import check_embedding_inputs, check_inputs, output_shape
from .._contract import register_autograd
from . import INTERPRET, kernels

# Largest k the fused kernels select themselves (the CUDA kernels' kMaxK, csrc/cuda, is its C++ twin);
# above it: _exact_above_fused_k, the one large-k path.
FUSED_MAX_K = 1024
# Most programs per row, and most group maxima a split row's last program bounds with.
MAX_SPLIT = 16
MAX_GROUPS = 2048


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class Config:
    """Launch parameters. `tile` is the number of key elements (C x d) loaded at once;
    `maxnreg` caps registers per thread so that more programs share an SM."""
    tile: int
    num_warps: int
    maxnreg: Optional[int] = None

    def options(self) -> dict:
        return dict(num_warps=self.num_warps, **({"maxnreg": self.maxnreg} if self.maxnreg else {}))


# Autotuned on the GPU (keyed on d, k and dtype); the first is the default.
CONFIGS = (Config(8192, 4), Config(4096, 4), Config(4096, 2), Config(8192, 8, 64))
INTERPRET_CONFIG = Config(32 * 16, 1)
DEFAULT_CONFIG = INTERPRET_CONFIG if INTERPRET else CONFIGS[0]


@dataclasses.dataclass(frozen=True)
class Plan:
    width: int  # d, the key width
    width_pow2: int  # power of two >= d: the whole key in one tile
    best_slots: int  # power of two >= k (>= 16): the best list
    pending_cap: int  # pending keys one fold takes (the list folds when it passes half)
    sort_size: int  # best_slots + pending_cap: the one sort of a fold
    select_step: int  # order keys per step of the select pass
    lane_slots: int  # candidate slots of each of its select_step lanes
    group_maxima: int  # group maxima each program of a split row publishes (<= every config's chunk)
    row_maxima_pow2: int  # power of two >= split * group_maxima
    split: int  # programs per row
    span: int  # keys per program
    scratch: int  # int64 slots of a row's select: best list, pending list, then select_step lanes of lane_slots

    def chunk(self, cfg: Config) -> int:
        return max(16, cfg.tile // self.width_pow2)

    def selection(self) -> dict:
        """The select stage's compile-time parameters, under the kernels' constexpr names
        (kernels.py keeps them short): the one place that maps the two."""
        return dict(K_PAD=self.best_slots, P_CAP=self.pending_cap, M_S=self.sort_size, C2=self.select_step,
                    W=self.lane_slots, CG=self.group_maxima, G=self.row_maxima_pow2)

    def fixed(self) -> dict:
        """Compile-time parameters of _search_kernel that no config changes (kernel names;
        DB: the key width's tile)."""
        return dict(DB=self.width_pow2, **self.selection())


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def plan(R: int, L: int, D: int, k: int, device: torch.device, split: Optional[int] = None,
         cfg: Optional[Config] = None) -> Plan:
    """R = B*T rows of L keys of width D. `split` forces the programs per row and `cfg`
    the config (tests)."""
    if all(type(v) is int for v in (R, L, D, k)):  # not symbolic (torch.compile): cache
        return _plan_cached(R, L, D, k, device, split, cfg)
    return _plan(R, L, D, k, device, split, cfg)


def _plan(R, L, D, k, device, split, cfg) -> Plan:
    width_pow2 = _pow2(D)  # the whole key in one tile: d <= 256
    best_slots = max(16, _pow2(k))
    sort_size = max(512, 2 * best_slots) if not INTERPRET else max(64, 2 * best_slots)
    pending_cap = sort_size - best_slots
    configs = ((INTERPRET_CONFIG,) if INTERPRET else CONFIGS) + ((cfg,) if cfg else ())
    chunks = [max(16, c.tile // width_pow2) for c in configs]
    if split is None:
        # Rows alone should give every SM two programs; else split rows, a chunk or more each.
        programs = 2 * (8 if INTERPRET else _sm_count(device.index or 0))
        split = min(-(-programs // max(R, 1)), -(-L // max(max(chunks), 256 if not INTERPRET else 1)))
    split = max(1, min(split, L, MAX_SPLIT))
    span = -(-L // split)
    split = -(-L // span)
    group_maxima = min(128, min(chunks), 1 << (MAX_GROUPS // split).bit_length() - 1)
    # A split row's selection is its latency (B = 8, d = 32, H200: 2048 saved ~1.5 us); an
    # unsplit row's overlaps other rows' streams, and 2048 costs registers (125 -> 167).
    select_step = 64 if INTERPRET else 2048 if split > 1 else 1024
    # Random rows put ~0.15 keys in a lane; 4 slots overflow in ~0.1% of rows (then the
    # filter pass runs). Under the interpreter 2, so that the small tests take both paths.
    lane_slots = 2 if INTERPRET else 4
    # The gathered slots (at most pending_cap, at most select_step * lane_slots) must fit the pending list.
    assert min(pending_cap, select_step * lane_slots) <= pending_cap // 2 + select_step, \
        (pending_cap, select_step, lane_slots)
    return Plan(width=D, width_pow2=width_pow2, best_slots=best_slots, pending_cap=pending_cap, sort_size=sort_size,
                select_step=select_step, lane_slots=lane_slots, group_maxima=group_maxima,
                row_maxima_pow2=_pow2(split * group_maxima), split=split, span=span,
                scratch=best_slots + pending_cap // 2 + select_step + select_step * lane_slots)


_plan_cached = functools.lru_cache(maxsize=4096)(_plan)


# Below this many keys per call a launch is latency-bound: the default config, no tuning.
# DARE_TRITON_AUTOTUNE=0 turns tuning off (e.g. to capture a CUDA graph on the first call).
AUTOTUNE_MIN_KEYS = 1 << 20
AUTOTUNE = os.environ.get("DARE_TRITON_AUTOTUNE", "1") != "0"


def autotuner(p: Plan):
    """The autotuner of p's compile-time plan (d, k bucket), shared by every batch shape;
    it keys on dtype and split."""
    return _autotuned(dataclasses.replace(p, split=0, span=0))


@functools.lru_cache(maxsize=None)
def _autotuned(p: Plan):
    return triton.autotune(
        configs=[triton.Config({"C": p.chunk(c)}, **c.options()) for c in CONFIGS],
        key=["SPLIT"],
    )(kernels._search_kernel)


def _layout(q, lengths, mask, offsets):
    """The kernels' layout arguments: (lengths, mask, offsets) pointers (q where absent),
    the mask's strides, and their flags."""
    ptrs = tuple(q if t is None else t for t in (lengths, mask, offsets))
    strides = (mask.stride(0), mask.stride(1)) if mask is not None else (0, 0)
    flags = dict(HAS_LEN=lengths is not None, HAS_MASK=mask is not None, JAGGED=offsets is not None)
    return ptrs, strides, flags


def _workspace(p: Plan, s, device, jagged: bool, published: bool = False):
    """(okeys, scratch, gmax, tickets). Separate buffers, not views of one: traced launches
    must not see aliased mutated arguments. Jagged rows of one target are disjoint: T*N order keys.
    gmax holds the group maxima each program publishes: a split row's programs, or with
    `published` every program (the many-targets path's score launch, for its select launch)."""
    R = s.B * s.T
    split_rows = p.split > 1
    # A split row's tickets start at 0 and its last program resets them.
    return (torch.empty(max(1, (s.T if jagged else R) * s.L), dtype=torch.int32, device=device),
            torch.empty(R * p.scratch, dtype=torch.int64, device=device),
            torch.empty(R * p.split * p.group_maxima if split_rows or published else 1, dtype=torch.int32,
                        device=device),
            torch.zeros(R if split_rows and not published else 1, dtype=torch.int32, device=device))


def _launch_search(wrap, p: Plan, q, keys, lengths, mask, offsets, out_s, out_i, work, T, L, k, scale,
                   cfg: Optional[Config]):
    ptrs, strides, flags = _layout(q, lengths, mask, offsets)
    okeys, scratch, gmax, tickets = work
    # Jagged keys (N, d): row b starts at its offset, not at a batch stride.
    stride_kb, stride_kl = (0, keys.stride(0)) if offsets is not None else (keys.stride(0), keys.stride(1))
    args = (q, keys, *ptrs, out_s, out_i, okeys, gmax, tickets, scratch,
            T, L, p.width, k, p.span, p.scratch, scale, stride_kb, stride_kl, *strides)
    grid = (q.shape[0], p.split)
    flags["SPLIT"] = p.split > 1
    if cfg is None and AUTOTUNE and not INTERPRET and okeys.numel() >= AUTOTUNE_MIN_KEYS:  # one per key scored
        wrap(autotuner(p))[grid](*args, **p.fixed(), **flags)
        return
    cfg = cfg or DEFAULT_CONFIG
    wrap(kernels._search_kernel)[grid](*args, **p.fixed(), C=p.chunk(cfg), **flags, **cfg.options())


# Many targets a row (serving: T candidates of one history) at or above TARGETS_MIN: the
# keys are read once per tile of TARGETS_TILE targets and scored with tl.dot
# (kernels._targets_score_kernel), then each target selects (kernels._targets_select_kernel).
# DARE_TRITON_TARGETS=0 turns that off (every target streams the row, for comparison).
TARGETS_MIN = 8
TARGETS_TILE = 16  # tl.dot's smallest M
TARGETS = os.environ.get("DARE_TRITON_TARGETS", "1") != "0"
TARGETS_MAX_CHUNK = 128  # TARGETS_TILE x chunk float32 scores per program


def _takes_targets(T: int, dtype: torch.dtype) -> bool:
    return TARGETS and T >= TARGETS_MIN and dtype in (torch.float32, torch.float16, torch.bfloat16)


def _launch_targets(wrap, s, q, keys, lengths, mask, offsets, out_s, out_i, k, scale, split, cfg):
    """The many-targets path: s.B rows of s.T targets (see TARGETS_MIN)."""
    tiles = -(-s.T // TARGETS_TILE)
    R = s.B * s.T
    device = keys.device
    p = plan(s.B * tiles, _planned_length(s, offsets), s.d, k, device, split, cfg)
    cfg = cfg or DEFAULT_CONFIG
    chunk = min(p.chunk(cfg), TARGETS_MAX_CHUNK)  # >= group_maxima: both powers of two, and it divides
    jagged = offsets is not None
    okeys, scratch, gmax, _ = _workspace(p, s, device, jagged, published=True)
    ptrs, strides, flags = _layout(q, lengths, mask, offsets)
    stride_kb, stride_kl = (0, keys.stride(0)) if jagged else (keys.stride(0), keys.stride(1))
    wrap(kernels._targets_score_kernel)[(s.B, tiles, p.split)](
        q, keys, *ptrs, okeys, gmax, s.T, s.L, s.d, p.span, scale, stride_kb, stride_kl, *strides,
        DB=max(16, p.width_pow2), TT=TARGETS_TILE, C=chunk, CG=p.group_maxima, **flags,
        IEEE=keys.dtype == torch.float32, DOT=not INTERPRET, num_warps=4)
    wrap(kernels._targets_select_kernel)[(R,)](
        ptrs[0], ptrs[2], okeys, gmax, scratch, out_s, out_i, s.T, s.L, k, p.split, p.scratch, **p.selection(),
        HAS_LEN=flags["HAS_LEN"], JAGGED=flags["JAGGED"], num_warps=cfg.num_warps)


@triton_op("dare::topk_attention_triton", mutates_args=())
def topk_attention(query: torch.Tensor, keys: torch.Tensor, k: int, lengths: Optional[torch.Tensor] = None,
                   scale: float = 1.0, mask: Optional[torch.Tensor] = None,
                   offsets: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    return _topk_attention(query, keys, k, lengths, scale, mask, offsets)


def _raw(kernel):
    return kernel


def eager(query, keys, k, lengths=None, scale=1.0, mask=None, offsets=None, *, split: Optional[int] = None,
          cfg: Optional[Config] = None):
    """The op's computation without the dispatcher (on the H200 machine the dispatcher
    path measured 115-232 us of host time per call, this one 78-100 us): for plain tensors
    when nothing traces and no gradient is needed. `split` and `cfg` force the launch
    plan (programs per row, config), as plan() takes them (sweeps: bench/tools/sweep_triton.py)."""
    return _topk_attention(query, keys, k, lengths, scale, mask, offsets, split=split, cfg=cfg, wrap=_raw)


def _outputs(shape, device):
    """Uninitialised float32 scores and int64 indices, the kernels' outputs."""
    return (torch.empty(shape, dtype=torch.float32, device=device),
            torch.empty(shape, dtype=torch.int64, device=device))


def _exact_above_fused_k(op: str):
    """The one large-k path of both ops: k above FUSED_MAX_K, the largest k the fused
    kernels select themselves, is the reference's exact computation (its stable sort) on
    this device, which checks the inputs on the same terms (values read on CPU only).
    The decorated function takes fused_max_k, a lower limit for tests."""
    def decorate(fused):
        k_at = list(inspect.signature(fused).parameters).index("k")
        launch_options = ("split", "cfg", "wrap")

        @functools.wraps(fused)
        def run(*args, fused_max_k: int = FUSED_MAX_K, **kw):
            k = args[k_at] if len(args) > k_at else kw["k"]
            if k > fused_max_k:
                return getattr(reference, op)(*args, **{n: v for n, v in kw.items() if n not in launch_options})
            return fused(*args, **kw)
        return run
    return decorate


@_exact_above_fused_k("topk_attention")
def _topk_attention(query, keys, k, lengths=None, scale=1.0, mask=None, offsets=None, *, split=None,
                    cfg: Optional[Config] = None, wrap=wrap_triton):
    s = check_inputs(query, keys, k, lengths, check_length_values=keys.device.type == "cpu", scale=scale,
                     mask=mask, offsets=offsets)
    shape = output_shape(s, k)
    R = s.B * s.T
    device = keys.device
    out_s, out_i = _outputs(shape, device)
    if R == 0:
        return out_s, out_i
    q = query.reshape(R, s.d).contiguous()
    # The kernels take the keys' batch and position strides (0 for expand()ed keys): no copy.
    keys = keys if keys.stride(-1) == 1 else keys.contiguous()
    lengths, offsets = (None if t is None else t.contiguous() for t in (lengths, offsets))
    scale = float(scale)
    if _takes_targets(s.T, keys.dtype):
        _launch_targets(wrap, s, q, keys, lengths, _mask_bytes(mask), offsets, out_s, out_i, k, scale, split, cfg)
        return out_s, out_i
    p = plan(R, _planned_length(s, offsets), s.d, k, device, split, cfg)
    _launch_search(wrap, p, q, keys, lengths, _mask_bytes(mask), offsets, out_s, out_i,
                   _workspace(p, s, device, offsets is not None), s.T, s.L, k, scale, cfg)
    return out_s, out_i


def _planned_length(s, offsets) -> int:
    """The row length the launch is planned for. Jagged rows have none known on the host
    (reading the offsets would synchronise): their mean, N/B; a row's programs split
    whatever length it has."""
    return s.L if offsets is None else max(1, -(-s.L // s.B))


def _mask_bytes(mask):
    # The same bytes as uint8: the kernels load plain integers, not Triton's i1 pointers.
    return None if mask is None else mask.view(torch.uint8)


@triton_op("dare::topk_attention_embedding_triton", mutates_args=())
def topk_attention_embedding(query: torch.Tensor, tables: list[torch.Tensor], ids: list[torch.Tensor], k: int,
                             lengths: Optional[torch.Tensor] = None, scale: float = 1.0,
                             mask: Optional[torch.Tensor] = None,
                             offsets: Optional[torch.Tensor] = None,
                             sparse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    return _topk_attention_embedding(query, tables, ids, k, lengths, scale, mask, offsets)


def eager_embedding(query, tables, ids, k, lengths=None, scale=1.0, mask=None, offsets=None, sparse=False):
    return _topk_attention_embedding(query, tables, ids, k, lengths, scale, mask, offsets, wrap=_raw)


@_exact_above_fused_k("topk_attention_embedding")
def _topk_attention_embedding(query, tables, ids, k, lengths=None, scale=1.0, mask=None, offsets=None, *,
                              split=None, cfg: Optional[Config] = None, wrap=wrap_triton):
    cpu = query.device.type == "cpu"
    s = check_embedding_inputs(query, tables, ids, k, lengths, check_values=cpu, scale=scale, mask=mask,
                               offsets=offsets)
    shape = output_shape(s, k)
    R = s.B * s.T
    device = query.device
    out_s, out_i = _outputs(shape, device)
    if R == 0:
        return out_s, out_i
    q = query.reshape(R, s.d).contiguous()
    lengths, offsets = (None if t is None else t.contiguous() for t in (lengths, offsets))
    gathered_rows = s.L if offsets is not None or all(i.dim() == 1 for i in ids) else s.B * s.L  # jagged: L is N
    if _takes_targets(s.T, query.dtype) and gathered_rows * s.d * query.element_size() <= GATHER_MAX_BYTES:
        # Many targets: each history's keys gathered once, then scored per tile of targets.
        _launch_targets(wrap, s, q, _gather_keys(tables, ids, s.B, offsets is not None), lengths,
                        _mask_bytes(mask), offsets, out_s, out_i, k, float(scale), split, cfg)
        return out_s, out_i
    tables = [t.contiguous() for t in tables]
    meta, off = [], 0
    for t, i in zip(tables, ids):
        sib, sil = (0, i.stride(0)) if i.dim() == 1 else (i.stride(0), i.stride(1))
        meta += [sib, sil, t.shape[0], t.shape[1], off]
        off += t.shape[1]
    F = len(tables)
    meta += [0] * (20 - len(meta))
    fields = [(tables[f], ids[f]) if f < F else (tables[0], ids[0]) for f in range(4)]
    cfg = cfg or DEFAULT_CONFIG
    p = plan(R, _planned_length(s, offsets), s.d, k, device, split, cfg)
    okeys, scratch, gmax, tickets = _workspace(p, s, device, offsets is not None)
    ptrs, strides, flags = _layout(q, lengths, _mask_bytes(mask), offsets)
    DBs = [_pow2(tables[f].shape[1]) if f < F else 1 for f in range(4)]
    wrap(kernels._search_ids_kernel)[(R, p.split)](
        q, *ptrs, out_s, out_i, okeys, gmax, tickets, scratch,
        *(x for pair in fields for x in pair), *meta, s.T, s.L, s.d, k, p.span, p.scratch, float(scale), *strides,
        F=F, DB0=DBs[0], DB1=DBs[1], DB2=DBs[2], DB3=DBs[3], C=p.chunk(cfg), **p.selection(),
        **flags, SPLIT=p.split > 1, **cfg.options())
    return out_s, out_i


# The ids op's many targets gather the keys when they take at most this (the CUDA
# backend's kGatherMaxBytes); larger, every target looks its rows up again.
GATHER_MAX_BYTES = 1 << 30


def _gather_keys(tables, ids, B: int, jagged: bool) -> torch.Tensor:
    """keys[b, j] = [tables[0][ids[0][b, j]] | ...] ((N, d) for jagged ids), an
    out-of-range id's part NaN (the fused kernel's contract on a GPU). Ids at positions
    that take no part may hold anything: they are clamped, and never scored."""
    shared = not jagged and all(i.dim() == 1 for i in ids)  # every row's ids alike: one (L, d) gather
    parts = []
    for t, i in zip(tables, ids):
        n = t.shape[0]
        if not jagged and not shared and i.dim() == 1:
            i = i.expand(B, i.shape[0])
        ok = (i >= 0) & (i < n)
        rows = t[i.clamp(0, max(n - 1, 0))] if n > 0 else t.new_empty((*i.shape, t.shape[1]))
        parts.append(torch.where(ok[..., None], rows, float("nan")))
    keys = torch.cat(parts, -1)
    return keys.expand(B, *keys.shape) if shared else keys  # stride 0 over the rows: read in place


EAGER = {"topk_attention": eager, "topk_attention_embedding": eager_embedding}

register_autograd("dare::topk_attention_triton", "topk_attention")
register_autograd("dare::topk_attention_embedding_triton", "topk_attention_embedding")
