-- Per served list (exposure): which of its items the user then viewed, carted and bought within
-- $window_s seconds, and the revenue of those purchases (the item's price at the purchase, when the
-- catalog has one). An event counts for at most one exposure: the one its request_id names (when the
-- event carries one and that list showed the item), else the user's latest exposure before the event
-- that showed the item. Only exposures served in [$since, $until) are returned; shadow lists (never
-- shown) neither take events nor appear (sql/shadow_outcomes.sql compares them).
WITH shown AS (
    SELECT x.request_id, x.user_id, x.ts AS shown_ts, i.item_id
    FROM exposures AS x JOIN exposure_items AS i USING (request_id)
    WHERE x.ts >= $since AND x.ts < $until AND x.shadow_of IS NULL
), candidate_events AS (
    SELECT e.event_id, e.user_id, e.item_id, e.event_type, e.ts, e.request_id
    FROM events AS e
    WHERE e.ts >= $since AND e.ts < $until + to_seconds($window_s)
), by_request AS (
    SELECT e.event_id, s.request_id
    FROM candidate_events AS e
    JOIN shown AS s ON e.request_id = s.request_id AND e.item_id = s.item_id
    WHERE e.ts >= s.shown_ts AND e.ts < s.shown_ts + to_seconds($window_s)
), by_user AS (
    SELECT e.event_id, arg_max(s.request_id, s.shown_ts) AS request_id
    FROM candidate_events AS e
    JOIN shown AS s ON e.user_id = s.user_id AND e.item_id = s.item_id
    WHERE e.event_id NOT IN (SELECT event_id FROM by_request)
      AND e.ts >= s.shown_ts AND e.ts < s.shown_ts + to_seconds($window_s)
    GROUP BY e.event_id
), attributed AS (
    SELECT a.request_id, e.item_id, e.event_type, e.ts
    FROM (SELECT * FROM by_request UNION ALL SELECT * FROM by_user) AS a
    JOIN candidate_events AS e USING (event_id)
), priced AS (
    SELECT a.*, (
        SELECT v.price FROM item_versions AS v
        WHERE v.item_id = a.item_id AND v.updated_at <= a.ts
        ORDER BY v.updated_at DESC LIMIT 1
    ) AS price
    FROM attributed AS a
), per_exposure AS (
    SELECT request_id,
           count(*) FILTER (event_type = 'view') > 0 AS clicked,
           count(*) FILTER (event_type = 'add_to_cart') > 0 AS carted,
           count(*) FILTER (event_type = 'purchase') > 0 AS purchased,
           coalesce(sum(price) FILTER (event_type = 'purchase'), 0.0) AS revenue
    FROM priced
    GROUP BY request_id
)
SELECT x.request_id, x.user_id, x.ts, x.model_version, x.experiment, x.variant, x.n_items,
       coalesce(o.clicked, false) AS clicked, coalesce(o.carted, false) AS carted,
       coalesce(o.purchased, false) AS purchased, coalesce(o.revenue, 0.0) AS revenue
FROM exposures AS x LEFT JOIN per_exposure AS o USING (request_id)
WHERE x.ts >= $since AND x.ts < $until AND x.shadow_of IS NULL
ORDER BY x.ts, x.request_id
