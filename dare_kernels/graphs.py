"""A training step replayed from a CUDA graph: the whole step (forward, backward,
both optimisers) is one graph launch, so the host's ~300 kernel launches and
autograd's bookkeeping (milliseconds a step: the GPU's step is ~2 ms for DARE-16
at B=1024, L=10k on an H100, the eager one ~6 ms, bench/RESULTS.md) leave the
step. What capture needs, the models and optimisers here give: no host
synchronisation (sparse rows per slot, RowAdam on the device, Adam capturable),
static shapes (one graph per batch shape: the training CLI keeps every batch at
the data's history length) and state that lives in place.

Capture runs a few warm-up steps first (lazy state: the optimisers' moments,
Triton's compilation, cuBLAS workspaces); those steps would train the model on
the first batch, so afterwards the model's parameters and buffers, every
optimiser state (tensors in place: the graph holds their addresses) and the
CUDA random-number state are put back: a state that the warm-up created is made
fresh, as a new optimiser holds it (zeros: Adam's and RowAdam's step counts and
moments; RowAdam.fresh_state_ for its scratch)."""
from __future__ import annotations

import copy
import warnings
from typing import Callable, Dict, Optional

import torch

WARMUP_STEPS = 3


def _state(model: torch.nn.Module, optimizers) -> Dict[tuple, tuple]:
    """key -> (value, how to make it fresh: None, or (optimizer, param, state key))."""
    out = {("model", i): (t, None) for i, t in enumerate([*model.parameters(), *model.buffers()])}
    for n, o in enumerate(optimizers):
        for p, state in o.state.items():
            for key, value in state.items():
                out[("opt", n, id(p), key)] = (value, (o, p, key))
    return out


def _make_fresh(t: torch.Tensor, owner) -> None:
    """A state tensor the warm-up created, as a fresh optimiser holds it: the
    optimiser's fresh_state_(param, key, tensor) where it has one (RowAdam: its
    owner election starts at -1), else zeros (Adam's step count and moments)."""
    o, p, key = owner
    fresh = getattr(o, "fresh_state_", None)
    if fresh is not None:
        fresh(p, key, t)
    else:
        t.zero_()


class GraphedStep:
    """step(batch) -> loss as `fn(batch)` returns it, each batch shape captured
    once into a CUDA graph on `device` and replayed (the batch, on the CPU or the
    GPU, copied into the graph's static tensors first; the loss returned is the
    graph's own output tensor, overwritten by the next replay: read it first).
    fn(batch) must run one whole training step (zero_grad, forward, backward,
    optimiser step) and return the loss tensor; `optimizers` are the
    torch.optim optimisers fn steps (their state is put back after the warm-up).
    A shape beyond max_graphs, or any after a capture failed, runs fn eagerly; a
    failed capture warns once with its cause (.failed holds it). .replays and
    .eager_steps count the steps each way."""

    def __init__(self, fn: Callable[[dict], torch.Tensor], model: torch.nn.Module, optimizers,
                 device=None, max_graphs: int = 4):
        self.fn, self.model, self.optimizers, self.max_graphs = fn, model, list(optimizers), max_graphs
        self.device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.graphs: Dict[tuple, tuple] = {}
        self.failed: Optional[BaseException] = None
        self.replays = self.eager_steps = 0

    @staticmethod
    def signature(batch: dict) -> tuple:
        return tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(batch.items()))

    def _on_gpu(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _eager(self, batch: dict) -> torch.Tensor:
        self.eager_steps += 1
        return self.fn(self._on_gpu(batch))

    def __call__(self, batch: dict) -> torch.Tensor:
        key = self.signature(batch)
        entry = self.graphs.get(key)
        if entry is None:
            if self.failed is not None or len(self.graphs) >= self.max_graphs:
                return self._eager(batch)
            try:
                entry = self.graphs[key] = self.capture(batch)
            except Exception as e:  # the step runs eagerly from here on
                self.failed = e
                warnings.warn(f"the training step could not be captured in a CUDA graph; it runs eagerly: "
                              f"{type(e).__name__}: {str(e)[:300]}", stacklevel=2)
                return self._eager(batch)
        static, graph, loss = entry
        for k, v in batch.items():  # a CPU batch goes straight into the graph's inputs
            static[k].copy_(v, non_blocking=True)
        graph.replay()
        self.replays += 1
        return loss

    def capture(self, batch: dict, copy_batch: bool = True) -> tuple:
        """(static batch, graph, loss): fn captured on `batch` (on the GPU, or copied
        there), after the warm-up steps; copy_batch=False: the batch's own tensors
        are the graph's inputs. The model's and optimisers' state and the CUDA
        random-number state are put back whether or not the capture succeeds; its
        exception propagates."""
        with torch.cuda.device(self.device):
            before = {k: (v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v))
                      for k, (v, _) in _state(self.model, self.optimizers).items()}
            rng = torch.cuda.get_rng_state(self.device)
            static = {k: v.clone() for k, v in self._on_gpu(batch).items()} if copy_batch else batch
            stream = torch.cuda.current_stream(self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(stream)
            try:
                with torch.cuda.stream(side):
                    for _ in range(WARMUP_STEPS):
                        self.fn(static)
                stream.wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    loss = self.fn(static)
            finally:
                torch.cuda.synchronize(self.device)
                self._restore(before)
                torch.cuda.set_rng_state(rng, self.device)
        return static, graph, loss

    @torch.no_grad()
    def _restore(self, before: dict) -> None:
        for k, (value, owner) in _state(self.model, self.optimizers).items():
            saved = before.get(k)
            if torch.is_tensor(value):
                if torch.is_tensor(saved):
                    value.copy_(saved)
                elif k in before:  # a count the optimiser turned into a tensor: its value before
                    value.fill_(float(saved))
                else:  # created by the warm-up
                    _make_fresh(value, owner)
            elif k in before:
                owner[0].state[owner[1]][owner[2]] = saved
            else:
                del owner[0].state[owner[1]][owner[2]]
