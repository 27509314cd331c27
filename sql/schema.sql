-- Warehouse schema. Idempotent: run on every connection that writes.

-- Contract events, each event_id stored once (enforced by ingestion; checked by an asset check).
CREATE TABLE IF NOT EXISTS events (
    event_id    VARCHAR NOT NULL,
    user_id     VARCHAR NOT NULL,
    item_id     VARCHAR NOT NULL,
    event_type  VARCHAR NOT NULL,
    ts          TIMESTAMPTZ NOT NULL,
    session_id  VARCHAR NOT NULL,
    file_hash   VARCHAR NOT NULL,
    ingested_at TIMESTAMPTZ NOT NULL
);

-- Added with the exposure log: the served list an event responds to (optional in the contract).
ALTER TABLE events ADD COLUMN IF NOT EXISTS request_id VARCHAR;

-- A 64-bit hash of event_id, so ingestion's exactly-once check (sql/fresh_events.sql) reads 8 bytes per
-- stored event instead of every stored id: only stored events whose hash matches one of a file's are
-- compared by id. DuckDB's hash() is not promised stable across versions, so the hash of a fixed probe
-- is recorded and every stored hash recomputed when it is missing (a warehouse from before the column)
-- or differs (a DuckDB whose hash() changed); a row with no hash (inserted outside ingestion) is
-- always compared by id.
CREATE OR REPLACE MACRO event_id_hash(event_id) AS hash(event_id);
ALTER TABLE events ADD COLUMN IF NOT EXISTS id_hash UBIGINT;
CREATE TABLE IF NOT EXISTS event_id_hash_check (probe UBIGINT NOT NULL);
UPDATE events SET id_hash = event_id_hash(event_id)
WHERE NOT EXISTS (SELECT 1 FROM event_id_hash_check WHERE probe = event_id_hash('recs_pipeline'));
DELETE FROM event_id_hash_check WHERE probe <> event_id_hash('recs_pipeline');
INSERT INTO event_id_hash_check
SELECT event_id_hash('recs_pipeline') WHERE NOT EXISTS (SELECT 1 FROM event_id_hash_check);

-- Every version of every catalog row; the `items` view is the latest per item.
CREATE TABLE IF NOT EXISTS item_versions (
    item_id     VARCHAR NOT NULL,
    category_id VARCHAR NOT NULL,
    price       DOUBLE,
    available   BOOLEAN NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    file_hash   VARCHAR NOT NULL,
    ingested_at TIMESTAMPTZ NOT NULL
);

CREATE OR REPLACE VIEW items AS
SELECT item_id, category_id, price, available, updated_at
FROM item_versions
QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY updated_at DESC, ingested_at DESC) = 1;

-- The catalog as it was known strictly before `as_of` (point-in-time joins in feature SQL).
CREATE OR REPLACE MACRO catalog_as_of(as_of) AS TABLE
SELECT item_id, category_id, price, available, updated_at
FROM item_versions
WHERE updated_at < as_of
QUALIFY row_number() OVER (PARTITION BY item_id ORDER BY updated_at DESC, ingested_at DESC) = 1;

-- Served lists (the scoring service's exposure log), each request_id stored once, and their items
-- with positions (1 = top), scores and the candidate source credited with each.
CREATE TABLE IF NOT EXISTS exposures (
    request_id    VARCHAR NOT NULL,
    user_id       VARCHAR NOT NULL,
    ts            TIMESTAMPTZ NOT NULL,
    model_version VARCHAR NOT NULL,
    experiment    VARCHAR,
    variant       VARCHAR,
    n_items       INTEGER NOT NULL,
    file_hash     VARCHAR NOT NULL,
    ingested_at   TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS exposure_items (
    request_id    VARCHAR NOT NULL,
    position      INTEGER NOT NULL,
    item_id       VARCHAR NOT NULL,
    score         DOUBLE,
    source        VARCHAR
);
-- A shadow list (a challenger's, scored for a served request and never shown) names the served one.
ALTER TABLE exposures ADD COLUMN IF NOT EXISTS shadow_of VARCHAR;

-- One row per landed file content (sha256): loaded exactly once.
CREATE TABLE IF NOT EXISTS ingest_ledger (
    file_hash   VARCHAR PRIMARY KEY,
    file_name   VARCHAR NOT NULL,
    kind        VARCHAR NOT NULL,
    bytes       BIGINT NOT NULL,
    rows_read   BIGINT NOT NULL,
    loaded      BIGINT NOT NULL,
    quarantined BIGINT NOT NULL,
    duplicates  BIGINT NOT NULL,
    status      VARCHAR NOT NULL,      -- 'ingested' or 'rejected' (unreadable as a whole)
    error       VARCHAR,
    ingested_at TIMESTAMPTZ NOT NULL
);

-- Bad rows, never dropped: the raw row as JSON text and the reason.
CREATE TABLE IF NOT EXISTS quarantine (
    file_hash      VARCHAR NOT NULL,
    file_name      VARCHAR NOT NULL,
    kind           VARCHAR NOT NULL,
    row_no         BIGINT,
    reason         VARCHAR NOT NULL,
    raw            VARCHAR,
    quarantined_at TIMESTAMPTZ NOT NULL
);

-- Point-in-time feature snapshots: one set of rows per as-of time (event_timestamp).
CREATE TABLE IF NOT EXISTS user_features (
    user_id               VARCHAR NOT NULL,
    views_1h              BIGINT, views_24h BIGINT, views_7d BIGINT, views_30d BIGINT,
    carts_1h              BIGINT, carts_24h BIGINT, carts_7d BIGINT, carts_30d BIGINT,
    purchases_1h          BIGINT, purchases_24h BIGINT, purchases_7d BIGINT, purchases_30d BIGINT,
    favorites_30d         BIGINT,
    distinct_items_30d    BIGINT,
    sessions_30d          BIGINT,
    cart_rate_30d         DOUBLE,
    purchase_rate_30d     DOUBLE,
    seconds_since_last_event DOUBLE,
    top_category_id       VARCHAR,
    top_category_share    DOUBLE,
    avg_price_30d         DOUBLE,
    event_timestamp       TIMESTAMPTZ NOT NULL,
    created_timestamp     TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS item_features (
    item_id               VARCHAR NOT NULL,
    category_id           VARCHAR,
    price                 DOUBLE,
    available             BOOLEAN,
    views_1h              BIGINT, views_24h BIGINT, views_7d BIGINT, views_30d BIGINT,
    carts_24h             BIGINT, carts_7d BIGINT, carts_30d BIGINT,
    purchases_24h         BIGINT, purchases_7d BIGINT, purchases_30d BIGINT,
    distinct_users_7d     BIGINT,
    cart_rate_30d         DOUBLE,
    purchase_rate_30d     DOUBLE,
    trend_24h_vs_7d       DOUBLE,
    seconds_since_last_event DOUBLE,
    event_timestamp       TIMESTAMPTZ NOT NULL,
    created_timestamp     TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS user_category_features (
    user_id               VARCHAR NOT NULL,
    category_id           VARCHAR NOT NULL,
    affinity_30d          DOUBLE,
    affinity_share_30d    DOUBLE,
    events_30d            BIGINT,
    purchases_30d         BIGINT,
    hides_30d             BIGINT,
    event_timestamp       TIMESTAMPTZ NOT NULL,
    created_timestamp     TIMESTAMPTZ NOT NULL
);
-- Added with hide events: older warehouse files gain the column in place (NULL in older snapshots).
ALTER TABLE user_category_features ADD COLUMN IF NOT EXISTS hides_30d BIGINT;

-- Weighted, recency-decayed user x item interactions for ALS, as of event_timestamp.
CREATE TABLE IF NOT EXISTS interactions (
    user_id               VARCHAR NOT NULL,
    item_id               VARCHAR NOT NULL,
    weight                DOUBLE NOT NULL,
    views                 BIGINT, carts BIGINT, purchases BIGINT, favorites BIGINT,
    last_ts               TIMESTAMPTZ NOT NULL,
    event_timestamp       TIMESTAMPTZ NOT NULL,
    created_timestamp     TIMESTAMPTZ NOT NULL,
    last_purchase_ts      TIMESTAMPTZ
);
-- Added after the first release: older warehouse files gain the column in place.
ALTER TABLE interactions ADD COLUMN IF NOT EXISTS last_purchase_ts TIMESTAMPTZ;

-- What the scoring service needs of a user in one online read: the recent item history (for
-- history features, the purchased filter and ALS fold-in) and the category affinities, as arrays
-- aligned by position. Built from the interactions and user_category_features snapshots.
CREATE TABLE IF NOT EXISTS user_profile (
    user_id               VARCHAR NOT NULL,
    hist_item_ids         VARCHAR[],
    hist_weights          DOUBLE[],
    hist_views            BIGINT[],
    hist_carts            BIGINT[],
    hist_purchases        BIGINT[],
    hist_last_unix        DOUBLE[],
    hist_last_purchase_unix DOUBLE[],
    cat_ids               VARCHAR[],
    cat_affinity_30d      DOUBLE[],
    cat_affinity_share_30d DOUBLE[],
    cat_events_30d        BIGINT[],
    cat_purchases_30d     BIGINT[],
    cat_hides_30d         BIGINT[],
    hidden_item_ids       VARCHAR[],
    shown_item_ids        VARCHAR[],
    shown_counts          BIGINT[],
    as_of_unix            DOUBLE,
    event_timestamp       TIMESTAMPTZ NOT NULL,
    created_timestamp     TIMESTAMPTZ NOT NULL
);
ALTER TABLE user_profile ADD COLUMN IF NOT EXISTS as_of_unix DOUBLE;
ALTER TABLE user_profile ADD COLUMN IF NOT EXISTS cat_hides_30d BIGINT[];
ALTER TABLE user_profile ADD COLUMN IF NOT EXISTS hidden_item_ids VARCHAR[];
ALTER TABLE user_profile ADD COLUMN IF NOT EXISTS shown_item_ids VARCHAR[];
ALTER TABLE user_profile ADD COLUMN IF NOT EXISTS shown_counts BIGINT[];
