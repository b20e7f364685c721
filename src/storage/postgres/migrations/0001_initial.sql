-- LabLink schema v1 on PostgreSQL: the SQLite schema's tables (sessions and
-- each equipment's lock state stored whole as JSON of the domain types, with
-- the columns the indexes need; the participant index; the history; tokens),
-- plus `meta`, whose `event_seq` row every write takes first (FOR UPDATE):
-- it numbers the history and puts the writes of all replicas in one order.

CREATE TABLE sessions (
    id       TEXT COLLATE "C" PRIMARY KEY, -- ordered byte by byte, as on SQLite
    deadline BIGINT,             -- ms since the epoch; NULL = no timeout
    data     TEXT NOT NULL
);
CREATE INDEX sessions_by_deadline ON sessions (deadline) WHERE deadline IS NOT NULL;

CREATE TABLE equipment_locks (
    equipment_id TEXT COLLATE "C" PRIMARY KEY,
    deadline     BIGINT,         -- the earliest lock deadline; NULL = none
    busy         BOOLEAN NOT NULL, -- while someone holds or waits
    data         TEXT NOT NULL
);
CREATE INDEX equipment_by_deadline ON equipment_locks (deadline) WHERE deadline IS NOT NULL;
CREATE INDEX equipment_busy ON equipment_locks (busy) WHERE busy;

-- Which equipment each session holds or waits for.
CREATE TABLE participants (
    session_id   TEXT COLLATE "C" NOT NULL,
    equipment_id TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (session_id, equipment_id)
);
CREATE INDEX participants_by_equipment ON participants (equipment_id);

CREATE TABLE events (
    seq          BIGINT PRIMARY KEY,
    at           BIGINT NOT NULL,
    event        TEXT NOT NULL,
    equipment_id TEXT,
    session_id   TEXT,
    forced_by    TEXT,
    data         TEXT NOT NULL
);
CREATE INDEX events_by_equipment ON events (equipment_id, seq);
CREATE INDEX events_by_session ON events (session_id, seq);
CREATE INDEX events_by_forced_by ON events (forced_by, seq) WHERE forced_by IS NOT NULL;
CREATE INDEX events_by_kind ON events (event, seq);
CREATE INDEX events_by_time ON events (at);

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    user_name  TEXT NOT NULL,
    role       TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

-- Which rows each write batch changed (numbered by `meta.writes`): a
-- writer that finds other replicas wrote since its own last batch forgets
-- only those rows from its cache. Old entries are pruned.
CREATE TABLE write_journal (
    writes    BIGINT PRIMARY KEY,
    sessions  TEXT[] NOT NULL,
    equipment TEXT[] NOT NULL
);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
-- event_seq: the last `seq` handed out (never reused, even after pruning).
-- writes: counts committed write batches; a writer whose own last batch
-- is the last one knows its cached rows are still what is stored.
-- tokens_version: changes with every token change.
INSERT INTO meta (key, value) VALUES ('event_seq', 0), ('writes', 0), ('tokens_version', 0);
