"""Search stage (scores + top-k) per backend, grouped so that implementations of
one shape sit side by side. GPU: L=10000 bf16, B in {8, 1024, 4096}; CPU: sized
for a 2-core machine."""
import itertools

import pytest
import torch

import dare_kernels
from dare_kernels.bench.search import BASELINE, backends_for, implementation
from dare_kernels.bench.timing import Shape, make_inputs

from conftest import DEVICE

GPU = DEVICE.type == "cuda"
BACKENDS = backends_for(DEVICE)
L = 10000
DS = [16, 32, 64, 128]
KS = [64, 128, 256]
if GPU:
    MAIN = [Shape(B, L, d, k) for B, d, k in itertools.product([8, 1024, 4096], DS, KS)]
    DTYPE_SUBSET = [Shape(1024, L, d, 128, dtype=dt) for d in (16, 128) for dt in ("float32", "float16")]
    TARGETS = [Shape(1, L, d, 128, T=1024) for d in (16, 32, 128)]  # serving: one history, 1024 candidates
    BACKWARD = [Shape(1024, L, d, 128) for d in (16, 128)]
else:
    MAIN = [Shape(B, L, d, k, dtype="float32") for B, d, k in itertools.product([8, 64], DS, KS)]
    DTYPE_SUBSET = [Shape(64, L, d, 128, dtype=dt) for d in (16, 128) for dt in ("bfloat16", "float16")]
    TARGETS = ([Shape(1, L, d, 128, T=64, dtype="float32") for d in (32, 128)]
               + [Shape(1, L, d, 128, T=1024, dtype=dt) for d, dt in ((16, "float32"), (32, "bfloat16"))])
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


def _run(bench, backend, shape):
    fn = implementation(backend)
    inputs = inputs_for(shape)
    state = {"i": 0}

    def call():
        q, K = inputs[state["i"] % len(inputs)]
        state["i"] += 1
        return fn(q, K, shape.k)

    bench.group = shape.label()
    bench.extra_info.update(backend=backend, shape=shape.label(), key_bytes=shape.key_bytes(), **shape.fields())
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
    bench.extra_info.update(backend=backend, shape=shape.label(), **shape.fields())
    step()  # warm-up outside the measurement
    bench(step)


# The layouts users' histories come in, each read by the kernels as it is, against
# what a user of that layout runs today. Rows of random length in [L/2, L].
LAYOUT_SHAPE = Shape(1024, L, 16, 128) if GPU else Shape(64, L, 16, 128, dtype="float32")
LAYOUTS = ["lengths", "left mask", "jagged"]


def layout_inputs(shape, layout):
    q, K = inputs_for(shape)[0]
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(shape.L // 2, shape.L + 1, (shape.B,), generator=g).to(DEVICE)
    pos = torch.arange(shape.L, device=DEVICE)
    if layout == "lengths":
        return q, K, dict(lengths=lengths)
    if layout == "left mask":  # the rows end at L, as FuxiCTR pads them
        return q, K, dict(mask=pos[None, :] >= shape.L - lengths[:, None])
    valid = pos[None, :] < lengths[:, None]
    offsets = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))
    return q, K[valid], dict(offsets=offsets)  # (N, d) values, TorchRec/FBGEMM style


def layout_baseline(q, keys, k, lengths=None, mask=None, offsets=None):
    """bmm + mask + topk; jagged values are padded first (by index_put, the
    positions precomputed: the cheapest padding a user can write)."""
    if offsets is not None:
        B, n = offsets.numel() - 1, offsets.diff()
        L = int(n.max())
        rows = torch.repeat_interleave(torch.arange(B, device=keys.device), n)
        cols = torch.arange(keys.shape[0], device=keys.device) - offsets[:-1].repeat_interleave(n)
        padded = keys.new_zeros(B, L, keys.shape[1])
        padded[rows, cols] = keys
        keys, lengths = padded, n
    scores = torch.bmm(keys, q[..., None])[..., 0]
    pos = torch.arange(keys.shape[1], device=keys.device)
    drop = ~mask if mask is not None else pos[None, :] >= lengths[:, None]
    return torch.topk(scores.float().masked_fill(drop, float("-inf")), k, dim=-1)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_search_layouts(bench, backend, layout):
    shape = LAYOUT_SHAPE
    q, keys, kw = layout_inputs(shape, layout)
    if backend == BASELINE:
        fn = lambda: layout_baseline(q, keys, shape.k, **kw)  # noqa: E731
    else:
        fn = lambda: dare_kernels.topk_attention(q, keys, shape.k, **kw, backend=backend)  # noqa: E731
    bench.group = f"layout {layout} {shape.label()}"
    label = "jagged (bmm+topk pads first)" if layout == "jagged" else layout
    bench.extra_info.update(backend=backend, shape=f"{label}, {shape.label()}", layout=layout, **shape.fields())
    fn()
    bench(fn)


# float8_e4m3fn keys with a bfloat16 query: at d = 32 they read the bytes of bf16 d = 16
# (target: within 1.1x of its time). Rows per d: bmm+topk on keys of the query's dtype (what
# users run today), then the fused backends on those keys and on fp8 keys ("<backend> fp8").
# On a CPU the query is float32, and the CPU backend upcasts fp8 keys to bfloat16 first.
FP8_SHAPES = [Shape(1024, L, d, 128) for d in (16, 32, 64)] if GPU else \
    [Shape(64, L, d, 128, dtype="float32") for d in (16, 32)]
FP8 = "float8_e4m3fn"


@pytest.mark.parametrize("keys", ["same", "fp8"])  # keys of the query's dtype, or fp8
@pytest.mark.parametrize("shape", FP8_SHAPES, ids=Shape.id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_search_fp8(bench, backend, shape, keys):
    if keys == "fp8" and backend == BASELINE:
        pytest.skip("bmm has no float8 keys: its row is the one on keys of the query's dtype")
    q, K = inputs_for(shape)[0]
    if keys == "fp8":
        K = K.to(torch.float8_e4m3fn)
    fn = implementation(backend)
    name = backend if keys == "same" else f"{backend} fp8"
    bench.group = f"fp8 {shape.label()}"
    # One summary line per shape holds both kinds of keys: its label names them.
    label = f"{shape.label()} query, {shape.dtype} keys (fp8 columns: {FP8} keys)"
    bench.extra_info.update(backend=name, shape=label, key_bytes=K.numel() * K.element_size(),
                            baseline=backend == BASELINE, **shape.fields(),
                            keys_dtype=FP8 if keys == "fp8" else shape.dtype)
    fn(q, K, shape.k)
    bench(lambda: fn(q, K, shape.k))
