"""Per-user critical sections for the live-session read-modify-write, within and across processes.

A session update reads the stored row, merges the new events and writes the row back. Two updates
for one user that overlap would both read the same row and the second write would drop the first
one's events, so each update holds the user's lock from the read to the write:

- within a process, one of ``STRIPES`` thread locks chosen by a stable hash of the user id (bounded
  memory: no lock per user is ever created);
- across processes (several ``recs serve`` workers, several replicas), a lock that lives where the
  session lives: for Redis, redis-py's ``Lock`` on a key per user (expires if its holder dies); for
  the SQLite online store, a POSIX record lock (``fcntl.lockf``) on a lock file next to the database
  (same machine by construction).

SQLite takes one writer at a time anyway, and Feast's SQLite store shares one connection between a
process's threads: two users' updates side by side fail there ("database is locked", "another row
available"; measured). So with SQLite every update is one machine-wide critical section (one
stripe); with Redis, users' updates run in parallel.

:func:`session_locks_for` picks the cross-process lock from Feast's online store configuration.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from feast import FeatureStore

STRIPES = 1024
# A Redis lock's holder that dies frees it after this long.
REDIS_LOCK_SECONDS = 5.0
# How long an update waits for its user's critical section before it gives up (SessionLockTimeout).
DEFAULT_WAIT_SECONDS = 2.0
_POLL_SECONDS = 0.002


class SessionLockTimeout(TimeoutError):
    """The user's session could not be locked within the wait budget (a stuck store or writer)."""


def stripe_of(user_id: str) -> int:
    """The user's stripe (stable across processes, unlike ``hash``)."""
    return zlib.crc32(user_id.encode("utf-8", "surrogatepass")) % STRIPES


class CrossProcessLock(Protocol):
    def hold(self, user_id: str, *, stripe: int, deadline: float) -> contextlib.AbstractContextManager[None]:
        """Hold the user's lock (``stripe``: the user's stripe, see :class:`SessionLocks`); raise
        :class:`SessionLockTimeout` if not acquired by ``deadline`` (``time.monotonic()``)."""
        ...


# Per process: every SessionLocks shares these, so two apps (or collectors) in one process exclude
# each other too; and one descriptor per lock file, because closing any descriptor of a file drops
# all of the process's record locks on it.
_THREAD_STRIPES = [threading.Lock() for _ in range(STRIPES)]
_LOCK_FILES: dict[Path, int] = {}
_LOCK_FILES_GUARD = threading.Lock()


def _lock_file(path: Path) -> int:
    with _LOCK_FILES_GUARD:
        if path not in _LOCK_FILES:
            path.parent.mkdir(parents=True, exist_ok=True)
            _LOCK_FILES[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        return _LOCK_FILES[path]


class FileStripeLocks:
    """One byte of ``path`` per stripe, locked with ``fcntl.lockf`` (blocks until free).

    POSIX record locks belong to the process, so they only exclude other processes; the thread
    locks of :class:`SessionLocks` exclude this process's other threads first.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path).resolve()
        self._fd = _lock_file(self.path)

    @contextlib.contextmanager
    def hold(self, user_id: str, *, stripe: int, deadline: float) -> Iterator[None]:
        while True:  # lockf cannot wait with a timeout: try without blocking until the deadline
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, stripe, os.SEEK_SET)
                break
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    raise SessionLockTimeout(f"the session lock file {self.path} stayed locked") from None
                time.sleep(_POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, stripe, os.SEEK_SET)


class RedisLocks:
    """redis-py's ``Lock`` on ``<prefix><user>`` (expires after ``REDIS_LOCK_SECONDS`` if its holder dies)."""

    def __init__(self, client: object, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    @contextlib.contextmanager
    def hold(self, user_id: str, *, stripe: int, deadline: float) -> Iterator[None]:
        lock = self.client.lock(  # type: ignore[attr-defined]
            self.prefix + user_id, timeout=REDIS_LOCK_SECONDS, blocking_timeout=max(deadline - time.monotonic(), 0.0)
        )
        if not lock.acquire():
            raise SessionLockTimeout(f"the Redis session lock of user {user_id!r} stayed taken")
        try:
            yield
        finally:
            lock.release()


class SessionLocks:
    """A user's critical section: the stripe's thread lock (shared by the whole process), then the
    cross-process lock (if any). ``one_writer``: one stripe for every user (what SQLite needs)."""

    def __init__(
        self,
        cross_process: CrossProcessLock | None = None,
        *,
        one_writer: bool = False,
        wait_seconds: float = DEFAULT_WAIT_SECONDS,
    ) -> None:
        self.cross_process = cross_process
        self.one_writer = one_writer
        self.wait_seconds = wait_seconds

    @contextlib.contextmanager
    def hold(self, user_id: str) -> Iterator[None]:
        """Hold the user's critical section; :class:`SessionLockTimeout` after ``wait_seconds``."""
        deadline = time.monotonic() + self.wait_seconds
        stripe = 0 if self.one_writer else stripe_of(user_id)
        thread_lock = _THREAD_STRIPES[stripe]
        if not thread_lock.acquire(timeout=self.wait_seconds):
            raise SessionLockTimeout(f"another update of this process held the session lock of {user_id!r}")
        try:
            if self.cross_process is None:
                yield
            else:
                with self.cross_process.hold(user_id, stripe=stripe, deadline=deadline):
                    yield
        finally:
            thread_lock.release()


def session_locks_for(store: FeatureStore, *, wait_seconds: float = DEFAULT_WAIT_SECONDS) -> SessionLocks:
    """The session locks for ``store``'s online store: one machine-wide writer beside a SQLite
    database, per-user Redis locks in the Redis store; any other store gets thread locks only (one
    process) and says so."""
    config = store.config
    online = config.online_store
    kind = str(getattr(online, "type", ""))
    if kind == "sqlite" or kind.endswith("SqliteOnlineStore"):
        from feast.infra.online_stores.sqlite import SqliteOnlineStore

        db_path = Path(SqliteOnlineStore._get_db_path(config))
        lock_file = db_path.with_name(db_path.name + ".session-lock")
        return SessionLocks(FileStripeLocks(lock_file), one_writer=True, wait_seconds=wait_seconds)
    if kind == "redis" or kind.endswith("RedisOnlineStore"):
        from feast.infra.online_stores.redis import RedisOnlineStore

        # Feast's own parsing of its connection string (cluster and sentinel included)
        client = RedisOnlineStore()._get_client(online)
        return SessionLocks(RedisLocks(client, prefix=f"{config.project}:session-lock:"), wait_seconds=wait_seconds)
    logging.getLogger(__name__).warning(
        "online store %r: session updates are serialised within this process only; run one worker", kind
    )
    return SessionLocks(wait_seconds=wait_seconds)
