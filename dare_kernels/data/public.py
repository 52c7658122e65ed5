"""Loaders for the public Taobao (UserBehavior.csv) and Tmall
(user_log_format1.csv) logs, following the DARE/TWIN preprocessing:

- item and category ids are remapped to 1..n (0 is padding);
- each user's behaviours are ordered by time (file order breaks ties);
- users with fewer than min_len + max(target_offsets) + 1 behaviours are dropped;
- for each offset o in target_offsets, the behaviour o steps before the user's
  last is a positive target and the up to max_len behaviours before it are its
  history (most recent first);
- each positive gets one negative: an item drawn by frequency, excluding the
  items of that history.

Everything is vectorised over users (numpy/torch), so files of tens of millions
of rows load in seconds; the padded histories take 16·U·max_len bytes.
"""
from __future__ import annotations

import numpy as np
import torch

from .batching import Interactions


def _read(path: str, columns: list, names: list, header) -> dict:
    import pandas as pd
    frame = pd.read_csv(path, header=header, names=names if header is None else None, usecols=columns)
    if header is not None:
        frame = frame[columns]
    return {c: frame[c].to_numpy() for c in columns}


def load_taobao(path: str, **kw) -> Interactions:
    """UserBehavior.csv: user_id,item_id,category_id,behavior_type,timestamp (no header)."""
    cols = _read(path, ["user", "item", "cat", "time"], ["user", "item", "cat", "behavior", "time"], None)
    return build(cols["user"], cols["item"], cols["cat"], cols["time"], **kw)


def load_tmall(path: str, **kw) -> Interactions:
    """user_log_format1.csv: user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type (header)."""
    cols = _read(path, ["user_id", "item_id", "cat_id", "time_stamp"], [], 0)
    return build(cols["user_id"], cols["item_id"], cols["cat_id"], cols["time_stamp"], **kw)


def build(users, items, cats, times, *, max_len: int = 1000, min_len: int = 10, target_offsets=(0,),
          seed: int = 0) -> Interactions:
    users, items, cats, times = (np.asarray(a) for a in (users, items, cats, times))
    item_ids, item_idx = np.unique(items, return_inverse=True)
    cat_ids, cat_idx = np.unique(cats, return_inverse=True)
    item_idx, cat_idx = item_idx + 1, cat_idx + 1
    # Category of each remapped item (its first occurrence).
    item_cat = np.zeros(len(item_ids) + 1, dtype=np.int64)
    item_cat[item_idx[::-1]] = cat_idx[::-1]

    order = np.lexsort((np.arange(len(users)), times, users))  # by user, then time, then file order
    u, it, ct = users[order], item_idx[order], cat_idx[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    ends = np.r_[starts[1:], len(u)]  # exclusive
    counts = ends - starts
    keep = counts >= min_len + max(target_offsets) + 1
    starts, ends = starts[keep], ends[keep]

    hist_items, hist_cats, lengths, pos_item = [], [], [], []
    for o in target_offsets:
        t = ends - 1 - o  # target row per user
        idx = t[:, None] - 1 - np.arange(max_len)[None, :]
        valid = idx >= starts[:, None]
        safe = np.where(valid, idx, 0)
        hist_items.append(np.where(valid, it[safe], 0))
        hist_cats.append(np.where(valid, ct[safe], 0))
        lengths.append(valid.sum(1))
        pos_item.append(it[t])
    hist_items = torch.from_numpy(np.concatenate(hist_items)).long()
    hist_cats = torch.from_numpy(np.concatenate(hist_cats)).long()
    lengths = torch.from_numpy(np.concatenate(lengths)).long()
    pos_item = torch.from_numpy(np.concatenate(pos_item)).long()
    H = len(pos_item)

    freq = torch.from_numpy(np.bincount(item_idx, minlength=len(item_ids) + 1)).double()
    freq[0] = 0
    g = torch.Generator().manual_seed(seed)
    neg_item = torch.multinomial(freq, H, replacement=True, generator=g)
    for _ in range(50):  # redraw negatives that occur in their own history
        bad = (hist_items == neg_item[:, None]).any(1) | (neg_item == pos_item)
        if not bad.any():
            break
        neg_item[bad] = torch.multinomial(freq, int(bad.sum()), replacement=True, generator=g)
    item_cat = torch.from_numpy(item_cat)
    rows = torch.arange(H)
    user = torch.cat([rows, rows])
    target = torch.cat([pos_item, neg_item])
    label = torch.cat([torch.ones(H), torch.zeros(H)])
    return Interactions(hist_items, hist_cats, lengths, user, target, item_cat[target], label)
