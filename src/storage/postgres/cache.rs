//! The writer's working set: the rows its batches read, kept between
//! batches, and the writes of the batch under way, sent to PostgreSQL in a
//! few statements rather than one round trip each.
//!
//! Every batch locks `meta` first (see `writer`), so batches of all
//! replicas run one at a time; `meta.writes` counts them. When the last
//! batch committed was this writer's own, nothing has changed under its
//! cache and a unit of work reads sessions and lock states from memory;
//! otherwise the cache is dropped and rows are read again as needed. With
//! one server, a lock cycle costs no round trip of its own; the batch
//! costs a handful.
//!
//! A unit's writes go to memory first. Anything that must be answered by
//! SQL (a scan, the history, tokens, deadlines when they may be due) first
//! sends what is pending (a barrier), so SQL always sees the batch's
//! writes. A failing unit is undone in memory; if a barrier already sent
//! some of its writes, a savepoint taken just before that undoes them in
//! the database too.

use postgres::types::ToSql;
use std::collections::{BTreeSet, HashMap};

use super::conn::{Conn, corrupt};
use super::tx::{EventBuffer, PgTx};
use crate::domain::rollup::UsageBucket;
use crate::domain::{EquipmentId, EquipmentLocks, Event, Session, SessionId, Timestamp};
use crate::storage::event_row::{compact_data, kind_code};
use crate::storage::{
    Due, EventQuery, Prune, StoreError, TokenRecord, Tx, UsageCursor, UsageQuery,
};

/// The writer's rows, as of `valid_for`.
#[derive(Default)]
pub(super) struct Cache {
    /// The `meta.writes` value the cache reflects; `None`: nothing known.
    pub(super) valid_for: Option<i64>,
    sessions: HashMap<String, Option<Session>>,
    locks: HashMap<String, EquipmentLocks>,
    /// Each equipment's participants as the database's index has them.
    indexed: HashMap<String, BTreeSet<String>>,
    /// No deadline stored is earlier than this; `None`: not known.
    floor: Option<Floor>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Floor {
    At(Timestamp),
    Never,
}

impl Cache {
    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }

    /// Forgets rows another replica changed (its deadlines too).
    pub(super) fn forget(&mut self, sessions: &[String], equipment: &[String]) {
        for id in sessions {
            self.sessions.remove(id);
        }
        for id in equipment {
            self.locks.remove(id);
            self.indexed.remove(id);
        }
        self.floor = None;
    }

    fn lower_floor(&mut self, deadline: Option<Timestamp>) {
        if let (Some(floor), Some(at)) = (self.floor.as_mut(), deadline) {
            *floor = (*floor).min(Floor::At(at));
        }
    }
}

/// Writes not yet sent: the latest value of each row (`None`: deleted).
#[derive(Default)]
pub(super) struct Pending {
    sessions: HashMap<String, Option<Session>>,
    locks: HashMap<String, EquipmentLocks>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.locks.is_empty()
    }

    fn absorb(&mut self, later: Pending) {
        self.sessions.extend(later.sessions);
        self.locks.extend(later.locks);
    }
}

/// The batch under way: what earlier units left to send, and its events.
pub(super) struct BatchState {
    pub(super) pending: Pending,
    pub(super) events: EventBuffer,
    /// How many of `events` are in the database already.
    flushed_events: usize,
    /// The rows this batch sent, for the write journal.
    touched: Touched,
}

/// Rows a batch changed.
#[derive(Default)]
struct Touched {
    sessions: BTreeSet<String>,
    equipment: BTreeSet<String>,
}

impl BatchState {
    pub(super) fn new(last_seq: i64) -> Self {
        Self {
            pending: Pending::default(),
            events: EventBuffer {
                last_seq,
                events: Vec::new(),
            },
            flushed_events: 0,
            touched: Touched::default(),
        }
    }

    /// Sends everything still pending, and the journal entry `writes`
    /// saying which rows the batch changed: the end of the batch.
    pub(super) fn flush(
        &mut self,
        conn: &mut Conn,
        cache: &mut Cache,
        writes: i64,
    ) -> Result<(), StoreError> {
        let upto = self.events.events.len();
        let pending = std::mem::take(&mut self.pending);
        let events = &self.events.events[self.flushed_events..upto];
        send(
            conn,
            cache,
            pending,
            events,
            &mut self.touched,
            Some(writes),
        )?;
        self.flushed_events = upto;
        Ok(())
    }
}

/// One unit of work's `Tx` in a batch.
pub(super) struct UnitTx<'a> {
    conn: &'a mut Conn,
    cache: &'a mut Cache,
    batch: &'a mut BatchState,
    pending: Pending,
    /// Each row's cached value before this unit first changed it (`None`:
    /// it was not cached).
    undo_sessions: HashMap<String, Option<Option<Session>>>,
    undo_locks: HashMap<String, Option<EquipmentLocks>>,
    savepointed: bool,
    events_mark: usize,
    seq_mark: i64,
}

impl<'a> UnitTx<'a> {
    pub(super) fn new(conn: &'a mut Conn, cache: &'a mut Cache, batch: &'a mut BatchState) -> Self {
        let (events_mark, seq_mark) = (batch.events.events.len(), batch.events.last_seq);
        Self {
            conn,
            cache,
            batch,
            pending: Pending::default(),
            undo_sessions: HashMap::new(),
            undo_locks: HashMap::new(),
            savepointed: false,
            events_mark,
            seq_mark,
        }
    }

    /// The unit succeeded: its writes join the batch's.
    pub(super) fn keep(self) -> Result<(), StoreError> {
        if self.savepointed {
            self.conn.batch("RELEASE SAVEPOINT work")?;
        }
        self.batch.pending.absorb(self.pending);
        Ok(())
    }

    /// The unit failed: nothing of it stays, in memory or the database.
    pub(super) fn undo(self) -> Result<(), StoreError> {
        let events = &mut self.batch.events;
        events.events.truncate(self.events_mark);
        events.last_seq = self.seq_mark;
        self.cache.floor = None;
        if self.savepointed {
            self.batch.flushed_events = self.batch.flushed_events.min(self.events_mark);
            // Simplest sound state: read rows again (this is rare).
            self.cache.clear();
            return self
                .conn
                .batch("ROLLBACK TO SAVEPOINT work; RELEASE SAVEPOINT work");
        }
        for (id, before) in self.undo_sessions {
            match before {
                Some(value) => self.cache.sessions.insert(id, value),
                None => self.cache.sessions.remove(&id),
            };
        }
        for (id, before) in self.undo_locks {
            match before {
                Some(value) => self.cache.locks.insert(id, value),
                None => self.cache.locks.remove(&id),
            };
        }
        Ok(())
    }

    /// Makes the database show every write so far, so SQL can answer.
    fn barrier(&mut self) -> Result<(), StoreError> {
        if !self.savepointed {
            // Earlier units' writes go before the savepoint: undoing this
            // unit must not undo them.
            let upto = self.events_mark.max(self.batch.flushed_events);
            let earlier = std::mem::take(&mut self.batch.pending);
            let events = &self.batch.events.events[self.batch.flushed_events..upto];
            send(
                self.conn,
                self.cache,
                earlier,
                events,
                &mut self.batch.touched,
                None,
            )?;
            self.batch.flushed_events = upto;
        }
        let upto = self.batch.events.events.len();
        if self.pending.is_empty() && self.batch.flushed_events == upto {
            return Ok(());
        }
        if !self.savepointed {
            self.conn.batch("SAVEPOINT work")?;
            self.savepointed = true;
        }
        let events = &self.batch.events.events[self.batch.flushed_events..upto];
        let unit = std::mem::take(&mut self.pending);
        send(
            self.conn,
            self.cache,
            unit,
            events,
            &mut self.batch.touched,
            None,
        )?;
        self.batch.flushed_events = upto;
        Ok(())
    }

    /// The database, for what only SQL answers (after a barrier).
    fn sql(&mut self) -> Result<PgTx<'_>, StoreError> {
        self.barrier()?;
        Ok(PgTx::new(self.conn))
    }

    fn remember_session(&mut self, id: &str) {
        if !self.undo_sessions.contains_key(id) {
            let before = self.cache.sessions.get(id).cloned();
            self.undo_sessions.insert(id.to_string(), before);
        }
    }

    fn remember_locks(&mut self, id: &str) {
        if !self.undo_locks.contains_key(id) {
            let before = self.cache.locks.get(id).cloned();
            self.undo_locks.insert(id.to_string(), before);
        }
    }
}

impl Tx for UnitTx<'_> {
    fn session(&mut self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        if let Some(known) = self.cache.sessions.get(id.as_str()) {
            return Ok(known.clone());
        }
        let found = PgTx::new(self.conn).session(id)?;
        self.remember_session(id.as_str());
        self.cache.sessions.insert(id.to_string(), found.clone());
        Ok(found)
    }

    fn sessions(&mut self) -> Result<Vec<Session>, StoreError> {
        self.sql()?.sessions()
    }

    fn sessions_page(
        &mut self,
        after: Option<&SessionId>,
        limit: usize,
    ) -> Result<Vec<Session>, StoreError> {
        self.sql()?.sessions_page(after, limit)
    }

    fn save_session(&mut self, session: &Session) -> Result<(), StoreError> {
        let id = session.id.as_str();
        self.remember_session(id);
        self.cache
            .sessions
            .insert(id.to_string(), Some(session.clone()));
        self.pending
            .sessions
            .insert(id.to_string(), Some(session.clone()));
        self.cache.lower_floor(session.deadline());
        Ok(())
    }

    fn delete_session(&mut self, id: &SessionId) -> Result<(), StoreError> {
        self.remember_session(id.as_str());
        self.cache.sessions.insert(id.to_string(), None);
        self.pending.sessions.insert(id.to_string(), None);
        Ok(())
    }

    fn equipment_locks(&mut self, id: &EquipmentId) -> Result<EquipmentLocks, StoreError> {
        if let Some(known) = self.cache.locks.get(id.as_str()) {
            return Ok(known.clone());
        }
        let found = PgTx::new(self.conn).equipment_locks(id)?;
        self.remember_locks(id.as_str());
        self.cache.locks.insert(id.to_string(), found.clone());
        // As read, the index matches the stored state.
        self.cache
            .indexed
            .entry(id.to_string())
            .or_insert_with(|| found.participants().map(|s| s.to_string()).collect());
        Ok(found)
    }

    fn save_equipment_locks(&mut self, locks: &EquipmentLocks) -> Result<(), StoreError> {
        let id = locks.equipment_id.as_str();
        self.remember_locks(id);
        self.cache.locks.insert(id.to_string(), locks.clone());
        self.pending.locks.insert(id.to_string(), locks.clone());
        self.cache.lower_floor(locks.next_deadline());
        Ok(())
    }

    fn busy_equipment(&mut self) -> Result<Vec<EquipmentLocks>, StoreError> {
        self.sql()?.busy_equipment()
    }

    fn equipment_of_session(&mut self, id: &SessionId) -> Result<Vec<EquipmentId>, StoreError> {
        self.sql()?.equipment_of_session(id)
    }

    fn due(&mut self, now: Timestamp, max: usize) -> Result<Vec<Due>, StoreError> {
        if self.cache.floor.is_some_and(|floor| floor > Floor::At(now)) {
            return Ok(Vec::new());
        }
        let due = self.sql()?.due(now, max)?;
        if due.is_empty() {
            // Nothing is due before the earliest deadline left.
            let next = PgTx::new(self.conn).next_deadline()?;
            self.cache.floor = Some(next.map_or(Floor::Never, Floor::At));
        }
        Ok(due)
    }

    fn next_deadline(&mut self) -> Result<Option<Timestamp>, StoreError> {
        self.sql()?.next_deadline()
    }

    fn record_events(&mut self, events: &mut [Event]) -> Result<(), StoreError> {
        self.batch.events.record(events);
        Ok(())
    }

    fn equipment_events(
        &mut self,
        id: &EquipmentId,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.sql()?.equipment_events(id, limit)
    }

    fn session_events(&mut self, id: &SessionId, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.sql()?.session_events(id, limit)
    }

    fn query_events(&mut self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        self.sql()?.query_events(query)
    }

    fn last_event_seq(&mut self) -> Result<u64, StoreError> {
        self.sql()?.last_event_seq()
    }

    fn prune_events(&mut self, prune: &Prune) -> Result<usize, StoreError> {
        self.sql()?.prune_events(prune)
    }

    fn usage_cursor(&mut self) -> Result<Option<UsageCursor>, StoreError> {
        self.sql()?.usage_cursor()
    }

    fn advance_usage_cursor(
        &mut self,
        expected: Option<&UsageCursor>,
        next: &UsageCursor,
    ) -> Result<bool, StoreError> {
        self.sql()?.advance_usage_cursor(expected, next)
    }

    fn put_usage(&mut self, buckets: &[UsageBucket]) -> Result<(), StoreError> {
        self.sql()?.put_usage(buckets)
    }

    fn usage_buckets(&mut self, query: &UsageQuery) -> Result<Vec<UsageBucket>, StoreError> {
        self.sql()?.usage_buckets(query)
    }

    fn put_usage_checkpoint(&mut self, at: Timestamp, state: &str) -> Result<(), StoreError> {
        self.sql()?.put_usage_checkpoint(at, state)
    }

    fn usage_checkpoint(&mut self, at: Timestamp) -> Result<Option<String>, StoreError> {
        self.sql()?.usage_checkpoint(at)
    }

    fn save_token(&mut self, token: &TokenRecord) -> Result<(), StoreError> {
        self.sql()?.save_token(token)
    }

    fn token_by_hash(&mut self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.sql()?.token_by_hash(hash)
    }

    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        self.sql()?.tokens()
    }

    fn revoke_token(&mut self, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        self.sql()?.revoke_token(id, at)
    }

    fn tokens_version(&mut self) -> Result<u64, StoreError> {
        self.sql()?.tokens_version()
    }
}

fn millis(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::as_millis)
}

/// Sends `pending` and `events` in one statement (one round trip however
/// many rows: every table's rows go as arrays, each table's change one
/// sub-statement of a `WITH`), keeping the participant index in step. No
/// row is changed twice in it: `pending` holds one value per row, and a
/// participant either comes or goes.
fn send(
    conn: &mut Conn,
    cache: &mut Cache,
    pending: Pending,
    events: &[Event],
    touched: &mut Touched,
    journal: Option<i64>,
) -> Result<(), StoreError> {
    if pending.is_empty() && events.is_empty() && journal.is_none() {
        return Ok(());
    }
    touched.sessions.extend(pending.sessions.keys().cloned());
    touched.equipment.extend(pending.locks.keys().cloned());
    let mut sessions = Rows::default();
    let mut gone: Vec<String> = Vec::new();
    for (id, session) in pending.sessions {
        match session {
            Some(s) => {
                sessions.deadline.push(millis(s.deadline()));
                sessions
                    .data
                    .push(serde_json::to_string(&s).map_err(corrupt)?);
                sessions.id.push(id);
            }
            None => gone.push(id),
        }
    }
    let unknown: Vec<&str> = pending
        .locks
        .keys()
        .filter(|id| !cache.indexed.contains_key(*id))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        for row in conn.query(
            "SELECT equipment_id, session_id FROM participants WHERE equipment_id = ANY($1)",
            &[&unknown],
        )? {
            cache
                .indexed
                .entry(row.get(0))
                .or_default()
                .insert(row.get(1));
        }
        for id in unknown {
            cache.indexed.entry(id.to_string()).or_default();
        }
    }
    let mut locks = Rows::default();
    let mut busy: Vec<bool> = Vec::new();
    let (mut left_eq, mut left_session, mut came_eq, mut came_session) = (
        Vec::<String>::new(),
        Vec::<String>::new(),
        Vec::<String>::new(),
        Vec::<String>::new(),
    );
    for (id, state) in pending.locks {
        let now: BTreeSet<String> = state.participants().map(|s| s.to_string()).collect();
        let before = cache
            .indexed
            .insert(id.clone(), now.clone())
            .unwrap_or_default();
        for s in before.difference(&now) {
            left_eq.push(id.clone());
            left_session.push(s.clone());
        }
        for s in now.difference(&before) {
            came_eq.push(id.clone());
            came_session.push(s.clone());
        }
        locks.deadline.push(millis(state.next_deadline()));
        busy.push(!state.is_idle());
        locks
            .data
            .push(serde_json::to_string(&state).map_err(corrupt)?);
        locks.id.push(id);
    }
    let n = events.len();
    let (mut seq, mut at, mut kind) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut equipment, mut session, mut forced_by, mut data) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for event in events {
        seq.push(event.seq.map_or(0, |s| s as i64));
        at.push(event.timestamp.as_millis());
        kind.push(kind_code(event.event));
        equipment.push(event.equipment_id.as_ref().map(|e| e.to_string()));
        session.push(event.session_id.as_ref().map(|s| s.to_string()));
        forced_by.push(event.forced_by.as_ref().map(|s| s.to_string()));
        data.push(compact_data(event)?);
    }
    let journal_sessions: Vec<&str> = touched.sessions.iter().map(String::as_str).collect();
    let journal_equipment: Vec<&str> = touched.equipment.iter().map(String::as_str).collect();
    let params: [&(dyn ToSql + Sync); 22] = [
        &gone,
        &sessions.id,
        &sessions.deadline,
        &sessions.data,
        &locks.id,
        &locks.deadline,
        &busy,
        &locks.data,
        &left_eq,
        &left_session,
        &came_eq,
        &came_session,
        &seq,
        &at,
        &kind,
        &equipment,
        &session,
        &forced_by,
        &data,
        &journal,
        &journal_sessions,
        &journal_equipment,
    ];
    conn.execute(
        "WITH
         gone AS (DELETE FROM sessions WHERE id = ANY($1::text[])),
         kept AS (
            INSERT INTO sessions (id, deadline, data)
            SELECT * FROM unnest($2::text[], $3::bigint[], $4::text[])
            ON CONFLICT (id) DO UPDATE SET deadline = excluded.deadline, data = excluded.data),
         locks AS (
            INSERT INTO equipment_locks (equipment_id, deadline, busy, data)
            SELECT * FROM unnest($5::text[], $6::bigint[], $7::boolean[], $8::text[])
            ON CONFLICT (equipment_id) DO UPDATE
            SET deadline = excluded.deadline, busy = excluded.busy, data = excluded.data),
         went AS (
            DELETE FROM participants p USING unnest($9::text[], $10::text[]) AS g(e, s)
            WHERE p.equipment_id = g.e AND p.session_id = g.s),
         came AS (
            INSERT INTO participants (equipment_id, session_id)
            SELECT * FROM unnest($11::text[], $12::text[]) ON CONFLICT DO NOTHING),
         recorded AS (
            INSERT INTO events (seq, t, kind, t_lag, equipment_id, session_id, forced_by, data)
            SELECT seq, t, kind, NULLIF(t - at, 0), equipment_id, session_id, forced_by, data
            FROM (SELECT e.*, GREATEST(max(e.at) OVER (ORDER BY e.seq),
                                       (SELECT value FROM meta WHERE key = 'event_time')) AS t
                  FROM unnest($13::bigint[], $14::bigint[], $15::smallint[], $16::text[],
                              $17::text[], $18::text[], $19::text[])
                       AS e(seq, at, kind, equipment_id, session_id, forced_by, data)) AS e
            RETURNING t, t_lag),
         clock AS (
            UPDATE meta SET value = CASE key WHEN 'event_time' THEN r.t ELSE r.lag END
            FROM (SELECT max(t) AS t, COALESCE(max(t_lag), 0) AS lag FROM recorded) AS r
            WHERE (key = 'event_time' AND r.t > value) OR (key = 'event_time_lag' AND r.lag > value)),
         journal AS (
            INSERT INTO write_journal (writes, sessions, equipment)
            SELECT $20, $21, $22 WHERE $20::bigint IS NOT NULL)
         SELECT 1",
        &params,
    )?;
    Ok(())
}

/// A table's rows as columns.
#[derive(Default)]
struct Rows {
    id: Vec<String>,
    deadline: Vec<Option<i64>>,
    data: Vec<String>,
}
