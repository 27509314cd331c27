-- The fresh exposures' items, one row per position (1 = the top of the served list).
INSERT INTO exposure_items
SELECT request_id, (x ->> '$.position')::INTEGER, x ->> '$.item_id', (x ->> '$.score')::DOUBLE, x ->> '$.source'
FROM (SELECT request_id, unnest(items) AS x FROM fresh)
