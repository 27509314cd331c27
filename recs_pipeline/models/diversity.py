"""Diversity: re-rank a scored candidate list so one category does not fill it, and measure how mixed lists are.

:func:`diversify` is a greedy maximal-marginal-relevance re-rank with category similarity. Scores
are scaled to [0, 1] over the user's candidates (min to max); each pick takes the candidate with the
highest ``relevance - strength * repeats``, where ``repeats`` is how many items of its category the
list holds already (an item without a category repeats nothing). ``strength`` 0 keeps the score
order; 0.1 lets a second item of a category in only when it scores at least a tenth of the score
range above the best item of a new category; above 1, every category is shown once before any is
shown twice. The service (``diversity`` of a request or of an experiment's variant) and the
offline evaluation (``benchmarks/diversity.py``) call this one function.

Two measures of a list of ``k`` items (:func:`per_user_diversity`, reported by the evaluation as
``ild@20`` and ``category_coverage@20``): intra-list diversity (the share of item pairs of different
categories) and category coverage (distinct categories / items).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from recs_pipeline.data.contract import CATEGORY_ID, ITEM_ID, USER_ID


def diversify(
    scores: np.ndarray,
    categories: Sequence[object] | np.ndarray,
    k: int,
    strength: float,
    *,
    bonus: np.ndarray | None = None,
) -> np.ndarray:
    """Positions into ``scores`` of the re-ranked top ``k`` (best first).

    ``bonus`` (per position, in relevance units) is added to each candidate's relevance: the boost
    rules of the service. Ties in the adjusted score keep the score order, then the smaller position
    (as :func:`top_n` breaks ties), so ``strength`` 0 without a bonus gives exactly the score order.
    """
    n = len(scores)
    k = min(k, n)
    if n == 0 or k == 0:
        return np.empty(0, dtype=np.int64)
    order = np.lexsort((np.arange(n), -np.asarray(scores, dtype=np.float64)))  # score order, stable
    if strength <= 0 and bonus is None:
        return order[:k].astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)[order]
    span = s[0] - s[-1]
    relevance = (s - s[-1]) / span if span > 0 else np.ones(n)
    if bonus is not None:
        relevance = relevance + np.asarray(bonus, dtype=np.float64)[order]
    codes, _ = _category_codes(np.asarray(categories, dtype=object)[order])
    strength = max(strength, 0.0)
    repeats = np.zeros(codes.max() + 2, dtype=np.float64)  # per category code; the last slot: no category
    taken = np.zeros(n, dtype=bool)
    picked = np.empty(k, dtype=np.int64)
    for slot in range(k):
        adjusted = relevance - strength * repeats[codes]
        adjusted[taken] = -np.inf
        best = int(np.argmax(adjusted))  # the first maximum: the higher score among equals
        picked[slot] = order[best]
        taken[best] = True
        if codes[best] < len(repeats) - 1:
            repeats[codes[best]] += 1.0
    return picked


def _category_codes(categories: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer codes per category; items without one get the code after the last (never counted)."""
    missing = np.asarray([c is None for c in categories], dtype=bool)
    names = np.asarray([str(c) for c in categories], dtype=object)
    uniques, codes = np.unique(names[~missing], return_inverse=True) if (~missing).any() else (np.empty(0), None)
    out = np.full(len(categories), len(uniques), dtype=np.int64)
    if codes is not None:
        out[~missing] = codes
    return out, len(uniques)


def rank_top_k_diverse(
    rows: pl.DataFrame, scores: np.ndarray, categories: np.ndarray, *, k: int, strength: float
) -> pl.DataFrame:
    """``ranking.rank_top_k`` with each user's list re-ranked by :func:`diversify`: (user_id,
    item_id, score, rank) of the top ``k`` per user; ``categories`` is per row of ``rows``."""
    frame = rows.select(USER_ID, ITEM_ID).with_columns(
        score=pl.Series(scores, dtype=pl.Float64), row=pl.int_range(0, pl.len(), dtype=pl.Int64)
    )
    frame = frame.sort([USER_ID, "score", ITEM_ID], descending=[False, True, False])
    users = frame[USER_ID].to_numpy()
    row = frame["row"].to_numpy()
    cats = np.asarray(categories, dtype=object)[row]
    sc = frame["score"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    keep: list[np.ndarray] = []
    ranks: list[np.ndarray] = []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        chosen = diversify(sc[a:b], cats[a:b], k, strength) + a
        keep.append(chosen)
        ranks.append(np.arange(1, len(chosen) + 1))
    at = np.concatenate(keep) if keep else np.empty(0, dtype=np.int64)
    return (
        frame[at]
        .select(USER_ID, ITEM_ID, "score")
        .with_columns(rank=pl.Series(np.concatenate(ranks) if ranks else np.empty(0, dtype=np.int64), dtype=pl.Int64))
    )


def per_user_diversity(ranked: pl.DataFrame, item_categories: pl.DataFrame, *, k: int) -> pl.DataFrame:
    """Per user with a list: ``ild`` (the share of item pairs in the top ``k`` whose categories differ;
    items without a category differ from every item; 0 for a list of one) and ``category_coverage``
    (distinct categories / items in the top ``k``)."""
    per_user = _top_with_categories(ranked, item_categories, k)
    n = pl.col("n").cast(pl.Float64)
    pairs = n * (n - 1) / 2
    return per_user.select(
        USER_ID,
        ild=pl.when(pairs > 0).then(1.0 - pl.col("same_pairs").cast(pl.Float64) / pairs).otherwise(0.0),
        category_coverage=pl.col("distinct") / n,
    ).sort(USER_ID)


def intra_list_diversity(ranked: pl.DataFrame, item_categories: pl.DataFrame, *, k: int) -> float:
    """Mean over users of :func:`per_user_diversity`'s ``ild``."""
    per_user = per_user_diversity(ranked, item_categories, k=k)
    return float(per_user["ild"].to_numpy().mean()) if per_user.height else 0.0


def category_coverage(ranked: pl.DataFrame, item_categories: pl.DataFrame, *, k: int) -> float:
    """Mean over users of :func:`per_user_diversity`'s ``category_coverage``."""
    per_user = per_user_diversity(ranked, item_categories, k=k)
    return float(per_user["category_coverage"].to_numpy().mean()) if per_user.height else 0.0


def _top_with_categories(ranked: pl.DataFrame, item_categories: pl.DataFrame, k: int) -> pl.DataFrame:
    """Per user: items in the top ``k`` (n), distinct categories, pairs of the same category."""
    top = (
        ranked.filter(pl.col("rank") <= k)
        .select(USER_ID, ITEM_ID)
        .join(item_categories.select(ITEM_ID, pl.col(CATEGORY_ID).alias("cat")), on=ITEM_ID, how="left")
        .with_columns(cat=pl.coalesce(pl.col("cat"), pl.lit("\x00none:") + pl.col(ITEM_ID)))
    )
    per_category = top.group_by(USER_ID, "cat").agg(pl.len().alias("c"))
    return per_category.group_by(USER_ID).agg(
        n=pl.col("c").sum(),
        distinct=pl.len(),
        same_pairs=(pl.col("c") * (pl.col("c") - 1) // 2).sum(),
    )
