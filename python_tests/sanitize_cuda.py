"""A representative subset of CUDA calls for compute-sanitizer (memcheck,
racecheck, initcheck): every specialised d and the generic path, one and many
chunks per row, the merge, lengths, T > 1, k > 1024, each dtype.

    compute-sanitizer --tool memcheck python python_tests/sanitize_cuda.py [backend]
"""
import sys

import torch

import dare_kernels

backend = sys.argv[1] if len(sys.argv) > 1 else "cuda"
torch.manual_seed(0)
cases = [  # B, T, L, d, k, with lengths
    (3, 0, 777, 16, 40, True),
    (2, 0, 9000, 32, 128, False),
    (64, 0, 2000, 64, 64, True),
    (2, 0, 3000, 128, 256, False),
    (2, 0, 1000, 256, 17, True),
    (2, 0, 500, 33, 9, True),
    (2, 3, 1200, 32, 100, True),
    (1, 0, 5000, 16, 1024, False),
    (1, 0, 3000, 8, 2000, True),
]
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for B, T, L, d, k, with_len in cases:
        q = torch.randn((B, T, d) if T else (B, d), device="cuda").to(dtype)
        K = torch.randn(B, L, d, device="cuda").to(dtype)
        lengths = torch.randint(0, L + 1, (B,), device="cuda") if with_len else None
        s, i = dare_kernels.topk_attention(q, K, k, lengths=lengths, backend=backend)
        torch.cuda.synchronize()
print("sanitize subset done:", backend)
