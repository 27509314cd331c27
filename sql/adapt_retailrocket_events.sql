-- RetailRocket events.csv -> contract events (one row per input row, none dropped).
--
-- Input: header timestamp,visitorid,event,itemid,transactionid[,datetime] (timestamp in ms; the
-- public Kaggle file has the first five columns, the shared sample adds datetime).
-- Parameters:
--   $path     the CSV file (streamed; a .gz file works too)
--   $source   the source name, 'retailrocket' (prefix of event_id)
--   $columns  the file's columns, all VARCHAR, in file order (checked against the header first)
-- Output: the contract event columns plus `pos`, the 1-based position of the row among the file's
-- data rows (the adapter splits the output into files by ranges of pos).
--
-- Mapping: view -> view, addtocart -> add_to_cart, transaction -> purchase; any other value passes
-- through as-is (ingestion quarantines it). user_id = visitorid, item_id = itemid; the source has
-- no sessions, so session_id is NULL (ingestion derives sessions from a 30-minute gap).
-- Every column is read as VARCHAR: an unparseable or out-of-range timestamp becomes a NULL ts, an
-- empty id stays NULL. Lines the CSV reader cannot split into the header's fields raise an error.
-- event_id equals contract.derive_event_id(source, visitorid, itemid, event, timestamp,
-- occurrence) with NULL fields as '' and occurrence the 0-based index among identical
-- (visitorid, itemid, event, timestamp) rows in file order.
WITH raw AS (
    SELECT
        r.visitorid AS user_id,
        r.itemid AS item_id,
        r.event AS raw_type,
        r."timestamp" AS raw_ts,
        r.ordinality AS pos
    FROM read_csv(
        $path,
        header = true,
        auto_detect = false,
        delim = ',',
        quote = '"',
        escape = '"',
        columns = $columns
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
        WHEN 'view' THEN 'view'
        WHEN 'addtocart' THEN 'add_to_cart'
        WHEN 'transaction' THEN 'purchase'
        ELSE raw_type
    END AS event_type,
    try(make_timestamptz(try_cast(raw_ts AS BIGINT) * 1000)) AS ts,
    CAST(NULL AS VARCHAR) AS session_id,
    pos
FROM numbered
