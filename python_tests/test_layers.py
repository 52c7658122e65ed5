"""dare_kernels.layers: the drop-in layers equal the hand-written bmm + mask + topk +
gather + softmax blocks they replace (outputs, scores, indices, gradients), under
right-padded, left-padded and arbitrary masks, with keys or tables + ids."""
import re
import warnings

import numpy as np
import pytest
import torch

import dare_kernels
from dare_kernels import layers
from dare_kernels.layers import HardSearch, TopKMultiHeadAttention, detect_mask_layout, topk_search

# The once-per-process notice for arbitrary masks (checked in test_hard_search_matches_block).

GAP = 0.05  # distinct-score spacing of the separated inputs (float32 rounding is ~1e-6)


def _docstring_code():
    return re.search(r"```python\n(.*?)```", layers.__doc__, re.S).group(1)


def sim_block(query, keys, values, mask, k, scale=None, temperature=1.0):
    """The usual SIM / target-attention block (query (B, d) or (B, T, d))."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    q = query if query.dim() == 3 else query[:, None]
    scores = torch.einsum("btd,bld->btl", q, keys) * scale
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    top, idx = scores.topk(k, dim=-1)
    B, T, _ = idx.shape
    picked = values.gather(1, idx.reshape(B, T * k, 1).expand(-1, -1, values.shape[-1])).view(B, T, k, -1)
    out = (torch.softmax(top / temperature, -1)[..., None] * picked).sum(2)
    if query.dim() == 2:
        out, top, idx = out[:, 0], top[:, 0], idx[:, 0]
    return out, top, idx


def twin_block(mh, query, keys, values, mask):
    """The usual multi-head block with mh's parameters: every key and value is
    projected per head, then score, mask, top-k, gather, softmax, concat, project."""
    H, k = mh.num_heads, mh.k
    qh = mh.q_proj(query).view(query.shape[0], H, mh.d_head)
    kh = keys[:, None].expand(-1, H, -1, -1) if mh.key_weight is None else \
        torch.einsum("bld,hed->bhle", keys, mh.key_weight)
    s = torch.einsum("bhe,bhle->bhl", qh, kh) * mh.search.scale
    top, idx = s.masked_fill(~mask[:, None], float("-inf")).topk(k, -1)
    vh = values[:, None].expand(-1, H, -1, -1)
    if mh.value_weight is not None:
        vh = torch.einsum("blv,hve->bhle", values, mh.value_weight)
        if mh.value_bias is not None:
            vh = vh + mh.value_bias[:, None]
    picked = vh.gather(2, idx[..., None].expand(-1, -1, -1, vh.shape[-1]))
    o = (torch.softmax(top, -1)[..., None] * picked).sum(2)
    return mh.out_proj(o.reshape(o.shape[0], -1)), top, idx


def make_mask(g, B, L, layout, min_valid=1):
    n = torch.randint(min_valid, L + 1, (B,), generator=g)
    n[0] = L  # a full row: right- and left-padded at once
    pos = torch.arange(L)
    if layout == "right":
        return pos < n[:, None]
    if layout == "left":
        return pos >= (L - n)[:, None]
    mask = torch.rand(B, L, generator=g) < 0.6
    mask[:, 1] = False
    mask[:, 2] = True  # not a prefix nor a suffix in any row
    return mask


def separated(Q, n, g):
    """n rows x (d,) with Q @ x_j = distinct multiples of GAP, for every row of Q (R <= d):
    rankings without near-ties, so float32 rounding cannot reorder them."""
    Q = Q.detach().double()
    R, d = Q.shape
    targets = torch.stack([torch.randperm(n, generator=g) for _ in range(R)]).double() * GAP  # (R, n)
    r = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = r + (torch.linalg.pinv(Q) @ (targets - Q @ r.T)).T
    return x.float()


def separated_keys(queries, L, g, scale):
    """(B, L, d) keys whose scores against queries (B, T, d) are GAP apart in each (b, t)."""
    return torch.stack([separated(q * scale, L, g) for q in queries])


def assert_same_top(got, want, mask):
    """Same selection where the block selected valid positions; the layer pads the rest."""
    (out, scores, idx), (wout, wscores, widx) = got, want
    finite = torch.isfinite(wscores)
    assert torch.equal(idx[finite], widx[finite])
    torch.testing.assert_close(scores[finite], wscores[finite])
    assert torch.all(idx[~finite] == -1) and torch.all(scores[~finite] == float("-inf"))
    sel = idx.clamp(min=0).reshape(idx.shape[0], -1)
    assert torch.all(mask.gather(1, sel)[idx.reshape(idx.shape[0], -1) >= 0])
    torch.testing.assert_close(out, wout)


def test_docstring_example_runs():
    exec(compile(_docstring_code(), "dare_kernels/layers.py", "exec"), {})


@pytest.fixture
def g(seed):
    return torch.Generator().manual_seed(seed)


def test_detect_mask_layout(g):
    for layout in ("right", "left", "any"):
        assert detect_mask_layout(make_mask(g, 6, 40, layout, min_valid=0)) == layout
    assert detect_mask_layout(torch.ones(3, 5, dtype=torch.bool)) == "right"
    assert detect_mask_layout(torch.zeros(3, 5, dtype=torch.bool)) == "right"
    assert detect_mask_layout(torch.tensor([[0, 3, 5]])) == "left"  # nonzero = valid, as id > 0


@pytest.mark.parametrize("layout,declared", [("right", "any"), ("right", "right"), ("left", "any"), ("any", "any")])
def test_hard_search_matches_block(g, layout, declared):
    B, L, d, dv, k = 5, 300, 16, 24, 20
    query = torch.randn(B, d, generator=g, requires_grad=True)
    keys = separated_keys(query[:, None], L, g, d ** -0.5).requires_grad_()
    values = torch.randn(B, L, dv, generator=g, requires_grad=True)
    mask = make_mask(g, B, L, layout)
    mask[1, :] = False
    mask[1, {"right": 0, "left": L - 1, "any": 7}[layout]] = True  # fewer than k valid: the block selects masked positions with -inf, weight 0
    search = HardSearch(k, mask_layout=declared)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layout is read as it is: nothing to warn about
        got = search(query, keys, values, mask=mask)
    want = sim_block(query, keys, values, mask, k)
    assert_same_top(got, want, mask)
    assert got.scores.dtype == torch.float32 and got.indices.dtype == torch.int64
    w = torch.randn(dv, generator=g)
    assert_same_grads((got.output * w).sum(), (want[0] * w).sum(), (query, keys, values))


def assert_same_grads(loss, want_loss, inputs):
    # float32 sums in another order (index_add over the selected rows against
    # gather's backward): equal up to accumulation rounding, not bit for bit.
    got = torch.autograd.grad(loss, inputs)
    want = torch.autograd.grad(want_loss, inputs)
    for a, b in zip(got, want):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_lengths_equal_right_mask(g):
    B, L, d, k = 4, 100, 8, 10
    query, keys, values = torch.randn(B, d, generator=g), torch.randn(B, L, d, generator=g), torch.randn(B, L, 3)
    lengths = torch.randint(0, L + 1, (B,), generator=g)
    mask = torch.arange(L) < lengths[:, None]
    a, b = HardSearch(k)(query, keys, values, lengths=lengths), HardSearch(k)(query, keys, values, mask=mask)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    c = HardSearch(k, mask_layout="right")(query, keys, values, mask=mask)
    for x, y in zip(a, c):
        assert torch.equal(x, y)


@pytest.mark.parametrize("form", ["keys", "tables"])
@pytest.mark.parametrize("declared", ["any", "right"])
def test_mask_with_lengths(g, form, declared):
    """A mask and lengths together, as the op takes them: a position takes part where
    both allow it, in every layer and either mask_layout (same scores and indices
    as the op with both, and as the mask of their intersection)."""
    B, L, d, k = 5, 40, 8, 12
    query, keys = torch.randn(B, d, generator=g), torch.randn(B, L, d, generator=g)
    table, ids = torch.randn(B * L, d, generator=g), torch.randperm(B * L, generator=g).view(B, L)
    lengths = torch.tensor([L, 30, 9, 0, 25])
    mask = make_mask(g, B, L, "right" if declared == "right" else "any")
    both = mask & (torch.arange(L) < lengths[:, None])
    x, kw = (keys, {}) if form == "keys" else (None, dict(tables=[table], ids=[ids]))
    if form == "keys":
        want = dare_kernels.topk_attention(query, keys, k, lengths=lengths, mask=mask)
    else:
        want = dare_kernels.topk_attention_embedding(query, [table], [ids], k, lengths=lengths, mask=mask)
    got = topk_search(query, x, k, mask=mask, lengths=lengths, mask_layout=declared, **kw)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    assert torch.equal(topk_search(query, x, k, mask=both, **kw)[1], want[1])
    out = HardSearch(k, scale=1.0, mask_layout=declared)(query, x, mask=mask, lengths=lengths, **kw)
    assert torch.equal(out.indices, want[1]) and torch.all(out.output[3] == 0)
    ref = HardSearch(k, scale=1.0)(query, x, mask=both, **kw)
    torch.testing.assert_close(out.output, ref.output)
    torch.manual_seed(0)
    mh = TopKMultiHeadAttention(k, d, d, 2, mask_layout=declared)
    torch.testing.assert_close(mh(query, x, mask=mask, lengths=lengths, **kw).output,
                               mh(query, x, mask=both, **kw).output)


def test_mask_layout_values(g):
    """mask_layout takes the values that change behaviour, "any" (default) and "right";
    others raise ValueError naming them. "right" is a promise: a mask that is not a
    prefix runs as lengths = its count."""
    B, L, d, k = 3, 10, 4, 3
    query, keys = torch.randn(B, d, generator=g), torch.randn(B, L, d, generator=g)
    assert layers.MASK_LAYOUTS == ("any", "right")
    assert HardSearch(k).mask_layout == "any" and TopKMultiHeadAttention(k, d, d, 2).search.mask_layout == "any"
    accepted = (r"mask_layout must be 'any' \(the mask read as it is\) or 'right' "
                r"\(a right-padded mask, run as lengths\)")
    for bad in ("auto", "left", "Right", None):
        why = r" \('auto' and 'left' ran as 'any' and were removed\)" if bad in ("auto", "left") else ""
        for make in (lambda: HardSearch(k, mask_layout=bad),
                     lambda: TopKMultiHeadAttention(k, d, d, 2, mask_layout=bad),
                     lambda: topk_search(query, keys, k, mask_layout=bad)):
            with pytest.raises(ValueError, match=accepted + rf", got {re.escape(repr(bad))}{why}$"):
                make()
    suffix = torch.arange(L) >= L - 4  # left-padded, declared right: runs as lengths 4
    got = topk_search(query, keys, k, mask=suffix.expand(B, L), mask_layout="right")
    want = topk_search(query, keys, k, lengths=torch.full((B,), 4))
    assert torch.equal(got[1], want[1])


def masked_oracle(query, keys, k, mask, scale):
    """The contract under a mask, row by row in float64: valid positions only,
    descending, ties by lower position, NaN first, -inf / -1 padding."""
    q = query if query.dim() == 3 else query[:, None]
    B, T, _ = q.shape
    full = torch.einsum("btd,bld->btl", q.double(), keys.double()) * scale + 0.0
    scores = torch.full((B, T, k), float("-inf"), dtype=torch.float64)
    idx = torch.full((B, T, k), -1, dtype=torch.int64)
    for b in range(B):
        pos = mask[b].nonzero()[:, 0]
        for t in range(T):
            s, o = torch.sort(full[b, t, pos], descending=True, stable=True)
            n = min(k, len(pos))
            scores[b, t, :n], idx[b, t, :n] = s[:n], pos[o[:n]]
    return (scores, idx) if query.dim() == 3 else (scores[:, 0], idx[:, 0])


@pytest.mark.parametrize("layout", ["right", "left", "any"])
@pytest.mark.parametrize("targets", [0, 3])
def test_topk_search_exact_with_ties_and_nan(g, layout, targets):
    """Small-integer inputs (exact in float32, many ties) and NaN keys at masked and
    valid positions: indices equal the oracle's exactly; masked keys are never selected."""
    B, L, d, k = 6, 50, 4, 12
    qshape = (B, targets, d) if targets else (B, d)
    query = torch.randint(-2, 3, qshape, generator=g).float()
    keys = torch.randint(-2, 3, (B, L, d), generator=g).float()
    mask = make_mask(g, B, L, layout, min_valid=0)
    keys[~mask] = float("nan")  # a masked key would rank first if it were scored
    keys[2, 20] = float("nan")  # a valid NaN ranks first if valid
    declared = "right" if layout == "right" else "any"
    scores, idx = topk_search(query, keys, k, mask=mask, mask_layout=declared, scale=0.5)
    want_s, want_i = masked_oracle(query, keys, k, mask, 0.5)
    assert torch.equal(idx, want_i)
    torch.testing.assert_close(scores, want_s.float(), equal_nan=True)
    # tables + ids: the same keys as one table, ids a permutation per row
    perm = torch.stack([torch.randperm(L, generator=g) for _ in range(B)])
    table = keys.gather(1, perm[..., None].expand(-1, -1, d)).reshape(B * L, d)
    inv = perm.argsort(1) + torch.arange(B)[:, None] * L  # ids[b, j] is keys[b, j]'s row of table
    scores2, idx2 = topk_search(query, None, k, tables=[table[:, :1], table[:, 1:]], ids=[inv, inv.int()],
                                mask=mask, mask_layout=declared, scale=0.5)
    assert torch.equal(idx2, want_i)
    torch.testing.assert_close(scores2, want_s.float(), equal_nan=True)


def test_empty_rows_k_above_valid_and_temperature(g):
    B, L, d, k = 3, 6, 4, 6
    query, keys = torch.randn(B, d, generator=g, requires_grad=True), torch.randn(B, L, d, generator=g)
    values = torch.randn(B, L, 5, generator=g, requires_grad=True)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0] * 6, [1, 0, 1, 0, 1, 1]], dtype=torch.bool)
    out = HardSearch(k, temperature=2.0, scale=1.0)(query, keys, values, mask=mask)
    assert out.scores.shape == (B, k) and torch.all(out.indices[:, 4:] == -1)
    assert torch.all(out.indices[1] == -1) and torch.all(out.output[1] == 0)
    want = torch.einsum("bld,bd->bl", keys, query.detach()).masked_fill(~mask, float("-inf"))
    w = torch.softmax(want[[0, 2]] / 2.0, -1)
    torch.testing.assert_close(out.output[[0, 2]], torch.einsum("bl,blv->bv", w, values.detach()[[0, 2]]))
    out.output.sum().backward()
    assert torch.isfinite(query.grad).all() and torch.isfinite(values.grad).all()
    assert torch.all(query.grad[1] == 0) and torch.all(values.grad[~mask] == 0)


@pytest.mark.parametrize("layout", ["right", "left", "any"])
def test_multi_target_and_values_callable(g, layout):
    B, T, L, d, k = 4, 3, 120, 8, 10
    query = torch.randn(B, T, d, generator=g, requires_grad=True)
    keys = separated_keys(query, L, g, 1.0).requires_grad_()
    table = torch.randn(1000, 6, generator=g, requires_grad=True)
    history = torch.randint(0, 1000, (B, L), generator=g)
    mask = make_mask(g, B, L, layout)
    search = HardSearch(k, scale=1.0, mask_layout="right" if layout == "right" else "any")
    got = search(query, keys, lambda idx: table[history.gather(1, idx)], mask=mask)
    want = sim_block(query, keys, table[history], mask, k, scale=1.0)
    assert got.output.shape == (B, T, 6)
    assert_same_top(got, want, mask)
    assert_same_grads(got.output.sum(), want[0].sum(), (query, keys, table))


@pytest.mark.parametrize("layout", ["right", "left", "any"])
def test_tables_ids(g, layout):
    """Keys [item_table[history] | pos_table[j]] (one (B, L) field, one shared (L,) field)
    never built; values None = the looked-up rows. Same as the block on built keys."""
    B, L, d0, d1, k, n_items = 4, 80, 8, 8, 10, 500
    query = torch.randn(B, d0 + d1, generator=g, requires_grad=True)
    q0 = query.detach()[:, :d0].double()
    # Items contribute nothing to the scores (rows orthogonal to every query) so item
    # ids may repeat; positions are separated: rankings without near-ties.
    r = torch.randn(n_items, d0, generator=g, dtype=torch.float64)
    items = (r - (torch.linalg.pinv(q0) @ (q0 @ r.T)).T).float().requires_grad_()
    pos_table = separated(query.detach()[:, d0:] * (d0 + d1) ** -0.5, L, g).requires_grad_()
    history = torch.randint(0, n_items, (B, L), generator=g)
    positions = torch.arange(L)
    mask = make_mask(g, B, L, layout)
    history[~mask] = -7  # padding ids are out of range: never read
    got = HardSearch(k)(query, tables=[items, pos_table], ids=[history, positions], mask=mask)
    keys = torch.cat([items[history.clamp(min=0)], pos_table[positions].expand(B, -1, -1)], -1)
    want = sim_block(query, keys, keys, mask, k)
    assert_same_top(got, want, mask)
    assert_same_grads(got.output.sum(), want[0].sum(), (query, items, pos_table))


@pytest.mark.parametrize("layout", ["right", "left", "any"])
@pytest.mark.parametrize("key_proj,value_proj", [(True, True), (False, True), (True, False)])
def test_multi_head_matches_block(g, layout, key_proj, value_proj):
    B, L, d, dq, dv, H, k = 4, 150, 16, 12, 20, 4, 12
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=g)))
    mh = TopKMultiHeadAttention(k, dq, d, H, d_head=8 if key_proj else d, d_value=dv, d_out=10,
                                key_proj=key_proj, value_proj=value_proj)
    query = torch.randn(B, dq, generator=g, requires_grad=True)
    keys = separated_keys(mh.head_queries(query), L, g, mh.search.scale).requires_grad_()
    values = torch.randn(B, L, dv, generator=g, requires_grad=True)
    mask = make_mask(g, B, L, layout)
    got = mh(query, keys, values, mask=mask)
    want = twin_block(mh, query, keys, values, mask)
    assert got.output.shape == (B, 10) and got.scores.shape == (B, H, k)
    assert_same_top(got, want, mask)
    params = [p for p in mh.parameters()]
    assert_same_grads(got.output.square().sum(), want[0].square().sum(), (query, keys, values, *params))


def test_multi_head_tables_values_none(g):
    """Tables + ids, values None (the looked-up rows), heads folded into the query."""
    B, L, d, H, k = 3, 60, 16, 2, 8
    mh = TopKMultiHeadAttention(k, 6, d, H, d_head=4)
    table = torch.randn(B * L, d, generator=g, requires_grad=True)
    ids = torch.stack([torch.randperm(B * L, generator=g)[:L] for _ in range(B)])
    query = torch.randn(B, 6, generator=g)
    lengths = torch.tensor([L, 5, 40])
    got = mh(query, tables=[table], ids=[ids], lengths=lengths)
    mask = torch.arange(L) < lengths[:, None]
    keys = table[ids]
    want = twin_block(mh, query, keys, keys, mask)
    finite = torch.isfinite(want[1])
    torch.testing.assert_close(got.scores[finite], want[1][finite])
    torch.testing.assert_close(got.output, want[0])
    got.output.sum().backward()
    assert table.grad.abs().sum() > 0 and mh.key_weight.grad.abs().sum() > 0


def test_bfloat16_and_exports(g):
    B, L, d, k = 2, 40, 8, 5
    query, keys = torch.randn(B, d, dtype=torch.bfloat16), torch.randn(B, L, d, dtype=torch.bfloat16)
    mask = make_mask(g, B, L, "left")
    out = HardSearch(k)(query, keys, mask=mask)
    assert out.output.dtype == torch.bfloat16 and out.scores.dtype == torch.float32
    mh = TopKMultiHeadAttention(k, d, d, 2)
    assert mh(query.float(), keys.float(), mask=mask).output.shape == (B, 2 * d)
    for name in ("HardSearch", "TopKMultiHeadAttention", "TopKAttentionOutput", "topk_search", "detect_mask_layout"):
        assert name in dare_kernels.__all__ and getattr(dare_kernels, name) is getattr(layers, name)


@pytest.mark.parametrize("targets", [0, 3])
def test_jagged_rows_equal_padded(g, targets):
    """offsets (B+1,) with keys (N, d) and values (N, d_v), as TorchRec passes
    histories: the same output as the padded rows with lengths; gradients too."""
    B, L, d, dv, k = 4, 90, 8, 5, 12
    lengths = torch.tensor([90, 0, 7, 40])  # N = 137
    qshape = (B, targets, d) if targets else (B, d)
    query = torch.randn(qshape, generator=g, requires_grad=True)
    keys = torch.randn(B, L, d, generator=g)
    values = torch.randn(B, L, dv, generator=g)
    valid = torch.arange(L)[None, :] < lengths[:, None]
    jk, jv = keys[valid].requires_grad_(), values[valid].requires_grad_()
    offsets = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))
    search = HardSearch(k, scale=1.0)
    got = search(query, jk, jv, offsets=offsets)
    pk, pv = keys.clone().requires_grad_(), values.clone().requires_grad_()
    want = search(query, pk, pv, lengths=lengths)
    assert torch.equal(got.indices, want.indices)
    torch.testing.assert_close(got.output, want.output)
    gq, gk, gv = torch.autograd.grad(got.output.sum(), (query, jk, jv))
    wq, wk, wv = torch.autograd.grad(want.output.sum(), (query, pk, pv))
    torch.testing.assert_close(gq, wq)
    torch.testing.assert_close(gk, wk[valid])
    torch.testing.assert_close(gv, wv[valid])
    heads = TopKMultiHeadAttention(k, d, d, 2, d_value=dv)
    torch.testing.assert_close(heads(query[:, 0] if targets else query, jk, jv, offsets=offsets).output,
                               heads(query[:, 0] if targets else query, pk, pv, lengths=lengths).output)
    # A values callable gets positions into the N jagged values; values of another
    # row count raise, naming values.
    got_c = search(query, jk, lambda rows: jv[rows], offsets=offsets)
    torch.testing.assert_close(got_c.output, got.output)
    with pytest.raises(ValueError, match=r"with offsets, values must have shape \(N, d_v\) with N=137"):
        search(query, jk, jv[:10], offsets=offsets)


def test_jagged_empty_history_and_unread_ids(g):
    """No history at all (N = 0): zeros out and zero gradients, no error. Ids outside
    every row, and ids of padding slots, are never looked up (here out of range)."""
    B, d, k = 3, 8, 4
    query = torch.randn(B, d, generator=g, requires_grad=True)
    empty = torch.zeros(0, d, requires_grad=True)
    out = HardSearch(k, scale=1.0)(query, empty, offsets=torch.zeros(B + 1, dtype=torch.long))
    assert torch.all(out.indices == -1) and torch.all(out.output == 0)
    out.output.sum().backward()
    assert torch.all(query.grad == 0)
    table = torch.randn(20, d, generator=g)
    ids = torch.tensor([10**6, 3, 5, 7, 1, 10**6])  # rows [1, 4), [4, 5), [5, 5); the rest belongs to none
    offsets = torch.tensor([1, 4, 5, 5])
    got = HardSearch(k, scale=1.0)(query.detach(), tables=[table], ids=[ids], offsets=offsets)
    rows = torch.stack([torch.cat([table[ids[1:4]], table[:1]]), torch.cat([table[ids[4:5]], table[:3]]),
                        table[:4]])  # padded (B, k, d)
    want = HardSearch(k, scale=1.0)(query.detach(), rows, lengths=torch.tensor([3, 1, 0]))
    torch.testing.assert_close(got.output, want.output)
    assert torch.all(got.output[2] == 0)
    mask = torch.tensor([[True, False, True, True, False, True]] * B)
    ids2 = torch.where(mask, torch.randint(0, 20, (B, 6), generator=g), 10**6)
    HardSearch(6, scale=1.0)(query.detach(), tables=[table], ids=[ids2], mask=mask)  # k > valid: padding slots


def test_integer_like_k(g):
    """k may be any integer-like object but bool (numpy.int64, as the op and torch.topk take it)."""
    B, L, d, k = 3, 30, 8, 5
    query, keys, values = torch.randn(B, d, generator=g), torch.randn(B, L, d, generator=g), torch.randn(B, L, 4)
    mask = make_mask(g, B, L, "left")
    want = HardSearch(k)(query, keys, values, mask=mask)
    got = HardSearch(np.int64(k))(query, keys, values, mask=mask)
    assert type(HardSearch(np.int64(k)).k) is int
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    torch.manual_seed(0)
    mh = TopKMultiHeadAttention(np.int32(k), d, d, 2)
    assert mh(query, keys, mask=mask).indices.shape == (B, 2, k)
    assert torch.equal(topk_search(query, keys, np.int64(k), mask=mask)[1], want.indices)
    for layer in (HardSearch, lambda k: TopKMultiHeadAttention(k, d, d, 2)):
        for bad, name in ((True, "bool"), (np.True_, "bool"), (2.0, "float"), (torch.tensor(3), "Tensor")):
            with pytest.raises(TypeError, match=rf"k must be an int, got {name}"):
                layer(bad)


def _raised(f):
    with pytest.raises((TypeError, ValueError)) as e:
        f()
    return type(e.value), str(e.value)


def test_masks_as_the_op(g):
    """The layers take masks as the op does, raising its exception with its message:
    int or float masks and masks of another shape, in every form and mask_layout
    (k above L included: the op's check on the min(k, L) it searches)."""
    B, L, d = 3, 6, 4
    query, keys = torch.randn(B, d, generator=g), torch.randn(B, L, d, generator=g)
    table, ids = torch.randn(20, d, generator=g), torch.randint(0, 20, (B, L), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6, [1, 0, 1, 0, 1, 1]], dtype=torch.bool)
    for k in (3, L + 1):
        n = min(k, L)
        for m in (mask.int(), mask.float(), mask[:, :L - 1]):
            for form, op in (("keys", lambda: dare_kernels.topk_attention(query, keys, n, mask=m)),
                             ("tables", lambda: dare_kernels.topk_attention_embedding(query, [table], [ids], n,
                                                                                      mask=m))):
                want = _raised(op)
                kw = dict(tables=[table], ids=[ids]) if form == "tables" else {}
                x = keys if form == "keys" else None
                for layout in ("any", "right"):
                    assert _raised(lambda: topk_search(query, x, k, mask=m, mask_layout=layout, **kw)) == want
                    assert _raised(lambda: HardSearch(k, mask_layout=layout)(query, x, mask=m, **kw)) == want
                    assert _raised(lambda: TopKMultiHeadAttention(k, d, d, 2, mask_layout=layout)(
                        query, x, mask=m, **kw)) == want


@pytest.mark.parametrize("form", ["keys", "tables"])
@pytest.mark.parametrize("layout", ["none", "lengths", "mask", "right"])
def test_k_above_the_row_length(g, form, layout):
    """The one rule for k: results are k wide whatever L. For k > L (padded rows, where
    the op raises) the layers search L and pad (score -inf, index -1, weight 0), as the op
    pads jagged rows shorter than k: the same outputs and gradients as k = L, in every
    layer, form and layout, one target or several."""
    B, T, L, d, dv, k = 4, 3, 6, 8, 5, 10
    query = torch.randn(B, d, generator=g, requires_grad=True)
    keys = torch.randn(B, L, d, generator=g, requires_grad=True)
    table = torch.randn(B * L, d, generator=g, requires_grad=True)
    ids = torch.randperm(B * L, generator=g).view(B, L)
    values = torch.randn(B, L, dv, generator=g, requires_grad=True)
    lengths = torch.tensor([L, 3, 0, 1])
    x, kw = (keys, {}) if form == "keys" else (None, dict(tables=[table], ids=[ids]))
    kw.update({"none": {}, "lengths": dict(lengths=lengths), "mask": dict(mask=make_mask(g, B, L, "any")),
               "right": dict(mask=torch.arange(L) < lengths[:, None])}[layout])
    declared = "right" if layout == "right" else "any"
    inputs = (query, keys if form == "keys" else table, values)
    with pytest.raises(ValueError, match=rf"k must satisfy 1 <= k <= L={L}, got {k}"):
        (dare_kernels.topk_attention(query, keys, k) if form == "keys" else
         dare_kernels.topk_attention_embedding(query, [table], [ids], k))
    got, want = (HardSearch(n, mask_layout=declared)(query, x, values, **kw) for n in (k, L))
    assert got.scores.shape == got.indices.shape == (B, k)
    assert torch.equal(got.indices[:, :L], want.indices) and torch.all(got.indices[:, L:] == -1)
    assert torch.equal(got.scores[:, :L], want.scores) and torch.all(got.scores[:, L:] == float("-inf"))
    torch.testing.assert_close(got.output, want.output)
    for a, b in zip(torch.autograd.grad(got.output.square().sum(), inputs),
                    torch.autograd.grad(want.output.square().sum(), inputs)):
        torch.testing.assert_close(a, b)
    assert torch.equal(topk_search(query, x, k, mask_layout=declared, **kw)[1], got.indices)
    many = query.detach()[:, None].expand(B, T, d) * torch.randn(T, 1, generator=g)
    got, want = (HardSearch(n, mask_layout=declared)(many, x, values, **kw) for n in (k, L))
    assert got.indices.shape == (B, T, k) and torch.equal(got.indices[..., :L], want.indices)
    torch.testing.assert_close(got.output, want.output)
    torch.manual_seed(0)
    mh = TopKMultiHeadAttention(k, d, d, 2, d_value=dv, mask_layout=declared)
    out = mh(query, x, values, **kw)
    mh.search.k = L
    assert out.indices.shape == (B, 2, k) and torch.equal(out.indices[..., :L], mh(query, x, values, **kw).indices)
    torch.testing.assert_close(out.output, mh(query, x, values, **kw).output)


def test_k_limits(g):
    """k >= 1 and < 2**31 (what the kernels hold) in every layer and form; padded rows
    need L >= 1 (the op's check); jagged rows take any k, as the op does."""
    B, L, d = 3, 6, 4
    query, keys, values = torch.randn(B, d, generator=g), torch.randn(B, L, d, generator=g), torch.randn(B, L, 5)
    for k in (0, -1):
        with pytest.raises(ValueError, match=rf"k must be >= 1, got {k}"):
            HardSearch(k)
        want = _raised(lambda: dare_kernels.topk_attention(query, keys, k))
        assert _raised(lambda: topk_search(query, keys, k)) == want
    with pytest.raises(ValueError, match=r"topk_attention: k must satisfy 1 <= k < 2\*\*31, got 2147483648"):
        HardSearch(2**31)(query, keys)
    with pytest.raises(ValueError, match=r"topk_attention_embedding: k must satisfy 1 <= k < 2\*\*31"):
        topk_search(query, None, 2**31, tables=[keys[0]], ids=[torch.zeros(B, L, dtype=torch.long)])
    with pytest.raises(ValueError, match=r"k must satisfy 1 <= k <= L=0, got 3"):
        HardSearch(3)(query, keys[:, :0])
    # Jagged rows have no common L: k above every row (and above N) pads.
    out = HardSearch(L + 4)(query, keys[0], values[0], offsets=torch.tensor([0, 2, 2, L]))
    assert out.indices.shape == (B, L + 4) and torch.all(out.indices[:, 4:] == -1)


def test_empty_rows_attend_to_nothing(g):
    """A row with no valid position (lengths 0, an all-False mask, an empty jagged row):
    HardSearch outputs zeros there and every gradient of that row is zero, never NaN,
    the scores' own included; TopKMultiHeadAttention gives its output bias."""
    B, L, d, dv, k = 3, 7, 4, 5, 3
    query = torch.randn(B, d, generator=g, requires_grad=True)
    keys = torch.randn(B, L, d, generator=g, requires_grad=True)
    values = torch.randn(B, L, dv, generator=g, requires_grad=True)
    lengths = torch.tensor([L, 0, 2])
    mask = torch.arange(L) < lengths[:, None]
    offsets = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))
    jk, jv = keys.detach()[mask].requires_grad_(), values.detach()[mask].requires_grad_()
    for x, v, kw in ((keys, values, dict(lengths=lengths)), (keys, values, dict(mask=mask)),
                     (jk, jv, dict(offsets=offsets))):
        out = HardSearch(k)(query, x, v, **kw)
        out.scores.retain_grad()
        assert torch.all(out.output[1] == 0) and torch.all(out.indices[1] == -1)
        out.output.square().sum().backward()
        for t in (query.grad, x.grad, v.grad, out.scores.grad):
            assert torch.isfinite(t).all()
        assert torch.all(query.grad[1] == 0) and torch.all(out.scores.grad[1] == 0)
        assert out.scores.grad[0].abs().sum() > 0
        query.grad = x.grad = v.grad = None
    torch.manual_seed(0)
    mh = TopKMultiHeadAttention(k, d, d, 2, d_value=dv)
    torch.testing.assert_close(mh(query, keys, values, lengths=lengths).output[1], mh.out_proj.bias)


def test_values_checked_before_use(g):
    """values of the wrong type or shape raise TypeError / ValueError naming values and
    the expected shape (they failed inside einsum or gather), with keys or tables + ids,
    padded or jagged; FuxiCTR's positional (target, seq, mask) is told that the mask is
    a keyword argument."""
    B, L, d, H, k = 3, 20, 8, 4, 5
    query, keys = torch.randn(B, d, generator=g), torch.randn(B, L, d, generator=g)
    table, ids = torch.randn(50, d, generator=g), torch.randint(0, 50, (B, L), generator=g)
    mask = make_mask(g, B, L, "left")
    torch.manual_seed(0)
    mh = TopKMultiHeadAttention(k, d, d, H)
    with pytest.raises(ValueError, match=r"values must have shape \(B, L, d_value\) with the layer's d_value=8, "
                                         r"got shape \(3, 20, 16\)"):
        mh(query, keys, torch.randn(B, L, 2 * d), mask=mask)
    for layer in (mh, HardSearch(k)):
        with pytest.raises(TypeError, match=r"values must be a floating-point tensor, got torch.bool: "
                                            r"the mask is a keyword argument \(mask=\.\.\.\)"):
            layer(query, keys, mask)
        for kw in (dict(keys=keys), dict(tables=[table], ids=[ids])):
            for bad in (torch.randn(B, L - 1, d), torch.randn(B, L), torch.randn(B + 1, L, d)):
                shape = re.escape(str(tuple(bad.shape)))
                with pytest.raises(ValueError, match=r"values must have shape \(B, L, d_v\) with B=3, L=20 "
                                                     rf"\(one row per key\), got shape {shape}"):
                    layer(query, values=bad, mask=mask, **kw)
        with pytest.raises(TypeError, match=r"values must be a floating-point tensor, got torch.int64"):
            layer(query, keys, torch.ones(B, L, d, dtype=torch.long), mask=mask)
        with pytest.raises(TypeError, match=r"values must be a Tensor, a callable or None, got list"):
            layer(query, keys, [[0.0]], mask=mask)
    offsets = torch.tensor([0, 5, 5, L])
    with pytest.raises(ValueError, match=r"values must have shape \(N, d_value\) with the layer's d_value=8, "
                                         r"got shape \(20, 6\)"):
        mh(query, keys[0], torch.randn(L, 6), offsets=offsets)
    wide = TopKMultiHeadAttention(k, d, d, H, d_value=16)
    with pytest.raises(ValueError, match=r"values=None reuses the keys \(width d_key=8\), but the layer's "
                                         r"d_value=16"):
        wide(query, keys, mask=mask)
    with pytest.raises(ValueError, match=r"values returned rows of width 8, but the layer's d_value=16"):
        wide(query, keys, lambda pos: keys.gather(1, pos[..., None].expand(-1, -1, d)), mask=mask)
    assert wide(query, keys, torch.randn(B, L, 16), mask=mask).output.shape == (B, H * d)
