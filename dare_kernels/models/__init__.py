"""Reference long-sequence CTR models whose search stage is
torch.ops.dare.topk_attention_embedding: DARE and its TWIN baselines, one class
per variant registered in MODELS."""
from .dare import MODELS, LongSequenceCTR, SearchCTR, position_buckets, register

__all__ = ["MODELS", "LongSequenceCTR", "SearchCTR", "position_buckets", "register"]
