"""Optional: the swaps of docs/layers.md ("FuxiCTR") inside FuxiCTR's own LongCTR models
(TWIN, SIM, ETA, MIRRN), against the models' unmodified forward: equal outputs, selected
sets and gradients on left-padded histories with rows of 0, 1, k-1, k, k+1 and L
behaviours.

Needs the fuxictr package and FuxiCTR's model_zoo/LongCTR (in its repository, not the
wheel): FUXICTR_MODEL_ZOO=/path/to/FuxiCTR/model_zoo/LongCTR. Skips without either;
docs/layers.md says how to install and run it."""
import copy
import os
import sys

import pytest
import torch

pytest.importorskip("fuxictr", reason="the optional FuxiCTR suite needs fuxictr (docs/layers.md, FuxiCTR)")
ZOO = os.environ.get("FUXICTR_MODEL_ZOO", "")
if not os.path.isfile(os.path.join(ZOO, "TWIN", "TWIN.py")):
    pytest.skip("set FUXICTR_MODEL_ZOO to FuxiCTR's model_zoo/LongCTR (docs/layers.md, FuxiCTR)",
                allow_module_level=True)
sys.path.insert(0, ZOO)

from fuxictr.features import FeatureMap  # noqa: E402
from ETA.ETA import ETA  # noqa: E402
from MIRRN.MIRRN import MIRRN  # noqa: E402
from SIM.SIM import SIM  # noqa: E402
from TWIN.TWIN import TWIN  # noqa: E402

from dare_kernels.fuxictr import MultiHeadTopKAttention, hash_scores, validity  # noqa: E402
from dare_kernels.layers import topk_search  # noqa: E402

EMB, K, L, B = 8, 8, 30, 10  # two item fields of EMB: item_info_dim 16
ROWS = [0, 1, K - 1, K, K + 1, L]


def feature_map():
    fm = FeatureMap("synthetic", "/nonexistent")
    fm.features = {
        "user_id": {"type": "categorical", "source": "user", "vocab_size": 50},
        "item_id": {"type": "categorical", "source": "item", "vocab_size": 500, "padding_idx": 0},
        "cate_id": {"type": "categorical", "source": "item", "vocab_size": 20, "padding_idx": 0},
    }
    fm.labels, fm.num_fields, fm.default_emb_dim = ["label"], 3, EMB
    return fm


def build(cls, seed, **kw):
    torch.manual_seed(seed)
    model = cls(feature_map(), embedding_dim=EMB, attention_dim=16, num_heads=2, topk=K, short_seq_len=6,
               optimizer="adam", loss="binary_crossentropy", model_root="/nonexistent", verbose=0,
               metrics=["AUC"], **kw)
    with torch.no_grad():  # FuxiCTR's embeddings start at std 1e-4, under which y_pred hardly moves
        for table in model.embedding_layer.embedding_layer.embedding_layers.values():
            table.weight[1:].normal_()  # row 0, the padding, stays zero (padding_idx)
    return model


def batch(g, length=L):
    """FuxiCTR's LongCTR batch: (features, item features of the L history items then the
    target, flattened, id 0 = padding in front, mask = 1 where valid as a float)."""
    n = torch.randint(0, length + 1, (B,), generator=g)
    n[:len(ROWS)] = torch.tensor(ROWS).clamp(max=length)
    pad = torch.arange(length + 1) < (length - n)[:, None]
    items = torch.randint(1, 500, (B, length + 1), generator=g).masked_fill(pad, 0)
    cates = torch.randint(1, 20, (B, length + 1), generator=g).masked_fill(pad, 0)
    mask = (items[:, :-1] > 0).float()
    feats = {"user_id": torch.randint(0, 50, (B,), generator=g), "label": torch.ones(B)}
    return feats, {"item_id": items.flatten(), "cate_id": cates.flatten()}, mask


def run(model, inputs, forward=None):
    feats, items, mask = inputs
    inputs = (dict(feats), dict(items), mask)  # FuxiCTR's get_inputs writes into the item dict
    return model(inputs) if forward is None else forward(model, inputs)


def grads(model, loss):
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    gs = torch.autograd.grad(loss, [p for n, p in model.named_parameters() if p.requires_grad], allow_unused=True)
    return {n: (torch.zeros(()) if gr is None else gr) for n, gr in zip(names, gs)}


def assert_same(a, b):
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4, msg=key)


def history(model, inputs):
    """The model's own (target, sequence, mask, leading embeddings), as its forward builds them."""
    feats, items, mask = model.get_inputs(inputs)
    lead = [model.embedding_layer(feats, flatten_emb=True)] if feats else []
    item = model.embedding_layer(items, flatten_emb=True).view(mask.shape[0], -1, model.item_info_dim)
    return item[:, -1], item[:, :-1], mask, lead, item


def pick(seq, mask, idx):
    """The selected behaviours and FuxiCTR's topk_mask, -1 slots clamped and marked invalid."""
    pos = idx.clamp(min=0)
    return seq.gather(1, pos[..., None].expand(-1, -1, seq.shape[-1])), mask.gather(1, pos) * (idx >= 0)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_twin_long_attention_swapped(seed, dropout):
    """TWIN with its long_attention replaced by ours, the state dict loaded as it is:
    y_pred and every parameter's gradient equal (with attention dropout in training:
    the same generator state drops the same weights)."""
    g = torch.Generator().manual_seed(seed)
    model = build(TWIN, seed, attention_dropout=dropout)
    swapped = copy.deepcopy(model)
    old = model.long_attention
    swapped.long_attention = MultiHeadTopKAttention(old.W_q.in_features, 0, EMB, old.num_heads * old.head_dim,
                                                    old.topk, old.num_heads, dropout)
    swapped.long_attention.load_state_dict(old.state_dict())
    for length in (L, K - 2):  # and a batch shorter than k (not than short_seq_len): FuxiCTR searches min(k, L)
        inputs = batch(g, length)
        for m in (model, swapped):  # dropout draws alike where both have k slots (FuxiCTR: min(k, L))
            m.train(dropout > 0 and length >= K)
        torch.manual_seed(seed)
        ref = run(model, inputs)["y_pred"]
        torch.manual_seed(seed)
        out = run(swapped, inputs)["y_pred"]
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
        assert_same(grads(swapped, out.sum()), grads(model, ref.sum()))
    target, seq, mask, _, _ = history(model, batch(g))
    _, idx = swapped.long_attention.search(target, seq, mask)
    q = old.W_q(target).view(B, old.num_heads, 1, old.head_dim)
    keys = old.W_h(seq).view(B, L, old.num_heads, old.head_dim).transpose(1, 2)
    # elementwise, not matmul: a repeated item must score exactly alike to tie
    dense = (q * keys).sum(-1).masked_fill(mask[:, None] == 0, float("-inf"))
    ref_idx = dense.sort(dim=-1, descending=True, stable=True).indices[..., :K]  # repeated items tie: lower first
    n = mask.sum(1).long().clamp(max=K)
    for b in range(B):  # the selected sets, valid slots
        assert torch.equal(idx[b, :, :n[b]], ref_idx[b, :, :n[b]]) and bool((idx[b, :, n[b]:] == -1).all())


def query_of(model, target):
    """SIM's first-stage query with W_b folded in: (W_a t) . (W_b e) = (W_b^T W_a t) . e."""
    return model.W_a(target) @ model.W_b.weight


def sim_forward(search_kw):
    """SIM.forward with its first stage's top-k swapped for topk_search (docs/layers.md);
    the auxiliary loss still reads every score (pooled_u_rep), as SIM's does."""
    def forward(model, inputs):
        target, seq, mask, lead, item = history(model, inputs)
        short = model.short_attention(target, item[:, -model.short_seq_len:-1], mask[:, -model.short_seq_len:-1])
        qk = torch.bmm(model.W_a(target).unsqueeze(1), model.W_b(seq).transpose(-1, -2)).squeeze(1) * mask
        pooled = torch.bmm(qk.unsqueeze(1), seq).squeeze(1)
        y_aux = model.dnn_aux(torch.cat(lead + [target, pooled], dim=-1))
        _, idx = topk_search(query_of(model, target), seq, model.topk, mask=validity(mask), **search_kw)
        topk_emb, topk_mask = pick(seq, mask, idx)
        long = model.long_attention(target, topk_emb, topk_mask)
        return {"y_pred": model.dnn(torch.cat(lead + [target, short, long], dim=-1)), "y_aux": y_aux}
    return forward


def test_sim_first_stage_swapped(seed):
    """SIM with padding_score=0.0 gives SIM's y_pred, y_aux and gradients; without it
    (padding excluded) rows whose valid behaviours lost to padding differ, as documented."""
    g = torch.Generator().manual_seed(seed)
    model = build(SIM, seed)
    inputs = batch(g)
    ref = run(model, inputs)
    out = run(model, inputs, sim_forward(dict(padding_score=0.0)))
    for key in ("y_pred", "y_aux"):
        torch.testing.assert_close(out[key], ref[key], atol=1e-5, rtol=1e-4)
    assert_same(grads(model, out["y_pred"].sum() + out["y_aux"].sum()),
                grads(model, ref["y_pred"].sum() + ref["y_aux"].sum()))
    excluded = run(model, inputs, sim_forward({}))
    target, seq, mask, _, _ = history(model, inputs)
    _, kept = topk_search(query_of(model, target), seq, K, mask=validity(mask), padding_score=0.0)
    _, every = topk_search(query_of(model, target), seq, K, mask=validity(mask))
    lost = ((kept >= 0).sum(1) < (every >= 0).sum(1)).tolist()  # valid behaviours lost to padding
    assert any(lost)
    differ = ~torch.isclose(excluded["y_pred"], ref["y_pred"], atol=1e-5, rtol=1e-4).squeeze(1)
    assert any(differ.tolist())  # the option changes the model ...
    assert all(lost[b] for b in range(B) if differ[b])  # ... only in rows that lost behaviours to padding


def hamming(model, target, seq, mask, rotations):
    seq_code = model.lsh_hash(seq, rotations)
    target_code = model.lsh_hash(target.unsqueeze(1), rotations)
    dist = (seq_code - target_code).abs().sum(-1).masked_fill(mask == 0, float("inf"))
    return hash_scores(seq_code), hash_scores(target_code)[:, 0], dist


def untied(dist, mask, k):
    """Rows whose k-th nearest valid code is strictly nearer than the (k+1)-th, or with at
    most k valid: where torch.topk's unspecified order among ties cannot decide the set."""
    s = dist.sort(1).values
    n = mask.sum(1).long()
    return (n <= k) | (s[:, k - 1] < s[:, k])


def eta_forward(model, inputs):
    """ETA.forward with its Hamming top-k swapped for topk_search on ±1 codes."""
    target, seq, mask, lead, item = history(model, inputs)
    short = model.short_attention(target, item[:, -model.short_seq_len:-1], mask[:, -model.short_seq_len:-1])
    rot = model.random_rotations.repeat(target.shape[0], 1, 1)
    seq_code, target_code, _ = hamming(model, target, seq, mask, rot)
    _, idx = topk_search(target_code, seq_code, model.topk, mask=validity(mask))
    topk_emb, topk_mask = pick(seq, mask, idx)
    long = model.long_attention(target, topk_emb, topk_mask)
    return {"y_pred": model.dnn(torch.cat(lead + [target, short, long], dim=-1))}


def test_eta_retrieval_swapped(seed):
    """ETA: y_pred and gradients equal on every row whose k nearest codes are not tied
    (rows of <= k behaviours always); the selected distances equal torch.topk's on all."""
    g = torch.Generator().manual_seed(seed)
    model = build(ETA, seed, hash_bits=64)
    inputs = batch(g)
    target, seq, mask, _, _ = history(model, inputs)
    seq_code, target_code, dist = hamming(model, target, seq, mask, model.random_rotations.repeat(B, 1, 1))
    rows = untied(dist, mask, K)
    assert int(rows.sum()) >= 5  # 0, 1, k-1, k behaviours, at least
    ref = run(model, inputs)["y_pred"]
    out = run(model, inputs, eta_forward)["y_pred"]
    torch.testing.assert_close(out[rows], ref[rows], atol=1e-5, rtol=1e-4)
    assert_same(grads(model, out[rows].sum()), grads(model, ref[rows].sum()))
    scores, idx = topk_search(target_code, seq_code, K, mask=validity(mask))
    want = dist.topk(K, dim=1, largest=False).values
    got = torch.where(idx >= 0, (64 - scores) / 2, float("inf"))
    assert torch.equal(got, want)


def test_mirrn_retrieval_swapped(seed):
    """MIRRN's topk_retrieval (the same Hamming search, then the positions sorted): the
    valid positions equal on untied rows, -1 slots sorted last."""
    g = torch.Generator().manual_seed(seed)
    model = build(MIRRN, seed, hash_bits=64, max_len=L)
    target, seq, mask, _, _ = history(model, batch(g))
    _, _, ref_idx = model.topk_retrieval(model.random_rotations, target, seq, mask, K)
    seq_code, target_code, dist = hamming(model, target, seq, mask, model.random_rotations)
    _, idx = topk_search(target_code, seq_code, K, mask=validity(mask))
    idx = torch.where(idx < 0, L, idx).sort(-1).values  # in position order, -1 slots last (as L)
    rows = untied(dist, mask, K)
    assert int(rows.sum()) >= 5
    for b in torch.nonzero(rows).flatten().tolist():
        n = min(K, int(mask[b].sum()))
        valid_ref = ref_idx[b][mask[b, ref_idx[b]] > 0]
        assert torch.equal(idx[b, :n], valid_ref) and bool((idx[b, n:] == L).all())
