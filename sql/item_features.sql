-- Item features as of $as_of: popularity per window, conversion, trend, and the catalog row
-- valid at $as_of (latest version updated before it). One row per item known before $as_of.
-- Hide events (negative feedback) are not activity: they count nowhere here.
INSERT INTO item_features
WITH catalog AS (
    SELECT * FROM catalog_as_of($as_of)
), history AS (
    SELECT item_id, max(ts) AS last_ts FROM events WHERE ts < $as_of AND event_type <> 'hide' GROUP BY item_id
), counts AS (
    SELECT item_id,
        count(*) FILTER (event_type = 'view' AND ts >= $as_of - INTERVAL 1 HOUR) AS views_1h,
        count(*) FILTER (event_type = 'view' AND ts >= $as_of - INTERVAL 24 HOUR) AS views_24h,
        count(*) FILTER (event_type = 'view' AND ts >= $as_of - INTERVAL 7 DAY) AS views_7d,
        count(*) FILTER (event_type = 'view') AS views_30d,
        count(*) FILTER (event_type = 'add_to_cart' AND ts >= $as_of - INTERVAL 24 HOUR) AS carts_24h,
        count(*) FILTER (event_type = 'add_to_cart' AND ts >= $as_of - INTERVAL 7 DAY) AS carts_7d,
        count(*) FILTER (event_type = 'add_to_cart') AS carts_30d,
        count(*) FILTER (event_type = 'purchase' AND ts >= $as_of - INTERVAL 24 HOUR) AS purchases_24h,
        count(*) FILTER (event_type = 'purchase' AND ts >= $as_of - INTERVAL 7 DAY) AS purchases_7d,
        count(*) FILTER (event_type = 'purchase') AS purchases_30d,
        count(DISTINCT user_id) FILTER (ts >= $as_of - INTERVAL 7 DAY) AS distinct_users_7d
    FROM events
    WHERE ts < $as_of AND ts >= $as_of - INTERVAL 30 DAY AND event_type <> 'hide'
    GROUP BY item_id
), known AS (
    SELECT item_id FROM catalog UNION SELECT item_id FROM history
)
SELECT k.item_id, cat.category_id, cat.price, cat.available,
    coalesce(c.views_1h, 0), coalesce(c.views_24h, 0), coalesce(c.views_7d, 0), coalesce(c.views_30d, 0),
    coalesce(c.carts_24h, 0), coalesce(c.carts_7d, 0), coalesce(c.carts_30d, 0),
    coalesce(c.purchases_24h, 0), coalesce(c.purchases_7d, 0), coalesce(c.purchases_30d, 0),
    coalesce(c.distinct_users_7d, 0),
    coalesce(c.carts_30d / nullif(c.views_30d, 0), 0.0) AS cart_rate_30d,
    coalesce(c.purchases_30d / nullif(c.views_30d, 0), 0.0) AS purchase_rate_30d,
    -- > 1 when the last day beats the week's daily average (add-one smoothed)
    (coalesce(c.views_24h, 0) + 1) / (coalesce(c.views_7d, 0) / 7.0 + 1) AS trend_24h_vs_7d,
    epoch($as_of) - epoch(h.last_ts) AS seconds_since_last_event,
    $as_of AS event_timestamp,
    $created AS created_timestamp
FROM known AS k
LEFT JOIN catalog AS cat USING (item_id)
LEFT JOIN history AS h USING (item_id)
LEFT JOIN counts AS c USING (item_id)
