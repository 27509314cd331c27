"""The direct online read returns exactly what Feast's call returns, and readers never wait for writers.

For the served home's users (snapshot features and profiles), users with a pushed live session (some
older than the session view's one-hour TTL) and unknown users, ``recs_pipeline.feast.online_read``
must return the dictionary of ``get_online_features(features=realtime_v1, ...,
full_feature_names=True).to_dict(include_event_timestamps=True)``: same keys in the same order, same
values and types. On the embedded SQLite store (a copy of the served home) and on Redis (the
production profile, a Feast project of its own, the served home's snapshots materialised into it).

SQLite: a write transaction held open by another connection does not delay reads (WAL journal mode,
read-only connections): they return within the budget with the last committed values. A store that
does block (an exclusive lock) or a Redis server that never answers costs a read at most its budget.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pytest
from feast import FeatureStore
from feast.data_source import PushMode
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.types import Array, Float64, Int64, String
from homes import copy_home
from stores import open_profile

from recs_pipeline.feast import feast_store
from recs_pipeline.feast.online_read import RedisDirectReader, SqliteDirectReader
from recs_pipeline.serving.online import FEATURE_SERVICE, OnlineReader, parse_response
from recs_pipeline.settings import Settings

pytestmark = pytest.mark.integration  # pipeline homes, `feast apply`, Redis and PostgreSQL

PUSH_SOURCE = "user_session_push_source"
SESSION_VIEW = "user_session_features"
REALTIME_VIEWS = ["user_features", "user_profile"]  # the materialised views of realtime_v1
PROFILE_ENV = (
    "RECS_HOME",
    "RECS_FEAST_YAML",
    "RECS_LANDING_DIR",
    "RECS_DUCKDB_PATH",
    "RECS_FEATURE_REPO",
    "DAGSTER_HOME",
)


def _feast_dict(store: FeatureStore, user_id: str) -> dict[str, list[Any]]:
    service = store.get_feature_service(FEATURE_SERVICE)
    response = store.get_online_features(features=service, entity_rows=[{"user_id": user_id}], full_feature_names=True)
    return response.to_dict(include_event_timestamps=True)


def _session_frame(store: FeatureStore, sessions: list[tuple[str, list[str], datetime]]) -> pd.DataFrame:
    """One session row per ``(user, items, time)``, every feature of the view filled by its type."""
    fv = store.get_feature_view(SESSION_VIEW)
    rows = []
    for user, items, ts in sessions:
        row: dict[str, Any] = {"user_id": user, "event_timestamp": ts}
        for f in fv.features:
            if f.dtype == Array(String):
                row[f.name] = list(items) if "item" in f.name else ["view"] * len(items)
            elif f.dtype == Array(Float64):
                row[f.name] = [ts.timestamp() - 60.0 * k for k in range(len(items))][::-1]
            elif f.dtype == String:
                row[f.name] = f"{user}-{int(ts.timestamp() * 1000)}"
            elif f.dtype == Int64:
                row[f.name] = len(items) if f.name.startswith("session_") else int(ts.timestamp())
            elif f.dtype == Float64:
                row[f.name] = ts.timestamp()
            else:
                raise ValueError(f"no value for {SESSION_VIEW}.{f.name} of type {f.dtype}: add one here")
        rows.append(row)
    return pd.DataFrame(rows)


def _push_sessions(store: FeatureStore, known: list[str], tag: str) -> list[str]:
    """Live sessions for some known users and some new ones, at times with and without microseconds,
    one of them older than the session view's TTL (an hour); returns the users."""
    now = datetime.now(UTC)
    new = [f"{tag}-new-{k}" for k in range(4)]
    sessions = [
        (known[0], ["i1", "i2", "i3"], now - timedelta(minutes=5)),
        (known[1], ["i9"], now.replace(microsecond=999_999) - timedelta(minutes=1)),
        (known[2], [], now - timedelta(hours=3)),  # older than the view's ttl
        (new[0], ["i4", "i4"], now),
        (new[1], ["i5"], now - timedelta(hours=5, microseconds=1)),  # older than the view's ttl
        (new[2], ["i6"] * 50, now.replace(microsecond=1)),
        (new[3], ["i7"], now - timedelta(minutes=2)),
    ]
    store.push(PUSH_SOURCE, _session_frame(store, sessions), to=PushMode.ONLINE)
    # a second, newer push for one user: the stored row is the newer one
    store.push(PUSH_SOURCE, _session_frame(store, [(new[3], ["i8", "i7"], now)]), to=PushMode.ONLINE)
    return [s[0] for s in sessions]


def _users(settings: Settings, n: int = 80) -> list[str]:
    """Known users of the served snapshot (with and without a long history), sorted, sampled reproducibly."""
    profiles = pl.read_parquet(settings.features_dir / "user_profile.parquet")
    known = sorted(profiles["user_id"].unique().to_list())
    snapshot_only = sorted(
        set(pl.read_parquet(settings.features_dir / "user_features.parquet")["user_id"].unique().to_list()) - set(known)
    )
    rng = random.Random(11)
    return rng.sample(known, min(n, len(known))) + snapshot_only[:5]


def _assert_reads_equal_feast(store: FeatureStore, reader: OnlineReader, users: list[str]) -> int:
    """Direct read == Feast's dict (keys in order, values, types); ``read`` == ``parse_response`` of Feast's dict."""
    with_values = 0
    for user in users:
        expected = _feast_dict(store, user)
        got = reader._read(user)
        assert list(got) == list(expected), user
        assert got == expected, user
        for key, column in expected.items():
            assert [type(v) for v in got[key]] == [type(v) for v in column], (user, key)
            if isinstance(column[0], list):
                assert [type(v) for v in got[key][0]] == [type(v) for v in column[0]], (user, key)
        ctx = reader.read(user)
        assert ctx.online_ok and ctx.error is None
        assert ctx == parse_response(user, expected)
        with_values += any(v[0] is not None for k, v in expected.items() if "__" in k and not k.endswith("__ts"))
    return with_values


@pytest.fixture(scope="module")
def sqlite_home(served_home: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A copy of the served home: the tests push sessions and lock its online store."""
    return copy_home(served_home, tmp_path_factory.mktemp("online_read") / "home")


@pytest.fixture(scope="module")
def sqlite_store(sqlite_home: Settings) -> FeatureStore:
    return feast_store.open_store(sqlite_home)


@pytest.fixture(scope="module")
def redis_store(served_home: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeatureStore]:
    """The production profile on a project of its own, holding the served home's newest snapshots.

    ``open_profile`` points the environment at its home while it is open; the module's other tests
    (SQLite homes built with ``Settings.from_env``) must not see that, so it is put back meanwhile.
    """
    before = {name: os.environ.get(name) for name in PROFILE_ENV}
    with (
        open_profile("redis", tmp_path_factory.mktemp("online_read_redis")) as profile,
        pytest.MonkeyPatch.context() as mp,
    ):
        for name, value in before.items():
            if value is None:
                mp.delenv(name, raising=False)
            else:
                mp.setenv(name, value)
        for view in REALTIME_VIEWS:
            shutil.copy(served_home.features_dir / f"{view}.parquet", profile.settings.features_dir / f"{view}.parquet")
        for view in REALTIME_VIEWS:
            as_of = pl.read_parquet(profile.settings.features_dir / f"{view}.parquet")["event_timestamp"].max()
            feast_store.materialize_snapshot(profile.store, as_of, views=[view])
        yield profile.store


@pytest.mark.parametrize("profile", ["sqlite", "redis"])
def test_the_direct_read_equals_feasts_call(
    profile: str, request: pytest.FixtureRequest, served_home: Settings
) -> None:
    store: FeatureStore = request.getfixturevalue(f"{profile}_store")
    reader = OnlineReader(store, timeout_s=5.0)
    try:
        expected_class = SqliteDirectReader if profile == "sqlite" else RedisDirectReader
        assert isinstance(reader._direct, expected_class), "the configured store is not read directly"
        known = _users(served_home)
        pushed = _push_sessions(store, known, tag=profile)
        unknown = ["nobody", "", "ü-ñ", "x" * 300, known[0] + " "]
        users = known + pushed + unknown
        with_values = _assert_reads_equal_feast(store, reader, users)
        assert with_values >= len(known) + 4, "too few users with stored values: the comparison proves little"

        # what the comparison covered: snapshot values, profiles, sessions (also past the view's ttl), misses
        sessions = {u: _feast_dict(store, u) for u in pushed}
        assert all(d["user_session_features__session_id"][0] is not None for d in sessions.values())
        stale = [u for u, d in sessions.items() if d["user_session_features__session_id__ts"][0] < time.time() - 3600]
        assert len(stale) == 2, "a pushed session older than the view's ttl is still returned by Feast"
        assert _feast_dict(store, known[0])["user_profile__hist_item_ids"][0]
        assert all(
            v == [None]
            for k, v in _feast_dict(store, "nobody").items()
            if k.startswith("user_features__") and not k.endswith("__ts")
        )
    finally:
        reader.close()


def test_the_service_reads_the_sqlite_store_in_wal_mode(sqlite_store: FeatureStore) -> None:
    reader = OnlineReader(sqlite_store, timeout_s=1.0)
    try:
        assert isinstance(reader._direct, SqliteDirectReader)
        assert reader._direct.journal_mode() == "wal"
        assert reader._pool is None  # no thread hop for a direct read
    finally:
        reader.close()


def test_a_held_write_transaction_does_not_delay_reads(sqlite_home: Settings, sqlite_store: FeatureStore) -> None:
    """Another connection holds BEGIN IMMEDIATE and an uncommitted write for 2 s: reads of every user
    (the written one included) return within the budget with the last committed values. (Before WAL
    mode every read waited for the writer: 2 s, far past any budget.)"""
    budget = 0.5
    reader = OnlineReader(sqlite_store, timeout_s=budget)
    users = _users(sqlite_home, n=10)
    table = f"{sqlite_store.project}_user_features"
    locker = sqlite3.connect(sqlite_home.feast_dir / "online_store.db", isolation_level=None)
    written_key = serialize_entity_key(
        EntityKeyProto(join_keys=["user_id"], entity_values=[ValueProto(string_val=users[0])]),
        entity_key_serialization_version=sqlite_store.config.entity_key_serialization_version,
    )
    committed = {u: reader.read(u) for u in users}
    assert all(c.online_ok and c.user_features for c in committed.values())

    locker.execute("BEGIN IMMEDIATE")
    try:
        changed = locker.execute(
            f'UPDATE "{table}" SET features = ?, event_ts = event_ts + 1 WHERE entity_key = ?', ["{}", written_key]
        ).rowcount
        assert changed > 0, "the uncommitted write changed nothing"
        # and a writer through Feast waits (for the lock) in the background meanwhile
        pushed = threading.Thread(
            target=lambda: sqlite_store.push(
                PUSH_SOURCE,
                _session_frame(sqlite_store, [("held-writer", ["i1"], datetime.now(UTC))]),
                to=PushMode.ONLINE,
            ),
            daemon=True,
        )
        pushed.start()
        slowest, reads = 0.0, 0
        held_until = time.monotonic() + 2.0
        while time.monotonic() < held_until:
            for user in users:
                started = time.perf_counter()
                ctx = reader.read(user)
                slowest = max(slowest, time.perf_counter() - started)
                reads += 1
                assert ctx.online_ok, ctx.error
                assert ctx == committed[user], user
        assert pushed.is_alive(), "the held write transaction did not make the Feast writer wait"
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    pushed.join(timeout=10)
    assert slowest < budget, f"a read took {slowest * 1000:.0f} ms behind a writer"
    assert reads >= 100
    reader.close()


def _assert_reads_give_up_at_the_budget(reader: OnlineReader) -> None:
    """Three reads of a store that never answers: each fails as a timeout after its 200 ms budget."""
    for _ in range(3):
        started = time.perf_counter()
        ctx = reader.read("anyone")
        elapsed = time.perf_counter() - started
        assert not ctx.online_ok
        assert ctx.error is not None and "timed out after 200 ms" in ctx.error, ctx.error
        assert 0.2 <= elapsed < 0.7, elapsed


def test_an_exclusively_locked_sqlite_store_costs_a_read_at_most_its_budget(
    sqlite_home: Settings, tmp_path: Path
) -> None:
    home = copy_home(sqlite_home, tmp_path / "home")  # its own file: nothing else has it open
    locker = sqlite3.connect(home.feast_dir / "online_store.db", isolation_level=None)
    locker.execute("PRAGMA locking_mode=EXCLUSIVE")  # in WAL mode only this blocks readers
    locker.execute("BEGIN EXCLUSIVE")
    try:
        reader = OnlineReader(feast_store.open_store(home), timeout_s=0.2)
        assert isinstance(reader._direct, SqliteDirectReader)
        assert Path(reader._direct.path) == home.feast_dir / "online_store.db"
        _assert_reads_give_up_at_the_budget(reader)
        reader.close()
    finally:
        locker.execute("ROLLBACK")
        locker.close()


def test_a_redis_that_never_answers_costs_a_read_at_most_its_budget(
    redis_store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feast.infra.online_stores.redis import RedisOnlineStore

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections (the kernel does), never answers
    port = silent.getsockname()[1]
    monkeypatch.setattr(
        RedisOnlineStore,
        "_parse_connection_string",
        staticmethod(lambda _: ([{"host": "127.0.0.1", "port": port}], {})),
    )
    try:
        reader = OnlineReader(redis_store, timeout_s=0.2)
        assert isinstance(reader._direct, RedisDirectReader)
        _assert_reads_give_up_at_the_budget(reader)  # one socket timeout: no retries
        reader.close()
    finally:
        silent.close()
