"""Per-request recommendation: retrieve, filter, rank, explain (pure logic, no HTTP).

The ranker's features are assembled exactly as training built them (``lib/ranking.py``): source
scores and ranks, the user snapshot, the item snapshot shipped with the model, the user's affinity
for the item's category, the user's own history with the item, price against the user's usual and
the favourite-category match. History and affinities come from the online ``user_profile`` plus
the live session events pushed since that profile's snapshot.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from recs_pipeline.models.protocol import RELEVANCE
from recs_pipeline.models.training import DEFAULT_LIMITS
from recs_pipeline.serving.model import GlobalList, ServingModel
from recs_pipeline.serving.online import UserContext
from recs_pipeline.warehouse.features import Weighting

# Distinct recent items co-visitation starts from (as in training: protocol.recent_items).
COVIS_RECENT_ITEMS = 20
SOURCE_PRIORITY = ("covis", "als", "trending", "popular")
SOURCE_NAMES = ("als", "covis", "popular", "trending")  # sorted: the ranker's column order
WEIGHTING = Weighting()
TYPE_WEIGHT = {
    "view": WEIGHTING.view,
    "add_to_cart": WEIGHTING.add_to_cart,
    "purchase": WEIGHTING.purchase,
    "favorite": WEIGHTING.favorite,
}
_NO_ANCHOR = (0.0, "")


@dataclass(frozen=True)
class ServeOptions:
    """Knobs of one request (validated by the HTTP layer)."""

    k: int = 20
    category: str | None = None
    explain: bool = False
    purchased_window_s: float = 30 * 86400.0
    limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))


@dataclass
class HistoryItem:
    weight: float = 0.0
    views: int = 0
    carts: int = 0
    purchases: int = 0
    last_unix: float = 0.0
    last_purchase_unix: float = 0.0
    relevance: float = 0.0


@dataclass(slots=True)
class Candidate:
    item_id: str
    scores: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    anchor: str | None = None  # the recent item a co-visitation candidate came from


@dataclass
class Result:
    user_id: str
    model_version: str
    items: list[dict[str, Any]]
    fallbacks: list[str]
    stages: dict[str, float]
    candidates: int


def merge_history(ctx: UserContext) -> tuple[dict[str, HistoryItem], float | None]:
    """The user's history per item: the profile snapshot plus session events newer than it.

    Returns the history and the reference time (unix seconds) its ages are measured from: the
    newest of the snapshot time and the last session event (None when nothing is known).
    """
    history: dict[str, HistoryItem] = {}
    p = ctx.profile
    ids = p.get("hist_item_ids") or []
    for i, item in enumerate(ids):
        h = HistoryItem(
            weight=float(p["hist_weights"][i]),
            views=int(p["hist_views"][i]),
            carts=int(p["hist_carts"][i]),
            purchases=int(p["hist_purchases"][i]),
            last_unix=float(p["hist_last_unix"][i]),
            last_purchase_unix=float(p["hist_last_purchase_unix"][i]),
        )
        h.relevance = 3.0 if h.purchases else 2.0 if h.carts else 1.0
        history[item] = h
    reference = ctx.profile_as_of
    s = ctx.session
    items = s.get("session_item_ids") or []
    types = s.get("session_event_types") or []
    times = s.get("session_event_unix") or []
    fresh = [
        (item, etype, float(ts))
        for item, etype, ts in zip(items, types, times, strict=False)
        if ctx.profile_as_of is None or float(ts) >= ctx.profile_as_of
    ]
    if fresh:
        newest = max(ts for _, _, ts in fresh)
        reference = max(reference or newest, newest)
    for item, etype, ts in fresh:
        h = history.setdefault(item, HistoryItem())
        age_days = max(reference - ts, 0.0) / 86400.0
        h.weight += TYPE_WEIGHT.get(etype, 0.0) * 0.5 ** (age_days / WEIGHTING.half_life_days)
        h.views += etype == "view"
        h.carts += etype == "add_to_cart"
        h.purchases += etype == "purchase"
        h.last_unix = max(h.last_unix, ts)
        if etype == "purchase":
            h.last_purchase_unix = max(h.last_purchase_unix, ts)
        h.relevance = max(h.relevance, RELEVANCE.get(etype, 1.0))
    return history, reference


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest scores, best first."""
    n = min(n, len(scores))
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    idx = np.argpartition(-scores, n - 1)[:n]
    return idx[np.argsort(-scores[idx], kind="stable")]


class Recommender:
    """Answers one user's request with a loaded :class:`ServingModel`."""

    def __init__(self, model: ServingModel) -> None:
        self.model = model
        self.column = {f: i for i, f in enumerate(model.features)}
        self._item_columns = [self.column[name] for name in model.item_feature_names]
        # One BLAS thread for the whole process: requests already run concurrently, and on two busy
        # cores a second BLAS thread turned the 0.3 ms ALS matrix-vector product into 8 ms at p95.
        threadpool_limits(1, "blas")

    # -- retrieval -------------------------------------------------------------------------

    def _als_vector(self, user_id: str, history: dict[str, HistoryItem]) -> tuple[np.ndarray | None, str]:
        m = self.model
        pos = m.als_user_pos.get(user_id)
        if pos is not None:
            return m.user_factors[pos], "known"
        known = [(m.als_item_pos[i], h.weight) for i, h in history.items() if i in m.als_item_pos and h.weight > 0]
        if not known:
            return None, "none"
        cols, weights = zip(*known, strict=True)
        # implicit's exact least-squares user step (as recalculate_user does, without recomputing
        # Y^T Y per call): (Y^T Y + lambda I + Y_u^T (C_u - I) Y_u) x = Y_u^T C_u p_u
        confidence = 1.0 + m.als.params.alpha * np.asarray(weights, dtype=np.float64)
        y = m.item_factors[list(cols)].astype(np.float64)
        a = m.yty_reg + y.T @ ((confidence - 1.0)[:, None] * y)
        vector = np.linalg.solve(a, y.T @ confidence)
        return np.asarray(vector, dtype=np.float32).ravel(), "folded_in"

    def retrieve(
        self, ctx: UserContext, history: dict[str, HistoryItem], limits: dict[str, int]
    ) -> tuple[dict[str, Candidate], str]:
        m = self.model
        cands: dict[str, Candidate] = {}

        def add(source: str, items: list[str], scores: list[float]) -> None:
            for rank, (item, score) in enumerate(zip(items, scores, strict=True), start=1):
                c = cands.get(item)
                if c is None:
                    c = cands[item] = Candidate(item)
                c.scores[source] = score
                c.ranks[source] = rank

        vector, als_mode = self._als_vector(ctx.user_id, history)
        if vector is not None:
            scores = m.item_factors @ vector
            top = _top(scores, limits["als"])
            ids = m.als_item_ids
            add("als", [ids[i] for i in top.tolist()], scores[top].tolist())

        recent = sorted(history.items(), key=lambda kv: -kv[1].last_unix)[:COVIS_RECENT_ITEMS]
        covis: dict[str, float] = {}
        anchor: dict[str, tuple[float, str]] = {}
        for item, h in recent:
            neighbours = m.covis.get(item)
            if neighbours is None:
                continue
            relevance = h.relevance
            # plain floats: the same IEEE doubles as the array's, without numpy scalar arithmetic
            for nb, s in zip(neighbours[0], neighbours[1].tolist(), strict=True):
                contribution = relevance * s
                covis[nb] = covis.get(nb, 0.0) + contribution
                if contribution > anchor.get(nb, _NO_ANCHOR)[0]:
                    anchor[nb] = (contribution, item)
        if covis:
            # the strongest first, ties broken by item id, as training's ranking does
            # (nsmallest(n, ...) is sorted(...)[:n] without sorting the rest)
            best = heapq.nsmallest(limits["covis"], covis.items(), key=lambda kv: (-kv[1], kv[0]))
            add("covis", [item for item, _ in best], [score for _, score in best])
            for item, _ in best:
                cands[item].anchor = anchor[item][1]

        for name, lst in (("trending", m.trending), ("popular", m.popular)):
            n = limits[name]
            add(name, lst.item_ids[:n], lst.scores[:n].tolist())
        return cands, als_mode

    # -- filtering -------------------------------------------------------------------------

    def filter(
        self,
        cands: dict[str, Candidate],
        history: dict[str, HistoryItem],
        reference: float,
        options: ServeOptions,
    ) -> dict[str, int]:
        """Drop recently purchased, unavailable and out-of-category items in place; counts per reason."""
        m = self.model
        item_row, available, item_category = m.item_row, m.item_available, m.item_category
        dropped = {"purchased": 0, "unavailable": 0, "category": 0}
        for item in list(cands):
            h = history.get(item)
            row = item_row.get(item)  # an item outside the snapshot counts as available, of no category
            if (
                h is not None
                and h.last_purchase_unix
                and reference - h.last_purchase_unix <= options.purchased_window_s
            ):
                reason = "purchased"
            elif row is not None and not available[row]:
                reason = "unavailable"
            elif options.category is not None and (None if row is None else item_category[row]) != options.category:
                reason = "category"
            else:
                continue
            del cands[item]
            dropped[reason] += 1
        return dropped

    def fill_from_popular(
        self, cands: dict[str, Candidate], history: dict[str, HistoryItem], reference: float, options: ServeOptions
    ) -> int:
        """Top up with popular items (of the category, when filtered) when fewer than k remain."""
        m = self.model
        pool: GlobalList = m.popular
        added = 0
        for rank, (item, score) in enumerate(zip(pool.item_ids, pool.scores, strict=True), start=1):
            if len(cands) >= options.k:
                break
            if item in cands:
                continue
            probe = {item: Candidate(item, {"popular": float(score)}, {"popular": rank})}
            if self.filter(probe, history, reference, options)["purchased"] or item not in probe:
                continue
            cands[item] = probe[item]
            added += 1
        return added

    # -- ranking ---------------------------------------------------------------------------

    def features(
        self,
        ctx: UserContext,
        items: list[str],
        cands: dict[str, Candidate],
        history: dict[str, HistoryItem],
        reference: float,
    ) -> np.ndarray:
        """The ranker's input matrix for ``items`` (rows) in training's column order (NaN = missing)."""
        m, col = self.model, self.column
        x = np.full((len(items), len(m.features)), np.nan)
        chosen = [cands[i] for i in items]
        for name in SOURCE_NAMES:
            si, ri = col.get(f"{name}_score"), col.get(f"{name}_rank")
            if si is None and ri is None:
                continue
            at = [r for r, c in enumerate(chosen) if name in c.ranks]
            if at:
                if si is not None:
                    x[at, si] = [chosen[r].scores[name] for r in at]
                if ri is not None:
                    x[at, ri] = [chosen[r].ranks[name] for r in at]
        if "n_sources" in col:
            x[:, col["n_sources"]] = [len(c.ranks) for c in chosen]
        if "best_rank" in col:
            x[:, col["best_rank"]] = [min(c.ranks.values()) for c in chosen]
        for name, value in ctx.user_features.items():
            j = col.get(f"user_features__{name}")
            if j is not None and isinstance(value, int | float) and not isinstance(value, bool):
                x[:, j] = float(value)
        rows = np.array([m.item_row.get(i, -1) for i in items], dtype=np.int64)
        known = rows >= 0
        if self._item_columns:
            x[np.ix_(np.flatnonzero(known), self._item_columns)] = m.item_matrix[rows[known]]
        item_cats = [m.item_category[r] if r >= 0 else None for r in rows]
        cats = {c: i for i, c in enumerate(ctx.profile.get("cat_ids") or [])}
        cat_pos = [cats.get(c) for c in item_cats]
        for feature, array in (
            ("affinity_30d", "cat_affinity_30d"),
            ("affinity_share_30d", "cat_affinity_share_30d"),
            ("events_30d", "cat_events_30d"),
            ("purchases_30d", "cat_purchases_30d"),
        ):
            j = col.get(f"user_category_features__{feature}")
            values = ctx.profile.get(array)
            if j is None or not values:
                continue
            x[:, j] = [np.nan if p is None else values[p] for p in cat_pos]
        hist = [(r, history[i]) for r, i in enumerate(items) if i in history]
        if hist:
            at = [r for r, _ in hist]
            for name, values in (
                ("ui_weight", [h.weight for _, h in hist]),
                ("ui_views", [h.views for _, h in hist]),
                ("ui_carts", [h.carts for _, h in hist]),
                ("ui_purchases", [h.purchases for _, h in hist]),
                ("ui_seconds_since_last", [reference - h.last_unix for _, h in hist]),
            ):
                if name in col:
                    x[at, col[name]] = values
        if "price_vs_user_avg" in col:
            avg = ctx.user_features.get("avg_price_30d")
            price = np.where(known, m.item_price[np.maximum(rows, 0)], np.nan)
            with np.errstate(divide="ignore", invalid="ignore"):
                x[:, col["price_vs_user_avg"]] = price / avg if avg is not None else np.nan
        if "in_top_category" in col:
            top = ctx.user_features.get("top_category_id")
            x[:, col["in_top_category"]] = [np.nan if top is None or c is None else float(c == top) for c in item_cats]
        return x

    # -- the request -----------------------------------------------------------------------

    def recommend(self, ctx: UserContext, options: ServeOptions, *, online_ms: float = 0.0) -> Result:
        stages = {"online": online_ms / 1000.0}
        fallbacks: list[str] = []
        if not ctx.online_ok:
            fallbacks.append("online_store_unavailable")
        t0 = time.perf_counter()
        history, reference = merge_history(ctx)
        if reference is None:
            reference = ctx.user_features_as_of or time.time()
        cands, als_mode = self.retrieve(ctx, history, options.limits)
        if als_mode == "none":
            fallbacks.append("no_personal_signal" if ctx.online_ok else "model_only")
        t1 = time.perf_counter()
        self.filter(cands, history, reference, options)
        if len(cands) < options.k and self.fill_from_popular(cands, history, reference, options):
            fallbacks.append("filled_with_popular")
        t2 = time.perf_counter()
        items = list(cands)
        x = self.features(ctx, items, cands, history, reference)
        scores = self.model.booster.predict(x, num_threads=1) if items else np.empty(0)
        values = scores.tolist()
        order = heapq.nsmallest(options.k, range(len(items)), key=lambda i: (-values[i], items[i]))
        top_items = [items[i] for i in order]
        contributions = None
        if options.explain and top_items:
            contributions = self.model.booster.predict(x[order], pred_contrib=True, num_threads=1)
        t3 = time.perf_counter()
        favourite = ctx.user_features.get("top_category_id")
        out = []
        for pos, (i, item) in enumerate(zip(order, top_items, strict=True)):
            c = cands[item]
            entry: dict[str, Any] = {
                "item_id": item,
                "score": round(float(scores[i]), 6),
                "source": next(s for s in SOURCE_PRIORITY if s in c.ranks),
                "sources": sorted(c.ranks),
                "reason": self.reason(c, history.get(item), favourite),
                "category_id": self.model.category_of(item),
            }
            if contributions is not None:
                entry["contributions"] = top_contributions(contributions[pos], self.model.features)
            out.append(entry)
        stages.update(retrieve=t1 - t0, filter=t2 - t1, rank=t3 - t2)
        return Result(ctx.user_id, self.model.version, out, fallbacks, stages, len(items))

    def reason(self, c: Candidate, h: HistoryItem | None, favourite: str | None) -> str:
        """A short human reason for showing the candidate."""
        if "covis" in c.ranks and c.anchor:
            return f"viewed together with {c.anchor}"
        if h is not None and h.carts:
            return "in your cart recently"
        if h is not None and h.views:
            return "you viewed this recently"
        if "als" in c.ranks:
            return "matches your taste"
        category = self.model.category_of(c.item_id)
        if favourite is not None and category == favourite:
            return "popular in your favourite category"
        if "trending" in c.ranks:
            return "trending now"
        return "popular right now"


def top_contributions(row: np.ndarray, features: list[str], n: int = 3) -> list[dict[str, float]]:
    """The ``n`` features that moved this item's score most (LightGBM ``pred_contrib``; last column is the bias)."""
    values = row[:-1]
    order = np.argsort(-np.abs(values))[:n]
    return [{"feature": features[j], "contribution": round(float(values[j]), 6)} for j in order if values[j] != 0]
