"""The one merge of candidate sources: one row per (user, item) with per-source scores and ranks.

:func:`merge_hits` works on arrays for a batch of users (the request path calls it with one user,
the batch path with many); :func:`merge_candidates` is the same merge for polars frames.
:func:`candidate_recall` measures how many relevant items the candidates contain at all -- the
ceiling the ranker works under.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from recs_pipeline.data.contract import ITEM_ID, USER_ID
from recs_pipeline.models.retrieval._common import (
    BEST_RANK,
    CANDIDATE_SCHEMA,
    N_SOURCES,
    RANK,
    SCORE,
    SOURCES,
    ItemIndex,
    require_columns,
)


@dataclass(frozen=True)
class SourceHits:
    """One source's ranked candidates for a batch of users, as aligned arrays.

    ``row`` is the user's position in the batch, ``item`` the item-index position, ``rank`` is
    1-based within the row.
    """

    row: np.ndarray
    item: np.ndarray
    score: np.ndarray
    rank: np.ndarray

    @classmethod
    def from_lists(cls, per_row: Sequence[tuple[np.ndarray, np.ndarray]]) -> SourceHits:
        """From per-row (positions, scores) lists, best first (rank = order)."""
        lengths = np.asarray([len(p) for p, _ in per_row], dtype=np.int64)
        if lengths.sum() == 0:
            return cls.empty()
        return cls(
            row=np.repeat(np.arange(len(per_row), dtype=np.int64), lengths),
            item=np.concatenate([np.asarray(p, dtype=np.int64) for p, _ in per_row]),
            score=np.concatenate([np.asarray(s, dtype=np.float64) for _, s in per_row]),
            rank=np.concatenate([np.arange(1, k + 1) for k in lengths]).astype(np.int64),
        )

    @classmethod
    def broadcast(cls, items: np.ndarray, scores: np.ndarray, n_rows: int) -> SourceHits:
        """The same ranked list for every row (a global list)."""
        k = len(items)
        return cls(
            row=np.repeat(np.arange(n_rows, dtype=np.int64), k),
            item=np.tile(np.asarray(items, dtype=np.int64), n_rows),
            score=np.tile(np.asarray(scores, dtype=np.float64), n_rows),
            rank=np.tile(np.arange(1, k + 1, dtype=np.int64), n_rows),
        )

    def take(self, keep: np.ndarray) -> SourceHits:
        """The hits selected by a mask (ranks keep their values: a removed hit leaves a gap)."""
        return SourceHits(self.row[keep], self.item[keep], self.score[keep], self.rank[keep])

    @classmethod
    def empty(cls) -> SourceHits:
        z = np.empty(0, dtype=np.int64)
        return cls(row=z, item=z, score=np.empty(0), rank=z)


@dataclass(frozen=True)
class Candidates:
    """Merged candidates of a batch: one row per (user row, item), sorted by row then item.

    ``scores`` and ``ranks`` have one column per source in ``sources`` order (sorted names), NaN
    where that source did not propose the item.
    """

    row: np.ndarray
    item: np.ndarray
    sources: tuple[str, ...]
    scores: np.ndarray
    ranks: np.ndarray

    def __len__(self) -> int:
        return len(self.item)

    def take(self, keep: np.ndarray) -> Candidates:
        """The candidates selected by a mask or index array."""
        return Candidates(self.row[keep], self.item[keep], self.sources, self.scores[keep], self.ranks[keep])


def withheld_mask(
    row: np.ndarray,
    item: np.ndarray,
    withheld: Mapping[str, Iterable[str]],
    *,
    user_ids: Sequence[str],
    index: ItemIndex,
) -> np.ndarray:
    """True where a (user row, item position) pair is one the user withheld: the user hid the item
    (negative feedback, ``hidden_item_ids`` of the profile). The one rule after the merge, for
    training's candidates, the batch scorer and the service (which also says why, per item)."""
    pairs = [(r, index.positions(list(items))) for r, u in enumerate(user_ids) if (items := withheld.get(u))]
    if not pairs:
        return np.zeros(len(item), dtype=bool)
    width = np.int64(max(len(index), 1))
    keys = np.concatenate([r * width + pos[pos >= 0] for r, pos in pairs])
    return np.isin(np.asarray(row, dtype=np.int64) * width + np.asarray(item, dtype=np.int64), keys)


def hits_frame(hits: SourceHits, *, user_ids: Sequence[str], item_ids: np.ndarray) -> pl.DataFrame:
    """One source's hits as candidates ``user_id``, ``item_id``, ``score``, ``rank``, sorted by user and rank."""
    users = np.asarray(list(user_ids), dtype=object)
    return pl.DataFrame(
        {
            USER_ID: pl.Series(USER_ID, users[hits.row].tolist(), dtype=pl.String),
            ITEM_ID: pl.Series(ITEM_ID, item_ids[hits.item], dtype=pl.String),
            SCORE: pl.Series(SCORE, hits.score, dtype=pl.Float64),
            RANK: pl.Series(RANK, hits.rank, dtype=pl.Int32),
        }
    ).sort(USER_ID, RANK)


def merge_hits(hits: Mapping[str, SourceHits], *, n_items: int, limits: Mapping[str, int] | None = None) -> Candidates:
    """Union sources into one row per (user row, item) with per-source scores and ranks.

    Parameters
    ----------
    hits : Mapping[str, SourceHits]
        Source name -> its candidates. A source must not repeat a (row, item) pair.
    n_items : int
        Size of the item index the positions refer to.
    limits : Mapping[str, int], optional
        Source name -> keep only ranks ``<= limit`` of that source. Sources not listed are kept whole.
    """
    if not hits:
        raise ValueError("no candidate sources")
    limits = dict(limits or {})
    unknown = set(limits) - set(hits)
    if unknown:
        raise ValueError(f"limits for unknown sources {sorted(unknown)}")
    names = tuple(sorted(hits))
    keys, kept = [], []
    for name in names:
        h = hits[name]
        mask = h.rank <= limits[name] if name in limits else np.ones(len(h.rank), dtype=bool)
        k = h.row[mask] * n_items + h.item[mask]
        if len(np.unique(k)) != len(k):
            raise ValueError(f"source {name!r} repeats (user_id, item_id) pairs")
        keys.append(k)
        kept.append(mask)
    merged, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    scores = np.full((len(merged), len(names)), np.nan)
    ranks = np.full((len(merged), len(names)), np.nan)
    start = 0
    for j, name in enumerate(names):
        at = inverse[start : start + len(keys[j])]
        scores[at, j] = hits[name].score[kept[j]]
        ranks[at, j] = hits[name].rank[kept[j]]
        start += len(keys[j])
    return Candidates(merged // n_items, merged % n_items, names, scores, ranks)


def merge_candidates(
    sources: Mapping[str, pl.DataFrame],
    *,
    limits: Mapping[str, int] | None = None,
) -> pl.DataFrame:
    """:func:`merge_hits` for candidate frames (the batch path).

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
    frames = {}
    for name, frame in sources.items():
        require_columns(frame, list(CANDIDATE_SCHEMA), f"source {name!r}")
        frames[name] = frame.select(list(CANDIDATE_SCHEMA)).cast(CANDIDATE_SCHEMA)  # type: ignore[arg-type]
    users = ItemIndex.union(*(f[USER_ID].to_numpy() for f in frames.values()))  # a sorted id index serves users too
    items = ItemIndex.union(*(f[ITEM_ID].to_numpy() for f in frames.values()))
    hits = {
        name: SourceHits(
            row=users.positions(f[USER_ID].to_numpy()),
            item=items.positions(f[ITEM_ID].to_numpy()),
            score=f[SCORE].to_numpy().astype(np.float64),
            rank=f[RANK].to_numpy().astype(np.int64),
        )
        for name, f in frames.items()
    }
    merged = merge_hits(hits, n_items=max(len(items), 1), limits=limits)
    return candidates_frame(merged, user_ids=users.ids, item_ids=items.ids)


def candidates_frame(cands: Candidates, *, user_ids: np.ndarray, item_ids: np.ndarray) -> pl.DataFrame:
    """Merged candidates as a frame (columns as :func:`merge_candidates` documents)."""
    columns: dict[str, pl.Series] = {
        USER_ID: pl.Series(USER_ID, user_ids[cands.row], dtype=pl.String),
        ITEM_ID: pl.Series(ITEM_ID, item_ids[cands.item], dtype=pl.String),
    }
    for j, name in enumerate(cands.sources):
        columns[f"{name}_score"] = pl.Series(cands.scores[:, j], dtype=pl.Float64, nan_to_null=True)
        columns[f"{name}_rank"] = pl.Series(cands.ranks[:, j], dtype=pl.Float64, nan_to_null=True).cast(pl.Int32)
    names = list(cands.sources)
    rank_cols = [f"{name}_rank" for name in names]
    provenance = pl.concat_list(
        [
            pl.when(pl.col(c).is_not_null()).then(pl.lit(name)).otherwise(pl.lit(None, pl.String))
            for name, c in zip(names, rank_cols, strict=True)
        ]
    ).list.drop_nulls()
    return (
        pl.DataFrame(columns)
        .with_columns(provenance.alias(SOURCES), pl.min_horizontal(rank_cols).alias(BEST_RANK))
        .with_columns(pl.col(SOURCES).list.len().cast(pl.Int32).alias(N_SOURCES))
        .sort([USER_ID, BEST_RANK, N_SOURCES, ITEM_ID], descending=[False, False, True, False])
        .select(
            USER_ID,
            ITEM_ID,
            *[f"{name}_{x}" for name in names for x in ("score", "rank")],
            SOURCES,
            N_SOURCES,
            BEST_RANK,
        )
    )


def candidate_recall(candidates: pl.DataFrame, truth: pl.DataFrame, *, k: int | None) -> float:
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
    require_columns(truth, [USER_ID, ITEM_ID], "truth")
    require_columns(candidates, [USER_ID, ITEM_ID], "candidates")
    relevant = truth.select(pl.col(USER_ID).cast(pl.String), pl.col(ITEM_ID).cast(pl.String)).unique()
    if relevant.height == 0:
        return float("nan")
    pool = candidates
    if k is not None:
        if k <= 0:
            raise ValueError(f"k must be > 0, got {k}")
        rank_col = RANK if RANK in candidates.columns else BEST_RANK
        require_columns(candidates, [rank_col], "candidates")
        pool = pool.filter(pl.col(rank_col) <= k)
    pool = pool.select(pl.col(USER_ID).cast(pl.String), pl.col(ITEM_ID).cast(pl.String)).unique()
    hits = relevant.join(pool, on=[USER_ID, ITEM_ID], how="semi").height
    return hits / relevant.height
