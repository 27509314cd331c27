"""The two evaluation protocols on hand-built frames whose answers are known: touched pairs, discovery
truth, renumbered lists, the recent baseline, segments, and one fold's result."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from frames import events_frame

from recs_pipeline.data.contract import ITEM_ID, USER_ID
from recs_pipeline.models.consumption import ConsumedPolicy
from recs_pipeline.models.evaluation import (
    COLD_ITEM_INTERACTIONS,
    COLD_ITEMS,
    DISCOVERY,
    NEW_ITEMS,
    NEW_USERS,
    PAIRED_METRICS,
    RECENT,
    REPEAT_AWARE,
    RETURNING_USER_ITEMS,
    RETURNING_USERS,
    SEGMENTS,
    UNKNOWN_USERS,
    best_baseline,
    cold_truth,
    discovery_truth,
    drop_touched,
    evaluate_fold,
    population,
    segment_cases,
    touched_pairs,
    user_segments,
)
from recs_pipeline.models.protocol import Fold
from recs_pipeline.models.retrieval import ItemIndex, UserSignals, hits_frame, recent_hits

CUTOFF = datetime(2026, 3, 10, tzinfo=UTC)
FOLD = Fold("test", CUTOFF, CUTOFF + timedelta(days=1))


def before(hours: float) -> datetime:
    return CUTOFF - timedelta(hours=hours)


def pairs(df: pl.DataFrame) -> set[tuple[str, str]]:
    return set(df.select(USER_ID, ITEM_ID).iter_rows())


def ranked(lists: dict[str, list[str]]) -> pl.DataFrame:
    rows = [(u, item, r) for u, items in lists.items() for r, item in enumerate(items, start=1)]
    return pl.DataFrame(rows, schema={USER_ID: pl.String, ITEM_ID: pl.String, "rank": pl.Int64}, orient="row")


def truth_of(rels: dict[str, dict[str, float]]) -> pl.DataFrame:
    rows = [(u, item, float(r)) for u, items in rels.items() for item, r in items.items()]
    return pl.DataFrame(rows, schema={USER_ID: pl.String, ITEM_ID: pl.String, "relevance": pl.Float64}, orient="row")


def lists_of(df: pl.DataFrame) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for user, item in df.sort(USER_ID, "rank").select(USER_ID, ITEM_ID).iter_rows():
        out.setdefault(user, []).append(item)
    return out


def interactions(rows: list[tuple[str, str, int, int, int, datetime]]) -> pl.DataFrame:
    """An interactions snapshot: (user, item, views, carts, purchases, last_ts) plus the other columns."""
    return pl.DataFrame(
        [(u, i, 1.0, v, c, p, 0, t, CUTOFF) for u, i, v, c, p, t in rows],
        schema={
            USER_ID: pl.String,
            ITEM_ID: pl.String,
            "weight": pl.Float64,
            "views": pl.Int64,
            "carts": pl.Int64,
            "purchases": pl.Int64,
            "favorites": pl.Int64,
            "last_ts": pl.Datetime("us", "UTC"),
            "event_timestamp": pl.Datetime("us", "UTC"),
        },
        orient="row",
    )


def test_touched_pairs_are_every_event_type_before_the_cutoff_only() -> None:
    events = events_frame(
        [
            ("u1", "a", "view", before(5), "s"),
            ("u1", "a", "purchase", before(4), "s"),  # the same pair twice: once
            ("u1", "b", "add_to_cart", before(1), "s"),
            ("u2", "c", "view", before(2), "s"),
            ("u1", "z", "view", CUTOFF, "s"),  # at the cutoff: a label, not history
            ("u2", "y", "purchase", CUTOFF + timedelta(hours=1), "s"),
        ]
    )
    got = touched_pairs(events, FOLD)
    assert got.columns == [USER_ID, ITEM_ID]
    assert pairs(got) == {("u1", "a"), ("u1", "b"), ("u2", "c")} and got.height == 3
    assert pairs(touched_pairs(events, FOLD, users=["u2"])) == {("u2", "c")}


def test_discovery_truth_drops_touched_pairs_and_its_population_needs_one_new_item() -> None:
    truth = truth_of({"u1": {"a": 1, "x": 3}, "u2": {"c": 2}, "u3": {"q": 1}})
    touched = pl.DataFrame({USER_ID: ["u1", "u2", "u3"], ITEM_ID: ["a", "c", "a"]})
    new = discovery_truth(truth, touched)
    # u3 touched a, not q: q stays; another user's touch of an item does not remove it
    assert pairs(new) == {("u1", "x"), ("u3", "q")}
    assert new.filter(pl.col(ITEM_ID) == "x")["relevance"].item() == 3.0
    assert population(new, ["u1", "u2", "u3", "u4"]) == ["u1", "u3"]
    assert population(new, ["u3"]) == ["u3"]


def test_drop_touched_renumbers_ranks_and_cuts_at_k() -> None:
    lists = ranked({"u1": ["a", "x", "b", "y", "z"], "u2": ["a", "b"]}).with_columns(score=pl.lit(1.0))
    touched = pl.DataFrame({USER_ID: ["u1", "u1", "u2"], ITEM_ID: ["a", "b", "c"]})
    got = drop_touched(lists, touched, k=10)
    assert lists_of(got) == {"u1": ["x", "y", "z"], "u2": ["a", "b"]}
    assert got.filter(pl.col(USER_ID) == "u1")["rank"].to_list() == [1, 2, 3]
    assert "score" in got.columns  # other columns are kept
    assert lists_of(drop_touched(lists, touched, k=2)) == {"u1": ["x", "y"], "u2": ["a", "b"]}
    # gaps in the input ranks: the order is kept, the ranks closed up
    gappy = pl.DataFrame({USER_ID: ["u1"] * 3, ITEM_ID: ["p", "a", "q"], "rank": [2, 5, 9]})
    assert drop_touched(gappy, touched, k=5)["rank"].to_list() == [1, 2]
    with pytest.raises(ValueError, match="positive"):
        drop_touched(lists, touched, k=0)


def recent_lists(snapshot: pl.DataFrame, users: list[str], *, policy: ConsumedPolicy, k: int) -> pl.DataFrame:
    """The recent baseline as the evaluation gets it: the ``recent`` source's hits at the cutoff, the
    policy's consumed items excluded (what ``training.source_candidates`` does)."""
    index = ItemIndex.union(snapshot[ITEM_ID].to_numpy())
    signals = UserSignals.from_interactions(users, snapshot)
    exclude = signals.consumed(policy, index, reference=CUTOFF.timestamp())
    hits = recent_hits(signals, index.positions(signals.item_ids), k, exclude=exclude)
    return hits_frame(hits, user_ids=users, item_ids=index.ids)


def test_recent_baseline_orders_by_last_interaction_and_leaves_out_consumed_items() -> None:
    snapshot = interactions(
        [
            ("u1", "a", 3, 0, 0, before(10)),
            ("u1", "b", 1, 0, 1, before(1)),  # bought: consumed under a purchase policy
            ("u1", "c", 1, 1, 0, before(2)),
            ("u1", "e", 1, 0, 0, before(5)),  # ties with d: item id breaks it
            ("u1", "d", 1, 0, 0, before(5)),
            ("u2", "a", 1, 0, 0, before(3)),
            ("u3", "a", 1, 0, 0, before(3)),  # not asked for
        ]
    )
    purchase = ConsumedPolicy(("purchase",))
    got = recent_lists(snapshot, ["u1", "u2", "u9"], policy=purchase, k=10)
    assert lists_of(got) == {"u1": ["c", "d", "e", "a"], "u2": ["a"]}
    assert got.filter(pl.col(USER_ID) == "u1")["rank"].to_list() == [1, 2, 3, 4]
    # the score: seconds before the user's newest interaction (b's, 1 h before the cutoff, consumed or not)
    assert got.filter(pl.col(USER_ID) == "u1")["score"].to_list() == [-3600.0, -4 * 3600.0, -4 * 3600.0, -9 * 3600.0]
    assert got.filter(pl.col(USER_ID) == "u2")["score"].to_list() == [0.0]
    assert lists_of(recent_lists(snapshot, ["u1"], policy=purchase, k=2)) == {"u1": ["c", "d"]}
    # nothing consumed: the purchase comes back first; carts consumed: c goes too
    nothing = ConsumedPolicy(())
    assert lists_of(recent_lists(snapshot, ["u1"], policy=nothing, k=10))["u1"][0] == "b"
    carts = ConsumedPolicy(("add_to_cart", "purchase"))
    assert lists_of(recent_lists(snapshot, ["u1"], policy=carts, k=10)) == {"u1": ["d", "e", "a"]}
    # a window: a purchase older than it no longer consumes (b's last touch is 1 h old)
    windowed = ConsumedPolicy(("purchase",), window_days=1 / 48)
    assert "b" in lists_of(recent_lists(snapshot, ["u1"], policy=windowed, k=10))["u1"]


def test_the_recent_source_leaves_out_items_outside_the_index() -> None:
    snapshot = interactions([("u1", "a", 1, 0, 0, before(1)), ("u1", "z", 1, 0, 0, before(2))])
    index = ItemIndex.union(np.asarray(["a", "b"]))
    signals = UserSignals.from_interactions(["u1"], snapshot)
    hits = recent_hits(signals, index.positions(signals.item_ids), 5, exclude=None)
    assert index.ids[hits.item].tolist() == ["a"]
    assert len(recent_hits(signals, index.positions(signals.item_ids), 0, exclude=None).item) == 0  # off
    with pytest.raises(ValueError, match="0 or more"):
        recent_hits(signals, index.positions(signals.item_ids), -1, exclude=None)


def test_segments_split_users_by_history_and_restrict_truth_to_cold_items() -> None:
    n = RETURNING_USER_ITEMS
    touched = pl.DataFrame(
        {
            USER_ID: ["new"] * (n - 1) + ["old"] * n + ["one"],
            ITEM_ID: [f"i{j}" for j in range(n - 1)] + [f"i{j}" for j in range(n)] + ["i0"],
        }
    )
    seg = user_segments(touched, ["new", "old", "one", "nohistory"])
    assert seg == {UNKNOWN_USERS: ["nohistory"], NEW_USERS: ["new", "one"], RETURNING_USERS: ["old"]}
    c = COLD_ITEM_INTERACTIONS
    popularity = pl.DataFrame({ITEM_ID: ["warm", "edge", "cold"], "count": [c + 3, c, c - 1]})
    truth = truth_of({"new": {"warm": 1, "cold": 2}, "old": {"edge": 1}, "one": {"unseen": 1}})
    # "edge" has exactly the threshold: warm; "unseen" has no interaction before the cutoff: cold
    assert pairs(cold_truth(truth, popularity)) == {("new", "cold"), ("one", "unseen")}
    truth = pl.concat([truth, truth_of({"nohistory": {"warm": 1}})])
    cases = segment_cases(truth, ["new", "old", "one", "nohistory"], touched=touched, popularity=popularity)
    assert set(cases) == set(SEGMENTS)
    assert cases[NEW_USERS][0] == ["new", "one"] and pairs(cases[NEW_USERS][1]) == {
        ("new", "warm"),
        ("new", "cold"),
        ("one", "unseen"),
    }
    assert cases[RETURNING_USERS][0] == ["old"] and pairs(cases[RETURNING_USERS][1]) == {("old", "edge")}
    assert cases[COLD_ITEMS][0] == ["new", "one"]
    assert pairs(cases[COLD_ITEMS][1]) == {("new", "cold"), ("one", "unseen")}
    # the ladder's first rung: users with no event before the cutoff
    assert cases[UNKNOWN_USERS][0] == ["nohistory"] and pairs(cases[UNKNOWN_USERS][1]) == {("nohistory", "warm")}
    # new items: no interaction at all before the cutoff ("cold" had c - 1)
    assert cases[NEW_ITEMS][0] == ["one"] and pairs(cases[NEW_ITEMS][1]) == {("one", "unseen")}


def test_best_baseline_is_the_highest_ndcg_and_the_first_on_ties() -> None:
    def res(v: float) -> dict:
        return {"ndcg@20": {"value": v, "ci_low": v, "ci_high": v}}

    results = {"a": res(0.1), "b": res(0.3), "c": res(0.3), "model": res(0.9)}
    assert best_baseline(results, ["a", "b", "c"]) == "b"
    assert best_baseline(results, ["c", "b", "a"]) == "c"
    with pytest.raises(ValueError, match="none of the baselines"):
        best_baseline(results, ["zzz"])


@pytest.fixture
def fold_case() -> dict:
    """Six users; u{j} touched h0..h{j} before the cutoff (u4, u5 are returning) and has in its label window a
    repeat (h0) and new items n{j}, n{j}b. ``model`` ranks the new items first, then the repeat; ``pop``
    ranks a global list (the repeats h0, h1 first); ``recent`` is the history."""
    users = [f"u{j}" for j in range(6)]
    touched_rows, truth, model, pop, recent = [], {}, {}, {}, {}
    for j, u in enumerate(users):
        history = [f"h{x}" for x in range(j + 1)]
        touched_rows += [(u, h) for h in history]
        truth[u] = {"h0": 1.0, f"n{j}": 2.0, f"n{j}b": 1.0}
        model[u] = [f"n{j}", f"n{j}b", "h0", "zz"]
        pop[u] = ["h0", "h1", "zz", f"n{j}b"]
        recent[u] = list(reversed(history))
    touched = pl.DataFrame(touched_rows, schema={USER_ID: pl.String, ITEM_ID: pl.String}, orient="row")
    items = {i for t in truth.values() for i in t} | {"zz", *(h for _, h in touched_rows)}
    popularity = pl.DataFrame({ITEM_ID: sorted(items), "count": [10] * len(items)}).with_columns(
        count=pl.when(pl.col(ITEM_ID).str.starts_with("n")).then(1).otherwise(pl.col("count"))
    )
    return {
        "rankings": {"pop": ranked(pop), RECENT: ranked(recent), "model": ranked(model)},
        "truth": truth_of(truth),
        "users": users,
        "touched": touched,
        "popularity": popularity,
    }


def test_one_fold_has_both_protocols_with_tables_differences_and_segments(fold_case: dict) -> None:
    c = fold_case
    result = evaluate_fold(
        c["rankings"],
        c["truth"],
        c["users"],
        touched=c["touched"],
        popularity=c["popularity"],
        n_catalog_items=c["popularity"].height,
        baselines=["pop", RECENT],
        n_bootstrap=200,
    )
    assert set(result) == {REPEAT_AWARE, DISCOVERY}
    repeat, discovery = result[REPEAT_AWARE], result[DISCOVERY]
    assert set(repeat["methods"]) == {"pop", RECENT, "model"}
    assert set(discovery["methods"]) == {"pop", "model"}  # recent holds touched items only
    assert repeat["users"] == discovery["users"] == 6
    for protocol in (repeat, discovery):
        assert protocol["relevant"]
        for res in protocol["methods"].values():
            assert res["users"] == protocol["users"] and "precision@20" in res
        assert set(protocol["differences"]) == set(protocol["methods"]) - {protocol["best_baseline"]}
        for diff in protocol["differences"].values():
            assert set(diff) == set(PAIRED_METRICS)
            for cell in diff.values():
                assert cell["ci_low"] <= cell["value"] <= cell["ci_high"]
        assert set(protocol["segments"]) == set(SEGMENTS)
    # repeat-aware: recent hits h0 at its last rank, pop at rank 1; model finds all three
    model = repeat["methods"]["model"]
    assert model["recall@20"]["value"] == pytest.approx(1.0)
    assert model["precision@20"]["value"] == pytest.approx(3 / 20)
    assert repeat["best_baseline"] == "pop"
    # discovery: h0 no longer counts, pop's list loses the touched h0 (and h1 where touched) and is
    # renumbered, so pop finds n{j}b (at rank 3 for u0, 2 for the others); the model finds both new items
    assert discovery["methods"]["model"]["recall@20"]["value"] == pytest.approx(1.0)
    assert discovery["methods"]["pop"]["recall@20"]["value"] == pytest.approx(0.5)
    assert discovery["best_baseline"] == "pop"
    # every user beats pop by the same margin in discovery recall: the paired interval has zero width
    d = discovery["differences"]["model"]["recall@20"]
    assert d["value"] == pytest.approx(0.5) and d["ci_low"] == pytest.approx(0.5) and d["ci_high"] == pytest.approx(0.5)
    # segments: u4 and u5 are returning (RETURNING_USER_ITEMS+ distinct items), the rest new; n* items are cold
    seg = repeat["segments"]
    assert seg[RETURNING_USERS]["users"] == 6 - (RETURNING_USER_ITEMS - 1)
    assert seg[NEW_USERS]["users"] == RETURNING_USER_ITEMS - 1
    assert seg[COLD_ITEMS]["users"] == 6
    assert seg[COLD_ITEMS]["methods"]["model"]["recall@20"]["value"] == pytest.approx(1.0)
    assert seg[COLD_ITEMS]["methods"][RECENT]["recall@20"]["value"] == 0.0


def test_the_lists_diversity_is_reported_per_method_with_an_interval(fold_case: dict) -> None:
    """Categories: every h* item is in c_h, n{j} in c_n, n{j}b in c_b, zz has none (its own)."""
    c = fold_case
    items = c["popularity"][ITEM_ID].to_list()
    category = {i: ("c_h" if i.startswith("h") else "c_b" if i.endswith("b") else "c_n") for i in items if i != "zz"}
    categories = pl.DataFrame({ITEM_ID: list(category), "category_id": list(category.values())})
    common = {
        "touched": c["touched"],
        "popularity": c["popularity"],
        "n_catalog_items": c["popularity"].height,
        "baselines": ["pop", RECENT],
        "n_bootstrap": 200,
    }
    result = evaluate_fold(c["rankings"], c["truth"], c["users"], item_categories=categories, **common)
    methods = result[REPEAT_AWARE]["methods"]
    # model: n{j} (c_n), n{j}b (c_b), h0 (c_h), zz (none): four categories, every pair differs
    assert methods["model"]["ild@20"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert methods["model"]["category_coverage@20"]["value"] == pytest.approx(1.0)
    # recent: u{j}'s history h0..h{j}, all c_h: no pair differs; coverage 1 / (j + 1)
    assert methods[RECENT]["ild@20"]["value"] == pytest.approx(0.0)
    coverage = methods[RECENT]["category_coverage@20"]
    assert coverage["value"] == pytest.approx(sum(1 / (j + 1) for j in range(6)) / 6)
    assert coverage["ci_low"] < coverage["value"] < coverage["ci_high"]
    without = evaluate_fold(c["rankings"], c["truth"], c["users"], **common)
    assert "ild@20" not in without[REPEAT_AWARE]["methods"]["model"]


def test_empty_segments_and_a_protocol_without_users_are_reported_empty(fold_case: dict) -> None:
    c = fold_case
    only_repeats = c["truth"].filter(pl.col(ITEM_ID) == "h0")  # nothing new: discovery has no users
    result = evaluate_fold(
        c["rankings"],
        only_repeats,
        ["u0", "u1"],  # both new users: no returning users; h0 is warm: no cold items
        touched=c["touched"],
        popularity=c["popularity"],
        n_catalog_items=c["popularity"].height,
        baselines=["pop", RECENT],
        n_bootstrap=50,
    )
    repeat = result[REPEAT_AWARE]
    assert repeat["users"] == 2 and repeat["segments"][NEW_USERS]["users"] == 2
    for empty in (RETURNING_USERS, COLD_ITEMS):
        assert repeat["segments"][empty]["users"] == 0 and repeat["segments"][empty]["methods"] == {}
    discovery = result[DISCOVERY]
    assert discovery["users"] == 0 and discovery["methods"] == {} and discovery["best_baseline"] is None
    assert all(s["users"] == 0 for s in discovery["segments"].values())
