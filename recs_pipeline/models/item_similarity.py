"""Items related to items: similar, bought together, and a cart's recommendations (pure logic, no HTTP).

Every list is ranked from the served bundle's arrays over its one item index:

* ``covis``: the item's row of the co-visitation matrix (items viewed in the same sessions);
* ``als``: cosine similarity of the ALS item factors;
* ``content``: items of the same category, nearest price band first (bands are factors of
  :data:`PRICE_BAND_RATIO`: 10-20, 20-40, ...), then the most viewed in 30 days (the item snapshot);
* ``bought_together``: the item's row of the bought-together matrix (items carted or bought in the
  same sessions, ``training.BOUGHT_TOGETHER_WEIGHTS``), absent from bundles written before it.

Several lists are merged by reciprocal-rank fusion (:func:`fuse`). Every function takes an ``allowed``
mask over the index (the caller's filters: availability with the live catalog's updates, block rules,
the query and cart items) and never returns an item outside it. Positions become strings only for
the k items answered, in the HTTP layer.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recs_pipeline.models import ranker_features as rf
from recs_pipeline.models.bundle import Bundle
from recs_pipeline.models.retrieval import top_n

COVIS, ALS, CONTENT, BOUGHT_TOGETHER, POPULAR = "covis", "als", "content", "bought_together", "popular"
SIMILAR_SOURCES: tuple[str, ...] = (COVIS, ALS, CONTENT)
# The order sources are listed in an answer item's ``sources``, and which one a tie credits.
SOURCE_ORDER: tuple[str, ...] = (BOUGHT_TOGETHER, COVIS, ALS, CONTENT, POPULAR)
# Reciprocal-rank fusion's constant: a list's first item adds 1/61, its 50th 1/110 (Cormack et al. 2009).
RRF_K = 60
# Items each source contributes before fusion (co-visitation keeps at most 50 neighbours per item).
SOURCE_DEPTH = 50
# Content: prices within a factor of this share a band.
PRICE_BAND_RATIO = 2.0
# Fallback reasons of the answers.
NO_BOUGHT_TOGETHER_MATRIX = "no_bought_together_matrix"
FILLED_WITH_COVIS = "filled_with_covis"
FILLED_WITH_POPULAR = "filled_with_popular"
NO_KNOWN_CART_ITEMS = "no_known_cart_items"

_PRICE = rf.ITEM_FEATURES.index("price")
_VIEWS_30D = rf.ITEM_FEATURES.index("views_30d")


@dataclass(frozen=True)
class Ranked:
    """One source's list: item-index positions best first, and their scores."""

    items: np.ndarray  # int64
    scores: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def empty(cls) -> Ranked:
        return cls(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64))


@dataclass(frozen=True)
class Proposal:
    """One list to fuse: the source that ranked it and the item it was asked about (``anchor``)."""

    source: str
    anchor: int
    ranked: Ranked


@dataclass(frozen=True)
class Related:
    """One answer item (positions; the HTTP layer turns them into ids).

    ``source`` is the source that ranked the item best (ties: :data:`SOURCE_ORDER`), ``anchor`` the
    item (asked about, or in the cart) whose list that was; ``sources`` every source that proposed it.
    """

    item: int
    score: float
    source: str
    anchor: int
    sources: tuple[str, ...]


class ItemNeighbours:
    """A bundle's arrays for the item lists, derived once per bundle (:func:`neighbours_of`).

    Parameters
    ----------
    bundle : Bundle
        The served model: its sources (co-visitation, ALS, popular list), item block (category,
        price, views) and bought-together matrix (None when the bundle has none).
    """

    def __init__(self, bundle: Bundle) -> None:
        sources = bundle.sources
        self.n_items = len(bundle.index)
        self.covis: sp.csr_matrix = sources.covis
        self.bought: sp.csr_matrix | None = bundle.bought_together
        factors = sources.als.item_factors.astype(np.float32)
        norms = np.linalg.norm(factors, axis=1, keepdims=True)
        self.unit_factors = np.divide(factors, norms, out=np.zeros_like(factors), where=norms > 0)
        self.als_to_index = sources.als_to_index
        self.index_to_als = sources.index_to_als
        self.category_code, self.category_members = _category_groups(bundle.items.category)
        self.price_band = price_bands(bundle.items.features[:, _PRICE])
        self.views = np.nan_to_num(bundle.items.features[:, _VIEWS_30D], nan=0.0)
        self.popular = Ranked(sources.popular_items, sources.popular_scores)

    # -- one list per source -------------------------------------------------------------------

    def covis_list(self, item: int, allowed: np.ndarray, depth: int = SOURCE_DEPTH) -> Ranked:
        """The item's co-visitation neighbours, by score (ties: position)."""
        return matrix_row(self.covis, item, allowed, depth)

    def bought_list(self, item: int, allowed: np.ndarray, depth: int = SOURCE_DEPTH) -> Ranked | None:
        """The items carted or bought with it, by score; None when the bundle has no such matrix."""
        return None if self.bought is None else matrix_row(self.bought, item, allowed, depth)

    def als_lists(self, items: Sequence[int], allowed: np.ndarray, depth: int = SOURCE_DEPTH) -> list[Ranked]:
        """Per item, the items whose ALS factors have the largest cosine with its own (empty when ALS
        lacks it); one matrix product for all of them."""
        rows = self.index_to_als[np.asarray(items, dtype=np.int64)]
        found = iter(als_neighbours(self.unit_factors, rows[rows >= 0], self.als_to_index, allowed, depth))
        return [next(found) if row >= 0 else Ranked.empty() for row in rows.tolist()]

    def content_list(self, item: int, allowed: np.ndarray, depth: int = SOURCE_DEPTH) -> Ranked:
        """Items of the item's category, nearest price band first (empty when its category is unknown)."""
        code = self.category_code[item]
        if code < 0:
            return Ranked.empty()
        return content_neighbours(self.category_members[code], item, self.price_band, self.views, allowed, depth)

    def popular_list(self, allowed: np.ndarray, depth: int) -> Ranked:
        """The bundle's popular list, without the items ``allowed`` refuses."""
        keep = allowed[self.popular.items]
        return Ranked(self.popular.items[keep][:depth], self.popular.scores[keep][:depth])

    # -- the answers ---------------------------------------------------------------------------

    def similar(self, item: int, allowed: np.ndarray, k: int) -> list[Related]:
        """Items similar to ``item``: its co-visitation, ALS and content lists fused (:func:`fuse`)."""
        allowed = _without(allowed, [item])
        return fuse(self._similar_proposals(item, allowed, self.als_lists([item], allowed)[0]), k)

    def bought_together(self, item: int, allowed: np.ndarray, k: int) -> tuple[list[Related], list[str]]:
        """Items carted or bought with ``item``, by co-purchase score, and the fallbacks taken.

        With fewer than ``k`` of them the list is topped up with co-visitation neighbours
        (``filled_with_covis``); a bundle without the matrix answers from co-visitation alone
        (``no_bought_together_matrix``). Bought-together items come first; each part is in
        descending order of its own score.
        """
        allowed = _without(allowed, [item])
        bought = self.bought_list(item, allowed, k)
        fallbacks = [NO_BOUGHT_TOGETHER_MATRIX] if bought is None else []
        found = [] if bought is None else _as_related(bought, BOUGHT_TOGETHER, item)
        if len(found) < k:
            taken = _without(allowed, [r.item for r in found])
            more = _as_related(self.covis_list(item, taken, k - len(found)), COVIS, item)
            if more and bought is not None:
                fallbacks.append(FILLED_WITH_COVIS)
            found += more
        return found, fallbacks

    def cart(self, items: Sequence[int], allowed: np.ndarray, k: int) -> tuple[list[Related], list[str]]:
        """Recommendations for a cart of (known) item positions: every cart item's bought-together,
        co-visitation, ALS and content lists fused (:func:`fuse`), the cart's items excluded; topped
        up with popular items when fewer than ``k`` are found (``filled_with_popular``), and popular
        items alone for an empty cart (``no_known_cart_items``)."""
        allowed = _without(allowed, items)
        fallbacks: list[str] = []
        proposals: list[Proposal] = []
        distinct = list(dict.fromkeys(items))
        for item, als in zip(distinct, self.als_lists(distinct, allowed), strict=True):
            bought = self.bought_list(item, allowed)
            if bought is not None:
                proposals.append(Proposal(BOUGHT_TOGETHER, item, bought))
            proposals += self._similar_proposals(item, allowed, als)
        if items and self.bought is None:
            fallbacks.append(NO_BOUGHT_TOGETHER_MATRIX)
        found = fuse(proposals, k)
        if len(found) < k:
            taken = _without(allowed, [r.item for r in found])
            more = _as_related(self.popular_list(taken, k - len(found)), POPULAR, -1)
            if more:
                fallbacks.append(FILLED_WITH_POPULAR if items else NO_KNOWN_CART_ITEMS)
            found += more
        return found, fallbacks

    def _similar_proposals(self, item: int, allowed: np.ndarray, als: Ranked) -> list[Proposal]:
        return [
            Proposal(COVIS, item, self.covis_list(item, allowed)),
            Proposal(ALS, item, als),
            Proposal(CONTENT, item, self.content_list(item, allowed)),
        ]


# ---------------------------------------------------------------- the pieces, on plain arrays


def fuse(proposals: Sequence[Proposal], k: int, *, rrf_k: int = RRF_K) -> list[Related]:
    """Reciprocal-rank fusion of ranked lists: the ``k`` items with the largest

        score(c) = sum over the lists that hold c of 1 / (rrf_k + rank of c in the list)   (ranks from 1)

    in (0, n_lists / (rrf_k + 1)]; ties fall to the smaller position (item id).

    Why ranks and not scores: co-visitation scores are summed event weights (unbounded, larger for
    popular items), ALS's are cosines and content's price closeness; no normalisation makes them
    comparable, while ranks are. An item several lists agree on rises above one that a single list
    puts first, and ``rrf_k`` keeps one list's head from dominating. One constant, no training.
    """
    proposals = [p for p in proposals if len(p.ranked)]
    if k <= 0 or not proposals:
        return []
    items = np.concatenate([p.ranked.items for p in proposals])
    ranks = np.concatenate([np.arange(1, len(p.ranked) + 1) for p in proposals])
    which = np.repeat(np.arange(len(proposals)), [len(p.ranked) for p in proposals])
    unique, inverse = np.unique(items, return_inverse=True)
    scores = np.bincount(inverse, weights=1.0 / (rrf_k + ranks), minlength=len(unique))
    chosen = top_n(scores, k)  # positions in ``unique``: ties fall to the smaller item position
    out = []
    priority = {name: j for j, name in enumerate(SOURCE_ORDER)}
    for u in chosen.tolist():
        entries = np.flatnonzero(inverse == u)
        # the best-ranked entry credits its source and anchor; equal ranks: SOURCE_ORDER, then list order
        best = min(entries.tolist(), key=lambda e: (ranks[e], priority.get(proposals[which[e]].source, 99), e))
        names = {proposals[which[e]].source for e in entries.tolist()}
        out.append(
            Related(
                item=int(unique[u]),
                score=float(scores[u]),
                source=proposals[which[best]].source,
                anchor=proposals[which[best]].anchor,
                sources=tuple(s for s in SOURCE_ORDER if s in names) + tuple(sorted(names - set(SOURCE_ORDER))),
            )
        )
    return out


def matrix_row(matrix: sp.csr_matrix, item: int, allowed: np.ndarray, depth: int) -> Ranked:
    """Row ``item`` of an item x item CSR matrix: its allowed columns with a positive value, the
    ``depth`` largest first (ties: the smaller position)."""
    start, end = matrix.indptr[item], matrix.indptr[item + 1]
    cols = matrix.indices[start:end].astype(np.int64)
    values = matrix.data[start:end].astype(np.float64)
    keep = allowed[cols] & (values > 0)
    cols, values = cols[keep], values[keep]
    order = np.lexsort((cols, -values))[:depth]
    return Ranked(cols[order], values[order])


def als_neighbours(
    unit_factors: np.ndarray, rows: np.ndarray, als_to_index: np.ndarray, allowed: np.ndarray, depth: int
) -> list[Ranked]:
    """Per ALS row of ``rows``: the ``depth`` allowed items (index positions) whose unit-length factors
    have the largest cosine with the row's, in [-1, 1]; only positive cosines are returned (an
    unrelated item is not similar), and the row itself never. One matrix product for all rows."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return []
    keep = allowed[als_to_index]
    cosines = unit_factors[rows] @ unit_factors.T  # len(rows) x ALS items, each row contiguous
    out = []
    for j, row in enumerate(rows.tolist()):
        scores = np.where(keep & (cosines[j] > 0), cosines[j], -np.inf)
        scores[row] = -np.inf
        best = top_n(scores, depth)
        out.append(Ranked(als_to_index[best].astype(np.int64), scores[best].astype(np.float64)))
    return out


def price_bands(prices: np.ndarray, *, ratio: float = PRICE_BAND_RATIO) -> np.ndarray:
    """Each price's band, ``floor(log(price) / log(ratio))`` (float; NaN for a missing or non-positive price)."""
    prices = np.asarray(prices, dtype=np.float64)
    bands = np.full(len(prices), np.nan)
    ok = np.isfinite(prices) & (prices > 0)
    bands[ok] = np.floor(np.log(prices[ok]) / np.log(ratio))
    return bands


def content_neighbours(
    members: np.ndarray, item: int, bands: np.ndarray, views: np.ndarray, allowed: np.ndarray, depth: int
) -> Ranked:
    """The ``depth`` allowed ``members`` (the item's category) nearest the item's price band, then most
    viewed, then smaller position; score ``1 / (1 + band distance)`` in (0, 1], 0 for an item without a
    price (ranked last). When the item has no price every member is at distance 0."""
    members = members[allowed[members] & (members != item)]
    if np.isnan(bands[item]):
        distance = np.zeros(len(members))
    else:
        distance = np.abs(bands[members] - bands[item])
        distance[np.isnan(distance)] = np.inf
    order = np.lexsort((members, -views[members], distance))[:depth]
    return Ranked(members[order].astype(np.int64), 1.0 / (1.0 + distance[order]))


def _category_groups(category: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each position's category code (-1: none) and each code's member positions (ascending)."""
    known = np.flatnonzero(np.asarray([c is not None for c in category], dtype=bool))
    code = np.full(len(category), -1, dtype=np.int64)
    if not len(known):
        return code, []
    names, codes = np.unique(np.asarray(category[known], dtype=str), return_inverse=True)
    code[known] = codes
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    return code, [known[order[bounds[j] : bounds[j + 1]]] for j in range(len(names))]


def _without(allowed: np.ndarray, items: Sequence[int]) -> np.ndarray:
    """``allowed`` with ``items`` refused (a copy)."""
    out = allowed.copy()
    out[np.asarray(list(items), dtype=np.int64)] = False
    return out


def _as_related(ranked: Ranked | None, source: str, anchor: int) -> list[Related]:
    if ranked is None:
        return []
    return [
        Related(item=int(i), score=float(s), source=source, anchor=anchor, sources=(source,))
        for i, s in zip(ranked.items.tolist(), ranked.scores.tolist(), strict=True)
    ]


_CACHE: weakref.WeakKeyDictionary[Bundle, ItemNeighbours] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def neighbours_of(bundle: Bundle) -> ItemNeighbours:
    """The bundle's :class:`ItemNeighbours`, derived on first use and kept while the bundle is loaded."""
    with _CACHE_LOCK:
        found = _CACHE.get(bundle)
        if found is None:
            found = _CACHE[bundle] = ItemNeighbours(bundle)
        return found


_REASONS = {
    BOUGHT_TOGETHER: "bought together with {anchor}",
    COVIS: "viewed together with {anchor}",
    ALS: "liked by shoppers who liked {anchor}",
    CONTENT: "like {anchor}: same category, similar price",
    POPULAR: "popular right now",
}


def reason(related: Related, item_ids: np.ndarray) -> str:
    """A short human reason for an answer item, from the source and anchor that ranked it best."""
    anchor = str(item_ids[related.anchor]) if related.anchor >= 0 else ""
    return _REASONS[related.source].format(anchor=anchor)
