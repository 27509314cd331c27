-- Users whose features new landed files change: the users of the events loaded from them (by
-- file content hash, as in the ingest ledger). A session-local temp table for the refresh.
CREATE OR REPLACE TEMP TABLE refresh_users AS
SELECT DISTINCT user_id
FROM events
WHERE list_contains($file_hashes::VARCHAR[], file_hash)
