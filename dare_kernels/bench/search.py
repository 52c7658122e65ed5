"""The search stage's rows: each backend of topk_attention against what users write
today, `torch.topk(torch.bmm(K, q[..., None])[..., 0], k)` (einsum for T targets),
per shape; time, effective bandwidth of reading the keys once and speed-ups."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from .. import ops
from .timing import Shape, make_inputs, time_call

BASELINE = "bmm+topk"


def baseline(query, keys, k, lengths=None, scale=1.0):
    """What users write today (bmm, or einsum for T targets, then torch.topk)."""
    if query.dim() == 3:
        scores = torch.einsum("btd,bld->btl", query, keys).float()
    else:
        scores = torch.bmm(keys, query[..., None])[..., 0]
    if scale != 1.0:
        scores = scores * scale
    if lengths is not None:
        pos = torch.arange(keys.shape[1], device=keys.device)
        mask = pos[None, :] >= lengths[:, None]
        scores = scores.masked_fill(mask if query.dim() == 2 else mask[:, None], float("-inf"))
    return torch.topk(scores, k)


def implementation(name: str) -> Callable:
    """fn(query, keys, k, lengths=None, scale=1.0) of a backend name or BASELINE."""
    if name == BASELINE:
        return baseline
    return lambda q, keys, k, lengths=None, scale=1.0: ops.topk_attention(
        q, keys, k, lengths=lengths, scale=scale, backend=name)


def backends_for(device: torch.device) -> list:
    return [BASELINE] + [b for b in ops.available_backends(device) if b != "reference"]


def default_shapes(device: torch.device, B=None, L: int = 10000, ds=(16, 32, 64, 128), k: int = 128, T: int = 0,
                   dtype: str = "bfloat16") -> list:
    """The main job's shapes: B = 1024 on a GPU, 64 on a CPU, unless given."""
    B = B or ([1024] if device.type == "cuda" else [64])
    return [Shape(b, L, d, k, T, dtype) for b in B for d in ds]


def search_rows(shapes, backends, device: torch.device, copy_bw: float, reps: int, progress=None) -> list:
    """One row per (shape, backend): ms, GB/s of reading the keys once, % of the copy
    bandwidth, and the speed-ups of add_ratios."""
    rows = []
    for shape in shapes:
        inputs = make_inputs(shape, device)
        for name in backends:
            fn = implementation(name)
            t = time_call(lambda q, K: fn(q, K, shape.k), inputs, device, reps=reps)
            rows.append({**dataclasses.asdict(shape), "backend": name, "ms": t * 1e3,
                         "GBps": shape.key_bytes() / t / 1e9,
                         "pct_copy_bw": 100 * shape.key_bytes() / t / copy_bw})
            if progress is not None:
                progress.update()
        del inputs
    add_ratios(rows)
    return rows


def add_ratios(rows: list):
    """x_vs_d128: the same backend at d=128 / this row; x_vs_bmm_topk: bmm+topk at the same d / this row."""
    def key(r, **kw):
        return tuple({**r, **kw}[f] for f in ("backend", "B", "L", "d", "k", "T", "dtype"))
    index = {key(r): r for r in rows}
    for r in rows:
        wide = index.get(key(r, d=128))
        base = index.get(key(r, backend=BASELINE))
        r["x_vs_d128"] = wide["ms"] / r["ms"] if wide else None
        r["x_vs_bmm_topk"] = base["ms"] / r["ms"] if base else None
