-- LabLink schema v2: API tokens (stored only as SHA-256 hashes) and a
-- counter that changes with every token change, so running servers notice
-- revocations made by `lablink token revoke` in another process.

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    user_name  TEXT NOT NULL,
    role       TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('tokens_version', 0);
