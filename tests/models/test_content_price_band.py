"""The content source's price band: within a favourite category, new items near the user's typical
price there come first; without a priced history the list stays newest first; training and the
service propose the same content candidates through the one retrieval step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recs_pipeline.data.contract import CATEGORY_ID, EVENT_TYPE, ITEM_ID, PRICE, SESSION_ID, TS, UPDATED_AT, USER_ID
from recs_pipeline.models.bundle import GLOBAL_DEPTH
from recs_pipeline.models.consumption import ConsumedPolicy
from recs_pipeline.models.retrieval import (
    ALSParams,
    ALSRetriever,
    CategoryPopularity,
    CoVisitation,
    ItemIndex,
    Popularity,
    Trending,
    UserSignals,
    retrieve,
)
from recs_pipeline.models.retrieval.sources import CategoryLists
from recs_pipeline.models.training import (
    FoldSources,
    RetrievalParams,
    retrieval_params_from_json,
    retrieval_params_json,
    retrieve_knobs,
    source_candidates,
)
from recs_pipeline.serving.recommender import HistoryItem, signals_of

AS_OF = datetime(2026, 3, 10, tzinfo=UTC)
OLD = AS_OF - timedelta(days=20)

# Category A: two bought-from items at 10 and 200, and three new ones (no event before the
# cutoff), listed newest first as mid (50), cheap (9), dear (210). Category B: one item, one new one.
CATALOG = pl.DataFrame(
    [
        ("a_cheap", "A", 10.0, OLD),
        ("a_dear", "A", 200.0, OLD),
        ("new_mid", "A", 55.0, AS_OF - timedelta(days=1)),
        ("new_cheap", "A", 9.0, AS_OF - timedelta(days=2)),
        ("new_dear", "A", 210.0, AS_OF - timedelta(days=3)),
        ("b1", "B", 30.0, OLD),
        ("new_b", "B", 31.0, AS_OF - timedelta(days=1)),
    ],
    schema={ITEM_ID: pl.String, CATEGORY_ID: pl.String, PRICE: pl.Float64, UPDATED_AT: pl.Datetime("us", "UTC")},
    orient="row",
)
NEW_A = ["new_mid", "new_cheap", "new_dear"]  # the content list of A, newest first

# who bought what (weight): a cheap shopper, a dear one, one mostly cheap, and one whose A items are unpriced
HISTORY = {
    "u_cheap": {"a_cheap": 3.0, "b1": 1.0},
    "u_dear": {"a_dear": 3.0, "b1": 1.0},
    "u_mostly_cheap": {"a_cheap": 9.0, "a_dear": 1.0},
}


def events() -> pl.DataFrame:
    rows = [
        (user, item, "view", AS_OF - timedelta(days=5, minutes=k), f"s_{user}")
        for user, items in HISTORY.items()
        for k, item in enumerate(items)
    ]
    return pl.DataFrame(
        rows,
        schema={
            USER_ID: pl.String,
            ITEM_ID: pl.String,
            EVENT_TYPE: pl.String,
            TS: pl.Datetime("us", "UTC"),
            SESSION_ID: pl.String,
        },
        orient="row",
    )


def signals(history: dict[str, dict[str, float]]) -> UserSignals:
    users = list(history)
    pairs = [(r, item, w) for r, u in enumerate(users) for item, w in history[u].items()]
    n = len(pairs)
    return UserSignals(
        user_ids=users,
        row=np.asarray([r for r, _, _ in pairs], dtype=np.int64),
        item_ids=np.asarray([i for _, i, _ in pairs], dtype=str),
        weight=np.asarray([w for _, _, w in pairs], dtype=np.float64),
        last_ts=np.zeros(n),
        views=np.ones(n, dtype=np.int64),
        carts=np.zeros(n, dtype=np.int64),
        purchases=np.zeros(n, dtype=np.int64),
    )


def content_of(
    history: dict[str, dict[str, float]], *, catalog: pl.DataFrame = CATALOG, price_band: float = 2.0
) -> dict[str, list[str]]:
    """Each user's content list (favourite category A or B first), through CategoryLists."""
    fresh = CategoryPopularity.fit_new_items(events(), catalog, as_of=AS_OF)
    index = ItemIndex(catalog[ITEM_ID].to_list())
    users = signals(history)
    found = CategoryLists(fresh, index).top_many(
        users, index.positions(users.item_ids), 10, categories=1, excluded=None, price_band=price_band
    )
    return {u: index.ids[items].tolist() for u, (items, _) in zip(users.user_ids, found, strict=True)}


def test_the_content_lists_keep_each_item_s_price_as_it_was_at_the_cutoff() -> None:
    repriced = pl.concat(
        [CATALOG, pl.DataFrame([("new_cheap", "A", 500.0, AS_OF + timedelta(hours=1))], CATALOG.schema, orient="row")]
    )
    fresh = CategoryPopularity.fit_new_items(events(), repriced, as_of=AS_OF)
    prices = dict(fresh.categories.select(ITEM_ID, PRICE).iter_rows())
    assert prices["new_cheap"] == 9.0 and prices["a_dear"] == 200.0  # the later version does not count yet
    lists = fresh.lists.filter(pl.col(CATEGORY_ID) == "A").sort("rank")[ITEM_ID].to_list()
    assert lists == NEW_A


def test_a_cheap_history_puts_the_cheap_new_item_first_and_a_dear_one_the_dear_item() -> None:
    found = content_of(HISTORY)
    assert found["u_cheap"] == ["new_cheap", "new_mid", "new_dear"]  # 9 within a factor 2 of 10; 55 then 210
    assert found["u_dear"] == ["new_dear", "new_mid", "new_cheap"]
    # the typical price is the history-weighted mean of log prices: exp((9 ln 10 + ln 200) / 10) ~ 13.5
    assert found["u_mostly_cheap"] == ["new_cheap", "new_mid", "new_dear"]
    # each position keeps the list's score (1 / rank), scaled by the category's share
    fresh = CategoryPopularity.fit_new_items(events(), CATALOG, as_of=AS_OF)
    index = ItemIndex(CATALOG[ITEM_ID].to_list())
    users = signals({"u_cheap": HISTORY["u_cheap"]})
    (_, scores), *_ = CategoryLists(fresh, index).top_many(
        users, index.positions(users.item_ids), 10, categories=1, excluded=None, price_band=2.0
    )
    assert np.allclose(scores, [1.0, 0.5, 1 / 3])


def test_without_a_priced_history_or_with_the_band_off_the_list_stays_newest_first() -> None:
    assert content_of(HISTORY, price_band=0.0)["u_cheap"] == NEW_A  # off
    unpriced = CATALOG.with_columns(
        pl.when(pl.col(ITEM_ID).is_in(["a_cheap", "a_dear", "b1"])).then(None).otherwise(pl.col(PRICE)).alias(PRICE)
    )
    assert content_of(HISTORY, catalog=unpriced) == {u: NEW_A for u in HISTORY}
    assert content_of(HISTORY, catalog=CATALOG.drop(PRICE)) == {u: NEW_A for u in HISTORY}  # no prices at all
    with pytest.raises(ValueError, match="price_band"):
        content_of(HISTORY, price_band=0.5)


def test_an_unpriced_new_item_comes_after_the_priced_ones() -> None:
    catalog = CATALOG.with_columns(
        pl.when(pl.col(ITEM_ID) == "new_mid").then(None).otherwise(pl.col(PRICE)).alias(PRICE)
    )
    assert content_of(HISTORY, catalog=catalog)["u_dear"] == ["new_dear", "new_cheap", "new_mid"]


@pytest.fixture(scope="module")
def fitted() -> FoldSources:
    hist = events()
    interactions = pl.DataFrame(
        [(u, i, w) for u, items in HISTORY.items() for i, w in items.items()],
        schema={USER_ID: pl.String, ITEM_ID: pl.String, "weight": pl.Float64},
        orient="row",
    )
    params = RetrievalParams(als=ALSParams(factors=2, iterations=2, threads=1), content_price_band=2.0)
    return FoldSources(
        als=ALSRetriever.fit(interactions, params=params.als),
        covis=CoVisitation.fit(hist, params=params.covis),
        popular=Popularity.fit(hist, as_of=AS_OF),
        trending=Trending.fit(hist, as_of=AS_OF),
        catpop=CategoryPopularity.fit(hist, CATALOG, as_of=AS_OF),
        content=CategoryPopularity.fit_new_items(hist, CATALOG, as_of=AS_OF),
    )


def test_training_and_the_service_propose_the_same_content_candidates(fitted: FoldSources, tmp_path: Path) -> None:
    params = RetrievalParams(als=ALSParams(factors=2, iterations=2, threads=1), content_price_band=2.0)
    limits = {"als": 5, "catpop": 5, "content": 5, "covis": 5, "popular": 5, "recent": 5, "trending": 5, "usercf": 0}
    last = AS_OF - timedelta(days=5)
    interactions = pl.DataFrame(
        [(u, i, w, 1, 0, 0, last) for u, items in HISTORY.items() for i, w in items.items()],
        schema={
            USER_ID: pl.String,
            ITEM_ID: pl.String,
            "weight": pl.Float64,
            "views": pl.Int64,
            "carts": pl.Int64,
            "purchases": pl.Int64,
            "last_ts": pl.Datetime("us", "UTC"),
        },
        orient="row",
    )
    policy = ConsumedPolicy(("purchase",))
    users = sorted(HISTORY)
    per_source, _ = source_candidates(
        fitted, interactions, users, n=limits, retrieval=params, consumed=policy, as_of=AS_OF
    )
    trained = {u: part.sort("rank")[ITEM_ID].to_list() for (u,), part in per_source["content"].group_by(USER_ID)}
    in_a = {u: [i for i in items if i in NEW_A] for u, items in trained.items()}  # B's new item interleaves
    assert in_a["u_cheap"] == ["new_cheap", "new_mid", "new_dear"]
    assert in_a["u_dear"] == ["new_dear", "new_mid", "new_cheap"]

    # the service: the saved sources loaded as a bundle loads them, one user per request from the profile
    fitted.save(tmp_path)
    served = FoldSources.load(tmp_path).source_set(depth=GLOBAL_DEPTH, extra_items=CATALOG[ITEM_ID].to_numpy())
    for user in users:
        history = {
            item: HistoryItem(weight=w, views=1, last_unix=last.timestamp()) for item, w in HISTORY[user].items()
        }
        signals = signals_of(user, history)
        consumed = signals.consumed(policy, served.index, reference=AS_OF.timestamp())
        found = retrieve(served, signals, n=limits, **retrieve_knobs(params), exclude=consumed)
        hits = found.hits["content"]
        assert served.index.ids[hits.item[np.argsort(hits.rank)]].tolist() == trained[user], user


def test_the_recipe_records_the_price_band() -> None:
    params = RetrievalParams(content_price_band=1.5)
    assert retrieval_params_from_json(retrieval_params_json(params)) == params
    assert retrieve_knobs(params)["price_band"] == 1.5
