"""Short-lived connections to the DuckDB file (one writer at a time; see ARCHITECTURE).

DuckDB lets one process at a time open the file for writing; another process's ``connect`` fails at
once with "Could not set lock on file". The ``duckdb`` pool keeps runs of one Dagster instance
apart, but a run started in process (``recs run``, ``recs experiment``) and one the daemon dequeues
in the same second can both pass their pool checks, so :func:`connect` waits for the lock (sleeping,
with backoff, up to ``lock_wait_seconds``) instead of failing the run, and names the holder when it
gives up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from recs_pipeline.warehouse.sql import run_script

if TYPE_CHECKING:
    from recs_pipeline.settings import Settings

log = logging.getLogger(__name__)

LOCK_CONFLICT = "Could not set lock"


@contextmanager
def connect(
    path: Path,
    *,
    threads: int = 2,
    memory_limit: str = "6GB",
    read_only: bool = False,
    lock_wait_seconds: float = 120.0,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse, make sure its schema exists, and close it on exit.

    Sessions run in UTC so timestamps without an offset are read as UTC. While another process holds
    the file's lock, waits up to ``lock_wait_seconds`` (see the module docstring).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = _open(
        path, read_only=read_only, config={"threads": threads, "memory_limit": memory_limit}, wait=lock_wait_seconds
    )
    try:
        con.execute("SET TimeZone = 'UTC'")
        if not read_only:
            run_script(con, "schema")
        yield con
    finally:
        con.close()


def _open(path: Path, *, read_only: bool, config: dict, wait: float) -> duckdb.DuckDBPyConnection:
    """``duckdb.connect``, retried while another process holds the file's lock (at most ``wait`` seconds)."""
    started = time.monotonic()
    pause = 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config)
        except duckdb.IOException as exc:
            waited = time.monotonic() - started
            if LOCK_CONFLICT not in str(exc):
                raise
            if waited >= wait:
                raise duckdb.IOException(
                    f"the DuckDB file {path} stayed locked by another process for {waited:.0f} s "
                    f"(RECS_DUCKDB_LOCK_WAIT_SECONDS): {exc}"
                ) from exc
            if pause == 0.05:
                log.warning("waiting for the DuckDB file's lock, held by another process: %s", str(exc).splitlines()[0])
            time.sleep(min(pause, max(wait - waited, 0.0)))
            pause = min(pause * 2, 1.0)


@contextmanager
def connect_for(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    """:func:`connect` to the pipeline's warehouse with its settings (file, threads, memory limit,
    lock wait): what every writer outside a single test opens."""
    with connect(
        settings.duckdb_path,
        threads=settings.duckdb_threads,
        memory_limit=settings.duckdb_memory_limit,
        lock_wait_seconds=settings.duckdb_lock_wait_seconds,
    ) as con:
        yield con
