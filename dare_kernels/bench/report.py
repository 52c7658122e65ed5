"""Writes runs' JSON as the generated block of bench/RESULTS.md and README.md.

    python -m dare_kernels.bench --json bench/results/<device>.json --plot bench/results/<device>.png
    python -m dare_kernels.bench.report bench/results/h200.json bench/results/cpu.json \\
        --results bench/RESULTS.md --readme README.md

replaces what lies between `<!-- report:begin -->` and `<!-- report:end -->`: in
RESULTS.md with every table of the runs (dare_kernels.bench.render.markdown), in the
README with their headline numbers (render.readme_markdown: the search stage per device),
both from the same JSON, so neither can drift. Without --results/--readme the full
Markdown goes to stdout."""
from __future__ import annotations

import argparse
import sys

from . import render, results

BEGIN, END = "<!-- report:begin -->", "<!-- report:end -->"


def replace_block(text: str, block: str, name: str) -> str:
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{name}: needs exactly one {BEGIN} followed by one {END}")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + block + "\n" + text[end:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dare_kernels.bench.report", description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="+", help="JSON files written by `python -m dare_kernels.bench --json` "
                                           "(or `pytest bench/ --benchmark --summary-json`)")
    p.add_argument("--results", help="Markdown file to update (bench/RESULTS.md)")
    p.add_argument("--readme", help="Markdown file to update (README.md)")
    args = p.parse_args(argv)
    runs = [(path, results.load(path)) for path in args.json]
    blocks = {args.results: render.markdown(runs), args.readme: render.readme_markdown(runs)}
    targets = [t for t in (args.results, args.readme) if t]
    if not targets:
        print(render.markdown(runs))
    for target in targets:
        with open(target) as f:
            text = f.read()
        new = replace_block(text, blocks[target], target)
        if new != text:
            with open(target, "w") as f:
                f.write(new)
            print(f"updated {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
