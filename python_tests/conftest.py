import os
import random
import zlib

import pytest
import torch

# Tests pin the Triton backend's default config (autotuning is for benchmarks; one test
# turns it on): compiling every config for every tested shape costs minutes.
os.environ.setdefault("DARE_TRITON_AUTOTUNE", "0")

# Fresh random inputs on every run; DARE_TEST_SEED=N reproduces a failure.
SEED = int(os.environ.get("DARE_TEST_SEED", random.SystemRandom().randrange(2**31)))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def compiled_unavailable(device):
    """Why the compiled kernel for `device` ("cpu" or "cuda") cannot run, or None."""
    from dare_kernels.ops import backend_status
    return backend_status("cpu" if device == "cpu" else "cuda", device)


def skip_unless_compiled(device):
    why = compiled_unavailable(device)
    if why is not None:
        pytest.skip(why)


def skip_unless_available(backend, device, dtype, large=False, layout="padded"):
    """Skips unless `backend` runs on `device`; the Triton interpreter (CPU tensors)
    has no bfloat16 and is too slow for the large samples, and runs the other
    layouts in float32 only (each layout is one address computation, not a dtype
    path: float16 would add minutes of interpretation and no code)."""
    from dare_kernels.ops import backend_status
    why = backend_status(backend, device)
    if why is not None:
        pytest.skip(why)
    if backend == "triton" and device == "cpu":
        if dtype == torch.bfloat16:
            pytest.skip("the Triton interpreter has no bfloat16")
        if large:
            pytest.skip("too large for the Triton interpreter")
        if layout != "padded" and dtype != torch.float32:
            pytest.skip("other layouts run in float32 under the Triton interpreter")


def pytest_report_header(config):
    return f"dare_kernels test seed: DARE_TEST_SEED={SEED}"


@pytest.fixture
def seed(request):
    # Distinct per test, reproducible from SEED.
    return (SEED + zlib.crc32(request.node.name.encode())) % 2**31
