-- LabLink schema v3: a smaller history that every filter can search fast.
--
-- * `data` keeps only the fields that have no column (v1 repeated the kind,
--   the time and the ids in it): about half the row.
-- * The kind is a small number (1 byte instead of ~15, in the row and in
--   its index); the numbers are `kind_code` in rows.rs.
-- * No index on the time: `t` is the largest timestamp recorded up to the
--   event, so it never decreases with `seq`, and a time bound becomes a
--   `seq` bound found by bisecting the table (about 25 lookups). `t_lag`
--   (0 unless the clock went back) gives the event's own time, `t - t_lag`;
--   `meta.event_time_lag` is the largest lag ever recorded, which bounds
--   how far past `until` an earlier event can sit.

CREATE TABLE events_v3 (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    t            INTEGER NOT NULL,
    t_lag        INTEGER NOT NULL,
    kind         INTEGER NOT NULL,
    equipment_id TEXT,
    session_id   TEXT,
    forced_by    TEXT,
    data         TEXT NOT NULL
);

INSERT INTO events_v3 (seq, t, t_lag, kind, equipment_id, session_id, forced_by, data)
SELECT seq, max(at) OVER running, max(at) OVER running - at,
       CASE event
           WHEN 'lock_acquired' THEN 1
           WHEN 'lock_refreshed' THEN 2
           WHEN 'lock_released' THEN 3
           WHEN 'lock_force_released' THEN 4
           WHEN 'lock_expired' THEN 5
           WHEN 'observer_lock_acquired' THEN 6
           WHEN 'observer_lock_released' THEN 7
           WHEN 'observer_revoked' THEN 8
           WHEN 'queued' THEN 9
           WHEN 'dequeued' THEN 10
           WHEN 'queue_processed' THEN 11
           WHEN 'session_created' THEN 12
           WHEN 'session_ended' THEN 13
           WHEN 'session_expired' THEN 14
           WHEN 'queue_timeout' THEN 15
           WHEN 'maintenance_started' THEN 16
           WHEN 'maintenance_ended' THEN 17
           WHEN 'claim_expired' THEN 18
           WHEN 'queue_stepped_back' THEN 19
           WHEN 'queue_swapped' THEN 20
       END,
       equipment_id, session_id, forced_by,
       json_remove(data, '$.seq', '$.event', '$.timestamp', '$.equipment_id',
                   '$.session_id', '$.forced_by')
FROM events
WINDOW running AS (ORDER BY seq ROWS UNBOUNDED PRECEDING);

-- AUTOINCREMENT's counter carries over: numbers are never handed out twice.
INSERT INTO sqlite_sequence (name, seq)
SELECT 'events_v3', seq FROM sqlite_sequence WHERE name = 'events'
  AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'events_v3');
UPDATE sqlite_sequence
SET seq = max(seq, (SELECT seq FROM sqlite_sequence WHERE name = 'events'))
WHERE name = 'events_v3';

DROP TABLE events;
ALTER TABLE events_v3 RENAME TO events;

CREATE INDEX events_by_equipment ON events (equipment_id, seq);
CREATE INDEX events_by_session ON events (session_id, seq);
CREATE INDEX events_by_forced_by ON events (forced_by, seq) WHERE forced_by IS NOT NULL;
CREATE INDEX events_by_kind ON events (kind, seq);

INSERT INTO meta (key, value)
VALUES ('event_time_lag', (SELECT coalesce(max(t_lag), 0) FROM events));
