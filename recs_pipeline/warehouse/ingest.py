"""Load landed files into the warehouse exactly once, quarantining bad rows with reasons.

Each file is one transaction: its good rows, its quarantined rows and its ledger row commit
together or not at all, so a process killed at any point loses and duplicates nothing on rerun.
The ledger is keyed by the sha256 of the file's content, so a file (or a re-landed copy under
another name) is loaded once. For every file ``rows_read = loaded + quarantined + duplicates``.

Landed files hold raw user ids; with a pseudonym key (``RECS_PSEUDONYM_KEY``, docs/PRIVACY.md) the
tables get their pseudonyms (:mod:`recs_pipeline.privacy.pseudonyms`, applied in ``sql/fresh_*.sql``
and ``sql/quarantine_rows.sql``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from recs_pipeline.data import contract
from recs_pipeline.data.landing import FileFormat, file_format, landed_files, unsupported_reason
from recs_pipeline.privacy import pseudonyms as pseudonyms_module
from recs_pipeline.privacy.pseudonyms import Pseudonyms
from recs_pipeline.warehouse.sql import first_row, run_sql, scalar

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "events": contract.REQUIRED_EVENT_COLUMNS,
    "items": (contract.ITEM_ID, contract.CATEGORY_ID, contract.AVAILABLE, contract.UPDATED_AT),
    "exposures": contract.REQUIRED_EXPOSURE_COLUMNS,
}
MAX_ID_LENGTH = 256
# Timestamps further ahead of the ingestion clock than this are quarantined as far-future.
FUTURE_TOLERANCE_S = 24 * 3600


# Parameters of each kind's validation SQL beyond the common ones.
_VALIDATION_PARAMS: dict[str, dict[str, Any]] = {
    "events": {"event_types": list(contract.ACCEPTED_EVENT_TYPES)},
    "exposures": {"max_items": contract.MAX_EXPOSURE_ITEMS},
}


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one landed file."""

    file_name: str
    file_hash: str
    kind: str
    status: str  # 'ingested', 'rejected' (unreadable as a whole) or 'already_ingested'
    rows_read: int = 0
    loaded: int = 0
    quarantined: int = 0
    duplicates: int = 0
    error: str | None = None
    seconds: float = 0.0


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's content, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class UnsupportedFile(ValueError):
    """A landed file in a format ingestion does not read (it is quarantined with this reason)."""


def _stage(con: duckdb.DuckDBPyConnection, path: Path, fmt: FileFormat) -> None:
    """Fill the temp table ``stage`` (row_no, raw JSON text, parse_error) from one file."""
    if fmt.format == "parquet":
        run_sql(con, "stage_parquet", path=str(path))
    elif fmt.format == "csv":
        con.execute("DROP TABLE IF EXISTS csv_rejects; DROP TABLE IF EXISTS csv_reject_scans")
        run_sql(con, "stage_csv", path=str(path), compression=fmt.compression)
        run_sql(con, "stage_csv_rejects")
    elif fmt.format == "jsonl":
        run_sql(con, "stage_jsonl", path=str(path), compression=fmt.compression)
    else:
        raise ValueError(f"no staging for format {fmt.format!r} of {path.name!r}")


def _column_problem(con: duckdb.DuckDBPyConnection, fmt: FileFormat, kind: str) -> str | None:
    """For tabular files (csv, parquet), a file-wide reason when required columns are missing."""
    if fmt.format == "jsonl":
        return None  # each JSON line carries its own keys; missing ones are reported per row
    row = con.execute("SELECT json_keys(raw::JSON) FROM stage WHERE parse_error IS NULL LIMIT 1").fetchone()
    if row is None:
        return None
    columns = list(row[0])
    missing = [c for c in REQUIRED_COLUMNS[kind] if c not in columns]
    if missing:
        return f"wrong columns: missing {', '.join(missing)} (found {', '.join(columns)[:200]})"
    return None


def ingest_file(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    kind: str,
    *,
    now: datetime,
    pseudonyms: Pseudonyms | None = None,
) -> FileOutcome:
    """Ingest one landed file of ``kind`` ('events', 'items' or 'exposures') in a single transaction.

    ``pseudonyms``: the user-id mapping to store (default: the environment's key, none = ids as landed).
    """
    if kind not in REQUIRED_COLUMNS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {tuple(REQUIRED_COLUMNS)}")
    started = time.perf_counter()
    path = Path(path)
    digest = file_sha256(path)
    if con.execute("SELECT 1 FROM ingest_ledger WHERE file_hash = ?", [digest]).fetchone():
        return FileOutcome(path.name, digest, kind, "already_ingested")
    pseudonyms = pseudonyms or pseudonyms_module.from_env()
    pseudonyms.register(con)  # sql/fresh_*.sql and sql/quarantine_rows.sql call pseudonym()
    common = {"file_hash": digest, "file_name": path.name, "kind": kind, "now": now}
    fmt = file_format(path.name)
    con.execute("BEGIN TRANSACTION")
    try:
        try:
            if fmt is None:
                raise UnsupportedFile(unsupported_reason(path.name))
            _stage(con, path, fmt)
        except (duckdb.Error, UnsupportedFile) as exc:
            # Unreadable as a whole (a format ingestion does not read, truncated parquet or gzip,
            # empty or binary file): counted as one quarantined record so the ledger still adds
            # up, and the file is not retried.
            con.execute("ROLLBACK")
            con.execute("BEGIN TRANSACTION")
            reason = str(exc) if isinstance(exc, UnsupportedFile) else str(exc).splitlines()[0][:500]
            if fmt is not None and fmt.compression != "none" and not isinstance(exc, UnsupportedFile):
                reason += f" (read as {fmt.compression}-compressed {fmt.format}, as its name says)"
            error = f"unreadable file: {reason}"
            log.warning("%s %s quarantined: %s", kind, path.name, error)
            con.execute(
                "INSERT INTO quarantine VALUES ($file_hash, $file_name, $kind, NULL, $reason, NULL, $now)",
                {**common, "reason": error},
            )
            outcome = FileOutcome(path.name, digest, kind, "rejected", 1, 0, 1, 0, error)
        else:
            assert fmt is not None  # staged
            problem = _column_problem(con, fmt, kind)
            run_sql(
                con,
                f"validate_{kind}",
                file_problem=problem,
                max_id_length=MAX_ID_LENGTH,
                now=now,
                future_tolerance_s=FUTURE_TOLERANCE_S,
                **_VALIDATION_PARAMS.get(kind, {}),
            )
            run_sql(con, "quarantine_rows", **common, pseudonymised=pseudonyms.enabled)
            rows_read = int(scalar(con, "SELECT count(*) FROM checked"))
            quarantined = int(scalar(con, "SELECT count(*) FROM checked WHERE reason IS NOT NULL"))
            if kind == "events":
                run_sql(con, "fresh_events")
                loaded = int(scalar(con, "SELECT count(*) FROM fresh"))
                run_sql(con, "insert_events", file_hash=digest, now=now, gap_s=contract.SESSION_GAP.total_seconds())
            elif kind == "exposures":
                run_sql(con, "fresh_exposures")
                loaded = int(scalar(con, "SELECT count(*) FROM fresh"))
                run_sql(con, "insert_exposure_items")
                run_sql(con, "insert_exposures", file_hash=digest, now=now)
            else:
                loaded = int(first_row(run_sql(con, "insert_items", file_hash=digest, now=now))[0])
            duplicates = rows_read - quarantined - loaded
            outcome = FileOutcome(
                path.name, digest, kind, "ingested", rows_read, loaded, quarantined, duplicates, problem
            )
        run_sql(
            con,
            "record_ledger",
            **common,
            bytes=path.stat().st_size,
            rows_read=outcome.rows_read,
            loaded=outcome.loaded,
            quarantined=outcome.quarantined,
            duplicates=outcome.duplicates,
            status=outcome.status,
            error=outcome.error,
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    seconds = time.perf_counter() - started
    log.info(
        "%s %s: read %d, loaded %d, quarantined %d, duplicates %d (%.2fs)",
        kind,
        path.name,
        outcome.rows_read,
        outcome.loaded,
        outcome.quarantined,
        outcome.duplicates,
        seconds,
    )
    return FileOutcome(**{**outcome.__dict__, "seconds": seconds})


def ingest_landed(
    con: duckdb.DuckDBPyConnection,
    landing_dir: Path,
    *,
    now: datetime,
    kinds: Iterable[str] = ("items", "events", "exposures"),
    progress: Callable[[FileOutcome], None] | None = None,
    pseudonyms: Pseudonyms | None = None,
) -> list[FileOutcome]:
    """Ingest every landed file not yet in the ledger; the catalog before events, exposures last.

    A bad file is quarantined and never stops the others. ``pseudonyms``: as :func:`ingest_file`'s.
    """
    pseudonyms = pseudonyms or pseudonyms_module.from_env()
    outcomes = []
    for kind in kinds:
        for path in landed_files(landing_dir, kind):
            outcome = ingest_file(con, path, kind, now=now, pseudonyms=pseudonyms)
            outcomes.append(outcome)
            if progress:
                progress(outcome)
    return outcomes


_check_con = threading.local()


def check_rows(kind: str, rows: Sequence[Mapping[str, Any]], *, now: datetime) -> list[str | None]:
    """The quarantine reason ingestion would give each row of ``kind`` (None = accepted), without a warehouse.

    Runs the very same ``sql/validate_<kind>.sql`` on an in-memory DuckDB (one per thread), so an
    API that accepts rows can never disagree with the ingestion that loads them later.
    """
    if kind not in REQUIRED_COLUMNS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {tuple(REQUIRED_COLUMNS)}")
    con = _checker()
    raws = [json.dumps(dict(r), default=str) for r in rows]
    con.execute("CREATE OR REPLACE TEMP TABLE stage (row_no BIGINT, raw VARCHAR, parse_error VARCHAR)")
    if raws:
        con.executemany("INSERT INTO stage VALUES (?, ?, NULL)", [(i, raw) for i, raw in enumerate(raws)])
    run_sql(
        con,
        f"validate_{kind}",
        file_problem=None,
        max_id_length=MAX_ID_LENGTH,
        now=now,
        future_tolerance_s=FUTURE_TOLERANCE_S,
        **_VALIDATION_PARAMS.get(kind, {}),
    )
    reasons: list[str | None] = [None] * len(raws)
    for row_no, reason in con.execute("SELECT row_no, reason FROM checked").fetchall():
        reasons[row_no] = reason
    return reasons


def valid_rows(path: Path, kind: str, *, now: datetime) -> pl.DataFrame:
    """The rows of one landed file that ingestion would accept (its staging and validation SQL, on
    this thread's in-memory DuckDB): columns as ``sql/validate_<kind>.sql`` types them, no warehouse.
    Raises :class:`UnsupportedFile` or ``duckdb.Error`` for a file ingestion would reject as a whole."""
    fmt = file_format(Path(path).name)
    if fmt is None:
        raise UnsupportedFile(unsupported_reason(Path(path).name))
    con = _checker()
    _stage(con, Path(path), fmt)
    run_sql(
        con,
        f"validate_{kind}",
        file_problem=_column_problem(con, fmt, kind),
        max_id_length=MAX_ID_LENGTH,
        now=now,
        future_tolerance_s=FUTURE_TOLERANCE_S,
        **_VALIDATION_PARAMS.get(kind, {}),
    )
    return con.sql("SELECT * EXCLUDE (raw, reason) FROM checked WHERE reason IS NULL ORDER BY row_no").pl()


def _checker() -> duckdb.DuckDBPyConnection:
    """This thread's in-memory DuckDB for validation without a warehouse."""
    con = getattr(_check_con, "con", None)
    if con is None:
        con = _check_con.con = duckdb.connect(":memory:")
        con.execute("SET TimeZone = 'UTC'")  # as the warehouse's sessions: a time without an offset is UTC
    return con


def check_events(rows: Sequence[Mapping[str, Any]], *, now: datetime) -> list[str | None]:
    """:func:`check_rows` of events."""
    return check_rows("events", rows, now=now)
