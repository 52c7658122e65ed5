"""Search from ids (topk_attention_embedding, one field) per implementation:
fused backends against F.embedding + bmm + topk (eager and, on GPU,
torch.compile'd), the dare op on looked-up keys, and a gather + dot kernel
with no selection (the floor). GPU: B=1024, L=10000, bf16, 1M and 64M rows;
CPU: B=64, float32, 1M rows."""
import pytest

from dare_kernels.bench.ids import IDS_BASELINE, default_ids_shapes, implementations, make_ids_inputs

from conftest import DEVICE

SHAPES = default_ids_shapes(DEVICE)
IMPLS = list(implementations(DEVICE))
_inputs = {}


def inputs_for(shape):
    if shape not in _inputs:
        _inputs.clear()
        if DEVICE.type == "cuda":
            import torch
            torch.cuda.empty_cache()
        _inputs[shape] = make_ids_inputs(shape, DEVICE)
    return _inputs[shape]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.id())
@pytest.mark.parametrize("impl", IMPLS)
def test_search_ids(bench, impl, shape):
    fn = implementations(DEVICE)[impl]
    table, batches = inputs_for(shape)
    state = {"i": 0}

    def call():
        q, ids = batches[state["i"] % len(batches)]
        state["i"] += 1
        return fn(q, table, ids, shape.k)

    bench.group = "ids " + shape.label()
    bench.extra_info.update(backend=impl, shape=shape.label(), baseline=impl == IDS_BASELINE, B=shape.B, L=shape.L,
                            d=shape.d, k=shape.k, T=0, dtype=shape.dtype)
    call()  # warm-up (compilation, allocations) outside the measurement
    bench(call)
