"""Behavioural tests of the ranking stage on synthetic rows whose right answers are known."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recs_pipeline.data.contract import ITEM_ID, USER_ID
from recs_pipeline.models.ranker_features import HISTORY_FEATURES, SECONDS_SINCE_LAST
from recs_pipeline.models.ranker_features import matrix_of as ranker_matrix
from recs_pipeline.models.ranking import (
    LABEL,
    RankerParams,
    TrainedRanker,
    add_history_features,
    attach_labels,
    load_booster,
    load_scorer,
    rank_top_k,
    refit_ranker,
    save_ranker,
    score,
    train_ranker,
)

N_CANDIDATES = 30
NOISE = ("noise_a", "noise_b", "noise_c")
FEATURES = ["signal", *NOISE]
# Small and easy: the valid NDCG saturates in a few dozen trees at most.
PARAMS = RankerParams(num_boost_round=200, early_stopping_rounds=10, min_data_in_leaf=20, seed=7)


# --------------------------------------------------------------------------------------------
# Synthetic rows
# --------------------------------------------------------------------------------------------


def planted(n_users: int, *, seed: int, prefix: str) -> pl.DataFrame:
    """One relevant candidate (label 3) per user, at a random item position, with a clearly higher ``signal``.

    Other candidates have ``signal`` ~ N(0, 1), the relevant one ~ N(3.8, 0.6): sorting by ``signal``
    alone puts it first for ~97% of users; random order for 1/30 ~ 3%. The noise features carry nothing.
    """
    rng = np.random.default_rng(seed)
    users, items, signal, labels = [], [], [], []
    relevant = rng.integers(0, N_CANDIDATES, size=n_users)
    for u in range(n_users):
        for j in range(N_CANDIDATES):
            users.append(f"{prefix}{u:04d}")
            items.append(f"i{j:03d}")
            hit = j == relevant[u]
            signal.append(rng.normal(3.8, 0.6) if hit else rng.normal(0.0, 1.0))
            labels.append(3.0 if hit else 0.0)
    n = len(users)
    return pl.DataFrame(
        {
            USER_ID: users,
            ITEM_ID: items,
            "signal": signal,
            **{name: rng.normal(size=n) for name in NOISE},
            LABEL: labels,
        }
    )


def graded(n_users: int, *, seed: int, prefix: str) -> pl.DataFrame:
    """Per user: one purchase (3), one cart (2), three views (1), the rest 0; ``grade`` = label + noise."""
    rng = np.random.default_rng(seed)
    frames = []
    for u in range(n_users):
        label = np.zeros(N_CANDIDATES)
        slots = rng.permutation(N_CANDIDATES)
        label[slots[0]] = 3.0
        label[slots[1]] = 2.0
        label[slots[2:5]] = 1.0
        frames.append(
            pl.DataFrame(
                {
                    USER_ID: [f"{prefix}{u:04d}"] * N_CANDIDATES,
                    ITEM_ID: [f"i{j:03d}" for j in range(N_CANDIDATES)],
                    "grade": label + rng.normal(0.0, 0.25, size=N_CANDIDATES),
                    "noise_a": rng.normal(size=N_CANDIDATES),
                    LABEL: label,
                }
            )
        )
    return pl.concat(frames)


def top1_hit_rate(rows: pl.DataFrame, scores: np.ndarray) -> float:
    top = rank_top_k(rows, scores, k=1).join(rows.select(USER_ID, ITEM_ID, LABEL), on=[USER_ID, ITEM_ID])
    assert top.height == rows[USER_ID].n_unique()
    return float((top[LABEL] == 3.0).mean())


@pytest.fixture(scope="module")
def data() -> dict[str, pl.DataFrame]:
    return {
        "train": planted(400, seed=1, prefix="tr"),
        "valid": planted(200, seed=2, prefix="va"),
        "test": planted(200, seed=3, prefix="te"),
    }


@pytest.fixture(scope="module")
def trained(data: dict[str, pl.DataFrame]) -> TrainedRanker:
    return train_ranker(data["train"], data["valid"], features=FEATURES, params=PARAMS)


# --------------------------------------------------------------------------------------------
# Learning the planted signal
# --------------------------------------------------------------------------------------------


def test_the_ranker_puts_the_planted_relevant_item_first(trained: TrainedRanker, data: dict[str, pl.DataFrame]) -> None:
    test = data["test"]
    assert top1_hit_rate(test, score(trained.booster, test, trained.features)) >= 0.90
    # The bar is meaningful: by item id (what ties would give) or at random it is ~1/30.
    assert top1_hit_rate(test, np.zeros(test.height)) < 0.10
    assert top1_hit_rate(test, np.random.default_rng(0).normal(size=test.height)) < 0.10


def test_importance_puts_the_informative_feature_first(trained: TrainedRanker) -> None:
    assert list(trained.importance) == sorted(trained.importance, key=lambda f: -trained.importance[f])
    assert set(trained.importance) == set(FEATURES)
    assert next(iter(trained.importance)) == "signal"
    assert trained.importance["signal"] > 5 * sum(trained.importance[f] for f in NOISE)
    assert trained.features == FEATURES


def test_the_learning_curve_and_early_stopping(trained: TrainedRanker) -> None:
    train_curve, valid_curve = trained.curve["train"], trained.curve["valid"]
    assert len(train_curve) == len(valid_curve) >= trained.best_iteration >= 1
    assert all(0.0 <= v <= 1.0 for v in train_curve + valid_curve)
    # Easy data: stopped early, exactly `early_stopping_rounds` after the best valid iteration ...
    assert trained.best_iteration < PARAMS.num_boost_round
    assert len(valid_curve) == trained.best_iteration + PARAMS.early_stopping_rounds
    # ... which is the best valid NDCG (first one on ties) and what the booster predicts with.
    best = max(valid_curve)
    assert valid_curve[trained.best_iteration - 1] == best
    assert all(v < best for v in valid_curve[: trained.best_iteration - 1])
    assert trained.booster.best_iteration == trained.best_iteration


def test_without_early_stopping_trigger_all_rounds_run(data: dict[str, pl.DataFrame]) -> None:
    params = RankerParams(num_boost_round=5, early_stopping_rounds=50, min_data_in_leaf=20)
    ranker = train_ranker(data["train"], data["valid"], features=FEATURES, params=params)
    assert len(ranker.curve["train"]) == len(ranker.curve["valid"]) == 5
    assert 1 <= ranker.best_iteration <= 5


def test_the_refit_runs_the_evaluated_round_count_on_every_folds_rows(
    trained: TrainedRanker, data: dict[str, pl.DataFrame]
) -> None:
    every_fold = pl.concat([data["train"], data["valid"]])
    refitted = refit_ranker(every_fold, rounds=trained.best_iteration, features=FEATURES, params=PARAMS)
    assert refitted.best_iteration == refitted.booster.current_iteration() == trained.best_iteration
    assert len(refitted.curve["train"]) == trained.best_iteration and "valid" not in refitted.curve
    assert refitted.features == FEATURES and next(iter(refitted.importance)) == "signal"
    test = data["test"]  # it learnt the same signal from more users
    assert top1_hit_rate(test, score(refitted.booster, test, refitted.features)) >= 0.90
    with pytest.raises(ValueError, match="rounds must be positive"):
        refit_ranker(every_fold, rounds=0, features=FEATURES, params=PARAMS)


def test_graded_labels_order_purchase_above_cart_above_view() -> None:
    train, valid, test = (
        graded(n, seed=s, prefix=p) for n, s, p in ((300, 11, "tr"), (150, 12, "va"), (200, 13, "te"))
    )
    ranker = train_ranker(train, valid, features=["grade", "noise_a"], params=PARAMS)
    per_user = (
        test.with_columns(score=pl.Series(score(ranker.booster, test, ranker.features)))
        .group_by(USER_ID)
        .agg(
            purchase=pl.col("score").filter(pl.col(LABEL) == 3).max(),
            cart=pl.col("score").filter(pl.col(LABEL) == 2).max(),
            best_view=pl.col("score").filter(pl.col(LABEL) == 1).max(),
            worst_view=pl.col("score").filter(pl.col(LABEL) == 1).min(),
            best_zero=pl.col("score").filter(pl.col(LABEL) == 0).max(),
        )
    )
    assert per_user.height == 200
    # Random scores would give 1/2, 1/4 and ~1/2900 (3 views above 25 zeros); sorting by `grade` alone .99/.99/.88.
    assert (per_user["purchase"] > per_user["cart"]).mean() >= 0.9
    assert (per_user["cart"] > per_user["best_view"]).mean() >= 0.9
    assert (per_user["worst_view"] > per_user["best_zero"]).mean() >= 0.7
    # Top 5 per user is the purchase, the cart, then the three views, in that grade order.
    top = rank_top_k(test, score(ranker.booster, test, ranker.features), k=5).join(
        test.select(USER_ID, ITEM_ID, LABEL), on=[USER_ID, ITEM_ID]
    )
    grades_by_rank = top.group_by("rank").agg(pl.col(LABEL).mean()).sort("rank")[LABEL].to_list()
    assert grades_by_rank == sorted(grades_by_rank, reverse=True)
    assert grades_by_rank[0] > 2.8 and grades_by_rank[-1] < 1.2


# --------------------------------------------------------------------------------------------
# Groups and users without positives
# --------------------------------------------------------------------------------------------


def small_params() -> RankerParams:
    return RankerParams(num_boost_round=30, early_stopping_rounds=30, min_data_in_leaf=10, seed=3)


def test_rows_not_sorted_by_user_give_the_same_model(data: dict[str, pl.DataFrame]) -> None:
    train, valid, test = data["train"].head(150 * N_CANDIDATES), data["valid"].head(80 * N_CANDIDATES), data["test"]
    ordered = train_ranker(train, valid, features=FEATURES, params=small_params())
    shuffled = train_ranker(
        train.sample(fraction=1.0, shuffle=True, seed=5),
        valid.sample(fraction=1.0, shuffle=True, seed=6),
        features=FEATURES,
        params=small_params(),
    )
    assert not train.sample(fraction=1.0, shuffle=True, seed=5).equals(train)
    np.testing.assert_array_equal(score(ordered.booster, test, FEATURES), score(shuffled.booster, test, FEATURES))
    assert ordered.curve == shuffled.curve


def test_users_without_a_positive_are_dropped(data: dict[str, pl.DataFrame]) -> None:
    train, valid, test = data["train"].head(150 * N_CANDIDATES), data["valid"].head(80 * N_CANDIDATES), data["test"]
    # Users whose candidates are all irrelevant, with a signal pattern that would mislead if kept.
    negatives = planted(100, seed=9, prefix="zz").with_columns(pl.lit(0.0).alias(LABEL))
    base = train_ranker(train, valid, features=FEATURES, params=small_params())
    padded = train_ranker(
        pl.concat([train, negatives]), pl.concat([valid, negatives]), features=FEATURES, params=small_params()
    )
    np.testing.assert_array_equal(score(base.booster, test, FEATURES), score(padded.booster, test, FEATURES))
    assert base.curve == padded.curve


def test_no_positive_at_all_raises_a_clear_error(data: dict[str, pl.DataFrame]) -> None:
    zeros = data["train"].head(10 * N_CANDIDATES).with_columns(pl.lit(0.0).alias(LABEL))
    with pytest.raises(ValueError, match="retrieval recall"):
        train_ranker(zeros, data["valid"], features=FEATURES, params=small_params())
    with pytest.raises(ValueError, match="retrieval recall"):
        train_ranker(data["train"], zeros, features=FEATURES, params=small_params())


# --------------------------------------------------------------------------------------------
# Persistence
# --------------------------------------------------------------------------------------------


def test_save_and_load_give_identical_scores(
    trained: TrainedRanker, data: dict[str, pl.DataFrame], tmp_path: Path
) -> None:
    files = save_ranker(trained, tmp_path / "model")
    assert sorted(p.name for p in files) == ["ranker.json", "ranker.txt"]
    assert all(p.is_file() for p in files)
    raw = (tmp_path / "model" / "ranker.txt").read_bytes()
    assert raw.startswith(b"tree\n")  # LightGBM's text format header ...
    assert b"version=v4" in raw[:100] and b"feature_names=signal noise_a noise_b noise_c" in raw
    assert not raw.startswith(b"\x80")  # ... not a pickle
    raw.decode("ascii")
    meta = json.loads((tmp_path / "model" / "ranker.json").read_text())
    assert meta == {"features": FEATURES, "best_iteration": trained.best_iteration}

    loaded = load_booster(tmp_path / "model")
    assert loaded.num_trees() == trained.best_iteration  # only the trees up to the best iteration are kept
    test = data["test"]
    matrix = ranker_matrix(test, FEATURES)
    lightgbm = trained.booster.predict(matrix, num_iteration=trained.best_iteration, num_threads=1)
    np.testing.assert_array_equal(loaded.predict(matrix, num_threads=1), lightgbm)
    # what every path scores with: the saved model compiled; LightGBM's own scores to rounding
    compiled = load_scorer(tmp_path / "model")
    np.testing.assert_allclose(score(compiled, test, meta["features"]), lightgbm, rtol=0, atol=1e-12)
    with_gaps = matrix.copy()
    with_gaps[::3, 0] = np.nan  # missing values take LightGBM's default branches there too
    np.testing.assert_allclose(
        compiled.predict(with_gaps), loaded.predict(with_gaps, num_threads=1), rtol=0, atol=1e-12
    )
    with pytest.raises(ValueError, match="feature columns"):
        compiled.predict(matrix[:, :2])


# --------------------------------------------------------------------------------------------
# Row helpers
# --------------------------------------------------------------------------------------------


def test_attach_labels_fills_missing_with_zero_and_sorts_by_user() -> None:
    rows = pl.DataFrame({USER_ID: ["u2", "u1", "u2", "u1"], ITEM_ID: ["b", "b", "a", "a"], "f": [1.0, 2.0, 3.0, 4.0]})
    truth = pl.DataFrame(
        {
            USER_ID: ["u1", "u2", "u3"],
            ITEM_ID: ["b", "a", "a"],  # (u3, a) is not a candidate: it must not appear
            LABEL: [2.0, 3.0, 1.0],
            "extra": [1, 2, 3],
        }
    )
    out = attach_labels(rows, truth)
    assert out.columns == [USER_ID, ITEM_ID, "f", LABEL]
    assert out.rows() == [("u1", "a", 4.0, 0.0), ("u1", "b", 2.0, 2.0), ("u2", "a", 3.0, 3.0), ("u2", "b", 1.0, 0.0)]
    assert out[LABEL].null_count() == 0


AS_OF = datetime(2024, 3, 10, tzinfo=UTC)


def interactions_snapshot() -> pl.DataFrame:
    return pl.DataFrame(
        {
            USER_ID: ["u1", "u1", "u2", "u3"],
            ITEM_ID: ["a", "b", "a", "z"],
            "weight": [1.5, 4.0, 0.25, 9.0],
            "views": [3, 1, 1, 7],
            "carts": [0, 1, 0, 2],
            "purchases": [0, 1, 0, 1],
            "favorites": [0, 0, 1, 0],
            "last_ts": [
                AS_OF - timedelta(hours=2),
                AS_OF - timedelta(days=3, seconds=5),
                AS_OF - timedelta(seconds=1),
                AS_OF,
            ],
        },
        schema_overrides={"last_ts": pl.Datetime("us", "UTC")},
    )


def test_add_history_features_joins_the_users_own_history() -> None:
    rows = pl.DataFrame(
        {USER_ID: ["u1", "u1", "u1", "u2", "u2"], ITEM_ID: ["a", "b", "c", "a", "b"], "f": [1, 2, 3, 4, 5]}
    )
    out = add_history_features(rows, interactions_snapshot(), as_of=AS_OF)
    assert out.height == rows.height
    assert out.columns == [
        USER_ID,
        ITEM_ID,
        "f",
        "ui_weight",
        "ui_views",
        "ui_carts",
        "ui_purchases",
        "ui_seconds_since_last",
    ]
    got = {(r[USER_ID], r[ITEM_ID]): r for r in out.iter_rows(named=True)}
    assert got["u1", "a"] == {
        USER_ID: "u1", ITEM_ID: "a", "f": 1, "ui_weight": 1.5, "ui_views": 3, "ui_carts": 0, "ui_purchases": 0,
        "ui_seconds_since_last": 7200.0,
    }  # fmt: skip
    assert got["u1", "b"]["ui_weight"] == 4.0 and got["u1", "b"]["ui_purchases"] == 1
    assert got["u1", "b"]["ui_seconds_since_last"] == 3 * 86400 + 5
    assert got["u2", "a"]["ui_seconds_since_last"] == 1.0 and got["u2", "a"]["ui_weight"] == 0.25
    # u2 never touched b (u1 did: no leak across users), nobody touched c: all history features null.
    for key in (("u1", "c"), ("u2", "b")):
        assert all(got[key][c] is None for c in out.columns if c.startswith("ui_")), key
    assert out.schema["ui_seconds_since_last"] == pl.Float64
    assert {*HISTORY_FEATURES, SECONDS_SINCE_LAST} <= set(out.columns)


def test_seconds_since_last_keeps_sub_second_precision() -> None:
    snapshot = interactions_snapshot().with_columns(
        pl.lit(AS_OF - timedelta(seconds=1, microseconds=750_000)).alias("last_ts")
    )
    out = add_history_features(pl.DataFrame({USER_ID: ["u2"], ITEM_ID: ["a"]}), snapshot, as_of=AS_OF)
    assert out["ui_seconds_since_last"].to_list() == [1.75]


def test_rank_top_k_ranks_by_score_then_item_id() -> None:
    rows = pl.DataFrame(
        {USER_ID: ["u2", "u1", "u1", "u2", "u1", "u1", "u2"], ITEM_ID: ["x", "d", "c", "y", "b", "a", "z"]}
    )
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.5, 0.2, 0.3])
    top = rank_top_k(rows, scores, k=3)
    assert top.columns == [USER_ID, ITEM_ID, "score", "rank"]
    assert top.select(USER_ID, ITEM_ID, "rank").rows() == [
        ("u1", "d", 1), ("u1", "b", 2), ("u1", "c", 3),  # b and c tie at 0.5: item_id decides
        ("u2", "y", 1), ("u2", "z", 2), ("u2", "x", 3),
    ]  # fmt: skip
    assert top.filter(pl.col(ITEM_ID) == "d")["score"].item() == 0.9
    # k larger than a user's candidates: all of them; k = 1: the best only.
    assert rank_top_k(rows, scores, k=10).height == rows.height
    assert rank_top_k(rows, scores, k=1).select(USER_ID, ITEM_ID).rows() == [("u1", "d"), ("u2", "y")]


def test_rank_top_k_on_random_rows_is_sorted_and_complete() -> None:
    rng = np.random.default_rng(4)
    rows = pl.DataFrame({USER_ID: [f"u{i % 17}" for i in range(500)], ITEM_ID: [f"i{i:03d}" for i in range(500)]})
    scores = rng.integers(0, 5, size=500).astype(float)  # many ties
    top = rank_top_k(rows, scores, k=7)
    assert top.group_by(USER_ID).len()["len"].to_list() == [7] * 17
    assert top.sort(USER_ID, "rank").equals(top)
    for _, g in top.group_by(USER_ID):
        assert g["rank"].to_list() == list(range(1, 8))
        keys = list(zip((-g["score"]).to_list(), g[ITEM_ID].to_list(), strict=True))
        assert keys == sorted(keys)
    # Independently: each user's 7 best (score descending, item id ascending) by plain Python sorting.
    by_user: dict[str, list[tuple[float, str]]] = {}
    for (user, item), s in zip(rows.iter_rows(), scores, strict=True):
        by_user.setdefault(user, []).append((-s, item))
    expected = [(u, item) for u in sorted(by_user) for _, item in sorted(by_user[u])[:7]]
    assert top.select(USER_ID, ITEM_ID).rows() == expected


def test_params_are_lambdarank_with_graded_gains() -> None:
    p = RankerParams().lgb_params()
    assert p["objective"] == "lambdarank" and p["label_gain"] == [0, 1, 3, 7]


def test_user_chunks_cover_every_row_and_never_split_a_user() -> None:
    from recs_pipeline.models.ranking import _user_chunks

    entity = pl.DataFrame(
        {USER_ID: ["a"] * 3 + ["b"] * 5 + ["c"] * 1 + ["d"] * 4, ITEM_ID: [str(i) for i in range(13)]}
    )
    chunks = _user_chunks(entity, 4)
    assert pl.concat(chunks).equals(entity)
    users = [set(c[USER_ID]) for c in chunks]
    assert all(not (a & b) for i, a in enumerate(users) for b in users[i + 1 :])
    assert [c.height for c in chunks] == [3, 5, 1, 4]  # b alone exceeds the chunk size but stays whole
    with pytest.raises(ValueError, match="chunk_rows"):
        _user_chunks(entity, 0)
