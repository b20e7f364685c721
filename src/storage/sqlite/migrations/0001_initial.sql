-- LabLink schema v1. Sessions and each equipment's lock state are stored
-- whole (JSON of the domain types), with the columns the indexes need.

CREATE TABLE sessions (
    id       TEXT PRIMARY KEY,
    deadline INTEGER,            -- ms since the epoch; NULL = no timeout
    data     TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_by_deadline ON sessions (deadline) WHERE deadline IS NOT NULL;

CREATE TABLE equipment_locks (
    equipment_id TEXT PRIMARY KEY,
    deadline     INTEGER,        -- the earliest lock deadline; NULL = none
    busy         INTEGER NOT NULL, -- 1 while someone holds or waits
    data         TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX equipment_by_deadline ON equipment_locks (deadline) WHERE deadline IS NOT NULL;
CREATE INDEX equipment_busy ON equipment_locks (busy) WHERE busy = 1;

-- Which equipment each session holds or waits for.
CREATE TABLE participants (
    session_id   TEXT NOT NULL,
    equipment_id TEXT NOT NULL,
    PRIMARY KEY (session_id, equipment_id)
) WITHOUT ROWID;
CREATE INDEX participants_by_equipment ON participants (equipment_id);

CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    at           INTEGER NOT NULL,
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
