-- OTTO sessions jsonl -> contract events (one row per event, none dropped).
--
-- Input: one session per line {"session": int, "events": [{"aid": int, "ts": ms, "type": str}]}.
-- Parameters:
--   $path    the jsonl file (streamed; a .gz file works too)
--   $source  the source name, 'otto' (prefix of event_id and of user_id)
-- Output: the contract event columns plus `pos`, 1..n in file order (line, then position in the
-- line's events list); the adapter splits the output into files by ranges of pos.
--
-- Sessions are anonymous, so each session is its own user: user_id = session_id =
-- 'otto-' || session. Mapping: clicks -> view, carts -> add_to_cart, orders -> purchase; any
-- other value passes through as-is. Values are read as VARCHAR: an unparseable ts becomes a NULL
-- ts, a missing aid a NULL item_id. A line whose "events" is missing or null becomes one event
-- with NULL item, type and ts (so it is quarantined, not lost); an empty list has no events.
-- Malformed JSON raises an error naming the line.
-- event_id equals contract.derive_event_id(source, user_id, aid, type, ts, occurrence) with NULL
-- fields as '' and occurrence the 0-based index among identical (user_id, aid, type, ts) events in
-- file order.
WITH sessions AS (
    SELECT
        s.session,
        s.events,
        s.ordinality AS line
    FROM read_json(
        $path,
        format = 'newline_delimited',
        columns = {
            'session': 'VARCHAR',
            'events': 'STRUCT(aid VARCHAR, ts VARCHAR, type VARCHAR)[]'
        }
    ) WITH ORDINALITY AS s
),

raw AS (
    SELECT
        $source || '-' || s.session AS user_id,
        e.ev.aid AS item_id,
        e.ev.type AS raw_type,
        e.ev.ts AS raw_ts,
        s.line,
        e.idx
    FROM sessions AS s,
        unnest(coalesce(s.events, [NULL])) WITH ORDINALITY AS e (ev, idx)
),

numbered AS (
    SELECT
        *,
        row_number() OVER (
            PARTITION BY user_id, item_id, raw_type, raw_ts ORDER BY line, idx
        ) - 1 AS occurrence,
        row_number() OVER (ORDER BY line, idx) AS pos
    FROM raw
)

SELECT
    derive_event_id($source, user_id, item_id, raw_type, raw_ts, occurrence) AS event_id,
    user_id,
    item_id,
    CASE raw_type
        WHEN 'clicks' THEN 'view'
        WHEN 'carts' THEN 'add_to_cart'
        WHEN 'orders' THEN 'purchase'
        ELSE raw_type
    END AS event_type,
    try(make_timestamptz(try_cast(raw_ts AS BIGINT) * 1000)) AS ts,
    user_id AS session_id,
    pos
FROM numbered
