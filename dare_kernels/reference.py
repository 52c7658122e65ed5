"""Pure-PyTorch implementation of the contract: the oracle of the tests (with
acc_dtype=torch.float64) and the fallback backend on any device. It builds the
full B×L score matrix, which the fused kernels exist to avoid."""
from __future__ import annotations

from typing import Optional

import torch

from ._check import check_inputs


def _scores(q: torch.Tensor, keys: torch.Tensor, scale: float, acc_dtype: torch.dtype) -> torch.Tensor:
    """(B, T, L) scores of q (B, T, d) against keys (B, L, d): for every key the
    same sum, q[0]·x[0] + q[1]·x[1] + ... in order, one elementwise step per dim.
    A matmul (einsum) blocks the positions and rounds one key differently at
    different positions (CPU, float32: 60-80% of rows of 299 copies of one key
    held unequal scores), so identical keys would not tie."""
    kt = keys.to(acc_dtype).transpose(1, 2).contiguous()  # (B, d, L): each dim's values contiguous
    qa = q.to(acc_dtype)
    acc = qa[:, :, 0, None] * kt[:, None, 0, :]
    for c in range(1, q.shape[-1]):
        acc += qa[:, :, c, None] * kt[:, None, c, :]
    # -0.0 and +0.0 are one score (ordered by position, like every tie).
    return acc * scale + 0.0


class _Values(torch.autograd.Function):
    """The selected scores' values, with the gradient of `live` (the same scores
    recomputed differentiably from the selected keys)."""

    @staticmethod
    def forward(ctx, values, live):
        return values.clone()

    @staticmethod
    def backward(ctx, grad):
        return None, grad


def topk_attention(query: torch.Tensor, keys: torch.Tensor, k: int,
                   lengths: Optional[torch.Tensor] = None, scale: float = 1.0, *,
                   acc_dtype: torch.dtype = torch.float32,
                   check_length_values: Optional[bool] = None):
    """Differentiable w.r.t. query and keys, through the selected keys only."""
    if check_length_values is None:
        check_length_values = keys.device.type == "cpu"
    s = check_inputs(query, keys, k, lengths, check_length_values=check_length_values, scale=scale)
    q = query.reshape(s.B, s.T, s.d)
    with torch.no_grad():
        scores = _scores(q, keys, scale, acc_dtype)
    pos = torch.arange(s.L, device=keys.device)
    if lengths is not None:
        valid = pos[None, :] < lengths.clamp(0, s.L)[:, None].to(pos.dtype)  # (B, L)
    else:
        valid = torch.ones(s.B, s.L, dtype=torch.bool, device=keys.device)
    masked = scores.masked_fill(~valid[:, None, :], float("-inf"))
    # Stable descending sort: equal scores keep ascending position, NaN first;
    # padded positions sort after valid -inf scores since they lie further right.
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices[..., :k]
    top = scores.gather(-1, order)
    if torch.is_grad_enabled() and (query.requires_grad or keys.requires_grad):
        # Gathered in acc_dtype: a key that several targets select sums its gradients in
        # acc_dtype, rounded once to the keys' dtype.
        sel = keys.to(acc_dtype).gather(1, order.reshape(s.B, s.T * k, 1).expand(-1, -1, s.d))
        live = torch.einsum("btd,btkd->btk", q.to(acc_dtype), sel.reshape(s.B, s.T, k, s.d)) * scale
        top = _Values.apply(top, live)
    top = top.to(torch.float32 if acc_dtype != torch.float64 else acc_dtype)
    ok = valid[:, None, :].expand(s.B, s.T, s.L).gather(-1, order)
    top = top.masked_fill(~ok, float("-inf"))
    idx = order.masked_fill(~ok, -1)
    if not s.multi_target:
        top, idx = top[:, 0], idx[:, 0]
    return top, idx
