"""Pure logic of recs_pipeline: no Dagster imports here."""
