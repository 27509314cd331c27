-- Rows of the user in forget_target, per warehouse table (before the erasure deletes them).
WITH t AS (SELECT user_id FROM forget_target)
SELECT 'events' AS store, count(*) AS n FROM events WHERE user_id = (SELECT user_id FROM t)
UNION ALL SELECT 'exposures', count(*) FROM exposures WHERE user_id = (SELECT user_id FROM t)
UNION ALL SELECT 'exposure_items', count(*) FROM exposure_items
    WHERE request_id IN (SELECT request_id FROM exposures WHERE user_id = (SELECT user_id FROM t))
UNION ALL SELECT 'quarantine', count(*) FROM quarantine
    WHERE CASE WHEN json_valid(raw) THEN json_extract_string(raw, '$.user_id') END = (SELECT user_id FROM t)
UNION ALL SELECT 'user_features', count(*) FROM user_features WHERE user_id = (SELECT user_id FROM t)
UNION ALL SELECT 'user_category_features', count(*) FROM user_category_features WHERE user_id = (SELECT user_id FROM t)
UNION ALL SELECT 'interactions', count(*) FROM interactions WHERE user_id = (SELECT user_id FROM t)
UNION ALL SELECT 'user_profile', count(*) FROM user_profile WHERE user_id = (SELECT user_id FROM t)
