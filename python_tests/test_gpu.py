"""What only a GPU can show: long rows, 64-bit offsets, CUDA-graph capture, and
the documented handling of out-of-range lengths (clamped, never read on the
host). The sample matrix in test_topk_attention.py covers the rest on CUDA."""
import os
import subprocess
import sys

import pytest
import torch

import dare_kernels
from dare_kernels import reference
from dare_kernels.ops import backend_status

from oracle import assert_matches_reference
from samples import Sample, embedding_input

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GPU_BACKENDS = ["cuda", "triton"]


def _need(backend):
    why = backend_status(backend, "cuda")
    if why:
        pytest.skip(why)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("L,B,d,k", [(10000, 16, 32, 128), (10000, 256, 16, 128), (100000, 4, 16, 256),
                                     (100000, 2, 64, 1024)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_long_rows(backend, L, B, d, k, dtype, seed):
    _need(backend)
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, d, device="cuda", generator=g).to(dtype)
    K = torch.randn(B, L, d, device="cuda", generator=g).to(dtype)
    lengths = torch.randint(k, L + 1, (B,), device="cuda", generator=g)
    lengths[0] = L
    s = Sample(q, K, k, lengths)
    assert_matches_reference(dare_kernels.topk_attention(q, K, k, lengths=lengths, backend=backend), s)


def _assert_exact_with_short_last_row(query, keys, k, dtype, backend):
    """Integer-valued CPU inputs, in `dtype` on the GPU, the last row 1234 keys
    shorter: the backend must match the reference exactly."""
    B, L = keys.shape[:2]
    q, K = query.to(dtype).cuda(), keys.to(dtype).cuda()
    lengths = torch.full((B,), L, device="cuda")
    lengths[-1] = L - 1234
    s = Sample(q, K, k, lengths, exact=True)
    assert_matches_reference(dare_kernels.topk_attention(q, K, k, lengths=lengths, backend=backend), s)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("B", [2, 300], ids=["split_rows", "row_per_program"])
@pytest.mark.parametrize("d", [16, 5])
@pytest.mark.parametrize("k", [100, 1024])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_adversarial_orders(backend, B, d, k, dtype, seed):
    """Orders that defeat a streaming bound, long enough to fill the candidate
    lists many times over, in both the split-row (merged) and one-row-per-program
    layouts: ascending rows (every key beats the running k-th best), rows of
    equal scores (every key ties it; order by position), descending and random
    rows. Integer-valued products: float32 accumulation is exact."""
    _need(backend)
    if backend == "triton" and k == 1024:
        pytest.skip("a 2048-key sort variant compiles for ~30 s; test_long_rows covers Triton at k = 1024")
    L = 7000
    g = torch.Generator().manual_seed(seed)
    pos = torch.arange(L, dtype=torch.float32)
    keys = torch.zeros(B, L, d)
    keys[0::4, :, 0] = pos
    keys[1::4, :, 0] = 1.0
    keys[2::4, :, 0] = L - pos
    keys[3::4] = torch.randint(-3, 4, keys[3::4].shape, generator=g).float()
    query = torch.zeros(B, d)
    query[:, 0] = 1.0
    query[3::4] = torch.randint(-2, 3, query[3::4].shape, generator=g).float()
    _assert_exact_with_short_last_row(query, keys, k, dtype, backend)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("B", [12, 40], ids=["2_targets_per_cta", "4_targets_per_cta"])
@pytest.mark.parametrize("d", [16, 128], ids=["d16", "d128"])
@pytest.mark.parametrize("k", [100, 256], ids=["k100", "k256"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_adversarial_orders_many_targets(backend, B, d, k, dtype, seed):
    """The adversarial orders of test_adversarial_orders as targets of one
    sequence (the CUDA many-targets kernel at 16-bit d = 128 and float32 d = 16:
    T >= 8; on an H100 or H200, B = 12 gives 2 targets per CTA, B = 40 gives 4;
    16-bit d = 16 and float32 d = 128 stream): per target,
    ascending scores, descending, all equal (the first k positions win), and
    random integers with many ties."""
    _need(backend)
    L, T = 7000, 24
    g = torch.Generator().manual_seed(seed)
    keys = torch.randint(-3, 4, (B, L, d), generator=g).float()
    keys[..., 0] = torch.arange(L, dtype=torch.float32)
    query = torch.zeros(B, T, d)
    query[:, 0::4, 0] = 1.0
    query[:, 1::4, 0] = -1.0
    query[:, 3::4, 1:] = torch.randint(-2, 3, query[:, 3::4, 1:].shape, generator=g).float()
    _assert_exact_with_short_last_row(query, keys, k, dtype, backend)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_lengths_out_of_range_are_clamped(backend, seed):
    _need(backend)
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(4, 16, device="cuda", generator=g)
    K = torch.randn(4, 300, 16, device="cuda", generator=g)
    bad = torch.tensor([-5, 301, 10**9, 7], device="cuda")
    got = dare_kernels.topk_attention(q, K, 20, lengths=bad, backend=backend)
    want = dare_kernels.topk_attention(q, K, 20, lengths=bad.clamp(0, 300), backend=backend)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert_matches_reference(got, Sample(q, K, 20, bad.clamp(0, 300)))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_graph_capture(backend, seed):
    _need(backend)
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(8, 32, device="cuda", generator=g).bfloat16()
    K = torch.randn(8, 5000, 32, device="cuda", generator=g).bfloat16()
    lengths = torch.randint(1, 5001, (8,), device="cuda", generator=g)
    fn = lambda: dare_kernels.topk_attention(q, K, 64, lengths=lengths, backend=backend)  # noqa: E731
    eager = fn()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # warm-up (autotuning, allocations) outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    K.copy_(torch.randn(K.shape, device="cuda", generator=g).bfloat16())
    graph.replay()
    torch.cuda.synchronize()
    assert_matches_reference(out, Sample(q, K, 64, lengths))
    assert not torch.equal(out[1], eager[1]), "the replay did not recompute"


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("layout", ["mask", "jagged"])
def test_layouts_never_synchronize(backend, layout, seed):
    """Masks and offsets are read by the kernels, never on the host: the calls run
    under torch's sync debug mode set to error, and offsets out of range are
    clamped as the reference clamps them."""
    _need(backend)
    g = torch.Generator(device="cuda").manual_seed(seed)
    B, L, d, k = 6, 3000, 32, 64
    q = torch.randn(B, d, device="cuda", generator=g).bfloat16()
    K = torch.randn(B, L, d, device="cuda", generator=g).bfloat16()
    if layout == "mask":
        kw = dict(mask=torch.rand(B, L, device="cuda", generator=g) < 0.6)
    else:
        K = K.reshape(B * L, d)
        # Out of range at both ends (clamped to [0, N]), an empty row; rows stay disjoint
        # (overlapping ones are undefined on the Triton backend: docs/contract.md).
        kw = dict(offsets=torch.tensor([-7, 100, 2900, 2900, 9000, 17000, 20000], device="cuda"))
    dare_kernels.topk_attention(q, K, k, **kw, backend=backend)  # warm-up: compilation, autotuning
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = dare_kernels.topk_attention(q, K, k, **kw, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_matches_reference(out, Sample(q, K, k, **kw))  # the oracle pads jagged rows clamped alike


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_64bit_offsets(backend, seed):
    """B·L·d past 2**31 elements: the last rows live beyond any 32-bit offset."""
    _need(backend)
    B, L, d = 120, 140000, 128  # 2.15e9 bf16 elements, 4.3 GB
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs 24 GiB of GPU memory")
    g = torch.Generator(device="cuda").manual_seed(seed)
    K = torch.empty(B, L, d, device="cuda", dtype=torch.bfloat16)
    for b in range(B):
        K[b] = torch.randn(L, d, device="cuda", generator=g)
    q = torch.randn(B, d, device="cuda", generator=g).bfloat16()
    scores, idx = dare_kernels.topk_attention(q, K, 64, backend=backend)
    for b in (0, B - 2, B - 1):
        assert_matches_reference((scores[b:b + 1], idx[b:b + 1]), Sample(q[b:b + 1], K[b:b + 1], 64))
    del K
    torch.cuda.empty_cache()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype, d", [(torch.bfloat16, 32), (torch.float32, 16), (torch.float32, 32)],
                         ids=["bfloat16_32", "float32_16", "float32_32"])
def test_many_targets_share_one_sequence(backend, dtype, d, seed):
    """The serving shape (CUDA: the many-targets kernel, float32 keys as 3xTF32):
    1024 targets of one long history, two rows, one cut short; the lists fold."""
    _need(backend)
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(2, 1024, d, device="cuda", generator=g).to(dtype)
    K = torch.randn(2, 10000, d, device="cuda", generator=g).to(dtype)
    lengths = torch.tensor([10000, 6000], device="cuda")
    assert_matches_reference(dare_kernels.topk_attention(q, K, 128, lengths=lengths, backend=backend),
                             Sample(q, K, 128, lengths))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_many_targets_query_at_an_odd_offset(backend, seed):
    """A 16-bit query whose data starts at an odd element (a view one element
    into its storage): the CUDA many-targets kernel reads the query as 32-bit
    words, so the op copies it first."""
    _need(backend)
    g = torch.Generator(device="cuda").manual_seed(seed)
    B, T, L, d = 1, 1024, 3000, 32
    q = torch.empty(1 + B * T * d, device="cuda", dtype=torch.bfloat16)[1:].view(B, T, d)
    q.copy_(torch.randn(B, T, d, device="cuda", generator=g))
    K = torch.randn(B, L, d, device="cuda", generator=g).bfloat16()
    assert q.data_ptr() % 4 == 2
    assert_matches_reference(dare_kernels.topk_attention(q, K, 64, backend=backend), Sample(q, K, 64))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_many_targets_float32_extremes(backend, seed):
    """float32 keys on the CUDA many-targets kernel (3xTF32) with dims at
    FLT_MAX, which tf32 rounding would take to infinity: against a zero query
    dim they add 0, against a tiny one a large finite score; and infinite keys."""
    _need(backend)
    g = torch.Generator(device="cuda").manual_seed(seed)
    B, T, L, d = 1, 1024, 3000, 16
    q = torch.randn(B, T, d, device="cuda", generator=g)
    K = torch.randn(B, L, d, device="cuda", generator=g)
    K[0, ::7, 0] = torch.finfo(torch.float32).max
    K[0, 5::11, 1] = float("inf")
    q[0, ::2, 0] = 0.0
    q[0, 1::2, 0] = 1e-30
    assert_matches_reference(dare_kernels.topk_attention(q, K, 64, backend=backend), Sample(q, K, 64))


@pytest.mark.parametrize("env, files", [
    # The CUDA many-targets kernel takes a batch only when its CTAs fill the GPU, which
    # the sample matrix's small batches do not: forced, three targets per CTA (groups
    # end part-full), for the op and for the ids op's many targets (keys gathered once),
    # and this file's long many-targets rows (their lists fold; k = 256: the default runs
    # take k = 100 through the same code), d = 16 included.
    ({"DARE_CUDA_TARGETS": "3"}, ["test_topk_attention.py", "test_topk_attention_embedding.py", "test_gpu.py"]),
    # The same with 16 warps a CTA, and with a list segment a warp (A/B knobs).
    ({"DARE_CUDA_TARGETS": "3", "DARE_CUDA_TARGETS_WARPS": "16"}, ["test_topk_attention.py", "test_gpu.py"]),
    ({"DARE_CUDA_TARGETS": "3", "DARE_CUDA_TARGETS_APPEND": "segments"}, ["test_topk_attention.py", "test_gpu.py"]),
    # Lists of kpow2 + a tile: the warps' segments hold one tile, a meeting after every tile.
    ({"DARE_CUDA_TARGETS": "3", "DARE_CUDA_TARGETS_APPEND": "segments", "DARE_CUDA_TARGETS_EXTRA": "1"},
     ["test_topk_attention.py", "test_gpu.py"]),
    # The ids op's many targets without the gathered keys: the fused kernel per target
    # (what keys over kGatherMaxBytes take).
    ({"DARE_CUDA_IDS_GATHER": "0"}, ["test_topk_attention_embedding.py"]),
], ids=["targets_forced", "targets_16_warps", "targets_warp_segments", "targets_one_tile_segments",
       "ids_fused_targets"])
def test_many_targets_paths_on_the_sample_matrix(env, files):
    """The matrix's T > 1 samples again on the CUDA paths the default choice skips
    at the matrix's sizes (see the parameters)."""
    _need("cuda")
    here = os.path.dirname(__file__)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                          *(os.path.join(here, f) for f in files), "-k",
                          "cuda and targets and not sample_matrix and not k100"],
                         env=dict(os.environ, **env), capture_output=True, text=True, cwd=here)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1], run.stdout[-500:]


def test_reference_on_gpu_matches_cpu(seed):
    g = torch.Generator().manual_seed(seed)
    q, K = torch.randn(3, 16, generator=g), torch.randn(3, 500, 16, generator=g)
    a = reference.topk_attention(q, K, 10, acc_dtype=torch.float64)
    b = reference.topk_attention(q.cuda(), K.cuda(), 10, acc_dtype=torch.float64)
    assert torch.equal(a[1], b[1].cpu())


def test_sparse_gradients_capture_in_a_cuda_graph(seed):
    """On a GPU sparse=True table gradients have one entry per selected slot (no
    host synchronisation): forward and backward capture in a CUDA graph, and a
    replay on new inputs gives the eager gradients."""
    e = embedding_input("emb_shared_positions", torch.float32, "cuda", seed)
    q = e.query.clone().requires_grad_()
    tables = [t.clone().requires_grad_() for t in e.tables]

    def step():
        scores = dare_kernels.topk_attention_embedding(q, tables, e.ids, e.k, lengths=e.lengths, sparse=True)[0]
        return torch.autograd.grad(torch.where(torch.isfinite(scores), scores, 0).sum(), [q, *tables])

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    with torch.no_grad():
        q.copy_(torch.randn_like(q))
        for t in tables:
            t.copy_(torch.randn_like(t))
    graph.replay()
    torch.cuda.synchronize()
    want = step()
    assert [g.is_sparse for g in captured] == [False] + [True] * len(tables)
    for got, ref in zip(captured, want):
        torch.testing.assert_close(got.to_dense() if got.is_sparse else got,
                                   ref.to_dense() if ref.is_sparse else ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("optimizer", ["rows", "dense"])
def test_train_graph_replay_trains_as_eager(optimizer, tmp_path):
    """--graph auto (each step one CUDA-graph replay, the warm-up steps undone, every
    batch one shape) trains as --graph off does (each batch cut to its longest
    history): the same validation losses step by step, up to the float32 atomics'
    summation order, and the run says every step replayed."""
    from dare_kernels import train
    common = ["--model", "dare", "--data", "synthetic", "--users", "300", "--steps", "12", "--eval-every", "4",
              "--batch-size", "128", "--optimizer", optimizer, "--quiet", "--device", "cuda", "--seed", "1"]
    runs = {g: train.main(common + ["--graph", g, "--metrics-json", str(tmp_path / f"{g}.json")])
            for g in ("auto", "off")}
    assert runs["auto"]["graph"] and not runs["off"]["graph"]
    assert runs["auto"]["graph_replays"] == 12 and runs["auto"]["eager_steps"] == 0  # one shape: every step replays
    for got, want in zip(runs["auto"]["validation"], runs["off"]["validation"]):
        assert got["step"] == want["step"]
        assert got["logloss"] == pytest.approx(want["logloss"], rel=1e-3, abs=1e-4)
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-3, abs=1e-4)


@pytest.mark.parametrize("task", ["conflict", "taobao"])
def test_batches_cut_on_the_gpu_equal_the_cpu_batches(task, tmp_path):
    """The training CLI keeps data that fit on the GPU (--data-device auto) and cuts
    each batch there: the same batches as from the CPU, for both history layouts
    (one row a user; a shared row with per-impression starts) and the ground truth."""
    _need("cuda")
    from dare_kernels.data import SyntheticConfig, batches, generate
    if task == "taobao":
        from dare_kernels.data import LOADERS
        from dare_kernels.data.synthetic import write_log
        path = str(tmp_path / "log.csv")
        write_log(path, users=60, min_len=250, max_len=400, seed=0)
        data = LOADERS["taobao"](path, seed=0)
    else:
        data = generate(SyntheticConfig(users=50, targets=4, max_len=120, min_len=10, seed=0, task="conflict"))
    gpu = data.to("cuda")
    assert gpu.nbytes() == data.nbytes() and gpu.history_items.is_cuda
    for fixed in (False, True):
        for a, b in zip(batches(data, 37, shuffle=True, seed=3, fixed_width=fixed),
                        batches(gpu, 37, shuffle=True, seed=3, fixed_width=fixed), strict=True):
            assert a.keys() == b.keys()
            for name in a:
                assert b[name].is_cuda and torch.equal(a[name], b[name].cpu()), name
