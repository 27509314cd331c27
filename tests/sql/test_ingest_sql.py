"""Golden tests of sessionisation in sql/insert_events.sql, driven through ingest.ingest_file.

Events without a session_id get one from a 30-minute inactivity gap, named
``<user_id>-<epoch ms of the session's first event>``; a new file's first event within 30 minutes
of the user's newest stored event continues that stored session; provided session ids are kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from recs_pipeline.data.contract import EVENT_SCHEMA, derive_session_id
from recs_pipeline.serving.session import SessionEvent, update_session
from recs_pipeline.warehouse import db, ingest

NOW = datetime(2024, 6, 30, 18, 0, tzinfo=UTC)


def t(hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(2024, 6, 30, hh, mm, ss, tzinfo=UTC)


def sid(user: str, start: datetime) -> str:
    """Expected generated id: user and the session's first event in epoch milliseconds (the contract's formula)."""
    return derive_session_id(user, start.timestamp())


def frame(rows: list[tuple]) -> pl.DataFrame:
    """rows: (event_id, user_id, ts, session_id); item and type are irrelevant here."""
    return pl.DataFrame(
        [
            {"event_id": e, "user_id": u, "item_id": "i1", "event_type": "view", "ts": ts, "session_id": s}
            for e, u, ts, s in rows
        ],
        schema=EVENT_SCHEMA,
    )


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with db.connect(tmp_path / "w.duckdb") as c:
        yield c


@pytest.fixture
def events_dir(tmp_path: Path) -> Path:
    d = tmp_path / "landing" / "events"
    d.mkdir(parents=True)
    return d


def sessions(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    return dict(con.execute("SELECT event_id, session_id FROM events ORDER BY event_id").fetchall())


# File 1 (parquet), deliberately not in time order.
FILE1 = [
    ("a3", "a", t(10, 49, 59), None),  # 29m59s after a2: same session
    ("a1", "a", t(10, 0), None),
    ("a2", "a", t(10, 20), None),  # 20m after a1: same session
    ("a4", "a", t(11, 20), None),  # 30m01s after a3: new session
    ("a5", "a", t(11, 50), None),  # exactly 30m after a4: same session (only a gap > 30m splits)
    ("b1", "b", t(10, 0), "sess-x"),
    ("b2", "b", t(13, 0), "sess-x"),  # provided ids are kept even across a 3h gap
    ("b3", "b", t(13, 5), "sess-y"),
    ("d1", "d", t(9, 0), None),
    ("f1", "f", t(11, 0), None),
]
EXPECTED_FILE1 = {
    "a1": sid("a", t(10, 0)),
    "a2": sid("a", t(10, 0)),
    "a3": sid("a", t(10, 0)),
    "a4": sid("a", t(11, 20)),
    "a5": sid("a", t(11, 20)),
    "b1": "sess-x",
    "b2": "sess-x",
    "b3": "sess-y",
    "d1": sid("d", t(9, 0)),
    "f1": sid("f", t(11, 0)),
}

# File 2 (CSV), landed after file 1 is stored.
FILE2 = [
    ("a6", "a", t(12, 10), None),  # 20m after stored a5: continues a's stored session
    ("a7", "a", t(12, 45), None),  # 35m after a6: new session
    ("a8", "a", t(13, 0), None),  # 15m after a7: same
    ("c1", "c", t(12, 0), None),  # user never seen: new session
    ("d2", "d", t(10, 0), None),  # 60m after stored d1: new session
    ("b4", "b", t(13, 20), None),  # 15m after b's stored sess-y: continues it
    ("e1", "e", t(14, 0), "given-1"),
    ("f2", "f", t(11, 30), None),  # exactly 30m after stored f1: continues it
]
EXPECTED_FILE2 = {
    "a6": sid("a", t(11, 20)),
    "a7": sid("a", t(12, 45)),
    "a8": sid("a", t(12, 45)),
    "c1": sid("c", t(12, 0)),
    "d2": sid("d", t(10, 0)),
    "b4": "sess-y",
    "e1": "given-1",
    "f2": sid("f", t(11, 0)),
}


def test_sessions_from_a_30_minute_gap(con, events_dir):
    path = events_dir / "one.parquet"
    frame(FILE1).write_parquet(path)
    outcome = ingest.ingest_file(con, path, "events", now=NOW)
    assert (outcome.status, outcome.rows_read, outcome.loaded, outcome.quarantined, outcome.duplicates) == (
        "ingested",
        10,
        10,
        0,
        0,
    )
    assert sessions(con) == EXPECTED_FILE1
    # The literal form of one generated id (2024-06-30T10:00:00Z = 1719741600 s).
    assert sessions(con)["a1"] == "a-1719741600000"


def test_ingestion_and_the_live_session_derive_the_same_id(con, events_dir):
    """The collector's pushed session and the same events ingested later carry one id (sub-ms start)."""
    start = datetime(2024, 6, 30, 10, 0, 0, 999_999, tzinfo=UTC)
    times = [start, start + timedelta(minutes=5)]
    path = events_dir / "live.parquet"
    frame([(f"l{i}", "l", ts, None) for i, ts in enumerate(times)]).write_parquet(path)
    ingest.ingest_file(con, path, "events", now=NOW)
    pushed = update_session("l", None, [SessionEvent("i1", "view", ts.timestamp()) for ts in times], now=NOW)
    assert sessions(con)["l0"] == sessions(con)["l1"] == pushed["session_id"] == "l-1719741600999"


def test_second_file_continues_the_stored_session(con, events_dir):
    first, second = events_dir / "one.parquet", events_dir / "two.csv"
    frame(FILE1).write_parquet(first)
    frame(FILE2).write_csv(second)
    ingest.ingest_file(con, first, "events", now=NOW)
    outcome = ingest.ingest_file(con, second, "events", now=NOW)
    assert (outcome.status, outcome.loaded, outcome.quarantined) == ("ingested", 8, 0)
    assert sessions(con) == {**EXPECTED_FILE1, **EXPECTED_FILE2}


def test_timestamps_and_bookkeeping_are_stored(con, events_dir):
    path = events_dir / "one.parquet"
    frame(FILE1).write_parquet(path)
    outcome = ingest.ingest_file(con, path, "events", now=NOW)
    rows = con.execute(
        "SELECT event_id, ts, file_hash, ingested_at FROM events WHERE event_id IN ('a3', 'b2') ORDER BY event_id"
    ).fetchall()
    assert rows == [("a3", t(10, 49, 59), outcome.file_hash, NOW), ("b2", t(13, 0), outcome.file_hash, NOW)]


def test_reingesting_a_file_changes_nothing(con, events_dir):
    path = events_dir / "one.parquet"
    frame(FILE1).write_parquet(path)
    ingest.ingest_file(con, path, "events", now=NOW)
    before = sessions(con)
    again = ingest.ingest_file(con, path, "events", now=NOW)
    assert again.status == "already_ingested"
    # Same rows under another file content (a CSV copy): all duplicates, sessions untouched.
    copy = events_dir / "copy.csv"
    frame(FILE1).write_csv(copy)
    dup = ingest.ingest_file(con, copy, "events", now=NOW)
    assert (dup.status, dup.loaded, dup.duplicates) == ("ingested", 0, 10)
    assert sessions(con) == before
