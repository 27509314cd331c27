"""The ranker's features: one list, one order, one computation for training rows and live requests.

Training builds :class:`RankerInputs` from Feast offline rows at a fold's cutoff
(:func:`inputs_from_rows`); the scoring service builds them from the online read, the live
session and the bundle's item block. Both hand them to :func:`assemble`, which computes every
derived feature the same way and returns the float32 matrix LightGBM sees, columns in
:data:`FEATURES` order. The Feast blocks must match the ``ranker_v1`` feature service
(``tests/serving/test_feature_parity.py`` checks it against the applied registry).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from recs_pipeline.models.candidate_sources import SOURCES as CANDIDATE_SOURCES

# The candidate sources, in the ranker's column order (owned by candidate_sources.py).
SOURCES: tuple[str, ...] = CANDIDATE_SOURCES

USER_VIEW, ITEM_VIEW, CATEGORY_VIEW = "user_features", "item_features", "user_category_features"
# Numeric features of each Feast view the ranker uses, in the feature service's order.
USER_FEATURES: tuple[str, ...] = (
    *(f"{kind}_{window}" for kind in ("views", "carts", "purchases") for window in ("1h", "24h", "7d", "30d")),
    "favorites_30d",
    "distinct_items_30d",
    "sessions_30d",
    "cart_rate_30d",
    "purchase_rate_30d",
    "seconds_since_last_event",
    "top_category_share",
    "avg_price_30d",
)
ITEM_FEATURES: tuple[str, ...] = (
    "price",
    "available",
    "views_1h",
    "views_24h",
    "views_7d",
    "views_30d",
    "carts_24h",
    "carts_7d",
    "carts_30d",
    "purchases_24h",
    "purchases_7d",
    "purchases_30d",
    "distinct_users_7d",
    "cart_rate_30d",
    "purchase_rate_30d",
    "trend_24h_vs_7d",
    "seconds_since_last_event",
)
# hides_30d: the user's hide events (negative feedback) on the category's items.
CATEGORY_FEATURES: tuple[str, ...] = ("affinity_30d", "affinity_share_30d", "events_30d", "purchases_30d", "hides_30d")
# String features used only to derive ``in_top_category`` (and as the user x category key).
USER_TOP_CATEGORY, ITEM_CATEGORY = "top_category_id", "category_id"
# The user's own past with the candidate (interactions snapshot, or profile + session online).
HISTORY_FEATURES: tuple[str, ...] = ("ui_weight", "ui_views", "ui_carts", "ui_purchases")
SECONDS_SINCE_LAST = "ui_seconds_since_last"

FEATURES: tuple[str, ...] = (
    *(f"{s}_{x}" for s in SOURCES for x in ("score", "rank")),
    "n_sources",
    "best_rank",
    *(f"{USER_VIEW}__{f}" for f in USER_FEATURES),
    *(f"{ITEM_VIEW}__{f}" for f in ITEM_FEATURES),
    *(f"{CATEGORY_VIEW}__{f}" for f in CATEGORY_FEATURES),
    *HISTORY_FEATURES,
    SECONDS_SINCE_LAST,
    "price_vs_user_avg",
    "in_top_category",
)
_PRICE = ITEM_FEATURES.index("price")
_AVG_PRICE = USER_FEATURES.index("avg_price_30d")


@dataclass(frozen=True)
class RankerInputs:
    """Everything the ranker's features are computed from, for ``n`` (user, candidate) rows.

    Numeric blocks are float (NaN = missing); category ids are object arrays (None = missing).

    Attributes
    ----------
    source_scores, source_ranks : (n, len(SOURCES))
        Each source's score and 1-based rank for the candidate; NaN where it did not propose it.
    user : (n, len(USER_FEATURES))
        The user's snapshot features, repeated per row.
    user_top_category : (n,)
        The user's favourite category.
    item : (n, len(ITEM_FEATURES))
        The candidate's item features.
    item_category : (n,)
        The candidate's category.
    category : (n, len(CATEGORY_FEATURES))
        The user's affinity for the candidate's category.
    history : (n, len(HISTORY_FEATURES))
        The user's decayed weight and view, cart and purchase counts with the candidate; NaN when none.
    seconds_since_last : (n,)
        Seconds from the user's last interaction with the candidate to the reference time; NaN when none.
    """

    source_scores: np.ndarray
    source_ranks: np.ndarray
    user: np.ndarray
    user_top_category: np.ndarray
    item: np.ndarray
    item_category: np.ndarray
    category: np.ndarray
    history: np.ndarray
    seconds_since_last: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.source_scores)
        shapes = {
            "source_scores": (self.source_scores, len(SOURCES)),
            "source_ranks": (self.source_ranks, len(SOURCES)),
            "user": (self.user, len(USER_FEATURES)),
            "item": (self.item, len(ITEM_FEATURES)),
            "category": (self.category, len(CATEGORY_FEATURES)),
            "history": (self.history, len(HISTORY_FEATURES)),
        }
        for name, (array, width) in shapes.items():
            if array.shape != (n, width):
                raise ValueError(f"RankerInputs.{name} has shape {array.shape}, expected {(n, width)}")
        for name in ("user_top_category", "item_category", "seconds_since_last"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"RankerInputs.{name} has {len(getattr(self, name))} rows, expected {n}")


def assemble(inputs: RankerInputs) -> np.ndarray:
    """The ranker's input matrix: float32, one row per candidate, columns in :data:`FEATURES` order.

    Derived features: ``n_sources`` (sources that proposed the item), ``best_rank`` (its best rank
    over them), ``price_vs_user_avg`` (item price / the user's 30-day average price paid or
    viewed; NaN or inf as IEEE division gives them) and ``in_top_category`` (1 when the item's
    category is the user's favourite, NaN when either is unknown).
    """
    n = len(inputs.source_scores)
    proposed = ~np.isnan(inputs.source_ranks)
    n_sources = proposed.sum(axis=1).astype(np.float64)
    best_rank = np.where(proposed, inputs.source_ranks, np.inf).min(axis=1, initial=np.inf)
    best_rank[np.isinf(best_rank)] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        price_ratio = inputs.item[:, _PRICE].astype(np.float64) / inputs.user[:, _AVG_PRICE].astype(np.float64)
    known = np.array(
        [a is not None and b is not None for a, b in zip(inputs.item_category, inputs.user_top_category, strict=True)],
        dtype=bool,
    )
    same = np.array(
        [a == b for a, b in zip(inputs.item_category, inputs.user_top_category, strict=True)], dtype=np.float64
    )
    in_top = np.where(known, same, np.nan)
    out = np.empty((n, len(FEATURES)), dtype=np.float32)
    s = len(SOURCES)
    out[:, 0 : 2 * s : 2] = inputs.source_scores
    out[:, 1 : 2 * s : 2] = inputs.source_ranks
    col = 2 * s
    for block in (
        n_sources[:, None],
        best_rank[:, None],
        inputs.user,
        inputs.item,
        inputs.category,
        inputs.history,
        np.asarray(inputs.seconds_since_last, dtype=np.float64)[:, None],
        price_ratio[:, None],
        in_top[:, None],
    ):
        out[:, col : col + block.shape[1]] = block
        col += block.shape[1]
    return out


def _block(rows: pl.DataFrame, columns: Sequence[str]) -> np.ndarray:
    return rows.select(pl.col(c).cast(pl.Float64) for c in columns).to_numpy().astype(np.float64)


def inputs_from_rows(rows: pl.DataFrame) -> RankerInputs:
    """Inputs of training (or batch-scoring) rows: merged candidates joined with Feast offline features.

    ``rows`` has the merge's ``<source>_score`` / ``<source>_rank`` columns, Feast's
    ``<view>__<feature>`` columns (full feature names) and the history columns
    (:data:`HISTORY_FEATURES`, :data:`SECONDS_SINCE_LAST`; null when the user never touched the item).
    """
    missing = [
        c
        for c in (
            *(f"{s}_{x}" for s in SOURCES for x in ("score", "rank")),
            *(f"{USER_VIEW}__{f}" for f in (*USER_FEATURES, USER_TOP_CATEGORY)),
            *(f"{ITEM_VIEW}__{f}" for f in (*ITEM_FEATURES, ITEM_CATEGORY)),
            *(f"{CATEGORY_VIEW}__{f}" for f in CATEGORY_FEATURES),
            *HISTORY_FEATURES,
            SECONDS_SINCE_LAST,
        )
        if c not in rows.columns
    ]
    if missing:
        raise ValueError(f"ranking rows lack columns {missing}")
    return RankerInputs(
        source_scores=_block(rows, [f"{s}_score" for s in SOURCES]),
        source_ranks=_block(rows, [f"{s}_rank" for s in SOURCES]),
        user=_block(rows, [f"{USER_VIEW}__{f}" for f in USER_FEATURES]),
        user_top_category=np.asarray(rows[f"{USER_VIEW}__{USER_TOP_CATEGORY}"].to_list(), dtype=object),
        item=_block(rows, [f"{ITEM_VIEW}__{f}" for f in ITEM_FEATURES]),
        item_category=np.asarray(rows[f"{ITEM_VIEW}__{ITEM_CATEGORY}"].to_list(), dtype=object),
        category=_block(rows, [f"{CATEGORY_VIEW}__{f}" for f in CATEGORY_FEATURES]),
        history=_block(rows, list(HISTORY_FEATURES)),
        seconds_since_last=rows[SECONDS_SINCE_LAST].cast(pl.Float64).fill_null(np.nan).to_numpy(),
    )


def feature_frame(matrix: np.ndarray) -> pl.DataFrame:
    """The assembled matrix as Float32 columns named after :data:`FEATURES` (for the rows on disk)."""
    return pl.DataFrame(
        {name: pl.Series(name, matrix[:, j], dtype=pl.Float32, nan_to_null=False) for j, name in enumerate(FEATURES)}
    )


def matrix_of(rows: pl.DataFrame, features: Sequence[str] = FEATURES) -> np.ndarray:
    """The float32 feature matrix stored in ranking rows (columns ``features``, :data:`FEATURES` by default)."""
    return rows.select(features).to_numpy().astype(np.float32, copy=False)
