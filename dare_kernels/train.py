"""Train and evaluate a long-sequence CTR model whose search stage is the op.

    python -m dare_kernels.train --model dare --data synthetic --steps 2000
    python -m dare_kernels.train --model twin --data taobao:UserBehavior.csv --max-len 10000
    torchrun --nproc-per-node 4 -m dare_kernels.train --model dare --data synthetic

Adam, periodic validation (AUC, GAUC, logloss, and NDCG@k of the search against
the ground truth on synthetic data), checkpoint save/resume, AMP (bf16) on GPU,
DistributedDataParallel under torchrun. Metrics are printed and written as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import torch
import torch.distributed as dist

from . import metrics
from .data import LOADERS, Interactions, batches, to_device
from .models import MODELS, LongSequenceCTR


# Data options: None on the command line means "the loader's default".
DATA_OPTIONS = ("users", "items", "categories", "max_len")


def load_data(spec: str, args) -> Interactions:
    """--data NAME or NAME:PATH through LOADERS; an option the loader does not
    use raises instead of being ignored."""
    name, _, path = spec.partition(":")
    if name not in LOADERS:
        raise ValueError(f"--data must be one of {', '.join(n + (':PATH' if l.needs_path else '') for n, l in LOADERS.items())}, got {spec!r}")
    loader = LOADERS[name]
    if loader.needs_path != bool(path):
        raise ValueError(f"--data {name} {'needs' if loader.needs_path else 'takes no'} a path ({name}{':PATH' if loader.needs_path else ''})")
    given = {o: getattr(args, o) for o in DATA_OPTIONS if getattr(args, o, None) is not None}
    unused = [o for o in given if o not in loader.defaults]
    if unused:
        raise ValueError(f"--data {name} does not use {', '.join('--' + o.replace('_', '-') for o in unused)}")
    return loader(path or None, **given, seed=args.seed)


def _autocast(args, device):
    """bf16 autocast when --amp is given and the device is a GPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp and device.type == "cuda")


@torch.no_grad()
def evaluate(model, data, args, device) -> dict:
    model.eval()
    logits, labels, users, ndcg_num, ndcg_rows = [], [], [], 0.0, 0
    for batch in batches(data, args.eval_batch_size):
        b = to_device(batch, device)
        with _autocast(args, device):
            logit, _, idx = model(b)
        logits.append(logit.float().cpu())
        labels.append(batch["label"])
        users.append(batch["user"])
        if "relevant" in batch:
            n = metrics.ndcg_at_k(idx.cpu(), batch["relevant"])
            if n == n:
                ndcg_num += n * len(idx)
                ndcg_rows += len(idx)
    model.train()
    logits, labels, users = torch.cat(logits), torch.cat(labels), torch.cat(users)
    out = {"auc": metrics.auc(labels, logits), "gauc": metrics.gauc(users, labels, logits),
           "logloss": metrics.logloss(labels, logits)}
    if ndcg_rows:
        out[f"ndcg@{args.k}"] = ndcg_num / ndcg_rows
    return out


def build_model(args, data: Interactions):
    cls = MODELS[args.model]
    if args.d_att is not None and not cls.uses_d_att:
        warnings.warn(f"--d-att {args.d_att} is not used by --model {args.model} (its attention width is --d-rep)")
    d_att = {} if args.d_att is None else {"d_att": args.d_att}
    return LongSequenceCTR(args.model, data.n_items, data.n_cats, data.history_items.shape[1], **d_att,
                           d_rep=args.d_rep, k=args.k, search_backend=args.backend)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m dare_kernels.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=MODELS, default="dare")
    p.add_argument("--data", default="synthetic", help="synthetic | taobao:PATH | tmall:PATH")
    p.add_argument("--d-att", type=int, help="attention width (default 16; twin: not used, it is --d-rep)")
    p.add_argument("--d-rep", type=int, default=128)
    p.add_argument("--k", type=int, default=64, help="behaviours kept by the search stage")
    p.add_argument("--max-len", type=int, help="history length kept (up to 10000+; default 1000)")
    p.add_argument("--users", type=int, help="synthetic: number of users (4 impressions each; default 5000)")
    p.add_argument("--items", type=int, help="synthetic: number of items (default 5000)")
    p.add_argument("--categories", type=int, help="synthetic: number of categories (default 100)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--eval-batch-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--checkpoint", help="save here (and resume from here with --resume)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on GPU")
    p.add_argument("--backend", help="force the search backend (cpu, cuda, triton, reference)")
    p.add_argument("--metrics-json", help="write the final metrics here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(args.device)
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(args.seed)

    data = load_data(args.data, args)
    train, valid, test = data.split(seed=args.seed)
    model = build_model(args, data).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    step = 0
    if args.resume and args.checkpoint and os.path.exists(args.checkpoint):
        state = torch.load(args.checkpoint, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    from tqdm import tqdm
    progress = tqdm(total=args.steps, initial=step, disable=args.quiet or rank != 0, desc=args.model)
    history, epoch, t0 = [], 0, time.time()
    while step < args.steps:
        for batch in batches(train, args.batch_size, shuffle=True, seed=args.seed + epoch,
                             rank=rank, world_size=world, drop_last=True):
            b = to_device(batch, device)
            with _autocast(args, device):
                logit, _, _ = net(b)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit.float(), b["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            progress.update()
            progress.set_postfix(loss=f"{loss.item():.4f}")
            if step % args.eval_every == 0 or step == args.steps:
                if rank == 0:
                    m = {"step": step, "loss": loss.item(), **evaluate(model, valid, args, device)}
                    history.append(m)
                    progress.write(json.dumps(m))
                    if args.checkpoint:
                        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                                    "args": vars(args)}, args.checkpoint)
            if step >= args.steps:
                break
        epoch += 1
    progress.close()
    result = {}
    if rank == 0:
        result = {"args": vars(args), "model": {"variant": args.model, "d_att": model.d_att, "d_rep": model.d_rep},
                  "device": str(device), "seconds": time.time() - t0,
                  "validation": history, "test": evaluate(model, test, args, device)}
        print(json.dumps({"test": result["test"]}))
        if args.metrics_json:
            with open(args.metrics_json, "w") as f:
                json.dump(result, f, indent=1)
    if world > 1:
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
