-- Keep every rejected row of the current file with its reason.
INSERT INTO quarantine
SELECT $file_hash, $file_name, $kind, row_no, reason, raw, $now
FROM checked
WHERE reason IS NOT NULL
