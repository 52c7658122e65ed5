"""Search stage (scores + top-k) per backend, grouped so that implementations of
one shape sit side by side. GPU: L=10000 bf16, B in {8, 1024, 4096}; CPU: sized
for a 2-core machine."""
import itertools

import pytest
import torch

from dare_kernels.bench import BASELINE, Shape, backends_for, implementation, make_inputs

from conftest import DEVICE

GPU = DEVICE.type == "cuda"
BACKENDS = backends_for(DEVICE)
L = 10000
DS = [16, 32, 64, 128]
KS = [64, 128, 256]
if GPU:
    MAIN = [Shape(B, L, d, k) for B, d, k in itertools.product([8, 1024, 4096], DS, KS)]
    DTYPE_SUBSET = [Shape(1024, L, d, 128, dtype=dt) for d in (16, 128) for dt in ("float32", "float16")]
    TARGETS = [Shape(1, L, d, 128, T=1024) for d in (32, 128)]
    BACKWARD = [Shape(1024, L, d, 128) for d in (16, 128)]
else:
    MAIN = [Shape(B, L, d, k, dtype="float32") for B, d, k in itertools.product([8, 64], DS, KS)]
    DTYPE_SUBSET = [Shape(64, L, d, 128, dtype=dt) for d in (16, 128) for dt in ("bfloat16", "float16")]
    TARGETS = [Shape(1, L, d, 128, T=64, dtype="float32") for d in (32, 128)]
    BACKWARD = [Shape(64, L, d, 128, dtype="float32") for d in (16, 128)]

_inputs = {}


def inputs_for(shape):
    # One shape's inputs at a time: the GPU shapes reach gigabytes.
    if shape not in _inputs:
        _inputs.clear()
        if GPU:
            torch.cuda.empty_cache()
        _inputs[shape] = make_inputs(shape, DEVICE)
    return _inputs[shape]


def fields(shape):
    """Numeric fields for the summary's numeric order (B, T, d, k, L), and dtype."""
    return {"B": shape.B, "T": shape.T, "L": shape.L, "d": shape.d, "k": shape.k, "dtype": shape.dtype}


def _run(bench, backend, shape):
    fn = implementation(backend)
    inputs = inputs_for(shape)
    state = {"i": 0}

    def call():
        q, K = inputs[state["i"] % len(inputs)]
        state["i"] += 1
        return fn(q, K, shape.k)

    bench.group = shape.label()
    bench.extra_info.update(backend=backend, shape=shape.label(), key_bytes=shape.key_bytes(), **fields(shape))
    call()  # warm-up (allocations, first launch) outside the measurement
    bench(call)


@pytest.mark.parametrize("shape", MAIN + DTYPE_SUBSET + TARGETS, ids=Shape.id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_search(bench, backend, shape):
    _run(bench, backend, shape)


@pytest.mark.parametrize("shape", BACKWARD, ids=Shape.id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_search_backward(bench, backend, shape):
    """Forward + backward of the selected scores w.r.t. query and keys."""
    fn = implementation(backend)
    q, K = inputs_for(shape)[0]
    q = q.detach().requires_grad_()
    K = K.detach().requires_grad_()

    def step():
        scores, _ = fn(q, K, shape.k)
        scores = scores.float()
        grads = torch.autograd.grad(scores.masked_fill(scores.isinf(), 0).sum(), (q, K))
        return grads

    bench.group = "backward " + shape.label()
    bench.extra_info.update(backend=backend, shape=shape.label(), **fields(shape))
    step()  # warm-up outside the measurement
    bench(step)
