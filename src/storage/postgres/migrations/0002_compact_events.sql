-- LabLink schema v2 on PostgreSQL: a smaller history that every filter can
-- search fast, as SQLite's schema v3.
--
-- * `data` keeps only the fields that have no column (v1 repeated the kind,
--   the time and the ids in it): about half the row.
-- * The kind is a SMALLINT (2 bytes instead of ~15, in the row and in its
--   index), numbered as on SQLite: the numbers come from `kind_code` in
--   src/storage/event_row.rs, which fills `lablink_event_kinds` (a
--   temporary table) before this runs. An unknown kind stops the migration.
-- * No index on the time: `t` is the largest timestamp recorded up to the
--   event, so it never decreases with `seq`, and a time bound becomes a
--   `seq` bound found by bisecting the primary key
--   (`lablink_first_reaching`, about 25 lookups). `t_lag` (NULL unless the
--   clock went back, so it costs nothing otherwise) gives the event's own
--   time, `t - t_lag`; `meta.event_time_lag` is the largest lag ever
--   recorded, which bounds how far past `until` an earlier event can sit,
--   and `meta.event_time` the largest `t`, which the next event starts from.
--   A BRIN index on the time was the other candidate: smaller still, but
--   it only stays selective while rows sit in the table in time order,
--   which retention's deletes undo (new rows fill the freed pages).

-- Nobody writes or reads the history while it is copied (a replica still
-- on v1 would write rows that the copy misses and the DROP loses).
LOCK TABLE events IN ACCESS EXCLUSIVE MODE;

CREATE TABLE events_v2 (
    seq          BIGINT PRIMARY KEY,
    t            BIGINT NOT NULL,
    kind         SMALLINT NOT NULL,
    t_lag        BIGINT,
    equipment_id TEXT,
    session_id   TEXT,
    forced_by    TEXT,
    data         TEXT NOT NULL
);

-- `data` rebuilt key by key from the stored text, each value as written,
-- in its order. `json_each` refuses the escape \u0000 (it decodes every
-- string), so that is written \u0001z while the text is taken apart (and a
-- real \u0001 \u0001y), and put back after: an exact round trip.
INSERT INTO events_v2 (seq, t, kind, t_lag, equipment_id, session_id, forced_by, data)
SELECT e.seq, e.running, k.code, NULLIF(e.running - e.at, 0),
       e.equipment_id, e.session_id, e.forced_by,
       COALESCE((
           SELECT replace(replace(
                      '{' || string_agg(to_json(f.key)::text || ':' || f.value::text, ','
                                        ORDER BY f.n) || '}',
                      '\u0001z', '\u0000'), '\u0001y', '\u0001')
           FROM json_each(replace(replace(e.data, '\u0001', '\u0001y'),
                                  '\u0000', '\u0001z')::json)
                WITH ORDINALITY AS f(key, value, n)
           WHERE f.key NOT IN ('seq', 'event', 'timestamp', 'equipment_id',
                               'session_id', 'forced_by')
       ), '{}')
FROM (SELECT *, max(at) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) AS running
      FROM events) AS e
LEFT JOIN lablink_event_kinds AS k ON k.name = e.event;

DROP TABLE events;
ALTER TABLE events_v2 RENAME TO events;
ALTER INDEX events_v2_pkey RENAME TO events_pkey;

CREATE INDEX events_by_equipment ON events (equipment_id, seq);
CREATE INDEX events_by_session ON events (session_id, seq);
CREATE INDEX events_by_forced_by ON events (forced_by, seq) WHERE forced_by IS NOT NULL;
CREATE INDEX events_by_kind ON events (kind, seq);

INSERT INTO meta (key, value)
VALUES ('event_time', (SELECT COALESCE(max(t), 0) FROM events)),
       ('event_time_lag', (SELECT COALESCE(max(t_lag), 0) FROM events));

-- The first `seq` whose `t` reaches `at` (the last `seq` + 1 if none; 0 in
-- an empty history), by bisection over `seq` (numbers may have gaps: each
-- probe reads the first event at or after it). NULL for a NULL `at`.
CREATE FUNCTION lablink_first_reaching(at BIGINT) RETURNS BIGINT
LANGUAGE plpgsql STABLE STRICT AS $$
DECLARE
    lo BIGINT;
    hi BIGINT;
    mid BIGINT;
    probe BIGINT;
BEGIN
    lo := (SELECT min(seq) FROM events);
    hi := (SELECT max(seq) FROM events) + 1;
    IF lo IS NULL THEN
        RETURN 0;
    END IF;
    WHILE lo < hi LOOP
        mid := lo + (hi - lo) / 2;
        probe := (SELECT t FROM events WHERE seq >= mid ORDER BY seq LIMIT 1);
        IF probe IS NULL OR probe >= at THEN
            hi := mid;
        ELSE
            lo := mid + 1;
        END IF;
    END LOOP;
    RETURN COALESCE((SELECT seq FROM events WHERE seq >= lo ORDER BY seq LIMIT 1), lo);
END
$$;
