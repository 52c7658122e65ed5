"""FuxiCTR's searching layers on the fused op, with FuxiCTR's names, defaults, parameter
layouts and calling convention, so a FuxiCTR model swaps them in and loads its
checkpoints unchanged (docs/layers.md, "FuxiCTR"). FuxiCTR itself is not imported.

- ``MultiHeadTopKAttention``: TWIN's long-sequence attention (model_zoo/LongCTR/TWIN).
- SIM's first stage, ETA's and MIRRN's Hamming retrieval are a few lines around
  ``topk_search`` (``padding_score=0.0`` for SIM; ``hash_scores`` for the Hamming
  distance), shown in docs/layers.md.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .layers import _attend, _attention_weights, _check_dropout, topk_search

__all__ = ["MultiHeadTopKAttention", "hash_distance", "hash_scores", "validity"]


def validity(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """FuxiCTR's mask (any dtype, 0 = padding: its loaders give float 0/1) as the bool
    validity mask the op takes; None stays None (every position valid)."""
    if mask is None or (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool):
        return mask
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a (B, L) tensor (0 = padding) or None, got {type(mask).__name__}")
    return mask != 0


def hash_scores(hash_code: torch.Tensor) -> torch.Tensor:
    """ETA / MIRRN hash codes (0/1 bits, their lsh_hash) as ±1 codes: for two codes of
    n bits, dot(±1, ±1) = n - 2 · Hamming distance, so the k nearest by Hamming distance
    are the top-k by dot product (topk_search with these as query and keys)."""
    return hash_code * 2 - 1


def hash_distance(scores: torch.Tensor, hash_bits: int) -> torch.Tensor:
    """The Hamming distances of topk_search's scores on hash_scores codes (scale 1);
    -inf (padding) becomes +inf."""
    return (hash_bits - scores) / 2


class MultiHeadTopKAttention(nn.Module):
    """TWIN's ``MultiHeadTopKAttention`` (FuxiCTR model_zoo/LongCTR/TWIN): the same
    constructor, defaults, parameters (``W_q``, ``W_h``, ``W_v``, ``W_o``: nn.Linear
    without bias, so a TWIN state dict loads as it is and FuxiCTR's reset_parameters
    re-initialises them) and ``forward(target_item, item_sequence, mask=None)``
    returning the (B, input_dim) output, on the fused search.

    Head h scores every behaviour by (W_q^h t) · (W_h^h e) / sqrt(head_dim); W_h^h is
    folded into the query, so the op reads the raw sequence once for all heads, and
    W_v^h projects the k selected behaviours only. mask: FuxiCTR's (B, L), 0 = padding
    (any dtype) or None; padding is never selected. dropout_rate: FuxiCTR's dropout on
    the attention weights (training only).

    Where the result differs from FuxiCTR's, on purpose: a row with no valid behaviour
    outputs zeros (FuxiCTR averages W_v of the padding positions its top-k picks: zeros
    as well where the padding embedding is zero, FuxiCTR's padding_idx); ties are broken
    by lower position (torch.topk's order among ties is unspecified). Kc > 0 (cross
    features) is refused: FuxiCTR's forward feeds the full target to W_q, which takes
    input_dim - Kc·embedding_dim features, and the cross-feature bias is one constant a
    head, which moves neither the ranking nor the softmax.

    ``search(target_item, item_sequence, mask=None)``: (scores (B, H, k), indices
    (B, H, k)) of the top-k per head, index -1 (score -inf) where a row has fewer
    than k valid behaviours."""

    def __init__(self, input_dim: int = 64, Kc: int = 0, embedding_dim: int = 16, attention_dim: int = 64,
                 topk: int = 50, num_heads: int = 1, dropout_rate: float = 0, *, backend: Optional[str] = None):
        super().__init__()
        if Kc != 0:
            raise ValueError(f"Kc must be 0, got {Kc}: FuxiCTR's TWIN attention with cross features feeds the "
                             f"full target (input_dim) to W_q, which takes input_dim - Kc * embedding_dim "
                             f"features, and their bias is constant per head (no effect on ranking or softmax)")
        if num_heads < 1 or attention_dim % num_heads:
            raise ValueError(f"attention_dim={attention_dim} must be divisible by num_heads={num_heads} (>= 1)")
        self.num_heads, self.topk, self.head_dim = num_heads, topk, attention_dim // num_heads
        self.Kc, self.backend = Kc, backend
        self.dropout_rate = _check_dropout(dropout_rate)
        self.W_q = nn.Linear(input_dim, attention_dim, bias=False)
        self.W_h = nn.Linear(input_dim, attention_dim, bias=False)
        self.W_v = nn.Linear(input_dim, attention_dim, bias=False)
        self.W_o = nn.Linear(attention_dim, input_dim, bias=False)

    def extra_repr(self) -> str:
        return f"topk={self.topk}, num_heads={self.num_heads}, dropout_rate={self.dropout_rate}"

    def _heads(self, w: torch.Tensor) -> torch.Tensor:
        """An (attention_dim, input_dim) weight as (H, head_dim, input_dim): FuxiCTR splits
        the projected features into heads in order."""
        return w.view(self.num_heads, self.head_dim, w.shape[-1])

    def search(self, target_item: torch.Tensor, item_sequence: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        B = target_item.shape[0]
        q = self.W_q(target_item).view(B, self.num_heads, self.head_dim)
        q = torch.einsum("bhe,hed->bhd", q, self._heads(self.W_h.weight))
        return topk_search(q.to(item_sequence.dtype), item_sequence, self.topk, mask=validity(mask),
                           scale=self.head_dim ** -0.5, backend=self.backend)

    def forward(self, target_item: torch.Tensor, item_sequence: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        scores, idx = self.search(target_item, item_sequence, mask)
        B, H, k = idx.shape
        D = item_sequence.shape[-1]
        pos = idx.clamp(min=0).reshape(B, H * k, 1)  # -1 (padding) reads position 0 and weighs 0
        picked = item_sequence.gather(1, pos.expand(-1, -1, D)).view(B, H, k, D)
        values = torch.einsum("bhkd,hed->bhke", picked, self._heads(self.W_v.weight))
        weights = _attention_weights(scores, idx, 1.0)
        if self.dropout_rate:
            weights = nn.functional.dropout(weights, self.dropout_rate, self.training)
        return self.W_o(_attend(weights, values).reshape(B, H * self.head_dim))
