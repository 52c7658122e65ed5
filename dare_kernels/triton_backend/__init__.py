"""The Triton backend (imported on first use: importing triton costs ~1 s).

On CUDA tensors it runs compiled; on CPU tensors only under TRITON_INTERPRET=1 (how
CI without a GPU tests it)."""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch


# Decided once at import: torch.compile traces unavailable() and cannot trace find_spec.
INSTALLED = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def unavailable(device) -> Optional[str]:
    """None if the Triton backend can run on tensors of `device`, else the reason."""
    device = torch.device(device)
    if not INSTALLED:
        return "triton is not installed (pip install triton)"
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA device is available"
    if device.type == "cpu":
        if INTERPRET:
            return None
        return "it runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)"
    return f"it runs on CUDA tensors, got {device}"


def run(op: str, args, direct: bool):
    """Runs `op` ("topk_attention" or "topk_attention_embedding") on the Triton
    kernels: `direct` launches them without the dispatcher (plain tensors, nothing
    traces, no gradient: see backends._direct), else through the triton_op
    torch.ops.dare.<op>_triton, which torch.compile traces and autograd sees."""
    from . import search
    if direct:
        return search.EAGER[op](*args)
    return getattr(torch.ops.dare, op + "_triton")(*args)
