"""A test run says how many tests skipped and why, and, without a CUDA device, that the
GPU tests run on a GPU machine with bench/device.sh (conftest.pytest_terminal_summary)."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import skip_summary

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def test_skip_summary_groups_reasons():
    reasons = ["needs a CUDA device", "needs a GPU", "autotuning runs on a GPU", "no CUDA device is available",
               "tracing a triton_op needs a GPU",
               "it runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)",
               "it runs on CUDA tensors, got cpu", "it runs on CPU tensors, got cuda:0",
               "the Triton interpreter has no bfloat16"]
    lines = skip_summary(reasons, cuda_available=False)
    assert lines[0].startswith("9 skipped: 5 need a CUDA device; 1 are the Triton backend on CPU tensors")
    assert "2 are backend/device pairs that run nowhere" in lines[0] and "1 other" in lines[0]
    assert "no CUDA device here" in lines[1] and "bench/device.sh" in lines[1]
    assert skip_summary(reasons, cuda_available=True) == lines[:1]
    assert skip_summary([], cuda_available=False) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU test_gpu.py runs")
def test_run_without_gpu_says_so():
    out = subprocess.run([sys.executable, "-m", "pytest", "python_tests/test_gpu.py", "-q", "-p", "no:cacheprovider"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300).stdout
    summary = out[out.index("skipped tests"):]
    assert "need a CUDA device" in summary and "bash bench/device.sh" in summary, out[-2000:]
