"""Point-in-time feature snapshots: SQL in ``sql/`` run as of a timestamp, exported to parquet.

A snapshot "as of T" sees only events strictly before T and is stamped ``event_timestamp = T``.
Snapshots accumulate (one per as-of time), so the same tables serve point-in-time training rows
and, through Feast, the online store's latest values.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from recs_pipeline.data.contract import CATEGORY_ID, ITEM_ID, USER_ID
from recs_pipeline.settings import Settings
from recs_pipeline.warehouse.sql import first_row, run_sql, scalar

log = logging.getLogger(__name__)

# Tables built by a same-named file in sql/, in build order (user_profile summarises the
# interactions and user_category_features snapshots of the same time). ALS trains on interactions;
# Feast serves the others.
FEATURE_TABLES: tuple[str, ...] = (
    "user_features",
    "item_features",
    "user_category_features",
    "interactions",
    "user_profile",
)
FEAST_TABLES: tuple[str, ...] = tuple(t for t in FEATURE_TABLES if t != "interactions")
# Snapshots a table is built from (same as-of time); the first is never empty when events exist.
UPSTREAM: dict[str, tuple[str, ...]] = {"user_profile": ("interactions", "user_category_features")}
# Columns that are mostly null by design (not a sign of a broken join).
SPARSE_COLUMNS: dict[str, frozenset[str]] = {
    "interactions": frozenset({"last_purchase_ts"}),
    "user_profile": frozenset({"hidden_item_ids", "shown_item_ids", "shown_counts"}),
}
# Length caps of the user_profile arrays (most recent items, strongest categories, hidden and shown items).
PROFILE_MAX_ITEMS = 100
PROFILE_MAX_CATEGORIES = 50
PROFILE_MAX_HIDDEN = 200
PROFILE_MAX_SHOWN = 200
# How far back the profile's shown items (no-repeat rotation) look in the exposure log.
PROFILE_SHOWN_HOURS = 24
# Entity keys of each table (and Feast join keys of the served ones): a snapshot holds each key once.
FEATURE_KEYS: dict[str, tuple[str, ...]] = {
    "user_features": (USER_ID,),
    "item_features": (ITEM_ID,),
    "user_category_features": (USER_ID, CATEGORY_ID),
    "interactions": (USER_ID, ITEM_ID),
    "user_profile": (USER_ID,),
}


@dataclass(frozen=True)
class Weighting:
    """Confidence weight per event type and the recency half-life (days)."""

    view: float = 1.0
    add_to_cart: float = 4.0
    purchase: float = 8.0
    favorite: float = 3.0
    half_life_days: float = 14.0

    def __post_init__(self) -> None:
        if min(self.view, self.add_to_cart, self.purchase, self.favorite) < 0:
            raise ValueError(f"event weights must be >= 0, got {self}")
        if self.half_life_days <= 0:
            raise ValueError(f"half_life_days must be > 0, got {self.half_life_days}")

    def by_event_type(self) -> dict[str, float]:
        """Event type -> confidence weight."""
        return {
            "view": self.view,
            "add_to_cart": self.add_to_cart,
            "purchase": self.purchase,
            "favorite": self.favorite,
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> Weighting:
        """The deployment's weights (``RECS_WEIGHT_*``, ``RECS_HALF_LIFE_DAYS``)."""
        return cls(
            view=settings.weight_view,
            add_to_cart=settings.weight_add_to_cart,
            purchase=settings.weight_purchase,
            favorite=settings.weight_favorite,
            half_life_days=settings.half_life_days,
        )

    def params(self) -> dict[str, float]:
        return {
            "w_view": self.view,
            "w_add_to_cart": self.add_to_cart,
            "w_purchase": self.purchase,
            "w_favorite": self.favorite,
            "half_life_days": self.half_life_days,
        }


@dataclass(frozen=True)
class SnapshotResult:
    table: str
    as_of: datetime
    rows: int
    seconds: float


def _check_table(table: str) -> None:
    if table not in FEATURE_TABLES:
        raise ValueError(f"unknown feature table {table!r}; expected one of {FEATURE_TABLES}")


def _require_upstream(con: duckdb.DuckDBPyConnection, table: str, as_of: datetime) -> None:
    """Fail clearly when the snapshots this table is built from were not built at ``as_of``.

    Only the first upstream table is checked: ``interactions`` has a row for every pair with an
    event before ``as_of``, so it is empty only when there are no such events. The others (user x
    category affinities) are legitimately empty when no event's item is in the catalog.
    """
    upstream = UPSTREAM.get(table)
    if not upstream:
        return
    found = scalar(
        con,
        f"SELECT count(*) FROM {upstream[0]} WHERE event_timestamp = $as_of",  # noqa: S608 (allow-listed name)
        {"as_of": as_of},
    )
    events = scalar(con, "SELECT count(*) FROM events WHERE ts < $as_of", {"as_of": as_of})
    if found == 0 and events > 0:
        raise ValueError(
            f"{table} is built from the {upstream[0]} snapshot as of {as_of.isoformat()}, which does not exist: "
            f"build {', '.join(upstream)} at that time first"
        )


def upstream_as_of(con: duckdb.DuckDBPyConnection, table: str, *, after: datetime, until: datetime) -> datetime | None:
    """The newest as-of time in ``(after, until]`` of the snapshot ``table`` is built from (its first upstream)."""
    upstream = UPSTREAM.get(table)
    if not upstream:
        raise ValueError(f"{table} has no upstream snapshots")
    newest: datetime | None = scalar(
        con,
        f"SELECT max(event_timestamp) FROM {upstream[0]} WHERE event_timestamp > $after AND event_timestamp <= $until",  # noqa: S608
        {"after": after, "until": until},
    )
    return newest


def build_snapshot(
    con: duckdb.DuckDBPyConnection,
    table: str,
    *,
    as_of: datetime,
    created: datetime,
    weighting: Weighting = Weighting(),
    replaces_after: datetime | None = None,
) -> SnapshotResult:
    """Build ``table``'s snapshot as of ``as_of`` in one transaction.

    It replaces any snapshot stamped in ``(replaces_after, as_of]`` (default: exactly ``as_of``),
    so rerunning a day whose snapshot moved forward with new events leaves one snapshot.
    """
    _check_table(table)
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware (UTC)")
    started = time.perf_counter()
    params: dict[str, object] = {"as_of": as_of, "created": created}
    if table in ("user_category_features", "interactions"):
        params.update(weighting.params())
    if table == "user_profile":
        params.update(
            max_items=PROFILE_MAX_ITEMS,
            max_categories=PROFILE_MAX_CATEGORIES,
            max_hidden=PROFILE_MAX_HIDDEN,
            max_shown=PROFILE_MAX_SHOWN,
            shown_hours=PROFILE_SHOWN_HOURS,
        )
    _require_upstream(con, table, as_of)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            f"DELETE FROM {table} WHERE event_timestamp > $after AND event_timestamp <= $as_of",  # noqa: S608 (allow-listed name)
            {"after": replaces_after or as_of - timedelta(microseconds=1), "as_of": as_of},
        )
        rows = int(first_row(run_sql(con, table, **params))[0])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    seconds = time.perf_counter() - started
    log.info("%s as of %s: %d rows in %.2fs", table, as_of.isoformat(), rows, seconds)
    return SnapshotResult(table, as_of, rows, seconds)


def export_table(con: duckdb.DuckDBPyConnection, table: str, features_dir: Path) -> Path:
    """Write all snapshots of ``table`` to ``<features_dir>/<table>.parquet`` atomically."""
    _check_table(table)
    features_dir.mkdir(parents=True, exist_ok=True)
    target = features_dir / f"{table}.parquet"
    tmp = features_dir / f".{table}.parquet.tmp"
    con.sql(f"SELECT * FROM {table} ORDER BY event_timestamp").write_parquet(str(tmp))  # noqa: S608
    tmp.replace(target)
    return target


def latest_event_time(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """Time of the newest stored event (the data's "now" for snapshots of historical data)."""
    newest: datetime | None = scalar(con, "SELECT max(ts) FROM events")
    return newest


def snapshot_time(day_start: datetime, latest_event: datetime | None) -> datetime:
    """As-of time of the daily snapshot for the day starting at ``day_start`` (UTC).

    The end of the day, or just after the newest stored event when the day is still running,
    so the snapshot never claims to know the future and never depends on the wall clock.
    """
    if latest_event is None:
        raise ValueError("no events are stored yet: land event files and materialise `events` first")
    day_end = day_start + timedelta(days=1)
    if latest_event < day_start:
        raise ValueError(
            f"no events on or after {day_start.date()} (newest event {latest_event.isoformat()}); "
            "pick a partition whose day has data"
        )
    return min(day_end, latest_event + timedelta(microseconds=1))


def null_rates(con: duckdb.DuckDBPyConnection, table: str, as_of: datetime) -> dict[str, float]:
    """Share of NULLs per column in ``table``'s snapshot as of ``as_of`` (0.0 for an empty snapshot)."""
    _check_table(table)
    columns = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]  # noqa: S608
    exprs = ", ".join(f'coalesce(avg(("{c}" IS NULL)::INT), 0)' for c in columns)
    row = first_row(con.execute(f"SELECT {exprs} FROM {table} WHERE event_timestamp = $as_of", {"as_of": as_of}))  # noqa: S608
    return dict(zip(columns, (float(v) for v in row), strict=True))
