"""The hyper-parameter searches: seeded, bounded, start-first, and able to find what is planted."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from recs_pipeline.data.contract import ITEM_ID, USER_ID
from recs_pipeline.models.ranking import LABEL, RankerParams, train_ranker
from recs_pipeline.models.retrieval import ALSParams, ALSRetriever
from recs_pipeline.models.tuning import Budget, search, tune_als, tune_ranker


def _space(trial) -> dict:
    return {"x": trial.suggest_float("x", -5.0, 5.0)}


def _peak(params: dict) -> float:
    return -((params["x"] - 2.0) ** 2)


def test_the_search_tries_the_start_first_and_keeps_the_best() -> None:
    result = search(_peak, _space, {"x": -4.0}, Budget(trials=25, seconds=60, seed=3), name="peak")
    assert result.trials[0]["params"] == {"x": -4.0} and result.start_value == pytest.approx(-36.0)
    assert len(result.trials) == 25
    assert result.best_value == max(t["value"] for t in result.trials)
    assert result.improved and abs(result.best["x"] - 2.0) < 1.0
    assert result.to_json()["trials_run"] == 25


def test_the_search_is_seeded() -> None:
    first = search(_peak, _space, {"x": 0.0}, Budget(trials=8, seconds=60, seed=11), name="peak")
    again = search(_peak, _space, {"x": 0.0}, Budget(trials=8, seconds=60, seed=11), name="peak")
    other = search(_peak, _space, {"x": 0.0}, Budget(trials=8, seconds=60, seed=12), name="peak")
    assert [t["params"] for t in first.trials] == [t["params"] for t in again.trials]
    assert [t["params"] for t in first.trials] != [t["params"] for t in other.trials]


def test_the_start_is_kept_when_nothing_beats_it() -> None:
    result = search(_peak, _space, {"x": 2.0}, Budget(trials=5, seconds=60), name="peak")
    assert result.best == {"x": 2.0} and not result.improved


def test_the_time_budget_ends_the_search() -> None:
    import time

    def slow(params: dict) -> float:
        time.sleep(0.3)
        return _peak(params)

    result = search(slow, _space, {"x": 0.0}, Budget(trials=1000, seconds=1.0), name="slow")
    assert 1 <= len(result.trials) <= 5


def test_a_budget_must_make_sense() -> None:
    with pytest.raises(ValueError, match="trials"):
        Budget(trials=-1, seconds=10)
    with pytest.raises(ValueError, match="seconds"):
        Budget(trials=3, seconds=0)


def _planted_rows(n_users: int, *, seed: int, prefix: str) -> pl.DataFrame:
    """30 candidates per user, one relevant, with higher ``signal`` and ``gate`` (each alone a weak
    hint); a ranker with few small leaves, a low learning rate and large leaf minimum learns them slowly."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        hit = rng.integers(30)
        for j in range(30):
            relevant = j == hit
            signal = rng.normal(2.0 if relevant else 0.0, 1.0)
            gate = rng.normal(2.0 if relevant else 0.0, 1.0)
            rows.append((f"{prefix}{u:04d}", f"i{j:02d}", signal, gate, 3.0 if relevant else 0.0))
    return pl.DataFrame(rows, schema=[USER_ID, ITEM_ID, "signal", "gate", LABEL], orient="row")


def test_the_ranker_search_beats_a_poor_start_on_the_validation_fold() -> None:
    train, valid = _planted_rows(300, seed=1, prefix="t"), _planted_rows(150, seed=2, prefix="v")
    poor = RankerParams(
        num_leaves=7, learning_rate=0.01, min_data_in_leaf=200, num_boost_round=40, early_stopping_rounds=5, seed=1
    )
    params, result = tune_ranker(train, valid, poor, Budget(trials=6, seconds=120, seed=0), features=["signal", "gate"])
    # the start's value is what train_ranker reaches with the same parameters
    start = train_ranker(train, valid, features=["signal", "gate"], params=poor)
    assert result.start_value == pytest.approx(start.curve["valid"][start.best_iteration - 1], abs=1e-6)
    assert result.improved and result.best_value > result.start_value
    assert params == replace(poor, **result.best)
    assert set(result.best) == {"num_leaves", "learning_rate", "min_data_in_leaf", "feature_fraction"}


def test_the_als_search_finds_a_better_model_than_a_degenerate_start() -> None:
    """Two user groups with disjoint tastes; ALS with a huge regularization cannot tell them apart."""
    rng = np.random.default_rng(0)
    pairs, truth = [], []
    for u in range(80):
        group = u % 2
        items = [f"i{group * 20 + j:02d}" for j in rng.permutation(20)]
        pairs += [(f"u{u:02d}", item, 1.0) for item in items[:8]]
        truth += [(f"u{u:02d}", item, 1.0) for item in items[8:12]]
    interactions = pl.DataFrame(pairs, schema=[USER_ID, ITEM_ID, "weight"], orient="row")
    labels = pl.DataFrame(truth, schema=[USER_ID, ITEM_ID, "relevance"], orient="row")
    users = sorted(labels[USER_ID].unique().to_list())
    start = ALSParams(factors=32, regularization=1.0, alpha=0.1, iterations=5, threads=1)

    def rank(als: ALSRetriever) -> pl.DataFrame:
        return als.recommend(users, n=20, filter_seen=True).select(USER_ID, ITEM_ID, "rank")

    params, result = tune_als(
        start,
        Budget(trials=6, seconds=120, seed=0),
        fit_als=lambda p: ALSRetriever.fit(interactions, params=p),
        rank_als=rank,
        truth=labels,
        users=users,
    )
    assert result.trials[0]["params"] == {"factors": 32, "regularization": 1.0, "alpha": 0.1}
    assert result.best_value >= result.start_value
    assert params == replace(start, **result.best)
    assert params.iterations == 5 and params.threads == 1  # what is not searched is kept
