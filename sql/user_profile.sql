-- One row per user as of $as_of for the scoring service's single online read: the user's
-- $max_items most recent items (from the interactions snapshot) and up to $max_categories
-- categories by affinity (from the user_category_features snapshot), as position-aligned arrays,
-- and the user's hidden items: those whose latest event before $as_of is a hide (a later view,
-- cart, purchase or favorite of the item lifts it), the $max_hidden most recently hidden; and the
-- items the service showed the user (the exposure log, shadow lists aside) in the $shown_hours
-- before $as_of, each with how often since the user's last event with it (no-repeat rotation), the
-- $max_shown most recently shown.
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
        list(purchases_30d ORDER BY affinity_30d DESC, category_id) AS cat_purchases_30d,
        list(coalesce(hides_30d, 0) ORDER BY affinity_30d DESC, category_id) AS cat_hides_30d
    FROM top_categories GROUP BY user_id
), hidden_pairs AS (
    SELECT e.user_id, e.item_id, max(e.ts) FILTER (e.event_type = 'hide') AS hidden_ts
    FROM events AS e
    SEMI JOIN (SELECT DISTINCT user_id, item_id FROM events WHERE event_type = 'hide' AND ts < $as_of) AS h
        USING (user_id, item_id)
    WHERE e.ts < $as_of
    GROUP BY e.user_id, e.item_id
    HAVING hidden_ts >= coalesce(max(e.ts) FILTER (e.event_type <> 'hide'), hidden_ts)
    QUALIFY row_number() OVER (PARTITION BY e.user_id ORDER BY hidden_ts DESC, e.item_id) <= $max_hidden
), hidden AS (
    SELECT user_id, list(item_id ORDER BY hidden_ts DESC, item_id) AS hidden_item_ids
    FROM hidden_pairs GROUP BY user_id
), recent_events AS (
    SELECT user_id, item_id, max(ts) AS last_event_ts FROM events
    WHERE ts < $as_of AND ts >= $as_of - to_hours($shown_hours) GROUP BY ALL
), shown_pairs AS (
    SELECT x.user_id, i.item_id, count(*) AS shown, max(x.ts) AS last_shown_ts
    FROM exposures AS x JOIN exposure_items AS i USING (request_id)
    LEFT JOIN recent_events AS e ON e.user_id = x.user_id AND e.item_id = i.item_id
    WHERE x.ts < $as_of AND x.ts >= $as_of - to_hours($shown_hours) AND x.shadow_of IS NULL
      AND (e.last_event_ts IS NULL OR x.ts > e.last_event_ts)
    GROUP BY x.user_id, i.item_id
    QUALIFY row_number() OVER (PARTITION BY x.user_id ORDER BY last_shown_ts DESC, i.item_id) <= $max_shown
), shown AS (
    SELECT user_id,
        list(item_id ORDER BY last_shown_ts DESC, item_id) AS shown_item_ids,
        list(shown ORDER BY last_shown_ts DESC, item_id) AS shown_counts
    FROM shown_pairs GROUP BY user_id
)
SELECT user_id, h.hist_item_ids, h.hist_weights, h.hist_views, h.hist_carts, h.hist_purchases,
    h.hist_last_unix, h.hist_last_purchase_unix,
    c.cat_ids, c.cat_affinity_30d, c.cat_affinity_share_30d, c.cat_events_30d, c.cat_purchases_30d,
    c.cat_hides_30d, x.hidden_item_ids, s.shown_item_ids, s.shown_counts,
    epoch($as_of) AS as_of_unix,
    $as_of AS event_timestamp,
    $created AS created_timestamp
FROM history AS h FULL JOIN categories AS c USING (user_id) FULL JOIN hidden AS x USING (user_id)
    FULL JOIN shown AS s USING (user_id)
