-- User x category affinity as of $as_of over the last 30 days: event-type weighted, decayed with
-- a half-life of $half_life_days, and its share of the user's total affinity.
INSERT INTO user_category_features
WITH weighted AS (
    SELECT e.user_id, i.category_id, e.event_type,
        CASE e.event_type WHEN 'view' THEN $w_view WHEN 'add_to_cart' THEN $w_add_to_cart
                          WHEN 'purchase' THEN $w_purchase WHEN 'favorite' THEN $w_favorite END
        * pow(0.5, (epoch($as_of) - epoch(e.ts)) / 86400.0 / $half_life_days) AS w
    FROM events AS e JOIN catalog_as_of($as_of) AS i USING (item_id)
    WHERE e.ts < $as_of AND e.ts >= $as_of - INTERVAL 30 DAY
), per_category AS (
    SELECT user_id, category_id, sum(w) AS affinity_30d, count(*) AS events_30d,
           count(*) FILTER (event_type = 'purchase') AS purchases_30d
    FROM weighted GROUP BY ALL
)
SELECT user_id, category_id, affinity_30d,
    affinity_30d / sum(affinity_30d) OVER (PARTITION BY user_id) AS affinity_share_30d,
    events_30d, purchases_30d,
    $as_of AS event_timestamp,
    $created AS created_timestamp
FROM per_category
