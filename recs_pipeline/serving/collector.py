"""The event collector behind ``POST /events``: validate, store durably, push the session.

Events are checked with ingestion's own SQL (``ingest.check_events``), so an accepted event is one
ingestion will load; rejected events come back with their reasons and are not landed. Accepted
events are appended to the worker's journal and fsynced before the answer
(:mod:`~recs_pipeline.serving.journal`); the journal lands as one JSON-lines file in
``landing/events/`` every ``flush_seconds`` (``RECS_SERVE_COLLECTOR_FLUSH_SECONDS``), where the
landing sensor picks it up for the aggregate features. Each affected user's session is then updated in the online store: read, merge,
write, inside the user's critical section (:mod:`~recs_pipeline.serving.session_locks`, across
threads and worker processes), with the processing time taken inside it, so concurrent posts for one
user never lose an event.

With a pseudonym key (docs/PRIVACY.md) the journal keeps the rows as posted (raw ids: ingestion
pseudonymises what it loads, and derives nothing else from them: event ids come from the raw row
here and there), while the session is locked, read and written under the user's pseudonym, with a
posted ``session_id`` pseudonymised as ingestion stores it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from feast import FeatureStore

from recs_pipeline.data import contract
from recs_pipeline.privacy import pseudonyms as pseudonyms_module
from recs_pipeline.privacy.pseudonyms import Pseudonyms
from recs_pipeline.serving.journal import DEFAULT_MAX_ROWS, EventJournal
from recs_pipeline.serving.online import OnlineReader
from recs_pipeline.serving.session import PUSHED_UNIX, SessionEvent, update_session
from recs_pipeline.serving.session_locks import SessionLocks, session_locks_for
from recs_pipeline.settings import ServeSettings
from recs_pipeline.warehouse import ingest

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SESSION_VIEW = "user_session_features"
SESSION_FIELDS = ("session_id", "session_item_ids", "session_event_types", "session_event_unix", PUSHED_UNIX)


@dataclass
class CollectResult:
    accepted: int
    rejected: list[dict[str, Any]]
    landed_file: str | None
    pushed_users: int
    push_error: str | None = None
    event_ids: list[str] = field(default_factory=list)


def with_event_ids(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events with an ``event_id``: kept when given, else derived from the row (contract rule).

    Identical rows in one batch are told apart by their occurrence number, so genuine repeats
    (two views in the same second) are not mistaken for duplicates.
    """
    seen: dict[tuple, int] = defaultdict(int)
    out = []
    for e in events:
        e = dict(e)
        if e.get(contract.EVENT_ID) in (None, ""):
            key = tuple(str(e.get(c)) for c in contract.EVENT_COLUMNS[1:])
            seen[key] += 1
            e[contract.EVENT_ID] = contract.derive_event_id("api", *key, seen[key])
        out.append(e)
    return out


DEFAULT_FLUSH_SECONDS: float = ServeSettings.model_fields["collector_flush_seconds"].default


class Collector:
    """Validates, stores and pushes batches of events.

    ``flush_seconds`` and ``max_rows``: when the worker's journal lands (see
    :class:`~recs_pipeline.serving.journal.EventJournal`; 0 seconds = one file per batch).
    ``pseudonyms``: the user-id mapping of the online store (default: the environment's key).
    """

    def __init__(
        self,
        store: FeatureStore,
        landing_dir: Path,
        *,
        locks: SessionLocks,
        reader: OnlineReader,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
        max_rows: int = DEFAULT_MAX_ROWS,
        pseudonyms: Pseudonyms | None = None,
    ) -> None:
        self.store = store
        self.pseudonyms = pseudonyms or pseudonyms_module.from_env()
        self.landing_dir = Path(landing_dir)
        # a user's session read-modify-write is one critical section, across threads and processes
        self.locks = locks
        # the stored session is read through the service's direct reader, within its budget
        self.reader = reader
        self.journal = EventJournal(self.landing_dir, flush_seconds=flush_seconds, max_rows=max_rows)

    @classmethod
    def serving(
        cls,
        store: FeatureStore,
        landing_dir: Path,
        *,
        wait_seconds: float,
        flush_seconds: float | None = None,
        pseudonyms: Pseudonyms | None = None,
    ) -> Collector:
        """The collector the service runs: the store's session locks and a budgeted session read,
        both bounded by ``wait_seconds``; ``flush_seconds`` defaults to
        ``RECS_SERVE_COLLECTOR_FLUSH_SECONDS``, ``pseudonyms`` to the environment's key."""
        if flush_seconds is None:
            flush_seconds = ServeSettings.from_env().collector_flush_seconds
        return cls(
            store,
            landing_dir,
            locks=session_locks_for(store, wait_seconds=wait_seconds),
            reader=OnlineReader(store, timeout_s=wait_seconds),
            flush_seconds=flush_seconds,
            pseudonyms=pseudonyms,
        )

    def close(self) -> None:
        """Land the open journal, then close the session reader."""
        try:
            self.journal.close()
        finally:
            self.reader.close()

    def collect(self, events: Sequence[dict[str, Any]], *, now: datetime | None = None) -> CollectResult:
        now = now or datetime.now(UTC)
        rows = with_event_ids(events)
        reasons = ingest.check_events(rows, now=now)
        rejected = [{"index": i, "reason": r} for i, r in enumerate(reasons) if r is not None]
        good = [r for r, reason in zip(rows, reasons, strict=True) if reason is None]
        if not good:
            return CollectResult(0, rejected, None, 0)
        frame = pl.DataFrame(
            {
                contract.EVENT_ID: [str(r[contract.EVENT_ID]) for r in good],
                contract.USER_ID: [str(r[contract.USER_ID]) for r in good],
                contract.ITEM_ID: [str(r[contract.ITEM_ID]) for r in good],
                contract.EVENT_TYPE: [r[contract.EVENT_TYPE] for r in good],
                contract.TS: [r[contract.TS] for r in good],
                contract.SESSION_ID: [
                    None if r.get(contract.SESSION_ID) in (None, "") else str(r[contract.SESSION_ID]) for r in good
                ],
                contract.EVENT_REQUEST_ID: [
                    None if r.get(contract.EVENT_REQUEST_ID) in (None, "") else str(r[contract.EVENT_REQUEST_ID])
                    for r in good
                ],
            },
            schema={**contract.EVENT_SCHEMA, contract.TS: pl.String(), contract.EVENT_REQUEST_ID: pl.String()},
        ).with_columns(pl.col(contract.TS).str.to_datetime(time_zone="UTC", time_unit="us"))
        # durable before anything is pushed or answered; the file it lands as, within flush_seconds
        landed_file = self.journal.append(frame.write_ndjson(), frame.height)
        result = CollectResult(len(good), rejected, landed_file, 0, event_ids=frame[contract.EVENT_ID].to_list())
        try:
            result.pushed_users = self.push_sessions(frame)
        except Exception as exc:  # events are stored (nothing lost); the session push is reported
            log.exception("session push failed")
            result.push_error = f"{type(exc).__name__}: {exc}"
        return result

    def push_sessions(self, frame: pl.DataFrame) -> int:
        """Push the updated session of every user in ``frame`` (raw ids, as posted); returns the number of users.

        Per user (keyed by pseudonym), the read, the merge and the write happen in the user's critical
        section, and the processing time is read there too: a later writer always stamps a later time.
        """
        by_user: dict[str, list[SessionEvent]] = defaultdict(list)
        of = self.pseudonyms.of_optional
        for user, item, etype, ts, sid in frame.select(
            contract.USER_ID, contract.ITEM_ID, contract.EVENT_TYPE, contract.TS, contract.SESSION_ID
        ).iter_rows():
            by_user[self.pseudonyms.of(user)].append(SessionEvent(item, etype, ts.timestamp(), of(sid)))
        pushed = []
        for user, new_events in by_user.items():
            with self.locks.hold(user):
                state = self.stored_session(user)
                now = datetime.now(UTC)
                row = update_session(user, state, new_events, now=now)
                # what store.push("user_session_push_source", ..., to=PushMode.ONLINE) does for the one view the push
                # source feeds, without its two registry listings per call (25 of its 29 ms, measured)
                self.store.write_to_online_store(SESSION_VIEW, _push_frame([row]))
            pushed.append(user)
        return len(pushed)

    def stored_session(self, user_id: str) -> dict[str, Any]:
        """The stored session fields (None where there is none) of ``user_id`` as the online store keys it
        (its pseudonym when a key is set); raises if the store cannot say."""
        ctx = self.reader.read(user_id)
        if not ctx.online_ok:
            raise RuntimeError(f"the stored session could not be read: {ctx.error}")
        return {f: ctx.session.get(f) for f in SESSION_FIELDS}


def _push_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows)
