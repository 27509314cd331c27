"""Retention (issue 14 items 5 and 2): after a purge nothing older than the cutoff is left in the
warehouse, the parquet under the home, the landed files or the online store, the rest is intact and the
ledger still adds up; ingested landed files past their window are deleted and never loaded again."""

import sqlite3
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from homes import copy_home

from recs_pipeline.data import landing
from recs_pipeline.privacy.retention import purge_old
from recs_pipeline.settings import RetentionSettings, SettingsError
from recs_pipeline.warehouse import db, ingest

TIMED = {
    "events": "ts",
    "exposures": "ts",
    "user_features": "event_timestamp",
    "item_features": "event_timestamp",
    "user_category_features": "event_timestamp",
    "interactions": "event_timestamp",
    "user_profile": "event_timestamp",
}


def older_and_newer(settings, cutoff: datetime) -> dict[str, tuple[int, int]]:
    with db.connect(settings.duckdb_path, read_only=True) as con:
        return {
            t: con.execute(
                f"SELECT count(*) FILTER ({c} < $c), count(*) FILTER ({c} >= $c) FROM {t}", {"c": cutoff}
            ).fetchone()
            for t, c in TIMED.items()
        }


def old_parquet_rows(settings, cutoff: datetime) -> dict[str, int]:
    """Rows older than the cutoff per parquet file under the home (the model registry aside)."""
    found = {}
    for path in settings.home.rglob("*.parquet"):
        if path.is_relative_to(settings.models_dir):
            continue
        frame = pl.read_parquet(path)
        for column in ("ts", "event_timestamp"):
            if column in frame.columns and isinstance(frame[column].dtype, pl.Datetime):
                times = frame[column]
                times = times.dt.replace_time_zone("UTC") if times.dtype.time_zone is None else times
                n = int((times < cutoff).sum())
                if n:
                    found[f"{path.relative_to(settings.home)}:{column}"] = n
    return found


def old_online_rows(settings, cutoff: datetime) -> int:
    with sqlite3.connect(settings.feast_dir / "online_store.db") as conn:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return sum(
            conn.execute(f'SELECT count(*) FROM "{t}" WHERE event_ts < ?', [int(cutoff.timestamp() * 1e6)]).fetchone()[
                0
            ]
            for t in tables
        )


@pytest.fixture(scope="module")
def purged(served_home, tmp_path_factory):
    """A copy of the served home (events 2026-09-01 .. 09-30) purged at a cutoff mid-way, with the
    counts before."""
    settings = copy_home(served_home, tmp_path_factory.mktemp("retention") / "home")
    with db.connect(settings.duckdb_path) as con:  # what other tests posted to the served home, as the sensor would
        ingest.ingest_landed(con, settings.landing_dir, now=datetime.now(UTC))
    now = datetime.now(UTC)
    cutoff = datetime(2026, 9, 20, tzinfo=UTC)
    before = older_and_newer(settings, cutoff)
    assert before["events"][0] > 0 and old_parquet_rows(settings, cutoff)  # there is something to purge
    # every online row is of the newest snapshot: one user's row ages as if no snapshot had written it since
    with sqlite3.connect(settings.feast_dir / "online_store.db") as conn:
        table = next(t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE '%user_profile'"))
        conn.execute(f'UPDATE "{table}" SET event_ts = ? WHERE rowid = 1', [int((cutoff.timestamp() - 86400) * 1e6)])
    assert old_online_rows(settings, cutoff) == 1
    report = purge_old(settings, RetentionSettings(retention_days=(now - cutoff) / timedelta(days=1)), now=now)
    return settings, report.cutoff, before, report


def test_nothing_older_than_the_cutoff_is_left_anywhere(purged):
    settings, cutoff, before, report = purged
    after = older_and_newer(settings, cutoff)
    assert {t: old for t, (old, _) in after.items() if old} == {}
    assert {t: new for t, (_, new) in after.items()} == {t: new for t, (_, new) in before.items()}
    assert report.warehouse_rows["events"] == before["events"][0]
    assert old_parquet_rows(settings, cutoff) == {}
    assert old_online_rows(settings, cutoff) == 0 and sum(report.online_rows.values()) == 1
    # the synthetic file landed today: rewritten without its old rows, not deleted
    assert report.landed_rewritten and not report.landed_deleted
    for path in landing.landed_files(settings.landing_dir, "events"):
        if path.suffix == ".parquet":
            ts = pl.read_parquet(path)["ts"]
        else:  # the service's posts (JSON lines)
            ts = pl.read_ndjson(path)["ts"].str.to_datetime(time_zone="UTC", time_unit="us")
        assert ts.min() >= cutoff, path.name


def test_the_ledger_still_adds_up_and_nothing_is_loaded_again(purged):
    settings, *_ = purged
    with db.connect(settings.duckdb_path) as con:
        unbalanced, loaded, stored = con.execute(
            "SELECT count(*) FILTER (rows_read <> loaded + quarantined + duplicates), sum(loaded), "
            "(SELECT count(*) FROM events) FROM ingest_ledger WHERE kind = 'events'"
        ).fetchone()
        assert unbalanced == 0 and loaded == stored
        outcomes = ingest.ingest_landed(con, settings.landing_dir, now=datetime.now(UTC))
        assert {o.status for o in outcomes} == {"already_ingested"}


def event_frame(prefix: str) -> pl.DataFrame:
    ts = datetime.now(UTC) - timedelta(hours=1)
    return pl.DataFrame(
        {
            "event_id": [f"{prefix}-{i}" for i in range(3)],
            "user_id": ["u1", "u2", "u3"],
            "item_id": ["i1", "i2", "i3"],
            "event_type": ["view"] * 3,
            "ts": [ts] * 3,
            "session_id": ["s1", "s2", "s3"],
        }
    )


def test_landing_retention_deletes_ingested_files_and_keeps_the_others(settings):
    ingested = landing.land_frame(event_frame("a"), settings.landing_dir, "events", "a.parquet")
    with db.connect(settings.duckdb_path) as con:
        assert ingest.ingest_file(con, ingested, "events", now=datetime.now(UTC)).status == "ingested"
    waiting = landing.land_frame(event_frame("b"), settings.landing_dir, "events", "b.parquet")
    content = ingested.read_bytes()
    later = datetime.now(UTC) + timedelta(days=2)  # both files landed more than a day before
    report = purge_old(settings, RetentionSettings(landing_retention_days=1), now=later)
    assert report.landed_deleted == ["events/a.parquet"]
    assert not ingested.exists() and waiting.exists()
    assert report.cutoff is None and report.warehouse_rows == {}  # event retention is off
    # the ledger keeps the deleted file's hash: a copy landed again is not loaded twice
    again = settings.landing_dir / "events" / "a-again.parquet"
    again.write_bytes(content)
    with db.connect(settings.duckdb_path) as con:
        assert ingest.ingest_file(con, again, "events", now=datetime.now(UTC)).status == "already_ingested"
        assert con.execute("SELECT count(*) FROM events").fetchone() == (3,)
    # within the window nothing goes
    assert purge_old(settings, RetentionSettings(landing_retention_days=1)).landed_deleted == []


def test_retention_is_off_by_default_and_refuses_a_non_positive_age(monkeypatch):
    monkeypatch.delenv("RECS_RETENTION_DAYS", raising=False)
    monkeypatch.delenv("RECS_LANDING_RETENTION_DAYS", raising=False)
    off = RetentionSettings.from_env()
    assert off.retention_days is None and off.landing_retention_days is None
    monkeypatch.setenv("RECS_RETENTION_DAYS", "0")
    with pytest.raises(SettingsError, match="RECS_RETENTION_DAYS"):
        RetentionSettings.from_env()
