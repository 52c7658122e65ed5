"""DARE (Decoupled Attention and Representation Embeddings, ICLR 2025) and its
TWIN baselines, with the search stage on torch.ops.dare.topk_attention_embedding (the top-k
computed from the behaviours' ids and the attention tables, never building the
(B, L, d) keys).

A behaviour (and the target) has an item id, a category id and a relative
position (distance to the target, log-bucketed; the target is position 0). Each
field has an embedding table; a behaviour's embedding is [item | category |
position]. The search score of behaviour j is

    (q_sem · k_sem_j) / sqrt(d_sem) + (q_pos · k_pos_j) / sqrt(d_pos)

computed in one op call by folding both scales into the query. The k best
behaviours are attended with softmax over their (differentiable) scores; their
representation embeddings are looked up only for those k. The target-aware
representation target_rep ⊙ interest ("TR") and target_rep go through
BatchNorm → 200 → PReLU → 80 → PReLU → 1.

Variants: one small class each, registered by name in MODELS (SearchCTR holds
what they share: the search stage, attention over the selected behaviours and
the MLP; a variant says which tables the search reads and how behaviours are
represented). LongSequenceCTR(variant, ...) builds one by name.
- "dare": attention and representation have their own tables; d_att (e.g. 16)
  is independent of d_rep (e.g. 128).
- "twin": one shared set of tables (attention dimension = d_rep).
- "twin_proj": one shared set of tables; attention and representation are
  learned linear projections of it (attention to d_att).
- "twin_4e": four sets of tables: attention and representation, each split
  into target and behaviour tables (attention width d_att).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Union

import torch
from torch import nn

from .. import ops

MODELS: Dict[str, type] = {}


def register(name: str):
    """Class decorator: MODELS[name] = the class (its `variant` is name)."""
    def add(cls):
        cls.variant = name
        MODELS[name] = cls
        return cls
    return add


def position_buckets(n: int, device=None) -> torch.Tensor:
    """Bucket of behaviour j (0 = most recent, distance j + 1 to the target):
    1 + floor(2·log2(j + 1)). The target itself is bucket 0."""
    j = torch.arange(n, device=device, dtype=torch.float32)
    return 1 + torch.floor(2 * torch.log2(j + 1)).long()


def num_position_buckets(max_len: int) -> int:
    return 2 + int(2 * math.log2(max(max_len, 1)))


def _split(d: int):
    """[item | category | position] widths of a d-wide embedding."""
    if d % 4:
        raise ValueError(f"embedding width must be a multiple of 4, got {d}")
    return d // 2, d // 4, d // 4


class FieldEmbeddings(nn.Module):
    def __init__(self, n_items: int, n_cats: int, n_pos: int, d: int):
        super().__init__()
        di, dc, dp = _split(d)
        self.item = nn.Embedding(n_items + 1, di, padding_idx=0)
        self.cat = nn.Embedding(n_cats + 1, dc, padding_idx=0)
        self.pos = nn.Embedding(n_pos, dp)
        for table in (self.item, self.cat, self.pos):
            nn.init.normal_(table.weight, std=0.1)
            if table.padding_idx is not None:
                with torch.no_grad():
                    table.weight[table.padding_idx].zero_()
        self.d_sem, self.d_pos = di + dc, dp

    def forward(self, items, cats, pos):
        """(semantic [item | category], position) parts."""
        return torch.cat([self.item(items), self.cat(cats)], -1), self.pos(pos)

    def tables(self):
        """The [item, category, position] tables, in the key's field order."""
        return [self.item.weight, self.cat.weight, self.pos.weight]


class TopKTargetAttention(nn.Module):
    """Search the k keys most relevant to the query with the fused op, then
    attend over those k only.

    forward(query (B, d_att), keys, lengths (B,) or None, values, ids=None)
    where keys is (B, L, d_att), or, with ids, the list of F attention tables
    (N_f, d_f) whose rows the ids (F tensors (B, L), or (L,) shared by every
    row) select: behaviour j's key is [tables[0][ids[0][.., j]] | ...], searched
    by topk_attention_embedding without building the keys. values is (B, L, d_v)
    or a callable mapping the selected indices (B, k), already clamped to valid
    positions, to their (B, k, d_v) values. Returns (output (B, d_v), scores
    (B, k), indices (B, k)). Scale the query beforehand (scores = query · key)."""

    def __init__(self, k: int, backend: Optional[str] = None):
        super().__init__()
        self.k = k
        self.backend = backend

    def search(self, query, keys, lengths, ids=None):
        """The search alone: (scores, indices) of the k best keys."""
        if ids is None:
            return ops.topk_attention(query, keys, min(self.k, keys.shape[1]), lengths=lengths,
                                      backend=self.backend)
        return ops.topk_attention_embedding(query, keys, ids, min(self.k, ids[0].shape[-1]), lengths=lengths,
                                            backend=self.backend)

    def forward(self, query, keys, lengths, values: Union[torch.Tensor, Callable], ids=None):
        scores, idx = self.search(query, keys, lengths, ids)
        safe = idx.clamp(min=0)
        if callable(values):
            selected = values(safe)
        else:
            selected = values.gather(1, safe[..., None].expand(-1, -1, values.shape[-1]))
        # -inf padding gets weight 0; rows with no finite score give NaN -> 0.
        weights = torch.nan_to_num(torch.softmax(scores, dim=-1))
        out = (weights[..., None] * selected.float()).sum(1)
        return out, scores, idx


class SearchCTR(nn.Module):
    """What every variant shares. A variant (a subclass registered in MODELS)
    defines build() (its own tables, returning the attention width),
    attention() (the (semantic, position) attention embeddings of ids),
    search_tables() (the [item, category, position] tables the op reads: the
    behaviours' keys are their rows) and, where it differs from the shared
    [item | category | position] representation tables, representation()
    and fold_query()."""

    variant = None
    uses_d_att = True  # False: the attention width is d_rep, d_att is not used

    def __init__(self, n_items: int, n_cats: int, max_len: int, *, d_att: int = 16, d_rep: int = 128,
                 k: int = 64, search_backend: Optional[str] = None):
        super().__init__()
        n_pos = num_position_buckets(max_len)
        self.rep = FieldEmbeddings(n_items, n_cats, n_pos, d_rep)
        self.d_att, self.d_rep = self.build(n_items, n_cats, n_pos, d_att, d_rep), d_rep
        self.search = TopKTargetAttention(k, backend=search_backend)
        self.mlp = nn.Sequential(
            nn.BatchNorm1d(2 * d_rep), nn.Linear(2 * d_rep, 200), nn.PReLU(),
            nn.Linear(200, 80), nn.PReLU(), nn.Linear(80, 1))

    # -- what a variant defines ------------------------------------------------
    def build(self, n_items: int, n_cats: int, n_pos: int, d_att: int, d_rep: int) -> int:
        raise NotImplementedError

    def attention(self, items, cats, pos, target: bool = False):
        raise NotImplementedError

    def search_tables(self) -> list:
        raise NotImplementedError

    def fold_query(self, query):
        """The query the op scores the search tables' rows with."""
        return query

    def representation(self, items, cats, pos, target: bool = False):
        return torch.cat(self.rep(items, cats, pos), -1)

    # -- shared ---------------------------------------------------------------
    def _query(self, batch: dict):
        """The search query (B, d_att), both scales folded in: score_j =
        q_sem·k_sem_j / sqrt(d_sem) + q_pos·k_pos_j / sqrt(d_pos)."""
        target_pos = torch.zeros_like(batch["target_item"])
        q_sem, q_pos = self.attention(batch["target_item"], batch["target_cat"], target_pos, target=True)
        return torch.cat([q_sem / math.sqrt(q_sem.shape[-1]), q_pos / math.sqrt(q_pos.shape[-1])], -1)

    def search_ids_inputs(self, batch: dict):
        """(query, tables, ids, lengths) of the search stage as it runs: the
        behaviours' keys are [item | category | position] rows of `tables`
        picked by `ids` (position buckets: one (L,) tensor shared by every row)."""
        items, cats = batch["history_items"], batch["history_cats"]
        pos = position_buckets(items.shape[1], items.device)
        query, tables = self.fold_query(self._query(batch)), self.search_tables()
        if torch.is_autocast_enabled() and query.is_cuda:
            # The search reads its rows at bfloat16: half the bytes. The query is
            # small; the cast of each attention table (differentiable) copies it
            # once per call, N·d elements whatever B and L.
            query, tables = query.to(torch.bfloat16), [t.to(torch.bfloat16) for t in tables]
        return query, tables, [items, cats, pos], batch["lengths"]

    def search_stage(self, batch: dict):
        """(scores (B, k), indices (B, k)): exactly the forward's search stage."""
        query, tables, ids, lengths = self.search_ids_inputs(batch)
        return self.search.search(query, tables, lengths, ids)

    def search_inputs(self, batch: dict):
        """(query, keys, lengths, pos) with the keys looked up explicitly (B, L,
        d_att) and pos the (B, L) position buckets: topk_attention(query, keys)
        is the same search as search_stage (which never builds the keys)."""
        items, cats = batch["history_items"], batch["history_cats"]
        B, L = items.shape
        pos = position_buckets(L, items.device).expand(B, L)
        k_sem, k_pos = self.attention(items, cats, pos)
        query, keys = self._query(batch), torch.cat([k_sem, k_pos], -1)
        if torch.is_autocast_enabled() and keys.is_cuda:
            query, keys = query.to(torch.bfloat16), keys.to(torch.bfloat16)
        return query, keys, batch["lengths"], pos

    def forward(self, batch: dict):
        """Returns (logits (B,), search scores (B, k), search indices (B, k))."""
        query, tables, ids, lengths = self.search_ids_inputs(batch)
        items, cats, pos = ids

        def selected_values(idx):
            return self.representation(items.gather(1, idx), cats.gather(1, idx), pos[idx])

        interest, scores, idx = self.search(query, tables, lengths, selected_values, ids=ids)
        target_pos = torch.zeros_like(batch["target_item"])
        target_rep = self.representation(batch["target_item"], batch["target_cat"], target_pos, target=True).float()
        x = torch.cat([target_rep, target_rep * interest], -1)
        return self.mlp(x).squeeze(-1), scores, idx


@register("dare")
class DARE(SearchCTR):
    """Attention has its own tables (width d_att), the representation its own (d_rep)."""

    def build(self, n_items, n_cats, n_pos, d_att, d_rep):
        self.att = FieldEmbeddings(n_items, n_cats, n_pos, d_att)
        return d_att

    def attention(self, items, cats, pos, target=False):
        return self.att(items, cats, pos)

    def search_tables(self):
        return self.att.tables()


@register("twin")
class TWIN(SearchCTR):
    """One shared set of tables for attention and representation."""

    uses_d_att = False

    def build(self, n_items, n_cats, n_pos, d_att, d_rep):
        return d_rep

    def attention(self, items, cats, pos, target=False):
        return self.rep(items, cats, pos)

    def search_tables(self):
        return self.rep.tables()


@register("twin_proj")
class TWINProjection(TWIN):
    """Shared tables; attention is a learned projection of them to d_att (query
    and key share it), the representation a d_rep -> d_rep projection."""

    uses_d_att = True

    def build(self, n_items, n_cats, n_pos, d_att, d_rep):
        ai, ac, ap = _split(d_att)
        self.proj_att_sem = nn.Linear(self.rep.d_sem, ai + ac, bias=False)
        self.proj_att_pos = nn.Linear(self.rep.d_pos, ap, bias=False)
        self.proj_rep = nn.Linear(d_rep, d_rep, bias=False)
        return d_att

    def attention(self, items, cats, pos, target=False):
        sem, p = self.rep(items, cats, pos)
        return self.proj_att_sem(sem), self.proj_att_pos(p)

    def fold_query(self, query):
        # (P q)·(P k) = (Pᵀ P q)·k: the op searches the shared tables with the
        # query Pᵀ(P q), exactly and differentiably through P.
        q_sem, q_pos = query.split([self.proj_att_sem.out_features, self.proj_att_pos.out_features], -1)
        return torch.cat([q_sem @ self.proj_att_sem.weight, q_pos @ self.proj_att_pos.weight], -1)

    def representation(self, items, cats, pos, target=False):
        return self.proj_rep(super().representation(items, cats, pos, target))


@register("twin_4e")
class TWIN4E(DARE):
    """Four sets of tables: attention and representation, each with its own
    target and behaviour tables (attention width d_att)."""

    def build(self, n_items, n_cats, n_pos, d_att, d_rep):
        super().build(n_items, n_cats, n_pos, d_att, d_rep)
        self.att_target = FieldEmbeddings(n_items, n_cats, n_pos, d_att)
        self.rep_target = FieldEmbeddings(n_items, n_cats, n_pos, d_rep)
        return d_att

    def attention(self, items, cats, pos, target=False):
        return (self.att_target if target else self.att)(items, cats, pos)

    def representation(self, items, cats, pos, target=False):
        return torch.cat((self.rep_target if target else self.rep)(items, cats, pos), -1)


def LongSequenceCTR(variant: str, n_items: int, n_cats: int, max_len: int, **options) -> SearchCTR:
    """The registered variant MODELS[variant] (options: d_att, d_rep, k,
    search_backend, ...)."""
    if variant not in MODELS:
        raise ValueError(f"variant must be one of {tuple(MODELS)}, got {variant!r}")
    return MODELS[variant](n_items, n_cats, max_len, **options)
