"""The Dagster code location: everything in ``recs_pipeline.defs``."""

import dagster as dg

from recs_pipeline.defs import features, ingest, models, online
from recs_pipeline.defs.jobs import pipeline_job
from recs_pipeline.defs.resources import PipelineResource

defs = dg.Definitions(
    assets=[
        ingest.catalog_items,
        ingest.events,
        *features.snapshot_assets,
        online.feast_registry,
        online.online_features,
        *models.model_assets,
    ],
    jobs=[pipeline_job, models.retrain_job, models.rollback_job],
    schedules=[models.retrain_schedule],
    resources={"pipeline": PipelineResource()},
)
