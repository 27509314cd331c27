"""A user's live session, as the event collector pushes it to the online store.

The session is the trailing run of the user's events with gaps of at most ``SESSION_GAP`` (the
same 30-minute rule ingestion uses). The pushed row keeps the last ``MAX_SESSION_EVENTS`` events
as position-aligned arrays, oldest first, plus counts over those events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from recs_pipeline.data.contract import SESSION_GAP, USER_ID, derive_session_id

MAX_SESSION_EVENTS = 50
PUSHED_UNIX = "pushed_unix"  # the row's write stamp (unix seconds, whole microseconds)


@dataclass(frozen=True)
class SessionEvent:
    item_id: str
    event_type: str
    ts: float  # unix seconds
    session_id: str | None = None


def _stored_events(state: Mapping[str, Any]) -> list[SessionEvent]:
    items = state.get("session_item_ids") or []
    types = state.get("session_event_types") or []
    times = state.get("session_event_unix") or []
    sid = state.get("session_id")
    return [SessionEvent(i, t, float(ts), sid) for i, t, ts in zip(items, types, times, strict=False)]


def update_session(
    user_id: str, state: Mapping[str, Any] | None, events: Sequence[SessionEvent], *, now: datetime
) -> dict[str, Any]:
    """The session row to push after ``events`` arrive for a user whose stored session is ``state``.

    Parameters
    ----------
    user_id : str
        The user.
    state : Mapping or None
        The stored ``user_session_features`` values (``session_id``, ``session_item_ids``,
        ``session_event_types``, ``session_event_unix``, ``pushed_unix``); None or empty for no session.
    events : Sequence[SessionEvent]
        The new events (any order; late events are placed by time).
    now : datetime
        Processing time, read inside the user's critical section (:class:`~recs_pipeline.serving.
        session_locks.SessionLocks`). The row is stamped ``max(now, newest event, stored stamp + 1 us)``
        in whole microseconds and records that stamp as ``pushed_unix``: every write for a user
        carries a strictly later time than the one it read, so an online store that keeps only the
        newer write (Redis: strictly newer; SQLite here: newer or equal) never drops it.

    Returns
    -------
    dict
        One row for Feast's push source ``user_session_push_source``.
    """
    if not events:
        raise ValueError("update_session needs at least one new event")
    merged = sorted([*_stored_events(state or {}), *events], key=lambda e: e.ts)
    gap = SESSION_GAP.total_seconds()
    start = len(merged) - 1
    while start > 0 and merged[start].ts - merged[start - 1].ts <= gap:
        start -= 1
    current = merged[start:][-MAX_SESSION_EVENTS:]
    newest = current[-1]
    session_id = (
        newest.session_id
        or next((e.session_id for e in reversed(current) if e.session_id), None)
        or derive_session_id(user_id, merged[start].ts)
    )
    stamp_us = max(_micros(now.timestamp()), _micros(newest.ts), stored_stamp_us(state) + 1)
    stamp = stamp_us / 1e6
    return {
        USER_ID: user_id,
        "session_id": session_id,
        "session_item_ids": [e.item_id for e in current],
        "session_event_types": [e.event_type for e in current],
        "session_event_unix": [e.ts for e in current],
        "session_views": sum(e.event_type == "view" for e in current),
        "session_carts": sum(e.event_type == "add_to_cart" for e in current),
        "session_purchases": sum(e.event_type == "purchase" for e in current),
        "last_event_unix": int(newest.ts),
        PUSHED_UNIX: stamp,
        "event_timestamp": datetime.fromtimestamp(stamp, UTC),
    }


def _micros(unix_seconds: float) -> int:
    return round(unix_seconds * 1e6)


def stored_stamp_us(state: Mapping[str, Any] | None) -> int:
    """The stored row's write stamp in microseconds (0 when there is no stored row)."""
    pushed = (state or {}).get(PUSHED_UNIX)
    return _micros(float(pushed)) if pushed is not None else 0
