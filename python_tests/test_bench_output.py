"""The main job's printed tables explain themselves, its plot is written, and its JSON
records the commit and date measured (dare_kernels.bench.render, .results)."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from dare_kernels.bench import cli, models, render, results

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def load(name):
    return results.load(os.path.join(ROOT, "bench", "results", name))


def synthetic():
    """A small result like bench/results/cpu.json, with a fused CUDA row added."""
    result = copy.deepcopy(load("cpu.json"))
    result["rows"] = [r for r in result["rows"] if r["d"] in (16, 128)]
    for r in list(result["rows"]):
        if r["backend"] == "cpu":
            result["rows"].append({**r, "backend": "cuda", "ms": r["ms"] / 2})
    return result


def test_table_has_new_column_and_explanations():
    result = synthetic()
    text = render.format_table(result)
    header = next(l for l in text.splitlines() if l.startswith("| backend"))
    assert "x vs bmm+topk d=128" in header and "x vs d=128" in header and "% copy BW" in header
    notes = [l for l in text.splitlines() if l.startswith("  ")]
    for col in ("ms:", "% copy BW", "x vs d=128:", "x vs bmm+topk:", "x vs bmm+topk d=128:", "pass 100%"):
        assert any(col in l for l in notes), col
    assert any("Search from ids:" in l for l in notes) and any("Models:" in l for l in notes)
    # bmm+topk at d=128 / fused cpu at d=16, computed from the rows.
    base = next(r for r in result["rows"] if r["backend"] == "bmm+topk" and r["d"] == 128)["ms"]
    cpu16 = next(r for r in result["rows"] if r["backend"] == "cpu" and r["d"] == 16)
    row = next(l for l in text.splitlines() if l.startswith("| cpu ") and "| 16 " in l)
    assert row.rstrip(" |").endswith(render.fmt_x(base / cpu16["ms"]))
    assert "fused CUDA kernel at d=16" in render.headline(result)
    # The other sections through the same tables as the Markdown block, aligned.
    models_table = text[text.index("Reference models"):].splitlines()
    assert models_table[1].startswith("| stage ") and models_table[3].startswith("| search ")


@pytest.mark.parametrize("name", ["cpu.json", "h200.json"])
def test_table_reads_stored_results(name):
    assert "x vs bmm+topk d=128" in render.format_table(load(name))


@pytest.mark.parametrize("extras", [True, False])
def test_plot_writes_png(tmp_path, extras):
    pytest.importorskip("matplotlib")
    result = synthetic()
    if not extras:
        result["ids_rows"], result["model_rows"] = [], []
    path = tmp_path / "plot.png"
    render.plot(result, str(path))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_json_records_commit_and_date(tmp_path):
    path = tmp_path / "run.json"
    results.write({"env": {"device": "x"}, "rows": []}, str(path))
    run = json.loads(path.read_text())
    assert run["date"] and run["env"] == {"device": "x"}
    commit = results.commit()
    if commit is not None:  # a git checkout: the short hash, -dirty when csrc/ or dare_kernels/ differ
        assert run["commit"] == commit and commit.split("-")[0].isalnum()
    # A run that has them keeps its own.
    results.write({"env": {}, "commit": "abc1234", "date": "2026-01-02"}, str(path))
    assert json.loads(path.read_text())["commit"] == "abc1234"


def test_main_job_writes_json_and_renders_it(tmp_path, monkeypatch, capsys):
    """The main job end to end at a tiny size (model rows at a tiny size too): its JSON
    renders as the Markdown block, through the same renderer as the printout."""
    monkeypatch.setattr(models, "MODEL_CONFIGS", [("twin", 128), ("dare", 16)])
    monkeypatch.setattr(models, "MODEL_ITEMS", 1000)
    monkeypatch.setattr(models, "MODEL_CATS", 50)
    monkeypatch.setattr(cli, "copy_bandwidth", lambda device: 1e10)
    path = tmp_path / "run.json"
    cli.main(["--device", "cpu", "--B", "2", "--L", "64", "--d", "16", "128", "--k", "4", "--reps", "2",
              "--no-ids", "--quiet", "--json", str(path)])
    out = capsys.readouterr().out
    run = results.load(str(path))
    assert run["date"] and run["command"].startswith("python -m dare_kernels.bench")
    stages = [r["stage"] for r in run["model_rows"] if r["model"] == "dare"]
    assert stages[:2] == ["search", "inference"] and "train step (rows)" in stages and "train step (dense)" in stages
    assert any(s.startswith("phase: ") for s in stages)
    assert "| backend " in out and "Reference models" in out
    serving = run["serving_rows"]
    assert [(r["model"], r["T"]) for r in serving] == [(m, T) for m in ("twin", "dare") for T in (1, 64, 256, 1024)]
    assert all(0 < r["p50_ms"] <= r["p99_ms"] and r["reps"] >= 10 for r in serving)
    assert "Serving (one request" in out and "p99 ms" in out
    block = render.markdown([(str(path), run)])
    assert "| d | bmm+topk ms" in block and "train step (dense)" in block and "p50 ms" in block


def test_rows_above_copy_bandwidth_are_explained():
    """'% copy BW' above 100% is explained under the table that shows it, and only there."""
    result = synthetic()
    for r in result["rows"]:  # the recorded run may have its own rows above 100%
        r["pct_copy_bw"] = min(r["pct_copy_bw"], 90.0)
    assert "Above 100% of the copy bandwidth" not in render.format_table(result)
    r = next(r for r in result["rows"] if r["backend"] == "cpu" and r["d"] == 128)
    r["pct_copy_bw"] = 184.0
    text = render.format_table(result)
    note = next(l for l in text.splitlines() if "Above 100% of the copy bandwidth" in l)
    assert note.startswith("  ") and "cpu at B=64 d=128: 184%" in note
    assert "only reads the keys" in note and "reads and writes every byte" in note and "caches" in note
    assert text.index(note) < text.index("Reference models")  # under the search table
    block = render.markdown([("run.json", result)])
    assert "cpu at B=64 d=128: 184%" in block


def suite_row(backend, ms, dtype="float32", keys_dtype=None, baseline=False):
    return {"suite": "bench/test_search.py::test_x", "shape": f"B=64 L=10000 d=128 k=128 {dtype}", "backend": backend,
            "baseline": baseline, "ms": ms, "B": 64, "T": 0, "L": 10000, "d": 128, "k": 128, "dtype": dtype,
            "keys_dtype": keys_dtype or dtype}


def test_suite_summary_explains_cpu_rows():
    """The pytest suites' summary says why the CPU kernel's 16-bit and fp8 rows are what they are."""
    plain = render.suite_summary([suite_row("bmm+topk", 50.0, baseline=True), suite_row("cpu", 10.0)])
    assert not any("cpu on" in l for l in plain)
    half = render.suite_summary([suite_row("bmm+topk", 50.0, "bfloat16", baseline=True),
                                 suite_row("cpu", 80.0, "bfloat16")])
    assert any("cpu on float16/bfloat16 keys" in l and "AVX2" in l and "DARE_CPU_ISA=baseline" in l for l in half)
    fp8 = render.suite_summary([suite_row("bmm+topk", 10.0, baseline=True), suite_row("cpu", 3.0),
                                suite_row("cpu fp8", 35.0, keys_dtype="float8_e4m3fn")])
    assert any("cpu on fp8 keys" in l and "upcasts float8_e4m3fn keys to bfloat16" in l for l in fp8)
    assert not any("cpu on float16/bfloat16" in l for l in fp8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU shapes of the fp8 suite")
def test_fp8_suite_rows_name_their_keys(tmp_path):
    """`pytest bench/ --benchmark`'s fp8 summary: rows name the fp8 keys (not only the query's
    float32), and the JSON rows carry the keys' dtype."""
    path = tmp_path / "fp8.json"
    out = subprocess.run([sys.executable, "-m", "pytest", "bench/test_search.py", "--benchmark", "-q", "-p",
                          "no:cacheprovider", "-k", "test_search_fp8 and d16", "--benchmark-max-time=0.01",
                          "--benchmark-min-rounds=1", "--benchmark-warmup=off", "--summary-json", str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = results.load(str(path))["suite_rows"]
    fp8 = [r for r in rows if r["backend"].endswith(" fp8")]
    assert fp8 and all(r["keys_dtype"] == "float8_e4m3fn" and "float8_e4m3fn keys" in r["shape"] for r in fp8)
    assert all(r["keys_dtype"] == "float32" for r in rows if r not in fp8)
    summary = out.stdout[out.stdout.index("bench/test_search.py::test_search_fp8"):]
    line = next(l for l in summary.splitlines() if l.startswith("| B=64"))
    assert "float32 query, float32 keys (fp8 columns: float8_e4m3fn keys)" in line
    assert "cpu on fp8 keys" in summary


def test_models_argument():
    """--models picks the reference models (TWIN-128 joins: every row is a ratio to it);
    a bad value names the form expected."""
    import argparse
    from dare_kernels.bench.models import model_config
    assert model_config("dare:16") == ("dare", 16) and model_config("twin:128") == ("twin", 128)
    for bad in ("dare", "dare:x", "bert:16", "dare:2"):
        with pytest.raises(argparse.ArgumentTypeError, match="VARIANT:D_ATT"):
            model_config(bad)
