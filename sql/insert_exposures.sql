-- Store the fresh exposures (after their items: sql/insert_exposure_items.sql).
INSERT INTO exposures (
    request_id, user_id, ts, model_version, experiment, variant, n_items, file_hash, ingested_at, shadow_of
)
SELECT request_id, user_id, ts, model_version, experiment, variant, n_items, $file_hash, $now, shadow_of FROM fresh
