"""The main job's printed tables explain themselves and its plot is written (issue #19 item 3)."""
import copy
import json
import os

import pytest

from dare_kernels import bench

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def load(name):
    with open(os.path.join(ROOT, "bench", name)) as f:
        return json.load(f)


def synthetic():
    """A small result like bench/results-cpu.json, with a fused CUDA row added."""
    result = copy.deepcopy(load("results-cpu.json"))
    result["rows"] = [r for r in result["rows"] if r["d"] in (16, 128)]
    for r in list(result["rows"]):
        if r["backend"] == "cpu":
            result["rows"].append({**r, "backend": "cuda", "ms": r["ms"] / 2})
    return result


def test_table_has_new_column_and_explanations():
    result = synthetic()
    text = bench.format_table(result)
    header = next(l for l in text.splitlines() if l.startswith("| backend"))
    assert "x vs bmm+topk d=128" in header and "x vs d=128" in header and "% copy BW" in header
    for col in ("ms:", "% copy BW", "x vs d=128:", "x vs bmm+topk:", "x vs bmm+topk d=128:"):
        assert any(l.strip().startswith(col) or col in l for l in text.splitlines() if l.startswith("  ")), col
    assert "Search from ids:" in text and "Models:" in text
    # bmm+topk at d=128 / fused cpu at d=16, computed from the rows.
    base = next(r for r in result["rows"] if r["backend"] == "bmm+topk" and r["d"] == 128)["ms"]
    cpu16 = next(r for r in result["rows"] if r["backend"] == "cpu" and r["d"] == 16)
    row = next(l for l in text.splitlines() if l.startswith("| cpu ") and "| 16 " in l)
    assert row.rstrip(" |").endswith(f"{base / cpu16['ms']:.2f}")
    assert "fused CUDA kernel at d=16" in bench.headline(result)


@pytest.mark.parametrize("name", ["results-cpu.json", "results-h200.json"])
def test_table_reads_stored_results(name):
    assert "x vs bmm+topk d=128" in bench.format_table(load(name))


@pytest.mark.parametrize("extras", [True, False])
def test_plot_writes_png(tmp_path, extras):
    pytest.importorskip("matplotlib")
    result = synthetic()
    if not extras:
        result["ids_rows"], result["model_rows"] = [], []
    path = tmp_path / "plot.png"
    bench.plot(result, str(path))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
