"""Reference long-sequence CTR models whose search stage is
torch.ops.dare.topk_attention: DARE and its TWIN baselines."""
from .dare import MODELS, LongSequenceCTR, TopKTargetAttention, position_buckets

__all__ = ["MODELS", "LongSequenceCTR", "TopKTargetAttention", "position_buckets"]
