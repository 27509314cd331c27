-- Taobao UserBehavior.csv -> contract events (one row per input row, none dropped).
--
-- Input: no header, columns user_id,item_id,category_id,behavior,timestamp (timestamp in seconds).
-- Parameters:
--   $path    the CSV file (streamed; a .gz file works too)
--   $source  the source name, 'taobao' (prefix of event_id)
--   $header  true when the first line is the header row 'user_id,item_id,...' to skip
-- Output: the contract event columns plus `pos`, the 1-based position of the row among the file's
-- data rows (the adapter splits the output into files by ranges of pos).
--
-- Every column is read as VARCHAR, so no value can abort the file: an unknown behaviour passes
-- through as-is in event_type, an unparseable or out-of-range timestamp becomes a NULL ts, an empty
-- id stays NULL (ingestion quarantines such rows with a reason). Lines the CSV reader cannot split
-- into 5 fields raise an error naming the line.
-- event_id equals contract.derive_event_id(source, user_id, item_id, behavior, timestamp,
-- occurrence) with NULL fields as '' and occurrence the 0-based index among identical
-- (user_id, item_id, behavior, timestamp) rows in file order.
WITH raw AS (
    SELECT
        r.user_id,
        r.item_id,
        r.behavior AS raw_type,
        r."timestamp" AS raw_ts,
        r.ordinality AS pos
    FROM read_csv(
        $path,
        header = $header,
        auto_detect = false,
        delim = ',',
        quote = '"',
        escape = '"',
        columns = {
            'user_id': 'VARCHAR',
            'item_id': 'VARCHAR',
            'category_id': 'VARCHAR',
            'behavior': 'VARCHAR',
            'timestamp': 'VARCHAR'
        }
    ) WITH ORDINALITY AS r
),

numbered AS (
    SELECT
        *,
        row_number() OVER (
            PARTITION BY user_id, item_id, raw_type, raw_ts ORDER BY pos
        ) - 1 AS occurrence
    FROM raw
)

SELECT
    derive_event_id($source, user_id, item_id, raw_type, raw_ts, occurrence) AS event_id,
    user_id,
    item_id,
    CASE raw_type
        WHEN 'pv' THEN 'view'
        WHEN 'cart' THEN 'add_to_cart'
        WHEN 'buy' THEN 'purchase'
        WHEN 'fav' THEN 'favorite'
        ELSE raw_type
    END AS event_type,
    try(make_timestamptz(try_cast(raw_ts AS BIGINT) * 1000000)) AS ts,
    CAST(NULL AS VARCHAR) AS session_id,
    pos
FROM numbered
