-- Store new catalog versions: first occurrence of (item_id, updated_at) in the file, not stored yet.
INSERT INTO item_versions
SELECT item_id, category_id, price, available, updated_at, $file_hash, $now
FROM checked AS c
WHERE reason IS NULL
  AND NOT EXISTS (SELECT 1 FROM item_versions AS v WHERE v.item_id = c.item_id AND v.updated_at = c.updated_at)
QUALIFY row_number() OVER (PARTITION BY item_id, updated_at ORDER BY row_no) = 1
