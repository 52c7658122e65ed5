"""dare_kernels.fuxictr and the options FuxiCTR's models need (attention dropout, SIM's
padding that competes at score 0, Hamming retrieval as a ±1 dot product), against
dense blocks written here with FuxiCTR's semantics. FuxiCTR's own code is run by the
optional suite, python_tests/optional/test_fuxictr_models.py."""
import pytest
import torch

from dare_kernels.fuxictr import MultiHeadTopKAttention, hash_distance, hash_scores, validity
from dare_kernels.layers import HardSearch, TopKMultiHeadAttention, topk_search


@pytest.fixture
def g(seed):
    return torch.Generator().manual_seed(seed)


def left_padded(B, L, k, g):
    """Left-padded (B, L) float masks (FuxiCTR's: 1 = valid) whose rows hold 0, 1, k-1, k,
    k+1 and L valid behaviours, then random counts."""
    n = torch.randint(0, L + 1, (B,), generator=g)
    n[:6] = torch.tensor([0, 1, k - 1, k, k + 1, L])
    return (torch.arange(L) >= (L - n)[:, None]).float()


def twin_block(layer, target, seq, mask, dropout=0.0, training=False):
    """TWIN's attention written densely, FuxiCTR's way: every behaviour projected, padding
    filled with -1e9, torch.topk over min(k, L), softmax, dropout on the weights."""
    B, L, _ = seq.shape
    H, hd = layer.num_heads, layer.head_dim
    q = layer.W_q(target).view(B, H, 1, hd)
    keys = layer.W_h(seq).view(B, L, H, hd).transpose(1, 2)
    vals = layer.W_v(seq).view(B, L, H, hd).transpose(1, 2)
    scores = (q @ keys.transpose(-1, -2)) / hd ** 0.5
    scores = scores.masked_fill(mask.view(B, 1, 1, L) == 0, -1e9)
    top, idx = scores.topk(min(layer.topk, L), dim=-1)
    w = nn_dropout(top.softmax(-1), dropout, training)
    picked = vals.gather(2, idx.transpose(-1, -2).expand(-1, -1, -1, hd))
    return layer.W_o((w @ picked).reshape(B, H * hd)), idx[:, :, 0]


def nn_dropout(w, p, training):
    return torch.nn.functional.dropout(w, p, training) if p else w


@pytest.mark.parametrize("L", [40, 6])  # 6 < k: FuxiCTR searches min(k, L)
def test_twin_layer_matches_dense_block(g, L):
    """Outputs, selected sets (valid slots) and the gradients of every input and weight equal
    the dense block's on left-padded rows of 0, 1, k-1, k, k+1 and L behaviours; the
    padding embedding is zero (FuxiCTR's padding_idx), so an empty row is zeros in both."""
    B, D, A, H, k = 9, 12, 16, 4, 8
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
    layer = MultiHeadTopKAttention(D, 0, 4, A, k, H)
    mask = left_padded(B, L, k, g)
    target = torch.randn(B, D, generator=g, requires_grad=True)
    raw = torch.randn(B, L, D, generator=g)
    seq = (raw * mask[..., None]).requires_grad_()
    out = layer(target, seq, mask)
    ref, ref_idx = twin_block(layer, target, seq, mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert out[0].abs().max() == 0  # the empty row
    _, idx = layer.search(target, seq, mask)
    n_valid = mask.sum(1).long()
    for b in range(B):
        want = ref_idx[b][:, :min(k, n_valid[b])]  # FuxiCTR's padding slots pick -1e9 positions
        assert torch.equal(idx[b][:, :want.shape[1]], want)
        assert bool((idx[b][:, want.shape[1]:] == -1).all())
    grads = torch.autograd.grad(out.square().sum(), [target, seq, *layer.parameters()])
    ref_grads = torch.autograd.grad(ref.square().sum(), [target, seq, *layer.parameters()])
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


def test_twin_layer_dropout_and_mask_forms(g):
    """dropout_rate drops the same weights as nn.Dropout after FuxiCTR's softmax (same
    generator state, k <= L), only in training; bool, float and int masks are one; None
    is every position valid."""
    B, L, D, A, H, k = 7, 30, 8, 8, 2, 6
    layer = MultiHeadTopKAttention(D, attention_dim=A, topk=k, num_heads=H, dropout_rate=0.5)
    mask = left_padded(B, L, k, g)
    target, seq = torch.randn(B, D, generator=g), torch.randn(B, L, D, generator=g) * mask[..., None]
    torch.manual_seed(7)
    out = layer(target, seq, mask)
    torch.manual_seed(7)
    ref, _ = twin_block(layer, target, seq, mask, 0.5, training=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.manual_seed(8)
    assert not torch.allclose(layer(target, seq, mask), out)  # dropout is on
    layer.eval()
    ref, _ = twin_block(layer, target, seq, mask)
    for m in (mask, mask.bool(), mask.long()):
        torch.testing.assert_close(layer(target, seq, m), ref, atol=1e-5, rtol=1e-5)
    full = torch.ones(B, L)
    torch.testing.assert_close(layer(target, seq), twin_block(layer, target, seq, full)[0], atol=1e-5, rtol=1e-5)


def test_twin_layer_loads_fuxictr_layout_and_refuses_what_it_cannot_match():
    layer = MultiHeadTopKAttention(24, 0, 8, 32, 10, 4)
    assert {n: tuple(p.shape) for n, p in layer.state_dict().items()} == {
        "W_q.weight": (32, 24), "W_h.weight": (32, 24), "W_v.weight": (32, 24), "W_o.weight": (24, 32)}
    assert all(type(m) is torch.nn.Linear for m in (layer.W_q, layer.W_h, layer.W_v, layer.W_o))
    with pytest.raises(ValueError, match=r"Kc must be 0, got 2: FuxiCTR's TWIN attention with cross features"):
        MultiHeadTopKAttention(24, 2, 8)
    with pytest.raises(ValueError, match=r"attention_dim=30 must be divisible by num_heads=4"):
        MultiHeadTopKAttention(24, attention_dim=30, num_heads=4)
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\), got 1.0"):
        MultiHeadTopKAttention(24, dropout_rate=1.0)
    with pytest.raises(TypeError, match=r"mask must be a \(B, L\) tensor \(0 = padding\) or None, got list"):
        validity([[1.0]])


def test_generic_layers_take_dropout_and_name_a_positional_mask(g):
    """HardSearch / TopKMultiHeadAttention: dropout on the weights in training only (the
    rows' weights then sum to 1 / (1 - p) over the survivors); a float (B, L) mask passed
    third (FuxiCTR's order) is told to go to mask=."""
    B, L, d, k = 4, 20, 8, 5
    query, keys = torch.randn(B, d, generator=g), torch.randn(B, L, d, generator=g)
    search = HardSearch(k, dropout=0.5)
    scores, idx = search.search(query, keys)
    torch.manual_seed(0)
    w = search.weights(scores, idx)
    assert bool((w == 0).any()) and torch.allclose(w[w > 0], 2 * torch.softmax(scores, -1)[w > 0])
    search.eval()
    torch.testing.assert_close(search.weights(scores, idx), torch.softmax(scores, -1))
    mh = TopKMultiHeadAttention(k, d, d, 2, dropout=0.25)
    assert mh.search.dropout == 0.25
    with pytest.raises(ValueError, match=r"got shape \(4, 20\): a \(B, L\) mask's shape; the third positional "
                                         r"argument is values, pass the mask as mask="):
        mh(query, keys, torch.ones(B, L))
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\), got -0.1"):
        HardSearch(k, dropout=-0.1)


@pytest.mark.parametrize("form", ["mask", "lengths", "both", "k>L"])
def test_padding_score_matches_scores_times_mask(g, form):
    """padding_score=0.0 selects the valid positions FuxiCTR's SIM selects from
    scores * mask (padding scoring 0 beats negative valid scores); the padding itself
    comes out as -1 / -inf behind them. Per row, the kept set equals the valid positions
    among torch.topk of the multiplied scores (no ties: random scores)."""
    B, L, d, k = 12, 16, 6, 5
    query, keys = torch.randn(B, d, generator=g), torch.randn(B, L, d, generator=g)
    if form == "k>L":
        k = L + 3
    n = torch.randint(0, L + 1, (B,), generator=g)
    n[:6] = torch.tensor([0, 1, k - 1, k, k + 1, L]).clamp(max=L)
    lengths = None
    if form == "lengths":
        mask, lengths = None, n
        valid = torch.arange(L) < n[:, None]
    else:
        valid = torch.arange(L) >= (L - n)[:, None]
        mask = valid
        if form == "both":  # right-padded lengths over a mask with holes
            lengths = torch.full((B,), L - 2)
            valid = valid & (torch.arange(L) < L - 2)
    scores, idx = topk_search(query, keys, k, mask=mask, lengths=lengths, padding_score=0.0)
    dense = torch.einsum("bd,bld->bl", query, keys) * valid
    top, ref = dense.topk(min(k, L), dim=1)
    dropped = 0
    for b in range(B):
        want = {int(i) for i in ref[b] if valid[b, i]}
        got = [int(i) for i in idx[b] if i >= 0]
        assert set(got) == want and len(got) == len(want)
        assert bool((idx[b, len(got):] == -1).all()) and bool(torch.isinf(scores[b, len(got):]).all())
        dropped += min(k, int(valid[b].sum())) - len(got)
    plain, _ = topk_search(query, keys, k, mask=mask, lengths=lengths)
    assert torch.equal(scores[idx >= 0], plain[idx >= 0])
    if form != "k>L":
        assert dropped > 0  # some valid negatives lost to the padding: the option did something
    with pytest.raises(ValueError, match=r"padding_score needs padded rows with a mask and / or lengths"):
        topk_search(query, keys, k, padding_score=0.0)


def test_hash_codes_search_is_hamming_topk(g):
    """ETA's k nearest hash codes by Hamming distance are the top-k of their ±1 codes' dot
    product: the same distances as torch.topk(largest=False) on the masked distances, and
    the positions of a stable sort (ties by lower position, the op's rule)."""
    B, L, bits, k = 8, 50, 16, 10
    codes = (torch.rand(B, L, bits, generator=g) > 0.5).float()
    target = (torch.rand(B, bits, generator=g) > 0.5).float()
    mask = left_padded(B, L, k, g)
    scores, idx = topk_search(hash_scores(target), hash_scores(codes), k, mask=validity(mask))
    dist = (codes - target[:, None]).abs().sum(-1).masked_fill(mask == 0, bits + 1)
    ref_dist = dist.topk(k, dim=1, largest=False).values
    order = torch.sort(dist * (L + 1) + torch.arange(L), dim=1).indices[:, :k]  # ties by position
    n_valid = mask.sum(1).long()
    for b in range(B):
        m = min(k, int(n_valid[b]))
        assert torch.equal(hash_distance(scores[b, :m], bits), ref_dist[b, :m])
        assert torch.equal(idx[b, :m], order[b, :m])
        assert bool((idx[b, m:] == -1).all()) and bool(torch.isinf(hash_distance(scores[b, m:], bits)).all())


def test_docs_weight_mapping_loads_twin_into_generic_layer(g):
    """docs/layers.md's table: TWIN's W_q, W_h, W_v, W_o loaded into TopKMultiHeadAttention
    (d_head = attention_dim / H, d_out = input_dim, bias=False) give the same outputs."""
    B, L, D, A, H, k = 7, 30, 12, 16, 4, 6
    twin = MultiHeadTopKAttention(D, 0, 4, A, k, H)
    hd = A // H
    mh = TopKMultiHeadAttention(k, D, D, H, d_head=hd, d_out=D, bias=False)
    with torch.no_grad():
        mh.q_proj.weight.copy_(twin.W_q.weight)
        mh.key_weight.copy_(twin.W_h.weight.view(H, hd, D))
        mh.value_weight.copy_(twin.W_v.weight.view(H, hd, D).transpose(1, 2))
        mh.out_proj.weight.copy_(twin.W_o.weight)
    mask = left_padded(B, L, k, g)
    target, seq = torch.randn(B, D, generator=g), torch.randn(B, L, D, generator=g)
    torch.testing.assert_close(mh(target, seq, mask=mask > 0).output, twin(target, seq, mask), atol=1e-5, rtol=1e-5)
