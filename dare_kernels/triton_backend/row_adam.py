"""RowAdam's update of one table in one launch: each program takes ROWS touched
rows, reads their gradient rows and the parameter's and moments' rows, and writes
all three back (the index-op path takes a dozen launches a table)."""
import torch
import triton
import triton.language as tl


@triton.jit
def _row_adam_kernel(param, exp_avg, exp_avg_sq, rows, grad, n, d, stride, grad_stride,
                     beta1, beta2, eps, step_size, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    c = tl.arange(0, BLOCK_D)
    live = (r < n)[:, None] & (c < d)[None, :]
    row = tl.load(rows + r, mask=r < n, other=0)
    at = row[:, None] * stride + c[None, :]
    g = tl.load(grad + r[:, None] * grad_stride + c[None, :], mask=live, other=0.0).to(tl.float32)
    m = tl.load(exp_avg + at, mask=live, other=0.0)
    v = tl.load(exp_avg_sq + at, mask=live, other=0.0)
    m = m + (1 - beta1) * (g - m)
    v = beta2 * v + (1 - beta2) * (g * g)
    p = tl.load(param + at, mask=live, other=0.0)
    tl.store(exp_avg + at, m, mask=live)
    tl.store(exp_avg_sq + at, v, mask=live)
    tl.store(param + at, p - step_size * (m / (tl.sqrt(v) + eps)), mask=live)


def row_adam_(param: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, rows: torch.Tensor,
              values: torch.Tensor, beta1: float, beta2: float, eps: float, step_size: float) -> None:
    """In place: the lazy Adam update of param's `rows` (unique) by gradient rows `values`."""
    n, d = values.shape
    if n == 0:
        return
    block_d = triton.next_power_of_2(d)
    rows_per_program = max(1, min(64, 2048 // block_d))
    _row_adam_kernel[(triton.cdiv(n, rows_per_program),)](
        param, exp_avg, exp_avg_sq, rows, values, n, d, param.stride(0), values.stride(0),
        beta1, beta2, eps, step_size, ROWS=rows_per_program, BLOCK_D=block_d)
