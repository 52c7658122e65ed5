"""The serving rows: one ranking request, one user's history of L behaviours (ids)
and T candidate items, through the reference model's inference forward (the
search of the history for every candidate in one many-targets call, attention
over each candidate's k, the MLP for all T), DARE d_att = 16 against TWIN's
128-wide tables. A request is timed alone, start to finish, many times: p50 and
p99 latency (on a GPU each request is one CUDA-graph replay, as a serving process
that captured its shapes runs it; on a CPU one eager call)."""
from __future__ import annotations

import time

import torch

from . import models as model_rows  # its table sizes, read at call time
from .timing import capture, say

SERVING_CONFIGS = [("twin", 128), ("dare", 16)]
CANDIDATES = (1, 64, 256, 1024)


def request(device: torch.device, L: int, T: int, n_items: int, n_cats: int, seed: int = 0) -> dict:
    """One user's full history of L behaviours and T candidates, as the model's batch."""
    g = torch.Generator(device=device).manual_seed(seed)
    return {"history_items": torch.randint(1, n_items + 1, (1, L), device=device, generator=g),
            "history_cats": torch.randint(1, n_cats + 1, (1, L), device=device, generator=g),
            "lengths": torch.full((1,), L, device=device),
            "target_item": torch.randint(1, n_items + 1, (1, T), device=device, generator=g),
            "target_cat": torch.randint(1, n_cats + 1, (1, T), device=device, generator=g)}


def latencies(fn, device: torch.device, reps: int, warmup: int = 3) -> list:
    """Seconds of each of `reps` calls of fn, each timed alone (GPU: events around
    the call, then a wait: nothing queued behind it, as a request's latency)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1e3)
        return out
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def serving_rows(device: torch.device, args, candidates=CANDIDATES, configs=SERVING_CONFIGS) -> list:
    """A row per (model, T): p50 and p99 ms of one request (L = args.L, k = args.k,
    d_rep 128, 1M items, bf16 autocast on a GPU), and p50 as a ratio to TWIN
    d = 128's at the same T."""
    from ..models import LongSequenceCTR
    gpu = device.type == "cuda"
    reps = max(20, 4 * args.reps) if gpu else max(10, args.reps // 5)  # a CPU request takes up to ~0.5 s
    rows = []
    for variant, d_att in configs:
        say(args, f"serving {variant} d_att={d_att}: one request, T in {tuple(candidates)} candidates")
        n_items, n_cats = model_rows.MODEL_ITEMS, model_rows.MODEL_CATS
        model = LongSequenceCTR(variant, n_items, n_cats, args.L, d_att=d_att, d_rep=128, k=args.k)
        model = model.to(device).eval()
        for T in candidates:
            batch = request(device, args.L, T, n_items, n_cats)

            def forward():
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu,
                                                     cache_enabled=False):
                    return model(batch)[0]

            # On a GPU captured once, each request a replay: no host work but the launch.
            times = latencies(capture(forward, device) if gpu else forward, device, reps)
            quantiles = torch.tensor([0.5, 0.99], dtype=torch.float64)  # linear interpolation, as numpy's
            p50, p99 = (torch.tensor(times, dtype=torch.float64).quantile(quantiles) * 1e3).tolist()
            rows.append({"stage": "request", "model": variant, "d_att": model.d_att, "T": T, "L": args.L,
                         "k": args.k, "graph": gpu, "p50_ms": p50, "p99_ms": p99, "reps": len(times)})
            say(args, f"  T={T}: p50 {rows[-1]['p50_ms']:.3f} ms, p99 {rows[-1]['p99_ms']:.3f} ms")
        del model
        if gpu:
            torch.cuda.empty_cache()
    for r in rows:
        base = next((x for x in rows if x["model"] == "twin" and x["T"] == r["T"]), None)
        r["x_vs_twin128"] = base["p50_ms"] / r["p50_ms"] if base else None
    return rows
