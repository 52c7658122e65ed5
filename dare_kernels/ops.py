"""The public entry point, backend selection, and the op's fake and autograd
registrations (shared by every backend)."""
from __future__ import annotations

from typing import Optional

import torch

from . import _library, reference
from . import triton as _triton
from ._check import check_args, check_inputs, output_shape

BACKENDS = ("cpu", "cuda", "triton", "reference")


def backend_status(backend: str, device) -> Optional[str]:
    """None if `backend` can run on tensors of `device`, else the reason."""
    device = torch.device(device)
    if backend == "reference":
        return None
    if backend == "triton":
        return _triton.unavailable(device)
    if not _library.loaded:
        return _library.error
    if backend == "cpu":
        return None if device.type == "cpu" else f"it runs on CPU tensors, got {device}"
    if backend == "cuda":
        if device.type != "cuda":
            return f"it runs on CUDA tensors, got {device}"
        return None if _library.with_cuda else "dare_kernels._C was built without CUDA"
    raise ValueError(backend)


def available_backends(device) -> list:
    return [b for b in BACKENDS if backend_status(b, device) is None]


def _resolve(backend: Optional[str], keys: torch.Tensor) -> str:
    if backend is not None and backend != "auto" and backend not in BACKENDS:
        raise ValueError(
            "topk_attention: backend must be one of None, 'auto', "
            + ", ".join(repr(b) for b in BACKENDS) + f", got {backend!r}")
    device = keys.device
    if backend is None or backend == "auto":
        order = ("cuda", "triton") if device.type == "cuda" else ("cpu",)
        return next((b for b in order if backend_status(b, device) is None), "reference")
    why = backend_status(backend, device)
    if why is not None:
        raise RuntimeError(f"topk_attention: backend {backend!r} is not available: {why}")
    return backend


def topk_attention(query: torch.Tensor, keys: torch.Tensor, k: int, *,
                   lengths: Optional[torch.Tensor] = None, scale: float = 1.0,
                   backend: Optional[str] = None):
    """Scores every key against the query and returns the exact top-k.

    query (B, d) or (B, T, d), keys (B, L, d), same float dtype and device;
    lengths (B,) int or None; returns float32 scores and int64 indices of shape
    (B, k) or (B, T, k), sorted descending, ties by lower index, NaN first,
    -inf/-1 where a row has fewer than k valid positions. `scores` is
    differentiable w.r.t. query and keys."""
    check_args(query, keys, k, lengths, scale)  # types and scale, for every backend (the raw op cannot)
    name = _resolve(backend, keys)
    if name == "reference":
        return reference.topk_attention(query, keys, k, lengths, scale)
    direct = _direct(query, keys)
    if name == "triton":
        return _triton.eager(query, keys, k, lengths, scale) if direct else _triton.op()(query, keys, k, lengths, scale)
    if direct:
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.dare.topk_attention.default(query, keys, k, lengths, scale)
    return torch.ops.dare.topk_attention(query, keys, k, lengths, scale)


def _direct(query, keys) -> bool:
    """True when the call may skip the dispatcher's Python layers (the autograd
    wrapper; for Triton, the triton_op): plain tensors, no gradient needed, and no
    tracer (torch.compile, make_fx, fake tensors) that must see the op. Measured
    host cost of those layers: bench/RESULTS.md."""
    return not (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0
                or type(query) is not torch.Tensor or type(keys) is not torch.Tensor
                or (torch.is_grad_enabled() and (query.requires_grad or keys.requires_grad)))


def topk_attention_backward(grad: torch.Tensor, query: torch.Tensor, keys: torch.Tensor,
                            indices: torch.Tensor, scale: float,
                            need_query: bool = True, need_keys: bool = True):
    """Gradients of the selected scores. Touches only the B·T·k selected keys:
    no B×L intermediate (grad_keys is dense because keys are)."""
    B, L, d = keys.shape
    T = query.shape[1] if query.dim() == 3 else 1
    k = indices.shape[-1]
    idx = indices.reshape(B, T * k)
    valid = idx >= 0
    g = torch.where(valid, grad.reshape(B, T * k).float() * scale, 0.0)
    gather_idx = idx.clamp(min=0)[..., None].expand(B, T * k, d)
    grad_query = grad_keys = None
    if need_query:
        sel = torch.where(valid[..., None], keys.gather(1, gather_idx).float(), 0.0)
        grad_query = torch.einsum("btk,btkd->btd", g.view(B, T, k), sel.view(B, T, k, d))
        grad_query = grad_query.reshape(query.shape).to(query.dtype)
    if need_keys:
        src = g.view(B, T, k, 1) * query.reshape(B, T, 1, d).float()
        src = torch.where(valid[..., None], src.reshape(B, T * k, d), 0.0)
        # With one target a row selects each position at most once: nothing
        # accumulates (padding adds zeros), so the dense B×L×d gradient is built
        # in the keys' dtype, rounded once, as float32 accumulation would give,
        # at a fraction of the memory traffic for 16-bit keys. Several targets
        # may select one key: those sums stay in float32.
        acc = keys.dtype if T == 1 else torch.float32
        grad_keys = torch.zeros(B, L, d, dtype=acc, device=keys.device)
        grad_keys = grad_keys.scatter_add_(1, gather_idx, src.to(acc)).to(keys.dtype)
    return grad_query, grad_keys


def _fake(query, keys, k, lengths=None, scale=1.0):
    s = check_inputs(query, keys, k, lengths, check_length_values=False)
    shape = output_shape(s, k)
    return (query.new_empty(shape, dtype=torch.float32),
            query.new_empty(shape, dtype=torch.int64))


def _setup_context(ctx, inputs, output):
    query, keys, _k, _lengths, scale = inputs
    ctx.save_for_backward(query, keys, output[1])
    ctx.scale = scale


def _backward(ctx, grad_scores, _grad_indices):
    query, keys, indices = ctx.saved_tensors
    gq, gk = topk_attention_backward(grad_scores, query, keys, indices, ctx.scale,
                                     ctx.needs_input_grad[0], ctx.needs_input_grad[1])
    return gq, gk, None, None, None


def register_autograd(qualname: str):
    """The one backward formula, for the compiled op and the Triton op alike."""
    torch.library.register_autograd(qualname, _backward, setup_context=_setup_context)


def _register():
    torch.library.register_fake("dare::topk_attention", _fake)
    register_autograd("dare::topk_attention")
    if not _library.with_cuda and _triton.unavailable("cuda") is None:
        # No compiled CUDA kernel: CUDA tensors reach the Triton backend through the op.
        torch.library.register_kernel(
            "dare::topk_attention", "cuda",
            lambda query, keys, k, lengths=None, scale=1.0: _triton.op()(query, keys, k, lengths, scale))


if _library.loaded:
    _register()
