"""Data-parallel training of the reference models under torchrun: equivalence with one
process, and step time for 1..N processes (issue 29). One process a GPU (NCCL) or,
on the CPU, gloo. bench/tools/ddp_scaling.sh runs the whole GPU study in one call.

    torchrun --standalone --nproc-per-node 2 bench/tools/ddp_scaling.py check --device cuda --json check.json
    torchrun --standalone --nproc-per-node 4 bench/tools/ddp_scaling.py time --model twin --d-att 128 --json t4.json
    python bench/tools/ddp_scaling.py summary DIR        # scaling efficiency of DIR/time-*.json

check: every process trains on its shard (B per process) of one random global batch a
step, the training CLI's step (dare_kernels.train.step_objective, SyncBatchNorm, DDP for
the dense weights, sync_sparse_grads for sparse table gradients). Rank 0 also holds
(a) a probe: a copy of its replica before each step, run on the whole global batch
(W·B) in one process: the gradients must match the data-parallel ones (per parameter,
the largest difference over the largest gradient), and (b) a reference trained on the
whole batch from the same start, with its own optimiser: its parameters after
--steps against the replica's (in units of lr: Adam turns a gradient that is pure
rounding, e.g. of a feature constant over the batch, into a move of up to lr).
Every process's replica must equal rank 0's bit for bit.

time: a fixed random batch a process (no data loading), --warmup steps then --steps
timed steps: the full step, the step without communication (DDP's no_sync and no table
gradient exchange: what the step costs a process alone) and the table gradients'
exchange alone; steps/s, samples/s over all processes.
"""
import argparse
import copy
import json
import os
import platform
import sys
import time

import torch
import torch.distributed as dist

from dare_kernels import distributed
from dare_kernels.models import LongSequenceCTR
from dare_kernels.optim import ModelOptimizer
from dare_kernels.train import default_optimizer, step_objective


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["check", "time", "summary"])
    p.add_argument("folder", nargs="?", help="summary: the folder of time-*.json files")
    p.add_argument("--model", choices=["dare", "twin"], default="dare")
    p.add_argument("--d-att", type=int, default=16)
    p.add_argument("--d-rep", type=int, default=128)
    p.add_argument("--k", type=int, default=128)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--categories", type=int, default=10_000)
    p.add_argument("--L", type=int, default=10_000, help="history length")
    p.add_argument("--B", type=int, default=1024, help="batch per process")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--l2", type=float, default=1e-6)
    p.add_argument("--optimizer", choices=["auto", "rows", "sparse_adam", "dense"], default="auto")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on GPU (the check runs without by default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="rank 0 writes the result here")
    args = p.parse_args(argv)
    if args.mode == "summary" and not args.folder:
        p.error("summary needs the folder of time-*.json files")
    for name in ("B", "L", "steps", "k"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def global_batch(step: int, args, world: int, device) -> dict:
    """The step's random batch of world·B impressions (every process draws the same one):
    histories of random lengths in [1, L], ids from 1 (0 is padding)."""
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
    n, L = world * args.B, args.L
    lengths = torch.randint(1, L + 1, (n,), generator=g)
    valid = torch.arange(L)[None, :] < lengths[:, None]
    b = {"history_items": torch.randint(1, args.items + 1, (n, L), generator=g) * valid,
         "history_cats": torch.randint(1, args.categories + 1, (n, L), generator=g) * valid,
         "lengths": lengths, "target_item": torch.randint(1, args.items + 1, (n,), generator=g),
         "target_cat": torch.randint(1, args.categories + 1, (n,), generator=g),
         "label": torch.randint(0, 2, (n,), generator=g).float()}
    return {k: v.to(device) for k, v in b.items()}


def shard(batch: dict, rank: int, world: int) -> dict:
    """Process rank's contiguous B rows: the shards, in rank order, are the global batch."""
    n = batch["label"].shape[0] // world
    return {k: v[rank * n:(rank + 1) * n] for k, v in batch.items()}


def build(args, device):
    torch.manual_seed(args.seed)
    model = LongSequenceCTR(args.model, args.items, args.categories, args.L, d_att=args.d_att, d_rep=args.d_rep,
                            k=args.k, sparse_grad=args.optimizer != "dense").to(device)
    return model


def dense_grad(p):
    g = p.grad
    if g is None:
        return torch.zeros_like(p)
    return g.coalesce().to_dense() if g.is_sparse else g


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_check(args, world, rank, device) -> dict:
    model = build(args, device)
    if rank == 0:
        probe, ref = copy.deepcopy(model), copy.deepcopy(model)  # plain BatchNorm: one process
        ref_opt = ModelOptimizer(ref, args.lr, args.optimizer, l2=args.l2)
    distributed.convert_sync_batchnorm(model)
    opt = ModelOptimizer(model, args.lr, args.optimizer, l2=args.l2)
    net = distributed.wrap(model, device) if world > 1 else model
    names = [n for n, _ in model.named_parameters()]
    worst = {n: 0.0 for n in names}
    for step in range(args.steps):
        full = global_batch(step, args, world, device)
        local = shard(full, rank, world)
        _, objective = step_objective(net, local, args, device)
        opt.zero_grad(set_to_none=True)
        objective.backward()
        if world > 1 and model.sparse_grad:
            distributed.sync_sparse_grads(model.table_parameters())
        if rank == 0:
            probe.load_state_dict(model.state_dict())
            probe.zero_grad(set_to_none=True)
            step_objective(probe, full, args, device)[1].backward()
            for (n, p), q in zip(model.named_parameters(), probe.parameters()):
                want = dense_grad(q)
                scale = float(want.abs().max()) or 1.0
                worst[n] = max(worst[n], float((dense_grad(p) - want).abs().max()) / scale)
            ref_opt.zero_grad(set_to_none=True)
            step_objective(ref, full, args, device)[1].backward()
            ref_opt.step()
        opt.step()
    replicas = distributed.replica_difference(model) if world > 1 else 0.0
    if rank != 0:
        return {}
    diffs = {n: (p.detach() - q.detach()).abs() / args.lr for (n, p), q in zip(model.named_parameters(),
                                                                               ref.parameters())}
    params = {n: float(d.max()) for n, d in diffs.items()}
    apart = sum(int((d > 0.01).sum()) for d in diffs.values()) / sum(d.numel() for d in diffs.values())
    buffers = {n: float((a - b).abs().max()) for (n, a), b in zip(model.named_buffers(), ref.buffers())
               if a.is_floating_point()}
    return {"grad_max_rel_diff": worst, "grad_max_rel_diff_worst": max(worst.values()),
            "param_max_diff_over_lr": params, "param_max_diff_over_lr_worst": max(params.values()),
            "param_fraction_apart": apart,
            "buffer_max_abs_diff": buffers, "replica_max_abs_diff": replicas}


def run_time(args, world, rank, device) -> dict:
    model = build(args, device)
    distributed.convert_sync_batchnorm(model)
    opt = ModelOptimizer(model, args.lr, args.optimizer, l2=args.l2)
    net = distributed.wrap(model, device) if world > 1 else model
    local = global_batch(10_000 + rank, args, 1, device)  # a batch of B of this process's own
    tables = model.table_parameters()
    exchange = world > 1 and model.sparse_grad

    def step(communicate: bool) -> float:
        """One step; returns the seconds of the table gradients' exchange (0 without)."""
        ctx = net.no_sync() if world > 1 and not communicate else _Null()
        with ctx:
            _, objective = step_objective(net, local, args, device)
            opt.zero_grad(set_to_none=True)
            objective.backward()
        seconds = 0.0
        if exchange and communicate:
            sync(device)
            t = time.perf_counter()
            distributed.sync_sparse_grads(tables)
            sync(device)
            seconds = time.perf_counter() - t
        opt.step()
        return seconds

    out = {}
    for label, communicate in (("full", True), ("no_communication", False)):
        for _ in range(args.warmup):
            step(communicate)
        if world > 1:
            dist.barrier()
        sync(device)
        t, exchanged = time.perf_counter(), 0.0
        for _ in range(args.steps):
            exchanged += step(communicate)
        sync(device)
        seconds = time.perf_counter() - t
        out[label] = {"ms_per_step": 1e3 * seconds / args.steps, "steps_per_s": args.steps / seconds,
                      "samples_per_s": world * args.B * args.steps / seconds}
        if communicate and exchange:
            out[label]["table_exchange_ms_per_step"] = 1e3 * exchanged / args.steps
    if world > 1:  # the slowest process sets the pace: report it
        ms = torch.tensor([out[k]["ms_per_step"] for k in ("full", "no_communication")], dtype=torch.float64,
                          device=device)
        dist.all_reduce(ms, op=dist.ReduceOp.MAX)
        out["slowest_process_ms_per_step"] = {"full": float(ms[0]), "no_communication": float(ms[1])}
    if device.type == "cuda":
        out["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return out if rank == 0 else {}


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def summary(folder: str) -> dict:
    """Scaling efficiency: samples/s at N processes over N x samples/s at 1, per model
    and optimiser, from folder/time-*.json."""
    runs = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("time-") and name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                runs.append(json.load(f))
    rows = []
    for r in runs:
        key = (r["config"]["model"], r["config"]["d_att"], r["config"]["optimizer"])
        one = [o for o in runs if (o["config"]["model"], o["config"]["d_att"], o["config"]["optimizer"]) == key
               and o["world_size"] == 1]
        full = r["result"]["full"]
        row = {"model": key[0], "d_att": key[1], "optimizer": key[2], "gpus": r["world_size"],
               "steps_per_s": full["steps_per_s"], "samples_per_s": full["samples_per_s"],
               "ms_per_step": full["ms_per_step"],
               "ms_per_step_no_communication": r["result"]["no_communication"]["ms_per_step"],
               "table_exchange_ms_per_step": full.get("table_exchange_ms_per_step")}
        if one:
            row["scaling_efficiency"] = full["samples_per_s"] / (r["world_size"] *
                                                                  one[0]["result"]["full"]["samples_per_s"])
        rows.append(row)
    rows.sort(key=lambda x: (x["model"], x["d_att"], x["optimizer"], x["gpus"]))
    return {"rows": rows}


def main(argv=None):
    args = parse(argv)
    if args.mode == "summary":
        out = summary(args.folder)
        text = json.dumps(out, indent=1)
        if args.json:
            with open(args.json, "w") as f:
                f.write(text)
        print(text)
        return out
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = torch.device(args.device)
    if args.optimizer == "auto":
        args.optimizer = default_optimizer(device)
    args.aux_loss = False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        env = distributed.set_nccl_defaults()
    else:
        env = {}
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    result = (run_check if args.mode == "check" else run_time)(args, world, rank, device)
    out = {}
    if rank == 0:
        out = {"mode": args.mode, "world_size": world, "device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
               "torch": torch.__version__, "env": env,
               "config": {k: getattr(args, k) for k in ("model", "d_att", "d_rep", "k", "items", "categories", "L",
                                                       "B", "steps", "warmup", "lr", "l2", "optimizer", "amp",
                                                       "seed")},
               "result": result}
        text = json.dumps(out, indent=1)
        if args.json:
            with open(args.json, "w") as f:
                f.write(text)
        print(text, flush=True)
    if world > 1:
        dist.barrier()  # every rank done before the group goes: a rank leaving early can abort a peer's gloo threads
        dist.destroy_process_group()
    return out


if __name__ == "__main__":
    code = 0 if main() is not None else 1
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        distributed.exit_process(code)
    sys.exit(code)
