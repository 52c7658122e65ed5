"""Where the reference models' training step spends GPU and host time
(torch.profiler; GPU kernels by their own time per step, ops by GPU time, then ops
by host time), for each optimiser; with --serving T, where one ranking request
(the main job's serving row: one user's L-long history from ids against T
candidates, the inference forward under bf16 autocast) spends its GPU time:
    python bench/tools/profile_model.py [--models dare:16 twin:128] [--optimizers rows dense] [--serving 1024]"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from dare_kernels.bench.models import MODEL_CATS, MODEL_ITEMS, first_sync, model_batch, train_step
from dare_kernels.bench.timing import time_call
from dare_kernels.models import LongSequenceCTR
from dare_kernels.optim import ModelOptimizer

p = argparse.ArgumentParser()
p.add_argument("--models", nargs="+", default=["dare:16", "twin:128"])
p.add_argument("--optimizers", nargs="+", default=["rows", "dense"])
p.add_argument("--B", type=int, default=1024)
p.add_argument("--L", type=int, default=10000)
p.add_argument("--rows", type=int, default=12, help="table rows printed")
p.add_argument("--serving", type=int, nargs="+", metavar="T", help="profile one request of T candidates instead")
args = p.parse_args()

dev = torch.device("cuda")
B, L, k = args.B, args.L, 128


def kernel_table(prof, calls, what):
    """GPU kernels by their own time per call (a step or a request)."""
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    own = lambda e: getattr(e, "self_device_time_total", None) or e.self_cuda_time_total  # noqa: E731
    total = sum(own(e) for e in kernels)
    print(f"GPU kernels: {sum(e.count for e in kernels) / calls:.0f} launches, {total / calls / 1e3:.3f} ms a "
          f"{what}; by own time a {what}:")
    for e in sorted(kernels, key=own, reverse=True)[:2 * args.rows]:
        print(f"  {own(e) / calls / 1e3:8.3f} ms {100 * own(e) / total:5.1f}% x{e.count / calls:5.0f}  {e.key[:110]}")


if args.serving:
    from dare_kernels.bench.serving import request

    for spec in args.models:
        variant, d_att = spec.split(":")
        model = LongSequenceCTR(variant, MODEL_ITEMS, MODEL_CATS, L, d_att=int(d_att), d_rep=128, k=k).to(dev).eval()
        for T in args.serving:
            req = request(dev, L, T, MODEL_ITEMS, MODEL_CATS)

            def forward():
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                    return model(req)[0]

            ms = 1e3 * time_call(forward, [()], dev, reps=20)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    forward()
                torch.cuda.synchronize()
            print(f"== {variant} d_att={d_att} request, T = {T}, L = {L}: {ms:.3f} ms eager (median); profile of 5")
            kernel_table(prof, 5, "request")
        del model
        torch.cuda.empty_cache()
    raise SystemExit
batch = model_batch(dev, B, L, MODEL_ITEMS, MODEL_CATS)
for spec in args.models:
    variant, d_att = spec.split(":")
    model = LongSequenceCTR(variant, MODEL_ITEMS, MODEL_CATS, L, d_att=int(d_att), d_rep=128, k=k).to(dev)
    for kind in args.optimizers:
        model.set_sparse_grad(kind != "dense")
        opt = ModelOptimizer(model, 1e-3, kind)

        def step():
            train_step(model, opt, batch, dev)

        ms = 1e3 * time_call(step, [()], dev, reps=20)
        for _ in range(2):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step()
            torch.cuda.synchronize()
        where = first_sync(step)  # what would stop a CUDA-graph capture of the step
        print(f"== {variant} d_att={d_att} train step ({kind}): {ms:.3f} ms (median); profile of 3 steps; "
              f"first host synchronisation: {where or 'none'}")
        kernel_table(prof, 3, "step")
        avg = prof.key_averages()
        print(avg.table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=55))
        print(avg.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=55))
        del opt
    del model
    torch.cuda.empty_cache()
