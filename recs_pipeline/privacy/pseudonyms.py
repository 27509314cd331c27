"""Pseudonymous user ids: the one place that turns a raw user id into what the system stores.

With a key (``RECS_PSEUDONYM_KEY`` or ``RECS_PSEUDONYM_KEY_FILE``, :class:`~recs_pipeline.settings.PseudonymSettings`)
a user id becomes :data:`PREFIX` + the first :data:`HEX_CHARS` hex digits (128 bits) of
HMAC-SHA256(key, the id's UTF-8 bytes). The mapping is deterministic, so joins, features, models
and the online store keep working on pseudonyms; without the key it cannot be recomputed nor
reversed. Without a key every function here is the identity (the embedded demo's default).

Where it is applied (docs/PRIVACY.md): the landing zone keeps what producers and the service sent
(raw ids); ingestion maps ``user_id`` (and a producer's ``session_id``, which often embeds the user
id) through :func:`register`'s ``pseudonym`` SQL function as it loads events and exposures; the
service maps every user id it receives before any lookup, session push, rate-limit bucket or log
line. Nothing else computes the mapping.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb
    import polars as pl
    import pyarrow as pa

# A pseudonym is PREFIX + HEX_CHARS lowercase hex digits: 128 bits of HMAC-SHA256, so ids never collide
# in practice (birthday bound ~2**64 users) and a pseudonym never looks like a raw id of the generator.
PREFIX = "p_"
HEX_CHARS = 32
# Shorter keys are refused: the key is the only thing standing between a pseudonym and a guessed id.
MIN_KEY_LENGTH = 32
# The name of the SQL function ingestion calls (sql/fresh_events.sql, sql/fresh_exposures.sql, ...).
SQL_FUNCTION = "pseudonym"


@dataclass(frozen=True)
class Pseudonyms:
    """The mapping of one key (``key=None``: the identity)."""

    key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.key is not None and len(self.key) < MIN_KEY_LENGTH:
            raise ValueError(f"a pseudonym key needs at least {MIN_KEY_LENGTH} bytes (got {len(self.key)})")

    @property
    def enabled(self) -> bool:
        """Whether ids are mapped (a key is set)."""
        return self.key is not None

    def of(self, user_id: object) -> str:
        """The pseudonym of ``user_id`` (its text, as ingestion reads it); the id itself when disabled."""
        text = str(user_id)
        if self.key is None:
            return text
        return PREFIX + hmac.new(self.key, text.encode("utf-8"), hashlib.sha256).hexdigest()[:HEX_CHARS]

    def of_optional(self, value: object) -> str | None:
        """:meth:`of`, keeping None and the empty string (an absent optional id) as they are."""
        return None if value is None else "" if value == "" else self.of(value)

    def arrow(self, values: pa.Array | pa.ChunkedArray) -> pa.Array:
        """The pseudonyms of a string array, nulls kept (DuckDB's vectorised UDF and polars call this)."""
        import pyarrow as pa

        return pa.array([None if v is None else self.of(v) for v in values.to_pylist()], type=pa.string())

    def expr(self, column: str | pl.Expr) -> pl.Expr:
        """A polars expression of the pseudonyms of a string column (the column itself when disabled)."""
        import polars as pl

        col = pl.col(column) if isinstance(column, str) else column
        if self.key is None:
            return col
        return col.map_batches(lambda s: pl.Series(s.name, self.arrow(s.to_arrow())), return_dtype=pl.String)

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        """Define ``pseudonym(VARCHAR) -> VARCHAR`` on ``con``: a macro returning its argument when disabled (no
        cost), else this mapping as a vectorised (arrow) Python function. Safe to call again on a connection."""
        import duckdb

        with contextlib.suppress(duckdb.Error):  # not registered on this connection yet
            con.remove_function(SQL_FUNCTION)
        if self.key is None:
            con.execute(f"CREATE OR REPLACE TEMP MACRO {SQL_FUNCTION}(x) AS x")
            return
        con.execute(f"DROP MACRO IF EXISTS temp.main.{SQL_FUNCTION}")
        import duckdb.func

        # a plain lambda: DuckDB inspects the callable's annotations, which name types only imported for mypy
        con.create_function(
            SQL_FUNCTION,
            lambda values: self.arrow(values),
            ["VARCHAR"],
            "VARCHAR",
            type=duckdb.func.PythonUDFType.ARROW,
        )


def from_env() -> Pseudonyms:
    """The mapping the environment configures (``RECS_PSEUDONYM_KEY`` / ``RECS_PSEUDONYM_KEY_FILE``).

    Cached per value of the two variables, so it is cheap to call per request or per file.

    Raises
    ------
    SettingsError
        Both variables set, an unreadable or empty key file, or a key shorter than :data:`MIN_KEY_LENGTH`.
    """
    return _from_env(os.environ.get("RECS_PSEUDONYM_KEY"), os.environ.get("RECS_PSEUDONYM_KEY_FILE"))


@lru_cache(maxsize=8)
def _from_env(key: str | None, key_file: str | None) -> Pseudonyms:
    from recs_pipeline.settings import PseudonymSettings

    secret = PseudonymSettings.from_env().secret()
    return Pseudonyms(None if secret is None else secret.get_secret_value().encode("utf-8"))


def pseudonym(user_id: object) -> str:
    """The pseudonym of ``user_id`` under the environment's key (the id itself when no key is set)."""
    return from_env().of(user_id)
