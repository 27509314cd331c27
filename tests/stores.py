"""Feast store profiles for tests against real stores: the embedded SQLite profile and the production
profile (Redis online store, SQL registry on PostgreSQL) on an isolated Feast project.

``open_profile`` applies the feature repo on a temp home. The redis profile uses a Feast project of
its own (a copy of the production profile that differs only in ``project``), so parallel or repeated
runs never share keys or registry rows, and deletes its keys and registry rows afterwards. Without
Redis or PostgreSQL it is skipped, and fails in CI.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy
import yaml
from feast import FeatureStore
from homes import LOCATION_VARIABLES

from recs_pipeline.feast import feast_store
from recs_pipeline.settings import FEATURE_REPO_DIR, Settings
from recs_pipeline.warehouse import db, features

PRODUCTION_YAML = "feature_store.production.yaml"


@dataclass
class Profile:
    name: str
    settings: Settings
    store: FeatureStore


def unreachable(message: str) -> None:
    """Same policy as the ``shared_data`` fixture: a failure in CI, a skip on a developer's machine."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def redis_client(connection_string: str) -> redis.Redis:
    """A client for Feast's ``host:port[,db=N,password=...]`` connection string (plain Redis)."""
    host_port, *params = connection_string.split(",")
    host, _, port = host_port.partition(":")
    kwargs: dict[str, Any] = {}
    for param in params:  # values parsed as Feast does (JSON where it parses: db=1 -> 1)
        key, _, value = param.partition("=")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return redis.Redis(host=host, port=int(port or 6379), socket_connect_timeout=3, **kwargs)


def require_servers(settings: Settings) -> None:
    try:
        redis_client(settings.redis_url).ping()
    except redis.RedisError as e:
        where = settings.redis_url.split(",")[0]  # host:port, without a password
        unreachable(f"Redis is not reachable at {where} (RECS_REDIS_URL): {e}")
    try:
        engine = sqlalchemy.create_engine(settings.registry_url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except sqlalchemy.exc.SQLAlchemyError as e:
        where = sqlalchemy.make_url(settings.registry_url).render_as_string(hide_password=True)
        unreachable(f"PostgreSQL is not reachable at {where} (RECS_REGISTRY_URL): {e}")


def write_snapshots(settings: Settings, user_rows: list[tuple[str, int, datetime]]) -> None:
    """Export every Feast snapshot table (empty but for ``user_features``: user, views_30d, time)."""
    with db.connect(settings.duckdb_path) as con:
        con.execute("DELETE FROM user_features")
        for user_id, views, ts in user_rows:
            con.execute(
                "INSERT INTO user_features (user_id, views_30d, top_category_id, event_timestamp, created_timestamp) "
                "VALUES ($u, $v, $c, $t, $t)",
                {"u": user_id, "v": views, "c": f"cat-{views}", "t": ts},
            )
        for table in features.FEAST_TABLES:
            features.export_table(con, table, settings.features_dir)


def isolated_production_yaml(directory: Path, project: str) -> Path:
    """The production profile as committed, but for its ``project`` (the isolation of one test run)."""
    config = yaml.safe_load((FEATURE_REPO_DIR / PRODUCTION_YAML).read_text())
    config["project"] = project
    path = directory / PRODUCTION_YAML
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def clean_up_production(settings: Settings, store: FeatureStore, project: str) -> None:
    """Delete this run's Redis keys and registry rows; never another project's.

    Not ``store.teardown()`` (nor ``feast teardown``): it deletes *every* project of the registry,
    other runs' included. ``delete_project`` leaves the feature view version history behind.
    """
    client = redis_client(settings.redis_url)
    pattern = b"*" + project.encode()  # Feast's Redis key is <serialised entity key><project>
    keys = list(client.scan_iter(match=pattern))
    if keys:
        client.delete(*keys)
    assert not list(client.scan_iter(match=pattern))
    client.close()

    store.registry.delete_project(project, commit=True)
    engine = sqlalchemy.create_engine(settings.registry_url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("DELETE FROM feature_view_version_history WHERE project_id = :p"), {"p": project})
        tables = conn.execute(
            sqlalchemy.text(
                "SELECT table_name FROM information_schema.columns "
                "WHERE column_name = 'project_id' AND table_schema = current_schema()"
            )
        ).scalars()
        left = {
            t: n
            for t in tables
            if (
                n := conn.execute(
                    sqlalchemy.text(f'SELECT count(*) FROM "{t}" WHERE project_id = :p'), {"p": project}
                ).scalar()
            )
        }
    engine.dispose()
    assert not left, f"registry rows of {project} left behind: {left}"


@contextmanager
def open_profile(name: str, directory: Path) -> Iterator[Profile]:
    """The feature repo applied on a temp home under ``directory`` with the ``sqlite`` or ``redis`` profile."""
    with pytest.MonkeyPatch.context() as mp:
        for var in LOCATION_VARIABLES:
            mp.delenv(var, raising=False)
        home = directory / "home"
        mp.setenv("RECS_HOME", str(home))
        project = None
        if name == "redis":
            project = f"recs_test_{uuid.uuid4().hex[:16]}"
            directory.mkdir(parents=True, exist_ok=True)
            mp.setenv("RECS_FEAST_YAML", str(isolated_production_yaml(directory, project)))
            mp.setenv("RECS_ALLOW_INSECURE_STORES", "true")  # the machine's Redis and PostgreSQL have no passwords
        settings = Settings.from_env()
        if project is not None:
            require_servers(settings)
        settings.ensure_dirs()
        write_snapshots(settings, [])
        feast_store.apply_repo(settings)
        store = feast_store.open_store(settings)
        assert store.project == (project or "recs_pipeline")
        try:
            yield Profile(name, settings, store)
        finally:
            if project is not None:
                clean_up_production(settings, store, project)
