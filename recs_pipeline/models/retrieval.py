"""Candidate retrieval: ALS, co-visitation, popularity and trending sources, and their merge.

Every source returns candidates as a polars DataFrame with columns ``user_id``, ``item_id``,
``score`` (float, higher is better) and ``rank`` (1-based per user, by score descending then
``item_id`` ascending, so ties are broken deterministically). :func:`merge_candidates` combines
the sources into one row per (user, item) with per-source scores, ranks and provenance, and
:func:`recall_at_k` measures how many relevant items the candidates contain at all -- the
ceiling the ranker works under.

Inputs:

* ``interactions``: ``user_id``, ``item_id``, ``weight`` (float > 0, already event-type weighted
  and recency decayed upstream; one row per pair).
* ``events``: ``user_id``, ``item_id``, ``event_type``, ``ts`` (Datetime UTC), ``session_id``.

Nothing here is pickled: models are stored as ``.npz`` (loaded with ``allow_pickle=False``),
JSON and parquet.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares  # the CPU class directly: never a GPU model
from threadpoolctl import threadpool_limits

from recs_pipeline.data.contract import EVENT_TYPE, ITEM_ID, SESSION_ID, TS, USER_ID

log = logging.getLogger(__name__)

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
ITEM_SCORE_SCHEMA: dict[str, pl.DataType] = {ITEM_ID: pl.String(), SCORE: pl.Float64(), RANK: pl.Int32()}
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


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _require_columns(frame: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} is missing columns {missing}; has {frame.columns}")


def _rank_within(frame: pl.DataFrame, key: str, item: str, *, n: int | None) -> pl.DataFrame:
    """Sort by ``key``, score descending, ``item`` ascending; add 1-based ``rank`` per key; keep ``rank <= n``."""
    ranked = frame.sort([key, SCORE, item], descending=[False, True, False]).with_columns(
        (pl.int_range(pl.len()).over(key) + 1).cast(pl.Int32).alias(RANK)
    )
    return ranked if n is None else ranked.filter(pl.col(RANK) <= n)


def _rank_items(frame: pl.DataFrame) -> pl.DataFrame:
    """Rank a global (item_id, score) list: score descending, then item_id."""
    return (
        frame.sort([SCORE, ITEM_ID], descending=[True, False])
        .with_row_index(RANK, offset=1)
        .select(pl.col(ITEM_ID), pl.col(SCORE), pl.col(RANK).cast(pl.Int32))
    )


def _check_n(n: int) -> None:
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")


def _check_as_of(as_of: datetime) -> None:
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware (UTC)")


def _weighted_events(events: pl.DataFrame, type_weights: Mapping[str, float]) -> pl.DataFrame:
    """Events with a ``weight`` column from their type; event types not in ``type_weights`` are dropped."""
    weights = pl.DataFrame(
        {EVENT_TYPE: list(type_weights), WEIGHT: [float(w) for w in type_weights.values()]},
        schema={EVENT_TYPE: pl.String(), WEIGHT: pl.Float64()},
    )
    return events.join(weights, on=EVENT_TYPE, how="inner")


def _check_type_weights(type_weights: Mapping[str, float]) -> None:
    if not type_weights or any(w <= 0 for w in type_weights.values()):
        raise ValueError(f"type_weights must be non-empty and > 0, got {dict(type_weights)}")


def _lookup(sorted_ids: np.ndarray, query: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
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


def _ids_array(values: Sequence[str]) -> np.ndarray:
    """Numpy unicode array (``searchsorted`` needs a fixed-width dtype, not object)."""
    return np.asarray(list(values), dtype=str) if len(values) else np.asarray([], dtype="<U1")


# --------------------------------------------------------------------------------------------
# ALS
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ALSParams:
    """Hyper-parameters of the implicit-feedback ALS model.

    Parameters
    ----------
    factors : int
        Latent dimension.
    regularization : float
        L2 regularisation of the factors.
    alpha : float
        Confidence scaling: a pair with interaction weight ``w`` gets confidence
        ``C = 1 + alpha * w`` (unobserved pairs have confidence 1 and preference 0).
    iterations : int
        ALS sweeps.
    seed : int
        Seed of the factor initialisation (``random_state``); fits with equal data, params and
        seed are identical.
    threads : int
        Threads for fitting and batch recommendation (BLAS itself is pinned to one thread).
    """

    factors: int = 64
    regularization: float = 0.01
    alpha: float = 1.0
    iterations: int = 15
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        for name in ("factors", "iterations", "threads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ALSParams.{name} must be > 0, got {getattr(self, name)}")
        if self.regularization < 0:
            raise ValueError(f"ALSParams.regularization must be >= 0, got {self.regularization}")
        if self.alpha <= 0:
            raise ValueError(f"ALSParams.alpha must be > 0, got {self.alpha}")


def _new_model(params: ALSParams) -> AlternatingLeastSquares:
    # implicit treats the stored matrix value as the confidence c_ui itself (p_ui = 1 for stored
    # entries) and multiplies it by its own ``alpha``; we pass ``1 + alpha * w`` and keep its alpha at 1.
    with threadpool_limits(1, "blas"):  # also silences implicit's BLAS-threads warning on construction
        return AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=1.0,
            iterations=params.iterations,
            random_state=params.seed,
            num_threads=params.threads,
        )


class ALSRetriever:
    """Collaborative-filtering retrieval with implicit's CPU ALS.

    Users and items are mapped to contiguous indices in sorted id order. implicit indexes users by
    position and would silently answer for another user given a wrong index, so every lookup goes
    through a membership check and unknown ids produce no rows.

    Use :meth:`fit` or :meth:`load` to build one.
    """

    def __init__(
        self,
        *,
        params: ALSParams,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        model: AlternatingLeastSquares,
        seen: sp.csr_matrix,
    ) -> None:
        self.params = params
        self.user_ids = user_ids
        self.item_ids = item_ids
        self.model = model
        self.seen = seen

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def fit(cls, interactions: pl.DataFrame, *, params: ALSParams | None = None) -> ALSRetriever:
        """Fit ALS on weighted (user, item) interactions.

        Parameters
        ----------
        interactions : pl.DataFrame
            ``user_id``, ``item_id``, ``weight`` (> 0). Repeated pairs are summed.
        params : ALSParams, optional
            Hyper-parameters; defaults to ``ALSParams()``.

        Returns
        -------
        ALSRetriever
            The fitted retriever, holding the id maps and the user x item confidence CSR
            (used to filter already-seen items).
        """
        params = params or ALSParams()
        _require_columns(interactions, [USER_ID, ITEM_ID, WEIGHT], "interactions")
        if interactions.height == 0:
            raise ValueError("interactions is empty")
        pairs = interactions.select(
            pl.col(USER_ID).cast(pl.String), pl.col(ITEM_ID).cast(pl.String), pl.col(WEIGHT).cast(pl.Float64)
        )
        if pairs.null_count().sum_horizontal().item() > 0:
            raise ValueError("interactions contains nulls")
        if pairs[WEIGHT].min() <= 0 or not np.isfinite(pairs[WEIGHT].to_numpy()).all():
            raise ValueError("interaction weights must be finite and > 0")
        pairs = pairs.group_by([USER_ID, ITEM_ID]).agg(pl.col(WEIGHT).sum())
        if pairs.height < interactions.height:
            log.warning("summed %d repeated (user, item) rows", interactions.height - pairs.height)

        user_ids, u = np.unique(pairs[USER_ID].to_numpy().astype(str), return_inverse=True)
        item_ids, i = np.unique(pairs[ITEM_ID].to_numpy().astype(str), return_inverse=True)
        confidence = (1.0 + params.alpha * pairs[WEIGHT].to_numpy()).astype(np.float32)
        user_items = sp.csr_matrix((confidence, (u, i)), shape=(len(user_ids), len(item_ids)), dtype=np.float32)
        user_items.sort_indices()

        model = _new_model(params)
        with threadpool_limits(1, "blas"):
            model.fit(user_items, show_progress=False)
        log.info(
            "fitted ALS on %d pairs: %d users x %d items, %d factors, %d iterations",
            user_items.nnz,
            len(user_ids),
            len(item_ids),
            params.factors,
            params.iterations,
        )
        return cls(params=params, user_ids=user_ids, item_ids=item_ids, model=model, seen=user_items)

    @property
    def user_factors(self) -> np.ndarray:
        """User factor matrix (float32, rows in ``user_ids`` order)."""
        return np.asarray(self.model.user_factors)

    @property
    def item_factors(self) -> np.ndarray:
        """Item factor matrix (float32, rows in ``item_ids`` order)."""
        return np.asarray(self.model.item_factors)

    # -- recommendation ------------------------------------------------------------------------

    def _candidates(self, users: np.ndarray, ids: np.ndarray, scores: np.ndarray, *, n: int) -> pl.DataFrame:
        """Flatten implicit's (n_users, N) id/score arrays into ranked candidates, dropping filtered slots."""
        ids = np.asarray(ids).reshape(len(users), -1)
        scores = np.asarray(scores, dtype=np.float64).reshape(len(users), -1)
        # implicit pads slots it could not fill (filtered items, n > unfiltered items) with id -1 or
        # score -FLT_MAX; those are not candidates.
        valid = (ids >= 0) & np.isfinite(scores) & (scores > np.finfo(np.float32).min)
        rows = np.repeat(np.arange(len(users)), ids.shape[1])[valid.ravel()]
        frame = pl.DataFrame(
            {
                USER_ID: users[rows],
                ITEM_ID: self.item_ids[ids[valid]],
                SCORE: scores[valid],
            },
            schema={USER_ID: pl.String(), ITEM_ID: pl.String(), SCORE: pl.Float64()},
        )
        return _rank_within(frame, USER_ID, ITEM_ID, n=n)

    def recommend(self, user_ids: Sequence[str], *, n: int, filter_seen: bool = False) -> pl.DataFrame:
        """Top-``n`` items for known users (one batched, vectorised implicit call).

        Parameters
        ----------
        user_ids : Sequence[str]
            Users to recommend for; duplicates are answered once. Unknown users produce no rows
            (their count is logged) -- they are never passed to implicit.
        n : int
            Candidates per user.
        filter_seen : bool
            Exclude items the user interacted with in the training data.

        Returns
        -------
        pl.DataFrame
            Candidates ``user_id``, ``item_id``, ``score`` (user . item), ``rank``.
        """
        _check_n(n)
        requested = list(dict.fromkeys(str(u) for u in user_ids))
        pos, known = _lookup(self.user_ids, requested)
        if (~known).any():
            log.info("ALS recommend: %d of %d users unknown to the model; no candidates", (~known).sum(), len(known))
        pos = pos[known]
        if len(pos) == 0:
            return pl.DataFrame(schema=CANDIDATE_SCHEMA)
        k = min(n, len(self.item_ids))
        with threadpool_limits(1, "blas"):
            ids, scores = self.model.recommend(
                pos,
                self.seen[pos] if filter_seen else None,
                N=k,
                filter_already_liked_items=filter_seen,
                recalculate_user=False,
            )
        return self._candidates(self.user_ids[pos], ids, scores, n=n)

    def fold_in(
        self,
        items_by_user: Mapping[str, Sequence[tuple[str, float]]],
        *,
        n: int,
        filter_seen: bool = False,
    ) -> pl.DataFrame:
        """Recommend for users the model has not seen, from their recent (item, weight) pairs.

        Each user's vector is solved from the fixed item factors (implicit's ``recalculate_user``,
        the same least-squares step ALS uses) on a sparse row with confidence ``1 + alpha * weight``
        per known item. Items unknown to the model are ignored; users with no known item get no rows.
        The user ids need not be known to the model (they are never used as indices).

        Parameters
        ----------
        items_by_user : Mapping[str, Sequence[tuple[str, float]]]
            ``{user_id: [(item_id, weight > 0), ...]}``; repeated items are summed.
        n : int
            Candidates per user.
        filter_seen : bool
            Exclude the input items themselves.

        Returns
        -------
        pl.DataFrame
            Candidates ``user_id``, ``item_id``, ``score``, ``rank``.
        """
        _check_n(n)
        users_col: list[str] = []
        items_col: list[str] = []
        weights_col: list[float] = []
        for user, pairs in items_by_user.items():
            for item, weight in pairs:
                users_col.append(str(user))
                items_col.append(str(item))
                weights_col.append(float(weight))
        if any(not (w > 0 and math.isfinite(w)) for w in weights_col):
            raise ValueError("fold_in weights must be finite and > 0")
        pos, known = _lookup(self.item_ids, items_col)
        rows = (
            pl.DataFrame(
                {USER_ID: users_col, "item_pos": pos, WEIGHT: weights_col},
                schema={USER_ID: pl.String(), "item_pos": pl.Int64(), WEIGHT: pl.Float64()},
            )
            .filter(pl.Series(known))
            .group_by([USER_ID, "item_pos"])
            .agg(pl.col(WEIGHT).sum())
            .sort([USER_ID, "item_pos"])
        )
        n_without = len(items_by_user) - rows[USER_ID].n_unique()
        if n_without:
            log.info("ALS fold_in: %d of %d users have no known item; no candidates", n_without, len(items_by_user))
        if rows.height == 0:
            return pl.DataFrame(schema=CANDIDATE_SCHEMA)
        users, row_index = np.unique(rows[USER_ID].to_numpy().astype(str), return_inverse=True)
        confidence = (1.0 + self.params.alpha * rows[WEIGHT].to_numpy()).astype(np.float32)
        user_items = sp.csr_matrix(
            (confidence, (row_index, rows["item_pos"].to_numpy())),
            shape=(len(users), len(self.item_ids)),
            dtype=np.float32,
        )
        k = min(n, len(self.item_ids))
        with threadpool_limits(1, "blas"):
            ids, scores = self.model.recommend(
                np.arange(len(users)),  # positions in ``user_items``; not used to index user_factors
                user_items,
                N=k,
                filter_already_liked_items=filter_seen,
                recalculate_user=True,
            )
        return self._candidates(users, ids, scores, n=n)

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """ALS score ``user . item`` per (user, item) pair, e.g. as a ranking feature.

        Parameters
        ----------
        user_ids, item_ids : Sequence[str]
            Aligned pairs (same length).

        Returns
        -------
        np.ndarray
            float64 scores; NaN where the user or the item is unknown to the model.
        """
        if len(user_ids) != len(item_ids):
            raise ValueError(f"user_ids and item_ids differ in length: {len(user_ids)} != {len(item_ids)}")
        upos, uknown = _lookup(self.user_ids, user_ids)
        ipos, iknown = _lookup(self.item_ids, item_ids)
        both = uknown & iknown
        out = np.full(len(upos), np.nan, dtype=np.float64)
        u = self.user_factors[upos[both]].astype(np.float64)
        v = self.item_factors[ipos[both]].astype(np.float64)
        out[both] = np.einsum("ij,ij->i", u, v)
        return out

    # -- persistence ---------------------------------------------------------------------------

    def save(self, folder: Path) -> list[Path]:
        """Write ``als_factors.npz`` (float32 factors), ``als_ids.json`` (ids, params) and ``als_seen.npz``.

        Returns
        -------
        list[Path]
            The written files.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        factors_path = folder / ALS_FACTORS_FILE
        ids_path = folder / ALS_IDS_FILE
        seen_path = folder / ALS_SEEN_FILE
        np.savez(
            factors_path,
            user_factors=np.ascontiguousarray(self.user_factors, dtype=np.float32),
            item_factors=np.ascontiguousarray(self.item_factors, dtype=np.float32),
        )
        ids_path.write_text(
            json.dumps(
                {"user_ids": self.user_ids.tolist(), "item_ids": self.item_ids.tolist(), "params": asdict(self.params)}
            )
        )
        sp.save_npz(seen_path, self.seen, compressed=True)
        return [factors_path, ids_path, seen_path]

    @classmethod
    def load(cls, folder: Path) -> ALSRetriever:
        """Restore a retriever written by :meth:`save`; it recommends identically."""
        folder = Path(folder)
        meta: dict[str, Any] = json.loads((folder / ALS_IDS_FILE).read_text())
        params = ALSParams(**meta["params"])
        with np.load(folder / ALS_FACTORS_FILE, allow_pickle=False) as arrays:
            user_factors = np.ascontiguousarray(arrays["user_factors"], dtype=np.float32)
            item_factors = np.ascontiguousarray(arrays["item_factors"], dtype=np.float32)
        seen = sp.load_npz(folder / ALS_SEEN_FILE).tocsr().astype(np.float32)
        user_ids = _ids_array(meta["user_ids"])
        item_ids = _ids_array(meta["item_ids"])
        if user_factors.shape != (len(user_ids), params.factors) or item_factors.shape != (
            len(item_ids),
            params.factors,
        ):
            raise ValueError(
                f"ALS files disagree: factors {user_factors.shape}/{item_factors.shape}, "
                f"{len(user_ids)} users, {len(item_ids)} items, {params.factors} factors"
            )
        if seen.shape != (len(user_ids), len(item_ids)):
            raise ValueError(f"als_seen.npz has shape {seen.shape}, expected {(len(user_ids), len(item_ids))}")
        model = _new_model(params)
        model.user_factors = user_factors
        model.item_factors = item_factors
        return cls(params=params, user_ids=user_ids, item_ids=item_ids, model=model, seen=seen)


# --------------------------------------------------------------------------------------------
# Co-visitation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoVisParams:
    """Parameters of the session co-visitation source.

    Parameters
    ----------
    max_neighbors : int
        Neighbours kept per item (highest scores).
    max_session_items : int
        Only the last ``max_session_items`` distinct items of a session (by their last event) are
        paired; this caps the self-join at ``max_session_items**2`` rows per session.
    type_weights : Mapping[str, float]
        Event type -> weight. An item's weight in a session is the largest weight of its events
        there; event types not listed are ignored.
    time_window_hours : float or None
        Pairs are counted only within one session (sessions already end after 30 minutes of
        inactivity); additionally the two items' last events must be at most this far apart, which
        only matters for unusually long sessions. ``None`` disables the extra check.
    """

    max_neighbors: int = 50
    max_session_items: int = 30
    type_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    time_window_hours: float | None = 24.0

    def __post_init__(self) -> None:
        if self.max_neighbors <= 0 or self.max_session_items < 2:
            raise ValueError("max_neighbors must be > 0 and max_session_items >= 2")
        if self.time_window_hours is not None and self.time_window_hours <= 0:
            raise ValueError("time_window_hours must be > 0 or None")
        _check_type_weights(self.type_weights)


class CoVisitation:
    """Item-to-item scores from distinct items co-occurring in the same session.

    For each session, the pair (a, b) of distinct items adds the weight of ``b`` in that session to
    score(a -> b), and the weight of ``a`` to score(b -> a): both directions are counted, each
    weighted by the neighbour's strongest event type. Each item keeps its top ``max_neighbors``.
    Events without a session id are not used.
    """

    def __init__(self, neighbors: pl.DataFrame, *, params: CoVisParams | None = None) -> None:
        self._neighbors = neighbors
        self.params = params

    @classmethod
    def fit(cls, events: pl.DataFrame, *, params: CoVisParams | None = None) -> CoVisitation:
        """Compute the neighbour table from events (vectorised polars self-join per session).

        Parameters
        ----------
        events : pl.DataFrame
            ``user_id``, ``item_id``, ``event_type``, ``ts``, ``session_id``.
        params : CoVisParams, optional
            Defaults to ``CoVisParams()``.
        """
        params = params or CoVisParams()
        _require_columns(events, [ITEM_ID, EVENT_TYPE, TS, SESSION_ID], "events")
        per_item = (
            _weighted_events(
                events.select(SESSION_ID, ITEM_ID, EVENT_TYPE, TS).filter(
                    pl.col(SESSION_ID).is_not_null() & pl.col(ITEM_ID).is_not_null()
                ),
                params.type_weights,
            )
            .group_by([SESSION_ID, ITEM_ID])
            .agg(pl.col(TS).max().alias("last_ts"), pl.col(WEIGHT).max())
            # keep the last N distinct items of each session (ties broken by item id for determinism)
            .sort([SESSION_ID, "last_ts", ITEM_ID], descending=[False, True, False])
            .filter(pl.int_range(pl.len()).over(SESSION_ID) < params.max_session_items)
        )
        right = per_item.rename({ITEM_ID: NEIGHBOR_ID, "last_ts": "n_ts", WEIGHT: "n_weight"})
        pairs = (
            per_item.lazy()
            .join(right.lazy(), on=SESSION_ID, how="inner")
            .filter(pl.col(ITEM_ID) != pl.col(NEIGHBOR_ID))
        )
        if params.time_window_hours is not None:
            window = timedelta(hours=params.time_window_hours)
            pairs = pairs.filter((pl.col("last_ts") - pl.col("n_ts")).abs() <= window)
        scores = (
            pairs.group_by([ITEM_ID, NEIGHBOR_ID])
            .agg(pl.col("n_weight").sum().alias(SCORE))
            .collect()
            .select(pl.col(ITEM_ID).cast(pl.String), pl.col(NEIGHBOR_ID).cast(pl.String), pl.col(SCORE))
        )
        neighbors = _rank_within(scores, ITEM_ID, NEIGHBOR_ID, n=params.max_neighbors)
        log.info(
            "co-visitation: %d sessions, %d items with neighbours, %d pairs kept",
            per_item[SESSION_ID].n_unique(),
            neighbors[ITEM_ID].n_unique(),
            neighbors.height,
        )
        return cls(neighbors.select(list(NEIGHBOR_SCHEMA)).cast(NEIGHBOR_SCHEMA), params=params)  # type: ignore[arg-type]

    def neighbors(self) -> pl.DataFrame:
        """The neighbour table ``item_id``, ``neighbor_id``, ``score``, ``rank`` (1 = strongest)."""
        return self._neighbors

    def recommend(self, recent: pl.DataFrame, *, n: int, exclude_input: bool = False) -> pl.DataFrame:
        """Candidates from a user's recent items: score(c) = sum over recent i of weight_i * covis(i -> c).

        Parameters
        ----------
        recent : pl.DataFrame
            ``user_id``, ``item_id``, ``weight`` (e.g. recency/type weighted recent interactions).
        n : int
            Candidates per user.
        exclude_input : bool
            Drop candidates that are among the user's own recent items.

        Returns
        -------
        pl.DataFrame
            Candidates ``user_id``, ``item_id``, ``score``, ``rank``.
        """
        _check_n(n)
        _require_columns(recent, [USER_ID, ITEM_ID, WEIGHT], "recent")
        recent = recent.select(
            pl.col(USER_ID).cast(pl.String), pl.col(ITEM_ID).cast(pl.String), pl.col(WEIGHT).cast(pl.Float64)
        )
        cands = (
            recent.join(self._neighbors.select(ITEM_ID, NEIGHBOR_ID, pl.col(SCORE).alias("nb")), on=ITEM_ID)
            .group_by([USER_ID, NEIGHBOR_ID])
            .agg((pl.col(WEIGHT) * pl.col("nb")).sum().alias(SCORE))
            .rename({NEIGHBOR_ID: ITEM_ID})
        )
        if exclude_input:
            cands = cands.join(recent.select(USER_ID, ITEM_ID).unique(), on=[USER_ID, ITEM_ID], how="anti")
        return _rank_within(cands, USER_ID, ITEM_ID, n=n).select(list(CANDIDATE_SCHEMA)).cast(CANDIDATE_SCHEMA)  # type: ignore[arg-type]

    def save(self, folder: Path) -> list[Path]:
        """Write the neighbour table to ``covis.parquet``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / COVIS_FILE
        self._neighbors.write_parquet(path)
        return [path]

    @classmethod
    def load(cls, folder: Path) -> CoVisitation:
        """Restore from ``covis.parquet`` (fit parameters are not needed to recommend and are not stored)."""
        frame = pl.read_parquet(Path(folder) / COVIS_FILE)
        _require_columns(frame, list(NEIGHBOR_SCHEMA), COVIS_FILE)
        return cls(frame.select(list(NEIGHBOR_SCHEMA)).cast(NEIGHBOR_SCHEMA))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Popularity and trending
# --------------------------------------------------------------------------------------------


def _window_scores(
    events: pl.DataFrame, start: datetime, end: datetime, type_weights: Mapping[str, float]
) -> pl.DataFrame:
    """Per item: weighted event count ``w`` and raw count ``c`` of events with ``start <= ts < end``."""
    window = events.select(ITEM_ID, EVENT_TYPE, TS).filter((pl.col(TS) >= start) & (pl.col(TS) < end))
    return (
        _weighted_events(window, type_weights)
        .group_by(ITEM_ID)
        .agg(pl.col(WEIGHT).sum().alias("w"), pl.len().cast(pl.Float64).alias("c"))
        .with_columns(pl.col(ITEM_ID).cast(pl.String))
    )


class _GlobalList:
    """A global ranked (item_id, score) list, recommended identically to every user."""

    FILE: str = ""

    def __init__(self, scores: pl.DataFrame, *, as_of: datetime | None = None) -> None:
        self._scores = _rank_items(scores.select(pl.col(ITEM_ID).cast(pl.String), pl.col(SCORE).cast(pl.Float64)))
        self.as_of = as_of

    def top(self, n: int) -> pl.DataFrame:
        """The ``n`` best items: ``item_id``, ``score``, ``rank``."""
        _check_n(n)
        return self._scores.head(n)

    def recommend(self, user_ids: Sequence[str], *, n: int) -> pl.DataFrame:
        """The same top-``n`` list for every (distinct) user: candidates ``user_id``, ``item_id``, ``score``, ``rank``."""
        users = pl.DataFrame({USER_ID: list(dict.fromkeys(str(u) for u in user_ids))}, schema={USER_ID: pl.String()})
        return (
            users.join(self.top(n), how="cross")
            .sort([USER_ID, RANK])
            .select(list(CANDIDATE_SCHEMA))
            .cast(CANDIDATE_SCHEMA)  # type: ignore[arg-type]
        )

    def save(self, folder: Path) -> list[Path]:
        """Write the scored list (``item_id``, ``score``, ``rank``) to parquet."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.FILE
        self._scores.write_parquet(path)
        return [path]

    @classmethod
    def _read(cls, folder: Path) -> pl.DataFrame:
        frame = pl.read_parquet(Path(folder) / cls.FILE)
        _require_columns(frame, [ITEM_ID, SCORE], cls.FILE)
        return frame


class Popularity(_GlobalList):
    """Most popular items: weighted event counts in ``[as_of - window_days, as_of)``.

    Only events strictly before ``as_of`` count, so the list never sees the moment it serves.
    """

    FILE = POPULARITY_FILE

    @classmethod
    def fit(
        cls,
        events: pl.DataFrame,
        *,
        as_of: datetime,
        window_days: float = 7,
        type_weights: Mapping[str, float] = DEFAULT_TYPE_WEIGHTS,
    ) -> Popularity:
        """Score items by type-weighted event count over the window before ``as_of``."""
        _check_as_of(as_of)
        _check_type_weights(type_weights)
        if window_days <= 0:
            raise ValueError(f"window_days must be > 0, got {window_days}")
        _require_columns(events, [ITEM_ID, EVENT_TYPE, TS], "events")
        counts = _window_scores(events, as_of - timedelta(days=window_days), as_of, type_weights)
        return cls(counts.select(ITEM_ID, pl.col("w").alias(SCORE)), as_of=as_of)

    @classmethod
    def load(cls, folder: Path) -> Popularity:
        """Restore from ``popularity.parquet``."""
        return cls(cls._read(folder))


class Trending(_GlobalList):
    """Items whose recent activity is high relative to their own baseline.

    With ``R`` the type-weighted count and ``r`` the raw event count in the recent window
    ``[as_of - recent_hours, as_of)``, and ``B`` the type-weighted count in the baseline window
    ``[as_of - recent_hours - baseline_days, as_of - recent_hours)``::

        recent_daily   = R / (recent_hours / 24)
        baseline_daily = B / baseline_days
        score = (recent_daily + 1) / (baseline_daily + 1) * log1p(r)

    The ratio rewards acceleration (the +1 smooths items new to the baseline); ``log1p(r)``
    keeps one or two stray events from topping the list. Only items with recent activity are
    listed, and only events strictly before ``as_of`` count.
    """

    FILE = TRENDING_FILE

    @classmethod
    def fit(
        cls,
        events: pl.DataFrame,
        *,
        as_of: datetime,
        recent_hours: float = 24,
        baseline_days: float = 7,
        type_weights: Mapping[str, float] = DEFAULT_TYPE_WEIGHTS,
    ) -> Trending:
        """Score items by recent-vs-baseline activity (formula in the class docstring)."""
        _check_as_of(as_of)
        _check_type_weights(type_weights)
        if recent_hours <= 0 or baseline_days <= 0:
            raise ValueError("recent_hours and baseline_days must be > 0")
        _require_columns(events, [ITEM_ID, EVENT_TYPE, TS], "events")
        split = as_of - timedelta(hours=recent_hours)
        recent = _window_scores(events, split, as_of, type_weights)
        baseline = _window_scores(events, split - timedelta(days=baseline_days), split, type_weights)
        scores = (
            recent.join(baseline.select(ITEM_ID, pl.col("w").alias("b")), on=ITEM_ID, how="left")
            .with_columns(pl.col("b").fill_null(0.0))
            .select(
                ITEM_ID,
                (
                    (pl.col("w") / (recent_hours / 24.0) + 1.0)
                    / (pl.col("b") / baseline_days + 1.0)
                    * pl.col("c").log1p()
                ).alias(SCORE),
            )
        )
        return cls(scores, as_of=as_of)

    @classmethod
    def load(cls, folder: Path) -> Trending:
        """Restore from ``trending.parquet``."""
        return cls(cls._read(folder))


# --------------------------------------------------------------------------------------------
# Merge and recall
# --------------------------------------------------------------------------------------------


def merge_candidates(
    sources: Mapping[str, pl.DataFrame],
    *,
    limits: Mapping[str, int] | None = None,
) -> pl.DataFrame:
    """Union candidate sources into one row per (user, item) with provenance.

    Parameters
    ----------
    sources : Mapping[str, pl.DataFrame]
        Source name -> candidates (``user_id``, ``item_id``, ``score``, ``rank``). A source must
        not repeat a (user, item) pair.
    limits : Mapping[str, int], optional
        Source name -> keep only ranks ``<= limit`` of that source before merging. Sources not
        listed are kept whole.

    Returns
    -------
    pl.DataFrame
        ``user_id``, ``item_id``, then ``<source>_score`` and ``<source>_rank`` for every source
        in sorted name order (null when that source did not propose the pair), ``sources``
        (sorted list of proposing source names), ``n_sources`` and ``best_rank`` (the best rank
        any source gave). Sorted by user_id, best_rank, n_sources descending, item_id.
    """
    if not sources:
        raise ValueError("no candidate sources")
    limits = dict(limits or {})
    unknown = set(limits) - set(sources)
    if unknown:
        raise ValueError(f"limits for unknown sources {sorted(unknown)}")
    names = sorted(sources)
    merged: pl.DataFrame | None = None
    for name in names:
        frame = sources[name]
        _require_columns(frame, list(CANDIDATE_SCHEMA), f"source {name!r}")
        frame = frame.select(list(CANDIDATE_SCHEMA)).cast(CANDIDATE_SCHEMA)  # type: ignore[arg-type]
        if name in limits:
            frame = frame.filter(pl.col(RANK) <= limits[name])
        if frame.select(pl.struct(USER_ID, ITEM_ID).is_duplicated().any()).item():
            raise ValueError(f"source {name!r} repeats (user_id, item_id) pairs")
        frame = frame.rename({SCORE: f"{name}_score", RANK: f"{name}_rank"})
        merged = frame if merged is None else merged.join(frame, on=[USER_ID, ITEM_ID], how="full", coalesce=True)
    assert merged is not None
    rank_cols = [f"{name}_rank" for name in names]
    provenance = pl.concat_list(
        [
            pl.when(pl.col(c).is_not_null()).then(pl.lit(name)).otherwise(pl.lit(None, pl.String))
            for name, c in zip(names, rank_cols, strict=True)
        ]
    ).list.drop_nulls()
    return (
        merged.with_columns(provenance.alias(SOURCES), pl.min_horizontal(rank_cols).alias(BEST_RANK))
        .with_columns(pl.col(SOURCES).list.len().cast(pl.Int32).alias(N_SOURCES))
        .sort([USER_ID, BEST_RANK, N_SOURCES, ITEM_ID], descending=[False, False, True, False])
        .select(
            USER_ID,
            ITEM_ID,
            *[c for name in names for c in (f"{name}_score", f"{name}_rank")],
            SOURCES,
            N_SOURCES,
            BEST_RANK,
        )
    )


def recall_at_k(candidates: pl.DataFrame, truth: pl.DataFrame, *, k: int | None) -> float:
    """Retrieval recall: the share of relevant (user, item) pairs present among the user's candidates.

    This is the ceiling of the ranker: it can only order what retrieval proposed. Users in
    ``truth`` with no candidates count as misses.

    Parameters
    ----------
    candidates : pl.DataFrame
        ``user_id``, ``item_id`` and, when ``k`` is given, ``rank`` (a single source) or
        ``best_rank`` (the output of :func:`merge_candidates`).
    truth : pl.DataFrame
        Relevant ``user_id``, ``item_id`` pairs (duplicates count once).
    k : int or None
        Only candidates with rank ``<= k`` count; ``None`` uses all candidates (e.g. the whole
        merged pool).

    Returns
    -------
    float
        Hits / relevant pairs; NaN when ``truth`` is empty.
    """
    _require_columns(truth, [USER_ID, ITEM_ID], "truth")
    _require_columns(candidates, [USER_ID, ITEM_ID], "candidates")
    relevant = truth.select(pl.col(USER_ID).cast(pl.String), pl.col(ITEM_ID).cast(pl.String)).unique()
    if relevant.height == 0:
        return float("nan")
    pool = candidates
    if k is not None:
        if k <= 0:
            raise ValueError(f"k must be > 0, got {k}")
        rank_col = RANK if RANK in candidates.columns else BEST_RANK
        _require_columns(candidates, [rank_col], "candidates")
        pool = pool.filter(pl.col(rank_col) <= k)
    pool = pool.select(pl.col(USER_ID).cast(pl.String), pl.col(ITEM_ID).cast(pl.String)).unique()
    hits = relevant.join(pool, on=[USER_ID, ITEM_ID], how="semi").height
    return hits / relevant.height
