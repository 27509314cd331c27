"""The collector's journals: accepted events are durable per request and land in batches.

A collector (one per worker process) appends each request's accepted events to its open journal, a
JSON-lines file in ``<landing>/.journals/`` (a hidden folder: the landing sensor and ingestion never
see it; on the landing zone's filesystem, so landing it is a rename), and fsyncs it before
:meth:`EventJournal.append` returns, so a 202 still means the rows are on disk. Appends from
concurrent requests share an fsync (group commit). A journal is sealed (fsync, atomic rename into
``landing/events/`` under the name it was opened with) once it is ``flush_seconds`` old (a timer
thread), when it holds ``max_rows`` rows, and on :meth:`EventJournal.close`: the landing zone gets at
most about one file per worker per flush interval, whatever the post rate. Sealed journals are the
JSON-lines files the collector always landed, so ingestion reads them, and its ledger loads each
file and each event id once, unchanged.

Crash safety: a writer holds an exclusive ``flock`` on its open journal, released by the kernel when
the process dies. A journal nobody holds is an orphan: :func:`seal_orphans` (run when a journal
starts and every :data:`SWEEP_SECONDS`) cuts whatever follows its last newline (a write torn by the
crash, whose request was never acknowledged) and seals it. ``flock``, not ``fcntl`` or
``lockf`` record locks: those belong to the process, and its closing any descriptor of the file
(a sweep does) would drop them.

Erasure and retention rewrite landed files: :func:`land_journals` first lands every journal present
(orphans at once, live ones as their writers seal them).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from recs_pipeline.data import landing

log = logging.getLogger(__name__)

JOURNAL_DIR = ".journals"  # inside the landing zone; hidden, like every file in flight
KIND = "events"
DEFAULT_MAX_ROWS = 50_000
SWEEP_SECONDS = 10.0  # how often a live journal looks for orphans (it also does when it starts)
EMPTY_ORPHAN_SECONDS = 60.0  # an empty journal nobody holds this long is removed (its writer died at once)


def journal_dir(landing_dir: Path) -> Path:
    """Where the collector's open journals are (``<landing>/.journals``)."""
    return Path(landing_dir) / JOURNAL_DIR


def journal_files(landing_dir: Path) -> list[Path]:
    """Journals not landed yet, live or orphaned, by name."""
    folder = journal_dir(landing_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())


def complete_length(data: bytes) -> int:
    """Bytes at the start of ``data`` up to its last newline: every append writes whole lines, so
    what follows the last newline is a write torn when its process died. A malformed line before it
    is kept (ingestion quarantines it with its reason; nothing after it is lost)."""
    return data.rfind(b"\n") + 1


def seal_orphans(landing_dir: Path) -> list[Path]:
    """Land every journal no live writer holds (see the module docstring); returns the landed paths.

    A torn last write is cut first (logged); an orphan with nothing complete in it is removed.
    """
    landed = []
    for path in journal_files(landing_dir):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:  # sealed meanwhile
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live writer's
                continue
            if not _same_file(path, fd):  # sealed between the listing and the lock
                continue
            sealed = _seal_orphan(path, fd, landing_dir)
            if sealed is not None:
                landed.append(sealed)
        finally:
            os.close(fd)
    return landed


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _seal_orphan(path: Path, fd: int, landing_dir: Path) -> Path | None:
    size = os.fstat(fd).st_size
    data = os.pread(fd, size, 0)
    keep = complete_length(data)
    if keep < size:
        log.warning(
            "journal %s: cut %d bytes after its last newline (a write torn when its process died; "
            "that request was never acknowledged)",
            path.name,
            size - keep,
        )
        os.ftruncate(fd, keep)
    if keep == 0:
        if size or time.time() - os.fstat(fd).st_mtime >= EMPTY_ORPHAN_SECONDS:
            path.unlink()
        return None  # a brand-new one may be about to get its first write
    sealed = landing.publish(path, landing_dir, KIND)
    log.info("journal %s of a process that is gone: landed (%d bytes)", path.name, keep)
    return sealed


def land_journals(landing_dir: Path, *, timeout_s: float) -> int:
    """Land every journal present now: orphans here, live ones as their writers seal them (within
    their flush interval, so pass ``timeout_s`` above ``RECS_SERVE_COLLECTOR_FLUSH_SECONDS``).

    For erasure and retention, which must find every stored event in a landed file. Journals opened
    after the call (events posted meanwhile) are not waited for. Returns how many journals there
    were; raises TimeoutError naming those still open after ``timeout_s``.
    """
    waiting = journal_files(landing_dir)
    seal_orphans(landing_dir)
    deadline = time.monotonic() + timeout_s
    while left := [p for p in waiting if p.exists()]:
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"journals still open after {timeout_s:g} s: {', '.join(p.name for p in left)} (their "
                "service workers seal them every RECS_SERVE_COLLECTOR_FLUSH_SECONDS; is one stuck?)"
            )
        time.sleep(0.05)
    return len(waiting)


class _Open:
    """One journal being written: its descriptor (holding the flock) and what was written and synced."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.opened = time.monotonic()
        self.rows = 0
        self.written = 0  # bytes appended completely
        self.synced = 0  # bytes known durable
        self.closed = False
        self.sync_lock = threading.Lock()  # one fsync at a time; the descriptor is closed under it


class EventJournal:
    """A worker process's journal of accepted events (see the module docstring).

    Parameters
    ----------
    landing_dir
        The landing zone; journals are written in ``<landing_dir>/.journals/`` and land in
        ``<landing_dir>/events/``.
    flush_seconds
        Age at which a journal is sealed; 0 seals after every append (one file per request).
    max_rows
        Rows at which a journal is sealed whatever its age.
    prefix
        Start of the journals' names (``<prefix>-<UTC time>-<pid>-<random>.jsonl``).
    """

    def __init__(
        self, landing_dir: Path, *, flush_seconds: float, max_rows: int = DEFAULT_MAX_ROWS, prefix: str = "api"
    ) -> None:
        if flush_seconds < 0 or max_rows < 1:
            raise ValueError("an event journal needs flush_seconds >= 0 and max_rows >= 1")
        self.landing_dir = Path(landing_dir)
        self.folder = journal_dir(self.landing_dir)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.flush_seconds = flush_seconds
        self.max_rows = max_rows
        self.prefix = prefix
        self._lock = threading.Lock()  # the current journal and its appends
        self._current: _Open | None = None
        self._closed = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        seal_orphans(self.landing_dir)  # what a process that died left
        self._thread = threading.Thread(target=self._run, name="event-journal", daemon=True)
        self._thread.start()

    def append(self, text: str, rows: int) -> str:
        """Append ``rows`` JSON lines (``text``, each line ending in a newline) and make them durable.

        Returns the name the journal lands under in ``landing/events/``. Raises when the rows could
        not be made durable (nothing may be acknowledged then).
        """
        data = text.encode()
        with self._lock:
            if self._closed:
                raise RuntimeError("the event journal is closed")
            journal = self._current or self._open()
            start = journal.written
            try:
                _write_all(journal.fd, data)
            except BaseException:
                self._current = None  # the rows before stay; the journal lands as an orphan
                self._close(journal, truncate_to=start)
                raise
            journal.written += len(data)
            journal.rows += rows
            end = journal.written
        self._sync(journal, end)
        if self.flush_seconds == 0 or journal.rows >= self.max_rows:
            self._seal(journal)
        return journal.path.name

    def seal(self) -> Path | None:
        """Land the open journal now; its landed path (None when none is open or it could not land)."""
        with self._lock:
            journal = self._current
        return None if journal is None else self._seal(journal)

    def close(self) -> None:
        """Land the open journal and stop the timer; later appends raise."""
        self._stop.set()
        self._wake.set()
        self._thread.join()
        with self._lock:
            self._closed = True
            journal = self._current
        if journal is not None:
            self._seal(journal)

    def _open(self) -> _Open:
        """A new journal, created under the lock (called with ``self._lock`` held)."""
        for _ in range(5):
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            path = self.folder / f"{self.prefix}-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # a sweep may hold it an instant (empty and new: left alone)
                if _same_file(path, fd):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # removed by a sweep before the lock: take another name
        else:
            raise RuntimeError(f"could not open a journal in {self.folder}")
        _fsync_dir(self.folder)  # the journal's name survives a power loss
        self._current = _Open(path, fd)
        self._wake.set()  # the timer counts its age
        return self._current

    def _sync(self, journal: _Open, end: int) -> None:
        """Make bytes up to ``end`` durable: one fsync covers every append before it (group commit)."""
        with journal.sync_lock:
            if journal.synced >= end:  # another request's fsync or the seal covered them
                return
            if journal.closed:
                raise OSError(f"journal {journal.path.name} was closed before these rows were synced")
            target = journal.written
            try:
                os.fsync(journal.fd)
                failed = None
            except OSError as exc:
                failed = exc
            else:
                journal.synced = target
        if failed is not None:
            with self._lock:
                if self._current is journal:
                    self._current = None
            self._close(journal)  # what was synced lands as an orphan
            raise failed

    def _seal(self, journal: _Open) -> Path | None:
        with self._lock:
            if self._current is journal:
                self._current = None
        with journal.sync_lock:
            if journal.closed:  # sealed (or given up) by another thread
                return None
            try:
                sealed = landing.publish(journal.path, self.landing_dir, KIND)
            except OSError:
                log.exception("journal %s could not land; the next orphan sweep lands it", journal.path.name)
                return None
            else:
                journal.synced = journal.written
                return sealed
            finally:
                os.close(journal.fd)
                journal.closed = True

    def _close(self, journal: _Open, *, truncate_to: int | None = None) -> None:
        """Give a failed journal up: cut a partial append, release the lock; a sweep lands the rest."""
        with journal.sync_lock:
            if journal.closed:
                return
            try:
                if truncate_to is not None:
                    os.ftruncate(journal.fd, truncate_to)
            except OSError:
                log.exception("journal %s: a failed append could not be cut", journal.path.name)
            finally:
                os.close(journal.fd)
                journal.closed = True

    def _run(self) -> None:
        next_sweep = time.monotonic() + SWEEP_SECONDS
        while not self._stop.is_set():
            self._wake.clear()
            with self._lock:
                journal = self._current
            now = time.monotonic()
            if journal is not None and now >= journal.opened + self.flush_seconds:
                self._seal(journal)
                continue
            if now >= next_sweep:
                next_sweep = now + SWEEP_SECONDS
                try:
                    seal_orphans(self.landing_dir)
                except OSError:
                    log.exception("sweeping orphan journals failed")
            due = next_sweep if journal is None else min(next_sweep, journal.opened + self.flush_seconds)
            self._wake.wait(max(due - now, 0.0))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
