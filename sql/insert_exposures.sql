-- Store the fresh exposures (after their items: sql/insert_exposure_items.sql).
INSERT INTO exposures
SELECT request_id, user_id, ts, model_version, experiment, variant, n_items, $file_hash, $now FROM fresh
