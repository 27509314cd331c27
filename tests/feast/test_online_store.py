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
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from feast import FeatureStore
from feast.types import Array, Bool, Float64, Int64, String
from stores import Profile, open_profile, write_snapshots

from recs_pipeline.feast import feast_store
from recs_pipeline.feast.online_store import EntityRowSqliteOnlineStoreConfig

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
    """Event times of one test, oldest first, in whole seconds (the test compares the two profiles alike).

    ``t*`` are inside the snapshot views' 30-day TTL, ``s*`` inside the session view's hour, counted
    from the test's start (the online read hides a value older than its view's TTL).
    """

    t1: datetime
    t2: datetime
    t3: datetime
    s1: datetime
    s2: datetime
    s3: datetime


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def profile(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Profile]:
    """The feature repo applied once per profile on a temp home (``feast apply`` takes a while).

    Tests share it and write entities of their own (see ``uid``).
    """
    with open_profile(request.param, tmp_path_factory.mktemp(f"online_{request.param}")) as opened:
        yield opened


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
    write_snapshots(settings, [(f"{uid}1", 1, clock.t1), (f"{uid}1", 2, clock.t2), (f"{uid}9", 20, clock.t2)])
    feast_store.materialize_snapshot(store, clock.t2, views=["user_features"])
    assert _views(store, f"{uid}1") == (2, "cat-2")

    feast_store.materialize_snapshot(store, clock.t1, views=["user_features"])
    assert _views(store, f"{uid}1") == (2, "cat-2"), "materialising an older snapshot must not roll the value back"
    assert _views(store, f"{uid}9") == (20, "cat-20")

    write_snapshots(settings, [(f"{uid}1", 1, clock.t1), (f"{uid}1", 2, clock.t2), (f"{uid}1", 3, clock.t3)])
    feast_store.materialize_snapshot(store, clock.t3, views=["user_features"])
    assert _views(store, f"{uid}1") == (3, "cat-3"), "a newer snapshot must replace the value"


def test_a_snapshot_older_than_a_real_time_write_does_not_replace_it(profile: Profile, uid: str, clock: Clock) -> None:
    store, settings = profile.store, profile.settings
    store.write_to_online_store("user_features", _rows(store, "user_features", [_user_row(f"{uid}1", 7, clock.t3)]))
    write_snapshots(settings, [(f"{uid}1", 2, clock.t2)])
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


def _arrow_rows(store: FeatureStore, rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pandas(_rows(store, "user_features", rows), preserve_index=False)


def test_bulk_writes_keep_the_newest_value(profile: Profile, uid: str, clock: Clock) -> None:
    """The pipeline's own write path (bulk on SQLite, Feast's write elsewhere) under the same rule."""
    store = profile.store
    batch = [_user_row(f"{uid}1", 2, clock.t2), _user_row(f"{uid}2", 3, clock.t3), _user_row(f"{uid}2", 1, clock.t1)]
    feast_store.write_online(store, "user_features", _arrow_rows(store, batch))
    assert (_views(store, f"{uid}1"), _views(store, f"{uid}2")) == ((2, "cat-2"), (3, "cat-3"))

    feast_store.write_online(store, "user_features", _arrow_rows(store, [_user_row(f"{uid}1", 1, clock.t1)]))
    assert _views(store, f"{uid}1") == (2, "cat-2"), "an older bulk write must not replace a newer value"
    feast_store.write_online(store, "user_features", _arrow_rows(store, [_user_row(f"{uid}1", 5, clock.t3)]))
    assert _views(store, f"{uid}1") == (5, "cat-5"), "a newer bulk write must replace the value"


@pytest.mark.parametrize("profile", ["sqlite"], indirect=True)
def test_a_bulk_write_counts_only_rows_that_change_the_store(profile: Profile, uid: str, clock: Clock) -> None:
    store = profile.store
    rows = _arrow_rows(store, [_user_row(f"{uid}{i}", i, clock.t2) for i in range(5)])
    assert feast_store.write_online(store, "user_features", rows) == 5
    assert feast_store.write_online(store, "user_features", rows) == 0, "the same snapshot again rewrites nothing"
    older = _arrow_rows(store, [_user_row(f"{uid}{i}", 9, clock.t1) for i in range(5)])
    assert feast_store.write_online(store, "user_features", older) == 0
    corrected = _arrow_rows(store, [_user_row(f"{uid}0", 7, clock.t2), _user_row(f"{uid}1", 1, clock.t2)])
    assert feast_store.write_online(store, "user_features", corrected) == 1, "only the row whose values differ"
    assert _views(store, f"{uid}0") == (7, "cat-7")


@pytest.mark.parametrize("profile", ["sqlite"], indirect=True)
def test_feast_apply_replaces_a_table_of_another_layout(profile: Profile, uid: str, clock: Clock) -> None:
    """A database written by Feast's row-per-feature ``sqlite`` store (this project's layout before) gets
    the entity-row table on the next ``feast apply``; the pipeline then materialises into it."""
    store, settings = profile.store, profile.settings
    assert isinstance(store.config.online_store, EntityRowSqliteOnlineStoreConfig)
    table = f"{store.project}_user_features"
    with sqlite3.connect(settings.feast_dir / "online_store.db") as con:
        con.execute(f'DROP TABLE "{table}"')
        con.execute(
            f'CREATE TABLE "{table}" (entity_key BLOB, feature_name TEXT, value BLOB, value_text TEXT, '
            "vector_value BLOB, event_ts timestamp, created_ts timestamp, PRIMARY KEY(entity_key, feature_name))"
        )
    with pytest.raises(sqlite3.Error):
        store.write_to_online_store("user_features", _rows(store, "user_features", [_user_row(f"{uid}1", 3, clock.t3)]))

    assert feast_store.apply_repo(settings) is None, "nothing changed: the apply is skipped"
    assert feast_store.apply_repo(settings, force=True) is not None
    with sqlite3.connect(settings.feast_dir / "online_store.db") as con:
        columns = [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]
    assert columns == ["entity_key", "event_ts", "created_ts", "features"]
    store.write_to_online_store("user_features", _rows(store, "user_features", [_user_row(f"{uid}1", 3, clock.t3)]))
    assert _views(store, f"{uid}1") == (3, "cat-3")
