"""Every available backend, on every device, over the whole sample matrix,
against the float64 reference; plus opcheck, torch.compile and gradients."""
import dataclasses
import os

import pytest
import torch

import dare_kernels
from dare_kernels import reference

from conftest import DEVICES, skip_unless_available, skip_unless_compiled
from oracle import assert_matches_reference
from samples import DTYPES, LAYOUTS, SAMPLES, Sample, sample_input


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(SAMPLES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", dare_kernels.BACKENDS)
def test_matches_reference(backend, device, dtype, name, layout, seed):
    skip_unless_available(backend, device, dtype, SAMPLES[name][1], layout, name=name)
    s = sample_input(name, dtype, device, seed, layout)
    out = dare_kernels.topk_attention(s.query, s.keys, s.k, **s.kwargs(), backend=backend)
    assert_matches_reference(out, s)


# float8_e4m3fn keys (1 byte a dim) with a bfloat16 query: every kernel path (short
# and long vectors, generic d, split rows, the many-targets shape, large k) and layout.
FP8_SAMPLES = ["basic", "d1", "k1", "targets", "lengths", "ties", "nan_inf", "neg_scale", "monotone", "scaled",
               "noncontiguous", "empty_batch", "odd_d", "long", "big_k", "huge_k", "wide", "targets_mma",
               "duplicates", "duplicates_long"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", FP8_SAMPLES)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", dare_kernels.BACKENDS)
def test_fp8_keys_match_reference(backend, device, name, layout, seed):
    interpreted = backend == "triton" and device == "cpu"
    if interpreted and name == "nan_inf":
        pytest.skip("the Triton interpreter reads fp8 NaN as a number")
    if interpreted and (layout != "padded" or name == "targets_mma"):
        pytest.skip("fp8 keys change the load alone: padded single-target rows under the Triton interpreter")
    qdtype = torch.float32 if interpreted else torch.bfloat16  # the interpreter has no bfloat16
    skip_unless_available(backend, device, qdtype, SAMPLES[name][1], layout, name=name)
    s = sample_input(name, qdtype, device, seed, layout)
    s.keys = s.keys.to(torch.float8_e4m3fn)  # the oracle scores these rounded keys, exactly representable
    out = dare_kernels.topk_attention(s.query, s.keys, s.k, **s.kwargs(), backend=backend)
    assert_matches_reference(out, s)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", dare_kernels.BACKENDS)
def test_fp8_keys_gradient_reaches_query_only(backend, device, seed):
    skip_unless_available(backend, device, torch.float32)
    s = sample_input("lengths", torch.float32, device, seed)
    q = s.query.clone().requires_grad_()
    K8 = s.keys.to(torch.float8_e4m3fn).requires_grad_()
    scores, idx = dare_kernels.topk_attention(q, K8, s.k, lengths=s.lengths, backend=backend)
    g = torch.randn(scores.shape, device=device)
    scores.backward(g)
    assert K8.grad is None, "a gradient reached the fp8 keys"
    gq = q.grad
    q_ref = s.query.clone().requires_grad_()
    ref, ref_idx = reference.topk_attention(q_ref, K8.float(), s.k, s.lengths)
    assert torch.equal(idx, ref_idx)
    (want,) = torch.autograd.grad(ref, (q_ref,), g)
    torch.testing.assert_close(gq, want)


@pytest.mark.parametrize("device", DEVICES)
def test_raw_op_matches_api(device, seed):
    skip_unless_compiled(device)
    s = sample_input("lengths", torch.float32, device, seed)
    raw = torch.ops.dare.topk_attention(*s.args())
    api = dare_kernels.topk_attention(s.query, s.keys, s.k, lengths=s.lengths, scale=s.scale)
    assert torch.equal(raw[0], api[0]) and torch.equal(raw[1], api[1])


@pytest.mark.parametrize("device", DEVICES)
def test_auto_picks_compiled_backend(device):
    skip_unless_compiled(device)
    assert dare_kernels.available_backends(device)[0] == device


def test_cuda_stand_in_is_a_table_entry(monkeypatch):
    """Which backend runs the raw ops' CUDA tensors when the compiled library has no CUDA
    kernels is the backend table's `stands_in` entry (Triton), registered by
    backends.register_stand_ins: only where the library lacks the device and the
    backend runs there, and as the backend's direct run."""
    from dare_kernels import _library, backends
    assert [b.name for b in backends.TABLE if "cuda" in b.stands_in] == ["triton"]
    registered, ran = [], []
    monkeypatch.setattr(torch.library, "register_kernel", lambda name, dev, fn: registered.append((name, dev, fn)))
    monkeypatch.setattr(_library, "loaded", True)
    for with_cuda, runs in ((True, True), (False, False), (False, True)):
        monkeypatch.setattr(_library, "with_cuda", with_cuda)
        monkeypatch.setattr(backends, "TABLE", tuple(
            dataclasses.replace(b, unavailable=lambda device, runs=runs: None if runs else "no GPU",
                                run=lambda op, args, direct: ran.append((op, args, direct)))
            if b.name == "triton" else b for b in backends.TABLE))
        registered.clear()
        backends.register_stand_ins()
        want = ["dare::topk_attention", "dare::topk_attention_embedding"] if not with_cuda and runs else []
        assert [name for name, _, _ in registered] == want and all(dev == "cuda" for _, dev, _ in registered)
    registered[1][2]("q", "tables", "ids", 3)
    assert ran == [("topk_attention_embedding", ("q", "tables", "ids", 3), True)]


@pytest.mark.parametrize("name", ["basic", "targets", "lengths", "empty_batch", "noncontiguous"])
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, name, seed):
    skip_unless_compiled(device)
    s = sample_input(name, torch.float32, device, seed)
    s.query.requires_grad_(s.query.numel() > 0)
    s.keys.requires_grad_(s.keys.numel() > 0)
    torch.library.opcheck(torch.ops.dare.topk_attention, s.args())


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device, seed):
    skip_unless_compiled(device)
    s = sample_input("lengths", torch.float32, device, seed)

    def search(q, keys, lengths):
        scores, idx = torch.ops.dare.topk_attention(q * 2, keys, s.k, lengths, 0.5)
        return torch.softmax(scores, -1), idx

    eager = search(s.query, s.keys, s.lengths)
    compiled = torch.compile(search, backend="aot_eager", fullgraph=True, dynamic=True)(s.query, s.keys, s.lengths)
    torch.testing.assert_close(compiled[0], eager[0], equal_nan=True)
    assert torch.equal(compiled[1], eager[1])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["basic", "targets", "lengths", "lengths_targets_int32", "scaled"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", dare_kernels.BACKENDS)
def test_gradients_match_reference(backend, device, name, layout, seed):
    """In every layout: the NaN keys of positions that take no part get zero gradients."""
    skip_unless_available(backend, device, torch.float32, SAMPLES[name][1], layout, name=name, backward=True)
    s = sample_input(name, torch.float32, device, seed, layout)
    q = s.query.clone().requires_grad_()
    K = s.keys.clone().requires_grad_()
    scores, idx = dare_kernels.topk_attention(q, K, s.k, **s.kwargs(), backend=backend)
    assert not idx.requires_grad
    g = torch.randn(scores.shape, dtype=torch.float32, device=device)
    gq, gk = torch.autograd.grad(scores, (q, K), g)

    q_ref = s.query.clone().requires_grad_()
    K_ref = s.keys.clone().requires_grad_()
    ref_s, ref_i = reference.topk_attention(q_ref, K_ref, s.k, **s.kwargs(), acc_dtype=torch.float64)
    # Different selections (float32 near-ties) have different gradients.
    assert torch.equal(idx, ref_i), "selection differs from the float64 reference"
    valid = ref_i >= 0
    rq, rk = torch.autograd.grad(ref_s, (q_ref, K_ref), torch.where(valid, g.double(), 0.0))
    torch.testing.assert_close(gq, rq, rtol=1e-4, atol=1e-4, equal_nan=True)
    torch.testing.assert_close(gk, rk, rtol=1e-4, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("name", ["basic", "targets", "lengths", "scaled"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", dare_kernels.BACKENDS)
def test_low_precision_gradients_round_once(backend, device, dtype, name, seed):
    """16-bit inputs: the gradients equal those of float32 copies of the same
    values, rounded once to the input dtype (no accumulation in 16 bits, none
    rounded twice), with one target per row and with several."""
    skip_unless_available(backend, device, dtype, SAMPLES[name][1])
    s = sample_input(name, dtype, device, seed)
    g = torch.randn((*s.query.shape[:-1], s.k), generator=torch.Generator().manual_seed(seed)).to(device)
    grads = []
    for q0, K0 in ((s.query, s.keys), (s.query.float(), s.keys.float())):
        q, K = q0.clone().requires_grad_(), K0.clone().requires_grad_()
        scores, idx = dare_kernels.topk_attention(q, K, s.k, lengths=s.lengths, scale=s.scale, backend=backend)
        grads.append((idx, *torch.autograd.grad(scores, (q, K), g)))
    (idx16, gq16, gk16), (idx32, gq32, gk32) = grads
    assert torch.equal(idx16, idx32), "16-bit inputs widen exactly: the selections must agree"
    assert gq16.dtype == dtype and gk16.dtype == dtype
    assert torch.equal(gq16, gq32.to(dtype))
    assert torch.equal(gk16, gk32.to(dtype))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_broadcast_keys_read_in_place(backend, seed):
    """expand()ed keys (stride 0 over B or L) give the result of their contiguous
    copy; the CPU kernel reads them through their strides, without the copy."""
    skip_unless_available(backend, "cpu", torch.float32)
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(1, 300, 16, generator=g)
    q = torch.randn(4, 3, 16, generator=g)
    lengths = torch.tensor([300, 17, 256, 0])
    for K in (keys.expand(4, -1, -1), keys[:, :1].expand(4, 300, 16)):
        got = dare_kernels.topk_attention(q, K, 20, lengths=lengths, backend=backend)
        want = dare_kernels.topk_attention(q, K.contiguous(), 20, lengths=lengths, backend=backend)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    if backend == "cpu":
        # A copy of these keys would take 2 * 2**30 * 64 * 4 bytes = 512 GiB.
        huge = torch.randn(1, 1, 64, generator=g).expand(2, 2**30, 64)
        scores, idx = dare_kernels.topk_attention(torch.randn(2, 64, generator=g), huge, 3,
                                                  lengths=torch.tensor([5, 2]), backend="cpu")
        assert idx.tolist() == [[0, 1, 2], [0, 1, -1]]
        assert scores[0, 0] == scores[0, 2] and scores[1, 0] == scores[1, 1]


@pytest.mark.parametrize("layout", ["lengths", "mask"])
@pytest.mark.parametrize("d", [37, 16, 21, 32, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_cpu_target_groups_are_invisible(dtype, d, layout, seed):
    """The CPU kernel scores a chunk of keys for several targets of a row at once
    (how many depends on the thread count; 8 or more of up to 32 dims: the chunk
    transposed, dim-major, on an AVX-512 CPU): every target's result is its own
    single-target call's, bit for bit. 19 targets: items of 19 (one thread), 10
    (three) and 7 (five)."""
    skip_unless_compiled("cpu")
    g = torch.Generator().manual_seed(seed)
    B, T, L, k = 2, 19, 1003, 50
    q = torch.randn(B, T, d, generator=g).to(dtype)
    K = torch.randn(B, L, d, generator=g).to(dtype)
    K[:, 500:520] = K[:, 7:8]  # ties across chunks
    if layout == "lengths":
        kw = dict(lengths=torch.tensor([L, 389]))
    else:  # chunks kept whole, dropped whole and kept in part
        mask = torch.rand(B, L, generator=g) < 0.7
        mask[0, 256:512] = False
        mask[1, :300] = True
        kw = dict(mask=mask)
    alone = [dare_kernels.topk_attention(q[:, t], K, k, **kw, backend="cpu") for t in range(T)]
    threads = torch.get_num_threads()
    try:
        for n in (1, 3, 5):
            torch.set_num_threads(n)
            scores, idx = dare_kernels.topk_attention(q, K, k, **kw, backend="cpu")
            for t in range(T):
                assert torch.equal(scores[:, t], alone[t][0]) and torch.equal(idx[:, t], alone[t][1]), (n, t)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("k", [1, 128, 255, 300])
@pytest.mark.parametrize("T", [1, 9])
def test_cpu_selection_orders(T, k, threads, seed):
    """The CPU selection (a threshold filter, then compactions of the candidates)
    on long rows whose order defeats it: ascending scores (every key beats the
    threshold: a compaction every few hundred keys), descending, few distinct
    values (ties across compactions), all equal, and more NaN than k; one target
    a row and 9 (the dim-major scan on an AVX-512 CPU). Integers: exact."""
    skip_unless_compiled("cpu")
    g = torch.Generator().manual_seed(seed)
    B, L, d = 5, 3000, 16
    keys = torch.randint(-3, 4, (B, L, d), generator=g).float()
    keys[0:2, :, 1] = torch.arange(L, dtype=torch.float32)  # row 0 ascends on dim 1, row 1 descends
    keys[1, :, 1] = keys[1, :, 1].flip(0)
    keys[3] = 1.0  # all scores equal
    keys[4, torch.randperm(L, generator=g)[:400], 5] = float("nan")
    query = torch.randint(-2, 3, (B, T, d), generator=g).float()
    query[0:2, :, 1] = torch.arange(1, T + 1, dtype=torch.float32)
    query[4, :, 5] = 1.0
    s = Sample(query, keys, k, lengths=torch.tensor([L, L - 1, 2999, 1500, L]), exact=True)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = torch.ops.dare.topk_attention(*s.args())
    finally:
        torch.set_num_threads(before)
    assert_matches_reference(out, s)


def test_backward_touches_only_selected_keys(seed):
    s = sample_input("lengths", torch.float32, "cpu", seed)
    K = s.keys.clone().requires_grad_()
    scores, idx = dare_kernels.topk_attention(s.query, K, s.k, lengths=s.lengths)
    (gk,) = torch.autograd.grad(scores.sum() * 0 + scores[torch.isfinite(scores)].sum(), (K,))
    touched = torch.zeros(K.shape[:2], dtype=torch.bool)
    for b in range(idx.shape[0]):
        touched[b, idx[b][idx[b] >= 0]] = True
    assert torch.all(gk[~touched] == 0)
    assert torch.all(gk[touched].abs().sum(-1) > 0)


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_cpu_isa_variants(isa):
    """The CPU kernel picks its variant at run time (AVX2, and on an AVX-512 CPU
    the dim-major scan of many targets); the others must pass the same matrix and
    the invariance tests: DARE_CPU_ISA=baseline forces the portable code,
    DARE_CPU_ISA=avx2 the AVX2 code alone (per process)."""
    import subprocess
    import sys

    from conftest import SEED
    skip_unless_compiled("cpu")
    env = dict(os.environ, DARE_CPU_ISA=isa, DARE_TEST_SEED=str(SEED))
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        os.path.join(here, "test_topk_attention.py"), os.path.join(here, "test_topk_attention_embedding.py"),
                        "-k", "(test_matches_reference and cpu-cpu) or test_cpu_scores_equal_the_dense_ops"
                              " or test_cpu_target_groups_are_invisible or test_cpu_selection"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " passed" in r.stdout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["basic", "targets", "lengths", "duplicates_targets", "nan_inf", "empty_batch"])
@pytest.mark.parametrize("device", DEVICES)
def test_backward_op(device, name, layout, dtype, seed):
    """The one-call backward op: opcheck, and its result equals the formula in
    PyTorch ops (_contract.keys_backward_formula) (bfloat16: one rounding apart)."""
    skip_unless_compiled(device)
    from dare_kernels import _contract
    s = sample_input(name, dtype, device, seed, layout)
    scores, idx = dare_kernels.topk_attention(s.query, s.keys, s.k, **s.kwargs())
    grad = torch.randn(scores.shape, device=device)
    tol = 1e-5 if dtype == torch.float32 else 2.0 ** -7
    for need_keys in (True, False):
        args = (grad, s.query, s.keys, idx, 0.7, s.offsets, need_keys)
        if name != "nan_inf" and dtype == torch.float32:  # opcheck's comparisons take NaN != NaN
            torch.library.opcheck(torch.ops.dare.topk_attention_backward, args)
        got = torch.ops.dare.topk_attention_backward(*args)
        want = _contract.keys_backward_formula(*args)
        torch.testing.assert_close(got[0], want[0], rtol=tol, atol=1e-6 + tol * 1e-3, equal_nan=True)
        torch.testing.assert_close(got[1], want[1], rtol=tol, atol=1e-6 + tol * 1e-3, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("name", ["basic", "lengths", "duplicates", "noncontiguous", "k_eq_L", "nan_inf"])
@pytest.mark.parametrize("device", DEVICES)
def test_triton_keys_backward(device, name, dtype, seed):
    """The Triton backward of one target per padded row (the backward op's kernel
    there where the library was built without CUDA) gives the PyTorch formula's gradients."""
    skip_unless_available("triton", device, dtype)
    from dare_kernels import _contract
    from dare_kernels.triton_backend.backward import keys_backward
    s = sample_input(name, dtype, device, seed)
    if s.query.dim() != 2 or s.keys.stride(2) != 1:
        pytest.skip("one target per row, contiguous key rows")
    scores, idx = dare_kernels.topk_attention(s.query, s.keys, s.k, lengths=s.lengths)
    grad = torch.randn(scores.shape, device=device)
    got = keys_backward(grad, s.query, s.keys, idx, 0.7)
    want = _contract.keys_backward_formula(grad, s.query, s.keys, idx, 0.7)
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    torch.testing.assert_close(got[0], want[0], rtol=tol, atol=tol, equal_nan=True)
    torch.testing.assert_close(got[1], want[1], rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("op", ["keys", "ids"])
@pytest.mark.parametrize("device", DEVICES)
def test_second_derivative_raises(op, device, seed):
    """The ops have one derivative: under create_graph the first comes back as without
    it, and differentiating it again raises a clear error instead of returning none."""
    skip_unless_compiled(device)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(3, 8, generator=g).to(device).requires_grad_()
    if op == "keys":
        K = torch.randn(3, 40, 8, generator=g).to(device).requires_grad_()
        inputs, call = [q, K], lambda: torch.ops.dare.topk_attention(q, K, 5)
    else:
        tables = [torch.randn(30, 8, generator=g).to(device).requires_grad_()]
        ids = [torch.randint(0, 30, (3, 40), generator=g).to(device)]
        inputs, call = [q, *tables], lambda: torch.ops.dare.topk_attention_embedding(q, tables, ids, 5)
    first = torch.autograd.grad(call()[0].square().sum(), inputs, create_graph=True)
    plain = torch.autograd.grad(call()[0].square().sum(), inputs)
    assert all(torch.equal(a.detach(), b) for a, b in zip(first, plain))
    with pytest.raises(RuntimeError, match="no second derivative"):
        first[0].sum().backward()
