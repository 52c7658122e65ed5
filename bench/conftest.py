"""pytest-benchmark suites: `pytest bench/ --benchmark` (or pytest-benchmark's own
spelling, --benchmark-only). Without either flag every benchmark is skipped at
collection, so a plain test run stays fast.

The suites take their inputs, baselines and timer from dare_kernels.bench (the main
job's library). The run ends with one compact summary, rendered by
dare_kernels.bench.render: per test function, a row per shape (numeric order), a
column per backend (median ms), and each other backend's speed-up over the row's
baseline (`extra_info['baseline']`, or "bmm+topk"). Every benchmark that uses the
`bench` fixture below and sets `bench.extra_info['backend']` and `['shape']` appears
in it. `--summary-json PATH` writes those rows as a run's JSON
(dare_kernels.bench.results; render it with `python -m dare_kernels.bench.report`)."""
import pytest

from dare_kernels.bench import render, results
from dare_kernels.bench.search import BASELINE
from dare_kernels.bench.timing import default_device, environment

DEVICE = default_device()
# pytest-benchmark's tables by default, unless given on the command line: two
# columns instead of ten, and one unit (the summary's) instead of us or ms per table.
DEFAULT_COLUMNS = ["median", "rounds"]
DEFAULT_TIME_UNIT = "ms"
# On a GPU the timer waits for the device (pytest-benchmark's default, time.perf_counter, does not).
CUDA_TIMER = "dare_kernels.bench.timing.cuda_clock"
ROW_FIELDS = ("B", "T", "L", "d", "k", "dtype", "keys_dtype")  # of extra_info, copied into the summary's rows
_results = pytest.StashKey[list]()


def pytest_addoption(parser):
    group = parser.getgroup("benchmark")
    # Same destination as pytest-benchmark's --benchmark-only: the two spellings
    # are one switch (argparse keeps them apart by their names).
    group.addoption("--benchmark", action="store_true", dest="benchmark_only",
                    help="Run the benchmarks in bench/ (same as --benchmark-only); without it they are skipped.")
    group.addoption("--summary-json", metavar="PATH",
                    help="Write the end-of-run summary's rows here, as dare_kernels.bench.results JSON.")


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's session reads the options
def pytest_configure(config):
    if config.getoption("benchmark_columns", default=None) is None:
        config.option.benchmark_columns = list(DEFAULT_COLUMNS)
    if config.getoption("benchmark_time_unit", default=None) is None:
        config.option.benchmark_time_unit = DEFAULT_TIME_UNIT
    if DEVICE.type == "cuda" and config.getoption("benchmark_timer", default=None) == "time.perf_counter":
        config.option.benchmark_timer = CUDA_TIMER
    config.stash[_results] = []


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", default=False):
        return
    skip = pytest.mark.skip(reason="benchmarks run with: pytest bench/ --benchmark")
    for item in items:
        item.add_marker(skip)


@pytest.fixture
def bench(benchmark, request):
    """pytest-benchmark's fixture with the device and versions in extra_info. Its median
    goes to the end-of-run summary."""
    benchmark.extra_info.update(environment(DEVICE))
    yield benchmark
    info = benchmark.extra_info
    if benchmark.stats and not benchmark.has_error and "backend" in info:
        request.config.stash[_results].append({
            "suite": request.node.nodeid.split("[")[0],
            "shape": str(info.get("shape") or benchmark.group or request.node.name),
            "backend": str(info["backend"]),
            "baseline": bool(info.get("baseline")) or info["backend"] == BASELINE,
            "ms": benchmark.stats.stats.median * 1e3,
            **{f: info[f] for f in ROW_FIELDS if f in info},
        })


@pytest.hookimpl(tryfirst=True)
def pytest_benchmark_group_stats(config, benchmarks, group_by):
    """pytest-benchmark's grouping, with its tables in numeric shape order."""
    from pytest_benchmark.plugin import pytest_benchmark_group_stats as default_grouping

    def key(pair):
        name, group = pair
        first = group[0]
        func = first["fullname"].split("[")[0]
        return (func, render.shape_key(name or "", first.get("extra_info")), name or "")

    return sorted(default_grouping(config=config, benchmarks=benchmarks, group_by=group_by), key=key)


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's tables
def pytest_terminal_summary(terminalreporter, config):
    rows = config.stash.get(_results, [])
    if not rows:
        return
    terminalreporter.write_sep("=", "search stage: median ms; (Nx) = baseline ms / backend ms, above 1 is faster")
    for line in render.suite_summary(rows):
        terminalreporter.write_line(line)
    path = config.getoption("summary_json", default=None)
    if path:
        results.write({"env": environment(DEVICE), "suite_rows": rows,
                       "command": " ".join(["pytest", *config.invocation_params.args])}, path)
        terminalreporter.write_line(f"summary JSON written to {path}")
