"""pytest-benchmark suite: `pytest bench/ --benchmark` (or pytest-benchmark's own
spelling, --benchmark-only). Without either flag every benchmark is skipped at
collection, so a plain test run stays fast.

The run ends with one compact summary: per test function, a row per shape
(numeric order), a column per backend (median ms), and each fused backend's
speed-up over the row's baseline (`extra_info['baseline']`, or "bmm+topk").
Every benchmark that uses the `bench` fixture below and sets
`bench.extra_info['backend']` and `['shape']` appears in it."""
import math
import re
import time

import pytest
import torch

from dare_kernels.bench import BASELINE, environment, sync

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# pytest-benchmark's tables by default, unless given on the command line: two
# columns instead of ten, and one unit (the summary's) instead of us or ms per table.
DEFAULT_COLUMNS = ["median", "rounds"]
DEFAULT_TIME_UNIT = "ms"
SHAPE_FIELDS = ("B", "T", "d", "k", "L")  # sort order of the rows
_results = pytest.StashKey[list]()


def pytest_addoption(parser):
    # Same destination as pytest-benchmark's --benchmark-only: the two spellings
    # are one switch (argparse keeps them apart by their names).
    parser.getgroup("benchmark").addoption(
        "--benchmark", action="store_true", dest="benchmark_only",
        help="Run the benchmarks in bench/ (same as --benchmark-only); without it they are skipped.")


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's session reads the options
def pytest_configure(config):
    if config.getoption("benchmark_columns", default=None) is None:
        config.option.benchmark_columns = list(DEFAULT_COLUMNS)
    if config.getoption("benchmark_time_unit", default=None) is None:
        config.option.benchmark_time_unit = DEFAULT_TIME_UNIT
    config.stash[_results] = []


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", default=False):
        return
    skip = pytest.mark.skip(reason="benchmarks run with: pytest bench/ --benchmark")
    for item in items:
        item.add_marker(skip)


@pytest.fixture
def bench(benchmark, request):
    """pytest-benchmark's fixture with a timer that waits for the GPU, and the
    device and versions in extra_info. Its median goes to the end-of-run summary."""
    if DEVICE.type == "cuda":
        def synchronizing_timer():
            sync(DEVICE)
            return time.perf_counter()

        benchmark._timer = synchronizing_timer
    benchmark.extra_info.update(environment(DEVICE))
    yield benchmark
    info = benchmark.extra_info
    if benchmark.stats and not benchmark.has_error and "backend" in info:
        request.config.stash[_results].append({
            "section": request.node.nodeid.split("[")[0],
            "shape": str(info.get("shape") or benchmark.group or request.node.name),
            "backend": str(info["backend"]),
            "baseline": bool(info.get("baseline")) or info["backend"] == BASELINE,
            "ms": benchmark.stats.stats.median * 1e3,
            "info": dict(info),
        })


# ---- ordering: numeric in B, T, d, k (then L), never as text --------------------------

def _natural(text):
    """'B=64 d=16' -> comparable tokens with the numbers as numbers."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t)


def shape_key(label, info=None):
    """Sort key of a shape: extra_info's numeric B, T, d, k, L where given, else the
    `name=number` fields of its label; then the label with numbers compared as numbers."""
    info = info or {}
    parsed = {name: int(v) for name, v in re.findall(r"\b([A-Za-z]+)=(\d+)\b", label)}
    fields = []
    for name in SHAPE_FIELDS:
        v = info.get(name, parsed.get(name, -1))
        fields.append(v if isinstance(v, (int, float)) else -1)
    return (tuple(fields), _natural(label))


@pytest.hookimpl(tryfirst=True)
def pytest_benchmark_group_stats(config, benchmarks, group_by):
    """pytest-benchmark's grouping, with its tables in numeric shape order."""
    from pytest_benchmark.plugin import pytest_benchmark_group_stats as default_grouping

    def key(pair):
        name, group = pair
        first = group[0]
        func = first["fullname"].split("[")[0]
        return (func, shape_key(name or "", first.get("extra_info")), name or "")

    return sorted(default_grouping(config=config, benchmarks=benchmarks, group_by=group_by), key=key)


# ---- the end-of-run summary -----------------------------------------------------------

def _decimals(values):
    """Decimals that give the smallest value three significant digits (at least 2)."""
    smallest = min((v for v in values if v > 0), default=1.0)
    return max(2, min(6, 2 - math.floor(math.log10(smallest))))


def format_summary(results):
    """Lines of the summary: a table per test function (section)."""
    sections = {}
    for r in results:
        sections.setdefault(r["section"], []).append(r)
    lines = []
    for section, rs in sections.items():
        backends = list(dict.fromkeys(r["backend"] for r in rs))
        baselines = [b for b in backends if any(r["baseline"] for r in rs if r["backend"] == b)]
        backends = baselines + [b for b in backends if b not in baselines]
        rows = {}
        for r in rs:
            rows.setdefault(r["shape"], {"info": r["info"], "ms": {}})["ms"][r["backend"]] = r["ms"]
        dec = _decimals([r["ms"] for r in rs])
        table = [["shape"] + backends]
        for shape in sorted(rows, key=lambda s: shape_key(s, rows[s]["info"])):
            ms = rows[shape]["ms"]
            base = next((ms[b] for b in baselines if b in ms), None)
            cells = [shape]
            for b in backends:
                if b not in ms:
                    cells.append("-")
                elif b in baselines or base is None:
                    cells.append(f"{ms[b]:.{dec}f}")
                else:
                    cells.append(f"{ms[b]:.{dec}f} ({base / ms[b]:.2f}x)")
            table.append(cells)
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines.append(section)
        for row in table:
            lines.append("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
        lines.append("")
    return lines


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's tables
def pytest_terminal_summary(terminalreporter, config):
    results = config.stash.get(_results, [])
    if not results:
        return
    terminalreporter.write_sep(
        "=", "search stage: median ms; (Nx) = baseline ms / backend ms, above 1 is faster")
    for line in format_summary(results):
        terminalreporter.write_line(line)
