"""Erase one user from every store of a pipeline home (issue 14 item 4; docs/PRIVACY.md).

:func:`forget_user` removes a raw user id from, in order (with a pseudonym key, ``RECS_PSEUDONYM_KEY``,
the landed files by the raw id, which is what they hold, and every other store by its pseudonym,
:mod:`recs_pipeline.privacy.pseudonyms`):

1. **landed files** (``landing/events``, ``landing/exposures``; items carry no user; the service's open
   event journals are landed first, :mod:`recs_pipeline.serving.journal`): each file holding
   the user's rows is rewritten without them (a temp file beside it, renamed over it after the
   warehouse commit, modification time kept so retention still ages it by landing);
2. **the warehouse** (one DuckDB transaction, ``sql/forget_user.sql``): events, exposures and their
   items, quarantined rows, the feature tables and the profile; the ingest ledger is kept balanced
   (each file's counts lose the erased rows) and a rewritten file's new sha256 is ledgered, so
   ingestion never loads it (or the original, whose row stays as ``erased``) again. The file is then
   compacted into a fresh copy (deleted rows stay in a DuckDB file's blocks otherwise);
3. **parquet** under the home outside the model registry (Feast's offline sources in ``features/``,
   the training workspace's exports, reports): every file with a ``user_id`` column, rewritten without
   the user's rows;
4. **ALS models**: the user's factor row, id and interaction row in every ``als/`` folder: each kept
   model version through :meth:`ModelRegistry.rewrite_files` (re-hashed and re-signed), and the
   training workspace's folds;
5. **the online store**: every row of a view keyed by ``user_id`` (features, profile, the live
   session), in the embedded SQLite store (deleted with ``secure_delete``, WAL truncated) or Redis.

The DuckDB file's lock is waited for like every writer does (:func:`recs_pipeline.warehouse.db.connect`).
It is not a Dagster job (a run's config would keep the raw id in Dagster's run storage), so it does not
take the ``duckdb`` pool: run it while no pipeline run is in progress (a feature export that read the
warehouse before the erasure could write the user's rows to parquet after it; a process holding the
DuckDB file open across the compaction writes to the replaced file), and keep the user away at the
edge meanwhile: a session the service writes during the erasure comes back. A service already serving
a rewritten model version keeps the factors it loaded until it loads a model again (restart it, or
promote a new version): :class:`~recs_pipeline.serving.app.ModelHolder` reloads on a new champion
version only, not on a changed folder.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import sqlite3
import tempfile
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, Field

from recs_pipeline.data.contract import USER_ID
from recs_pipeline.data.landing import file_format, scan_landing
from recs_pipeline.privacy import pseudonyms
from recs_pipeline.settings import Settings
from recs_pipeline.warehouse import db
from recs_pipeline.warehouse.ingest import file_sha256
from recs_pipeline.warehouse.sql import run_script, run_sql, scalar

log = logging.getLogger(__name__)

# Landed kinds whose rows name a user.
USER_KINDS = ("events", "exposures")
ALS_IDS_FILE = "als_ids.json"


class ErasureReport(BaseModel):
    """What :func:`forget_user` removed, where (counts only: the id is not repeated)."""

    warehouse_rows: dict[str, int] = Field(default_factory=dict, description="Rows deleted per DuckDB table.")
    landed_files: dict[str, int] = Field(
        default_factory=dict, description="Rows removed per rewritten landed file (<kind>/<name>)."
    )
    parquet_files: dict[str, int] = Field(
        default_factory=dict, description="Rows removed per rewritten parquet file (relative to the home)."
    )
    model_versions: dict[str, int] = Field(
        default_factory=dict, description="ALS user rows removed per model version (re-signed)."
    )
    als_workspace: dict[str, int] = Field(
        default_factory=dict, description="ALS user rows removed per training-workspace folder."
    )
    online_rows: dict[str, int] = Field(default_factory=dict, description="Online-store rows deleted per view.")
    skipped: list[str] = Field(
        default_factory=list, description="Files that may hold the user but could not be rewritten, with why."
    )

    @property
    def total(self) -> int:
        """Every row, file row and model row removed."""
        return sum(
            sum(part.values())
            for part in (
                self.warehouse_rows,
                self.landed_files,
                self.parquet_files,
                self.model_versions,
                self.als_workspace,
                self.online_rows,
            )
        )

    def lines(self) -> list[str]:
        """The report as text lines (the CLI prints them)."""
        out = [f"removed {self.total} rows in all"]
        for title, part in (
            ("warehouse", self.warehouse_rows),
            ("landed files", self.landed_files),
            ("parquet", self.parquet_files),
            ("model versions (re-signed)", self.model_versions),
            ("training workspace ALS", self.als_workspace),
            ("online store", self.online_rows),
        ):
            changed = {k: v for k, v in part.items() if v}
            out.append(f"{title}: " + (", ".join(f"{k} {v}" for k, v in sorted(changed.items())) or "nothing"))
        out.extend(f"skipped: {why}" for why in self.skipped)
        return out


def forget_user(settings: Settings, user_id: str, *, now: datetime | None = None) -> ErasureReport:
    """Remove ``user_id`` (the raw id, as the user and the landed files know it) from every store of the
    home at ``settings`` (module docstring); idempotent.

    Raises
    ------
    ValueError
        An empty ``user_id``.
    """
    if not user_id or not user_id.strip():
        raise ValueError("user_id: an empty id names no user")
    now = now or datetime.now(UTC)
    report = ErasureReport()
    rewritten = rewrite_landed(
        settings,
        tag="erasure",
        keep_rows=pl.col(USER_ID).ne_missing(user_id),
        keep_row=lambda row: row.get(USER_ID) != user_id,
        removed=report.landed_files,
        skipped=report.skipped,
    )
    stored_id = pseudonyms.pseudonym(user_id)  # what every store but the landing zone holds (the id without a key)
    # a failure leaves no copy of the user's rows behind
    replace_landed(rewritten, lambda: _forget_in_warehouse(settings, stored_id, now, rewritten, report))
    _forget_in_parquet(settings, stored_id, report)
    _forget_in_models(settings, stored_id, report)
    _forget_online(settings, stored_id, report)
    log.info("erased a user: %s", "; ".join(report.lines()))
    return report


def forget_command(settings: Settings, user_id: str) -> list[str]:
    """``recs forget USER``: erase the user and return the report's lines for the CLI to print.

    Raises
    ------
    ValueError
        An empty ``user_id``.
    """
    return forget_user(settings, user_id).lines()


# -- landed files ---------------------------------------------------------------------------------


# how much longer than a journal's flush interval erasure and retention wait for a live one to land
JOURNAL_WAIT_MARGIN_S = 10.0


def rewrite_landed(
    settings: Settings,
    *,
    tag: str,
    keep_rows: pl.Expr,
    keep_row: Callable[[dict[str, Any]], bool],
    removed: dict[str, int],
    skipped: list[str],
) -> list[tuple[Path, Path, dict[str, Any]]]:
    """Write each landed event or exposure file that loses rows (:func:`rewrite_without`) again beside
    it as ``.<tag>-<name>`` (not yet renamed: :func:`replace_landed`), keeping its modification time;
    the rows removed per file go to ``removed``, files that cannot be rewritten to ``skipped``.
    Returns (target, temp file, ledger values) per file.

    The service's open event journals are landed first (:func:`~recs_pipeline.serving.journal.land_journals`:
    a dead worker's at once, a live one's within its flush interval), so every stored event is in a
    landed file here; events posted after that are not (keep the user away at the edge meanwhile)."""
    from recs_pipeline.serving.journal import land_journals
    from recs_pipeline.settings import ServeSettings

    land_journals(
        settings.landing_dir, timeout_s=ServeSettings.from_env().collector_flush_seconds + JOURNAL_WAIT_MARGIN_S
    )
    out = []
    for landed in scan_landing(settings.landing_dir, USER_KINDS):
        path = settings.landing_dir / landed.kind / landed.name
        tmp = path.with_name(f".{tag}-{path.name}")
        try:
            kept, lost = rewrite_without(path, tmp, keep_rows=keep_rows, keep_row=keep_row)
        except UnsupportedRewrite as exc:
            skipped.append(f"{landed.key}: {exc}")
            continue
        if not lost:
            tmp.unlink(missing_ok=True)
            continue
        st = path.stat()
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        removed[landed.key] = lost
        values = {"old_hash": file_sha256(path), "new_hash": file_sha256(tmp), "bytes": tmp.stat().st_size}
        out.append((path, tmp, {**values, "rows_read": kept}))
    return out


def replace_landed(rewritten: list[tuple[Path, Path, dict[str, Any]]], in_warehouse: Callable[[], None]) -> None:
    """Run ``in_warehouse`` (the delete, with the rewritten files' ledger rows), then rename each
    rewritten landed file over its original; whatever fails, no temp copy is left behind."""
    try:
        in_warehouse()
        for target, tmp, _ in rewritten:
            os.replace(tmp, target)
    finally:
        for _, tmp, _ in rewritten:
            tmp.unlink(missing_ok=True)


def home_parquet_files(settings: Settings) -> list[Path]:
    """Every parquet file under the home but the landing zone's (rewritten with the landed files) and
    the model registry's (signed: rewritten through the registry), temp files aside."""
    skip = (settings.landing_dir, settings.models_dir)
    return [
        path
        for path in sorted(settings.home.rglob("*.parquet"))
        if not any(path.is_relative_to(s) for s in skip) and not path.name.startswith(".")
    ]


class UnsupportedRewrite(ValueError):
    """A landed file whose rows cannot be rewritten (its format, or unreadable)."""


def rewrite_without(
    path: Path, tmp: Path, *, keep_rows: pl.Expr, keep_row: Callable[[dict[str, Any]], bool]
) -> tuple[int, int]:
    """Write ``path``'s rows that are kept to ``tmp``, in its format; (kept, removed). Nothing is written
    when nothing is removed. Parquet rows are kept where ``keep_rows`` holds, rows of text files where
    ``keep_row(row)`` is true (the row as parsed: strings for CSV).

    Parquet keeps its schema; JSON lines keep every kept line's bytes (a line that is not JSON is
    kept); CSV is written again by the csv module. gzip is supported, zstd is not (no writer here).
    """
    fmt = file_format(path.name)
    if fmt is None:
        raise UnsupportedRewrite("not a format ingestion reads")
    if fmt.compression == "zstd":
        raise UnsupportedRewrite("zstd-compressed text is not rewritten (no zstd writer); erase it by hand")
    if fmt.format == "parquet":
        try:
            frame = pl.read_parquet(path)
        except Exception as exc:  # unreadable: ingestion rejected it too
            raise UnsupportedRewrite(f"unreadable parquet ({exc})") from exc
        try:
            kept = frame.filter(keep_rows)
        except pl.exceptions.PolarsError as exc:  # a column missing or of another type
            raise UnsupportedRewrite(f"rows not selectable ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
        removed = frame.height - kept.height
        if removed:
            kept.write_parquet(tmp)
        return kept.height, removed
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if fmt.compression == "gzip" else raw).decode("utf-8", errors="surrogateescape")
    if fmt.format == "jsonl":
        lines, removed = [], 0
        for line in text.splitlines(keepends=True):
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if isinstance(row, dict) and not keep_row(row):
                removed += 1
            else:
                lines.append(line)
        body = "".join(lines)
        kept_rows = sum(1 for line in lines if line.strip())
    else:
        rows = list(csv.reader(io.StringIO(text, newline="")))
        if not rows:
            return 0, 0
        header, data = rows[0], rows[1:]
        kept_list = [r for r in data if keep_row(dict(zip(header, r, strict=False)))]
        removed = len(data) - len(kept_list)
        buffer = io.StringIO(newline="")
        csv.writer(buffer, lineterminator="\n").writerows([header, *kept_list])
        body, kept_rows = buffer.getvalue(), len(kept_list)
    if removed:
        data_bytes = body.encode("utf-8", errors="surrogateescape")
        tmp.write_bytes(gzip.compress(data_bytes, mtime=0) if fmt.compression == "gzip" else data_bytes)
    return kept_rows, removed


# -- warehouse ------------------------------------------------------------------------------------


def _forget_in_warehouse(
    settings: Settings,
    user_id: str,
    now: datetime,
    rewritten: list[tuple[Path, Path, dict[str, Any]]],
    report: ErasureReport,
) -> None:
    with db.connect_for(settings) as con:
        run_sql(con, "forget_user_target", user_id=user_id, now=now)
        report.warehouse_rows = {store: int(n) for store, n in run_sql(con, "forget_user_counts").fetchall()}
        delete_keeping_ledger(con, "forget_user", [values for _, _, values in rewritten])
    if any(report.warehouse_rows.values()):
        compact_warehouse(settings)


def delete_keeping_ledger(con: Any, script: str, rewritten: list[dict[str, Any]]) -> None:
    """Run the delete ``script`` (an erasure's or a purge's, its targets staged) and sql/forget_ledger.sql
    in one transaction: the ledger's counts lose the deleted rows and ``rewritten`` (the landed files
    written again: old and new hash, bytes, rows) get their rows, so the conservation checks still hold."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE ledger_rewritten "
        "(old_hash VARCHAR, new_hash VARCHAR, bytes BIGINT, rows_read BIGINT)"
    )
    if rewritten:
        con.executemany("INSERT INTO ledger_rewritten VALUES ($old_hash, $new_hash, $bytes, $rows_read)", rewritten)
    con.execute("BEGIN TRANSACTION")
    try:
        run_script(con, script)
        run_script(con, "forget_ledger")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def compact_warehouse(settings: Settings) -> None:
    """Copy the DuckDB file into a fresh one and rename it over the old: deleted rows stay in the old
    file's blocks (CHECKPOINT and VACUUM do not rewrite them). Holds the file's lock while copying; a
    process that opens the file between the copy and the rename works on the replaced file."""
    path = settings.duckdb_path
    fresh = path.with_name(f".{path.name}.compact")
    fresh.unlink(missing_ok=True)
    with db.connect_for(settings) as con:
        name = scalar(con, "SELECT current_database()")
        con.execute(f"ATTACH '{fresh}' AS compacted")
        con.execute(f'COPY FROM DATABASE "{name}" TO compacted')
        con.execute("DETACH compacted")
    os.replace(fresh, path)
    path.with_name(path.name + ".wal").unlink(missing_ok=True)


# -- parquet --------------------------------------------------------------------------------------


def _forget_in_parquet(settings: Settings, user_id: str, report: ErasureReport) -> None:
    """Every parquet file of :func:`home_parquet_files` with a ``user_id`` column (the registry's:
    :func:`_forget_in_models`)."""
    for path in home_parquet_files(settings):
        removed = filter_parquet(path, pl.col(USER_ID) != user_id)
        if removed:
            report.parquet_files[str(path.relative_to(settings.home))] = removed


def filter_parquet(path: Path, keep: pl.Expr, *, column: str = USER_ID) -> int:
    """Rewrite ``path`` (atomically) keeping the rows where ``keep`` holds, when it has ``column``;
    returns the rows removed (0: the file is left as it is)."""
    if column not in pl.read_parquet_schema(path):
        return 0
    frame = pl.read_parquet(path)
    kept = frame.filter(keep | pl.col(column).is_null()) if column == USER_ID else frame.filter(keep)
    removed = frame.height - kept.height
    if removed:
        tmp = path.with_name(f".{path.name}.tmp")
        kept.write_parquet(tmp)
        os.replace(tmp, path)
    return removed


# -- models ---------------------------------------------------------------------------------------


def _forget_in_models(settings: Settings, user_id: str, report: ErasureReport) -> None:
    from recs_pipeline.models.registry import ModelIntegrityError, ModelRegistry

    registry = ModelRegistry(settings.models_dir)
    for mv in registry.versions():
        folders = sorted({Path(rel).parent for rel in mv.files if Path(rel).name == ALS_IDS_FILE})
        for folder in folders:
            with tempfile.TemporaryDirectory(prefix=".erasure-", dir=registry.root) as work:
                try:
                    removed = drop_als_user(mv.path / folder, user_id, Path(work))
                except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # a damaged file: unreadable
                    report.skipped.append(
                        f"model version {mv.version} {folder}: its ALS files could not be read ({type(exc).__name__});"
                        " they may hold the user: delete the version"
                    )
                    continue
                if not removed:
                    continue
                replaced = {str(folder / p.name): p for p in Path(work).iterdir()}
                try:
                    registry.rewrite_files(mv.version, replaced, reason="erasure of a user")
                except ModelIntegrityError:
                    # a version that does not verify is never served nor signed again; the user's rows
                    # still leave it (the erasure must not stop at it), unsigned, and the report says so
                    for rel, new in replaced.items():
                        os.replace(new, mv.path / rel)
                    report.skipped.append(
                        f"model version {mv.version} does not verify (changed outside the pipeline): the user's ALS"
                        " rows were removed from it but it was not signed again; it stays unservable, delete it"
                    )
                report.model_versions[mv.version] = report.model_versions.get(mv.version, 0) + removed
    for ids in sorted(settings.training_dir.rglob(ALS_IDS_FILE)) if settings.training_dir.is_dir() else []:
        with tempfile.TemporaryDirectory(prefix=".erasure-", dir=settings.home) as work:
            removed = drop_als_user(ids.parent, user_id, Path(work))
            for p in Path(work).iterdir():
                os.replace(p, ids.parent / p.name)
        if removed:
            report.als_workspace[str(ids.parent.relative_to(settings.home))] = removed


def drop_als_user(folder: Path, user_id: str, out: Path) -> int:
    """Write ``folder``'s ALS files without ``user_id`` (its factor row, id and interaction row) into
    ``out``; returns 1 when the model knew the user (0: nothing written)."""
    import numpy as np

    from recs_pipeline.models.retrieval.als import ALSRetriever

    meta = json.loads((folder / ALS_IDS_FILE).read_text())
    if user_id not in meta["user_ids"]:
        return 0
    als = ALSRetriever.load(folder)
    keep = als.user_ids != user_id
    factors = als.user_factors[keep]
    als.user_ids = als.user_ids[keep]
    als.model.user_factors = np.ascontiguousarray(factors)
    als.seen = als.seen[np.flatnonzero(keep)]
    als.save(out, compress=_is_compressed(folder / "als_seen.npz"))
    return 1


def _is_compressed(npz: Path) -> bool:
    import zipfile

    with zipfile.ZipFile(npz) as archive:
        return any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist())


# -- online store ---------------------------------------------------------------------------------


def _forget_online(settings: Settings, user_id: str, report: ErasureReport) -> None:
    if not (settings.feast_dir / "registry.db").exists() and settings.feast_yaml == "feature_store.yaml":
        return  # Feast never applied: no online store
    from recs_pipeline.feast.feast_store import open_store
    from recs_pipeline.feast.online_store import EntityRowSqliteOnlineStore

    store = open_store(settings)
    views = [v for v in store.list_feature_views() if USER_ID in v.join_keys]
    online = store._get_provider().online_store
    if isinstance(online, EntityRowSqliteOnlineStore):
        report.online_rows = _forget_sqlite(store.config, views, user_id)
    else:
        report.online_rows = _forget_redis(store.config, online, views, user_id)


def _names_user(key: bytes, user_id: str, version: int) -> bool:
    from feast.infra.key_encoding_utils import deserialize_entity_key

    entity = deserialize_entity_key(key, entity_key_serialization_version=version)
    return any(
        k == USER_ID and v.WhichOneof("val") == "string_val" and v.string_val == user_id
        for k, v in zip(entity.join_keys, entity.entity_values, strict=True)
    )


def _forget_sqlite(config: Any, views: list[Any], user_id: str) -> dict[str, int]:
    """Delete the user's rows of each view; deleted content is zeroed (``secure_delete``) and the WAL
    checkpointed and truncated, so no copy of the row stays in the file or beside it."""
    from recs_pipeline.feast.online_store import BUSY_TIMEOUT_S, _quote_id, db_path, table_name

    version = config.entity_key_serialization_version
    counts: dict[str, int] = {}
    conn = sqlite3.connect(db_path(config), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute("PRAGMA secure_delete=ON")
        for view in views:
            table = _quote_id(table_name(config, view))
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [table_name(config, view)]
            ).fetchone()
            if not exists:
                continue
            keys = [k for (k,) in conn.execute(f"SELECT entity_key FROM {table}") if _names_user(k, user_id, version)]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(f"DELETE FROM {table} WHERE entity_key = ?", [(k,) for k in keys])
            conn.execute("COMMIT")
            counts[view.name] = len(keys)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return counts


def _forget_redis(config: Any, online: Any, views: list[Any], user_id: str) -> dict[str, int]:
    """Delete the user's keys in Feast's Redis layout (one hash per entity key and project, holding
    every view of that key): scanned per join-key set, each key decoded and matched."""
    from feast.infra.key_encoding_utils import serialize_entity_key_prefix

    version = config.entity_key_serialization_version
    project = config.project.encode("utf-8")
    client = online._get_client(config.online_store)
    counts: dict[str, int] = {}
    by_keys: dict[tuple[str, ...], list[str]] = {}
    for view in views:
        by_keys.setdefault(tuple(sorted(view.join_keys)), []).append(view.name)
    for join_keys, names in by_keys.items():
        prefix = serialize_entity_key_prefix(list(join_keys), entity_key_serialization_version=version)
        doomed = [
            key
            for key in client.scan_iter(match=prefix + b"*" + project)
            if key.endswith(project) and _names_user(key[: -len(project)], user_id, version)
        ]
        if doomed:
            client.delete(*doomed)
        for name in names:
            counts[name] = len(doomed)
    return counts
