"""The bridge to Feast: apply the feature repo, materialise snapshots, read online values.

``feature_repo/`` is never imported here; it is applied with Feast's own CLI (a subprocess, as a
user would run it, with the variables of :meth:`Settings.feast_env` in its environment) and used
through a ``FeatureStore`` whose configuration is built in process from the same settings
(:func:`repo_config`). Nothing here reads or writes ``os.environ`` beyond handing the parent's
environment to the subprocess.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import yaml
from pydantic import ValidationError

from recs_pipeline.settings import FEAST_PLACEHOLDER, Settings
from recs_pipeline.warehouse.features import FEAST_TABLES

if TYPE_CHECKING:  # Feast takes seconds to import: loaded on first use, not with the code location
    import pyarrow as pa
    from feast import FeatureStore, FeatureView, RepoConfig

    from recs_pipeline.feast.online_store import EntityRowSqliteOnlineStore

log = logging.getLogger(__name__)

# Feature views the batch pipeline materialises (the session view is pushed, not materialised).
SNAPSHOT_VIEWS: tuple[str, ...] = FEAST_TABLES
SESSION_FEATURES_TABLE = "user_session_features"
# Rows per Feast write call on stores without a bulk path (Feast converts them value by value).
WRITE_BATCH_ROWS = 20_000

_PLACEHOLDER = FEAST_PLACEHOLDER


def feast_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``feast`` CLI in the feature repo with the pipeline's paths; raise with its output on failure.

    Feast's CLI through ``python -m recs_pipeline.feast``: without Feast's import-time type
    instrumentation (``recs_pipeline/_feast_typechecks.py``), seconds less per call.
    """
    command = ["-m", "recs_pipeline.feast", "--feature-store-yaml", settings.feast_yaml, *args]
    return _feast_process(settings, command, f"feast {' '.join(args)}")


def _feast_process(settings: Settings, args: list[str], what: str) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` (``what`` it does) in the feature repo with the pipeline's paths; raise with its
    output on failure."""
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.feast_env()}
    proc = subprocess.run([sys.executable, *args], cwd=settings.feature_repo, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{what}` failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _fill(value: Any, variables: Mapping[str, str], source: Path) -> Any:
    """``value`` (a parsed YAML tree) with every ``${VAR}`` in its strings replaced from ``variables``."""
    if isinstance(value, dict):
        return {k: _fill(v, variables, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, variables, source) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise ValueError(f"{source} uses ${{{name}}}, which the settings do not provide ({sorted(variables)})")
        return variables[name]

    return _PLACEHOLDER.sub(replace, value)


def repo_config(settings: Settings) -> RepoConfig:
    """Feast's configuration of the selected profile, its ``${VAR}`` placeholders filled from the settings.

    The same values the ``feast`` CLI gets through its environment (:meth:`Settings.feast_env`), so
    the process and the CLI always agree on the registry and the online store.
    """
    from feast import RepoConfig

    path = settings.feature_repo / settings.feast_yaml
    raw = yaml.safe_load(path.read_text())
    try:
        config = RepoConfig(**_fill(raw, settings.feast_env(), path))
    except ValidationError as exc:
        raise ValueError(f"{path} is not a valid Feast configuration: {exc}") from exc
    config.repo_path = settings.feature_repo
    return config


def ensure_session_log(settings: Settings) -> Path:
    """Create the (empty) offline log of pushed session features if it does not exist yet."""
    path = settings.features_dir / f"{SESSION_FEATURES_TABLE}.parquet"
    if not path.exists():
        settings.features_dir.mkdir(parents=True, exist_ok=True)
        with duckdb.connect(":memory:") as con:
            con.sql(
                "SELECT ''::VARCHAR AS user_id, ''::VARCHAR AS session_id, []::VARCHAR[] AS session_item_ids, "
                "[]::VARCHAR[] AS session_event_types, []::DOUBLE[] AS session_event_unix, 0::BIGINT AS session_views, "
                "0::BIGINT AS session_carts, 0::BIGINT AS session_purchases, 0::BIGINT AS last_event_unix, "
                "0::DOUBLE AS pushed_unix, "
                "TIMESTAMPTZ '1970-01-01 00:00:00+00' AS event_timestamp LIMIT 0"
            ).write_parquet(str(path))
    return path


def _local_files(settings: Settings) -> list[Path] | None:
    """The registry and online store files of the selected profile when both are local files (the
    embedded profile), else ``None`` (a SQL registry or a server store others may change)."""
    path = settings.feature_repo / settings.feast_yaml
    raw = _fill(yaml.safe_load(path.read_text()), settings.feast_env(), path)
    registry, online = raw.get("registry"), raw.get("online_store") or {}
    registry_path = registry if isinstance(registry, str) else (registry or {}).get("path", "")
    registry_type = "file" if isinstance(registry, str) else (registry or {}).get("registry_type", "file")
    if (
        registry_type != "file"
        or "://" in registry_path
        or not str(online.get("type", "")).endswith("SqliteOnlineStore")
    ):
        return None
    return [Path(registry_path), Path(online["path"])]


def repo_fingerprint(settings: Settings) -> str:
    """What ``feast apply`` depends on: the feature repo's files, the variables it is applied with,
    Feast's version and this project's online store code (its tables)."""
    from importlib.metadata import version

    from recs_pipeline.feast import online_store

    digest = hashlib.sha256()
    for path in sorted(settings.feature_repo.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(settings.feature_repo)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(json.dumps([settings.feast_yaml, settings.feast_env(), version("feast")]).encode())
    digest.update(Path(online_store.__file__).read_bytes())
    return digest.hexdigest()


def apply_repo(settings: Settings, *, force: bool = False) -> str | None:
    """``feast apply`` the feature repo; returns Feast's output, or ``None`` when it was skipped.

    On the embedded profile an apply is skipped when nothing it depends on changed since the last
    one (:func:`repo_fingerprint`, kept in ``<feast dir>/applied.sha256``) and its registry and online
    store files are still there: each apply is a Feast process (seconds of start-up), and the hourly
    schedule would otherwise pay it every hour. ``force`` (``recs feast apply``) always applies; the
    production profile always applies (another deployment may have changed its registry).
    """
    ensure_session_log(settings)
    files = _local_files(settings)
    mark = settings.feast_dir / "applied.sha256"
    fingerprint = repo_fingerprint(settings) if files is not None else None
    if (
        not force
        and files is not None
        and all(f.exists() for f in files)
        and mark.is_file()
        and mark.read_text().strip() == fingerprint
    ):
        return None
    mark.unlink(missing_ok=True)
    # `feast apply` without Feast's whole CLI (recs_pipeline/feast/apply_process.py)
    output = _feast_process(
        settings, ["-m", "recs_pipeline.feast.apply_process", settings.feast_yaml], "feast apply"
    ).stdout
    if fingerprint is not None:
        mark.write_text(fingerprint + "\n")
    return output


def open_store(settings: Settings) -> FeatureStore:
    """A ``FeatureStore`` for the configured repo and profile."""
    from feast import FeatureStore

    return FeatureStore(repo_path=str(settings.feature_repo), config=repo_config(settings))


def _bulk_store(store: FeatureStore) -> EntityRowSqliteOnlineStore | None:
    """The store's online store when it takes bulk writes (the embedded SQLite profile), else ``None``."""
    from recs_pipeline.feast.online_store import EntityRowSqliteOnlineStore

    online = store._get_provider().online_store
    return online if isinstance(online, EntityRowSqliteOnlineStore) else None


def write_online(store: FeatureStore, view: str, rows: pa.Table) -> int:
    """Write ``rows`` of ``view`` (join keys, features, ``event_timestamp``, ``created_timestamp``) online,
    newer only; returns the rows that changed the store (the rows offered, on a store that does not say).

    The embedded SQLite store takes them in bulk (:meth:`EntityRowSqliteOnlineStore.write_arrow`);
    any other store through Feast's ``write_to_online_store``, one Arrow record batch of
    :data:`WRITE_BATCH_ROWS` per call (Feast converts only the first batch of a multi-chunk frame).
    """
    import pandas as pd
    import pyarrow as pa

    bulk = _bulk_store(store)
    if bulk is not None:
        return bulk.write_arrow(store.config, store.get_feature_view(view), rows).changed
    for batch in rows.to_batches(max_chunksize=WRITE_BATCH_ROWS):
        store.write_to_online_store(view, pa.Table.from_batches([batch]).to_pandas(types_mapper=pd.ArrowDtype))
    return rows.num_rows


def source_rows(feature_view: FeatureView, start: datetime, end: datetime) -> pa.Table | None:
    """What Feast's ``materialize(start, end)`` takes from the view's parquet source: per entity, the
    row with the newest event time in ``[start, end)`` (then the newest created time); ``None`` when
    the source is not a plain parquet ``FileSource`` (Feast's own materialisation then applies)."""
    from feast import FileSource

    source = feature_view.batch_source
    if not isinstance(source, FileSource) or source.field_mapping or not source.path.endswith(".parquet"):
        return None
    keys = ", ".join(f'"{c.name}"' for c in feature_view.entity_columns)
    ts = f'"{source.timestamp_field}"'
    created = f'"{source.created_timestamp_column}"' if source.created_timestamp_column else "NULL"
    renames = [f"{ts} AS event_timestamp"] if source.timestamp_field != "event_timestamp" else []
    if source.created_timestamp_column != "created_timestamp":
        renames.append(f"{created} AS created_timestamp")
    with duckdb.connect() as con:
        return con.sql(
            f"SELECT {', '.join(['*', *renames])} FROM read_parquet($path) "  # noqa: S608
            f"WHERE {ts} >= $start AND {ts} < $end "
            f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {ts} DESC, {created} DESC NULLS LAST) = 1",
            params={"path": source.path, "start": start, "end": end},
        ).to_arrow_table()


def materialize_snapshot(
    store: FeatureStore, as_of: datetime, *, views: Sequence[str] = SNAPSHOT_VIEWS
) -> dict[str, int | None]:
    """Write the snapshot stamped ``as_of`` to the online store; returns, per view, the rows that
    changed the store (``None`` where Feast's own ``materialize`` wrote them and does not say).

    Callers pass the newest snapshot time, so an older snapshot never replaces a newer one (and
    the store's newer-only rule holds if one does). On the embedded SQLite store the rows go in bulk
    (:func:`source_rows`, :meth:`EntityRowSqliteOnlineStore.write_arrow`) and the interval is recorded in the registry as
    Feast's ``materialize`` records it (``materialize-incremental`` starts after it); elsewhere
    Feast's ``materialize`` runs, its progress printed to stderr so stdout stays machine-readable.
    """
    start, end = as_of - timedelta(microseconds=1), as_of + timedelta(microseconds=1)
    changed: dict[str, int | None] = {}
    bulk = _bulk_store(store)
    feast_views = []
    for view in views:
        feature_view = store.get_feature_view(view)
        rows = source_rows(feature_view, start, end) if bulk is not None else None
        if bulk is None or rows is None:
            feast_views.append(view)
            continue
        changed[view] = bulk.write_arrow(store.config, feature_view, rows).changed
        store.registry.apply_materialization(feature_view, store.project, start, end)
    if feast_views:
        with contextlib.redirect_stdout(sys.stderr):
            store.materialize(start_date=start, end_date=end, feature_views=feast_views)
        changed.update(dict.fromkeys(feast_views))
    return changed


def online_features(
    store: FeatureStore, view: str, entity_rows: list[dict[str, Any]], features: Sequence[str]
) -> dict[str, list[Any]]:
    """Online values of ``view``'s ``features`` for ``entity_rows`` (column -> values)."""
    refs = [f"{view}:{f}" for f in features]
    return store.get_online_features(features=refs, entity_rows=entity_rows).to_dict()
