"""Retention of personal data on a schedule (docs/PRIVACY.md): a thin asset over
:func:`recs_pipeline.privacy.retention.purge_old`, its job and a daily schedule.

Erasure of one user (``recs forget USER``) is not a Dagster job on purpose: a run's config would keep
the raw id in Dagster's run storage.
"""

from datetime import UTC, datetime

import dagster as dg

from recs_pipeline.defs.resources import PipelineResource
from recs_pipeline.privacy.retention import purge_old
from recs_pipeline.settings import DUCKDB_POOL, RetentionSettings


@dg.asset(
    group_name="privacy",
    pool=DUCKDB_POOL,
    kinds={"duckdb"},
    deps=["events", "exposures"],
    description="Retention: events, exposures, feature snapshots, parquet and online rows older than "
    "RECS_RETENTION_DAYS purged (landed files too: deleted when ingested, else rewritten without old rows), and "
    "ingested landed files older than RECS_LANDING_RETENTION_DAYS deleted; the ingest ledger keeps their hashes "
    "and stays balanced. Both unset (the default): nothing is removed.",
)
def retention(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    settings = RetentionSettings.from_env()
    report = purge_old(pipeline.settings, settings, now=datetime.now(UTC))
    for skipped in report.skipped:
        context.log.warning(f"not rewritten: {skipped}")
    return dg.MaterializeResult(
        metadata={
            "cutoff": report.cutoff.isoformat() if report.cutoff else "off",
            "landing_cutoff": report.landing_cutoff.isoformat() if report.landing_cutoff else "off",
            "warehouse_rows_deleted": sum(report.warehouse_rows.values()),
            "landed_files_deleted": len(report.landed_deleted),
            "landed_files_rewritten": len(report.landed_rewritten),
            "parquet_rows_deleted": sum(report.parquet_files.values()),
            "online_rows_deleted": sum(report.online_rows.values()),
            "files_skipped": len(report.skipped),
        }
    )


retention_job = dg.define_asset_job(
    "retention_job", selection=[retention], description="Apply the retention settings (docs/PRIVACY.md)."
)


@dg.schedule(
    job=retention_job,
    cron_schedule="40 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily retention at 03:40 UTC (a no-op while RECS_RETENTION_DAYS and RECS_LANDING_RETENTION_DAYS "
    "are unset). The asset holds the DuckDB pool, so it never runs beside a stage writing the warehouse.",
)
def daily_retention() -> dg.RunRequest:
    return dg.RunRequest()
