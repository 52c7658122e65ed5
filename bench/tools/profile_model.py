"""Where the reference models' search stage and training step spend GPU and host
time (torch.profiler; GPU kernels by their own time per step, ops by GPU time, then
ops by host time), for each
optimiser: python bench/tools/profile_model.py [--models dare:16 twin:128] [--optimizers rows dense]"""
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
args = p.parse_args()

dev = torch.device("cuda")
B, L, k = args.B, args.L, 128
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
        avg = prof.key_averages()
        kernels = [e for e in avg if e.device_type == torch.autograd.DeviceType.CUDA]
        own = lambda e: getattr(e, "self_device_time_total", None) or e.self_cuda_time_total  # noqa: E731
        total = sum(own(e) for e in kernels)
        print(f"GPU kernels: {sum(e.count for e in kernels) / 3:.0f} launches, {total / 3e3:.3f} ms a step; "
              f"by own time a step:")
        for e in sorted(kernels, key=own, reverse=True)[:2 * args.rows]:
            print(f"  {own(e) / 3e3:8.3f} ms {100 * own(e) / total:5.1f}% x{e.count / 3:5.0f}  {e.key[:110]}")
        print(avg.table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=55))
        print(avg.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=55))
        del opt
    del model
    torch.cuda.empty_cache()
