"""Data-parallel training of the reference models (torchrun; NCCL on GPUs, gloo on the CPU).

Each process holds a whole replica (tables included) and a disjoint shard of
every batch; after N steps every replica equals one process trained on the
whole batch (within float rounding), which takes three things:

- BatchNorm on the global batch. The MLP head normalises with the batch's
  statistics; per process that is half a batch's, so 2 x B/2 != 1 x B.
  `convert_sync_batchnorm` swaps every BatchNorm for `SyncBatchNorm`, whose
  statistics are all-reduced (differentiably). torch.nn.SyncBatchNorm refuses
  CPU tensors (gloo), hence this one, used on both backends.
- The dense weights' gradients: DistributedDataParallel's all-reduce (mean).
- The tables' sparse row gradients: not through DDP. ProcessGroupNCCL has no
  sparse all-reduce in stock PyTorch builds (torch 2.14: "NCCL does not
  support all_reduce with sparse tensors"; only NCCLX builds do), so DDP's
  sparse path would work under gloo and fail on GPUs. The tables are left out
  of DDP (`wrap`) and `sync_sparse_grads` all-gathers each table's (rows,
  values) after the backward: every process then holds every shard's entries,
  scaled by 1 / world (the mean DDP takes), as one uncoalesced gradient for
  RowAdam / SparseAdam. The same code runs under gloo and NCCL, so the CPU test
  covers the GPU path. Traffic: the touched rows (B·k·fields entries a shard
  and role), not the tables; a dense all-reduce would move every row every step.

The loss is the mean over the local batch and DDP averages: that is the whole
batch's mean only with equal shards (`batches(..., drop_last=True)` gives
them). The models have no dropout; every rank seeds alike, so random layers
would draw the same masks on every rank.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

# NVLink multicast (NVLS, symmetric memory) off by default: see the note and KINDS.md of the lab machines.
NCCL_DEFAULTS = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}


def set_nccl_defaults(environ=os.environ) -> dict:
    """Set NCCL_DEFAULTS where the environment does not say otherwise; returns what is in effect."""
    for name, value in NCCL_DEFAULTS.items():
        environ.setdefault(name, value)
    return {name: environ[name] for name in NCCL_DEFAULTS}


def _world(group=None) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward sums the gradients over processes: each
    process's input reaches every process's loss. (torch.distributed.nn's
    all_reduce is the same, deprecated in torch 2.14.)"""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return _AllReduceSum.apply(grad, ctx.group), None


class SyncBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the batch of every
    process together (two small differentiable all-reduces: the sum and count, then the
    squared deviations from the global mean, which rounds better than E[x²] - E[x]²).
    The running statistics take the global count, as one process with the whole
    batch would. Without an initialised process group, or in eval mode, it is BatchNorm1d."""

    process_group = None

    def forward(self, input):
        if not (self.training and _world(self.process_group) > 1):
            return super().forward(input)
        if input.dim() != 2:
            raise ValueError(f"SyncBatchNorm takes (batch, features) inputs, got shape {tuple(input.shape)}")
        # float64 statistics: a feature constant over the batch (the target's position
        # row) then gets exactly its value as the mean and a zero deviation, as the
        # one-process BatchNorm gives it; float32 sums of the shards leave rounding
        # there, which Adam's first steps turn into whole lr-sized moves.
        x, group = input.double(), self.process_group
        stats = _AllReduceSum.apply(torch.cat([x.sum(0), x.new_full((1,), x.shape[0])]), group)
        count = stats[-1]
        mean = stats[:-1] / count
        var = _AllReduceSum.apply((x - mean).pow(2).sum(0), group) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                n = float(count)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        out = (x - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Every nn.BatchNorm1d of `module` replaced, in place, by a SyncBatchNorm with
    its parameters and statistics (state_dict keys unchanged); returns module."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            sync = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                 child.track_running_stats, device=child.weight.device if child.affine else None)
            sync.load_state_dict(child.state_dict())
            sync.process_group = process_group
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child, process_group)
    return module


def wrap(model: nn.Module, device: torch.device, group=None) -> nn.Module:
    """The model for data-parallel training: BatchNorm synchronised, and with
    sparse table gradients (model.sparse_grad) the tables left out of DDP (their
    gradients go through sync_sparse_grads after each backward) and broadcast
    from rank 0 once, as DDP does for the parameters it keeps."""
    convert_sync_batchnorm(model, group)
    if getattr(model, "sparse_grad", False):
        tables = {id(t) for t in model.table_parameters()}
        names = [n for n, p in model.named_parameters() if id(p) in tables]
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
        with torch.no_grad():
            for t in model.table_parameters():
                dist.broadcast(t.data, 0, group=group)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, process_group=group)


def sync_sparse_grads(tables, group=None, coalesce=None) -> None:
    """Replace each table's sparse gradient by the mean over processes: the
    entries of every process (rank order), values / world, uncoalesced (a dense
    gradient, a small table's, is all-reduced: the mean). Three
    collectives for all the tables together: the entry counts (and a host
    synchronisation to read them), the rows, the flattened values (each padded
    to the largest process's). A table without a gradient counts 0 entries.
    coalesce (default: on CUDA tensors) coalesces the result: duplicate rows are
    then summed in one fixed order, so every replica's update is bit-identical
    (RowAdam's GPU update sums duplicates with float atomics, in no fixed order)."""
    world = _world(group)
    if world == 1:
        return
    tables = list(tables)
    if not tables:
        return
    device = tables[0].device
    rows, values, counts = [], [], []
    dense = [t.grad for t in tables if t.grad is not None and not t.grad.is_sparse]
    for g in dense:  # the mean, as DDP's all-reduce takes it
        dist.all_reduce(g, group=group)
        g.div_(world)
    for t in tables:
        g = t.grad
        if g is None or not g.is_sparse:  # none, or a small table's dense one (all-reduced above): 0 entries
            rows.append(torch.zeros(0, dtype=torch.long, device=device))
            values.append(torch.zeros(0, dtype=t.dtype, device=device))
        else:
            rows.append(g._indices()[0])
            values.append(g._values().reshape(-1))
        counts.append(rows[-1].numel())
    count = torch.tensor(counts, dtype=torch.long, device=device)
    every = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(every, count, group=group)
    every = torch.stack(every).cpu()  # (world, tables): the one host synchronisation
    widths = torch.tensor([t.shape[1] for t in tables])
    n_rows, n_values = every.sum(1), (every * widths).sum(1)
    flat_rows = _gather_padded(torch.cat(rows), n_rows, group)
    flat_values = _gather_padded(torch.cat(values), n_values, group)
    coalesce = device.type == "cuda" if coalesce is None else coalesce
    starts_r = torch.zeros(world, dtype=torch.long)
    starts_v = torch.zeros(world, dtype=torch.long)
    for i, t in enumerate(tables):
        if t.grad is not None and not t.grad.is_sparse:  # all-reduced above; it sent 0 entries
            continue
        r_parts, v_parts = [], []
        for w in range(world):
            n = int(every[w, i])
            r0, v0 = int(starts_r[w]), int(starts_v[w])
            r_parts.append(flat_rows[w][r0:r0 + n])
            v_parts.append(flat_values[w][v0:v0 + n * t.shape[1]])
            starts_r[w] += n
            starts_v[w] += n * t.shape[1]
        r = torch.cat(r_parts)
        v = torch.cat(v_parts).view(-1, t.shape[1]).div(world)
        g = torch.sparse_coo_tensor(r[None], v, t.shape, is_coalesced=False, check_invariants=False)
        t.grad = g.coalesce() if coalesce else g


def _gather_padded(x: torch.Tensor, sizes: torch.Tensor, group) -> list:
    """all_gather of a 1-D tensor whose length differs by process (sizes: every
    process's); each process's part, unpadded."""
    longest = int(sizes.max())
    padded = torch.zeros(longest, dtype=x.dtype, device=x.device)
    padded[:x.numel()] = x
    parts = [torch.empty_like(padded) for _ in range(len(sizes))]
    dist.all_gather(parts, padded, group=group)
    return [p[:int(n)] for p, n in zip(parts, sizes)]


@torch.no_grad()
def replica_difference(model: nn.Module, group=None) -> float:
    """The largest absolute difference of any parameter or buffer from rank 0's
    (0.0: the replicas are identical); every process gets it."""
    if _world(group) == 1:
        return 0.0
    worst = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    for t in [*model.parameters(), *model.buffers()]:
        if not t.is_floating_point():
            continue
        ref = t.detach().clone()
        dist.broadcast(ref, 0, group=group)
        worst = torch.maximum(worst, (t.detach() - ref).abs().max().double() if t.numel() else worst)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=group)
    return float(worst)


def exit_process(code: int = 0):
    """End a torchrun worker after its process group is destroyed: flush and
    os._exit. A plain interpreter exit runs C++ static destructors while gloo's
    threads may still be joinable, which aborts the process ("terminate called
    without an active exception", exit -6: seen about once in five CPU runs of
    two workers) after its work is done."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
