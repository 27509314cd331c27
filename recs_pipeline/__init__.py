"""recs_pipeline: real-time e-commerce recommendations (DuckDB, Feast, implicit ALS, LightGBM, Dagster)."""

from recs_pipeline._feast_typechecks import skip_feast_type_instrumentation

skip_feast_type_instrumentation()
