"""The main job: `python -m dare_kernels.bench` (or `dare-bench`).

Measures this device's copy bandwidth, then times the search stage (score every
behaviour, keep the top k) for each available backend and attention width d
against what users write today, `torch.topk(torch.bmm(K, q[..., None])[..., 0], k)`,
and prints one table: median time, effective GB/s of reading the keys once, % of
the copy bandwidth, speed-up of d over d=128, speed-up over bmm+topk at the same d,
and speed-up over bmm+topk at d=128 (what users run today), each explained under the table.
bench/ (pytest-benchmark) reuses the inputs, baseline and timers defined here."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import sys
import time
from typing import Callable, Optional

import torch

from . import ops

BASELINE = "bmm+topk"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
    if name == BASELINE:
        return baseline
    return lambda q, keys, k, lengths=None, scale=1.0: ops.topk_attention(
        q, keys, k, lengths=lengths, scale=scale, backend=name)


def backends_for(device: torch.device) -> list:
    return [BASELINE] + [b for b in ops.available_backends(device) if b != "reference"]


def environment(device: torch.device) -> dict:
    info = {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        try:
            import triton
            info["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        info["threads"] = torch.get_num_threads()
    return info


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model} ({torch.get_num_threads()} threads)"


def cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20))
    return 64 << 20  # larger than this machine's L3


@dataclasses.dataclass(frozen=True)
class Shape:
    B: int
    L: int
    d: int
    k: int
    T: int = 0  # 0: query (B, d); else (B, T, d)
    dtype: str = "bfloat16"

    def key_bytes(self) -> int:
        return self.B * self.L * self.d * DTYPES[self.dtype].itemsize

    def id(self) -> str:
        t = f"-T{self.T}" if self.T else ""
        return f"B{self.B}{t}-L{self.L}-d{self.d}-k{self.k}-{self.dtype}"

    def label(self) -> str:
        t = f" T={self.T}" if self.T else ""
        return f"B={self.B}{t} L={self.L} d={self.d} k={self.k} {self.dtype}"


def make_inputs(shape: Shape, device: torch.device, seed: int = 0) -> list:
    """Enough independent (query, keys) sets that cycling through them reads
    twice the device cache: the timings measure memory, not cache."""
    copies = max(1, math.ceil(2 * cache_bytes(device) / max(1, shape.key_bytes())))
    copies = min(copies, 64)
    g = torch.Generator(device=device).manual_seed(seed)
    dtype = DTYPES[shape.dtype]
    qshape = (shape.B, shape.T, shape.d) if shape.T else (shape.B, shape.d)
    return [(torch.randn(qshape, device=device, generator=g, dtype=torch.float32).to(dtype),
             torch.randn(shape.B, shape.L, shape.d, device=device, generator=g, dtype=torch.float32).to(dtype))
            for _ in range(copies)]


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable, inputs: list, device: torch.device, reps: int = 50, warmup: int = 5) -> float:
    """Median seconds per call. On a GPU: CUDA events around back-to-back
    batches of calls (the queue never drains, so host launch cost hides only
    when the kernel is slower than the launch, as in real use)."""
    n = len(inputs)
    for i in range(warmup):
        fn(*inputs[i % n])
    sync(device)
    if device.type == "cuda":
        batch = max(1, min(20, reps // 5))
        times = []
        for r in range(max(5, reps // batch)):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for i in range(batch):
                fn(*inputs[(r * batch + i) % n])
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / batch)
        return statistics.median(times)
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(*inputs[i % n])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_graph(fn: Callable, device: torch.device, reps: int = 100) -> float:
    """Median seconds per replay of a CUDA graph of one fn() call: the GPU work
    alone, without the host's launch cost (fn is called once first, outside the
    capture, for warm-up and allocations)."""
    fn()
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_call(graph.replay, [()], device, reps=reps)


def copy_bandwidth(device: torch.device, nbytes: Optional[int] = None) -> float:
    """Bytes per second of a large device-to-device copy, counting read + write."""
    nbytes = nbytes or ((1 << 30) if device.type == "cuda" else (256 << 20))
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_call(lambda: dst.copy_(src), [()], device, reps=20, warmup=3)
    return 2 * nbytes / t


def default_shapes(device: torch.device, args) -> list:
    gpu = device.type == "cuda"
    B = args.B or ([1024] if gpu else [64])
    return [Shape(b, args.L, d, args.k, args.T, args.dtype) for b in B for d in args.d]


def run(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    backends = args.backends or backends_for(device)
    env = environment(device)
    _say(args, "measuring copy bandwidth (one large memory copy, a few seconds)...")
    bw = copy_bandwidth(device)
    shapes = default_shapes(device, args)
    compiled = [b for b in backends if b in ("triton",)]
    _say(args, f"search stage: {len(shapes)} shapes x {len(backends)} backends ({', '.join(backends)})"
               + (f"; the first {'/'.join(compiled)} call per shape compiles (can take tens of seconds)"
                  if compiled else ""))
    rows = []
    try:
        from tqdm import tqdm
        progress = tqdm(total=len(shapes) * len(backends), desc="search stage", file=sys.stderr,
                        disable=args.quiet)
    except ImportError:  # pragma: no cover
        progress = None
    for shape in shapes:
        inputs = make_inputs(shape, device)
        for name in backends:
            fn = implementation(name)
            t = time_call(lambda q, K: fn(q, K, shape.k), inputs, device, reps=args.reps)
            rows.append({**dataclasses.asdict(shape), "backend": name, "ms": t * 1e3,
                         "GBps": shape.key_bytes() / t / 1e9,
                         "pct_copy_bw": 100 * shape.key_bytes() / t / bw})
            if progress is not None:
                progress.update()
        del inputs
    if progress is not None:
        progress.close()
    _ratios(rows)
    ids_rows = []
    if not args.no_ids:
        from . import bench_ids
        ids_shapes = bench_ids.default_ids_shapes(device, (args.B or [None])[0], args.L, args.k)
        names = bench_ids.implementations(device)
        compiles = " (the first torch.compile call compiles)" if bench_ids.COMPILED in names else ""
        _say(args, f"search from ids: {len(ids_shapes)} shapes x {len(names)} implementations{compiles}")
        ids_rows = bench_ids.run_rows(ids_shapes, device, time_call, bw, args.reps)
    if not args.no_model:
        _say(args, f"reference models: {len(MODEL_CONFIGS)} configs (TWIN d=128, DARE d=64/32/16; 1M-item tables), "
                   "search stage, inference, training steps and phases each (building the models takes a while)")
    model_rows = [] if args.no_model else model_rows_for(device, args)
    return {"env": env, "copy_GBps": bw / 1e9, "rows": rows, "ids_rows": ids_rows, "model_rows": model_rows,
            "command": " ".join(["python -m dare_kernels.bench"] + sys.argv[1:])}


MODEL_CONFIGS = [("twin", 128), ("dare", 64), ("dare", 32), ("dare", 16)]


def _say(args, msg: str):
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


MODEL_ITEMS, MODEL_CATS = 1_000_000, 10_000


def model_batch(device: torch.device, B: int, L: int, n_items: int, n_cats: int) -> dict:
    """A fixed random batch of full-length histories for the reference models."""
    g = torch.Generator(device=device).manual_seed(0)
    return {"history_items": torch.randint(1, n_items + 1, (B, L), device=device, generator=g),
            "history_cats": torch.randint(1, n_cats + 1, (B, L), device=device, generator=g),
            "lengths": torch.full((B,), L, device=device),
            "target_item": torch.randint(1, n_items + 1, (B,), device=device, generator=g),
            "target_cat": torch.randint(1, n_cats + 1, (B,), device=device, generator=g),
            "label": torch.randint(0, 2, (B,), device=device, generator=g).float()}


def train_step(model, opt, batch: dict, device: torch.device):
    """Forward + backward + optimiser step, bf16 autocast on GPU."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(batch)[0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["label"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


# The training step's optimisers, as dare_kernels.optim names them: "rows" (the
# default: sparse row gradients, lazy Adam by index ops), "dense" (Adam on every row).
STEP_OPTIMIZERS = ("rows", "dense")


def step_phases(model, opt, batch: dict, device: torch.device) -> dict:
    """Callables for the training step's phases, each run and timed alone
    (forward and backward of that phase, gradients cleared each call): search
    forward, search forward + backward, the representation lookup of the k
    selected behaviours and the target (forward + backward), the MLP (forward +
    backward), the optimiser step (on the gradients of one full step)."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    B = batch["history_items"].shape[0]
    k = min(model.search.k, batch["history_items"].shape[1])
    g = torch.Generator(device=device).manual_seed(1)
    idx = torch.randint(0, batch["history_items"].shape[1], (B, k), device=device, generator=g)
    x = torch.randn(B, 3 * model.d_rep, device=device, generator=g, requires_grad=True)

    def search_forward():
        with autocast:
            model.search_stage(batch)

    def search_forward_backward():
        model.zero_grad(set_to_none=True)
        with autocast:
            scores = model.search_stage(batch)[0]
        scores.float().sum().backward()

    def representation():
        model.zero_grad(set_to_none=True)
        items, cats = batch["history_items"], batch["history_cats"]
        from .models.dare import position_buckets
        pos = position_buckets(items.shape[1], device)
        with autocast:
            rep = model.representation(items.gather(1, idx), cats.gather(1, idx), pos[idx])
            target = model._target_rep(batch)
        (rep.float().sum() + target.sum()).backward()

    def mlp():
        model.zero_grad(set_to_none=True)
        with autocast:
            out = model.mlp(x)
        out.float().sum().backward()

    def optimizer():
        opt.step()

    return {"search forward": search_forward, "search forward+backward": search_forward_backward,
            "representation": representation, "mlp": mlp, "optimizer": optimizer}


def model_rows_for(device: torch.device, args) -> list:
    """The reference models, DARE at d_att = 16/32/64 against TWIN's shared
    128-wide tables (d_rep 128 for all; 1M items, 10k categories; bf16 autocast
    on GPU): the search stage (attention lookups of every behaviour + top-k, as
    the forward runs it), the inference forward, the training step (forward +
    backward + optimiser) with each of STEP_OPTIMIZERS, and the phases of the
    default ("rows") step, each timed alone (see step_phases)."""
    from .models import LongSequenceCTR
    from .optim import ModelOptimizer
    gpu = device.type == "cuda"
    B = (args.B or [1024 if gpu else 64])[0]
    L, n_items, n_cats = args.L, MODEL_ITEMS, MODEL_CATS
    batch = model_batch(device, B, L, n_items, n_cats)
    rows = []
    reps = max(5, args.reps // (2 if gpu else 10))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu)
    for variant, d_att in MODEL_CONFIGS:
        _say(args, f"model {variant} d_att={d_att}: search stage, inference, training step, phases")
        model = LongSequenceCTR(variant, n_items, n_cats, L, d_att=d_att, d_rep=128, k=args.k).to(device)
        row = {"model": variant, "d_att": model.d_att, "B": B, "L": L, "k": args.k}

        def search():
            with torch.no_grad(), autocast:
                return model.search_stage(batch)

        def forward():
            with torch.no_grad(), autocast:
                return model(batch)

        model.eval()
        found = [("search", time_call(search, [()], device, reps=reps)),
                 ("inference", time_call(forward, [()], device, reps=reps))]
        if gpu:
            # The same calls captured once in a CUDA graph and replayed: no host work per call.
            found += [("search (graph)", time_graph(search, device, reps=reps)),
                      ("inference (graph)", time_graph(forward, device, reps=reps))]
        model.train()
        step_reps = max(3, reps // 2)
        for kind in STEP_OPTIMIZERS:
            model.set_sparse_grad(kind != "dense")
            opt = ModelOptimizer(model, 1e-3, kind)
            if gpu:
                torch.cuda.reset_peak_memory_stats(device)
            t = time_call(lambda: train_step(model, opt, batch, device), [()], device, reps=step_reps)
            mem = {"peak_GiB": torch.cuda.max_memory_allocated(device) / 2**30} if gpu else {}
            found.append((f"train step ({kind})", t, mem))
            if kind == STEP_OPTIMIZERS[0]:
                for phase, fn in step_phases(model, opt, batch, device).items():
                    found.append((f"phase: {phase}", time_call(fn, [()], device, reps=step_reps)))
            del opt
        for stage, t, *extra in found:
            rows.append({"stage": stage, **row, "ms": t * 1e3, **(extra[0] if extra else {})})
        del model
        if gpu:
            torch.cuda.empty_cache()
    for r in rows:
        base = next(x for x in rows if x["stage"] == r["stage"] and x["model"] == "twin")
        r["x_vs_twin128"] = base["ms"] / r["ms"]
    return rows


def _ratios(rows):
    def key(r, **kw):
        return tuple({**r, **kw}[f] for f in ("backend", "B", "L", "d", "k", "T", "dtype"))
    index = {key(r): r for r in rows}
    for r in rows:
        wide = index.get(key(r, d=128))
        base = index.get(key(r, backend=BASELINE))
        r["x_vs_d128"] = wide["ms"] / r["ms"] if wide else None
        r["x_vs_bmm_topk"] = base["ms"] / r["ms"] if base else None


def _x_vs_bmm128(rows: list) -> dict:
    """id(row) -> bmm+topk's ms at d=128 (same B, L, k, T, dtype) / this row's ms: what a user running
    bmm+topk at d=128 today gains by moving to this row's backend at this row's d."""
    def key(r):
        return tuple(r.get(f) for f in ("B", "L", "k", "T", "dtype"))
    base = {key(r): r["ms"] for r in rows if r["backend"] == BASELINE and r["d"] == 128}
    return {id(r): (base[key(r)] / r["ms"] if key(r) in base and r["ms"] else None) for r in rows}


def headline(result: dict) -> Optional[str]:
    """One sentence: the fastest fused backend at the narrowest d against bmm+topk at d=128."""
    rows = [r for r in result["rows"] if r["backend"] not in (BASELINE, "reference")]
    x = _x_vs_bmm128(result["rows"])
    best = [r for r in rows if x[id(r)] is not None]
    if not best:
        return None
    d = min(r["d"] for r in best)
    r = max((r for r in best if r["d"] == d), key=lambda r: x[id(r)])
    return (f"=> moving from bmm+topk at d=128 to the {LEGEND.get(r['backend'], r['backend'])} at d={d}: "
            f"{x[id(r)]:.2f}x faster ({r['ms']:.3f} ms vs {x[id(r)] * r['ms']:.3f} ms, B={r['B']}, L={r['L']})")


def format_table(result: dict) -> str:
    env = result["env"]
    head = (f"device: {env['device']} | torch {env['torch']}"
            + (f" | CUDA {env['cuda']}" if env.get("cuda") else "")
            + (f" | triton {env['triton']}" if env.get("triton") else "")
            + (f" | threads {env['threads']}" if env.get("threads") else "")
            + f"\ncopy bandwidth (read + write): {result['copy_GBps']:.1f} GB/s\n")
    cols = ["backend", "B", "T", "L", "d", "k", "dtype", "ms", "GB/s", "% copy BW", "x vs d=128", "x vs bmm+topk",
            "x vs bmm+topk d=128"]
    lines = []
    x128 = _x_vs_bmm128(result["rows"])
    for r in result["rows"]:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        lines.append([r["backend"], str(r["B"]), str(r["T"] or 1), str(r["L"]), str(r["d"]), str(r["k"]), r["dtype"],
                      f"{r['ms']:.3f}", f"{r['GBps']:.1f}", f"{r['pct_copy_bw']:.0f}%",
                      fmt(r.get("x_vs_d128"), ".2f"), fmt(r.get("x_vs_bmm_topk"), ".2f"), fmt(x128[id(r)], ".2f")])
    widths = [max(len(c), *(len(l[i]) for l in lines)) for i, c in enumerate(cols)]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(v.ljust(w) for v, w in zip(l, widths)) + " |" for l in lines]
    text = head + "\n".join(out) + "\n" + OP_NOTES
    line = headline(result)
    if line:
        text += "\n" + line
    if result.get("ids_rows"):
        text += ("\n\nSearch from ids (one field, int64 ids): % floor = int64 ids + one 32-byte sector per row at "
                 "copy bandwidth / time; x = other's ms / this ms\n")
        text += "| impl | B | L | d | k | table rows | ms | % floor | x vs emb+bmm+topk | x vs compiled | x of gather |\n"
        text += "|---|---|---|---|---|---|---|---|---|---|---|\n"
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        text += "\n".join(f"| {r['impl']} | {r['B']} | {r['L']} | {r['d']} | {r['k']} | {r['rows']} | {r['ms']:.3f} | "
                           f"{r['pct_floor']:.0f}% | {fmt(r['x_vs_emb_bmm_topk'])} | {fmt(r['x_vs_compiled'])} | "
                           f"{fmt(r['x_of_gather'])} |" for r in result["ids_rows"])
        text += "\n" + IDS_NOTE
    if result.get("model_rows"):
        text += "\n\nReference models (search stage: attention lookups + top-k, as forward runs it; inference: the "
        text += "forward; (graph): captured once in a CUDA graph and replayed; train step: forward + backward + "
        text += "optimiser, rows = sparse row gradients + lazy Adam, dense = Adam on every row; phase: one part of the "
        text += "rows step timed alone):\n"
        text += "| stage | model | d_att | B | L | k | ms | x vs TWIN d=128 |\n|---|---|---|---|---|---|---|---|\n"
        text += "\n".join(f"| {r['stage']} | {r['model']} | {r['d_att']} | {r['B']} | {r['L']} | {r['k']} | "
                           f"{r['ms']:.3f} | {r['x_vs_twin128']:.2f} |" for r in result["model_rows"])
        text += "\n" + MODEL_NOTE
    return text


OP_NOTES = """  ms: median time of one search call (B queries, each scoring L keys of width d, keeping the top k).
  GB/s, % copy BW: the keys' bytes (B*L*d*itemsize) read once / ms, and that as a share of the copy bandwidth above.
  x vs d=128: the same backend at d=128 / this row (what narrowing d alone buys; higher = faster).
  x vs bmm+topk: bmm+topk at the same d / this row (the kernel alone, same d).
  x vs bmm+topk d=128: bmm+topk at d=128 (what users run today) / this row: the gain of moving to this backend at this d."""
IDS_NOTE = ("  Search from ids: the keys are gathered from an embedding table by id inside the search; "
            "x vs ... = that implementation's ms / this row's ms, x of gather = gather+dot without top-k / this row.")
MODEL_NOTE = ("  Models: ms per batch of the whole search stage or training step; x vs TWIN d=128 = TWIN's ms at the "
              "same stage / this row's (higher = faster).")

LEGEND = {BASELINE: "bmm + torch.topk (today)", "cuda": "fused CUDA kernel", "triton": "fused Triton kernel",
          "cpu": "fused CPU kernel", "reference": "reference (PyTorch)"}


def _bar_labels(ax, bars, values):
    for b, v in zip(bars, values):
        ax.annotate(f"{v:.0f}" if v >= 100 else f"{v:.3g}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                    fontsize=7, xytext=(0, 1), textcoords="offset points")


def plot(result: dict, path: str):
    """Left: op time vs d per backend, with the read-keys-once floor. Right: the reference
    models' search stage and train step (if present) and the search-from-ids rows at 1M
    table rows (if present)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullLocator
    rows = result["rows"]
    models = result.get("model_rows") or []
    ids = [r for r in (result.get("ids_rows") or []) if r.get("rows") == 1_000_000 and r["d"] in (16, 128)]
    right = bool(models) + bool(ids)
    fig = plt.figure(figsize=(7 + 6.5 * bool(right), 5.2 if right < 2 else 8))
    grid = fig.add_gridspec(max(1, right), 3 if right else 1, width_ratios=[1.25, 0.6, 0.6] if right else [1])
    ax = fig.add_subplot(grid[:, 0])
    Bs = sorted({r["B"] for r in rows})
    for backend in dict.fromkeys(r["backend"] for r in rows):
        for B in Bs:
            pts = sorted((r["d"], r["ms"]) for r in rows if r["backend"] == backend and r["B"] == B)
            name = LEGEND.get(backend, backend) + (f" (B={B})" if len(Bs) > 1 else "")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    ls=":" if backend == BASELINE else "-", label=name)
    for B in Bs:
        pts = sorted({(r["d"], r["ms"] * r["pct_copy_bw"] / 100) for r in rows if r["B"] == B})
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "k--", lw=1,
                label="read keys once at copy bandwidth" + (f" (B={B})" if len(Bs) > 1 else ""))
    ax.set_xscale("log", base=2)
    ax.set_xticks([16, 32, 64, 128])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlim(13, 155)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(alpha=0.3)
    ax.set_xlabel("attention width d")
    ax.set_ylabel("ms per search call (median)")
    r0 = rows[0] if rows else {}
    T = f", T={r0['T']}" if r0.get("T") else ""
    shape = f"B={'/'.join(map(str, Bs))}{T}, L={r0.get('L')}, k={r0.get('k')}, {r0.get('dtype')}"
    device = result["env"]["device"]
    line = headline(result)
    line = "\n" + line[3:].split(" (")[0] if line else ""
    ax.set_title(f"search stage (score L keys, keep top k), {device[:50]}\n{shape}{line}", fontsize=9)
    ax.legend(fontsize=8)
    row = 0
    if models:
        configs = list(dict.fromkeys((r["model"], r["d_att"]) for r in models))
        labels = [f"{m.upper()}\nd={d}" for m, d in configs]
        colors = ["tab:gray" if m == "twin" else "tab:green" for m, _ in configs]
        # The search stage, and the training step with each optimiser (dense hatched).
        steps = [s for s in dict.fromkeys(r["stage"] for r in models) if s.startswith("train step")]
        for j, stages in enumerate((["search"], steps)):
            sub = fig.add_subplot(grid[row, 1 + j])
            width = 0.8 / max(1, len(stages))
            for i, stage in enumerate(stages):
                ms = [next((r["ms"] for r in models if r["stage"] == stage and (r["model"], r["d_att"]) == c), 0)
                      for c in configs]
                x = [c + (i - (len(stages) - 1) / 2) * width for c in range(len(configs))]
                bars = sub.bar(x, ms, width, color=colors, hatch="//" if "dense" in stage else None,
                               edgecolor="white", label=stage.replace("train step ", ""))
                _bar_labels(sub, bars, ms)
            if len(stages) > 1:
                sub.legend(fontsize=7)
            stage = "search" if j == 0 else "train step"
            sub.set_xticks(range(len(configs)))
            sub.set_xticklabels(labels, fontsize=8)
            sub.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            sub.set_ylabel("ms per batch")
            sub.set_title(f"reference model: {'search stage' if stage == 'search' else stage}\n"
                          f"B={models[0]['B']}, L={models[0]['L']}, k={models[0]['k']}", fontsize=9)
            sub.margins(y=0.15)
        row += 1
    if ids:
        sub = fig.add_subplot(grid[row, 1:])
        impls = list(dict.fromkeys(r["impl"] for r in ids))
        ds = sorted({r["d"] for r in ids})
        width = 0.8 / len(impls)
        for i, impl in enumerate(impls):
            ms = [next((r["ms"] for r in ids if r["impl"] == impl and r["d"] == d), 0) for d in ds]
            bars = sub.bar([x + (i - (len(impls) - 1) / 2) * width for x in range(len(ds))], ms, width,
                           label=LEGEND.get(impl, impl).replace("bmm + torch.topk (today)", "bmm+topk"))
            _bar_labels(sub, bars, ms)
        sub.set_xticks(range(len(ds)))
        sub.set_xticklabels([f"d={d}" for d in ds])
        sub.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        sub.set_ylabel("ms per search call")
        sub.set_title(f"search from ids (keys gathered from a 1M-row table), B={ids[0]['B']}, L={ids[0]['L']}, "
                      f"k={ids[0]['k']}", fontsize=9)
        sub.legend(fontsize=7, ncol=3, loc="upper center")
        sub.set_ylim(0, sub.get_ylim()[1] * 1.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m dare_kernels.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", help="cuda or cpu (default: cuda if present)")
    p.add_argument("--backends", nargs="+", help=f"subset of {BASELINE!r} and {ops.BACKENDS}")
    p.add_argument("--B", type=int, nargs="+", help="batch sizes (default: 1024 on GPU, 64 on CPU)")
    p.add_argument("--L", type=int, default=10000)
    p.add_argument("--d", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--k", type=int, default=128)
    p.add_argument("--T", type=int, default=0, help="targets per sequence (0: query is (B, d))")
    p.add_argument("--dtype", choices=list(DTYPES), help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--plot", help="write a PNG plot here (needs matplotlib)")
    p.add_argument("--no-model", action="store_true", help="skip the reference models' rows")
    p.add_argument("--no-ids", action="store_true", help="skip the search-from-ids rows")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.dtype is None:
        gpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        args.dtype = "bfloat16" if gpu else "float32"
    result = run(args)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        _say(args, f"JSON written to {args.json}")
    if args.plot:
        plot(result, args.plot)
        _say(args, f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
