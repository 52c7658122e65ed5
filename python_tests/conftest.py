import collections
import os
import random
import re
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


# Samples of T >= 8 targets: the many-targets paths (CUDA's MMA kernel; Triton's tl.dot
# tiles, search.TARGETS_MIN). Under the interpreter they run float32 alone, targets_mma in
# every layout (the score kernel's row addressing) and the ties / NaN / duplicates samples
# padded. emb_duplicates (ties across tiles) runs padded float32: other layouts and dtypes
# are the address and load code light samples run.
INTERPRETER_MANY_TARGETS = frozenset({"targets_mma", "targets_mma_exact", "duplicates_targets"})
INTERPRETER_HEAVY = INTERPRETER_MANY_TARGETS | {"emb_duplicates"}
# A gradient test under the interpreter checks the Triton op's autograd wiring (on CPU
# tensors the backward is the shared compiled op): one target and several.
INTERPRETER_GRADIENT_SAMPLES = frozenset({"basic", "targets"})


def skip_unless_available(backend, device, dtype, large=False, layout="padded", name=None, backward=False):
    """Skips unless `backend` runs on `device`; the Triton interpreter (CPU tensors)
    has no bfloat16 and is too slow for the large samples, and runs the other
    layouts in float32 only (each layout is one address computation, not a dtype
    path: float16 would add minutes of interpretation and no code), the samples of
    INTERPRETER_HEAVY (`name`) padded float32 only but targets_mma, which runs every
    layout in float32, and a gradient test (`backward`) padded float32 on
    INTERPRETER_GRADIENT_SAMPLES."""
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
        if name == "targets_mma" and dtype != torch.float32:
            pytest.skip("a heavy sample: float32 only under the Triton interpreter")
        elif name in INTERPRETER_HEAVY and name != "targets_mma" and (layout, dtype) != ("padded", torch.float32):
            pytest.skip("a heavy sample: padded float32 only under the Triton interpreter")
        if backward and (layout != "padded" or dtype != torch.float32
                         or (name is not None and name not in INTERPRETER_GRADIENT_SAMPLES)):
            pytest.skip("the backward is the shared op's: its autograd wiring only under the Triton interpreter")


NO_GPU_NOTE = ("no CUDA device here: the tests of the CUDA and Triton backends on GPU tensors skip or are not "
               "collected; on a GPU machine `bash bench/device.sh` runs them")

# Why a test skipped, in the groups the end-of-run line counts (first match wins).
SKIP_GROUPS = (
    ("need a CUDA device", re.compile(r"no CUDA device|needs? an? (CUDA device|GPU)|runs on a GPU")),
    ("are the Triton backend on CPU tensors (TRITON_INTERPRET=1 runs them)", re.compile(r"TRITON_INTERPRET")),
    ("are backend/device pairs that run nowhere (e.g. the cuda backend on CPU tensors)",
     re.compile(r"runs on \w+ tensors, got")),
)


def skip_reason(report) -> str:
    """A skipped test report's reason, without pytest's 'Skipped: ' prefix."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


def skip_summary(reasons, cuda_available: bool) -> list:
    """The end-of-run lines about skipped tests: how many, by group of reason, and, without
    a CUDA device, that the GPU tests run with bench/device.sh on a GPU machine."""
    if not reasons:
        return []
    counts = collections.Counter()
    for reason in reasons:
        group = next((name for name, pattern in SKIP_GROUPS if pattern.search(reason)), "other")
        counts[group] += 1
    parts = [f"{counts[name]} {name}" for name, _ in SKIP_GROUPS if counts[name]]
    if counts["other"]:
        parts.append(f"{counts['other']} other (`pytest -rs` lists every reason)")
    lines = [f"{len(reasons)} skipped: " + "; ".join(parts) + "."]
    if not cuda_available:
        lines.append(NO_GPU_NOTE + ".")
    return lines


def pytest_report_header(config):
    lines = [f"dare_kernels test seed: DARE_TEST_SEED={SEED}"]
    if not torch.cuda.is_available():
        lines.append(NO_GPU_NOTE + " (the summary at the end counts them)")
    return lines


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if getattr(r, "skipped", False)]
    lines = skip_summary([skip_reason(r) for r in skipped], torch.cuda.is_available())
    if lines:
        terminalreporter.write_sep("-", "skipped tests")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def seed(request):
    # Distinct per test, reproducible from SEED.
    return (SEED + zlib.crc32(request.node.name.encode())) % 2**31
