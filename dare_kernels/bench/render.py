"""The one renderer of the benchmarks' JSON (dare_kernels.bench.results): the main
job's terminal tables (format_table), the pytest suites' end-of-run summary
(suite_summary), the Markdown block of README.md and bench/RESULTS.md (markdown,
written by `python -m dare_kernels.bench.report`) and the plot (plot). Pure
functions of the JSON: nothing here measures or asks git.

Sections: `rows` (the search stage) is a table per row in the terminal and, in
Markdown, pivoted to one line per shape with a column group per backend;
`suite_rows` is a table per suite, a line per shape and a column per backend;
any other list of row objects (`ids_rows`, `model_rows`, a new one) is rendered
generically, its keys as columns in first-seen order. Rows are sorted
numerically by stage, B, T, L, d, d_att and k; times are in ms."""
from __future__ import annotations

import json
import math
import os
import re
from typing import Optional

from .search import BASELINE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SORT_KEYS = ("stage", "B", "T", "L", "d", "d_att", "k")
LEGEND = {BASELINE: "bmm + torch.topk (today)", "cuda": "fused CUDA kernel", "triton": "fused Triton kernel",
          "cpu": "fused CPU kernel", "reference": "reference (PyTorch)"}
SECTION_TITLES = {
    "rows": "Search stage (score every behaviour, keep the top k)",
    "ids_rows": "The op from behaviour ids (table lookup + score + top-k)",
    "model_rows": "Reference models (search: the search stage, one topk_attention_embedding call over the attention "
                  "tables as the forward runs it; "
                  "inference: the forward; (graph): captured once in a CUDA graph and replayed; train step: forward "
                  "+ backward + optimiser, rows = sparse row gradients + lazy Adam, dense = Adam on every row; "
                  "phase: one part of the rows step timed alone)",
    "serving_rows": "Serving (one request: one user's L-long history from ids against T candidates, the reference "
                    "model's inference forward for all T; each request timed alone: p50 and p99 latency; graph: "
                    "each request one CUDA-graph replay)",
    "suite_rows": "pytest suites (`pytest bench/ --benchmark`): median ms per shape and backend; (Nx) = the row's "
                  "baseline ms / this backend's, above 1 is faster",
}
NOTES = {
    "rows": ("ms: median time of one search call (B queries, each scoring L keys of width d, keeping the top k).\n"
             "GB/s, % copy BW: the keys' bytes (B*L*d*itemsize) read once / ms, and that as a share of the copy "
             "bandwidth above (the copy reads and writes, so a read-only stream can pass 100%).\n"
             "x vs d=128: the same backend at d=128 / this row (what narrowing d alone buys; higher = faster).\n"
             "x vs bmm+topk: bmm+topk at the same d / this row (the kernel alone, same d).\n"
             "x vs bmm+topk d=128: bmm+topk at d=128 (what users run today) / this row: the gain of moving to this "
             "backend at this d."),
    "ids_rows": ("Search from ids: the keys are gathered from an embedding table by id inside the search; % floor = "
                 "the int64 ids plus one 32-byte sector per looked-up row at copy bandwidth, as a share of the time; "
                 "x vs ... = that implementation's ms / this row's ms, x of gather = gather+dot without top-k / "
                 "this row."),
    "model_rows": ("Models: ms per batch of the stage; x vs TWIN d=128 = TWIN's ms at the same stage / this row's "
                   "(higher = faster)."),
    "serving_rows": ("Serving: p50 / p99 ms of one request over reps requests; x vs TWIN d=128 = TWIN's p50 at the "
                     "same T / this row's."),
}
HEADERS = {"GBps": "GB/s", "pct_copy_bw": "% copy BW", "x_vs_d128": "x vs d=128", "x_vs_bmm_topk": "x vs bmm+topk",
           "x_vs_twin128": "x vs TWIN d=128", "d_att": "d_att"}
ROW_METRICS = ("ms", "GBps", "pct_copy_bw", "x_vs_d128", "x_vs_bmm_topk")
SUITE_FIELDS = ("B", "T", "d", "k", "L")  # sort order of a suite's shapes


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


def table(cols: list, lines: list, align: bool = False) -> str:
    """A pipe table: Markdown, or with align=True padded to column width for a terminal."""
    cols = [cell(c) for c in cols]
    lines = [[cell(v) for v in line] for line in lines]
    if not align:
        out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])
    widths = [max(len(c), *(len(l[i]) for l in lines)) for i, c in enumerate(cols)]
    row = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([row(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [row(l) for l in lines])


def indent(note: str) -> str:
    return "\n".join("  " + line for line in note.splitlines())


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


def _natural(text):
    """'B=64 d=16' -> comparable tokens with the numbers as numbers."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t)


def shape_key(label: str, info: Optional[dict] = None):
    """Sort key of a suite's shape: the row's numeric B, T, d, k, L where given, else the
    `name=number` fields of its label; then the label with numbers compared as numbers."""
    info = info or {}
    parsed = {name: int(v) for name, v in re.findall(r"\b([A-Za-z]+)=(\d+)\b", label)}
    fields = []
    for name in SUITE_FIELDS:
        v = info.get(name, parsed.get(name, -1))
        fields.append(v if isinstance(v, (int, float)) and not isinstance(v, bool) else -1)
    return (tuple(fields), _natural(label))


# ---------------------------------------------------------- derived numbers

def x_vs_bmm128(rows: list) -> list:
    """Per row: bmm+topk's ms at d=128 (same B, L, k, T, dtype) / this row's ms: what a user running
    bmm+topk at d=128 today gains by moving to this row's backend at this row's d (None without it)."""
    def key(r):
        return tuple(r.get(f) for f in ("B", "L", "k", "T", "dtype"))
    base = {key(r): r["ms"] for r in rows if r["backend"] == BASELINE and r["d"] == 128}
    return [base[key(r)] / r["ms"] if key(r) in base and r["ms"] else None for r in rows]


def headline(result: dict) -> Optional[str]:
    """One sentence: the fastest fused backend at the narrowest d against bmm+topk at d=128."""
    rows = result.get("rows") or []
    best = [(r, x) for r, x in zip(rows, x_vs_bmm128(rows)) if r["backend"] not in (BASELINE, "reference")
            and x is not None]
    if not best:
        return None
    d = min(r["d"] for r, _ in best)
    r, x = max(((r, x) for r, x in best if r["d"] == d), key=lambda p: p[1])
    return (f"=> moving from bmm+topk at d=128 to the {LEGEND.get(r['backend'], r['backend'])} at d={d}: "
            f"{x:.2f}x faster ({r['ms']:.3f} ms vs {x * r['ms']:.3f} ms, B={r['B']}, L={r['L']})")


SIXTEEN_BIT = ("float16", "bfloat16")
FP8 = "float8_e4m3fn"


def _is_fp8(r: dict) -> bool:
    return r.get("keys_dtype") == FP8 or "fp8" in str(r.get("backend", ""))


def row_notes(rows: list) -> list:
    """Notes that only some rows need, each printed under the table holding such rows:
    search rows above 100% of the copy bandwidth, the CPU kernel on 16-bit keys, and
    the CPU backend on fp8 keys."""
    notes = []
    over = [r for r in rows if isinstance(r.get("pct_copy_bw"), (int, float)) and r["pct_copy_bw"] > 100]
    if over:
        which = ", ".join(f"{r['backend']} at B={r.get('B')} d={r.get('d')}: {fmt_pct(r['pct_copy_bw'])}"
                          for r in sort_rows(over))
        notes.append(f"Above 100% of the copy bandwidth ({which}): 100% is a copy, which reads and writes every "
                     "byte (on a CPU each written line may also be read first), while the search only reads the "
                     "keys, and a read-only stream runs closer to the memory's peak; what stays in the caches "
                     "between calls is read faster still (the timed inputs cycle through copies filling twice "
                     "the cache: the GPU's L2, 64 MiB on a CPU).")
    cpu = lambda r: str(r.get("backend", "")).split(" ")[0] == "cpu"  # noqa: E731
    if any(cpu(r) and r.get("dtype") in SIXTEEN_BIT and not _is_fp8(r) for r in rows):
        notes.append("cpu on float16/bfloat16 keys: the kernel converts each key to float32 in AVX2 registers "
                     "(F16C for float16, a 16-bit shift for bfloat16) and accumulates in float32; on a CPU "
                     "without AVX2/FMA/F16C (or with DARE_CPU_ISA=baseline) it converts one element at a time "
                     "in scalar code, several times slower. AVX-512 takes over only for many targets (8 or more "
                     "a work item, d <= 32: the keys converted once per chunk); it has no AVX-512 BF16 or AMX "
                     "path, which torch's bmm may use for 16-bit inputs on CPUs that have them.")
    if any(cpu(r) and _is_fp8(r) for r in rows):
        notes.append("cpu on fp8 keys: the CPU backend upcasts float8_e4m3fn keys to bfloat16 before searching "
                     "(a copy of the keys, 2 bytes a dim, on every call: fp8 keys are a GPU format), so its fp8 "
                     "rows are slower than its rows with keys of the query's dtype.")
    return notes


# -------------------------------------------------------------------- tables

def generic_table(rows: list, align: bool = False) -> str:
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
    return table(heads, lines, align)


def shape_value(f, v) -> str:
    return str(v or 1) if f == "T" else fmt_value(f, v)  # T = 0: a (B, d) query, one target


def _is_measure(v) -> bool:
    return isinstance(v, float) and not v.is_integer()


def search_table(rows: list, pct: bool = True):
    """The `rows` section pivoted: one line per shape, per backend its ms, speed-up
    over bmm+topk and (pct) % of copy bandwidth. None when the rows do not fit that
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

    has = lambda b, m: (pct or m != "pct_copy_bw") and any(  # noqa: E731
        r.get(m) is not None for r in rows if r["backend"] == b)
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


def _decimals(values):
    """Decimals that give the smallest value three significant digits (at least 2)."""
    smallest = min((v for v in values if v > 0), default=1.0)
    return max(2, min(6, 2 - math.floor(math.log10(smallest))))


def suite_tables(rows: list, align: bool = True) -> list:
    """[(suite, table)]: per suite (test function), a line per shape (numeric order), a column
    per backend (median ms), and each other backend's speed-up over the line's baseline."""
    suites = {}
    for r in rows:
        suites.setdefault(r["suite"], []).append(r)
    out = []
    for suite, rs in suites.items():
        backends = list(dict.fromkeys(r["backend"] for r in rs))
        baselines = [b for b in backends if any(r.get("baseline") for r in rs if r["backend"] == b)]
        backends = baselines + [b for b in backends if b not in baselines]
        shapes = {}
        for r in rs:
            shapes.setdefault(r["shape"], {"row": r, "ms": {}})["ms"][r["backend"]] = r["ms"]
        dec = _decimals([r["ms"] for r in rs])
        lines = []
        for shape in sorted(shapes, key=lambda s: shape_key(s, shapes[s]["row"])):
            ms = shapes[shape]["ms"]
            base = next((ms[b] for b in baselines if b in ms), None)
            line = [shape]
            for b in backends:
                if b not in ms:
                    line.append("-")
                elif b in baselines or base is None:
                    line.append(f"{ms[b]:.{dec}f}")
                else:
                    line.append(f"{ms[b]:.{dec}f} ({base / ms[b]:.2f}x)")
            lines.append(line)
        out.append((suite, table(["shape"] + backends, lines, align)))
    return out


# ------------------------------------------------------------------ terminal

def format_table(result: dict) -> str:
    """The main job's printout: the search stage a row per (shape, backend) with every
    ratio, the headline, then the other sections; each table with its notes."""
    env = result["env"]
    head = (f"device: {env['device']} | torch {env['torch']}"
            + (f" | CUDA {env['cuda']}" if env.get("cuda") else "")
            + (f" | triton {env['triton']}" if env.get("triton") else "")
            + (f" | threads {env['threads']}" if env.get("threads") else "")
            + (f" | commit {result['commit']}" if result.get("commit") else "")
            + f"\ncopy bandwidth (read + write): {result['copy_GBps']:.1f} GB/s\n")
    cols = ["backend", "B", "T", "L", "d", "k", "dtype", "ms", "GB/s", "% copy BW", "x vs d=128", "x vs bmm+topk",
            "x vs bmm+topk d=128"]
    rows = result.get("rows") or []
    lines = [[r["backend"], str(r["B"]), str(r["T"] or 1), str(r["L"]), str(r["d"]), str(r["k"]), r["dtype"],
              fmt_ms(r["ms"]), f"{r['GBps']:.1f}", fmt_pct(r["pct_copy_bw"]), fmt_x(r.get("x_vs_d128")),
              fmt_x(r.get("x_vs_bmm_topk")), fmt_x(x)] for r, x in zip(rows, x_vs_bmm128(rows))]
    text = head + table(cols, lines, align=True) + "\n" + indent(NOTES["rows"])
    for note in row_notes(rows):
        text += "\n" + indent(note)
    line = headline(result)
    if line:
        text += "\n" + line
    for name in ("ids_rows", "model_rows", "serving_rows"):
        if result.get(name):
            text += (f"\n\n{SECTION_TITLES[name]}:\n" + generic_table(result[name], align=True)
                     + "\n" + indent(NOTES[name]))
    return text


def suite_summary(rows: list) -> list:
    """Lines of the pytest suites' end-of-run summary: a table per suite, each with the
    notes its rows need (row_notes)."""
    lines = []
    for suite, text in suite_tables(rows, align=True):
        notes = row_notes([r for r in rows if r["suite"] == suite])
        lines += [suite, *text.splitlines(), *(indent(n) for n in notes), ""]
    return lines


# ------------------------------------------------------------------ Markdown

def shown_path(path: str) -> str:
    full = os.path.abspath(path)
    return os.path.relpath(full, ROOT) if full.startswith(ROOT + os.sep) else os.path.basename(path)


def markdown_run(result: dict, path: str) -> str:
    """One run: a heading with its device, the date and commit measured, versions, copy
    bandwidth and command, then a table per section."""
    env = result.get("env") or {}
    out = [f"### {env.get('device', 'unknown device')}", ""]
    versions = [f"{name} {env[key]}" for key, name in (("torch", "torch"), ("cuda", "CUDA"), ("triton", "triton"),
                                                        ("python", "Python"), ("threads", "threads")) if env.get(key)]
    versions += [f"{k} {v}" for k, v in env.items() if k not in ("device", "torch", "cuda", "triton", "python",
                                                                 "threads") and v not in (None, "")]
    if isinstance(result.get("copy_GBps"), (int, float)):
        versions.append(f"copy bandwidth (read + write) {result['copy_GBps']:.1f} GB/s")
    when = f" {result['date']}" if result.get("date") else ""
    commit = f"commit `{result['commit']}`" if result.get("commit") else "an unknown commit"
    out.append(f"Measured{when} at {commit}." + (" " + "; ".join(versions) + "." if versions else ""))
    if result.get("command"):
        png = os.path.splitext(path)[0] + ".png"
        plot_ = f", plot: `{shown_path(png)}`" if os.path.exists(png) else ""
        out += ["", f"Command: `{result['command']}` (raw: `{shown_path(path)}`{plot_})."]
    if result.get("note"):
        out += ["", str(result["note"])]
    for name, section in result.items():
        if not (isinstance(section, list) and section and all(isinstance(r, dict) for r in section)):
            continue
        title = SECTION_TITLES.get(name, f"`{name}`")
        if name == "suite_rows" and all("suite" in r and "shape" in r for r in section):
            out += ["", f"{title}:"]
            for suite, text in suite_tables(section, align=False):
                out += ["", f"`{suite}`:", "", text]
                notes = row_notes([r for r in section if r["suite"] == suite])
                if notes:
                    out += ["", " ".join(notes)]
            continue
        pivot = search_table(section) if name == "rows" else None
        if pivot:
            caption, text, ratios = pivot
            out += ["", f"{title}{', ' + caption if caption else ''}:", "", text]
            if ratios:
                out += ["", "; ".join(ratios) + "."]
            notes = row_notes(section)
            if notes:
                out += ["", " ".join(notes)]
        else:
            out += ["", f"{title}:", "", generic_table(section)]
    return "\n".join(out)


def markdown(runs: list) -> str:
    """The generated block of README.md and bench/RESULTS.md from [(path, result), ...]."""
    source = ", ".join(f"`{shown_path(p)}`" for p, _ in runs)
    head = (f"<!-- generated by `python -m dare_kernels.bench.report` from {source}; edit the JSON or "
            "dare_kernels/bench/render.py, not this block -->\n")
    if any("rows" in r for _, r in runs) or not any(r.get("suite_rows") for _, r in runs):
        head += ("Times in ms: medians of the main job, `python -m dare_kernels.bench`. \"x\": bmm+topk's time "
                 "(einsum+topk for T > 1) divided by the backend's. \"% copy BW\": the keys' bytes read once per "
                 "second, as a share of the measured copy bandwidth; the copy reads and writes, so a read-only "
                 "stream can pass 100%.")
    else:
        head += ("Times in ms: pytest-benchmark medians of the suites in bench/ (on a GPU each call is timed to "
                 "its synchronisation, so one launch + synchronise more than the main job's).")
    notes = [NOTES[name] for name in ("ids_rows", "model_rows", "serving_rows") if any(r.get(name) for _, r in runs)]
    if notes:
        head += "\n\n" + " ".join(notes)
    return head + "\n\n" + "\n\n".join(markdown_run(r, p) for p, r in runs)


def readme_markdown(runs: list) -> str:
    """The README's generated block from [(path, result), ...]: per device the search
    stage (ms and speed-up over bmm+topk per d), the headline and the reference models'
    search stage; every other table, and the commit and command of each run, are in
    bench/RESULTS.md (markdown)."""
    source = ", ".join(f"`{shown_path(p)}`" for p, _ in runs)
    out = [f"<!-- generated by `python -m dare_kernels.bench.report` from {source}; edit the JSON or "
           "dare_kernels/bench/render.py, not this block -->",
           "Median ms of one search call (score each row's L keys of width d, keep the top k) in the main job, "
           "`python -m dare_kernels.bench`, on each device; x = bmm+topk's ms / the backend's, where bmm+topk is "
           "`torch.topk(torch.bmm(keys, query[..., None])[..., 0], k)`, what models run today. Every table "
           "(% of copy bandwidth, the search from ids, the reference models' stages), each run's command and "
           "commit: [bench/RESULTS.md](bench/RESULTS.md)."]
    for _, result in runs:
        rows = result.get("rows") or []
        if not rows:
            continue
        device = (result.get("env") or {}).get("device", "unknown device")
        when = f" (measured {result['date']})" if result.get("date") else ""
        pivot = search_table(rows, pct=False)
        if pivot:
            caption, text, _ = pivot
            out += ["", f"**{device}**, {caption}{when}:", "", text]
        else:
            out += ["", f"**{device}**{when}:", "", generic_table(rows)]
        line = headline(result)
        if line:
            line = line[3:]
            out += ["", line[0].upper() + line[1:] + "."]
        search = sort_rows([r for r in result.get("model_rows") or [] if r.get("stage") == "search"])
        twin = next((r for r in search if r.get("model") == "twin" and r.get("d_att") == 128), None)
        dare = [r for r in search if r.get("model") == "dare"]
        if twin and dare:
            parts = ", ".join(f"d_att = {r['d_att']} {fmt_ms(r['ms'])} ms ({fmt_x(twin['ms'] / r['ms'])})"
                              for r in sorted(dare, key=lambda r: -r["d_att"]))
            out += ["", f"Reference models' search stage (B = {twin.get('B')}): TWIN d = 128 {fmt_ms(twin['ms'])} ms; "
                       f"DARE {parts}."]
    return "\n".join(out)


# ---------------------------------------------------------------------- plot

def _bar_labels(ax, bars, values):
    for b, v in zip(bars, values):
        ax.annotate(f"{v:.0f}" if v >= 100 else f"{v:.3g}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                    fontsize=7, xytext=(0, 1), textcoords="offset points")


def plot(result: dict, path: str):
    """Left: op time vs d per backend, with the read-keys-once floor. Right: the reference
    models' search stage and train step (if present) and the search-from-ids rows at 1M
    table rows (if present)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullLocator
    rows = result["rows"]
    models = result.get("model_rows") or []
    ids = [r for r in (result.get("ids_rows") or []) if r.get("rows") == 1_000_000 and r["d"] in (16, 128)]
    right = bool(models) + bool(ids)
    fig = plt.figure(figsize=(7 + 6.5 * bool(right), 5.2 if right < 2 else 8))
    grid = fig.add_gridspec(max(1, right), 3 if right else 1, width_ratios=[1.25, 0.6, 0.6] if right else [1])
    ax = fig.add_subplot(grid[:, 0])
    Bs = sorted({r["B"] for r in rows})
    for backend in dict.fromkeys(r["backend"] for r in rows):
        for B in Bs:
            pts = sorted((r["d"], r["ms"]) for r in rows if r["backend"] == backend and r["B"] == B)
            name = LEGEND.get(backend, backend) + (f" (B={B})" if len(Bs) > 1 else "")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    ls=":" if backend == BASELINE else "-", label=name)
    for B in Bs:
        pts = sorted({(r["d"], r["ms"] * r["pct_copy_bw"] / 100) for r in rows if r["B"] == B})
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "k--", lw=1,
                label="read keys once at copy bandwidth" + (f" (B={B})" if len(Bs) > 1 else ""))
    ax.set_xscale("log", base=2)
    ax.set_xticks([16, 32, 64, 128])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlim(13, 155)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(alpha=0.3)
    ax.set_xlabel("attention width d")
    ax.set_ylabel("ms per search call (median)")
    r0 = rows[0] if rows else {}
    T = f", T={r0['T']}" if r0.get("T") else ""
    shape = f"B={'/'.join(map(str, Bs))}{T}, L={r0.get('L')}, k={r0.get('k')}, {r0.get('dtype')}"
    device = result["env"]["device"]
    line = headline(result)
    line = "\n" + line[3:].split(" (")[0] if line else ""
    ax.set_title(f"search stage (score L keys, keep top k), {device[:50]}\n{shape}{line}", fontsize=9)
    ax.legend(fontsize=8)
    row = 0
    if models:
        configs = list(dict.fromkeys((r["model"], r["d_att"]) for r in models))
        labels = [f"{m.upper()}\nd={d}" for m, d in configs]
        colors = ["tab:gray" if m == "twin" else "tab:green" for m, _ in configs]
        # The search stage, and the training step with each optimiser (dense hatched).
        steps = [s for s in dict.fromkeys(r["stage"] for r in models) if s.startswith("train step")]
        for j, stages in enumerate((["search"], steps)):
            sub = fig.add_subplot(grid[row, 1 + j])
            width = 0.8 / max(1, len(stages))
            for i, stage in enumerate(stages):
                ms = [next((r["ms"] for r in models if r["stage"] == stage and (r["model"], r["d_att"]) == c), 0)
                      for c in configs]
                x = [c + (i - (len(stages) - 1) / 2) * width for c in range(len(configs))]
                bars = sub.bar(x, ms, width, color=colors, hatch="//" if "dense" in stage else None,
                               edgecolor="white", label=stage.replace("train step ", ""))
                _bar_labels(sub, bars, ms)
            if len(stages) > 1:
                sub.legend(fontsize=7)
            stage = "search" if j == 0 else "train step"
            sub.set_xticks(range(len(configs)))
            sub.set_xticklabels(labels, fontsize=8)
            sub.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            sub.set_ylabel("ms per batch")
            sub.set_title(f"reference model: {'search stage' if stage == 'search' else stage}\n"
                          f"B={models[0]['B']}, L={models[0]['L']}, k={models[0]['k']}", fontsize=9)
            sub.margins(y=0.15)
        row += 1
    if ids:
        sub = fig.add_subplot(grid[row, 1:])
        impls = list(dict.fromkeys(r["impl"] for r in ids))
        ds = sorted({r["d"] for r in ids})
        width = 0.8 / len(impls)
        for i, impl in enumerate(impls):
            ms = [next((r["ms"] for r in ids if r["impl"] == impl and r["d"] == d), 0) for d in ds]
            bars = sub.bar([x + (i - (len(impls) - 1) / 2) * width for x in range(len(ds))], ms, width,
                           label=LEGEND.get(impl, impl).replace("bmm + torch.topk (today)", "bmm+topk"))
            _bar_labels(sub, bars, ms)
        sub.set_xticks(range(len(ds)))
        sub.set_xticklabels([f"d={d}" for d in ds])
        sub.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        sub.set_ylabel("ms per search call")
        sub.set_title(f"search from ids (keys gathered from a 1M-row table), B={ids[0]['B']}, L={ids[0]['L']}, "
                      f"k={ids[0]['k']}", fontsize=9)
        sub.legend(fontsize=7, ncol=3, loc="upper center")
        sub.set_ylim(0, sub.get_ylim()[1] * 1.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


