-- The cutoff of one retention purge (recs_pipeline/privacy/retention.py); read by sql/purge_old.sql.
CREATE OR REPLACE TEMP TABLE purge_target AS SELECT $cutoff::TIMESTAMPTZ AS cutoff
