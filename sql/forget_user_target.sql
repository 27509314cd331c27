-- The user one erasure removes (recs_pipeline/privacy/erasure.py), and when; read by forget_user.sql.
CREATE OR REPLACE TEMP TABLE forget_target AS SELECT $user_id::VARCHAR AS user_id, $now::TIMESTAMPTZ AS erased_at
