-- Store the fresh events. Rows without a session_id get one from a $gap_s-second inactivity gap,
-- continuing the user's latest stored session when the first new event is within the gap of it.
-- Derived ids are contract.derive_session_id's formula: <user_id>-<epoch ms of the session's first event,
-- floored> (not epoch_ms(), which rounds to the nearest millisecond).
INSERT INTO events (event_id, user_id, item_id, event_type, ts, session_id, file_hash, ingested_at, request_id, id_hash)
WITH needs_session AS (
    SELECT * FROM fresh WHERE session_id IS NULL
), prior AS (
    SELECT user_id, max(ts) AS last_ts, arg_max(session_id, ts) AS last_session
    FROM events
    WHERE user_id IN (SELECT user_id FROM needs_session)
    GROUP BY user_id
), gaps AS (
    SELECT n.*, p.last_ts, p.last_session,
           lag(n.ts) OVER (PARTITION BY n.user_id ORDER BY n.ts, n.row_no) AS prev_ts
    FROM needs_session AS n LEFT JOIN prior AS p USING (user_id)
), marked AS (
    SELECT *,
           CASE WHEN prev_ts IS NOT NULL THEN epoch(ts) - epoch(prev_ts) > $gap_s
                ELSE last_ts IS NULL OR ts < last_ts OR epoch(ts) - epoch(last_ts) > $gap_s END AS starts_session
    FROM gaps
), numbered AS (
    SELECT *, sum(starts_session::INTEGER) OVER (PARTITION BY user_id ORDER BY ts, row_no
                                                  ROWS UNBOUNDED PRECEDING) AS session_no
    FROM marked
), sessionized AS (
    SELECT event_id, user_id, item_id, event_type, ts, request_id, id_hash,
           CASE WHEN session_no = 0 THEN last_session
                ELSE user_id || '-' || (epoch_us(min(ts) OVER (PARTITION BY user_id, session_no)) // 1000) END AS session_id
    FROM numbered
)
SELECT event_id, user_id, item_id, event_type, ts, session_id, $file_hash, $now, request_id, id_hash FROM sessionized
UNION ALL
SELECT event_id, user_id, item_id, event_type, ts, session_id, $file_hash, $now, request_id, id_hash FROM fresh
WHERE session_id IS NOT NULL
