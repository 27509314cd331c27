"""Real time: a sensor on the landing zone, the short freshness run it launches, and the periodic materialization.

The sensor only detects: it lists the landing zone (names, sizes, landing times; never DuckDB),
keeps a cursor, and requests one ``freshness_job`` run per batch of new files, keyed by the files.
The run (in-process executor: one process, no per-step start-up) ingests every landed file, then
``online_refresh`` recomputes the features of the users and items of the batch's files as of now
and writes them to the online store, recording how long the oldest file took from landing to
online against a target (asset check ``freshness_within_target``).
"""

import functools
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from recs_pipeline.data import landing
from recs_pipeline.defs import experiments, ingest, online
from recs_pipeline.defs.features import snapshot_assets
from recs_pipeline.defs.jobs import pipeline_job
from recs_pipeline.defs.resources import PipelineResource
from recs_pipeline.feast import feast_store
from recs_pipeline.settings import DUCKDB_POOL
from recs_pipeline.warehouse import features
from recs_pipeline.warehouse.ingest import file_sha256

GROUP = "realtime"
FRESHNESS_CHECK = "freshness_within_target"
# How often the daemon may evaluate the sensor. Its sensor loop comes round every 5 s at most, and it
# measures the interval from the end of the previous tick: a minimum of 5 s made every other loop
# skip the sensor (new files waited up to 10 s to be seen). 1 s lets every loop evaluate it.
SENSOR_INTERVAL_SECONDS = 1
# Freshness runs leave the run queue ahead of queued batch runs (the DuckDB pool is held per run, so
# a freshness run still waits for the run in progress, at most one stage of the hourly schedule).
FRESHNESS_PRIORITY = "10"
# Target of "landed -> online" for a sensor-triggered run (seconds): the asset check's default.
FRESHNESS_TARGET_SECONDS = 10.0


class RefreshConfig(dg.Config):
    """The batch of landed files to refresh (filled by ``landing_sensor``) and the freshness target.

    Launched by hand with no files, the run ingests what has landed and refreshes nothing.
    """

    files: list[str] = []
    oldest_landed_at: float | None = None
    freshness_target_seconds: float = FRESHNESS_TARGET_SECONDS
    restrict_events: bool = True


def _landing_paths(landing_dir: Path, files: list[str]) -> list[Path]:
    root = landing_dir.resolve()
    paths = [(root / f).resolve() for f in files]
    outside = [str(p) for p in paths if root not in p.parents]
    if outside:
        raise ValueError(f"files must be paths inside the landing zone {root} (e.g. events/a.parquet): {outside}")
    return paths


@dg.asset(
    group_name=GROUP,
    pool=DUCKDB_POOL,
    kinds={"duckdb", "feast"},
    deps=[ingest.catalog_items, ingest.events, ingest.exposures, online.feast_registry],
    check_specs=[
        dg.AssetCheckSpec(
            FRESHNESS_CHECK,
            asset="online_refresh",
            description="The oldest file of the batch went from landing to the online store within the target "
            f"(default {FRESHNESS_TARGET_SECONDS:.0f} s; config freshness_target_seconds).",
        )
    ],
    description="The online features of the users and items touched by newly landed files, recomputed as of "
    "just after the newest event (the same sql/ files, in temp tables) and written to Feast's online store. "
    "Launched by landing_sensor; records landed -> online freshness.",
)
def online_refresh(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, config: RefreshConfig
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    started = time.time()
    # imported here, not with the code location (which must load in seconds): pandas, pyarrow and
    # the model bundle's libraries are only needed by this step
    from recs_pipeline.feast import refresh
    from recs_pipeline.models.bundle import served_recipe
    from recs_pipeline.models.registry import ModelRegistry

    s = pipeline.settings
    paths = _landing_paths(s.landing_dir, config.files)
    present = [p for p in paths if p.is_file()]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        context.log.warning(f"{len(missing)} files left the landing zone before the refresh: {missing[:20]}")
    hashes = [file_sha256(p) for p in present]
    store = feast_store.open_store(s)
    # the served model's event weights and half-life, so refreshed profiles match what it was trained on
    recipe = served_recipe(ModelRegistry(s.models_dir))
    weighting = recipe.weighting if recipe is not None else features.Weighting.from_settings(s)
    with pipeline.warehouse() as con:
        result = refresh.refresh_online(
            con,
            functools.partial(feast_store.write_online, store),
            file_hashes=hashes,
            created=datetime.now(UTC),
            weighting=weighting,
            views=feast_store.SNAPSHOT_VIEWS,
            restrict_events=config.restrict_events,
        )
    online_at = time.time()
    landed = config.oldest_landed_at
    freshness = round(online_at - landed, 3) if landed is not None else None
    context.log.info(
        f"{len(present)} files, {result.events} events: {result.users} users and {result.items} items online "
        f"as of {result.as_of}; landed -> online {freshness} s"
    )
    yield dg.MaterializeResult(
        metadata={
            "files": len(config.files),
            "files_missing": len(missing),
            "events": result.events,
            "affected_users": result.users,
            "affected_items": result.items,
            "as_of": result.as_of.isoformat() if result.as_of else "",
            **{f"rows/{view}": n for view, n in result.written.items()},
            **{f"seconds/{stage}": round(v, 3) for stage, v in result.seconds.items()},
            "dagster/row_count": sum(result.written.values()),
            "oldest_landed_at": datetime.fromtimestamp(landed, UTC).isoformat() if landed is not None else "",
            "landed_to_start_seconds": round(started - landed, 3) if landed is not None else None,
            "freshness_seconds": freshness,
        }
    )
    target = config.freshness_target_seconds
    yield dg.AssetCheckResult(
        check_name=FRESHNESS_CHECK,
        passed=freshness is None or freshness <= target,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "freshness_seconds": freshness,
            "target_seconds": target,
            "measured": landed is not None,  # a run launched by hand has no landing time
        },
    )


freshness_job = dg.define_asset_job(
    "freshness_job",
    selection=dg.AssetSelection.assets(ingest.catalog_items, ingest.events, ingest.exposures, online_refresh),
    executor_def=dg.in_process_executor,
    run_tags={"dagster/priority": FRESHNESS_PRIORITY},
    description="Ingest newly landed files and refresh the online features of their users and items "
    "(in process, so it finishes in seconds). Launched by landing_sensor.",
)


@dg.sensor(
    job=freshness_job,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches landing/events, landing/items and landing/exposures (file names, sizes and landing "
    "times only; never "
    "DuckDB) and launches freshness_job for each batch of new files, with a run key derived from the files.",
)
def landing_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource) -> dg.SensorResult | dg.SkipReason:
    from recs_pipeline.feast import refresh  # pandas and pyarrow: not at the code location's load

    files = landing.scan_landing(pipeline.settings.landing_dir, landing.FEATURE_KINDS)
    batch, cursor = refresh.new_landed_files(files, refresh.LandingCursor.decode(context.cursor))
    if not batch:
        return dg.SkipReason(f"no new files among {len(files)} landed")
    oldest = min(f.landed_at for f in batch)
    request = dg.RunRequest(
        run_key=refresh.run_key(batch),
        run_config=dg.RunConfig(
            ops={"online_refresh": RefreshConfig(files=[f.key for f in batch], oldest_landed_at=oldest)}
        ),
        tags={"recs/trigger": "landing_sensor", "recs/files": str(len(batch))},
    )
    return dg.SensorResult(run_requests=[request], cursor=cursor.encode())


# The hourly materialisation in stages, one run each, queued in this order (the run queue is first in,
# first out within a priority). A run in the duckdb pool holds it from start to end, so a freshness
# run (priority 10) waits for the stage in progress, never for the whole pipeline.
PERIODIC_STAGES: tuple[tuple[str, tuple[dg.AssetsDefinition, ...]], ...] = (
    ("ingest", (ingest.catalog_items, ingest.events, ingest.exposures)),
    ("features", tuple(snapshot_assets)),
    ("feast", (online.feast_registry, online.online_features)),
    ("experiments", (experiments.experiment_metrics, experiments.shadow_comparison)),
)


@dg.schedule(
    job=pipeline_job,
    cron_schedule="5 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Hourly full materialization of pipeline_job's assets: ingest, rebuild the day's feature "
    "snapshots, apply Feast and materialise every entity online. On by default because the sensor refreshes "
    "only entities with new events, so the windowed features (1h/24h counts, recency) of idle users and items "
    "age online only when this runs. Four runs per tick (ingest, features, feast, the experiments' metrics and the shadow comparison), queued in that order: "
    "each holds the DuckDB pool only for its stage, and the sensor's freshness runs (higher priority) go "
    "between them. Partition: the newest ingested event's day (today for live data), never after the "
    "tick's day; skipped until events are ingested.",
)
def periodic_materialization(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
    today = context.scheduled_execution_time.astimezone(UTC).date()
    newest = ingest.newest_event_day(context.instance)
    if newest is None:  # the day partitions are the days of ingested events: none yet
        return dg.SkipReason("no events ingested yet: no day partition to build (the landing sensor ingests)")
    day = min(newest, today).isoformat()
    tick = context.scheduled_execution_time.astimezone(UTC).isoformat()
    return [
        dg.RunRequest(
            run_key=f"{tick}/{stage}",
            partition_key=day,
            asset_selection=[key for asset in assets for key in asset.keys],
            tags={"recs/trigger": "periodic_materialization", "recs/stage": stage},
        )
        for stage, assets in PERIODIC_STAGES
    ]
