-- Taobao UserBehavior.csv -> contract catalog derived from the events (one row per item id).
--
-- Taobao ships no catalog; each event row carries the item's category. Per item:
--   category_id  the category of the item's latest event (by timestamp, then file position;
--                rows with an unparseable timestamp count as oldest; NULL categories ignored)
--   price        NULL (not in the data)
--   available    true
--   updated_at   the item's first event time (NULL when none of its timestamps parse)
-- Rows without an item id describe no item and are not part of the catalog (the events file
-- still carries them, for ingestion to quarantine).
-- Parameters: $path (the CSV file), $header (true when the first line is a header row).
-- Output: the contract item columns plus `pos`, 1..n in order of each item's first appearance.
WITH raw AS (
    SELECT
        r.item_id,
        r.category_id,
        try(make_timestamptz(try_cast(r."timestamp" AS BIGINT) * 1000000)) AS ts,
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

per_item AS (
    SELECT
        item_id,
        arg_max(
            category_id,
            struct_pack(t := coalesce(epoch_us(ts), -9223372036854775807), p := pos)
        ) FILTER (WHERE category_id IS NOT NULL) AS category_id,
        min(ts) AS updated_at,
        min(pos) AS first_pos
    FROM raw
    WHERE item_id IS NOT NULL
    GROUP BY item_id
)

SELECT
    item_id,
    category_id,
    CAST(NULL AS DOUBLE) AS price,
    true AS available,
    updated_at,
    row_number() OVER (ORDER BY first_pos) AS pos
FROM per_item
