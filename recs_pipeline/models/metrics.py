"""Offline evaluation metrics of the temporal protocol: full-catalog top-K ranking, no sampled negatives.

Inputs are polars DataFrames:

* ``ranked``: ``user_id``, ``item_id``, ``rank`` (integer >= 1, unique per user): one method's
  top-K list per user, possibly shorter than K.
* ``truth``: ``user_id``, ``item_id``, ``relevance`` (finite float > 0, one row per (user, item)):
  graded relevance of the items each user interacted with in the label window.
* ``users``: the evaluated user ids. Every metric is averaged over exactly these users: a user with
  no rows in ``ranked`` scores 0 on every accuracy metric and is still counted; a user with no rows
  in ``truth`` (no relevant item) also scores 0. Rows of ``ranked`` or ``truth`` for users not in
  ``users`` are ignored.

Conventions (all per user, ``rel`` = the user's relevant items, ``rel_i`` = relevance of the item
at rank ``i``, 0 when not relevant):

* ``recall@K = |top-K ∩ rel| / min(|rel|, K)`` — the denominator is ``min(|rel|, K)``, so a perfect
  list scores 1 even when the user has more than K relevant items.
* ``precision@K = |top-K ∩ rel| / K`` — always over K, so a list shorter than K (or a user with
  fewer than K relevant items) cannot reach 1.
* ``ndcg@K = DCG@K / IDCG@K`` with graded gains ``2^rel_i - 1`` and discount ``log2(i + 1)``;
  ``IDCG@K`` is the DCG of the user's relevant items sorted by decreasing relevance, truncated at K.
* ``map@K``: mean of ``AP@K = (1 / min(|rel|, K)) * Σ_{i<=K} P@i · [rel_i > 0]`` (binary relevance,
  same ``min(|rel|, K)`` denominator as recall).
* ``hitrate@K = 1`` when some relevant item is in the top K.
* ``mrr``: mean of ``1 / (rank of the first relevant item)`` over the *whole* list given (not cut at
  any K), 0 when none.
* ``coverage@K``: distinct items in the evaluated users' top-K lists / ``n_catalog_items``.
* ``novelty@K``: mean over recommended (user, item) pairs in the top K of ``-log2 p(item)``, with
  add-one smoothed popularity ``p(item) = (count(item) + 1) / (Σ count + n_catalog_items)``
  (items absent from the popularity table count 0).

Ranks are used as positions ``i``: a list with gaps in its ranks is scored as if the missing
positions held non-relevant items.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

logger = logging.getLogger(__name__)

USER_ID = "user_id"
ITEM_ID = "item_id"
RANK = "rank"
RELEVANCE = "relevance"
COUNT = "count"

DEFAULT_TABLE_METRICS: tuple[str, ...] = (
    "ndcg@20",
    "recall@20",
    "precision@20",
    "map@20",
    "hitrate@20",
    "mrr",
    "coverage@20",
    "novelty@20",
)

# Bootstrap resamples are drawn in chunks of at most this many user draws (memory bound).
_BOOTSTRAP_CHUNK_DRAWS = 4_000_000

UsersLike = pl.Series | pl.DataFrame | Sequence[str]


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _require_columns(df: pl.DataFrame, columns: Sequence[str], name: str) -> None:
    if not isinstance(df, pl.DataFrame):
        raise ValueError(f"{name} must be a polars DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} is missing column(s) {missing}; has {df.columns}")
    for c in columns:
        n_null = df[c].null_count()
        if n_null:
            raise ValueError(f"{name}.{c} has {n_null} null value(s)")


def _number(value: object, what: str) -> float:
    """An aggregate (min, mean) of a non-empty, null-free numeric column, which the validators ensure."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} is {value!r}, not a number")
    return value


def _pair_key(a: str, b: str) -> pl.Expr:
    """A 64-bit hash of two columns (equal pairs always get equal keys; collisions are possible)."""
    return pl.col(a).hash(11) * pl.lit(0x9E3779B97F4A7C15, dtype=pl.UInt64) ^ pl.col(b).hash(13)


def _has_duplicates(df: pl.DataFrame, pairs: Sequence[tuple[str, str]]) -> list[bool]:
    """Whether each column pair has a repeated value pair.

    A fast hashed count answers "no duplicates" exactly (equal pairs hash equally); only when it
    suggests a duplicate (a real one or a hash collision) is the exact, slower check run.
    """
    n_keys = df.select([_pair_key(a, b).n_unique().alias(str(i)) for i, (a, b) in enumerate(pairs)]).row(0)
    return [
        n != df.height and df.select(pl.struct(a, b).is_duplicated().any()).item()
        for n, (a, b) in zip(n_keys, pairs, strict=True)
    ]


def _as_string(df: pl.DataFrame, columns: Sequence[str], name: str) -> pl.DataFrame:
    try:
        return df.with_columns([pl.col(c).cast(pl.String) for c in columns])
    except pl.exceptions.PolarsError as exc:  # pragma: no cover - exotic dtypes
        raise ValueError(f"{name}: id columns {list(columns)} must be castable to string") from exc


def _validate_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks_t = tuple(ks)
    if not ks_t:
        raise ValueError("ks must contain at least one cutoff")
    for k in ks_t:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"every k in ks must be a positive integer, got {k!r}")
    if len(set(ks_t)) != len(ks_t):
        raise ValueError(f"ks has duplicates: {ks_t}")
    return tuple(int(k) for k in ks_t)


def _validate_users(users: UsersLike) -> pl.DataFrame:
    """Return the evaluated users as a one-column String DataFrame (input order, no duplicates)."""
    if isinstance(users, pl.DataFrame):
        _require_columns(users, [USER_ID], "users")
        series = users[USER_ID]
    elif isinstance(users, pl.Series):
        series = users
    elif isinstance(users, str):
        raise ValueError("users must be a collection of user ids, not a single string")
    else:
        series = pl.Series(USER_ID, list(users), dtype=pl.String)
    if series.len() == 0:
        raise ValueError("users is empty: at least one evaluated user is required")
    if series.null_count():
        raise ValueError("users contains null ids")
    series = series.cast(pl.String).rename(USER_ID)
    if series.n_unique() != series.len():
        raise ValueError(f"users has {series.len() - series.n_unique()} duplicate id(s)")
    return series.to_frame()


def _validate_ranked(ranked: pl.DataFrame) -> pl.DataFrame:
    _require_columns(ranked, [USER_ID, ITEM_ID, RANK], "ranked")
    if not ranked[RANK].dtype.is_integer():
        raise ValueError(f"ranked.rank must be an integer column, got {ranked[RANK].dtype}")
    ranked = _as_string(ranked.select(USER_ID, ITEM_ID, RANK), [USER_ID, ITEM_ID], "ranked")
    if ranked.height:
        if _number(ranked[RANK].min(), "min(ranked.rank)") < 1:
            raise ValueError("ranked.rank must be 1-based (>= 1)")
        dup_rank, dup_item = _has_duplicates(ranked, [(USER_ID, RANK), (USER_ID, ITEM_ID)])
        if dup_rank:
            raise ValueError("ranked has duplicate ranks for a user: rank must be unique per user")
        if dup_item:
            raise ValueError("ranked lists an item more than once for a user")
    return ranked.with_columns(pl.col(RANK).cast(pl.Int64))


def _validate_truth(truth: pl.DataFrame) -> pl.DataFrame:
    _require_columns(truth, [USER_ID, ITEM_ID, RELEVANCE], "truth")
    if not truth[RELEVANCE].dtype.is_numeric():
        raise ValueError(f"truth.relevance must be numeric, got {truth[RELEVANCE].dtype}")
    truth = _as_string(truth.select(USER_ID, ITEM_ID, RELEVANCE), [USER_ID, ITEM_ID], "truth")
    truth = truth.with_columns(pl.col(RELEVANCE).cast(pl.Float64))
    if truth.height:
        rel = truth[RELEVANCE]
        if not rel.is_finite().all() or _number(rel.min(), "min(truth.relevance)") <= 0:
            raise ValueError("truth.relevance must be finite and > 0 (list only relevant items)")
        if _has_duplicates(truth, [(USER_ID, ITEM_ID)])[0]:
            raise ValueError("truth has duplicate (user_id, item_id) rows")
    return truth


def _validate_popularity(item_popularity: pl.DataFrame) -> pl.DataFrame:
    _require_columns(item_popularity, [ITEM_ID, COUNT], "item_popularity")
    if not item_popularity[COUNT].dtype.is_numeric():
        raise ValueError(f"item_popularity.count must be numeric, got {item_popularity[COUNT].dtype}")
    pop = _as_string(item_popularity.select(ITEM_ID, COUNT), [ITEM_ID], "item_popularity")
    pop = pop.with_columns(pl.col(COUNT).cast(pl.Float64))
    if pop.height:
        if not pop[COUNT].is_finite().all() or _number(pop[COUNT].min(), "min(item_popularity.count)") < 0:
            raise ValueError("item_popularity.count must be finite and >= 0")
        if pop[ITEM_ID].n_unique() != pop.height:
            raise ValueError("item_popularity has duplicate item_id rows")
    return pop


def _validate_n_catalog(n_catalog_items: int) -> int:
    if isinstance(n_catalog_items, bool) or not isinstance(n_catalog_items, int | np.integer) or n_catalog_items < 1:
        raise ValueError(f"n_catalog_items must be a positive integer, got {n_catalog_items!r}")
    return int(n_catalog_items)


def _validate_k(k: int) -> int:
    return _validate_ks((k,))[0]


# --------------------------------------------------------------------------------------------------
# Per-user metrics
# --------------------------------------------------------------------------------------------------


def _restrict(df: pl.DataFrame, users_df: pl.DataFrame) -> pl.DataFrame:
    return df.join(users_df, on=USER_ID, how="semi")


def _hits(ranked: pl.DataFrame, truth: pl.DataFrame) -> pl.DataFrame:
    """Relevant recommended items: ``user_id``, ``rank``, ``relevance``, ``hit_no`` (1-based, by rank)."""
    # ``truth`` is already restricted to the evaluated users, so the inner join restricts ``ranked`` too.
    return (
        ranked.lazy()
        .join(truth.lazy(), on=[USER_ID, ITEM_ID], how="inner")
        .select(USER_ID, RANK, RELEVANCE)
        .collect()
        .sort(USER_ID, RANK)
        .with_columns(hit_no=pl.int_range(1, pl.len() + 1).over(USER_ID))
    )


def _ideal(truth: pl.DataFrame) -> pl.DataFrame:
    """Truth with each user's ideal position (1-based, by decreasing relevance) and relevant count."""
    return (
        truth.sort([USER_ID, RELEVANCE], descending=[False, True])
        .with_columns(
            ideal_pos=pl.int_range(1, pl.len() + 1).over(USER_ID),
            n_rel=pl.len().over(USER_ID),
        )
        .select(USER_ID, RELEVANCE, "ideal_pos", "n_rel")
    )


def _gain(rel: pl.Expr) -> pl.Expr:
    return pl.lit(2.0).pow(rel) - 1.0


def _discount(pos: pl.Expr) -> pl.Expr:
    return (pos.cast(pl.Float64) + 1.0).log(2.0)


def _aggregate_frames(hits: pl.DataFrame, ideal: pl.DataFrame, *, ks: Sequence[int]) -> list[pl.DataFrame]:
    """One small per-user aggregate frame per metric family (users without rows are absent)."""
    n_rel = ideal.group_by(USER_ID).agg(pl.col("n_rel").first())
    frames: list[pl.DataFrame] = [n_rel]
    aggs: list[pl.Expr] = [(1.0 / pl.col(RANK).min()).alias("mrr")]
    for k in ks:
        in_k = pl.col(RANK) <= k
        aggs += [
            in_k.sum().cast(pl.Float64).alias(f"_hits@{k}"),
            (_gain(pl.col(RELEVANCE)) / _discount(pl.col(RANK))).filter(in_k).sum().alias(f"_dcg@{k}"),
            (pl.col("hit_no") / pl.col(RANK)).filter(in_k).sum().cast(pl.Float64).alias(f"_ap_sum@{k}"),
        ]
    frames.append(hits.group_by(USER_ID).agg(aggs))
    frames.append(
        ideal.group_by(USER_ID).agg(
            [
                (_gain(pl.col(RELEVANCE)) / _discount(pl.col("ideal_pos")))
                .filter(pl.col("ideal_pos") <= k)
                .sum()
                .alias(f"_idcg@{k}")
                for k in ks
            ]
        )
    )
    return frames


def _per_user(ranked: pl.DataFrame, truth: pl.DataFrame, users_df: pl.DataFrame, *, ks: Sequence[int]) -> pl.DataFrame:
    """All per-user accuracy metrics for validated, string-typed inputs (one row per user, users order)."""
    truth = _restrict(truth, users_df)
    frames = _aggregate_frames(_hits(ranked, truth), _ideal(truth), ks=ks)
    out = users_df
    for frame in frames:
        out = out.join(frame, on=USER_ID, how="left", maintain_order="left")
    out = out.fill_null(0)
    cols: list[pl.Expr] = []
    for k in ks:
        denom = pl.min_horizontal(pl.col("n_rel"), pl.lit(k)).cast(pl.Float64)
        safe = pl.when(denom > 0)
        cols += [
            safe.then(pl.col(f"_dcg@{k}") / pl.col(f"_idcg@{k}")).otherwise(0.0).alias(f"ndcg@{k}"),
            safe.then(pl.col(f"_hits@{k}") / denom).otherwise(0.0).alias(f"recall@{k}"),
            (pl.col(f"_hits@{k}") / float(k)).alias(f"precision@{k}"),
            safe.then(pl.col(f"_ap_sum@{k}") / denom).otherwise(0.0).alias(f"map@{k}"),
            (pl.col(f"_hits@{k}") > 0).cast(pl.Float64).alias(f"hitrate@{k}"),
        ]
    cols.append(pl.col("mrr").cast(pl.Float64))
    return out.select(pl.col(USER_ID), *cols)


def per_user_metrics(
    ranked: pl.DataFrame, truth: pl.DataFrame, users: UsersLike, *, ks: Sequence[int] = (10, 20, 50)
) -> pl.DataFrame:
    """Every per-user accuracy metric for every cutoff, in one pass.

    Parameters
    ----------
    ranked : pl.DataFrame
        ``user_id``, ``item_id``, ``rank`` (integer >= 1, unique per user).
    truth : pl.DataFrame
        ``user_id``, ``item_id``, ``relevance`` (> 0), one row per (user, item).
    users : pl.Series, pl.DataFrame or sequence of str
        The evaluated users (a DataFrame needs a ``user_id`` column).
    ks : sequence of int, keyword-only
        Positive, distinct cutoffs.

    Returns
    -------
    pl.DataFrame
        One row per evaluated user, in ``users`` order: ``user_id``, then ``ndcg@k``, ``recall@k``,
        ``precision@k``, ``map@k``, ``hitrate@k`` for each k, then ``mrr`` (all Float64 in [0, 1]; see the module
        docstring for the formulas). Users without recommendations or without relevant items score 0.

    Raises
    ------
    ValueError
        On missing columns, nulls, duplicate ranks or items per user, non-positive relevance,
        non-positive ks, or empty / duplicated users.
    """
    ks_t = _validate_ks(ks)
    users_df = _validate_users(users)
    return _per_user(_validate_ranked(ranked), _validate_truth(truth), users_df, ks=ks_t)


def recall_at_k(ranked: pl.DataFrame, truth: pl.DataFrame, users: UsersLike, *, k: int) -> pl.DataFrame:
    """Per-user ``recall@k = |top-k ∩ rel| / min(|rel|, k)``, range [0, 1].

    The denominator ``min(|rel|, k)`` makes a perfect top-k list score 1 even when the user has more
    than k relevant items. Users without relevant items or recommendations score 0.

    Returns
    -------
    pl.DataFrame
        ``user_id``, ``recall@k`` (one row per evaluated user, in ``users`` order).
    """
    k = _validate_k(k)
    return per_user_metrics(ranked, truth, users, ks=(k,)).select(USER_ID, f"recall@{k}")


def ndcg_at_k(ranked: pl.DataFrame, truth: pl.DataFrame, users: UsersLike, *, k: int) -> pl.DataFrame:
    """Per-user graded ``ndcg@k = DCG@k / IDCG@k``, range [0, 1].

    ``DCG@k = Σ_{i<=k} (2^rel_i - 1) / log2(i + 1)`` over the list's ranks ``i``; ``IDCG@k`` is the
    same sum over the user's relevant items sorted by decreasing relevance, truncated at k. Users
    without relevant items or recommendations score 0.

    Returns
    -------
    pl.DataFrame
        ``user_id``, ``ndcg@k`` (one row per evaluated user, in ``users`` order).
    """
    k = _validate_k(k)
    return per_user_metrics(ranked, truth, users, ks=(k,)).select(USER_ID, f"ndcg@{k}")


def precision_at_k(ranked: pl.DataFrame, truth: pl.DataFrame, users: UsersLike, *, k: int) -> pl.DataFrame:
    """Per-user ``precision@k = |top-k ∩ rel| / k``, range [0, 1].

    The denominator is always ``k``: a list shorter than ``k``, or a user with fewer than ``k``
    relevant items, cannot score 1. Users without relevant items or recommendations score 0.

    Returns
    -------
    pl.DataFrame
        ``user_id``, ``precision@k`` (one row per evaluated user, in ``users`` order).
    """
    k = _validate_k(k)
    return per_user_metrics(ranked, truth, users, ks=(k,)).select(USER_ID, f"precision@{k}")


def map_at_k(ranked: pl.DataFrame, truth: pl.DataFrame, users: UsersLike, *, k: int) -> pl.DataFrame:
    """Per-user ``AP@k = (1 / min(|rel|, k)) Σ_{i<=k} P@i · [rel_i > 0]``, range [0, 1].

    Binary relevance (every truth row is relevant); ``P@i`` is the fraction of relevant items among
    ranks 1..i. Same ``min(|rel|, k)`` denominator as :func:`recall_at_k`. Users without relevant items
    or recommendations score 0. The mean of this column over users is MAP@k.

    Returns
    -------
    pl.DataFrame
        ``user_id``, ``map@k`` (one row per evaluated user, in ``users`` order).
    """
    k = _validate_k(k)
    return per_user_metrics(ranked, truth, users, ks=(k,)).select(USER_ID, f"map@{k}")


def hitrate_at_k(ranked: pl.DataFrame, truth: pl.DataFrame, users: UsersLike, *, k: int) -> pl.DataFrame:
    """Per-user ``hitrate@k = 1 if |top-k ∩ rel| > 0 else 0``, range {0, 1}.

    Returns
    -------
    pl.DataFrame
        ``user_id``, ``hitrate@k`` (one row per evaluated user, in ``users`` order).
    """
    k = _validate_k(k)
    return per_user_metrics(ranked, truth, users, ks=(k,)).select(USER_ID, f"hitrate@{k}")


def mrr(ranked: pl.DataFrame, truth: pl.DataFrame, users: UsersLike) -> pl.DataFrame:
    """Per-user reciprocal rank ``1 / rank of the first relevant item``, 0 if none, range [0, 1].

    Uses the whole ranked list given (no cutoff). The mean of this column over users is MRR.

    Returns
    -------
    pl.DataFrame
        ``user_id``, ``mrr`` (one row per evaluated user, in ``users`` order).
    """
    return per_user_metrics(ranked, truth, users, ks=(1,)).select(USER_ID, "mrr")


# --------------------------------------------------------------------------------------------------
# Aggregate metrics
# --------------------------------------------------------------------------------------------------


def _top_k(ranked: pl.DataFrame, users_df: pl.DataFrame, k: int) -> pl.DataFrame:
    return _restrict(ranked.filter(pl.col(RANK) <= k), users_df)


def _coverage(top_k: pl.DataFrame, n_catalog_items: int) -> float:
    n_distinct = top_k[ITEM_ID].n_unique()
    if n_distinct > n_catalog_items:
        raise ValueError(
            f"{n_distinct} distinct items are recommended but n_catalog_items is {n_catalog_items}: "
            "n_catalog_items must count every recommendable item"
        )
    return n_distinct / n_catalog_items


def _self_information(top_k: pl.DataFrame, pop: pl.DataFrame, n_catalog_items: int) -> pl.DataFrame:
    """``top_k`` with ``info = -log2((count + 1) / (total + n_catalog_items))`` per row."""
    total = float(pop[COUNT].sum()) if pop.height else 0.0
    denom = total + n_catalog_items
    return top_k.join(pop, on=ITEM_ID, how="left").with_columns(
        info=-((pl.col(COUNT).fill_null(0.0) + 1.0) / denom).log(2.0)
    )


def catalog_coverage(ranked: pl.DataFrame, users: UsersLike, *, k: int, n_catalog_items: int) -> float:
    """Catalog coverage ``coverage@k = |∪_u top-k(u)| / n_catalog_items``, range [0, 1].

    Only the evaluated users' lists count.

    Raises
    ------
    ValueError
        On invalid inputs, or when more distinct items are recommended than ``n_catalog_items``.
    """
    k = _validate_k(k)
    n = _validate_n_catalog(n_catalog_items)
    return _coverage(_top_k(_validate_ranked(ranked), _validate_users(users), k), n)


def novelty(
    ranked: pl.DataFrame, users: UsersLike, *, k: int, item_popularity: pl.DataFrame, n_catalog_items: int
) -> float:
    """Mean self-information of recommendations, range [0, ∞).

    ``novelty@k = mean over recommended (user, item) pairs with rank <= k of -log2 p(item)`` with the
    add-one smoothed popularity ``p(item) = (count(item) + 1) / (Σ_j count(j) + n_catalog_items)``;
    items missing from ``item_popularity`` have count 0. Since ``count <= Σ count`` and
    ``n_catalog_items >= 1``, ``p <= 1`` and every term is >= 0. Returns 0.0 when no pair is recommended.
    """
    k = _validate_k(k)
    n = _validate_n_catalog(n_catalog_items)
    top = _top_k(_validate_ranked(ranked), _validate_users(users), k)
    if top.height == 0:
        return 0.0
    return float(_number(_self_information(top, _validate_popularity(item_popularity), n)["info"].mean(), "novelty"))


# --------------------------------------------------------------------------------------------------
# Evaluation with bootstrap confidence intervals
# --------------------------------------------------------------------------------------------------


def _bootstrap(
    means_of: np.ndarray,
    ratio_num: np.ndarray,
    ratio_den: np.ndarray,
    *,
    n_bootstrap: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Resampled statistics: column means of ``means_of`` and ratios ``Σ num / Σ den`` per column.

    Each resample draws ``n`` users with replacement (``numpy.random.Generator(seed)``); a resample is
    represented by the multiplicity of each user, so statistics are one matrix product per chunk.
    """
    n = means_of.shape[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CHUNK_DRAWS // n)
    means = np.empty((n_bootstrap, means_of.shape[1]))
    ratios = np.empty((n_bootstrap, ratio_num.shape[1]))
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        idx = rng.integers(0, n, size=(b, n))
        weights = np.bincount((idx + (np.arange(b) * n)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        weights = weights.astype(np.float64)
        means[start : start + b] = weights @ means_of / n
        num = weights @ ratio_num
        den = weights @ ratio_den
        ratios[start : start + b] = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return means, ratios


def bootstrap_mean(
    values: np.ndarray, *, n_bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict[str, float]:
    """The mean of per-user ``values`` with its bootstrap interval (users resampled as in :func:`evaluate`)."""
    n_bootstrap = _validate_bootstrap(n_bootstrap, confidence)
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    empty = np.zeros((len(values), 0))
    means, _ = _bootstrap(values[:, None], empty, empty, n_bootstrap=n_bootstrap, seed=seed)
    low, high = _percentiles(means, confidence)
    return {"value": float(values.mean()), "ci_low": float(low[0]), "ci_high": float(high[0])}


def _validate_bootstrap(n_bootstrap: int, confidence: float) -> int:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int | np.integer) or n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be a positive integer, got {n_bootstrap!r}")
    if not (isinstance(confidence, float | int) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return int(n_bootstrap)


def _percentiles(resampled: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the resamples."""
    alpha = (1.0 - float(confidence)) / 2.0
    low, high = np.quantile(resampled, [alpha, 1.0 - alpha], axis=0)
    return low, high


def evaluate(
    ranked: pl.DataFrame,
    truth: pl.DataFrame,
    users: UsersLike,
    *,
    ks: Sequence[int] = (10, 20, 50),
    item_popularity: pl.DataFrame,
    n_catalog_items: int,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, float] | int]:
    """All metrics of one method with percentile-bootstrap confidence intervals over users.

    Parameters
    ----------
    ranked, truth, users
        See the module docstring.
    ks : sequence of int, keyword-only
        Positive, distinct cutoffs.
    item_popularity : pl.DataFrame, keyword-only
        ``item_id``, ``count`` (interactions before the cutoff, >= 0), for novelty.
    n_catalog_items : int, keyword-only
        Catalog size, for coverage and novelty smoothing.
    n_bootstrap : int, keyword-only
        Number of bootstrap resamples (>= 1).
    seed : int, keyword-only
        Seed of ``numpy.random.default_rng``; equal inputs and seed give identical intervals.
    confidence : float, keyword-only
        Two-sided interval level in (0, 1); bounds are the ``(1 ± confidence) / 2`` percentiles.

    Returns
    -------
    dict
        ``"users"``: number of evaluated users; for each k: ``"ndcg@k"``, ``"recall@k"``,
        ``"precision@k"``, ``"map@k"``,
        ``"hitrate@k"``, ``"coverage@k"``, ``"novelty@k"``; and ``"mrr"``; each
        ``{"value", "ci_low", "ci_high"}``. Accuracy metrics are means of per-user values over all
        evaluated users, with intervals from resampling users with replacement (per-user values are
        computed once). ``novelty@k`` is the pooled mean over recommended pairs, bootstrapped as the
        ratio ``Σ_u info_u / Σ_u |top-k(u)|`` over the same resamples. ``coverage@k`` is a
        property of the whole set of lists, not a per-user mean, and the user bootstrap is biased
        for it (a resample holds ~63% distinct users, so it almost never reaches the full-sample
        coverage); it is reported with ``ci_low == ci_high == value``.
    """
    ks_t = _validate_ks(ks)
    n_bootstrap = _validate_bootstrap(n_bootstrap, confidence)
    n_cat = _validate_n_catalog(n_catalog_items)
    users_df = _validate_users(users)
    ranked_v = _validate_ranked(ranked)
    truth_v = _validate_truth(truth)
    pop = _validate_popularity(item_popularity)

    per_user = _per_user(ranked_v, truth_v, users_df, ks=ks_t)
    mean_names = [c for c in per_user.columns if c != USER_ID]
    mean_matrix = per_user.select(mean_names).to_numpy().astype(np.float64, copy=False)

    coverages: dict[int, float] = {}
    info_cols: list[np.ndarray] = []
    count_cols: list[np.ndarray] = []
    for k in ks_t:
        top = _top_k(ranked_v, users_df, k)
        coverages[k] = _coverage(top, n_cat)
        per_user_info = (
            _self_information(top, pop, n_cat).group_by(USER_ID).agg(pl.col("info").sum(), pl.len().alias("n"))
        )
        aligned = users_df.join(per_user_info, on=USER_ID, how="left", maintain_order="left").fill_null(0)
        info_cols.append(aligned["info"].cast(pl.Float64).to_numpy())
        count_cols.append(aligned["n"].cast(pl.Float64).to_numpy())
    info = np.column_stack(info_cols)
    counts = np.column_stack(count_cols)

    boot_means, boot_ratios = _bootstrap(mean_matrix, info, counts, n_bootstrap=n_bootstrap, seed=seed)
    mean_lo, mean_hi = _percentiles(boot_means, confidence)
    ratio_lo, ratio_hi = _percentiles(boot_ratios, confidence)

    results: dict[str, dict[str, float] | int] = {"users": users_df.height}
    point_means = mean_matrix.mean(axis=0)
    for j, name in enumerate(mean_names):
        results[name] = {"value": float(point_means[j]), "ci_low": float(mean_lo[j]), "ci_high": float(mean_hi[j])}
    info_tot, count_tot = info.sum(axis=0), counts.sum(axis=0)
    for j, k in enumerate(ks_t):
        nov = float(info_tot[j] / count_tot[j]) if count_tot[j] > 0 else 0.0
        results[f"novelty@{k}"] = {"value": nov, "ci_low": float(ratio_lo[j]), "ci_high": float(ratio_hi[j])}
        cov = coverages[k]
        results[f"coverage@{k}"] = {"value": cov, "ci_low": cov, "ci_high": cov}
    logger.debug("evaluated %d users at ks=%s with %d bootstrap resamples", users_df.height, ks_t, n_bootstrap)
    return results


def paired_difference(
    a: pl.DataFrame,
    b: pl.DataFrame,
    *,
    metrics: Sequence[str],
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Mean per-user difference ``a - b`` of two methods on the same users, with a paired bootstrap interval.

    ``value = (1/n) Σ_u (a_u - b_u)``, range [-1, 1] for metrics in [0, 1]. Each resample draws
    the users once (with replacement, as in :func:`evaluate`, same generator and seed) and takes
    the mean difference over them, so both methods are judged on the same resampled users and
    what the users share (how hard their label windows are) cancels out of the interval. Equal
    per-user values give ``0`` with a zero-width interval.

    Parameters
    ----------
    a, b : pl.DataFrame
        Per-user values (``user_id`` plus every metric in ``metrics``, e.g. :func:`per_user_metrics`'s
        output) of the same set of users, in any order.
    metrics : sequence of str, keyword-only
        Columns to compare.
    n_bootstrap, seed, confidence : keyword-only
        As in :func:`evaluate`.

    Returns
    -------
    dict
        ``{metric: {"value", "ci_low", "ci_high"}}``.

    Raises
    ------
    ValueError
        When a frame lacks a metric, has nulls or duplicate users, the two frames' users differ,
        there are no users, or the bootstrap options are invalid.
    """
    n_bootstrap = _validate_bootstrap(n_bootstrap, confidence)
    names = list(metrics)
    if not names:
        raise ValueError("metrics is empty: name at least one per-user column to compare")
    _require_columns(a, [USER_ID, *names], "a")
    _require_columns(b, [USER_ID, *names], "b")
    users_a = _validate_users(a[USER_ID])
    a = a.with_columns(pl.col(USER_ID).cast(pl.String))
    b = b.with_columns(pl.col(USER_ID).cast(pl.String))
    if b[USER_ID].n_unique() != b.height:
        raise ValueError(f"b has {b.height - b[USER_ID].n_unique()} duplicate user id(s)")
    if b.height != users_a.height or b.join(users_a, on=USER_ID, how="anti").height:
        raise ValueError("a and b must hold the same users: a paired difference compares methods user by user")
    aligned = users_a.join(b, on=USER_ID, how="left", maintain_order="left")
    values_a = a.select(names).to_numpy().astype(np.float64, copy=False)
    diffs = values_a - aligned.select(names).to_numpy().astype(np.float64, copy=False)
    none = np.zeros((diffs.shape[0], 0))
    resampled, _ = _bootstrap(diffs, none, none, n_bootstrap=n_bootstrap, seed=seed)
    low, high = _percentiles(resampled, confidence)
    point = diffs.mean(axis=0)
    return {
        name: {"value": float(point[j]), "ci_low": float(low[j]), "ci_high": float(high[j])}
        for j, name in enumerate(names)
    }


def metrics_table_markdown(
    results: Mapping[str, Mapping[str, Any]],
    *,
    metrics: Sequence[str] = DEFAULT_TABLE_METRICS,
) -> str:
    """A Markdown table comparing methods: one row per method, one column per metric.

    Parameters
    ----------
    results : Mapping[str, Mapping[str, Any]]
        ``{method name: evaluate(...) result}`` (rows in the mapping's order).
    metrics : sequence of str, keyword-only
        Metric names (columns), each present in every method's result.

    Returns
    -------
    str
        The table, cells formatted ``value [ci_low, ci_high]`` with 4 decimals, ending with a newline.
    """
    if not results:
        raise ValueError("results is empty: nothing to tabulate")
    metrics = list(metrics)
    if not metrics:
        raise ValueError("metrics is empty")
    lines = ["| method | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for method, res in results.items():
        cells = []
        for m in metrics:
            cell = res.get(m)
            if not isinstance(cell, dict) or not {"value", "ci_low", "ci_high"} <= cell.keys():
                raise ValueError(f"method {method!r} has no metric {m!r} with value/ci_low/ci_high")
            cells.append(f"{cell['value']:.4f} [{cell['ci_low']:.4f}, {cell['ci_high']:.4f}]")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = [
    "DEFAULT_TABLE_METRICS",
    "catalog_coverage",
    "evaluate",
    "hitrate_at_k",
    "map_at_k",
    "metrics_table_markdown",
    "mrr",
    "ndcg_at_k",
    "novelty",
    "paired_difference",
    "per_user_metrics",
    "precision_at_k",
    "recall_at_k",
]
