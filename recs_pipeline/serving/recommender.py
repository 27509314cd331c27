"""Per-request recommendation: retrieve, filter, rank, explain (pure logic, no HTTP).

Every step is the one the batch path runs: :func:`~recs_pipeline.models.retrieval.retrieve` and
:func:`~recs_pipeline.models.retrieval.merge_hits` propose candidates, the ranker-feature contract
(:mod:`recs_pipeline.models.ranker_features`) assembles the ranker's matrix, and the weights,
half-life, limits and anchors come from the served bundle's recipe. Only where the inputs come from
differs: the online ``user_profile`` plus the live session events pushed since that profile's
snapshot, and the bundle's item block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from recs_pipeline.data.contract import NEGATIVE_EVENT_TYPES
from recs_pipeline.models import ranker_features as rf
from recs_pipeline.models.bundle import Bundle
from recs_pipeline.models.diversity import diversify
from recs_pipeline.models.ranking import predict
from recs_pipeline.models.retrieval import ALS_NONE, Candidates, Retrieved, UserSignals, merge_hits, retrieve, top_n
from recs_pipeline.models.scoring import keep_mask
from recs_pipeline.models.training import retrieve_knobs
from recs_pipeline.serving.catalog import LiveCatalog
from recs_pipeline.serving.online import UserContext
from recs_pipeline.serving.rules import BLOCK, BOOST, PIN, Rule
from recs_pipeline.warehouse.features import Weighting

# The source an item is credited to when several proposed it (the first of these that did).
SOURCE_PRIORITY = ("covis", "recent", "als", "usercf", "catpop", "content", "trending", "popular")
_CATEGORY_ARRAYS = tuple(f"cat_{name}" for name in rf.CATEGORY_FEATURES)


@dataclass(frozen=True)
class ServeOptions:
    """Knobs of one request (validated by the HTTP layer). ``limits`` None = the bundle's recipe."""

    k: int = 20
    category: str | None = None
    explain: bool = False
    limits: dict[str, int] | None = None
    diversity: float = 0.0  # strength of the category re-rank (models/diversity.py); 0 = score order
    rules: tuple[Rule, ...] = ()  # the merchandising rules in force (serving/rules.py)
    explore: int = 0  # exploration slots: the list's last places go to the content source's new items
    exclude: frozenset[str] = frozenset()  # item ids the caller asks to leave out (e.g. already on the page)
    rotate_after: int = 0  # no-repeat rotation: leave out items shown this often lately (0 = off)


@dataclass
class HistoryItem:
    weight: float = 0.0
    views: int = 0
    carts: int = 0
    purchases: int = 0
    last_unix: float = 0.0
    last_purchase_unix: float = 0.0


@dataclass
class Result:
    user_id: str
    model_version: str
    items: list[dict[str, Any]]
    fallbacks: list[str]
    stages: dict[str, float]
    candidates: int
    dropped: dict[str, int] = field(default_factory=dict)  # candidates removed, per reason
    dropped_items: list[dict[str, str]] = field(default_factory=list)  # with explain: which, and why
    rule_hits: dict[tuple[str, str], int] = field(default_factory=dict)  # (rule, action) -> items it touched


@dataclass
class RankedList:
    """The top-k of one request before it is turned into JSON."""

    items: np.ndarray  # item-index positions, best first
    scores: np.ndarray
    cands: Candidates
    order: np.ndarray  # rows of ``cands`` in ``items`` order
    matrix: np.ndarray
    als_mode: str
    filled: bool
    found: Retrieved
    rules_of: dict[int, list[str]] = field(default_factory=dict)  # item position -> rules that pinned/boosted it
    explored: frozenset[int] = frozenset()  # item positions placed in an exploration slot
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_items: list[dict[str, str]] = field(default_factory=list)


def merge_history(ctx: UserContext, weighting: Weighting) -> tuple[dict[str, HistoryItem], float | None]:
    """The user's history per item: the profile snapshot plus session events newer than it.

    Session events (hides aside: :func:`hidden_items`) add the recipe's event-type weight, decayed with its half-life to the reference
    time. Returns the history and the reference time (unix seconds) ages are measured from: the
    newest of the snapshot time and the last session event (None when nothing is known).
    """
    type_weight = weighting.by_event_type()
    history: dict[str, HistoryItem] = {}
    p = ctx.profile
    for i, item in enumerate(p.get("hist_item_ids") or []):
        history[item] = HistoryItem(
            weight=float(p["hist_weights"][i]),
            views=int(p["hist_views"][i]),
            carts=int(p["hist_carts"][i]),
            purchases=int(p["hist_purchases"][i]),
            last_unix=float(p["hist_last_unix"][i]),
            last_purchase_unix=float(p["hist_last_purchase_unix"][i]),
        )
    reference = ctx.profile_as_of
    fresh = [(item, etype, ts) for item, etype, ts in fresh_session_events(ctx) if etype not in NEGATIVE_EVENT_TYPES]
    if fresh:
        newest = max(ts for _, _, ts in fresh)
        reference = max(reference or newest, newest)
        for item, etype, ts in fresh:
            h = history.setdefault(item, HistoryItem())
            age_days = max(reference - ts, 0.0) / 86400.0
            h.weight += type_weight.get(etype, 0.0) * 0.5 ** (age_days / weighting.half_life_days)
            h.views += etype == "view"
            h.carts += etype == "add_to_cart"
            h.purchases += etype == "purchase"
            h.last_unix = max(h.last_unix, ts)
            if etype == "purchase":
                h.last_purchase_unix = max(h.last_purchase_unix, ts)
    return history, reference


def fresh_session_events(ctx: UserContext) -> list[tuple[str, str, float]]:
    """The live session's events newer than the profile snapshot: (item, event type, unix seconds), oldest first."""
    s = ctx.session
    events = [
        (item, etype, float(ts))
        for item, etype, ts in zip(
            s.get("session_item_ids") or [],
            s.get("session_event_types") or [],
            s.get("session_event_unix") or [],
            strict=False,
        )
        if ctx.profile_as_of is None or float(ts) >= ctx.profile_as_of
    ]
    return sorted(events, key=lambda e: e[2])


def hidden_items(ctx: UserContext, fresh: list[tuple[str, str, float]]) -> set[str]:
    """The items the user hid (negative feedback): the profile's ``hidden_item_ids``, then the live
    session's ``fresh`` events (:func:`fresh_session_events`) in time order (a hide hides the item; any
    other event with it lifts the hide), the rule sql/user_profile.sql applies to stored events."""
    hidden = set(ctx.profile.get("hidden_item_ids") or [])
    for item, etype, _ in fresh:
        if etype in NEGATIVE_EVENT_TYPES:
            hidden.add(item)
        else:
            hidden.discard(item)
    return hidden


def shown_recently(ctx: UserContext, times: int, fresh: list[tuple[str, str, float]]) -> set[str]:
    """No-repeat rotation: the items the service showed the user at least ``times`` times in the
    profile's window (``shown_item_ids`` / ``shown_counts``, from the exposure log: sql/user_profile.sql)
    with no event of theirs with the item since, nor among the live session's ``fresh`` events; none
    when ``times`` is 0."""
    if times <= 0:
        return set()
    p = ctx.profile
    shown = {
        item
        for item, count in zip(p.get("shown_item_ids") or [], p.get("shown_counts") or [], strict=False)
        if count >= times
    }
    return shown - {item for item, _, _ in fresh}


def signals_of(user_id: str, history: dict[str, HistoryItem]) -> UserSignals:
    """Retrieval's view of one user's merged history."""
    hs = list(history.values())
    return UserSignals(
        user_ids=[user_id],
        row=np.zeros(len(hs), dtype=np.int64),
        item_ids=np.asarray(list(history), dtype=str) if hs else np.asarray([], dtype=str),
        weight=np.asarray([h.weight for h in hs], dtype=np.float64),
        last_ts=np.asarray([h.last_unix for h in hs], dtype=np.float64),
        views=np.asarray([h.views for h in hs], dtype=np.int64),
        carts=np.asarray([h.carts for h in hs], dtype=np.int64),
        purchases=np.asarray([h.purchases for h in hs], dtype=np.int64),
    )


def _user_vector(ctx: UserContext) -> tuple[np.ndarray, str | None]:
    values = np.full(len(rf.USER_FEATURES), np.nan)
    for j, name in enumerate(rf.USER_FEATURES):
        value = ctx.user_features.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            values[j] = float(value)
    top = ctx.user_features.get(rf.USER_TOP_CATEGORY)
    return values, (top if isinstance(top, str) else None)


PINNED = "pinned"  # the source of an item only a pin rule put in the list
EXPLORE = "explore"  # the source of an item in an exploration slot (proposed by the content source)


class Recommender:
    """Answers one user's request with a loaded :class:`~recs_pipeline.models.bundle.Bundle`."""

    def __init__(self, bundle: Bundle, catalog: LiveCatalog | None = None) -> None:
        self.model = bundle
        self.recipe = bundle.recipe
        self.catalog = catalog
        # One BLAS thread for the whole process: requests already run concurrently, and on two busy
        # cores a second BLAS thread turned the 0.3 ms ALS matrix-vector product into 8 ms at p95.
        threadpool_limits(1, "blas")

    # -- the steps ---------------------------------------------------------------------------

    def history(self, ctx: UserContext) -> tuple[dict[str, HistoryItem], float]:
        """The user's merged history (:func:`merge_history`, the recipe's weighting) and the time ages
        are measured from (the user snapshot's time, else now, when nothing is known)."""
        history, reference = merge_history(ctx, self.recipe.weighting)
        return history, reference if reference is not None else (ctx.user_features_as_of or time.time())

    def candidates(
        self, user_id: str, history: dict[str, HistoryItem], reference: float, limits: dict[str, int]
    ) -> tuple[Candidates, Retrieved, np.ndarray]:
        """Merged candidates of one user (row 0), what retrieval found (ALS mode, anchors), and the
        user's consumed items (index positions), which retrieval excluded."""
        signals = signals_of(user_id, history)
        consumed = signals.consumed(self.recipe.consumed, self.model.index, reference=reference)
        found = retrieve(
            self.model.sources, signals, n=limits, **retrieve_knobs(self.recipe.retrieval), exclude=consumed
        )
        return merge_hits(found.hits, n_items=len(self.model.index)), found, consumed.indices

    def available(self) -> np.ndarray:
        """Availability by item position: the bundle's snapshot with the live catalog's newer updates."""
        if self.catalog is None:
            return self.model.items.available
        return self.catalog.available(
            self.model.version,
            self.model.index.positions,
            self.model.items.available,
            self.model.items_as_of,
            self.model.created_unix,
        )

    def withheld(self, ctx: UserContext, options: ServeOptions) -> dict[int, str]:
        """Items (index positions) this user must not be shown, with why: ``hidden`` (the user hid it,
        :func:`hidden_items`), ``excluded`` (the request's exclude list) or ``shown_recently``
        (:func:`shown_recently`, when the request rotates)."""
        out: dict[int, str] = {}
        fresh = fresh_session_events(ctx)
        rotated = shown_recently(ctx, options.rotate_after, fresh)
        hidden = hidden_items(ctx, fresh)
        for reason, ids in (("shown_recently", rotated), ("excluded", options.exclude), ("hidden", hidden)):
            if ids:
                positions = self.model.index.positions(sorted(ids))
                out.update(dict.fromkeys(positions[positions >= 0].tolist(), reason))
        return out

    def keep_mask(self, items: np.ndarray, options: ServeOptions, withheld: dict[int, str] | None = None) -> np.ndarray:
        """Which items survive the filters (:func:`~recs_pipeline.models.scoring.keep_mask`), the
        user's ``withheld`` items (:meth:`withheld`) and the block rules in force."""
        keep = keep_mask(
            items, available=self.available(), categories=self.model.items.category, category=options.category
        )
        if withheld:
            keep &= ~np.isin(items, np.fromiter(withheld, dtype=np.int64, count=len(withheld)))
        for rule in options.rules:
            if rule.action == BLOCK:
                keep &= ~self.matches(items, rule)
        return keep

    def matches(self, items: np.ndarray, rule: Rule) -> np.ndarray:
        """Which of ``items`` (index positions) a rule names, by id or by category."""
        hit = np.isin(items, self.model.index.positions(list(rule.items))) if rule.items else np.zeros(len(items), bool)
        if rule.category is not None:
            hit |= self.model.items.category[items] == rule.category
        return hit

    def drop_reasons(
        self, items: np.ndarray, options: ServeOptions, withheld: dict[int, str] | None = None
    ) -> list[str]:
        """Why each of ``items`` (ones :meth:`keep_mask` refused) was dropped: the first reason of
        hidden or excluded (``withheld``), unavailable, outside the requested category, blocked by a rule."""
        available = self.available()[items]
        categories = self.model.items.category[items]
        blocked = {r.name: self.matches(items, r) for r in options.rules if r.action == BLOCK}
        withheld = withheld or {}
        reasons = []
        for j, item in enumerate(items.tolist()):
            if item in withheld:
                reasons.append(withheld[item])
            elif not available[j]:
                reasons.append("unavailable")
            elif options.category is not None and categories[j] != options.category:
                reasons.append("outside_category")
            else:
                reasons.append(next((f"blocked:{name}" for name, hit in blocked.items() if hit[j]), "filtered"))
        return reasons

    def fill_from_popular(self, cands: Candidates, never: np.ndarray, options: ServeOptions) -> Candidates:
        """Top up with popular items (of the category, when filtered; never one of ``never``, the user's
        consumed and withheld items) when fewer than k remain."""
        need = options.k - len(cands)
        if need <= 0:
            return cands
        pool = self.model.sources.popular_items
        at = np.flatnonzero(~np.isin(pool, cands.item) & ~np.isin(pool, never))
        at = at[self.keep_mask(pool[at], options)][:need]
        if not len(at):
            return cands
        fresh = pool[at]
        col = cands.sources.index("popular")
        scores = np.full((len(fresh), len(cands.sources)), np.nan)
        ranks = np.full((len(fresh), len(cands.sources)), np.nan)
        scores[:, col] = self.model.sources.popular_scores[at]
        ranks[:, col] = at + 1
        return Candidates(
            row=np.concatenate([cands.row, np.zeros(len(fresh), dtype=np.int64)]),
            item=np.concatenate([cands.item, fresh]),
            sources=cands.sources,
            scores=np.vstack([cands.scores, scores]),
            ranks=np.vstack([cands.ranks, ranks]),
        )

    def features(
        self, ctx: UserContext, cands: Candidates, history: dict[str, HistoryItem], reference: float
    ) -> np.ndarray:
        """The ranker's matrix for the candidates, through the one contract."""
        n = len(cands)
        block = self.model.items
        items = cands.item
        ids = self.model.index.ids[items]
        user, top_category = _user_vector(ctx)
        item_category = block.category[items]
        category = np.full((n, len(rf.CATEGORY_FEATURES)), np.nan)
        cat_ids = ctx.profile.get("cat_ids") or []
        if cat_ids:
            where = {c: i for i, c in enumerate(cat_ids)}
            pos = np.asarray([where.get(c, -1) if c is not None else -1 for c in item_category], dtype=np.int64)
            hit = pos >= 0
            for j, name in enumerate(_CATEGORY_ARRAYS):
                values = ctx.profile.get(name)
                if values:
                    category[hit, j] = np.asarray(values, dtype=np.float64)[pos[hit]]
        hist = np.full((n, len(rf.HISTORY_FEATURES)), np.nan)
        since = np.full(n, np.nan)
        for r, item in enumerate(ids.tolist()):
            h = history.get(item)
            if h is not None:
                hist[r] = (h.weight, h.views, h.carts, h.purchases)
                since[r] = reference - h.last_unix
        return rf.assemble(
            rf.RankerInputs(
                source_scores=cands.scores,
                source_ranks=cands.ranks,
                user=np.broadcast_to(user, (n, len(user))),
                user_top_category=np.full(n, top_category, dtype=object),
                item=block.features[items],
                item_category=item_category,
                category=category,
                history=hist,
                seconds_since_last=since,
            )
        )

    def add_pins(
        self, cands: Candidates, never: np.ndarray, options: ServeOptions
    ) -> tuple[Candidates, list[tuple[int, str, int]]]:
        """The pin rules' items as candidates (rows added for the ones retrieval did not propose) and
        ``(row, rule, position)`` per pinned item (a rule's items take its position and the next
        ones); an item of ``never`` (consumed or withheld), one the filters drop or one the model does not know is not
        pinned, and an item two rules pin keeps the lower position."""
        wanted: list[tuple[int, int, str]] = []  # (position, item, rule)
        for rule in sorted((r for r in options.rules if r.action == PIN), key=lambda r: (r.position, r.name)):
            positions = self.model.index.positions(list(rule.items))
            known = positions[positions >= 0]
            known = known[~np.isin(known, never)]
            known = known[self.keep_mask(known, options)]
            wanted += [(rule.position + j, int(item), rule.name) for j, item in enumerate(known.tolist())]
        if not wanted:
            return cands, []
        seen: set[int] = set()
        unique = []
        for position, item, rule_name in sorted(wanted):
            if item not in seen:
                seen.add(item)
                unique.append((position, item, rule_name))
        fresh = np.asarray(sorted({item for _, item, _ in unique} - set(cands.item.tolist())), dtype=np.int64)
        if len(fresh):
            width = len(cands.sources)
            cands = Candidates(
                row=np.concatenate([cands.row, np.zeros(len(fresh), dtype=np.int64)]),
                item=np.concatenate([cands.item, fresh]),
                sources=cands.sources,
                scores=np.vstack([cands.scores, np.full((len(fresh), width), np.nan)]),
                ranks=np.vstack([cands.ranks, np.full((len(fresh), width), np.nan)]),
            )
        row_of = {int(item): r for r, item in enumerate(cands.item.tolist())}
        return cands, [(row_of[item], rule_name, position) for position, item, rule_name in unique]

    def boosts(self, items: np.ndarray, options: ServeOptions) -> tuple[np.ndarray | None, dict[int, list[str]]]:
        """The boost rules' bonus per candidate (None when no rule boosts one) and the rules per boosted item."""
        bonus = None
        rules_of: dict[int, list[str]] = {}
        for rule in options.rules:
            if rule.action != BOOST:
                continue
            hit = self.matches(items, rule)
            if hit.any():
                bonus = np.zeros(len(items)) if bonus is None else bonus
                bonus[hit] += rule.weight
                for item in items[hit].tolist():
                    rules_of.setdefault(int(item), []).append(rule.name)
        return bonus, rules_of

    def rank(
        self, ctx: UserContext, options: ServeOptions
    ) -> tuple[RankedList, dict[str, HistoryItem], float, dict[str, float]]:
        """Retrieve, filter, fill and rank: the top-k of one request, with timings per stage."""
        t0 = time.perf_counter()
        history, reference = self.history(ctx)
        cands, found, consumed = self.candidates(ctx.user_id, history, reference, options.limits or self.recipe.limits)
        withheld = self.withheld(ctx, options)
        t1 = time.perf_counter()
        keep = self.keep_mask(cands.item, options, withheld)
        removed = cands.item[~keep]
        reasons = self.drop_reasons(removed, options, withheld) if len(removed) else []
        cands = cands.take(keep)
        before = len(cands)
        never = np.union1d(consumed, np.fromiter(withheld, dtype=np.int64, count=len(withheld)))
        cands = self.fill_from_popular(cands, never, options)
        filled = len(cands) > before
        cands, pins = self.add_pins(cands, never, options)
        t2 = time.perf_counter()
        matrix = self.features(ctx, cands, history, reference)
        scores = predict(self.model.scorer, matrix)
        bonus, rules_of = self.boosts(cands.item, options)
        if options.diversity > 0 or bonus is not None:
            order = diversify(scores, self.model.items.category[cands.item], options.k, options.diversity, bonus=bonus)
        else:
            order = top_n(scores, options.k)  # ties: smaller row = smaller item id (candidates are sorted by item)
        order = place_pins(order, pins, options.k)
        order, explored = explore_new_items(order, cands, options.explore, options.k, pinned={r for r, _, _ in pins})
        for row, rule, _ in pins:
            rules_of.setdefault(int(cands.item[row]), []).append(rule)
        t3 = time.perf_counter()
        dropped: dict[str, int] = {}
        for reason in reasons:
            dropped[reason] = dropped.get(reason, 0) + 1
        ranked = RankedList(
            items=cands.item[order],
            scores=scores[order],
            cands=cands,
            order=order,
            matrix=matrix,
            als_mode=found.als_modes[0],
            filled=filled,
            found=found,
            rules_of=rules_of,
            explored=frozenset(int(cands.item[r]) for r in explored),
            dropped=dropped,
            dropped_items=[
                {"item_id": str(self.model.index.ids[item]), "reason": reason}
                for item, reason in zip(removed.tolist(), reasons, strict=True)
            ]
            if options.explain
            else [],
        )
        return ranked, history, reference, {"retrieve": t1 - t0, "filter": t2 - t1, "rank": t3 - t2}

    # -- the request -----------------------------------------------------------------------

    def recommend(self, ctx: UserContext, options: ServeOptions, *, online_ms: float = 0.0) -> Result:
        fallbacks: list[str] = []
        if not ctx.online_ok:
            fallbacks.append("online_store_unavailable")
        ranked, history, _, stages = self.rank(ctx, options)
        if ranked.als_mode == ALS_NONE:
            fallbacks.append("no_personal_signal" if ctx.online_ok else "model_only")
        if ranked.filled:
            fallbacks.append("filled_with_popular")
        contributions = None
        if options.explain and len(ranked.order):
            contributions = self.model.booster.predict(ranked.matrix[ranked.order], pred_contrib=True, num_threads=1)
        favourite = ctx.user_features.get(rf.USER_TOP_CATEGORY)
        ids = self.model.index.ids
        covis_col = ranked.cands.sources.index("covis")
        anchors = ranked.found.anchors_of(0, ranked.items, self.model.sources.covis)
        out = []
        for pos, (row, item, score) in enumerate(zip(ranked.order, ranked.items, ranked.scores, strict=True)):
            proposed = [s for j, s in enumerate(ranked.cands.sources) if not np.isnan(ranked.cands.ranks[row, j])]
            item_id = str(ids[item])
            anchor = anchors[pos] if not np.isnan(ranked.cands.ranks[row, covis_col]) else None
            rules = ranked.rules_of.get(int(item))
            entry: dict[str, Any] = {
                "item_id": item_id,
                "score": round(float(score), 6),
                # an item no source proposed is here because a rule pinned it
                "source": next((s for s in SOURCE_PRIORITY if s in proposed), PINNED),
                "sources": proposed,
                "reason": self.reason(item, proposed, history.get(item_id), favourite, anchor)
                if proposed
                else "featured",
                "category_id": self.model.category_of(int(item)),
            }
            if rules:
                entry["rules"] = rules
            if int(item) in ranked.explored:
                entry["source"] = EXPLORE
                entry["reason"] = "new in a category you like (exploring)"
            if contributions is not None:
                entry["contributions"] = top_contributions(contributions[pos], list(self.recipe.features))
            out.append(entry)
        hits: dict[tuple[str, str], int] = {}
        actions = {r.name: r.action for r in options.rules}
        for rules in (ranked.rules_of.get(int(item), []) for item in ranked.items):
            for name in rules:
                hits[(name, actions[name])] = hits.get((name, actions[name]), 0) + 1
        for reason, n in ranked.dropped.items():
            if reason.startswith("blocked:"):
                name = reason.removeprefix("blocked:")
                hits[(name, BLOCK)] = hits.get((name, BLOCK), 0) + n
        return Result(
            ctx.user_id,
            self.model.version,
            out,
            fallbacks,
            {"online": online_ms / 1000.0, **stages},
            len(ranked.cands),
            dropped=ranked.dropped,
            dropped_items=ranked.dropped_items,
            rule_hits=hits,
        )

    def recommend_popular(self, ctx: UserContext, options: ServeOptions, *, online_ms: float = 0.0) -> Result:
        """The bundle's popular list for everyone (an experiment's non-personal control): the popular
        top-up (:meth:`fill_from_popular`) of an empty candidate set, so the user's consumed and withheld items and
        the filtered ones are left out, in popularity order."""
        started = time.perf_counter()
        history, reference = self.history(ctx)
        consumed = signals_of(ctx.user_id, history).consumed(
            self.recipe.consumed, self.model.index, reference=reference
        )
        width = len(rf.SOURCES)
        none = Candidates(
            row=np.empty(0, dtype=np.int64),
            item=np.empty(0, dtype=np.int64),
            sources=rf.SOURCES,
            scores=np.empty((0, width)),
            ranks=np.empty((0, width)),
        )
        withheld = self.withheld(ctx, options)
        never = np.union1d(consumed.indices, np.fromiter(withheld, dtype=np.int64, count=len(withheld)))
        cands = self.fill_from_popular(none, never, options)
        popular = cands.scores[:, cands.sources.index("popular")]
        items = [
            {
                "item_id": str(self.model.index.ids[item]),
                "score": round(float(score), 6),
                "source": "popular",
                "sources": ["popular"],
                "reason": "popular right now",
                "category_id": self.model.category_of(int(item)),
            }
            for item, score in zip(cands.item.tolist(), popular.tolist(), strict=True)
        ]
        seconds = time.perf_counter() - started
        stages = {"online": online_ms / 1000.0, "retrieve": seconds, "filter": 0.0, "rank": 0.0}
        fallbacks = [] if ctx.online_ok else ["online_store_unavailable"]
        return Result(ctx.user_id, self.model.version, items, fallbacks, stages, len(cands))

    def reason(
        self, item: int, proposed: list[str], h: HistoryItem | None, favourite: str | None, anchor: int | None
    ) -> str:
        """A short human reason for showing the candidate."""
        if anchor is not None:
            return f"viewed together with {self.model.index.ids[anchor]}"
        if h is not None and h.carts:
            return "in your cart recently"
        if h is not None and h.views:
            return "you viewed this recently"
        if h is not None and h.purchases:
            return "you bought this before"
        if "als" in proposed:
            return "matches your taste"
        if "usercf" in proposed:
            return "popular with shoppers like you"
        if favourite is not None and self.model.category_of(int(item)) == favourite:
            return "popular in your favourite category"
        if "catpop" in proposed:
            return "popular in a category you like"
        if "content" in proposed:
            return "new in a category you like"
        if "trending" in proposed:
            return "trending now"
        return "popular right now"


def explore_new_items(
    order: np.ndarray, cands: Candidates, slots: int, k: int, *, pinned: set[int]
) -> tuple[np.ndarray, list[int]]:
    """``order`` (candidate rows, best first) with its last ``slots`` places given to the content
    source's best candidates (new items of the user's categories) that the ranking left out of the
    top ``k``; returns the new order and the rows placed. Fewer when the source proposed fewer."""
    if slots <= 0 or "content" not in cands.sources:
        return order, []
    col = cands.sources.index("content")
    ranks = cands.ranks[:, col]
    taken = set(order.tolist()) | pinned
    rows = [
        int(r) for r in np.argsort(np.where(np.isnan(ranks), np.inf, ranks), kind="stable") if not np.isnan(ranks[r])
    ]
    fresh = [r for r in rows if r not in taken][: min(slots, k)]
    if not fresh:
        return order, []
    keep = order.tolist()[: max(k - len(fresh), 0)]
    return np.asarray(keep + fresh, dtype=np.int64), fresh


def place_pins(order: np.ndarray, pins: list[tuple[int, str, int]], k: int) -> np.ndarray:
    """``order`` (candidate rows, best first) with each pinned row (``(row, rule, position)``,
    1-based positions) moved to its position, lowest position first, then cut at ``k``."""
    if not pins:
        return order
    pinned = {row for row, _, _ in pins}
    rows = [r for r in order.tolist() if r not in pinned]
    for row, _, position in sorted(pins, key=lambda p: p[2]):
        rows.insert(min(position - 1, len(rows)), row)
    return np.asarray(rows[:k], dtype=np.int64)


def top_contributions(row: np.ndarray, features: list[str], n: int = 3) -> list[dict[str, float]]:
    """The ``n`` features that moved this item's score most (LightGBM ``pred_contrib``; last column is the bias)."""
    values = row[:-1]
    order = np.argsort(-np.abs(values))[:n]
    return [{"feature": features[j], "contribution": round(float(values[j]), 6)} for j in order if values[j] != 0]
