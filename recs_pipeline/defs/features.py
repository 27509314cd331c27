"""Feature snapshot assets, one per table in sql/, partitioned by day (partition D = as of the end of D).

The days are the ones the stored events cover (:mod:`recs_pipeline.defs.partitions`), whatever the era.
"""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import dagster as dg

from recs_pipeline.defs.partitions import days
from recs_pipeline.defs.resources import PipelineResource
from recs_pipeline.settings import DUCKDB_POOL
from recs_pipeline.warehouse import features
from recs_pipeline.warehouse.sql import scalar

DESCRIPTIONS = {
    "user_features": "Per-user counts per event type over 1h/24h/7d/30d, recency, distinct items, conversion and category preference, as of the partition's end.",
    "item_features": "Per-item popularity per window, conversion, trend, price, category and availability, as of the partition's end.",
    "user_category_features": "User x category affinity (event-type weighted, decayed), as of the partition's end.",
    "interactions": "Weighted, recency-decayed user x item interactions the ALS model trains on, as of the partition's end.",
    "user_profile": "Per user, the recent item history and category affinities as arrays: what the scoring service reads in one online lookup. Built from the same day's interactions and user_category_features.",
}


def _snapshot_asset(table: str) -> dg.AssetsDefinition:
    keys = ", ".join(features.FEATURE_KEYS[table])

    @dg.asset(
        name=table,
        group_name="features",
        partitions_def=days,
        pool=DUCKDB_POOL,
        kinds={"duckdb", "parquet"},
        deps=["events", "catalog_items", *features.UPSTREAM.get(table, ())],
        description=DESCRIPTIONS[table] + f" SQL: sql/{table}.sql",
        check_specs=[
            dg.AssetCheckSpec(
                "keys_unique", asset=table, blocking=True, description=f"({keys}) is unique within each snapshot."
            ),
            dg.AssetCheckSpec(
                "null_rates",
                asset=table,
                description="No column of the snapshot is more than half null (a sign of a broken join); columns sparse by design are exempt.",
            ),
            dg.AssetCheckSpec(
                "fresh", asset=table, description="The newest snapshot is at most a day behind the newest event."
            ),
        ],
    )
    def _asset(
        context: dg.AssetExecutionContext, pipeline: PipelineResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        day_start = datetime.fromisoformat(context.partition_key).replace(tzinfo=UTC)
        s = pipeline.settings
        with pipeline.warehouse() as con:
            latest = features.latest_event_time(con)
            as_of = features.snapshot_time(day_start, latest)
            if table in features.UPSTREAM:  # the same time as the snapshots it summarises
                as_of = features.upstream_as_of(con, table, after=day_start, until=as_of) or as_of
            result = features.build_snapshot(
                con,
                table,
                as_of=as_of,
                created=datetime.now(UTC),
                weighting=features.Weighting.from_settings(pipeline.settings),
                replaces_after=day_start,
            )
            path = features.export_table(con, table, s.features_dir)
            dupes = scalar(
                con,
                f"SELECT count(*) FROM (SELECT {keys} FROM {table} WHERE event_timestamp = $as_of "  # noqa: S608
                f"GROUP BY {keys} HAVING count(*) > 1)",
                {"as_of": as_of},
            )
            null_rates = features.null_rates(con, table, as_of)
            newest_snapshot = scalar(con, f"SELECT max(event_timestamp) FROM {table}")  # noqa: S608
            columns = con.execute(f"DESCRIBE {table}").fetchall()  # noqa: S608
        yield dg.MaterializeResult(
            metadata={
                "as_of": as_of.isoformat(),
                "rows": result.rows,
                "seconds": round(result.seconds, 3),
                "parquet": dg.MetadataValue.path(str(path)),
                "dagster/row_count": result.rows,
                "dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn(c[0], c[1]) for c in columns]),
            }
        )
        yield dg.AssetCheckResult(
            check_name="keys_unique", passed=bool(dupes == 0), metadata={"duplicate_keys": int(dupes)}
        )
        sparse = features.SPARSE_COLUMNS.get(table, frozenset())
        worst = max(((c, r) for c, r in null_rates.items() if c not in sparse), key=lambda kv: kv[1], default=("", 0.0))
        yield dg.AssetCheckResult(
            check_name="null_rates",
            passed=worst[1] <= 0.5,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "worst_column": worst[0],
                "worst_null_rate": round(worst[1], 4),
                **{f"null_rate/{k}": round(v, 4) for k, v in null_rates.items() if v > 0},
            },
        )
        lag = (latest - newest_snapshot).total_seconds() if latest and newest_snapshot else None
        yield dg.AssetCheckResult(
            check_name="fresh",
            passed=lag is not None and lag <= timedelta(days=1).total_seconds(),
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"newest_snapshot": str(newest_snapshot), "newest_event": str(latest), "lag_seconds": lag},
        )

    return _asset


snapshot_assets = [_snapshot_asset(t) for t in features.FEATURE_TABLES]
