"""The Dagster code location: everything in ``recs_pipeline.defs``."""

import dagster as dg

from recs_pipeline.defs import features, ingest, models, online, realtime
from recs_pipeline.defs.jobs import pipeline_job
from recs_pipeline.defs.resources import PipelineResource

defs = dg.Definitions(
    assets=[
        ingest.catalog_items,
        ingest.events,
        *features.snapshot_assets,
        online.feast_registry,
        online.online_features,
        realtime.online_refresh,
        *models.model_assets,
    ],
    jobs=[pipeline_job, models.retrain_job, models.rollback_job, realtime.freshness_job],
    schedules=[models.retrain_schedule, realtime.periodic_materialization],
    sensors=[realtime.landing_sensor],
    resources={"pipeline": PipelineResource()},
)
