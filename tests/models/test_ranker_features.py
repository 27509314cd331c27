"""The ranker-feature contract: one list, one order, derived features computed one way."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recs_pipeline.models import ranker_features as rf


def _inputs(n: int = 3, **overrides) -> rf.RankerInputs:
    base = {
        "source_scores": np.full((n, len(rf.SOURCES)), np.nan),
        "source_ranks": np.full((n, len(rf.SOURCES)), np.nan),
        "user": np.zeros((n, len(rf.USER_FEATURES))),
        "user_top_category": np.full(n, "c1", dtype=object),
        "item": np.zeros((n, len(rf.ITEM_FEATURES))),
        "item_category": np.full(n, "c1", dtype=object),
        "category": np.full((n, len(rf.CATEGORY_FEATURES)), np.nan),
        "history": np.full((n, len(rf.HISTORY_FEATURES)), np.nan),
        "seconds_since_last": np.full(n, np.nan),
    }
    return rf.RankerInputs(**{**base, **overrides})


def test_features_are_unique_and_blocks_are_in_order() -> None:
    assert len(set(rf.FEATURES)) == len(rf.FEATURES)
    assert rf.FEATURES[:16] == (
        "als_score", "als_rank", "catpop_score", "catpop_rank", "content_score", "content_rank", "covis_score",
        "covis_rank", "popular_score", "popular_rank", "recent_score", "recent_rank", "trending_score",
        "trending_rank", "usercf_score", "usercf_rank",
    )  # fmt: skip
    assert rf.FEATURES[16:18] == ("n_sources", "best_rank")
    assert rf.FEATURES[-2:] == ("price_vs_user_avg", "in_top_category")
    assert "user_features__top_category_id" not in rf.FEATURES  # strings only feed derived features


def test_assemble_places_every_block_and_derives_features() -> None:
    n = 4
    nan = np.nan
    scores = np.array(
        [
            [0.5, nan, nan, nan, nan, nan, 2.0, nan],
            [nan, nan, nan, 9.0, nan, nan, nan, nan],
            [1.0, 0.2, 0.1, 2.0, 3.0, -60.0, 4.0, 0.7],
            [nan] * 8,
        ]
    )
    ranks = np.array(
        [
            [3, nan, nan, nan, nan, nan, 7, nan],
            [nan, nan, nan, 1, nan, nan, nan, nan],
            [5, 3, 10, 4, 9, 6, 2, 8],
            [nan] * 8,
        ]
    )
    user = np.arange(n * len(rf.USER_FEATURES), dtype=float).reshape(n, -1)
    user[:, rf.USER_FEATURES.index("avg_price_30d")] = [20.0, 10.0, np.nan, 0.0]
    item = np.zeros((n, len(rf.ITEM_FEATURES)))
    item[:, rf.ITEM_FEATURES.index("price")] = [10.0, 30.0, 5.0, 4.0]
    x = rf.assemble(
        _inputs(
            n,
            source_scores=scores,
            source_ranks=ranks,
            user=user,
            item=item,
            user_top_category=np.array(["c1", "c1", None, "c2"], dtype=object),
            item_category=np.array(["c1", "c2", "c1", None], dtype=object),
            history=np.array([[1.5, 3, 0, 0], [np.nan] * 4, [np.nan] * 4, [0.25, 1, 1, 1]]),
            seconds_since_last=np.array([7200.0, np.nan, np.nan, 1.75]),
        )
    )
    col = {f: j for j, f in enumerate(rf.FEATURES)}
    assert x.dtype == np.float32 and x.shape == (n, len(rf.FEATURES))
    np.testing.assert_array_equal(x[:, col["als_score"]], np.float32([0.5, np.nan, 1.0, np.nan]))
    np.testing.assert_array_equal(x[:, col["trending_rank"]], np.float32([7, np.nan, 2, np.nan]))
    np.testing.assert_array_equal(x[:, col["recent_score"]], np.float32([nan, nan, -60.0, nan]))
    np.testing.assert_array_equal(x[:, col["usercf_rank"]], np.float32([nan, nan, 8, nan]))
    np.testing.assert_array_equal(x[:, col["catpop_score"]], np.float32([nan, nan, 0.2, nan]))
    np.testing.assert_array_equal(x[:, col["content_rank"]], np.float32([nan, nan, 10, nan]))
    np.testing.assert_array_equal(x[:, col["n_sources"]], [2, 1, 8, 0])
    np.testing.assert_array_equal(x[:, col["best_rank"]], np.float32([3, 1, 2, np.nan]))
    np.testing.assert_array_equal(x[:, col["price_vs_user_avg"]], np.float32([0.5, 3.0, np.nan, np.inf]))
    np.testing.assert_array_equal(x[:, col["in_top_category"]], np.float32([1, 0, np.nan, np.nan]))
    np.testing.assert_array_equal(x[:, col["ui_weight"]], np.float32([1.5, np.nan, np.nan, 0.25]))
    np.testing.assert_array_equal(x[:, col["ui_seconds_since_last"]], np.float32([7200, np.nan, np.nan, 1.75]))
    first_user = col[f"user_features__{rf.USER_FEATURES[0]}"]
    np.testing.assert_array_equal(x[:, first_user : first_user + len(rf.USER_FEATURES)], user.astype(np.float32))


def test_inputs_must_have_the_contract_shapes() -> None:
    with pytest.raises(ValueError, match="user has shape"):
        _inputs(2, user=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="item_category has 1 rows"):
        _inputs(2, item_category=np.array(["c"], dtype=object))


def test_rows_missing_a_contract_column_fail_clearly() -> None:
    rows = pl.DataFrame({"user_id": ["u"], "item_id": ["i"], "als_score": [1.0]})
    with pytest.raises(ValueError, match="ranking rows lack columns"):
        rf.inputs_from_rows(rows)


def test_feature_frame_round_trips_through_matrix_of() -> None:
    x = rf.assemble(_inputs(3))
    back = rf.matrix_of(rf.feature_frame(x))
    np.testing.assert_array_equal(back, x)
