"""Deterministic synthetic e-commerce events with planted, documented structure.

The generator produces a catalog (:data:`~recs_pipeline.data.contract.ITEM_SCHEMA`) and a stream of
event chunks (:data:`~recs_pipeline.data.contract.EVENT_SCHEMA`) that look like a real shop: skewed
category sizes, Zipf item popularity, users with lasting category tastes, single-category sessions,
a view -> add_to_cart -> purchase funnel, an hour-of-day activity curve, users and items arriving
over time and repeat purchases of consumables. ``docs/SYNTHETIC_DATA.md`` lists every planted
parameter and what a good model should learn from it.

Design
------
* Users are partitioned over chunks: chunk ``c`` owns a contiguous block of user ids and *all* of
  their events, so cross-session structure (tastes, repeat purchases, session gaps) is generated
  inside one chunk and memory is bounded by the chunk size, whatever ``n_events`` is.
* Every random draw comes from ``np.random.default_rng([seed, stream, chunk])``; the same config
  gives byte-identical frames, and chunks can be generated independently.
* Everything is vectorised numpy; there is no per-event Python loop.

Guaranteed invariants (asserted in ``tests/data/test_synthetic.py``)
-------------------------------------------------------------------
* Each ``add_to_cart`` / ``favorite`` is preceded, in the same session, by a ``view`` of the same
  item; each ``purchase`` is preceded, in the same session, by an ``add_to_cart`` of the same item.
* Within a session consecutive events are 1 s to 25 min apart (closer only for a user squeezed
  into a span too short for their events); sessions of one user are separated by more than
  :data:`~recs_pipeline.data.contract.SESSION_GAP`, so gap-based sessionisation recovers
  ``session_id`` exactly.
* ``start <= ts < start + days``; each event's item exists in the catalog with ``updated_at <= ts``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from recs_pipeline.data import landing
from recs_pipeline.data.contract import (
    AVAILABLE,
    CATEGORY_ID,
    EVENT_COLUMNS,
    EVENT_ID,
    EVENT_SCHEMA,
    EVENT_TYPE,
    EVENT_TYPES,
    ITEM_COLUMNS,
    ITEM_ID,
    ITEM_SCHEMA,
    PRICE,
    SESSION_GAP,
    SESSION_ID,
    TS,
    UPDATED_AT,
    USER_ID,
)

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Planted parameters. docs/SYNTHETIC_DATA.md quotes these; keep the two in step.
# --------------------------------------------------------------------------------------------

# Default sizes derived from n_events.
EVENTS_PER_USER = 75
EVENTS_PER_ITEM = 30
MIN_USERS, MAX_USERS = 200, 2_000_000
MIN_ITEMS, MAX_ITEMS = 200, 2_000_000
MIN_CATEGORIES, MAX_CATEGORIES = 5, 400

# Catalog.
CATEGORY_SIZE_EXPONENT = 0.9  # category size weight ~ (rank + 1) ** -0.9
CATEGORY_ZIPF_RANGE = (1.05, 1.30)  # item popularity within a category ~ (rank + 1) ** -alpha
CONSUMABLE_CATEGORY_SHARE = 0.2
NEW_ITEM_SHARE = 0.12  # items introduced during the window (never a category's top item)
UNAVAILABLE_SHARE = 0.04
PRICE_MEDIAN = 25.0
PRICE_CATEGORY_SIGMA = 0.8
PRICE_ITEM_SIGMA = 0.4

# Users.
INITIAL_USER_SHARE = 0.4  # users present from `start`; the rest arrive uniformly over the window
ACTIVITY_SIGMA = 1.25  # log-normal activity weight -> heavy-tailed events per user
FAVOURITE_COUNT_PROBS = (0.4, 0.35, 0.25)  # P(1, 2, 3 favourite categories)
FAVOURITE_WEIGHTS = (0.6, 0.27, 0.13)  # share of a user's sessions among their favourites
STAPLE_USER_SHARE = 0.12  # users with a consumable staple item they re-buy
REPLENISH_SESSION_SHARE = 0.25  # share of a staple user's sessions (>= 3 events) that re-buy it

# Sessions.
MEAN_SESSION_EVENTS = 6.5  # sessions per user ~ 1 + Binomial(events - 1, 1 / 6.5)
EXPLORE_SESSION_SHARE = 0.15  # sessions focused on a random (popularity-weighted) category
P_TRENDING = 0.03  # new-item view: an item launched in the previous TRENDING_DAYS
TRENDING_DAYS = 7
P_OFF_CATEGORY = 0.07  # new-item view outside the session's category
P_NEIGHBOUR = 0.40  # new-item view of a "similar" item (catalog neighbour of the session anchor)
NEIGHBOUR_RADIUS = 3
P_REVIEW = 0.25  # a view re-views an item seen earlier in the session

# Funnel (per event after the first of a session).
P_CART = 0.062
P_FAVORITE = 0.012
P_CONVERT = 0.38  # a cart is followed by a purchase of the item later in the session

# Time.
HOURLY_ACTIVITY = np.array(
    [0.45, 0.30, 0.22, 0.18, 0.18, 0.25, 0.45, 0.70, 0.90, 1.00, 1.05, 1.10,
     1.20, 1.15, 1.05, 1.00, 1.05, 1.15, 1.40, 1.75, 2.00, 1.95, 1.55, 0.90],
)  # fmt: skip
HOURLY_ACTIVITY = HOURLY_ACTIVITY / HOURLY_ACTIVITY.mean()  # UTC hour of day, mean 1
GAP_MEDIAN_S = {"view": 22.0, "add_to_cart": 12.0, "purchase": 45.0, "favorite": 8.0}
GAP_SIGMA = 1.0
MIN_GAP_S = 1.0
MAX_GAP_S = 25 * 60.0
SESSION_BREAK_S = SESSION_GAP.total_seconds() + 1.0  # minimum idle time between sessions

_VIEW, _CART, _PURCHASE, _FAVORITE = (EVENT_TYPES.index(t) for t in ("view", "add_to_cart", "purchase", "favorite"))
_GAP_MEDIAN = np.array([GAP_MEDIAN_S[t] for t in EVENT_TYPES])
_CATALOG_STREAM = 0
_EVENT_STREAM = 1
_US = 1_000_000
_DAY_S = 86_400.0
_CAP_SECONDS_PER_EVENT = 300.0  # events per user <= active span / (peak activity * this)


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate.

    Parameters
    ----------
    n_events : int
        Total number of events over all chunks.
    seed : int
        Seed of every random draw; the same config always gives the same output.
    start : datetime
        Timezone-aware start of the window; events fall in ``[start, start + days)``.
    days : int
        Window length in days.
    n_users : int or None
        Number of users (each gets at least one event). ``None`` derives it from ``n_events``
        (about one user per 75 events, clamped to [200, 2,000,000] and to ``n_events``).
    n_items : int or None
        Catalog size. ``None``: about one item per 30 events, clamped to [200, 2,000,000].
    n_categories : int or None
        Number of categories. ``None``: ``sqrt(n_items) / 2`` clamped to [5, 400].
    chunk_events : int
        Upper bound on rows per yielded chunk (and on generation memory).
    """

    n_events: int = 100_000
    seed: int = 7
    start: datetime = datetime(2026, 9, 1, tzinfo=UTC)
    days: int = 60
    n_users: int | None = None
    n_items: int | None = None
    n_categories: int | None = None
    chunk_events: int = 1_000_000

    def __post_init__(self) -> None:
        """Validate the fields; raise ``ValueError`` with the offending name and value."""

        def _int(name: str, value: object, minimum: int) -> None:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an int, got {value!r}")
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value}")

        _int("n_events", self.n_events, 1)
        _int("seed", self.seed, 0)
        _int("days", self.days, 1)
        _int("chunk_events", self.chunk_events, 1)
        if not isinstance(self.start, datetime) or self.start.tzinfo is None:
            raise ValueError(f"start must be a timezone-aware datetime, got {self.start!r}")
        if self.n_items is not None:
            _int("n_items", self.n_items, 1)
        if self.n_categories is not None:
            _int("n_categories", self.n_categories, 1)
            if self.n_categories > self.item_count:
                raise ValueError(
                    f"n_categories ({self.n_categories}) must not exceed the number of items ({self.item_count})"
                )
        if self.n_users is not None:
            _int("n_users", self.n_users, 1)
            if self.n_users > self.n_events:
                raise ValueError(f"n_users ({self.n_users}) must not exceed n_events ({self.n_events})")
            if self.n_users < self.chunk_count:
                raise ValueError(
                    f"n_users ({self.n_users}) must be at least the number of chunks ({self.chunk_count}); "
                    "raise chunk_events or n_users"
                )

    @property
    def chunk_count(self) -> int:
        """Number of event chunks (sizes differ by at most one, each ``<= chunk_events``)."""
        return math.ceil(self.n_events / self.chunk_events)

    @property
    def user_count(self) -> int:
        """``n_users``, or the value derived from ``n_events``."""
        if self.n_users is not None:
            return self.n_users
        derived = min(max(self.n_events // EVENTS_PER_USER, MIN_USERS), MAX_USERS)
        return min(max(derived, self.chunk_count), self.n_events)

    @property
    def item_count(self) -> int:
        """``n_items``, or the value derived from ``n_events``."""
        if self.n_items is not None:
            return self.n_items
        return min(max(self.n_events // EVENTS_PER_ITEM, MIN_ITEMS), MAX_ITEMS)

    @property
    def category_count(self) -> int:
        """``n_categories``, or the value derived from the item count."""
        if self.n_categories is not None:
            return self.n_categories
        derived = min(max(round(math.sqrt(self.item_count) / 2), MIN_CATEGORIES), MAX_CATEGORIES)
        return min(derived, self.item_count)

    @property
    def end(self) -> datetime:
        """Exclusive end of the event window."""
        return self.start + timedelta(days=self.days)


@dataclass(frozen=True)
class SyntheticSummary:
    """What :func:`write_synthetic` landed.

    Parameters
    ----------
    n_events, n_users, n_items, n_categories : int
        Counts actually generated (every user has at least one event).
    files : tuple of Path
        Landed files: the catalog first, then the event chunks in order.
    first_ts, last_ts : datetime
        Earliest and latest event timestamp (UTC).
    """

    n_events: int
    n_users: int
    n_items: int
    n_categories: int
    files: tuple[Path, ...]
    first_ts: datetime
    last_ts: datetime


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _to_us(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds


def _group_cumsum(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum restarting at every group (groups are contiguous, non-empty)."""
    total = np.cumsum(values)
    before = total[starts] - values[starts]
    return total - np.repeat(before, lengths)


def _zipf_rank(rng: np.random.Generator, size: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Rank in ``[0, size)`` with P(rank) roughly proportional to ``(rank + 1) ** -alpha`` (alpha > 1)."""
    u = rng.random(len(size))
    one_minus = 1.0 - alpha
    x = (1.0 + u * ((size + 1.0) ** one_minus - 1.0)) ** (1.0 / one_minus)
    return np.clip(np.floor(x).astype(np.int64) - 1, 0, size - 1)


@dataclass(frozen=True)
class _Clock:
    """Hour-of-day time warp.

    Session starts are laid out in *activity time* tau (seconds, advancing at the hourly activity
    rate) and mapped to real time by the inverse warp, so more sessions start at busy hours. Real
    times are seconds since midnight UTC of the start day. The warp's slope is at least
    ``1 / peak``, so a gap of ``peak * x`` in activity time is at least ``x`` in real time.
    """

    midnight_us: int
    w0: float
    w1: float
    peak: float
    knots_real: np.ndarray
    knots_tau: np.ndarray

    @classmethod
    def for_config(cls, config: SyntheticConfig) -> _Clock:
        start = config.start.astimezone(UTC)
        midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
        w0 = (start - midnight).total_seconds()
        knots_tau = np.concatenate([[0.0], np.cumsum(HOURLY_ACTIVITY) * 3600.0])
        return cls(
            midnight_us=_to_us(midnight),
            w0=w0,
            w1=w0 + config.days * _DAY_S,
            peak=float(HOURLY_ACTIVITY.max()),
            knots_real=np.arange(25, dtype=np.float64) * 3600.0,
            knots_tau=knots_tau,
        )

    def tau(self, real: np.ndarray) -> np.ndarray:
        day = np.floor(real / _DAY_S)
        return day * _DAY_S + np.interp(real - day * _DAY_S, self.knots_real, self.knots_tau)

    def real(self, tau: np.ndarray) -> np.ndarray:
        day = np.floor(tau / _DAY_S)
        return day * _DAY_S + np.interp(tau - day * _DAY_S, self.knots_tau, self.knots_real)


@dataclass(frozen=True)
class _Catalog:
    """Catalog arrays. Items live in *slots* grouped by category; slot neighbours are "similar"."""

    n_categories: int
    cat_offset: np.ndarray  # (n_categories + 1,) first slot of each category
    cat_size: np.ndarray
    cat_cdf: np.ndarray  # cumulative category popularity (tastes, exploration)
    cat_alpha: np.ndarray  # Zipf exponent per category
    consumable_cdf: np.ndarray  # cumulative popularity over consumable categories only
    consumable_ids: np.ndarray
    rank_slot: np.ndarray  # slot of the item with popularity rank r in category c: [cat_offset[c] + r]
    slot_item: np.ndarray  # item number of each slot
    slot_category: np.ndarray
    slot_intro_us: np.ndarray  # introduction time (updated_at) of each slot's item
    item_category: np.ndarray  # by item number
    item_intro_us: np.ndarray
    price: np.ndarray
    available: np.ndarray
    launch_us: np.ndarray  # introduction times of new items, sorted
    launch_slot: np.ndarray

    @property
    def n_items(self) -> int:
        return len(self.slot_item)


def _build_catalog(config: SyntheticConfig) -> _Catalog:
    rng = np.random.default_rng([config.seed, _CATALOG_STREAM])
    n_items, n_cat = config.item_count, config.category_count
    start_us, window_us = _to_us(config.start), config.days * 86_400 * _US

    size_weight = rng.permutation((np.arange(n_cat) + 1.0) ** -CATEGORY_SIZE_EXPONENT)
    cat_size = 1 + rng.multinomial(n_items - n_cat, size_weight / size_weight.sum())
    cat_offset = np.concatenate([[0], np.cumsum(cat_size)]).astype(np.int64)
    popularity = cat_size**0.8 * rng.lognormal(0.0, 0.35, n_cat)
    cat_cdf = np.cumsum(popularity) / popularity.sum()
    cat_alpha = rng.uniform(*CATEGORY_ZIPF_RANGE, n_cat)
    n_consumable = max(1, round(CONSUMABLE_CATEGORY_SHARE * n_cat))
    consumable_ids = np.sort(rng.choice(n_cat, n_consumable, replace=False))
    consumable = np.zeros(n_cat, dtype=bool)
    consumable[consumable_ids] = True
    consumable_cdf = np.cumsum(popularity[consumable_ids]) / popularity[consumable_ids].sum()

    slot_category = np.repeat(np.arange(n_cat), cat_size)
    rank_slot = np.lexsort((rng.random(n_items), slot_category)).astype(np.int64)
    slot_item = rng.permutation(n_items).astype(np.int64)
    item_slot = np.empty(n_items, dtype=np.int64)
    item_slot[slot_item] = np.arange(n_items)

    # New items: any slot but a category's most popular one (the availability fallback).
    is_new = rng.random(n_items) < NEW_ITEM_SHARE
    is_new[rank_slot[cat_offset[:-1]]] = False
    intro_offset = (rng.random(n_items) * 0.95 * window_us).astype(np.int64) // _US * _US
    slot_intro_us = np.where(is_new, start_us + intro_offset, start_us)
    launch_slot = np.flatnonzero(is_new)
    launch_order = np.argsort(slot_intro_us[launch_slot], kind="stable")
    launch_slot = launch_slot[launch_order]

    level = np.log(PRICE_MEDIAN) + rng.normal(0.0, PRICE_CATEGORY_SIGMA, n_cat) - 0.8 * consumable
    slot_price = np.maximum(np.round(np.exp(level[slot_category] + rng.normal(0.0, PRICE_ITEM_SIGMA, n_items)), 2), 0.5)
    slot_available = rng.random(n_items) >= UNAVAILABLE_SHARE

    return _Catalog(
        n_categories=n_cat,
        cat_offset=cat_offset,
        cat_size=cat_size.astype(np.int64),
        cat_cdf=cat_cdf,
        cat_alpha=cat_alpha,
        consumable_cdf=consumable_cdf,
        consumable_ids=consumable_ids,
        rank_slot=rank_slot,
        slot_item=slot_item,
        slot_category=slot_category,
        slot_intro_us=slot_intro_us,
        item_category=slot_category[item_slot],
        item_intro_us=slot_intro_us[item_slot],
        price=slot_price[item_slot],
        available=slot_available[item_slot],
        launch_us=slot_intro_us[launch_slot],
        launch_slot=launch_slot,
    )


def _draw_categories(rng: np.random.Generator, cdf: np.ndarray, shape: int | tuple[int, ...]) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(shape), side="right"), len(cdf) - 1)


def _popular_slot(rng: np.random.Generator, cat: _Catalog, categories: np.ndarray) -> np.ndarray:
    ranks = _zipf_rank(rng, cat.cat_size[categories], cat.cat_alpha[categories])
    return cat.rank_slot[cat.cat_offset[categories] + ranks]


def _existing_slot(
    rng: np.random.Generator, cat: _Catalog, slots: np.ndarray, categories: np.ndarray, ts_us: np.ndarray
) -> np.ndarray:
    """Replace slots whose item is not introduced yet at ``ts_us`` (redraw, then the category's top item)."""
    slots = slots.copy()
    bad = np.flatnonzero(cat.slot_intro_us[slots] > ts_us)
    for _ in range(4):
        if len(bad) == 0:
            return slots
        slots[bad] = _popular_slot(rng, cat, categories[bad])
        bad = bad[cat.slot_intro_us[slots[bad]] > ts_us[bad]]
    slots[bad] = cat.rank_slot[cat.cat_offset[categories[bad]]]
    return slots


def _allocate(rng: np.random.Generator, total: int, weight: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Split ``total`` events over users: at least one each, proportional to ``weight``, at most ``cap``."""
    p = weight / weight.sum()
    counts = 1 + rng.multinomial(total - len(weight), p)
    for _ in range(30):
        excess = int(np.maximum(counts - cap, 0).sum())
        if excess == 0:
            return counts
        counts = np.minimum(counts, cap)
        room_p = np.where(counts < cap, p, 0.0)
        counts = counts + rng.multinomial(excess, room_p / room_p.sum())
    # Deterministic fallback: fill the users with the most room first.
    excess = int(np.maximum(counts - cap, 0).sum())
    counts = np.minimum(counts, cap)
    room = cap - counts
    order = np.argsort(-room, kind="stable")
    before = np.cumsum(room[order]) - room[order]
    counts[order] += np.clip(excess - before, 0, room[order])
    return counts


def _chunk_bounds(config: SyntheticConfig) -> list[tuple[int, int, int, int]]:
    """(first event index, events, first user, users) of every chunk; both split near-evenly."""
    k, n, u = config.chunk_count, config.n_events, config.user_count
    bounds = []
    for c in range(k):
        e0, e1 = c * n // k, (c + 1) * n // k
        u0, u1 = c * u // k, (c + 1) * u // k
        bounds.append((e0, e1 - e0, u0, u1 - u0))
    return bounds


# --------------------------------------------------------------------------------------------
# One chunk
# --------------------------------------------------------------------------------------------


def _generate_chunk(
    config: SyntheticConfig,
    cat: _Catalog,
    clock: _Clock,
    chunk: int,
    *,
    first_event: int,
    n_events: int,
    first_user: int,
    n_users: int,
) -> pl.DataFrame:
    rng = np.random.default_rng([config.seed, _EVENT_STREAM, chunk])
    size, n_u = n_events, n_users
    start_us, end_us = _to_us(config.start), _to_us(config.end)

    # ---- users: arrival, active span, activity, tastes, staple ------------------------------
    # Newcomers arrive uniformly in activity time, i.e. following the hour-of-day curve.
    arrives_late = rng.random(n_u) >= INITIAL_USER_SHARE
    tau_start, tau_end = clock.tau(np.array([clock.w0, clock.w1])) - np.array([0.0, 2.0 * clock.peak])
    last_arrival = max(tau_end - tau_start - 3600.0, 0.0)
    tau_first = tau_start + np.where(arrives_late, rng.random(n_u) * last_arrival, 0.0)
    first_real = clock.real(tau_first)
    span_tau = tau_end - tau_first  # activity time available to the user
    span_share = (clock.w1 - first_real) / (clock.w1 - clock.w0)
    weight = rng.lognormal(0.0, ACTIVITY_SIGMA, n_u) * np.maximum(span_share, 0.02)
    cap = np.maximum(1, np.floor(span_tau / (clock.peak * _CAP_SECONDS_PER_EVENT))).astype(np.int64)
    if cap.sum() < size:
        cap = np.ceil(cap * (size / cap.sum())).astype(np.int64) + 1
    counts = _allocate(rng, size, weight, cap)

    n_fav = 1 + _draw_categories(rng, np.cumsum(FAVOURITE_COUNT_PROBS), n_u)
    favourites = _draw_categories(rng, cat.cat_cdf, (n_u, 3))
    fav_weight = np.where(np.arange(3) < n_fav[:, None], np.array(FAVOURITE_WEIGHTS), 0.0)
    fav_cdf = np.cumsum(fav_weight, axis=1) / fav_weight.sum(axis=1, keepdims=True)

    has_staple = rng.random(n_u) < STAPLE_USER_SHARE
    fav_consumable = np.isin(favourites[:, 0], cat.consumable_ids)
    staple_cat = np.where(
        fav_consumable, favourites[:, 0], cat.consumable_ids[_draw_categories(rng, cat.consumable_cdf, n_u)]
    )
    staple_slot = _existing_slot(
        rng, cat, _popular_slot(rng, cat, staple_cat), staple_cat, np.full(n_u, start_us, dtype=np.int64)
    )

    # ---- events per user, sessions -----------------------------------------------------------
    idx = np.arange(size, dtype=np.int64)
    ev_user = np.repeat(np.arange(n_u), counts)
    user_start = np.cumsum(counts) - counts
    nth = idx - user_start[ev_user]
    # A user's n events form 1 + Binomial(n - 1, 1 / MEAN_SESSION_EVENTS) sessions, at most the
    # number whose mandatory idle time fits in half the user's span (very heavy users get longer
    # sessions); the session breaks are placed at uniformly random positions of the user's events.
    max_sessions = 1 + np.floor(0.5 * span_tau / (clock.peak * SESSION_BREAK_S)).astype(np.int64)
    n_sessions = np.minimum(1 + rng.binomial(counts - 1, 1.0 / MEAN_SESSION_EVENTS), max_sessions)
    key = 2.0 * ev_user + np.where(nth == 0, 0.0, 1.0 + rng.random(size))  # a user's first event first
    order = np.argsort(key, kind="stable")  # users stay in their blocks, shuffled inside
    rank = np.empty(size, dtype=np.int64)
    rank[order] = nth  # rank of each event in its user's shuffled block
    brk = rank < n_sessions[ev_user]
    session_nth = _group_cumsum(brk.astype(np.int64), user_start, counts) - 1
    ev_sess = np.cumsum(brk) - 1
    sess_start = np.flatnonzero(brk)
    n_sess = len(sess_start)
    sess_len = np.diff(np.append(sess_start, size))
    sess_user = ev_user[sess_start]
    sess_nth = session_nth[sess_start]
    pos = idx - sess_start[ev_sess]
    later = pos > 0

    # ---- event types and "refers to an earlier event of the session" pointers ---------------
    u = rng.random(size)
    etype = np.full(size, _VIEW, dtype=np.uint8)
    etype[later & (u < P_CART)] = _CART
    etype[later & (u >= P_CART) & (u < P_CART + P_FAVORITE)] = _FAVORITE
    ptr = idx.copy()
    back = np.minimum(rng.geometric(0.45, size), pos)  # carts/favourites: a recently seen item
    funnel = etype != _VIEW
    ptr[funnel] -= back[funnel]
    review = later & ~funnel & (rng.random(size) < P_REVIEW)
    ptr[review] = sess_start[ev_sess[review]] + np.floor(rng.random(size)[review] * pos[review]).astype(np.int64)

    # Replenish sessions of staple users open with view -> cart -> purchase of the staple.
    replenish = has_staple[sess_user] & (sess_len >= 3) & (rng.random(n_sess) < REPLENISH_SESSION_SHARE)
    rs = sess_start[replenish]
    forced = np.zeros(size, dtype=bool)
    forced[rs] = forced[rs + 1] = forced[rs + 2] = True
    etype[rs], ptr[rs] = _VIEW, rs
    etype[rs + 1], ptr[rs + 1] = _CART, rs
    etype[rs + 2], ptr[rs + 2] = _PURCHASE, rs + 1

    # Some carts convert: a later view/favourite slot of the session becomes the purchase.
    src = np.flatnonzero((etype == _CART) & ~forced & (rng.random(size) < P_CONVERT))
    tgt = src + rng.geometric(0.5, len(src))
    ok = tgt < sess_start[ev_sess[src]] + sess_len[ev_sess[src]]
    src, tgt = src[ok], tgt[ok]
    ok = ((etype[tgt] == _VIEW) | (etype[tgt] == _FAVORITE)) & ~forced[tgt]
    src, tgt = src[ok], tgt[ok]
    _, first_claim = np.unique(tgt, return_index=True)
    src, tgt = src[first_claim], tgt[first_claim]
    etype[tgt], ptr[tgt] = _PURCHASE, src

    # ---- timestamps ----------------------------------------------------------------------------
    gap = np.exp(np.log(_GAP_MEDIAN[etype]) + GAP_SIGMA * rng.standard_normal(size))
    gap = np.where(later, np.clip(gap, MIN_GAP_S, MAX_GAP_S), 0.0)
    sess_dur = np.bincount(ev_sess, weights=gap, minlength=n_sess)
    user_sessions = np.bincount(sess_user, minlength=n_u)
    idle = clock.peak * (user_sessions - 1) * SESSION_BREAK_S
    user_dur = np.bincount(sess_user, weights=sess_dur, minlength=n_u)
    squeeze = (idle + clock.peak * user_dur) > span_tau
    if squeeze.any():  # rare: a user with too much activity for their span gets faster sessions
        factor = np.ones(n_u)
        factor[squeeze] = 0.999 * (span_tau[squeeze] - idle[squeeze]) / (clock.peak * user_dur[squeeze])
        gap *= factor[ev_user]
        sess_dur = np.bincount(ev_sess, weights=gap, minlength=n_sess)
        user_dur = np.bincount(sess_user, weights=sess_dur, minlength=n_u)
    free = np.maximum(span_tau - idle - clock.peak * user_dur, 0.0)
    # Free activity time is spread over the gaps before each session and after the last one.
    user_first_sess = np.cumsum(user_sessions) - user_sessions
    slack = rng.exponential(size=n_sess)
    slack[user_first_sess[arrives_late]] = 0.0  # a newcomer's first session is at their arrival
    slack_total = np.bincount(sess_user, weights=slack, minlength=n_u) + rng.exponential(size=n_u)
    slack_cum = _group_cumsum(slack, user_first_sess, user_sessions)
    dur_before = _group_cumsum(sess_dur, user_first_sess, user_sessions) - sess_dur
    sess_tau = (
        tau_first[sess_user]
        + free[sess_user] * slack_cum / slack_total[sess_user]
        + clock.peak * (dur_before + sess_nth * SESSION_BREAK_S)
    )
    offset = _group_cumsum(gap, sess_start, sess_len)
    real = clock.real(sess_tau)[ev_sess] + offset
    ts_us = np.clip(clock.midnight_us + np.floor(real * _US).astype(np.int64), start_us, end_us - 1)

    # ---- items of "root" views (new items in the session) -------------------------------------
    which = (rng.random(n_sess)[:, None] >= fav_cdf[sess_user, :2]).sum(axis=1)
    focus = favourites[sess_user, np.minimum(which, n_fav[sess_user] - 1)]
    explore = rng.random(n_sess) < EXPLORE_SESSION_SHARE
    focus[explore] = _draw_categories(rng, cat.cat_cdf, int(explore.sum()))
    focus[replenish] = staple_cat[sess_user[replenish]]

    slot = np.full(size, -1, dtype=np.int64)
    slot[rs] = staple_slot[sess_user[replenish]]
    root = (ptr == idx) & ~forced
    mode = rng.random(size)
    anchors = np.flatnonzero(root & (pos == 0))
    others = np.flatnonzero(root & later)
    for rows, is_anchor in ((anchors, True), (others, False)):
        m = mode[rows]
        cats = focus[ev_sess[rows]].copy()
        off_cat = (m >= P_TRENDING) & (m < P_TRENDING + P_OFF_CATEGORY)
        cats[off_cat] = _draw_categories(rng, cat.cat_cdf, int(off_cat.sum()))
        picked = _popular_slot(rng, cat, cats)
        if not is_anchor:
            near = (m >= P_TRENDING + P_OFF_CATEGORY) & (m < P_TRENDING + P_OFF_CATEGORY + P_NEIGHBOUR)
            base = slot[sess_start[ev_sess[rows[near]]]]
            base_cat = cat.slot_category[base]
            step = rng.integers(1, NEIGHBOUR_RADIUS + 1, len(base)) * rng.choice([-1, 1], len(base))
            first = cat.cat_offset[base_cat]
            picked[near] = first + (base - first + step) % cat.cat_size[base_cat]
            cats[near] = base_cat
        picked = _existing_slot(rng, cat, picked, cats, ts_us[rows])
        trending = np.flatnonzero(m < P_TRENDING)
        t = ts_us[rows[trending]]
        lo = np.searchsorted(cat.launch_us, t - TRENDING_DAYS * 86_400 * _US, side="left")
        hi = np.searchsorted(cat.launch_us, t, side="right")
        has = hi > lo
        pick = lo + np.floor(rng.random(len(trending)) * (hi - lo)).astype(np.int64)
        picked[trending[has]] = cat.launch_slot[pick[has]]
        slot[rows] = picked

    # Resolve pointer chains to their root view (pointer doubling).
    root_of = ptr
    while True:
        nxt = root_of[root_of]
        if np.array_equal(nxt, root_of):
            break
        root_of = nxt
    item = cat.slot_item[slot[root_of]]

    # ---- frame ---------------------------------------------------------------------------------
    order = np.argsort(ts_us, kind="stable")  # events are laid out per user in time order
    frame = pl.DataFrame(
        {
            "e": np.arange(first_event, first_event + size, dtype=np.int64),
            "u": (first_user + ev_user[order]).astype(np.int64),
            "i": item[order],
            "s": session_nth[order],
            "ts": ts_us[order],
        }
    )
    types = pl.Series(EVENT_TYPE, EVENT_TYPES, dtype=pl.String).gather(etype[order].astype(np.uint32))
    return frame.select(
        pl.concat_str([pl.lit(f"s{config.seed}-"), pl.col("e").cast(pl.String)]).alias(EVENT_ID),
        pl.concat_str([pl.lit("u"), pl.col("u").cast(pl.String)]).alias(USER_ID),
        pl.concat_str([pl.lit("i"), pl.col("i").cast(pl.String)]).alias(ITEM_ID),
        pl.lit(types).alias(EVENT_TYPE),
        pl.col("ts").cast(EVENT_SCHEMA[TS]).alias(TS),
        pl.concat_str([pl.lit("u"), pl.col("u").cast(pl.String), pl.lit("-"), pl.col("s").cast(pl.String)]).alias(
            SESSION_ID
        ),
    ).select(EVENT_COLUMNS)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def generate_catalog(config: SyntheticConfig) -> pl.DataFrame:
    """Build the synthetic catalog, one row per item, ordered by item number.

    Parameters
    ----------
    config : SyntheticConfig
        What to generate; only ``seed``, ``start``, ``days`` and the item/category counts matter.

    Returns
    -------
    pl.DataFrame
        Exactly the :data:`~recs_pipeline.data.contract.ITEM_SCHEMA` columns. ``item_id`` is
        ``"i<k>"``, ``category_id`` ``"c<k>"``, ``price`` log-normal around a per-category level,
        ``available`` false for about 4% of items, ``updated_at`` the item's introduction time
        (``start`` for most, a time inside the window for about 12% new items).
    """
    return _catalog_frame(_build_catalog(config))


def _catalog_frame(cat: _Catalog) -> pl.DataFrame:
    n = cat.n_items
    frame = pl.DataFrame(
        {"k": np.arange(n, dtype=np.int64), "c": cat.item_category.astype(np.int64), "intro": cat.item_intro_us}
    )
    return frame.select(
        pl.concat_str([pl.lit("i"), pl.col("k").cast(pl.String)]).alias(ITEM_ID),
        pl.concat_str([pl.lit("c"), pl.col("c").cast(pl.String)]).alias(CATEGORY_ID),
        pl.lit(pl.Series(PRICE, cat.price, dtype=pl.Float64)).alias(PRICE),
        pl.lit(pl.Series(AVAILABLE, cat.available, dtype=pl.Boolean)).alias(AVAILABLE),
        pl.col("intro").cast(ITEM_SCHEMA[UPDATED_AT]).alias(UPDATED_AT),
    ).select(ITEM_COLUMNS)


def planted_item_structure(config: SyntheticConfig) -> pl.DataFrame:
    """Return the hidden catalog structure the events were generated from, for judging models.

    Parameters
    ----------
    config : SyntheticConfig
        The config the data was generated with (only the catalog-related fields matter).

    Returns
    -------
    pl.DataFrame
        One row per item: ``item_id``, ``category_id``, ``popularity_rank`` (0 = the category's
        most popular item under the planted Zipf law), ``similarity_position`` (position on the
        category's hidden "similar items" line: items at most ``NEIGHBOUR_RADIUS`` apart, cyclically
        within the category, are co-viewed in sessions) and ``consumable`` (category of re-bought
        staples).
    """
    cat = _build_catalog(config)
    slot = np.empty(cat.n_items, dtype=np.int64)
    slot[cat.slot_item] = np.arange(cat.n_items)
    rank_of_slot = np.empty(cat.n_items, dtype=np.int64)
    rank_of_slot[cat.rank_slot] = np.arange(cat.n_items) - cat.cat_offset[cat.slot_category[cat.rank_slot]]
    consumable = np.isin(cat.item_category, cat.consumable_ids)
    first_slot = cat.cat_offset[cat.item_category]
    return _catalog_frame(cat).select(
        ITEM_ID,
        CATEGORY_ID,
        pl.Series("popularity_rank", rank_of_slot[slot]),
        pl.Series("similarity_position", slot - first_slot),
        pl.Series("consumable", consumable),
    )


def _events(config: SyntheticConfig, cat: _Catalog) -> Iterator[pl.DataFrame]:
    clock = _Clock.for_config(config)
    for chunk, (e0, ne, u0, nu) in enumerate(_chunk_bounds(config)):
        frame = _generate_chunk(config, cat, clock, chunk, first_event=e0, n_events=ne, first_user=u0, n_users=nu)
        logger.debug("synthetic chunk %d: %d events, %d users", chunk, ne, nu)
        yield frame


def generate_events(config: SyntheticConfig) -> Iterator[pl.DataFrame]:
    """Yield the synthetic events chunk by chunk.

    Parameters
    ----------
    config : SyntheticConfig
        What to generate.

    Yields
    ------
    pl.DataFrame
        Chunks of at most ``config.chunk_events`` rows with exactly the
        :data:`~recs_pipeline.data.contract.EVENT_SCHEMA` columns, sorted by ``ts``. Chunk ``c``
        holds every event of its own block of users (so chunks overlap in time); over all chunks
        there are exactly ``config.n_events`` rows. ``event_id`` is ``"s<seed>-<index>"``,
        ``user_id`` ``"u<k>"``, ``item_id`` ``"i<k>"`` (from :func:`generate_catalog` of the same
        config), ``session_id`` ``"u<k>-<n>"`` (the user's n-th session).

    Notes
    -----
    Only one chunk is in memory at a time; the same config always yields identical frames.
    """
    cat = _build_catalog(config)
    logger.info(
        "generating %d synthetic events (%d users, %d items, %d categories, seed %d)",
        config.n_events, config.user_count, cat.n_items, cat.n_categories, config.seed,
    )  # fmt: skip
    yield from _events(config, cat)


def write_synthetic(
    config: SyntheticConfig,
    landing_dir: Path,
    *,
    progress: Callable[[int], object] | None = None,
) -> SyntheticSummary:
    """Generate the catalog and events and land them atomically.

    Parameters
    ----------
    config : SyntheticConfig
        What to generate.
    landing_dir : Path
        Landing zone root; files go to ``items/catalog-<seed>.parquet`` and
        ``events/synthetic-<seed>-<chunk:05d>.parquet`` (existing files of the same name are
        replaced, so re-running a config is idempotent).
    progress : callable, optional
        Called with the number of rows after each event chunk is landed.

    Returns
    -------
    SyntheticSummary
        Counts, landed files and the event time range.
    """
    landing_dir = Path(landing_dir)
    cat = _build_catalog(config)
    files = [landing.land_frame(_catalog_frame(cat), landing_dir, "items", f"catalog-{config.seed}.parquet")]
    logger.info("landed synthetic catalog: %d items in %d categories", cat.n_items, cat.n_categories)
    lows: list[datetime] = []
    highs: list[datetime] = []
    total = 0
    for chunk, frame in enumerate(_events(config, cat)):
        name = f"synthetic-{config.seed}-{chunk:05d}.parquet"
        files.append(landing.land_frame(frame, landing_dir, "events", name))
        lo, hi = frame.select(pl.col(TS).min().alias("lo"), pl.col(TS).max().alias("hi")).row(0)
        lows.append(lo)
        highs.append(hi)
        total += frame.height
        if progress is not None:
            progress(frame.height)
    logger.info("landed %d synthetic events in %d files", total, len(files) - 1)
    return SyntheticSummary(
        n_events=total,
        n_users=config.user_count,
        n_items=cat.n_items,
        n_categories=cat.n_categories,
        files=tuple(files),
        first_ts=min(lows),
        last_ts=max(highs),
    )
