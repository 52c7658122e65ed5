"""Synthetic long-sequence data with known ground truth: two tasks.

Generative process (all vectorised over users and positions):

1. Items 1..n_items each belong to one of n_categories categories (uniformly)
   and have a binary attribute (uniformly, independent of the category).
   Categories fall into `groups` latent groups of equal size.
2. Each user has `interests` categories. Their history (length uniform in
   [min_len, max_len]) is a sequence of sessions: at each step the session
   continues with probability 1 - drift, else a new session starts on one of the
   user's interests (uniformly). A fraction `noise` of behaviours is replaced by a
   random category. Position 0 is the most recent behaviour.
3. Each user gets `targets` impressions. A target's category is one of the
   user's interests with probability `p_interest` (which may appear only far
   back in a long history), else a random category.

task="category" (the control): every item is drawn uniformly from its
category. A behaviour is *relevant* to the target iff it has the target's
category; with r relevant behaviours the click probability is
sigmoid(sharpness · (log1p(r) − log1p(r0))). Which behaviours matter (same
category) and what they say (how many there are) are the same information:
attention and representation need the same thing, so decoupling them (DARE)
can at best tie with sharing them (TWIN).

task="conflict": which behaviours matter and what they say differ. A
behaviour is relevant iff its category is in the target's latent *group*; what
a relevant behaviour says is its item's attribute. Each user has a taste
θ(user, group) ~ U(0, 1): a behaviour in group g is an item with attribute 1
with probability θ(user, g). The target's attribute is uniform. With f =
(relevant behaviours with attribute 1 + 1) / (r + 2), the click probability is
sigmoid(sharpness_conflict · (2f − 1) · (2·attribute(target) − 1)): the user
clicks items whose attribute matches their taste in that group. The search
must find the group (from categories), the representation must carry the
attribute (of the items), which the group does not predict.

NDCG@k of the search against `relevant` scores retrieval directly (batches
carry it). `write_log` writes the conflict task's process as a Taobao-format
behaviour log (UserBehavior.csv) for the public loaders' protocol.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from .batching import Interactions

TASKS = ("category", "conflict")


@dataclasses.dataclass
class SyntheticConfig:
    users: int = 20000
    n_items: int = 5000
    n_categories: int = 100
    interests: int = 4
    min_len: int = 50
    max_len: int = 1000
    drift: float = 0.05
    noise: float = 0.2
    targets: int = 4
    p_interest: float = 0.5
    sharpness: float = 2.0
    r0: float = 10.0
    seed: int = 0
    task: str = "category"
    groups: int = 10
    sharpness_conflict: float = 4.0


class _World:
    """Items, categories, groups, attributes and users' behaviour sequences."""

    def __init__(self, cfg: SyntheticConfig, g: torch.Generator):
        if cfg.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {cfg.task!r}")
        self.cfg, self.g = cfg, g
        C = cfg.n_categories
        self.item_cat = torch.randint(1, C + 1, (cfg.n_items + 1,), generator=g)
        self.item_cat[0] = 0
        self.attr = torch.randint(0, 2, (cfg.n_items + 1,), generator=g) if cfg.task == "conflict" \
            else torch.zeros(cfg.n_items + 1, dtype=torch.long)
        self.attr[0] = 0
        self.cat_group = torch.zeros(C + 1, dtype=torch.long)
        self.cat_group[1:] = torch.randperm(C, generator=g) % max(1, min(cfg.groups, C)) + 1
        # Items of each (category, attribute) cell, for "draw an item from that cell".
        cell = self.item_cat[1:] * 2 + self.attr[1:]
        self.order = torch.argsort(cell, stable=True) + 1
        self.counts = torch.bincount(cell, minlength=2 * (C + 1))
        self.starts = torch.cumsum(self.counts, 0) - self.counts

    def item_of(self, cats: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        """An item drawn uniformly from each (category, attribute) cell (the
        category's other cell if that one is empty)."""
        cell = cats * 2 + attrs
        cell = torch.where(self.counts[cell] > 0, cell, cats * 2 + 1 - attrs)
        u = torch.rand(cats.shape, generator=self.g)
        n = self.counts[cell].clamp(min=1)
        return self.order[(self.starts[cell] + (u * n).long().clamp(max=n - 1)).clamp(max=self.cfg.n_items - 1)]

    def sequences(self, N: int, L: int, interests: torch.Tensor, taste: torch.Tensor):
        """(items, cats) (N, L) of N users' behaviours, session by session."""
        cfg, g, C = self.cfg, self.g, self.cfg.n_categories
        new_session = torch.rand(N, L, generator=g) < cfg.drift
        session = torch.cumsum(new_session.long(), 1)
        session_interest = torch.randint(0, cfg.interests, (N, int(session.max()) + 1), generator=g)
        cats = interests.gather(1, session_interest.gather(1, session))
        noisy = torch.rand(N, L, generator=g) < cfg.noise
        cats = torch.where(noisy, torch.randint(1, C + 1, (N, L), generator=g), cats)
        attrs = (torch.rand(N, L, generator=g) < taste.gather(1, self.cat_group[cats])).long()
        items = self.item_of(cats, attrs)
        return items, self.item_cat[items]


def generate(cfg: SyntheticConfig) -> Interactions:
    g = torch.Generator().manual_seed(cfg.seed)
    w = _World(cfg, g)
    N, L, C = cfg.users, cfg.max_len, cfg.n_categories
    interests = torch.randint(1, C + 1, (N, cfg.interests), generator=g)
    G = int(w.cat_group.max()) + 1
    taste = torch.rand(N, G, generator=g) if cfg.task == "conflict" else torch.zeros(N, G)
    lengths = torch.randint(cfg.min_len, L + 1, (N,), generator=g)
    items, _ = w.sequences(N, L, interests, taste)
    valid = torch.arange(L)[None, :] < lengths[:, None]
    items = items * valid
    cats = w.item_cat[items]

    T = cfg.targets
    user = torch.arange(N).repeat_interleave(T)
    from_interest = torch.rand(N * T, generator=g) < cfg.p_interest
    pick = torch.randint(0, cfg.interests, (N * T, 1), generator=g)
    target_cat = torch.where(from_interest, interests[user].gather(1, pick)[:, 0],
                             torch.randint(1, C + 1, (N * T,), generator=g))
    target_attr = torch.randint(0, 2, (N * T,), generator=g)
    target_item = w.item_of(target_cat, target_attr)
    target_cat, target_attr = w.item_cat[target_item], w.attr[target_item]
    rows = torch.arange(N)[:, None].expand(N, L)
    if cfg.task == "category":
        # r: relevant behaviours per impression, counted per user and category.
        per_cat = torch.zeros(N, C + 1).index_put_((rows, cats), valid.float(), accumulate=True)
        r = per_cat[user, target_cat]
        p = torch.sigmoid(cfg.sharpness * (torch.log1p(r) - math.log1p(cfg.r0)))
        cat_group = None
    else:
        group = w.cat_group[cats]
        per_group = torch.zeros(N, G).index_put_((rows, group), valid.float(), accumulate=True)
        ones = torch.zeros(N, G).index_put_((rows, group), (valid & (w.attr[items] == 1)).float(), accumulate=True)
        tg = w.cat_group[target_cat]
        f = (ones[user, tg] + 1) / (per_group[user, tg] + 2)
        p = torch.sigmoid(cfg.sharpness_conflict * (2 * f - 1) * (2 * target_attr - 1).float())
        cat_group = w.cat_group
    label = (torch.rand(N * T, generator=g) < p).float()
    what = "control task: relevant = same category" if cfg.task == "category" else \
        f"conflict task: relevant = same latent group ({int(w.cat_group.max())} groups), label = item attribute vs taste"
    return Interactions(items, cats, lengths, user, target_item, target_cat, label, ground_truth=True,
                        cat_group=cat_group, prob=p, description=f"synthetic, {what}")


def write_log(path: str, *, users: int = 2000, n_items: int = 5000, n_categories: int = 100, groups: int = 10,
              min_len: int = 220, max_len: int = 400, other_behaviours: float = 0.1, seed: int = 0) -> int:
    """Write the conflict task's behaviour process as a Taobao-format log
    (user_id,item_id,category_id,behavior_type,timestamp; no header): each
    user's sequence in time order, a fraction `other_behaviours` of extra
    non-page-view rows ("cart", "fav", "buy") that the page-views-only protocol
    drops. The next behaviour follows the user's interests and, within the
    group, their taste. Returns the number of rows."""
    cfg = SyntheticConfig(users=users, n_items=n_items, n_categories=n_categories, groups=groups, task="conflict",
                          min_len=min_len, max_len=max_len, seed=seed)
    g = torch.Generator().manual_seed(seed)
    w = _World(cfg, g)
    interests = torch.randint(1, n_categories + 1, (users, cfg.interests), generator=g)
    taste = torch.rand(users, w.cat_group.max() + 1, generator=g)
    items, cats = w.sequences(users, max_len, interests, taste)
    lengths = torch.randint(min_len, max_len + 1, (users,), generator=g)
    valid = (torch.arange(max_len)[None, :] < lengths[:, None]).numpy()
    t0 = 1_511_000_000
    times = t0 + torch.cumsum(torch.randint(1, 600, (users, max_len), generator=g), 1)
    u = np.broadcast_to(np.arange(users)[:, None] + 1, (users, max_len))[valid]
    it, ct, tm = items.numpy()[valid], cats.numpy()[valid], times.numpy()[valid]
    kind = np.full(len(u), "pv", dtype=object)
    extra = torch.rand(len(u), generator=g).numpy() < other_behaviours
    extra_kind = np.array(["cart", "fav", "buy"], dtype=object)[torch.randint(0, 3, (int(extra.sum()),), generator=g).numpy()]
    import pandas as pd
    frame = pd.DataFrame({"user": np.r_[u, u[extra]], "item": np.r_[it, it[extra]], "cat": np.r_[ct, ct[extra]],
                          "behavior": np.r_[kind, extra_kind], "time": np.r_[tm, tm[extra]]})
    frame = frame.sort_values(["user", "time"], kind="stable")
    frame.to_csv(path, header=False, index=False)
    return len(frame)
