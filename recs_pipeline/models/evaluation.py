"""Two evaluation protocols of one fold: repeat-aware and discovery, with paired differences and segments.

* **Repeat-aware** (the deployment's view): every item the user interacts with in the label window
  is relevant, repeats of earlier items included; every method only excludes the items the
  deployment's consumed policy names (:mod:`recs_pipeline.models.consumption`). Its honest
  baseline is the ``recent`` source's list ("recently viewed / bought again": the user's own
  items, most recent first; :func:`~recs_pipeline.models.retrieval.recent_hits`).
* **Discovery**: only items the user never touched (any event type) before the cutoff are relevant,
  and every method drops them from its list (:func:`drop_touched`), so ALS and popularity are
  judged as their users would run them, excluding what the user has seen. The users are those
  with at least one such item.

Each protocol reports every method's :func:`~recs_pipeline.models.metrics.evaluate` results, the
best baseline by ``ndcg@20``, the paired bootstrap difference of every other method against it
(:func:`~recs_pipeline.models.metrics.paired_difference`), and the same tables per segment: new
users, returning users, and cold items (see the thresholds below).

Pure functions over polars frames (``user_id``, ``item_id``, ...); no Dagster, no files.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from recs_pipeline.data.contract import ITEM_ID, USER_ID
from recs_pipeline.models import metrics
from recs_pipeline.models.diversity import per_user_diversity
from recs_pipeline.models.protocol import Fold, history
from recs_pipeline.models.training import EVAL_KS, judge

log = logging.getLogger(__name__)

RANK = "rank"
REPEAT_AWARE = "repeat_aware"
DISCOVERY = "discovery"
PROTOCOLS: tuple[str, ...] = (REPEAT_AWARE, DISCOVERY)
# What counts as relevant in each protocol, one sentence for the reports.
RELEVANT: dict[str, str] = {
    REPEAT_AWARE: "every item the user interacted with in the label window counts, repeats of items touched "
    "before the cutoff included; methods exclude only the items the consumed policy names.",
    DISCOVERY: "only items the user never touched (any event) before the cutoff count, every method drops the "
    "touched items from its list, and only users with at least one such item are evaluated.",
}
# The repeat-aware baseline: the ``recent`` candidate source (the user's own history, most recent first).
RECENT = "recent"
# Methods that only make sense with repeats credited (their lists hold touched items only).
REPEAT_ONLY: tuple[str, ...] = (RECENT,)

# Users with at least this many distinct items before the cutoff are "returning"; 1 to one fewer are "new".
RETURNING_USER_ITEMS = 5
# Items with fewer interactions (events of any type) than this before the cutoff are "cold".
COLD_ITEM_INTERACTIONS = 5
# The cold-start ladder's rungs are the user segments: unknown (no event before the cutoff: the
# non-personal sources), new (the first items: co-visitation and category lists) and returning
# (ALS fold-in on a history); the item side has cold and brand-new items.
UNKNOWN_USERS = "unknown_users"
NEW_USERS = "new_users"
RETURNING_USERS = "returning_users"
COLD_ITEMS = "cold_items"
NEW_ITEMS = "new_items"
SEGMENTS: tuple[str, ...] = (UNKNOWN_USERS, NEW_USERS, RETURNING_USERS, COLD_ITEMS, NEW_ITEMS)
SEGMENT_NOTES: dict[str, str] = {
    UNKNOWN_USERS: "users with no event before the cutoff (the ladder's first rung: no personal signal)",
    NEW_USERS: f"users with 1-{RETURNING_USER_ITEMS - 1} distinct items before the cutoff",
    RETURNING_USERS: f"users with {RETURNING_USER_ITEMS}+ distinct items before the cutoff",
    COLD_ITEMS: f"relevant items restricted to those with fewer than {COLD_ITEM_INTERACTIONS} interactions "
    "before the cutoff, users with at least one",
    NEW_ITEMS: "relevant items restricted to those with no interaction before the cutoff (introduced during the "
    "label window), users with at least one",
}

# The best baseline is chosen by, and the paired differences are reported for, these metrics.
PAIRED_K = 20
BEST_BY = f"ndcg@{PAIRED_K}"
PAIRED_METRICS: tuple[str, ...] = (f"ndcg@{PAIRED_K}", f"recall@{PAIRED_K}")
if PAIRED_K not in EVAL_KS:  # pragma: no cover - a guard on the constants
    raise ImportError(f"PAIRED_K {PAIRED_K} must be one of the evaluation's cutoffs {EVAL_KS}")


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


def touched_pairs(events: pl.DataFrame, fold: Fold, *, users: Sequence[str] | None = None) -> pl.DataFrame:
    """The distinct (``user_id``, ``item_id``) pairs with an event of any type before the fold's cutoff.

    ``users`` restricts the pairs to those users (all users when None). Sorted by user, item.
    """
    past = history(events, fold).select(USER_ID, ITEM_ID)
    if users is not None:
        past = past.filter(pl.col(USER_ID).is_in(list(users)))
    return past.unique().sort(USER_ID, ITEM_ID)


def discovery_truth(truth: pl.DataFrame, touched: pl.DataFrame) -> pl.DataFrame:
    """``truth`` without the (user, item) pairs the user touched before the cutoff."""
    return truth.join(touched.select(USER_ID, ITEM_ID), on=[USER_ID, ITEM_ID], how="anti")


def population(truth: pl.DataFrame, users: Sequence[str]) -> list[str]:
    """The users of ``users`` with at least one row in ``truth`` (sorted)."""
    return sorted(set(truth[USER_ID].unique().to_list()) & set(users))


def drop_touched(ranked: pl.DataFrame, touched: pl.DataFrame, *, k: int) -> pl.DataFrame:
    """A method's lists without the items each user touched, ranks renumbered 1.. in list order, cut at ``k``.

    Parameters
    ----------
    ranked : pl.DataFrame
        ``user_id``, ``item_id``, ``rank`` (unique per user) and any other columns, which are kept.
        The deeper the lists, the fuller the result: a user keeps ``k`` items only when the list
        holds ``k`` untouched ones.
    touched : pl.DataFrame
        ``user_id``, ``item_id`` pairs to drop.
    k : int, keyword-only
        The cut.
    """
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    return (
        ranked.join(touched.select(USER_ID, ITEM_ID), on=[USER_ID, ITEM_ID], how="anti")
        .sort(USER_ID, RANK)
        .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(USER_ID).alias(RANK))
        .filter(pl.col(RANK) <= k)
    )


def top_k(ranked: pl.DataFrame, *, k: int) -> pl.DataFrame:
    """Each user's first ``k`` ranks of a list (ranks as given)."""
    return ranked.filter(pl.col(RANK) <= k)


def user_segments(touched: pl.DataFrame, users: Sequence[str]) -> dict[str, list[str]]:
    """``users`` split by distinct items touched before the cutoff: unknown (none), new (1 to
    ``RETURNING_USER_ITEMS`` - 1) and returning (``RETURNING_USER_ITEMS`` or more)."""
    counts = (
        touched.filter(pl.col(USER_ID).is_in(list(users))).group_by(USER_ID).agg(pl.col(ITEM_ID).n_unique().alias("n"))
    )
    returning = counts.filter(pl.col("n") >= RETURNING_USER_ITEMS)[USER_ID]
    new = counts.filter(pl.col("n") < RETURNING_USER_ITEMS)[USER_ID]
    unknown = set(users) - set(counts[USER_ID].to_list())
    return {
        UNKNOWN_USERS: sorted(unknown),
        NEW_USERS: sorted(new.to_list()),
        RETURNING_USERS: sorted(returning.to_list()),
    }


def cold_truth(truth: pl.DataFrame, popularity: pl.DataFrame, *, below: int = COLD_ITEM_INTERACTIONS) -> pl.DataFrame:
    """``truth`` restricted to cold items: fewer than ``below`` interactions before the cutoff
    (``popularity``: ``item_id``, ``count``; items absent from it have none). ``below=1``: new items."""
    warm = popularity.filter(pl.col("count") >= below).select(ITEM_ID)
    return truth.join(warm, on=ITEM_ID, how="anti")


def segment_cases(
    truth: pl.DataFrame, users: Sequence[str], *, touched: pl.DataFrame, popularity: pl.DataFrame
) -> dict[str, tuple[list[str], pl.DataFrame]]:
    """Per segment (``SEGMENTS``): its users and truth within a protocol's ``users`` and ``truth``."""
    by_history = user_segments(touched, users)
    cases = {name: (members, truth.filter(pl.col(USER_ID).is_in(members))) for name, members in by_history.items()}
    for name, below in ((COLD_ITEMS, COLD_ITEM_INTERACTIONS), (NEW_ITEMS, 1)):
        cold = cold_truth(truth, popularity, below=below)
        cold_users = population(cold, users)
        cases[name] = (cold_users, cold.filter(pl.col(USER_ID).is_in(cold_users)))
    return cases


# --------------------------------------------------------------------------------------------------
# One fold, both protocols
# --------------------------------------------------------------------------------------------------


def best_baseline(results: Mapping[str, Mapping[str, Any]], baselines: Sequence[str]) -> str:
    """The baseline with the highest ``BEST_BY`` value (the first of ``baselines`` on ties)."""
    present = [b for b in baselines if b in results]
    if not present:
        raise ValueError(f"none of the baselines {list(baselines)} was evaluated (methods: {list(results)})")
    return max(present, key=lambda b: (results[b][BEST_BY]["value"], -present.index(b)))


def evaluate_protocol(
    lists: Mapping[str, pl.DataFrame],
    truth: pl.DataFrame,
    users: Sequence[str],
    *,
    protocol: str,
    baselines: Sequence[str],
    touched: pl.DataFrame,
    popularity: pl.DataFrame,
    n_catalog_items: int,
    n_bootstrap: int = 500,
    seed: int = 0,
    item_categories: pl.DataFrame | None = None,
) -> dict[str, Any]:
    """Every method's metrics under one protocol, the paired differences against the best baseline,
    and the per-segment tables. With ``item_categories`` (``item_id``, ``category_id``), every
    method's results also hold its lists' diversity: ``ild@20`` and ``category_coverage@20`` (means
    over the evaluated users with a list, bootstrap intervals; :mod:`recs_pipeline.models.diversity`).

    ``lists`` are the protocol's final lists (``user_id``, ``item_id``, ``rank``, cut at the largest
    K); ``truth`` and ``users`` its relevant items and evaluated users. See :func:`evaluate_fold`
    for the result; a protocol without users has ``"users": 0``, no methods and no best baseline.
    """
    if not users:
        log.warning("the %s protocol has no users to evaluate", protocol)
        return {
            "relevant": RELEVANT[protocol],
            "users": 0,
            "methods": {},
            "best_baseline": None,
            "differences": {},
            "segments": {name: {"users": 0, "note": SEGMENT_NOTES[name], "methods": {}} for name in SEGMENTS},
        }
    opts: dict[str, Any] = {
        "popularity": popularity,
        "n_catalog_items": n_catalog_items,
        "n_bootstrap": n_bootstrap,
        "seed": seed,
    }
    users = list(users)
    results = judge(dict(lists), truth, users, **opts)
    if item_categories is not None:
        for name, ranked in lists.items():
            mine = ranked.filter(pl.col(USER_ID).is_in(users))
            diversity = per_user_diversity(mine, item_categories, k=PAIRED_K)
            for measure in ("ild", "category_coverage"):
                results[name][f"{measure}@{PAIRED_K}"] = metrics.bootstrap_mean(
                    diversity[measure].to_numpy(), n_bootstrap=n_bootstrap, seed=seed
                )
    best = best_baseline(results, baselines)
    per_user = {name: metrics.per_user_metrics(ranked, truth, users, ks=(PAIRED_K,)) for name, ranked in lists.items()}
    differences = {
        name: metrics.paired_difference(
            per_user[name], per_user[best], metrics=PAIRED_METRICS, n_bootstrap=n_bootstrap, seed=seed
        )
        for name in lists
        if name != best
    }
    segments: dict[str, Any] = {}
    for name, (members, seg_truth) in segment_cases(truth, users, touched=touched, popularity=popularity).items():
        segments[name] = {
            "users": len(members),
            "note": SEGMENT_NOTES[name],
            "methods": judge(dict(lists), seg_truth, members, **opts) if members else {},
        }
    log.info("%s protocol: %d users, best baseline %s", protocol, len(users), best)
    return {
        "relevant": RELEVANT[protocol],
        "users": len(users),
        "methods": results,
        "best_baseline": best,
        "differences": differences,
        "segments": segments,
    }


def evaluate_fold(
    rankings: Mapping[str, pl.DataFrame],
    truth: pl.DataFrame,
    users: Sequence[str],
    *,
    touched: pl.DataFrame,
    popularity: pl.DataFrame,
    n_catalog_items: int,
    baselines: Sequence[str],
    repeat_only: Sequence[str] = REPEAT_ONLY,
    n_bootstrap: int = 500,
    seed: int = 0,
    item_categories: pl.DataFrame | None = None,
) -> dict[str, dict[str, Any]]:
    """Both protocols of one fold.

    Parameters
    ----------
    rankings : mapping of str to pl.DataFrame
        Per method, its ranked lists for the fold's users (``user_id``, ``item_id``, ``rank``), as
        deep as the method gives them: the repeat-aware protocol takes each list's top ``max(EVAL_KS)``,
        the discovery protocol the list with touched items dropped (:func:`drop_touched`), so a list
        deeper than ``max(EVAL_KS)`` keeps the discovery list full.
    truth, users
        The fold's relevant items and evaluated users (the repeat-aware protocol's).
    touched : pl.DataFrame, keyword-only
        (user, item) pairs before the cutoff (:func:`touched_pairs`), at least for ``users``.
    popularity : pl.DataFrame, keyword-only
        ``item_id``, ``count``: interactions per item before the cutoff (novelty and cold items).
    n_catalog_items : int, keyword-only
        Catalog size for coverage and novelty.
    baselines : sequence of str, keyword-only
        The methods that are baselines; the best of those evaluated under a protocol (by ``BEST_BY``)
        is what the others' paired differences are taken against.
    repeat_only : sequence of str, keyword-only
        Methods evaluated under the repeat-aware protocol only (their lists hold touched items only).
    n_bootstrap, seed : keyword-only
        As in :func:`~recs_pipeline.models.metrics.evaluate` (cutoffs ``EVAL_KS``).

    Returns
    -------
    dict
        ``{protocol: {"relevant": sentence, "users": n, "methods": {method: evaluate result},
        "best_baseline": name, "differences": {method: {metric: {"value", "ci_low", "ci_high"}}}
        (method - best baseline, ``PAIRED_METRICS``, every method but the best baseline),
        "segments": {segment: {"users": n, "note": sentence, "methods": {...}}}}}`` for
        ``PROTOCOLS``. A segment (or protocol) without users has ``"users": 0`` and no methods.
    """
    depth = max(EVAL_KS)
    users = list(users)
    truth = truth.filter(pl.col(USER_ID).is_in(users))
    touched = touched.filter(pl.col(USER_ID).is_in(users)).select(USER_ID, ITEM_ID)
    common: dict[str, Any] = {
        "baselines": baselines,
        "touched": touched,
        "popularity": popularity,
        "n_catalog_items": n_catalog_items,
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "item_categories": item_categories,
    }
    repeat = {name: top_k(ranked, k=depth) for name, ranked in rankings.items()}
    new_truth = discovery_truth(truth, touched)
    new_lists = {
        name: drop_touched(ranked, touched, k=depth) for name, ranked in rankings.items() if name not in repeat_only
    }
    return {
        REPEAT_AWARE: evaluate_protocol(repeat, truth, users, protocol=REPEAT_AWARE, **common),
        DISCOVERY: evaluate_protocol(new_lists, new_truth, population(new_truth, users), protocol=DISCOVERY, **common),
    }


__all__ = [
    "COLD_ITEM_INTERACTIONS",
    "DISCOVERY",
    "PROTOCOLS",
    "RECENT",
    "REPEAT_AWARE",
    "RETURNING_USER_ITEMS",
    "SEGMENTS",
    "best_baseline",
    "cold_truth",
    "discovery_truth",
    "drop_touched",
    "evaluate_fold",
    "evaluate_protocol",
    "population",
    "segment_cases",
    "touched_pairs",
    "user_segments",
]
