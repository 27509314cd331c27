-- Good exposures of the current file whose request_id is new: first occurrence within the file and
-- not already stored. Everything else good is a duplicate. user_id is stored as its pseudonym
-- (the identity without a key; recs_pipeline/privacy/pseudonyms.py registers pseudonym()).
CREATE OR REPLACE TEMP TABLE fresh AS
SELECT c.row_no, c.request_id, pseudonym(c.user_id) AS user_id, c.ts, c.model_version, c.experiment, c.variant, c.shadow_of, c.items, c.n_items
FROM checked AS c
WHERE c.reason IS NULL
QUALIFY row_number() OVER (PARTITION BY c.request_id ORDER BY c.row_no) = 1
    AND c.request_id NOT IN (SELECT request_id FROM exposures)
