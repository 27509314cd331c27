"""Behavioural tests of the candidate sources and their merge, on data whose answers are known."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import implicit.cpu.als
import implicit.gpu
import implicit.gpu.als
import numpy as np
import polars as pl
import pytest
from frames import events_frame

from recs_pipeline.data.contract import ITEM_ID, TS, USER_ID
from recs_pipeline.models import retrieval
from recs_pipeline.models.retrieval import (
    ALSParams,
    ALSRetriever,
    CoVisitation,
    CoVisParams,
    Popularity,
    Trending,
    candidate_recall,
    merge_candidates,
)

# --------------------------------------------------------------------------------------------
# ALS on a checkerboard: two disjoint (users x items) blocks
# --------------------------------------------------------------------------------------------

N_USERS_PER_GROUP = 40
N_ITEMS_PER_GROUP = 30
ITEMS_PER_USER = 10
# Within a group, item j is drawn with probability ~ 1/(j+1)^0.7: popular items give ALS within-group signal too.
POPULARITY = 1.0 / np.arange(1, N_ITEMS_PER_GROUP + 1) ** 0.7
POPULARITY /= POPULARITY.sum()
# Few factors with real regularisation: the data has rank ~2 (two blocks) plus popularity, and more free
# factors over-fit 9 items per user (checked: recall drops as factors grow at this size).
PARAMS = ALSParams(factors=4, regularization=1.0, alpha=2.0, iterations=15, seed=3, threads=2)


def _group_items(group: str) -> list[str]:
    return [f"{group}_i{j:02d}" for j in range(N_ITEMS_PER_GROUP)]


def _checkerboard() -> tuple[pl.DataFrame, pl.DataFrame]:
    """Interactions of group-A users with A items only and B users with B items only; one withheld per user."""
    rng = np.random.default_rng(11)
    train: list[tuple[str, str, float]] = []
    held: list[tuple[str, str]] = []
    for group in ("A", "B"):
        items = _group_items(group)
        for u in range(N_USERS_PER_GROUP):
            user = f"{group}_u{u:02d}"
            chosen = rng.choice(len(items), size=ITEMS_PER_USER, replace=False, p=POPULARITY)
            held.append((user, items[chosen[0]]))
            train.extend((user, items[j], float(rng.uniform(1.0, 5.0))) for j in chosen[1:])
    interactions = pl.DataFrame(
        train, schema={USER_ID: pl.String, ITEM_ID: pl.String, "weight": pl.Float64}, orient="row"
    )
    truth = pl.DataFrame(held, schema={USER_ID: pl.String, ITEM_ID: pl.String}, orient="row")
    return interactions, truth


@pytest.fixture(scope="module")
def checkerboard() -> tuple[pl.DataFrame, pl.DataFrame]:
    return _checkerboard()


@pytest.fixture(scope="module")
def als(checkerboard: tuple[pl.DataFrame, pl.DataFrame]) -> ALSRetriever:
    return ALSRetriever.fit(checkerboard[0], params=PARAMS)


def test_als_ranks_withheld_item_above_the_other_group(
    als: ALSRetriever, checkerboard: tuple[pl.DataFrame, pl.DataFrame]
) -> None:
    interactions, truth = checkerboard
    users = truth[USER_ID].to_list()
    # Every user has N_ITEMS_PER_GROUP - (ITEMS_PER_USER - 1) = 21 unseen items of their own group
    # among 51 unseen items. A model that learned the two blocks puts those 21 above the 30 items of
    # the other group, so the withheld item is inside the top 21; random scores would manage that
    # with probability 21/51 ~ 0.41 per user. Seeds 0-5 give 0.95-0.96 here; 0.9 allows 8 misses.
    k_own = N_ITEMS_PER_GROUP - (ITEMS_PER_USER - 1)
    recs = als.recommend(users, n=k_own, filter_seen=True)
    assert candidate_recall(recs, truth, k=k_own) >= 0.9
    # Stronger, per user: the withheld item scores above every one of the 30 other-group items
    # (random: 1/31 per user). Seeds 0-5 give 0.91-0.94.
    other = {"A": _group_items("B"), "B": _group_items("A")}
    wins = 0
    for user, held in truth.iter_rows():
        others = other[user[0]]
        held_score = als.score([user], [held])[0]
        other_scores = als.score([user] * len(others), others)
        wins += bool(held_score > other_scores.max())
    assert wins / truth.height >= 0.85
    # Within-group popularity is learned too: recall@5 (random: 5/51 ~ 0.1; seeds 0-5 give 0.52-0.63).
    top5 = als.recommend(users, n=5, filter_seen=True)
    assert candidate_recall(top5, truth, k=5) >= 0.4
    # The top 5 (almost) never leave the user's own group.
    cross = top5.filter(pl.col(USER_ID).str.slice(0, 1) != pl.col(ITEM_ID).str.slice(0, 1)).height
    assert cross <= 0.02 * top5.height
    assert top5.group_by(USER_ID).len()["len"].to_list() == [5] * len(users)
    assert interactions.height == 2 * N_USERS_PER_GROUP * (ITEMS_PER_USER - 1)


def test_als_recommend_is_ranked_and_filters_seen(
    als: ALSRetriever, checkerboard: tuple[pl.DataFrame, pl.DataFrame]
) -> None:
    interactions = checkerboard[0]
    users = ["A_u00", "B_u07"]
    recs = als.recommend(users, n=15, filter_seen=True)
    assert recs.columns == [USER_ID, ITEM_ID, "score", "rank"]
    for user in users:
        mine = recs.filter(pl.col(USER_ID) == user)
        assert mine["rank"].to_list() == list(range(1, 16))
        assert mine["score"].is_sorted(descending=True)
        seen = set(interactions.filter(pl.col(USER_ID) == user)[ITEM_ID])
        assert not seen & set(mine[ITEM_ID])
        np.testing.assert_allclose(als.score([user] * 15, mine[ITEM_ID].to_list()), mine["score"].to_numpy(), rtol=1e-5)
    unfiltered = als.recommend(users, n=15)
    seen_all = set(interactions.filter(pl.col(USER_ID).is_in(users))[ITEM_ID])
    assert seen_all & set(unfiltered[ITEM_ID])  # the seen items dominate without the filter
    # n larger than the catalog gives every (unseen) item once
    everything = als.recommend(["A_u00"], n=10_000, filter_seen=True)
    assert everything.height == 2 * N_ITEMS_PER_GROUP - (ITEMS_PER_USER - 1)
    assert everything[ITEM_ID].n_unique() == everything.height


def test_als_confidence_is_one_plus_alpha_weight(als: ALSRetriever, checkerboard) -> None:
    interactions = checkerboard[0]
    row = interactions.row(0, named=True)
    u = int(np.searchsorted(als.user_ids, row[USER_ID]))
    i = int(np.searchsorted(als.item_ids, row[ITEM_ID]))
    assert als.seen[u, i] == pytest.approx(1 + PARAMS.alpha * row["weight"], rel=1e-6)


def test_als_is_deterministic(checkerboard: tuple[pl.DataFrame, pl.DataFrame], als: ALSRetriever) -> None:
    again = ALSRetriever.fit(checkerboard[0].sample(fraction=1.0, shuffle=True, seed=5), params=PARAMS)
    np.testing.assert_array_equal(again.user_factors, als.user_factors)
    np.testing.assert_array_equal(again.item_factors, als.item_factors)
    users = checkerboard[1][USER_ID].to_list()
    assert again.recommend(users, n=10).equals(als.recommend(users, n=10))
    other_seed = ALSRetriever.fit(checkerboard[0], params=ALSParams(**{**PARAMS.__dict__, "seed": 4}))
    assert not np.array_equal(other_seed.user_factors, als.user_factors)


def test_unknown_users_get_no_rows(als: ALSRetriever, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="recs_pipeline.models.retrieval"):
        recs = als.recommend(["ghost", "A_u03", "zzz_after_everyone", "A_u03"], n=5)
    assert set(recs[USER_ID]) == {"A_u03"}
    assert recs.height == 5
    assert recs.equals(als.recommend(["A_u03"], n=5))
    assert "2 of 3 users unknown" in caplog.text
    empty = als.recommend(["ghost"], n=5)
    assert empty.height == 0
    assert empty.columns == [USER_ID, ITEM_ID, "score", "rank"]
    scores = als.score(["ghost", "A_u03", "A_u03"], ["A_i00", "nope", "A_i00"])
    assert np.isnan(scores[0]) and np.isnan(scores[1]) and np.isfinite(scores[2])


def test_fold_in_new_user_gets_their_group(als: ALSRetriever) -> None:
    recs = als.fold_in(
        {
            "new_a": [("A_i01", 3.0), ("A_i05", 1.0), ("A_i09", 2.0), ("not_an_item", 5.0)],
            "new_b": [("B_i02", 1.0), ("B_i03", 4.0)],
            "cold": [("not_an_item", 1.0)],
        },
        n=10,
        filter_seen=True,
    )
    assert set(recs[USER_ID]) == {"new_a", "new_b"}
    new_a = recs.filter(pl.col(USER_ID) == "new_a")
    new_b = recs.filter(pl.col(USER_ID) == "new_b")
    assert new_a.height == new_b.height == 10
    assert all(i.startswith("A_") for i in new_a[ITEM_ID])
    assert all(i.startswith("B_") for i in new_b[ITEM_ID])
    assert not {"A_i01", "A_i05", "A_i09"} & set(new_a[ITEM_ID])
    assert als.fold_in({"cold": [("nope", 1.0)]}, n=3).height == 0


def test_als_never_uses_a_gpu(checkerboard, monkeypatch: pytest.MonkeyPatch) -> None:
    # implicit's factory (implicit.als.AlternatingLeastSquares) picks the GPU class when CUDA is
    # available; the retriever must bind the CPU class itself. Make every GPU path explode.
    def no_gpu(*args: object, **kwargs: object) -> None:
        raise AssertionError("a GPU model was requested")

    monkeypatch.setattr(implicit.gpu, "HAS_CUDA", True)
    monkeypatch.setattr(implicit.gpu.als, "AlternatingLeastSquares", no_gpu)
    assert retrieval.AlternatingLeastSquares is implicit.cpu.als.AlternatingLeastSquares
    retriever = ALSRetriever.fit(checkerboard[0].head(200), params=ALSParams(factors=4, iterations=2))
    assert type(retriever.model) is implicit.cpu.als.AlternatingLeastSquares
    assert isinstance(retriever.user_factors, np.ndarray)


def test_als_save_load_round_trip(als: ALSRetriever, checkerboard, tmp_path: Path) -> None:
    files = als.save(tmp_path)
    assert sorted(p.name for p in files) == ["als_factors.npz", "als_ids.json", "als_seen.npz"]
    with np.load(tmp_path / "als_factors.npz", allow_pickle=False) as arrays:
        assert arrays["user_factors"].dtype == np.float32
        assert arrays["item_factors"].shape == (2 * N_ITEMS_PER_GROUP, PARAMS.factors)
    meta = json.loads((tmp_path / "als_ids.json").read_text())
    assert meta["params"]["factors"] == PARAMS.factors
    loaded = ALSRetriever.load(tmp_path)
    assert loaded.params == PARAMS
    users = checkerboard[1][USER_ID].to_list() + ["ghost"]
    for filter_seen in (False, True):
        assert loaded.recommend(users, n=12, filter_seen=filter_seen).equals(
            als.recommend(users, n=12, filter_seen=filter_seen)
        )
    recent = {"x": [("A_i01", 2.0), ("A_i02", 1.0)]}
    assert loaded.fold_in(recent, n=5).equals(als.fold_in(recent, n=5))
    np.testing.assert_array_equal(loaded.score(["A_u01"], ["A_i01"]), als.score(["A_u01"], ["A_i01"]))


def test_als_params_validate() -> None:
    with pytest.raises(ValueError, match="threads"):
        ALSParams(threads=0)
    with pytest.raises(ValueError, match="factors"):
        ALSParams(factors=0)
    bad = pl.DataFrame({USER_ID: ["u"], ITEM_ID: ["i"], "weight": [0.0]})
    with pytest.raises(ValueError, match="> 0"):
        ALSRetriever.fit(bad, params=PARAMS)


# --------------------------------------------------------------------------------------------
# Co-visitation
# --------------------------------------------------------------------------------------------

T0 = datetime(2026, 9, 1, tzinfo=UTC)


def _planted_sessions() -> pl.DataFrame:
    """60 sessions where X is always followed by Y, plus random noise items (from 20) in every session."""
    rng = np.random.default_rng(2)
    rows = []
    noise = [f"n{j:02d}" for j in range(20)]
    for s in range(60):
        t = T0 + timedelta(hours=s)
        sess, user = f"s{s}", f"u{s % 7}"
        picks = rng.choice(len(noise), size=3, replace=False)
        rows.append((user, noise[picks[0]], "view", t, sess))
        rows.append((user, "X", "view", t + timedelta(minutes=1), sess))
        rows.append((user, "Y", "view", t + timedelta(minutes=2), sess))
        rows.extend((user, noise[p], "view", t + timedelta(minutes=3 + k), sess) for k, p in enumerate(picks[1:]))
    return events_frame(rows)


def test_covisitation_finds_planted_pair(tmp_path: Path) -> None:
    covis = CoVisitation.fit(_planted_sessions(), params=CoVisParams(max_neighbors=5))
    nb = covis.neighbors()
    assert nb.columns == [ITEM_ID, "neighbor_id", "score", "rank"]
    top_x = nb.filter((pl.col(ITEM_ID) == "X") & (pl.col("rank") == 1))
    assert top_x["neighbor_id"].to_list() == ["Y"]
    assert top_x["score"].item() == 60.0  # one view of Y in each of the 60 sessions
    assert nb.filter(pl.col(ITEM_ID) == "Y").filter(pl.col("rank") == 1)["neighbor_id"].to_list() == ["X"]
    assert nb.group_by(ITEM_ID).len()["len"].max() <= 5
    assert nb.filter(pl.col(ITEM_ID) == pl.col("neighbor_id")).height == 0

    recent = pl.DataFrame({USER_ID: ["u", "v"], ITEM_ID: ["X", "n00"], "weight": [1.0, 1.0]})
    recs = covis.recommend(recent, n=3)
    assert recs.filter(pl.col(USER_ID) == "u").row(0, named=True) == {
        USER_ID: "u",
        ITEM_ID: "Y",
        "score": 60.0,
        "rank": 1,
    }
    assert recs.group_by(USER_ID).len().sort(USER_ID)["len"].to_list() == [3, 3]

    files = covis.save(tmp_path)
    assert [p.name for p in files] == ["covis.parquet"]
    assert CoVisitation.load(tmp_path).recommend(recent, n=3).equals(recs)


def test_covisitation_weights_exclusion_and_truncation() -> None:
    events = events_frame(
        [
            # session 1: a viewed, b purchased, c viewed -> a->b gets purchase weight 6, b->a view weight 1
            ("u", "a", "view", T0, "s1"),
            ("u", "b", "view", T0 + timedelta(minutes=1), "s1"),
            ("u", "b", "purchase", T0 + timedelta(minutes=2), "s1"),
            ("u", "c", "view", T0 + timedelta(minutes=3), "s1"),
            # session 2: 4 distinct items, only the last 2 (e, f) may pair with max_session_items=2
            ("v", "d", "view", T0, "s2"),
            ("v", "a", "view", T0 + timedelta(minutes=1), "s2"),
            ("v", "e", "view", T0 + timedelta(minutes=2), "s2"),
            ("v", "f", "view", T0 + timedelta(minutes=3), "s2"),
            # no session id: ignored
            ("w", "a", "view", T0, None),
            ("w", "z", "view", T0, None),
        ]
    )
    full = CoVisitation.fit(events, params=CoVisParams(max_session_items=30)).neighbors()
    score = {(r[ITEM_ID], r["neighbor_id"]): r["score"] for r in full.iter_rows(named=True)}
    assert score[("a", "b")] == 6.0 and score[("b", "a")] == 1.0  # a and b share only s1
    assert score[("a", "c")] == 1.0 and score[("d", "a")] == 1.0
    assert ("a", "z") not in score
    cut = CoVisitation.fit(events, params=CoVisParams(max_session_items=2)).neighbors()
    cut_pairs = set(zip(cut[ITEM_ID], cut["neighbor_id"], strict=True))
    # s1 keeps its last two distinct items (b, c), s2 keeps (e, f)
    assert cut_pairs == {("b", "c"), ("c", "b"), ("e", "f"), ("f", "e")}

    covis = CoVisitation.fit(events)
    recent = pl.DataFrame({USER_ID: ["u", "u"], ITEM_ID: ["a", "b"], "weight": [2.0, 1.0]})
    with_input = covis.recommend(recent, n=10)
    assert {"a", "b"} <= set(with_input[ITEM_ID])
    without = covis.recommend(recent, n=10, exclude_input=True)
    assert not {"a", "b"} & set(without[ITEM_ID])
    # c: 2 * covis(a->c)=1 + 1 * covis(b->c)=1 -> 3
    assert without.filter(pl.col(ITEM_ID) == "c")["score"].item() == 3.0


# --------------------------------------------------------------------------------------------
# Popularity and trending
# --------------------------------------------------------------------------------------------

AS_OF = datetime(2026, 9, 20, tzinfo=UTC)


def _popularityevents_frame() -> pl.DataFrame:
    rows = []
    # steady: 20 views a day for 10 days before as_of
    for d in range(10):
        for k in range(20):
            rows.append(("u", "steady", "view", AS_OF - timedelta(days=d, hours=1, minutes=k), "s"))
    # spike: nothing until the last 12 hours, then 15 views
    for k in range(15):
        rows.append(("u", "spike", "view", AS_OF - timedelta(hours=12, minutes=k), "s"))
    # one purchase of "buy" 2 days ago
    rows.append(("u", "buy", "purchase", AS_OF - timedelta(days=2), "s"))
    # a huge burst exactly at as_of and after it: must never count
    for k in range(1000):
        rows.append(("u", "future", "purchase", AS_OF + timedelta(seconds=k), "s"))
        rows.append(("u", "spike", "purchase", AS_OF + timedelta(seconds=k), "s"))
    return events_frame(rows)


def test_popularity_counts_window_strictly_before_as_of(tmp_path: Path) -> None:
    events = _popularityevents_frame()
    pop = Popularity.fit(events, as_of=AS_OF, window_days=7)
    top = pop.top(10)
    assert top.columns == [ITEM_ID, "score", "rank"]
    scores = dict(zip(top[ITEM_ID], top["score"], strict=True))
    assert "future" not in scores
    assert scores == {"steady": 7 * 20.0, "spike": 15.0, "buy": 6.0}
    assert top[ITEM_ID].to_list() == ["steady", "spike", "buy"]
    assert top["rank"].to_list() == [1, 2, 3]
    # identical to fitting on the events before as_of only
    before = events.filter(pl.col(TS) < AS_OF)
    assert Popularity.fit(before, as_of=AS_OF).top(10).equals(top)

    recs = pop.recommend(["u2", "u1", "u2"], n=2)
    assert recs.columns == [USER_ID, ITEM_ID, "score", "rank"]
    assert recs[USER_ID].to_list() == ["u1", "u1", "u2", "u2"]
    assert recs[ITEM_ID].to_list() == ["steady", "spike"] * 2
    pop.save(tmp_path)
    assert Popularity.load(tmp_path).top(10).equals(top)
    with pytest.raises(ValueError, match="timezone"):
        Popularity.fit(events, as_of=AS_OF.replace(tzinfo=None))


def test_trending_ranks_spike_above_steady(tmp_path: Path) -> None:
    events = _popularityevents_frame()
    trend = Trending.fit(events, as_of=AS_OF, recent_hours=24, baseline_days=7)
    top = trend.top(10)
    assert "future" not in set(top[ITEM_ID])  # burst at/after as_of ignored
    assert top[ITEM_ID].to_list()[:2] == ["spike", "steady"]
    assert "buy" not in set(top[ITEM_ID])  # no activity in the last 24 h
    spike = top.filter(pl.col(ITEM_ID) == "spike")["score"].item()
    # recent_daily = 15, baseline 0 -> (15 + 1) / 1 * log1p(15)
    assert spike == pytest.approx(16 * np.log1p(15))
    steady = top.filter(pl.col(ITEM_ID) == "steady")["score"].item()
    assert steady == pytest.approx((20 + 1) / (20 + 1) * np.log1p(20))
    # only events strictly before as_of: identical to fitting without them
    assert Trending.fit(events.filter(pl.col(TS) < AS_OF), as_of=AS_OF).top(10).equals(top)
    trend.save(tmp_path)
    assert Trending.load(tmp_path).recommend(["a"], n=5).equals(trend.recommend(["a"], n=5))


# --------------------------------------------------------------------------------------------
# Merge and recall
# --------------------------------------------------------------------------------------------


def _cands(rows: list[tuple[str, str, float, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows, schema={USER_ID: pl.String, ITEM_ID: pl.String, "score": pl.Float64, "rank": pl.Int32}, orient="row"
    )


def test_merge_candidates_provenance_nulls_and_limits() -> None:
    als = _cands([("u1", "a", 0.9, 1), ("u1", "b", 0.5, 2), ("u1", "c", 0.1, 3), ("u2", "a", 0.7, 1)])
    covis = _cands([("u1", "b", 9.0, 1), ("u1", "d", 4.0, 2), ("u2", "e", 1.0, 1)])
    pop = _cands([("u1", "c", 100.0, 1), ("u2", "c", 100.0, 1), ("u2", "a", 50.0, 2)])
    merged = merge_candidates({"als": als, "covis": covis, "pop": pop}, limits={"als": 2})
    assert merged.columns == [
        USER_ID,
        ITEM_ID,
        "als_score",
        "als_rank",
        "covis_score",
        "covis_rank",
        "pop_score",
        "pop_rank",
        "sources",
        "n_sources",
        "best_rank",
    ]
    assert merged.select(USER_ID, ITEM_ID).is_duplicated().sum() == 0
    rows = {(r[USER_ID], r[ITEM_ID]): r for r in merged.iter_rows(named=True)}
    assert set(rows) == {("u1", "a"), ("u1", "b"), ("u1", "c"), ("u1", "d"), ("u2", "a"), ("u2", "c"), ("u2", "e")}
    b = rows[("u1", "b")]
    assert (b["als_score"], b["als_rank"], b["covis_score"], b["covis_rank"]) == (0.5, 2, 9.0, 1)
    assert b["pop_score"] is None and b["pop_rank"] is None
    assert b["sources"] == ["als", "covis"] and b["n_sources"] == 2
    # als rank 3 was cut by the limit; c still comes from pop
    c = rows[("u1", "c")]
    assert c["als_rank"] is None and c["sources"] == ["pop"] and c["pop_rank"] == 1
    assert rows[("u2", "a")]["sources"] == ["als", "pop"]
    # order: per user, best rank, more sources first, then item id
    assert merged.select(USER_ID, ITEM_ID).rows() == [
        ("u1", "b"),  # best 1, 2 sources
        ("u1", "a"),  # best 1, 1 source
        ("u1", "c"),
        ("u1", "d"),  # best 2
        ("u2", "a"),  # best 1, 2 sources
        ("u2", "c"),
        ("u2", "e"),
    ]
    unlimited = merge_candidates({"als": als, "covis": covis, "pop": pop})
    assert unlimited.filter((pl.col(USER_ID) == "u1") & (pl.col(ITEM_ID) == "c"))["sources"].to_list() == [
        ["als", "pop"]
    ]
    with pytest.raises(ValueError, match="repeats"):
        merge_candidates({"x": pl.concat([als, als])})


def test_recall_at_k_hand_case() -> None:
    cands = _cands([("u1", "a", 3.0, 1), ("u1", "b", 2.0, 2), ("u1", "c", 1.0, 3), ("u2", "x", 1.0, 1)])
    truth = pl.DataFrame({USER_ID: ["u1", "u1", "u2", "u3"], ITEM_ID: ["b", "z", "x", "a"]})
    # relevant pairs: (u1,b) (u1,z) (u2,x) (u3,a); u3 has no candidates and counts as a miss
    assert candidate_recall(cands, truth, k=1) == pytest.approx(1 / 4)
    assert candidate_recall(cands, truth, k=2) == pytest.approx(2 / 4)
    assert candidate_recall(cands, truth, k=None) == pytest.approx(2 / 4)
    merged = merge_candidates({"s": cands, "t": _cands([("u3", "a", 1.0, 5)])})
    assert candidate_recall(merged, truth, k=None) == pytest.approx(3 / 4)
    assert candidate_recall(merged, truth, k=2) == pytest.approx(2 / 4)  # (u3,a) has best_rank 5
    assert np.isnan(candidate_recall(cands, truth.head(0), k=None))


def test_fold_in_vector_is_implicits_least_squares_user_step(als: ALSRetriever) -> None:
    """The one fold-in (used by the service and the batch path) equals implicit's own recalculate_user."""
    u = 5
    row = als.seen[u]
    weights = (row.data - 1.0) / als.params.alpha  # the stored confidence is 1 + alpha * weight
    ours = als.fold_in_vector(row.indices, weights)
    theirs = np.asarray(als.model.recalculate_user(u, als.seen[u])).ravel()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert als.fold_in_vector(np.array([0]), np.array([0.0])) is None


def test_top_breaks_ties_by_item_id() -> None:
    from recs_pipeline.models.retrieval import top_n

    scores = np.array([1.0, 3.0, 2.0, 3.0, -np.inf, 2.0])
    assert top_n(scores, 3).tolist() == [1, 3, 2]
    assert top_n(scores, 10).tolist() == [1, 3, 2, 5, 0]
    assert top_n(scores, 0).tolist() == []


def test_anchors_are_the_most_recent_distinct_items_weighted_by_the_strongest_event() -> None:
    """The one anchor rule (batch and request path): newest first, ties by item id, purchase 3 / cart 2 / else 1."""
    from recs_pipeline.models.retrieval import anchor_relevance, select_anchors

    rows = np.array([0, 0, 0, 0, 1, 1, 0])
    items = np.array(["a", "b", "c", "d", "b", "c", "e"])
    last = np.array([4.0, 2.0, 3.0, 5.0, 1.0, 2.0, 3.0])
    chosen = select_anchors(rows, items, last, per_user=3)
    assert [(int(rows[i]), str(items[i])) for i in chosen] == [(0, "d"), (0, "a"), (0, "c"), (1, "c"), (1, "b")]
    assert select_anchors(rows[:0], items[:0], last[:0], per_user=3).tolist() == []
    assert anchor_relevance(carts=np.array([0, 1, 2, 0]), purchases=np.array([0, 0, 1, 0])).tolist() == [1, 2, 3, 1]


# --------------------------------------------------------------------------------------------
# Shared work at scale: one fit per fold, thresholded top-n, blocked ALS scoring
# --------------------------------------------------------------------------------------------


def _random_sessions(seed: int) -> pl.DataFrame:
    """Sessions of 1-12 events over 60 items and five days, many of them crossing midnights."""
    rng = np.random.default_rng(seed)
    types = ["view", "view", "view", "add_to_cart", "purchase", "favorite"]
    rows = []
    for s in range(400):
        t = T0 + timedelta(minutes=int(rng.integers(0, 5 * 24 * 60)))
        for _ in range(int(rng.integers(1, 13))):
            rows.append((f"u{s % 37}", f"i{int(rng.integers(0, 60)):02d}", types[int(rng.integers(0, 6))], t, f"s{s}"))
            t += timedelta(minutes=int(rng.integers(1, 40)))
    return events_frame(rows)


@pytest.mark.parametrize("seed", [0, 1])
def test_covisitation_fit_folds_equals_a_fit_per_cutoff(seed: int) -> None:
    """Each fold's table from the shared fit is the table of a fit on the events before its cutoff,
    sessions cut by a cutoff included (the short session cap and window make the cut matter)."""
    events = _random_sessions(seed)
    params = CoVisParams(max_neighbors=7, max_session_items=5, time_window_hours=1.0)
    cutoffs = [T0 + timedelta(days=d) for d in (2, 3, 4)]
    crossing = (
        events.group_by("session_id")
        .agg(pl.col(TS).min().alias("a"), pl.col(TS).max().alias("b"))
        .filter(pl.any_horizontal([(pl.col("a") < c) & (pl.col("b") >= c) for c in cutoffs]))
    )
    assert crossing.height > 5  # the case that needs the cut sessions
    shared = CoVisitation.fit_folds(events, cutoffs, params=params)
    for cutoff, fitted in zip(cutoffs, shared, strict=True):
        alone = CoVisitation.fit(events.filter(pl.col(TS) < cutoff), params=params).neighbors()
        assert alone.height > 50
        assert fitted.neighbors().equals(alone), cutoff
    with pytest.raises(ValueError, match="increasing"):
        CoVisitation.fit_folds(events, list(reversed(cutoffs)), params=params)


def test_top_n_with_a_sampled_threshold_equals_ranking_every_score() -> None:
    """The long-array path (a strided sample's threshold first) returns what ranking all scores
    returns, ties, -inf, +inf and NaN included."""
    rng = np.random.default_rng(5)
    for trial in range(400):
        size, n = int(rng.integers(0, 6000)), int(rng.integers(1, 250))
        kind = trial % 4
        if kind == 0:
            scores = rng.standard_normal(size).astype(np.float32)
        elif kind == 1:
            scores = rng.integers(0, 4, size).astype(np.float64)  # heavy ties
        elif kind == 2:
            scores = np.sort(rng.standard_normal(size))  # the sample sees the low end first
        else:
            scores = rng.standard_normal(size)
            scores[rng.random(size) < 0.5] = -np.inf
            scores[rng.random(size) < 0.05] = np.nan
            scores[rng.random(size) < 0.01] = np.inf
        finite = np.flatnonzero(np.isfinite(scores))
        expected = finite[np.lexsort((finite, -scores[finite]))][:n]
        assert np.array_equal(retrieval.top_n(scores, n), expected), (trial, size, n)


def test_blocked_als_scoring_matches_one_user_at_a_time(als: ALSRetriever) -> None:
    """``top_many`` with a block scores by one matrix product: the same items as the per-user path
    (up to ties within float32 rounding, none here) and scores equal to rounding; exclusions and
    users without a vector behave the same."""
    vectors = [als.user_factors[p] for p in range(len(als.user_ids))]
    vectors[3] = None
    exclude = [np.asarray([0, 1, 2]) if r % 2 else None for r in range(len(vectors))]
    one = als.top_many(vectors, 12, exclude=exclude, block=1)
    blocked = als.top_many(vectors, 12, exclude=exclude, block=16)
    assert len(one) == len(blocked) == len(vectors)
    assert len(blocked[3][0]) == 0
    for r, ((items_a, scores_a), (items_b, scores_b)) in enumerate(zip(one, blocked, strict=True)):
        if r % 2:
            assert not set(items_b.tolist()) & {0, 1, 2}
        assert items_a.tolist() == items_b.tolist(), r
        np.testing.assert_allclose(scores_a, scores_b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="block"):
        als.top_many(vectors, 12, block=0)


def test_a_warm_started_fit_starts_from_the_earlier_factors(checkerboard) -> None:
    """A later fold's ALS starts from the earlier fit's factors and runs ``warm_iterations``: it still
    separates the two groups, and a fit with other factors cannot be its start."""
    interactions, truth = checkerboard
    earlier = ALSRetriever.fit(interactions.filter(pl.col(USER_ID).str.ends_with("0").not_()), params=PARAMS)
    warm = ALSRetriever.fit(interactions, params=PARAMS, warm_start=earlier)
    assert warm.model.iterations == PARAMS.warm_iterations
    recs = warm.recommend(truth[USER_ID].to_list(), n=10, filter_seen=True)
    same_group = recs.filter(pl.col(USER_ID).str.slice(0, 1) == pl.col(ITEM_ID).str.slice(0, 1)).height
    assert same_group / recs.height > 0.95
    assert (
        candidate_recall(recs, truth, k=10)
        >= candidate_recall(
            ALSRetriever.fit(interactions, params=PARAMS).recommend(truth[USER_ID].to_list(), n=10, filter_seen=True),
            truth,
            k=10,
        )
        - 0.1
    )
    with pytest.raises(ValueError, match="factors"):
        ALSRetriever.fit(interactions, params=ALSParams(factors=8), warm_start=earlier)


def test_als_id_codes_equal_numpys_unique() -> None:
    """ALS maps ids to rows with polars; the map is numpy's ``unique(return_inverse=True)``, accents,
    digits and case included (UTF-8 byte order is code-point order)."""
    from recs_pipeline.models.retrieval.als import _codes

    ids = ["b", "a", "é", "ä", "z", "a", "Z", "10", "9", "日本", "ß", "b"]
    frame = pl.DataFrame({USER_ID: ids})
    distinct, codes = _codes(frame, USER_ID)
    expected, inverse = np.unique(np.asarray(ids, dtype=str), return_inverse=True)
    assert distinct.tolist() == expected.tolist() and codes.tolist() == inverse.tolist()
