"""Load SQL from ``sql/`` by name and run it with bound parameters."""

from __future__ import annotations

from functools import cache
from typing import Any

import duckdb

from recs_pipeline.settings import SQL_DIR


@cache
def load_sql(name: str) -> str:
    """Text of ``sql/<name>.sql``; raises FileNotFoundError naming the file when it is absent."""
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"no SQL file {path} (known: {sorted(p.stem for p in SQL_DIR.glob('*.sql'))})")
    return path.read_text()


def run_sql(con: duckdb.DuckDBPyConnection, name: str, **params: Any) -> duckdb.DuckDBPyConnection:
    """Execute ``sql/<name>.sql`` with named parameters (``$name`` in the SQL)."""
    return con.execute(load_sql(name), params or None)


def run_script(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Execute a parameter-free multi-statement file (idempotent DDL)."""
    con.execute(load_sql(name))


def first_row(result: duckdb.DuckDBPyConnection) -> tuple[Any, ...]:
    """The first row of an executed query that always returns one (an aggregate, an ``INSERT``'s count).

    Raises
    ------
    RuntimeError
        When the query returned no row (a bug in the query, not a data condition).
    """
    row = result.fetchone()
    if row is None:
        raise RuntimeError("the query returned no row where it always returns one")
    return row


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None) -> Any:
    """The first column of the one row ``sql`` returns (see :func:`first_row`)."""
    return first_row(con.execute(sql, params))[0]
