"""The main job: `python -m dare_kernels.bench` (or `dare-bench`).

Measures this device's copy bandwidth, then times the search stage (score every
behaviour, keep the top k) for each available backend and attention width d
against what users write today, `torch.topk(torch.bmm(K, q[..., None])[..., 0], k)`,
then the search from ids and the reference models, and prints the tables
(dare_kernels.bench.render.format_table): median time, effective GB/s of reading the
keys once, % of the copy bandwidth and the speed-ups, each explained under its table.
--json writes the run (dare_kernels.bench.results), --plot its figure."""
from __future__ import annotations

import argparse
import sys

import torch

from .. import ops
from . import ids, models, render, results, search, serving
from .timing import DTYPES, copy_bandwidth, default_device, environment, say


def run(args) -> dict:
    device = default_device(args.device)
    backends = args.backends or search.backends_for(device)
    env = environment(device)
    say(args, "measuring copy bandwidth (one large memory copy, a few seconds)...")
    bw = copy_bandwidth(device)
    shapes = search.default_shapes(device, args.B, args.L, args.d, args.k, args.T, args.dtype)
    compiled = [b for b in backends if b in ("triton",)]
    say(args, f"search stage: {len(shapes)} shapes x {len(backends)} backends ({', '.join(backends)})"
              + (f"; the first {'/'.join(compiled)} call per shape compiles (can take tens of seconds)"
                 if compiled else ""))
    try:
        from tqdm import tqdm
        progress = tqdm(total=len(shapes) * len(backends), desc="search stage", file=sys.stderr,
                        disable=args.quiet)
    except ImportError:  # pragma: no cover
        progress = None
    rows = search.search_rows(shapes, backends, device, bw, args.reps, progress)
    if progress is not None:
        progress.close()
    ids_rows = []
    if not args.no_ids:
        ids_shapes = ids.default_ids_shapes(device, (args.B or [None])[0], args.L, args.k)
        names = ids.implementations(device)
        compiles = " (the first torch.compile call compiles)" if ids.COMPILED in names else ""
        say(args, f"search from ids: {len(ids_shapes)} shapes x {len(names)} implementations{compiles}")
        ids_rows = ids.ids_rows(ids_shapes, device, bw, args.reps)
    if not args.no_model:
        say(args, f"reference models: {len(models.MODEL_CONFIGS)} configs (TWIN d=128, DARE d=64/32/16; 1M-item "
                  "tables), search stage, inference, training steps and phases each (building the models takes "
                  "a while)")
    model_rows = [] if args.no_model else models.model_rows_for(device, args)
    serving_rows = [] if args.no_serving else serving.serving_rows(device, args)
    return {"env": env, "copy_GBps": bw / 1e9, "rows": rows, "ids_rows": ids_rows, "model_rows": model_rows,
            "serving_rows": serving_rows,
            "command": " ".join(["python -m dare_kernels.bench"] + sys.argv[1:]), **results.provenance()}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m dare_kernels.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", help="cuda or cpu (default: cuda if present)")
    p.add_argument("--backends", nargs="+", help=f"subset of {search.BASELINE!r} and {ops.BACKENDS}")
    p.add_argument("--B", type=int, nargs="+", help="batch sizes (default: 1024 on GPU, 64 on CPU)")
    p.add_argument("--L", type=int, default=10000)
    p.add_argument("--d", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--k", type=int, default=128)
    p.add_argument("--T", type=int, default=0, help="targets per sequence (0: query is (B, d))")
    p.add_argument("--dtype", choices=list(DTYPES), help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--json", help="write the results here (e.g. bench/results/<device>.json)")
    p.add_argument("--plot", help="write a PNG plot here (needs matplotlib)")
    p.add_argument("--no-model", action="store_true", help="skip the reference models' rows")
    p.add_argument("--models", nargs="+", type=models.model_config, metavar="VARIANT:D_ATT",
                   help="the reference models to time, e.g. dare:16 twin:128 (default: "
                        + " ".join(f"{v}:{d}" for v, d in models.MODEL_CONFIGS) + ")")
    p.add_argument("--no-ids", action="store_true", help="skip the search-from-ids rows")
    p.add_argument("--no-serving", action="store_true",
                   help="skip the serving rows (one request: a user's L-long history against T = "
                        + "/".join(map(str, serving.CANDIDATES)) + " candidates, p50/p99 latency)")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.dtype is None:
        gpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        args.dtype = "bfloat16" if gpu else "float32"
    result = run(args)
    print(render.format_table(result))
    if args.json:
        results.write(result, args.json)
        say(args, f"JSON written to {args.json}")
    if args.plot:
        render.plot(result, args.plot)
        say(args, f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
