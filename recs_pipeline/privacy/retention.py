"""Retention of old data (issue 14 items 5 and 2; docs/PRIVACY.md), pure logic under the ``retention``
schedule of ``recs_pipeline/defs/privacy.py``.

:func:`purge_old` with ``RECS_RETENTION_DAYS`` set removes everything older than ``now - days``:

* **the warehouse** (``sql/purge_old.sql``): events and exposures by their time, quarantined rows by
  when they were quarantined, feature snapshots by their as-of time; the ingest ledger stays balanced
  (``sql/forget_ledger.sql``) and the file is compacted (deleted rows leave no bytes behind);
* **landed event and exposure files**: a file landed before the cutoff and ingested is deleted (its
  ledger row keeps its sha256 and counts, so a copy is never loaded again); a newer file holding rows
  older than the cutoff is rewritten without them (ledgered under its new hash, like an erasure);
* **parquet** under the home outside the landing zone and the model registry: rows whose ``ts`` or
  ``event_timestamp`` is older than the cutoff (Feast's offline sources, the training exports);
* **the SQLite online store**: rows whose event time is older than the cutoff (a user or item not seen
  in a snapshot since).

With ``RECS_LANDING_RETENTION_DAYS`` set, landed files of every kind ingested and landed more than that
many days ago are deleted; files not yet in the ledger are always kept.

Not purged: model bundles (their factors were fitted on older events: retrain and prune versions),
the catalog (no personal data), Feast's Redis store (keys are overwritten by the next
materialisation; docs/PRIVACY.md).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, Field

from recs_pipeline.data.contract import TS
from recs_pipeline.data.landing import KINDS, scan_landing
from recs_pipeline.privacy.erasure import (
    USER_KINDS,
    compact_warehouse,
    delete_keeping_ledger,
    home_parquet_files,
    replace_landed,
    rewrite_landed,
)
from recs_pipeline.settings import RetentionSettings, Settings
from recs_pipeline.warehouse import db
from recs_pipeline.warehouse.ingest import file_sha256
from recs_pipeline.warehouse.sql import run_sql

log = logging.getLogger(__name__)

SNAPSHOT_TIME = "event_timestamp"
TIME_COLUMNS = (TS, SNAPSHOT_TIME)


class RetentionReport(BaseModel):
    """What :func:`purge_old` removed (counts per place)."""

    cutoff: datetime | None = Field(None, description="Data older than this was purged (None: retention off).")
    landing_cutoff: datetime | None = Field(None, description="Ingested files landed before this were deleted.")
    warehouse_rows: dict[str, int] = Field(default_factory=dict, description="Rows deleted per DuckDB table.")
    landed_deleted: list[str] = Field(default_factory=list, description="Landed files deleted (<kind>/<name>).")
    landed_rewritten: dict[str, int] = Field(default_factory=dict, description="Old rows removed per landed file.")
    parquet_files: dict[str, int] = Field(default_factory=dict, description="Rows removed per parquet file.")
    online_rows: dict[str, int] = Field(default_factory=dict, description="Online rows deleted per table.")
    skipped: list[str] = Field(default_factory=list, description="Files that could not be rewritten, with why.")


def purge_old(settings: Settings, retention: RetentionSettings, *, now: datetime | None = None) -> RetentionReport:
    """Apply the retention settings to the home at ``settings`` (module docstring); nothing when both are off."""
    now = now or datetime.now(UTC)
    report = RetentionReport()
    if retention.retention_days is not None:
        report.cutoff = now - timedelta(days=retention.retention_days)
        _purge_events(settings, report.cutoff, report)
    if retention.landing_retention_days is not None:
        report.landing_cutoff = now - timedelta(days=retention.landing_retention_days)
        report.landed_deleted += delete_ingested_files(settings, report.landing_cutoff, KINDS)
    log.info("retention: %s", report.model_dump_json(exclude_defaults=True))
    return report


def _purge_events(settings: Settings, cutoff: datetime, report: RetentionReport) -> None:
    # files landed before the cutoff and ingested go whole; newer ones lose their old rows
    report.landed_deleted += delete_ingested_files(settings, cutoff, USER_KINDS)
    rewritten = rewrite_landed(
        settings,
        tag="retention",
        keep_rows=pl.col(TS).is_null() | (pl.col(TS) >= cutoff),
        keep_row=lambda row: _is_recent(row.get(TS), cutoff),
        removed=report.landed_rewritten,
        skipped=report.skipped,
    )

    def in_warehouse() -> None:
        with db.connect_for(settings) as con:
            run_sql(con, "purge_target", cutoff=cutoff)
            report.warehouse_rows = {s: int(n) for s, n in run_sql(con, "purge_counts", cutoff=cutoff).fetchall()}
            delete_keeping_ledger(con, "purge_old", [values for _, _, values in rewritten])

    replace_landed(rewritten, in_warehouse)
    if any(report.warehouse_rows.values()):
        compact_warehouse(settings)
    _purge_parquet(settings, cutoff, report)
    report.online_rows = _purge_online(settings, cutoff)


def delete_ingested_files(settings: Settings, cutoff: datetime, kinds: tuple[str, ...]) -> list[str]:
    """Delete the landed files of ``kinds`` landed before ``cutoff`` whose content the ledger holds
    (ingested or rejected as a whole); returns their keys. A file not yet ingested is kept."""
    landed = [f for f in scan_landing(settings.landing_dir, kinds) if f.landed_at < cutoff.timestamp()]
    if not landed:
        return []
    paths = {f.key: settings.landing_dir / f.kind / f.name for f in landed}
    hashes = {key: file_sha256(path) for key, path in paths.items()}
    with db.connect_for(settings) as con:
        known = {
            h
            for (h,) in con.execute(
                "SELECT file_hash FROM ingest_ledger WHERE file_hash IN (SELECT unnest($hashes))",
                {"hashes": sorted(set(hashes.values()))},
            ).fetchall()
        }
    deleted = []
    for key, path in paths.items():
        if hashes[key] in known:
            path.unlink(missing_ok=True)
            deleted.append(key)
    return deleted


def _is_recent(value: Any, cutoff: datetime) -> bool:
    """A text row's time is at or after the cutoff (a time that does not parse is kept: ingestion
    quarantined it, and the quarantine is purged by its own time)."""
    if not isinstance(value, str):
        return True
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return True
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)) >= cutoff


def _purge_parquet(settings: Settings, cutoff: datetime, report: RetentionReport) -> None:
    for path in home_parquet_files(settings):
        schema = pl.read_parquet_schema(path)
        columns = [c for c in TIME_COLUMNS if isinstance(schema.get(c), pl.Datetime)]
        if not columns:
            continue
        frame = pl.read_parquet(path)
        keep = pl.all_horizontal([pl.col(c).is_null() | (_utc(c, schema[c]) >= cutoff) for c in columns])
        kept = frame.filter(keep)
        if kept.height < frame.height:
            tmp = path.with_name(f".{path.name}.tmp")
            kept.write_parquet(tmp)
            os.replace(tmp, path)
            report.parquet_files[str(path.relative_to(settings.home))] = frame.height - kept.height


def _utc(column: str, dtype: Any) -> pl.Expr:
    """A datetime column in UTC (a column without a zone holds UTC, as in the warehouse)."""
    col = pl.col(column)
    return col.dt.replace_time_zone("UTC") if dtype.time_zone is None else col.dt.convert_time_zone("UTC")


def _purge_online(settings: Settings, cutoff: datetime) -> dict[str, int]:
    """Rows of the SQLite online store whose event time is older than the cutoff (``secure_delete``);
    nothing for another store."""
    from recs_pipeline.feast.feast_store import open_store
    from recs_pipeline.feast.online_store import BUSY_TIMEOUT_S, EntityRowSqliteOnlineStore, db_path

    if settings.feast_yaml == "feature_store.yaml" and not (settings.feast_dir / "registry.db").exists():
        return {}
    store = open_store(settings)
    if not isinstance(store._get_provider().online_store, EntityRowSqliteOnlineStore):
        return {}
    path = db_path(store.config)
    if not Path(path).exists():
        return {}
    counts = {}
    cutoff_us = int(cutoff.timestamp() * 1_000_000)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute("PRAGMA secure_delete=ON")
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')}
            if "event_ts" not in columns:
                continue
            counts[table] = conn.execute(f'DELETE FROM "{table}" WHERE event_ts < ?', [cutoff_us]).rowcount
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return counts
