"""The one table of backends. A row says where a backend runs (`unavailable`),
which devices "auto" picks it for, in order, how it runs each op, and for which
devices it is the raw op's kernel when the compiled library has none (`stands_in`).

A compiled backend ("cpu", "cuda") runs `torch.ops.dare.<op>`; the dispatcher
picks the kernel by device. "triton" runs `dare_kernels.triton_backend.<op>`;
"reference" runs `dare_kernels.reference.<op>`. Adding an op to a backend is one
entry in its module; adding a backend is one row here."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from . import _contract, _library, reference
from . import triton_backend as _triton

OPS = ("topk_attention", "topk_attention_embedding")


def _direct(args) -> bool:
    """True when a call may skip the dispatcher's Python layers (the autograd
    wrapper; for Triton, the triton_op): plain tensors, no gradient needed, and no
    tracer (torch.compile, make_fx, fake tensors) that must see the op. Measured
    host cost of those layers: bench/RESULTS.md."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return False
    grad = torch.is_grad_enabled()
    for a in args:
        for t in (a if isinstance(a, (list, tuple)) else (a,)):
            if isinstance(t, torch.Tensor) and (type(t) is not torch.Tensor or (grad and t.requires_grad)):
                return False
    return True


def _compiled_unavailable(device_type: str) -> Callable[[torch.device], Optional[str]]:
    def unavailable(device: torch.device) -> Optional[str]:
        if not _library.loaded:
            return _library.error
        if device.type != device_type:
            return f"it runs on {device_type.upper()} tensors, got {device}"
        if device_type == "cuda":
            if not _library.with_cuda:
                return "dare_kernels._C was built without CUDA"
            if not torch.cuda.is_available():
                return "no CUDA device is available"
        return None
    return unavailable


def _run_compiled(op: str, args, direct: bool):
    packet = getattr(torch.ops.dare, op)
    if direct:
        with torch._C._AutoDispatchBelowAutograd():
            return packet.default(*args)
    return packet(*args)


def _run_triton(op: str, args, direct: bool):
    return _triton.run(op, args, direct)


def _run_reference(op: str, args, direct: bool):
    return getattr(reference, op)(*args)


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    unavailable: Callable[[torch.device], Optional[str]]  # None if it runs on tensors of this device, else why
    run: Callable  # run(op, args, direct) -> (scores, indices)
    auto: tuple = ()  # device types for which "auto" tries it, in table order
    # Device types for which it is torch.ops.dare.<op>'s kernel when the compiled library
    # has none for them (built without CUDA): register_stand_ins.
    stands_in: tuple = ()


TABLE = (
    Backend("cpu", _compiled_unavailable("cpu"), _run_compiled, auto=("cpu",)),
    Backend("cuda", _compiled_unavailable("cuda"), _run_compiled, auto=("cuda",)),
    Backend("triton", _triton.unavailable, _run_triton, auto=("cuda",), stands_in=("cuda",)),
    Backend("reference", lambda device: None, _run_reference),
)
BY_NAME = {b.name: b for b in TABLE}
NAMES = tuple(BY_NAME)


def compiled_has(device_type: str) -> bool:
    """Whether the loaded compiled library holds kernels for `device_type`."""
    return _library.loaded and (device_type == "cpu" or (device_type == "cuda" and _library.with_cuda))


def register_stand_ins() -> None:
    """For each row's `stands_in` device type that the compiled library has no kernels
    for, where the row runs: its run(op, args, direct=True), below autograd, as the
    kernel of torch.ops.dare.<op> for that device type (e.g. the raw op runs CUDA tensors
    on Triton when the library was built without CUDA)."""
    if not _library.loaded:  # no torch.ops.dare ops to register for
        return
    for b in TABLE:
        for device_type in b.stands_in:
            if compiled_has(device_type) or b.unavailable(torch.device(device_type)) is not None:
                continue
            for op in OPS:
                torch.library.register_kernel(f"dare::{op}", device_type,
                                              lambda *args, _op=op, _run=b.run: _run(_op, args, True))


def register_backward() -> None:
    """The CUDA kernels of both ops' backward where the compiled library has none:
    Triton's where they apply (tables + ids: one launch for every field together,
    the tables' gradients per slot (sparse: no host synchronisation) or summed in
    the kernel (dense); one target per padded row: one fill and one launch), else
    the PyTorch formulas."""
    if not _library.loaded:
        return

    def kernel(grad, query, tables, ids, indices, scale=1.0, offsets=None, sparse=False, need_tables=True):
        if _triton.unavailable(query.device) is None:
            from .triton_backend.backward import embedding_backward
            return embedding_backward(grad, query, tables, ids, indices, scale, offsets, sparse, need_tables)
        return _contract.backward_formula(grad, query, tables, ids, indices, scale, offsets, sparse, need_tables)

    if not torch._C._dispatch_has_kernel_for_dispatch_key(_contract.BACKWARD_OP, "CUDA"):
        torch.library.register_kernel(_contract.BACKWARD_OP, "cuda", kernel)

    def keys_kernel(grad, query, keys, indices, scale=1.0, offsets=None, need_keys=True):
        # One target per row, padded keys: each selected key's row is written once (Triton).
        if query.dim() == 2 and offsets is None and keys.dtype != torch.float8_e4m3fn and keys.stride(2) == 1 \
                and _triton.unavailable(query.device) is None:
            from .triton_backend.backward import keys_backward
            return keys_backward(grad, query, keys, indices, scale, need_keys)
        return _contract.keys_backward_formula(grad, query, keys, indices, scale, offsets, need_keys)

    if not torch._C._dispatch_has_kernel_for_dispatch_key(_contract.KEYS_BACKWARD_OP, "CUDA"):
        torch.library.register_kernel(_contract.KEYS_BACKWARD_OP, "cuda", keys_kernel)


def device_of(device) -> torch.device:
    """torch.device(device), with a ValueError that lists what is accepted."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch.device or a string such as 'cpu', 'cuda' or 'cuda:0', "
                         f"got {device!r}") from None


def status(name: str, device) -> Optional[str]:
    """None if backend `name` can run on tensors of `device`, else the reason."""
    return BY_NAME[name].unavailable(device_of(device))


def resolve(op: str, backend: Optional[str], device: torch.device) -> Backend:
    if backend is None or backend == "auto":
        for b in TABLE:
            if device.type in b.auto and b.unavailable(device) is None:
                return b
        return BY_NAME["reference"]
    if backend not in BY_NAME:
        raise ValueError(f"{op}: backend must be one of None, 'auto', "
                         + ", ".join(repr(b) for b in NAMES) + f", got {backend!r}")
    b = BY_NAME[backend]
    why = b.unavailable(device)
    if why is not None:
        raise RuntimeError(f"{op}: backend {backend!r} is not available: {why}")
    return b


def call(op: str, backend: Optional[str], device: torch.device, args):
    return resolve(op, backend, device).run(op, args, _direct(args))
