"""Tables of the main job's JSON, written into bench/RESULTS.md and README.md.

    python -m dare_kernels.bench --json bench/results-<device>.json --plot bench/results-<device>.png
    python bench/report.py bench/results-<gpu>.json bench/results-cpu.json \\
        --results bench/RESULTS.md --readme README.md

replaces what lies between `<!-- report:begin -->` and `<!-- report:end -->` in each
file with the same generated markdown, so the two cannot drift. Without
--results/--readme the markdown goes to stdout.

Each JSON is one run: a heading with its device, commit, date, versions, copy
bandwidth and command, then one table per list-of-dict section. `rows` (the
search stage) is pivoted to one line per shape and a column group per backend;
any other section (`model_rows`, `ids_rows`, ...) is rendered generically,
its keys as columns in first-seen order. Rows are sorted numerically by B, T, L,
d, d_att and k; times are in ms. Needs nothing beyond the standard library.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import subprocess
import sys

BEGIN, END = "<!-- report:begin -->", "<!-- report:end -->"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = "bmm+topk"
SORT_KEYS = ("stage", "B", "T", "L", "d", "d_att", "k")
SECTION_TITLES = {
    "rows": "Search stage (score every behaviour, keep the top k)",
    "model_rows": "Reference models (search stage: topk_attention_embedding over their attention tables, as forward runs it; train step: forward + backward + Adam)",
    "ids_rows": "The op from behaviour ids (table lookup + score + top-k)",
}
HEADERS = {"GBps": "GB/s", "pct_copy_bw": "% copy BW", "x_vs_d128": "x vs d=128",
           "x_vs_bmm_topk": "x vs bmm+topk", "x_vs_twin128": "x vs TWIN d=128", "d_att": "d_att"}
ROW_METRICS = ("ms", "GBps", "pct_copy_bw", "x_vs_d128", "x_vs_bmm_topk")
SOURCES = ("csrc", "dare_kernels")


# ---------------------------------------------------------------- formatting

def fmt_ms(v) -> str:
    if v is None:
        return "-"
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    return f"{v:.0f}" if a >= 1000 else f"{v:.1f}" if a >= 100 else f"{v:.2f}" if a >= 10 else \
        f"{v:.3f}" if a >= 0.1 or a == 0 else f"{v:.4f}"


def fmt_x(v) -> str:
    return "-" if v is None else f"{float(v):.2f}x"


def fmt_pct(v) -> str:
    return "-" if v is None else f"{float(v):.0f}%"


def to_ms(key: str, value):
    """(header, value in ms) for a time key in us or s; None if `key` is no such time."""
    for suffix, scale in (("us", 1e-3), ("s", 1e3), ("seconds", 1e3)):
        if key == suffix or key.endswith("_" + suffix):
            head = key[: -len(suffix)].rstrip("_")
            return (head + " ms").strip(), (None if not isinstance(value, (int, float)) or isinstance(value, bool)
                                            else value * scale)
    return None


def header(key: str) -> str:
    if key in HEADERS:
        return HEADERS[key]
    h = re.sub(r"^pct_", "% ", key)
    h = re.sub(r"^x_vs_", "x vs ", h)
    return h.replace("_", " ")


def fmt_value(key: str, v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    if isinstance(v, str):
        return v
    if key == "ms" or key.endswith("_ms") or key.startswith("ms_"):
        return fmt_ms(v)
    if key.startswith("pct") or key.endswith("_pct"):
        return fmt_pct(v)
    if key.startswith("x_") or key.startswith("speedup") or key.endswith("_x"):
        return fmt_x(v)
    if key == "GBps" or key.endswith("_GBps"):
        return f"{float(v):.1f}"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.4g}"


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(cols: list, lines: list) -> str:
    out = ["| " + " | ".join(cell(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(cell(v) for v in line) + " |" for line in lines]
    return "\n".join(out)


# ------------------------------------------------------------------- sorting

def sort_rows(rows: list, keys=SORT_KEYS) -> list:
    """Stable sort by the numeric values of `keys` (strings by first-seen order),
    so ties keep the job's order (e.g. its backend order)."""
    seen = {}

    def part(v):
        if isinstance(v, bool) or v is None:
            return (0, -math.inf if v is None else int(v))
        if isinstance(v, (int, float)):
            return (0, v)
        s = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)
        return (1, seen.setdefault(s, len(seen)))

    for r in rows:  # first-seen order of every string, before sorting
        for k in keys:
            part(r.get(k))
    return sorted(rows, key=lambda r: tuple(part(r.get(k)) for k in keys))


# -------------------------------------------------------------------- tables

def generic_table(rows: list) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    heads, conv = [], {}
    for c in cols:
        t = to_ms(c, None)
        heads.append(t[0] if t else header(c))
        conv[c] = t is not None
    lines = []
    for r in sort_rows(rows):
        line = []
        for c in cols:
            v = r.get(c)
            if conv[c]:
                line.append(fmt_ms(to_ms(c, v)[1]) if v is not None else "-")
            else:
                line.append(fmt_value(c, v))
        lines.append(line)
    return table(heads, lines)


def shape_value(f, v) -> str:
    return str(v or 1) if f == "T" else fmt_value(f, v)  # T = 0: a (B, d) query, one target


def _is_measure(v) -> bool:
    return isinstance(v, float) and not v.is_integer()


def search_table(rows: list):
    """The `rows` section pivoted: one line per shape, per backend its ms, speed-up
    over bmm+topk and % of copy bandwidth. None when the rows do not fit that
    shape (the caller then renders them generically, losing nothing)."""
    if not rows or not all(isinstance(r.get("backend"), str) and "ms" in r and "d" in r for r in rows):
        return None
    fields = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ROW_METRICS and k != "backend"]
    if any(_is_measure(r.get(f)) for r in rows for f in fields):
        return None  # an unknown measurement: keep every value, generically
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    if BASELINE in backends:
        backends = [BASELINE] + [b for b in backends if b != BASELINE]
    shapes = {}
    for r in sort_rows(rows):
        key = tuple(json.dumps(r.get(f)) for f in fields)
        cell_ = shapes.setdefault(key, {"shape": r, "by": {}})
        if r["backend"] in cell_["by"]:
            return None  # two rows of one shape and backend
        cell_["by"][r["backend"]] = r
    varying = [f for f in fields if len({json.dumps(r.get(f)) for r in rows}) > 1 or f == "d"]
    fixed = [f for f in fields if f not in varying]

    has = lambda b, m: any(r.get(m) is not None for r in rows if r["backend"] == b)  # noqa: E731
    cols = [header(f) for f in varying]
    for b in backends:
        cols.append(f"{b} ms")
        if b != BASELINE and has(b, "x_vs_bmm_topk"):
            cols.append(f"{b} x")
        if has(b, "pct_copy_bw"):
            cols.append(f"{b} % copy BW")
    lines = []
    for s in shapes.values():
        line = [shape_value(f, s["shape"].get(f)) for f in varying]
        for b in backends:
            r = s["by"].get(b, {})
            line.append(fmt_ms(r.get("ms")))
            if b != BASELINE and has(b, "x_vs_bmm_topk"):
                line.append(fmt_x(r.get("x_vs_bmm_topk")))
            if has(b, "pct_copy_bw"):
                line.append(fmt_pct(r.get("pct_copy_bw")))
        lines.append(line)
    caption = ", ".join(shape_value(f, rows[0].get(f)) if f == "dtype" else f"{f} = {shape_value(f, rows[0].get(f))}"
                        for f in fixed if f != "T" or rows[0].get(f))
    return caption, table(cols, lines), d_ratios(rows, fields, backends)


def d_ratios(rows, fields, backends) -> list:
    """'time at d=128 / time at the smallest d' per backend, for each shape that has both."""
    others = [f for f in fields if f != "d"]
    groups = {}
    for r in sort_rows(rows):
        groups.setdefault(tuple(json.dumps(r.get(f)) for f in others), []).append(r)
    out = []
    for group in groups.values():
        ds = sorted({r["d"] for r in group if isinstance(r["d"], (int, float))})
        if 128 not in ds or ds[0] >= 128:
            continue
        parts = []
        for b in backends:
            t = {r["d"]: r["ms"] for r in group if r["backend"] == b}
            if t.get(128) and t.get(ds[0]):
                parts.append(f"{b} {t[128] / t[ds[0]]:.2f}x")
        if parts:
            where = ", ".join(f"{f} = {shape_value(f, group[0].get(f))}"
                              for f in others if len({json.dumps(r.get(f)) for r in rows}) > 1)
            out.append(f"time at d = 128 ÷ time at d = {ds[0]}{' (' + where + ')' if where else ''}: "
                       + ", ".join(parts))
    return out


# ---------------------------------------------------------------- provenance

def git(*args):
    try:
        return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(result: dict) -> str:
    """Which code the numbers are of: the JSON's commit, or HEAD now (marked -dirty when
    the sources differ from it), and how far HEAD's sources have moved since."""
    commit = result.get("commit")
    head = git("rev-parse", "--short", "HEAD")
    if not commit:
        if head is None:
            return "at an unknown commit (no git)"
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *SOURCES)
        return f"at commit `{head}{'-dirty' if dirty else ''}` (HEAD when this was generated)"
    text = f"at commit `{commit}`"
    full = git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    if head and full and full != git("rev-parse", "HEAD"):
        n = git("rev-list", "--count", f"{full}..HEAD", "--", *SOURCES)
        if n and n != "0":
            text += (f" (HEAD when this was generated: `{head}`; {n} later commit{'s' if n != '1' else ''}"
                     f" changed {' or '.join(s + '/' for s in SOURCES)}, not re-measured)")
    return text


def run_date(result: dict, path: str) -> str:
    if result.get("date"):
        return str(result["date"])
    return datetime.date.fromtimestamp(os.path.getmtime(path)).isoformat()


def shown_path(path: str) -> str:
    full = os.path.abspath(path)
    return os.path.relpath(full, ROOT) if full.startswith(ROOT + os.sep) else os.path.basename(path)


# -------------------------------------------------------------------- report

def render_run(result: dict, path: str) -> str:
    env = result.get("env") or {}
    out = [f"### {env.get('device', 'unknown device')}", ""]
    versions = [f"{name} {env[key]}" for key, name in (("torch", "torch"), ("cuda", "CUDA"), ("triton", "triton"),
                                                        ("python", "Python"), ("threads", "threads")) if env.get(key)]
    versions += [f"{k} {v}" for k, v in env.items() if k not in ("device", "torch", "cuda", "triton", "python",
                                                                 "threads") and v not in (None, "")]
    if isinstance(result.get("copy_GBps"), (int, float)):
        versions.append(f"copy bandwidth (read + write) {result['copy_GBps']:.1f} GB/s")
    out.append(f"Measured {run_date(result, path)} {provenance(result)}." + (" " + "; ".join(versions) + "."
                                                                          if versions else ""))
    if result.get("command"):
        png = os.path.splitext(path)[0] + ".png"
        plot = f", plot: `{shown_path(png)}`" if os.path.exists(png) else ""
        out += ["", f"Command: `{result['command']}` (raw: `{shown_path(path)}`{plot})."]
    if result.get("note"):
        out += ["", str(result["note"])]
    for name, section in result.items():
        if not (isinstance(section, list) and section and all(isinstance(r, dict) for r in section)):
            continue
        title = SECTION_TITLES.get(name, f"`{name}`")
        if name == "model_rows" and any("stage" in r for r in section):
            title = "Reference models (search stage: topk_attention_embedding over their attention tables, as forward runs it; train step: forward + backward + Adam)"
        pivot = search_table(section) if name == "rows" else None
        if pivot:
            caption, text, ratios = pivot
            out += ["", f"{title}{', ' + caption if caption else ''}:", "", text]
            if ratios:
                out += ["", "; ".join(ratios) + "."]
        else:
            out += ["", f"{title}:", "", generic_table(section)]
    return "\n".join(out)


def render(paths: list) -> str:
    runs = []
    for p in paths:
        with open(p) as f:
            runs.append(render_run(json.load(f), p))
    source = ", ".join(f"`{shown_path(p)}`" for p in paths)
    head = (f"<!-- generated by bench/report.py from {source}; edit the JSON or the script, not this block -->\n"
            "Times in ms: medians of the main job, `python -m dare_kernels.bench`. \"x\": bmm+topk's time "
            "(einsum+topk for T > 1) divided by the backend's. \"% copy BW\": the keys' bytes read once per "
            "second, as a share of the measured copy bandwidth; the copy reads and writes, so a read-only "
            "stream can pass 100%.")
    return head + "\n\n" + "\n\n".join(runs)


def replace_block(text: str, block: str, name: str) -> str:
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{name}: needs exactly one {BEGIN} followed by one {END}")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + block + "\n" + text[end:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="+", help="JSON files written by `python -m dare_kernels.bench --json`")
    p.add_argument("--results", help="markdown file to update (bench/RESULTS.md)")
    p.add_argument("--readme", help="markdown file to update (README.md)")
    args = p.parse_args(argv)
    block = render(args.json)
    targets = [t for t in (args.results, args.readme) if t]
    if not targets:
        print(block)
    for target in targets:
        with open(target) as f:
            text = f.read()
        new = replace_block(text, block, target)
        if new != text:
            with open(target, "w") as f:
                f.write(new)
            print(f"updated {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
