"""`python -m dare_kernels.bench.report` writes the main job's JSON as tables into
RESULTS.md (every table) and the README (the headline numbers), rows in numeric order;
the repository's blocks are the ones its JSON renders to."""
import json
import os
import re
import subprocess
import sys

import pytest

from dare_kernels.bench import render, report

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BEGIN, END = "<!-- report:begin -->", "<!-- report:end -->"
RESULTS_JSON = [os.path.join("bench", "results", name) for name in ("h200.json", "cpu.json")]


def row(backend, B, d, ms, T=0):
    return {"B": B, "L": 100, "d": d, "k": 8, "T": T, "dtype": "bfloat16", "backend": backend, "ms": ms,
            "GBps": 1.0, "pct_copy_bw": 42.0, "x_vs_d128": None, "x_vs_bmm_topk": 1.0 if backend == "bmm+topk" else 2.5}


RESULT = {
    "env": {"device": "Test Card", "torch": "9.9.9", "cuda": "13.0", "triton": "3.6.0", "python": "3.12.3"},
    "copy_GBps": 1234.5,
    # Out of order on purpose, and with B and d values that sort differently as text.
    "rows": [row("bmm+topk", 1024, 128, 2.0), row("cuda", 1024, 128, 1.0), row("cuda", 8, 16, 0.0213),
             row("bmm+topk", 1024, 16, 1.5), row("cuda", 1024, 16, 0.125), row("bmm+topk", 8, 16, 0.0601),
             row("cuda", 64, 32, 0.5), row("bmm+topk", 64, 32, 0.9)],
    "model_rows": [{"stage": "search", "model": "twin", "d_att": 128, "B": 1024, "ms": 26.1, "x_vs_twin128": 1.0},
                   {"stage": "search", "model": "dare", "d_att": 16, "B": 1024, "ms": 20.3, "x_vs_twin128": 1.28},
                   {"stage": "train", "model": "dare", "d_att": 16, "B": 1024, "ms": 99.0, "x_vs_twin128": 1.3}],
    "ids_rows": [{"backend": "fused", "B": 1024, "L": 10000, "d": 32, "k": 128, "table_rows": 1000000,
                  "dtype": "bfloat16", "ms": 0.333, "pct_floor": 71.2, "x_vs_compiled": 3.1},
                 {"backend": "fused", "B": 256, "L": 10000, "d": 16, "k": 128, "table_rows": 1000000,
                  "dtype": "bfloat16", "ms": 0.111, "pct_floor": 64.9, "x_vs_compiled": 3.9}],
    "command": "python -m dare_kernels.bench --json x.json",
    "commit": "abc1234",
    "date": "2026-01-02",
}


def block(text):
    return text[text.index(BEGIN) + len(BEGIN):text.index(END)]


def table_rows(text, title):
    """The data lines of the first table after the line starting with `title`."""
    lines = text[text.index(title):].splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("|"))
    body = []
    for l in lines[start + 2:]:
        if not l.startswith("|"):
            break
        body.append([c.strip() for c in l.strip("|").split("|")])
    return body


def test_report_fills_both_files(tmp_path):
    src = tmp_path / "run.json"
    src.write_text(json.dumps(RESULT))
    results, readme = tmp_path / "RESULTS.md", tmp_path / "README.md"
    results.write_text(f"# Results\n\n{BEGIN}\nold numbers\n{END}\n\n## Method\nkept\n")
    readme.write_text(f"# x\n\n## Measured\n\nintro\n\n{BEGIN}\n| stale |\n{END}\n\n## Next\nkept too\n")
    report.main([str(src), "--results", str(results), "--readme", str(readme)])
    r, m = results.read_text(), readme.read_text()
    assert "old numbers" not in r and "| stale |" not in m
    assert r.endswith(f"{END}\n\n## Method\nkept\n") and m.endswith(f"{END}\n\n## Next\nkept too\n")
    assert block(r) == "\n" + render.markdown([(str(src), RESULT)]) + "\n"
    assert block(m) == "\n" + render.readme_markdown([(str(src), RESULT)]) + "\n"
    # The README's block: the search stage and the headline, no commit; the rest in RESULTS.md.
    headline = block(m)
    assert "Test Card" in headline and "2026-01-02" in headline and "bench/RESULTS.md" in headline
    assert "abc1234" not in headline and "% copy BW" not in headline and "table rows" not in headline
    assert [(int(b), int(d)) for b, d, *_ in table_rows(headline, "**Test Card**")] == [
        (8, 16), (64, 32), (1024, 16), (1024, 128)]
    assert "Reference models' search stage (B = 1024): TWIN d = 128 26.10 ms; DARE d_att = 16 20.30 ms (1.29x)" \
        in headline
    text = block(r)
    for fact in ("Test Card", "Measured 2026-01-02 at commit `abc1234`.", "torch 9.9.9", "CUDA 13.0", "triton 3.6.0",
                 "1234.5 GB/s", "python -m dare_kernels.bench --json x.json"):
        assert fact in text, fact

    search = table_rows(text, "Search stage")
    assert [(int(b), int(d)) for b, d, *_ in search] == [(8, 16), (64, 32), (1024, 16), (1024, 128)]
    assert search[0][2:5] == ["0.0601", "42%", "0.0213"]  # bmm+topk ms, its % copy BW, cuda ms
    assert "cuda 8.00x" in text  # time at d = 128 / time at d = 16, B = 1024

    models = table_rows(text, "Reference models")
    assert [(s, md, int(d)) for s, md, d, *_ in models] == [("search", "dare", 16), ("search", "twin", 128),
                                                          ("train", "dare", 16)]
    ids = table_rows(text, "The op from behaviour ids")
    assert [int(l[1]) for l in ids] == [256, 1024] and ids[0][7:10] == ["0.111", "65%", "3.90x"]
    assert "table rows" in text and "% floor" in text and "x vs compiled" in text

    # Regenerating changes nothing; a file without markers is refused.
    before = results.read_text()
    report.main([str(src), "--results", str(results)])
    assert results.read_text() == before
    bad = tmp_path / "bad.md"
    bad.write_text("no markers\n")
    with pytest.raises(SystemExit):
        report.main([str(src), "--results", str(bad)])
    assert bad.read_text() == "no markers\n"


def test_unknown_row_fields_are_kept(tmp_path):
    """A new measurement in `rows` that the pivot does not know: every value still shows."""
    result = dict(RESULT, rows=[dict(r, graph_us=12.5 + i) for i, r in enumerate(RESULT["rows"])])
    src = tmp_path / "run.json"
    src.write_text(json.dumps(result))
    out = subprocess.run([sys.executable, "-m", "dare_kernels.bench.report", str(src)], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    assert "graph ms" in out and "0.0125" in out
    assert [int(l[0]) for l in table_rows(out, "Search stage")] == [8, 8, 64, 64, 1024, 1024, 1024, 1024]


def test_suite_rows_render(tmp_path):
    """The pytest suites' summary rows (`pytest bench/ --benchmark --summary-json`): one
    table per suite in the terminal and in the block, shapes in numeric order."""
    rows = [{"suite": "bench/test_search.py::test_search", "shape": f"B={B} L=100 d={d} k=8 float32", "backend": b,
             "baseline": b == "bmm+topk", "ms": ms, "B": B, "T": 0, "L": 100, "d": d, "k": 8, "dtype": "float32"}
            for B, d, b, ms in ((64, 16, "cpu", 1.0), (8, 128, "bmm+topk", 4.0), (64, 16, "bmm+topk", 3.0),
                                (8, 128, "cpu", 2.0))]
    lines = render.suite_summary(rows)
    assert lines[0] == "bench/test_search.py::test_search" and "bmm+topk" in lines[1]
    assert lines[3].startswith("| B=8 ") and "(2.00x)" in lines[3] and "(3.00x)" in lines[4]
    src = tmp_path / "suite.json"
    src.write_text(json.dumps({"env": {"device": "Test CPU"}, "commit": "abc1234", "suite_rows": rows}))
    out = subprocess.run([sys.executable, "-m", "dare_kernels.bench.report", str(src)], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    assert "`bench/test_search.py::test_search`:" in out
    assert [l[0] for l in table_rows(out, "`bench/test_search.py::test_search`")] == [
        "B=8 L=100 d=128 k=8 float32", "B=64 L=100 d=16 k=8 float32"]


def test_repository_blocks_agree():
    """bench/RESULTS.md and README.md carry the generated blocks the stored JSON renders
    to: every table, and the headline numbers."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    results = open(os.path.join(ROOT, "bench", "RESULTS.md")).read()
    assert re.search(r"^\| d \| bmm\+topk ms", block(results), re.M)
    assert re.search(r"^\| d \| bmm\+topk ms", block(readme), re.M)
    runs = []
    for name in RESULTS_JSON:
        with open(os.path.join(ROOT, name)) as f:
            runs.append((os.path.join(ROOT, name), json.load(f)))
    assert block(results) == "\n" + render.markdown(runs) + "\n"
    assert block(readme) == "\n" + render.readme_markdown(runs) + "\n"
