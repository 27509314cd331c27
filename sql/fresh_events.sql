-- Good rows of the current file whose event_id is new: first occurrence within the file and
-- not already stored. Everything else good is a duplicate. user_id and a producer's session_id (which
-- often embeds the user id) are stored as their pseudonyms: pseudonym() is the identity without a key
-- (recs_pipeline/privacy/pseudonyms.py registers it); event ids stay the landed ones.
-- The stored side is narrowed by id_hash first (sql/schema.sql): only stored events whose hash equals
-- one of the file's (or that have none) are compared by event_id, so a hash collision never drops an event.
CREATE OR REPLACE TEMP TABLE fresh AS
WITH firsts AS (
    SELECT c.row_no, c.event_id, event_id_hash(c.event_id) AS id_hash, pseudonym(c.user_id) AS user_id,
           c.item_id, c.event_type, c.ts, pseudonym(c.session_id) AS session_id, c.request_id
    FROM checked AS c
    WHERE c.reason IS NULL
    QUALIFY row_number() OVER (PARTITION BY c.event_id ORDER BY c.row_no) = 1
), maybe_stored AS (
    SELECT event_id FROM events
    WHERE id_hash IN (SELECT id_hash FROM firsts) OR id_hash IS NULL
)
SELECT * FROM firsts
WHERE event_id NOT IN (SELECT event_id FROM maybe_stored)
