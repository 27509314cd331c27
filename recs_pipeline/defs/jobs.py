"""Jobs: the whole pipeline, for one daily partition (ingest, snapshot features, Feast)."""

import dagster as dg

pipeline_job = dg.define_asset_job(
    name="pipeline_job",
    selection=dg.AssetSelection.groups("ingest", "features", "feast"),
    description="Ingest landed files, build the day's feature snapshots, apply Feast and refresh the online store.",
)
