"""topk_attention_embedding: every backend, on every device, over the whole
sample matrix (each sample's keys as tables + ids) and the embedding-only
samples, against the float64 reference on the looked-up keys; plus the raw op,
opcheck, torch.compile, gradients (duplicate ids accumulate) and bad ids."""

import numpy as np
import pytest
import torch

import dare_kernels
from dare_kernels import reference

from conftest import DEVICES, skip_unless_available, skip_unless_compiled
from oracle import assert_matches_reference
from samples import DTYPES, EMBEDDING_SAMPLES, LAYOUTS, embedding_input


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(EMBEDDING_SAMPLES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", dare_kernels.BACKENDS)
def test_matches_reference(backend, device, dtype, name, layout, seed):
    skip_unless_available(backend, device, dtype, EMBEDDING_SAMPLES[name], layout, name=name)
    e = embedding_input(name, dtype, device, seed, layout)
    out = dare_kernels.topk_attention_embedding(e.query, e.tables, e.ids, e.k, **e.kwargs(), backend=backend)
    assert_matches_reference(out, e.as_sample())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", dare_kernels.BACKENDS)
def test_duplicates_tie_bit_for_bit(backend, device, seed):
    """Equal ids give equal scores, bit for bit, wherever they sit in the row
    (tails, tiles, split spans): the earlier position ranks first."""
    skip_unless_available(backend, device, torch.float32)
    e = embedding_input("emb_duplicates", torch.float32, device, seed)
    scores, idx = dare_kernels.topk_attention_embedding(e.query, e.tables, e.ids, e.k, lengths=e.lengths,
                                                        backend=backend)
    ids = e.ids[0].cpu()
    scores, idx = scores.cpu(), idx.cpu()
    for b in range(idx.shape[0]):
        for t in range(idx.shape[1]):
            seen = {}
            for s, j in zip(scores[b, t].tolist(), idx[b, t].tolist()):
                if j < 0:
                    continue
                i = int(ids[b, j])
                if i in seen:
                    assert seen[i][0] == s, "one id scored two ways"
                    assert seen[i][1] < j
                seen.setdefault(i, (s, j))


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["basic", "odd_d", "one_row_targets", "targets_mma_exact", "duplicates_targets"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_scores_equal_the_dense_ops(dtype, name, layout, threads, seed):
    """On the CPU both ops score a key with the same code (csrc/cpu/score.h): the ids
    op's scores and indices equal, bit for bit, the dense op's on the looked-up keys,
    one target a row or many, whichever targets a work item groups (one_row_targets'
    13 targets: one item with one thread, items of 5, 5 and 3 with three)."""
    skip_unless_compiled("cpu")
    e = embedding_input(name, dtype, "cpu", seed, layout)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = dare_kernels.topk_attention_embedding(e.query, e.tables, e.ids, e.k, **e.kwargs(), backend="cpu")
        want = dare_kernels.topk_attention(e.query, e.keys(), e.k, **e.kwargs(), backend="cpu")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got[1], want[1])
    assert torch.equal(got[0].isnan(), want[0].isnan())
    assert torch.equal(got[0].nan_to_num(), want[0].nan_to_num())


@pytest.mark.parametrize("device", DEVICES)
def test_raw_op_matches_api(device, seed):
    skip_unless_compiled(device)
    e = embedding_input("emb_shared_positions", torch.float32, device, seed)
    raw = torch.ops.dare.topk_attention_embedding(*e.args())
    api = dare_kernels.topk_attention_embedding(e.query, e.tables, e.ids, e.k, lengths=e.lengths, scale=e.scale)
    assert torch.equal(raw[0], api[0]) and torch.equal(raw[1], api[1])


@pytest.mark.parametrize("name", ["basic", "targets", "lengths", "empty_batch", "emb_shared_positions"])
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, name, seed):
    skip_unless_compiled(device)
    e = embedding_input(name, torch.float32, device, seed)
    e.query.requires_grad_(e.query.numel() > 0)
    for t in e.tables:
        t.requires_grad_()
    torch.library.opcheck(torch.ops.dare.topk_attention_embedding, e.args())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("layout", ["padded", "jagged"])
@pytest.mark.parametrize("name", ["basic", "targets", "lengths", "emb_duplicates", "emb_shared_positions",
                                  "emb_padding_ids"])
@pytest.mark.parametrize("device", DEVICES)
def test_backward_op(device, name, layout, sparse, dtype, seed):
    """The one-call backward op: opcheck, and its result equals the formula in
    PyTorch ops (_contract.backward_formula) it is the kernel of, up to the order of
    float32 sums (a GPU's dense table gradients sum duplicates with atomics, in any
    order: at most n·u·Σ|term| apart, n the selected slots; bfloat16: one rounding
    of either sum apart); the query's gradient is bit-identical whichever form the
    tables' takes, or none."""
    skip_unless_compiled(device)
    from dare_kernels import _contract
    e = embedding_input(name, dtype, device, seed, layout)
    scores, idx = dare_kernels.topk_attention_embedding(e.query, e.tables, e.ids, e.k, **e.kwargs())
    grad = torch.randn(scores.shape, device=device)
    args = (grad, e.query, e.tables, e.ids, idx, 0.7, e.offsets, sparse, True)
    # Σ|term| of every output element: the same formula on absolute values.
    magnitude = _contract.backward_formula(grad.abs(), e.query.abs(), [t.abs() for t in e.tables], *args[3:])
    order = idx.numel() * 2.0 ** -24
    rounding = 1e-5 if dtype == torch.float32 else 2.0 ** -7
    slack = max([1e-5] + [order * m.float().abs().max().item() for m in magnitude[2] if m.numel()])
    if dtype == torch.float32:  # opcheck's own tolerances are float32's
        torch.library.opcheck(torch.ops.dare.topk_attention_embedding_backward, args, rtol=1e-5, atol=slack)
    got = torch.ops.dare.topk_attention_embedding_backward(*args)
    want = _contract.backward_formula(*args)
    torch.testing.assert_close(got[0].float(), want[0].float(), rtol=rounding, atol=1e-6 + rounding * 1e-3)
    for form in ((not sparse, True), (sparse, False)):
        assert torch.equal(torch.ops.dare.topk_attention_embedding_backward(*args[:-2], *form)[0], got[0])
    for r, v, rw, vw, m in zip(got[1], got[2], want[1], want[2], magnitude[2]):
        assert torch.equal(r, rw)
        v, vw, m = v.float(), vw.float(), m.float()
        assert ((v - vw).abs() <= 1e-5 + rounding * vw.abs() + order * m).all()


@pytest.mark.parametrize("form", ["dense", "coalesced", "per_slot"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["basic", "targets", "lengths", "emb_duplicates", "emb_shared_positions",
                                  "emb_padding_ids"])
@pytest.mark.parametrize("device", DEVICES)
def test_triton_embedding_backward(device, name, layout, form, seed, monkeypatch):
    """The Triton backward (the backward op's kernel on CUDA tensors where the library
    was built without CUDA) gives the PyTorch
    formula's gradients in every form: dense (float32 sums in the kernel),
    coalesced (touched rows, float32 sums) and per slot (the GPU's sparse form:
    B·T·k entries, padding slots repeating a real slot's row with value 0), whose
    coalesce() is the coalesced form; the query's gradient is bit-identical
    across the forms, and no two outputs share memory (the op's contract)."""
    skip_unless_available("triton", device, torch.float32, layout=layout)
    from dare_kernels import _contract
    from dare_kernels.triton_backend.backward import embedding_backward
    e = embedding_input(name, torch.float32, device, seed, layout)
    scores, idx = dare_kernels.topk_attention_embedding(e.query, e.tables, e.ids, e.k, **e.kwargs())
    grad = torch.randn(scores.shape, device=device)
    sparse, slots = form != "dense", form == "per_slot"
    args = (grad, e.query, e.tables, e.ids, idx, 0.7, e.offsets, sparse, True)
    monkeypatch.setattr(_contract, "per_slot", lambda device: False)
    coalesced = _contract.backward_formula(*args[:-2], True, True)
    monkeypatch.setattr(_contract, "per_slot", lambda device: slots)
    want = _contract.backward_formula(*args)
    got = embedding_backward(*args, slots=slots)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    other = embedding_backward(*args[:-2], not sparse, True, slots=False)
    assert torch.equal(got[0], other[0]), "the query's gradient depends on the tables' form"
    outputs = [got[0], *got[1], *got[2]]
    storages = [o.untyped_storage().data_ptr() for o in outputs if o.numel()]
    assert len(set(storages)) == len(storages), "outputs alias each other"
    for f, (r, v, rw, vw) in enumerate(zip(got[1], got[2], want[1], want[2])):
        assert torch.equal(r, rw)
        torch.testing.assert_close(v, vw, rtol=1e-5, atol=1e-5)  # sums of duplicates: another order
        if slots:
            assert r.shape == (idx.numel(),)
            g = torch.sparse_coo_tensor(r[None], v, e.tables[f].shape).coalesce()
            assert torch.equal(g.indices()[0], coalesced[1][f])
            torch.testing.assert_close(g.values(), coalesced[2][f], rtol=1e-5, atol=1e-5)


def test_per_slot_rows_of_padding():
    """Padding slots repeat the first real slot's row (value 0); a batch with no
    real slot points every slot at row 0."""
    from dare_kernels._contract import slot_rows
    rows = torch.tensor([0, 7, 3, 0, 9])
    ok = torch.tensor([False, True, True, False, True])
    assert slot_rows(rows, ok).tolist() == [7, 7, 3, 7, 9]
    assert slot_rows(torch.tensor([5, 6]), torch.tensor([False, False])).tolist() == [0, 0]
    assert slot_rows(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.bool)).numel() == 0


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device, seed):
    skip_unless_compiled(device)
    e = embedding_input("emb_shared_positions", torch.float32, device, seed)

    def search(q, tables, ids, lengths):
        scores, idx = dare_kernels.topk_attention_embedding(q * 2, tables, ids, e.k, lengths=lengths, scale=0.5)
        return torch.softmax(scores, -1), idx

    eager = search(e.query, e.tables, e.ids, e.lengths)
    compiled = torch.compile(search, backend="aot_eager", fullgraph=True)(e.query, e.tables, e.ids, e.lengths)
    torch.testing.assert_close(compiled[0], eager[0], equal_nan=True)
    assert torch.equal(compiled[1], eager[1])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["basic", "targets", "lengths", "emb_shared_positions", "emb_duplicates"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", dare_kernels.BACKENDS)
def test_gradients_match_reference(backend, device, name, layout, seed):
    """Query and table gradients equal the float64 reference's through an
    explicit lookup; duplicate ids among the selected accumulate; in every
    layout (out-of-range ids of positions that take no part reach no row)."""
    skip_unless_available(backend, device, torch.float32, EMBEDDING_SAMPLES[name], layout, name=name, backward=True)
    e = embedding_input(name, torch.float32, device, seed, layout)
    q = e.query.clone().requires_grad_()
    tables = [t.clone().requires_grad_() for t in e.tables]
    scores, idx = dare_kernels.topk_attention_embedding(q, tables, e.ids, e.k, **e.kwargs(), backend=backend)
    assert not idx.requires_grad
    g = torch.randn(scores.shape, dtype=torch.float32, device=device)
    grads = torch.autograd.grad(scores, (q, *tables), g)

    q_ref = e.query.clone().requires_grad_()
    t_ref = [t.clone().requires_grad_() for t in e.tables]
    ref_s, ref_i = reference.topk_attention_embedding(q_ref, t_ref, e.ids, e.k, **e.kwargs(),
                                                      acc_dtype=torch.float64)
    assert torch.equal(idx, ref_i), "selection differs from the float64 reference"
    ref_grads = torch.autograd.grad(ref_s, (q_ref, *t_ref), torch.where(ref_i >= 0, g.double(), 0.0),
                                    allow_unused=True)
    for got, want in zip(grads, ref_grads):
        want = torch.zeros_like(got) if want is None else want.to(got.dtype)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _selected_rows(e, idx, f):
    """The set of table-f rows the real selected positions (idx >= 0) point at."""
    ids = e.ids[f].cpu()
    idx = idx.cpu().reshape(idx.shape[0], -1)
    if e.offsets is not None:
        start = e.offsets.cpu()[:-1].long().clamp(0, ids.shape[0])
        return set(ids[(start[:, None] + idx.clamp(min=0))[idx >= 0]].tolist())
    ids = ids.expand(idx.shape[0], ids.shape[-1]) if ids.dim() == 1 else ids
    return set(ids.gather(1, idx.clamp(min=0))[idx >= 0].tolist())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["basic", "targets", "lengths", "emb_shared_positions", "emb_duplicates"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", dare_kernels.BACKENDS)
def test_sparse_gradients_match_reference(backend, device, dtype, name, layout, seed):
    """sparse=True: each table's gradient is a sparse COO tensor of the table's
    dtype (coalesced; from the op on a GPU uncoalesced, one entry per slot) holding exactly the
    rows the real selected positions point at,
    equal to the float64 reference's dense gradient (duplicate ids summed in
    float32, rounded once; per slot, each slot's value rounded once and summed in
    float32), and to this backend's own dense gradient; the query's gradient is the
    same bit for bit whichever form the tables' take."""
    skip_unless_available(backend, device, dtype, EMBEDDING_SAMPLES[name], layout, name=name, backward=True)
    e = embedding_input(name, dtype, device, seed, layout)
    g = None
    grads = {}
    for sparse in (True, False):
        q = e.query.clone().requires_grad_()
        tables = [t.clone().requires_grad_() for t in e.tables]
        scores, idx = dare_kernels.topk_attention_embedding(q, tables, e.ids, e.k, **e.kwargs(), sparse=sparse,
                                                            backend=backend)
        if g is None:
            g = torch.randn(scores.shape, dtype=torch.float32, device=device)
        grads[sparse] = torch.autograd.grad(scores, (q, *tables), g)
    q_ref = e.query.clone().requires_grad_()
    t_ref = [t.clone().requires_grad_() for t in e.tables]
    ref_s, ref_i = reference.topk_attention_embedding(q_ref, t_ref, e.ids, e.k, **e.kwargs(), acc_dtype=torch.float64)
    assert torch.equal(idx, ref_i), "selection differs from the float64 reference"
    ref = torch.autograd.grad(ref_s, (q_ref, *t_ref), torch.where(ref_i >= 0, g.double(), 0.0), allow_unused=True)
    tol = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    # Coalesced, or from the op on a GPU one entry per slot (no host synchronisation); the
    # reference backend (PyTorch ops) coalesces everywhere.
    slots = device != "cpu" and backend != "reference"
    for f, (got, dense, want) in enumerate(zip(grads[True][1:], grads[False][1:], ref[1:])):
        assert got.layout == torch.sparse_coo and got.is_coalesced() == (not slots) and got.dtype == dtype
        assert got.shape == e.tables[f].shape
        if slots:
            assert got._nnz() == idx.numel()
        assert set(got.coalesce().indices()[0].tolist()) == _selected_rows(e, idx, f)
        want = torch.zeros(got.shape, dtype=dtype, device=device) if want is None else want
        # Per slot (GPU), each value is rounded to the table's dtype and the optimiser sums
        # them in float32: on top of the tolerance, one rounding (unit u) of each summand.
        summed = torch.sparse_coo_tensor(got._indices(), got._values().float(), got.shape).to_dense()
        slack = 0.0
        if slots:
            u = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[dtype]
            slack = u * torch.sparse_coo_tensor(got._indices(), got._values().float().abs(), got.shape).to_dense()
        for other in (want, dense):
            err = (summed - other.float()).abs()
            bound = tol + tol * other.float().abs() + slack
            assert (err <= bound).all(), f"field {f}: error {(err - bound).max().item():.3g} past the bound"
    torch.testing.assert_close(grads[True][0], grads[False][0], rtol=0, atol=0)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", dare_kernels.BACKENDS)
def test_table_gradients_accumulate_in_float32(backend, device, dtype, sparse):
    """A 16-bit row selected 400 times with upstream 0.1 gets 40 (float32 sums,
    rounded once), not 32 (the sum stalls in bfloat16)."""
    skip_unless_available(backend, device, dtype, backward=True)
    L = 400
    query = torch.ones(1, 2, dtype=dtype, device=device)
    table = torch.ones(3, 2, dtype=dtype, device=device, requires_grad=True)
    ids = torch.full((1, L), 1, dtype=torch.int64, device=device)
    scores, idx = dare_kernels.topk_attention_embedding(query, [table], [ids], L, sparse=sparse, backend=backend)
    (grad,) = torch.autograd.grad(scores, table, torch.full_like(scores, 0.1))
    grad = grad.coalesce().to_dense() if sparse else grad  # a GPU's per-slot entries: coalesce sums in float32
    want = torch.tensor(0.1, dtype=torch.float32) * L
    assert grad[1].float().cpu().tolist() == [float(want.to(dtype))] * 2
    assert torch.all(grad[0] == 0) and torch.all(grad[2] == 0)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_sparse_under_torch_compile(compiler, seed):
    """sparse=True compiles whole (the backward is one opaque op whose touched-row
    count is a dynamic size) and gives the eager gradients."""
    skip_unless_compiled("cpu")
    e = embedding_input("emb_shared_positions", torch.float32, "cpu", seed)

    def search(q, tables):
        scores = dare_kernels.topk_attention_embedding(q, tables, e.ids, e.k, lengths=e.lengths, sparse=True)[0]
        return torch.where(torch.isfinite(scores), scores, 0).sum()

    def grads(fn):
        q = e.query.clone().requires_grad_()
        tables = [t.clone().requires_grad_() for t in e.tables]
        fn(q, tables).backward()
        return [q.grad] + [t.grad for t in tables]

    eager = grads(search)
    compiled = grads(torch.compile(search, backend=compiler, fullgraph=True))
    for a, b in zip(compiled, eager):
        assert a.layout == b.layout
        torch.testing.assert_close(a.to_dense(), b.to_dense(), rtol=1e-6, atol=1e-6)


def test_sparse_must_be_a_bool(seed):
    e = embedding_input("emb_shared_positions", torch.float32, "cpu", seed)
    with pytest.raises(TypeError, match="topk_attention_embedding: sparse must be a bool, got int"):
        dare_kernels.topk_attention_embedding(e.query, e.tables, e.ids, e.k, lengths=e.lengths, sparse=1)


def test_backward_touches_only_selected_rows(seed):
    e = embedding_input("emb_shared_positions", torch.float32, "cpu", seed)
    tables = [t.clone().requires_grad_() for t in e.tables]
    scores, idx = dare_kernels.topk_attention_embedding(e.query, tables, e.ids, e.k, lengths=e.lengths)
    grads = torch.autograd.grad(scores[torch.isfinite(scores)].sum(), tables)
    B = idx.shape[0]
    for t, i, gt in zip(tables, e.ids, grads):
        rows = set(i.expand(B, i.shape[-1]).gather(1, idx.clamp(min=0))[idx >= 0].tolist())
        untouched = torch.ones(t.shape[0], dtype=torch.bool)
        untouched[list(rows)] = False
        assert torch.all(gt[untouched] == 0)


@pytest.mark.parametrize("backend", ["cpu", "reference", "triton"])
def test_out_of_range_ids_raise_on_cpu(backend, seed):
    skip_unless_available(backend, "cpu", torch.float32)
    e = embedding_input("emb_shared_positions", torch.float32, "cpu", seed)
    ids = [i.clone() for i in e.ids]
    ids[2][5] = 19  # table 2 has 19 rows; position 5 is inside every nonempty row's length
    with pytest.raises(ValueError, match=r"ids\[2\] values must be in \[0, 19\).*got 19"):
        dare_kernels.topk_attention_embedding(e.query, e.tables, ids, e.k, lengths=e.lengths, backend=backend)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
def test_out_of_range_ids_score_nan_on_gpu(backend, seed):
    """On CUDA an out-of-range id is never read and its behaviour scores NaN
    (which ranks first: the error shows in the output, with no host sync)."""
    skip_unless_available(backend, "cuda", torch.float32)
    e = embedding_input("emb_shared_positions", torch.float32, "cuda", seed)
    ids = [i.clone() for i in e.ids]
    ids[0][3, 4] = -7
    ids[0][4, 6] = 10**9
    scores, idx = dare_kernels.topk_attention_embedding(e.query, e.tables, ids, e.k, lengths=e.lengths,
                                                        backend=backend)
    assert torch.isnan(scores[3, 0]) and int(idx[3, 0]) == 4
    assert torch.isnan(scores[4, 0]) and int(idx[4, 0]) == 6
    assert not torch.isnan(scores[0]).any()


@pytest.mark.parametrize("bad, exc, match", [
    (lambda e: dict(tables=e.tables[0]), TypeError, "tables must be a list of Tensors"),
    (lambda e: dict(ids=e.ids[:2]), ValueError, r"ids must hold one Tensor per table \(3\), got 2"),
    (lambda e: dict(tables=[e.tables[0].double(), *e.tables[1:]]), TypeError, r"tables\[0\] dtype must equal"),
    (lambda e: dict(ids=[e.ids[0].float(), *e.ids[1:]]), TypeError, r"ids\[0\] must be int32 or int64"),
    (lambda e: dict(ids=[e.ids[0], e.ids[1][:, :5], e.ids[2]]), ValueError,
     r"ids\[1\] length must equal ids\[0\] length L=301, got 5"),
    (lambda e: dict(ids=[e.ids[0][:2], *e.ids[1:]]), ValueError, r"ids\[0\] must have shape \(B, L\) with B=5"),
    (lambda e: dict(query=e.query[:, :31]), ValueError, r"total width d=32, got 31"),
    (lambda e: dict(k=0), ValueError, r"k must satisfy 1 <= k <= L=301, got 0"),
    (lambda e: dict(k=2.0), TypeError, "k must be an int"),
    (lambda e: dict(k=True), TypeError, "k must be an int"),
    (lambda e: dict(k=np.True_), TypeError, "k must be an int, got bool"),
    (lambda e: dict(k=torch.tensor(3)), TypeError, "k must be an int, got Tensor"),
    (lambda e: dict(lengths=[1, 2, 3, 4, 5]), TypeError, "lengths must be a Tensor or None"),
    (lambda e: dict(tables=[*e.tables, e.tables[0], e.tables[0]], ids=[*e.ids, e.ids[0], e.ids[0]]),
     ValueError, "tables must hold 1 to 4 fields, got 5"),
])
@pytest.mark.parametrize("backend", dare_kernels.BACKENDS)
def test_bad_input(backend, bad, exc, match, seed):
    skip_unless_available(backend, "cpu", torch.float32)
    e = embedding_input("emb_shared_positions", torch.float32, "cpu", seed)
    kw = dict(query=e.query, tables=e.tables, ids=e.ids, k=e.k, lengths=e.lengths)
    kw.update(bad(e))
    with pytest.raises(exc, match=match):
        dare_kernels.topk_attention_embedding(kw["query"], kw["tables"], kw["ids"], kw["k"], lengths=kw["lengths"],
                                              backend=backend)


@pytest.mark.parametrize("backend", dare_kernels.BACKENDS)
def test_integer_like_k(backend, seed):
    """k may be any integer-like object but bool, as torch.topk's (numpy.int64, ...)."""
    skip_unless_available(backend, "cpu", torch.float32)
    e = embedding_input("emb_shared_positions", torch.float32, "cpu", seed)
    want = dare_kernels.topk_attention_embedding(e.query, e.tables, e.ids, e.k, lengths=e.lengths, backend=backend)
    for k in (np.int64(e.k), np.int32(e.k)):
        got = dare_kernels.topk_attention_embedding(e.query, e.tables, e.ids, k, lengths=e.lengths, backend=backend)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_api_takes_the_raw_ops_positional_arguments(seed):
    """lengths and scale may be passed positionally, as to the raw ops."""
    e = embedding_input("emb_shared_positions", torch.float32, "cpu", seed)
    a = dare_kernels.topk_attention_embedding(e.query, e.tables, e.ids, e.k, e.lengths, 0.5)
    b = dare_kernels.topk_attention_embedding(e.query, e.tables, e.ids, e.k, lengths=e.lengths, scale=0.5)
    keys = e.keys()
    c = dare_kernels.topk_attention(e.query, keys, e.k, e.lengths, 0.5)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert torch.equal(a[1], c[1])


def test_api_compiles_with_dynamic_shapes(seed):
    """The Python entry points of both ops trace whole (fullgraph) with symbolic k and shapes."""
    skip_unless_compiled("cpu")
    e = embedding_input("emb_shared_positions", torch.float32, "cpu", seed)
    keys = e.keys()

    def search(q, k):
        a = dare_kernels.topk_attention_embedding(q, e.tables, e.ids, k, lengths=e.lengths)
        b = dare_kernels.topk_attention(q, keys, k, lengths=e.lengths)
        return a, b

    compiled = torch.compile(search, backend="aot_eager", fullgraph=True, dynamic=True)
    for k in (5, 9):
        (sa, ia), (sb, ib) = compiled(e.query, k)
        want = search(e.query, k)
        assert torch.equal(ia, want[0][1]) and torch.equal(ib, want[1][1]) and torch.equal(ia, ib)
