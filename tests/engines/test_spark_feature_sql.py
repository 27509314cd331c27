"""Golden parity of the feature SQL: every ``sql/`` feature file run by DuckDB (the pipeline's path) and,
transpiled by ``recs_pipeline.engines.spark_sql``, by Spark over the same input parquet, gives the same
table, at two as-of times of a small synthetic warehouse (tests/engines/spark_home.py).

One local Spark session for the module (JVM start-up is most of the time), stopped at its end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl
import pytest
from spark_home import (
    AS_OFS,
    CREATED,
    WEIGHTING,
    assert_same_table,
    build_duckdb_snapshots,
    duckdb_rows,
    fill_warehouse,
)

from recs_pipeline.engines.spark import SMALL_DATA_CONF, local_session
from recs_pipeline.engines.spark_sql import (
    build_snapshot,
    export_inputs,
    register_parquet,
    snapshot_params,
    translate,
    transpile,
)
from recs_pipeline.warehouse import db
from recs_pipeline.warehouse.features import FEATURE_KEYS, FEATURE_TABLES, UPSTREAM

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[duckdb.DuckDBPyConnection, Path]]:
    folder = tmp_path_factory.mktemp("engine-parity")
    with db.connect(folder / "warehouse.duckdb") as con:
        fill_warehouse(con)
        build_duckdb_snapshots(con)
        export_inputs(con, folder / "inputs")
        yield con, folder


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory):
    session = local_session(scratch_dir=tmp_path_factory.mktemp("spark"), shuffle_partitions=1, extra=SMALL_DATA_CONF)
    yield session
    session.stop()


@pytest.fixture(scope="module")
def spark_snapshots(spark, warehouse) -> dict[str, pl.DataFrame]:
    """Every feature table at every as-of time, built on Spark in the pipeline's order (user_profile reads
    the Spark-built interactions and user_category_features snapshots)."""
    _, folder = warehouse
    register_parquet(spark, {p.stem: p for p in (folder / "inputs").glob("*.parquet")})
    built: dict[str, list] = {t: [] for t in FEATURE_TABLES}
    for as_of in AS_OFS:
        for table in FEATURE_TABLES:
            for upstream in UPSTREAM.get(table, ()):
                _union(built[upstream]).createOrReplaceTempView(upstream)
            frame = build_snapshot(spark, table, as_of=as_of, created=CREATED, weighting=WEIGHTING).cache()
            built[table].append(frame)
    return {t: pl.from_arrow(_union(frames).toArrow()) for t, frames in built.items()}


def _union(frames: list):
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


@pytest.mark.parametrize("table", FEATURE_TABLES)
def test_both_engines_give_the_same_table(warehouse, spark_snapshots, table):
    con, _ = warehouse
    for as_of in AS_OFS:
        expected = duckdb_rows(con, table, as_of)
        assert expected.height > 10, f"{table} at {as_of}: too few rows for a meaningful comparison"
        actual = spark_snapshots[table].filter(pl.col("event_timestamp") == as_of)
        assert_same_table(expected, actual, FEATURE_KEYS[table])


def test_the_data_reaches_the_edges_the_sql_decides(warehouse):
    """The scenario exercises what differs between dialects: hidden and shown items (a shadow list among
    them), the window edges."""
    con, _ = warehouse
    for as_of in AS_OFS:
        profile = duckdb_rows(con, "user_profile", as_of)
        assert profile["hidden_item_ids"].drop_nulls().len() > 5, as_of
        assert profile["shown_item_ids"].drop_nulls().len() > 5, as_of
    shadows_in_window = con.sql(
        "SELECT count(*) FROM exposures WHERE shadow_of IS NOT NULL AND ts < $as_of AND ts >= $as_of - INTERVAL 24 HOUR",
        params={"as_of": AS_OFS[-1]},
    ).fetchall()
    assert shadows_in_window == [(1,)]
    edge = duckdb_rows(con, "user_features", AS_OFS[-1]).filter(pl.col("user_id") == "u_edge").row(0, named=True)
    assert (edge["views_1h"], edge["carts_24h"], edge["purchases_7d"], edge["favorites_30d"]) == (1, 1, 1, 1)


def test_epoch_is_duckdbs_to_the_last_bit(spark):
    """``epoch()`` on Spark gives DuckDB's very doubles (not merely close ones) for times from 1970 to 2096."""
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        expected = con.sql(
            "SELECT row_number() OVER () AS n, t, epoch(t) AS e FROM (SELECT TIMESTAMPTZ '1970-01-01 00:00:00+00'"
            " + to_microseconds((random() * 4e15)::BIGINT) AS t FROM range(5000))"
        ).pl()
    spark.createDataFrame(expected.select("n", "t").to_pandas()).createOrReplaceTempView("times")
    actual = pl.from_arrow(spark.sql(translate("SELECT n, epoch(t) AS e FROM times ORDER BY n")).toArrow())
    assert actual["n"].to_list() == expected["n"].to_list()
    differ = expected.with_columns(actual["e"].alias("spark")).filter(pl.col("e") != pl.col("spark"))
    assert differ.is_empty(), differ.head()
    # what the plain division would have given differs in the last bit for many of them
    assert (expected["e"] != expected["t"].dt.epoch("us") / 1e6).sum() > 100


def test_parameters_the_sql_needs_and_lacks_are_named():
    with pytest.raises(ValueError, match=r"interactions\.sql uses \$half_life_days, \$w_add_to_cart, .*\$w_view, not"):
        transpile("interactions", {"as_of": AS_OFS[0], "created": CREATED})


def test_naive_times_are_refused():
    params = snapshot_params(as_of=AS_OFS[0].replace(tzinfo=None), created=CREATED)
    with pytest.raises(ValueError, match="timezone-aware"):
        transpile("user_features", params)
