"""Hidden items (hide events, negative feedback) in training's candidates: the one after-merge rule
(``withheld_mask``) takes a user's hidden items out of the merge and of each source's list, for that
user only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from recs_pipeline.data.contract import CATEGORY_ID, EVENT_TYPE, ITEM_ID, PRICE, SESSION_ID, TS, UPDATED_AT, USER_ID
from recs_pipeline.models.consumption import ConsumedPolicy
from recs_pipeline.models.retrieval import (
    ALSParams,
    ALSRetriever,
    CategoryPopularity,
    CoVisitation,
    ItemIndex,
    Popularity,
    Trending,
    withheld_mask,
)
from recs_pipeline.models.training import FoldSources, RetrievalParams, source_candidates

AS_OF = datetime(2026, 3, 10, tzinfo=UTC)
ITEMS = [f"i{n}" for n in range(12)]


def test_withheld_mask_marks_each_users_own_pairs_only():
    index = ItemIndex(ITEMS)
    row = np.array([0, 0, 1, 1, 2])
    item = index.positions(["i1", "i2", "i1", "i3", "i1"])
    hidden = {"a": ["i1", "unknown"], "c": ["i9"]}
    mask = withheld_mask(row, item, hidden, user_ids=["a", "b", "c"], index=index)
    assert mask.tolist() == [True, False, False, False, False]  # b's and c's i1 stay
    assert not withheld_mask(row, item, {}, user_ids=["a", "b", "c"], index=index).any()


def test_training_candidates_leave_out_each_users_hidden_items():
    rng = np.random.default_rng(0)
    users = [f"u{n}" for n in range(6)]
    rows = []
    for n in range(400):
        u, i = users[n % 6], ITEMS[int(rng.integers(0, 12))]
        rows.append((f"e{n}", u, i, "view", AS_OF - timedelta(hours=n % 100 + 1), f"s{u}{n // 30}"))
    events = pl.DataFrame(
        rows,
        schema={"event_id": pl.String, USER_ID: pl.String, ITEM_ID: pl.String, EVENT_TYPE: pl.String,
                TS: pl.Datetime("us", "UTC"), SESSION_ID: pl.String},
        orient="row",
    )  # fmt: skip
    catalog = pl.DataFrame(
        [(i, f"c{n % 3}", 10.0 + n, AS_OF - timedelta(days=30)) for n, i in enumerate(ITEMS)],
        schema={ITEM_ID: pl.String, CATEGORY_ID: pl.String, PRICE: pl.Float64, UPDATED_AT: pl.Datetime("us", "UTC")},
        orient="row",
    )
    interactions = (
        events.group_by(USER_ID, ITEM_ID)
        .agg(pl.len().cast(pl.Float64).alias("weight"), pl.len().alias("views"), pl.col(TS).max().alias("last_ts"))
        .with_columns(carts=pl.lit(0, pl.Int64), purchases=pl.lit(0, pl.Int64), views=pl.col("views").cast(pl.Int64))
    )
    params = RetrievalParams(als=ALSParams(factors=2, iterations=2, threads=1))
    sources = FoldSources(
        als=ALSRetriever.fit(interactions.select(USER_ID, ITEM_ID, "weight"), params=params.als),
        covis=CoVisitation.fit(events, params=params.covis),
        popular=Popularity.fit(events, as_of=AS_OF),
        trending=Trending.fit(events, as_of=AS_OF),
        catpop=CategoryPopularity.fit(events, catalog, as_of=AS_OF),
        content=CategoryPopularity.fit_new_items(events, catalog, as_of=AS_OF),
    )
    limits = {"als": 6, "catpop": 6, "content": 6, "covis": 6, "popular": 6, "recent": 6, "trending": 6, "usercf": 0}
    kwargs = {"n": limits, "retrieval": params, "consumed": ConsumedPolicy(("purchase",)), "as_of": AS_OF}
    per_source, merged = source_candidates(sources, interactions, users, **kwargs)
    u0_items = merged.filter(pl.col(USER_ID) == "u0")[ITEM_ID].to_list()
    hidden = {"u0": u0_items[:3]}
    per_source_h, merged_h = source_candidates(sources, interactions, users, hidden=hidden, **kwargs)

    def pairs(frame: pl.DataFrame) -> set[tuple[str, str]]:
        return set(frame.select(USER_ID, ITEM_ID).iter_rows())

    gone = {("u0", i) for i in u0_items[:3]}
    assert pairs(merged_h) == pairs(merged) - gone
    for name, frame in per_source.items():
        assert pairs(per_source_h[name]) == pairs(frame) - gone, name
    # the other users' rows, scores and ranks are untouched
    others = pl.col(USER_ID) != "u0"
    assert merged_h.filter(others).equals(merged.filter(others))
