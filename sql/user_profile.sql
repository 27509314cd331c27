-- One row per user as of $as_of for the scoring service's single online read: the user's
-- $max_items most recent items (from the interactions snapshot) and up to $max_categories
-- categories by affinity (from the user_category_features snapshot), as position-aligned arrays.
-- Both snapshots must exist at exactly $as_of (build them first). Times are epoch seconds; an
-- item never purchased has last purchase 0. as_of_unix is $as_of to the microsecond (the online
-- store keeps event timestamps in whole seconds only; ages are measured from this).
INSERT INTO user_profile BY NAME
WITH recent AS (
    SELECT * FROM interactions
    WHERE event_timestamp = $as_of
    QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY last_ts DESC, item_id) <= $max_items
), history AS (
    SELECT user_id,
        list(item_id ORDER BY last_ts DESC, item_id) AS hist_item_ids,
        list(weight ORDER BY last_ts DESC, item_id) AS hist_weights,
        list(views ORDER BY last_ts DESC, item_id) AS hist_views,
        list(carts ORDER BY last_ts DESC, item_id) AS hist_carts,
        list(purchases ORDER BY last_ts DESC, item_id) AS hist_purchases,
        list(epoch(last_ts) ORDER BY last_ts DESC, item_id) AS hist_last_unix,
        list(coalesce(epoch(last_purchase_ts), 0.0) ORDER BY last_ts DESC, item_id) AS hist_last_purchase_unix
    FROM recent GROUP BY user_id
), top_categories AS (
    SELECT * FROM user_category_features
    WHERE event_timestamp = $as_of
    QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY affinity_30d DESC, category_id) <= $max_categories
), categories AS (
    SELECT user_id,
        list(category_id ORDER BY affinity_30d DESC, category_id) AS cat_ids,
        list(affinity_30d ORDER BY affinity_30d DESC, category_id) AS cat_affinity_30d,
        list(affinity_share_30d ORDER BY affinity_30d DESC, category_id) AS cat_affinity_share_30d,
        list(events_30d ORDER BY affinity_30d DESC, category_id) AS cat_events_30d,
        list(purchases_30d ORDER BY affinity_30d DESC, category_id) AS cat_purchases_30d
    FROM top_categories GROUP BY user_id
)
SELECT user_id, h.hist_item_ids, h.hist_weights, h.hist_views, h.hist_carts, h.hist_purchases,
    h.hist_last_unix, h.hist_last_purchase_unix,
    c.cat_ids, c.cat_affinity_30d, c.cat_affinity_share_30d, c.cat_events_30d, c.cat_purchases_30d,
    epoch($as_of) AS as_of_unix,
    $as_of AS event_timestamp,
    $created AS created_timestamp
FROM history AS h FULL JOIN categories AS c USING (user_id)
