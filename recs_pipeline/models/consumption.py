"""Which items a user has already consumed, and so must not be recommended again.

One rule for training, evaluation and serving: retrieval excludes a user's consumed items from every
source (:func:`~recs_pipeline.models.retrieval.retrieve`'s ``exclude``), so the ranker trains on,
the evaluation judges and the service ranks the same candidate sets, and every baseline is held to
the same rule. What may repeat (views in e-commerce, say) is left to the ranker, which sees the
user's history with each candidate and learns the repeat propensity.

An item is consumed when the user has an event of one of the policy's ``event_types`` with it and
the user's last interaction with the item is at most ``window_days`` old (``None``: ever).

The policy is per deployment: set it with ``RECS_CONSUMED_EVENT_TYPES`` (and
``RECS_CONSUMED_WINDOW_DAYS``), or leave it ``auto`` to choose it from the data at training:
an event type is consuming when items the user had that event with make up less than
``REPEAT_FLOOR`` of the (user, item) pairs of the next interactions (the train fold's label
window). Excluding them can then lose at most that share of what users do next, while every slot
they would take goes to something new. The chosen policy and the measured repeat shares are recorded in
the bundle's recipe; serving uses the bundle's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from recs_pipeline.data.contract import EVENT_TYPE, ITEM_ID, USER_ID
from recs_pipeline.models.protocol import Fold, history, labels

# Event types a policy may name, with the history count column that records each.
COUNT_OF = {"view": "views", "add_to_cart": "carts", "purchase": "purchases"}
REPEAT_FLOOR = 0.01
AUTO = "auto"


@dataclass(frozen=True)
class ConsumedPolicy:
    """Event types that consume an item, for how long, and how the policy was chosen."""

    event_types: tuple[str, ...] = ("purchase",)
    window_days: float | None = None
    chosen_by: str = "settings"
    repeat_shares: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.event_types) - set(COUNT_OF)
        if unknown:
            raise ValueError(f"consumed event types must be among {sorted(COUNT_OF)}, got {sorted(unknown)}")
        if self.window_days is not None and self.window_days <= 0:
            raise ValueError(f"the consumed window must be positive days or None (ever), got {self.window_days}")

    def consumed(
        self, *, views: np.ndarray, carts: np.ndarray, purchases: np.ndarray, last_ts: np.ndarray, reference: np.ndarray
    ) -> np.ndarray:
        """Per history entry (aligned arrays; times in unix seconds): is the item consumed?"""
        counts = {"views": views, "carts": carts, "purchases": purchases}
        hit = np.zeros(len(last_ts), dtype=bool)
        for event_type in self.event_types:
            hit |= np.asarray(counts[COUNT_OF[event_type]]) > 0
        if self.window_days is not None:
            hit &= np.asarray(reference) - np.asarray(last_ts) <= self.window_days * 86400.0
        return hit

    def to_json(self) -> dict[str, Any]:
        return {
            "event_types": list(self.event_types),
            "window_days": self.window_days,
            "chosen_by": self.chosen_by,
            "repeat_shares": dict(self.repeat_shares),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ConsumedPolicy:
        return cls(
            event_types=tuple(raw["event_types"]),
            window_days=None if raw["window_days"] is None else float(raw["window_days"]),
            chosen_by=str(raw.get("chosen_by", "settings")),
            repeat_shares={k: float(v) for k, v in dict(raw.get("repeat_shares", {})).items()},
        )


def parse_event_types(text: str) -> tuple[str, ...] | None:
    """``RECS_CONSUMED_EVENT_TYPES``: ``auto`` -> None (choose from data), ``none`` -> (), else a list."""
    text = text.strip().lower()
    if text == AUTO:
        return None
    if text in ("none", ""):
        return ()
    types = tuple(t.strip() for t in text.split(",") if t.strip())
    ConsumedPolicy(event_types=types)  # validates
    return types


def repeat_shares(events: pl.DataFrame, fold: Fold) -> dict[str, float]:
    """Per event type: the share of the fold's label (user, item) pairs whose item the user had that
    event with before the cutoff."""
    targets = labels(events, fold).select(USER_ID, ITEM_ID).unique()
    past = history(events, fold).select(USER_ID, ITEM_ID, EVENT_TYPE).unique()
    n = targets.height
    shares = {}
    for event_type in COUNT_OF:
        seen = past.filter(pl.col(EVENT_TYPE) == event_type).select(USER_ID, ITEM_ID)
        repeats = targets.join(seen, on=[USER_ID, ITEM_ID], how="semi").height
        shares[event_type] = repeats / n if n else 0.0
    return shares


def choose_policy(
    events: pl.DataFrame, fold: Fold, *, event_types: Sequence[str] | None, window_days: float | None
) -> ConsumedPolicy:
    """The deployment's policy: the configured event types, or (``None``) those whose repeats are
    rarer than ``REPEAT_FLOOR`` in ``fold`` (the train fold: chosen before validation and test)."""
    shares = repeat_shares(events, fold)
    if event_types is not None:
        return ConsumedPolicy(tuple(event_types), window_days, "settings", shares)
    rare = tuple(t for t, share in shares.items() if share < REPEAT_FLOOR)
    return ConsumedPolicy(rare, window_days, "data", shares)


def consumed_matrix(
    policy: ConsumedPolicy,
    *,
    rows: np.ndarray,
    item_pos: np.ndarray,
    views: np.ndarray,
    carts: np.ndarray,
    purchases: np.ndarray,
    last_ts: np.ndarray,
    reference: np.ndarray | float,
    shape: tuple[int, int],
) -> sp.csr_matrix:
    """Users x items, True where consumed; history entries whose item is not in the index
    (``item_pos`` < 0) are left out. ``reference`` is per entry or one time for all."""
    hit = policy.consumed(
        views=views,
        carts=carts,
        purchases=purchases,
        last_ts=last_ts,
        reference=np.broadcast_to(np.asarray(reference, dtype=np.float64), np.shape(last_ts)),
    ) & (item_pos >= 0)
    return sp.csr_matrix((np.ones(int(hit.sum()), dtype=bool), (rows[hit], item_pos[hit])), shape=shape)
