"""The public entry points. Routing lives in backends.py, the ops' fake and
autograd in _contract.py."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _contract, _library, backends
from ._check import _check_scale, check_args, check_embedding_args
from ._contract import topk_attention_backward, topk_attention_embedding_backward  # noqa: F401

BACKENDS = backends.NAMES


def backend_status(backend: str, device) -> Optional[str]:
    """None if `backend` can run on tensors of `device`, else the reason."""
    if backend not in backends.BY_NAME:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    return backends.status(backend, device)


def available_backends(device=None) -> list:
    """The backends that can run on tensors of `device` (default: the current CUDA
    device if there is one, else the CPU), in the order "auto" tries them."""
    device = backends.device_of(device)
    return [b for b in BACKENDS if backends.status(b, device) is None]


def topk_attention(query: torch.Tensor, keys: torch.Tensor, k: int,
                   lengths: Optional[torch.Tensor] = None, scale: float = 1.0,
                   mask: Optional[torch.Tensor] = None, offsets: Optional[torch.Tensor] = None, *,
                   backend: Optional[str] = None):
    """Scores every key against the query and returns the exact top-k.

    query (B, d) or (B, T, d), keys (B, L, d), same float dtype and device.
    Which positions take part, in the caller's layout: lengths (B,) int (right
    padding), and/or mask (B, L) bool (left padding, any pattern); or jagged rows:
    keys (N, d) with offsets (B+1,) int, row b = keys[offsets[b]:offsets[b+1]]
    (indices then count from the row's start). scale multiplies every score.
    Returns float32 scores and int64 indices of shape (B, k) or (B, T, k), sorted
    descending, ties by lower index, NaN first, -inf/-1 where a row has fewer than
    k valid positions. `scores` is differentiable w.r.t. query and keys.
    `backend`: None/"auto" (fastest available), or one of BACKENDS.
    k: an int, or any integer-like object but bool (numpy.int64, as torch.topk);
    1 <= k <= L, or with offsets 1 <= k < 2**31 (rows shorter than k are padded)."""
    k = check_args(query, keys, k, lengths, scale, mask, offsets)  # types and scale, every backend (the raw op cannot)
    return backends.call("topk_attention", backend, keys.device, (query, keys, k, lengths, scale, mask, offsets))


def topk_attention_embedding(query: torch.Tensor, tables: Sequence[torch.Tensor],
                             ids: Sequence[torch.Tensor], k: int,
                             lengths: Optional[torch.Tensor] = None, scale: float = 1.0,
                             mask: Optional[torch.Tensor] = None, offsets: Optional[torch.Tensor] = None, *,
                             sparse: bool = False, backend: Optional[str] = None):
    """topk_attention(query, keys, k) where behaviour j's key is the concatenation
    of F fields' embedding rows, [tables[0][ids[0][b, j]] | ... | tables[F-1][ids[F-1][b, j]]],
    computed from the ids in one pass that never builds the (B, L, d) keys.

    tables: F <= 4 tensors (N_f, d_f) of the query's dtype; ids: F int32/int64
    tensors (B, L), or (L,) for ids shared by every row (e.g. position buckets);
    query (B, sum d_f) or (B, T, sum d_f). Positions that take no part (j >=
    lengths[b], mask[b, j] False) are never read. Jagged histories: offsets (B+1,)
    and every ids[f] of shape (N,), row b = ids[f][offsets[b]:offsets[b+1]].
    An id out of [0, N_f) raises ValueError on CPU and scores NaN on CUDA (never
    read). `scores` is differentiable w.r.t. query and tables: the tables'
    gradients touch only the selected rows, summed in float32; dense, as
    nn.Embedding's, or with sparse=True coalesced sparse COO tensors of the
    touched rows (as nn.Embedding(sparse=True)'s, for torch.optim.SparseAdam)."""
    if (type(k) is not int and not isinstance(k, torch.SymInt)) or not isinstance(query, torch.Tensor) \
            or any(t is not None and not isinstance(t, torch.Tensor) for t in (lengths, mask, offsets)) \
            or not isinstance(tables, (list, tuple)) or not isinstance(ids, (list, tuple)) \
            or not all(isinstance(t, torch.Tensor) for t in (*tables, *ids)):
        k = check_embedding_args(query, tables, ids, k, lengths, scale, mask,
                                 offsets)  # raises the TypeError, or returns an integer-like k as an int
    _check_scale(scale, "topk_attention_embedding")
    if not isinstance(sparse, bool):
        raise TypeError(f"topk_attention_embedding: sparse must be a bool, got {type(sparse).__name__}")
    args = (query, list(tables), list(ids), k, lengths, scale, mask, offsets, sparse)
    return backends.call("topk_attention_embedding", backend, query.device, args)


def _register():
    _contract.register_compiled()
    backends.register_stand_ins()  # e.g. no compiled CUDA kernel: CUDA tensors reach Triton through the ops
    backends.register_backward()


if _library.loaded:
    _register()
