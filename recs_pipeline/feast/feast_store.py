"""The bridge to Feast: apply the feature repo, materialise snapshots, read online values.

``feature_repo/`` is never imported here; it is applied with Feast's own CLI (a subprocess, as a
user would run it, with the variables of :meth:`Settings.feast_env` in its environment) and used
through a ``FeatureStore`` whose configuration is built in process from the same settings
(:func:`repo_config`). Nothing here reads or writes ``os.environ`` beyond handing the parent's
environment to the subprocess.
"""

from __future__ import annotations

import contextlib
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

from recs_pipeline.settings import Settings
from recs_pipeline.warehouse.features import FEAST_TABLES

if TYPE_CHECKING:  # Feast takes seconds to import: loaded on first use, not with the code location
    from feast import FeatureStore, RepoConfig

log = logging.getLogger(__name__)

# Feature views the batch pipeline materialises (the session view is pushed, not materialised).
SNAPSHOT_VIEWS: tuple[str, ...] = FEAST_TABLES
SESSION_FEATURES_TABLE = "user_session_features"

_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


def feast_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``feast`` CLI in the feature repo with the pipeline's paths; raise with its output on failure."""
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "feast.cli.cli", "--feature-store-yaml", settings.feast_yaml, *args]
    env = {**os.environ, **settings.feast_env()}
    proc = subprocess.run(cmd, cwd=settings.feature_repo, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`feast {' '.join(args)}` failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
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


def apply_repo(settings: Settings) -> str:
    """``feast apply`` the feature repo; returns Feast's output."""
    ensure_session_log(settings)
    return feast_cli(settings, "apply").stdout


def open_store(settings: Settings) -> FeatureStore:
    """A ``FeatureStore`` for the configured repo and profile."""
    from feast import FeatureStore

    return FeatureStore(repo_path=str(settings.feature_repo), config=repo_config(settings))


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
