"""Feast assets: apply the feature repo, then push the newest snapshot to the online store."""

import time
from collections.abc import Iterator

import dagster as dg

from recs_pipeline.defs.resources import PipelineResource
from recs_pipeline.feast import feast_store, online_parity
from recs_pipeline.settings import DUCKDB_POOL


@dg.asset(
    group_name="feast",
    kinds={"feast"},
    deps=list(feast_store.SNAPSHOT_VIEWS),
    description="The Feast registry: `feast apply` of feature_repo/ (entities, sources, views, services, push source); skipped when nothing it depends on changed (embedded profile).",
)
def feast_registry(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    output = feast_store.apply_repo(pipeline.settings)
    if output is None:
        context.log.info("feature repo unchanged since the last `feast apply`: not applied again")
    else:
        context.log.info(output)
    store = feast_store.open_store(pipeline.settings)
    return dg.MaterializeResult(
        metadata={
            "applied": output is not None,
            "feature_views": [fv.name for fv in store.list_feature_views()],
            "feature_services": [fs.name for fs in store.list_feature_services()],
            "feast_output": dg.MetadataValue.md(f"```\n{(output or 'unchanged: skipped')[-3000:]}\n```"),
        }
    )


@dg.asset(
    group_name="feast",
    kinds={"feast", "sqlite"},
    deps=[feast_registry],
    pool=DUCKDB_POOL,  # reads the DuckDB file to verify parity
    check_specs=[
        dg.AssetCheckSpec(
            "online_matches_duckdb",
            asset="online_features",
            blocking=True,
            description="For a sample of entities, every online value equals the newest DuckDB snapshot.",
        )
    ],
    description="The newest feature snapshot materialised into Feast's online store.",
)
def online_features(
    context: dg.AssetExecutionContext, pipeline: PipelineResource
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    store = feast_store.open_store(pipeline.settings)
    changed: dict[str, int | None] = {}
    seconds: dict[str, float] = {}
    with pipeline.warehouse() as con:
        snapshots = online_parity.newest_snapshots(con)
        for view, as_of in snapshots.items():
            started = time.perf_counter()
            changed.update(feast_store.materialize_snapshot(store, as_of, views=[view]))
            seconds[view] = time.perf_counter() - started
            wrote = "" if changed[view] is None else f": {changed[view]} rows changed"
            context.log.info(f"materialised {view} as of {as_of.isoformat()} in {seconds[view]:.1f} s{wrote}")
        report = online_parity.compare(con, store, snapshots, sample=200)
    empty = sorted(set(feast_store.SNAPSHOT_VIEWS) - set(snapshots))
    if empty:
        context.log.warning(f"no rows to materialise for {empty} (e.g. a source without a catalog)")
    yield dg.MaterializeResult(
        metadata={
            **{f"as_of/{v}": t.isoformat() for v, t in snapshots.items()},
            **{f"rows_changed/{v}": n for v, n in changed.items() if n is not None},
            **{f"seconds/{v}": round(t, 3) for v, t in seconds.items()},
            "empty_views": empty,
            **report.counts(),
        }
    )
    yield dg.AssetCheckResult(
        check_name="online_matches_duckdb",
        passed=report.ok,
        metadata={
            "entities_compared": report.entities,
            "values_compared": report.values,
            "mismatches": len(report.mismatches),
            "first_mismatches": str(report.mismatches[:5]),
        },
    )
