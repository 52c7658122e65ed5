"""DARE vs TWIN vs TWIN with projection (the paper's) at field widths 16 and 64
(and DARE with attention 16 / representation 64), several seeds, on three
tasks: the synthetic control task (relevance and label from the category), the
synthetic conflict task (relevance from a latent group of categories, label
from an item attribute) and a generated Taobao-format log through the public
loader's protocol. Each run is `python -m dare_kernels.train` with the paper's
defaults except the sizes given here; the table reports, per task and model,
mean ± std over seeds of the test metrics at the best-validation step, and the
training time per step of a separate --timing-steps run made alone (the
study's runs share the machine with each other).

    # CPU, this repository's study (63 runs + 21 timing runs: ~16 + 4 minutes on 2 cores), with the
    # paper's dense Adam and with sparse row updates (the training default):
    python bench/tools/model_study.py --optimizer dense --json bench/results/model-study/study-cpu.json
    python bench/tools/model_study.py --optimizer rows --configs 0 1 2 --timing-steps 0 --json bench/results/model-study/study-cpu-rows.json
    # GPU at L = 10000 (larger data, the paper's batch). 63 runs do not fit one call: split them
    # with --tasks / --configs / --seeds or --time-limit and merge with --reuse PREVIOUS.json
    # (bench/device_study.sh does; H100: ~18 s a run alone, 4 at a time (--jobs 4) ~7 s each,
    # their time per step then shared: time it with --timing-steps and the runs reused).
    python bench/tools/model_study.py --device cuda --amp --L 10000 --users 20000 --log-users 4000 \
        --log-len 10200 10500 --batch-size 2048 --k 64 --jobs 1 --tasks conflict --json $OUT/study-gpu.json

Seeds: run s uses model seed s and data seed s (every model sees the same data
for a given s). Runs go to --jobs parallel processes, one intra-op thread each
on CPU.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

# (label, --model, --d-att or None, --d-rep): every field this wide (--widths field).
CONFIGS = [
    ("DARE", "dare", 16, 16),
    ("TWIN", "twin", None, 16),
    ("TWIN w/ proj", "twin_proj", None, 16),
    ("DARE att 16 / rep 64", "dare", 16, 64),
    ("DARE", "dare", 64, 64),
    ("TWIN", "twin", None, 64),
    ("TWIN w/ proj", "twin_proj", None, 64),
]
TASKS = ("control", "conflict", "taobao")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--L", type=int, default=300, help="history length (--max-len)")
    p.add_argument("--users", type=int, default=3000, help="synthetic tasks: users")
    p.add_argument("--targets", type=int, default=20, help="synthetic tasks: impressions per user")
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--categories", type=int, default=100)
    p.add_argument("--log-users", type=int, default=1500, help="Taobao-format log: users")
    p.add_argument("--log-len", type=int, nargs=2, default=[300, 600], help="Taobao-format log: behaviours per user")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--optimizer", choices=["rows", "sparse_adam", "dense"], default="rows",
                   help="the training's --optimizer (rows: sparse row gradients + lazy Adam, the default; dense: "
                        "Adam on every row, the paper's); one optimiser per --json")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--configs", type=int, nargs="+", help="indices into CONFIGS (default: all)")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "dare_kernels", "model_study"))
    p.add_argument("--timing-steps", type=int, default=40,
                   help="then time this many training steps per task and model, one run at a time (0: skip)")
    p.add_argument("--reuse", help="a previous --json: its runs are not run again")
    p.add_argument("--time-limit", type=float,
                   help="seconds: start no run that would end past it (judged by the longest run so far); the "
                        "runs done are in --json, and a later call goes on with --reuse")
    p.add_argument("--json", help="write every run and the summary here")
    return p.parse_args(argv)


def task_args(task: str, args, log_path: str) -> list:
    common = ["--max-len", str(args.L)]
    if task == "taobao":
        return ["--data", f"taobao:{log_path}"] + common
    return (["--data", "synthetic", "--task", "category" if task == "control" else "conflict",
             "--users", str(args.users), "--targets", str(args.targets), "--items", str(args.items),
             "--categories", str(args.categories)] + common)


def run_one(cmd: list, env: dict) -> dict:
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n{r.stderr[-3000:]}")
    out = json.load(open(cmd[cmd.index("--metrics-json") + 1]))
    out["wall_seconds"] = time.time() - t
    return out


def oracle(task: str, args, seed: int) -> dict:
    """The generator's own click probabilities on the test split (the ceiling): the
    runs' data, through the training CLI's loader (and its --data-cache)."""
    from dare_kernels import metrics, train
    run = train.parse_args(task_args(task, args, "") + ["--seed", str(seed), "--data-cache", data_cache(args)])
    test = train.load_data(run.data, run).split(seed=seed)[2]
    logit = (test.prob / (1 - test.prob)).log()
    return {"auc": metrics.auc(test.label, logit), "gauc": metrics.gauc(test.user, test.label, logit),
            "logloss": metrics.logloss(test.label, logit)}


def data_cache(args) -> str:
    """Where the runs keep each (task, seed)'s data (train --data-cache): the models of a
    seed share them, generated once."""
    return os.path.join(args.work, "data")


def mean_std(values):
    values = [v for v in values if v == v]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(summary: list, k: int) -> str:
    ndcg = f"ndcg@{k}"
    lines = ["| task | model | field widths (att / rep) | AUC | GAUC (users) | logloss | NDCG@" + str(k)
             + " | best step / steps | train ms/step |", "|" + "---|" * 9]
    alone = all(s["ms_per_step_alone"] is not None for s in summary)
    for s in summary:
        def f(name, digits=4):
            m, sd = s["metrics"][name]
            return "-" if m != m else f"{m:.{digits}f} ± {sd:.{digits}f}"
        att = "-" if s["d_att"] is None else s["d_att"]
        lines.append(f"| {s['task']} | {s['label']} | {att if s['d_att'] else s['d_rep']} / {s['d_rep']} | "
                     f"{f('auc')} | {f('gauc')} ({s['gauc_users']}) | {f('logloss')} | "
                     f"{f(ndcg) if s['task'] != 'taobao' else '-'} | {s['best_step']} / {s['steps']} | "
                     + (f"{s['ms_per_step_alone']:.0f} |" if alone else
                        f"{s['metrics']['train_ms_per_step'][0]:.0f} ± {s['metrics']['train_ms_per_step'][1]:.0f} |"))
    return "\n".join(lines)


def runs_json(results: dict, timing: dict) -> dict:
    return {"runs": [{"key": list(k), **{n: v for n, v in r.items() if n != "args"}} for k, r in results.items()],
            "timing": [{"key": list(k), **{n: v for n, v in r.items() if n != "args"}} for k, r in timing.items()]}


def save_partial(args, results: dict, timing: dict) -> None:
    """The runs so far, in --json, after each run: a study cut short (a device
    call's time limit) resumes from it with --reuse."""
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({"argv": sys.argv[1:], "args": vars(args), "partial": True, **runs_json(results, timing)}, f, indent=1)
        os.replace(args.json + ".tmp", args.json)


def main(argv=None):
    args = parse_args(argv)
    if args.time_limit is not None and not args.json:
        sys.exit("--time-limit needs --json: the runs done are saved there for the next call's --reuse")
    os.makedirs(args.work, exist_ok=True)
    log_path = os.path.join(args.work, f"UserBehavior-{args.log_users}-{args.log_len[0]}-{args.log_len[1]}.csv")
    if "taobao" in args.tasks and not os.path.exists(log_path):
        from dare_kernels.data.synthetic import write_log
        n = write_log(log_path, users=args.log_users, n_items=args.items, n_categories=args.categories,
                      min_len=args.log_len[0], max_len=args.log_len[1], seed=0)
        print(f"wrote {n} rows to {log_path}", flush=True)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    configs = [CONFIGS[i] for i in args.configs] if args.configs else CONFIGS
    def command(task, model, d_att, d_rep, seed, name, extra=()):
        cmd = [sys.executable, "-m", "dare_kernels.train", "--model", model, "--d-rep", str(d_rep),
               "--k", str(args.k), "--batch-size", str(args.batch_size), "--eval-every", str(args.eval_every),
               "--seed", str(seed), "--device", args.device, "--optimizer", args.optimizer, "--quiet",
               "--data-cache", data_cache(args),
               "--metrics-json", os.path.join(args.work, name + ".json")] + task_args(task, args, log_path)
        cmd += (["--d-att", str(d_att)] if d_att is not None else []) + (["--amp"] if args.amp else []) + list(extra)
        return cmd

    results, timing = {}, {}
    if args.reuse:
        old = json.load(open(args.reuse))
        results = {tuple(r["key"]): r for r in old["runs"]}
        timing = {tuple(r["key"]): r for r in old.get("timing", [])}
    jobs, timing_jobs = [], []
    for task in args.tasks:
        for label, model, d_att, d_rep in configs:
            for seed in args.seeds:
                key = (task, label, model, d_att, d_rep, seed)
                if key not in results:
                    jobs.append((key, command(task, model, d_att, d_rep, seed, f"{task}-{model}-{d_att or d_rep}-{d_rep}-s{seed}")))
            key = (task, label, model, d_att, d_rep)
            if args.timing_steps and key not in timing:
                extra = ["--steps", str(args.timing_steps), "--eval-every", str(10 ** 9)]
                timing_jobs.append((key, command(task, model, d_att, d_rep, 0, f"time-{task}-{model}-{d_att or d_rep}-{d_rep}", extra)))
    t0 = time.time()
    # The longest run so far judges whether the next fits --time-limit (reused runs count:
    # a resumed call starts no run it cannot finish); the timing runs, shorter, their own.
    longest = {"run": max([r.get("wall_seconds", 0.0) for r in results.values()], default=0.0),
               "timing": max([r.get("wall_seconds", 0.0) for r in timing.values()], default=0.0)}
    failed = []
    save_partial(args, results, timing)  # the reused runs, whatever this call adds

    def run_in_time(cmd, kind="run"):
        if args.time_limit is not None and time.time() - t0 + longest[kind] > args.time_limit:
            return None
        try:
            r = run_one(cmd, env)
        except Exception as e:  # noqa: BLE001 - the other runs go on; this one is retried by a later --reuse
            failed.append(str(e))
            print(f"FAILED: {e}", flush=True)
            return None
        longest[kind] = max(longest[kind], r["wall_seconds"])
        return r

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_in_time, cmd): key for key, cmd in jobs}
        for i, fut in enumerate(concurrent.futures.as_completed(futures)):
            key = futures[fut]
            r = fut.result()
            if r is None:
                continue
            results[key] = r
            print(f"[{i + 1}/{len(jobs)} {time.time() - t0:.0f} s] {key[0]} {key[1]} ({key[3] or key[4]}/{key[4]}) "
                  f"seed {key[5]}: test AUC {r['test']['auc']:.4f} at best step {r['best_step']}/{r['steps']}"
                  f" ({r['wall_seconds']:.0f} s)", flush=True)
            save_partial(args, results, timing)
    # Time per step, one run at a time (the study's runs share the machine with each other).
    for key, cmd in timing_jobs:
        r = run_in_time(cmd, "timing")
        if r is None:
            continue
        timing[key] = r
        print(f"[timing] {key[0]} {key[1]} ({key[3] or key[4]}/{key[4]}): {r['train_ms_per_step']:.1f} ms/step",
              flush=True)
        save_partial(args, results, timing)
    missing = [key for key, _ in jobs if key not in results] + [key for key, _ in timing_jobs if key not in timing]
    if failed:
        sys.exit(f"{len(failed)} runs failed (above); the {len(results)} done are "
                 + (f"in {args.json}" if args.json else "not saved (no --json)"))
    if missing:
        print(f"--time-limit: {len(missing)} runs left for a later call (--reuse {args.json})", flush=True)
        return
    devices = sorted({r["device_name"] for r in list(results.values()) + list(timing.values()) if "device_name" in r})
    if len(devices) > 1:
        print(f"warning: the runs ran on {' and '.join(devices)}: their ms per step do not compare", flush=True)
    summary = []
    for task in args.tasks:
        for label, model, d_att, d_rep in configs:
            runs = [results[(task, label, model, d_att, d_rep, s)] for s in args.seeds]
            names = [n for n, v in runs[0]["test"].items() if isinstance(v, float)]
            m = {n: mean_std([r["test"][n] for r in runs]) for n in names}
            m["train_ms_per_step"] = mean_std([r["train_ms_per_step"] for r in runs])
            alone = timing.get((task, label, model, d_att, d_rep))
            users = sorted({r["test"]["gauc_users"] for r in runs})
            summary.append({"task": task, "label": label, "model": model, "d_att": d_att, "d_rep": d_rep,
                            "metrics": m, "gauc_users": "/".join(map(str, users)),
                            "best_step": "/".join(str(r["best_step"]) for r in runs),
                            "steps": "/".join(sorted({str(r["steps"]) for r in runs})),
                            "ms_per_step_alone": alone["train_ms_per_step"] if alone else None,
                            "data": runs[0]["data"]})
    oracles = {t: [oracle(t, args, s) for s in args.seeds] for t in args.tasks if t != "taobao"}
    print()
    print(table(summary, args.k))
    for t, o in oracles.items():
        print(f"{t}: the generator's click probabilities on the test split: AUC "
              + " ± ".join(f"{v:.4f}" for v in mean_std([x['auc'] for x in o]))
              + ", logloss " + " ± ".join(f"{v:.4f}" for v in mean_std([x['logloss'] for x in o])))
    print(f"total {time.time() - t0:.0f} s wall with {args.jobs} jobs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv[1:], "args": vars(args), "devices": devices, "summary": summary,
                       "oracle": oracles,
                       "wall_seconds": time.time() - t0, **runs_json(results, timing)}, f, indent=1)


if __name__ == "__main__":
    main()
