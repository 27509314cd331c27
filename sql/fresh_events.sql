-- Good rows of the current file whose event_id is new: first occurrence within the file and
-- not already stored. Everything else good is a duplicate. user_id and a producer's session_id (which
-- often embeds the user id) are stored as their pseudonyms: pseudonym() is the identity without a key
-- (recs_pipeline/privacy/pseudonyms.py registers it); event ids stay the landed ones.
CREATE OR REPLACE TEMP TABLE fresh AS
SELECT c.row_no, c.event_id, pseudonym(c.user_id) AS user_id, c.item_id, c.event_type, c.ts,
       pseudonym(c.session_id) AS session_id, c.request_id
FROM checked AS c
WHERE c.reason IS NULL
QUALIFY row_number() OVER (PARTITION BY c.event_id ORDER BY c.row_no) = 1
    AND c.event_id NOT IN (SELECT event_id FROM events)
