"""RowAdam's update of one table in two launches, whatever its gradient's form:
coalesced or one entry per slot with duplicate rows (the search's per-slot
gradient on a GPU, the lookups'), with no sort, no host synchronisation and the
step count on the device, so that a training step can be captured in a CUDA graph.

1. accumulate: every entry adds its gradient row into a float32 accumulator the
   size of the table (atomics: duplicates sum in float32) and elects, by an atomic
   max, one owner entry per touched row; the first program counts the step.
2. update: each row's owner reads the summed gradient, applies lazy Adam to the
   parameter and moments rows, and zeroes its accumulator row and its election,
   which leaves both ready for the next step without a fill of the table.
"""
import math

import torch
import triton
import triton.language as tl


@triton.jit
def _accumulate_kernel(rows, grad, sums, owner, step, n, d, grad_stride,
                       ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    if pid == 0:
        tl.store(step, tl.load(step) + 1.0)
    r = pid * ROWS + tl.arange(0, ROWS)
    live = r < n
    row = tl.load(rows + r, mask=live, other=0).to(tl.int64)
    c = tl.arange(0, BLOCK_D)
    cells = live[:, None] & (c < d)[None, :]
    g = tl.load(grad + r.to(tl.int64)[:, None] * grad_stride + c[None, :], mask=cells, other=0.0).to(tl.float32)
    tl.atomic_add(sums + row[:, None] * d + c[None, :], g, mask=cells)
    tl.atomic_max(owner + row, r, mask=live)


@triton.jit
def _one_minus_pow(t, log_beta):
    """1 - beta^t = -expm1(t · log(beta)) in float32 without 1 - exp's cancellation
    (a series where t · log(beta) is small: the first steps, beta2 = 0.999)."""
    x = t * log_beta
    series = -x * (1 + x * (0.5 + x * (1 / 6 + x * (1 / 24 + x * (1 / 120 + x / 720)))))
    return tl.where(x > -0.1, series, 1 - tl.exp(x))


@triton.jit
def _update_kernel(param, exp_avg, exp_avg_sq, sums, owner, step, rows, n, d, stride,
                   lr, c1, c2, log_beta1, log_beta2, eps, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    live = r < n
    row = tl.load(rows + r, mask=live, other=0).to(tl.int64)
    mine = live & (tl.load(owner + row, mask=live, other=-1) == r)
    c = tl.arange(0, BLOCK_D)
    cells = mine[:, None] & (c < d)[None, :]
    acc = sums + row[:, None] * d + c[None, :]
    g = tl.load(acc, mask=cells, other=0.0)
    t = tl.load(step)
    # lr · sqrt(1 - beta2^t) / (1 - beta1^t), SparseAdam's step size, from the device's step count.
    step_size = lr * tl.sqrt(_one_minus_pow(t, log_beta2)) / _one_minus_pow(t, log_beta1)
    at = row[:, None] * stride + c[None, :]
    m = tl.load(exp_avg + at, mask=cells, other=0.0)
    v = tl.load(exp_avg_sq + at, mask=cells, other=0.0)
    m = m + c1 * (g - m)  # SparseAdam's forms; c = 1 - beta, formed in double on the host
    v = v + c2 * (g * g - v)
    p = tl.load(param + at, mask=cells, other=0.0)
    tl.store(exp_avg + at, m, mask=cells)
    tl.store(exp_avg_sq + at, v, mask=cells)
    tl.store(param + at, p - step_size * (m / (tl.sqrt(v) + eps)), mask=cells)
    tl.store(acc, tl.zeros_like(g), mask=cells)
    tl.store(owner + row, tl.full([ROWS], -1, tl.int32), mask=mine)


def _log(beta: float) -> float:
    """log(beta) in double (log1p of beta - 1: exact near 1); beta = 0 gives -inf (beta^t = 0)."""
    return math.log1p(beta - 1) if beta > 0 else float("-inf")


def scratch(param: torch.Tensor):
    """(sums, owner): the float32 accumulator (the table's shape, as a dense
    gradient) and the owner election (int32 per row, -1), both kept zeroed."""
    return (torch.zeros(param.shape, dtype=torch.float32, device=param.device),
            torch.full((param.shape[0],), -1, dtype=torch.int32, device=param.device))


def row_adam_(param, exp_avg, exp_avg_sq, sums, owner, step, rows, values, lr, beta1, beta2, eps) -> None:
    """In place: count a step (step, a float32 scalar tensor) and apply lazy Adam to
    param's touched rows, rows[i] receiving values[i] (duplicates summed)."""
    n, d = values.shape
    if n >= 2 ** 31:
        raise ValueError(f"RowAdam: a gradient of {n} entries; at most 2**31 - 1 fit the owner election")
    block_d = triton.next_power_of_2(max(d, 1))
    per = max(1, min(64, 2048 // block_d))
    _accumulate_kernel[(max(1, triton.cdiv(n, per)),)](rows, values, sums, owner, step, n, d, values.stride(0),
                                                        ROWS=per, BLOCK_D=block_d)
    if n:
        _update_kernel[(triton.cdiv(n, per),)](param, exp_avg, exp_avg_sq, sums, owner, step, rows, n, d,
                                               param.stride(0), lr, 1.0 - beta1, 1.0 - beta2, _log(beta1),
                                               _log(beta2), eps, ROWS=per, BLOCK_D=block_d)


@triton.jit
def _dense_update_kernel(param, exp_avg, exp_avg_sq, grad, step, n, d, stride, grad_stride,
                         lr, c1, c2, log_beta1, log_beta2, eps, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    r = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    c = tl.arange(0, BLOCK_D)
    cells = (r < n)[:, None] & (c < d)[None, :]
    g = tl.load(grad + r[:, None] * grad_stride + c[None, :], mask=cells, other=0.0).to(tl.float32)
    touched = tl.max((g != 0).to(tl.int32), axis=1) > 0  # NaN counts: it is != 0
    cells = cells & touched[:, None]
    t = tl.load(step) + 1.0  # this step's count; the wrapper stores it after the launch
    step_size = lr * tl.sqrt(_one_minus_pow(t, log_beta2)) / _one_minus_pow(t, log_beta1)
    at = r[:, None] * stride + c[None, :]
    m = tl.load(exp_avg + at, mask=cells, other=0.0)
    v = tl.load(exp_avg_sq + at, mask=cells, other=0.0)
    m = m + c1 * (g - m)
    v = v + c2 * (g * g - v)
    p = tl.load(param + at, mask=cells, other=0.0)
    tl.store(exp_avg + at, m, mask=cells)
    tl.store(exp_avg_sq + at, v, mask=cells)
    tl.store(param + at, p - step_size * (m / (tl.sqrt(v) + eps)), mask=cells)


def dense_row_adam_(param, exp_avg, exp_avg_sq, step, grad, lr, beta1, beta2, eps) -> None:
    """In place, from a dense gradient (a small table's): count a step and apply
    lazy Adam to the rows whose gradient is nonzero (the touched ones), the others
    untouched: one launch over the table and the step's increment (the ~25
    elementwise launches of optim._dense_rows in two)."""
    n, d = param.shape
    grad = grad if grad.stride(-1) == 1 else grad.contiguous()
    block_d = triton.next_power_of_2(max(d, 1))
    per = max(1, min(64, 2048 // block_d))
    if n:
        _dense_update_kernel[(triton.cdiv(n, per),)](param, exp_avg, exp_avg_sq, grad, step, n, d, param.stride(0),
                                                     grad.stride(0), lr, 1.0 - beta1, 1.0 - beta2, _log(beta1),
                                                     _log(beta2), eps, ROWS=per, BLOCK_D=block_d)
    step.add_(1)
