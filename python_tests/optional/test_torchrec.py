"""Optional: behaviour ids as a TorchRec KeyedJaggedTensor, through TorchRec's
EmbeddingCollection into the search with offsets (docs/layers.md, "TorchRec"), and the
ids op straight on the collection's table; against a per-row dense top-k. Needs torchrec
and fbgemm-gpu-cpu (CPU build); skips without them."""
import pytest
import torch

pytest.importorskip("torchrec", reason="the optional TorchRec suite needs torchrec and fbgemm-gpu-cpu")
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor  # noqa: E402

from dare_kernels.layers import HardSearch, topk_search  # noqa: E402

D, K, V = 8, 4, 200


def collection():
    return EmbeddingCollection(tables=[EmbeddingConfig(name="item_table", embedding_dim=D, num_embeddings=V,
                                                       feature_names=["history"])], device=torch.device("cpu"))


def test_keyed_jagged_ids_through_embedding_collection(seed):
    """Rows of 0, 1, k-1, k, k+1 and 40 behaviours: the jagged search's scores and indices
    equal a dense top-k per row, HardSearch's output and the table's gradient equal the
    dense block's, and the ids form (the table + the KJT's ids, no embedding gathered)
    gives the same results and table gradient."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ec = collection()
    lengths = torch.tensor([0, 1, K - 1, K, K + 1, 40])
    B = len(lengths)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["history"], lengths=lengths,
                                              values=torch.randint(0, V, (int(lengths.sum()),), generator=g))
    jt = ec(kjt)["history"]
    assert torch.equal(jt.offsets(), kjt.offsets())
    query = torch.randn(B, D, generator=g)
    out, scores, idx = HardSearch(K)(query, jt.values(), offsets=jt.offsets())
    table = ec.embeddings["item_table"].weight
    (grad,) = torch.autograd.grad(out.square().sum(), table, retain_graph=True)  # the reference reads jt too

    ref_out, ref_loss = [], 0.0
    for b, rows in enumerate(jt.to_dense()):
        s = (rows * query[b]).sum(-1) * D ** -0.5  # elementwise: repeated ids score exactly alike
        n = min(K, len(s))
        top, pos = (t[:n] for t in s.sort(descending=True, stable=True))  # repeated ids tie: lower position first
        assert torch.equal(idx[b, :n], pos) and bool((idx[b, n:] == -1).all())
        torch.testing.assert_close(scores[b, :n], top)
        o = torch.softmax(top, 0) @ rows[pos] if n else torch.zeros(D)
        ref_out.append(o)
        ref_loss = ref_loss + o.square().sum()
    torch.testing.assert_close(out, torch.stack(ref_out), atol=1e-6, rtol=1e-5)
    (ref_grad,) = torch.autograd.grad(ref_loss, table)
    torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=1e-5)
    assert bool(grad.abs().sum() > 0)

    ids_scores, ids_idx = topk_search(query, None, K, tables=[table], ids=[kjt.values()], offsets=kjt.offsets(),
                                      scale=D ** -0.5)
    assert torch.equal(ids_idx, idx)
    torch.testing.assert_close(ids_scores, scores)
    ids_out = HardSearch(K)(query, tables=[table], ids=[kjt.values()], offsets=kjt.offsets()).output
    torch.testing.assert_close(ids_out, out)
    (ids_grad,) = torch.autograd.grad(ids_out.square().sum(), table)
    torch.testing.assert_close(ids_grad, grad, atol=1e-6, rtol=1e-5)
