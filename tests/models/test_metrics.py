"""Tests of the offline evaluation metrics against hand-computed cases, plus property tests."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recs_pipeline.models.metrics import (
    catalog_coverage,
    evaluate,
    hitrate_at_k,
    map_at_k,
    metrics_table_markdown,
    mrr,
    ndcg_at_k,
    novelty,
    paired_difference,
    per_user_metrics,
    precision_at_k,
    recall_at_k,
)

EMPTY_POP = pl.DataFrame({"item_id": [], "count": []}, schema={"item_id": pl.String, "count": pl.Int64})


def make_ranked(lists: dict[str, list[str]]) -> pl.DataFrame:
    """``{user: [item at rank 1, item at rank 2, ...]}`` as a ranked frame."""
    rows = [(u, item, r) for u, items in lists.items() for r, item in enumerate(items, start=1)]
    return pl.DataFrame(rows, schema={"user_id": pl.String, "item_id": pl.String, "rank": pl.Int64}, orient="row")


def make_truth(rels: dict[str, dict[str, float]]) -> pl.DataFrame:
    """``{user: {item: relevance}}`` as a truth frame."""
    rows = [(u, item, float(rel)) for u, items in rels.items() for item, rel in items.items()]
    return pl.DataFrame(
        rows, schema={"user_id": pl.String, "item_id": pl.String, "relevance": pl.Float64}, orient="row"
    )


def one(df: pl.DataFrame, user: str, col: str) -> float:
    return df.filter(pl.col("user_id") == user)[col].item()


def run_evaluate(ranked: pl.DataFrame, truth: pl.DataFrame, users: list[str], **kwargs: object) -> dict:
    opts: dict = {"ks": (3,), "item_popularity": EMPTY_POP, "n_catalog_items": 100, "n_bootstrap": 200}
    opts.update(kwargs)
    return evaluate(ranked, truth, users, **opts)


# --------------------------------------------------------------------------------------------------
# Hand-computed per-user cases
# --------------------------------------------------------------------------------------------------


def test_perfect_ranking_scores_one_everywhere() -> None:
    # Ranked a, b, c in the ideal order of relevance 3, 2, 1: DCG == IDCG, all relevant found at
    # ranks 1..3 so recall = 3/min(3,3), AP = (1/1 + 2/2 + 3/3)/3, first hit at rank 1.
    ranked = make_ranked({"u1": ["a", "b", "c"]})
    truth = make_truth({"u1": {"a": 3, "b": 2, "c": 1}})
    pu = per_user_metrics(ranked, truth, ["u1"], ks=(3, 10))
    for col in ("ndcg@3", "recall@3", "map@3", "hitrate@3", "ndcg@10", "recall@10", "map@10", "hitrate@10", "mrr"):
        assert one(pu, "u1", col) == pytest.approx(1.0, abs=1e-12), col


def test_graded_ndcg_partial_list_by_hand() -> None:
    # List x, a, y, b with rel(a) = 3, rel(b) = 1: relevant at ranks 2 and 4; ideal order [3, 1].
    # DCG@5  = (2^3-1)/log2(3) + (2^1-1)/log2(5) = 7/1.5849625 + 1/2.3219281 = 4.4165 + 0.4307 = 4.8471848
    # IDCG@5 = 7/log2(2) + 1/log2(3) = 7 + 0.6309298 = 7.6309298           -> NDCG@5 = 0.6352024
    # DCG@3  = 7/log2(3) = 4.4165; IDCG@3 = 7.6309298 (both relevant fit)  -> NDCG@3 = 0.5787641
    ranked = make_ranked({"u1": ["x", "a", "y", "b"]})
    truth = make_truth({"u1": {"a": 3, "b": 1}})
    pu = per_user_metrics(ranked, truth, ["u1"], ks=(3, 5))
    assert one(pu, "u1", "ndcg@5") == pytest.approx(0.6352023920551748, rel=1e-12)
    assert one(pu, "u1", "ndcg@3") == pytest.approx(0.5787641110093001, rel=1e-12)
    # recall@3 = 1 hit / min(2, 3) = 0.5; recall@5 = 2 / 2 = 1.
    assert one(pu, "u1", "recall@3") == pytest.approx(0.5)
    assert one(pu, "u1", "recall@5") == pytest.approx(1.0)
    # AP@5 = (P@2 + P@4) / min(2, 5) = (1/2 + 2/4) / 2 = 0.5; AP@3 = (1/2) / 2 = 0.25.
    assert one(pu, "u1", "map@5") == pytest.approx(0.5)
    assert one(pu, "u1", "map@3") == pytest.approx(0.25)
    # First relevant item at rank 2.
    assert one(pu, "u1", "mrr") == pytest.approx(0.5)
    # The single-metric functions agree with the combined table.
    assert one(ndcg_at_k(ranked, truth, ["u1"], k=5), "u1", "ndcg@5") == pytest.approx(0.6352023920551748)


def test_ndcg_ideal_is_truncated_at_k() -> None:
    # rel a=1, b=2, c=3; list c only, K=1: DCG@1 = 7/1; IDCG@1 uses only the best item = 7/1 -> 1.0.
    # K=2 with list c, x: DCG@2 = 7; IDCG@2 = 7 + 3/log2(3) = 8.8927893 -> 7 / 8.8927893 = 0.7871546.
    ranked = make_ranked({"u1": ["c", "x"]})
    truth = make_truth({"u1": {"a": 1, "b": 2, "c": 3}})
    pu = per_user_metrics(ranked, truth, ["u1"], ks=(1, 2))
    assert one(pu, "u1", "ndcg@1") == pytest.approx(1.0)
    assert one(pu, "u1", "ndcg@2") == pytest.approx(7 / (7 + 3 / math.log2(3)))
    assert one(pu, "u1", "ndcg@2") == pytest.approx(0.7871546, abs=1e-7)


def test_recall_denominator_is_min_of_relevant_and_k() -> None:
    # 5 relevant items, K = 3. List a, b, x -> 2 hits / min(5, 3) = 2/3 (not 2/5).
    # A list of three relevant items scores 3/3 = 1 (not 3/5).
    truth = make_truth({"u1": dict.fromkeys("abcde", 1.0), "u2": dict.fromkeys("abcde", 1.0)})
    ranked = make_ranked({"u1": ["a", "b", "x"], "u2": ["c", "d", "e"]})
    rec = recall_at_k(ranked, truth, ["u1", "u2"], k=3)
    assert one(rec, "u1", "recall@3") == pytest.approx(2 / 3)
    assert one(rec, "u2", "recall@3") == pytest.approx(1.0)
    # AP@3 of a, b, x = (1/1 + 2/2) / min(5, 3) = 2/3; of c, d, e = 3/3 = 1.
    ap = map_at_k(ranked, truth, ["u1", "u2"], k=3)
    assert one(ap, "u1", "map@3") == pytest.approx(2 / 3)
    assert one(ap, "u2", "map@3") == pytest.approx(1.0)


def test_map_with_relevant_at_ranks_one_and_three() -> None:
    # Relevant {a, b}; list a, x, b. AP@3 = (P@1 + P@3) / min(2, 3) = (1/1 + 2/3) / 2 = 5/6.
    # AP@2 = P@1 / min(2, 2) = 1/2. Relevance grades do not matter for MAP (binary).
    ranked = make_ranked({"u1": ["a", "x", "b"]})
    truth = make_truth({"u1": {"a": 1, "b": 3}})
    assert one(map_at_k(ranked, truth, ["u1"], k=3), "u1", "map@3") == pytest.approx(5 / 6)
    assert one(map_at_k(ranked, truth, ["u1"], k=2), "u1", "map@2") == pytest.approx(0.5)


def test_precision_counts_hits_over_k_always() -> None:
    # List a, x, b, y with relevant {a, b, c}: precision@1 = 1/1, @2 = 1/2, @3 = 2/3, @4 = 2/4.
    # @10 = 2/10: the short list does not shrink the denominator (unlike recall's min(|rel|, K)).
    # u2 has one relevant item found at rank 1: precision@3 = 1/3 although recall@3 = 1.
    # u3 has truth but no list, u4 a list but no truth: both 0.
    ranked = make_ranked({"u1": ["a", "x", "b", "y"], "u2": ["q", "r", "s"], "u4": ["a"]})
    truth = make_truth({"u1": {"a": 1, "b": 3, "c": 2}, "u2": {"q": 1}, "u3": {"a": 1}})
    users = ["u1", "u2", "u3", "u4"]
    pu = per_user_metrics(ranked, truth, users, ks=(1, 2, 3, 4, 10))
    assert [one(pu, "u1", f"precision@{k}") for k in (1, 2, 3, 4, 10)] == pytest.approx(
        [1, 1 / 2, 2 / 3, 2 / 4, 2 / 10]
    )
    assert one(pu, "u2", "precision@3") == pytest.approx(1 / 3) and one(pu, "u2", "recall@3") == pytest.approx(1.0)
    assert one(pu, "u3", "precision@3") == 0.0 and one(pu, "u4", "precision@3") == 0.0
    assert precision_at_k(ranked, truth, users, k=3)["precision@3"].to_list() == pytest.approx([2 / 3, 1 / 3, 0, 0])
    # evaluate's mean over the four users: (2/3 + 1/3 + 0 + 0) / 4 = 1/4
    assert run_evaluate(ranked, truth, users)["precision@3"]["value"] == pytest.approx(0.25)


def test_hitrate_and_mrr_use_cutoff_and_whole_list() -> None:
    # Only relevant item at rank 4: hitrate@3 = 0, hitrate@4 = 1; MRR ignores K: 1/4.
    ranked = make_ranked({"u1": ["w", "x", "y", "a", "z"]})
    truth = make_truth({"u1": {"a": 2}})
    assert one(hitrate_at_k(ranked, truth, ["u1"], k=3), "u1", "hitrate@3") == 0.0
    assert one(hitrate_at_k(ranked, truth, ["u1"], k=4), "u1", "hitrate@4") == 1.0
    assert one(mrr(ranked, truth, ["u1"]), "u1", "mrr") == pytest.approx(0.25)


def test_mrr_first_relevant_beyond_largest_k() -> None:
    # 60-item list, first relevant at rank 60: nothing in any top-50, yet MRR = 1/60.
    items = [f"i{j}" for j in range(60)]
    ranked = make_ranked({"u1": items})
    truth = make_truth({"u1": {"i59": 1}})
    pu = per_user_metrics(ranked, truth, ["u1"], ks=(10, 50))
    assert one(pu, "u1", "hitrate@50") == 0.0
    assert one(pu, "u1", "mrr") == pytest.approx(1 / 60)


def test_users_without_recommendations_or_truth_score_zero_and_count() -> None:
    # u1 perfect (1.0 everywhere), u2 has truth but no list, u3 has a list but no relevant items:
    # per-user 0 for u2 and u3, means over 3 users = 1/3.
    ranked = make_ranked({"u1": ["a"], "u3": ["a"]})
    truth = make_truth({"u1": {"a": 1}, "u2": {"a": 1}})
    pu = per_user_metrics(ranked, truth, ["u1", "u2", "u3"], ks=(3,))
    assert pu["user_id"].to_list() == ["u1", "u2", "u3"]
    for col in ("ndcg@3", "recall@3", "map@3", "hitrate@3", "mrr"):
        assert pu[col].to_list() == pytest.approx([1.0, 0.0, 0.0]), col
    res = run_evaluate(ranked, truth, ["u1", "u2", "u3"])
    assert res["users"] == 3
    assert res["ndcg@3"]["value"] == pytest.approx(1 / 3)
    assert res["mrr"]["value"] == pytest.approx(1 / 3)


def test_users_not_evaluated_are_ignored() -> None:
    # u9 is in truth and ranked but not evaluated: it must change neither the means nor coverage.
    ranked = make_ranked({"u1": ["a", "x"], "u9": ["b", "c"]})
    truth = make_truth({"u1": {"a": 1}, "u9": {"b": 1, "c": 1}})
    res = run_evaluate(ranked, truth, ["u1"], n_catalog_items=10)
    assert res["users"] == 1
    assert res["recall@3"]["value"] == pytest.approx(1.0)
    assert res["hitrate@3"]["value"] == pytest.approx(1.0)
    # u1's list holds 2 distinct items out of 10 (u9's b, c not counted).
    assert res["coverage@3"]["value"] == pytest.approx(0.2)
    assert per_user_metrics(ranked, truth, ["u1"], ks=(3,)).height == 1


def test_coverage_and_novelty_tiny_case() -> None:
    # u1: a, b, c; u2: a, d; catalog of 10 items.
    # top-2: {a, b} ∪ {a, d} = 3 items -> 0.3; top-3 adds c -> 4/10 = 0.4.
    # Popularity a=5, b=1, d=0, c absent (0): total 6; p = (count + 1) / (6 + 10):
    # p(a) = 6/16 -> -log2 = log2(8/3) = 1.4150375; p(b) = 2/16 -> 3; p(c) = p(d) = 1/16 -> 4.
    # novelty@2 over pairs (u1,a), (u1,b), (u2,a), (u2,d) = (1.4150375 + 3 + 1.4150375 + 4) / 4 = 2.4575187
    # novelty@3 adds (u1,c) = 4: (9.830075 + 4) / 5 = 2.7660150
    ranked = make_ranked({"u1": ["a", "b", "c"], "u2": ["a", "d"]})
    pop = pl.DataFrame({"item_id": ["a", "b", "d"], "count": [5, 1, 0]})
    users = ["u1", "u2"]
    assert catalog_coverage(ranked, users, k=2, n_catalog_items=10) == pytest.approx(0.3)
    assert catalog_coverage(ranked, users, k=3, n_catalog_items=10) == pytest.approx(0.4)
    nov2 = novelty(ranked, users, k=2, item_popularity=pop, n_catalog_items=10)
    nov3 = novelty(ranked, users, k=3, item_popularity=pop, n_catalog_items=10)
    assert nov2 == pytest.approx(2.457518749639422)
    assert nov3 == pytest.approx(2.7660149997115377)
    truth = make_truth({"u1": {"a": 1}})
    res = run_evaluate(ranked, truth, users, ks=(2, 3), item_popularity=pop, n_catalog_items=10)
    assert res["coverage@2"] == {
        "value": pytest.approx(0.3),
        "ci_low": pytest.approx(0.3),
        "ci_high": pytest.approx(0.3),
    }
    assert res["novelty@2"]["value"] == pytest.approx(2.457518749639422)
    assert res["novelty@3"]["value"] == pytest.approx(2.7660149997115377)
    assert res["novelty@3"]["ci_low"] <= res["novelty@3"]["value"] <= res["novelty@3"]["ci_high"]


def test_coverage_above_catalog_size_is_rejected() -> None:
    ranked = make_ranked({"u1": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="n_catalog_items"):
        catalog_coverage(ranked, ["u1"], k=3, n_catalog_items=2)


def test_evaluate_has_every_metric_name() -> None:
    ranked = make_ranked({"u1": ["a"]})
    truth = make_truth({"u1": {"a": 1}})
    res = run_evaluate(ranked, truth, ["u1"], ks=(10, 20))
    expected = {"users", "mrr"} | {
        f"{m}@{k}" for m in ("ndcg", "recall", "precision", "map", "hitrate", "coverage", "novelty") for k in (10, 20)
    }
    assert set(res) == expected
    assert set(res["ndcg@20"]) == {"value", "ci_low", "ci_high"}


# --------------------------------------------------------------------------------------------------
# Bootstrap confidence intervals
# --------------------------------------------------------------------------------------------------


def random_case(n_users: int, seed: int, *, prefix: str = "u") -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """Users with 10-item lists over 30 items and 3 relevant items each (random hits)."""
    rng = np.random.default_rng(seed)
    lists, rels = {}, {}
    for j in range(n_users):
        u = f"{prefix}{j}"
        lists[u] = [f"i{x}" for x in rng.permutation(30)[:10]]
        rels[u] = {f"i{x}": float(rng.integers(1, 4)) for x in rng.permutation(30)[:3]}
    return make_ranked(lists), make_truth(rels), list(lists)


def test_bootstrap_ci_contains_value_and_is_deterministic() -> None:
    ranked, truth, users = random_case(200, seed=1)
    pop = pl.DataFrame({"item_id": [f"i{x}" for x in range(30)], "count": list(range(30))})
    opts = {"ks": (5, 10), "item_popularity": pop}
    a = run_evaluate(ranked, truth, users, seed=42, **opts)
    b = run_evaluate(ranked, truth, users, seed=42, **opts)
    c = run_evaluate(ranked, truth, users, seed=43, **opts)
    assert a == b
    assert a["ndcg@10"]["ci_low"] != c["ndcg@10"]["ci_low"] or a["ndcg@10"]["ci_high"] != c["ndcg@10"]["ci_high"]
    for name in ("ndcg@10", "recall@10", "map@10", "hitrate@10", "mrr", "novelty@10", "ndcg@5"):
        r = a[name]
        assert r["ci_low"] < r["value"] < r["ci_high"], name


def test_bootstrap_ci_collapses_when_all_users_identical() -> None:
    # Every user has the same list and truth: every resample mean equals the value.
    users = [f"u{j}" for j in range(50)]
    ranked = make_ranked({u: ["a", "x", "b"] for u in users})
    truth = make_truth({u: {"a": 2, "b": 1} for u in users})
    res = run_evaluate(ranked, truth, users, item_popularity=pl.DataFrame({"item_id": ["a"], "count": [3]}))
    assert res["map@3"]["value"] == pytest.approx(5 / 6)
    for name in ("ndcg@3", "recall@3", "map@3", "hitrate@3", "mrr", "novelty@3", "coverage@3"):
        r = res[name]
        assert r["ci_low"] == pytest.approx(r["value"], abs=1e-12), name
        assert r["ci_high"] == pytest.approx(r["value"], abs=1e-12), name


def test_paired_difference_excludes_zero_when_one_method_dominates() -> None:
    # "better" finds every user's relevant items, "worse" is the same list shifted down by five
    # ranks: every user's NDCG is higher with "better", so every resample's mean difference is > 0.
    ranked, truth, users = random_case(200, seed=3)
    ideal = (
        truth.sort(["user_id", "relevance"], descending=[False, True])
        .with_columns(rank=pl.int_range(1, pl.len() + 1).over("user_id"))
        .select("user_id", "item_id", "rank")
    )
    worse = ranked.with_columns(pl.col("rank") + 5)
    a = per_user_metrics(ideal, truth, users, ks=(10,))
    b = per_user_metrics(worse, truth, users, ks=(10,))
    diff = paired_difference(a, b, metrics=("ndcg@10", "recall@10"), n_bootstrap=300, seed=1)
    for name in ("ndcg@10", "recall@10"):
        d = diff[name]
        assert d["value"] == pytest.approx(a[name].mean() - b[name].mean())
        assert 0 < d["ci_low"] < d["value"] < d["ci_high"], name
    # the difference the other way round is its negative, on the same resamples
    back = paired_difference(b, a, metrics=("ndcg@10",), n_bootstrap=300, seed=1)["ndcg@10"]
    assert back["value"] == pytest.approx(-diff["ndcg@10"]["value"])
    assert back["ci_low"] == pytest.approx(-diff["ndcg@10"]["ci_high"])
    # the users may come in any order: the frames are matched by user
    shuffled = paired_difference(a, b.reverse(), metrics=("ndcg@10",), n_bootstrap=300, seed=1)
    assert shuffled["ndcg@10"] == pytest.approx(diff["ndcg@10"])


def test_paired_difference_of_identical_methods_is_zero_with_zero_width() -> None:
    # Per-user values vary a lot (so each method's own interval is wide), yet the paired difference
    # of a method with itself is exactly 0 in every resample.
    ranked, truth, users = random_case(100, seed=4)
    a = per_user_metrics(ranked, truth, users, ks=(10,))
    alone = run_evaluate(ranked, truth, users, ks=(10,))["ndcg@10"]
    assert alone["ci_high"] - alone["ci_low"] > 0.01
    same = paired_difference(a, a.clone(), metrics=("ndcg@10", "mrr"), n_bootstrap=200)
    assert same == {m: {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0} for m in ("ndcg@10", "mrr")}


def test_paired_difference_refuses_different_users_or_missing_metrics() -> None:
    a = pl.DataFrame({"user_id": ["u1", "u2"], "ndcg@10": [0.1, 0.2]})
    with pytest.raises(ValueError, match="same users"):
        paired_difference(a, a.with_columns(user_id=pl.Series(["u1", "u3"])), metrics=("ndcg@10",))
    with pytest.raises(ValueError, match="same users"):
        paired_difference(a, a.head(1), metrics=("ndcg@10",))
    with pytest.raises(ValueError, match="missing column"):
        paired_difference(a, a, metrics=("recall@10",))
    with pytest.raises(ValueError, match="duplicate"):
        paired_difference(a, pl.concat([a, a]), metrics=("ndcg@10",))
    with pytest.raises(ValueError, match="users is empty"):
        paired_difference(a.head(0), a.head(0), metrics=("ndcg@10",))
    with pytest.raises(ValueError, match="n_bootstrap"):
        paired_difference(a, a, metrics=("ndcg@10",), n_bootstrap=0)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000))
def test_bootstrap_ci_narrows_with_more_users(seed: int) -> None:
    # The same user population replicated 16 times: the standard error shrinks by ~4x, so the
    # interval width must shrink clearly (asserted: by more than 40%).
    ranked, truth, users = random_case(40, seed=seed)
    small = run_evaluate(ranked, truth, users, ks=(10,), seed=seed)
    copies = [
        (ranked.with_columns(pl.col("user_id") + f"_{c}"), truth.with_columns(pl.col("user_id") + f"_{c}"))
        for c in range(16)
    ]
    big = run_evaluate(
        pl.concat([r for r, _ in copies]),
        pl.concat([t for _, t in copies]),
        [f"{u}_{c}" for c in range(16) for u in users],
        ks=(10,),
        seed=seed,
    )
    for name in ("ndcg@10", "recall@10", "mrr"):
        w_small = small[name]["ci_high"] - small[name]["ci_low"]
        w_big = big[name]["ci_high"] - big[name]["ci_low"]
        assert w_small > 0, name
        assert w_big < 0.6 * w_small, name
        assert big[name]["value"] == pytest.approx(small[name]["value"])


# --------------------------------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------------------------------


@st.composite
def ranking_cases(draw: st.DrawFn) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    n_users = draw(st.integers(1, 6))
    n_items = draw(st.integers(1, 15))
    items = [f"i{j}" for j in range(n_items)]
    lists, rels = {}, {}
    for j in range(n_users):
        u = f"u{j}"
        perm = draw(st.permutations(items))
        lists[u] = perm[: draw(st.integers(0, n_items))]
        chosen = draw(st.lists(st.sampled_from(items), unique=True, max_size=n_items))
        rels[u] = {i: draw(st.floats(0.01, 5.0)) for i in chosen}
    users = [f"u{j}" for j in range(n_users)]
    return make_ranked(lists), make_truth(rels), users


@settings(max_examples=60, deadline=None)
@given(case=ranking_cases(), ks=st.lists(st.integers(1, 20), min_size=1, max_size=3, unique=True))
def test_every_metric_within_its_range(case: tuple, ks: list[int]) -> None:
    ranked, truth, users = case
    pu = per_user_metrics(ranked, truth, users, ks=ks)
    assert pu.height == len(users)
    eps = 1e-9
    for col in pu.columns[1:]:
        values = pu[col].to_numpy()
        assert np.all(values >= 0.0) and np.all(values <= 1.0 + eps), col
        if col.startswith("hitrate"):
            assert set(np.unique(values)) <= {0.0, 1.0}, col
    # Recall and hit rate cannot decrease with K (same denominator once K >= |rel|, checked via hits).
    ks_sorted = sorted(ks)
    for lo, hi in zip(ks_sorted, ks_sorted[1:], strict=False):
        assert np.all(pu[f"hitrate@{hi}"].to_numpy() >= pu[f"hitrate@{lo}"].to_numpy())
    res = run_evaluate(ranked, truth, users, ks=tuple(ks), n_bootstrap=50, n_catalog_items=15)
    for k in ks:
        assert 0.0 <= res[f"coverage@{k}"]["value"] <= 1.0
        assert res[f"novelty@{k}"]["value"] >= 0.0
        for name in (f"ndcg@{k}", f"recall@{k}", f"map@{k}", f"hitrate@{k}", "mrr"):
            r = res[name]
            assert -eps <= r["ci_low"] <= r["ci_high"] <= 1.0 + eps, name


@settings(max_examples=60, deadline=None)
@given(case=ranking_cases(), k=st.integers(1, 20))
def test_ndcg_never_exceeds_ideal_list(case: tuple, k: int) -> None:
    ranked, truth, users = case
    ideal = (
        truth.sort(["user_id", "relevance"], descending=[False, True])
        .with_columns(rank=pl.int_range(1, pl.len() + 1).over("user_id"))
        .select("user_id", "item_id", "rank")
    )
    got = ndcg_at_k(ranked, truth, users, k=k)[f"ndcg@{k}"].to_numpy()
    best = ndcg_at_k(ideal, truth, users, k=k)[f"ndcg@{k}"].to_numpy()
    has_rel = np.array([u in set(truth["user_id"].to_list()) for u in users])
    assert np.all(got <= best + 1e-12)
    assert best[has_rel] == pytest.approx(np.ones(has_rel.sum()))


# --------------------------------------------------------------------------------------------------
# Misuse
# --------------------------------------------------------------------------------------------------


def test_misuse_raises_clear_errors() -> None:
    ranked = make_ranked({"u1": ["a", "b"]})
    truth = make_truth({"u1": {"a": 1}})
    with pytest.raises(ValueError, match="missing column"):
        per_user_metrics(ranked.drop("rank"), truth, ["u1"])
    with pytest.raises(ValueError, match="missing column"):
        per_user_metrics(ranked, truth.drop("relevance"), ["u1"])
    dup_rank = ranked.with_columns(rank=pl.lit(1, dtype=pl.Int64))
    with pytest.raises(ValueError, match="duplicate ranks"):
        per_user_metrics(dup_rank, truth, ["u1"])
    dup_item = ranked.with_columns(item_id=pl.lit("a"))
    with pytest.raises(ValueError, match="more than once"):
        per_user_metrics(dup_item, truth, ["u1"])
    with pytest.raises(ValueError, match="1-based"):
        per_user_metrics(ranked.with_columns(pl.col("rank") - 1), truth, ["u1"])
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="relevance"):
            per_user_metrics(ranked, truth.with_columns(relevance=pl.lit(bad)), ["u1"])
    with pytest.raises(ValueError, match="duplicate"):
        per_user_metrics(ranked, pl.concat([truth, truth]), ["u1"])
    for bad_ks in ((0,), (-3, 10), (), (10, 10)):
        with pytest.raises(ValueError, match="ks"):
            per_user_metrics(ranked, truth, ["u1"], ks=bad_ks)
    with pytest.raises(ValueError, match="positive integer"):
        recall_at_k(ranked, truth, ["u1"], k=0)
    with pytest.raises(ValueError, match="users is empty"):
        per_user_metrics(ranked, truth, [])
    with pytest.raises(ValueError, match="duplicate"):
        per_user_metrics(ranked, truth, ["u1", "u1"])
    with pytest.raises(ValueError, match="n_bootstrap"):
        run_evaluate(ranked, truth, ["u1"], n_bootstrap=0)
    with pytest.raises(ValueError, match="confidence"):
        run_evaluate(ranked, truth, ["u1"], confidence=1.0)
    with pytest.raises(ValueError, match="n_catalog_items"):
        run_evaluate(ranked, truth, ["u1"], n_catalog_items=0)
    with pytest.raises(ValueError, match="count"):
        run_evaluate(ranked, truth, ["u1"], item_popularity=pl.DataFrame({"item_id": ["a"], "count": [-1]}))


# --------------------------------------------------------------------------------------------------
# Markdown table
# --------------------------------------------------------------------------------------------------


def test_metrics_table_markdown() -> None:
    results = {
        "als": {
            "users": 3,
            "ndcg@20": {"value": 0.12344, "ci_low": 0.118, "ci_high": 0.129},
            "mrr": {"value": 0.5, "ci_low": 0.25, "ci_high": 0.75},
        },
        "popularity": {
            "users": 3,
            "ndcg@20": {"value": 0.05, "ci_low": 0.04, "ci_high": 0.06},
            "mrr": {"value": 0.1, "ci_low": 0.05, "ci_high": 0.2},
        },
    }
    table = metrics_table_markdown(results, metrics=("ndcg@20", "mrr"))
    assert table == (
        "| method | ndcg@20 | mrr |\n"
        "|---|---:|---:|\n"
        "| als | 0.1234 [0.1180, 0.1290] | 0.5000 [0.2500, 0.7500] |\n"
        "| popularity | 0.0500 [0.0400, 0.0600] | 0.1000 [0.0500, 0.2000] |\n"
    )
    with pytest.raises(ValueError, match="recall@20"):
        metrics_table_markdown(results, metrics=("ndcg@20", "recall@20"))


def test_metrics_table_from_evaluate_default_columns() -> None:
    ranked, truth, users = random_case(30, seed=5)
    res = run_evaluate(ranked, truth, users, ks=(20,), n_catalog_items=30)
    table = metrics_table_markdown({"als": res})
    lines = table.splitlines()
    assert lines[0] == (
        "| method | ndcg@20 | recall@20 | precision@20 | map@20 | hitrate@20 | mrr | coverage@20 | novelty@20 |"
    )
    assert lines[2].startswith(f"| als | {res['ndcg@20']['value']:.4f} [")
    assert len(lines) == 3


def test_bars_markdown_scales_bars_to_the_best_method():
    from recs_pipeline.models.reports import bars_markdown

    results = {
        "a": {"ndcg@20": {"value": 0.2, "ci_low": 0.1, "ci_high": 0.3}},
        "b": {"ndcg@20": {"value": 0.1, "ci_low": 0.05, "ci_high": 0.15}},
    }
    text = bars_markdown(results, metrics=("ndcg@20",), width=10)
    lines = [line for line in text.splitlines() if line.strip().startswith(("a ", "b "))]
    assert lines[0].count("█") == 10 and lines[1].count("█") == 5
    assert "0.1000 [0.0500, 0.1500]" in lines[1]
