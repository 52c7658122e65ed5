from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, Optional

import torch


@dataclasses.dataclass
class Interactions:
    history_items: torch.Tensor  # (U, W) int64, most recent first, 0 = padding
    history_cats: torch.Tensor   # (U, W) int64
    lengths: torch.Tensor        # (U,) valid entries of each row
    user: torch.Tensor           # (N,) row of the history tables
    target_item: torch.Tensor    # (N,)
    target_cat: torch.Tensor     # (N,)
    label: torch.Tensor          # (N,) float 0/1
    # Synthetic data: which behaviours the target depends on is known (batches
    # then carry `relevant`): same category as the target, or, with cat_group,
    # same group of categories.
    ground_truth: bool = False
    cat_group: Optional[torch.Tensor] = None  # (C + 1,) group of each category
    # Several targets of one user share its row: impression n's history is
    # row[start[n] : start[n] + max_len] (None: start 0, max_len = W).
    start: Optional[torch.Tensor] = None      # (N,)
    max_len: Optional[int] = None
    # Time-ordered protocol: 0 train, 1 validation, 2 test (None: split() is random).
    fold: Optional[torch.Tensor] = None       # (N,) int8
    # Synthetic data: each impression's true click probability (the labels' Bayes-optimal scores).
    prob: Optional[torch.Tensor] = None       # (N,)
    description: str = ""

    def __len__(self) -> int:
        return len(self.label)

    @property
    def n_items(self) -> int:
        return int(max(self.history_items.max(), self.target_item.max()))

    @property
    def n_cats(self) -> int:
        return int(max(self.history_cats.max(), self.target_cat.max()))

    @property
    def history_len(self) -> int:
        """The longest history an impression can have (the model's max_len)."""
        return self.max_len or self.history_items.shape[1]

    def rows(self, index: torch.Tensor) -> "Interactions":
        """The impressions `index` (histories are shared, not copied)."""
        pick = (lambda t: None if t is None else t[index])  # noqa: E731
        return dataclasses.replace(self, user=self.user[index], target_item=self.target_item[index],
                                   target_cat=self.target_cat[index], label=self.label[index],
                                   start=pick(self.start), fold=pick(self.fold), prob=pick(self.prob))

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self._tensors().values())

    def to(self, device) -> "Interactions":
        """Every tensor on `device`: batches() then cut batches there (no host gather,
        no host-to-device copy of each batch's B x L histories)."""
        return dataclasses.replace(self, **{n: t.to(device) for n, t in self._tensors().items()})

    def _tensors(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}

    def split(self, fractions=(0.8, 0.1, 0.1), seed: int = 0):
        """(train, validation, test): the loader's time-ordered folds when it
        made them, else a random split of the impressions by `fractions`."""
        if self.fold is not None:
            return [self.rows(torch.nonzero(self.fold == f).flatten()) for f in range(3)]
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        out, start = [], 0
        for i, f in enumerate(fractions):
            end = len(self) if i == len(fractions) - 1 else start + int(round(f * len(self)))
            out.append(self.rows(perm[start:end]))
            start = end
        return out

    def history_lengths(self) -> torch.Tensor:
        """(N,) each impression's history length."""
        lengths = self.lengths[self.user]
        if self.start is not None:
            lengths = lengths - self.start
        return lengths.clamp(0, self.history_len)


def batches(data: Interactions, batch_size: int, *, shuffle: bool = False, seed: int = 0,
            rank: int = 0, world_size: int = 1, drop_last: bool = False,
            fixed_width: bool = False) -> Iterator[Dict[str, torch.Tensor]]:
    """Dict batches; with world_size > 1 each rank takes a disjoint stride. The
    history columns are cut to the batch's longest history, or with fixed_width
    kept at the data's history_len (padding: every batch one shape, which a CUDA
    graph needs; the lengths mask it, the results are the same)."""
    n = len(data)
    dev = data.user.device  # the data's device (Interactions.to): batches are cut there
    order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle
             else torch.arange(n))[rank::world_size].to(dev)  # once: no copy (and wait) per batch
    W = data.history_items.shape[1]
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        if drop_last and len(index) < batch_size:
            return
        user = data.user[index]
        lengths = data.lengths[user]
        if data.start is None:
            lengths = lengths.clamp(max=data.history_len)
            width = min(data.history_len, W) if fixed_width else max(1, int(lengths.max()))
            items, cats = data.history_items[user, :width], data.history_cats[user, :width]
        else:
            offset = data.start[index]
            lengths = (lengths - offset).clamp(0, data.history_len)
            width = data.history_len if fixed_width else max(1, int(lengths.max()))
            cols = (offset[:, None] + torch.arange(width, device=dev)[None, :]).clamp(max=W - 1)
            valid = torch.arange(width, device=dev)[None, :] < lengths[:, None]
            items = data.history_items[user[:, None], cols] * valid
            cats = data.history_cats[user[:, None], cols] * valid
        batch = {"history_items": items, "history_cats": cats, "lengths": lengths, "user": user,
                 "target_item": data.target_item[index], "target_cat": data.target_cat[index],
                 "label": data.label[index]}
        if data.ground_truth:
            valid = torch.arange(width, device=dev)[None, :] < lengths[:, None]
            if data.cat_group is None:
                same = batch["history_cats"] == batch["target_cat"][:, None]
            else:
                same = data.cat_group[batch["history_cats"]] == data.cat_group[batch["target_cat"]][:, None]
            batch["relevant"] = same & valid
        yield batch


def to_device(batch: Dict[str, torch.Tensor], device) -> Dict[str, torch.Tensor]:
    return {name: col.to(device, non_blocking=True) for name, col in batch.items()}
