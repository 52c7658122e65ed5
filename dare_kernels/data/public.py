"""Loaders for the public Taobao (UserBehavior.csv) and Tmall
(user_log_format1.csv) logs, following the DARE authors' preprocessing
(thuml/DARE preprocess/taobao_v4.py, tmall_v4.py); their settings are the
defaults:

- page views only (`page_views_only`: Taobao behaviour "pv", Tmall
  action_type 0), item and category ids remapped to 1..n (0 is padding);
- each user's behaviours ordered by time (file order breaks ties); users with
  fewer than `min_behaviours` (210) behaviours are dropped;
- targets, counted back from the user's last behaviour (offset 0): the last is
  the test target, the second to last the validation target, and
  `train_targets` (19) training targets at offsets 2, 2 + s, 2 + 2s, ... with
  stride s = `target_stride` (5): offsets 2..92, the public code's
  range(3, 94, 5). A target's history is the up to max_len behaviours before it,
  most recent first. The split is by time within each user (`Interactions.fold`);
- each positive gets `negatives` (2) negatives: items drawn by frequency,
  excluding every item of that user's kept behaviours.

A user's row holds the last max_len + (largest offset) behaviours before its
test target once; each target's history is a window of it (`Interactions.start`),
so ~21 targets per user cost one row. Everything is vectorised over users
(numpy/torch): files of tens of millions of rows load in seconds.
"""
from __future__ import annotations

import numpy as np
import torch

from .batching import Interactions

PROTOCOL = {"min_behaviours": 210, "train_targets": 19, "target_stride": 5, "negatives": 2, "page_views_only": True}


def _read(path: str, columns: list, names: list, header) -> dict:
    import pandas as pd
    frame = pd.read_csv(path, header=header, names=names if header is None else None, usecols=columns)
    if header is not None:
        frame = frame[columns]
    return {c: frame[c].to_numpy() for c in columns}


def load_taobao(path: str, *, page_views_only: bool = True, **kw) -> Interactions:
    """UserBehavior.csv: user_id,item_id,category_id,behavior_type,timestamp (no header)."""
    cols = _read(path, ["user", "item", "cat", "behavior", "time"], ["user", "item", "cat", "behavior", "time"], None)
    keep = cols["behavior"] == "pv" if page_views_only else slice(None)
    return build(cols["user"][keep], cols["item"][keep], cols["cat"][keep], cols["time"][keep],
                 description=f"Taobao {path}" + (" (page views)" if page_views_only else ""), **kw)


def load_tmall(path: str, *, page_views_only: bool = True, **kw) -> Interactions:
    """user_log_format1.csv: user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type (header)."""
    cols = _read(path, ["user_id", "item_id", "cat_id", "time_stamp", "action_type"], [], 0)
    keep = cols["action_type"] == 0 if page_views_only else slice(None)
    return build(cols["user_id"][keep], cols["item_id"][keep], cols["cat_id"][keep], cols["time_stamp"][keep],
                 description=f"Tmall {path}" + (" (clicks)" if page_views_only else ""), **kw)


def target_offsets(train_targets: int, target_stride: int):
    """(offsets, folds): test 0, validation 1, then the training targets."""
    offsets = [0, 1] + [2 + target_stride * i for i in range(train_targets)]
    return offsets, [2, 1] + [0] * train_targets


def build(users, items, cats, times, *, max_len: int = 1000, min_behaviours: int = 210, train_targets: int = 19,
          target_stride: int = 5, negatives: int = 2, seed: int = 0, description: str = "") -> Interactions:
    users, items, cats, times = (np.asarray(a) for a in (users, items, cats, times))
    if negatives < 1 or train_targets < 0 or target_stride < 1:
        raise ValueError(f"need negatives >= 1, train_targets >= 0, target_stride >= 1; got {negatives}, "
                         f"{train_targets}, {target_stride}")
    offsets, folds = target_offsets(train_targets, target_stride)
    item_ids, item_idx = np.unique(items, return_inverse=True)
    cat_ids, cat_idx = np.unique(cats, return_inverse=True)
    item_idx, cat_idx = item_idx + 1, cat_idx + 1
    # Category of each remapped item (its first occurrence).
    item_cat = np.zeros(len(item_ids) + 1, dtype=np.int64)
    item_cat[item_idx[::-1]] = cat_idx[::-1]

    order = np.lexsort((np.arange(len(users)), times, users))  # by user, then time, then file order
    u, it, ct = users[order], item_idx[order], cat_idx[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if len(u) else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], len(u)].astype(np.int64)  # exclusive
    # Every target needs at least one behaviour before it.
    keep = ends - starts >= max(min_behaviours, max(offsets) + 2)
    owner = np.repeat(np.arange(len(starts)), ends - starts)  # user (before filtering) of each sorted behaviour
    kept, row_of = keep[owner], (np.cumsum(keep) - 1)[owner]
    starts, ends = starts[keep], ends[keep]
    U = len(starts)
    if U == 0:
        raise ValueError(f"no user has {max(min_behaviours, max(offsets) + 2)} behaviours "
                         f"(min_behaviours={min_behaviours}, largest target offset {max(offsets)})")

    # Row u: the W behaviours before the user's last one, most recent first.
    W = max_len + max(offsets)
    idx = (ends - 2)[:, None] - np.arange(W)[None, :]
    valid = idx >= starts[:, None]
    safe = np.where(valid, idx, 0)
    hist_items = torch.from_numpy(np.where(valid, it[safe], 0)).long()
    hist_cats = torch.from_numpy(np.where(valid, ct[safe], 0)).long()
    lengths = torch.from_numpy(valid.sum(1)).long()

    # Positives: target at offset o is behaviour ends - 1 - o; its history starts at row[o].
    O = len(offsets)
    off = np.asarray(offsets)
    pos_user = np.repeat(np.arange(U), O)
    pos_start = np.tile(off, U)
    pos_item = torch.from_numpy(it[np.repeat(ends - 1, O) - pos_start]).long()
    pos_fold = np.tile(np.asarray(folds), U)
    P = len(pos_item)

    # Negatives: by frequency, never an item of the user's kept behaviours.
    freq = torch.from_numpy(np.bincount(item_idx, minlength=len(item_ids) + 1)).double()
    freq[0] = 0
    n_codes = len(item_ids) + 1
    seen = np.unique(row_of[kept] * n_codes + it[kept])
    g = torch.Generator().manual_seed(seed)
    neg_user = np.repeat(pos_user, negatives)
    neg_item = torch.multinomial(freq, P * negatives, replacement=True, generator=g)
    for _ in range(100):  # redraw negatives the user has seen
        codes = neg_user * n_codes + neg_item.numpy()
        at = np.searchsorted(seen, codes).clip(max=len(seen) - 1)
        bad = torch.from_numpy(seen[at] == codes)
        if not bad.any():
            break
        neg_item[bad] = torch.multinomial(freq, int(bad.sum()), replacement=True, generator=g)
    else:
        raise ValueError("could not draw negatives outside the users' histories (too few items)")

    item_cat = torch.from_numpy(item_cat)
    target = torch.cat([pos_item, neg_item])
    user = torch.from_numpy(np.concatenate([pos_user, neg_user])).long()
    start = torch.from_numpy(np.concatenate([pos_start, np.repeat(pos_start, negatives)])).long()
    fold = torch.from_numpy(np.concatenate([pos_fold, np.repeat(pos_fold, negatives)])).to(torch.int8)
    label = torch.cat([torch.ones(P), torch.zeros(P * negatives)])
    return Interactions(hist_items, hist_cats, lengths, user, target, item_cat[target], label, start=start,
                        max_len=max_len, fold=fold, description=description)
