"""Where a Triton call's time goes, per shape: the public API, the launch without
the op dispatcher (search.eager), host issue time alone, and the autotuned config.

    python3 bench/tools/profile_triton.py
"""
import time

import torch

import dare_kernels
from dare_kernels.bench.timing import time_call
from dare_kernels.triton_backend import search

dev = torch.device("cuda")
print(torch.cuda.get_device_name(), "torch", torch.__version__)
for B, T, L, d, k in [(8, 0, 10000, 32, 128), (8, 0, 10000, 16, 128), (1024, 0, 10000, 16, 128),
                      (1024, 0, 10000, 128, 128), (1, 1024, 10000, 32, 128)]:
    q = torch.randn((B, T, d) if T else (B, d), device=dev).bfloat16()
    K = torch.randn(B, L, d, device=dev).bfloat16()
    api = lambda: dare_kernels.topk_attention(q, K, k, backend="triton")  # noqa: E731
    direct = lambda: search.eager(q, K, k)  # noqa: E731
    t_api = time_call(api, [()], dev, reps=200)
    t_direct = time_call(direct, [()], dev, reps=200)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(200):
        api()
    t_host = (time.perf_counter() - t0) / 200
    torch.cuda.synchronize()
    p = search.plan(B * max(T, 1), L, d, k, dev)  # one target a row (T < TARGETS_MIN: see below)
    tuner = search.autotuner(p)
    best = {str(key): str(c) for key, c in tuner.cache.items()}
    print(f"B={B} T={T} L={L} d={d} k={k}: api {t_api * 1e6:.1f} us, eager {t_direct * 1e6:.1f} us, "
          f"host issue {t_host * 1e6:.1f} us, split {p.split} x span {p.span}, tuned {best}")

# Many targets (search.TARGETS_MIN): GPU time per launch of the two-kernel path (score
# tiles with tl.dot, then one selection per target), one history against T = 1024.
from torch.profiler import ProfilerActivity, profile  # noqa: E402

for d in (16, 32, 128):
    q = torch.randn(1, 1024, d, device=dev).bfloat16()
    K = torch.randn(1, 10000, d, device=dev).bfloat16()
    for _ in range(3):
        search.eager(q, K, 128)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            search.eager(q, K, 128)
        torch.cuda.synchronize()
    kernels = {e.key: e.device_time_total / e.count for e in prof.key_averages() if e.device_time_total > 0}
    print(f"T=1024 L=10000 d={d}: " + ", ".join(f"{name} {us:.1f} us" for name, us in sorted(kernels.items())))

# Host side of one small call, by function (what the launch costs in Python).
import cProfile  # noqa: E402
import pstats  # noqa: E402

q = torch.randn(8, 32, device=dev).bfloat16()
K = torch.randn(8, 10000, 32, device=dev).bfloat16()
dare_kernels.topk_attention(q, K, 128, backend="triton")
prof = cProfile.Profile()
prof.enable()
for _ in range(500):
    dare_kernels.topk_attention(q, K, 128, backend="triton")
prof.disable()
torch.cuda.synchronize()
pstats.Stats(prof).sort_stats("tottime").print_stats(25)
