"""Fused score + exact top-k for the search stage of long-sequence recommenders.

    import dare_kernels
    scores, indices = dare_kernels.topk_attention(query, keys, k, lengths=lengths)
    # or, once dare_kernels is imported:
    scores, indices = torch.ops.dare.topk_attention(query, keys, k, lengths, scale)
"""
from . import _library, reference
from .ops import (BACKENDS, available_backends, topk_attention, topk_attention_backward,
                  topk_attention_embedding, topk_attention_embedding_backward)
from .layers import HardSearch, TopKAttentionOutput, TopKMultiHeadAttention, detect_mask_layout, topk_search

__all__ = ["BACKENDS", "available_backends", "reference", "topk_attention",
           "topk_attention_backward", "topk_attention_embedding", "topk_attention_embedding_backward",
           "HardSearch", "TopKAttentionOutput", "TopKMultiHeadAttention", "detect_mask_layout", "topk_search"]
__version__ = "0.1.0"
