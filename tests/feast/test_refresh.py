"""The real-time refresh: landing-zone cursor, and affected entities recomputed in temp tables.

The refresh must write, for every affected user and item, exactly the rows a full
``build_snapshot`` at the same as-of time produces (with and without restricting the events to the
affected entities), write nothing for other entities, and leave every persistent table as it was.
"""

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from recs_pipeline.data import landing
from recs_pipeline.data.contract import EVENT_SCHEMA, ITEM_SCHEMA
from recs_pipeline.data.landing import LandedFile, scan_landing
from recs_pipeline.data.synthetic import SyntheticConfig, write_synthetic
from recs_pipeline.feast import refresh
from recs_pipeline.feast.refresh import GRACE_NS, LandingCursor, new_landed_files, run_key
from recs_pipeline.settings import Settings
from recs_pipeline.warehouse import features, ingest
from recs_pipeline.warehouse.features import Weighting

CREATED = datetime(2026, 11, 1, 12, tzinfo=UTC)
NEW_USER = "u-brand-new"


# --------------------------------------------------------------------------------------------
# The landing-zone cursor (no DuckDB, no file contents)
# --------------------------------------------------------------------------------------------


def f(name: str, landed_s: float, size: int = 10, kind: str = "events") -> LandedFile:
    return LandedFile(kind, name, size, int(landed_s * 1e9))


def test_scan_lists_visible_files_with_size_and_rename_time(tmp_path: Path):
    frame = pl.DataFrame({"a": [1, 2]})
    before = time.time_ns()
    landing.land_frame(frame, tmp_path, "events", "b.parquet")
    landing.land_frame(frame, tmp_path, "items", "a.csv")
    (tmp_path / "events" / ".in-flight.parquet.tmp").write_text("x")  # being written: not listed yet
    (tmp_path / "events" / "notes.txt").write_text("x")  # listed: ingestion quarantines it with a reason
    found = scan_landing(tmp_path)
    assert [x.key for x in found] == ["events/b.parquet", "items/a.csv", "events/notes.txt"]  # oldest landing first
    assert found[0].size == (tmp_path / "events" / "b.parquet").stat().st_size
    assert all(x.landed_ns >= before - GRACE_NS for x in found)
    assert scan_landing(tmp_path / "nowhere") == []


def test_ctime_not_mtime_orders_a_file_moved_in_with_an_old_mtime(tmp_path: Path):
    (tmp_path / "events").mkdir()
    first = tmp_path / "events" / "first.csv"
    first.write_text("x")
    cursor = new_landed_files(scan_landing(tmp_path), LandingCursor())[1]
    old = tmp_path / "old.csv"
    old.write_text("y")
    os.utime(old, (0, 0))  # written long ago, then published with mv (mtime kept)
    time.sleep(0.01)
    old.rename(tmp_path / "events" / "old.csv")
    batch, _ = new_landed_files(scan_landing(tmp_path), cursor)
    assert [x.key for x in batch] == ["events/old.csv"]


def test_cursor_sees_each_file_once_and_batches_oldest_first():
    files = [f("a.csv", 100), f("b.csv", 101), f("c.csv", 102)]
    batch, cursor = new_landed_files(files, LandingCursor(), limit=2)
    assert [x.name for x in batch] == ["a.csv", "b.csv"]
    batch2, cursor2 = new_landed_files(files, cursor, limit=2)
    assert [x.name for x in batch2] == ["c.csv"]
    assert new_landed_files(files, cursor2) == ([], cursor2)
    # only files landed within the grace window are remembered by name: the cursor stays small
    later = [*files, f("d.csv", 200)]
    batch3, cursor3 = new_landed_files(later, cursor2)
    assert [x.name for x in batch3] == ["d.csv"]
    assert cursor3.recent == {("events/d.csv", int(200e9))}


def test_cursor_handles_equal_timestamps_late_renames_and_republished_names():
    cursor = new_landed_files([f("a.csv", 100)], LandingCursor())[1]
    # same timestamp (coarse clock) or slightly older (renamed just after the scan): still new
    batch, cursor = new_landed_files([f("a.csv", 100), f("b.csv", 100), f("c.csv", 99.5)], cursor)
    assert [x.name for x in batch] == ["c.csv", "b.csv"]
    # a seen name published again (new content, new rename time) is new
    batch, _ = new_landed_files([f("a.csv", 150, size=11), f("b.csv", 100), f("c.csv", 99.5)], cursor)
    assert [x.name for x in batch] == ["a.csv"]


def test_cursor_round_trips_as_json_and_rejects_garbage():
    cursor = new_landed_files([f("a.csv", 100), f("b.csv", 101, kind="items")], LandingCursor())[1]
    assert LandingCursor.decode(cursor.encode()) == cursor
    assert LandingCursor.decode(None) == LandingCursor() == LandingCursor.decode("")
    with pytest.raises(ValueError, match="reset the sensor's cursor"):
        LandingCursor.decode("{not json")


def test_run_key_is_derived_from_the_files():
    a, b = f("a.csv", 100), f("b.csv", 101)
    assert run_key([a, b]) == run_key([b, a])
    assert run_key([a, b]) != run_key([a, f("b.csv", 101, size=11)])
    assert run_key([a]) != run_key([a, b])
    assert run_key([a]).startswith("landing-")


# --------------------------------------------------------------------------------------------
# The refresh, against full snapshots at the same as-of time
# --------------------------------------------------------------------------------------------


def events_frame(rows: list[tuple[str, str, str, str, datetime]]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {"event_id": e, "user_id": u, "item_id": i, "event_type": t, "ts": ts, "session_id": None}
            for e, u, i, t, ts in rows
        ],
        schema=EVENT_SCHEMA,
    )


@pytest.fixture
def warehouse_with_new_files(settings: Settings, con: duckdb.DuckDBPyConnection):
    """Synthetic history ingested, then one new events file and one catalog update ingested."""
    summary = write_synthetic(SyntheticConfig(n_events=4000, seed=5, days=12), settings.landing_dir)
    ingest.ingest_landed(con, settings.landing_dir, now=datetime.now(UTC))
    old_user, item_a, item_b = con.execute(
        "SELECT user_id, item_id, (SELECT max(item_id) FROM items) FROM events ORDER BY ts DESC LIMIT 1"
    ).fetchone()
    changed_item = con.execute("SELECT min(item_id) FROM items").fetchone()[0]
    t = summary.last_ts + timedelta(minutes=5)
    new_events = events_frame(
        [
            ("n1", NEW_USER, item_a, "view", t),
            ("n2", NEW_USER, item_b, "view", t + timedelta(seconds=30)),
            ("n3", NEW_USER, item_b, "add_to_cart", t + timedelta(seconds=40)),
            ("n4", old_user, item_b, "purchase", t + timedelta(seconds=50)),
            ("n5", old_user, item_a, "hide", t + timedelta(seconds=55)),  # negative feedback
        ]
    )
    catalog = pl.DataFrame(
        [{"item_id": changed_item, "category_id": "c-new", "price": 1.5, "available": True, "updated_at": t}],
        schema=ITEM_SCHEMA,
    )
    paths = [
        landing.land_frame(new_events, settings.landing_dir, "events", "new.parquet"),
        landing.land_frame(catalog, settings.landing_dir, "items", "update.parquet"),
    ]
    outcomes = ingest.ingest_landed(con, settings.landing_dir, now=datetime.now(UTC))
    assert {o.file_name: o.loaded for o in outcomes if o.status == "ingested"} == {
        "update.parquet": 1,
        "new.parquet": 5,
    }
    hashes = [ingest.file_sha256(p) for p in paths]
    return con, hashes, {NEW_USER, old_user}, {item_a, item_b, changed_item}


def persistent_fingerprint(con: duckdb.DuckDBPyConnection) -> dict[str, tuple]:
    return {
        t: con.execute(f"SELECT count(*), sum(hash(COLUMNS(*))) FROM {t}").fetchone()  # noqa: S608
        for t in (*features.FEATURE_TABLES, "events", "item_versions", "ingest_ledger")
    }


def shadows(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Temp tables of a refresh still on the connection (ingestion keeps its own staging tables)."""
    names = {*features.FEATURE_TABLES, "events", "refresh_users", "refresh_items"}
    return {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()} & names


def collector() -> tuple[dict[str, list[pa.Table]], object]:
    written: dict[str, list[pa.Table]] = {}

    def write(view: str, rows: pa.Table) -> None:
        assert {"event_timestamp", "created_timestamp", *features.FEATURE_KEYS[view]} <= set(rows.column_names)
        written.setdefault(view, []).append(rows)

    return written, write


def frames(written: dict[str, list[pa.Table]]) -> dict[str, pl.DataFrame]:
    return {view: pl.from_arrow(pa.concat_tables(parts)) for view, parts in written.items()}


@pytest.mark.parametrize("restrict_events", [True, False], ids=["affected-events", "all-events"])
def test_refresh_writes_exactly_the_full_snapshot_rows_of_affected_entities(warehouse_with_new_files, restrict_events):
    con, hashes, users, items = warehouse_with_new_files
    before = persistent_fingerprint(con)
    written, write = collector()

    result = refresh.refresh_online(
        con, write, file_hashes=hashes, created=CREATED, weighting=Weighting(), restrict_events=restrict_events
    )

    latest = features.latest_event_time(con)
    assert result.as_of == latest + timedelta(microseconds=1)  # the data's now, not the wall clock
    assert (result.events, result.users, result.items) == (5, len(users), len(items))
    assert set(result.written) == set(features.FEAST_TABLES)
    assert set(result.seconds) == {"affected", "compute", "write", "total"}
    # nothing persistent changed, and no shadow is left on the connection
    assert persistent_fingerprint(con) == before
    assert shadows(con) == set()

    got = frames(written)
    for table in features.FEATURE_TABLES:  # the oracle: full snapshots at the same as_of
        features.build_snapshot(con, table, as_of=result.as_of, created=CREATED)
    for view in features.FEAST_TABLES:
        keys = list(features.FEATURE_KEYS[view])
        key = "user_id" if "user_id" in keys else "item_id"
        expected = (
            con.sql(f"SELECT * FROM {view} WHERE event_timestamp = $as_of", params={"as_of": result.as_of})  # noqa: S608
            .pl()
            .filter(pl.col(key).is_in(list(users if key == "user_id" else items)))
            .sort(keys)
        )
        assert expected.height > 0, view
        assert result.written[view] == expected.height
        assert set(got[view][key]) == set(expected[key])  # affected entities only
        assert_frame_equal(got[view].sort(keys), expected, check_exact=False, rel_tol=1e-12, abs_tol=1e-12)


def test_new_user_rows_are_what_the_new_file_says(warehouse_with_new_files):
    con, hashes, _, _ = warehouse_with_new_files
    written, write = collector()
    refresh.refresh_online(con, write, file_hashes=hashes[:1], created=CREATED, weighting=Weighting())
    user = frames(written)["user_features"].filter(pl.col("user_id") == NEW_USER).row(0, named=True)
    assert (user["views_1h"], user["carts_1h"], user["distinct_items_30d"]) == (2, 1, 2)
    profile = frames(written)["user_profile"].filter(pl.col("user_id") == NEW_USER).row(0, named=True)
    assert len(profile["hist_item_ids"]) == 2


def test_a_hide_reaches_the_profile_and_no_interest_feature(warehouse_with_new_files):
    con, hashes, users, items = warehouse_with_new_files
    old_user = next(u for u in users if u != NEW_USER)
    hidden = con.execute("SELECT item_id FROM events WHERE event_type = 'hide'").fetchone()[0]
    written, write = collector()
    refresh.refresh_online(con, write, file_hashes=hashes[:1], created=CREATED, weighting=Weighting())
    profile = frames(written)["user_profile"].filter(pl.col("user_id") == old_user).row(0, named=True)
    assert profile["hidden_item_ids"] == [hidden]
    assert hidden in profile["hist_item_ids"]  # the views before the hide still count as history


def test_unknown_files_refresh_nothing(warehouse_with_new_files):
    con, _, _, _ = warehouse_with_new_files
    written, write = collector()
    result = refresh.refresh_online(con, write, file_hashes=["0" * 64], created=CREATED, weighting=Weighting())
    assert (result.as_of, result.users, result.items, written) == (None, 0, 0, {})


def test_refresh_rejects_views_that_are_not_feature_tables(con):
    with pytest.raises(ValueError, match="not feature tables"):
        refresh.refresh_online(
            con, lambda v, rows: None, file_hashes=[], created=CREATED, weighting=Weighting(), views=["nope"]
        )


def test_shadows_are_dropped_when_a_refresh_fails(warehouse_with_new_files):
    con, hashes, _, _ = warehouse_with_new_files

    def failing(view: str, rows: pa.Table) -> None:
        raise RuntimeError("online store down")

    with pytest.raises(RuntimeError, match="online store down"):
        refresh.refresh_online(con, failing, file_hashes=hashes, created=CREATED, weighting=Weighting())
    assert shadows(con) == set()
    assert con.execute("SELECT count(*) FROM user_features").fetchone()[0] == 0  # the persistent table again
