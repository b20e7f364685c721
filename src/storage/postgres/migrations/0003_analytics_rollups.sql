-- LabLink schema on PostgreSQL: running totals of the lock analytics
-- (rollups), as SQLite's migration 0004.
--
-- * `lock_usage`: the figures of an hour (span_ms 3600000) or a UTC day
--   (86400000) per instrument and user; '' stands for all of them (an
--   instrument's total, a user's total). A new dimension (lock groups)
--   would be one more key column. The key leads with the instrument;
--   `lock_usage_by_user` serves one user, or the instruments' totals ('').
-- * `lock_usage_checkpoints`: what was open (grants, queue places) at an
--   hour boundary, for folding part of an hour from the events.
-- * `lock_usage_cursor`: how far the rollups go (one row); replicas move it
--   with a compare-and-set, so only one sums each stretch.

CREATE TABLE lock_usage (
    span_ms           BIGINT NOT NULL,
    equipment_id      TEXT COLLATE "C" NOT NULL,
    start_ms          BIGINT NOT NULL,
    user_name         TEXT COLLATE "C" NOT NULL,
    exclusive_ms      BIGINT NOT NULL,
    observer_ms       BIGINT NOT NULL,
    busy_ms           BIGINT NOT NULL,
    grants            BIGINT NOT NULL,
    grants_from_queue BIGINT NOT NULL,
    forced_releases   BIGINT NOT NULL,
    expiries          BIGINT NOT NULL,
    wait_max_ms       BIGINT,
    waits             TEXT NOT NULL,
    locked            BOOLEAN NOT NULL,
    PRIMARY KEY (span_ms, equipment_id, start_ms, user_name)
);

CREATE INDEX lock_usage_by_user ON lock_usage (span_ms, user_name, start_ms);

CREATE TABLE lock_usage_checkpoints (
    at_ms BIGINT PRIMARY KEY,
    state TEXT NOT NULL
);

CREATE TABLE lock_usage_cursor (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq     BIGINT NOT NULL,
    watermark_ms BIGINT NOT NULL,
    state        TEXT NOT NULL
);
