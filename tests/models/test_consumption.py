"""The consumed-items policy: its rule, how it is chosen from data, and that retrieval never proposes
a consumed item from any source while still filling every list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from frames import events_frame

from recs_pipeline.data.contract import ITEM_ID, USER_ID
from recs_pipeline.models.bundle import BundleError, Recipe
from recs_pipeline.models.consumption import ConsumedPolicy, choose_policy, parse_event_types, repeat_shares
from recs_pipeline.models.protocol import Fold
from recs_pipeline.models.retrieval import (
    ALSParams,
    ALSRetriever,
    CategoryPopularity,
    CoVisitation,
    Popularity,
    Trending,
)
from recs_pipeline.models.retrieval.sources import SourceSet, UserSignals, retrieve
from recs_pipeline.models.training import RetrievalParams
from recs_pipeline.warehouse.features import Weighting

DAY = 86400.0
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def test_an_item_is_consumed_by_the_policys_event_types_within_its_window() -> None:
    views, carts, purchases = np.array([1, 0, 0, 3]), np.array([0, 1, 0, 0]), np.array([0, 0, 1, 1])
    last = np.array([100.0, 100.0, 100.0, 100.0]) * DAY
    now = np.full(4, 110.0 * DAY)
    kwargs = dict(views=views, carts=carts, purchases=purchases, last_ts=last)
    assert ConsumedPolicy(("purchase",)).consumed(**kwargs, reference=now).tolist() == [False, False, True, True]
    assert ConsumedPolicy(("view", "add_to_cart")).consumed(**kwargs, reference=now).tolist() == [
        True,
        True,
        False,
        True,
    ]
    assert not ConsumedPolicy(()).consumed(**kwargs, reference=now).any()
    # a window: consumed only while the last interaction is at most that old
    assert not ConsumedPolicy(("purchase",), window_days=5).consumed(**kwargs, reference=now).any()
    assert ConsumedPolicy(("purchase",), window_days=10).consumed(**kwargs, reference=now).tolist() == [
        False,
        False,
        True,
        True,
    ]


def test_policy_settings_parse_and_refuse_unknown_types() -> None:
    assert parse_event_types("auto") is None
    assert parse_event_types("none") == ()
    assert parse_event_types(" purchase, add_to_cart ") == ("purchase", "add_to_cart")
    with pytest.raises(ValueError, match="must be among"):
        parse_event_types("purchase,refund")
    with pytest.raises(ValueError, match="positive"):
        ConsumedPolicy(("purchase",), window_days=0)


def _events(rows: list[tuple[str, str, str, datetime]]) -> pl.DataFrame:
    return events_frame([(u, i, e, t, f"{u}-s") for u, i, e, t in rows])


def test_auto_chooses_the_event_types_whose_repeats_are_rare() -> None:
    """Views repeat (half the next interactions are re-views), purchases never do: auto excludes
    purchased items (and carted ones, equally never repeated here), not viewed ones."""
    cutoff = T0 + timedelta(days=10)
    rows = []
    for u in range(20):
        user = f"u{u}"
        rows += [
            (user, f"seen{u}", "view", T0),
            (user, f"bought{u}", "purchase", T0),
            (user, f"cart{u}", "add_to_cart", T0),
        ]
        rows += [
            (user, f"seen{u}", "view", cutoff + timedelta(hours=1)),
            (user, f"new{u}", "view", cutoff + timedelta(hours=2)),
        ]
    events = _events(rows)
    fold = Fold("train", cutoff, cutoff + timedelta(days=1))
    shares = repeat_shares(events, fold)
    assert shares["view"] == pytest.approx(0.5) and shares["purchase"] == 0.0 and shares["add_to_cart"] == 0.0
    chosen = choose_policy(events, fold, event_types=None, window_days=None)
    assert chosen.event_types == ("add_to_cart", "purchase") and chosen.chosen_by == "data"
    configured = choose_policy(events, fold, event_types=("view",), window_days=7.0)
    assert configured.event_types == ("view",) and configured.window_days == 7.0 and configured.chosen_by == "settings"
    assert configured.repeat_shares == shares


@pytest.fixture(scope="module")
def sources() -> SourceSet:
    """Small fitted sources over 30 items: everyone views items in two groups; popularity by index."""
    rng = np.random.default_rng(5)
    rows, weights = [], []
    for u in range(60):
        group = u % 2
        for j in rng.choice(15, size=6, replace=False):
            item = f"i{group * 15 + j:02d}"
            rows.append((f"u{u:02d}", item, "view", T0 + timedelta(minutes=int(j))))
            weights.append((f"u{u:02d}", item, float(rng.uniform(1, 3))))
    events = _events(rows)
    interactions = pl.DataFrame(
        weights, schema={USER_ID: pl.String, ITEM_ID: pl.String, "weight": pl.Float64}, orient="row"
    )
    as_of = T0 + timedelta(days=1)
    params = RetrievalParams(als=ALSParams(factors=4, iterations=5, threads=1))
    catalog = pl.DataFrame(
        {
            ITEM_ID: [f"i{j:02d}" for j in range(30)],
            "category_id": [f"c{j // 15}" for j in range(30)],
            "updated_at": [T0 - timedelta(days=1)] * 30,
        }
    )
    return SourceSet(
        als=ALSRetriever.fit(interactions, params=params.als),
        covis=CoVisitation.fit(events, params=params.covis),
        popular=Popularity.fit(events, as_of=as_of, window_days=params.popularity_days),
        trending=Trending.fit(events, as_of=as_of, recent_hours=params.trending_hours),
        catpop=CategoryPopularity.fit(events, catalog, as_of=as_of),
        content=CategoryPopularity.fit_new_items(events, catalog, as_of=as_of),
        depth=10,
    )


def test_retrieval_never_proposes_a_consumed_item_and_still_fills_every_list(sources: SourceSet) -> None:
    history = ["i00", "i01", "i02", "i03", "i04", "i05", "i06"]
    n = len(history)
    signals = UserSignals(
        user_ids=["new", "other"],
        row=np.array([0] * n + [1]),
        item_ids=np.asarray([*history, "i20"]),
        weight=np.ones(n + 1),
        last_ts=np.full(n + 1, T0.timestamp()),
        views=np.ones(n + 1, dtype=np.int64),
        carts=np.zeros(n + 1, dtype=np.int64),
        purchases=np.asarray([1] * n + [0]),  # the first user bought everything they saw
    )
    limits = {"als": 5, "catpop": 5, "content": 5, "covis": 5, "popular": 5, "recent": 5, "trending": 5, "usercf": 5}
    exclude = signals.consumed(ConsumedPolicy(("purchase",)), sources.index, reference=T0.timestamp() + DAY)
    assert exclude.shape == (2, len(sources.index)) and exclude.nnz == n
    off = retrieve(sources, signals, n={**limits, "usercf": 0, "recent": 0}, anchors=20)
    assert len(off.hits["usercf"].item) == 0 and len(off.hits["recent"].item) == 0 and len(off.hits["als"].item)
    plain = retrieve(sources, signals, n=limits, anchors=20)
    found = retrieve(sources, signals, n=limits, anchors=20, exclude=exclude)
    consumed = set(sources.index.positions(np.asarray(history)).tolist())
    for name, hits in found.hits.items():
        first = hits.item[hits.row == 0]
        assert not consumed & set(first.tolist()), name
        # each list is as long as without the exclusion whenever enough other items exist (the
        # recent source proposes the user's own items only, so it has none left)
        expected = 0 if name == "recent" else len(plain.hits[name].item[plain.hits[name].row == 0])
        assert len(first) == expected, name
        assert hits.rank[hits.row == 0].tolist() == list(range(1, len(first) + 1)), name
        # the other user (nothing consumed) gets exactly what it got before
        assert hits.item[hits.row == 1].tolist() == plain.hits[name].item[plain.hits[name].row == 1].tolist(), name
    assert consumed & set(plain.hits["popular"].item.tolist()), "the check needs consumed items among the popular"


def test_the_recipe_records_the_policy_and_refuses_older_formats() -> None:
    recipe = Recipe(
        weighting=Weighting(),
        retrieval=RetrievalParams(),
        limits={"als": 1, "catpop": 1, "content": 1, "covis": 1, "popular": 1, "recent": 1, "trending": 1, "usercf": 1},
        consumed=ConsumedPolicy(("view",), 3.0, "data", {"view": 0.004}),
    )
    assert Recipe.from_json(recipe.to_json()) == recipe
    # a format-2 recipe (before the recent source) names the cause and the remedy
    old = {**recipe.to_json(), "format": 2}
    with pytest.raises(BundleError, match="older code.*retrain"):
        Recipe.from_json(old)
    with pytest.raises(BundleError, match="every source"):
        Recipe(weighting=Weighting(), retrieval=RetrievalParams(), limits={"als": 1}, consumed=recipe.consumed)
    # 0 turns a source off; all off is refused
    off = {name: 0 for name in recipe.limits}
    Recipe(weighting=Weighting(), retrieval=RetrievalParams(), limits={**off, "als": 3}, consumed=recipe.consumed)
    with pytest.raises(BundleError, match="at least one positive"):
        Recipe(weighting=Weighting(), retrieval=RetrievalParams(), limits=off, consumed=recipe.consumed)
