"""Session co-visitation: items seen together in sessions, scored for a user from their recent items.

One scorer serves the batch and the request path: a user's anchors (the most recent distinct items,
each weighted by the strongest event the user had with it) times a CSR neighbour matrix, top-n by
score then item id (:func:`select_anchors`, :meth:`CoVisitation.matrix`, :func:`covis_top`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from recs_pipeline.data.contract import EVENT_TYPE, ITEM_ID, SESSION_ID, TS, USER_ID
from recs_pipeline.models.retrieval._common import (
    CANDIDATE_SCHEMA,
    COVIS_FILE,
    DEFAULT_TYPE_WEIGHTS,
    NEIGHBOR_ID,
    NEIGHBOR_SCHEMA,
    RANK,
    SCORE,
    WEIGHT,
    ItemIndex,
    check_n,
    check_type_weights,
    ids_array,
    require_columns,
    top_n,
    weighted_events,
)

log = logging.getLogger(__name__)

# Graded weight of an anchor item: the strongest event the user had with it (purchase 3, cart 2, else 1).
ANCHOR_RELEVANCE: Mapping[str, float] = {"purchase": 3.0, "add_to_cart": 2.0, "favorite": 1.0, "view": 1.0}


def anchor_relevance(*, carts: np.ndarray, purchases: np.ndarray) -> np.ndarray:
    """Anchor weights from a user's per-item counts: 3 if ever purchased, 2 if ever carted, else 1."""
    return np.where(np.asarray(purchases) > 0, 3.0, np.where(np.asarray(carts) > 0, 2.0, 1.0))


def select_anchors(rows: np.ndarray, item_ids: np.ndarray, last_ts: np.ndarray, *, per_user: int) -> np.ndarray:
    """Positions of each row's (user's) ``per_user`` most recent distinct items, newest first.

    Equal times fall to the smaller item id. ``rows``, ``item_ids`` and ``last_ts`` are aligned;
    each (row, item) appears once.
    """
    if len(rows) == 0:
        return np.empty(0, dtype=np.int64)
    order = np.lexsort((np.asarray(item_ids, dtype=str), -np.asarray(last_ts, dtype=np.float64), rows))
    sorted_rows = np.asarray(rows)[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_rows)) + 1]
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return order[rank < per_user]


def covis_top(
    matrix: sp.csr_matrix, anchors: sp.csr_matrix, n: int, *, exclude: Sequence[np.ndarray] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row of ``anchors`` (users x items, anchor weights): the ``n`` best (positions, scores).

    score(c) = sum over anchors i of weight_i * covis(i -> c), as one sparse product; ties fall to
    the smaller position (item id). ``exclude[row]`` holds positions that must not be returned.
    """
    check_n(n)
    anchors = anchors.tocsr()
    anchors.sort_indices()  # the same summation order whether a row is scored alone or in a batch
    product = (anchors @ matrix).tocsr()
    product.sort_indices()
    out = []
    for r in range(product.shape[0]):
        cols = product.indices[product.indptr[r] : product.indptr[r + 1]]
        values = product.data[product.indptr[r] : product.indptr[r + 1]]
        if exclude is not None and len(exclude[r]):
            keep = ~np.isin(cols, exclude[r])
            cols, values = cols[keep], values[keep]
        best = top_n(values, n)
        out.append((cols[best].astype(np.int64), values[best]))
    return out


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
    anchors: int = 20  # a user's most recent distinct items that propose candidates

    def __post_init__(self) -> None:
        if self.max_neighbors <= 0 or self.max_session_items < 2 or self.anchors <= 0:
            raise ValueError("max_neighbors and anchors must be > 0 and max_session_items >= 2")
        if self.time_window_hours is not None and self.time_window_hours <= 0:
            raise ValueError("time_window_hours must be > 0 or None")
        check_type_weights(self.type_weights)


_SHIFT = 1 << 32  # a pair key is item code * _SHIFT + neighbour code (codes are UInt32)


def _session_events(events: pl.DataFrame, params: CoVisParams) -> pl.DataFrame:
    """Events with a session and an item, weighted by type (types without a weight dropped), with
    integer codes: ``_item`` (the item's rank in sorted id order, so code order is id order) and
    ``_session``; joins and group-bys on them are several times faster than on the id strings."""
    weighted = weighted_events(
        events.select(SESSION_ID, ITEM_ID, EVENT_TYPE, TS).filter(
            pl.col(SESSION_ID).is_not_null() & pl.col(ITEM_ID).is_not_null()
        ),
        params.type_weights,
    )
    items = weighted.select(pl.col(ITEM_ID).unique().sort()).with_row_index("_item")
    sessions = weighted.select(pl.col(SESSION_ID).unique()).with_row_index("_session")
    return (
        weighted.join(items, on=ITEM_ID, how="inner")
        .join(sessions, on=SESSION_ID, how="inner")
        .select("_session", "_item", ITEM_ID, TS, WEIGHT)
    )


def _pair_scores(events: pl.DataFrame, params: CoVisParams) -> pl.DataFrame:
    """Summed pair scores ``_pair`` (item code * 2^32 + neighbour code), ``score`` of the sessions in ``events``
    (:func:`_session_events`)."""
    per_item = (
        events.group_by(["_session", "_item"])
        .agg(pl.col(TS).max().alias("last_ts"), pl.col(WEIGHT).max())
        # keep the last N distinct items of each session (ties broken by item id for determinism)
        .sort(["_session", "last_ts", "_item"], descending=[False, True, False])
        .filter(pl.int_range(pl.len()).over("_session") < params.max_session_items)
    )
    right = per_item.rename({"_item": "_neighbor", "last_ts": "n_ts", WEIGHT: "n_weight"})
    pairs = (
        per_item.lazy().join(right.lazy(), on="_session", how="inner").filter(pl.col("_item") != pl.col("_neighbor"))
    )
    if params.time_window_hours is not None:
        window = timedelta(hours=params.time_window_hours)
        pairs = pairs.filter((pl.col("last_ts") - pl.col("n_ts")).abs() <= window)
    return (
        pairs.select(
            (pl.col("_item").cast(pl.UInt64) * _SHIFT + pl.col("_neighbor").cast(pl.UInt64)).alias("_pair"),
            pl.col("n_weight"),
        )
        .group_by("_pair")
        .agg(pl.col("n_weight").sum().alias(SCORE))
        .collect()
    )


def _add_scores(big: pl.DataFrame, small: pl.DataFrame) -> pl.DataFrame:
    """Pair sums of two tables (``_pair``, ``score``, one row per pair each): only ``small`` is hashed
    (anti and inner joins probe ``big``), cheaper than a group-by over both."""
    both = big.join(small, on="_pair", how="inner", suffix="_small").select(
        "_pair", pl.col(SCORE) + pl.col(f"{SCORE}_small")
    )
    return pl.concat(
        [
            big.join(small, on="_pair", how="anti"),
            both,
            small.join(both.select("_pair"), on="_pair", how="anti"),
        ]
    )


def _item_ids(base: pl.DataFrame) -> pl.Series:
    """The item ids by code (:func:`_session_events`)."""
    return base.select("_item", ITEM_ID).unique("_item").sort("_item")[ITEM_ID]


def _neighbor_table(scores: pl.DataFrame, item_ids: pl.Series, max_neighbors: int) -> pl.DataFrame:
    """Each item's ``max_neighbors`` best neighbours (score descending, then neighbour id) from summed pair
    scores, with the codes turned back into ids (``item_ids[code]``)."""
    pairs = scores.lazy().select(
        (pl.col("_pair") // _SHIFT).cast(pl.UInt32).alias("_item"),
        (pl.col("_pair") % _SHIFT).cast(pl.UInt32).alias("_neighbor"),
        pl.col(SCORE),
    )
    # each item's max_neighbors-th best score: only pairs at or above it (ties included) are sorted
    kth = pairs.group_by("_item").agg(pl.col(SCORE).top_k(max_neighbors).min().alias("_kth"))
    ranked = (
        pairs.join(kth, on="_item", how="inner")
        .filter(pl.col(SCORE) >= pl.col("_kth"))
        .drop("_kth")
        .collect()
        .sort(["_item", SCORE, "_neighbor"], descending=[False, True, False])
        .with_columns((pl.int_range(pl.len()).over("_item") + 1).cast(pl.Int32).alias(RANK))
        .filter(pl.col(RANK) <= max_neighbors)
    )
    ids = item_ids.cast(pl.String)
    return pl.DataFrame(
        {
            ITEM_ID: ids.gather(ranked["_item"]),
            NEIGHBOR_ID: ids.gather(ranked["_neighbor"]),
            SCORE: ranked[SCORE].cast(pl.Float64),
            RANK: ranked[RANK],
        }
    )


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
        require_columns(events, [ITEM_ID, EVENT_TYPE, TS, SESSION_ID], "events")
        base = _session_events(events, params)
        return cls._from_scores(_pair_scores(base, params), _item_ids(base), params)

    @classmethod
    def fit_folds(
        cls, events: pl.DataFrame, cutoffs: Sequence[datetime], *, params: CoVisParams | None = None
    ) -> list[CoVisitation]:
        """``[fit(events before c) for c in cutoffs]``, counting each session's pairs once.

        A pair's score is a sum over sessions, so a session that ended before a cutoff adds the
        same to that fold and every later one: sessions are grouped by the first cutoff they end
        before, each group's pair scores are summed once, and a fold adds up its groups plus the
        sessions its cutoff cuts through (their events before it, as ``fit`` would see them).
        The tables equal ``fit``'s (sums of the integer default weights are exact; other weights
        can differ in the last bit from summing in another order).
        """
        params = params or CoVisParams()
        require_columns(events, [ITEM_ID, EVENT_TYPE, TS, SESSION_ID], "events")
        cuts = list(cutoffs)
        if not cuts or any(a >= b for a, b in zip(cuts, cuts[1:], strict=False)):
            raise ValueError(f"cutoffs must be non-empty and increasing, got {cuts}")
        base = _session_events(events.filter(pl.col(TS) < cuts[-1]), params)
        item_ids = _item_ids(base)
        spans = base.group_by("_session").agg(pl.col(TS).min().alias("_first"), pl.col(TS).max().alias("_last"))
        group = pl.lit(None, dtype=pl.Int32)
        for j in reversed(range(len(cuts))):  # the first cutoff the session ends before
            group = pl.when(pl.col("_last") < cuts[j]).then(pl.lit(j, dtype=pl.Int32)).otherwise(group)
        spans = spans.with_columns(group.alias("_group"))
        grouped = base.join(spans.select("_session", "_group"), on="_session", how="inner")
        complete = [
            _pair_scores(grouped.filter(pl.col("_group") == j).drop("_group"), params) for j in range(len(cuts))
        ]
        del grouped
        fitted = []
        ended: pl.DataFrame | None = None  # pair sums of the sessions that ended before the cutoff
        for j, cut in enumerate(cuts):
            ended = complete[j] if ended is None else _add_scores(ended, complete[j])
            crossing = spans.filter((pl.col("_first") < cut) & (pl.col("_last") >= cut)).select("_session")
            partial = _pair_scores(base.filter(pl.col(TS) < cut).join(crossing, on="_session", how="semi"), params)
            fitted.append(cls._from_scores(_add_scores(ended, partial), item_ids, params))
        return fitted

    @classmethod
    def _from_scores(cls, scores: pl.DataFrame, item_ids: pl.Series, params: CoVisParams) -> CoVisitation:
        """The neighbour table from summed pair scores (:func:`_pair_scores`): each item's ``max_neighbors`` best."""
        neighbors = _neighbor_table(scores, item_ids, params.max_neighbors)
        log.info(
            "co-visitation: %d items with neighbours, %d pairs kept", neighbors[ITEM_ID].n_unique(), neighbors.height
        )
        return cls(neighbors.select(list(NEIGHBOR_SCHEMA)).cast(NEIGHBOR_SCHEMA), params=params)  # type: ignore[arg-type]

    def neighbors(self) -> pl.DataFrame:
        """The neighbour table ``item_id``, ``neighbor_id``, ``score``, ``rank`` (1 = strongest)."""
        return self._neighbors

    def items(self) -> np.ndarray:
        """Every item the table mentions (as source or neighbour), sorted (a unicode array)."""
        distinct = pl.concat([self._neighbors[ITEM_ID], self._neighbors[NEIGHBOR_ID]]).unique().sort()
        return ids_array(distinct.to_list())

    def matrix(self, index: ItemIndex, *, drop_unknown: bool = False) -> sp.csr_matrix:
        """covis(i -> c) as a CSR matrix over ``index`` positions (float64); ``index`` must hold every item,
        unless ``drop_unknown``: then pairs with an item outside it are left out (a table fitted apart from
        the sources the index was built from, such as the bought-together one).

        Positions come from one hash join of the table's ids with the index's (a sorted-array search
        over millions of unicode ids took a minute per fold at 10M events).
        """
        known = pl.DataFrame(
            {"_id": pl.Series(index.ids.tolist(), dtype=pl.String), "_pos": np.arange(len(index), dtype=np.int64)}
        )
        positions = self._neighbors.select(ITEM_ID, NEIGHBOR_ID, SCORE)
        for column in (ITEM_ID, NEIGHBOR_ID):
            positions = positions.join(
                known.rename({"_pos": f"_{column}"}), left_on=column, right_on="_id", how="left", maintain_order="left"
            )
        if drop_unknown:
            positions = positions.drop_nulls([f"_{ITEM_ID}", f"_{NEIGHBOR_ID}"])
        rows = positions[f"_{ITEM_ID}"]
        cols = positions[f"_{NEIGHBOR_ID}"]
        if rows.null_count() or cols.null_count():
            raise ValueError("the item index lacks items of the co-visitation table")
        n = len(index)
        matrix = sp.csr_matrix(
            (positions[SCORE].to_numpy().astype(np.float64), (rows.to_numpy(), cols.to_numpy())), shape=(n, n)
        )
        matrix.sort_indices()
        return matrix

    def recommend(self, recent: pl.DataFrame, *, n: int, exclude_input: bool = False) -> pl.DataFrame:
        """Candidates from users' anchor items through :func:`covis_top`.

        Parameters
        ----------
        recent : pl.DataFrame
            ``user_id``, ``item_id``, ``weight``: the anchors and their weights (repeats summed).
        n : int
            Candidates per user.
        exclude_input : bool
            Drop candidates that are among the user's own anchors.

        Returns
        -------
        pl.DataFrame
            Candidates ``user_id``, ``item_id``, ``score``, ``rank``, sorted by user.
        """
        check_n(n)
        require_columns(recent, [USER_ID, ITEM_ID, WEIGHT], "recent")
        index = ItemIndex(self.items())
        pos = index.positions(recent[ITEM_ID].cast(pl.String).to_numpy())
        known = recent.with_columns(pos=pl.Series(pos)).filter(pl.col("pos") >= 0)
        users = sorted(known[USER_ID].cast(pl.String).unique().to_list())
        if not users:
            return pl.DataFrame(schema=CANDIDATE_SCHEMA)
        row = {u: r for r, u in enumerate(users)}
        rows = np.asarray([row[u] for u in known[USER_ID].cast(pl.String).to_list()], dtype=np.int64)
        anchors = sp.csr_matrix(
            (known[WEIGHT].cast(pl.Float64).to_numpy(), (rows, known["pos"].to_numpy())), shape=(len(users), len(index))
        )
        matrix = self.matrix(index)
        if exclude_input:
            hits = covis_top(matrix, anchors, n + int(np.diff(anchors.indptr).max()))
            hits = [
                (p[keep][:n], s[keep][:n])
                for r, (p, s) in enumerate(hits)
                for keep in [~np.isin(p, anchors.indices[anchors.indptr[r] : anchors.indptr[r + 1]])]
            ]
        else:
            hits = covis_top(matrix, anchors, n)
        lengths = [len(p) for p, _ in hits]
        return pl.DataFrame(
            {
                USER_ID: [u for u, k in zip(users, lengths, strict=True) for _ in range(k)],
                ITEM_ID: index.ids[np.concatenate([p for p, _ in hits])] if sum(lengths) else [],
                SCORE: np.concatenate([s for _, s in hits]) if sum(lengths) else [],
                "rank": np.concatenate([np.arange(1, k + 1, dtype=np.int32) for k in lengths]),
            },
            schema=CANDIDATE_SCHEMA,
        )

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
        require_columns(frame, list(NEIGHBOR_SCHEMA), COVIS_FILE)
        return cls(frame.select(list(NEIGHBOR_SCHEMA)).cast(NEIGHBOR_SCHEMA))  # type: ignore[arg-type]
