"""The event and item contracts every source is converted to before it lands.

An **event** is one row of behaviour; an **item** is one catalog row. Column names live here
and nowhere else, so a rename is one edit.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import polars as pl

# Event columns.
EVENT_ID = "event_id"
USER_ID = "user_id"
ITEM_ID = "item_id"
EVENT_TYPE = "event_type"
TS = "ts"
SESSION_ID = "session_id"
EVENT_COLUMNS: tuple[str, ...] = (EVENT_ID, USER_ID, ITEM_ID, EVENT_TYPE, TS, SESSION_ID)
REQUIRED_EVENT_COLUMNS: tuple[str, ...] = (EVENT_ID, USER_ID, ITEM_ID, EVENT_TYPE, TS)
# Optional: the request_id of the served list the event responds to (an exposure's; see attribution).
# Not among EVENT_COLUMNS: sources and older files have none, and derived event ids never include it.
EVENT_REQUEST_ID = "request_id"

# Item (catalog) columns.
CATEGORY_ID = "category_id"
PRICE = "price"
AVAILABLE = "available"
UPDATED_AT = "updated_at"
ITEM_COLUMNS: tuple[str, ...] = (ITEM_ID, CATEGORY_ID, PRICE, AVAILABLE, UPDATED_AT)

# Exposure columns: one served list (the scoring service logs each; see docs/CONTRACT.md).
REQUEST_ID = "request_id"
MODEL_VERSION = "model_version"
EXPERIMENT = "experiment"
VARIANT = "variant"
ITEMS = "items"
POSITION = "position"
SCORE = "score"
SOURCE = "source"
# Optional: on a shadow list (scored by a challenger, never shown), the request_id of the served list
# it was scored for; absent on every served list.
SHADOW_OF = "shadow_of"
EXPOSURE_COLUMNS: tuple[str, ...] = (REQUEST_ID, USER_ID, TS, MODEL_VERSION, EXPERIMENT, VARIANT, ITEMS, SHADOW_OF)
REQUIRED_EXPOSURE_COLUMNS: tuple[str, ...] = (REQUEST_ID, USER_ID, TS, MODEL_VERSION, ITEMS)
# Fields of each element of an exposure's ``items`` (position 1 is the top of the list).
EXPOSURE_ITEM_FIELDS: tuple[str, ...] = (ITEM_ID, POSITION, SCORE, SOURCE)
# Items one exposure may list at most (the service answers at most this many: api.MAX_K).
MAX_EXPOSURE_ITEMS = 100

# Behaviour: what a user did with an item (a positive signal of interest, graded by type).
EVENT_TYPES: tuple[str, ...] = ("view", "add_to_cart", "purchase", "favorite")
# Negative feedback: the user asked not to see the item again ("hide", "not interested"). It is
# stored with the events but never counted as interest: it withholds the item from that user until
# a later behaviour event with it, and counts against the item's category in ranking (docs/CONTRACT.md).
HIDE = "hide"
NEGATIVE_EVENT_TYPES: tuple[str, ...] = (HIDE,)
# Every event type ingestion and ``POST /events`` accept.
ACCEPTED_EVENT_TYPES: tuple[str, ...] = (*EVENT_TYPES, *NEGATIVE_EVENT_TYPES)

# A session ends after this much inactivity (used when a source has no session id).
SESSION_GAP = timedelta(minutes=30)

EVENT_SCHEMA: dict[str, pl.DataType] = {
    EVENT_ID: pl.String(),
    USER_ID: pl.String(),
    ITEM_ID: pl.String(),
    EVENT_TYPE: pl.String(),
    TS: pl.Datetime("us", "UTC"),
    SESSION_ID: pl.String(),
}

ITEM_SCHEMA: dict[str, pl.DataType] = {
    ITEM_ID: pl.String(),
    CATEGORY_ID: pl.String(),
    PRICE: pl.Float64(),
    AVAILABLE: pl.Boolean(),
    UPDATED_AT: pl.Datetime("us", "UTC"),
}


def derive_event_id(source: str, *fields: object) -> str:
    """Deterministic event id for a source row that has none.

    The same row always gets the same id, so a re-landed copy of a file is recognised as
    duplicates. Callers include an occurrence counter among the fields when identical rows
    are genuine repeats (two views of one item in the same second). SQL adapters compute the
    same value as ``source || '-' || left(md5(concat_ws(chr(31), source, ...)), 20)``.
    """
    text = "\x1f".join([source, *(str(f) for f in fields)])
    return f"{source}-{hashlib.md5(text.encode()).hexdigest()[:20]}"


def derive_session_id(user_id: str, start_unix: float) -> str:
    """Id of a derived session (one an event did not name): ``<user_id>-<epoch ms of its first event>``.

    The one formula for every derived session id, whether ingestion derives it
    (``sql/insert_events.sql`` computes the same value as ``user_id || '-' || (epoch_us(min(ts)) // 1000)``)
    or the event collector does for a live session (:mod:`recs_pipeline.serving.session`), so a
    session pushed online and the same events ingested later carry the same id. ``start_unix`` is
    epoch seconds with microsecond precision (the contract's timestamps); rounding to microseconds
    before flooring to milliseconds makes the float agree with DuckDB's integer ``epoch_us``.
    """
    return f"{user_id}-{round(start_unix * 1_000_000) // 1000}"
