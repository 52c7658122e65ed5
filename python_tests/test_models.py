"""The reference DARE/TWIN models, data and training loop (CPU, small)."""
import json
import os

import numpy as np
import pytest
import torch

from dare_kernels import metrics, train
from dare_kernels.data import SyntheticConfig, batches, generate
from dare_kernels.data import public
from dare_kernels.models import MODELS, LongSequenceCTR

from samples import Sample
from test_topk_attention import assert_matches_reference

SMALL = ["--users", "800", "--items", "500", "--categories", "20", "--max-len", "150", "--batch-size", "64",
         "--d-att", "16", "--d-rep", "32", "--k", "16", "--eval-every", "100", "--quiet"]


@pytest.mark.parametrize("model", MODELS)
def test_trains_beyond_chance(model, tmp_path):
    out = tmp_path / "metrics.json"
    result = train.main(["--model", model, "--steps", "250", "--metrics-json", str(out)] + SMALL)
    assert result["test"]["auc"] > 0.65, result["test"]
    assert result["test"]["ndcg@16"] > 0.3, result["test"]
    saved = json.loads(out.read_text())
    assert saved["test"] == result["test"] and saved["validation"][-1]["step"] == 250


@pytest.mark.parametrize("model", MODELS)
def test_search_is_the_exact_top_k(model, seed):
    data = generate(SyntheticConfig(users=50, n_items=300, n_categories=10, max_len=400, min_len=5, seed=seed))
    m = LongSequenceCTR(model, data.n_items, data.n_cats, 400, d_att=16, d_rep=32, k=24)
    batch = next(batches(data, 64))
    with torch.no_grad():
        query, keys, lengths, _ = m.search_inputs(batch)  # the keys looked up explicitly
        _, scores, idx = m(batch)
        stage = m.search_stage(batch)  # the op from ids, as the forward runs it
    assert_matches_reference((scores, idx), Sample(query, keys, 24, lengths))
    assert torch.equal(stage[1], idx) and torch.equal(stage[0], scores)


def test_checkpoint_round_trip(tmp_path):
    ckpt = str(tmp_path / "model.pt")
    first = train.main(["--steps", "40", "--eval-every", "20", "--checkpoint", ckpt] + SMALL)
    state = torch.load(ckpt)
    assert state["step"] == 40
    resumed = train.main(["--steps", "60", "--eval-every", "20", "--checkpoint", ckpt, "--resume"] + SMALL)
    assert [h["step"] for h in resumed["validation"]] == [60]
    # Loading the checkpoint into a fresh model reproduces its predictions.
    args = train.parse_args(["--steps", "60"] + SMALL)
    data = train.load_data("synthetic", args)
    fresh = train.build_model(args, data)
    fresh.load_state_dict(torch.load(ckpt)["model"])
    again = train.evaluate(fresh, data.split(seed=0)[2], args, torch.device("cpu"))
    assert again == pytest.approx(resumed["test"], nan_ok=True)
    assert first["test"] != resumed["test"]


def _log(n_users=30, per_user=(5, 40), seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = rng.integers(*per_user)
        t = np.sort(rng.integers(1_500_000_000, 1_500_100_000, n))
        items = rng.integers(1000, 1100, n)
        for ti, it in zip(t, items):
            rows.append((10 + u * 7, int(it), int(it) % 9 + 500, int(ti)))
    return rows


def _check_loaded(data, rows, max_len, min_len, offsets):
    by_user = {}
    for u, it, c, t in rows:
        by_user.setdefault(u, []).append((t, it, c))
    long_users = [u for u, seq in by_user.items() if len(seq) >= min_len + max(offsets) + 1]
    H = len(long_users) * len(offsets)
    assert data.history_items.shape == (H, max_len) and len(data) == 2 * H
    assert data.label.sum() == H
    # Remapped ids are contiguous from 1; padding is 0.
    items_seen = {it for _, it, _, _ in rows}
    assert data.n_items == len(items_seen)
    valid = torch.arange(max_len)[None, :] < data.lengths[:, None]
    assert (data.history_items[~valid] == 0).all() and (data.history_items[valid] > 0).all()
    # Histories hold the behaviours just before the target, most recent first.
    inv = {}
    for it in sorted(items_seen):
        inv[len(inv) + 1] = it
    for h in range(H):
        u = long_users[h % len(long_users)]
        o = offsets[h // len(long_users)]
        seq = [it for _, it, _ in sorted(by_user[u], key=lambda x: x[0])]
        t = len(seq) - 1 - o
        want_hist = seq[max(0, t - max_len):t][::-1]
        got = [inv[int(i)] for i in data.history_items[h, :int(data.lengths[h])]]
        assert got == want_hist
        assert inv[int(data.target_item[h])] == seq[t]
    # Negatives are never in their own history.
    neg = data.label == 0
    hist = data.history_items[data.user[neg]]
    assert not (hist == data.target_item[neg][:, None]).any()


def test_taobao_loader(tmp_path):
    rows = _log(seed=1)
    path = tmp_path / "UserBehavior.csv"
    path.write_text("".join(f"{u},{it},{c},pv,{t}\n" for u, it, c, t in rows))
    data = public.load_taobao(str(path), max_len=12, min_len=8, target_offsets=(0, 2))
    _check_loaded(data, rows, 12, 8, (0, 2))


def test_tmall_loader(tmp_path):
    rows = _log(seed=2)
    path = tmp_path / "user_log_format1.csv"
    path.write_text("user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type\n"
                    + "".join(f"{u},{it},{c},3,4,{t},0\n" for u, it, c, t in rows))
    data = public.load_tmall(str(path), max_len=20, min_len=10)
    _check_loaded(data, rows, 20, 10, (0,))


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
    import subprocess
    import sys
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "dare_kernels.train", "--device", "cpu", "--steps", "30", "--metrics-json", str(out)] + SMALL
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["validation"][-1]["step"] == 30 and result["test"]["auc"] == result["test"]["auc"]


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


def test_registries():
    from dare_kernels.data import LOADERS
    from dare_kernels.models import SearchCTR
    assert set(MODELS) >= {"dare", "twin", "twin_proj", "twin_4e"}
    for name, cls in MODELS.items():
        assert issubclass(cls, SearchCTR) and cls.variant == name
        m = LongSequenceCTR(name, 50, 5, 64, d_att=8, d_rep=16, k=4)
        assert type(m) is cls
    with pytest.raises(ValueError, match="variant must be one of"):
        LongSequenceCTR("din", 50, 5, 64)
    assert {"synthetic", "taobao", "tmall"} <= set(LOADERS)
    assert LOADERS["taobao"].needs_path and not LOADERS["synthetic"].needs_path


def test_cli_rejects_unused_options_and_warns_on_d_att(tmp_path):
    with pytest.raises(ValueError, match="does not use --users"):
        train.main(["--data", "taobao:" + str(tmp_path / "x.csv"), "--users", "10", "--quiet"])
    with pytest.raises(ValueError, match="needs a path"):
        train.main(["--data", "taobao", "--quiet"])
    with pytest.warns(UserWarning, match="--d-att 16 is not used by --model twin"):
        train.build_model(train.parse_args(["--model", "twin", "--d-att", "16"]), generate(
            SyntheticConfig(users=20, n_items=50, n_categories=5, max_len=40, min_len=5)))
