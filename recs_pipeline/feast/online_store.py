"""Feast's SQLite online store, made to keep the newest value: an older write never replaces a newer one.

Feast's ``SqliteOnlineStore.online_write_batch`` upserts every row with
``ON CONFLICT(entity_key, feature_name) DO UPDATE SET ...`` whatever its event time, so an old
snapshot materialised after a fresher real-time push (or a late push after a newer one) silently
rolls the online value back. :class:`GuardedSqliteOnlineStore` keeps Feast's whole write path and adds
one rule, enforced by SQLite itself: a ``BEFORE UPDATE`` trigger on each feature view's table that
skips (``RAISE(IGNORE)``) the update of a row whose new ``event_ts`` is older than the stored one.
Equivalent to ``DO UPDATE SET ... WHERE excluded.event_ts >= <table>.event_ts``, but without
copying Feast's upsert code; and atomic, since the comparison happens inside the write.

Rules, per (entity, feature) row:

- a newer event time replaces the stored value;
- an older event time is skipped;
- an *equal* event time replaces it (so a corrected snapshot of the same time can be rewritten).
  Feast's Redis store differs here: it skips a write whose time is older than *or equal to* the
  stored one. Feast stores SQLite's ``event_ts`` as whole epoch seconds, so two writes within the
  same second count as equal here (Redis compares to the microsecond).

Use it from ``feature_store.yaml``::

    online_store:
      type: recs_pipeline.feast.online_store.GuardedSqliteOnlineStore
      path: ${RECS_HOME}/feast/online_store.db

Feast resolves a dotted ``type`` ending in ``OnlineStore`` by importing ``<type>Config`` from the
same module (the config class below) and then the class named like the config without ``Config``.
The trigger is created by ``feast apply`` (:meth:`update`) and, for a database created before this
class was configured, on the first write to each table.

The database is put in WAL journal mode when this store first opens it (``feast apply``, a write or a
read through Feast); the mode is stored in the file, so it holds for every later connection. In WAL
mode a write transaction never blocks readers (they see the last committed values), which the
scoring service's direct reads rely on (:mod:`recs_pipeline.feast.online_read`: read-only per-thread
connections); writers still wait for each other.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Literal

from feast import Entity, FeatureView
from feast.infra.online_stores.helpers import compute_table_id
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig

ONLINE_STORE_TYPE = "recs_pipeline.feast.online_store.GuardedSqliteOnlineStore"

log = logging.getLogger(__name__)

Row = tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]


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


def newer_only_trigger_sql(table_name: str) -> str:
    """The ``CREATE TRIGGER`` that skips an update of ``table_name`` carrying an older ``event_ts``.

    Parameters
    ----------
    table_name
        A Feast SQLite online table (``<project>_<feature view>``).

    Returns
    -------
    str
        Idempotent DDL (``IF NOT EXISTS``). A stored ``NULL`` event time is always replaced.
    """
    table = _quote_id(table_name)
    trigger = _quote_id(f"{table_name}__newer_only")
    return (
        f"CREATE TRIGGER IF NOT EXISTS {trigger} BEFORE UPDATE ON {table} "
        "FOR EACH ROW WHEN NEW.event_ts < OLD.event_ts "
        "BEGIN SELECT RAISE(IGNORE); END"
    )


class GuardedSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """Config of :class:`GuardedSqliteOnlineStore`: the same options as Feast's ``sqlite`` store (``path``, ...)."""

    type: Literal["recs_pipeline.feast.online_store.GuardedSqliteOnlineStore"] = ONLINE_STORE_TYPE  # type: ignore[assignment]


class GuardedSqliteOnlineStore(SqliteOnlineStore):
    """Feast's SQLite online store whose writes never let an older event time replace a newer one.

    Reads, table layout and the upsert itself are Feast's; see the module docstring for the rule and
    the journal mode. Writes through one store object are serialised (the sync and async paths share
    its connection).
    """

    def __init__(self) -> None:
        super().__init__()
        self._write_lock = threading.Lock()

    def _get_conn(self, config: RepoConfig) -> sqlite3.Connection:
        """Feast's connection to the database, which is put in WAL journal mode when first opened."""
        opened = self._conn is not None
        conn: sqlite3.Connection = super()._get_conn(config)
        if not opened:
            use_wal(conn, self._get_db_path(config))
        return conn

    def _guard(self, config: RepoConfig, table: FeatureView) -> None:
        """Install the newer-only trigger on ``table``'s online table (a no-op once it exists)."""
        table_name = compute_table_id(config.project, table, config.registry.enable_online_feature_view_versioning)
        try:
            self._get_conn(config).execute(newer_only_trigger_sql(table_name))
        except sqlite3.OperationalError as e:
            if "no such table" not in str(e):
                raise
            raise RuntimeError(
                f"the online table {table_name!r} of feature view {table.name!r} does not exist in "
                f"{self._get_db_path(config)}: run `feast apply` (`recs feast apply`) before writing"
            ) from e

    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ) -> None:
        """Create or drop the tables as Feast does, then guard every kept table (``feast apply``)."""
        super().update(config, tables_to_delete, tables_to_keep, entities_to_delete, entities_to_keep, partial)
        for table in tables_to_keep:
            self._guard(config, table)

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[Row],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Feast's upsert, under the newer-only trigger (used by materialize, push and write_to_online_store).

        Rows are applied in order, each against the value stored at that moment, so an older row
        after a newer one for the same entity in the same batch is skipped too.
        """
        with self._write_lock:
            self._guard(config, table)
            super().online_write_batch(config, table, data, progress)

    async def online_write_batch_async(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[Row],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """:meth:`online_write_batch` in a worker thread (``push_async``, ``write_to_online_store_async``).

        Feast's own SQLite store has no async write; this one runs the guarded sync write off the event loop.
        """
        await asyncio.to_thread(self.online_write_batch, config, table, data, progress)
