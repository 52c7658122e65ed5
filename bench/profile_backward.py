"""Where forward + backward of the selected scores spend GPU time, the fused op
against bmm + topk (torch.profiler, CUDA kernels by total time, and CUDA-event
medians of the backward alone): python bench/profile_backward.py"""
import torch
from torch.profiler import ProfilerActivity, profile

import dare_kernels
from dare_kernels.bench import baseline

dev = torch.device("cuda")
B, L, k = 1024, 10000, 128
for d in (16, 128):
    q0 = torch.randn(B, d, device=dev, dtype=torch.bfloat16)
    K0 = torch.randn(B, L, d, device=dev, dtype=torch.bfloat16)
    for name, fn in (("bmm+topk", lambda q, K: baseline(q, K, k)),
                     ("cuda", lambda q, K: dare_kernels.topk_attention(q, K, k, backend="cuda"))):
        q, K = q0.clone().requires_grad_(), K0.clone().requires_grad_()

        def forward():
            return fn(q, K)[0].float().sum()

        def backward(loss):
            return torch.autograd.grad(loss, (q, K))

        for _ in range(3):
            backward(forward())
        torch.cuda.synchronize()
        times = []
        for _ in range(20):
            loss = forward()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            backward(loss)
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        print(f"== d={d} {name}: backward alone median {sorted(times)[10]:.3f} ms (CUDA events)")
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                backward(forward())
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=10, max_name_column_width=60))
