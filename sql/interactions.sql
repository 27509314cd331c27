-- Weighted user x item interactions for ALS from all events before $as_of: per-event-type
-- confidence weights, decayed with a half-life of $half_life_days. Hide events (negative feedback)
-- are not interactions: they reach the user's profile as hidden items (sql/user_profile.sql).
INSERT INTO interactions BY NAME
SELECT user_id, item_id,
    sum(CASE event_type WHEN 'view' THEN $w_view WHEN 'add_to_cart' THEN $w_add_to_cart
                        WHEN 'purchase' THEN $w_purchase WHEN 'favorite' THEN $w_favorite END
        * pow(0.5, (epoch($as_of) - epoch(ts)) / 86400.0 / $half_life_days)) AS weight,
    count(*) FILTER (event_type = 'view') AS views,
    count(*) FILTER (event_type = 'add_to_cart') AS carts,
    count(*) FILTER (event_type = 'purchase') AS purchases,
    count(*) FILTER (event_type = 'favorite') AS favorites,
    max(ts) AS last_ts,
    max(ts) FILTER (event_type = 'purchase') AS last_purchase_ts,
    $as_of AS event_timestamp,
    $created AS created_timestamp
FROM events
WHERE ts < $as_of AND event_type <> 'hide'
GROUP BY user_id, item_id
