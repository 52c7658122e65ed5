"""Train and evaluate a long-sequence CTR model whose search stage is the op.

    python -m dare_kernels.train --model dare --data synthetic
    python -m dare_kernels.train --model twin --data synthetic --task conflict --seeds 0 1 2
    python -m dare_kernels.train --model dare --data taobao:UserBehavior.csv --max-len 10000 --amp
    torchrun --nproc-per-node 4 -m dare_kernels.train --model dare --data tmall:user_log_format1.csv --amp

Defaults follow the DARE paper's public code (batch 2048, 2 epochs, lr 0.01,
embeddings N(0, 0.01), L2 1e-6 on the dense weights, not the embedding tables,
not biases, every field d wide; --init normal and --positions raw are the public
code's initialisation and positions, not the defaults) but for the optimiser of the tables: their
gradients are sparse rows and a lazy Adam updates only the rows a batch touched
(--optimizer rows, the default; --optimizer dense is the paper's Adam on every row, and the default
on a GPU only with --graph off: see bench/RESULTS.md). On a GPU each training step is one CUDA-graph
replay (--graph auto; every batch keeps the history length, one shape). Validation every --eval-every steps
and at each epoch's end, and the test at the best-validation-AUC step
(--patience stops early). Public data: page views only, users with >= 210
behaviours, 19 training targets per user and a time-ordered validation (second
to last) and test (last) target, 2 negatives per positive. --seed seeds the
model (initialisation, batch order), --data-seed the data (generation,
split, negatives; default: --seed); --seeds runs each seed and reports mean ±
std. --data synthetic defaults to data that learn on a laptop CPU in seconds
(3000 users x 20 impressions, histories up to 300, batch 512). Progress is printed for people; the metrics go to a JSON file
(--metrics-json; default under the system's temporary directory). AMP (bf16)
on GPU, DistributedDataParallel under torchrun, checkpoint save/resume.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch
import torch.distributed as dist

from . import distributed, metrics
from .data import LOADERS, Interactions, batches, to_device
from .models import MODELS, LongSequenceCTR
from .models.dare import INITS, POSITIONS
from .graphs import GraphedStep
from .optim import ModelOptimizer

RUNS_FOLDER = "dare-kernels-runs"  # under the temp directory; not the package's name: it would shadow it
WARMUP_STEPS = 3  # steps not counted in train_ms_per_step (their time: warmup_seconds)
# Data options: None on the command line means "the loader's default".
DATA_OPTIONS = ("users", "targets", "items", "categories", "max_len", "task", "min_behaviours", "train_targets",
                "target_stride", "negatives", "page_views_only")
MODEL_HELP = {
    "dare": "separate attention (--d-att) and representation (--d-rep) tables",
    "twin": "one shared set of tables (--d-rep); --d-att is not used",
    "twin_proj": "the paper's TWIN w/ projection: shared tables, per-field square maps for query, key, target, value",
    "twin_compress": "shared --d-rep tables compressed to --d-att by a query/key map (not in the paper)",
    "twin_4e": "separate target and behaviour tables for attention and representation",
}


def load_data(spec: str, args) -> Interactions:
    """--data NAME or NAME:PATH through LOADERS; an option the loader does not
    use raises instead of being ignored."""
    name, _, path = spec.partition(":")
    if name not in LOADERS:
        names = ", ".join(n + (":PATH" if ld.needs_path else "") for n, ld in LOADERS.items())
        raise ValueError(f"--data must be one of {names}, got {spec!r}")
    loader = LOADERS[name]
    if loader.needs_path != bool(path):
        raise ValueError(f"--data {name} {'needs' if loader.needs_path else 'takes no'} a path"
                         f" ({name}{':PATH' if loader.needs_path else ''})")
    given = {o: getattr(args, o) for o in DATA_OPTIONS if getattr(args, o, None) is not None}
    unused = [o for o in given if o not in loader.defaults]
    if unused:
        flags = ", ".join("--all-behaviours" if o == "page_views_only" else "--" + o.replace("_", "-") for o in unused)
        raise ValueError(f"--data {name} does not use {flags}")
    seed = args.seed if getattr(args, "data_seed", None) is None else args.data_seed
    cache = getattr(args, "data_cache", None)
    if not cache:
        return loader(path or None, **given, seed=seed)
    return cached_data(cache, name, path, {**loader.defaults, **given, "seed": seed},
                       lambda: loader(path or None, **given, seed=seed))


def cached_data(cache: str, name: str, path: str, options: dict, load) -> Interactions:
    """--data-cache: the loaded data saved under `cache`, keyed by the loader, its
    options and seed, the data package's source (a changed generator or parser makes
    a new key), torch's and numpy's versions (their random streams and parsers) and
    (for a file) the path as given, its size and mtime; a later run with the same key
    loads the file (tensors only, memory-mapped) instead of generating or parsing
    again (a study's models share each seed's data). A file that does not load is
    made again."""
    import dataclasses
    import glob
    import hashlib
    import numpy
    source = hashlib.sha1()
    for f in sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "*.py"))):
        source.update(open(f, "rb").read())
    stat = os.stat(path) if path else None
    key = json.dumps({"loader": name, "options": options, "source": source.hexdigest(),
                      "versions": [torch.__version__, numpy.__version__],
                      "file": [path, os.path.abspath(path), stat.st_size, stat.st_mtime_ns] if stat else None},
                     sort_keys=True, default=str)
    file = os.path.join(cache, f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt")
    if os.path.exists(file):
        try:
            return Interactions(**torch.load(file, weights_only=True, mmap=True))
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file: made again below
            warnings.warn(f"--data-cache: {file} did not load ({e}); loading the data again")
    data = load()
    os.makedirs(cache, exist_ok=True)
    tmp = f"{file}.{os.getpid()}.tmp"  # whole or absent: parallel runs may race, each writes its own
    try:
        torch.save({f.name: getattr(data, f.name) for f in dataclasses.fields(data)}, tmp)
        os.replace(tmp, file)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return data


def describe(data: Interactions, parts, args) -> str:
    n_users = int(torch.unique(data.user).numel())
    lengths = data.history_lengths().float()
    how = "time-ordered per user" if data.fold is not None else "random by impression"
    names = ("train", "validation", "test")
    split = " / ".join(f"{n} {len(p)}" for n, p in zip(names, parts))
    pos = float(data.label.mean())
    return (f"data: {data.description}\n"
            f"  {len(data)} impressions of {n_users} users ({pos:.1%} positive), {data.n_items} items, "
            f"{data.n_cats} categories; history up to {data.history_len} (mean {lengths.mean():.0f})\n"
            f"  split ({how}): {split}")


def _autocast(args, device, cache: bool = True):
    """bf16 autocast when --amp is given and the device is a GPU (cache: autocast's
    cast cache, which a CUDA-graph capture must go without)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp and device.type == "cuda",
                          cache_enabled=cache)


@torch.no_grad()
def evaluate(model, data, args, device) -> dict:
    """AUC, GAUC (and the number of users it averages), logloss and, on
    synthetic data, NDCG@k of the search against the ground truth."""
    was_training = model.training
    model.eval()
    logits, labels, users, ndcg_num, ndcg_rows = [], [], [], 0.0, 0
    for batch in batches(data, args.eval_batch_size):
        b = to_device(batch, device)
        with _autocast(args, device):
            logit, _, idx = model(b)
        logits.append(logit.float().cpu())
        labels.append(batch["label"].cpu())
        users.append(batch["user"].cpu())
        if "relevant" in batch:
            n = metrics.ndcg_at_k(idx, b["relevant"])
            if n == n:
                ndcg_num += n * len(idx)
                ndcg_rows += len(idx)
    model.train(was_training)
    logits, labels, users = torch.cat(logits), torch.cat(labels), torch.cat(users)
    gauc, gauc_users = metrics.gauc_users(users, labels, logits)
    out = {"auc": metrics.auc(labels, logits), "gauc": gauc, "gauc_users": gauc_users,
           "logloss": metrics.logloss(labels, logits), "impressions": len(labels)}
    if ndcg_rows:
        out[f"ndcg@{args.k}"] = ndcg_num / ndcg_rows
    return out


def build_model(args, data: Interactions):
    cls = MODELS[args.model]
    if args.d_att is not None and not cls.uses_d_att:
        warnings.warn(f"--d-att {args.d_att} is not used by --model {args.model} (its attention width is --d-rep)")
    d_att = 16 if args.d_att is None else args.d_att
    if args.position_cap is not None and args.position_cap < 1:
        raise ValueError(f"--position-cap must be a positive number of positions, got {args.position_cap}")
    if args.position_cap is not None and args.positions != "raw":
        raise ValueError(f"--position-cap applies to --positions raw only (got --positions {args.positions})")
    if args.identity_maps and args.model != "twin_proj":
        raise ValueError(f"--identity-maps applies to --model twin_proj only (got --model {args.model})")
    extra = {"identity_maps": True} if args.identity_maps else {}
    return LongSequenceCTR(args.model, data.n_items, data.n_cats, data.history_len, d_att=d_att,
                           d_rep=args.d_rep, k=args.k, widths=args.widths, search_backend=args.backend,
                           embedding_std=args.embedding_std, aux_loss=args.aux_loss,
                           sparse_grad=args.optimizer != "dense", positions=args.positions,
                           position_cap=2000 if args.position_cap is None else args.position_cap,
                           init=args.init, **extra)


def model_line(args, model) -> str:
    """What was built, with how the widths came from the flags: a key is three
    fields wide (item, category, position), so --d-att 16 with --widths field
    is a 48-wide attention key."""
    def width(role, widths, flag):
        value = getattr(args, flag[2:].replace("-", "_"))
        value = 16 if value is None else value  # --d-att's default
        how = (f"--widths field: every field {flag} {value} wide" if args.widths == "field"
               else f"--widths split: {flag} {value} divided among the fields")
        return (f"{role} {sum(widths)} wide (item {widths[0]} + category {widths[1]} + position {widths[2]}; "
                f"{how})")
    shared = not type(model).uses_d_att
    att = width("attention" + (" (the shared tables)" if shared else ""), model.att_widths,
                "--d-rep" if shared else "--d-att")
    options = f"{args.positions} positions" + (f" (cap {model.position_cap})" if args.positions == "raw" else "")
    options += f", {args.init} init" + (", identity maps" if args.identity_maps else "")
    return (f"model: {args.model}: {att}; {width('representation', model.rep_widths, '--d-rep')}; "
            f"the search reads {model.d_search}-wide rows; {options}; "
            f"{sum(p.numel() for p in model.parameters())} parameters")


def default_optimizer(device: torch.device, graph: bool = False) -> str:
    """--optimizer auto: sparse rows on the CPU (11x faster steps than dense Adam for DARE-16),
    and on a GPU where the step is replayed from a CUDA graph (--graph auto: DARE-16's step
    2.4 ms against dense Adam's 3.9, H100); dense Adam on a GPU stepping eagerly, where the
    rows step's ~300 small launches cost more host time than dense Adam's few (bench/RESULTS.md)."""
    return "rows" if device.type != "cuda" or graph else "dense"


def uses_graph(args, device: torch.device, world: int) -> bool:
    """--graph auto: the training step is captured in a CUDA graph on a GPU, in one
    process, with an optimiser that can be captured (not SparseAdam: it coalesces,
    a host synchronisation)."""
    return args.graph == "auto" and device.type == "cuda" and world == 1 and args.optimizer != "sparse_adam"


def step_objective(net, b: dict, args, device, cache: bool = True) -> tuple:
    """(loss, objective) of a training batch: the mean log loss over the (local)
    batch, and what is differentiated: with the auxiliary loss (the L2 penalty is
    the optimiser's: ModelOptimizer(l2=...)). cache: autocast's cast cache (off
    under CUDA-graph capture)."""
    with _autocast(args, device, cache):
        out = net(b, aux=True) if args.aux_loss else net(b)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out[0].float(), b["label"])
    objective = loss
    if args.aux_loss:
        objective = objective + torch.nn.functional.binary_cross_entropy_with_logits(out[3].float(), b["label"])
    return loss, objective


def _fmt(m: dict, k: int) -> str:
    s = f"AUC {m['auc']:.4f}  GAUC {m['gauc']:.4f} ({m['gauc_users']} users)  logloss {m['logloss']:.4f}"
    if f"ndcg@{k}" in m:
        s += f"  NDCG@{k} {m[f'ndcg@{k}']:.4f}"
    return s


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where the help does not give the default itself
    and there is one (None and False defaults say nothing)."""

    def _get_help_string(self, action):
        if "default" in (action.help or "") or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dare_kernels.train", description=__doc__.split("\n\n")[0],
                                formatter_class=_HelpFormatter)
    models = "; ".join(f"{n}: {MODEL_HELP.get(n, MODELS[n].__doc__.splitlines()[0])}" for n in MODELS)
    p.add_argument("--model", choices=list(MODELS), default="dare", help=models)
    g = p.add_argument_group("model")
    g.add_argument("--d-att", type=int, help="attention width (default 16; not used by twin and twin_proj)")
    g.add_argument("--d-rep", type=int, default=16, help="representation width")
    g.add_argument("--widths", choices=["field", "split"], default="field",
                   help="field: every field (item, category, position) is d wide (the paper's Table 1); "
                        "split: d is the key's total width (item d/2, category d/4, position d/4)")
    g.add_argument("--k", type=int, default=64, help="behaviours kept by the search stage")
    g.add_argument("--aux-loss", action="store_true",
                   help="add the public code's auxiliary loss (a second head on softmax attention over all "
                        "behaviours: builds the B x L scores)")
    g.add_argument("--embedding-std", type=float, default=0.01, help="embedding tables' N(0, std) init")
    g.add_argument("--init", choices=INITS, default="torch",
                   help="initialisation of every parameter but the tables: torch (PyTorch's own; the default) or "
                        "normal (every non-bias parameter, Linear weights, BatchNorm scales and PReLU slopes "
                        "included, from N(0, 0.01), as the authors' public code)")
    g.add_argument("--positions", choices=POSITIONS, default="log",
                   help="position field: log (the distance to the target log-bucketed, 1 + floor(2 log2 "
                        "distance); the default) or raw (one table row per distance up to --position-cap, as "
                        "the authors' public code)")
    g.add_argument("--position-cap", type=int,
                   help="with --positions raw: the farthest distance with a row of its own; farther behaviours "
                        "share it (default 2000, the public code's table)")
    g.add_argument("--identity-maps", action="store_true",
                   help="twin_proj: start the query, key, target and value maps at the identity (the model "
                        "starts as TWIN) instead of --init's random maps")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="synthetic", help="synthetic | taobao:PATH | tmall:PATH")
    g.add_argument("--max-len", type=int,
                   help="history length kept (up to 10000+; default 1000 on public data, 300 on synthetic)")
    g.add_argument("--users", type=int, help="synthetic: number of users (default 3000)")
    g.add_argument("--targets", type=int, help="synthetic: impressions per user (default 20)")
    g.add_argument("--items", type=int, help="synthetic: number of items (default 5000)")
    g.add_argument("--categories", type=int, help="synthetic: number of categories (default 100)")
    g.add_argument("--task", choices=["category", "conflict"],
                   help="synthetic: category (control: relevance and label both from the target's category) or "
                        "conflict (relevance from a latent group of categories, label from an item attribute); "
                        "default category")
    g.add_argument("--min-behaviours", type=int, help="public: users with fewer page views are dropped (default 210)")
    g.add_argument("--train-targets", type=int, help="public: training targets per user (default 19)")
    g.add_argument("--target-stride", type=int, help="public: behaviours between training targets (default 5)")
    g.add_argument("--negatives", type=int, help="public: negatives per positive (default 2)")
    g.add_argument("--all-behaviours", dest="page_views_only", action="store_const", const=False,
                   help="public: keep every behaviour type, not page views only")
    g.add_argument("--data-cache", metavar="DIR",
                   help="keep the loaded data in DIR and reuse them in later runs with the same data options and "
                        "seed (a study's models share each seed's data)")
    g.add_argument("--data-seed", type=int, help="seed of the data (generation, split, negatives); default --seed")
    g = p.add_argument_group("training")
    g.add_argument("--lr", type=float, default=0.01, help="learning rate of every optimiser")
    g.add_argument("--optimizer", choices=["auto", "rows", "sparse_adam", "dense"], default="auto",
                   help="rows: the embedding tables take sparse row gradients and a lazy Adam (SparseAdam's update, "
                        "one call a table) moves only the rows a batch touched, Adam the dense weights; "
                        "sparse_adam: the same with torch.optim.SparseAdam; dense: Adam on every row of every "
                        "table each step (the paper's setting; untouched rows keep moving on their momentum); "
                        "auto (default): rows on the CPU and on a GPU with --graph auto; dense on a GPU stepping "
                        "eagerly (where the rows step's many small launches cost more than dense Adam's)")
    g.add_argument("--batch-size", type=int,
                   help="training impressions per step (per process) (default 2048, the paper's; 512 with --data "
                        "synthetic, whose generated data are ~100x smaller than Taobao's)")
    g.add_argument("--epochs", type=float, default=2, help="passes over the training impressions")
    g.add_argument("--steps", type=int, help="train this many steps instead of --epochs")
    g.add_argument("--l2", type=float, default=1e-6, help="L2 penalty on the dense weights")
    g.add_argument("--eval-every", type=int, default=150, help="validate every N steps (and at each epoch's end)")
    g.add_argument("--patience", type=int,
                   help="stop after this many validations without a better validation AUC (default: never)")
    g.add_argument("--eval-batch-size", type=int, default=1024, help="impressions per validation/test batch")
    g.add_argument("--seed", type=int, default=0, help="model seed (initialisation, batch order)")
    g.add_argument("--seeds", type=int, nargs="+", help="run once per model seed; report mean ± std")
    g.add_argument("--checkpoint", help="save here (and resume from here with --resume)")
    g.add_argument("--resume", action="store_true", help="continue the run saved in --checkpoint (if it exists)")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N (default: cuda when a GPU is present, else cpu)")
    g.add_argument("--amp", action="store_true", help="bf16 autocast on GPU")
    g.add_argument("--data-device", choices=["auto", "cpu"], default="auto",
                   help="where the data live: auto, on the GPU when they take at most a quarter of its memory "
                        "(batches cut there), else the CPU (each batch copied over)")
    g.add_argument("--backend", help="force the search backend (cpu, cuda, triton, reference)")
    g.add_argument("--graph", choices=["auto", "off"], default="auto",
                   help="auto (default): on a GPU, in one process, each training step is one CUDA-graph replay "
                        "(captured once: every batch keeps the data's history length, padding masked; not with "
                        "--optimizer sparse_adam); off: eager steps, each batch cut to its longest history")
    g.add_argument("--metrics-json", help="write the metrics here (default: a new file under "
                                          f"{os.path.join(tempfile.gettempdir(), RUNS_FOLDER)})")
    g.add_argument("--quiet", action="store_true", help="print nothing but warnings and errors")
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    if args.batch_size is None:  # the data's default: 2048 (the paper's), 512 on the small synthetic data
        name = args.data.partition(":")[0]
        args.batch_size = LOADERS[name].batch_size if name in LOADERS else 2048
    return args


def _say(args, rank, *lines):
    if not args.quiet and rank == 0:
        for line in lines:
            print(line, flush=True)


def device_name(device) -> str:
    """The card or the processor a run's timings belong to."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform
        return platform.processor() or platform.machine()


def data_on_device(args, data: Interactions, device) -> bool:
    """--data-device: auto keeps the data on a GPU when they take at most a quarter of
    its memory (each batch then cut there: no host gather, no copy of its histories)."""
    if args.data_device == "cpu" or device.type != "cuda":
        return False
    return data.nbytes() <= torch.cuda.get_device_properties(device).total_memory // 4


def train_one(args, seed: int, world: int, rank: int, device) -> dict:
    """One training run with model seed `seed`; the result as written to JSON."""
    data_seed = seed if args.data_seed is None else args.data_seed
    run_args = copy.copy(args)
    run_args.seed, run_args.data_seed = seed, data_seed
    data = load_data(args.data, run_args)
    if data_on_device(args, data, device):
        data = data.to(device)
    train, valid, test = parts = data.split(seed=data_seed)
    _say(args, rank, describe(data, parts, args))
    torch.manual_seed(seed)
    model = build_model(args, data).to(device)
    if world > 1:  # before the optimiser: the swap makes new BatchNorm parameters
        distributed.convert_sync_batchnorm(model)
    graph = uses_graph(args, device, world)
    opt = ModelOptimizer(model, args.lr, args.optimizer, capturable=graph, l2=args.l2)
    per_epoch = len(train) // (args.batch_size * world)
    if per_epoch == 0:
        raise ValueError(f"{len(train)} training impressions do not fill one batch of {args.batch_size}"
                         f"{f' per process ({world})' if world > 1 else ''}: lower --batch-size")
    total = args.steps if args.steps is not None else max(1, int(round(args.epochs * per_epoch)))
    _say(args, rank, model_line(args, model), f"  {total} steps of {args.batch_size} ({per_epoch} per epoch), "
                                               f"model seed {seed}, data seed {data_seed}")
    step, history, best, stale = 0, [], {"step": None, "auc": -math.inf, "state": None, "validation": None}, 0
    if args.resume and args.checkpoint and os.path.exists(args.checkpoint):
        state = torch.load(args.checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, history, best, stale = state["step"], state["history"], state["best"], state["stale"]
    start_step = step
    net = distributed.wrap(model, device) if world > 1 else model
    sync_tables = world > 1 and model.sparse_grad

    def train_step(b):
        loss, objective = step_objective(net, b, args, device, cache=not graph)
        opt.zero_grad(set_to_none=True)
        objective.backward()
        if sync_tables:
            distributed.sync_sparse_grads(model.table_parameters())
        opt.step()
        return loss.detach()

    run_step = GraphedStep(train_step, model, opt.optimizers, device) if graph else train_step

    from tqdm import tqdm
    # A progress bar only on a terminal: in a log file its carriage returns run into the lines.
    progress = tqdm(total=total, initial=step, disable=args.quiet or rank != 0 or not sys.stdout.isatty(),
                    desc=args.model, dynamic_ncols=True, file=sys.stdout)
    # The first steps pay one-off costs (a CUDA graph's capture, cuBLAS and autotuning set-up): on a
    # GPU they outweigh hundreds of 0.5 ms steps, so the time per step counts the steps after them.
    running, train_seconds, warmup_seconds, t0 = None, 0.0, 0.0, time.time()
    stop = step >= total
    while not stop:
        epoch, skip = divmod(step, per_epoch)
        epoch_batches = batches(train, args.batch_size, shuffle=True, seed=seed * 100003 + epoch, rank=rank,
                                world_size=world, drop_last=True, fixed_width=graph)  # a graph: one shape
        for batch in itertools.islice(epoch_batches, skip, None):
            t_step = time.time()
            loss = run_step(batch if graph else to_device(batch, device))  # a graph copies it in
            step += 1
            if step - start_step <= WARMUP_STEPS:
                warmup_seconds += time.time() - t_step
            else:
                train_seconds += time.time() - t_step
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            progress.update()
            progress.set_postfix_str(f"train loss {running:.4g}")
            end_of_epoch = step % per_epoch == 0
            if step % args.eval_every == 0 or end_of_epoch or step == total:
                flag = torch.zeros(1)
                if rank == 0:
                    m = {"step": step, "epoch": step / per_epoch, "train_loss": running,
                         **evaluate(model, valid, args, device)}
                    history.append(m)
                    better = m["auc"] > best["auc"]
                    if better:
                        best = {"step": step, "auc": m["auc"], "validation": m,
                                "state": copy.deepcopy(model.state_dict())}
                        stale = 0
                    else:
                        stale += 1
                    mark = "  * best so far" if better else f"  (best: step {best['step']})"
                    line = f"step {step}/{total} (epoch {step / per_epoch:.2f}) validation: {_fmt(m, args.k)}" \
                           f"  | train loss {running:.4g}{mark}"
                    if not args.quiet:
                        progress.write(line)
                    if args.patience is not None and stale >= args.patience:
                        if not args.quiet:
                            progress.write(f"early stop: {stale} validations without a better AUC")
                        flag[0] = 1
                    if args.checkpoint:
                        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                                    "history": history, "best": best, "stale": stale, "args": vars(args)},
                                   args.checkpoint)
                if world > 1:
                    dist.broadcast(flag, 0)
                stop = bool(flag[0]) or step >= total
            if stop:
                break
    progress.close()
    seconds = time.time() - t0
    replicas = distributed.replica_difference(model) if world > 1 else None
    if rank != 0:
        return {}
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    test_metrics = evaluate(model, test, args, device)
    steps_run = step - start_step
    _say(args, rank, f"best step {best['step']} of {step} (validation AUC {best['auc']:.4f}); "
                     f"test at the best step: {_fmt(test_metrics, args.k)}")
    return {"seed": seed, "data_seed": data_seed, "device": str(device), "device_name": device_name(device),
            "seconds": seconds,
            # steps after the first WARMUP_STEPS (all of them when there are no more)
            "train_ms_per_step": (1e3 * train_seconds / (steps_run - WARMUP_STEPS) if steps_run > WARMUP_STEPS
                                  else 1e3 * warmup_seconds / max(1, steps_run)),
            "warmup_steps": min(steps_run, WARMUP_STEPS), "warmup_seconds": warmup_seconds,
            "optimizer": args.optimizer, "graph": bool(graph) and run_step.replays > 0,
            **({"graph_replays": run_step.replays, "eager_steps": run_step.eager_steps} if graph else {}),
            "model": {"variant": args.model, "d_att": model.d_att, "d_rep": model.d_rep, "d_search": model.d_search,
                      "att_widths": list(model.att_widths), "rep_widths": list(model.rep_widths),
                      "positions": model.position_mode, "position_rows": model.n_pos, "init": model.init_mode,
                      "identity_maps": bool(getattr(model, "identity_maps", False))},
            "data": {"description": data.description, "impressions": len(data),
                     "split": {"train": len(train), "validation": len(valid), "test": len(test)},
                     "history_len": data.history_len, "n_items": data.n_items, "n_cats": data.n_cats},
            "world_size": world,
            **({"replica_max_abs_diff": replicas, "table_gradients": "all-gather of touched rows" if sync_tables
                else "DDP all-reduce (dense)"} if world > 1 else {}),
            "steps": step, "best_step": best["step"], "best_validation": best["validation"],
            "validation": history, "test": test_metrics}


def summarize(runs: list) -> dict:
    """mean and std (sample, n - 1) of each test metric and the time per step over runs."""
    out = {}
    keys = [k for k, v in runs[0]["test"].items() if isinstance(v, float)]
    for name, values in [*((k, [r["test"][k] for r in runs]) for k in keys),
                         ("train_ms_per_step", [r["train_ms_per_step"] for r in runs]),
                         ("best_step", [r["best_step"] for r in runs])]:
        out[name] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def default_metrics_path(model: str) -> str:
    folder = os.path.join(tempfile.gettempdir(), RUNS_FOLDER)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"train-{model}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json")


def main(argv=None) -> dict:
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(args.device)
    if args.optimizer == "auto":
        args.optimizer = default_optimizer(device, args.graph == "auto" and world == 1)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # kernels (Triton's, a graph's streams) launch on the current device
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        if device.type == "cuda":
            distributed.set_nccl_defaults()
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    seeds = args.seeds or [args.seed]
    if len(seeds) > 1 and args.checkpoint:
        raise ValueError("--checkpoint saves one run: not with several --seeds")
    runs = []
    for seed in seeds:
        if len(seeds) > 1:
            _say(args, rank, f"=== seed {seed} ===")
        runs.append(train_one(args, seed, world, rank, device))
    result = {}
    if rank == 0:
        result = {"args": vars(args), **runs[0]} if len(runs) == 1 else {"args": vars(args), "runs": runs}
        if len(runs) > 1:
            result["summary"] = summary = summarize(runs)
            _say(args, rank, f"{len(runs)} seeds {seeds}, test at each run's best step, mean ± std:",
                 *(f"  {k}: {v['mean']:.4f} ± {v['std']:.4f}" for k, v in summary.items()))
        path = args.metrics_json or default_metrics_path(args.model)
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
        _say(args, rank, f"metrics: {path}")
    if world > 1:
        dist.barrier()  # every rank done before the group goes: a rank leaving early can abort a peer's gloo threads
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        distributed.exit_process(0)
