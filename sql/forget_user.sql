-- Erase the user in forget_target from every warehouse table, keeping the ingest ledger balanced
-- (docs/PRIVACY.md). forget_rewritten (old_hash, new_hash, bytes, rows_read) lists the landed files
-- the erasure rewrote without the user's rows (empty when none). Run in one transaction.

-- The user's rows per landed file, before they go: loaded (events, exposures) and quarantined.
CREATE OR REPLACE TEMP TABLE forget_quarantine AS
SELECT rowid AS rid, file_hash FROM quarantine
WHERE CASE WHEN json_valid(raw) THEN json_extract_string(raw, '$.user_id') END = (SELECT user_id FROM forget_target);

CREATE OR REPLACE TEMP TABLE forget_removed AS
SELECT file_hash, sum(loaded)::BIGINT AS loaded, sum(quarantined)::BIGINT AS quarantined
FROM (
    SELECT file_hash, 1 AS loaded, 0 AS quarantined FROM events WHERE user_id = (SELECT user_id FROM forget_target)
    UNION ALL
    SELECT file_hash, 1, 0 FROM exposures WHERE user_id = (SELECT user_id FROM forget_target)
    UNION ALL
    SELECT file_hash, 0, 1 FROM forget_quarantine
)
GROUP BY file_hash;

DELETE FROM exposure_items
WHERE request_id IN (SELECT request_id FROM exposures WHERE user_id = (SELECT user_id FROM forget_target));
DELETE FROM exposures WHERE user_id = (SELECT user_id FROM forget_target);
DELETE FROM events WHERE user_id = (SELECT user_id FROM forget_target);
DELETE FROM quarantine WHERE rowid IN (SELECT rid FROM forget_quarantine);
DELETE FROM user_features WHERE user_id = (SELECT user_id FROM forget_target);
DELETE FROM user_category_features WHERE user_id = (SELECT user_id FROM forget_target);
DELETE FROM interactions WHERE user_id = (SELECT user_id FROM forget_target);
DELETE FROM user_profile WHERE user_id = (SELECT user_id FROM forget_target);

-- Each file's ledger row no longer counts the erased rows: rows_read = loaded + quarantined + duplicates
-- still holds, and the loaded rows still add up to the tables.
UPDATE ingest_ledger AS l
SET rows_read = l.rows_read - r.loaded - r.quarantined,
    loaded = l.loaded - r.loaded,
    quarantined = l.quarantined - r.quarantined
FROM forget_removed AS r
WHERE l.file_hash = r.file_hash;

-- A rewritten file's new content is ledgered too (never loaded again): it takes over the old row's
-- counts (its duplicates are what is left of its rows), and the old content's row stays with zero
-- counts and status 'erased', so a copy of the original landed again is not loaded either.
INSERT INTO ingest_ledger
SELECT w.new_hash, l.file_name, l.kind, w.bytes, w.rows_read, l.loaded, l.quarantined,
       w.rows_read - l.loaded - l.quarantined, l.status, l.error, l.ingested_at
FROM forget_rewritten AS w
JOIN ingest_ledger AS l ON l.file_hash = w.old_hash
WHERE l.status <> 'erased' AND w.new_hash NOT IN (SELECT file_hash FROM ingest_ledger);

UPDATE ingest_ledger AS l
SET status = 'erased', rows_read = 0, loaded = 0, quarantined = 0, duplicates = 0,
    error = 'rewritten without an erased user''s rows; now ' || w.new_hash
FROM forget_rewritten AS w
WHERE l.file_hash = w.old_hash AND l.status <> 'erased';

UPDATE events AS e SET file_hash = w.new_hash FROM forget_rewritten AS w WHERE e.file_hash = w.old_hash;
UPDATE exposures AS e SET file_hash = w.new_hash FROM forget_rewritten AS w WHERE e.file_hash = w.old_hash;
UPDATE quarantine AS q SET file_hash = w.new_hash FROM forget_rewritten AS w WHERE q.file_hash = w.old_hash;
UPDATE item_versions AS i SET file_hash = w.new_hash FROM forget_rewritten AS w WHERE i.file_hash = w.old_hash;

-- What was erased, without whom: when, how many rows and files.
CREATE TABLE IF NOT EXISTS erasure_log (
    erased_at       TIMESTAMPTZ NOT NULL,
    rows_removed    BIGINT NOT NULL,
    files_rewritten BIGINT NOT NULL
);
INSERT INTO erasure_log
SELECT (SELECT erased_at FROM forget_target),
       (SELECT coalesce(sum(loaded + quarantined), 0) FROM forget_removed),
       (SELECT count(*) FROM forget_rewritten);
