"""The floor of a search from ids (benchmarks only, dare_kernels.bench.ids): gather every behaviour's
row by id, dot it with the query, write the float32 score; no selection."""
import torch
import triton
import triton.language as tl


@triton.jit
def _gather_dot_kernel(q_ptr, t_ptr, i_ptr, out_ptr, L, D: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    pos = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = pos < L
    ids = tl.load(i_ptr + b.to(tl.int64) * L + pos, mask=m, other=0)
    dd = tl.arange(0, D)
    rows = tl.load(t_ptr + ids[:, None] * D + dd[None, :], mask=m[:, None], other=0.0)
    q = tl.load(q_ptr + b * D + dd).to(tl.float32)
    tl.store(out_ptr + b.to(tl.int64) * L + pos, tl.sum(rows.to(tl.float32) * q[None, :], 1), mask=m)


def gather_dot(query: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    B, L = ids.shape
    D = table.shape[1]
    assert D & (D - 1) == 0, "power-of-two widths only"
    out = torch.empty(B, L, dtype=torch.float32, device=ids.device)
    block = max(16, 4096 // D)
    _gather_dot_kernel[(B, triton.cdiv(L, block))](query.contiguous(), table.contiguous(), ids.contiguous(), out, L,
                                                   D=D, BLOCK=block, num_warps=4)
    return out
