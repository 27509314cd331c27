-- Check every staged row against the event contract. `reason` is NULL for a good row, else the
-- first problem found. $file_problem (non-NULL) rejects every row of the file (e.g. wrong columns).
CREATE OR REPLACE TEMP TABLE checked AS
WITH doc AS (
    SELECT row_no, raw, parse_error, CASE WHEN parse_error IS NULL THEN raw::JSON END AS j FROM stage
), fields AS (
    SELECT row_no, raw, parse_error,
           json_type(j, '$.event_id') AS t_event_id, j ->> '$.event_id' AS event_id,
           json_type(j, '$.user_id') AS t_user_id, j ->> '$.user_id' AS user_id,
           json_type(j, '$.item_id') AS t_item_id, j ->> '$.item_id' AS item_id,
           json_type(j, '$.event_type') AS t_event_type, j ->> '$.event_type' AS event_type,
           json_type(j, '$.ts') AS t_ts, j ->> '$.ts' AS ts_text,
           json_type(j, '$.session_id') AS t_session_id, j ->> '$.session_id' AS session_id,
           json_type(j, '$.request_id') AS t_request_id, j ->> '$.request_id' AS request_id
    FROM doc
), typed AS (
    SELECT *, try_cast(ts_text AS TIMESTAMPTZ) AS ts FROM fields
)
SELECT row_no, raw, event_id, user_id, item_id, event_type, ts,
       nullif(session_id, '') AS session_id, nullif(request_id, '') AS request_id,
       CASE
           WHEN parse_error IS NOT NULL THEN parse_error
           WHEN $file_problem IS NOT NULL THEN $file_problem
           WHEN coalesce(t_event_id, 'NULL') = 'NULL' OR event_id = '' THEN 'missing event_id'
           WHEN coalesce(t_user_id, 'NULL') = 'NULL' OR user_id = '' THEN 'missing user_id'
           WHEN coalesce(t_item_id, 'NULL') = 'NULL' OR item_id = '' THEN 'missing item_id'
           WHEN coalesce(t_event_type, 'NULL') = 'NULL' OR event_type = '' THEN 'missing event_type'
           WHEN coalesce(t_ts, 'NULL') = 'NULL' OR ts_text = '' THEN 'missing ts'
           WHEN t_event_id NOT IN ('VARCHAR', 'BIGINT', 'UBIGINT') THEN 'wrong type: event_id is ' || t_event_id
           WHEN t_user_id NOT IN ('VARCHAR', 'BIGINT', 'UBIGINT') THEN 'wrong type: user_id is ' || t_user_id
           WHEN t_item_id NOT IN ('VARCHAR', 'BIGINT', 'UBIGINT') THEN 'wrong type: item_id is ' || t_item_id
           WHEN t_event_type <> 'VARCHAR' THEN 'wrong type: event_type is ' || t_event_type
           WHEN t_ts <> 'VARCHAR' THEN 'wrong type: ts is ' || t_ts || ' (expected an ISO-8601 timestamp string)'
           WHEN coalesce(t_session_id, 'NULL') NOT IN ('NULL', 'VARCHAR', 'BIGINT', 'UBIGINT') THEN 'wrong type: session_id is ' || t_session_id
           WHEN coalesce(t_request_id, 'NULL') NOT IN ('NULL', 'VARCHAR') THEN 'wrong type: request_id is ' || t_request_id
           WHEN greatest(length(event_id), length(user_id), length(item_id), length(coalesce(session_id, '')),
                         length(coalesce(request_id, ''))) > $max_id_length
               THEN 'id longer than ' || $max_id_length || ' characters'
           WHEN NOT list_contains($event_types, event_type) THEN 'unknown event_type: ' || left(event_type, 64)
           WHEN ts IS NULL THEN 'unparseable ts: ' || left(ts_text, 64)
           WHEN ts < TIMESTAMPTZ '1970-01-01 00:00:00+00' THEN 'pre-epoch ts: ' || ts_text
           WHEN ts > $now + to_seconds($future_tolerance_s) THEN 'far-future ts: ' || ts_text
       END AS reason
FROM typed
