-- Per shadow list (a challenger's, scored for a served request and never shown) beside the served
-- list it shadows: both lists' lengths, the items they share, and for each list whether the user
-- then viewed, carted or bought one of its items within $window_s seconds of the answer. Both lists
-- are judged by the same rule (the user and the item, never the request id: the shadow list has
-- none the user could see), so the served list keeps the advantage of having been shown (see
-- docs/EXPERIMENTS.md). Only answers served in [$since, $until) are returned.
WITH pairs AS (
    SELECT s.request_id AS shadow_request_id, x.request_id, x.user_id, x.ts, x.experiment, x.variant,
           x.model_version AS served_model_version, s.experiment AS shadow,
           s.model_version AS shadow_model_version, x.n_items AS served_items, s.n_items AS shadow_items
    FROM exposures AS s JOIN exposures AS x ON x.request_id = s.shadow_of
    WHERE s.shadow_of IS NOT NULL AND x.shadow_of IS NULL AND x.ts >= $since AND x.ts < $until
), listed AS (
    SELECT p.shadow_request_id, 'served' AS list, i.item_id
    FROM pairs AS p JOIN exposure_items AS i ON i.request_id = p.request_id
    UNION ALL
    SELECT p.shadow_request_id, 'shadow' AS list, i.item_id
    FROM pairs AS p JOIN exposure_items AS i ON i.request_id = p.shadow_request_id
), common AS (
    SELECT shadow_request_id, count(*) AS n_common
    FROM (SELECT shadow_request_id, item_id FROM listed GROUP BY ALL HAVING count(DISTINCT list) = 2)
    GROUP BY shadow_request_id
), hits AS (
    SELECT l.shadow_request_id, l.list,
           bool_or(e.event_type = 'view') AS clicked,
           bool_or(e.event_type = 'add_to_cart') AS carted,
           bool_or(e.event_type = 'purchase') AS purchased
    FROM listed AS l
    JOIN pairs AS p USING (shadow_request_id)
    JOIN events AS e ON e.user_id = p.user_id AND e.item_id = l.item_id
    WHERE e.ts >= $since AND e.ts < $until + to_seconds($window_s)
      AND e.ts >= p.ts AND e.ts < p.ts + to_seconds($window_s)
    GROUP BY ALL
)
SELECT p.shadow, p.shadow_request_id, p.request_id, p.user_id, p.ts, p.experiment, p.variant,
       p.served_model_version, p.shadow_model_version, p.served_items, p.shadow_items,
       coalesce(c.n_common, 0) AS n_common,
       coalesce(hs.clicked, false) AS served_clicked, coalesce(hs.carted, false) AS served_carted,
       coalesce(hs.purchased, false) AS served_purchased,
       coalesce(hh.clicked, false) AS shadow_clicked, coalesce(hh.carted, false) AS shadow_carted,
       coalesce(hh.purchased, false) AS shadow_purchased
FROM pairs AS p
LEFT JOIN common AS c USING (shadow_request_id)
LEFT JOIN hits AS hs ON hs.shadow_request_id = p.shadow_request_id AND hs.list = 'served'
LEFT JOIN hits AS hh ON hh.shadow_request_id = p.shadow_request_id AND hh.list = 'shadow'
ORDER BY p.ts, p.request_id
