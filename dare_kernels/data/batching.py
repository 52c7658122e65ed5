from __future__ import annotations

import dataclasses
from typing import Dict, Iterator

import torch


@dataclasses.dataclass
class Interactions:
    history_items: torch.Tensor  # (U, L) int64, 0 = padding
    history_cats: torch.Tensor   # (U, L) int64
    lengths: torch.Tensor        # (U,)
    user: torch.Tensor           # (N,) row of the history tables
    target_item: torch.Tensor    # (N,)
    target_cat: torch.Tensor     # (N,)
    label: torch.Tensor          # (N,) float 0/1
    # Synthetic data: a behaviour is relevant to the target iff it has the
    # target's category (batches then carry `relevant`).
    ground_truth: bool = False

    def __len__(self) -> int:
        return len(self.label)

    @property
    def n_items(self) -> int:
        return int(max(self.history_items.max(), self.target_item.max()))

    @property
    def n_cats(self) -> int:
        return int(max(self.history_cats.max(), self.target_cat.max()))

    def rows(self, index: torch.Tensor) -> "Interactions":
        """The impressions `index` (histories are shared, not copied)."""
        return dataclasses.replace(self, user=self.user[index], target_item=self.target_item[index],
                                   target_cat=self.target_cat[index], label=self.label[index])

    def split(self, fractions=(0.8, 0.1, 0.1), seed: int = 0):
        """Random train/validation/test split of the impressions."""
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        out, start = [], 0
        for i, f in enumerate(fractions):
            end = len(self) if i == len(fractions) - 1 else start + int(round(f * len(self)))
            out.append(self.rows(perm[start:end]))
            start = end
        return out


def batches(data: Interactions, batch_size: int, *, shuffle: bool = False, seed: int = 0,
            rank: int = 0, world_size: int = 1, drop_last: bool = False) -> Iterator[Dict[str, torch.Tensor]]:
    """Dict batches; with world_size > 1 each rank takes a disjoint stride. The
    history columns are cut to the batch's longest history."""
    n = len(data)
    order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle
             else torch.arange(n))[rank::world_size]
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        if drop_last and len(index) < batch_size:
            return
        user = data.user[index]
        lengths = data.lengths[user]
        width = max(1, int(lengths.max()))
        batch = {"history_items": data.history_items[user, :width], "history_cats": data.history_cats[user, :width],
                 "lengths": lengths, "user": user, "target_item": data.target_item[index],
                 "target_cat": data.target_cat[index], "label": data.label[index]}
        if data.ground_truth:
            valid = torch.arange(width)[None, :] < lengths[:, None]
            batch["relevant"] = (batch["history_cats"] == batch["target_cat"][:, None]) & valid
        yield batch


def to_device(batch: Dict[str, torch.Tensor], device) -> Dict[str, torch.Tensor]:
    return {name: col.to(device, non_blocking=True) for name, col in batch.items()}
