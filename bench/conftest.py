"""pytest-benchmark suite: `pytest bench/ --benchmark` (or pytest-benchmark's own
spelling, --benchmark-only). Without either flag every benchmark is skipped at
collection, so a plain test run stays fast."""
import pytest
import torch

from dare_kernels.bench import environment, sync

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pytest_addoption(parser):
    # Same destination as pytest-benchmark's --benchmark-only: the two spellings
    # are one switch (argparse keeps them apart by their names).
    parser.getgroup("benchmark").addoption(
        "--benchmark", action="store_true", dest="benchmark_only",
        help="Run the benchmarks in bench/ (same as --benchmark-only); without it they are skipped.")


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", default=False):
        return
    skip = pytest.mark.skip(reason="benchmarks run with: pytest bench/ --benchmark")
    for item in items:
        item.add_marker(skip)


@pytest.fixture
def bench(benchmark):
    """pytest-benchmark's fixture with a timer that waits for the GPU, and the
    device and versions in extra_info."""
    if DEVICE.type == "cuda":
        import time

        def synchronizing_timer():
            sync(DEVICE)
            return time.perf_counter()

        benchmark._timer = synchronizing_timer
    benchmark.extra_info.update(environment(DEVICE))
    return benchmark
