"""Online metrics: rates with cluster-bootstrap intervals, differences to the control, the verdicts."""

import numpy as np
import polars as pl
import pytest

from recs_pipeline.models.online_metrics import (
    BETTER,
    COLLECTING,
    NO_DIFFERENCE,
    WORSE,
    DecisionRule,
    analyse,
    guardrail_failures,
    markdown,
)


def arm(variant: str, *, users: int, per_user: int, ctr: float, conversion: float, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = users * per_user
    clicked = rng.random(n) < ctr
    purchased = clicked & (rng.random(n) < conversion / ctr)
    return pl.DataFrame(
        {
            "experiment": ["exp"] * n,
            "variant": [variant] * n,
            "user_id": [f"{variant}-u{i // per_user}" for i in range(n)],
            "clicked": clicked,
            "carted": purchased,
            "purchased": purchased,
            "revenue": np.where(purchased, 10.0, 0.0),
        }
    )


RULE = DecisionRule(min_exposures=500, n_bootstrap=400, seed=1)


def test_a_better_variant_is_found_with_the_right_sign():
    rows = pl.concat(
        [
            arm("control", users=600, per_user=5, ctr=0.10, conversion=0.02, seed=1),
            arm("b", users=600, per_user=5, ctr=0.16, conversion=0.02, seed=2),
        ]
    )
    report = analyse(rows, control_of={"exp": "control"}, rule=RULE)
    result = report["experiments"]["exp"]
    assert result["ready"] and result["variants"]["b"]["exposures"] == 3000 and result["variants"]["b"]["users"] == 600
    ctr = result["variants"]["control"]["ctr"]
    assert ctr["ci_low"] < ctr["value"] < ctr["ci_high"] and abs(ctr["value"] - 0.10) < 0.02
    diff = result["differences"]["b"]
    assert diff["verdict"] == BETTER and diff["ctr"]["ci_low"] > 0 and abs(diff["ctr"]["value"] - 0.06) < 0.025
    assert diff["guardrail"] == NO_DIFFERENCE
    assert result["variants"]["b"]["revenue_per_exposure"]["value"] == pytest.approx(
        10.0 * result["variants"]["b"]["conversion"]["value"]
    )
    assert "| b | 3000 | 600 |" in markdown(report)


def test_an_a_a_split_finds_no_difference():
    rows = pl.concat(
        [
            arm("control", users=600, per_user=5, ctr=0.12, conversion=0.03, seed=3),
            arm("same", users=600, per_user=5, ctr=0.12, conversion=0.03, seed=4),
        ]
    )
    diff = analyse(rows, control_of={"exp": "control"}, rule=RULE)["experiments"]["exp"]["differences"]["same"]
    assert diff["verdict"] == NO_DIFFERENCE and diff["ctr"]["ci_low"] < 0 < diff["ctr"]["ci_high"]


def test_no_verdict_before_the_minimum_sample_and_a_worse_guardrail_fails():
    small = pl.concat(
        [
            arm("control", users=50, per_user=5, ctr=0.10, conversion=0.05, seed=5),
            arm("b", users=50, per_user=5, ctr=0.30, conversion=0.0001, seed=6),
        ]
    )
    result = analyse(small, control_of={"exp": "control"}, rule=RULE)["experiments"]["exp"]
    assert not result["ready"] and result["differences"]["b"]["verdict"] == COLLECTING
    big = pl.concat(
        [
            arm("control", users=600, per_user=5, ctr=0.10, conversion=0.05, seed=7),
            arm("b", users=600, per_user=5, ctr=0.10, conversion=0.01, seed=8),
        ]
    )
    report = analyse(big, control_of={"exp": "control"}, rule=RULE)
    assert report["experiments"]["exp"]["differences"]["b"]["guardrail"] == WORSE
    assert guardrail_failures(report) == ["exp/b"]


def test_users_are_resampled_whole():
    """One user with many clicks: the interval must reflect that it is one user, not many exposures."""
    heavy = pl.DataFrame(
        {
            "experiment": ["exp"] * 120,
            "variant": ["control"] * 120,
            "user_id": ["whale"] * 100 + [f"u{i}" for i in range(20)],
            "clicked": [True] * 100 + [False] * 20,
            "carted": [False] * 120,
            "purchased": [False] * 120,
            "revenue": [0.0] * 120,
        }
    )
    ctr = analyse(heavy, control_of={}, rule=RULE)["experiments"]["exp"]["variants"]["control"]["ctr"]
    # exposure-level resampling would give a tight interval around 0.83; users make it wide
    assert ctr["ci_high"] - ctr["ci_low"] > 0.3


def test_a_bad_rule_is_refused():
    with pytest.raises(ValueError, match="among"):
        DecisionRule(metric="clicks")
