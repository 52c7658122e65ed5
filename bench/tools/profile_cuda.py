"""Runs the op a few times at one shape, for ncu:
    ncu --clock-control none -k regex:topk --launch-skip 4 --launch-count 2 \\
        python3 bench/tools/profile_cuda.py --B 1024 --d 16
"""
import argparse

import torch

import dare_kernels

p = argparse.ArgumentParser()
p.add_argument("--B", type=int, default=1024)
p.add_argument("--T", type=int, default=0)
p.add_argument("--L", type=int, default=10000)
p.add_argument("--d", type=int, default=16)
p.add_argument("--k", type=int, default=128)
p.add_argument("--backend", default="cuda")
p.add_argument("--fp8", action="store_true", help="float8_e4m3fn keys (bfloat16 query)")
a = p.parse_args()
q = torch.randn((a.B, a.T, a.d) if a.T else (a.B, a.d), device="cuda").bfloat16()
K = torch.randn(a.B, a.L, a.d, device="cuda").to(torch.float8_e4m3fn if a.fp8 else torch.bfloat16)
for _ in range(4):
    dare_kernels.topk_attention(q, K, a.k, backend=a.backend)
torch.cuda.synchronize()
