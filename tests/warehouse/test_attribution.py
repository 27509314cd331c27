"""Attribution of events to exposures (sql/exposure_outcomes.sql) on hand-built warehouse rows."""

from datetime import UTC, datetime, timedelta

from recs_pipeline.warehouse import db
from recs_pipeline.warehouse.sql import load_sql

T = datetime(2026, 11, 1, 12, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
INSERT_EXPOSURE = (
    "INSERT INTO exposures (request_id, user_id, ts, model_version, experiment, variant, shadow_of, n_items, "
    "file_hash, ingested_at) VALUES (?, ?, ?, 'v1', ?, ?, ?, 2, 'h', ?)"
)


def at(minutes: float) -> datetime:
    return T + timedelta(minutes=minutes)


def outcomes(con, window_s: float = 3600) -> dict[str, tuple]:
    rows = con.sql(
        load_sql("exposure_outcomes"), params={"since": EPOCH, "until": at(10_000), "window_s": window_s}
    ).fetchall()
    columns = ["request_id", "user_id", "ts", "model_version", "experiment", "variant", "n_items"]
    return {r[0]: r[len(columns) :] for r in rows}


def test_events_count_for_the_exposure_that_showed_the_item(settings):
    with db.connect(settings.duckdb_path) as con:
        exposures = [("r1", "u1", at(0), "e", "a"), ("r2", "u1", at(10), "e", "a"), ("r3", "u2", at(0), "e", "b")]
        # a shadow list of r1 (never shown) that holds every item: it takes no event and is no exposure
        con.execute(INSERT_EXPOSURE, ["s1", "u1", at(11), "shadow-x", "shadow", "r1", T])
        con.executemany("INSERT INTO exposure_items VALUES ('s1', ?, ?, 0.5, 'als')", [(1, "i1"), (2, "i2"), (3, "i3")])
        for request, user, ts, experiment, variant in exposures:
            con.execute(INSERT_EXPOSURE, [request, user, ts, experiment, variant, None, T])
        items = [("r1", 1, "i1"), ("r1", 2, "i2"), ("r2", 1, "i2"), ("r2", 2, "i3"), ("r3", 1, "i1"), ("r3", 2, "i9")]
        con.executemany("INSERT INTO exposure_items VALUES (?, ?, ?, 0.5, 'als')", items)
        con.executemany(
            "INSERT INTO item_versions VALUES (?, 'c', ?, true, ?, 'h', ?)",
            [("i2", 20.0, at(-100), T), ("i2", 25.0, at(30), T), ("i3", 7.0, at(-100), T)],
        )
        events = [
            ("e1", "u1", "i1", "view", at(1), None),  # r1 showed i1: r1 clicked
            ("e2", "u1", "i2", "view", at(12), None),  # r1 and r2 showed i2: the latest before it, r2
            ("e3", "u1", "i2", "purchase", at(40), None),  # r2 converted, at the price then (25)
            ("e4", "u1", "i3", "add_to_cart", at(11), "r2"),  # named request: r2 carted
            ("e5", "u1", "i1", "purchase", at(200), None),  # after the 1 h window of r1: nobody's
            ("e6", "u2", "i5", "view", at(1), None),  # r3 never showed i5
            ("e7", "u2", "i1", "view", at(-1), None),  # before r3: not caused by it
        ]
        con.executemany(
            "INSERT INTO events (event_id, user_id, item_id, event_type, ts, session_id, file_hash, ingested_at, "
            "request_id) VALUES (?, ?, ?, ?, ?, 's', 'h', ?, ?)",
            [(e, u, i, t, ts, T, r) for e, u, i, t, ts, r in events],
        )
        got = outcomes(con)
    # (clicked, carted, purchased, revenue)
    assert got["r1"] == (True, False, False, 0.0)
    assert got["r2"] == (True, True, True, 25.0)
    assert got["r3"] == (False, False, False, 0.0)
    assert "s1" not in got


def test_a_longer_window_attributes_the_late_purchase(settings):
    with db.connect(settings.duckdb_path) as con:
        con.execute(INSERT_EXPOSURE, ["r1", "u1", at(0), None, None, None, T])
        con.execute("INSERT INTO exposure_items VALUES ('r1', 1, 'i1', NULL, NULL)")
        con.execute(
            "INSERT INTO events (event_id, user_id, item_id, event_type, ts, session_id, file_hash, ingested_at) "
            "VALUES ('e1', 'u1', 'i1', 'purchase', ?, 's', 'h', ?)",
            [at(200), T],
        )
        assert outcomes(con, window_s=3600)["r1"][2] is False
        assert outcomes(con, window_s=6 * 3600)["r1"][2] is True
