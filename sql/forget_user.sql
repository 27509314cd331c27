-- Erase the user in forget_target from every warehouse table, keeping the ingest ledger balanced
-- (docs/PRIVACY.md): ledger_removed gets the user's rows per landed file for sql/forget_ledger.sql,
-- run next in the same transaction. ledger_rewritten (old_hash, new_hash, bytes, rows_read) lists the
-- landed files the erasure rewrote without the user's rows (empty when none).

-- The user's rows per landed file, before they go: loaded (events, exposures) and quarantined.
CREATE OR REPLACE TEMP TABLE forget_quarantine AS
SELECT rowid AS rid, file_hash FROM quarantine
WHERE CASE WHEN json_valid(raw) THEN json_extract_string(raw, '$.user_id') END = (SELECT user_id FROM forget_target);

CREATE OR REPLACE TEMP TABLE ledger_removed AS
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

-- What was erased, without whom: when, how many rows and files.
CREATE TABLE IF NOT EXISTS erasure_log (
    erased_at       TIMESTAMPTZ NOT NULL,
    rows_removed    BIGINT NOT NULL,
    files_rewritten BIGINT NOT NULL
);
INSERT INTO erasure_log
SELECT (SELECT erased_at FROM forget_target),
       (SELECT coalesce(sum(loaded + quarantined), 0) FROM ledger_removed),
       (SELECT count(*) FROM ledger_rewritten);
