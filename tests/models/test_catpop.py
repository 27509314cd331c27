"""Category popularity: per-category lists on the catalog as it was, proposed by the user's favourite categories."""

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from recs_pipeline.data.contract import EVENT_TYPE, ITEM_ID, TS, USER_ID
from recs_pipeline.models.retrieval import CategoryPopularity, ItemIndex, UserSignals
from recs_pipeline.models.retrieval.sources import CategoryLists

AS_OF = datetime(2026, 3, 10, tzinfo=UTC)


def events(counts: dict[str, int]) -> pl.DataFrame:
    rows = [(f"u{k}", item, "view", AS_OF - timedelta(hours=1 + k)) for item, n in counts.items() for k in range(n)]
    return pl.DataFrame(rows, schema=[USER_ID, ITEM_ID, EVENT_TYPE, TS], orient="row")


CATALOG = pl.DataFrame(
    [
        ("a1", "A", AS_OF - timedelta(days=5)),
        ("a2", "A", AS_OF - timedelta(days=5)),
        ("a3", "A", AS_OF - timedelta(days=5)),
        ("b1", "B", AS_OF - timedelta(days=5)),
        ("b2", "B", AS_OF - timedelta(days=5)),
        ("m1", "A", AS_OF - timedelta(days=5)),
        ("m1", "B", AS_OF + timedelta(hours=1)),  # moved to B after the cutoff: still A then
        ("n1", "A", AS_OF + timedelta(hours=1)),  # catalogued after the cutoff: unknown then
    ],
    schema=[ITEM_ID, "category_id", "updated_at"],
    orient="row",
)
COUNTS = {"a1": 5, "a2": 9, "a3": 1, "b1": 4, "b2": 2, "m1": 3, "n1": 8}


def test_lists_rank_within_each_category_on_the_catalog_as_it_was():
    catpop = CategoryPopularity.fit(events(COUNTS), CATALOG, as_of=AS_OF, per_category=3)
    lists = {c: part.sort("rank")[ITEM_ID].to_list() for (c,), part in catpop.lists.group_by("category_id")}
    assert lists == {"A": ["a2", "a1", "m1"], "B": ["b1", "b2"]}  # a3 cut at 3 per category; n1 unknown
    assert dict(catpop.categories.iter_rows())["m1"] == "A"


def test_saved_and_loaded_lists_are_equal(tmp_path):
    catpop = CategoryPopularity.fit(events(COUNTS), CATALOG, as_of=AS_OF)
    catpop.save(tmp_path)
    loaded = CategoryPopularity.load(tmp_path)
    assert loaded.lists.equals(catpop.lists) and loaded.categories.equals(catpop.categories)


def signals(history: list[tuple[str, str, float]]) -> UserSignals:
    users = sorted({u for u, _, _ in history})
    return UserSignals(
        user_ids=users,
        row=np.asarray([users.index(u) for u, _, _ in history], dtype=np.int64),
        item_ids=np.asarray([i for _, i, _ in history]),
        weight=np.asarray([w for _, _, w in history]),
        last_ts=np.zeros(len(history)),
        views=np.ones(len(history), dtype=np.int64),
        carts=np.zeros(len(history), dtype=np.int64),
        purchases=np.zeros(len(history), dtype=np.int64),
    )


def test_a_user_gets_the_lists_of_their_categories_weighted_by_their_share():
    catpop = CategoryPopularity.fit(events(COUNTS), CATALOG, as_of=AS_OF)
    index = ItemIndex.union(CATALOG[ITEM_ID].to_numpy())
    lists = CategoryLists(catpop, index)
    users = signals([("u", "a3", 3.0), ("u", "b2", 1.0), ("v", "n1", 1.0), ("w", "b1", 2.0)])
    found = lists.top_many(users, index.positions(users.item_ids), 10, categories=3, excluded=None)
    ids = [index.ids[items].tolist() for items, _ in found]
    # u: A (share 0.75) and B (0.25), each list scaled by its best item; ties to the smaller item id
    assert ids[0] == ["a2", "a1", "b1", "m1", "b2", "a3"]
    assert np.allclose(found[0][1], [0.75, 0.75 * 5 / 9, 0.25, 0.75 * 3 / 9, 0.125, 0.75 / 9])
    assert ids[1] == []  # v's only item had no category at the cutoff
    assert ids[2] == ["b1", "b2"]
    # one favourite category only, and excluded items never come back
    found = lists.top_many(users, index.positions(users.item_ids), 10, categories=1, excluded=None)
    assert index.ids[found[0][0]].tolist() == ["a2", "a1", "m1", "a3"]
    excluded = [index.positions(np.asarray(["a2"])), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)]
    found = lists.top_many(users, index.positions(users.item_ids), 2, categories=3, excluded=excluded)
    assert index.ids[found[0][0]].tolist() == ["a1", "b1"]


def test_the_content_source_lists_each_category_s_untouched_items_newest_first():
    catalog = pl.concat(
        [
            CATALOG,
            pl.DataFrame(
                [
                    ("a4", "A", AS_OF - timedelta(days=1)),  # untouched, newer in the catalog than a5
                    ("a5", "A", AS_OF - timedelta(days=3)),
                    ("b3", "B", AS_OF - timedelta(days=2)),
                    ("b4", "B", AS_OF - timedelta(hours=2)),
                    ("b4", "B", AS_OF + timedelta(days=1)),  # a later version does not count yet
                ],
                schema=[ITEM_ID, "category_id", "updated_at"],
                orient="row",
            ),
        ]
    )
    fresh = CategoryPopularity.fit_new_items(events(COUNTS), catalog, as_of=AS_OF, per_category=5)
    lists = {c: part.sort("rank")[ITEM_ID].to_list() for (c,), part in fresh.lists.group_by("category_id")}
    # every item with an event before the cutoff is out; n1 is catalogued after it
    assert lists == {"A": ["a4", "a5"], "B": ["b4", "b3"]}
    assert fresh.lists.sort("category_id", "rank")["score"].to_list() == [1.0, 0.5, 1.0, 0.5]
    one_event = CategoryPopularity.fit_new_items(
        events(COUNTS), catalog, as_of=AS_OF, per_category=5, max_interactions=2
    )
    assert "a3" in one_event.lists[ITEM_ID].to_list()  # a3 has one event: cold enough under 2
    # proposed to users by their favourite categories, as category popularity is
    index = ItemIndex(fresh.categories[ITEM_ID].to_list())
    top = CategoryLists(fresh, index).top_many(
        signals([("u", "b1", 1.0)]), index.positions(["b1"]), 5, categories=1, excluded=None
    )
    assert index.ids[top[0][0]].tolist() == ["b4", "b3"]
