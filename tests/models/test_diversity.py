"""The category re-rank (maximal marginal relevance on categories) and the two list-diversity measures."""

import numpy as np
import polars as pl
import pytest

from recs_pipeline.models.diversity import (
    category_coverage,
    diversify,
    intra_list_diversity,
    rank_top_k_diverse,
)
from recs_pipeline.models.retrieval import top_n

SCORES = np.array([0.9, 1.0, 0.8, 0.5, 0.7, 0.1])
CATS = np.array(["a", "a", "a", "b", "b", None], dtype=object)


def test_strength_zero_is_the_score_order_with_position_ties():
    tied = np.array([1.0, 2.0, 1.0, 2.0, 0.5])
    assert diversify(tied, ["x"] * 5, 5, 0.0).tolist() == top_n(tied, 5).tolist() == [1, 3, 0, 2, 4]
    assert diversify(SCORES, CATS, 3, 0.0).tolist() == [1, 0, 2]


def test_a_strong_re_rank_shows_every_category_once_before_any_twice():
    assert diversify(SCORES, CATS, 6, 1.0).tolist() == [1, 4, 5, 0, 3, 2]


def test_a_mild_re_rank_trades_score_for_a_new_category_only_within_its_strength():
    # relevance over the range 0.1..1.0: i1 1.0, i0 0.889, i2 0.778, i4 0.667. After i1 (a), i0 pays one
    # repeat: 0.689 still beats b's i4 0.667; after two a's, i2 pays 0.4 (0.378) and b's i4 goes first
    assert diversify(SCORES, CATS, 4, 0.2).tolist() == [1, 0, 4, 2]
    # items without a category never count as repeats
    assert diversify(np.array([1.0, 0.9, 0.8]), [None, None, None], 3, 5.0).tolist() == [0, 1, 2]


def test_k_larger_than_the_candidates_and_empty_input():
    assert sorted(diversify(SCORES, CATS, 50, 0.5).tolist()) == list(range(6))
    assert diversify(np.array([]), [], 5, 1.0).tolist() == []


def test_per_user_re_rank_and_the_measures():
    rows = pl.DataFrame({"user_id": ["u1"] * 6 + ["u2"] * 2, "item_id": [f"i{j}" for j in range(6)] + ["i0", "i3"]})
    scores = np.r_[SCORES, [0.3, 0.2]]
    cats = np.r_[CATS, np.array(["a", "b"], dtype=object)]
    plain = rank_top_k_diverse(rows, scores, cats, k=3, strength=0.0)
    diverse = rank_top_k_diverse(rows, scores, cats, k=3, strength=1.0)
    assert plain.filter(pl.col("user_id") == "u1")["item_id"].to_list() == ["i1", "i0", "i2"]
    assert diverse.filter(pl.col("user_id") == "u1")["item_id"].to_list() == ["i1", "i4", "i5"]
    assert diverse.filter(pl.col("user_id") == "u2")["rank"].to_list() == [1, 2]
    catalog = pl.DataFrame({"item_id": [f"i{j}" for j in range(5)], "category_id": ["a", "a", "a", "b", "b"]})
    # u1 plain: three a's -> 0 of 3 pairs differ; u2: a, b -> 1 of 1
    assert intra_list_diversity(plain, catalog, k=3) == pytest.approx((0.0 + 1.0) / 2)
    # u1 diverse: a, b, and i5 (no category: its own) -> every pair differs
    assert intra_list_diversity(diverse, catalog, k=3) == pytest.approx(1.0)
    assert category_coverage(plain, catalog, k=3) == pytest.approx((1 / 3 + 2 / 2) / 2)
    assert category_coverage(diverse, catalog, k=3) == pytest.approx(1.0)
