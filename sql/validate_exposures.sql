-- Check every staged row against the exposure contract (docs/CONTRACT.md). `reason` is NULL for a
-- good row, else the first problem found. $file_problem (non-NULL) rejects every row of the file.
-- `items` must be a JSON array of 1 to $max_items objects, each with a non-empty item_id and a
-- distinct positive integer position; score (number) and source (string) are optional. `shadow_of`
-- (optional) is the served request_id a shadow list was scored for.
CREATE OR REPLACE TEMP TABLE checked AS
WITH doc AS (
    SELECT row_no, raw, parse_error, CASE WHEN parse_error IS NULL THEN raw::JSON END AS j FROM stage
), fields AS (
    SELECT row_no, raw, parse_error,
           json_type(j, '$.request_id') AS t_request_id, j ->> '$.request_id' AS request_id,
           json_type(j, '$.user_id') AS t_user_id, j ->> '$.user_id' AS user_id,
           json_type(j, '$.ts') AS t_ts, j ->> '$.ts' AS ts_text,
           json_type(j, '$.model_version') AS t_model_version, j ->> '$.model_version' AS model_version,
           json_type(j, '$.experiment') AS t_experiment, j ->> '$.experiment' AS experiment,
           json_type(j, '$.variant') AS t_variant, j ->> '$.variant' AS variant,
           json_type(j, '$.shadow_of') AS t_shadow_of, j ->> '$.shadow_of' AS shadow_of,
           json_type(j, '$.items') AS t_items,
           CASE WHEN json_type(j, '$.items') = 'ARRAY' THEN json_extract(j, '$.items[*]') END AS items
    FROM doc
), typed AS (
    SELECT *, try_cast(ts_text AS TIMESTAMPTZ) AS ts,
           coalesce(len(items), 0) AS n_items,
           list_bool_and(list_transform(items, lambda x: coalesce(
               json_type(x) = 'OBJECT'
               AND json_type(x, '$.item_id') IN ('VARCHAR', 'BIGINT', 'UBIGINT') AND (x ->> '$.item_id') <> ''
               AND length(x ->> '$.item_id') <= $max_id_length
               AND json_type(x, '$.position') IN ('BIGINT', 'UBIGINT') AND (x ->> '$.position')::BIGINT >= 1
               AND coalesce(json_type(x, '$.score'), 'NULL') IN ('NULL', 'DOUBLE', 'BIGINT', 'UBIGINT')
               AND coalesce(json_type(x, '$.source'), 'NULL') IN ('NULL', 'VARCHAR'), false))) AS items_ok,
           len(list_distinct(list_transform(items, lambda x: x ->> '$.position'))) AS n_positions
    FROM fields
)
SELECT row_no, raw, request_id, user_id, ts, model_version,
       nullif(experiment, '') AS experiment, nullif(variant, '') AS variant, shadow_of, items, n_items,
       CASE
           WHEN parse_error IS NOT NULL THEN parse_error
           WHEN $file_problem IS NOT NULL THEN $file_problem
           WHEN coalesce(t_request_id, 'NULL') = 'NULL' OR request_id = '' THEN 'missing request_id'
           WHEN coalesce(t_user_id, 'NULL') = 'NULL' OR user_id = '' THEN 'missing user_id'
           WHEN coalesce(t_ts, 'NULL') = 'NULL' OR ts_text = '' THEN 'missing ts'
           WHEN coalesce(t_model_version, 'NULL') = 'NULL' OR model_version = '' THEN 'missing model_version'
           WHEN coalesce(t_items, 'NULL') = 'NULL' THEN 'missing items'
           WHEN t_request_id <> 'VARCHAR' THEN 'wrong type: request_id is ' || t_request_id
           WHEN t_user_id NOT IN ('VARCHAR', 'BIGINT', 'UBIGINT') THEN 'wrong type: user_id is ' || t_user_id
           WHEN t_ts <> 'VARCHAR' THEN 'wrong type: ts is ' || t_ts || ' (expected an ISO-8601 timestamp string)'
           WHEN t_model_version <> 'VARCHAR' THEN 'wrong type: model_version is ' || t_model_version
           WHEN coalesce(t_experiment, 'NULL') NOT IN ('NULL', 'VARCHAR') THEN 'wrong type: experiment is ' || t_experiment
           WHEN coalesce(t_variant, 'NULL') NOT IN ('NULL', 'VARCHAR') THEN 'wrong type: variant is ' || t_variant
           WHEN (experiment IS NULL OR experiment = '') <> (variant IS NULL OR variant = '')
               THEN 'experiment and variant must be given together'
           WHEN coalesce(t_shadow_of, 'NULL') NOT IN ('NULL', 'VARCHAR') THEN 'wrong type: shadow_of is ' || t_shadow_of
           WHEN shadow_of = '' THEN 'shadow_of is empty (leave it out on a served list)'
           WHEN shadow_of = request_id THEN 'shadow_of names the list itself'
           WHEN t_items <> 'ARRAY' THEN 'wrong type: items is ' || t_items || ' (expected an array of item objects)'
           WHEN n_items = 0 THEN 'items is empty'
           WHEN n_items > $max_items THEN 'more than ' || $max_items || ' items'
           WHEN NOT items_ok THEN 'bad item: each needs a non-empty item_id (at most ' || $max_id_length
               || ' characters) and an integer position >= 1; score a number, source a string'
           WHEN n_positions <> n_items THEN 'items repeat a position'
           WHEN greatest(length(request_id), length(user_id), length(model_version), length(coalesce(experiment, '')),
                         length(coalesce(variant, '')), length(coalesce(shadow_of, ''))) > $max_id_length
               THEN 'id longer than ' || $max_id_length || ' characters'
           WHEN ts IS NULL THEN 'unparseable ts: ' || left(ts_text, 64)
           WHEN ts < TIMESTAMPTZ '1970-01-01 00:00:00+00' THEN 'pre-epoch ts: ' || ts_text
           WHEN ts > $now + to_seconds($future_tolerance_s) THEN 'far-future ts: ' || ts_text
       END AS reason
FROM typed
