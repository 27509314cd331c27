"""The feature SQL of ``sql/`` on Spark: each file transpiled from DuckDB's dialect to Spark SQL by sqlglot.

The files stay the one definition of every feature; nothing here restates a query. sqlglot translates
most of them as they are. What it does not translate, or translates with another meaning, is rewritten
on the parsed tree, the same way for every file (no per-file copy in another dialect):

- ``epoch(ts)``: DuckDB's seconds keep their fraction; sqlglot's ``UNIX_TIMESTAMP`` truncates them.
  Becomes DuckDB's own arithmetic for a TIMESTAMPTZ (every time in the warehouse is one): the whole
  milliseconds over 1e3 plus the remaining microseconds over 1e6, in DOUBLE. (Not ``unix_micros / 1e6``:
  at today's epoch, ~1.8e9 s, the two differ by one unit in the last place, 2.4e-7 s, in about a quarter
  of the values, which a difference of two epochs such as ``seconds_since_last_event`` shows.)
- ``list(x ORDER BY k)``: sqlglot drops the ORDER BY (``COLLECT_LIST``, whose order Spark does not
  define and which skips NULLs). Becomes the values sorted by their keys with a comparator, with
  DuckDB's NULL order.
- ``catalog_as_of(t)``, a table macro of ``sql/schema.sql`` (Spark has none): inlined as a subquery of
  the macro's own body.
- ``to_hours(n)`` (DuckDB only): ``make_dt_interval(0, n)``.
- decimal literals such as ``7.0``: DuckDB divides an integer by one in DOUBLE, Spark in DECIMAL;
  they are cast to DOUBLE.
- ``INSERT INTO t [BY NAME] SELECT ...``: the SELECT alone, its columns named and typed as ``t``'s
  in ``sql/schema.sql``, so the result has the warehouse table's schema.
- ``$name`` parameters: typed literals; timestamps in UTC, so the session's time zone must be UTC
  (:func:`recs_pipeline.engines.spark.local_session` sets it).

``tests/engines/test_spark_feature_sql.py`` checks that both engines give the same tables.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import sqlglot
from sqlglot import exp

from recs_pipeline.warehouse import features
from recs_pipeline.warehouse.features import FEATURE_TABLES, Weighting
from recs_pipeline.warehouse.sql import load_sql, run_script

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Warehouse tables the feature files read (besides the snapshots user_profile is built from).
INPUT_TABLES: tuple[str, ...] = ("events", "item_versions", "exposures", "exposure_items")
READ = "duckdb"
WRITE = "spark"
# Time zones a Spark session may have for the timestamp literals to mean UTC.
UTC_ZONES = frozenset({"UTC", "Etc/UTC", "GMT", "Z", "+00:00"})
DEFAULT_WEIGHTING = Weighting()
_MACRO = re.compile(r"CREATE\s+OR\s+REPLACE\s+MACRO\s+(\w+)\s*\(([^)]*)\)\s+AS\s+TABLE\s+(.+?);", re.I | re.S)


@cache
def table_schema(table: str) -> tuple[tuple[str, str], ...]:
    """``(column, DuckDB type)`` of a warehouse table, in order, as ``sql/schema.sql`` creates it."""
    with duckdb.connect() as con:
        run_script(con, "schema")
        try:
            rows = con.execute(f"DESCRIBE {table}").fetchall()  # noqa: S608 (checked by DuckDB: an unknown name fails)
        except duckdb.CatalogException as exc:
            raise ValueError(f"sql/schema.sql creates no table {table!r}") from exc
    return tuple((str(r[0]), str(r[1])) for r in rows)


@cache
def _table_macros() -> dict[str, tuple[tuple[str, ...], str]]:
    """Table macros of ``sql/schema.sql``: name -> (argument names, body)."""
    return {
        m.group(1).lower(): (tuple(a.strip() for a in m.group(2).split(",") if a.strip()), m.group(3))
        for m in _MACRO.finditer(load_sql("schema"))
    }


def snapshot_params(*, as_of: datetime, created: datetime, weighting: Weighting = DEFAULT_WEIGHTING) -> dict[str, Any]:
    """Every parameter a feature file may use (each file takes the ones it names), as
    :func:`recs_pipeline.warehouse.features.build_snapshot` binds them."""
    return {
        "as_of": as_of,
        "created": created,
        **weighting.params(),
        "max_items": features.PROFILE_MAX_ITEMS,
        "max_categories": features.PROFILE_MAX_CATEGORIES,
        "max_hidden": features.PROFILE_MAX_HIDDEN,
        "max_shown": features.PROFILE_MAX_SHOWN,
        "shown_hours": features.PROFILE_SHOWN_HOURS,
    }


def _literal(name: str, value: Any) -> exp.Expr:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"${name} must be a timezone-aware datetime, got {value!r}")
        text = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return exp.cast(exp.Literal.string(text), exp.DataType.Type.TIMESTAMP)
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, int):
        return exp.Literal.number(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"${name} must be finite, got {value!r}")
        return exp.cast(exp.Literal.number(repr(value)), exp.DataType.Type.DOUBLE)
    if isinstance(value, str):
        return exp.Literal.string(value)
    raise TypeError(f"${name}: no Spark literal for {type(value).__name__} {value!r}")


def _sorted_list(agg: exp.ArrayAgg) -> exp.Expr:
    """``list(value ORDER BY k1, k2 DESC ...)`` as the values of an array of structs sorted by the keys."""
    order = agg.this
    assert isinstance(order, exp.Order)
    keys: list[exp.Ordered] = list(order.expressions)
    fields = ", ".join([f"'v', {order.this.sql(WRITE)}", *(f"'k{n}', {k.this.sql(WRITE)}" for n, k in enumerate(keys))])
    whens = []
    for n, key in enumerate(keys):
        desc, nulls_first = bool(key.args.get("desc")), bool(key.args.get("nulls_first"))
        left, right = f"l.k{n}", f"r.k{n}"
        whens += [
            f"WHEN {left} IS NULL AND {right} IS NOT NULL THEN {-1 if nulls_first else 1}",
            f"WHEN {left} IS NOT NULL AND {right} IS NULL THEN {1 if nulls_first else -1}",
            f"WHEN {left} < {right} THEN {1 if desc else -1}",
            f"WHEN {left} > {right} THEN {-1 if desc else 1}",
        ]
    comparator = f"(l, r) -> CASE {' '.join(whens)} ELSE 0 END"
    return sqlglot.parse_one(
        f"TRANSFORM(ARRAY_SORT(COLLECT_LIST(NAMED_STRUCT({fields})), {comparator}), s -> s.v)", read=WRITE
    )


def _inline_macro(table: exp.Table) -> exp.Expr:
    call = table.this
    assert isinstance(call, exp.Anonymous)
    names, body = _table_macros()[call.name.lower()]
    if len(call.expressions) != len(names):
        raise ValueError(f"{call.name} takes {len(names)} arguments, got {len(call.expressions)}: {call.sql(READ)}")
    arguments = dict(zip(names, call.expressions, strict=True))
    query = sqlglot.parse_one(body, read=READ).transform(
        lambda n: arguments[n.name].copy() if isinstance(n, exp.Column) and not n.table and n.name in arguments else n
    )
    return exp.Subquery(this=query, alias=table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(call.name)))


def _epoch(timestamp: exp.Expr) -> exp.Expr:
    """DuckDB's ``epoch()`` of a TIMESTAMPTZ in Spark SQL: ``ms / 1e3 + us / 1e6`` in DOUBLE, where ``ms`` is
    the whole milliseconds since the epoch and ``us`` the microseconds beyond them (both truncated
    toward zero, as DuckDB's integer division)."""
    micros = f"unix_micros({timestamp.sql(WRITE)})"
    return sqlglot.parse_one(
        f"(CAST({micros} DIV 1000 AS DOUBLE) / CAST(1000 AS DOUBLE)"
        f" + CAST({micros} % 1000 AS DOUBLE) / CAST(1000000 AS DOUBLE))",
        read=WRITE,
    )


def _is_decimal(node: exp.Literal) -> bool:
    return not node.is_string and any(c in node.this.lower() for c in ".e")


def _rewriter(params: Mapping[str, Any]) -> Callable[[exp.Expr], exp.Expr]:
    def rewrite(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Placeholder):
            return _literal(node.name, params[node.name])
        if isinstance(node, exp.TimeToUnix):
            return _epoch(node.this)
        if isinstance(node, exp.ArrayAgg) and isinstance(node.this, exp.Order):
            return _sorted_list(node)
        if isinstance(node, exp.Anonymous) and node.name.lower() == "to_hours":
            return exp.Anonymous(this="make_dt_interval", expressions=[exp.Literal.number(0), *node.expressions])
        if isinstance(node, exp.Literal) and _is_decimal(node) and not isinstance(node.parent, exp.Cast):
            return exp.cast(node, exp.DataType.Type.DOUBLE)
        return node

    return rewrite


def _post_order(node: exp.Expr, fn: Callable[[exp.Expr], exp.Expr]) -> exp.Expr:
    """``fn`` applied to every node, children before their parent (a rewrite sees rewritten children)."""
    if (
        isinstance(node, exp.Table)
        and isinstance(node.this, exp.Anonymous)
        and node.this.name.lower() in _table_macros()
    ):
        node = _inline_macro(node)
    for child in list(node.iter_expressions()):
        new = _post_order(child, fn)
        if new is not child:
            child.replace(new)
    return fn(node)


def _named_select(statement: exp.Expr, source: str) -> tuple[str, exp.Query]:
    """The target table and the SELECT of ``INSERT INTO table [BY NAME] SELECT``, its columns named after the table's."""
    if not isinstance(statement, exp.Insert) or not isinstance(statement.expression, exp.Select):
        raise ValueError(f"{source}: expected one INSERT INTO <table> SELECT ..., got {statement.key.upper()}")
    target = statement.this
    if not isinstance(target, exp.Table):
        raise ValueError(f"{source}: INSERT with a column list is not supported: {target.sql(READ)}")
    table, select = target.name, statement.expression
    columns = [c for c, _ in table_schema(table)]
    if statement.args.get("by_name"):
        names = [e.alias_or_name for e in select.expressions]
        unknown = sorted(set(names) - set(columns))
        if unknown:
            raise ValueError(f"{source}: {table} has no columns {unknown}")
        return table, select
    if len(select.expressions) != len(columns):
        raise ValueError(f"{source}: selects {len(select.expressions)} columns; {table} has {len(columns)}")
    for n, (expression, name) in enumerate(zip(list(select.expressions), columns, strict=True)):
        bare = expression.this if isinstance(expression, exp.Alias) else expression
        select.expressions[n] = exp.alias_(bare.copy(), name)
    select.set("expressions", select.expressions)
    return table, select


def _check_params(statement: exp.Expr, params: Mapping[str, Any], source: str) -> None:
    missing = sorted({p.name for p in statement.find_all(exp.Placeholder)} - set(params))
    if missing:
        raise ValueError(
            f"{source} uses {', '.join('$' + m for m in missing)}, not among the parameters given {sorted(params)}"
        )


def translate(query: str, params: Mapping[str, Any] | None = None) -> str:
    """Spark SQL of one DuckDB query (``params`` bound), with the rewrites the feature files get.

    Raises
    ------
    ValueError
        When ``query`` is not one statement or names a parameter ``params`` lacks.
    """
    statements = [s for s in sqlglot.parse(query, read=READ) if s is not None]
    if len(statements) != 1:
        raise ValueError(f"expected one statement, got {len(statements)}: {query!r}")
    given = params or {}
    _check_params(statements[0], given, "the query")
    return _post_order(statements[0], _rewriter(given)).sql(WRITE)


def transpile(name: str, params: Mapping[str, Any]) -> str:
    """Spark SQL of ``sql/<name>.sql`` with ``params`` bound: a query giving the rows the file inserts,
    with the columns (names, order and types) of its target table.

    Raises
    ------
    ValueError
        When the file is not one ``INSERT INTO <table> SELECT``, names a parameter ``params`` lacks,
        or selects columns its table does not have.
    """
    source = f"sql/{name}.sql"
    statements = [s for s in sqlglot.parse(load_sql(name), read=READ) if s is not None]
    if len(statements) != 1:
        raise ValueError(f"{source}: expected one statement, got {len(statements)}")
    _check_params(statements[0], params, source)
    table, select = _named_select(statements[0], source)
    present = {e.alias_or_name for e in select.selects}
    query = _post_order(select, _rewriter(params))
    outer = [
        exp.alias_(
            exp.cast(exp.column(c) if c in present else exp.Null(), exp.DataType.build(t, dialect=READ)),
            c,
        )
        for c, t in table_schema(table)
    ]
    return (
        exp.select(*outer)
        .from_(exp.Subquery(this=query, alias=exp.TableAlias(this=exp.to_identifier("snapshot"))))
        .sql(WRITE)
    )


def check_session(spark: SparkSession) -> None:
    """Raise unless the session reads timestamp literals as UTC (``spark.sql.session.timeZone``)."""
    zone = spark.conf.get("spark.sql.session.timeZone")
    if zone not in UTC_ZONES:
        raise ValueError(
            f"the Spark session's time zone is {zone!r}: set spark.sql.session.timeZone=UTC (the feature SQL's "
            "times are UTC)"
        )


def build_snapshot(
    spark: SparkSession,
    table: str,
    *,
    as_of: datetime,
    created: datetime,
    weighting: Weighting = DEFAULT_WEIGHTING,
) -> DataFrame:
    """``table``'s snapshot as of ``as_of`` on Spark: the rows ``sql/<table>.sql`` inserts into the warehouse.

    The session must have temporary views (or tables) named after the warehouse tables the file reads
    (:data:`INPUT_TABLES`, see :func:`register_parquet`) and, for ``user_profile``, the ``interactions``
    and ``user_category_features`` snapshots at ``as_of``.
    """
    if table not in FEATURE_TABLES:
        raise ValueError(f"unknown feature table {table!r}; expected one of {FEATURE_TABLES}")
    check_session(spark)
    return spark.sql(transpile(table, snapshot_params(as_of=as_of, created=created, weighting=weighting)))


def export_inputs(con: duckdb.DuckDBPyConnection, folder: Path) -> dict[str, Path]:
    """Write the warehouse tables the feature SQL reads (:data:`INPUT_TABLES`) to ``<folder>/<table>.parquet``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for table in INPUT_TABLES:
        paths[table] = folder / f"{table}.parquet"
        con.sql(f"SELECT * FROM {table}").write_parquet(str(paths[table]))  # noqa: S608 (a fixed name)
    return paths


def register_parquet(spark: SparkSession, paths: Mapping[str, Path | str]) -> None:
    """A temporary view per name over its parquet file or folder (what the feature SQL reads by that name)."""
    for name, path in paths.items():
        spark.read.parquet(str(path)).createOrReplaceTempView(name)
