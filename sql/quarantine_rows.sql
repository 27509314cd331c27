-- Keep every rejected row of the current file with its reason. With pseudonymous ids ($pseudonymised),
-- a row that parsed as a JSON object keeps its text with user_id and session_id replaced by their
-- pseudonyms, and a row that did not parse (or a rejected CSV line) keeps no text: it may hold a raw id
-- (the landed file still has it). Without, the row's text is kept as landed.
INSERT INTO quarantine
SELECT $file_hash, $file_name, $kind, row_no, reason,
       CASE WHEN NOT $pseudonymised THEN raw
            WHEN row_no IN (SELECT row_no FROM stage WHERE parse_error IS NULL)
                THEN json_merge_patch(raw, json_object(
                    'user_id', pseudonym(raw::JSON ->> '$.user_id'),
                    'session_id', pseudonym(raw::JSON ->> '$.session_id')))::VARCHAR
       END,
       $now
FROM checked
WHERE reason IS NOT NULL
