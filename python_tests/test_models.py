"""The reference DARE/TWIN models, data and training loop (CPU, small)."""
import copy
import dataclasses
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

import dare_kernels
from dare_kernels import metrics, train
from dare_kernels.data import LOADERS, SyntheticConfig, batches, generate
from dare_kernels.data import public
from dare_kernels.data.synthetic import write_log
from dare_kernels.models import MODELS, LongSequenceCTR, SearchCTR

from oracle import assert_matches_reference
from samples import Sample

SMALL = ["--users", "800", "--items", "500", "--categories", "20", "--max-len", "150", "--batch-size", "64",
         "--d-rep", "16", "--k", "16", "--eval-every", "100", "--quiet"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one intra-op thread is as fast, and on a shared
    (oversubscribed) machine OpenMP's spinning threads make them ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _small(model):
    return SMALL + (["--d-att", "8"] if MODELS[model].uses_d_att else [])


@pytest.mark.parametrize("model", MODELS)
def test_trains_beyond_chance(model, tmp_path):
    out = tmp_path / "metrics.json"
    result = train.main(["--model", model, "--steps", "200", "--metrics-json", str(out)] + _small(model))
    assert result["test"]["auc"] > 0.65, result["test"]
    assert result["test"]["ndcg@16"] > 0.3, result["test"]
    saved = json.loads(out.read_text())
    assert saved["test"] == result["test"] and saved["validation"][-1]["step"] == 200
    assert saved["best_step"] in [h["step"] for h in saved["validation"]]
    best = max(saved["validation"], key=lambda h: h["auc"])
    assert saved["best_validation"]["auc"] == best["auc"]


def _batch(seed, max_len=300, task="category"):
    data = generate(SyntheticConfig(users=40, n_items=300, n_categories=10, max_len=max_len, min_len=5, seed=seed,
                                    task=task))
    return data, next(batches(data, 64))


@pytest.mark.parametrize("widths", ["field", "split"])
@pytest.mark.parametrize("model", MODELS)
def test_search_is_the_exact_top_k(model, widths, seed):
    """The search stage (the op from ids; the projection variants' maps folded
    into the query) is the top-k of the explicitly looked-up attention keys."""
    data, batch = _batch(seed)
    m = LongSequenceCTR(model, data.n_items, data.n_cats, 300, d_att=8, d_rep=16, k=24, widths=widths,
                        embedding_std=0.3)
    with torch.no_grad():
        query, keys, lengths, _ = m.search_inputs(batch)  # (B, L, d_att) keys, looked up explicitly
        _, scores, idx = m(batch)
        stage = m.search_stage(batch)
        explicit = dare_kernels.topk_attention(query, keys, 24, lengths=lengths)
    assert keys.shape[-1] == m.d_att
    assert torch.equal(stage[1], idx) and torch.equal(stage[0], scores)
    assert_matches_reference(stage, Sample(query, keys, 24, lengths))
    torch.testing.assert_close(stage[0], explicit[0], atol=1e-5, rtol=1e-5)
    # Indices agree wherever the scores are not within rounding of a neighbour
    # (equal keys tie exactly from ids, within rounding from explicit keys).
    gap = torch.minimum(torch.diff(explicit[0], dim=-1).abs(), torch.diff(stage[0], dim=-1).abs())
    clear = torch.ones_like(explicit[0], dtype=torch.bool)
    clear[:, 1:] &= gap > 1e-5
    clear[:, :-1] &= gap > 1e-5
    clear[:, -1] = False  # the k-th may tie with the (k+1)-th
    assert torch.equal(stage[1][clear], explicit[1][clear])


@pytest.mark.parametrize("model", ["dare", "twin_proj", "twin_compress", "twin_4e"])
def test_search_gradients_match_explicit_keys(model, seed):
    """Gradients through the ids op (tables, and the projections through the
    folded query) equal those through topk_attention on explicit keys."""
    data, batch = _batch(seed)
    m = LongSequenceCTR(model, data.n_items, data.n_cats, 300, d_att=8, d_rep=16, k=16, embedding_std=0.3)
    w = torch.randn(len(batch["label"]), 16, generator=torch.Generator().manual_seed(seed))

    def grads(scores):
        m.zero_grad()
        (torch.where(torch.isfinite(scores), scores, 0) * w).sum().backward()
        # Sparse table gradients (the default) as dense: an explicit lookup's lists every
        # looked-up row (zeros for the unselected), the ids op's the selected rows alone.
        return {n: p.grad.to_dense() if p.grad.is_sparse else p.grad.clone()
                for n, p in m.named_parameters() if p.grad is not None}

    via_ids = grads(m.search_stage(batch)[0])
    query, keys, lengths, _ = m.search_inputs(batch)
    via_keys = grads(dare_kernels.topk_attention(query, keys, 16, lengths=lengths)[0])
    assert via_ids.keys() == via_keys.keys() and len(via_ids) >= 3
    for name in via_ids:
        torch.testing.assert_close(via_ids[name], via_keys[name], atol=1e-5, rtol=1e-4, msg=name)


def _replaced_block(m, batch):
    """(logits, scores, indices) of the model's forward as it ran before its search +
    attention became layers.HardSearch (the former models.dare.TopKTargetAttention):
    k capped at the batch's width, nan_to_num(softmax), a float32 weighted sum."""
    query, tables, ids, lengths = m.search_ids_inputs(batch)
    items, cats, pos = ids
    scores, idx = dare_kernels.topk_attention_embedding(query, tables, ids, min(m.search.k, items.shape[1]),
                                                        lengths=lengths, sparse=m.search.sparse,
                                                        backend=m.search.backend)
    safe = idx.clamp(min=0)
    selected = m.representation(items.gather(1, safe), cats.gather(1, safe), pos[safe])
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1))
    interest = (weights[..., None] * selected.float()).sum(1)
    return m.mlp(m._target_aware(m._target_rep(batch), interest)).squeeze(-1), scores, idx


def _all_grads(m, loss):
    m.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.to_dense() if p.grad.is_sparse else p.grad.clone()
            for n, p in m.named_parameters() if p.grad is not None}


def _float64_grads(m, batch, idx, w):
    """Every parameter's gradient of (logits · w).sum() in float64, the search's
    selection `idx` held fixed: the replaced block's arithmetic without float32's
    rounding. The float32 op takes no float64 tables, so the search's keys are
    looked up as the op reads them (the search tables' rows by id, with no
    padding_idx: the op knows none; the full batch selects padding positions)."""
    m64 = copy.deepcopy(m).double()
    items, cats = batch["history_items"], batch["history_cats"]
    pos = m64.positions(items.shape[1], items.device).expand_as(items)
    query = m64.fold_query(m64._query(batch))
    keys = torch.cat([t[i] for t, i in zip(m64.search_tables(), (items, cats, pos))], -1)
    safe = idx.clamp(min=0)
    scores = torch.einsum("bd,bld->bl", query, keys).gather(1, safe).masked_fill(idx < 0, float("-inf"))
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1))
    selected = m64.representation(items.gather(1, safe), cats.gather(1, safe), pos.gather(1, safe))
    interest = (weights[..., None] * selected).sum(1)
    target = batch["target_item"]
    target_rep = m64.representation(target, batch["target_cat"], torch.zeros_like(target), target=True)
    logits = torch.nn.Sequential.forward(m64.mlp, m64._target_aware(target_rep, interest)).squeeze(-1)
    return _all_grads(m64, (logits * w.double()).sum())


@pytest.mark.parametrize("model", MODELS)
def test_search_layer_keeps_the_models_numbers(model, seed):
    """model.search is layers.HardSearch (k, sparse and backend its attributes). On the
    model's batches (right-padded rows, and full rows; k <= L), for sparse and dense
    gradients, with and without autocast, the search's scores and indices equal, bit
    for bit, those of the block it replaced; the logits and every parameter's gradient
    equal its up to the order of the float32 sums (the interest is summed by embedding
    bags, model.attend); under autocast the logits to bfloat16's precision (twin_proj's
    value maps now map the sum), the gradients are compared without it.

    The gradients are compared with their float64 truth (_float64_grads): the layer's
    may be off by twice the replaced block's own largest error in that tensor plus
    1e-4 of the tensor's largest gradient. Both terms are needed: a tolerance between
    the two float32 results alone failed by seed (the target's position row is the
    same for every row of a batch, so its BatchNorm columns have zero spread and that
    row's gradient is a sum that cancels to rounding noise, which both paths get wrong
    by the same amount: 3.6e-6 of a 4.6e-3 scale, DARE_TEST_SEED=91300392), and the
    measured error alone fails where the two paths' float32 sums (bags against a
    weighted sum) happen to round apart more than the block's worst element does
    (1.6x, twin_compress's mlp.2.weight at one seed)."""
    data, batch = _batch(seed)
    full = dict(batch, lengths=torch.full_like(batch["lengths"], batch["history_items"].shape[1]))
    w = torch.randn(len(batch["label"]), generator=torch.Generator().manual_seed(seed))
    for b in (batch, full):
        assert b["history_items"].shape[1] >= 24
        for sparse in (True, False):
            torch.manual_seed(seed)
            m = LongSequenceCTR(model, data.n_items, data.n_cats, 300, d_att=8, d_rep=16, k=24, embedding_std=0.3,
                                sparse_grad=sparse)
            assert isinstance(m.search, dare_kernels.HardSearch) and m.search.k == 24 and m.search.sparse == sparse
            for amp in (False, True):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    got, want = m(b), _replaced_block(m, b)
                    stage = m.search_stage(b)
                tol = dict(rtol=2e-2, atol=2e-3) if amp else dict(rtol=1e-4, atol=1e-6)
                torch.testing.assert_close(got[0].float(), want[0].float(), **tol)
                assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
                assert torch.equal(stage[0], got[1]) and torch.equal(stage[1], got[2])
                if amp:
                    continue
                g_got = _all_grads(m, (got[0].float() * w).sum())
                g_want = _all_grads(m, (want[0].float() * w).sum())
                truth = _float64_grads(m, b, want[2], w)
                assert g_got.keys() == g_want.keys() == truth.keys() and len(g_got) > 5
                for name in g_got:
                    scale = truth[name].abs().max().item()
                    rounding = (g_want[name].double() - truth[name]).abs().max().item()
                    torch.testing.assert_close(g_got[name].double(), truth[name], rtol=0,
                                               atol=2 * rounding + 1e-4 * scale + 1e-7, msg=name)
    m.set_sparse_grad(not m.search.sparse)
    assert m.search.sparse == m.sparse_grad == (not sparse)


def test_model_short_batches_and_empty_rows(seed):
    """The layers' one rule in the model: a batch whose longest history is shorter than
    k gives k-wide scores and indices (padding: -inf / -1) with the logits of k = its
    width; a row with no history has a zero interest and zero, finite gradients (the
    replaced block's softmax gave NaN gradients to that row's scores)."""
    data, batch = _batch(seed)
    W, k = 10, 24
    short = {**batch, "history_items": batch["history_items"][:, :W], "history_cats": batch["history_cats"][:, :W],
             "lengths": batch["lengths"].clamp(max=W)}
    short["lengths"][1] = 0
    m = LongSequenceCTR("dare", data.n_items, data.n_cats, 300, d_att=8, d_rep=16, k=k, embedding_std=0.3)
    interest = []
    attend = m.attend
    m.attend = lambda *args: interest.append(attend(*args)) or interest[-1]
    logits, scores, idx = m(short)
    scores.retain_grad()
    B = len(batch["label"])
    assert scores.shape == idx.shape == (B, k) and torch.all(idx[:, W:] == -1)
    assert torch.all(scores[:, W:] == float("-inf")) and torch.all(idx[1] == -1)
    assert torch.all(interest[0][1] == 0) and torch.isfinite(interest[0]).all()
    with torch.no_grad():
        want = _replaced_block(m, short)
    torch.testing.assert_close(logits, want[0])
    assert torch.equal(scores[:, :W], want[1]) and torch.equal(idx[:, :W], want[2])
    stage = m.search_stage(short)
    assert torch.equal(stage[1], idx) and torch.equal(stage[0], scores)
    grads = _all_grads(m, logits.square().sum())
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert torch.isfinite(scores.grad).all() and torch.all(scores.grad[1] == 0)


def test_papers_twin_with_projection():
    """Per field, square maps without bias for query, key, target and value;
    score = Σ_f (Q_f e_f(target))·(K_f e_f(behaviour)), scaled."""
    data, batch = _batch(0, max_len=60)
    m = LongSequenceCTR("twin_proj", data.n_items, data.n_cats, 60, d_rep=16, k=8, widths="field",
                        embedding_std=0.3)
    maps = [m.query_maps, m.key_maps, m.target_maps, m.value_maps]
    assert all(len(ms) == 3 for ms in maps)
    assert len({id(x) for ms in maps for x in ms}) == 12
    assert all(x.weight.shape == (16, 16) and x.bias is None for ms in maps for x in ms)
    assert m.d_att == m.d_search == 48 and not m.uses_d_att
    it, ct = batch["history_items"][0, 3], batch["history_cats"][0, 3]
    pos = dare_kernels.models.position_buckets(60)[3]
    t_it, t_ct = batch["target_item"][0], batch["target_cat"][0]
    e, t = m.rep.tables(), m.rep.tables()
    q = [m.query_maps[0](t[0][t_it]), m.query_maps[1](t[1][t_ct]), m.query_maps[2](t[2][0])]
    k = [m.key_maps[0](e[0][it]), m.key_maps[1](e[1][ct]), m.key_maps[2](e[2][pos])]
    want = (q[0] @ k[0] + q[1] @ k[1]) / 32 ** 0.5 + q[2] @ k[2] / 16 ** 0.5
    query, keys, _, _ = m.search_inputs(batch)
    torch.testing.assert_close(query[0] @ keys[0, 3], want)
    torch.testing.assert_close(m.representation(it, ct, pos), torch.cat(
        [m.value_maps[0](e[0][it]), m.value_maps[1](e[1][ct]), m.value_maps[2](e[2][pos])]))
    torch.testing.assert_close(m.representation(t_it, t_ct, torch.tensor(0), target=True), torch.cat(
        [m.target_maps[0](t[0][t_it]), m.target_maps[1](t[1][t_ct]), m.target_maps[2](t[2][0])]))


def test_widths_and_target_aware_representation():
    dare = LongSequenceCTR("dare", 50, 5, 64, d_att=16, d_rep=64, widths="field")
    assert dare.att_widths == (16, 16, 16) and dare.rep_widths == (64, 64, 64)
    assert dare.d_att == 48 and dare.d_rep == 192 and dare.d_search == 48
    assert dare.mlp[0].num_features == 3 * 192  # [target, interest, target ⊙ interest]
    split = LongSequenceCTR("dare", 50, 5, 64, d_att=16, d_rep=128)  # the total-width view (default)
    assert split.att_widths == (8, 4, 4) and split.d_att == 16 and split.d_rep == 128
    own = LongSequenceCTR("twin", 50, 5, 64, d_rep=(24, 8, 4))
    assert own.d_att == own.d_rep == 36
    compress = LongSequenceCTR("twin_compress", 50, 5, 64, d_att=4, d_rep=32, widths="field")
    assert compress.d_att == 12 and compress.d_search == 96
    with pytest.raises(ValueError, match="multiple of 4"):
        LongSequenceCTR("dare", 50, 5, 64, d_att=10)
    std = LongSequenceCTR("dare", 5000, 5, 64, d_rep=16, embedding_std=0.01).rep.item.weight[1:].detach().std()
    assert 0.009 < float(std) < 0.011
    dense = {id(p) for p in dare.dense_parameters()}
    assert id(dare.att.item.weight) not in dense and id(dare.mlp[1].weight) in dense
    assert id(dare.mlp[1].bias) not in dense


def test_aux_loss(tmp_path):
    data, batch = _batch(0, max_len=60)
    m = LongSequenceCTR("dare", data.n_items, data.n_cats, 60, d_att=8, d_rep=8, k=8, aux_loss=True)
    logits, _, _, aux = m(batch, aux=True)
    assert aux.shape == logits.shape and torch.isfinite(aux).all()
    with pytest.raises(ValueError, match="without aux_loss"):
        LongSequenceCTR("dare", 50, 5, 64).aux_logits(batch)
    result = train.main(["--model", "dare", "--aux-loss", "--steps", "20", "--metrics-json",
                         str(tmp_path / "m.json")] + _small("dare"))
    assert result["args"]["aux_loss"] and result["test"]["auc"] == result["test"]["auc"]


def test_checkpoint_resume_and_best_step(tmp_path):
    ckpt = str(tmp_path / "model.pt")
    m = ["--metrics-json", str(tmp_path / "m.json"), "--checkpoint", ckpt, "--eval-every", "20"]
    first = train.main(_small("dare") + ["--steps", "40"] + m)
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 40 and [h["step"] for h in first["validation"]] == [20, 40]
    resumed = train.main(_small("dare") + ["--steps", "60", "--resume"] + m)
    assert [h["step"] for h in resumed["validation"]] == [20, 40, 60]
    # The test metrics are those of the best validation step's weights.
    state = torch.load(ckpt, weights_only=False)
    assert resumed["best_step"] == state["best"]["step"]
    args = train.parse_args(["--steps", "60"] + _small("dare"))
    data = train.load_data("synthetic", args)
    fresh = train.build_model(args, data)
    fresh.load_state_dict(state["best"]["state"])
    again = train.evaluate(fresh, data.split(seed=0)[2], args, torch.device("cpu"))
    assert again == pytest.approx(resumed["test"], nan_ok=True)


def test_early_stopping(tmp_path):
    # lr 0: the validation AUC never improves after the first validation.
    r = train.main(_small("dare") + ["--lr", "0", "--steps", "200", "--eval-every", "10", "--patience", "2",
                                     "--metrics-json", str(tmp_path / "m.json")])
    assert [h["step"] for h in r["validation"]] == [10, 20, 30] and r["steps"] == 30 and r["best_step"] == 10


def test_time_per_step_leaves_out_the_warmup(tmp_path, monkeypatch):
    """train_ms_per_step times the steps after the first WARMUP_STEPS (a graph's capture,
    set-up): a first step made 1 s slower moves warmup_seconds, not the time per step (~7 ms)."""
    real = train.time.time
    clock = {"calls": 0, "shift": 0.0}

    def slow_first_step():
        return real() + clock["shift"]
    monkeypatch.setattr(train.time, "time", slow_first_step)
    step_fn = train.ModelOptimizer.step

    def step(self, *a, **kw):
        clock["calls"] += 1
        if clock["calls"] == 1:
            clock["shift"] += 1.0
        return step_fn(self, *a, **kw)
    monkeypatch.setattr(train.ModelOptimizer, "step", step)
    r = train.main(_small("dare") + ["--steps", "8", "--metrics-json", str(tmp_path / "m.json")])
    assert r["warmup_steps"] == train.WARMUP_STEPS == 3 and r["warmup_seconds"] >= 1.0
    assert r["train_ms_per_step"] < 100  # counted, the slow step alone would make it >= 200
    short = train.main(_small("dare") + ["--steps", "2", "--metrics-json", str(tmp_path / "s.json")])
    assert short["warmup_steps"] == 2
    assert short["train_ms_per_step"] == pytest.approx(1e3 * short["warmup_seconds"] / 2)


def test_seeds_data_seed_and_output(tmp_path, capsys):
    out = tmp_path / "m.json"
    r = train.main([a for a in SMALL if a != "--quiet"] + ["--seeds", "1", "2", "--data-seed", "5", "--steps", "30",
                                                          "--eval-every", "15", "--metrics-json", str(out), "--d-att", "8"])
    printed = capsys.readouterr().out
    assert "validation: AUC" in printed and "best step" in printed and "split (random by impression)" in printed
    assert "mean ± std" in printed and "{" not in printed  # JSON goes to the file only
    assert "loss=0.0000" not in printed
    saved = json.loads(out.read_text())
    assert [run["seed"] for run in saved["runs"]] == [1, 2] and {run["data_seed"] for run in saved["runs"]} == {5}
    a, b = saved["runs"]
    assert a["data"] == b["data"] and a["test"] != b["test"]  # same data, different initialisation
    assert saved["summary"]["auc"]["mean"] == pytest.approx((a["test"]["auc"] + b["test"]["auc"]) / 2)
    # --seed alone also seeds the data (as before); --data-seed separates them.
    args = train.parse_args(["--seed", "3"] + SMALL)
    d3 = train.load_data("synthetic", args)
    args.data_seed = 4
    assert not torch.equal(d3.label, train.load_data("synthetic", args).label)


def test_data_cache_gives_the_loaded_data_back(tmp_path, monkeypatch):
    """--data-cache: the first run saves what the loader made, a run with the same data
    options and seed loads it (the loader is not called again), other options or another
    seed make their own file."""
    args = train.parse_args(SMALL + ["--data-cache", str(tmp_path)])
    fresh = train.load_data("synthetic", args)
    assert len(list(tmp_path.iterdir())) == 1
    monkeypatch.setitem(LOADERS, "synthetic", dataclasses.replace(
        LOADERS["synthetic"], load=lambda *a, **kw: pytest.fail("loaded again")))
    cached = train.load_data("synthetic", args)
    for f in dataclasses.fields(fresh):
        a, b = getattr(fresh, f.name), getattr(cached, f.name)
        assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b), f.name
    monkeypatch.undo()
    args.data_seed = 7
    train.load_data("synthetic", args)
    args.users = 700
    train.load_data("synthetic", args)
    assert len(list(tmp_path.iterdir())) == 3


def test_default_metrics_path_is_outside_the_repo():
    path = train.default_metrics_path("dare")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(train.__file__)))
    assert path.startswith(tempfile.gettempdir()) and not path.startswith(repo + os.sep)


def test_conflict_task():
    cfg = SyntheticConfig(users=300, n_items=2000, n_categories=40, groups=8, max_len=200, min_len=50,
                          task="conflict", seed=1)
    data = generate(cfg)
    groups = data.cat_group
    assert groups[0] == 0 and torch.bincount(groups[1:]).tolist()[1:] == [5] * 8
    batch = next(batches(data, 128))
    same_group = groups[batch["history_cats"]] == groups[batch["target_cat"]][:, None]
    valid = torch.arange(batch["history_cats"].shape[1])[None, :] < batch["lengths"][:, None]
    assert torch.equal(batch["relevant"], same_group & valid)
    assert not torch.equal(batch["relevant"], (batch["history_cats"] == batch["target_cat"][:, None]) & valid)
    assert 0.4 < float(data.label.mean()) < 0.6
    # The labels follow the generator's probabilities (the Bayes scores beat chance).
    assert metrics.auc(data.label, data.prob) > 0.75
    control = generate(SyntheticConfig(users=300, n_items=2000, n_categories=40, max_len=200, min_len=50))
    assert control.cat_group is None


def _log(n_users=30, per_user=(5, 40), seed=0, kinds=("pv",)):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = rng.integers(*per_user)
        t = np.sort(rng.integers(1_500_000_000, 1_500_100_000, n))
        items = rng.integers(1000, 1100, n)
        for ti, it in zip(t, items):
            rows.append((10 + u * 7, int(it), int(it) % 9 + 500, int(ti), str(rng.choice(kinds))))
    return rows


def _check_loaded(data, rows, max_len, min_behaviours, train_targets, stride, negatives, kind="pv"):
    by_user = {}
    for u, it, c, t, b in rows:
        if b == kind:
            by_user.setdefault(u, []).append((t, it, c))
    offsets = [0, 1] + [2 + stride * i for i in range(train_targets)]
    users = [u for u in sorted(by_user) if len(by_user[u]) >= max(min_behaviours, max(offsets) + 2)]
    P = len(users) * len(offsets)
    assert len(data) == P * (1 + negatives) and int(data.label.sum()) == P
    assert data.history_items.shape == (len(users), max_len + max(offsets))
    items_seen = sorted({it for seq in by_user.values() for _, it, _ in seq})
    inv = {i + 1: it for i, it in enumerate(items_seen)}
    assert data.n_items <= len(items_seen)
    folds = [2, 1] + [0] * train_targets
    parts = data.split()
    assert [len(p) for p in parts] == [len(users) * n * (1 + negatives) for n in (train_targets, 1, 1)]
    for f, part in enumerate(parts):
        batch = next(batches(part, 10_000))
        for n in range(len(part)):
            u = users[int(batch["user"][n])]
            seq = [it for _, it, _ in sorted(by_user[u], key=lambda x: x[0])]
            o = int(part.start[n])
            assert folds[offsets.index(o)] == f
            t = len(seq) - 1 - o
            want = seq[max(0, t - max_len):t][::-1]
            got = [inv[int(i)] for i in batch["history_items"][n, :int(batch["lengths"][n])]]
            assert got == want
            if part.label[n] == 1:
                assert inv[int(part.target_item[n])] == seq[t]
            else:  # negatives are never among the user's items
                assert inv[int(part.target_item[n])] not in seq


def test_taobao_loader_protocol(tmp_path):
    rows = _log(seed=1, per_user=(5, 60), kinds=("pv", "pv", "pv", "cart", "buy"))
    path = tmp_path / "UserBehavior.csv"
    path.write_text("".join(f"{u},{it},{c},{b},{t}\n" for u, it, c, t, b in rows))
    data = public.load_taobao(str(path), max_len=12, min_behaviours=15, train_targets=3, target_stride=2,
                              negatives=2)
    _check_loaded(data, rows, 12, 15, 3, 2, 2)
    every = public.load_taobao(str(path), max_len=12, min_behaviours=15, train_targets=3, target_stride=2,
                               negatives=1, page_views_only=False)
    assert len(every) > len(data) * 2 // 3  # more users qualify with every behaviour type


def test_tmall_loader_protocol(tmp_path):
    rows = _log(seed=2, per_user=(5, 50))
    path = tmp_path / "user_log_format1.csv"
    path.write_text("user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type\n"
                    + "".join(f"{u},{it},{c},3,4,{t},0\n" for u, it, c, t, b in rows))
    data = public.load_tmall(str(path), max_len=20, min_behaviours=10, train_targets=2, target_stride=3,
                             negatives=1)
    _check_loaded(data, rows, 20, 10, 2, 3, 1)


def test_cli_protocol_options_on_a_generated_taobao_log(tmp_path):
    path = tmp_path / "UserBehavior.csv"
    write_log(str(path), users=60, n_items=400, n_categories=12, groups=3, min_len=40, max_len=60, seed=0)
    r = train.main(["--data", f"taobao:{path}", "--max-len", "30", "--min-behaviours", "40", "--train-targets", "4",
                    "--target-stride", "3", "--negatives", "2", "--batch-size", "64", "--steps", "10",
                    "--d-att", "8", "--d-rep", "8", "--k", "8", "--quiet", "--metrics-json", str(tmp_path / "m.json")])
    assert r["data"]["split"] == {"train": 60 * 4 * 3, "validation": 60 * 3, "test": 60 * 3}
    assert r["test"]["gauc_users"] == 60 and r["test"]["impressions"] == 180  # every test user has both labels
    with pytest.raises(ValueError, match="does not use --negatives"):
        train.main(["--negatives", "3", "--quiet"])
    with pytest.raises(ValueError, match="does not use --all-behaviours"):
        train.main(["--all-behaviours", "--quiet"])


def test_registries(tmp_path):
    assert set(MODELS) == {"dare", "twin", "twin_proj", "twin_compress", "twin_4e"}
    for name, cls in MODELS.items():
        assert issubclass(cls, SearchCTR) and cls.variant == name
        assert type(LongSequenceCTR(name, 50, 5, 64, d_att=8, d_rep=16, k=4)) is cls
    with pytest.raises(ValueError, match="variant must be one of"):
        LongSequenceCTR("din", 50, 5, 64)
    assert {"synthetic", "taobao", "tmall"} <= set(LOADERS)
    assert LOADERS["taobao"].needs_path and not LOADERS["synthetic"].needs_path
    assert LOADERS["taobao"].defaults["min_behaviours"] == 210 and LOADERS["tmall"].defaults["negatives"] == 2
    with pytest.raises(ValueError, match="does not use --users"):
        train.main(["--data", "taobao:" + str(tmp_path / "x.csv"), "--users", "10", "--quiet"])
    with pytest.raises(ValueError, match="needs a path"):
        train.main(["--data", "taobao", "--quiet"])
    for model in ("twin", "twin_proj"):
        with pytest.warns(UserWarning, match=f"--d-att 16 is not used by --model {model}"):
            train.build_model(train.parse_args(["--model", model, "--d-att", "16"]), _batch(0, 40)[0])


def test_auc_and_gauc_match_pairwise_definition(seed):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(300, generator=g) < 0.4).float()
    scores = torch.randint(0, 20, (300,), generator=g).float()  # many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()).mean()
    assert metrics.auc(labels, scores) == pytest.approx(float(pairwise))
    users = torch.randint(0, 5, (300,), generator=g)
    want, w = 0.0, 0
    for u in range(5):
        m = users == u
        want += metrics.auc(labels[m], scores[m]) * int(m.sum())
        w += int(m.sum())
    assert metrics.gauc(users, labels, scores) == pytest.approx(want / w)
    assert metrics.gauc_users(users, labels, scores)[1] == 5


def test_ndcg():
    relevant = torch.tensor([[True, False, True, False], [False, False, False, False]])
    perfect = torch.tensor([[0, 2], [1, 3]])
    worst = torch.tensor([[1, 3], [0, 1]])
    assert metrics.ndcg_at_k(perfect, relevant) == pytest.approx(1.0)
    assert metrics.ndcg_at_k(worst, relevant) == pytest.approx(0.0)
    half = torch.tensor([[1, 0], [0, 1]])
    assert metrics.ndcg_at_k(half, relevant) == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))


def test_distributed_data_parallel_on_cpu(tmp_path):
    """torchrun with two processes (gloo): disjoint shards, one set of weights."""
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "dare_kernels.train"] + _small("dare") + ["--device", "cpu", "--steps", "100", "--eval-every", "10",
                                                          "--patience", "1", "--lr", "0", "--metrics-json", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    # Early stopping reaches every rank (no hang): stopped at step 20 with patience 1.
    assert result["validation"][-1]["step"] == 20 and result["test"]["auc"] == result["test"]["auc"]
    # The default (sparse rows) exchanges the tables' rows outside DDP; the replicas end identical.
    assert result["world_size"] == 2 and result["table_gradients"] == "all-gather of touched rows"
    assert result["replica_max_abs_diff"] == 0.0


def test_data_parallel_matches_one_process_on_cpu(tmp_path):
    """2 processes (gloo) x B/2 against 1 process x B, the CLI's default step (sparse
    rows + RowAdam, SyncBatchNorm): bench/tools/ddp_scaling.py check. Each step, rank
    0's exchanged gradients equal those of a copy of its replica run on the whole
    batch; the replicas end bit-identical; 2 free-running steps later all but a few
    elements (those whose gradient is rounding, which Adam moves by up to lr) equal a
    one-process run's. Without SyncBatchNorm, the 1 / world of the rows or the rows'
    exchange the gradients differ by ~100% (measured)."""
    out = tmp_path / "check.json"
    tool = os.path.join(os.path.dirname(__file__), "..", "bench", "tools", "ddp_scaling.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", tool, "check",
           "--device", "cpu", "--items", "500", "--categories", "20", "--L", "150", "--B", "32", "--d-att", "8",
           "--d-rep", "16", "--k", "16", "--steps", "2", "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(dare_kernels.__file__)),
                                          os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and result["config"]["optimizer"] == "rows"
    check = result["result"]
    assert check["grad_max_rel_diff_worst"] < 1e-4, check["grad_max_rel_diff"]  # measured ~2e-6
    assert check["replica_max_abs_diff"] == 0.0
    assert check["param_fraction_apart"] < 0.01, check["param_max_diff_over_lr"]  # measured 0.07%
    assert max(check["buffer_max_abs_diff"].values()) < 1e-4  # BatchNorm's running statistics: the whole batch's


def test_sync_batchnorm_is_batchnorm_in_one_process():
    """Without a process group SyncBatchNorm is BatchNorm1d; the swap keeps the
    state_dict (checkpoints load either way) and the parameters' values."""
    from dare_kernels import distributed
    torch.manual_seed(0)
    m = LongSequenceCTR("dare", 50, 5, 20, d_att=8, d_rep=8, k=4)
    with torch.no_grad():
        m.mlp[0].weight.uniform_(0.5, 1.5)
    x = torch.randn(16, m.mlp[0].num_features)
    plain = copy.deepcopy(m.mlp[0])
    before = {k: v.clone() for k, v in m.state_dict().items()}
    distributed.convert_sync_batchnorm(m)
    assert isinstance(m.mlp[0], distributed.SyncBatchNorm)
    after = m.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    torch.testing.assert_close(m.mlp[0](x), plain(x))
    torch.testing.assert_close(m.mlp[0].running_var, plain.running_var)


def test_nccl_defaults_keep_what_the_user_set():
    from dare_kernels import distributed
    env = {"NCCL_NVLS_ENABLE": "1"}
    assert distributed.set_nccl_defaults(env) == {"NCCL_NVLS_ENABLE": "1", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}


def test_model_compiles_with_the_op_in_graph(seed):
    """torch.compile traces through the op (register_fake) inside a real model."""
    data = generate(SyntheticConfig(users=40, n_items=300, n_categories=10, max_len=300, min_len=5, seed=seed))
    m = LongSequenceCTR("dare", data.n_items, data.n_cats, 300, d_att=16, d_rep=32, k=16).eval()
    batch = next(batches(data, 32))
    with torch.no_grad():
        eager = m(batch)
        compiled = torch.compile(m, backend="aot_eager", fullgraph=True)(batch)
    torch.testing.assert_close(compiled[0], eager[0])
    assert torch.equal(compiled[2], eager[2])


def test_table_cast_keeps_sparse_gradients():
    """The search's bfloat16 copy of a wide table passes a sparse gradient back as
    sparse rows of the table's dtype, as they come (torch 2.11's .to() backward
    refuses them), and a dense one as dense."""
    from dare_kernels.models.dare import _Cast
    table = torch.randn(6, 3, requires_grad=True)
    rows = torch.tensor([[1, 4, 1]])
    out = _Cast.apply(table, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    grad = torch.sparse_coo_tensor(rows, torch.ones(3, 3, dtype=torch.bfloat16), (6, 3))
    (g,) = torch.autograd.grad(out, table, grad)
    assert g.is_sparse and g.dtype == torch.float32 and not g.is_coalesced() and g._nnz() == 3  # no coalesce
    assert g.to_dense()[1].tolist() == [2.0] * 3 and g.to_dense()[4].tolist() == [1.0] * 3
    (g,) = torch.autograd.grad(_Cast.apply(table, torch.bfloat16), table, torch.ones(6, 3, dtype=torch.bfloat16))
    assert not g.is_sparse and g.dtype == torch.float32 and torch.all(g == 1)


def test_raw_positions(seed):
    """positions="raw": one row per distance up to position_cap (the public code's), the
    farther ones sharing the last; the search is still the exact top-k of the keys."""
    data, batch = _batch(seed, max_len=60)
    m = LongSequenceCTR("dare", data.n_items, data.n_cats, 60, d_att=8, d_rep=8, k=8, positions="raw",
                        position_cap=40, embedding_std=0.3)
    assert m.n_pos == 41 and m.att.pos.weight.shape[0] == 41 and m.position_mode == "raw"
    assert torch.equal(m.positions(60, "cpu"), torch.arange(1, 61).clamp(max=40))
    assert dare_kernels.models.dare.raw_positions(5, 3).tolist() == [1, 2, 3, 3, 3]
    # Uncapped (cap above max_len): max_len + 1 rows, distance j + 1 for behaviour j.
    full = LongSequenceCTR("twin", data.n_items, data.n_cats, 60, d_rep=8, k=8, positions="raw")
    assert full.n_pos == 61 and torch.equal(full.positions(60, "cpu"), torch.arange(1, 61))
    assert LongSequenceCTR("dare", 50, 5, 60, d_att=8, d_rep=8).n_pos == 13  # log buckets (default)
    with torch.no_grad():
        query, keys, lengths, pos = m.search_inputs(batch)
        assert torch.equal(pos[0], m.positions(keys.shape[1], "cpu"))
        stage = m.search_stage(batch)
        explicit = dare_kernels.topk_attention(query, keys, 8, lengths=lengths)
        logits = m(batch)[0]
    torch.testing.assert_close(stage[0], explicit[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(logits).all()
    with pytest.raises(ValueError, match=r"positions must be one of \('log', 'raw'\), got 'linear'"):
        LongSequenceCTR("dare", 50, 5, 60, positions="linear")
    for cap in (0, 2.5, True):
        with pytest.raises(ValueError, match="position_cap must be a positive int"):
            LongSequenceCTR("dare", 50, 5, 60, positions="raw", position_cap=cap)


def test_normal_init():
    """init="normal": every non-bias parameter but the tables from N(0, 0.01) (the public
    code's), biases and tables as before; "torch" (default) keeps PyTorch's."""
    torch.manual_seed(0)
    m = LongSequenceCTR("twin_proj", 5000, 50, 60, d_rep=64, widths="field", init="normal", aux_loss=True)
    torch.manual_seed(0)
    default = LongSequenceCTR("twin_proj", 5000, 50, 60, d_rep=64, widths="field", aux_loss=True)
    assert m.init_mode == "normal" and default.init_mode == "torch"
    tables = {id(t) for t in m.table_parameters()}
    checked = set()
    for (name, p), (_, q) in zip(m.named_parameters(), default.named_parameters()):
        is_table, p, q = id(p) in tables, p.detach(), q.detach()
        if is_table:
            assert 0.009 < float(p[1:].std()) < 0.011, name  # embedding_std, as before
        elif name.endswith("bias"):
            assert torch.equal(p, q), name  # PyTorch's
        else:
            checked.add(type(m.get_submodule(name.rsplit(".", 1)[0])).__name__)
            assert float(p.abs().max()) < 0.07 and not torch.equal(p, q), name
            if p.numel() >= 1000:
                assert 0.009 < float(p.std()) < 0.011, name
    assert checked == {"Linear", "BatchNorm1d", "PReLU"}
    assert torch.all(default.mlp[0].weight == 1) and torch.all(default.mlp[2].weight == 0.25)
    with pytest.raises(ValueError, match=r"init must be one of \('torch', 'normal'\), got 'xavier'"):
        LongSequenceCTR("dare", 50, 5, 60, init="xavier")


def test_identity_maps_start_twin_proj_as_twin(seed):
    """identity_maps=True: every square map is the identity, so with TWIN's tables and
    MLP twin_proj computes TWIN's logits, search and gradients to the tables."""
    data, batch = _batch(seed, max_len=60)
    twin = LongSequenceCTR("twin", data.n_items, data.n_cats, 60, d_rep=8, k=8, widths="field", embedding_std=0.3)
    proj = LongSequenceCTR("twin_proj", data.n_items, data.n_cats, 60, d_rep=8, k=8, widths="field",
                           embedding_std=0.3, identity_maps=True, init="normal")
    assert proj.identity_maps and all(torch.equal(m.weight, torch.eye(8)) for ms in
                                      (proj.query_maps, proj.key_maps, proj.target_maps, proj.value_maps) for m in ms)
    missing = proj.load_state_dict(twin.state_dict(), strict=False).missing_keys
    assert missing and all(k.split(".")[0].endswith("_maps") for k in missing)
    twin.eval(), proj.eval()
    a, b = twin(batch), proj(batch)
    torch.testing.assert_close(b[0], a[0])
    assert torch.equal(b[2], a[2])
    with pytest.raises(ValueError, match="identity_maps must be True or False"):
        LongSequenceCTR("twin_proj", 50, 5, 60, identity_maps="yes")
    with pytest.raises(TypeError):
        LongSequenceCTR("twin", 50, 5, 60, identity_maps=True)


def test_cli_positions_init_and_identity_maps(tmp_path, capsys):
    out = tmp_path / "m.json"
    r = train.main(_small("twin_proj") + ["--model", "twin_proj", "--positions", "raw", "--position-cap", "100",
                                          "--init", "normal", "--identity-maps", "--steps", "3", "--metrics-json",
                                          str(out)])
    assert r["model"]["positions"] == "raw" and r["model"]["position_rows"] == 101
    assert r["model"]["init"] == "normal" and r["model"]["identity_maps"]
    assert json.loads(out.read_text())["args"]["positions"] == "raw"
    args = train.parse_args(SMALL)
    assert (args.positions, args.position_cap, args.init, args.identity_maps) == ("log", None, "torch", False)
    with pytest.raises(ValueError, match="--position-cap applies to --positions raw only"):
        train.build_model(train.parse_args(SMALL + ["--position-cap", "5"]), _batch(0, 40)[0])
    with pytest.raises(ValueError, match="--position-cap must be a positive number of positions, got 0"):
        train.build_model(train.parse_args(SMALL + ["--positions", "raw", "--position-cap", "0"]), _batch(0, 40)[0])
    with pytest.raises(ValueError, match="--identity-maps applies to --model twin_proj only"):
        train.build_model(train.parse_args(SMALL + ["--identity-maps"]), _batch(0, 40)[0])
    for bad, accepted in ((["--positions", "linear"], "'log', 'raw'"), (["--init", "xavier"], "'torch', 'normal'")):
        with pytest.raises(SystemExit):
            train.parse_args(bad)
        assert f"argument {bad[0]}: invalid choice: '{bad[1]}' (choose from {accepted})" in capsys.readouterr().err


def test_help_gives_each_default_once(capsys):
    """Every option has help; a default is stated once (never "(default: None)"), 0 included."""
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default 16; not used by twin and twin_proj)" in text
    assert "model seed (initialisation, batch order) (default: 0)" in text
    assert os.path.join(tempfile.gettempdir(), train.RUNS_FOLDER) in text
    parser = train.build_parser()
    formatter = train._HelpFormatter("python -m dare_kernels.train")
    for action in parser._actions:
        assert action.help, action.option_strings
        help_text = formatter._get_help_string(action).replace("%(default)s", str(action.default))
        assert help_text.count("default") <= 1, action.option_strings


def test_synthetic_defaults_and_batch_size():
    """--data synthetic defaults to data and a batch that learn on a CPU in seconds; public
    data keep the paper's batch 2048; an explicit --batch-size wins."""
    assert train.parse_args([]).batch_size == 512
    assert train.parse_args(["--data", "taobao:x.csv"]).batch_size == 2048
    assert train.parse_args(["--batch-size", "64"]).batch_size == 64
    d = LOADERS["synthetic"].defaults
    assert (d["users"], d["targets"], d["max_len"]) == (3000, 20, 300)


def test_model_line_explains_the_widths(capsys):
    train.main(["--steps", "1", "--users", "200", "--metrics-json", os.devnull, "--d-att", "16"])
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("model:"))
    assert "attention 48 wide (item 16 + category 16 + position 16; --widths field: every field --d-att 16 wide)" in line
    train.main(["--steps", "1", "--users", "200", "--metrics-json", os.devnull, "--model", "twin", "--widths", "split",
                "--d-rep", "32"])
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("model:"))
    assert "attention (the shared tables) 32 wide (item 16 + category 8 + position 8; --widths split: --d-rep 32" in line


@pytest.mark.parametrize("model", MODELS)
def test_many_candidates_score_as_rows_of_their_own(model, seed):
    """Serving: target_item (B, T) scores T candidates against each history in one
    pass; each candidate gets what it gets as a row of its own (history repeated)."""
    data, batch = _batch(seed, max_len=120)
    B, T = 5, 7
    m = LongSequenceCTR(model, data.n_items, data.n_cats, 120, d_att=8, d_rep=16, k=12, embedding_std=0.3).eval()
    g = torch.Generator().manual_seed(seed)
    hist = {key: batch[key][:B] for key in ("history_items", "history_cats", "lengths")}
    hist["lengths"] = hist["lengths"].clone()
    hist["lengths"][1] = 0  # a user with no history
    hist["lengths"][2] = 5  # fewer behaviours than k
    cands = {"target_item": torch.randint(1, data.n_items + 1, (B, T), generator=g),
             "target_cat": torch.randint(1, data.n_cats + 1, (B, T), generator=g)}
    rows = {key: v.repeat_interleave(T, 0) for key, v in hist.items()}
    rows.update({key: v.reshape(-1) for key, v in cands.items()})
    with torch.no_grad():
        logits, scores, idx = m({**hist, **cands})
        want_logits, want_scores, want_idx = m(rows)
    assert logits.shape == (B, T) and scores.shape == idx.shape == (B, T, 12)
    assert torch.equal(idx.reshape(B * T, 12), want_idx)
    torch.testing.assert_close(scores.reshape(B * T, 12), want_scores)
    torch.testing.assert_close(logits.reshape(-1), want_logits)


def test_candidates_shape_is_checked():
    m = LongSequenceCTR("dare", 50, 5, 20, d_att=8, d_rep=8, k=4).eval()
    batch = {"history_items": torch.ones(3, 20, dtype=torch.long), "history_cats": torch.ones(3, 20, dtype=torch.long),
             "lengths": torch.full((3,), 20), "target_item": torch.ones(3, 2, dtype=torch.long),
             "target_cat": torch.ones(3, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"target_item and target_cat must both have shape \(B,\) or \(B, T\)"):
        m(batch)
    batch["target_cat"] = torch.ones(3, 2, dtype=torch.long)
    assert m(batch)[0].shape == (3, 2)
    aux = LongSequenceCTR("dare", 50, 5, 20, d_att=8, d_rep=8, k=4, aux_loss=True).eval()
    with pytest.raises(ValueError, match="aux=True needs one target a row"):
        aux(batch, aux=True)


@pytest.mark.parametrize("n_rows", [20, 300], ids=["tiny_matmul", "index_add"])
def test_dense_bag_and_lookup_gradients(n_rows, seed):
    """The dense-gradient lookups of the model's small tables (models.dare._Bag,
    _Lookup) give the forward and the gradients of PyTorch's embedding_bag /
    embedding (padding_idx) in float64, in both of their ways of summing rows."""
    from dare_kernels.models.dare import _Bag, _Lookup
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(n_rows, 6, generator=g)
    ids = torch.randint(0, n_rows, (9, 7), generator=g)
    ids[0, :3] = 0  # the padding id, repeated
    w = torch.rand(9, 7, generator=g)
    out_grad = torch.randn(9, 6, generator=g)
    t, ww = table.clone().requires_grad_(), w.clone().requires_grad_()
    got = _Bag.apply(t, ids, ww)
    got.backward(out_grad)
    t64, w64 = table.double().requires_grad_(), w.double().requires_grad_()
    want = torch.nn.functional.embedding_bag(ids, t64, per_sample_weights=w64, mode="sum")
    want.backward(out_grad.double())
    torch.testing.assert_close(got, want.float())
    torch.testing.assert_close(t.grad, t64.grad.float())
    torch.testing.assert_close(ww.grad, w64.grad.float())
    t = table.clone().requires_grad_()
    got = _Lookup.apply(t, ids, 0, False)
    got.backward(torch.randn(got.shape, generator=g.manual_seed(seed)))
    t64 = table.double().requires_grad_()
    want = torch.nn.functional.embedding(ids, t64, padding_idx=0)
    want.backward(torch.randn(want.shape, generator=g.manual_seed(seed)).double())
    torch.testing.assert_close(got, want.float())
    torch.testing.assert_close(t.grad, t64.grad.float())
    assert torch.all(t.grad[0] == 0)


def test_bag_of_few_sums_gathers(seed, monkeypatch):
    """FieldEmbeddings.bag gives the same sums and gradients whether it gathers the
    rows (fewer than BAG_MIN_SUMS sums: a serving request) or runs embedding bags."""
    from dare_kernels.models import dare
    m = LongSequenceCTR("dare", 50, 9, 40, d_att=8, d_rep=16, k=6, embedding_std=0.3)
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, n, (5, 6), generator=g) for n in (51, 10, m.n_pos)]
    w = torch.rand(5, 6, generator=g)
    results = []
    for low in (1, 1000):
        monkeypatch.setattr(dare, "BAG_MIN_SUMS", low)
        m.zero_grad(set_to_none=True)
        out = torch.cat(m.rep.bag(*ids, w), -1)
        out.square().sum().backward()
        results.append((out, [t.grad.to_dense() for t in m.rep.tables()]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_fused_bag_matches_pytorch(device, sparse, seed, monkeypatch):
    """FieldEmbeddings.bag through the Triton kernels (the GPU's path; on CPU tensors
    under the interpreter) gives PyTorch's sums and gradients: weights, sparse
    per-slot rows (padding ids zero) and dense tables, padding ids adding nothing;
    many sums (the embedding_bag path) and few (the gathered one)."""
    from dare_kernels import triton_backend
    from dare_kernels.models import dare
    if triton_backend.unavailable(device) is not None:
        pytest.skip(triton_backend.unavailable(device))
    m = LongSequenceCTR("dare", 50, 9, 40, d_att=8, d_rep=(8, 4, 2), k=6, embedding_std=0.3, sparse_grad=sparse,
                        sparse_min_rows=20).to(device)
    g = torch.Generator().manual_seed(seed)
    N = 5 if device == "cpu" else 300  # on a GPU past BAG_MIN_SUMS: PyTorch's embedding_bag as the reference
    ids = [torch.randint(0, n, (N, 6), generator=g).to(device) for n in (51, 10, m.n_pos)]
    ids[0][0, :2] = 0  # the item's padding id
    ids[1][1, 3] = 0
    w = torch.rand(N, 6, generator=g).to(device)
    results = []
    for fused in (True, False):
        monkeypatch.setattr(dare, "FUSED_BAG", fused)
        m.zero_grad(set_to_none=True)
        ww = w.clone().requires_grad_()
        out = torch.cat(m.rep.bag(*ids, ww), -1)
        (out * torch.arange(out.numel(), dtype=torch.float32, device=device).reshape(out.shape).cos()).sum().backward()
        grads = [t.grad for t in m.rep.tables()]
        assert [gr.is_sparse for gr in grads] == [m.rep.item.sparse, m.rep.cat.sparse, m.rep.pos.sparse]
        results.append((out.detach(), ww.grad, [gr.to_dense() for gr in grads]))
    assert m.rep.item.sparse == sparse  # 51 rows >= sparse_min_rows: the item table takes sparse rows
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    for a, b in zip(results[0][2], results[1][2]):
        torch.testing.assert_close(a, b)
    assert torch.all(results[0][2][0][0] == 0)  # the padding row receives nothing


def test_fixed_width_batches_give_the_same_model_outputs(seed):
    """batches(fixed_width=True) (the training CLI's batches under a CUDA graph): every
    batch has the data's history length, and the model's logits, search scores and
    indices equal those of the batch cut to its longest history (padding is masked)."""
    data = generate(SyntheticConfig(users=40, n_items=300, n_categories=10, max_len=120, min_len=5, seed=seed))
    m = LongSequenceCTR("dare", data.n_items, data.n_cats, 120, d_att=8, d_rep=16, k=24).eval()
    cut = list(batches(data, 16))
    fixed = list(batches(data, 16, fixed_width=True))
    assert {b["history_items"].shape[1] for b in fixed} == {data.history_len}
    assert any(b["history_items"].shape[1] < data.history_len for b in cut)
    with torch.no_grad():
        for a, b in zip(cut, fixed):
            assert torch.equal(a["lengths"], b["lengths"])
            got, want = m(b), m(a)
            torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
            assert torch.equal(got[2], want[2]) and torch.equal(got[1], want[1])


def test_head_runs_in_float32_under_autocast():
    """The MLP head ignores autocast (small, launch-bound GEMMs: bfloat16 would only
    add casts): the same float32 logits with autocast on as off."""
    from dare_kernels.models.dare import _head
    torch.manual_seed(0)
    head = _head(12).eval()
    x = torch.randn(5, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = head(x.bfloat16())
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, head(x.bfloat16().float()), rtol=0, atol=0)
