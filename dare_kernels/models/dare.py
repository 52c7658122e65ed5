"""DARE (Decoupled Attention and Representation Embeddings, ICLR 2025) and its
TWIN baselines, with the search stage on torch.ops.dare.topk_attention_embedding
(the top-k computed from the behaviours' ids and the attention tables, never
building the (B, L, d) keys).

A behaviour (and the target) has three fields: an item id, a category id and a
relative position, the distance to the target (the target is position 0):
`positions="log"` (default) buckets it, 1 + floor(2·log2(distance)), so a
10,000-long history has 28 position rows; `positions="raw"` gives every
distance up to `position_cap` (default 2000, as the authors' public code's
2000-row table) its own row, farther ones sharing the last. Each field has an embedding table of its own width; a behaviour's
embedding is [item | category | position]. Widths: `widths="field"` makes every
field d wide (the paper's Table-1 setting and public code: d = 16 is a 48-wide
key); `widths="split"` reads d as the key's total width, item d/2, category d/4,
position d/4; a 3-tuple gives each field's width. The search score of
behaviour j is

    (q_sem · k_sem_j) / sqrt(d_sem) + (q_pos · k_pos_j) / sqrt(d_pos)

(sem = [item | category]), one op call with both scales folded into the query.
The k best behaviours are attended with softmax over their (differentiable)
scores; their representation embeddings are read only for those k, straight
into the weighted sum (embedding bags, ``model.attend``). The search and the
attention weights are ``dare_kernels.layers.HardSearch``'s (``model.search``), with
its rule for short rows: results are k wide even where a batch's longest history
is shorter than k (padding: score -inf, index -1, weight 0), and a row with no
history has a zero interest (zero gradients). The
target-aware representation [target, interest, target ⊙ interest] goes through
BatchNorm → 200 → PReLU → 80 → PReLU → 1. With aux_loss, an auxiliary head
(BatchNorm → 200 → PReLU → 1, as the public code) predicts the label from the
same representation built with softmax attention over *all* valid behaviours;
that builds the B×L scores the op avoids, so it is off by default.

Variants: one small class each, registered by name in MODELS (SearchCTR holds
what they share; a variant says which tables the search reads and how targets
and behaviours are represented). LongSequenceCTR(variant, ...) builds one.
- "dare": attention and representation have their own tables (widths d_att
  and d_rep).
- "twin": one shared set of tables (attention width = d_rep; d_att unused).
- "twin_proj": the paper's TWIN with projection: shared tables, and per field
  four square d -> d linear maps (no bias), one each for the query (target
  attention), the key (behaviour attention), the target representation and
  the value (behaviour representation). d_att unused.
- "twin_compress": a compression variant (not in the paper): shared d_rep
  tables; query and key share one map of [item | category] and one of the
  position to the d_att widths (a positive semi-definite score), target and
  values share one d_rep -> d_rep map.
- "twin_4e": four sets of tables: attention and representation, each split
  into target and behaviour tables (attention widths d_att).

The projection variants fold the key map into the query,
(Q q)·(K k) = (Kᵀ Q q)·k, so the op searches the shared tables, exactly and
differentiably through Q and K.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..layers import HardSearch

MODELS: Dict[str, type] = {}
SECTOR = 32  # bytes a GPU memory transaction moves, however few of them a row uses
Widths = Union[int, Sequence[int]]


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


POSITIONS = ("log", "raw")
INITS = ("torch", "normal")
NORMAL_INIT_STD = 0.01  # init="normal": the public code's N(0, 0.01) of every non-bias parameter


def raw_positions(n: int, cap: int, device=None) -> torch.Tensor:
    """Row of behaviour j (0 = most recent) with positions="raw": its distance
    j + 1 to the target, capped at `cap` (farther behaviours share row cap);
    the target is row 0."""
    return torch.arange(1, n + 1, device=device).clamp(max=cap)


def field_widths(d: Widths, widths: str = "split") -> Tuple[int, int, int]:
    """(item, category, position) widths: a 3-tuple as given; an int d is every
    field's width (widths="field") or the key's total width (widths="split":
    d/2, d/4, d/4)."""
    if not isinstance(d, int):
        d = tuple(int(w) for w in d)
        if len(d) != 3 or min(d) < 1:
            raise ValueError(f"field widths must be 3 positive ints (item, category, position), got {d}")
        return d
    if widths == "field":
        return d, d, d
    if widths != "split":
        raise ValueError(f"widths must be 'field' or 'split', got {widths!r}")
    if d % 4:
        raise ValueError(f"with widths='split' the embedding width must be a multiple of 4, got {d}")
    return d // 2, d // 4, d // 4


class _Lookup(torch.autograd.Function):
    """table[ids] (nn.Embedding's forward; the padding id's rows receive nothing, as
    its padding_idx). sparse: the gradient is a sparse COO tensor with one entry per
    id (uncoalesced, ids.numel() rows, the padding id's zeroed): nn.Embedding(
    sparse=True)'s before coalesce(), built without its host synchronisation (it
    drops the padding ids by a boolean index), so a GPU step can run ahead of the
    host and be captured in a CUDA graph. Else dense, by _dense_table_grad."""

    @staticmethod
    def forward(ctx, table, ids, padding_idx, sparse):
        ctx.save_for_backward(ids)
        ctx.shape, ctx.dtype, ctx.padding_idx, ctx.sparse = table.shape, table.dtype, padding_idx, sparse
        return nn.functional.embedding(ids, table)

    @staticmethod
    def backward(ctx, grad):
        ids, = ctx.saved_tensors
        rows, values = ids.reshape(-1), grad.reshape(-1, ctx.shape[1])
        if ctx.sparse:
            if ctx.padding_idx is not None:
                values = values.masked_fill((rows == ctx.padding_idx)[:, None], 0)
            return torch.sparse_coo_tensor(rows[None], values.to(ctx.dtype), ctx.shape, is_coalesced=False,
                                           check_invariants=False), None, None, None
        w = torch.ones(rows.shape[0], 1, dtype=torch.float32, device=ids.device)
        if ctx.padding_idx is not None:
            w = w.masked_fill((rows == ctx.padding_idx)[:, None], 0.0)
        return _dense_table_grad(ctx.shape[0], rows[:, None], w, values).to(ctx.dtype), None, None, None


# Tables with fewer rows take dense gradients (still updated lazily: RowAdam moves only
# rows with a nonzero gradient). A step touches ~B·k rows of each table; of a table of a
# few thousand rows (categories, positions) that is every row, many times: its sparse
# gradient outnumbers its elements, and PyTorch's sparse add (two lookups of one table)
# then coalesces (a sort and a host synchronisation, which also stops a CUDA-graph
# capture). A dense gradient of such a table costs less than its row bookkeeping.
SPARSE_MIN_ROWS = 1 << 16


class _DenseGrad(torch.autograd.Function):
    """The table itself, whose gradient reaches it dense: a sparse gradient (the
    search's rows, per slot on a GPU) summed into the table's shape in float32
    (_dense_table_grad), so the table's gradients add as dense ones (no sparse add)."""

    @staticmethod
    def forward(ctx, table):
        ctx.shape, ctx.dtype = table.shape, table.dtype
        return table.view_as(table)

    @staticmethod
    def backward(ctx, grad):
        if not grad.is_sparse:
            return grad
        rows, values = grad._indices()[0][:, None], grad._values()
        ones = torch.ones(rows.shape, dtype=torch.float32, device=rows.device)
        return _dense_table_grad(ctx.shape[0], rows, ones, values).to(ctx.dtype)


TINY_ROWS = 256  # a dense table this small sums its gradient by one matmul (positions: ~30 rows)
TINY_MATRIX = 1 << 24  # ... when its (N, rows) weight matrix stays this small (64 MiB of float32)


def _dense_table_grad(n_rows: int, ids: torch.Tensor, weights: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Σ_{b, j} weights[b, j] · grad[b] into row ids[b, j]: (n_rows, d) float32 (float64
    for a float64 grad), from ids and weights (N, n) and grad (N, d). A tiny table
    (TINY_ROWS): each row's weight per b, H (N, n_rows), then Hᵀ · grad (thousands of
    ids share each row: atomics on them would queue). Else an index_add of the N·n
    rows (atomics on rows few ids share; nn.Embedding's dense backward sorts them instead)."""
    grad = grad.to(torch.promote_types(grad.dtype, torch.float32))
    weights = weights.to(grad.dtype)
    if n_rows <= TINY_ROWS and ids.shape[0] * n_rows <= TINY_MATRIX:
        h = grad.new_zeros(ids.shape[0], n_rows).scatter_add_(1, ids, weights)
        return h.t() @ grad
    rows = (weights[..., None] * grad[:, None, :]).reshape(-1, grad.shape[-1])
    return grad.new_zeros(n_rows, grad.shape[-1]).index_add_(0, ids.reshape(-1), rows)


class _Bag(torch.autograd.Function):
    """Σ_j weights[:, j] · table[ids[:, j]] (N, d) for a table with a dense
    gradient (_dense_table_grad), and the weights' gradient table[ids] · grad."""

    @staticmethod
    def forward(ctx, table, ids, weights):
        ctx.save_for_backward(table, ids, weights)
        return nn.functional.embedding_bag(ids, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx, grad):
        table, ids, weights = ctx.saved_tensors
        g_table = g_weights = None
        if ctx.needs_input_grad[0]:
            g_table = _dense_table_grad(table.shape[0], ids, weights, grad).to(table.dtype)
        if ctx.needs_input_grad[2]:
            # A tiny table: every row's score, then each id's.
            if table.shape[0] <= TINY_ROWS and ids.shape[0] * table.shape[0] <= TINY_MATRIX:
                g_weights = torch.gather(grad.float() @ table.float().t(), 1, ids)
            else:
                g_weights = (table[ids].float() * grad.float()[:, None, :]).sum(-1)
            g_weights = g_weights.to(weights.dtype)
        return g_table, None, g_weights


# PyTorch's CUDA embedding_bag walks each sum's rows one after another: a request's one
# or few sums of k rows (serving, T = 1) take longer than gathering the rows (measured
# on an H100: one user, T = 1, 0.106 -> 0.163 ms with bags). Under this many sums, gather.
BAG_MIN_SUMS = 128
# FieldEmbeddings.bag through triton_backend.bag (every field in one launch each way):
# None on CUDA tensors where Triton runs; True wherever Triton runs (the interpreter's
# tests); False never.
FUSED_BAG = None


def _fused_bag(device: torch.device) -> bool:
    if FUSED_BAG is False or (FUSED_BAG is None and device.type != "cuda"):
        return False
    from .. import triton_backend
    return triton_backend.unavailable(device) is None


class _FusedBag(torch.autograd.Function):
    """FieldEmbeddings.bag in two Triton launches (triton_backend.bag): forward, every
    field's weighted sum; backward, the weights' gradient and the sparse fields'
    per-slot rows (uncoalesced sparse COO, one entry per slot, as _Lookup's sparse ones); the
    dense fields' gradients by _dense_table_grad."""

    @staticmethod
    def forward(ctx, weights, ids, pads, sparse, *tables):
        from ..triton_backend.bag import bag_forward
        ctx.save_for_backward(weights, *ids, *tables)
        ctx.pads, ctx.sparse, ctx.F = pads, sparse, len(tables)
        return bag_forward(tables, ids, weights, pads)

    @staticmethod
    def backward(ctx, grad):
        from ..triton_backend.bag import bag_backward
        weights, *rest = ctx.saved_tensors
        ids, tables = rest[:ctx.F], rest[ctx.F:]
        need = [ctx.needs_input_grad[4 + f] for f in range(ctx.F)]
        g_w, vals = bag_backward(grad, tables, ids, weights, ctx.pads, [s and n for s, n in zip(ctx.sparse, need)],
                                 need_weights=ctx.needs_input_grad[0])
        grads, off = [], 0
        for f, (t, i) in enumerate(zip(tables, ids)):
            d = t.shape[1]
            if not need[f]:
                grads.append(None)
            elif ctx.sparse[f]:
                grads.append(torch.sparse_coo_tensor(i.reshape(1, -1), vals[f].to(t.dtype), t.shape,
                                                     is_coalesced=False, check_invariants=False))
            else:
                w = weights if ctx.pads[f] is None else weights.masked_fill(i == ctx.pads[f], 0.0)
                grads.append(_dense_table_grad(t.shape[0], i, w, grad[:, off:off + d]).to(t.dtype))
            off += d
        return (g_w, None, None, None, *grads)


class FieldEmbeddings(nn.Module):
    """One role's [item, category, position] tables, N(0, std) initialised
    (item and category row 0 = padding, zero). A table whose nn.Embedding is
    sparse (the model's set_sparse_grad decides) takes its lookups' gradients as
    sparse rows, one per looked-up id (_Lookup); the others dense (_Lookup, _Bag:
    float32 sums of the touched rows, no sort)."""

    def __init__(self, n_items: int, n_cats: int, n_pos: int, widths: Tuple[int, int, int], std: float):
        super().__init__()
        di, dc, dp = widths
        # nn.Embedding's sparse flag: DistributedDataParallel reads it to expect sparse gradients.
        self.item = nn.Embedding(n_items + 1, di, padding_idx=0)
        self.cat = nn.Embedding(n_cats + 1, dc, padding_idx=0)
        self.pos = nn.Embedding(n_pos, dp)
        for table in (self.item, self.cat, self.pos):
            nn.init.normal_(table.weight, std=std)
            if table.padding_idx is not None:
                with torch.no_grad():
                    table.weight[table.padding_idx].zero_()
        self.widths = tuple(widths)

    def forward(self, items, cats, pos) -> list:
        """The three fields' embeddings [item, category, position]."""
        fields = (self.item, self.cat, self.pos)
        return [_Lookup.apply(t.weight, i, t.padding_idx, t.sparse) for t, i in zip(fields, (items, cats, pos))]

    def tables(self) -> list:
        """The [item, category, position] tables, in the key's field order."""
        return [self.item.weight, self.cat.weight, self.pos.weight]

    def bag(self, items, cats, pos, weights) -> list:
        """Per field, Σ_j weights[:, j] · table[ids[:, j]]: (N, width) float32 from
        ids and weights (N, n) (an embedding bag: each selected row is read once
        into its sum, the (N, n, width) rows are never built). Gradients as
        forward's lookups: sparse rows (one per id, uncoalesced, no host
        synchronisation) for a sparse table, dense otherwise; the padding id adds
        nothing and receives nothing."""
        fields = (self.item, self.cat, self.pos)
        ids = (items, cats, pos)
        if _fused_bag(weights.device):
            out = _FusedBag.apply(weights.float().contiguous(), tuple(i.long().contiguous() for i in ids),
                                  tuple(t.padding_idx for t in fields), tuple(t.sparse for t in fields),
                                  *(t.weight for t in fields))
            return list(out.split(list(self.widths), -1))
        weights = [weights if t.padding_idx is None else weights.masked_fill(i == t.padding_idx, 0.0)
                   for t, i in zip(fields, ids)]
        if items.shape[0] < BAG_MIN_SUMS:  # few sums of many rows: gathered rows, summed in parallel
            return [(w.float()[..., None] * e.float()).sum(1) for w, e in zip(weights, self(*ids))]
        return [nn.functional.embedding_bag(i, t.weight, per_sample_weights=w.to(t.weight.dtype), mode="sum",
                                            sparse=True) if t.sparse else _Bag.apply(t.weight, i, w.to(t.weight.dtype))
                for t, i, w in zip(fields, ids, weights)]


class _Cast(torch.autograd.Function):
    """table.to(dtype) whose gradient may be sparse rows: cast back to the table's
    dtype as it comes (a sparse gradient stays sparse, coalesced or per slot, with
    no coalesce; torch 2.11's own backward of .to() refuses sparse gradients)."""

    @staticmethod
    def forward(ctx, table, dtype):
        ctx.dtype = table.dtype
        return table.to(dtype)

    @staticmethod
    def backward(ctx, grad):
        if grad.is_sparse:
            return torch.sparse_coo_tensor(grad._indices(), grad._values().to(ctx.dtype), grad.shape,
                                           is_coalesced=grad.is_coalesced(), check_invariants=False), None
        return grad.to(ctx.dtype), None


class Head(nn.Sequential):
    """BatchNorm -> (Linear -> PReLU)* -> Linear, in float32 whatever autocast says:
    its GEMMs are small (N x 384 x 200 at most) and launch-bound, so bfloat16 would buy
    no time and add a cast launch per weight and input each call, forward and backward
    (a replayed step pays each launch: issue 24)."""

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def _head(d_in: int, hidden=(200, 80)) -> Head:
    layers, d = [nn.BatchNorm1d(d_in)], d_in
    for h in hidden:
        layers += [nn.Linear(d, h), nn.PReLU()]
        d = h
    return Head(*layers, nn.Linear(d, 1))


class SearchCTR(nn.Module):
    """What every variant shares: the search stage, softmax attention over the
    k selected behaviours, the target-aware representation and the MLP.

    A variant (a subclass registered in MODELS) defines build() (its own
    tables and maps; returns the attention field widths), attention() (the
    per-field attention embeddings of the target or of behaviours) and
    search_tables() (the [item, category, position] tables the op reads); and,
    where they differ from the defaults, fold_query() (the query the op scores
    the search tables' rows with) and representation().

    Options: d_att, d_rep (int or (item, category, position) widths), widths
    ("split" or "field", how an int is read), k, search_backend, embedding_std
    (the tables' N(0, std) init; 0.01 as the public code), positions ("log":
    log-bucketed distances, default; "raw": one row per distance up to
    position_cap, the public code's), init ("torch": PyTorch's initialisation
    of the dense weights, default; "normal": every non-bias parameter but the
    tables, Linear weights, BatchNorm scales and PReLU slopes included, drawn
    from N(0, 0.01), the public code's), aux_loss (the
    auxiliary head over full attention), sparse_grad (default True: every
    embedding table's gradient holds only the rows the batch touched, sparse COO
    tensors for torch.optim.SparseAdam or RowAdam: on a GPU one entry per lookup
    and selected slot, uncoalesced, built with no host synchronisation; False:
    dense, as the paper's code), sparse_min_rows (default SPARSE_MIN_ROWS: with
    sparse_grad, tables of fewer rows take dense gradients, still updated
    row-wise by RowAdam: only rows with a nonzero gradient move)."""

    variant = None
    uses_d_att = True  # False: the attention widths are not d_att (twin, twin_proj)

    def __init__(self, n_items: int, n_cats: int, max_len: int, *, d_att: Widths = 16, d_rep: Widths = 128,
                 k: int = 64, widths: str = "split", search_backend: Optional[str] = None,
                 embedding_std: float = 0.01, aux_loss: bool = False, sparse_grad: bool = True,
                 positions: str = "log", position_cap: int = 2000, init: str = "torch",
                 sparse_min_rows: int = SPARSE_MIN_ROWS):
        super().__init__()
        if isinstance(sparse_min_rows, bool) or not isinstance(sparse_min_rows, int) or sparse_min_rows < 0:
            raise ValueError(f"sparse_min_rows must be an int >= 0, got {sparse_min_rows!r}")
        self.sparse_min_rows = sparse_min_rows
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        if isinstance(position_cap, bool) or not isinstance(position_cap, int) or position_cap < 1:
            raise ValueError(f"position_cap must be a positive int, got {position_cap!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.position_mode, self.position_cap, self.init_mode = positions, position_cap, init
        n_pos = num_position_buckets(max_len) if positions == "log" else min(max(max_len, 1), position_cap) + 1
        self.n_items, self.n_cats, self.n_pos, self.std = n_items, n_cats, n_pos, embedding_std
        self.sparse_grad = sparse_grad
        rep_widths = field_widths(d_rep, widths)
        self.rep = self.tables_of(rep_widths)
        self.att_widths = self.build(field_widths(d_att, widths), rep_widths)
        self.rep_widths = rep_widths
        di, dc, dp = self.att_widths  # a buffer: built once, moves with .to()
        self.register_buffer("score_scales", torch.cat([torch.full((di + dc,), (di + dc) ** -0.5),
                                                        torch.full((dp,), dp ** -0.5)]), persistent=False)
        # Total widths: d_att of the score space, d_search of the tables the op reads.
        self.d_att, self.d_rep = sum(self.att_widths), sum(rep_widths)
        self.d_search = sum(t.shape[1] for t in self.search_tables())
        # The search + attention layer: the op from ids, the scales folded into the query (scale 1).
        self.search = HardSearch(k, scale=1.0, sparse=sparse_grad, backend=search_backend)
        self.set_sparse_grad(sparse_grad)  # every table built above: which take sparse rows
        self.mlp = _head(3 * self.d_rep)
        self.aux_head = _head(3 * self.d_rep, (200,)) if aux_loss else None
        if init == "normal":
            self.normal_init_(NORMAL_INIT_STD)

    @torch.no_grad()
    def normal_init_(self, std: float = NORMAL_INIT_STD):
        """The public code's initialisation of everything but the tables: every
        non-bias parameter (Linear weights, the square maps, BatchNorm scales,
        PReLU slopes: dense_parameters()) from N(0, std); biases keep PyTorch's."""
        for p in self.dense_parameters():
            p.normal_(0.0, std)

    def tables_of(self, widths) -> FieldEmbeddings:
        return FieldEmbeddings(self.n_items, self.n_cats, self.n_pos, widths, self.std)

    # -- what a variant defines ------------------------------------------------
    def build(self, att_widths, rep_widths):
        raise NotImplementedError

    def attention(self, items, cats, pos, target: bool = False) -> list:
        raise NotImplementedError

    def search_tables(self) -> list:
        raise NotImplementedError

    def fold_query(self, query):
        return query

    def representation(self, items, cats, pos, target: bool = False):
        return torch.cat(self.rep(items, cats, pos), -1)

    def interest(self, items, cats, pos, weights):
        """Σ_j weights[:, j] · representation(behaviour j), (N, d_rep) float32, from
        the selected behaviours' ids and the attention weights (N, n), without
        building their (N, n, d_rep) representations (FieldEmbeddings.bag). A
        variant whose representation maps the looked-up rows linearly maps the
        sum instead (the same value: Σ w·(M e) = M Σ w·e)."""
        return torch.cat(self.rep.bag(items, cats, pos, weights), -1)

    # -- shared ---------------------------------------------------------------
    def _scales(self) -> torch.Tensor:
        """Per-dimension score scale: 1/sqrt(d_sem) on [item | category],
        1/sqrt(d_pos) on the position."""
        return self.score_scales

    def positions(self, L: int, device) -> torch.Tensor:
        """The position rows of L behaviours (position_buckets(L), or
        raw_positions(L, position_cap) with positions="raw") on `device`,
        computed once per length."""
        cache = self.__dict__.setdefault("_positions", {})
        key = (L, torch.device(device))
        if key not in cache:
            cache[key] = position_buckets(L, device) if self.position_mode == "log" else \
                raw_positions(L, self.position_cap, device)
        return cache[key]

    def _query(self, batch: dict):
        """The search query (B, d_att) in attention space, the scales folded in."""
        target_pos = torch.zeros_like(batch["target_item"])
        q = torch.cat(self.attention(batch["target_item"], batch["target_cat"], target_pos, target=True), -1)
        return q * self._scales()

    def search_ids_inputs(self, batch: dict):
        """(query, tables, ids, lengths) of the search stage as it runs: the
        behaviours' keys are [item | category | position] rows of `tables`
        picked by `ids` (position buckets: one (L,) tensor shared by every row)."""
        items, cats = batch["history_items"], batch["history_cats"]
        pos = self.positions(items.shape[1], items.device)
        query, tables = self.fold_query(self._query(batch)), self.search_tables()
        if self.sparse_grad and torch.is_grad_enabled():  # small tables: dense gradients (SPARSE_MIN_ROWS)
            tables = [t if self._sparse_rows(t.shape[0]) else _DenseGrad.apply(t) for t in tables]
        if torch.is_autocast_enabled() and query.is_cuda and max(t.shape[1] for t in tables) * 4 > SECTOR:
            # Wide rows: the search reads them at bfloat16, half the bytes, for a cast
            # of each attention table (differentiable) per call, N·d elements whatever
            # B and L. A float32 row of at most a sector costs a sector either way:
            # those tables are read as they are, with a float32 query, and not cast.
            query, tables = query.to(torch.bfloat16), [_Cast.apply(t, torch.bfloat16) for t in tables]
        else:
            query = query.float()
        return query, tables, [items, cats, pos], batch["lengths"]

    def search_stage(self, batch: dict):
        """(scores (B, k), indices (B, k)): exactly the forward's search stage."""
        query, tables, ids, lengths = self.search_ids_inputs(batch)
        return self.search.search(query, tables=tables, ids=ids, lengths=lengths)

    def search_inputs(self, batch: dict):
        """(query, keys, lengths, pos) with the keys looked up explicitly (B, L,
        d_att), in attention space, and pos the (B, L) position buckets:
        topk_attention(query, keys) is the same search as search_stage (which
        never builds the keys)."""
        items, cats = batch["history_items"], batch["history_cats"]
        B, L = items.shape
        pos = self.positions(L, items.device).expand(B, L)
        query, keys = self._query(batch), torch.cat(self.attention(items, cats, pos), -1)
        if torch.is_autocast_enabled() and keys.is_cuda:
            query, keys = query.to(torch.bfloat16), keys.to(torch.bfloat16)
        return query, keys, batch["lengths"], pos

    def _target_rep(self, batch: dict):
        target_pos = torch.zeros_like(batch["target_item"])
        return self.representation(batch["target_item"], batch["target_cat"], target_pos, target=True).float()

    @staticmethod
    def _target_aware(target_rep, interest):
        return torch.cat([target_rep, interest, target_rep * interest], -1)

    def forward(self, batch: dict, aux: bool = False):
        """(logits (B,), search scores (B, k), search indices (B, k)), and with
        aux=True (a model built with aux_loss) the auxiliary head's logits (B,).

        Serving: target_item and target_cat (B, T) give each history T candidates,
        scored in one pass as the op's many-targets form (the history's rows are
        read once for all T): logits (B, T), scores and indices (B, T, k); each
        candidate's result is the one it gets as a row of its own (up to the
        float32 rounding of its score sums). aux needs one target a row."""
        if batch["target_item"].shape != batch["target_cat"].shape or batch["target_item"].dim() not in (1, 2) \
                or batch["target_item"].shape[0] != batch["history_items"].shape[0]:
            raise ValueError(f"target_item and target_cat must both have shape (B,) or (B, T) with B = "
                             f"history_items.shape[0] = {batch['history_items'].shape[0]}, got "
                             f"{tuple(batch['target_item'].shape)} and {tuple(batch['target_cat'].shape)}")
        if aux and batch["target_item"].dim() == 2:
            raise ValueError("aux=True needs one target a row: target_item of shape (B,)")
        query, tables, ids, lengths = self.search_ids_inputs(batch)
        scores, idx = self.search.search(query, tables=tables, ids=ids, lengths=lengths)
        interest = self.attend(*ids, self.search.weights(scores, idx), idx)
        target_rep = self._target_rep(batch)
        features = self._target_aware(target_rep, interest)
        # The head's BatchNorm1d takes (N, C): T candidates a row are N = B·T rows.
        logits = self.mlp(features.reshape(-1, features.shape[-1])).reshape(features.shape[:-1])
        if not aux:
            return logits, scores, idx
        return logits, scores, idx, self.aux_logits(batch, target_rep)

    def attend(self, items, cats, pos, weights, idx):
        """The attention's output: the selected behaviours' representations (idx
        (B, [T,] k), -1 padding, into the (B, L) ids and the (L,) positions) summed
        with their weights (padding weighs 0): (B, [T,] d_rep), float32 (under
        autocast too: the interest is summed and kept in float32)."""
        B, n = idx.shape[0], idx.shape[-1]
        slot = idx.reshape(B, -1).clamp(min=0)
        selected = [f.gather(1, slot).reshape(-1, n) for f in (items, cats)] + [pos[slot].reshape(-1, n)]
        out = self.interest(*selected, weights.reshape(-1, n).float()).float()  # bags: autocast leaves them float32
        return out.reshape(*idx.shape[:-1], out.shape[-1])

    def aux_logits(self, batch: dict, target_rep=None):
        """The auxiliary head on softmax attention over every valid behaviour
        (dense: B×L scores and all L representations)."""
        if self.aux_head is None:
            raise ValueError("this model was built without aux_loss")
        query, keys, lengths, pos = self.search_inputs(batch)
        scores = torch.einsum("bd,bld->bl", query.float(), keys.float())
        valid = torch.arange(keys.shape[1], device=keys.device)[None, :] < lengths[:, None]
        weights = torch.nan_to_num(torch.softmax(scores.masked_fill(~valid, float("-inf")), -1))
        values = self.representation(batch["history_items"], batch["history_cats"], pos).float()
        interest = torch.einsum("bl,bld->bd", weights, values)
        target_rep = self._target_rep(batch) if target_rep is None else target_rep
        return self.aux_head(self._target_aware(target_rep, interest)).squeeze(-1)

    def set_sparse_grad(self, sparse: bool):
        """Switch every table's gradient between sparse rows and dense (the
        optimiser must match: dare_kernels.optim.ModelOptimizer)."""
        self.sparse_grad = self.search.sparse = bool(sparse)
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                m.sparse = self._sparse_rows(m.num_embeddings)

    def _sparse_rows(self, n_rows: int) -> bool:
        """Whether a table of n_rows rows takes sparse row gradients (SPARSE_MIN_ROWS)."""
        return self.sparse_grad and n_rows >= self.sparse_min_rows

    def table_parameters(self):
        """The embedding tables (row-wise updates when sparse_grad: sparse row
        gradients, or dense ones for tables under sparse_min_rows rows)."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Embedding)]

    def sparse_table_parameters(self):
        """The tables whose gradients are sparse rows (sparse_grad, at least sparse_min_rows rows)."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Embedding) and m.sparse]

    def dense_parameters(self):
        """The weights an L2 penalty applies to (the public code's): every
        parameter but the embedding tables and the biases."""
        tables = {id(t) for t in self.table_parameters()}
        return [p for n, p in self.named_parameters() if id(p) not in tables and not n.endswith("bias")]


@register("dare")
class DARE(SearchCTR):
    """Attention has its own tables (widths d_att), the representation its own (d_rep)."""

    def build(self, att_widths, rep_widths):
        self.att = self.tables_of(att_widths)
        return att_widths

    def attention(self, items, cats, pos, target=False):
        return self.att(items, cats, pos)

    def search_tables(self):
        return self.att.tables()


@register("twin")
class TWIN(SearchCTR):
    """One shared set of tables for attention and representation."""

    uses_d_att = False

    def build(self, att_widths, rep_widths):
        return rep_widths

    def attention(self, items, cats, pos, target=False):
        return self.rep(items, cats, pos)

    def search_tables(self):
        return self.rep.tables()


def _square_maps(widths):
    return nn.ModuleList(nn.Linear(d, d, bias=False) for d in widths)


@register("twin_proj")
class TWINProjection(TWIN):
    """The paper's TWIN with projection: shared tables; per field, square maps
    (no bias) for the query, the key, the target representation and the value.
    identity_maps=True starts every map at the identity (the model starts as
    TWIN); default: the maps keep the `init` option's initialisation. (The
    authors' public script for this baseline, scripts/taobao.sh's `-model_name
    projection -mlp_position_after_concat`, maps the concatenated [item |
    category | position] with one d -> d Linear, with bias, per role instead;
    that form is not implemented here.)"""

    def __init__(self, *args, identity_maps: bool = False, **options):
        super().__init__(*args, **options)
        if not isinstance(identity_maps, bool):
            raise ValueError(f"identity_maps must be True or False, got {identity_maps!r}")
        self.identity_maps = identity_maps
        if identity_maps:
            with torch.no_grad():
                for maps in (self.query_maps, self.key_maps, self.target_maps, self.value_maps):
                    for m in maps:
                        m.weight.copy_(torch.eye(m.weight.shape[0]))

    def build(self, att_widths, rep_widths):
        self.query_maps, self.key_maps = _square_maps(rep_widths), _square_maps(rep_widths)
        self.target_maps, self.value_maps = _square_maps(rep_widths), _square_maps(rep_widths)
        return rep_widths

    @staticmethod
    def _map(maps, fields):
        return [m(f) for m, f in zip(maps, fields)]

    def attention(self, items, cats, pos, target=False):
        return self._map(self.query_maps if target else self.key_maps, self.rep(items, cats, pos))

    def fold_query(self, query):
        # (Q q)·(K k) = (Kᵀ Q q)·k per field: the op searches the shared tables.
        parts = query.split(list(self.rep_widths), -1)
        return torch.cat([q @ m.weight for q, m in zip(parts, self.key_maps)], -1)

    def representation(self, items, cats, pos, target=False):
        return torch.cat(self._map(self.target_maps if target else self.value_maps, self.rep(items, cats, pos)), -1)

    def interest(self, items, cats, pos, weights):
        return torch.cat(self._map(self.value_maps, self.rep.bag(items, cats, pos, weights)), -1)


@register("twin_compress")
class TWINCompress(TWIN):
    """A compression variant (not the paper's baseline): shared d_rep tables;
    query and key share one map of [item | category] to the d_att item and
    category widths and one of the position; one d_rep -> d_rep map serves
    the target and the values."""

    uses_d_att = True

    def build(self, att_widths, rep_widths):
        ri, rc, rp = rep_widths
        ai, ac, ap = att_widths
        self.proj_att_sem = nn.Linear(ri + rc, ai + ac, bias=False)
        self.proj_att_pos = nn.Linear(rp, ap, bias=False)
        self.proj_rep = nn.Linear(sum(rep_widths), sum(rep_widths), bias=False)
        return att_widths

    def attention(self, items, cats, pos, target=False):
        item, cat, p = self.rep(items, cats, pos)
        sem = self.proj_att_sem(torch.cat([item, cat], -1))
        return [*sem.split(list(self.att_widths[:2]), -1), self.proj_att_pos(p)]

    def fold_query(self, query):
        # (P q)·(P k) = (Pᵀ P q)·k: the op searches the shared tables.
        ai, ac, ap = self.att_widths
        q_sem, q_pos = query.split([ai + ac, ap], -1)
        return torch.cat([q_sem @ self.proj_att_sem.weight, q_pos @ self.proj_att_pos.weight], -1)

    def representation(self, items, cats, pos, target=False):
        return self.proj_rep(super().representation(items, cats, pos, target))

    def interest(self, items, cats, pos, weights):
        return self.proj_rep(super().interest(items, cats, pos, weights))


@register("twin_4e")
class TWIN4E(DARE):
    """Four sets of tables: attention and representation, each with its own
    target and behaviour tables (attention widths d_att)."""

    def build(self, att_widths, rep_widths):
        super().build(att_widths, rep_widths)
        self.att_target = self.tables_of(att_widths)
        self.rep_target = self.tables_of(rep_widths)
        return att_widths

    def attention(self, items, cats, pos, target=False):
        return (self.att_target if target else self.att)(items, cats, pos)

    def representation(self, items, cats, pos, target=False):
        return torch.cat((self.rep_target if target else self.rep)(items, cats, pos), -1)


def LongSequenceCTR(variant: str, n_items: int, n_cats: int, max_len: int, **options) -> SearchCTR:
    """The registered variant MODELS[variant]; options as SearchCTR's (d_att,
    d_rep, k, widths, search_backend, embedding_std, aux_loss, sparse_grad,
    positions, position_cap, init, sparse_min_rows) and, for twin_proj, identity_maps."""
    if variant not in MODELS:
        raise ValueError(f"variant must be one of {tuple(MODELS)}, got {variant!r}")
    return MODELS[variant](n_items, n_cats, max_len, **options)
