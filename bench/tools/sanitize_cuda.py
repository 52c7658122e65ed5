"""A representative subset of CUDA calls for compute-sanitizer (memcheck,
racecheck, initcheck): every specialised d and the generic path, one CTA per row
and rows split into spans (the in-kernel merge), candidate lists folded while
streaming and while merging (ascending rows: every key joins the list), lengths,
T > 1 (the many-targets kernel for 16-bit keys), k > 1024, each dtype.

    compute-sanitizer --tool memcheck python bench/tools/sanitize_cuda.py [backend]
"""
import sys

import torch

import dare_kernels

backend = sys.argv[1] if len(sys.argv) > 1 else "cuda"
torch.manual_seed(0)
cases = [  # B, T, L, d, k, with lengths, ascending rows
    (3, 0, 777, 16, 40, True, False),
    (2, 0, 9000, 32, 128, False, False),
    (64, 0, 2000, 64, 64, True, False),
    (2, 0, 3000, 128, 256, False, False),
    (2, 0, 1000, 256, 17, True, False),
    (2, 0, 500, 33, 9, True, False),
    (2, 3, 1200, 32, 100, True, False),
    (1, 0, 5000, 16, 1024, False, False),
    (1, 0, 3000, 8, 2000, True, False),
    (300, 0, 5000, 16, 64, True, False),  # one CTA per row, folds while streaming
    (300, 0, 5000, 16, 64, False, True),
    (1, 0, 40000, 16, 256, False, True),  # 39 spans: folds while merging
    (300, 9, 3000, 32, 128, True, False),  # many targets (16-bit keys): 8 per CTA, 1 in the last
    (100, 8, 2000, 16, 64, True, True),    # many targets, 4 per CTA, folds while streaming
    (2, 1024, 5000, 128, 256, False, False),
    (140, 12, 700, 64, 40, True, False),
]
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for B, T, L, d, k, with_len, ascending in cases:
        q = torch.randn((B, T, d) if T else (B, d), device="cuda").to(dtype)
        K = torch.randn(B, L, d, device="cuda").to(dtype)
        if ascending:
            q.zero_()[..., 0] = 1
            K[..., 0] = torch.arange(L, device="cuda").to(dtype)
        lengths = torch.randint(0, L + 1, (B,), device="cuda") if with_len else None
        s, i = dare_kernels.topk_attention(q, K, k, lengths=lengths, backend=backend)
        torch.cuda.synchronize()
        # The other layouts: a strided mask over the same keys, and the rows as jagged
        # values (offsets planned by the mean row: long rows loop over spans).
        mask = (torch.rand(L, B, device="cuda") < 0.7).t()
        dare_kernels.topk_attention(q, K, k, lengths=lengths, mask=mask, backend=backend)
        n = lengths if lengths is not None else torch.full((B,), L, device="cuda")
        n[0] = L  # one row far longer than the mean
        offsets = torch.nn.functional.pad(n.cumsum(0), (1, 0))
        valid = torch.arange(L, device="cuda")[None, :] < n[:, None]
        dare_kernels.topk_attention(q, K[valid], k, offsets=offsets, backend=backend)
        torch.cuda.synchronize()
    ids = torch.randint(0, 1000, (B, L), device="cuda")
    table = torch.randn(1000, 16, device="cuda").to(dtype)
    q = torch.randn(B, 16, device="cuda").to(dtype)
    ids[~mask] = -7  # never read
    dare_kernels.topk_attention_embedding(q, [table], [ids], min(k, 1024), mask=mask, backend=backend)
    dare_kernels.topk_attention_embedding(q, [table], [ids[valid]], min(k, 1024), offsets=offsets, backend=backend)
    torch.cuda.synchronize()
# float8_e4m3fn keys, bfloat16 query: short (d = 16, 32, 64) and long (128) vectors, generic d, split rows.
for B, L, d, k in ((3, 777, 16, 40), (2, 9000, 32, 128), (64, 2000, 64, 64), (2, 3000, 128, 256), (2, 500, 24, 9)):
    q = torch.randn(B, d, device="cuda").to(torch.bfloat16)
    K = torch.randn(B, L, d, device="cuda").to(torch.float8_e4m3fn)
    lengths = torch.randint(0, L + 1, (B,), device="cuda")
    dare_kernels.topk_attention(q, K, k, lengths=lengths, backend=backend)
    dare_kernels.topk_attention(q, K, k, mask=(torch.rand(B, L, device="cuda") < 0.5), backend=backend)
    torch.cuda.synchronize()
print("sanitize subset done:", backend)
