"""Sweeps the Triton backend's launch plan (programs per row, config) at small batches,
timing each with CUDA events (host launch cost included, as in use) and as a CUDA-graph
replay (GPU time alone).

    python3 bench/tools/sweep_triton.py [--B 8] [--d 16 32]
"""
import argparse

import torch

from dare_kernels.bench.timing import time_call, time_graph
from dare_kernels.triton_backend import search

p = argparse.ArgumentParser()
p.add_argument("--B", type=int, default=8)
p.add_argument("--L", type=int, default=10000)
p.add_argument("--k", type=int, default=128)
p.add_argument("--d", type=int, nargs="+", default=[16, 32])
p.add_argument("--splits", type=int, nargs="+", default=[4, 8, 16])
a = p.parse_args()
dev = torch.device("cuda")
print(torch.cuda.get_device_name(), "torch", torch.__version__)
for d in a.d:
    q = torch.randn(a.B, d, device=dev).bfloat16()
    K = torch.randn(a.B, a.L, d, device=dev).bfloat16()
    for split in a.splits:
        for cfg in search.CONFIGS:
            def fn():
                return search.eager(q, K, a.k, split=split, cfg=cfg)
            t = time_call(fn, [()], dev, reps=100)
            tg = time_graph(fn, dev, reps=100)
            print(f"B={a.B} d={d} split={split} {cfg}: {t * 1e6:.1f} us, graph replay {tg * 1e6:.1f} us")
