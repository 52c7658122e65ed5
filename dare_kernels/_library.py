"""Loads the compiled library (dare_kernels._C) if it matches the running torch.

A library built against another torch can crash on load or on first call (C++
ABI), so it is refused with a warning that says how to rebuild; the Python
backends ("triton", "reference") keep working."""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

loaded = False
with_cuda = False
error = None  # why the library is unavailable, for error messages

REBUILD = "rebuild with: pip install --no-build-isolation --no-deps -e ."


def build_mismatch(info, running_torch: str):
    """Why a library with build record `info` must not be loaded under
    `running_torch`, or None if it may."""
    if info is not None and info.get("torch") != running_torch:
        return (f"dare_kernels._C was built for torch {info.get('torch')} but torch "
                f"{running_torch} is running; {REBUILD}")
    return None


def _load():
    global loaded, with_cuda, error
    if importlib.util.find_spec("dare_kernels._C") is None:
        error = f"dare_kernels._C is not built ({REBUILD})"
        return
    try:
        with open(os.path.join(HERE, "_C.json")) as f:
            info = json.load(f)
    except (OSError, ValueError):
        info = None
    error = build_mismatch(info, torch.__version__)
    if error is not None:
        warnings.warn(error + ". Falling back to the Python backends.", RuntimeWarning, stacklevel=3)
        return
    try:
        importlib.import_module("dare_kernels._C")
    except (ImportError, OSError) as e:
        error = f"dare_kernels._C failed to load under torch {torch.__version__}: {e}; {REBUILD}"
        warnings.warn(error + ". Falling back to the Python backends.", RuntimeWarning, stacklevel=3)
        return
    loaded = True
    with_cuda = bool(info and info.get("with_cuda"))


_load()
