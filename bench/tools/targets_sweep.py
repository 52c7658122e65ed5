"""Where the CUDA many-targets kernel's time goes: one history of L keys against T
queries (the serving shape), the op's GPU time over k (k = 1: scoring and the
stream's filter alone; larger k: the folds and the final sort on top) and over
targets per CTA G (DARE_CUDA_TARGETS, read once per process: one subprocess
per G; 0 = the streaming kernel), over its warps a CTA (8 or 16:
DARE_CUDA_TARGETS_WARPS) and over how the warps append to the lists (one shared
list a target or a segment a warp: DARE_CUDA_TARGETS_APPEND), beside einsum
(+ topk).

    python3 bench/tools/targets_sweep.py [--d 16 32 128] [--G default 0 4 8] [--k 1 32 128] [--warps 8 16] [--append shared segments] [--dtype float32]
"""
import argparse
import os
import subprocess
import sys


def child(a):
    import torch

    import dare_kernels
    from dare_kernels.bench.timing import time_call

    dev = torch.device("cuda")

    def gpu_us(f):  # the main job's timer: median over batches of back-to-back calls, CUDA events
        return 1e6 * time_call(f, [()], dev)

    for d in a.d:
        dtype = getattr(torch, a.dtype)
        q = torch.randn(a.B, a.T, d, device="cuda").to(dtype)
        K = torch.randn(a.B, a.L, d, device="cuda").to(dtype)
        cells = [f"{gpu_us(lambda: dare_kernels.topk_attention(q, K, k, backend='cuda')):.1f}" for k in a.k]
        einsum = gpu_us(lambda: torch.einsum("btd,bld->btl", q, K).float())
        topk = gpu_us(lambda: torch.topk(torch.einsum("btd,bld->btl", q, K).float(), max(a.k), dim=-1))
        print(f"| {a.G} | {a.warps[0]} | {a.append[0]} | {d} | " + " | ".join(cells) + f" | {einsum:.1f} | {topk:.1f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--T", type=int, default=1024)
    p.add_argument("--L", type=int, default=10000)
    p.add_argument("--d", type=int, nargs="+", default=[16, 32, 128])
    p.add_argument("--k", type=int, nargs="+", default=[1, 32, 128])
    p.add_argument("--G", nargs="+", default=["default", "0", "4", "8"],
                   help="DARE_CUDA_TARGETS values ('default': unset, the host's choice)")
    p.add_argument("--warps", nargs="+", default=["8"], choices=["8", "16"],
                   help="the many-targets kernel's warps a CTA (DARE_CUDA_TARGETS_WARPS)")
    p.add_argument("--append", nargs="+", default=["shared"], choices=["shared", "segments"],
                   help="how the many-targets kernel's warps append to the lists (DARE_CUDA_TARGETS_APPEND)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        a.G = a.G[0]
        return child(a)
    print(f"GPU us, B = {a.B}, T = {a.T}, L = {a.L}, {a.dtype} keys; einsum+topk takes the top {max(a.k)}")
    print("| G | warps | append | d | " + " | ".join(f"k = {k}" for k in a.k) + " | einsum | einsum+topk |")
    print("|---|---|---|---|" + "---|" * (len(a.k) + 2), flush=True)
    for g in a.G:
        for w in a.warps:
            for ap in a.append:
                if w == "16" and ap == "shared":
                    continue  # 16 warps always take the segments
                env = dict(os.environ)
                env.pop("DARE_CUDA_TARGETS", None)
                if g != "default":
                    env["DARE_CUDA_TARGETS"] = g
                env["DARE_CUDA_TARGETS_WARPS"] = w
                env["DARE_CUDA_TARGETS_APPEND"] = ap
                args = [sys.executable, __file__, "--child", "--G", g, "--warps", w, "--append", ap, "--B", str(a.B),
                        "--T", str(a.T), "--L", str(a.L), "--dtype", a.dtype, "--d", *map(str, a.d),
                        "--k", *map(str, a.k)]
                subprocess.run(args, env=env, check=True)


if __name__ == "__main__":
    main()
