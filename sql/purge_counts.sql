-- Rows older than $cutoff per warehouse table (what sql/purge_old.sql deletes).
SELECT 'events' AS store, count(*) AS n FROM events WHERE ts < $cutoff
UNION ALL SELECT 'exposures', count(*) FROM exposures WHERE ts < $cutoff
UNION ALL SELECT 'exposure_items', count(*) FROM exposure_items
    WHERE request_id IN (SELECT request_id FROM exposures WHERE ts < $cutoff)
UNION ALL SELECT 'quarantine', count(*) FROM quarantine WHERE quarantined_at < $cutoff
UNION ALL SELECT 'user_features', count(*) FROM user_features WHERE event_timestamp < $cutoff
UNION ALL SELECT 'item_features', count(*) FROM item_features WHERE event_timestamp < $cutoff
UNION ALL SELECT 'user_category_features', count(*) FROM user_category_features WHERE event_timestamp < $cutoff
UNION ALL SELECT 'interactions', count(*) FROM interactions WHERE event_timestamp < $cutoff
UNION ALL SELECT 'user_profile', count(*) FROM user_profile WHERE event_timestamp < $cutoff
