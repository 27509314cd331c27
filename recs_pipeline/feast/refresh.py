"""Real-time refresh: notice new landed files, recompute their entities' features as of now, write them online.

Two halves, both free of Dagster:

* **Watching the landing zone** (the sensor): :func:`~recs_pipeline.data.landing.scan_landing` lists the visible files with
  their sizes and landing times from the file system alone (it never opens DuckDB or reads a
  file's content); :class:`LandingCursor` remembers what was seen and :func:`new_landed_files`
  returns the batch not seen yet, with :func:`run_key` naming it after its files.
* **Refreshing** (the run, inside the DuckDB pool): :func:`refresh_online` computes every table of
  :data:`~recs_pipeline.warehouse.features.FEATURE_TABLES` as of the data's "now" into session-local
  TEMP tables that shadow the persistent ones, so the very same ``sql/<table>.sql`` files run
  unchanged and nothing persistent changes, then writes the rows of the affected users and items
  to the online store.

How the shadowing works: DuckDB resolves an unqualified table name in the ``temp`` catalog before
the database file's, so once ``CREATE TEMP TABLE user_features`` exists, ``INSERT INTO
user_features`` in ``sql/user_features.sql`` fills the temp table (so do ``main.user_features``
and the persistent views and macros that name it; only ``<database>.main.user_features`` reaches
the file). The shadows are dropped before :func:`refresh_online` returns, so the connection sees
the persistent tables again.

Landing time and order are :func:`recs_pipeline.data.landing.scan_landing`'s (a file's
``st_ctime``, set by the rename that publishes it): the cursor's order, the start of the freshness
clock ("landed -> online") and the order in which ingestion loads the files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import duckdb
import pyarrow as pa

from recs_pipeline.data.contract import ITEM_ID, USER_ID
from recs_pipeline.data.landing import LandedFile
from recs_pipeline.warehouse import features
from recs_pipeline.warehouse.sql import run_sql, scalar

log = logging.getLogger(__name__)

# Files landed this close (ns) below the cursor's newest landing time are compared by name too, so
# two files published within the file system's timestamp granularity are both seen.
GRACE_NS = 2_000_000_000
# At most this many files per run (a first evaluation over a full landing zone comes in parts).
MAX_FILES_PER_RUN = 1000
# The snapshots' default event weights and half-life.
# Temp tables of a refresh: the entity sets, plus shadows named after persistent tables.
_ENTITY_TABLES = ("refresh_users", "refresh_items")


# --------------------------------------------------------------------------------------------
# Watching the landing zone: names, sizes and landing times only.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LandingCursor:
    """What the sensor has seen: the newest landing time and the files landed just below it.

    A file is new when it landed after ``high_water_ns - GRACE_NS`` and is not among ``recent``
    (``(key, landed_ns)`` pairs), so the cursor stays small whatever the number of files, and a
    file re-published under a seen name (new landing time) counts as new.
    """

    high_water_ns: int = 0
    recent: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    def is_new(self, f: LandedFile) -> bool:
        return f.landed_ns > self.high_water_ns - GRACE_NS and (f.key, f.landed_ns) not in self.recent

    def advance(self, batch: Sequence[LandedFile]) -> LandingCursor:
        """The cursor after ``batch`` has been requested."""
        high = max([self.high_water_ns, *(f.landed_ns for f in batch)])
        seen = self.recent | {(f.key, f.landed_ns) for f in batch}
        return LandingCursor(high, frozenset(s for s in seen if s[1] > high - GRACE_NS))

    def encode(self) -> str:
        """JSON text for Dagster's cursor."""
        return json.dumps(
            {"high_water_ns": self.high_water_ns, "recent": sorted([k, ns] for k, ns in self.recent)},
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str | None) -> LandingCursor:
        """Parse :meth:`encode`'s text; ``None`` or empty is the start (every file is new).

        Raises
        ------
        ValueError
            When the text is not such a cursor (reset the sensor's cursor in the UI to start over).
        """
        if not text:
            return cls()
        try:
            raw = json.loads(text)
            return cls(int(raw["high_water_ns"]), frozenset((str(k), int(ns)) for k, ns in raw["recent"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"unreadable landing cursor {text[:200]!r} ({exc}); reset the sensor's cursor to rescan every file"
            ) from exc


def new_landed_files(
    files: Sequence[LandedFile], cursor: LandingCursor, *, limit: int = MAX_FILES_PER_RUN
) -> tuple[list[LandedFile], LandingCursor]:
    """The oldest ``limit`` files not seen by ``cursor``, and the cursor that has seen them.

    Parameters
    ----------
    files
        The landing zone now (:func:`~recs_pipeline.data.landing.scan_landing`).
    cursor
        What was seen before.
    limit
        Largest batch; the rest (landed later) stays new for the next evaluation.

    Returns
    -------
    tuple
        ``(batch, cursor)``; an empty batch leaves the cursor as it was.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    batch = sorted((f for f in files if cursor.is_new(f)), key=lambda f: (f.landed_ns, f.key))[:limit]
    return batch, (cursor.advance(batch) if batch else cursor)


def run_key(batch: Sequence[LandedFile]) -> str:
    """A run key derived from the batch's files (names, sizes, landing times): equal batch, equal key."""
    text = "\n".join(f"{f.key}\t{f.size}\t{f.landed_ns}" for f in sorted(batch, key=lambda f: f.key))
    return "landing-" + hashlib.sha256(text.encode()).hexdigest()[:24]


# --------------------------------------------------------------------------------------------
# Refreshing: the affected entities' features as of now, computed in temp tables, written online.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefreshResult:
    """What one refresh did.

    Attributes
    ----------
    as_of
        The as-of time of the rows written (``None`` when nothing was affected).
    events
        Stored events that came from the given files.
    users, items
        Affected entities.
    computed
        Rows computed per feature table (temp tables).
    written
        Rows written online per view.
    seconds
        Wall time per stage: ``affected``, ``compute``, ``write``, ``total``.
    """

    as_of: datetime | None
    events: int
    users: int
    items: int
    computed: dict[str, int]
    written: dict[str, int]
    seconds: dict[str, float]


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _persistent(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """Fully qualified name of ``table`` in the database file (never a temp shadow)."""
    database = scalar(con, "SELECT current_database()")
    return f"{_quote(database)}.main.{table}"


def _drop_temp(con: duckdb.DuckDBPyConnection, tables: Iterable[str]) -> None:
    for table in tables:
        con.execute(f"DROP TABLE IF EXISTS temp.main.{table}")


def _entity_filter(view: str) -> str:
    """The SQL condition selecting a view's rows of affected entities (by its entity keys)."""
    keys = features.FEATURE_KEYS[view]
    if USER_ID in keys:  # user and user x category rows: every row of an affected user
        return "user_id IN (SELECT user_id FROM refresh_users)"
    if ITEM_ID in keys:
        return "item_id IN (SELECT item_id FROM refresh_items)"
    raise ValueError(f"view {view!r} is keyed by {keys}: the refresh knows affected users and items only")


def refresh_online(
    con: duckdb.DuckDBPyConnection,
    write: Callable[[str, pa.Table], object],
    *,
    file_hashes: Sequence[str],
    created: datetime,
    weighting: features.Weighting,
    views: Sequence[str] = features.FEAST_TABLES,
    as_of: datetime | None = None,
    restrict_events: bool = True,
) -> RefreshResult:
    """Recompute the features of the entities touched by ``file_hashes`` as of now and write them online.

    Affected are the users and items of the events stored from those files, the users of the
    served lists (exposures) stored from them, and the items of
    their catalog rows (user x category rows follow their user). Every feature table is built, in
    :data:`~recs_pipeline.warehouse.features.FEATURE_TABLES` order, into a temp table shadowing the
    persistent one with :func:`~recs_pipeline.warehouse.features.build_snapshot` (the same SQL), then
    each view's rows of affected entities go to ``write``.

    Parameters
    ----------
    con
        A warehouse connection (the caller holds the DuckDB pool). Its persistent tables are
        only read.
    write
        Called as ``write(view, rows)`` once per view, ``rows`` an Arrow table of the view's entity
        keys, features, ``event_timestamp`` and ``created_timestamp``; e.g.
        ``functools.partial(feast_store.write_online, store)`` (bulk on the SQLite store).
    file_hashes
        sha256 of the landed files whose entities to refresh (as in the ingest ledger).
    created
        ``created_timestamp`` of the rows.
    weighting
        Event weights and half-life, as for the snapshots.
    views
        Views to write (each a feature table of the same name; default the Feast-served ones).
    as_of
        Default: the data's now, just after the newest stored event or served list (exposure),
        never the wall clock.
    restrict_events
        Compute from the affected entities' events only (shadowing ``events`` too). Exact when
        each entity's rows depend only on its own events and the catalog, as for every table in
        ``sql/`` today (``tests/feast/test_refresh.py`` checks it per table); ``False`` computes
        from every event, which costs a full snapshot.

    Returns
    -------
    RefreshResult
    """
    unknown = sorted(set(views) - set(features.FEATURE_TABLES))
    if unknown:
        raise ValueError(f"views {unknown} are not feature tables; expected a subset of {features.FEATURE_TABLES}")
    started = time.perf_counter()
    hashes = sorted(set(file_hashes))
    shadows = (*features.FEATURE_TABLES, "events")
    _drop_temp(con, (*shadows, *_ENTITY_TABLES))  # a connection reused after a failed refresh
    try:
        run_sql(con, "refresh_users", file_hashes=hashes)
        run_sql(con, "refresh_items", file_hashes=hashes)
        events = int(
            scalar(con, "SELECT count(*) FROM events WHERE list_contains($h::VARCHAR[], file_hash)", {"h": hashes})
        )
        users = int(scalar(con, "SELECT count(*) FROM refresh_users"))
        items = int(scalar(con, "SELECT count(*) FROM refresh_items"))
        seconds = {"affected": time.perf_counter() - started}
        log.info("refresh: %d files, %d events, %d users, %d items affected", len(hashes), events, users, items)
        if users == 0 and items == 0:
            seconds["total"] = time.perf_counter() - started
            return RefreshResult(None, events, 0, 0, {}, {}, seconds)
        if as_of is None:
            latest = features.latest_event_time(con)
            if latest is None:
                raise ValueError("no events are stored: nothing to compute features from")
            # served lists are data too: a profile's shown items (rotation) must include the newest
            shown: datetime | None = scalar(con, "SELECT max(ts) FROM exposures WHERE shadow_of IS NULL")
            as_of = max(latest, shown or latest) + timedelta(microseconds=1)

        t = time.perf_counter()
        for table in features.FEATURE_TABLES:
            con.execute(f"CREATE TEMP TABLE {table} AS SELECT * FROM {_persistent(con, table)} LIMIT 0")  # noqa: S608
        if restrict_events:
            con.execute(
                f"CREATE TEMP TABLE events AS SELECT * FROM {_persistent(con, 'events')} "  # noqa: S608
                "WHERE user_id IN (SELECT user_id FROM refresh_users) OR item_id IN (SELECT item_id FROM refresh_items)"
            )
        computed = {
            table: features.build_snapshot(con, table, as_of=as_of, created=created, weighting=weighting).rows
            for table in features.FEATURE_TABLES
        }
        seconds["compute"] = time.perf_counter() - t

        t = time.perf_counter()
        written = {}
        for view in views:
            keys = ", ".join(features.FEATURE_KEYS[view])
            rows = con.sql(
                f"SELECT * FROM {view} WHERE event_timestamp = $as_of AND {_entity_filter(view)} ORDER BY {keys}",  # noqa: S608
                params={"as_of": as_of},
            ).to_arrow_table()
            write(view, rows)
            written[view] = rows.num_rows
            log.info("refresh: wrote %d rows of %s as of %s", rows.num_rows, view, as_of.isoformat())
        seconds["write"] = time.perf_counter() - t
        seconds["total"] = time.perf_counter() - started
        return RefreshResult(as_of, events, users, items, computed, written, seconds)
    finally:
        _drop_temp(con, (*shadows, *_ENTITY_TABLES))
