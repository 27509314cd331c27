"""Thin Dagster adapters over ``recs_pipeline.lib``, grouped by concept."""
