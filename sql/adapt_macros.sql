-- Macros shared by the adapter queries (run on each adapter connection). Idempotent.

-- The deterministic id of a source row without one; equals contract.derive_event_id(source, user,
-- item, raw_type, raw_ts, occurrence) with NULL fields as '' (concat_ws would drop NULLs and shift
-- the fields).
CREATE OR REPLACE MACRO derive_event_id(source, user_id, item_id, raw_type, raw_ts, occurrence) AS
    source || '-' || left(md5(concat_ws(chr(31), source, coalesce(user_id, ''), coalesce(item_id, ''),
                                         coalesce(raw_type, ''), coalesce(raw_ts, ''), occurrence)), 20);
