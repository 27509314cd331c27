-- Retention (docs/PRIVACY.md): delete what is older than purge_target.cutoff: events and exposures by
-- their time, quarantined rows by when they were quarantined, feature snapshots by their as-of time.
-- ledger_removed gets the removed rows per landed file for sql/forget_ledger.sql, run next in the same
-- transaction. The catalog (item_versions) holds no personal data and is kept.

CREATE OR REPLACE TEMP TABLE purge_quarantine AS
SELECT rowid AS rid, file_hash FROM quarantine WHERE quarantined_at < (SELECT cutoff FROM purge_target);

CREATE OR REPLACE TEMP TABLE ledger_removed AS
SELECT file_hash, sum(loaded)::BIGINT AS loaded, sum(quarantined)::BIGINT AS quarantined
FROM (
    SELECT file_hash, 1 AS loaded, 0 AS quarantined FROM events WHERE ts < (SELECT cutoff FROM purge_target)
    UNION ALL
    SELECT file_hash, 1, 0 FROM exposures WHERE ts < (SELECT cutoff FROM purge_target)
    UNION ALL
    SELECT file_hash, 0, 1 FROM purge_quarantine
)
GROUP BY file_hash;

DELETE FROM exposure_items
WHERE request_id IN (SELECT request_id FROM exposures WHERE ts < (SELECT cutoff FROM purge_target));
DELETE FROM exposures WHERE ts < (SELECT cutoff FROM purge_target);
DELETE FROM events WHERE ts < (SELECT cutoff FROM purge_target);
DELETE FROM quarantine WHERE rowid IN (SELECT rid FROM purge_quarantine);
DELETE FROM user_features WHERE event_timestamp < (SELECT cutoff FROM purge_target);
DELETE FROM item_features WHERE event_timestamp < (SELECT cutoff FROM purge_target);
DELETE FROM user_category_features WHERE event_timestamp < (SELECT cutoff FROM purge_target);
DELETE FROM interactions WHERE event_timestamp < (SELECT cutoff FROM purge_target);
DELETE FROM user_profile WHERE event_timestamp < (SELECT cutoff FROM purge_target);
