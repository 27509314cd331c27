"""Short-lived connections to the DuckDB file (one writer at a time; see ARCHITECTURE)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from recs_pipeline.warehouse.sql import run_script


@contextmanager
def connect(
    path: Path, *, threads: int = 2, memory_limit: str = "6GB", read_only: bool = False
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse, make sure its schema exists, and close it on exit.

    Sessions run in UTC so timestamps without an offset are read as UTC.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only, config={"threads": threads, "memory_limit": memory_limit})
    try:
        con.execute("SET TimeZone = 'UTC'")
        if not read_only:
            run_script(con, "schema")
        yield con
    finally:
        con.close()
