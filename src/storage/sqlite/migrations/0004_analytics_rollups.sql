-- LabLink schema v4: running totals of the lock analytics (rollups).
--
-- * `lock_usage`: the figures of an hour (span_ms 3600000) or a UTC day
--   (86400000) per instrument and user; '' stands for all of them (an
--   instrument's total, a user's total). A new dimension (lock groups)
--   would be one more key column. The key leads with the instrument (one
--   instrument, or the users' totals); `lock_usage_by_user` serves one
--   user, or the instruments' totals ('').
-- * `lock_usage_checkpoints`: what was open (grants, queue places) at an
--   hour boundary, for folding part of an hour from the events.
-- * `lock_usage_cursor`: how far the rollups go (one row).

CREATE TABLE lock_usage (
    span_ms           INTEGER NOT NULL,
    equipment_id      TEXT NOT NULL,
    start_ms          INTEGER NOT NULL,
    user_name         TEXT NOT NULL,
    exclusive_ms      INTEGER NOT NULL,
    observer_ms       INTEGER NOT NULL,
    busy_ms           INTEGER NOT NULL,
    grants            INTEGER NOT NULL,
    grants_from_queue INTEGER NOT NULL,
    forced_releases   INTEGER NOT NULL,
    expiries          INTEGER NOT NULL,
    wait_max_ms       INTEGER,
    waits             TEXT NOT NULL,
    locked            INTEGER NOT NULL,
    PRIMARY KEY (span_ms, equipment_id, start_ms, user_name)
) WITHOUT ROWID;

CREATE INDEX lock_usage_by_user ON lock_usage (span_ms, user_name, start_ms);

CREATE TABLE lock_usage_checkpoints (
    at_ms INTEGER PRIMARY KEY,
    state TEXT NOT NULL
);

CREATE TABLE lock_usage_cursor (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq     INTEGER NOT NULL,
    watermark_ms INTEGER NOT NULL,
    state        TEXT NOT NULL
);
