"""Golden tests of the feature SQL (sql/*_features.sql, sql/interactions.sql) and build_snapshot.

A tiny hand-built warehouse: 3 users who matter (u1, u2, u3 idle for > 30 days) plus u4 whose
only event is exactly at as_of, 4 catalog items in 2 categories (i5 enters the catalog after
as_of), and events placed on every window boundary. Every expected value below is worked out
by hand from the event table in ``EVENTS``; nothing is recomputed with SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from recs_pipeline.warehouse import db
from recs_pipeline.warehouse.features import (
    FEATURE_TABLES,
    UPSTREAM,
    Weighting,
    build_snapshot,
    export_table,
    latest_event_time,
    null_rates,
    snapshot_time,
)

AS_OF = datetime(2024, 6, 30, 12, 0, tzinfo=UTC)
CREATED = datetime(2024, 7, 1, 3, 0, tzinfo=UTC)
FILE_HASH = "golden-hash"
INGESTED_AT = datetime(2020, 1, 1, tzinfo=UTC)

# Ages before AS_OF, in seconds.
M10 = 10 * 60
M59 = 59 * 60
H1 = 3600
H1S1 = 3600 + 1
H23M59 = 23 * 3600 + 59 * 60
DAY = 86400
D6, D8, D29, D31, D40 = 6 * DAY, 8 * DAY, 29 * DAY, 31 * DAY, 40 * DAY


def ago(seconds: float) -> datetime:
    return AS_OF - timedelta(seconds=seconds)


# (event_id, user_id, item_id, event_type, age_s, session_id)
EVENTS: list[tuple[str, str, str, str, int, str]] = [
    ("e01", "u1", "i1", "view", M59, "s1a"),
    ("e02", "u1", "i1", "add_to_cart", H1S1, "s1a"),
    ("e03", "u1", "i2", "view", H23M59, "s1b"),
    ("e04", "u1", "i3", "view", D6, "s1c"),
    ("e05", "u1", "i1", "purchase", D8, "s1d"),
    ("e06", "u1", "i3", "favorite", D29, "s1e"),
    ("e07", "u1", "i4", "view", D31, "s1f"),
    ("e08", "u1", "i2", "view", 0, "s1g"),  # exactly at as_of: excluded
    ("e09", "u2", "i3", "view", M10, "s2a"),
    ("e14", "u2", "i3", "view", H1, "s2a"),  # exactly 1h before: inside the 1h window
    ("e10", "u2", "i3", "add_to_cart", H23M59, "s2a"),
    ("e11", "u2", "i2", "view", D6, "s2b"),
    ("e12", "u2", "i2", "purchase", D8, "s2c"),
    ("e13", "u2", "i1", "view", D29, "s2c"),
    ("e15", "u3", "i4", "add_to_cart", D31, "s3a"),
    ("e16", "u3", "i4", "view", D40, "s3b"),
    ("e17", "u4", "i1", "view", 0, "s4a"),  # u4's only event is at as_of: no row for u4
]

# (item_id, category_id, price, available, updated_at)
ITEM_VERSIONS: list[tuple] = [
    ("i1", "c1", 9.0, True, AS_OF - timedelta(days=90)),  # superseded before as_of
    ("i1", "c1", 10.0, True, AS_OF - timedelta(days=60)),
    ("i2", "c1", 20.0, True, AS_OF - timedelta(days=60)),
    ("i3", "c2", 30.0, False, AS_OF - timedelta(days=60)),
    ("i4", "c2", 40.0, True, AS_OF - timedelta(days=60)),
    ("i4", "c2", 45.0, True, AS_OF),  # exactly at as_of: not yet valid
    ("i4", "c2", 400.0, False, AS_OF + timedelta(hours=1)),  # after as_of
    ("i5", "c1", 50.0, True, AS_OF + timedelta(hours=2)),  # enters the catalog after as_of
]

W = Weighting(view=1.0, add_to_cart=5.0, purchase=10.0, favorite=2.0, half_life_days=7.0)


def decay(age_s: float, half_life_days: float = 7.0) -> float:
    return 0.5 ** (age_s / 86400 / half_life_days)


# ---------------------------------------------------------------- helpers


def insert_events(con: duckdb.DuckDBPyConnection, rows: list[tuple]) -> None:
    """rows: (event_id, user_id, item_id, event_type, ts, session_id)."""
    con.executemany(
        "INSERT INTO events (event_id, user_id, item_id, event_type, ts, session_id, file_hash, ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(*r, FILE_HASH, INGESTED_AT) for r in rows],
    )


def insert_item_versions(con: duckdb.DuckDBPyConnection, rows: list[tuple]) -> None:
    """rows: (item_id, category_id, price, available, updated_at)."""
    con.executemany(
        "INSERT INTO item_versions VALUES (?, ?, ?, ?, ?, ?, ?)", [(*r, FILE_HASH, INGESTED_AT) for r in rows]
    )


def rows_of(con: duckdb.DuckDBPyConnection, table: str, as_of: datetime | None = None) -> list[dict]:
    where, params = ("", []) if as_of is None else (" WHERE event_timestamp = ?", [as_of])
    cur = con.execute(f"SELECT * FROM {table}{where} ORDER BY ALL", params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def keyed(rows: list[dict], *keys: str) -> dict[tuple, dict]:
    out: dict[tuple, dict] = {}
    for r in rows:
        k = tuple(r[c] for c in keys)
        assert k not in out, f"duplicate row for {k}"
        out[k] = r
    return out


def assert_rows_equal(actual: dict[tuple, dict], expected: dict[tuple, dict]) -> None:
    """Same keys, same columns, every value equal (floats approximately, others exactly)."""
    assert sorted(actual) == sorted(expected)
    for k, exp in expected.items():
        got = actual[k]
        assert set(got) == set(exp), f"{k}: columns differ: {set(got) ^ set(exp)}"
        for col, value in exp.items():
            if isinstance(value, float):
                assert isinstance(got[col], float), f"{k}.{col}: {got[col]!r} is not a float"
                assert got[col] == pytest.approx(value, rel=1e-9, abs=1e-9), f"{k}.{col}: {got[col]!r} != {value!r}"
            else:
                assert got[col] == value, f"{k}.{col}: {got[col]!r} != {value!r}"
                assert type(got[col]) is type(value), f"{k}.{col}: type {type(got[col])} != {type(value)}"


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with db.connect(tmp_path / "w.duckdb") as c:
        yield c


@pytest.fixture
def scenario(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    insert_events(con, [(eid, u, i, t, ago(age), s) for eid, u, i, t, age, s in EVENTS])
    insert_item_versions(con, ITEM_VERSIONS)
    return con


def build(con: duckdb.DuckDBPyConnection, table: str, as_of: datetime = AS_OF, **kw) -> int:
    return build_snapshot(con, table, as_of=as_of, created=CREATED, weighting=W, **kw).rows


STAMPS = {"event_timestamp": AS_OF, "created_timestamp": CREATED}


# ---------------------------------------------------------------- user_features.sql


def _user(**cols) -> dict:
    zero = {
        c: 0
        for c in (
            "views_1h",
            "views_24h",
            "views_7d",
            "views_30d",
            "carts_1h",
            "carts_24h",
            "carts_7d",
            "carts_30d",
            "purchases_1h",
            "purchases_24h",
            "purchases_7d",
            "purchases_30d",
            "favorites_30d",
            "distinct_items_30d",
            "sessions_30d",
        )
    }
    return {
        **zero,
        "cart_rate_30d": 0.0,
        "purchase_rate_30d": 0.0,
        "top_category_id": None,
        "top_category_share": 0.0,
        "avg_price_30d": None,
        **STAMPS,
        **cols,
    }


EXPECTED_USERS = {
    # u1 in 30d: e01 view 59m, e02 cart 1h+1s, e03 view 23h59m, e04 view 6d, e05 purchase 8d,
    # e06 favorite 29d (e07 at 31d and e08 at as_of are out). Categories c1: e01 e02 e03 e05, c2: e04 e06.
    ("u1",): _user(
        user_id="u1",
        views_1h=1,
        views_24h=2,
        views_7d=3,
        views_30d=3,
        carts_1h=0,
        carts_24h=1,
        carts_7d=1,
        carts_30d=1,
        purchases_1h=0,
        purchases_24h=0,
        purchases_7d=0,
        purchases_30d=1,
        favorites_30d=1,
        distinct_items_30d=3,
        sessions_30d=5,
        cart_rate_30d=1 / 3,
        purchase_rate_30d=1 / 3,
        seconds_since_last_event=float(M59),
        top_category_id="c1",
        top_category_share=4 / 6,
        avg_price_30d=(10 + 10 + 20 + 30 + 10 + 30) / 6,
    ),
    # u2 in 30d: e09 view 10m, e14 view 1h (inclusive), e10 cart 23h59m, e11 view 6d,
    # e12 purchase 8d, e13 view 29d. c1: e11 e12 e13 = 3, c2: e09 e14 e10 = 3 -> tie, larger id wins.
    ("u2",): _user(
        user_id="u2",
        views_1h=2,
        views_24h=2,
        views_7d=3,
        views_30d=4,
        carts_1h=0,
        carts_24h=1,
        carts_7d=1,
        carts_30d=1,
        purchases_1h=0,
        purchases_24h=0,
        purchases_7d=0,
        purchases_30d=1,
        favorites_30d=0,
        distinct_items_30d=3,
        sessions_30d=3,
        cart_rate_30d=0.25,
        purchase_rate_30d=0.25,
        seconds_since_last_event=float(M10),
        top_category_id="c2",
        top_category_share=0.5,
        avg_price_30d=(30 + 30 + 30 + 20 + 20 + 10) / 6,
    ),
    # u3: last event 31 days ago -> a row of zeros, no category, no price.
    ("u3",): _user(user_id="u3", seconds_since_last_event=float(D31)),
}


def test_user_features_golden(scenario):
    assert build(scenario, "user_features") == 3
    assert_rows_equal(keyed(rows_of(scenario, "user_features"), "user_id"), EXPECTED_USERS)


def test_user_features_idle_and_unseen_users(scenario):
    build(scenario, "user_features")
    users = {r["user_id"]: r for r in rows_of(scenario, "user_features")}
    assert "u4" not in users  # only event exactly at as_of
    assert users["u3"]["views_30d"] == 0 and users["u3"]["carts_30d"] == 0
    assert users["u3"]["seconds_since_last_event"] == pytest.approx(31 * 86400)


def test_user_features_without_catalog_rows(con):
    # Events on items absent from the catalog still count; category and price stay unknown.
    insert_events(con, [("x1", "u9", "zz", "view", ago(H1S1), "s"), ("x2", "u9", "zz", "add_to_cart", ago(M10), "s")])
    build(con, "user_features")
    [row] = rows_of(con, "user_features")
    assert (row["views_24h"], row["carts_1h"], row["cart_rate_30d"]) == (1, 1, 1.0)
    assert (row["top_category_id"], row["top_category_share"], row["avg_price_30d"]) == (None, 0.0, None)


# ---------------------------------------------------------------- item_features.sql


def _item(**cols) -> dict:
    zero = {
        c: 0
        for c in (
            "views_1h",
            "views_24h",
            "views_7d",
            "views_30d",
            "carts_24h",
            "carts_7d",
            "carts_30d",
            "purchases_24h",
            "purchases_7d",
            "purchases_30d",
            "distinct_users_7d",
        )
    }
    return {**zero, "cart_rate_30d": 0.0, "purchase_rate_30d": 0.0, **STAMPS, **cols}


EXPECTED_ITEMS = {
    # i1: e01 u1 view 59m, e02 u1 cart 1h+1s, e05 u1 purchase 8d, e13 u2 view 29d (e17 at as_of out).
    ("i1",): _item(
        item_id="i1",
        category_id="c1",
        price=10.0,
        available=True,
        views_1h=1,
        views_24h=1,
        views_7d=1,
        views_30d=2,
        carts_24h=1,
        carts_7d=1,
        carts_30d=1,
        purchases_24h=0,
        purchases_7d=0,
        purchases_30d=1,
        distinct_users_7d=1,
        cart_rate_30d=0.5,
        purchase_rate_30d=0.5,
        trend_24h_vs_7d=(1 + 1) / (1 / 7 + 1),  # = 1.75
        seconds_since_last_event=float(M59),
    ),
    # i2: e03 u1 view 23h59m, e11 u2 view 6d, e12 u2 purchase 8d (e08 at as_of out).
    ("i2",): _item(
        item_id="i2",
        category_id="c1",
        price=20.0,
        available=True,
        views_1h=0,
        views_24h=1,
        views_7d=2,
        views_30d=2,
        purchases_30d=1,
        distinct_users_7d=2,
        cart_rate_30d=0.0,
        purchase_rate_30d=0.5,
        trend_24h_vs_7d=(1 + 1) / (2 / 7 + 1),  # = 14/9
        seconds_since_last_event=float(H23M59),
    ),
    # i3: e09 u2 view 10m, e14 u2 view 1h, e10 u2 cart 23h59m, e04 u1 view 6d, e06 u1 favorite 29d.
    ("i3",): _item(
        item_id="i3",
        category_id="c2",
        price=30.0,
        available=False,
        views_1h=2,
        views_24h=2,
        views_7d=3,
        views_30d=3,
        carts_24h=1,
        carts_7d=1,
        carts_30d=1,
        distinct_users_7d=2,
        cart_rate_30d=1 / 3,
        purchase_rate_30d=0.0,
        trend_24h_vs_7d=(2 + 1) / (3 / 7 + 1),  # = 2.1
        seconds_since_last_event=float(M10),
    ),
    # i4: only events 31 and 40 days ago -> zero counts; catalog row valid before as_of (40.0),
    # not the one stamped exactly at as_of (45.0) nor the later one (400.0, unavailable).
    ("i4",): _item(
        item_id="i4",
        category_id="c2",
        price=40.0,
        available=True,
        trend_24h_vs_7d=1.0,
        seconds_since_last_event=float(D31),
    ),
    # i5 enters the catalog after as_of and has no events: no row.
}


def test_item_features_golden(scenario):
    assert build(scenario, "item_features") == 4
    assert_rows_equal(keyed(rows_of(scenario, "item_features"), "item_id"), EXPECTED_ITEMS)


def test_item_features_catalog_version_moves_with_as_of(scenario):
    later = AS_OF + timedelta(hours=3)
    build(scenario, "item_features", as_of=later)
    i4 = keyed(rows_of(scenario, "item_features", later), "item_id")[("i4",)]
    assert (i4["price"], i4["available"]) == (400.0, False)
    assert ("i5",) in keyed(rows_of(scenario, "item_features", later), "item_id")


def test_item_features_item_without_catalog_row(con):
    insert_events(con, [("x1", "u1", "zz", "view", ago(H1S1), "s")])
    build(con, "item_features")
    [row] = rows_of(con, "item_features")
    assert (row["item_id"], row["category_id"], row["price"], row["available"]) == ("zz", None, None, None)
    assert (row["views_1h"], row["views_24h"], row["trend_24h_vs_7d"]) == (0, 1, pytest.approx(2 / (1 / 7 + 1)))


# ---------------------------------------------------------------- user_category_features.sql


def _aff(*events: tuple[float, int]) -> float:
    return sum(w * decay(age) for w, age in events)


# Weights: view 1, add_to_cart 5, purchase 10, favorite 2; half-life 7 days.
U1_C1 = _aff((1, M59), (5, H1S1), (1, H23M59), (10, D8))  # e01 e02 e03 e05
U1_C2 = _aff((1, D6), (2, D29))  # e04 e06 (e07 at 31d is out of the 30-day window)
U2_C1 = _aff((1, D6), (10, D8), (1, D29))  # e11 e12 e13
U2_C2 = _aff((1, M10), (1, H1), (5, H23M59))  # e09 e14 e10

EXPECTED_USER_CATEGORIES = {
    ("u1", "c1"): {
        "user_id": "u1",
        "category_id": "c1",
        "affinity_30d": U1_C1,
        "affinity_share_30d": U1_C1 / (U1_C1 + U1_C2),
        "events_30d": 4,
        "purchases_30d": 1,
        "hides_30d": 0,
        **STAMPS,
    },
    ("u1", "c2"): {
        "user_id": "u1",
        "category_id": "c2",
        "affinity_30d": U1_C2,
        "affinity_share_30d": U1_C2 / (U1_C1 + U1_C2),
        "events_30d": 2,
        "purchases_30d": 0,
        "hides_30d": 0,
        **STAMPS,
    },
    ("u2", "c1"): {
        "user_id": "u2",
        "category_id": "c1",
        "affinity_30d": U2_C1,
        "affinity_share_30d": U2_C1 / (U2_C1 + U2_C2),
        "events_30d": 3,
        "purchases_30d": 1,
        "hides_30d": 0,
        **STAMPS,
    },
    ("u2", "c2"): {
        "user_id": "u2",
        "category_id": "c2",
        "affinity_30d": U2_C2,
        "affinity_share_30d": U2_C2 / (U2_C1 + U2_C2),
        "events_30d": 3,
        "purchases_30d": 0,
        "hides_30d": 0,
        **STAMPS,
    },
    # u3's only category (c2, via i4) is idle for 31 days: an explicit zero row, never a stale one.
    ("u3", "c2"): {
        "user_id": "u3",
        "category_id": "c2",
        "affinity_30d": 0.0,
        "affinity_share_30d": 0.0,
        "events_30d": 0,
        "purchases_30d": 0,
        "hides_30d": 0,
        **STAMPS,
    },
    # u4 has nothing before as_of: no row.
}


def test_user_category_features_golden(scenario):
    assert build(scenario, "user_category_features") == 5
    actual = keyed(rows_of(scenario, "user_category_features"), "user_id", "category_id")
    assert_rows_equal(actual, EXPECTED_USER_CATEGORIES)
    # Hand-checked magnitudes, so a wrong decay base cannot hide in both sides of the comparison.
    u1_c1 = actual[("u1", "c1")]["affinity_30d"]
    assert u1_c1 == pytest.approx(1 * 0.99595 + 5 * 0.99588 + 1 * 0.90579 + 10 * 0.45286, rel=1e-4)


def test_user_category_shares_sum_to_one(scenario):
    build(scenario, "user_category_features")
    sums = scenario.execute(
        "SELECT user_id, sum(affinity_share_30d) FROM user_category_features GROUP BY user_id ORDER BY user_id"
    ).fetchall()
    assert [u for u, _ in sums] == ["u1", "u2", "u3"]
    # active users' shares sum to 1; an idle user's (all affinities 0) are 0, not NaN
    assert [s for _, s in sums] == [pytest.approx(1.0), pytest.approx(1.0), 0.0]


def test_user_category_features_uses_the_weighting(scenario):
    build_snapshot(
        scenario,
        "user_category_features",
        as_of=AS_OF,
        created=CREATED,
        weighting=Weighting(view=0.0, add_to_cart=0.0, purchase=1.0, favorite=0.0, half_life_days=1e9),
    )
    rows = keyed(rows_of(scenario, "user_category_features"), "user_id", "category_id")
    # Only purchases weigh (e05 u1/c1, e12 u2/c1) and the decay is ~1.
    assert rows[("u1", "c1")]["affinity_30d"] == pytest.approx(1.0)
    assert rows[("u1", "c2")]["affinity_30d"] == pytest.approx(0.0)
    assert rows[("u2", "c1")]["affinity_share_30d"] == pytest.approx(1.0)


# ---------------------------------------------------------------- interactions.sql


def _inter(
    user: str, item: str, weight: float, views=0, carts=0, purchases=0, favorites=0, last_age=0, purchase_age=None
) -> dict:
    return {
        "user_id": user,
        "item_id": item,
        "weight": weight,
        "views": views,
        "carts": carts,
        "purchases": purchases,
        "favorites": favorites,
        "last_ts": ago(last_age),
        "last_purchase_ts": None if purchase_age is None else ago(purchase_age),
        **STAMPS,
    }


EXPECTED_INTERACTIONS = {
    ("u1", "i1"): _inter(
        "u1", "i1", _aff((1, M59), (5, H1S1), (10, D8)), views=1, carts=1, purchases=1, last_age=M59, purchase_age=D8
    ),
    ("u1", "i2"): _inter("u1", "i2", _aff((1, H23M59)), views=1, last_age=H23M59),  # e08 at as_of excluded
    ("u1", "i3"): _inter("u1", "i3", _aff((1, D6), (2, D29)), views=1, favorites=1, last_age=D6),
    ("u1", "i4"): _inter("u1", "i4", _aff((1, D31)), views=1, last_age=D31),  # older than 30 days still counts
    ("u2", "i1"): _inter("u2", "i1", _aff((1, D29)), views=1, last_age=D29),
    ("u2", "i2"): _inter("u2", "i2", _aff((1, D6), (10, D8)), views=1, purchases=1, last_age=D6, purchase_age=D8),
    ("u2", "i3"): _inter("u2", "i3", _aff((1, M10), (1, H1), (5, H23M59)), views=2, carts=1, last_age=M10),
    ("u3", "i4"): _inter("u3", "i4", _aff((5, D31), (1, D40)), views=1, carts=1, last_age=D31),
}


def test_interactions_golden(scenario):
    assert build(scenario, "interactions") == 8
    assert_rows_equal(keyed(rows_of(scenario, "interactions"), "user_id", "item_id"), EXPECTED_INTERACTIONS)
    assert EXPECTED_INTERACTIONS[("u3", "i4")]["weight"] == pytest.approx(5 * 0.04644 + 1 * 0.01905, rel=1e-4)


# ---------------------------------------------------------------- user_profile.sql


def test_user_profile_summarises_the_same_times_snapshots(scenario):
    build(scenario, "interactions")
    build(scenario, "user_category_features")
    assert build(scenario, "user_profile") == 3
    profiles = keyed(rows_of(scenario, "user_profile"), "user_id")
    inter = EXPECTED_INTERACTIONS
    # u1's items, most recent first, arrays aligned by position
    u1 = profiles[("u1",)]
    assert u1["hist_item_ids"] == ["i1", "i2", "i3", "i4"]  # last events 59 min, ~24 h, 6 d, 31 d ago
    for pos, item in enumerate(u1["hist_item_ids"]):
        row = inter[("u1", item)]
        assert u1["hist_weights"][pos] == pytest.approx(row["weight"])
        assert (u1["hist_views"][pos], u1["hist_carts"][pos], u1["hist_purchases"][pos]) == (
            row["views"],
            row["carts"],
            row["purchases"],
        )
        assert u1["hist_last_unix"][pos] == pytest.approx(row["last_ts"].timestamp())
        purchased = row["last_purchase_ts"]
        assert u1["hist_last_purchase_unix"][pos] == pytest.approx(purchased.timestamp() if purchased else 0.0)
    # categories strongest first, equal to the user_category_features rows
    for user in ("u1", "u2", "u3"):
        p = profiles[(user,)]
        cats = {
            c: r
            for (u, c), r in keyed(rows_of(scenario, "user_category_features"), "user_id", "category_id").items()
            if u == user
        }
        assert sorted(p["cat_ids"]) == sorted(cats)
        assert p["cat_affinity_30d"] == sorted(p["cat_affinity_30d"], reverse=True)
        for pos, c in enumerate(p["cat_ids"]):
            assert p["cat_affinity_30d"][pos] == pytest.approx(cats[c]["affinity_30d"])
            assert p["cat_affinity_share_30d"][pos] == pytest.approx(cats[c]["affinity_share_30d"])
            assert (p["cat_events_30d"][pos], p["cat_purchases_30d"][pos]) == (
                cats[c]["events_30d"],
                cats[c]["purchases_30d"],
            )
        assert p["event_timestamp"] == AS_OF


def test_user_profile_requires_its_upstream_snapshots(scenario):
    with pytest.raises(ValueError, match="interactions snapshot as of .* does not exist"):
        build(scenario, "user_profile")


def test_user_profile_without_catalog_affinities_has_history_only(scenario):
    # no event's item in the catalog: user_category_features is legitimately empty
    scenario.execute("DELETE FROM item_versions")
    build(scenario, "interactions")
    assert build(scenario, "user_category_features") == 0
    assert build(scenario, "user_profile") == 3
    profiles = rows_of(scenario, "user_profile")
    assert all(p["hist_item_ids"] and p["cat_ids"] is None for p in profiles)


def test_user_profile_caps_its_arrays(scenario, monkeypatch):
    from recs_pipeline.warehouse import features

    monkeypatch.setattr(features, "PROFILE_MAX_ITEMS", 2)
    monkeypatch.setattr(features, "PROFILE_MAX_CATEGORIES", 1)
    build(scenario, "interactions")
    build(scenario, "user_category_features")
    build(scenario, "user_profile")
    u1 = keyed(rows_of(scenario, "user_profile"), "user_id")[("u1",)]
    assert len(u1["hist_item_ids"]) == 2 and len(u1["hist_weights"]) == 2
    assert len(u1["cat_ids"]) == 1


# ---------------------------------------------------------------- hide events (negative feedback)

HIDES: list[tuple[str, str, str, str, int, str]] = [
    ("h01", "u1", "i2", "hide", M10, "s1h"),  # after u1's last view of i2: hidden
    ("h02", "u2", "i3", "hide", H23M59 + 60, "s2a"),  # before u2's later views of i3: lifted
    ("h03", "u5", "i1", "hide", H1, "s5a"),  # u5 only ever hid i1
    ("h04", "u3", "i4", "hide", 0, "s3c"),  # exactly at as_of: not yet
]


def test_hide_events_are_no_interest_anywhere(scenario):
    """Hides change no interaction, user or item feature: the same rows as without them."""
    tables = ("interactions", "user_features", "item_features")
    before = {t: (build(scenario, t), rows_of(scenario, t)) for t in tables}
    insert_events(scenario, [(eid, u, i, t, ago(age), s) for eid, u, i, t, age, s in HIDES])
    after = {t: (build(scenario, t), rows_of(scenario, t)) for t in tables}
    for t in tables:
        assert after[t][0] == before[t][0]
        assert after[t][1] == [{**r, "created_timestamp": CREATED} for r in before[t][1]], t


def test_hide_events_count_against_the_category_and_hide_the_item(scenario):
    insert_events(scenario, [(eid, u, i, t, ago(age), s) for eid, u, i, t, age, s in HIDES])
    build(scenario, "interactions")
    build(scenario, "user_category_features")
    build(scenario, "user_profile")
    cats = keyed(rows_of(scenario, "user_category_features"), "user_id", "category_id")
    assert cats[("u1", "c1")]["hides_30d"] == 1
    assert cats[("u1", "c1")]["affinity_30d"] == pytest.approx(U1_C1)  # no weight of its own
    assert cats[("u1", "c1")]["events_30d"] == 4
    assert cats[("u2", "c2")]["hides_30d"] == 1
    assert cats[("u3", "c2")]["hides_30d"] == 0  # the hide at as_of is not yet
    assert cats[("u5", "c1")] | {"affinity_share_30d": 0.0} == {
        "user_id": "u5",
        "category_id": "c1",
        "affinity_30d": 0.0,
        "affinity_share_30d": 0.0,
        "events_30d": 0,
        "purchases_30d": 0,
        "hides_30d": 1,
        **STAMPS,
    }
    profiles = keyed(rows_of(scenario, "user_profile"), "user_id")
    assert profiles[("u1",)]["hidden_item_ids"] == ["i2"]
    assert "i2" in profiles[("u1",)]["hist_item_ids"]  # still part of the history (its views count)
    assert profiles[("u2",)]["hidden_item_ids"] is None  # u2 viewed i3 after hiding it
    assert profiles[("u3",)]["hidden_item_ids"] is None
    u5 = profiles[("u5",)]
    assert u5["hidden_item_ids"] == ["i1"] and u5["hist_item_ids"] is None
    for p in profiles.values():  # category arrays stay aligned
        if p["cat_ids"] is not None:
            assert len(p["cat_hides_30d"]) == len(p["cat_ids"])
    c1_pos = profiles[("u1",)]["cat_ids"].index("c1")
    assert profiles[("u1",)]["cat_hides_30d"][c1_pos] == 1


def test_user_profile_caps_hidden_items_most_recent_first(scenario, monkeypatch):
    from recs_pipeline.warehouse import features

    monkeypatch.setattr(features, "PROFILE_MAX_HIDDEN", 2)
    insert_events(
        scenario,
        [(f"hx{n}", "u9", f"i{n}", "hide", ago(3600 * (n + 1)), "s9") for n in range(1, 5)],
    )
    build(scenario, "interactions")
    build(scenario, "user_category_features")
    build(scenario, "user_profile")
    assert keyed(rows_of(scenario, "user_profile"), "user_id")[("u9",)]["hidden_item_ids"] == ["i1", "i2"]


# ---------------------------------------------------------------- shown items (no-repeat rotation)


def insert_exposure(con, request_id: str, user: str, age_s: float, items: list[str], shadow_of: str | None = None):
    con.execute(
        "INSERT INTO exposures (request_id, user_id, ts, model_version, n_items, file_hash, ingested_at, shadow_of) "
        "VALUES (?, ?, ?, 'v1', ?, ?, ?, ?)",
        [request_id, user, ago(age_s), len(items), FILE_HASH, INGESTED_AT, shadow_of],
    )
    con.executemany(
        "INSERT INTO exposure_items (request_id, position, item_id, score, source) VALUES (?, ?, ?, 1.0, 'als')",
        [(request_id, p + 1, item) for p, item in enumerate(items)],
    )


def test_user_profile_counts_shown_items_since_the_users_last_event_with_each(scenario):
    insert_exposure(scenario, "r1", "u1", H1S1 + 60, ["i1", "i4", "i5"])  # before u1's view of i1 at M59
    insert_exposure(scenario, "r2", "u1", M10, ["i4", "i5"])
    insert_exposure(scenario, "r3", "u1", 60, ["i5", "i4"])
    insert_exposure(scenario, "r4", "u1", 30, ["i9"], shadow_of="r3")  # a shadow list was never shown
    insert_exposure(scenario, "r5", "u1", D6, ["i8"])  # older than the 24 h window
    insert_exposure(scenario, "r6", "u1", 0, ["i7"])  # at as_of: not yet
    insert_exposure(scenario, "r7", "u6", M10, ["i2"])  # a user known only by what was shown
    build(scenario, "interactions")
    build(scenario, "user_category_features")
    build(scenario, "user_profile")
    profiles = keyed(rows_of(scenario, "user_profile"), "user_id")
    u1 = profiles[("u1",)]
    # most recently shown first; i1 is out: u1 viewed it after the list that showed it
    assert u1["shown_item_ids"] == ["i4", "i5"]
    assert u1["shown_counts"] == [3, 3]
    assert profiles[("u6",)]["shown_item_ids"] == ["i2"] and profiles[("u6",)]["hist_item_ids"] is None
    assert profiles[("u2",)]["shown_item_ids"] is None


# ---------------------------------------------------------------- point in time


def _snapshot_all(con) -> dict[str, list[dict]]:
    for table in FEATURE_TABLES:
        build(con, table)
    return {table: rows_of(con, table) for table in FEATURE_TABLES}


def test_events_at_or_after_as_of_change_no_snapshot(scenario):
    before = _snapshot_all(scenario)
    assert all(before.values())
    insert_events(
        scenario,
        [
            ("late1", "u1", "i1", "purchase", AS_OF, "s1z"),  # exactly at as_of
            ("late2", "u2", "i4", "add_to_cart", AS_OF + timedelta(microseconds=1), "s2z"),
            ("late3", "u3", "i2", "view", AS_OF + timedelta(hours=5), "s3z"),  # idle user comes back later
            ("late4", "u7", "i3", "view", AS_OF + timedelta(days=1), "s7z"),  # brand-new user later
        ],
    )
    after = _snapshot_all(scenario)
    assert after == before


def test_events_just_before_as_of_do_change_the_snapshot(scenario):
    # The counterpart of the test above: the same kind of event 1 µs before as_of is seen.
    before = _snapshot_all(scenario)
    insert_events(scenario, [("early1", "u3", "i2", "view", AS_OF - timedelta(microseconds=1), "s3z")])
    after = _snapshot_all(scenario)
    for table in FEATURE_TABLES:
        assert after[table] != before[table], table
    u3 = keyed(after["user_features"], "user_id")[("u3",)]
    assert (u3["views_1h"], u3["sessions_30d"], u3["top_category_id"]) == (1, 1, "c1")
    assert u3["seconds_since_last_event"] == pytest.approx(1e-6, abs=5e-7)  # epoch() doubles: sub-µs noise


def test_user_features_ignore_catalog_updates_after_as_of(scenario):
    build(scenario, "user_features")
    before = rows_of(scenario, "user_features")
    insert_item_versions(scenario, [("i1", "c1", 1000.0, True, AS_OF + timedelta(hours=1))])
    build(scenario, "user_features")
    assert rows_of(scenario, "user_features") == before


def test_user_category_features_ignore_catalog_updates_after_as_of(scenario):
    build(scenario, "user_category_features")
    before = rows_of(scenario, "user_category_features")
    insert_item_versions(scenario, [("i3", "c1", 30.0, False, AS_OF + timedelta(hours=1))])
    build(scenario, "user_category_features")
    assert rows_of(scenario, "user_category_features") == before


# ---------------------------------------------------------------- build_snapshot


KEYS = {
    "user_features": ("user_id",),
    "item_features": ("item_id",),
    "user_category_features": ("user_id", "category_id"),
    "interactions": ("user_id", "item_id"),
    "user_profile": ("user_id",),
}


@pytest.mark.parametrize("table", FEATURE_TABLES)
def test_rebuild_same_as_of_is_idempotent(scenario, table):
    for upstream in UPSTREAM.get(table, ()):
        build(scenario, upstream)
    first = build(scenario, table)
    rows = rows_of(scenario, table)
    second = build(scenario, table)
    assert first == second == len(rows) > 0
    assert rows_of(scenario, table) == rows
    keys = ", ".join(KEYS[table])
    dupes = scenario.execute(
        f"SELECT count(*) FROM (SELECT {keys}, event_timestamp FROM {table} GROUP BY ALL HAVING count(*) > 1)"
    ).fetchone()[0]
    assert dupes == 0


def _stamps(con, table: str) -> list[datetime]:
    return [r[0] for r in con.execute(f"SELECT DISTINCT event_timestamp FROM {table} ORDER BY 1").fetchall()]


def test_replaces_after_replaces_only_that_days_older_snapshot(scenario):
    day = datetime(2024, 6, 30, tzinfo=UTC)  # AS_OF is 12:00 on this day
    prev_day_end = day  # snapshot of 2024-06-29, stamped at its end
    two_days_ago = day - timedelta(days=1)
    morning = day + timedelta(hours=6)
    for t in (two_days_ago, prev_day_end, morning):
        build(scenario, "user_features", as_of=t)
    assert _stamps(scenario, "user_features") == [two_days_ago, prev_day_end, morning]
    n_prev = len(rows_of(scenario, "user_features", prev_day_end))

    # The day's snapshot moves forward from 06:00 to 12:00: the 06:00 one is replaced,
    # the previous days' (stamped at or before replaces_after) are kept untouched.
    build(scenario, "user_features", as_of=AS_OF, replaces_after=day)
    assert _stamps(scenario, "user_features") == [two_days_ago, prev_day_end, AS_OF]
    assert len(rows_of(scenario, "user_features", prev_day_end)) == n_prev
    assert len(rows_of(scenario, "user_features", AS_OF)) == 3


def test_without_replaces_after_only_the_same_stamp_is_replaced(scenario):
    just_before = AS_OF - timedelta(microseconds=1)
    build(scenario, "user_features", as_of=just_before)
    build(scenario, "user_features")
    build(scenario, "user_features")
    assert _stamps(scenario, "user_features") == [just_before, AS_OF]
    counts = scenario.execute(
        "SELECT count(*) FROM user_features GROUP BY event_timestamp ORDER BY event_timestamp"
    ).fetchall()
    assert counts == [(3,), (3,)]


def test_build_snapshot_rejects_naive_as_of_and_unknown_tables(con):
    with pytest.raises(ValueError, match="timezone-aware"):
        build_snapshot(con, "user_features", as_of=datetime(2024, 6, 30), created=CREATED)
    with pytest.raises(ValueError, match="unknown feature table"):
        build_snapshot(con, "events", as_of=AS_OF, created=CREATED)


def test_weighting_validates():
    with pytest.raises(ValueError, match="weights must be >= 0"):
        Weighting(view=-1.0)
    with pytest.raises(ValueError, match="half_life_days must be > 0"):
        Weighting(half_life_days=0)


# ---------------------------------------------------------------- snapshot_time, null_rates, export


DAY_START = datetime(2024, 6, 29, tzinfo=UTC)


def test_snapshot_time_end_of_day_when_data_goes_past_it():
    assert snapshot_time(DAY_START, datetime(2024, 6, 30, 5, tzinfo=UTC)) == datetime(2024, 6, 30, tzinfo=UTC)
    # Newest event exactly at the day's end: still the day's end.
    assert snapshot_time(DAY_START, datetime(2024, 6, 30, tzinfo=UTC)) == datetime(2024, 6, 30, tzinfo=UTC)


def test_snapshot_time_current_day_is_latest_event_plus_1us():
    latest = datetime(2024, 6, 29, 15, 30, 12, 345678, tzinfo=UTC)
    assert snapshot_time(DAY_START, latest) == datetime(2024, 6, 29, 15, 30, 12, 345679, tzinfo=UTC)
    assert snapshot_time(DAY_START, DAY_START) == DAY_START + timedelta(microseconds=1)


def test_snapshot_time_errors():
    with pytest.raises(ValueError, match="no events are stored yet"):
        snapshot_time(DAY_START, None)
    with pytest.raises(ValueError, match=r"no events on or after 2024-06-29"):
        snapshot_time(DAY_START, DAY_START - timedelta(microseconds=1))


def test_snapshot_time_from_the_warehouse(scenario, con):
    latest = latest_event_time(scenario)
    assert latest == AS_OF  # e08 / e17
    day = datetime(2024, 6, 30, tzinfo=UTC)
    assert snapshot_time(day, latest) == AS_OF + timedelta(microseconds=1)
    assert snapshot_time(day - timedelta(days=1), latest) == day


def test_latest_event_time_empty_warehouse(con):
    assert latest_event_time(con) is None


def test_null_rates(scenario):
    build(scenario, "user_features")
    rates = null_rates(scenario, "user_features", AS_OF)
    # Only u3 (of u1, u2, u3) lacks a top category and an average price.
    assert rates["top_category_id"] == pytest.approx(1 / 3)
    assert rates["avg_price_30d"] == pytest.approx(1 / 3)
    assert {k for k, v in rates.items() if v != 0.0} == {"top_category_id", "avg_price_30d"}
    empty = null_rates(scenario, "user_features", AS_OF + timedelta(days=1))
    assert set(empty.values()) == {0.0} and "user_id" in empty


def test_export_table_writes_all_snapshots(scenario, tmp_path):
    build(scenario, "item_features", as_of=AS_OF)
    build(scenario, "item_features", as_of=AS_OF - timedelta(days=2))
    path = export_table(scenario, "item_features", tmp_path / "features")
    assert path == tmp_path / "features" / "item_features.parquet"
    frame = pl.read_parquet(path)
    assert frame.height == 4 + 4  # i1..i4 known at both times
    assert frame["event_timestamp"].is_sorted()
    assert not list((tmp_path / "features").glob(".*"))
