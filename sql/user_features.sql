-- User features as of $as_of: only events strictly before $as_of count. One row per user seen
-- before $as_of (users idle for 30 days get zero counts rather than stale ones). Hide events
-- (negative feedback) count nowhere here: a user known only by hides has no row.
INSERT INTO user_features
WITH history AS (
    SELECT user_id, max(ts) AS last_ts FROM events WHERE ts < $as_of AND event_type <> 'hide' GROUP BY user_id
), recent AS (
    SELECT e.user_id, e.item_id, e.event_type, e.ts, e.session_id, i.category_id, i.price
    FROM events AS e LEFT JOIN catalog_as_of($as_of) AS i USING (item_id)
    WHERE e.ts < $as_of AND e.ts >= $as_of - INTERVAL 30 DAY AND e.event_type <> 'hide'
), counts AS (
    SELECT user_id,
        count(*) FILTER (event_type = 'view' AND ts >= $as_of - INTERVAL 1 HOUR) AS views_1h,
        count(*) FILTER (event_type = 'view' AND ts >= $as_of - INTERVAL 24 HOUR) AS views_24h,
        count(*) FILTER (event_type = 'view' AND ts >= $as_of - INTERVAL 7 DAY) AS views_7d,
        count(*) FILTER (event_type = 'view') AS views_30d,
        count(*) FILTER (event_type = 'add_to_cart' AND ts >= $as_of - INTERVAL 1 HOUR) AS carts_1h,
        count(*) FILTER (event_type = 'add_to_cart' AND ts >= $as_of - INTERVAL 24 HOUR) AS carts_24h,
        count(*) FILTER (event_type = 'add_to_cart' AND ts >= $as_of - INTERVAL 7 DAY) AS carts_7d,
        count(*) FILTER (event_type = 'add_to_cart') AS carts_30d,
        count(*) FILTER (event_type = 'purchase' AND ts >= $as_of - INTERVAL 1 HOUR) AS purchases_1h,
        count(*) FILTER (event_type = 'purchase' AND ts >= $as_of - INTERVAL 24 HOUR) AS purchases_24h,
        count(*) FILTER (event_type = 'purchase' AND ts >= $as_of - INTERVAL 7 DAY) AS purchases_7d,
        count(*) FILTER (event_type = 'purchase') AS purchases_30d,
        count(*) FILTER (event_type = 'favorite') AS favorites_30d,
        count(DISTINCT item_id) AS distinct_items_30d,
        count(DISTINCT session_id) AS sessions_30d,
        avg(price) AS avg_price_30d
    FROM recent
    GROUP BY user_id
), category_counts AS (
    SELECT user_id, category_id, count(*) AS n FROM recent WHERE category_id IS NOT NULL GROUP BY ALL
), top_category AS (
    SELECT user_id, arg_max(category_id, (n, category_id)) AS top_category_id, max(n) / sum(n) AS top_category_share
    FROM category_counts GROUP BY user_id
)
SELECT h.user_id,
    coalesce(c.views_1h, 0), coalesce(c.views_24h, 0), coalesce(c.views_7d, 0), coalesce(c.views_30d, 0),
    coalesce(c.carts_1h, 0), coalesce(c.carts_24h, 0), coalesce(c.carts_7d, 0), coalesce(c.carts_30d, 0),
    coalesce(c.purchases_1h, 0), coalesce(c.purchases_24h, 0), coalesce(c.purchases_7d, 0), coalesce(c.purchases_30d, 0),
    coalesce(c.favorites_30d, 0),
    coalesce(c.distinct_items_30d, 0),
    coalesce(c.sessions_30d, 0),
    coalesce(c.carts_30d / nullif(c.views_30d, 0), 0.0) AS cart_rate_30d,
    coalesce(c.purchases_30d / nullif(c.views_30d, 0), 0.0) AS purchase_rate_30d,
    epoch($as_of) - epoch(h.last_ts) AS seconds_since_last_event,
    t.top_category_id,
    coalesce(t.top_category_share, 0.0),
    c.avg_price_30d,
    $as_of AS event_timestamp,
    $created AS created_timestamp
FROM history AS h
LEFT JOIN counts AS c USING (user_id)
LEFT JOIN top_category AS t USING (user_id)
