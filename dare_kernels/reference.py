"""Pure-PyTorch implementation of the contract: the oracle of the tests (with
acc_dtype=torch.float64) and the fallback backend on any device. It builds the
full B×L score matrix, which the fused kernels exist to avoid."""
from __future__ import annotations

from typing import Optional

import torch

from ._check import check_embedding_inputs, check_inputs


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


def lookup(tables, ids, B: int) -> torch.Tensor:
    """The (B, L, d) keys of topk_attention_embedding: [tables[0][ids[0]] | ...]."""
    return torch.cat([t[i.expand(B, i.shape[-1]) if i.dim() == 1 else i] for t, i in zip(tables, ids)], -1)


def topk_attention_embedding(query: torch.Tensor, tables, ids, k: int,
                             lengths: Optional[torch.Tensor] = None, scale: float = 1.0, *,
                             acc_dtype: torch.dtype = torch.float32,
                             check_values: Optional[bool] = None):
    """topk_attention over the looked-up keys. Positions past a row's length are
    never looked up (their ids may be anything). Differentiable w.r.t. query and
    tables when acc_dtype is float32."""
    if check_values is None:
        check_values = query.device.type == "cpu"
    s = check_embedding_inputs(query, tables, ids, k, lengths, check_values=check_values, scale=scale)
    if s.B == 0:
        return topk_attention(query, query.new_empty(0, s.L, s.d), k, lengths, scale, acc_dtype=acc_dtype)
    safe = list(ids)
    if lengths is not None or not check_values:
        # Padding positions (and, on GPU, out-of-range ids, which score NaN) read row 0.
        valid = torch.ones(s.B, s.L, dtype=torch.bool, device=query.device)
        if lengths is not None:
            valid = torch.arange(s.L, device=query.device)[None, :] < lengths.clamp(0, s.L)[:, None]
        safe, bad = [], torch.zeros(s.B, s.L, dtype=torch.bool, device=query.device)
        for t, i in zip(tables, ids):
            i = i.expand(s.B, s.L) if i.dim() == 1 else i
            oob = (i < 0) | (i >= t.shape[0])
            bad |= oob & valid
            safe.append(torch.where(valid & ~oob, i, 0))
    keys = lookup(tables, safe, s.B)
    if lengths is not None or not check_values:
        keys = keys.masked_fill(bad[..., None], float("nan"))
    return topk_attention(query, keys, k, lengths, scale, acc_dtype=acc_dtype, check_length_values=False)
