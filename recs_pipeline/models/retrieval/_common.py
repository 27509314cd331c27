"""What every candidate source shares: column names, schemas, checks, the item index and top-n.

Every source ranks by score descending, then item id ascending, so ties are broken the same way
everywhere. The :class:`ItemIndex` gives every item one integer position (its rank in sorted id
order), so "item id ascending" and "index ascending" are the same order and array code can break
ties by index.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import datetime

import numpy as np
import polars as pl
from threadpoolctl import ThreadpoolController

from recs_pipeline.data.contract import EVENT_TYPE, ITEM_ID, USER_ID

WEIGHT = "weight"
SCORE = "score"
RANK = "rank"
NEIGHBOR_ID = "neighbor_id"
SOURCES = "sources"
N_SOURCES = "n_sources"
BEST_RANK = "best_rank"

CANDIDATE_SCHEMA: dict[str, pl.DataType] = {
    USER_ID: pl.String(),
    ITEM_ID: pl.String(),
    SCORE: pl.Float64(),
    RANK: pl.Int32(),
}
NEIGHBOR_SCHEMA: dict[str, pl.DataType] = {
    ITEM_ID: pl.String(),
    NEIGHBOR_ID: pl.String(),
    SCORE: pl.Float64(),
    RANK: pl.Int32(),
}

DEFAULT_TYPE_WEIGHTS: Mapping[str, float] = {"view": 1.0, "add_to_cart": 3.0, "purchase": 6.0, "favorite": 2.0}

ALS_FACTORS_FILE = "als_factors.npz"
ALS_IDS_FILE = "als_ids.json"
ALS_SEEN_FILE = "als_seen.npz"
COVIS_FILE = "covis.parquet"
POPULARITY_FILE = "popularity.parquet"
TRENDING_FILE = "trending.parquet"
CATEGORY_POPULARITY_FILE = "category_popularity.parquet"
ITEM_CATEGORIES_FILE = "item_categories.parquet"


_BLAS: ThreadpoolController | None = None


def one_blas_thread() -> contextlib.AbstractContextManager:
    """BLAS limited to one thread within the block.

    threadpoolctl's ``threadpool_limits`` inspects every loaded library on each call (about 2 ms,
    measured: a third of a recommendation request); the controller here inspects them once per
    process and only switches the limit.
    """
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def require_columns(frame: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} is missing columns {missing}; has {frame.columns}")


def rank_within(frame: pl.DataFrame, key: str, item: str, *, n: int | None) -> pl.DataFrame:
    """Sort by ``key``, score descending, ``item`` ascending; add 1-based ``rank`` per key; keep ``rank <= n``."""
    ranked = frame.sort([key, SCORE, item], descending=[False, True, False]).with_columns(
        (pl.int_range(pl.len()).over(key) + 1).cast(pl.Int32).alias(RANK)
    )
    return ranked if n is None else ranked.filter(pl.col(RANK) <= n)


def rank_items(frame: pl.DataFrame) -> pl.DataFrame:
    """Rank a global (item_id, score) list: score descending, then item_id."""
    return (
        frame.sort([SCORE, ITEM_ID], descending=[True, False])
        .with_row_index(RANK, offset=1)
        .select(pl.col(ITEM_ID), pl.col(SCORE), pl.col(RANK).cast(pl.Int32))
    )


def check_n(n: int) -> None:
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")


def check_as_of(as_of: datetime) -> None:
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware (UTC)")


def weighted_events(events: pl.DataFrame, type_weights: Mapping[str, float]) -> pl.DataFrame:
    """Events with a ``weight`` column from their type; event types not in ``type_weights`` are dropped."""
    weights = pl.DataFrame(
        {EVENT_TYPE: list(type_weights), WEIGHT: [float(w) for w in type_weights.values()]},
        schema={EVENT_TYPE: pl.String(), WEIGHT: pl.Float64()},
    )
    return events.join(weights, on=EVENT_TYPE, how="inner")


def check_type_weights(type_weights: Mapping[str, float]) -> None:
    if not type_weights or any(w <= 0 for w in type_weights.values()):
        raise ValueError(f"type_weights must be non-empty and > 0, got {dict(type_weights)}")


def lookup(sorted_ids: np.ndarray, query: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``query`` ids in the sorted id array and a mask of which ids are known.

    Unknown ids get position 0 with ``known=False``; callers must drop them, never index with them.
    """
    q = np.asarray(list(query), dtype=str)
    if len(sorted_ids) == 0 or len(q) == 0:
        return np.zeros(len(q), dtype=np.int64), np.zeros(len(q), dtype=bool)
    pos = np.searchsorted(sorted_ids, q)
    pos = np.clip(pos, 0, len(sorted_ids) - 1)
    known = sorted_ids[pos] == q
    return np.where(known, pos, 0).astype(np.int64), known


def ids_array(values: Sequence[str]) -> np.ndarray:
    """Numpy unicode array (``searchsorted`` needs a fixed-width dtype, not object)."""
    return np.asarray(list(values), dtype=str) if len(values) else np.asarray([], dtype="<U1")


class ItemIndex:
    """One integer position per item id, shared by every source of a model (sorted id order).

    Parameters
    ----------
    item_ids : Sequence[str]
        Ids in any order, repeats allowed; they are de-duplicated and sorted.
    """

    def __init__(self, item_ids: Sequence[str] | np.ndarray) -> None:
        self.ids = np.unique(ids_array(list(item_ids)))

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, item_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Positions of many ids (int64); -1 for ids the index does not hold."""
        pos, known = lookup(self.ids, item_ids)
        return np.where(known, pos, -1)

    @classmethod
    def union(cls, *id_arrays: Sequence[str] | np.ndarray) -> ItemIndex:
        parts = [np.asarray(list(a) if not isinstance(a, np.ndarray) else a, dtype=str) for a in id_arrays]
        return cls(np.concatenate(parts) if parts else np.asarray([], dtype=str))


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` largest finite scores, best first; equal scores in position order.

    Positions are item-index (or sorted-id) positions, so ties fall to the smaller item id, as in
    every source's ranking. Scores of ``-inf`` (filtered) are never returned.

    On long arrays a strided sample first gives a threshold no higher than the ``n``-th best score
    (the sample's ``n``-th best finite score), and only the scores at or above it are ranked: the
    same positions as ranking every score, at a fraction of the partition work.
    """
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    step = int(len(scores) // max(np.sqrt(n * len(scores)), 1))
    if step >= 4:
        sample = scores[::step]
        sample = sample[np.isfinite(sample)]
        if len(sample) >= n:
            threshold = np.partition(sample, len(sample) - n)[len(sample) - n]
            above = np.flatnonzero(scores >= threshold)  # holds every score >= the n-th best
            return _top_of(scores, above[np.isfinite(scores[above])], n)
    return _top_of(scores, np.flatnonzero(np.isfinite(scores)), n)


def _top_of(scores: np.ndarray, valid: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` best of ``scores[valid]`` (``valid``: ascending positions of finite scores), as :func:`top_n`."""
    n = min(n, len(valid))
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    values = scores[valid]
    if n < len(values):
        kth = np.partition(values, len(values) - n)[len(values) - n]
        keep = values >= kth  # every item tied with the n-th best, so ties resolve by position
        valid, values = valid[keep], values[keep]
    order = np.lexsort((valid, -values))[:n]
    return valid[order]
