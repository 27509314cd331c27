-- Items whose features new landed files change: the items of the events loaded from them and the
-- items whose catalog rows they carry (by file content hash). A session-local temp table.
CREATE OR REPLACE TEMP TABLE refresh_items AS
SELECT item_id FROM events WHERE list_contains($file_hashes::VARCHAR[], file_hash)
UNION
SELECT item_id FROM item_versions WHERE list_contains($file_hashes::VARCHAR[], file_hash)
