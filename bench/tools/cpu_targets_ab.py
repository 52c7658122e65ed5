"""The CPU op's many-targets shapes, A against B in one sitting: the development VM's
timings drift by up to 2x between minutes (other tenants), so two builds or two ISA
settings are only compared alternated, process after process, keeping each one's
best (lowest) time. A and B are environments: another build by PYTHONPATH, or
DARE_CPU_ISA=avx2 / baseline against the default.

    python3 bench/tools/cpu_targets_ab.py --A PYTHONPATH=/tmp/old --B "" [--reps 3] [--k 1 128] [--all]

Per shape: wall ms (the lower quartile of 25 calls in a process) and process CPU ms per
call (all threads), best of --reps processes per side, and A / B.
"""
import argparse
import json
import os
import subprocess
import sys

SHAPES = [(1, 1024, 16, "float32"), (1, 1024, 32, "bfloat16")]
MORE = [(1, 1024, 128, "bfloat16"), (1, 64, 16, "float32"), (256, 1, 16, "float32"),
        (256, 1, 128, "bfloat16"), (64, 8, 32, "bfloat16")]


def child(a):
    import time

    import torch

    import dare_kernels  # noqa: F401  (registers torch.ops.dare)

    def timed(f, n=25):
        f()
        walls = []
        c0 = time.process_time()
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            walls.append(time.perf_counter() - t0)
        cpu = (time.process_time() - c0) / n
        walls.sort()
        return walls[len(walls) // 4] * 1e3, cpu * 1e3

    torch.manual_seed(0)
    out = {}
    for B, T, d, dtype in SHAPES + (MORE if a.all else []):
        q = torch.randn(B, T, d).to(getattr(torch, dtype))
        K = torch.randn(B, a.L, d).to(getattr(torch, dtype))
        for k in a.k:
            out[f"B={B} T={T} d={d} {dtype} k={k}"] = timed(
                lambda: torch.ops.dare.topk_attention(q, K, k, None, 1.0, None, None))
    print(json.dumps(out))


def env_of(spec):
    env = dict(os.environ)
    for item in spec.split():
        name, _, value = item.partition("=")
        env[name] = value
    return env


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--A", default="", help="NAME=VALUE ... for side A")
    p.add_argument("--B", default="", help="NAME=VALUE ... for side B")
    p.add_argument("--reps", type=int, default=3, help="processes per side, alternated")
    p.add_argument("--k", type=int, nargs="+", default=[1, 128])
    p.add_argument("--L", type=int, default=10000)
    p.add_argument("--all", action="store_true", help="also d = 128, T = 64 and single-target rows")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a)
    args = [sys.executable, __file__, "--child", "--k", *map(str, a.k), "--L", str(a.L)] + (["--all"] if a.all else [])
    runs = {"A": [], "B": []}
    for _ in range(a.reps):
        for side in ("A", "B"):
            r = subprocess.run(args, env=env_of(getattr(a, side)), capture_output=True, text=True, check=True)
            runs[side].append(json.loads(r.stdout.strip().splitlines()[-1]))
    for key in runs["A"][0]:
        best = {s: [min(x[key][i] for x in runs[s]) for i in (0, 1)] for s in runs}
        print(f"{key:34s} wall A {best['A'][0]:7.2f} B {best['B'][0]:7.2f} A/B {best['A'][0] / best['B'][0]:.2f}"
              f" | cpu A {best['A'][1]:7.2f} B {best['B'][1]:7.2f} A/B {best['A'][1] / best['B'][1]:.2f}")


if __name__ == "__main__":
    main()
