-- Check every staged row against the item (catalog) contract; `reason` as in validate_events.sql.
CREATE OR REPLACE TEMP TABLE checked AS
WITH doc AS (
    SELECT row_no, raw, parse_error, CASE WHEN parse_error IS NULL THEN raw::JSON END AS j FROM stage
), fields AS (
    SELECT row_no, raw, parse_error,
           json_type(j, '$.item_id') AS t_item_id, j ->> '$.item_id' AS item_id,
           json_type(j, '$.category_id') AS t_category_id, j ->> '$.category_id' AS category_id,
           json_type(j, '$.price') AS t_price, j ->> '$.price' AS price_text,
           json_type(j, '$.available') AS t_available, j ->> '$.available' AS available_text,
           json_type(j, '$.updated_at') AS t_updated_at, j ->> '$.updated_at' AS updated_at_text
    FROM doc
), typed AS (
    SELECT *, try_cast(price_text AS DOUBLE) AS price, try_cast(available_text AS BOOLEAN) AS available,
           try_cast(updated_at_text AS TIMESTAMPTZ) AS updated_at
    FROM fields
)
SELECT row_no, raw, item_id, category_id, price, available, updated_at,
       CASE
           WHEN parse_error IS NOT NULL THEN parse_error
           WHEN $file_problem IS NOT NULL THEN $file_problem
           WHEN coalesce(t_item_id, 'NULL') = 'NULL' OR item_id = '' THEN 'missing item_id'
           WHEN coalesce(t_category_id, 'NULL') = 'NULL' OR category_id = '' THEN 'missing category_id'
           WHEN coalesce(t_available, 'NULL') = 'NULL' THEN 'missing available'
           WHEN coalesce(t_updated_at, 'NULL') = 'NULL' THEN 'missing updated_at'
           WHEN t_item_id NOT IN ('VARCHAR', 'BIGINT', 'UBIGINT') THEN 'wrong type: item_id is ' || t_item_id
           WHEN t_category_id NOT IN ('VARCHAR', 'BIGINT', 'UBIGINT') THEN 'wrong type: category_id is ' || t_category_id
           WHEN greatest(length(item_id), length(category_id)) > $max_id_length THEN 'id longer than ' || $max_id_length || ' characters'
           WHEN coalesce(t_price, 'NULL') <> 'NULL' AND (price IS NULL OR price < 0 OR isnan(price) OR isinf(price)) THEN 'bad price: ' || left(price_text, 64)
           WHEN available IS NULL THEN 'wrong type: available is ' || t_available
           WHEN updated_at IS NULL THEN 'unparseable updated_at: ' || left(updated_at_text, 64)
           WHEN updated_at < TIMESTAMPTZ '1970-01-01 00:00:00+00' THEN 'pre-epoch updated_at: ' || updated_at_text
           WHEN updated_at > $now + to_seconds($future_tolerance_s) THEN 'far-future updated_at: ' || updated_at_text
       END AS reason
FROM typed
