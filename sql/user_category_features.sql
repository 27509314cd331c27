-- User x category affinity as of $as_of over the last 30 days: event-type weighted, decayed with
-- a half-life of $half_life_days, and its share of the user's total affinity; and the user's hide
-- events (negative feedback) on the category's items in those days. Every (user, category) pair
-- seen before $as_of gets a row (zeros once it is idle for 30 days), so an older snapshot's value
-- is never served in place of "no recent affinity".
INSERT INTO user_category_features BY NAME
WITH history AS (
    SELECT e.user_id, i.category_id, e.event_type, e.ts
    FROM events AS e JOIN catalog_as_of($as_of) AS i USING (item_id)
    WHERE e.ts < $as_of
), pairs AS (
    SELECT DISTINCT user_id, category_id FROM history
), weighted AS (
    SELECT user_id, category_id, event_type,
        CASE event_type WHEN 'view' THEN $w_view WHEN 'add_to_cart' THEN $w_add_to_cart
                        WHEN 'purchase' THEN $w_purchase WHEN 'favorite' THEN $w_favorite END
        * pow(0.5, (epoch($as_of) - epoch(ts)) / 86400.0 / $half_life_days) AS w
    FROM history
    WHERE ts >= $as_of - INTERVAL 30 DAY
), per_category AS (
    SELECT user_id, category_id,
           sum(w) FILTER (event_type <> 'hide') AS affinity_30d,
           count(*) FILTER (event_type <> 'hide') AS events_30d,
           count(*) FILTER (event_type = 'purchase') AS purchases_30d,
           count(*) FILTER (event_type = 'hide') AS hides_30d
    FROM weighted GROUP BY ALL
)
SELECT p.user_id, p.category_id,
    coalesce(c.affinity_30d, 0.0) AS affinity_30d,
    coalesce(c.affinity_30d / nullif(sum(c.affinity_30d) OVER (PARTITION BY p.user_id), 0), 0.0) AS affinity_share_30d,
    coalesce(c.events_30d, 0) AS events_30d,
    coalesce(c.purchases_30d, 0) AS purchases_30d,
    coalesce(c.hides_30d, 0) AS hides_30d,
    $as_of AS event_timestamp,
    $created AS created_timestamp
FROM pairs AS p
LEFT JOIN per_category AS c USING (user_id, category_id)
