"""Times one backend's call both as issued (CUDA events around back-to-back calls,
host launch cost included) and as a CUDA-graph replay (the GPU work alone), so a
launch-bound small batch shows how much of its time is the host's.

    python3 bench/tools/graph_time.py [--backend cuda] [--B 8] [--T 0] [--d 16 32 128]
"""
import argparse

import torch

import dare_kernels
from dare_kernels.bench.timing import time_call, time_graph

p = argparse.ArgumentParser()
p.add_argument("--backend", default="cuda")
p.add_argument("--B", type=int, default=8)
p.add_argument("--T", type=int, default=0)
p.add_argument("--L", type=int, default=10000)
p.add_argument("--k", type=int, default=128)
p.add_argument("--d", type=int, nargs="+", default=[16, 32, 128])
a = p.parse_args()
dev = torch.device("cuda")
print(torch.cuda.get_device_name(), "torch", torch.__version__)
for d in a.d:
    q = torch.randn((a.B, a.T, d) if a.T else (a.B, d), device=dev).bfloat16()
    K = torch.randn(a.B, a.L, d, device=dev).bfloat16()

    def fn():
        return dare_kernels.topk_attention(q, K, a.k, backend=a.backend)

    t = time_call(fn, [()], dev, reps=200)
    tg = time_graph(fn, dev, reps=200)
    print(f"{a.backend} B={a.B} T={a.T} L={a.L} d={d} k={a.k}: {t * 1e6:.1f} us per call, "
          f"graph replay {tg * 1e6:.1f} us")
