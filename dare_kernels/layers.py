"""Drop-in ``nn.Module`` layers for the search + target-attention block of
long-sequence recommenders (SIM hard search, TWIN / ETA-style multi-head top-k
attention), on the fused ``topk_attention`` ops: the B×L score matrix is never
written, and values are gathered (and projected) for the k selected behaviours only.

- ``topk_search``: the op behind a boolean mask (``True`` = valid) as well as
  lengths; returns (scores, indices) in the original positions.
- ``HardSearch``: single-head top-k search + softmax attention over the k picks.
- ``TopKMultiHeadAttention``: H heads, each with its own top-k; per-head key maps
  are folded into the query, so the op runs once on the raw keys with T = H queries.

Masks (``mask`` (B, L), True or nonzero = valid; give ``mask`` or ``lengths``, not both):

- right-padded (each row's valid positions are a prefix): becomes ``lengths`` =
  ``mask.sum(1)``, the op's native form;
- left-padded (a suffix, e.g. FuxiCTR's ``mask = history > 0`` with padding in
  front): the op runs on the same memory through its embedding form, the keys
  viewed as one (B·L, d) table and row b's ids starting at its first valid
  position (an int32 (B, L) index, no copy of the keys); tables + ids inputs have
  their ids shifted the same way;
- anything else: the valid positions of each row are compacted in order (a
  cumsum + scatter over the (B, L) mask, then the same embedding form), with a
  warning the first time ``mask_layout="auto"`` meets such a mask.

All three are exact: masked positions are never scored or selected, the ranking
is the op's (descending, ties by lower original position, NaN first) and indices
are original positions, -1 (score -inf) where a row has fewer than k valid ones.
``mask_layout="auto"`` finds the layout with two (B, L) passes and one host
synchronisation; "right", "left" or "any" skip that (a mask given as "right" is
read as lengths = its count of valid positions, "left" likewise from the end).
Rows with no valid position output zeros.

Replacing a hand-written block (this example runs in python_tests/test_layers.py;
``python bench/layers_time.py`` times such pairs):

```python
import torch
from dare_kernels.layers import HardSearch


def sim_block(query, keys, values, mask, k):
    # query (B, d), keys (B, L, d), values (B, L, d_v), mask (B, L) True = valid
    scores = torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1) / query.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    top, idx = scores.topk(k, dim=1)
    picked = values.gather(1, idx.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
    weights = torch.softmax(top, dim=1)
    return (weights.unsqueeze(-1) * picked).sum(1)        # (B, d_v)


B, L, d, d_v, k = 32, 2000, 16, 64, 50
history = torch.randint(1, 10_000, (B, L))
n_valid = torch.randint(1, L + 1, (B,))
history[torch.arange(L) < (L - n_valid)[:, None]] = 0     # left padding, as FuxiCTR
mask = history > 0
query, keys, values = torch.randn(B, d), torch.randn(B, L, d), torch.randn(B, L, d_v)

search = HardSearch(k)                                    # scale = d ** -0.5
out, scores, indices = search(query, keys, values, mask=mask)
torch.testing.assert_close(out, sim_block(query, keys, values, mask, k))
```
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from . import ops

__all__ = ["HardSearch", "TopKAttentionOutput", "TopKMultiHeadAttention", "detect_mask_layout", "topk_search"]

MASK_LAYOUTS = ("auto", "right", "left", "any")
Values = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], None]

_warned_any_mask = False


class TopKAttentionOutput(NamedTuple):
    output: torch.Tensor   # (B, d_out)
    scores: torch.Tensor   # float32 (B, k) or (B, T, k), sorted descending, -inf padding
    indices: torch.Tensor  # int64, same shape, original positions, -1 padding


def detect_mask_layout(mask: torch.Tensor) -> str:
    """"right" if every row's valid positions are a prefix, else "left" if every
    row's are a suffix, else "any". Reads the mask (a host synchronisation on GPU)."""
    mask = _bool_mask(mask)
    if mask.shape[1] <= 1 or not bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        return "right"
    if not bool((mask[:, :-1] & ~mask[:, 1:]).any()):
        return "left"
    return "any"


def _bool_mask(mask: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise ValueError(f"mask must be a (B, L) tensor, got {getattr(mask, 'shape', type(mask).__name__)}")
    return mask if mask.dtype == torch.bool else mask != 0


def _positions(mask: torch.Tensor, layout: str):
    """(lengths, positions): positions[b, j] is the original position of row b's
    j-th valid key (j < lengths[b]; in range, unused, beyond), None for "right"."""
    B, L = mask.shape
    lengths = mask.sum(1)
    if layout == "right":
        return lengths, None
    idtype = torch.int32 if B * L < 2**31 else torch.int64
    if layout == "left":
        start = (L - lengths).to(idtype)
        pos = torch.arange(L, dtype=idtype, device=mask.device)
        return lengths, torch.minimum(start[:, None] + pos, pos.new_tensor(L - 1))
    dest = torch.where(mask, mask.cumsum(1, dtype=torch.int64) - 1, L)
    pos = torch.zeros(B, L + 1, dtype=idtype, device=mask.device)
    pos.scatter_(1, dest, torch.arange(L, dtype=idtype, device=mask.device).expand(B, L))
    return lengths, pos[:, :L].contiguous()


def _pad_k(scores, indices, k):
    extra = k - scores.shape[-1]
    if extra <= 0:
        return scores, indices
    return (nn.functional.pad(scores, (0, extra), value=float("-inf")),
            nn.functional.pad(indices, (0, extra), value=-1))


def topk_search(query: torch.Tensor, keys: Optional[torch.Tensor], k: int, *,
                tables: Optional[Sequence[torch.Tensor]] = None,
                ids: Optional[Sequence[torch.Tensor]] = None,
                mask: Optional[torch.Tensor] = None, lengths: Optional[torch.Tensor] = None,
                mask_layout: str = "auto", scale: float = 1.0, backend: Optional[str] = None):
    """``topk_attention`` (keys (B, L, d)) or ``topk_attention_embedding`` (keys=None,
    tables + ids) with a (B, L) validity mask instead of lengths if wanted; see the
    module docstring for the mask layouts. k > L is allowed (the extra slots are
    padding). Returns (scores, indices) as the op's, indices in original positions;
    scores are differentiable w.r.t. query and keys / tables."""
    if mask_layout not in MASK_LAYOUTS:
        raise ValueError(f"mask_layout must be one of {MASK_LAYOUTS}, got {mask_layout!r}")
    if (keys is None) == (tables is None):
        raise ValueError("give keys, or tables and ids (not both)")
    if tables is not None and ids is None:
        raise ValueError("tables need ids")
    if mask is not None and lengths is not None:
        raise ValueError("give mask or lengths, not both")
    B = query.shape[0]
    L = keys.shape[1] if keys is not None else ids[0].shape[-1]
    kk = min(k, L)
    if kk < 1:  # L == 0: nothing to select
        shape = (*query.shape[:-1], k)
        return (query.new_full(shape, float("-inf"), dtype=torch.float32),
                torch.full(shape, -1, dtype=torch.int64, device=query.device))
    positions = None
    if mask is not None:
        mask = _bool_mask(mask)
        if mask.shape != (B, L):
            raise ValueError(f"mask must have shape (B, L)=({B}, {L}), got {tuple(mask.shape)}")
        layout = mask_layout
        if layout == "auto":
            layout = detect_mask_layout(mask)
            global _warned_any_mask
            if layout == "any" and not _warned_any_mask:
                _warned_any_mask = True
                warnings.warn("topk_search: the mask is neither right- nor left-padded; each row's valid "
                              "positions are compacted (exact, one extra (B, L) pass). Pass "
                              "mask_layout='any' to skip the check and this warning.", stacklevel=2)
        lengths, positions = _positions(mask, layout)
    if positions is None:
        if keys is not None:
            scores, idx = ops.topk_attention(query, keys, kk, lengths=lengths, scale=scale, backend=backend)
        else:
            scores, idx = ops.topk_attention_embedding(query, tables, ids, kk, lengths=lengths,
                                                       scale=scale, backend=backend)
        return _pad_k(scores, idx, k)
    if keys is not None:
        # The keys as one (B·L, d) table (a view when contiguous); row b reads rows b·L + positions[b].
        d = keys.shape[-1]
        base = torch.arange(0, B * L, L, dtype=positions.dtype, device=positions.device)
        tables, ids = [keys.reshape(B * L, d)], [positions + base[:, None]]
    else:
        ids = [(i.expand(B, L) if i.dim() == 1 else i).gather(1, positions.long()) for i in ids]
    scores, idx = ops.topk_attention_embedding(query, list(tables), ids, kk, lengths=lengths,
                                               scale=scale, backend=backend)
    flat = idx.reshape(B, -1)
    orig = positions.gather(1, flat.clamp(min=0)).long()
    idx = torch.where(flat >= 0, orig, -1).view(idx.shape)
    return _pad_k(scores, idx, k)


def _select_values(values: Values, idx: torch.Tensor, keys, tables, ids) -> torch.Tensor:
    """The (B, n, d_v) values at idx (B, n) (original positions, padding clamped to 0)."""
    if values is None:
        if keys is not None:
            values = keys
        else:
            B = idx.shape[0]
            return torch.cat([t[(i.expand(B, i.shape[-1]) if i.dim() == 1 else i).gather(1, idx).long()]
                              for t, i in zip(tables, ids)], -1)
    if callable(values) and not isinstance(values, torch.Tensor):
        return values(idx)
    return values.gather(1, idx[..., None].expand(-1, -1, values.shape[-1]))


def _attention_weights(scores: torch.Tensor, indices: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax over the selected scores / temperature; padding slots (and rows
    with no valid position) weigh 0. NaN scores propagate, as in softmax."""
    pad = indices < 0
    empty = pad.all(-1, keepdim=True)
    s = scores if temperature == 1.0 else scores / temperature
    s = s.masked_fill(empty, 0.0)  # finite, so an empty row has no NaN in forward or backward
    return torch.softmax(s, dim=-1).masked_fill(pad, 0.0)


class HardSearch(nn.Module):
    """SIM-style hard search + target attention: the k keys scoring highest
    against the query, softmax over their k scores, weighted sum of their values.

    forward(query, keys=None, values=None, *, mask=None, lengths=None, tables=None, ids=None)

    - query (B, d), or (B, T, d) for T targets searching one sequence each;
    - keys (B, L, d), or keys=None with tables + ids (the op's embedding form:
      keys are [tables[0][ids[0]] | ...], never built);
    - values (B, L, d_v); a callable mapping the selected positions (B, n)
      (n = T·k; padding slots read position 0, then weigh 0) to (B, n, d_v); or
      None: the keys themselves (with tables + ids: the looked-up rows);
    - mask (B, L) True = valid (any layout, see the module docstring) or lengths (B,).

    Returns TopKAttentionOutput(output (B, d_v) or (B, T, d_v) in the values'
    dtype, scores float32 (B[, T], k) = scale · query·key, indices int64).
    Weights are softmax(scores / temperature) over the selected k; gradients reach
    query, keys / tables (selected rows only) and values. ``scale`` None is
    d ** -0.5."""

    def __init__(self, k: int, *, scale: Optional[float] = None, temperature: float = 1.0,
                 mask_layout: str = "auto", backend: Optional[str] = None):
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if mask_layout not in MASK_LAYOUTS:
            raise ValueError(f"mask_layout must be one of {MASK_LAYOUTS}, got {mask_layout!r}")
        self.k, self.scale, self.temperature = k, scale, temperature
        self.mask_layout, self.backend = mask_layout, backend

    def extra_repr(self) -> str:
        return f"k={self.k}, scale={self.scale}, temperature={self.temperature}, mask_layout={self.mask_layout!r}"

    def forward(self, query, keys=None, values: Values = None, *, mask=None, lengths=None,
                tables=None, ids=None) -> TopKAttentionOutput:
        scale = self.scale if self.scale is not None else query.shape[-1] ** -0.5
        scores, idx = topk_search(query, keys, self.k, tables=tables, ids=ids, mask=mask, lengths=lengths,
                                  mask_layout=self.mask_layout, scale=scale, backend=self.backend)
        B = query.shape[0]
        picked = _select_values(values, idx.reshape(B, -1).clamp(min=0), keys, tables, ids)
        picked = picked.reshape(*idx.shape, picked.shape[-1])
        w = _attention_weights(scores, idx, self.temperature)
        out = torch.einsum("...k,...kv->...v", w, picked.float()).to(picked.dtype)
        return TopKAttentionOutput(out, scores, idx)


def _uniform_(p: torch.Tensor, fan_in: int):
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
    nn.init.uniform_(p, -bound, bound)


class TopKMultiHeadAttention(nn.Module):
    """TWIN-style multi-head top-k target attention.

    Head h: q_h = W_q^h · target (+ b), scores_hj = scale · q_h · (W_k^h key_j),
    its own top-k, v_hj = W_v^h value_j (+ b) for the selected j only, o_h =
    softmax over the k scores · v; output = W_o [o_1 | ... | o_H] (+ b).

    The key maps are folded into the queries, W_k^hᵀ q_h (B, H, d_key), so one op
    call with T = H queries scans the raw keys (or tables + ids) once. A key bias
    would add q_h · b_h to every score of a head, changing neither the ranking nor
    the softmax, so there is none. key_proj=False: the heads' queries meet the raw
    keys (d_head must equal d_key). value_proj=False: heads attend the raw values.

    forward(query (B, d_query), keys=None, values=None, *, mask=None, lengths=None,
    tables=None, ids=None): keys / tables + ids / values / mask / lengths as in
    HardSearch; a values callable gets (B, H·k) positions. Returns
    TopKAttentionOutput(output (B, d_out), scores (B, H, k), indices (B, H, k)).

    Defaults: d_head = d_key, d_value = d_key (values=None reuses the keys),
    d_out = H · (d_head if value_proj else d_value), scale = d_head ** -0.5."""

    def __init__(self, k: int, d_query: int, d_key: int, num_heads: int, *, d_head: Optional[int] = None,
                 d_value: Optional[int] = None, d_out: Optional[int] = None, key_proj: bool = True,
                 value_proj: bool = True, bias: bool = True, scale: Optional[float] = None,
                 temperature: float = 1.0, mask_layout: str = "auto", backend: Optional[str] = None):
        super().__init__()
        d_head = d_key if d_head is None else d_head
        if not key_proj and d_head != d_key:
            raise ValueError(f"key_proj=False needs d_head == d_key={d_key}, got {d_head}")
        d_value = d_key if d_value is None else d_value
        self.search = HardSearch(k, scale=d_head ** -0.5 if scale is None else scale, temperature=temperature,
                                 mask_layout=mask_layout, backend=backend)
        self.num_heads, self.d_head, self.d_key, self.d_value = num_heads, d_head, d_key, d_value
        self.q_proj = nn.Linear(d_query, num_heads * d_head, bias=bias)
        self.key_weight = nn.Parameter(torch.empty(num_heads, d_head, d_key)) if key_proj else None
        d_v = d_head if value_proj else d_value
        self.value_weight = nn.Parameter(torch.empty(num_heads, d_value, d_head)) if value_proj else None
        self.value_bias = nn.Parameter(torch.empty(num_heads, d_head)) if value_proj and bias else None
        self.out_proj = nn.Linear(num_heads * d_v, num_heads * d_v if d_out is None else d_out, bias=bias)
        self.reset_parameters()

    def reset_parameters(self):
        for p, fan_in in ((self.key_weight, self.d_key), (self.value_weight, self.d_value),
                          (self.value_bias, self.d_value)):
            if p is not None:
                _uniform_(p, fan_in)

    @property
    def k(self) -> int:
        return self.search.k

    def head_queries(self, query: torch.Tensor) -> torch.Tensor:
        """The per-head queries in key space, (B, H, d_key): W_k^hᵀ W_q^h target."""
        q = self.q_proj(query).view(query.shape[0], self.num_heads, self.d_head)
        if self.key_weight is not None:
            q = torch.einsum("bhe,hed->bhd", q, self.key_weight)
        return q

    def forward(self, query, keys=None, values: Values = None, *, mask=None, lengths=None,
                tables=None, ids=None) -> TopKAttentionOutput:
        dtype = keys.dtype if keys is not None else tables[0].dtype
        q = self.head_queries(query).to(dtype)
        s = self.search
        scores, idx = topk_search(q, keys, s.k, tables=tables, ids=ids, mask=mask, lengths=lengths,
                                  mask_layout=s.mask_layout, scale=s.scale, backend=s.backend)
        B, H, k = idx.shape
        picked = _select_values(values, idx.reshape(B, H * k).clamp(min=0), keys, tables, ids)
        picked = picked.reshape(B, H, k, picked.shape[-1])
        if self.value_weight is not None:
            picked = torch.einsum("bhkv,hve->bhke", picked.to(self.value_weight.dtype), self.value_weight)
            if self.value_bias is not None:
                picked = picked + self.value_bias[:, None, :]
        w = _attention_weights(scores, idx, s.temperature)
        heads = torch.einsum("bhk,bhkv->bhv", w, picked.float()).to(picked.dtype)
        return TopKAttentionOutput(self.out_proj(heads.reshape(B, -1)), scores, idx)
