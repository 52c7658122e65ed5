import torch, dare_kernels
from torch._inductor.utils import run_and_get_code
q = torch.randn(4, 16, device="cuda"); K = torch.randn(4, 3000, 16, device="cuda")
f = lambda q, K: dare_kernels.topk_attention(q, K, 64, backend="triton")
try:
    out, codes = run_and_get_code(torch.compile(f, fullgraph=True), q, K)
    want = f(q, K)
    print("inductor: _search_kernel in generated code:", any("_search_kernel" in c for c in codes),
          "equal:", torch.equal(out[1], want[1]))
except Exception as e:
    print("inductor failed:", type(e).__name__, str(e)[:600])
