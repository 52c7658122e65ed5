"""Search from ids: topk_attention_embedding against what users run today
(F.embedding of every behaviour, then bmm + topk, eager or torch.compile'd),
against the dare op on looked-up keys, and against a gather + dot kernel that
writes the scores and selects nothing (the floor of any search from ids).
Used by the main job and bench/test_search_ids.py."""
from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn.functional as F

from .. import ops
from .timing import DTYPES, time_call

IDS_BASELINE = "emb+bmm+topk"
COMPILED = "compiled emb+bmm+topk"
LOOKUP_OP = "emb+dare op"
FLOOR = "gather+dot (no top-k)"


@dataclasses.dataclass(frozen=True)
class IdsShape:
    B: int
    L: int
    d: int
    k: int
    rows: int  # table rows
    dtype: str = "bfloat16"

    def floor_bytes(self) -> int:
        """int64 ids plus at least one 32-byte sector per looked-up row."""
        row = self.d * DTYPES[self.dtype].itemsize
        return self.B * self.L * (8 + max(32, -(-row // 32) * 32))

    def id(self) -> str:
        return f"B{self.B}-L{self.L}-d{self.d}-k{self.k}-rows{self.rows}-{self.dtype}"

    def label(self) -> str:
        return f"B={self.B} L={self.L} d={self.d} k={self.k} rows={self.rows} {self.dtype}"


def make_ids_inputs(shape: IdsShape, device: torch.device, copies: int = 2, seed: int = 0):
    """(table, [(query, ids), ...]): one table, several batches of ids."""
    g = torch.Generator(device=device).manual_seed(seed)
    dtype = DTYPES[shape.dtype]
    table = torch.randn(shape.rows, shape.d, device=device, generator=g, dtype=torch.float32).to(dtype)
    batches = [(torch.randn(shape.B, shape.d, device=device, generator=g, dtype=torch.float32).to(dtype),
                torch.randint(0, shape.rows, (shape.B, shape.L), device=device, generator=g))
               for _ in range(copies)]
    return table, batches


def emb_bmm_topk(query, table, ids, k):
    keys = F.embedding(ids, table)
    return torch.topk(torch.bmm(keys, query[..., None])[..., 0].float(), k)


@functools.lru_cache(maxsize=None)
def _compiled():
    return torch.compile(emb_bmm_topk)


def _emb_op(query, table, ids, k):
    return ops.topk_attention(query, F.embedding(ids, table), k)


def implementations(device: torch.device) -> dict:
    """name -> fn(query, table, ids, k), every way of searching from ids here."""
    impls = {IDS_BASELINE: emb_bmm_topk}
    if device.type == "cuda":
        impls[COMPILED] = lambda q, t, i, k: _compiled()(q, t, i, k)
        if "cuda" in ops.available_backends(device):
            impls[LOOKUP_OP] = _emb_op
        try:
            import triton  # noqa: F401
            impls[FLOOR] = gather_dot
        except ImportError:
            pass
    for b in ops.available_backends(device):
        if b != "reference":
            impls[b] = functools.partial(_fused, backend=b)
    return impls


def _fused(query, table, ids, k, backend):
    return ops.topk_attention_embedding(query, [table], [ids], k, backend=backend)


def gather_dot(query, table, ids, k=None):
    """float32 scores of every behaviour (B, L), no selection: one Triton kernel."""
    from .gather_dot import gather_dot as run
    return run(query, table, ids)


def ids_rows(shapes, device: torch.device, copy_bw: float, reps: int, progress=None) -> list:
    """One row per (shape, implementation): ms, % of the floor bytes at copy
    bandwidth, and ratios to the eager and compiled baselines and the gather."""
    rows = []
    for shape in shapes:
        table, batches = make_ids_inputs(shape, device)
        for name, fn in implementations(device).items():
            inputs = [(q, i) for q, i in batches]
            t = time_call(lambda q, i: fn(q, table, i, shape.k), inputs, device, reps=reps)
            rows.append({**dataclasses.asdict(shape), "impl": name, "ms": t * 1e3,
                         "pct_floor": 100 * shape.floor_bytes() / copy_bw / t})
            if progress is not None:
                progress.update()
        del table, batches
    index = {(r["B"], r["L"], r["d"], r["k"], r["rows"], r["dtype"], r["impl"]): r for r in rows}
    for r in rows:
        key = (r["B"], r["L"], r["d"], r["k"], r["rows"], r["dtype"])
        for name, col in ((IDS_BASELINE, "x_vs_emb_bmm_topk"), (COMPILED, "x_vs_compiled"), (FLOOR, "x_of_gather")):
            other = index.get(key + (name,))
            r[col] = other["ms"] / r["ms"] if other else None
    return rows


def default_ids_shapes(device: torch.device, B=None, L: int = 10000, k: int = 128) -> list:
    if device.type == "cuda":
        B = B or 1024
        return [IdsShape(B, L, d, k, rows) for rows in (1_000_000, 64_000_000) for d in (16, 128)]
    B = B or 64
    return [IdsShape(B, L, d, k, 1_000_000, "float32") for d in (16, 128)]
