-- The ingest ledger after rows were removed from the warehouse (an erasure, sql/forget_user.sql, or a
-- retention purge, sql/purge_old.sql), in their transaction. Temp tables: ledger_removed (file_hash,
-- loaded, quarantined: the removed rows per landed file) and ledger_rewritten (old_hash, new_hash,
-- bytes, rows_read: landed files written again without the removed rows).

-- Each file's ledger row no longer counts the erased rows: rows_read = loaded + quarantined + duplicates
-- still holds, and the loaded rows still add up to the tables.
UPDATE ingest_ledger AS l
SET rows_read = l.rows_read - r.loaded - r.quarantined,
    loaded = l.loaded - r.loaded,
    quarantined = l.quarantined - r.quarantined
FROM ledger_removed AS r
WHERE l.file_hash = r.file_hash;

-- A rewritten file's new content is ledgered too (never loaded again): it takes over the old row's
-- counts (its duplicates are what is left of its rows), and the old content's row stays with zero
-- counts and status 'erased', so a copy of the original landed again is not loaded either. Files
-- rewritten to the same content (two emptied ones, or two copies) share one row: the one that loaded
-- rows takes it (the other's remaining rows were its duplicates).
INSERT INTO ingest_ledger
SELECT w.new_hash, l.file_name, l.kind, w.bytes, w.rows_read, l.loaded, l.quarantined,
       w.rows_read - l.loaded - l.quarantined, l.status, l.error, l.ingested_at
FROM ledger_rewritten AS w
JOIN ingest_ledger AS l ON l.file_hash = w.old_hash
WHERE l.status <> 'erased' AND w.new_hash NOT IN (SELECT file_hash FROM ingest_ledger)
QUALIFY row_number() OVER (PARTITION BY w.new_hash ORDER BY l.loaded DESC, l.file_name) = 1;

UPDATE ingest_ledger AS l
SET status = 'erased', rows_read = 0, loaded = 0, quarantined = 0, duplicates = 0,
    error = 'rewritten without removed rows (erasure or retention); now ' || w.new_hash
FROM ledger_rewritten AS w
WHERE l.file_hash = w.old_hash AND l.status <> 'erased';

UPDATE events AS e SET file_hash = w.new_hash FROM ledger_rewritten AS w WHERE e.file_hash = w.old_hash;
UPDATE exposures AS e SET file_hash = w.new_hash FROM ledger_rewritten AS w WHERE e.file_hash = w.old_hash;
UPDATE quarantine AS q SET file_hash = w.new_hash FROM ledger_rewritten AS w WHERE q.file_hash = w.old_hash;
UPDATE item_versions AS i SET file_hash = w.new_hash FROM ledger_rewritten AS w WHERE i.file_hash = w.old_hash;
