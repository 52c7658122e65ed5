"""The backward of the selected scores alone, fused ops against bmm + topk, B = 1024,
L = 10000, k = 128, bf16: GPU time (CUDA-event median of back-to-back calls) and
host time (median wall time of issuing one backward call, GPU not awaited), of
torch.autograd.grad (the autograd engine, the loss's backward and the op's autograd
function included) and, for the fused ops, of the backward op called alone;
--python-autograd: the ops' autograd as the Python formula (torch.library.register_autograd,
the Triton ops' path) instead of the library's C++ one, for an A/B of its host time:
    python bench/tools/profile_backward.py [--profile] [--python-autograd]"""
import warnings
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

import dare_kernels
from dare_kernels.bench.search import baseline

if "--python-autograd" in sys.argv:
    from dare_kernels import _contract
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
        for op in ("topk_attention", "topk_attention_embedding"):
            _contract.register_autograd(f"dare::{op}", op)
    print("the ops' autograd: the Python formula (torch.library.register_autograd)")
dev = torch.device("cuda")
B, L, k, N = 1024, 10000, 128, 1_000_000
g = torch.Generator(device=dev).manual_seed(0)


def timed(name, call, prepare=lambda: None):
    """GPU and host medians of call(prepare()), prepare untimed (see the module docstring)."""
    for _ in range(3):
        call(prepare())
    torch.cuda.synchronize()
    gpu, host = [], []
    for _ in range(20):
        arg = prepare()
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        t0 = time.perf_counter()
        call(arg)
        host.append(time.perf_counter() - t0)
        b.record()
        torch.cuda.synchronize()
        gpu.append(a.elapsed_time(b))
    print(f"{name:44s} backward: GPU {statistics.median(gpu):.3f} ms, host {1e3 * statistics.median(host):.3f} ms",
          flush=True)


def measure(name, forward, inputs):
    def backward(loss):
        return torch.autograd.grad(loss, inputs)

    timed(name, backward, forward)
    if "--profile" in sys.argv:
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                backward(forward())
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=10, max_name_column_width=60))


for d in (16, 128):
    q = torch.randn(B, d, device=dev, generator=g).bfloat16().requires_grad_()
    K = torch.randn(B, L, d, device=dev, generator=g).bfloat16().requires_grad_()
    measure(f"keys d={d} bmm+topk", lambda: baseline(q, K, k)[0].float().sum(), (q, K))
    measure(f"keys d={d} cuda", lambda: dare_kernels.topk_attention(q, K, k, backend="cuda")[0].sum(), (q, K))
    with torch.no_grad():
        scores, idx = dare_kernels.topk_attention(q, K, k, backend="cuda")
    grad = torch.ones_like(scores)
    qd, Kd = q.detach(), K.detach()
    timed(f"keys d={d} cuda, the op alone", lambda _: torch.ops.dare.topk_attention_backward(grad, qd, Kd, idx))
    table = torch.randn(N, d, device=dev, generator=g).bfloat16().requires_grad_()
    ids = torch.randint(0, N, (B, L), device=dev, generator=g)
    for sparse in (False, True):
        measure(f"ids d={d} cuda sparse={sparse}",
                lambda: dare_kernels.topk_attention_embedding(q, [table], [ids], k, sparse=sparse,
                                                              backend="cuda")[0].sum(), (q, table))
        with torch.no_grad():
            scores, idx = dare_kernels.topk_attention_embedding(q, [table], [ids], k, backend="cuda")
        grad = torch.ones_like(scores)
        op_args = (grad, q.detach(), [table.detach()], [ids], idx, 1.0, None, sparse, True)
        timed(f"ids d={d} cuda sparse={sparse}, the op alone",
              lambda _: torch.ops.dare.topk_attention_embedding_backward(*op_args))
