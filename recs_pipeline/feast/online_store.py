"""A Feast online store on SQLite with one row per entity, bulk writes, and a newer-only rule.

Feast's own ``sqlite`` store keeps one row per (entity, feature) and converts every value to a
protobuf in Python before writing it: about 55k values per CPU-second here, so a 232k-item catalog
(4.2M values) took minutes and 0.8 GB. :class:`EntityRowSqliteOnlineStore` is a Feast online store
(``type:`` in ``feature_store.yaml``; Feast reads, writes, pushes and ``get_online_features`` go
through it) with another layout and a second, bulk write path:

* **Layout**: one table per feature view (``<project>_<view>``, Feast's table id) with one row per
  entity: ``entity_key`` (Feast's serialised key, v3), ``event_ts`` and ``created_ts`` (epoch
  microseconds) and ``features``, a JSON object of feature name -> value. JSON carries every type the
  feature views use (integers, doubles, booleans, strings and lists of them) exactly (a double is
  written with its shortest round-trip form), and is read back into the value Feast's protobuf would
  hold (:class:`ViewCodec`), so ``get_online_features`` answers what Feast's own store would answer.
* **Bulk writes** (:meth:`EntityRowSqliteOnlineStore.write_arrow`): an Arrow table of a view's rows
  becomes JSON inside DuckDB (``to_json``, vectorised), keys are serialised in bulk with Arrow
  (:class:`EntityKeyEncoder`, checked against Feast's ``serialize_entity_key``), and rows go to SQLite
  with multi-row upserts in transactions of :data:`WRITE_CHUNK_ROWS`: over 1M values per second on two
  cores for the wide views, a cost per row for narrow ones (docs/BENCHMARKS.md). Feast's path
  (:meth:`online_write_batch`: ``push``, ``write_to_online_store``, ``materialize``) writes the same
  rows, one Python conversion per value.
* **Newer only**, per entity row, enforced inside the upsert (``ON CONFLICT ... DO UPDATE ... WHERE``):
  a newer event time replaces the row; an older one is skipped; an *equal* one replaces it when the
  values differ (a corrected snapshot of the same time) and is a no-op when they are equal (a
  re-materialised snapshot rewrites nothing). Rows of one batch are applied in order, so an older
  row after a newer one for the same entity is skipped too. Feast's Redis store differs at equal
  times: it skips a write whose time is older than *or equal to* the stored one.

Use it from ``feature_store.yaml``::

    online_store:
      type: recs_pipeline.feast.online_store.EntityRowSqliteOnlineStore
      path: ${RECS_HOME}/feast/online_store.db

Feast resolves a dotted ``type`` ending in ``OnlineStore`` by importing ``<type>Config`` from the
same module. ``feast apply`` (:meth:`update`) creates the tables; a table of another layout (Feast's
plain ``sqlite`` store, the row-per-feature layout this project used before) is dropped and created
anew, empty, with a warning: online values are derived, and the pipeline materialises right after
applying.

The database is put in WAL journal mode when this store first opens it; the mode is stored in the
file, so it holds for every later connection. In WAL mode a write transaction never blocks readers
(they see the last committed values), which the scoring service's direct reads rely on
(:mod:`recs_pipeline.feast.online_read`); writers wait for each other (a bulk write commits every
:data:`WRITE_CHUNK_ROWS` rows, so a session write waits for one chunk at most).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from feast import Entity, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import compute_table_id
from feast.infra.online_stores.online_store import OnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from feast.type_map import feast_value_type_to_python_type
from feast.value_type import ValueType
from pydantic import StrictStr

if TYPE_CHECKING:
    import pyarrow as pa
    from feast.infra.supported_async_methods import SupportedAsyncMethods

ONLINE_STORE_TYPE: Final = "recs_pipeline.feast.online_store.EntityRowSqliteOnlineStore"
# Rows per write transaction of a bulk write (a concurrent writer waits for one chunk at most).
WRITE_CHUNK_ROWS = 50_000
# Rows per upsert statement (a multi-row VALUES list): binding row by row through executemany cost
# more than SQLite's own insert work; 4 x 250 parameters stays far below SQLite's limit of 32,766.
ROWS_PER_STATEMENT = 250
# SQLite's busy timeout of this store's connections (seconds): how long a write waits for another
# writer (a bulk write holds the lock for one chunk of rows at a time, well under a second).
BUSY_TIMEOUT_S = 10.0

# View codecs kept per store object (oldest dropped first).
CODEC_CACHE = 64

COLUMNS = ("entity_key", "event_ts", "created_ts", "features")

log = logging.getLogger(__name__)

Row = tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]
ReadRow = tuple[datetime | None, dict[str, ValueProto] | None]


def _quote_id(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def use_wal(conn: sqlite3.Connection, where: str) -> str:
    """Put the database of ``conn`` in WAL journal mode (persistent); returns the mode (``unchanged`` on failure).

    Switching needs a moment without other connections' transactions: when it cannot (``database is
    locked`` after the connection's busy timeout) the database stays in its mode, a warning says so,
    and the next opening of the store tries again.
    """
    try:
        mode = str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
    except sqlite3.OperationalError as e:
        log.warning("the online store %s stays in its journal mode (readers may wait for writers): %s", where, e)
        return "unchanged"
    if mode != "wal":
        log.warning("the online store %s is in journal mode %r, not WAL (readers wait for writers)", where, mode)
    return mode


def db_path(config: RepoConfig) -> str:
    """The database file of ``config``'s online store (a relative ``path`` is relative to the repo)."""
    path = Path(config.online_store.path)
    if config.repo_path and not path.is_absolute():
        return str(Path(config.repo_path) / path)
    return str(path)


def table_name(config: RepoConfig, view: FeatureView) -> str:
    """The online table of ``view``: Feast's table id (``<project>_<view>``)."""
    return compute_table_id(config.project, view, config.registry.enable_online_feature_view_versioning)


def create_table_sql(name: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {_quote_id(name)} (entity_key BLOB PRIMARY KEY, "
        "event_ts INTEGER NOT NULL, created_ts INTEGER, features TEXT NOT NULL)"
    )


def upsert_sql(name: str, rows: int = 1) -> str:
    """The newer-only upsert of ``rows`` rows (see the module docstring for the rule).

    SQLite applies a VALUES list row after row, so a later row for the same entity meets the earlier
    one as the stored row: the rule holds within a statement as between statements.
    """
    table = _quote_id(name)
    values = ", ".join(["(?, ?, ?, ?)"] * rows)
    return (
        f"INSERT INTO {table} (entity_key, event_ts, created_ts, features) VALUES {values} "
        "ON CONFLICT (entity_key) DO UPDATE SET event_ts = excluded.event_ts, "
        "created_ts = excluded.created_ts, features = excluded.features "
        f"WHERE excluded.event_ts > {table}.event_ts "
        f"OR (excluded.event_ts = {table}.event_ts AND excluded.features IS NOT {table}.features)"
    )


def epoch_us(ts: datetime) -> int:
    """Epoch microseconds of ``ts`` (a naive time is UTC, as Feast assumes)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_epoch_us(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, tz=UTC).replace(microsecond=us % 1_000_000)


# --------------------------------------------------------------------------------------------
# Values: JSON in the table, Feast's protobuf or Python values out.
# --------------------------------------------------------------------------------------------


def _float_or_none(v: Any) -> float | None:
    # Feast stores a NaN scalar as a missing value (pd.isnull), so a NaN reads as None here too
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _float32(v: Any) -> float:
    return struct.unpack("<f", struct.pack("<f", float(v)))[0]  # what a float_val holds


@dataclass(frozen=True)
class _TypeCodec:
    """How one Feast value type is read from JSON: as Python (``to_python``) and as Feast's protobuf."""

    to_python: Callable[[Any], Any]
    to_proto: Callable[[Any], ValueProto]


def _scalar(convert: Callable[[Any], Any], field: str) -> _TypeCodec:
    def to_python(v: Any) -> Any:
        return None if v is None else convert(v)

    def to_proto(v: Any) -> ValueProto:
        proto = ValueProto()
        if v is not None:
            setattr(proto, field, convert(v))
        return proto

    return _TypeCodec(to_python, to_proto)


def _floating(convert: Callable[[Any], float], field: str) -> _TypeCodec:
    def to_python(v: Any) -> float | None:
        x = _float_or_none(v)
        return None if x is None else convert(x)

    def to_proto(v: Any) -> ValueProto:
        x, proto = _float_or_none(v), ValueProto()
        if x is not None:
            setattr(proto, field, convert(x))
        return proto

    return _TypeCodec(to_python, to_proto)


def _listing(convert: Callable[[Any], Any], field: str) -> _TypeCodec:
    def to_python(v: Any) -> list[Any] | None:
        return None if v is None else [convert(x) for x in v]

    def to_proto(v: Any) -> ValueProto:
        proto = ValueProto()
        if v is not None:
            values = getattr(proto, field)
            values.SetInParent()  # an empty list is a value too (Feast's [] is not a missing value)
            values.val.extend([convert(x) for x in v])
        return proto

    return _TypeCodec(to_python, to_proto)


# The value types this store holds; a view with another type is refused by ``feast apply``.
TYPE_CODECS: dict[ValueType, _TypeCodec] = {
    ValueType.STRING: _scalar(str, "string_val"),
    ValueType.INT32: _scalar(int, "int32_val"),
    ValueType.INT64: _scalar(int, "int64_val"),
    ValueType.BOOL: _scalar(bool, "bool_val"),
    ValueType.DOUBLE: _floating(float, "double_val"),
    ValueType.FLOAT: _floating(_float32, "float_val"),
    ValueType.STRING_LIST: _listing(str, "string_list_val"),
    ValueType.INT32_LIST: _listing(int, "int32_list_val"),
    ValueType.INT64_LIST: _listing(int, "int64_list_val"),
    ValueType.BOOL_LIST: _listing(bool, "bool_list_val"),
    ValueType.DOUBLE_LIST: _listing(float, "double_list_val"),
    ValueType.FLOAT_LIST: _listing(_float32, "float_list_val"),
}


class ViewCodec:
    """A feature view's features in and out of the ``features`` JSON column."""

    def __init__(self, view: FeatureView) -> None:
        self.view = view.name
        self.types = {f.name: f.dtype.to_value_type() for f in view.features}
        unsupported = {n: t.name for n, t in self.types.items() if t not in TYPE_CODECS}
        if unsupported:
            raise ValueError(
                f"feature view {view.name!r} has features of types this online store does not hold: "
                f"{unsupported}; supported: {sorted(t.name for t in TYPE_CODECS)}"
            )
        self._codecs = {n: TYPE_CODECS[t] for n, t in self.types.items()}

    def encode(self, values: dict[str, ValueProto]) -> str:
        """The JSON of a row Feast hands to ``online_write_batch``."""
        unknown = sorted(set(values) - set(self.types))
        if unknown:
            raise ValueError(f"feature view {self.view!r} has no features {unknown}")
        return json.dumps(
            {n: feast_value_type_to_python_type(v) for n, v in values.items()}, separators=(",", ":"), allow_nan=True
        )

    def protos(self, text: str, requested: Iterable[str] | None) -> dict[str, ValueProto]:
        """The stored row's values as Feast's store would return them (a feature never written is absent)."""
        stored = json.loads(text)
        names = stored.keys() if requested is None else [n for n in requested if n in stored]
        return {n: self._codecs[n].to_proto(stored[n]) for n in names if n in self._codecs}

    def python(self, text: str, requested: Iterable[str]) -> dict[str, Any]:
        """The stored row's values as ``OnlineResponse.to_dict`` would convert Feast's protobufs (``None`` if absent)."""
        stored = json.loads(text)
        return {n: self._codecs[n].to_python(stored.get(n)) for n in requested}


# --------------------------------------------------------------------------------------------
# Entity keys in bulk, byte for byte Feast's serialize_entity_key (v3).
# --------------------------------------------------------------------------------------------

_KEY_VALUE_TYPES: dict[ValueType, tuple[int, Callable[[Any], bytes]]] = {
    ValueType.STRING: (ValueType.STRING.value, lambda v: str(v).encode("utf8")),
    ValueType.INT64: (ValueType.INT64.value, lambda v: struct.pack("<q", int(v))),
    ValueType.INT32: (ValueType.INT32.value, lambda v: struct.pack("<i", int(v))),
}


class EntityKeyEncoder:
    """Serialises a view's entity keys as Feast's ``serialize_entity_key`` (version 3) does, without protobufs.

    Version 3: the number of join keys, each join key name (sorted) as ``<type><length><utf8>``,
    then each value (in the names' order) as ``<type><length><bytes>``; integers little-endian.
    :meth:`encode` compares its first key with Feast's own function, so a change of Feast's format
    fails loudly instead of writing keys nobody can read.
    """

    def __init__(self, join_keys: Sequence[str], types: Sequence[ValueType], serialization_version: int) -> None:
        if serialization_version != 3:
            raise ValueError(f"entity_key_serialization_version {serialization_version} is not supported (3 is)")
        unsupported = [t.name for t in types if t not in _KEY_VALUE_TYPES]
        if unsupported:
            raise ValueError(f"join key types {unsupported} are not supported (string, int64, int32)")
        order = sorted(range(len(join_keys)), key=lambda i: join_keys[i])
        self.join_keys = [join_keys[i] for i in order]  # sorted, as Feast sorts them
        self._types = [types[i] for i in order]
        prefix = [struct.pack("<I", len(order))]
        for name in self.join_keys:
            encoded = name.encode("utf8")
            prefix += [struct.pack("<I", ValueType.STRING.value), struct.pack("<I", len(encoded)), encoded]
        self._prefix = b"".join(prefix)
        self._parts = [_KEY_VALUE_TYPES[t] for t in self._types]

    def encode(self, columns: Sequence[Sequence[Any]]) -> list[bytes]:
        """The keys of the rows whose join key values are ``columns`` (one sequence per join key, sorted by name)."""
        pack = struct.pack
        per_column = []
        for (type_code, to_bytes), values in zip(self._parts, columns, strict=True):
            head = pack("<I", type_code)
            encoded = []
            for v in values:
                if v is None:
                    raise ValueError(f"a row has no value for join key(s) {self.join_keys}")
                b = to_bytes(v)
                encoded.append(head + pack("<I", len(b)) + b)
            per_column.append(encoded)
        prefix = self._prefix
        keys = [prefix + b"".join(parts) for parts in zip(*per_column, strict=True)]
        if keys:
            self._check(keys[0], [c[0] for c in columns])
        return keys

    @property
    def all_strings(self) -> bool:
        """Whether every join key is a string (the case :meth:`encode_arrow` and :meth:`order_sql` serve)."""
        return all(t is ValueType.STRING for t in self._types)

    def encode_arrow(self, columns: Sequence[pa.Array | pa.ChunkedArray]) -> list[bytes]:
        """:meth:`encode` for string join keys, with Arrow's vectorised kernels (``columns`` in the
        sorted join keys' order); the lengths become 4 little-endian bytes through numpy.

        Raises
        ------
        ValueError
            When a join key is not a string (use :meth:`encode`) or a row has no value for one.
        """
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        if not self.all_strings:
            raise ValueError(f"join keys {self.join_keys} are not all strings: use encode()")
        string_type = pa.scalar(struct.pack("<I", ValueType.STRING.value), pa.binary())
        parts: list[Any] = [pa.scalar(self._prefix, pa.binary())]
        for column in columns:
            if column.null_count:
                raise ValueError(f"a row has no value for join key(s) {self.join_keys}")
            values = column.cast(pa.binary())
            lengths = np.asarray(pc.binary_length(values), dtype="<u4")
            length_bytes = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(4), len(lengths), [None, pa.py_buffer(lengths.tobytes())]
            ).cast(pa.binary())
            parts += [string_type, length_bytes, values]
        keys: list[bytes] = pc.binary_join_element_wise(*parts, pa.scalar(b"", pa.binary())).to_pylist()
        if keys:
            self._check(keys[0], [c[0].as_py() for c in columns])
        return keys

    def order_sql(self) -> str | None:
        """A DuckDB ORDER BY list that sorts rows as their keys sort byte by byte (each string
        join key's 4 length bytes, lowest first, then its bytes), without sorting the BLOBs: DuckDB
        sorts a million BLOB keys several times slower than these integers and strings. ``None``
        unless every join key is a string."""
        if not self.all_strings:
            return None
        order = []
        for name in self.join_keys:
            column = '"' + name.replace('"', '""') + '"'
            length = f"octet_length(encode({column}))"
            order += [f"{length} & 255", f"({length} >> 8) & 255", f"({length} >> 16) & 255", f"{length} >> 24"]
            order.append(column)  # DuckDB compares strings byte by byte (UTF-8), as a key's bytes compare
        return ", ".join(order)

    def check(self, key: bytes, values: Sequence[Any]) -> None:
        """Raise unless ``key`` is what Feast's ``serialize_entity_key`` makes of ``values`` (sorted join keys' order)."""
        self._check(key, values)

    def _check(self, key: bytes, values: Sequence[Any]) -> None:
        from feast.type_map import python_values_to_proto_values

        protos = [python_values_to_proto_values([v], t)[0] for v, t in zip(values, self._types, strict=True)]
        expected = serialize_entity_key(EntityKeyProto(join_keys=self.join_keys, entity_values=protos), 3)
        if key != expected:
            raise RuntimeError(
                f"bulk entity key {key!r} differs from Feast's serialize_entity_key {expected!r} for {values}: "
                "Feast's key format changed; update EntityKeyEncoder"
            )


# --------------------------------------------------------------------------------------------
# The store.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteCounts:
    """What a bulk write did: rows offered, rows that changed the store, rows skipped (older or equal)."""

    rows: int
    changed: int

    @property
    def skipped(self) -> int:
        return self.rows - self.changed


class EntityRowSqliteOnlineStoreConfig(FeastConfigBaseModel):
    """Config of :class:`EntityRowSqliteOnlineStore`: the database file (``path``, relative to the repo or absolute)."""

    type: Literal["recs_pipeline.feast.online_store.EntityRowSqliteOnlineStore"] = ONLINE_STORE_TYPE
    path: StrictStr = "data/online_store.db"


class EntityRowSqliteOnlineStore(OnlineStore):
    """Feast's online store interface on SQLite, one row per entity (see the module docstring).

    One connection per store object; writes through it are serialised (the sync and async paths share it).
    """

    def __init__(self) -> None:
        self._conn: sqlite3.Connection | None = None
        self._codecs: dict[int, tuple[FeatureView, ViewCodec]] = {}
        self._write_lock = threading.Lock()

    @property
    def async_supported(self) -> SupportedAsyncMethods:
        from feast.infra.supported_async_methods import SupportedAsyncMethods

        return SupportedAsyncMethods(read=True, write=True)

    # -- connections and tables ------------------------------------------------------------

    def _get_conn(self, config: RepoConfig) -> sqlite3.Connection:
        if self._conn is None:
            path = db_path(config)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            use_wal(conn, path)
            # WAL with synchronous=NORMAL: a commit is not fsynced (the WAL is, at checkpoints), so a
            # power cut may lose the last commits but never corrupts the file; the values are
            # derived and rewritten by the next materialisation or refresh
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-65536")  # 64 MB of pages: bulk upserts touch many
            self._conn = conn
        return self._conn

    def codec(self, view: FeatureView) -> ViewCodec:
        """The view's codec, cached per view object (the serving reader's plan keeps its objects; a
        write through Feast brings new ones, so the cache keeps the latest :data:`CODEC_CACHE` only)."""
        hit = self._codecs.get(id(view))
        if hit is not None and hit[0] is view:
            return hit[1]
        codec = ViewCodec(view)
        self._codecs[id(view)] = (view, codec)  # the view is held, so its id is not reused meanwhile
        while len(self._codecs) > CODEC_CACHE:
            self._codecs.pop(next(iter(self._codecs)))
        return codec

    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ) -> None:
        """``feast apply``: create each kept view's table (replacing one of another layout), drop deleted ones."""
        conn = self._get_conn(config)
        with self._write_lock:
            for view in tables_to_keep:
                self.codec(view)  # refuses a view with unsupported types before anything is written
                name = table_name(config, view)
                columns = tuple(r[1] for r in conn.execute(f"PRAGMA table_info({_quote_id(name)})"))
                if columns and columns != COLUMNS:
                    log.warning(
                        "online table %s has another layout (%s): dropped and created empty; materialise to fill it",
                        name,
                        ", ".join(columns),
                    )
                    conn.execute(f"DROP TABLE {_quote_id(name)}")
                conn.execute(create_table_sql(name))
            for view in tables_to_delete:
                conn.execute(f"DROP TABLE IF EXISTS {_quote_id(table_name(config, view))}")

    def teardown(self, config: RepoConfig, tables: Sequence[FeatureView], entities: Sequence[Entity]) -> None:
        """Drop the views' tables (the database file stays: other projects may share it)."""
        conn = self._get_conn(config)
        with self._write_lock:
            for view in tables:
                conn.execute(f"DROP TABLE IF EXISTS {_quote_id(table_name(config, view))}")
        conn.close()
        self._conn = None

    # -- writes ------------------------------------------------------------------------------

    def _upsert(
        self,
        config: RepoConfig,
        view: FeatureView,
        keys: Sequence[bytes],
        event_ts: Sequence[int],
        created_ts: Sequence[int | None],
        features: Sequence[str],
    ) -> int:
        """Apply the rows (one value of each column per row) in order, :data:`WRITE_CHUNK_ROWS` per
        transaction, :data:`ROWS_PER_STATEMENT` per statement; returns the rows that changed the store."""
        conn = self._get_conn(config)
        name = table_name(config, view)
        n = len(keys)
        params: list[Any] = [None] * (n * len(COLUMNS))  # row after row, the columns' order
        for i, column in enumerate((keys, event_ts, created_ts, features)):
            if len(column) != n:
                raise ValueError(f"columns of unequal length ({len(column)} and {n} rows)")
            params[i :: len(COLUMNS)] = column
        width = ROWS_PER_STATEMENT * len(COLUMNS)
        many = upsert_sql(name, ROWS_PER_STATEMENT)
        changed = 0
        with self._write_lock:
            for start in range(0, n, WRITE_CHUNK_ROWS):
                stop = min(start + WRITE_CHUNK_ROWS, n)
                whole = start + (stop - start) // ROWS_PER_STATEMENT * ROWS_PER_STATEMENT
                before = conn.total_changes
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        first, last = start * len(COLUMNS), whole * len(COLUMNS)
                        conn.executemany(many, (params[i : i + width] for i in range(first, last, width)))
                        if whole < stop:
                            conn.execute(upsert_sql(name, stop - whole), params[last : stop * len(COLUMNS)])
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
                except sqlite3.OperationalError as e:
                    if "no such table" not in str(e):
                        raise
                    raise RuntimeError(
                        f"the online table {name!r} of feature view {view.name!r} does not exist in "
                        f"{db_path(config)}: run `feast apply` (`recs feast apply`) before writing"
                    ) from e
                changed += conn.total_changes - before
        return changed

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[Row],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Feast's write path (``push``, ``write_to_online_store``, ``materialize``): protobuf rows, newer only."""
        codec = self.codec(table)
        version = config.entity_key_serialization_version
        self._upsert(
            config,
            table,
            [serialize_entity_key(key, entity_key_serialization_version=version) for key, _, _, _ in data],
            [epoch_us(event_ts) for _, _, event_ts, _ in data],
            [None if created_ts is None else epoch_us(created_ts) for _, _, _, created_ts in data],
            [codec.encode(values) for _, values, _, _ in data],
        )
        if progress:
            progress(len(data))

    async def online_write_batch_async(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[Row],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """:meth:`online_write_batch` in a worker thread (``push_async``, ``write_to_online_store_async``)."""
        await asyncio.to_thread(self.online_write_batch, config, table, data, progress)

    def write_arrow(self, config: RepoConfig, view: FeatureView, rows: pa.Table) -> WriteCounts:
        """The bulk write: ``rows`` (the view's join keys, features, ``event_timestamp`` and optionally
        ``created_timestamp``) applied in order, newer only; JSON and keys built in bulk.

        Raises
        ------
        ValueError
            When a join key or feature column is missing.
        """
        import duckdb

        join_keys = [c.name for c in view.entity_columns]
        key_types = [c.dtype.to_value_type() for c in view.entity_columns]
        features = [f.name for f in view.features]
        missing = sorted(set(join_keys + features + ["event_timestamp"]) - set(rows.column_names))
        if missing:
            raise ValueError(f"rows for feature view {view.name!r} lack columns {missing}")
        self.codec(view)  # the view's types are supported
        encoder = EntityKeyEncoder(join_keys, key_types, config.entity_key_serialization_version)
        # any timestamp type (ns from pandas, naive = UTC as Feast assumes) as epoch microseconds
        created = "epoch_us(created_timestamp::TIMESTAMPTZ)" if "created_timestamp" in rows.column_names else "NULL"
        fields = ", ".join(f"{_quote_id(f)} := {_quote_id(f)}" for f in features)
        keys = ", ".join(_quote_id(k) for k in encoder.join_keys)
        total = changed = 0
        with duckdb.connect() as con:
            con.execute("SET TimeZone = 'UTC'")
            con.register("view_rows", rows)
            encoded = con.sql(
                f"SELECT {keys}, epoch_us(event_timestamp::TIMESTAMPTZ), {created}, "  # noqa: S608
                f"to_json(struct_pack({fields}))::VARCHAR FROM (SELECT *, row_number() OVER () AS ordinal FROM view_rows) "
                # in key order (B-tree inserts in order, several times faster than in random order), each
                # key's rows in the rows' order (DuckDB numbers them in insertion order)
                f"ORDER BY {encoder.order_sql() or keys}, ordinal"
            ).to_arrow_reader(WRITE_CHUNK_ROWS)
            for batch in encoded:  # a chunk at a time: memory stays bounded whatever the view's size
                key_columns = batch.columns[: len(join_keys)]
                if encoder.all_strings:
                    entity_keys = encoder.encode_arrow(key_columns)
                else:
                    entity_keys = encoder.encode([c.to_pylist() for c in key_columns])
                event_ts, created_ts, values = (c.to_pylist() for c in batch.columns[len(join_keys) :])
                changed += self._upsert(config, view, entity_keys, event_ts, created_ts, values)
                total += len(entity_keys)
        return WriteCounts(total, changed)

    # -- reads -------------------------------------------------------------------------------

    def _stored(
        self, conn: sqlite3.Connection, config: RepoConfig, view: FeatureView, keys: list[bytes]
    ) -> dict[bytes, tuple[int, str]]:
        found = conn.execute(
            f"SELECT entity_key, event_ts, features FROM {_quote_id(table_name(config, view))} "  # noqa: S608
            f"WHERE entity_key IN ({','.join('?' * len(keys))})",
            keys,
        ).fetchall()
        return {k: (ts, text) for k, ts, text in found}

    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[ReadRow]:
        """Each entity's ``(event time, {feature: ValueProto})``, ``(None, None)`` when it has no row."""
        version = config.entity_key_serialization_version
        keys = [serialize_entity_key(k, entity_key_serialization_version=version) for k in entity_keys]
        stored = self._stored(self._get_conn(config), config, table, keys)
        codec = self.codec(table)
        out: list[ReadRow] = []
        for key in keys:
            hit = stored.get(key)
            out.append(
                (None, None) if hit is None else (from_epoch_us(hit[0]), codec.protos(hit[1], requested_features))
            )
        return out

    async def online_read_async(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[ReadRow]:
        return await asyncio.to_thread(self.online_read, config, table, entity_keys, requested_features)
