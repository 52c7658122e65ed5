"""Paths of the Triton backend that the shared matrix reaches only at GPU sizes or by
chance: forced splits (the row's last program selects, bounded by every program's group
maxima; in every layout), tiny chunks (too few group maxima: the bound comes from a pass
over the order keys), one chunk per row (a select step far larger than the pending list: folded in
windows when ties or sorted rows defeat the bound), the large-k path and autotuning. On
CPU under TRITON_INTERPRET=1, compiled on a GPU."""
import pytest
import torch

from dare_kernels import reference
from dare_kernels.ops import backend_status

from oracle import assert_matches_reference
from samples import EmbeddingSample, Sample, embedding_input, embedding_layout, sample_input, with_layout

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(backend_status("triton", DEVICE) is not None,
                                reason=f"Triton backend: {backend_status('triton', DEVICE)}")
NAMES = ["basic", "targets", "lengths", "lengths_targets_int32", "ties", "all_equal", "nan_inf",
         "monotone", "neg_scale", "k_eq_L", "d1", "odd_d", "duplicates", "duplicates_odd_d"]


def _search():
    from dare_kernels.triton_backend import search
    return search


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("split", [None, 1, 3])
@pytest.mark.parametrize("tile", [16, 4096], ids=["chunk16", "one_chunk"])
def test_paths(name, split, tile, seed):
    search = _search()
    s = sample_input(name, torch.float32, DEVICE, seed)
    out = search._topk_attention(*s.args(), split=split, cfg=search.Config(tile, 1))
    assert_matches_reference(out, s)


@pytest.mark.parametrize("name", ["basic", "lengths", "ties", "nan_inf", "monotone", "k_eq_L"])
def test_large_k_path(name, seed):
    search = _search()
    s = sample_input(name, torch.float16, DEVICE, seed)
    assert_matches_reference(search._topk_attention(*s.args(), fused_max_k=0), s)


def test_one_large_k_path(monkeypatch, seed):
    """Both ops take k above the fused kernels' limit (fused_max_k; FUSED_MAX_K, 1024, by
    default) to the reference, through the one large-k path; k within it, to the kernels."""
    search = _search()
    assert search.FUSED_MAX_K == 1024
    s = sample_input("lengths", torch.float32, DEVICE, seed)
    e = embedding_input("emb_shared_positions", torch.float32, DEVICE, seed)

    def spy(calls, f):
        def counted(*a, **kw):
            calls.append(a)
            return f(*a, **kw)
        return counted

    for op, args, sample in (("topk_attention", s.args(), s), ("topk_attention_embedding", e.args(), e.as_sample())):
        calls = []
        monkeypatch.setattr(reference, op, spy(calls, getattr(reference, op)))
        run = getattr(search, "_" + op)
        large, fused = run(*args, fused_max_k=sample.k - 1), run(*args, fused_max_k=sample.k)
        assert len(calls) == 1  # the first only
        assert_matches_reference(large, sample)
        assert_matches_reference(fused, sample)


@pytest.mark.parametrize("layout", ["mask", "left", "jagged"])
@pytest.mark.parametrize("split", [2, 5])
def test_split_layouts(layout, split, seed):
    """Split rows in every layout, both ops: rows of very unequal lengths (jagged: the split
    is planned from the mean; one row is empty, two shorter than k), several chunks per
    program (the mask read ahead of the keys), two targets (jagged: order keys shared by
    the rows of a target). Small integers: float32 is exact, so the reference's result
    is the answer bit for bit."""
    search = _search()
    g = torch.Generator().manual_seed(seed)
    B, T, L, k = 4, 2, 70, 9

    def ints(*shape):
        return torch.randint(-3, 4, shape, generator=g).float().to(DEVICE)

    lengths = torch.tensor([L, 0, 3, 41], device=DEVICE)
    s = with_layout(Sample(ints(B, T, 5), ints(B, L, 5), k, lengths), layout, g)
    cfg = search.Config(16, 1)
    out = search._topk_attention(*s.args(), split=split, cfg=cfg)
    want = reference.topk_attention(*s.args())
    assert torch.equal(out[0], want[0]) and torch.equal(out[1], want[1])
    ids = [torch.randint(0, n, (B, L), generator=g).to(DEVICE) for n in (20, 7)]
    e = embedding_layout(EmbeddingSample(ints(B, T, 5), [ints(20, 3), ints(7, 2)], ids, k, lengths), layout, g)
    out = search._topk_attention_embedding(*e.args(), split=split, cfg=cfg)
    want = reference.topk_attention_embedding(*e.args())
    assert torch.equal(out[0], want[0]) and torch.equal(out[1], want[1])


def test_plan_splits_small_batches():
    search = _search()
    dev = torch.device(DEVICE)
    assert search.plan(8, 10000, 32, 128, dev).split > 1
    assert search.plan(4096, 10000, 32, 128, dev).split == 1
    p = search.plan(2, 10000, 32, 1024, dev)
    assert p.split <= search.MAX_SPLIT and p.split * p.group_maxima <= p.row_maxima_pow2 <= search.MAX_GROUPS
    assert search.plan(1, 5, 32, 4, dev, split=64).split == 5  # never more programs than keys


@pytest.mark.skipif(not torch.cuda.is_available(), reason="autotuning runs on a GPU")
def test_autotuned_launch(monkeypatch, seed):
    search = _search()
    monkeypatch.setattr(search, "AUTOTUNE", True)
    g = torch.Generator(device="cuda").manual_seed(seed)
    B, L, d, k = 128, 8192, 16, 64  # B*L = AUTOTUNE_MIN_KEYS
    q = torch.randn(B, d, device="cuda", generator=g).bfloat16()
    K = torch.randn(B, L, d, device="cuda", generator=g).bfloat16()
    out = search._topk_attention(q, K, k)
    assert_matches_reference(out, Sample(q, K, k))
    tuner = search.autotuner(search.plan(B, L, d, k, q.device))
    assert len(tuner.cache) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fake tensors of a triton_op need a GPU")
def test_opcheck(seed):
    _search()
    s = sample_input("lengths", torch.float32, "cuda", seed)
    s.query.requires_grad_()
    s.keys.requires_grad_()
    torch.library.opcheck(torch.ops.dare.topk_attention_triton, s.args())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="tracing a triton_op needs a GPU")
def test_traced_and_compiled(seed):
    """The API traces to the Triton op (make_fx, the tracer under torch.compile and
    export), compiles without graph breaks, and inductor inlines the Triton kernels
    themselves; all give the eager result."""
    from torch._inductor.utils import run_and_get_code
    import dare_kernels
    from torch.fx.experimental.proxy_tensor import make_fx
    s = sample_input("lengths", torch.float32, "cuda", seed)

    def search(q, keys, lengths):
        return dare_kernels.topk_attention(q, keys, s.k, lengths=lengths, scale=0.5, backend="triton")

    want = search(s.query, s.keys, s.lengths)
    gm = make_fx(search)(s.query, s.keys, s.lengths)
    assert "dare.topk_attention_triton" in gm.code
    for got in (gm(s.query, s.keys, s.lengths),
                torch.compile(search, backend="aot_eager", fullgraph=True)(s.query, s.keys, s.lengths)):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    got, code = run_and_get_code(torch.compile(search, fullgraph=True), s.query, s.keys, s.lengths)
    assert any("_search_kernel" in c for c in code), "inductor did not see the Triton kernel"
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

