"""bench/report.py writes the main job's JSON as tables into RESULTS.md and the
README, the same block in both, rows in numeric order."""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SCRIPT = os.path.join(ROOT, "bench", "report.py")
BEGIN, END = "<!-- report:begin -->", "<!-- report:end -->"


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
    subprocess.run([sys.executable, SCRIPT, str(src), "--results", str(results), "--readme", str(readme)],
                   check=True, capture_output=True, text=True, timeout=60)
    r, m = results.read_text(), readme.read_text()
    assert "old numbers" not in r and "| stale |" not in m
    assert r.endswith(f"{END}\n\n## Method\nkept\n") and m.endswith(f"{END}\n\n## Next\nkept too\n")
    assert block(r) == block(m)
    text = block(r)
    for fact in ("Test Card", "abc1234", "2026-01-02", "torch 9.9.9", "CUDA 13.0", "triton 3.6.0", "1234.5 GB/s",
                 "python -m dare_kernels.bench --json x.json"):
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
    subprocess.run([sys.executable, SCRIPT, str(src), "--results", str(results)], check=True, capture_output=True)
    assert results.read_text() == before
    bad = tmp_path / "bad.md"
    bad.write_text("no markers\n")
    assert subprocess.run([sys.executable, SCRIPT, str(src), "--results", str(bad)], capture_output=True).returncode
    assert bad.read_text() == "no markers\n"


def test_unknown_row_fields_are_kept(tmp_path):
    """A new measurement in `rows` that the pivot does not know: every value still shows."""
    result = dict(RESULT, rows=[dict(r, graph_us=12.5 + i) for i, r in enumerate(RESULT["rows"])])
    src = tmp_path / "run.json"
    src.write_text(json.dumps(result))
    out = subprocess.run([sys.executable, SCRIPT, str(src)], check=True, capture_output=True, text=True).stdout
    assert "graph ms" in out and "0.0125" in out
    assert [int(l[0]) for l in table_rows(out, "Search stage")] == [8, 8, 64, 64, 1024, 1024, 1024, 1024]


def test_repository_blocks_agree():
    """README.md and bench/RESULTS.md carry the same generated block."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    results = open(os.path.join(ROOT, "bench", "RESULTS.md")).read()
    assert block(readme) == block(results)
    assert re.search(r"^\| d \| bmm\+topk ms", block(results), re.M)
