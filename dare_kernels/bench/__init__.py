"""The benchmarks' library: one way to measure, one JSON, one renderer.

    python -m dare_kernels.bench [--json bench/results/<device>.json --plot ...]   # the main job (dare-bench)
    pytest bench/ --benchmark                                                    # the pytest suites
    python -m dare_kernels.bench.report bench/results/*.json --results bench/RESULTS.md --readme README.md

- timing.py: inputs that miss the cache, the timers (time_call, time_graph, capture, cuda_clock),
  copy bandwidth, the machine's description. The main job and the suites time with it.
- search.py: the search stage's rows (each backend against bmm+topk).
- ids.py: search from ids (topk_attention_embedding against F.embedding + bmm + topk).
- models.py: the reference models' rows (search, inference, training step, phases).
- results.py: the JSON of a run (with its commit and date), written by the job and the suites.
- render.py: the one renderer: terminal tables, the Markdown block, the plot.
- cli.py (`python -m dare_kernels.bench`) and report.py: the two command lines.

bench/ holds the pytest suites (test_*.py), the developer tools (bench/tools/:
profile, sweep, sanitize, study) and the results (bench/results/, bench/RESULTS.md)."""


def main(argv=None):
    """The main job (the `dare-bench` entry point)."""
    from .cli import main as run
    return run(argv)
