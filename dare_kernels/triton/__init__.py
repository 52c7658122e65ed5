"""The Triton backend (imported on first use: importing triton costs ~1 s).

On CUDA tensors it runs compiled; on CPU tensors only under TRITON_INTERPRET=1 (how
CI without a GPU tests it)."""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Optional

import torch


@functools.lru_cache(maxsize=None)
def _installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def unavailable(device) -> Optional[str]:
    """None if the Triton backend can run on tensors of `device`, else the reason."""
    device = torch.device(device)
    if not _installed():
        return "triton is not installed (pip install triton)"
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA device is available"
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return None
        return "it runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)"
    return f"it runs on CUDA tensors, got {device}"


def op():
    """torch.ops.dare.topk_attention_triton, registering it on first use."""
    from . import search  # noqa: F401
    return torch.ops.dare.topk_attention_triton
