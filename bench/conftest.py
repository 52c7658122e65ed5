"""pytest-benchmark suite: `pytest bench/ --benchmark-only`. Without
--benchmark-only every benchmark is skipped at collection, so a plain test run
stays fast."""
import pytest
import torch

from dare_kernels.bench import environment, sync

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", default=False):
        return
    skip = pytest.mark.skip(reason="benchmarks run with: pytest bench/ --benchmark-only")
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
