"""The bridge to Feast: apply the feature repo, materialise snapshots, read online values.

``feature_repo/`` is never imported here; it is applied with Feast's own CLI (a subprocess, as a
user would run it) and used through ``FeatureStore``. Its paths come from the environment that
:meth:`Settings.feast_env` describes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
from feast import FeatureStore

from recs_pipeline.settings import Settings
from recs_pipeline.warehouse.features import FEAST_TABLES

log = logging.getLogger(__name__)

# Feature views the batch pipeline materialises (the session view is pushed, not materialised).
SNAPSHOT_VIEWS: tuple[str, ...] = FEAST_TABLES
SESSION_FEATURES_TABLE = "user_session_features"


def _export_env(settings: Settings) -> None:
    os.environ.update(settings.feast_env())


def feast_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``feast`` CLI in the feature repo with the pipeline's paths; raise with its output on failure."""
    _export_env(settings)
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "feast.cli.cli", "--feature-store-yaml", settings.feast_yaml, *args]
    proc = subprocess.run(cmd, cwd=settings.feature_repo, env=os.environ.copy(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`feast {' '.join(args)}` failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def ensure_session_log(settings: Settings) -> Path:
    """Create the (empty) offline log of pushed session features if it does not exist yet."""
    path = settings.features_dir / f"{SESSION_FEATURES_TABLE}.parquet"
    if not path.exists():
        settings.features_dir.mkdir(parents=True, exist_ok=True)
        duckdb.sql(
            "SELECT ''::VARCHAR AS user_id, ''::VARCHAR AS session_id, []::VARCHAR[] AS session_item_ids, "
            "[]::VARCHAR[] AS session_event_types, []::DOUBLE[] AS session_event_unix, 0::BIGINT AS session_views, 0::BIGINT AS session_carts, 0::BIGINT AS session_purchases, "
            "0::BIGINT AS last_event_unix, TIMESTAMPTZ '1970-01-01 00:00:00+00' AS event_timestamp LIMIT 0"
        ).write_parquet(str(path))
    return path


def apply_repo(settings: Settings) -> str:
    """``feast apply`` the feature repo; returns Feast's output."""
    ensure_session_log(settings)
    return feast_cli(settings, "apply").stdout


def open_store(settings: Settings) -> FeatureStore:
    """A ``FeatureStore`` for the configured repo and profile."""
    _export_env(settings)
    return FeatureStore(repo_path=str(settings.feature_repo), fs_yaml_file=settings.feature_repo / settings.feast_yaml)


def materialize_snapshot(store: FeatureStore, as_of: datetime, *, views: Sequence[str] = SNAPSHOT_VIEWS) -> None:
    """Write the snapshot stamped ``as_of`` to the online store.

    Callers pass the newest snapshot time, so an older snapshot never replaces a newer one.
    Feast prints its progress to stdout; it goes to stderr so stdout stays machine-readable.
    """
    with contextlib.redirect_stdout(sys.stderr):
        store.materialize(
            start_date=as_of - timedelta(microseconds=1),
            end_date=as_of + timedelta(microseconds=1),
            feature_views=list(views),
        )


def online_features(
    store: FeatureStore, view: str, entity_rows: list[dict[str, Any]], features: Sequence[str]
) -> dict[str, list[Any]]:
    """Online values of ``view``'s ``features`` for ``entity_rows`` (column -> values)."""
    refs = [f"{view}:{f}" for f in features]
    return store.get_online_features(features=refs, entity_rows=entity_rows).to_dict()
