-- Users whose features new landed files change: the users of the events and of the served lists
-- (exposures: the profile's shown items) loaded from them (by file content hash, as in the ingest
-- ledger). A session-local temp table for the refresh.
CREATE OR REPLACE TEMP TABLE refresh_users AS
SELECT user_id FROM events WHERE list_contains($file_hashes::VARCHAR[], file_hash)
UNION
SELECT user_id FROM exposures WHERE list_contains($file_hashes::VARCHAR[], file_hash)
