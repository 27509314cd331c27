"""Ingestion assets: landed files -> DuckDB events and catalog, with quarantine and ledger."""

from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import dagster as dg

from recs_pipeline.defs import partitions
from recs_pipeline.defs.resources import PipelineResource
from recs_pipeline.settings import DUCKDB_POOL
from recs_pipeline.warehouse import ingest
from recs_pipeline.warehouse.sql import first_row, scalar

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


# The events asset's metadata entry linking to the feature assets' Materialize dialog with the newest day chosen.
NEWEST_DAY_LINK = "materialize_newest_day"

# The warehouse table each landing kind loads into, and its time column.
_TABLE_OF = {"events": ("events", "ts"), "items": ("item_versions", "updated_at"), "exposures": ("exposures", "ts")}


def _ingest(
    context: dg.AssetExecutionContext, pipeline: PipelineResource, kind: str
) -> tuple[list[ingest.FileOutcome], dict[str, Any]]:
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
        table, ts = _TABLE_OF[kind]
        total, oldest, newest = first_row(con.execute(f"SELECT count(*), min({ts}), max({ts}) FROM {table}"))  # noqa: S608
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
        "oldest_ts": oldest.isoformat() if oldest else "",
        # read by newest_event_day (snapshot days, the hourly schedule) without opening DuckDB
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
    if metadata["newest_ts"]:  # the feature snapshots' day partitions follow the stored events
        first, last = (datetime.fromisoformat(metadata[k]).astimezone(UTC).date() for k in ("oldest_ts", "newest_ts"))
        changes = partitions.sync_day_partitions(context.instance, first, last)
        if changes.add:
            context.log.info(
                f"day partitions {first} .. {last}: {len(changes.add)} added"
                + (f" ({len(changes.remove)} later days re-added after them, in date order)" if changes.remove else "")
            )
        metadata["day_partitions"] = f"{first} .. {last}"
        metadata["day_partitions_added"] = len(changes.add) - len(changes.remove)
        # the UI's launch dialogs preselect no day; this link opens the feature group's with the newest chosen
        metadata[NEWEST_DAY_LINK] = dg.MetadataValue.url(partitions.materialize_day_url(last))
    yield dg.MaterializeResult(metadata=metadata)
    with pipeline.warehouse() as con:
        dupes = scalar(con, "SELECT count(*) - count(DISTINCT event_id) FROM events")
        unbalanced, ledger_loaded, stored = first_row(
            con.execute(
                "SELECT count(*) FILTER (rows_read <> loaded + quarantined + duplicates), "
                "coalesce(sum(loaded), 0), (SELECT count(*) FROM events) FROM ingest_ledger WHERE kind = 'events'"
            )
        )
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


@dg.asset(
    group_name="ingest",
    pool=DUCKDB_POOL,
    kinds={"duckdb"},
    check_specs=[
        dg.AssetCheckSpec(
            "ledger_conserves_rows",
            asset="exposures",
            blocking=True,
            description="For every ingested exposure file rows_read = loaded + quarantined + duplicates, the "
            "ledger's loaded rows equal the table, each request_id is stored once and every exposure has its items.",
        )
    ],
    description="The scoring service's served lists loaded from landing/exposures (exactly once per file "
    "content, each request_id once, bad rows quarantined with a reason), one row per list in `exposures` and "
    "one per listed item in `exposure_items`.",
)
def exposures(
    context: dg.AssetExecutionContext, pipeline: PipelineResource
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    _, metadata = _ingest(context, pipeline, "exposures")
    yield dg.MaterializeResult(metadata=metadata)
    with pipeline.warehouse() as con:
        unbalanced, ledger_loaded, stored, dupes, short = first_row(
            con.execute(
                "SELECT count(*) FILTER (rows_read <> loaded + quarantined + duplicates), coalesce(sum(loaded), 0), "
                "(SELECT count(*) FROM exposures), "
                "(SELECT count(*) - count(DISTINCT request_id) FROM exposures), "
                "(SELECT count(*) FROM exposures AS e WHERE n_items <> "
                "(SELECT count(*) FROM exposure_items AS i WHERE i.request_id = e.request_id)) "
                "FROM ingest_ledger WHERE kind = 'exposures'"
            )
        )
    yield dg.AssetCheckResult(
        check_name="ledger_conserves_rows",
        passed=bool(unbalanced == 0 and ledger_loaded == stored and dupes == 0 and short == 0),
        metadata={
            "unbalanced_files": int(unbalanced),
            "ledger_loaded": int(ledger_loaded),
            "exposures_stored": int(stored),
            "duplicate_request_ids": int(dupes),
            "exposures_missing_items": int(short),
        },
    )


def _latest_events_metadata(instance: dg.DagsterInstance, entry: str) -> str | None:
    """An entry of the ``events`` asset's latest materialization metadata as text (``None`` if absent or empty)."""
    event = instance.get_latest_materialization_event(events.key)
    value = event.asset_materialization.metadata.get(entry) if event and event.asset_materialization else None
    return str(value.value) if value is not None and value.value else None


def newest_event_day(instance: dg.DagsterInstance) -> date | None:
    """Day of the newest ingested event, from the ``events`` asset's latest materialization (not DuckDB).

    Only assets in the DuckDB pool open the DuckDB file; the runner and the schedule read this instead.
    """
    newest = _latest_events_metadata(instance, "newest_ts")
    return datetime.fromisoformat(newest).date() if newest else None


def newest_day_link(instance: dg.DagsterInstance) -> str | None:
    """The UI path (relative to its root) of the feature assets' page whose *Materialize all* dialog has
    the newest event's day chosen, from the ``events`` asset's latest materialization (not DuckDB)."""
    return _latest_events_metadata(instance, NEWEST_DAY_LINK)
