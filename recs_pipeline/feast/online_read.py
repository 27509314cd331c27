"""One user's online features read straight from the online store's own tables or keys.

``FeatureStore.get_online_features(features=<service>, entity_rows=[{...}], full_feature_names=True)
.to_dict(include_event_timestamps=True)`` costs milliseconds of CPU per call: most of it resolves the
feature service, builds Feast's response protobuf and converts it back. The stored rows themselves
take a fraction of a millisecond to read and decode. A :class:`DirectReader` returns *exactly* the
dictionary Feast's call returns (same keys, values, types and ``__ts`` timestamps, ``None`` for a
missing value or an unknown entity), for the two online stores this project uses:

* :class:`SqliteDirectReader`: the SQLite stores, this project's
  :class:`~recs_pipeline.feast.online_store.EntityRowSqliteOnlineStore` (one row per entity) or Feast's
  plain ``sqlite``. Each thread has its own **read-only** connection (``file:...?mode=ro``) with a busy
  timeout equal to the budget and a progress handler that interrupts a statement still running at the
  budget. The rows of every view come from the store class's own ``online_read`` (its SQL and value
  decoding) run on that connection, all inside one read transaction: one consistent snapshot. In WAL
  journal mode (which the store sets) a writer never blocks these reads.
* :class:`RedisDirectReader`: Feast's ``RedisOnlineStore`` layout (key = serialised entity key +
  project, hash fields ``mmh3("<view>:<feature>")`` and ``_ts:<view>``). Keys and fields come from
  Feast's own helpers, the replies are decoded by Feast's own ``_get_features_for_entity``; one
  pipeline (one round trip) carries an ``HMGET`` per view. The client is this reader's own: socket
  and connect timeouts equal to the budget and no retries, so a stuck server costs at most the budget.

The request plan (views, feature names in Feast's order, value types, join key) is Feast's own
(``feast.utils._get_cached_request_context``), resolved once when the reader is built; the entity key
is serialised by Feast's ``serialize_entity_key`` (through ``online_read`` / the Redis key helper)
with the config's ``entity_key_serialization_version``; values are converted by Feast's
``feast_value_type_to_python_type`` with the types ``OnlineResponse.to_dict`` uses, timestamps through
``google.protobuf.Timestamp.FromDatetime(...).seconds`` as Feast's response does.

TTL: Feast 0.67 (pinned) applies a feature view's ``ttl`` online only on the *pre-computed vector*
path (``FeatureService(precompute_online=True)``), and even there only as a field status that
``to_dict`` ignores; the per-view read used for ``realtime_v1`` returns a stored value whatever its
age. So there is no TTL rule to replicate; a service with ``precompute_online`` is not read directly
(see :func:`open_direct_reader`), and ``tests/serving/test_online_read.py`` holds the equality for
values older than their view's TTL.

:func:`open_direct_reader` returns ``None`` (and the reason) for anything else: another store type,
Redis cluster or sentinel, on-demand views, request data, entityless views, versioned reads,
pre-computed vectors. The caller then uses Feast's own call.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
import urllib.parse
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Feast takes seconds to import: loaded on first use
    from feast import FeatureService, FeatureStore, FeatureView, RepoConfig
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto
    from feast.value_type import ValueType

log = logging.getLogger(__name__)

TS_SUFFIX = "__ts"  # feast.online_response.TIMESTAMP_POSTFIX

Row = tuple[datetime | None, dict[str, "ValueProto"] | None]  # what a Feast online store's online_read returns


class Unsupported(Exception):
    """The configured store or feature service cannot be read directly (the reason is the message)."""


@dataclass(frozen=True)
class ViewPlan:
    """One feature view of the service, as Feast resolved it for the request."""

    table: FeatureView  # the view with the service's projection
    features: tuple[str, ...]  # requested feature names, in Feast's order
    refs: tuple[str, ...]  # full feature names: ``<view>__<feature>``
    types: tuple[ValueType | None, ...]  # what OnlineResponse.to_dict converts each with
    join_keys: tuple[str, ...]  # the view's join keys (after the projection's join key map)


@dataclass(frozen=True)
class ReadPlan:
    """A feature service's online read for one entity row, resolved once by Feast's own code."""

    service: str
    join_key: str
    join_key_type: ValueType
    join_key_python_type: ValueType | None
    entity_name_to_join_key: dict[str, str]
    views: tuple[ViewPlan, ...]

    def entity_value(self, entity_id: Any) -> ValueProto:
        """The entity row's value as Feast converts it (``python_values_to_proto_values`` with the entity's type)."""
        from feast.type_map import python_values_to_proto_values

        return python_values_to_proto_values([entity_id], self.join_key_type)[0]

    def entity_keys(self, value: ValueProto) -> list[EntityKeyProto]:
        """Each view's entity key for the row, built as Feast builds it (``_get_unique_entities``)."""
        from feast import utils

        join_key_values = {self.join_key: [value]}
        by_join_keys: dict[tuple[str, ...], EntityKeyProto] = {}  # views keyed alike share their key
        keys = []
        for view in self.views:
            key = by_join_keys.get(view.join_keys)
            if key is None:
                unique, _, _ = utils._get_unique_entities(view.table, join_key_values, self.entity_name_to_join_key)
                (key,) = utils._get_entity_key_protos(unique)
                by_join_keys[view.join_keys] = key
            keys.append(key)
        return keys

    def response(self, value: ValueProto, rows: Sequence[Row]) -> dict[str, list[Any]]:
        """What ``OnlineResponse.to_dict(include_event_timestamps=True)`` returns for these rows.

        The join key first (its timestamp 0, as Feast's response carries), then each view's features
        in Feast's order, each followed by its ``__ts`` key: the view's row timestamp in whole seconds,
        0 for an entity the view does not hold. A feature without a stored value is ``None``.
        """
        from feast.type_map import feast_value_type_to_python_type
        from google.protobuf.timestamp_pb2 import Timestamp  # type: ignore[import-untyped]

        out: dict[str, list[Any]] = {
            self.join_key: [feast_value_type_to_python_type(value, self.join_key_python_type)],
            self.join_key + TS_SUFFIX: [0],
        }
        for view, (row_ts, data) in zip(self.views, rows, strict=True):
            ts = Timestamp()
            if row_ts is not None:
                ts.FromDatetime(row_ts)
            seconds = ts.seconds
            stored = data or {}
            for name, ref, vtype in zip(view.features, view.refs, view.types, strict=True):
                proto = stored.get(name)
                # an absent value is Feast's empty ValueProto, which to_dict turns into None
                out[ref] = [None if proto is None else feast_value_type_to_python_type(proto, vtype)]
                out[ref + TS_SUFFIX] = [seconds]
        return out


def plan_read(store: FeatureStore, service: FeatureService) -> ReadPlan:
    """Feast's own resolution of ``service`` for one entity row with full feature names.

    Raises :class:`Unsupported` where the service needs what a direct read does not do.
    """
    from feast import utils
    from feast.feature_view import DUMMY_ENTITY_ID
    from feast.infra.online_stores.online_store import OnlineStore

    if getattr(service, "precompute_online", False):
        raise Unsupported(f"feature service {service.name!r} reads pre-computed vectors")
    (
        _refs,
        on_demand_views,
        entity_name_to_join_key,
        entity_type_map,
        join_keys,
        grouped_refs,
        _row_names,
        request_data,
        entityless,
    ) = utils._get_cached_request_context(store.registry, store.project, service, True)
    if on_demand_views:
        raise Unsupported(f"feature service {service.name!r} has on-demand feature views")
    if request_data:
        raise Unsupported(f"feature service {service.name!r} needs request data {sorted(request_data)}")
    if entityless:
        raise Unsupported(f"feature service {service.name!r} has an entityless feature view")
    feature_types = OnlineStore._build_feature_types(grouped_refs)
    views = []
    for table, requested in grouped_refs:
        if getattr(table.projection, "version_tag", None) is not None:
            raise Unsupported(f"feature view {table.name!r} is read at a pinned version")
        alias = {v: k for k, v in table.projection.join_key_map.items()}
        view_keys = tuple(alias.get(entity_name_to_join_key[e], entity_name_to_join_key[e]) for e in table.entities)
        if len(view_keys) != 1 or view_keys[0] == DUMMY_ENTITY_ID:
            raise Unsupported(f"feature view {table.name!r} has join keys {list(view_keys)}: one is read directly")
        prefix = table.projection.name_to_use()
        features = tuple(requested)
        refs = tuple(f"{prefix}__{f}" for f in features)
        views.append(ViewPlan(table, features, refs, tuple(feature_types.get(r) for r in refs), view_keys))
    keys = {v.join_keys for v in views}
    if len(keys) != 1:
        raise Unsupported(
            f"feature service {service.name!r} has views keyed by {sorted(keys)}: one key is read directly"
        )
    ((join_key,),) = keys
    if join_key not in join_keys:
        raise Unsupported(f"join key {join_key!r} is not an entity's join key")
    return ReadPlan(
        service=service.name,
        join_key=join_key,
        join_key_type=entity_type_map[join_key],
        join_key_python_type=feature_types.get(join_key),
        entity_name_to_join_key=dict(entity_name_to_join_key),
        views=tuple(views),
    )


class DirectReader(ABC):
    """Reads one entity's values of a feature service from the online store, Feast's dict out."""

    kind: str

    def __init__(self, plan: ReadPlan, config: RepoConfig, *, timeout_s: float) -> None:
        self.plan = plan
        self.config = config
        self.timeout_s = timeout_s

    def read(self, entity_id: Any) -> dict[str, list[Any]]:
        """``get_online_features(...).to_dict(include_event_timestamps=True)`` for one entity row."""
        value = self.plan.entity_value(entity_id)
        rows = self._rows(self.plan.entity_keys(value))
        return self.plan.response(value, rows)

    @abstractmethod
    def _rows(self, keys: list[EntityKeyProto]) -> list[Row]:
        """Each view's ``(timestamp, values)`` for its key, as Feast's ``online_read`` returns them."""

    @abstractmethod
    def describe(self) -> str:
        """Which store is read, for the start-up log line."""

    @abstractmethod
    def close(self) -> None: ...


class _ThreadConnection:
    """One thread's read-only connection and the Feast store object that reads through it.

    ``deadline`` is a one-element list the connection's progress handler reads: the handler must not
    refer to this object, so that it is freed (and the connection closed) when its thread ends.
    """

    def __init__(self, conn: sqlite3.Connection, feast_store: Any, deadline: list[float]) -> None:
        self.conn = conn
        self.feast_store = feast_store
        self.deadline = deadline


class SqliteDirectReader(DirectReader):
    """Reads Feast's SQLite online store on per-thread read-only connections (see the module docstring)."""

    kind = "sqlite"

    def __init__(self, plan: ReadPlan, config: RepoConfig, *, timeout_s: float, store_class: type[Any]) -> None:
        from recs_pipeline.feast.online_store import db_path

        super().__init__(plan, config, timeout_s=timeout_s)
        self.store_class = store_class  # EntityRowSqliteOnlineStore, or Feast's SqliteOnlineStore
        self.path = db_path(config)
        self._uri = "file:" + urllib.parse.quote(self.path) + "?mode=ro"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._finalizers: list[weakref.finalize] = []
        self._closed = False

    def _thread(self) -> _ThreadConnection:
        state: _ThreadConnection | None = getattr(self._local, "state", None)
        if state is not None:
            return state
        if self._closed:
            raise RuntimeError("the online reader is closed")
        # as Feast opens its own (converters for the ``timestamp`` columns), but read-only, in
        # autocommit (the read transaction is explicit) and waiting at most the budget for a lock
        conn = sqlite3.connect(
            self._uri,
            uri=True,
            timeout=self.timeout_s,
            detect_types=sqlite3.PARSE_DECLTYPES | sqlite3.PARSE_COLNAMES,
            isolation_level=None,
            check_same_thread=False,  # used by its thread only; closed by close() or when the thread ends
        )
        feast_store = self.store_class()
        feast_store._conn = conn  # the store's own online_read, on this connection
        deadline = [0.0]
        # a statement still running at the deadline is interrupted (sqlite3.OperationalError: interrupted)
        conn.set_progress_handler(lambda: time.monotonic() > deadline[0], 1000)
        state = _ThreadConnection(conn, feast_store, deadline)
        with self._lock:
            self._finalizers = [f for f in self._finalizers if f.alive]
            self._finalizers.append(weakref.finalize(state, conn.close))
        self._local.state = state
        return state

    def _rows(self, keys: list[EntityKeyProto]) -> list[Row]:
        state = self._thread()
        state.deadline[0] = time.monotonic() + self.timeout_s
        conn = state.conn
        # one snapshot for every view: the lock wait, if any, happens once (at the first SELECT)
        conn.execute("BEGIN")
        try:
            return [
                state.feast_store.online_read(self.config, view.table, [key], list(view.features))[0]
                for view, key in zip(self.plan.views, keys, strict=True)
            ]
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")  # a read-only transaction: ends the snapshot

    def journal_mode(self) -> str:
        return str(self._thread().conn.execute("PRAGMA journal_mode").fetchone()[0])

    def describe(self) -> str:
        try:
            mode = f"journal mode {self.journal_mode()}"
        except sqlite3.Error as e:
            mode = f"not readable yet: {e}"
        return (
            f"direct SQLite read of {self.path} ({mode}; read-only per-thread connections, "
            f"busy timeout {self.timeout_s * 1000:.0f} ms)"
        )

    def close(self) -> None:
        self._closed = True
        with self._lock:
            finalizers, self._finalizers = self._finalizers, []
        for finalize in finalizers:
            finalize()


class RedisDirectReader(DirectReader):
    """Reads Feast's Redis online store with one pipeline per request (see the module docstring)."""

    kind = "redis"

    def __init__(self, plan: ReadPlan, config: RepoConfig, *, timeout_s: float) -> None:
        from feast.infra.online_stores.redis import RedisOnlineStore, _versioned_fv_name
        from redis import Redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        super().__init__(plan, config, timeout_s=timeout_s)
        self._feast = RedisOnlineStore()  # for its key, field and decoding helpers only; never connects
        nodes, kwargs = RedisOnlineStore._parse_connection_string(config.online_store.connection_string)
        kwargs.update(
            host=nodes[0]["host"],
            port=nodes[0]["port"],
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # redis-py retries 3 times by default: that would be 4 budgets
        )
        self.address = f"{nodes[0]['host']}:{nodes[0]['port']}"
        self._client = Redis(**kwargs)
        self._fields: list[tuple[str, list[str], list[str | bytes]]] = []
        for view in plan.views:
            fv_name = _versioned_fv_name(view.table, config)
            names, fields = self._feast._generate_hset_keys_for_features(
                view.table, list(view.features), fv_name_override=fv_name
            )
            self._fields.append((fv_name, names, fields))

    def _rows(self, keys: list[EntityKeyProto]) -> list[Row]:
        redis_keys = self._feast._generate_redis_keys_for_entities(self.config, keys)
        with self._client.pipeline(transaction=False) as pipe:
            for key, (_, _, fields) in zip(redis_keys, self._fields, strict=True):
                pipe.hmget(key, fields)  # type: ignore[arg-type]  # Feast's keys are bytes, as redis-py accepts
            replies = pipe.execute()
        return [
            self._feast._convert_redis_values_to_protobuf([reply], fv_name, names)[0]
            for reply, (fv_name, names, _) in zip(replies, self._fields, strict=True)
        ]

    def describe(self) -> str:
        return (
            f"direct Redis read of {self.address} project {self.config.project!r} "
            f"(one pipeline per request, socket timeout {self.timeout_s * 1000:.0f} ms, no retries)"
        )

    def close(self) -> None:
        self._client.close()


def open_direct_reader(
    store: FeatureStore, service: FeatureService, *, timeout_s: float
) -> tuple[DirectReader | None, str]:
    """A direct reader of ``service`` for the store's online store, or ``None`` and why not."""
    from feast.infra.online_stores.online_store import OnlineStore
    from feast.infra.online_stores.sqlite import SqliteOnlineStore

    from recs_pipeline.feast.online_store import EntityRowSqliteOnlineStore

    online_store = store._get_provider().online_store
    store_type = store.config.online_store.type
    reader_class: Callable[..., DirectReader] | None = None
    if type(online_store) in (EntityRowSqliteOnlineStore, SqliteOnlineStore):
        reader_class = functools.partial(SqliteDirectReader, store_class=type(online_store))
    elif isinstance(online_store, (EntityRowSqliteOnlineStore, SqliteOnlineStore)):
        return None, f"online store {store_type} reads its own way (a subclass)"
    else:
        try:
            from feast.infra.online_stores.redis import RedisOnlineStore, RedisType
        except Exception:  # Feast without its redis extra
            RedisOnlineStore = None  # type: ignore[assignment,misc]  # noqa: N806
        if RedisOnlineStore is not None and isinstance(online_store, RedisOnlineStore):
            if store.config.online_store.redis_type != RedisType.redis:
                return None, f"Redis type {store.config.online_store.redis_type.value} is read by Feast"
            overridden = [
                m
                for m in ("online_read", "_read_features_per_fv", "_get_features_for_entity")
                if getattr(type(online_store), m) is not getattr(RedisOnlineStore, m)
            ]
            if overridden:
                return None, f"online store {store_type} reads its own way ({', '.join(overridden)})"
            reader_class = RedisDirectReader
    if reader_class is None:
        return None, f"online store type {store_type!r} has no direct reader"
    if type(online_store).get_online_features is not OnlineStore.get_online_features:
        return None, f"online store {store_type} overrides get_online_features"
    try:
        plan = plan_read(store, service)
    except Unsupported as e:
        return None, str(e)
    return reader_class(plan, store.config, timeout_s=timeout_s), ""
