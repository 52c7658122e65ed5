"""AUC, GAUC, logloss and retrieval NDCG@k (AUC and NDCG@k on any device)."""
from __future__ import annotations

import math

import torch


def auc(labels: torch.Tensor, scores: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney, ties share their average rank);
    NaN when one class is absent."""
    labels, scores = labels.double().flatten(), scores.double().flatten()
    pos = int(labels.sum())
    neg = labels.numel() - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    s = scores[order]
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64, device=s.device)
    # Average ranks over ties.
    uniq, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    if len(uniq) < len(s):
        sums = torch.zeros(len(uniq), dtype=torch.float64, device=s.device).index_add_(0, inverse, ranks[order])
        ranks[order] = (sums / counts)[inverse]
    return float((ranks[labels > 0].sum() - pos * (pos + 1) / 2) / (pos * neg))


def gauc(users: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor) -> float:
    """Per-user AUC weighted by the user's impressions, over users with both
    classes."""
    return gauc_users(users, labels, scores)[0]


def gauc_users(users: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor):
    """(GAUC, the number of users it averages: those with both classes)."""
    order = torch.argsort(users, stable=True)
    users, labels, scores = users[order], labels[order], scores[order]
    _, counts = torch.unique_consecutive(users, return_counts=True)
    total, weight, n = 0.0, 0, 0
    for lab, sc in zip(torch.split(labels, counts.tolist()), torch.split(scores, counts.tolist())):
        a = auc(lab, sc)
        if not math.isnan(a):
            total += a * len(lab)
            weight += len(lab)
            n += 1
    return (total / weight if weight else float("nan")), n


def logloss(labels: torch.Tensor, logits: torch.Tensor) -> float:
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits.double(), labels.double()))


def ndcg_at_k(indices: torch.Tensor, relevant: torch.Tensor) -> float:
    """Mean NDCG@k of search results indices (B, k) (-1 = empty slot) against
    binary relevance (B, L); rows with no relevant position are skipped."""
    k = indices.shape[1]
    rel = relevant.gather(1, indices.clamp(min=0)).double() * (indices >= 0)
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64, device=indices.device))
    dcg = (rel * discount).sum(1)
    n_rel = relevant.sum(1).clamp(max=k)
    idcg = torch.cumsum(discount, 0)[(n_rel - 1).clamp(min=0)]
    has = n_rel > 0
    return float((dcg[has] / idcg[has]).mean()) if has.any() else float("nan")
