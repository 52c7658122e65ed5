"""Drop-in ``nn.Module`` layers for the search + target-attention block of
long-sequence recommenders (SIM hard search, TWIN / ETA-style multi-head top-k
attention), on the fused ``topk_attention`` ops: the B×L score matrix is never
written, and values are gathered (and projected) for the k selected behaviours only.
The reference models (``dare_kernels.models``) run their search stage through ``HardSearch``.

- ``topk_search``: the op behind a boolean mask (``True`` = valid) as well as
  lengths; returns (scores, indices) in the original positions.
- ``HardSearch``: single-head top-k search + softmax attention over the k picks.
- ``TopKMultiHeadAttention``: H heads, each with its own top-k; per-head key maps
  are folded into the query, so the op runs once on the raw keys with T = H queries.

Histories come in the caller's layout, read by the kernels as they are:

- ``mask`` (B, L) bool, True = valid, any pattern: right- or left-padded
  (e.g. FuxiCTR's ``mask = history > 0`` with the padding in front) or holes;
- ``lengths`` (B,): right padding; with a mask as well, a position takes part
  where both allow it (as the op takes them);
- ``offsets`` (B+1,): jagged rows (TorchRec / FBGEMM style): keys (N, d), or
  tables + ids (N,), and values (N, d_v); indices count from the row's start.

``mask_layout`` is "any" (the default: the mask is read as it is, whatever its
pattern) or "right": a promise that every row's valid positions are a prefix, so
the mask (given without lengths) runs as lengths = its count and the kernels stop at
each row's end instead of reading the padding; a mask that is not right-padded then
selects other positions. ("auto" and "left", accepted before, ran as "any": they now
raise ValueError naming the accepted values.)

One rule for k, rows with no history and masks, in every layer and form (the
reference models' search included):

- k >= 1 (and < 2**31); the results are always (B, k) (or (B, T, k)): a row with
  fewer than k valid positions is padded with score -inf, index -1 and weight 0,
  k > L included (the op itself raises there for padded rows; the layers search
  min(k, L) and pad, as the op pads jagged rows shorter than k). Padded rows need L >= 1.
- A row with no valid position attends to nothing: HardSearch outputs zeros there,
  with zero (never NaN) gradients, scores' included (TopKMultiHeadAttention then
  adds its output projection's bias).
- Masks are taken as the op takes them, with its checks and messages: a bool mask
  (an int or float one raises TypeError), with or without lengths.

Masked positions are never scored or selected, and the ranking is the op's
(descending, ties by lower position, NaN first).

Replacing a hand-written block (this example runs in python_tests/test_layers.py;
``python bench/tools/layers_time.py`` times such pairs):

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


torch.manual_seed(0)  # the block rounds its scores otherwise: two within an ulp at the k-th place may swap
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
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import ops
from ._check import check_embedding_inputs, check_inputs, check_k, check_k_type, jagged_positions

__all__ = ["HardSearch", "TopKAttentionOutput", "TopKMultiHeadAttention", "detect_mask_layout", "topk_search"]

MASK_LAYOUTS = ("any", "right")  # the values that change how a mask runs (module docstring)
Values = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], None]


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


def check_mask_layout(mask_layout) -> str:
    """mask_layout if it is one of MASK_LAYOUTS, else ValueError naming them."""
    if isinstance(mask_layout, str) and mask_layout in MASK_LAYOUTS:
        return mask_layout
    gone = " ('auto' and 'left' ran as 'any' and were removed)" if mask_layout in ("auto", "left") else ""
    raise ValueError(f"mask_layout must be 'any' (the mask read as it is) or 'right' (a right-padded mask, "
                     f"run as lengths), got {mask_layout!r}{gone}")


def _padded_length(keys, ids) -> Optional[int]:
    """L of padded rows (keys (B, L, d), ids (B, L) / (L,)); None where the op's
    checks will reject the shapes (they raise, with their messages)."""
    t = keys if keys is not None else (ids[0] if isinstance(ids, (list, tuple)) and len(ids) else None)
    if not isinstance(t, torch.Tensor):
        return None
    if keys is not None:
        return t.shape[1] if t.dim() == 3 else None
    return t.shape[-1] if t.dim() in (1, 2) else None


def topk_search(query: torch.Tensor, keys: Optional[torch.Tensor], k: int, *,
                tables: Optional[Sequence[torch.Tensor]] = None,
                ids: Optional[Sequence[torch.Tensor]] = None,
                mask: Optional[torch.Tensor] = None, lengths: Optional[torch.Tensor] = None,
                offsets: Optional[torch.Tensor] = None, mask_layout: str = "any", scale: float = 1.0,
                sparse: bool = False, backend: Optional[str] = None, padding_score: Optional[float] = None):
    """``topk_attention`` (keys (B, L, d)) or ``topk_attention_embedding`` (keys=None,
    tables + ids) with the history in the caller's layout: a (B, L) bool validity
    mask (any pattern) and / or lengths, or jagged rows (offsets (B+1,), keys (N, d)
    or ids (N,)); see the module docstring. k >= 1 (< 2**31): results are (B[, T], k)
    whatever L, a row with fewer than k valid positions padded (score -inf, index -1);
    for k > L the op searches L and the rest is padding. Masks, shapes and dtypes are
    the op's, checked by its checks with its messages. Returns (scores, indices) as
    the op's: positions in the row (jagged: from the row's start); scores are
    differentiable w.r.t. query and keys / tables (sparse: the tables' gradients as
    sparse rows, the op's sparse=True; no effect with keys).

    padding_score: None (the default) excludes masked positions; a number makes them
    compete as if each scored it (FuxiCTR's SIM multiplies its scores by the mask:
    padding_score=0.0), so a valid position ranked below them is dropped where the
    row's padding fills its slot. Padding still comes out as index -1 (score -inf),
    behind the kept positions; a valid score equal to padding_score ranks first."""
    check_mask_layout(mask_layout)
    if (keys is None) == (tables is None):
        raise ValueError("give keys, or tables and ids (not both)")
    if tables is not None and ids is None:
        raise ValueError("tables need ids")
    if offsets is not None and (mask is not None or lengths is not None):
        raise ValueError("jagged rows (offsets) take no mask or lengths")
    if padding_score is not None and mask is None and lengths is None:
        raise ValueError("padding_score needs padded rows with a mask and / or lengths: "
                         "jagged rows and unmasked rows have no padding")
    op = "topk_attention" if keys is not None else "topk_attention_embedding"
    k = check_k_type(op, k)
    n = k  # what the op searches
    L = _padded_length(keys, ids) if offsets is None else None
    if L is not None and 1 <= L < k:  # the one rule: k > L pads, as jagged rows shorter than k
        check_k(op, k, L, jagged=True)  # 1 <= k < 2**31
        n = L
    given_mask, given_lengths = mask, lengths  # the "right" layout below turns the mask into lengths
    if mask is not None and lengths is None and mask_layout == "right":
        # The kernels stop at the length: the padding is never read. The op's check first,
        # on the mask as given (its type and shape), with the op's messages.
        if keys is not None:
            check_inputs(query, keys, n, check_length_values=False, scale=scale, mask=mask)
        else:
            check_embedding_inputs(query, tables, ids, n, check_values=False, scale=scale, mask=mask)
        lengths, mask = mask.sum(1), None
    kw = dict(lengths=lengths, scale=scale, mask=mask, offsets=offsets, backend=backend)
    if keys is not None:
        scores, indices = ops.topk_attention(query, keys, n, **kw)
    else:
        scores, indices = ops.topk_attention_embedding(query, tables, ids, n, sparse=sparse, **kw)
    if padding_score is not None and L is not None:  # after the op: its checks have passed
        n_pad = L - _valid_count(given_mask, given_lengths, L)
        scores, indices = _drop_below_padding(scores, indices, n_pad, float(padding_score))
    if n < k:
        scores = nn.functional.pad(scores, (0, k - n), value=float("-inf"))
        indices = nn.functional.pad(indices, (0, k - n), value=-1)
    return scores, indices


def _valid_count(mask, lengths, L: int) -> torch.Tensor:
    """(B,) positions that take part: the mask's and the lengths' (both: where both allow)."""
    take = None
    if mask is not None:
        take = _bool_mask(mask)
    if lengths is not None:
        within = torch.arange(L, device=lengths.device) < lengths.reshape(-1, 1)
        take = within if take is None else take & within
    return take.sum(1)


def _drop_below_padding(scores, indices, n_pad, padding_score: float):
    """The top-n as if each of a row's n_pad masked positions scored padding_score:
    they fill the slots from rank n - n_pad on, so a valid position there that scores
    below them (NaN ranks first, as in the op) becomes padding."""
    n = scores.shape[-1]
    n_pad = n_pad.reshape(-1, *([1] * (scores.dim() - 1)))
    rank = torch.arange(n, device=scores.device)
    beaten = ~((scores >= padding_score) | scores.isnan()) & (rank >= n - n_pad) & (indices >= 0)
    return scores.masked_fill(beaten, float("-inf")), indices.masked_fill(beaten, -1)


def _select_values(values: Values, idx: torch.Tensor, keys, tables, ids, offsets=None) -> torch.Tensor:
    """The (B, n, d_v) values at idx (B, n) (-1: padding, which reads position 0 and
    weighs 0; its id is never looked up). Jagged rows: values (N, d_v) are read at
    the row's start + idx, and a callable gets those positions into the N values."""
    pos = idx.clamp(min=0)
    if offsets is not None:
        N = keys.shape[0] if keys is not None else ids[0].shape[0]
        pos = jagged_positions(offsets, idx, N)
        if N == 0 and (values is None or isinstance(values, torch.Tensor)):  # no history at all
            width = (values if values is not None else keys).shape[-1] if keys is not None or values is not None \
                else sum(t.shape[1] for t in tables)
            dtype = (values if values is not None else keys if keys is not None else tables[0]).dtype
            return torch.zeros(*idx.shape, width, dtype=dtype, device=idx.device)
    if callable(values) and not isinstance(values, torch.Tensor):
        return values(pos)
    if values is None and keys is None:  # tables + ids: a padding slot's id is never looked up
        B = idx.shape[0]
        looked = []
        for t, i in zip(tables, ids):
            i = i[pos] if offsets is not None else (i.expand(B, i.shape[-1]) if i.dim() == 1 else i).gather(1, pos)
            looked.append(t[torch.where(idx >= 0, i, 0).long()])
        return torch.cat(looked, -1)
    values = keys if values is None else values
    if offsets is not None:
        return values[pos]
    return values.gather(1, pos[..., None].expand(-1, -1, values.shape[-1]))


def _check_values(values: Values, B: int, keys, ids, offsets, d_value: Optional[int] = None) -> None:
    """values' type and shape, before they are read (the search has checked the keys /
    ids): a floating-point (B, L, d_v) tensor ((N, d_v) with offsets), a callable or
    None; `d_value`: the width the layer needs (TopKMultiHeadAttention's)."""
    if values is None or (callable(values) and not isinstance(values, torch.Tensor)):
        return
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"values must be a Tensor, a callable or None, got {type(values).__name__}")
    if values.dtype == torch.bool:  # forward(query, keys, mask) as some libraries call it
        raise TypeError("values must be a floating-point tensor, got torch.bool: the mask is a keyword "
                        "argument (mask=...); the third positional argument is values")
    if not values.is_floating_point():
        raise TypeError(f"values must be a floating-point tensor, got {values.dtype}")
    shape = tuple(values.shape)
    if offsets is not None:
        N = keys.shape[0] if keys is not None else ids[0].shape[0]
        if values.dim() != 2 or shape[0] != N:
            raise ValueError(f"with offsets, values must have shape (N, d_v) with N={N} (one row per key), "
                             f"got shape {shape}")
    else:
        L = keys.shape[1] if keys is not None else ids[0].shape[-1]
        if values.dim() != 3 or shape[:2] != (B, L):
            # forward(target, sequence, mask), FuxiCTR's order, with a float mask: say so
            hint = (": a (B, L) mask's shape; the third positional argument is values, pass the mask as "
                    "mask=... (a bool tensor)") if shape == (B, L) else ""
            raise ValueError(f"values must have shape (B, L, d_v) with B={B}, L={L} (one row per key), "
                             f"got shape {shape}{hint}")
    if d_value is not None and shape[-1] != d_value:
        raise ValueError(f"values must have shape {'(N, d_value)' if offsets is not None else '(B, L, d_value)'} "
                         f"with the layer's d_value={d_value}, got shape {shape}")


def _attention_weights(scores: torch.Tensor, indices: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax over the selected scores / temperature; padding slots (and rows
    with no valid position) weigh 0, with zero gradients. NaN scores propagate, as
    in softmax. Where a row has a valid position these are softmax(scores)'s values
    and gradients exactly (a padding slot's -inf already weighs 0)."""
    pad = indices < 0
    empty = pad.all(-1, keepdim=True)
    s = scores if temperature == 1.0 else scores / temperature
    s = s.masked_fill(empty, 0.0)  # finite, so an empty row has no NaN in forward or backward
    return torch.softmax(s, dim=-1).masked_fill(pad, 0.0)


def _check_dropout(dropout) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    return float(dropout)


def _attend(weights: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
    """Σ_k weights · picked over the k slots, summed in float32 (elementwise: autocast
    leaves it in float32), returned in picked's dtype."""
    return (weights.unsqueeze(-1) * picked.float()).sum(-2).to(picked.dtype)


class HardSearch(nn.Module):
    """SIM-style hard search + target attention: the k keys scoring highest
    against the query, softmax over their k scores, weighted sum of their values.
    The reference models' search stage (``model.search``).

    forward(query, keys=None, values=None, *, mask=None, lengths=None, offsets=None, tables=None, ids=None)

    - query (B, d), or (B, T, d) for T targets searching one sequence each;
    - keys (B, L, d), or keys=None with tables + ids (the op's embedding form:
      keys are [tables[0][ids[0]] | ...], never built);
    - values (B, L, d_v); a callable mapping the selected positions (B, n)
      (n = T·k; padding slots read position 0, then weigh 0) to (B, n, d_v) (with
      offsets: positions into the N jagged values, offsets[b] + index); or
      None: the keys themselves (with tables + ids: the looked-up rows);
    - mask (B, L) bool, True = valid (any layout), and / or lengths (B,);
      or jagged rows: offsets (B+1,) with keys (N, d) / ids (N,) and values (N, d_v).

    Returns TopKAttentionOutput(output (B, d_v) or (B, T, d_v) in the values'
    dtype (summed in float32), scores float32 (B[, T], k) = scale · query·key,
    indices int64). Weights are softmax(scores / temperature) over the selected k;
    gradients reach query, keys / tables (selected rows only) and values.
    search(query, keys=None, *, ...) is the search alone: (scores, indices).

    k, short and empty rows, masks: the module docstring's one rule (results are
    always k wide, padding weighs 0, a row with no valid position gives zeros).
    ``scale`` None is d ** -0.5. ``mask_layout``: "any" (default) or "right" (a
    right-padded mask, run as lengths). ``sparse``: with tables + ids, the tables'
    gradients are sparse rows (the op's sparse=True, for SparseAdam / RowAdam).
    ``dropout``: on the attention weights in training, as nn.Dropout after a softmax
    (FuxiCTR's attention_dropout); ``weights(scores, indices)`` gives them."""

    def __init__(self, k: int, *, scale: Optional[float] = None, temperature: float = 1.0,
                 mask_layout: str = "any", sparse: bool = False, backend: Optional[str] = None,
                 dropout: float = 0.0):
        super().__init__()
        self.dropout = _check_dropout(dropout)
        k = check_k_type(type(self).__name__, k)  # an int or integer-like (numpy.int64), not bool
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.k, self.scale, self.temperature = k, scale, temperature
        self.mask_layout, self.sparse, self.backend = check_mask_layout(mask_layout), sparse, backend

    def extra_repr(self) -> str:
        return (f"k={self.k}, scale={self.scale}, temperature={self.temperature}, mask_layout={self.mask_layout!r}, "
                f"sparse={self.sparse}, backend={self.backend!r}, dropout={self.dropout}")

    def weights(self, scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The attention weights over the k slots: softmax(scores / temperature), padding
        0, then dropout (training only; the survivors scaled by 1 / (1 - p), as nn.Dropout)."""
        w = _attention_weights(scores, indices, self.temperature)
        return nn.functional.dropout(w, self.dropout, self.training) if self.dropout else w

    def search(self, query, keys=None, *, mask=None, lengths=None, offsets=None, tables=None,
               ids=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """The search alone: (scores, indices) of the k best keys, as forward's."""
        scale = self.scale if self.scale is not None else query.shape[-1] ** -0.5
        return topk_search(query, keys, self.k, tables=tables, ids=ids, mask=mask, lengths=lengths, offsets=offsets,
                           mask_layout=self.mask_layout, scale=scale, sparse=self.sparse, backend=self.backend)

    def forward(self, query, keys=None, values: Values = None, *, mask=None, lengths=None, offsets=None,
                tables=None, ids=None) -> TopKAttentionOutput:
        scores, idx = self.search(query, keys, mask=mask, lengths=lengths, offsets=offsets, tables=tables, ids=ids)
        B = query.shape[0]
        _check_values(values, B, keys, ids, offsets)
        picked = _select_values(values, idx.reshape(B, -1), keys, tables, ids, offsets)
        picked = picked.reshape(*idx.shape, picked.shape[-1])
        out = _attend(self.weights(scores, idx), picked)
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
    offsets=None, tables=None, ids=None): keys / tables + ids / values / layouts as in
    HardSearch; a values callable gets (B, H·k) positions. Returns
    TopKAttentionOutput(output (B, d_out), scores (B, H, k), indices (B, H, k)).
    k, rows and masks as HardSearch's (the module docstring's rule); mask_layout,
    sparse and backend are its search's (``self.search``, a HardSearch).

    Defaults: d_head = d_key, d_value = d_key (values=None reuses the keys),
    d_out = H · (d_head if value_proj else d_value), scale = d_head ** -0.5, dropout = 0
    (on the attention weights, in training). FuxiCTR's TWIN layer (its parameter names
    and defaults): dare_kernels.fuxictr.MultiHeadTopKAttention."""

    def __init__(self, k: int, d_query: int, d_key: int, num_heads: int, *, d_head: Optional[int] = None,
                 d_value: Optional[int] = None, d_out: Optional[int] = None, key_proj: bool = True,
                 value_proj: bool = True, bias: bool = True, scale: Optional[float] = None,
                 temperature: float = 1.0, mask_layout: str = "any", sparse: bool = False,
                 backend: Optional[str] = None, dropout: float = 0.0):
        super().__init__()
        k = check_k_type(type(self).__name__, k)
        d_head = d_key if d_head is None else d_head
        if not key_proj and d_head != d_key:
            raise ValueError(f"key_proj=False needs d_head == d_key={d_key}, got {d_head}")
        d_value = d_key if d_value is None else d_value
        self.search = HardSearch(k, scale=d_head ** -0.5 if scale is None else scale, temperature=temperature,
                                 mask_layout=mask_layout, sparse=sparse, backend=backend, dropout=dropout)
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

    def forward(self, query, keys=None, values: Values = None, *, mask=None, lengths=None, offsets=None,
                tables=None, ids=None) -> TopKAttentionOutput:
        if values is None and self.d_value != self.d_key:
            raise ValueError(f"values=None reuses the keys (width d_key={self.d_key}), but the layer's "
                             f"d_value={self.d_value}: pass values of shape (B, L, d_value)")
        dtype = keys.dtype if keys is not None else tables[0].dtype
        q = self.head_queries(query).to(dtype)
        scores, idx = self.search.search(q, keys, mask=mask, lengths=lengths, offsets=offsets, tables=tables, ids=ids)
        B, H, k = idx.shape
        _check_values(values, B, keys, ids, offsets, self.d_value)
        picked = _select_values(values, idx.reshape(B, H * k), keys, tables, ids, offsets)
        if picked.shape[-1] != self.d_value:  # a callable's rows
            raise ValueError(f"values returned rows of width {picked.shape[-1]}, but the layer's "
                             f"d_value={self.d_value}: a values callable maps (B, n) positions to (B, n, d_value)")
        picked = picked.reshape(B, H, k, picked.shape[-1])
        if self.value_weight is not None:
            picked = torch.einsum("bhkv,hve->bhke", picked.to(self.value_weight.dtype), self.value_weight)
            if self.value_bias is not None:
                picked = picked + self.value_bias[:, None, :]
        heads = _attend(self.search.weights(scores, idx), picked)
        return TopKAttentionOutput(self.out_proj(heads.reshape(B, -1)), scores, idx)
