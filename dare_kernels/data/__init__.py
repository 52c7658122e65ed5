"""Long-sequence recommendation data as padded tensors.

`Interactions` holds one padded history per user (right-padded with 0, most
recent behaviour first) and one row per impression (user, target, label).
`batches` gathers whole columns by index into dict batches: history_items,
history_cats (B, L), lengths, target_item, target_cat, label, user (B,), and on
synthetic data `relevant` (B, L): the ground truth of which behaviours the
target depends on. No per-sample Python anywhere."""
from .batching import Interactions, batches, to_device
from .loaders import LOADERS, Loader
from .synthetic import SyntheticConfig, generate

__all__ = ["LOADERS", "Interactions", "Loader", "SyntheticConfig", "batches", "generate", "to_device"]
