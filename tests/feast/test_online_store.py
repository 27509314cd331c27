"""The online store profiles against real stores: an older write never replaces a newer one.

Each test runs twice: ``sqlite`` (``feature_store.yaml``: file registry, the guarded SQLite store of
``recs_pipeline.feast.online_store``) and ``redis`` (``feature_store.production.yaml``: Redis at
``RECS_REDIS_URL`` and a SQL registry on PostgreSQL at ``RECS_REGISTRY_URL``, the real servers).
The redis runs use a Feast project of their own (a copy of the production profile that differs
only in ``project``), so parallel or repeated runs never share keys or registry rows, and delete
their keys and registry rows afterwards. Without Redis or PostgreSQL the redis runs are skipped,
and fail in CI.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
import sqlalchemy
import yaml
from feast import FeatureStore
from feast.types import Array, Bool, Float64, Int64, String

from recs_pipeline.feast import feast_store
from recs_pipeline.feast.online_store import GuardedSqliteOnlineStoreConfig
from recs_pipeline.settings import FEATURE_REPO_DIR, Settings
from recs_pipeline.warehouse import db, features

pytestmark = pytest.mark.integration  # `feast apply` (a subprocess) per profile, Redis and PostgreSQL

PRODUCTION_YAML = "feature_store.production.yaml"
SESSION_VIEW = feast_store.SESSION_FEATURES_TABLE
SESSION_PUSH_SOURCE = "user_session_push_source"

# A value of each Feast type for the features a test does not set (push and write need every column).
_FILLERS: list[tuple[Any, Any]] = [
    (Array(String), []),
    (Array(Float64), []),
    (Array(Int64), []),
    (String, ""),
    (Int64, 0),
    (Float64, 0.0),
    (Bool, False),
]


@dataclass(frozen=True)
class Clock:
    """Event times of one test, oldest first, in whole seconds (Feast's SQLite store keeps seconds).

    ``t*`` are inside the snapshot views' 30-day TTL, ``s*`` inside the session view's hour, counted
    from the test's start (the online read hides a value older than its view's TTL).
    """

    t1: datetime
    t2: datetime
    t3: datetime
    s1: datetime
    s2: datetime
    s3: datetime


@dataclass
class Profile:
    name: str
    settings: Settings
    store: FeatureStore


def _unreachable(message: str) -> None:
    """Same policy as the ``shared_data`` fixture: a failure in CI, a skip on a developer's machine."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _redis_client(connection_string: str) -> redis.Redis:
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


def _require_servers(settings: Settings) -> None:
    try:
        _redis_client(settings.redis_url).ping()
    except redis.RedisError as e:
        where = settings.redis_url.split(",")[0]  # host:port, without a password
        _unreachable(f"Redis is not reachable at {where} (RECS_REDIS_URL): {e}")
    try:
        engine = sqlalchemy.create_engine(settings.registry_url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except sqlalchemy.exc.SQLAlchemyError as e:
        where = sqlalchemy.make_url(settings.registry_url).render_as_string(hide_password=True)
        _unreachable(f"PostgreSQL is not reachable at {where} (RECS_REGISTRY_URL): {e}")


def _write_snapshots(settings: Settings, user_rows: list[tuple[str, int, datetime]]) -> None:
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


def _isolated_production_yaml(directory: Path, project: str) -> Path:
    """The production profile as committed, but for its ``project`` (the isolation of one test run)."""
    config = yaml.safe_load((FEATURE_REPO_DIR / PRODUCTION_YAML).read_text())
    config["project"] = project
    path = directory / PRODUCTION_YAML
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _clean_up_production(settings: Settings, store: FeatureStore, project: str) -> None:
    """Delete this run's Redis keys and registry rows; never another project's.

    Not ``store.teardown()`` (nor ``feast teardown``): it deletes *every* project of the registry,
    other runs' included. ``delete_project`` leaves the feature view version history behind.
    """
    client = _redis_client(settings.redis_url)
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


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def profile(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Profile]:
    """The feature repo applied once per profile on a temp home (``feast apply`` takes a while).

    Tests share it and write entities of their own (see ``uid``).
    """
    with pytest.MonkeyPatch.context() as mp:
        for var in ("RECS_LANDING_DIR", "RECS_DUCKDB_PATH", "RECS_FEATURE_REPO", "RECS_FEAST_YAML", "DAGSTER_HOME"):
            mp.delenv(var, raising=False)
        home = tmp_path_factory.mktemp(f"online_{request.param}") / "home"
        mp.setenv("RECS_HOME", str(home))
        project = None
        if request.param == "redis":
            project = f"recs_test_{uuid.uuid4().hex[:16]}"
            mp.setenv("RECS_FEAST_YAML", str(_isolated_production_yaml(home.parent, project)))
        settings = Settings.from_env()
        if project is not None:
            _require_servers(settings)
        settings.ensure_dirs()
        _write_snapshots(settings, [])
        feast_store.apply_repo(settings)
        store = feast_store.open_store(settings)
        assert store.project == (project or "recs_pipeline")
        try:
            yield Profile(request.param, settings, store)
        finally:
            if project is not None:
                _clean_up_production(settings, store, project)


@pytest.fixture
def uid() -> str:
    """A user-id prefix of the current test (the profile's stores are shared by the module)."""
    return f"u{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def clock() -> Clock:
    now = datetime.now(UTC).replace(microsecond=0)
    day, minute = timedelta(days=1), timedelta(minutes=1)
    return Clock(now - 3 * day, now - 2 * day, now - day, now - 30 * minute, now - 20 * minute, now - 10 * minute)


def _rows(store: FeatureStore, view: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """``rows`` completed with a typed filler for every feature they leave out."""
    fv = store.get_feature_view(view)
    full = []
    for row in rows:
        filled = dict(row)
        for f in fv.features:
            if f.name not in filled:
                fillers = [v for t, v in _FILLERS if f.dtype == t]
                if not fillers:
                    raise ValueError(f"no filler for {view}.{f.name} of type {f.dtype}: add one to _FILLERS")
                filled[f.name] = fillers[0]
        full.append(filled)
    return pd.DataFrame(full)


def _user_row(user_id: str, views: int, ts: datetime) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "views_30d": views,
        "top_category_id": f"cat-{views}",
        "event_timestamp": ts,
        "created_timestamp": ts,
    }


def _session_row(user_id: str, session_id: str, items: list[str], ts: datetime) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "session_id": session_id,
        "session_item_ids": items,
        "session_views": len(items),
        "last_event_unix": int(ts.timestamp()),
        "event_timestamp": ts,
    }


def _views(store: FeatureStore, user_id: str) -> tuple[int | None, str | None]:
    got = feast_store.online_features(store, "user_features", [{"user_id": user_id}], ["views_30d", "top_category_id"])
    return got["views_30d"][0], got["top_category_id"][0]


def _session(store: FeatureStore, user_id: str) -> dict[str, Any]:
    got = feast_store.online_features(
        store, SESSION_VIEW, [{"user_id": user_id}], ["session_id", "session_item_ids", "session_views"]
    )
    return {k: v[0] for k, v in got.items() if k != "user_id"}


def test_write_to_online_store_keeps_the_newest_value(profile: Profile, uid: str, clock: Clock) -> None:
    store = profile.store
    store.write_to_online_store("user_features", _rows(store, "user_features", [_user_row(f"{uid}1", 2, clock.t2)]))
    assert _views(store, f"{uid}1") == (2, "cat-2")

    store.write_to_online_store("user_features", _rows(store, "user_features", [_user_row(f"{uid}1", 3, clock.t3)]))
    assert _views(store, f"{uid}1") == (3, "cat-3"), "a newer write must replace the value"

    store.write_to_online_store("user_features", _rows(store, "user_features", [_user_row(f"{uid}1", 1, clock.t1)]))
    assert _views(store, f"{uid}1") == (3, "cat-3"), "an older write must not replace a newer value"


def test_an_older_row_later_in_the_same_batch_is_skipped(profile: Profile, uid: str, clock: Clock) -> None:
    store = profile.store
    batch = [
        _user_row(f"{uid}2", 3, clock.t3),
        _user_row(f"{uid}2", 1, clock.t1),
        _user_row(f"{uid}3", 1, clock.t1),
        _user_row(f"{uid}3", 2, clock.t2),
    ]
    store.write_to_online_store("user_features", _rows(store, "user_features", batch))
    assert _views(store, f"{uid}2") == (3, "cat-3")
    assert _views(store, f"{uid}3") == (2, "cat-2")


def test_materialising_an_older_snapshot_after_a_newer_one_keeps_the_newer(
    profile: Profile, uid: str, clock: Clock
) -> None:
    store, settings = profile.store, profile.settings
    _write_snapshots(settings, [(f"{uid}1", 1, clock.t1), (f"{uid}1", 2, clock.t2), (f"{uid}9", 20, clock.t2)])
    feast_store.materialize_snapshot(store, clock.t2, views=["user_features"])
    assert _views(store, f"{uid}1") == (2, "cat-2")

    feast_store.materialize_snapshot(store, clock.t1, views=["user_features"])
    assert _views(store, f"{uid}1") == (2, "cat-2"), "materialising an older snapshot must not roll the value back"
    assert _views(store, f"{uid}9") == (20, "cat-20")

    _write_snapshots(settings, [(f"{uid}1", 1, clock.t1), (f"{uid}1", 2, clock.t2), (f"{uid}1", 3, clock.t3)])
    feast_store.materialize_snapshot(store, clock.t3, views=["user_features"])
    assert _views(store, f"{uid}1") == (3, "cat-3"), "a newer snapshot must replace the value"


def test_a_snapshot_older_than_a_real_time_write_does_not_replace_it(profile: Profile, uid: str, clock: Clock) -> None:
    store, settings = profile.store, profile.settings
    store.write_to_online_store("user_features", _rows(store, "user_features", [_user_row(f"{uid}1", 7, clock.t3)]))
    _write_snapshots(settings, [(f"{uid}1", 2, clock.t2)])
    feast_store.materialize_snapshot(store, clock.t2, views=["user_features"])
    assert _views(store, f"{uid}1") == (7, "cat-7")


def test_push_keeps_the_newest_session_and_round_trips_arrays(profile: Profile, uid: str, clock: Clock) -> None:
    store = profile.store
    newer = _session_row(f"{uid}1", "s2", ["i3", "i1", "i3"], clock.s2)
    store.push(SESSION_PUSH_SOURCE, _rows(store, SESSION_VIEW, [newer]))
    assert _session(store, f"{uid}1") == {
        "session_id": "s2",
        "session_item_ids": ["i3", "i1", "i3"],
        "session_views": 3,
    }

    store.push(SESSION_PUSH_SOURCE, _rows(store, SESSION_VIEW, [_session_row(f"{uid}1", "s1", ["i9"], clock.s1)]))
    assert _session(store, f"{uid}1")["session_id"] == "s2", "an older push must not replace a newer session"

    store.push(SESSION_PUSH_SOURCE, _rows(store, SESSION_VIEW, [_session_row(f"{uid}1", "s3", [], clock.s3)]))
    assert _session(store, f"{uid}1") == {"session_id": "s3", "session_item_ids": [], "session_views": 0}


def test_async_push_keeps_the_newest_session(profile: Profile, uid: str, clock: Clock) -> None:
    store = profile.store

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        # one event loop for every call: Feast's Redis store caches its async client per store
        await store.push_async(
            SESSION_PUSH_SOURCE, _rows(store, SESSION_VIEW, [_session_row(f"{uid}4", "s2", ["a"], clock.s2)])
        )
        await store.push_async(
            SESSION_PUSH_SOURCE, _rows(store, SESSION_VIEW, [_session_row(f"{uid}4", "s1", ["b"], clock.s1)])
        )
        after_older = _session(store, f"{uid}4")
        newer = _rows(store, SESSION_VIEW, [_session_row(f"{uid}4", "s3", ["c"], clock.s3)])
        await store.write_to_online_store_async(SESSION_VIEW, newer)
        return after_older, _session(store, f"{uid}4")

    after_older, after_newer = asyncio.run(scenario())
    assert after_older == {"session_id": "s2", "session_item_ids": ["a"], "session_views": 1}
    assert after_newer == {"session_id": "s3", "session_item_ids": ["c"], "session_views": 1}


def test_a_write_at_the_same_time_overwrites_in_sqlite_and_is_skipped_in_redis(
    profile: Profile, uid: str, clock: Clock
) -> None:
    """The documented difference: SQLite lets a corrected value of the same time through, Redis keeps the first."""
    store = profile.store
    store.write_to_online_store("user_features", _rows(store, "user_features", [_user_row(f"{uid}5", 2, clock.t2)]))
    store.write_to_online_store("user_features", _rows(store, "user_features", [_user_row(f"{uid}5", 4, clock.t2)]))
    assert _views(store, f"{uid}5") == ((4, "cat-4") if profile.name == "sqlite" else (2, "cat-2"))


@pytest.mark.parametrize("profile", ["sqlite"], indirect=True)
def test_the_guard_is_restored_on_a_table_that_lacks_it(profile: Profile, uid: str, clock: Clock) -> None:
    """``feast apply`` guards each table; a table without the trigger (e.g. created by Feast's plain
    ``sqlite`` store before the switch) is guarded again from its next write on."""
    store, db = profile.store, profile.settings.feast_dir / "online_store.db"
    assert isinstance(store.config.online_store, GuardedSqliteOnlineStoreConfig)
    table = f"{store.project}_user_features"
    con = sqlite3.connect(db)
    try:
        triggers = "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?"
        assert con.execute(triggers, [table]).fetchone() == (1,)
        with con:
            con.execute(f'DROP TRIGGER "{table}__newer_only"')
        assert con.execute(triggers, [table]).fetchone() == (0,)

        store.write_to_online_store("user_features", _rows(store, "user_features", [_user_row(f"{uid}1", 3, clock.t3)]))
        store.write_to_online_store("user_features", _rows(store, "user_features", [_user_row(f"{uid}1", 1, clock.t1)]))
        assert _views(store, f"{uid}1") == (3, "cat-3")
        assert con.execute(triggers, [table]).fetchone() == (1,)
    finally:
        con.close()
