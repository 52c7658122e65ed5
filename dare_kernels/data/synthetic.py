"""Synthetic long-sequence data with known ground truth.

Generative process (all vectorised over users and positions):

1. Items 1..n_items each belong to one of n_categories categories (uniformly).
2. Each user has `interests` categories. Their history (length uniform in
   [min_len, max_len]) is a sequence of sessions: at each step the session
   continues with probability 1 - drift, else a new session starts on one of the
   user's interests (uniformly). A fraction `noise` of behaviours is replaced by a
   random category. Each behaviour's item is drawn uniformly from its category.
   Position 0 is the most recent behaviour.
3. Each user gets `targets` impressions. A target's category is one of the
   user's interests with probability `p_interest` (which may appear only far
   back in a long history), else a random category; its item is drawn from
   that category.
4. A behaviour is *relevant* to the target iff it has the target's category.
   With r the number of relevant behaviours, the click probability is
   sigmoid(sharpness · (log1p(r) − log1p(r0))): labels depend on which past
   behaviours are relevant, wherever they are in the history, so a search stage
   that retrieves them helps, and NDCG@k of the search against `relevant`
   scores retrieval directly.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .batching import Interactions


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


def generate(cfg: SyntheticConfig) -> Interactions:
    g = torch.Generator().manual_seed(cfg.seed)
    N, L, C = cfg.users, cfg.max_len, cfg.n_categories
    item_cat = torch.randint(1, C + 1, (cfg.n_items + 1,), generator=g)
    item_cat[0] = 0
    # Items of each category, for "draw an item from category c".
    order = torch.argsort(item_cat[1:], stable=True) + 1
    counts = torch.bincount(item_cat[1:], minlength=C + 1)
    starts = torch.cumsum(counts, 0) - counts

    def item_of(cats: torch.Tensor) -> torch.Tensor:
        u = torch.rand(cats.shape, generator=g)
        n = counts[cats].clamp(min=1)
        return order[(starts[cats] + (u * n).long().clamp(max=n - 1)).clamp(max=cfg.n_items - 1)]

    interests = torch.randint(1, C + 1, (N, cfg.interests), generator=g)
    lengths = torch.randint(cfg.min_len, L + 1, (N,), generator=g)
    new_session = torch.rand(N, L, generator=g) < cfg.drift
    session = torch.cumsum(new_session.long(), 1)
    session_interest = torch.randint(0, cfg.interests, (N, int(session.max()) + 1), generator=g)
    cats = interests.gather(1, session_interest.gather(1, session))
    noisy = torch.rand(N, L, generator=g) < cfg.noise
    cats = torch.where(noisy, torch.randint(1, C + 1, (N, L), generator=g), cats)
    valid = torch.arange(L)[None, :] < lengths[:, None]
    cats = cats * valid
    items = item_of(cats) * valid
    cats = item_cat[items] * valid  # consistent with the items drawn

    T = cfg.targets
    user = torch.arange(N).repeat_interleave(T)
    from_interest = torch.rand(N * T, generator=g) < cfg.p_interest
    pick = torch.randint(0, cfg.interests, (N * T, 1), generator=g)
    target_cat = torch.where(from_interest, interests[user].gather(1, pick)[:, 0],
                             torch.randint(1, C + 1, (N * T,), generator=g))
    target_item = item_of(target_cat)
    target_cat = item_cat[target_item]
    # r: relevant behaviours per impression, counted per user and category.
    per_cat = torch.zeros(N, C + 1).index_put_((torch.arange(N)[:, None].expand(N, L), cats),
                                              valid.float(), accumulate=True)
    r = per_cat[user, target_cat]
    p = torch.sigmoid(cfg.sharpness * (torch.log1p(r) - math.log1p(cfg.r0)))
    label = (torch.rand(N * T, generator=g) < p).float()
    return Interactions(items, cats, lengths, user, target_item, target_cat, label, ground_truth=True)
