"""The reference models' rows: DARE at d_att = 16/32/64 against TWIN's shared
128-wide tables, each timed as the search stage, inference, the training step with
each optimiser and the phases of the default step (see model_rows_for).
bench/tools/profile_model.py profiles the same batch and step."""
from __future__ import annotations

import argparse
import os
import traceback
from typing import Optional

import torch

from .timing import say, time_call, time_graph

MODEL_CONFIGS = [("twin", 128), ("dare", 64), ("dare", 32), ("dare", 16)]

MODEL_ITEMS, MODEL_CATS = 1_000_000, 10_000


def model_config(text: str):
    """("dare", 16) from "dare:16" (the --models argument)."""
    variant, _, d = text.partition(":")
    if variant not in ("dare", "twin") or not d.isdigit() or int(d) < 4:
        raise argparse.ArgumentTypeError(f"--models takes VARIANT:D_ATT with VARIANT dare or twin and D_ATT an "
                                         f"int >= 4, e.g. dare:16 twin:128; got {text!r}")
    return variant, int(d)


def model_batch(device: torch.device, B: int, L: int, n_items: int, n_cats: int) -> dict:
    """A fixed random batch of full-length histories for the reference models."""
    g = torch.Generator(device=device).manual_seed(0)
    return {"history_items": torch.randint(1, n_items + 1, (B, L), device=device, generator=g),
            "history_cats": torch.randint(1, n_cats + 1, (B, L), device=device, generator=g),
            "lengths": torch.full((B,), L, device=device),
            "target_item": torch.randint(1, n_items + 1, (B,), device=device, generator=g),
            "target_cat": torch.randint(1, n_cats + 1, (B,), device=device, generator=g),
            "label": torch.randint(0, 2, (B,), device=device, generator=g).float()}


def train_step(model, opt, batch: dict, device: torch.device, cache: bool = True):
    """Forward + backward + optimiser step, bf16 autocast on GPU (cache: autocast's
    cast cache, which a CUDA-graph capture must go without)."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda", cache_enabled=cache):
        logits = model(batch)[0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["label"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


# The training step's optimisers, as dare_kernels.optim names them: "rows" (the
# default: sparse row gradients, lazy Adam on the touched rows), "dense" (Adam on every row).
STEP_OPTIMIZERS = ("rows", "dense")


def captured_step(model, opt, batch: dict, device: torch.device):
    """The training step captured once in a CUDA graph (dare_kernels.graphs: warm-up
    steps first, undone after); returns the graph's replay, one whole step (forward,
    backward, optimiser) with no host work, on `batch` itself. opt must be
    capturable (ModelOptimizer(..., capturable=True))."""
    from ..graphs import GraphedStep
    step = GraphedStep(lambda b: train_step(model, opt, b, device, cache=False), model, opt.optimizers, device)
    return step.capture(batch, copy_batch=False)[1].replay


def first_sync(fn) -> Optional[str]:
    """Where fn() first makes the host wait for the GPU (what a CUDA-graph capture
    refuses), found by running it once with torch.cuda's sync debug mode set to
    error: the message and the innermost frames; None if it never waits."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    except RuntimeError as e:
        frames = traceback.extract_tb(e.__traceback__)[-4:]
        return (str(e).splitlines()[0][:160] + " at "
                + " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames)))
    finally:
        torch.cuda.set_sync_debug_mode(previous)
        torch.cuda.synchronize()
    return None


def step_phases(model, opt, batch: dict, device: torch.device) -> dict:
    """Callables for the training step's phases, each run and timed alone
    (forward and backward of that phase, gradients cleared each call): search
    forward, search forward + backward, the representation of the k selected
    behaviours summed with their weights and of the target (forward + backward), the MLP (forward +
    backward), the optimiser step (on the gradients of one full step)."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    B = batch["history_items"].shape[0]
    k = min(model.search.k, batch["history_items"].shape[1])
    g = torch.Generator(device=device).manual_seed(1)
    idx = torch.randint(0, batch["history_items"].shape[1], (B, k), device=device, generator=g)
    x = torch.randn(B, 3 * model.d_rep, device=device, generator=g, requires_grad=True)
    weights = torch.softmax(torch.randn(B, k, device=device, generator=g), -1).requires_grad_()

    def search_forward():
        with autocast:
            model.search_stage(batch)

    def search_forward_backward():
        model.zero_grad(set_to_none=True)
        with autocast:
            scores = model.search_stage(batch)[0]
        scores.float().sum().backward()

    def representation():
        model.zero_grad(set_to_none=True)
        items, cats = batch["history_items"], batch["history_cats"]
        pos = model.positions(items.shape[1], device)
        with autocast:
            interest = model.attend(items, cats, pos, weights, idx)
            target_pos = torch.zeros_like(batch["target_item"])
            target = model.representation(batch["target_item"], batch["target_cat"], target_pos, target=True).float()
        (interest.sum() + target.sum()).backward()

    def mlp():
        model.zero_grad(set_to_none=True)
        with autocast:
            out = model.mlp(x)
        out.float().sum().backward()

    def optimizer():
        opt.step()

    return {"search forward": search_forward, "search forward+backward": search_forward_backward,
            "representation": representation, "mlp": mlp, "optimizer": optimizer}


def model_rows_for(device: torch.device, args) -> list:
    """The reference models, DARE at d_att = 16/32/64 against TWIN's shared
    128-wide tables (d_rep 128 for all; 1M items, 10k categories; bf16 autocast
    on GPU): the search stage (attention lookups of every behaviour + top-k, as
    the forward runs it), the inference forward, the training step (forward +
    backward + optimiser) with each of STEP_OPTIMIZERS, and the phases of the
    default ("rows") step, each timed alone (see step_phases); on a GPU also each
    step captured in a CUDA graph and replayed ("train step (<kind>, graph)")."""
    from ..models import LongSequenceCTR
    from ..optim import ModelOptimizer
    gpu = device.type == "cuda"
    B = (args.B or [1024 if gpu else 64])[0]
    L, n_items, n_cats = args.L, MODEL_ITEMS, MODEL_CATS
    batch = model_batch(device, B, L, n_items, n_cats)
    rows = []
    reps = max(5, args.reps // (2 if gpu else 10))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu)
    configs = getattr(args, "models", None) or MODEL_CONFIGS
    if not any(v == "twin" for v, _ in configs):  # every row is a ratio to TWIN's
        configs = [("twin", 128), *configs]
    for variant, d_att in configs:
        say(args, f"model {variant} d_att={d_att}: search stage, inference, training step, phases")
        model = LongSequenceCTR(variant, n_items, n_cats, L, d_att=d_att, d_rep=128, k=args.k).to(device)
        row = {"model": variant, "d_att": model.d_att, "B": B, "L": L, "k": args.k}

        def search():
            with torch.no_grad(), autocast:
                return model.search_stage(batch)

        def forward():
            with torch.no_grad(), autocast:
                return model(batch)

        model.eval()
        found = [("search", time_call(search, [()], device, reps=reps)),
                 ("inference", time_call(forward, [()], device, reps=reps))]
        if gpu:
            # The same calls captured once in a CUDA graph and replayed: no host work per call.
            found += [("search (graph)", time_graph(search, device, reps=reps)),
                      ("inference (graph)", time_graph(forward, device, reps=reps))]
        model.train()
        step_reps = max(3, reps // 2)
        for kind in STEP_OPTIMIZERS:
            model.set_sparse_grad(kind != "dense")
            opt = ModelOptimizer(model, 1e-3, kind, capturable=gpu)
            if gpu:
                torch.cuda.reset_peak_memory_stats(device)
            t = time_call(lambda: train_step(model, opt, batch, device), [()], device, reps=step_reps)
            mem = {"peak_GiB": torch.cuda.max_memory_allocated(device) / 2**30} if gpu else {}
            found.append((f"train step ({kind})", t, mem))
            if kind == STEP_OPTIMIZERS[0]:
                for phase, fn in step_phases(model, opt, batch, device).items():
                    found.append((f"phase: {phase}", time_call(fn, [()], device, reps=step_reps)))
            if gpu:
                try:
                    replay = captured_step(model, opt, batch, device)
                except Exception as e:  # reported, not timed: the eager row stands
                    where = first_sync(lambda: train_step(model, opt, batch, device))
                    say(args, f"  train step ({kind}) not captured: {type(e).__name__}: {str(e)[:300]}"
                        + (f"\n  its first host synchronisation: {where}" if where else ""))
                else:
                    found.append((f"train step ({kind}, graph)", time_call(replay, [()], device, reps=step_reps)))
                    del replay
                model.zero_grad(set_to_none=True)
            del opt
        for stage, t, *extra in found:
            rows.append({"stage": stage, **row, "ms": t * 1e3, **(extra[0] if extra else {})})
        say(args, "  " + "; ".join(f"{stage} {t * 1e3:.3f} ms" for stage, t, *_ in found))
        del model
        if gpu:
            torch.cuda.empty_cache()
    for r in rows:
        base = next(x for x in rows if x["stage"] == r["stage"] and x["model"] == "twin")
        r["x_vs_twin128"] = base["ms"] / r["ms"]
    return rows

