"""The fitted sources of one model as arrays over one item index, and the one retrieval step.

:func:`retrieve` proposes candidates for a batch of users from what is known about them
(:class:`UserSignals`): the training batch path calls it with thousands of users at a fold's cutoff,
the scoring service with one user per request. Per user it does exactly the same work either way.

Six sources: ``als`` (matrix factorisation), ``covis`` (items co-visited with the user's latest
items), ``popular`` and ``trending`` (global lists), all fitted; ``usercf`` (user-based collaborative
filtering: what the most similar users interacted with, from the ALS model's interaction matrix,
:mod:`~recs_pipeline.models.retrieval.usercf`); and ``recent`` (the user's own items, most recent
first, without the consumed ones: the "recently viewed / bought again" list), which needs no
fitting: it reads the user's history, so on the request path it holds the session's items the moment
they are pushed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from recs_pipeline.data.contract import PRICE
from recs_pipeline.models.consumption import ConsumedPolicy, consumed_matrix
from recs_pipeline.models.retrieval._common import ItemIndex, lookup, one_blas_thread
from recs_pipeline.models.retrieval.als import ALSRetriever
from recs_pipeline.models.retrieval.covis import CoVisitation, anchor_relevance, covis_top, select_anchors
from recs_pipeline.models.retrieval.lists import CategoryPopularity, GlobalList
from recs_pipeline.models.retrieval.merge import SourceHits
from recs_pipeline.models.retrieval.usercf import UserNeighbours

# Global-list entries kept beyond the deepest limit (room for a user's excluded items).
GLOBAL_SLACK = 200
# How a user's ALS vector was obtained, per row.
ALS_KNOWN, ALS_FOLDED_IN, ALS_NONE = "known", "folded_in", "none"


@dataclass(frozen=True)
class UserSignals:
    """What retrieval knows about a batch of users: ids and their per-item history.

    History arrays are aligned, one entry per (user row, item): ``weight`` is the decayed,
    event-type weighted interaction (the ALS fold-in input), ``last_ts`` the last interaction
    (unix seconds), ``views``, ``carts`` and ``purchases`` counts (co-visitation anchor weights and
    the consumed-items policy).
    """

    user_ids: Sequence[str]
    row: np.ndarray
    item_ids: np.ndarray
    weight: np.ndarray
    last_ts: np.ndarray
    views: np.ndarray
    carts: np.ndarray
    purchases: np.ndarray

    def consumed(self, policy: ConsumedPolicy, index: ItemIndex, *, reference: np.ndarray | float) -> sp.csr_matrix:
        """Users x index items the user has consumed as of ``reference`` (per user row, or one time)."""
        item_pos = index.positions(self.item_ids) if len(self.item_ids) else np.empty(0, dtype=np.int64)
        ref = np.asarray(reference, dtype=np.float64)
        return consumed_matrix(
            policy,
            rows=self.row,
            item_pos=item_pos,
            views=self.views,
            carts=self.carts,
            purchases=self.purchases,
            last_ts=self.last_ts,
            reference=ref[self.row] if ref.ndim else ref,
            shape=(len(self.user_ids), len(index)),
        )

    @classmethod
    def from_interactions(cls, user_ids: Sequence[str], interactions: pl.DataFrame) -> UserSignals:
        """Signals from an interactions snapshot (``user_id``, ``item_id``, ``weight``, ``views``, ``carts``,
        ``purchases``, ``last_ts``)."""
        position = {u: r for r, u in enumerate(user_ids)}
        mine = interactions.filter(pl.col("user_id").is_in(list(user_ids)))
        return cls(
            user_ids=list(user_ids),
            row=np.asarray([position[u] for u in mine["user_id"].to_list()], dtype=np.int64),
            item_ids=np.asarray(mine["item_id"].to_list(), dtype=str) if mine.height else np.asarray([], dtype=str),
            weight=mine["weight"].cast(pl.Float64).to_numpy(),
            last_ts=mine["last_ts"].dt.epoch("us").cast(pl.Float64).to_numpy() / 1e6,
            views=mine["views"].cast(pl.Int64).to_numpy(),
            carts=mine["carts"].cast(pl.Int64).to_numpy(),
            purchases=mine["purchases"].cast(pl.Int64).to_numpy(),
        )


class SourceSet:
    """A model's candidate sources as arrays over one :class:`ItemIndex`.

    Parameters
    ----------
    als, covis, popular, trending
        The fitted sources.
    depth : int
        How deep the global lists are kept.
    extra_items : array of str, optional
        More ids the index must hold (e.g. the item snapshot's).
    """

    def __init__(
        self,
        *,
        als: ALSRetriever,
        covis: CoVisitation,
        popular: GlobalList,
        trending: GlobalList,
        catpop: CategoryPopularity,
        content: CategoryPopularity,
        depth: int,
        extra_items: np.ndarray | None = None,
    ) -> None:
        # deeper than any limit, so a user's list is still full after their consumed items are excluded
        pop, trend = popular.top(depth + GLOBAL_SLACK), trending.top(depth + GLOBAL_SLACK)
        self.als = als
        self.index = ItemIndex.union(
            als.item_ids,
            covis.items(),
            pop["item_id"].to_numpy(),
            trend["item_id"].to_numpy(),
            catpop.lists["item_id"].to_numpy(),
            content.lists["item_id"].to_numpy(),
            *([] if extra_items is None else [extra_items]),
        )
        self.als_to_index = self.index.positions(als.item_ids)
        self.index_to_als = np.full(len(self.index), -1, dtype=np.int64)
        self.index_to_als[self.als_to_index] = np.arange(len(self.als_to_index))
        self.covis = covis.matrix(self.index)
        self._usercf: UserNeighbours | None = None
        self.categories = CategoryLists(catpop, self.index)
        self.new_items = CategoryLists(content, self.index)
        self.popular_items = self.index.positions(pop["item_id"].to_numpy())
        self.popular_scores = pop["score"].to_numpy().astype(np.float64)
        self.trending_items = self.index.positions(trend["item_id"].to_numpy())
        self.trending_scores = trend["score"].to_numpy().astype(np.float64)

    @property
    def usercf(self) -> UserNeighbours:
        """User-based CF's normalised interaction matrix, built on first use: a service whose recipe
        turns the source off never builds it (two copies of the ALS matrix)."""
        if self._usercf is None:
            self._usercf = UserNeighbours(self.als.seen)
        return self._usercf


class CategoryLists:
    """Category popularity over one item index: each item's category code and each category's list.

    A user's favourite categories are those with the largest sum of the user's interaction weights
    over their items (ties: the smaller code, i.e. category id); each of the ``categories`` best
    proposes its list, every item scored ``share * score / best score of the category`` (``share``:
    the category's part of those favourites' weight), an item listed twice keeping its best score.

    With a price band (``price_band`` > 1 in :meth:`top_many`, lists fitted with prices: the content
    source's), each favourite category's list is re-ordered for the user by price first: the user's
    typical price in the category is the history-weighted mean of the log prices of their priced
    items there, an item's band distance ``floor(|log price - typical| / log price_band)`` (0: within
    a factor ``price_band`` of it; an item without a price is last), the list's own order breaking
    ties; each position keeps its score (the content lists' ``1 / rank``). A category where the user
    has no priced item keeps the list's order.
    """

    def __init__(self, catpop: CategoryPopularity, index: ItemIndex) -> None:
        names = np.unique(catpop.categories["category_id"].to_numpy().astype(str))
        self.code_of = np.full(len(index), -1, dtype=np.int64)
        pos = index.positions(catpop.categories["item_id"].to_numpy())
        codes = np.searchsorted(names, catpop.categories["category_id"].to_numpy().astype(str))
        self.code_of[pos[pos >= 0]] = codes[pos >= 0]
        # log price by item position (NaN: unknown or not positive); None when the lists carry no prices
        self.log_price: np.ndarray | None = None
        if PRICE in catpop.categories.columns:
            price = catpop.categories[PRICE].fill_null(np.nan).to_numpy().astype(np.float64)
            priced = (pos >= 0) & np.isfinite(price) & (price > 0)
            self.log_price = np.full(len(index), np.nan)
            self.log_price[pos[priced]] = np.log(price[priced])
        self.lists: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0, dtype=np.int64), np.empty(0))] * len(names)
        for (category,), part in catpop.lists.group_by("category_id", maintain_order=True):
            scores = part["score"].to_numpy().astype(np.float64)
            code = int(np.searchsorted(names, str(category)))
            self.lists[code] = (index.positions(part["item_id"].to_numpy()), scores / max(scores.max(), 1e-12))

    def top_many(
        self,
        users: UserSignals,
        item_pos: np.ndarray,
        n: int,
        *,
        categories: int,
        excluded: list[np.ndarray] | None,
        price_band: float = 0.0,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per user row, the ``n`` best (index positions, scores) of their favourite categories' lists;
        ``price_band`` > 1 re-orders each list by the user's price band there (class docstring), 0 is off."""
        if price_band != 0 and price_band <= 1:
            raise ValueError(f"price_band must be 0 (off) or a price ratio > 1, got {price_band}")
        m = len(users.user_ids)
        code = np.where(item_pos >= 0, self.code_of[np.maximum(item_pos, 0)], -1)
        known = code >= 0
        out: list[tuple[np.ndarray, np.ndarray]] = []
        rows, codes, weights = users.row[known], code[known], users.weight[known]
        order = np.lexsort((codes, rows))
        rows, codes, weights = rows[order], codes[order], weights[order]
        # each history entry's log price, when the lists are banded (the user's typical price per category)
        log_prices = self.log_price[item_pos[known][order]] if price_band > 1 and self.log_price is not None else None
        bounds = np.searchsorted(rows, np.arange(m + 1))
        for r in range(m):
            mine, weight = codes[bounds[r] : bounds[r + 1]], weights[bounds[r] : bounds[r + 1]]
            if not len(mine):
                out.append((np.empty(0, dtype=np.int64), np.empty(0)))
                continue
            cats, inverse = np.unique(mine, return_inverse=True)
            totals = np.bincount(inverse, weights=weight)
            best = np.lexsort((cats, -totals))[:categories]
            shares = totals[best] / max(totals[best].sum(), 1e-12)
            lists = [self.lists[cats[b]] for b in best]
            if log_prices is not None:
                typical = _typical_log_price(inverse, weight, log_prices[bounds[r] : bounds[r + 1]], len(cats))
                lists = [self._in_band(i, s, typical[b], price_band) for (i, s), b in zip(lists, best, strict=True)]
            items = np.concatenate([items for items, _ in lists])
            scores = np.concatenate([share * s for (_, s), share in zip(lists, shares, strict=True)])
            keep = items >= 0
            if excluded is not None and len(excluded[r]):
                keep &= ~np.isin(items, excluded[r])
            items, scores = items[keep], scores[keep]
            # an item in two lists keeps its best score; then score descending, item position ascending
            order = np.lexsort((items, -scores))
            items, scores = items[order], scores[order]
            _, first = np.unique(items, return_index=True)
            first = np.sort(first)[:n]
            out.append((items[first], scores[first]))
        return out

    def _in_band(
        self, items: np.ndarray, scores: np.ndarray, typical: float, ratio: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """One category's list re-ordered by band distance to the user's ``typical`` log price, the
        list's order breaking ties; each position keeps its score. Unchanged when ``typical`` is NaN."""
        if not np.isfinite(typical) or self.log_price is None:
            return items, scores
        distance = np.floor(np.abs(self.log_price[np.maximum(items, 0)] - typical) / np.log(ratio))
        distance[~np.isfinite(distance) | (items < 0)] = np.inf
        return items[np.argsort(distance, kind="stable")], scores


def _typical_log_price(inverse: np.ndarray, weight: np.ndarray, log_price: np.ndarray, k: int) -> np.ndarray:
    """Per category code (``inverse`` into ``k`` categories), the weighted mean log price of the
    user's priced history entries there; NaN where none is priced (or their weights sum to 0)."""
    priced = np.isfinite(log_price)
    w = weight[priced]
    total = np.bincount(inverse[priced], weights=w, minlength=k)
    weighted = np.bincount(inverse[priced], weights=w * log_price[priced], minlength=k)
    out = np.full(k, np.nan)
    np.divide(weighted, total, out=out, where=total > 0)
    return out


@dataclass(frozen=True)
class Retrieved:
    """What :func:`retrieve` found: per-source hits, how ALS saw each user, and the co-visitation anchors."""

    hits: dict[str, SourceHits]
    als_modes: list[str]
    anchors: sp.csr_matrix  # users x items: anchor weights

    def anchors_of(self, row: int, items: np.ndarray, covis: sp.csr_matrix) -> list[int | None]:
        """Per item of ``items``: the anchor that contributed most to co-visitation's score for it
        (None when none did). One sub-matrix of ``covis`` (the user's anchors x the items)."""
        start, end = self.anchors.indptr[row], self.anchors.indptr[row + 1]
        anchor_items = self.anchors.indices[start:end]
        if not len(anchor_items) or not len(items):
            return [None] * len(items)
        contribution = self.anchors.data[start:end, None] * covis[anchor_items][:, items].toarray()
        best = np.argmax(contribution, axis=0)
        found = contribution[best, np.arange(len(items))] > 0
        return [int(anchor_items[b]) if ok else None for b, ok in zip(best.tolist(), found.tolist(), strict=True)]


def retrieve(
    sources: SourceSet,
    users: UserSignals,
    *,
    n: Mapping[str, int],
    anchors: int,
    neighbours: int = 50,
    categories: int = 3,
    price_band: float = 0.0,
    exclude: sp.csr_matrix | None = None,
    als_block: int = 1,
) -> Retrieved:
    """Each source's ranked candidates (item-index positions) for every user, and how ALS saw each user.

    ALS uses the user's own factors when the model knows the user, else folds the history in
    (:meth:`ALSRetriever.fold_in_vector`), else proposes nothing. Co-visitation starts from the
    user's ``anchors`` most recent items, each weighted by the strongest event with it. The global
    lists are the same for everyone; ``recent`` is the user's own history (:func:`recent_hits`);
    a source whose ``n`` is 0 is off and proposes nothing;
    ``usercf`` votes of the user's ``neighbours`` most similar users (by history, known or not);
    ``catpop`` the popular items of the user's ``categories`` favourite categories (:class:`CategoryLists`),
    ``content`` those categories' items with no interaction yet, newest in the catalog first
    (:meth:`CategoryPopularity.fit_new_items`: what no interaction-based source can propose), with
    ``price_band`` > 1 those in the user's price band of the category first (:class:`CategoryLists`;
    0: off).
    ``exclude`` (users x index items; e.g. the consumed items,
    :meth:`UserSignals.consumed`) is never proposed: each source returns its best ``n`` of the rest.
    ``als_block`` > 1 scores ALS that many users per matrix product (:meth:`ALSRetriever.top_many`):
    for training's batches; the request path and the batch scorer keep 1.
    """
    m = len(users.user_ids)
    excluded = _rows_of(exclude, m)
    item_pos = sources.index.positions(users.item_ids) if len(users.item_ids) else np.empty(0, dtype=np.int64)
    als_pos = np.where(item_pos >= 0, sources.index_to_als[np.maximum(item_pos, 0)], -1)
    order = np.argsort(users.row, kind="stable")
    bounds = np.searchsorted(users.row[order], np.arange(m + 1))
    known_pos, known = lookup(sources.als.user_ids, users.user_ids)
    vectors: list[np.ndarray | None] = []
    skips: list[np.ndarray | None] = []
    modes = []
    usercf_hits = []
    with one_blas_thread():
        for r in range(m):
            mine = order[bounds[r] : bounds[r + 1]]
            mine = mine[als_pos[mine] >= 0]  # the user's history entries among the model's items
            if known[r]:
                vector, mode = sources.als.user_factors[known_pos[r]], ALS_KNOWN
            else:
                vector = sources.als.fold_in_vector(als_pos[mine], users.weight[mine]) if len(mine) else None
                mode = ALS_NONE if vector is None else ALS_FOLDED_IN
            modes.append(mode)
            vectors.append(vector)
            skip = sources.index_to_als[excluded[r]] if excluded is not None else None
            skips.append(None if skip is None else skip[skip >= 0])
            if n["usercf"] <= 0:  # off: nothing to propose, no matrix to build
                continue
            best, scores = sources.usercf.top(
                als_pos[mine],
                users.weight[mine],
                n["usercf"],
                neighbours=neighbours,
                own_row=int(known_pos[r]) if known[r] else -1,
                exclude=skips[-1],
            )
            usercf_hits.append((sources.als_to_index[best], scores))
        als_hits = [
            (sources.als_to_index[best], scores)
            for best, scores in sources.als.top_many(vectors, n["als"], exclude=skips, block=als_block)
        ]

    chosen = select_anchors(users.row, users.item_ids, users.last_ts, per_user=anchors)
    chosen = chosen[item_pos[chosen] >= 0]
    weights = anchor_relevance(carts=users.carts[chosen], purchases=users.purchases[chosen])
    anchor_matrix = sp.csr_matrix((weights, (users.row[chosen], item_pos[chosen])), shape=(m, len(sources.index)))
    proposers = {
        "als": lambda: SourceHits.from_lists(als_hits),
        "covis": lambda: SourceHits.from_lists(covis_top(sources.covis, anchor_matrix, n["covis"], exclude=excluded)),
        "popular": lambda: _global_hits(sources.popular_items, sources.popular_scores, n["popular"], m, excluded),
        "recent": lambda: recent_hits(users, item_pos, n["recent"], exclude=exclude),
        "trending": lambda: _global_hits(sources.trending_items, sources.trending_scores, n["trending"], m, excluded),
        "usercf": lambda: SourceHits.from_lists(usercf_hits),
        "catpop": lambda: SourceHits.from_lists(
            sources.categories.top_many(users, item_pos, n["catpop"], categories=categories, excluded=excluded)
        ),
        "content": lambda: SourceHits.from_lists(
            sources.new_items.top_many(
                users, item_pos, n["content"], categories=categories, excluded=excluded, price_band=price_band
            )
        ),
    }
    # a source with limit 0 is off: it proposes nothing (its ranker features stay empty)
    hits = {name: propose() if n[name] > 0 else SourceHits.empty() for name, propose in proposers.items()}
    return Retrieved(hits=hits, als_modes=modes, anchors=anchor_matrix.tocsr())


def recent_hits(users: UserSignals, item_pos: np.ndarray, n: int, *, exclude: sp.csr_matrix | None) -> SourceHits:
    """The ``recent`` source: each user's own items, last interaction first (ties: item id), at most ``n``.

    ``item_pos`` is each history entry's item-index position (-1: not in the index, left out);
    ``exclude`` (users x index items) is left out too. The score is the entry's last interaction
    minus the user's newest one, in seconds (0 for the newest item, negative before): an age
    measured from the user's own latest action, the same whenever the list is computed.
    """
    m = len(users.user_ids)
    if n < 0:
        raise ValueError(f"n must be 0 or more, got {n}")
    newest = np.full(m, -np.inf)
    np.maximum.at(newest, users.row, users.last_ts)
    keep = item_pos >= 0
    if exclude is not None and exclude.nnz:
        excluded = np.asarray(exclude[users.row[keep], item_pos[keep]]).ravel().astype(bool)
        keep[np.flatnonzero(keep)[excluded]] = False
    rows, items, ts = users.row[keep], item_pos[keep], users.last_ts[keep]
    order = np.lexsort((items, -ts, rows))
    rows, items, ts = rows[order], items[order], ts[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows) + 1
    top = rank <= n
    return SourceHits(row=rows[top], item=items[top], score=ts[top] - newest[rows[top]], rank=rank[top])


def _rows_of(exclude: sp.csr_matrix | None, m: int) -> list[np.ndarray] | None:
    """Per user row, the excluded item positions (None when nothing is excluded)."""
    if exclude is None or exclude.nnz == 0:
        return None
    if exclude.shape[0] != m:
        raise ValueError(f"exclude has {exclude.shape[0]} rows for {m} users")
    exclude = exclude.tocsr()
    return [exclude.indices[exclude.indptr[r] : exclude.indptr[r + 1]] for r in range(m)]


def _global_hits(
    items: np.ndarray, scores: np.ndarray, n: int, m: int, excluded: list[np.ndarray] | None
) -> SourceHits:
    """A global list's best ``n`` for every user: the same list, or per user without its excluded items."""
    if excluded is None:
        return SourceHits.broadcast(items[:n], scores[:n], m)
    per_user = []
    for skip in excluded:
        head = slice(0, n + len(skip))
        keep = np.flatnonzero(~np.isin(items[head], skip))[:n]
        per_user.append((items[keep], scores[keep]))
    return SourceHits.from_lists(per_user)
