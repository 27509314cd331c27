"""Ingestion assets: landed files -> DuckDB events and catalog, with quarantine and ledger."""

from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg

from recs_pipeline.defs.resources import PipelineResource
from recs_pipeline.settings import DUCKDB_POOL
from recs_pipeline.warehouse import ingest

EVENT_CHECKS = [
    dg.AssetCheckSpec("event_id_unique", asset="events", blocking=True, description="Each event_id is stored once."),
    dg.AssetCheckSpec(
        "ledger_conserves_rows",
        asset="events",
        blocking=True,
        description="For every ingested file rows_read = loaded + quarantined + duplicates, and the ledger's loaded rows equal the table.",
    ),
    dg.AssetCheckSpec(
        "quarantine_rate", asset="events", description="Share of rows quarantined by this run (warns above 5%)."
    ),
]


def _ingest(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, kind: str
) -> tuple[list[ingest.FileOutcome], dict]:
    s = pipeline.settings
    with pipeline.warehouse() as con:
        outcomes = ingest.ingest_landed(
            con,
            s.landing_dir,
            now=datetime.now(UTC),
            kinds=(kind,),
            progress=lambda o: context.log.info(
                f"{o.file_name}: {o.status}, read {o.rows_read}, loaded {o.loaded}, "
                f"quarantined {o.quarantined}, duplicates {o.duplicates} ({o.seconds:.2f}s)"
            ),
        )
        table, ts = ("events", "ts") if kind == "events" else ("item_versions", "updated_at")
        total, newest = con.execute(f"SELECT count(*), max({ts}) FROM {table}").fetchone()  # noqa: S608
    new = [o for o in outcomes if o.status != "already_ingested"]
    metadata = {
        "files_seen": len(outcomes),
        "files_ingested": sum(o.status == "ingested" for o in new),
        "files_rejected": sum(o.status == "rejected" for o in new),
        "files_already_ingested": len(outcomes) - len(new),
        "rows_read": sum(o.rows_read for o in new),
        "rows_loaded": sum(o.loaded for o in new),
        "rows_quarantined": sum(o.quarantined for o in new),
        "rows_duplicate": sum(o.duplicates for o in new),
        "table_rows": int(total),
        # read by `recs run` to pick the snapshot days without opening DuckDB outside the pool
        "newest_ts": newest.isoformat() if newest else "",
        "seconds": round(sum(o.seconds for o in new), 3),
    }
    if new:
        metadata["files"] = dg.MetadataValue.md(
            "| file | status | read | loaded | quarantined | duplicates |\n|---|---|---|---|---|---|\n"
            + "\n".join(
                f"| {o.file_name} | {o.status} | {o.rows_read} | {o.loaded} | {o.quarantined} | {o.duplicates} |"
                for o in new[:200]
            )
        )
    return outcomes, metadata


@dg.asset(
    group_name="ingest",
    pool=DUCKDB_POOL,
    kinds={"duckdb"},
    description="Item catalog versions loaded from landing/items (exactly once per file; bad rows quarantined).",
)
def catalog_items(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.MaterializeResult:
    _, metadata = _ingest(context, pipeline, "items")
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    group_name="ingest",
    pool=DUCKDB_POOL,
    kinds={"duckdb"},
    deps=[catalog_items],
    check_specs=EVENT_CHECKS,
    description="Behaviour events loaded from landing/events: exactly once per file content, duplicate event ids skipped and counted, bad rows quarantined with a reason.",
)
def events(
    context: dg.AssetExecutionContext, pipeline: PipelineResource
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    outcomes, metadata = _ingest(context, pipeline, "events")
    yield dg.MaterializeResult(metadata=metadata)
    with pipeline.warehouse() as con:
        dupes = con.execute("SELECT count(*) - count(DISTINCT event_id) FROM events").fetchone()[0]
        unbalanced, ledger_loaded, stored = con.execute(
            "SELECT count(*) FILTER (rows_read <> loaded + quarantined + duplicates), "
            "coalesce(sum(loaded), 0), (SELECT count(*) FROM events) FROM ingest_ledger WHERE kind = 'events'"
        ).fetchone()
    yield dg.AssetCheckResult(
        check_name="event_id_unique", passed=bool(dupes == 0), metadata={"duplicate_ids": int(dupes)}
    )
    yield dg.AssetCheckResult(
        check_name="ledger_conserves_rows",
        passed=bool(unbalanced == 0 and ledger_loaded == stored),
        metadata={
            "unbalanced_files": int(unbalanced),
            "ledger_loaded": int(ledger_loaded),
            "events_stored": int(stored),
        },
    )
    read = metadata["rows_read"]
    rate = metadata["rows_quarantined"] / read if read else 0.0
    yield dg.AssetCheckResult(
        check_name="quarantine_rate",
        passed=rate <= 0.05,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"quarantine_rate": round(rate, 5), "rows_read": read},
    )
