"""Optimisers for models whose embedding tables take sparse row gradients.

A step of dense Adam reads and writes every row of every table (parameter,
gradient, two moments) whatever the batch touched: for DARE's tables, 72M
parameters a step where the batch's gradient has a few hundred thousand rows.
Lazy (sparse) Adam updates only the rows a gradient holds; an untouched row's
moments are not decayed and its parameter does not move (dense Adam keeps
moving a row on its old momentum after its last gradient). That is
`torch.optim.SparseAdam`'s semantics, and TensorFlow's LazyAdam's.

RowAdam computes SparseAdam's update without SparseAdam's sparse-tensor
bookkeeping (a sparse_mask and a sparse add per moment, each a coalesce). On a
GPU (triton_backend/row_adam.py: no sort, no host synchronisation, the step count
on the device, so a training step can be captured in a CUDA graph): two Triton
launches a table, which take the sparse gradient as it comes, duplicate rows and
all; one launch and the step's count for a small table's dense gradient. On the
CPU: one C++ call a table (dare::row_adam_: one sort of the entries, each touched
row read and written once). Without either: index ops on the coalesced gradient.
`make_optimizer` gives a model its optimiser: Adam on the dense weights, a
row-wise one on the tables.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from . import _library

OPTIMIZERS = ("rows", "sparse_adam", "dense")


class RowAdam(torch.optim.Optimizer):
    """SparseAdam's update (lazy Adam: only the rows a sparse COO gradient holds
    move; the step count is the parameter's, as SparseAdam's). Takes sparse
    gradients, coalesced or not (duplicate rows are summed), or dense ones (a small
    table's, see the models' sparse_min_rows: the rows with a nonzero gradient are
    the touched ones). The fused (GPU) update of a sparse gradient keeps a float32
    accumulator the table's size and an int32 per row, cleared between steps: the
    memory a dense gradient would take."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 fused=None):
        """fused: None picks the one-call update (Triton on CUDA tensors, the compiled
        dare::row_adam_ on the CPU) where available, else index ops; True: Triton
        (also on the CPU under TRITON_INTERPRET=1); False: index ops."""
        self.fused = fused
        if not lr >= 0.0:
            raise ValueError(f"RowAdam: lr must be >= 0, got {lr}")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"RowAdam: betas must be in [0, 1), got {betas}")
        if not eps >= 0.0:
            raise ValueError(f"RowAdam: eps must be >= 0, got {eps}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                elif not torch.is_tensor(state["step"]):  # a SparseAdam-style count
                    state["step"] = torch.tensor(float(state["step"]), device=p.device)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                if not grad.is_sparse:
                    if self._fused(p) and p.dtype == torch.float32 and p.is_contiguous() and m.is_contiguous():
                        from .triton_backend import row_adam
                        row_adam.dense_row_adam_(p, m, v, state["step"], grad, lr, beta1, beta2, eps)
                    else:
                        _dense_rows(p, grad, m, v, state["step"], lr, beta1, beta2, eps)
                    continue
                if self._fused(p):
                    from .triton_backend import row_adam
                    if "row_sums" not in state:
                        state["row_sums"], state["row_owner"] = row_adam.scratch(p)
                    row_adam.row_adam_(p, m, v, state["row_sums"], state["row_owner"], state["step"],
                                       grad._indices()[0], grad._values().contiguous(), lr, beta1, beta2, eps)
                    continue
                if self.fused is None and p.device.type == "cpu" and _library.loaded:
                    torch.ops.dare.row_adam_(p, m, v, state["step"], grad._indices()[0],
                                             grad._values().to(p.dtype), lr, beta1, beta2, eps)
                    continue
                state["step"] += 1
                grad = grad if grad.is_coalesced() else grad.coalesce()
                rows, values = grad.indices()[0], grad.values()
                if values.numel() == 0:
                    continue
                values = values.to(p.dtype)
                step = float(state["step"])
                step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
                m_rows = m.index_select(0, rows).lerp_(values, 1 - beta1)
                v_rows = v.index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
                m.index_copy_(0, rows, m_rows)
                v.index_copy_(0, rows, v_rows)
                p.index_add_(0, rows, m_rows.div_(v_rows.sqrt_().add_(eps)), alpha=-step_size)
        return loss

    @torch.no_grad()
    def fresh_state_(self, p: torch.Tensor, key: str, t: torch.Tensor) -> None:
        """Puts state[p][key] back, in place, to what a fresh step would create
        (dare_kernels.graphs undoes its warm-up steps so)."""
        t.fill_(-1 if key == "row_owner" else 0)

    def _fused(self, p: torch.Tensor) -> bool:
        if self.fused is not None:
            return bool(self.fused)
        from . import triton_backend
        return p.is_cuda and p.is_contiguous() and triton_backend.unavailable(p.device) is None


def _dense_rows(p, grad, m, v, step, lr, beta1, beta2, eps):
    """SparseAdam's update from a dense gradient: the touched rows are those with a
    nonzero gradient (a small table's: the models' sparse_min_rows), the others keep
    their moments and values. Elementwise on the device, no synchronisation."""
    step += 1
    s = step.double()
    step_size = lr * (1 - beta2 ** s).sqrt() / (1 - beta1 ** s)
    g = grad.to(p.dtype)
    touched = (g != 0).any(1, keepdim=True)
    m.copy_(torch.where(touched, m * beta1 + g * (1 - beta1), m))
    v.copy_(torch.where(touched, v * beta2 + g * g * (1 - beta2), v))
    p.sub_(torch.where(touched, m / (v.sqrt() + eps) * step_size.to(p.dtype), 0))


class ModelOptimizer:
    """One optimiser object over a model's parameter groups: Adam on the dense
    weights and, for the embedding tables of a model built with sparse_grad, the
    row-wise RowAdam ("rows") or torch.optim.SparseAdam ("sparse_adam"); "dense":
    Adam on everything (the paper's setting; the model must take dense
    gradients). zero_grad / step / state_dict / load_state_dict as an Optimizer's.
    capturable: the step can be captured in a CUDA graph (Adam's capturable; the
    fused RowAdam always is). l2: the paper's L2 penalty l2·Σp² on the model's
    dense_parameters() (weights, not biases or tables), applied as Adam's
    weight_decay = 2·l2 (its gradient, added inside the fused update: no extra
    launches, the same step as the penalty in the loss)."""

    def __init__(self, model: torch.nn.Module, lr: float, kind: str = "rows", fused=None, capturable: bool = False,
                 l2: float = 0.0):
        if kind not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")
        sparse = bool(getattr(model, "sparse_grad", False))
        if sparse == (kind == "dense"):
            raise ValueError(f"optimizer {kind!r} needs a model built with sparse_grad={kind != 'dense'}, "
                             f"got sparse_grad={sparse}")
        tables = model.table_parameters() if sparse else []
        skip = {id(t) for t in tables}
        rest = [p for p in model.parameters() if id(p) not in skip]
        if fused is None:
            fused = all(p.is_cuda for p in rest) and bool(rest)
        self.kind = kind
        if l2 and not hasattr(model, "dense_parameters"):
            raise ValueError("l2 needs a model with dense_parameters() (the weights it applies to)")
        decayed = {id(p) for p in model.dense_parameters()} if l2 else set()
        self.capturable = capturable
        groups = [{"params": [p for p in rest if id(p) in decayed], "weight_decay": 2.0 * l2},
                  {"params": [p for p in rest if id(p) not in decayed], "weight_decay": 0.0}]
        self.optimizers = [torch.optim.Adam([gr for gr in groups if gr["params"]], lr=lr, fused=fused or None,
                                            capturable=capturable)]
        if kind == "rows" and tables:
            self.optimizers.append(RowAdam(tables, lr=lr))
        elif tables:  # SparseAdam takes sparse gradients only: tables with dense ones (small) to RowAdam, alike
            rows = {id(t) for t in getattr(model, "sparse_table_parameters", model.table_parameters)()}
            sparse_tables = [t for t in tables if id(t) in rows]
            dense_tables = [t for t in tables if id(t) not in rows]
            self.optimizers += ([torch.optim.SparseAdam(sparse_tables, lr=lr)] if sparse_tables else []) + \
                ([RowAdam(dense_tables, lr=lr)] if dense_tables else [])

    def zero_grad(self, set_to_none: bool = True):
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self):
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict:
        return {"kind": self.kind, "optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict):
        if state.get("kind") != self.kind:
            raise ValueError(f"checkpoint optimizer {state.get('kind')!r} differs from {self.kind!r}")
        for o, s in zip(self.optimizers, state["optimizers"]):
            if len(s["param_groups"]) != len(o.param_groups):
                raise ValueError(f"checkpoint's {type(o).__name__} has {len(s['param_groups'])} parameter groups, "
                                 f"this one {len(o.param_groups)}: saved with --l2 0 and resumed with a nonzero --l2 "
                                 f"(or the reverse), or saved before the L2 penalty moved into Adam's weight decay")
            o.load_state_dict(s)
            for group in o.param_groups:  # as this run needs them, not as the checkpoint's run did
                if "capturable" in group:
                    group["capturable"] = self.capturable


def make_optimizer(model: torch.nn.Module, lr: float, kind: str = "rows") -> ModelOptimizer:
    """The reference models' optimiser (see ModelOptimizer)."""
    return ModelOptimizer(model, lr, kind)
