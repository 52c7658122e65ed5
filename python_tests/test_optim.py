"""RowAdam gives torch.optim.SparseAdam's result; the model's optimiser groups
its parameters by gradient layout."""
import copy

import pytest
import torch

from dare_kernels.models import LongSequenceCTR
from dare_kernels.optim import ModelOptimizer, RowAdam

from conftest import skip_unless_compiled


def _sparse_grad(g, n, d, nnz, coalesced):
    rows = torch.randint(0, n, (nnz,), generator=g)
    values = torch.randn(nnz, d, generator=g)
    grad = torch.sparse_coo_tensor(rows[None], values, (n, d), check_invariants=True)
    return grad.coalesce() if coalesced else grad


@pytest.mark.parametrize("coalesced", [True, False])
def test_row_adam_matches_sparse_adam(coalesced, seed):
    """Several steps over random sparse gradients (duplicate rows, rows touched
    in some steps only): parameters and moments equal SparseAdam's."""
    g = torch.Generator().manual_seed(seed)
    n, d = 50, 7
    a = torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_()
    b = a.detach().clone().requires_grad_()
    ours, theirs = RowAdam([a], lr=0.05, betas=(0.8, 0.95), eps=1e-6), \
        torch.optim.SparseAdam([b], lr=0.05, betas=(0.8, 0.95), eps=1e-6)
    _step_both(ours, theirs, a, b, [_sparse_grad(g, n, d, 30, coalesced).double() for _ in range(6)])
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(ours.state[a][key], theirs.state[b][key], rtol=1e-12, atol=1e-12)


def _step_both(ours, theirs, a, b, grads):
    """One step of each optimiser (over a, b) per gradient."""
    for grad in grads:
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()


def test_row_adam_triton_matches_sparse_adam(seed):
    """The two-launch Triton update (duplicate rows summed by float32 atomics, one
    owner per row, the step count and bias corrections on the device) gives
    SparseAdam's float32 result."""
    from dare_kernels import triton_backend
    if triton_backend.unavailable("cpu") is not None:
        pytest.skip(triton_backend.unavailable("cpu"))
    g = torch.Generator().manual_seed(seed)
    n, d = 40, 19
    a = torch.randn(n, d, generator=g).requires_grad_()
    b = a.detach().clone().requires_grad_()
    ours, theirs = RowAdam([a], lr=0.05, fused=True), torch.optim.SparseAdam([b], lr=0.05)
    _step_both(ours, theirs, a, b, [_sparse_grad(g, n, d, 25, coalesced=False) for _ in range(4)])
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(ours.state[a][key], theirs.state[b][key], rtol=1e-6, atol=1e-7)
    # Its accumulator and row election are left cleared for the next step (no fill).
    assert torch.all(ours.state[a]["row_sums"] == 0) and torch.all(ours.state[a]["row_owner"] == -1)
    assert float(ours.state[a]["step"]) == 4
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(ours.state[a][key], theirs.state[b][key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_row_adam_compiled_matches_index_ops(dtype, seed):
    """The CPU's one-call update (dare::row_adam_: sort once, each touched row read
    and written once) gives the index-op update, duplicate rows summed; an empty
    gradient still counts the step, as SparseAdam's."""
    skip_unless_compiled("cpu")
    g = torch.Generator().manual_seed(seed)
    n, d = 60, 13
    a = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    b = a.detach().clone().requires_grad_()
    ours, theirs = RowAdam([a], lr=0.05, betas=(0.8, 0.95)), RowAdam([b], lr=0.05, betas=(0.8, 0.95), fused=False)
    grads = [_sparse_grad(g, n, d, 80, coalesced=i % 2 == 0).to(dtype) for i in range(4)]
    grads.insert(2, torch.sparse_coo_tensor(torch.zeros(1, 0, dtype=torch.long), torch.zeros(0, d, dtype=dtype),
                                            (n, d)))
    _step_both(ours, theirs, a, b, grads)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a, b, **tol)
    assert float(ours.state[a]["step"]) == float(theirs.state[b]["step"]) == 5
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(ours.state[a][key], theirs.state[b][key], **tol)


def test_row_adam_compiled_refuses_bad_rows():
    skip_unless_compiled("cpu")
    p = torch.zeros(5, 2)
    m, v, step = torch.zeros_like(p), torch.zeros_like(p), torch.zeros(())
    with pytest.raises(ValueError, match=r"rows must be in \[0, 5\), got 7"):
        torch.ops.dare.row_adam_(p, m, v, step, torch.tensor([1, 7]), torch.ones(2, 2), 0.1, 0.9, 0.999, 1e-8)
    with pytest.raises(ValueError, match=r"values must have shape \(nnz, d\) = \(2, 2\)"):
        torch.ops.dare.row_adam_(p, m, v, step, torch.tensor([1, 2]), torch.ones(2, 3), 0.1, 0.9, 0.999, 1e-8)


def test_row_adam_leaves_untouched_rows():
    p = torch.randn(10, 3).requires_grad_()
    before = p.detach().clone()
    opt = RowAdam([p], lr=0.1)
    p.grad = torch.sparse_coo_tensor(torch.tensor([[2, 7, 2]]), torch.ones(3, 3), (10, 3))
    opt.step()
    moved = (p.detach() != before).any(1)
    assert moved.tolist() == [i in (2, 7) for i in range(10)]
    assert torch.all(opt.state[p]["exp_avg"][[0, 1, 3, 4, 5, 6, 8, 9]] == 0)


@pytest.mark.parametrize("fused", [None, False, True], ids=["default", "index_ops", "triton"])
def test_row_adam_dense_gradients_move_their_nonzero_rows(fused, seed):
    """A dense gradient (a small table's): SparseAdam's step on its nonzero rows,
    the other rows' values and moments untouched, the step counted every step
    (fused: the one-launch Triton update, float32, under the interpreter on a CPU)."""
    from dare_kernels import triton_backend
    if fused and triton_backend.unavailable("cpu") is not None:
        pytest.skip(triton_backend.unavailable("cpu"))
    dtype = torch.float32 if fused else torch.float64
    tol = 1e-6 if fused else 1e-12
    g = torch.Generator().manual_seed(seed)
    n, d = 12, 3
    a = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    b = a.detach().clone().requires_grad_()
    ours = RowAdam([a], lr=0.05, betas=(0.8, 0.95), eps=1e-6, fused=fused)
    theirs = torch.optim.SparseAdam([b], lr=0.05, betas=(0.8, 0.95), eps=1e-6)
    for step in range(5):
        rows = torch.randperm(n, generator=g)[: 4 + step]
        dense = torch.zeros(n, d, dtype=dtype)
        dense[rows] = torch.randn(len(rows), d, generator=g, dtype=dtype)
        a.grad, b.grad = dense, dense.to_sparse()
        ours.step()
        theirs.step()
        torch.testing.assert_close(a.detach(), b.detach(), rtol=tol, atol=tol)
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(ours.state[a][key], theirs.state[b][key], rtol=tol, atol=tol)
    assert float(ours.state[a]["step"]) == 5


def _batch(g, B: int, L: int, n_items: int, n_cats: int, lengths=None) -> dict:
    """A random model batch (lengths drawn in [1, L] unless given)."""
    return {"history_items": torch.randint(1, n_items + 1, (B, L), generator=g),
            "history_cats": torch.randint(1, n_cats + 1, (B, L), generator=g),
            "lengths": torch.randint(1, L + 1, (B,), generator=g) if lengths is None else lengths,
            "target_item": torch.randint(1, n_items + 1, (B,), generator=g),
            "target_cat": torch.randint(1, n_cats + 1, (B,), generator=g),
            "label": torch.randint(0, 2, (B,), generator=g).float()}


@pytest.mark.parametrize("variant", ["dare", "twin", "twin_proj", "twin_compress", "twin_4e"])
def test_model_tables_take_sparse_rows(variant, seed):
    """Every embedding table of every variant gets a sparse gradient holding only
    rows the batch looked up; one step of each optimiser moves only those rows of
    the tables (rows, sparse_adam) and gives the same parameters."""
    torch.manual_seed(seed)
    L, B = 40, 6
    model = LongSequenceCTR(variant, 300, 20, L, d_att=8, d_rep=8, k=5, widths="field", sparse_min_rows=0)
    g = torch.Generator().manual_seed(seed)
    batch = _batch(g, B, L, 300, 20)
    states = {}
    for kind in ("rows", "sparse_adam"):
        m = LongSequenceCTR(variant, 300, 20, L, d_att=8, d_rep=8, k=5, widths="field", sparse_min_rows=0)
        m.load_state_dict(model.state_dict())
        opt = ModelOptimizer(m, 0.01, kind)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(m(batch)[0], batch["label"])
        opt.zero_grad()
        loss.backward()
        for t in m.table_parameters():
            assert t.grad is not None and t.grad.is_sparse, "a table took a dense gradient"
        touched = {id(t): set(t.grad.coalesce().indices()[0].tolist()) for t in m.table_parameters()}
        for t in m.table_parameters():
            # Both optimisers see the same float32 sums: summed in another order, a position
            # row's many duplicates can cancel to ~1e-7, where Adam's first step g / (|g| + eps)
            # tells the orders apart. Summing duplicates is tested in test_row_adam_*.
            t.grad = t.grad.coalesce()
        opt.step()
        for t, t0 in zip(m.table_parameters(), model.table_parameters()):
            moved = set(torch.nonzero((t.detach() != t0.detach()).any(1))[:, 0].tolist())
            assert moved <= touched[id(t)]
        states[kind] = m.state_dict()
    for name, value in states["rows"].items():
        torch.testing.assert_close(value, states["sparse_adam"][name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("variant", ["dare", "twin"])
def test_small_tables_take_dense_gradients_and_the_same_step(variant, seed):
    """Tables under sparse_min_rows rows take dense gradients (no sparse add of their
    many duplicate rows), the others sparse ones; the rows step (lazy Adam on the rows
    with a nonzero gradient) equals the all-sparse model's, as do the losses."""
    torch.manual_seed(seed)
    L, B, n_items, n_cats = 40, 6, 300, 20
    g = torch.Generator().manual_seed(seed)
    batch = _batch(g, B, L, n_items, n_cats)
    base = LongSequenceCTR(variant, n_items, n_cats, L, d_att=8, d_rep=8, k=5, widths="field", sparse_min_rows=0)
    states = {}
    for min_rows in (0, 250):  # 250: the item tables (301 rows) sparse, categories (21) and positions dense
        m = LongSequenceCTR(variant, n_items, n_cats, L, d_att=8, d_rep=8, k=5, widths="field",
                            sparse_min_rows=min_rows)
        m.load_state_dict(base.state_dict())
        opt = ModelOptimizer(m, 0.01, "rows")
        # eps 1e-3 and one step: a position row's duplicates sum in another order (index_add
        # against coalesce); where they cancel to ~1e-7, Adam's first step g / (|g| + eps) with
        # eps 1e-8 would send the rounding to a whole lr (ill-conditioned), with 1e-3 it does
        # not; a second step's forward would carry such differences on.
        for group in (gr for o in opt.optimizers for gr in o.param_groups):
            group["eps"] = 1e-3
        loss = torch.nn.functional.binary_cross_entropy_with_logits(m(batch)[0], batch["label"])
        opt.zero_grad()
        loss.backward()
        sparse = {id(t) for t in m.sparse_table_parameters()}
        for t in m.table_parameters():
            assert t.grad.is_sparse == (id(t) in sparse) == (t.shape[0] >= min_rows)
            if t.grad.is_sparse:
                t.grad = t.grad.coalesce()  # one summation order for both runs
        opt.step()
        states[min_rows] = (m.state_dict(), loss.detach())
    assert len({t.shape[0] for t in base.table_parameters()} - {301}) >= 2
    assert torch.equal(states[0][1], states[250][1])
    for name, value in states[0][0].items():
        torch.testing.assert_close(value, states[250][0][name], rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="sparse_min_rows must be an int >= 0"):
        LongSequenceCTR(variant, n_items, n_cats, L, sparse_min_rows=-1)


def test_dense_optimizer_needs_a_dense_model():
    model = LongSequenceCTR("dare", 30, 5, 10, d_att=4, d_rep=4, k=3, widths="field")
    with pytest.raises(ValueError, match="needs a model built with sparse_grad=False"):
        ModelOptimizer(model, 0.01, "dense")
    dense = LongSequenceCTR("dare", 30, 5, 10, d_att=4, d_rep=4, k=3, widths="field", sparse_grad=False)
    assert len(ModelOptimizer(dense, 0.01, "dense").optimizers) == 1


def test_train_cli_optimizer_default_by_device():
    """--optimizer auto: sparse rows on the CPU and on a GPU whose steps are CUDA-graph
    replays (--graph auto: one process, a capturable optimiser); dense Adam on a GPU
    stepping eagerly (measured: the rows step's launches cost more there, bench/RESULTS.md)."""
    from dare_kernels.train import default_optimizer, parse_args, uses_graph
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert default_optimizer(cpu) == default_optimizer(cpu, True) == "rows"
    assert default_optimizer(cuda, graph=True) == "rows" and default_optimizer(cuda) == "dense"
    args = parse_args([])
    assert args.graph == "auto" and args.optimizer == "auto"
    args.optimizer = "rows"
    assert uses_graph(args, cuda, 1) and not uses_graph(args, cuda, 2) and not uses_graph(args, cpu, 1)
    for optimizer, graph, want in (("sparse_adam", "auto", False), ("dense", "auto", True), ("rows", "off", False)):
        args.optimizer, args.graph = optimizer, graph
        assert uses_graph(args, cuda, 1) == want, (optimizer, graph)


def test_triton_model_step_as_on_a_gpu(seed, monkeypatch):
    """The GPU's training step, run on the CPU under the Triton interpreter: the
    search's per-slot sparse gradients (_contract.per_slot forced on, the backward
    formula), the lookups' per-id rows, the attention's sums in the Triton bag
    kernels and the Triton RowAdam give
    SparseAdam's step on the coalesced gradients."""
    from dare_kernels import _contract, triton_backend
    from dare_kernels.models import dare
    if triton_backend.unavailable("cpu") is not None:
        pytest.skip(triton_backend.unavailable("cpu"))
    torch.manual_seed(seed)
    L, B = 30, 5
    model = LongSequenceCTR("dare", 200, 12, L, d_att=8, d_rep=8, k=6, widths="field", sparse_min_rows=0)
    g = torch.Generator().manual_seed(seed)
    batch = _batch(g, B, L, 200, 12, lengths=torch.tensor([L, 3, 0, 17, 6]))  # short rows: padding slots
    states, slots = {}, {}
    for kind in ("gpu_path", "sparse_adam"):
        # The GPU path as the models run it: the item tables (201 rows) sparse, the small ones dense.
        m = LongSequenceCTR("dare", 200, 12, L, d_att=8, d_rep=8, k=6, widths="field",
                            sparse_min_rows=100 if kind == "gpu_path" else 0)
        m.load_state_dict(model.state_dict())
        opt = ModelOptimizer(m, 0.01, "sparse_adam")
        # eps 1e-3: the GPU path sums a position row's many duplicates (and the attention's
        # sums, hence the MLP's gradients) in another order than the CPU path; where they
        # cancel to ~1e-7, Adam's first step g / (|g| + eps) with eps 1e-8 would tell the
        # orders apart (ill-conditioned), with 1e-3 it does not: for the tables and the weights.
        opt.optimizers[1:] = [RowAdam(m.table_parameters(), lr=0.01, eps=1e-3, fused=True) if kind == "gpu_path"
                              else torch.optim.SparseAdam(m.table_parameters(), lr=0.01, eps=1e-3)]
        for group in opt.optimizers[0].param_groups:
            group["eps"] = 1e-3
        if kind == "gpu_path":
            monkeypatch.setattr(_contract, "per_slot", lambda device: True)
            monkeypatch.setattr(_contract._library, "loaded", False)  # the formula, not the CPU's C++ op
            monkeypatch.setattr(dare, "FUSED_BAG", True)  # the attention's sums in the Triton kernels
        else:
            monkeypatch.setattr(dare, "FUSED_BAG", False)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(m(batch)[0], batch["label"])
        opt.zero_grad()
        loss.backward()
        slots[kind] = [t.grad.is_coalesced() for t in m.sparse_table_parameters()]
        if kind == "sparse_adam":
            for t in m.table_parameters():
                t.grad = t.grad.coalesce()
        opt.step()
        monkeypatch.undo()
        states[kind] = m.state_dict()
    assert len(slots["gpu_path"]) == 2 and not any(slots["gpu_path"])  # per-slot and per-id entries, summed by the optimiser
    for name, value in states["gpu_path"].items():
        torch.testing.assert_close(value, states["sparse_adam"][name], rtol=1e-5, atol=2e-6, msg=name)


def test_l2_as_weight_decay_is_the_penalty_in_the_loss(seed):
    """ModelOptimizer(l2=...) (Adam's weight_decay 2·l2 on dense_parameters(): no
    extra launches) takes the steps of l2·Σp² on those weights added to the loss."""
    g = torch.Generator().manual_seed(seed)
    batch = _batch(g, 6, 20, 50, 9)
    torch.manual_seed(seed)
    a = LongSequenceCTR("dare", 50, 9, 20, d_att=8, d_rep=16, k=5, embedding_std=0.3)
    b = copy.deepcopy(a)
    l2 = 0.05
    opt_a, opt_b = ModelOptimizer(a, 0.01, "rows", l2=l2), ModelOptimizer(b, 0.01, "rows")
    assert len(opt_a.optimizers[0].param_groups) == 2
    # eps 1e-2: Adam's g / (|g| + eps) would turn the two ways' rounding apart, where a
    # gradient nearly cancels, into steps of lr; with a large eps it stays rounding.
    for group in (gr for opt in (opt_a, opt_b) for o in opt.optimizers for gr in o.param_groups):
        group["eps"] = 1e-2
    for _ in range(3):
        for m, opt, penalty in ((a, opt_a, 0.0), (b, opt_b, l2)):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(m(batch)[0], batch["label"])
            loss = loss + penalty * sum(p.pow(2).sum() for p in m.dense_parameters())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


def test_row_adam_fresh_state_is_a_new_steps():
    """RowAdam.fresh_state_ (how dare_kernels.graphs undoes its warm-up) puts each
    state tensor back to what a new step creates: zero moments and count, the
    Triton update's zeroed accumulator and its owner election at -1."""
    pytest.importorskip("triton")
    from dare_kernels.triton_backend import row_adam
    p = torch.zeros(4, 3)
    opt = RowAdam([p])
    sums, owner = row_adam.scratch(p)
    for key, want in (("row_sums", sums), ("row_owner", owner), ("exp_avg", torch.zeros(4, 3)),
                      ("step", torch.zeros(()))):
        t = torch.full_like(want, 7)
        opt.fresh_state_(p, key, t)
        assert torch.equal(t, want), key


def test_model_optimizer_checkpoint_of_other_groups_is_refused():
    """A checkpoint whose Adam has other parameter groups (saved with --l2 0, resumed
    with a nonzero --l2) is refused with the reason, not loaded askew."""
    m = LongSequenceCTR("dare", 50, 9, 20, d_att=8, d_rep=16, k=5)
    saved = ModelOptimizer(m, 0.01, "rows").state_dict()
    ModelOptimizer(m, 0.01, "rows").load_state_dict(saved)
    with pytest.raises(ValueError, match="parameter groups"):
        ModelOptimizer(m, 0.01, "rows", l2=1e-6).load_state_dict(saved)
    with pytest.raises(ValueError, match="dense_parameters"):
        ModelOptimizer(torch.nn.Linear(2, 2), 0.01, "dense", l2=1e-6)
