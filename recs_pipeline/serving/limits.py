"""Write rate limits of the scoring service: token buckets per API key and per user, shared by workers.

Every write (``POST /events``, ``POST /items``) costs one token per event (item update) from its key's
bucket, and each event one token from its user's bucket (``POST /events``: the events of each
``user_id`` in the batch are counted). A bucket holds at most ``burst`` tokens and refills at
``rate`` tokens a second. A batch is taken whole or not at all: when any bucket it needs is short,
nothing is taken, nothing of the batch is landed, and the answer is a 429 whose ``Retry-After`` is
the whole seconds until the shortest bucket holds enough.

The buckets live in one small SQLite file (WAL) under the home, updated in one ``BEGIN IMMEDIATE``
transaction per write with the time read inside it: every worker process of ``recs serve`` shares
them, so the configured rate is the service's rate on this host, whatever ``--workers`` is (per-process
buckets would allow N times the rate and depend on how the kernel spreads connections). Several hosts
each keep their own file: the limit is then per host (docs/SECURITY.md).
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# idle buckets are removed after they would be full again; checked every this many writes
_CLEANUP_EVERY = 500
_CHUNK = 500  # bound parameters per SELECT


@dataclass(frozen=True)
class Refusal:
    """Why a write is refused: which limit (``key`` or ``user``), for whom, and when to try again."""

    limit: str
    subject: str
    retry_after: int
    detail: str


class LimitsUnavailable(RuntimeError):
    """The limits file stayed locked past the budget: the write is refused (503), nothing landed."""


@dataclass(frozen=True)
class Bucket:
    rate: float  # tokens a second
    burst: int  # at most this many tokens


class WriteLimiter:
    """Token buckets per key and per user in a SQLite file shared by the service's workers."""

    def __init__(self, path: Path, *, per_key: Bucket, per_user: Bucket, timeout_s: float) -> None:
        self.path, self.per_key, self.per_user, self.timeout_s = Path(path), per_key, per_user, timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writes = 0
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(
                "CREATE TABLE IF NOT EXISTS buckets (name TEXT PRIMARY KEY, tokens REAL NOT NULL, updated REAL NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        # one short-lived connection per write: request threads never share one
        return sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)

    def take(
        self,
        key: str,
        users: Mapping[str, int] | None = None,
        *,
        cost: int | None = None,
        shown: Mapping[str, str] | None = None,
    ) -> Refusal | None:
        """Take ``cost`` tokens (default: the events in ``users``) from ``key``'s bucket and each user's
        count from the user's bucket, all or none; the :class:`Refusal` when a bucket is short.
        ``shown``: how a user (a bucket's id, e.g. a pseudonym) is named in the refusal's detail
        (default: as given).

        Raises
        ------
        LimitsUnavailable
            When the file stays locked longer than ``timeout_s``.
        """
        users = Counter(users or {})
        cost = sum(users.values()) if cost is None else cost
        wanted: dict[str, tuple[int, Bucket, str, str]] = {f"k:{key}": (cost, self.per_key, "key", key)}
        for user, n in users.items():
            wanted[f"u:{user}"] = (n, self.per_user, "user", user)
        con = self._connect()
        try:
            try:
                con.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise LimitsUnavailable(f"the write limits file is busy ({exc})") from None
            now = time.time()  # inside the transaction: a later writer always sees a later time
            names = list(wanted)
            stored: dict[str, tuple[float, float]] = {}
            for i in range(0, len(names), _CHUNK):
                chunk = names[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                for name, tokens, updated in con.execute(
                    f"SELECT name, tokens, updated FROM buckets WHERE name IN ({marks})", chunk
                ):
                    stored[name] = (tokens, updated)
            refusal: Refusal | None = None
            after: list[tuple[str, float, float]] = []
            for name, (n, bucket, limit, subject) in wanted.items():
                tokens, updated = stored.get(name, (float(bucket.burst), now))
                tokens = min(float(bucket.burst), tokens + max(now - updated, 0.0) * bucket.rate)
                if tokens + 1e-9 < n:
                    candidate = _refusal(limit, subject, n, tokens, bucket, (shown or {}).get(subject, subject))
                    if refusal is None or candidate.retry_after > refusal.retry_after:
                        refusal = candidate
                after.append((name, tokens - n, now))
            if refusal is not None:
                con.execute("ROLLBACK")
                return refusal
            con.executemany(
                "INSERT INTO buckets (name, tokens, updated) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET tokens = excluded.tokens, updated = excluded.updated",
                after,
            )
            self._writes += 1
            if self._writes % _CLEANUP_EVERY == 0:
                horizon = max(b.burst / b.rate for b in (self.per_key, self.per_user))
                con.execute("DELETE FROM buckets WHERE updated < ?", (now - horizon,))
            con.execute("COMMIT")
            return None
        except sqlite3.OperationalError as exc:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise LimitsUnavailable(f"the write limits file failed ({exc})") from None
        finally:
            con.close()


def _refusal(limit: str, subject: str, n: int, tokens: float, bucket: Bucket, shown: str) -> Refusal:
    what = f"API key {subject!r}" if limit == "key" else f"user_id {shown!r}"
    setting = "RECS_SERVE_WRITE_RATE_PER_KEY" if limit == "key" else "RECS_SERVE_WRITE_RATE_PER_USER"
    rule = f"{bucket.rate:g} events/s, burst {bucket.burst} ({setting})"
    if n > bucket.burst:
        wait = max(1, math.ceil((bucket.burst - tokens) / bucket.rate))
        detail = (
            f"per-{limit} write limit: the batch has {n} events for {what}, more than its burst of {rule}; "
            "nothing was landed: split the batch"
        )
    else:
        wait = max(1, math.ceil((n - tokens) / bucket.rate))
        detail = (
            f"per-{limit} write limit exceeded for {what}: {rule}; the batch needs {n} and {math.floor(tokens)} "
            f"are left; nothing was landed: retry after {wait} s"
        )
    return Refusal(limit, subject, wait, detail)
