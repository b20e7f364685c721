//! A unit of work's view of the SQLite connection: the `Tx` impl, with the
//! SQL of every read and write, the per-unit caches (sessions read,
//! participants loaded) and the floor under the stored deadlines. It runs
//! inside a transaction or savepoint that the store opened, and never
//! begins, commits or syncs one itself.

use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeSet;

use super::rows::{EVENT_COLUMNS, EventRow, corrupt, millis, unavailable};
use super::writer::EventBuffer;
use crate::domain::rollup::UsageBucket;
use crate::domain::{EquipmentId, EquipmentLocks, Event, Session, SessionId, Timestamp};
use crate::storage::{
    Due, EventQuery, Prune, StoreError, TokenRecord, Tx, UsageCursor, UsageQuery,
};

/// The earliest deadline stored, as far as the store knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum DeadlineFloor {
    At(Timestamp),
    /// Nothing has a deadline.
    Never,
}

/// A unit of work's view of the connection, inside a transaction (or a
/// savepoint of a batch) that the store opened.
pub(super) struct SqliteTx<'a> {
    pub(super) tx: &'a Connection,
    deadline_floor: &'a mut Option<DeadlineFloor>,
    /// Where a batched unit's events wait for its savepoint's release;
    /// `None`: inserted at once (a read, which SQLite refuses to write).
    pub(super) events: Option<&'a mut EventBuffer>,
    /// Sessions this unit read or wrote (a lock change checks the same
    /// sessions' liveness more than once).
    sessions: std::collections::HashMap<String, Option<Session>>,
    /// The participants of each equipment as this unit loaded it, so saving
    /// can update the participant index without reading it back.
    loaded: std::collections::HashMap<String, BTreeSet<String>>,
}

impl<'a> SqliteTx<'a> {
    pub(super) fn new(tx: &'a Connection, deadline_floor: &'a mut Option<DeadlineFloor>) -> Self {
        Self {
            tx,
            deadline_floor,
            events: None,
            sessions: Default::default(),
            loaded: Default::default(),
        }
    }
}

impl SqliteTx<'_> {
    /// Something may now be due at `deadline`.
    fn lower_deadline_floor(&mut self, deadline: Option<Timestamp>) {
        if let (Some(floor), Some(at)) = (self.deadline_floor.as_mut(), deadline) {
            *floor = (*floor).min(DeadlineFloor::At(at));
        }
    }
}

impl Tx for SqliteTx<'_> {
    fn session(&mut self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        if let Some(known) = self.sessions.get(id.as_str()) {
            return Ok(known.clone());
        }
        let found: Option<Session> =
            self.row("SELECT data FROM sessions WHERE id = ?1", id.as_str())?;
        self.sessions.insert(id.to_string(), found.clone());
        Ok(found)
    }

    fn sessions(&mut self) -> Result<Vec<Session>, StoreError> {
        self.rows("SELECT data FROM sessions")
    }

    fn sessions_page(
        &mut self,
        after: Option<&SessionId>,
        limit: usize,
    ) -> Result<Vec<Session>, StoreError> {
        // The primary key orders the page: no scan past it.
        let mut stmt = self
            .tx
            .prepare_cached("SELECT data FROM sessions WHERE id > ?1 ORDER BY id LIMIT ?2")
            .map_err(unavailable)?;
        let rows = stmt
            .query_map(
                params![after.map_or("", |a| a.as_str()), limit as i64],
                |r| r.get::<_, String>(0),
            )
            .map_err(unavailable)?;
        rows.map(|row| serde_json::from_str(&row.map_err(unavailable)?).map_err(corrupt))
            .collect()
    }

    fn save_session(&mut self, session: &Session) -> Result<(), StoreError> {
        let data = serde_json::to_string(session).map_err(corrupt)?;
        self.tx
            .prepare_cached(
                "INSERT INTO sessions (id, deadline, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET deadline = excluded.deadline, data = excluded.data",
            )
            .and_then(|mut s| {
                s.execute(params![
                    session.id.as_str(),
                    millis(session.deadline()),
                    data
                ])
            })
            .map_err(unavailable)?;
        self.lower_deadline_floor(session.deadline());
        self.sessions
            .insert(session.id.to_string(), Some(session.clone()));
        Ok(())
    }

    fn delete_session(&mut self, id: &SessionId) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("DELETE FROM sessions WHERE id = ?1")
            .and_then(|mut s| s.execute([id.as_str()]))
            .map_err(unavailable)?;
        self.sessions.insert(id.to_string(), None);
        Ok(())
    }

    fn equipment_locks(&mut self, id: &EquipmentId) -> Result<EquipmentLocks, StoreError> {
        let found = self.row(
            "SELECT data FROM equipment_locks WHERE equipment_id = ?1",
            id.as_str(),
        )?;
        let locks = found.unwrap_or_else(|| EquipmentLocks::new(id.clone()));
        let participants = locks.participants().map(|s| s.to_string()).collect();
        self.loaded.insert(id.to_string(), participants);
        Ok(locks)
    }

    fn save_equipment_locks(&mut self, locks: &EquipmentLocks) -> Result<(), StoreError> {
        let id = locks.equipment_id.as_str();
        let data = serde_json::to_string(locks).map_err(corrupt)?;
        self.tx
            .prepare_cached(
                "INSERT INTO equipment_locks (equipment_id, deadline, busy, data) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (equipment_id) DO UPDATE
                 SET deadline = excluded.deadline, busy = excluded.busy, data = excluded.data",
            )
            .and_then(|mut s| s.execute(params![id, millis(locks.next_deadline()), !locks.is_idle(), data]))
            .map_err(unavailable)?;
        self.lower_deadline_floor(locks.next_deadline());
        // Keep the participant index in step with the new state: only the
        // sessions that came or went are written.
        let after: BTreeSet<String> = locks.participants().map(|s| s.to_string()).collect();
        let before = match self.loaded.insert(id.to_string(), after.clone()) {
            Some(loaded) => loaded,
            None => {
                let mut stmt = self
                    .tx
                    .prepare_cached("SELECT session_id FROM participants WHERE equipment_id = ?1")
                    .map_err(unavailable)?;
                let rows = stmt.query_map([id], |r| r.get(0)).map_err(unavailable)?;
                rows.collect::<Result<_, _>>().map_err(unavailable)?
            }
        };
        for gone in before.difference(&after) {
            self.tx
                .prepare_cached(
                    "DELETE FROM participants WHERE session_id = ?1 AND equipment_id = ?2",
                )
                .and_then(|mut s| s.execute([gone.as_str(), id]))
                .map_err(unavailable)?;
        }
        for new in after.difference(&before) {
            self.tx
                .prepare_cached(
                    "INSERT INTO participants (session_id, equipment_id) VALUES (?1, ?2)",
                )
                .and_then(|mut s| s.execute([new.as_str(), id]))
                .map_err(unavailable)?;
        }
        Ok(())
    }

    fn busy_equipment(&mut self) -> Result<Vec<EquipmentLocks>, StoreError> {
        self.rows("SELECT data FROM equipment_locks WHERE busy = 1")
    }

    fn equipment_of_session(&mut self, id: &SessionId) -> Result<Vec<EquipmentId>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached(
                "SELECT equipment_id FROM participants WHERE session_id = ?1 ORDER BY equipment_id",
            )
            .map_err(unavailable)?;
        let rows = stmt
            .query_map([id.as_str()], |r| r.get::<_, String>(0))
            .map_err(unavailable)?;
        rows.map(|row| {
            EquipmentId::parse(&row.map_err(unavailable)?)
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .collect()
    }

    fn due(&mut self, now: Timestamp, max: usize) -> Result<Vec<Due>, StoreError> {
        if self
            .deadline_floor
            .is_some_and(|floor| floor > DeadlineFloor::At(now))
        {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .tx
            .prepare_cached(
                // The explicit `IS NOT NULL` matches the partial indexes
                // without looking at `?1` (the plan must not depend on it:
                // see QPSG in `open`).
                "SELECT kind, id FROM (
                    SELECT 0 AS kind, id, deadline FROM sessions
                    WHERE deadline IS NOT NULL AND deadline <= ?1
                    UNION ALL
                    SELECT 1, equipment_id, deadline FROM equipment_locks
                    WHERE deadline IS NOT NULL AND deadline <= ?1
                 ) ORDER BY deadline LIMIT ?2",
            )
            .map_err(unavailable)?;
        let rows = stmt
            .query_map(params![now.as_millis(), max as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(unavailable)?;
        let bad_id = |e: crate::domain::DomainError| StoreError::Corrupt(e.to_string());
        let due: Vec<Due> = rows
            .map(|row| {
                let (kind, id) = row.map_err(unavailable)?;
                Ok(if kind == 0 {
                    Due::Session(SessionId::parse(&id).map_err(bad_id)?)
                } else {
                    Due::Equipment(EquipmentId::parse(&id).map_err(bad_id)?)
                })
            })
            .collect::<Result<_, StoreError>>()?;
        drop(stmt);
        if due.is_empty() {
            // Nothing is due before the earliest deadline left.
            *self.deadline_floor = Some(match self.next_deadline()? {
                Some(at) => DeadlineFloor::At(at),
                None => DeadlineFloor::Never,
            });
        }
        Ok(due)
    }

    fn next_deadline(&mut self) -> Result<Option<Timestamp>, StoreError> {
        let next: Option<i64> = self
            .tx
            .prepare_cached(
                // `IS NOT NULL` lets SQLite answer each MIN from the partial
                // deadline index instead of scanning the table.
                "SELECT MIN(d) FROM (
                    SELECT MIN(deadline) AS d FROM sessions WHERE deadline IS NOT NULL
                    UNION ALL
                    SELECT MIN(deadline) FROM equipment_locks WHERE deadline IS NOT NULL
                 )",
            )
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(unavailable)?;
        Ok(next.map(Timestamp::from_millis))
    }

    fn record_events(&mut self, events: &mut [Event]) -> Result<(), StoreError> {
        let Some(buffer) = self.events.as_deref_mut() else {
            for event in events {
                let t = last_t(self.tx)?;
                let seq = EventRow::new(event, None, t)?.insert(self.tx)?;
                event.seq = Some(seq as u64);
            }
            return Ok(());
        };
        let mut next = match buffer.next_seq {
            Some(next) => next,
            None => {
                // AUTOINCREMENT's counter: never reused, even after pruning.
                self.tx
                    .prepare_cached(
                        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
                    )
                    .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
                    .map_err(unavailable)?
                    + 1
            }
        };
        let mut t = match buffer.last_t {
            Some(t) => t,
            None => last_t(self.tx)?,
        };
        for event in events {
            let row = EventRow::new(event, Some(next), t)?;
            t = row.t;
            buffer.rows.push(row);
            event.seq = Some(next as u64);
            buffer.recorded.push(event.clone());
            next += 1;
        }
        buffer.next_seq = Some(next);
        buffer.last_t = Some(t);
        Ok(())
    }

    fn equipment_events(
        &mut self,
        id: &EquipmentId,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let mut events = self.events(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE equipment_id = ?1 ORDER BY seq DESC LIMIT ?2"
            ),
            &[&id.as_str(), &(limit as i64)],
        )?;
        events.reverse();
        Ok(events)
    }

    fn session_events(&mut self, id: &SessionId, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut events = self.events(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE seq IN (
                    SELECT seq FROM events WHERE session_id = ?1
                    UNION SELECT seq FROM events WHERE forced_by = ?1
                 ) ORDER BY seq DESC LIMIT ?2"
            ),
            &[&id.as_str(), &(limit as i64)],
        )?;
        events.reverse();
        Ok(events)
    }

    fn last_event_seq(&mut self) -> Result<u64, StoreError> {
        self.tx
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
            .map(|v| v as u64)
            .map_err(unavailable)
    }

    fn query_events(&mut self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        super::search::query_events(self, query)
    }

    fn prune_events(&mut self, prune: &Prune) -> Result<usize, StoreError> {
        let last = self.last_event_seq()?;
        // The oldest events, in order: those that go are a prefix of them
        // (`t` never decreases, so an event past the first kept one is
        // not older than `before` unless the clock went back).
        let mut stmt = self
            .tx
            .prepare_cached("SELECT seq, t FROM events ORDER BY seq LIMIT ?1")
            .map_err(unavailable)?;
        let oldest = stmt
            .query_map([prune.max as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(unavailable)?;
        let mut upto = None;
        for row in oldest {
            let (seq, t) = row.map_err(unavailable)?;
            if !prune.drops(seq as u64, Timestamp::from_millis(t), last) {
                break;
            }
            upto = Some(seq);
        }
        drop(stmt);
        let Some(upto) = upto else {
            return Ok(0);
        };
        self.tx
            .prepare_cached("DELETE FROM events WHERE seq <= ?1")
            .and_then(|mut s| s.execute([upto]))
            .map_err(unavailable)
    }

    fn usage_cursor(&mut self) -> Result<Option<UsageCursor>, StoreError> {
        super::usage::cursor(self.tx)
    }

    fn advance_usage_cursor(
        &mut self,
        expected: Option<&UsageCursor>,
        next: &UsageCursor,
    ) -> Result<bool, StoreError> {
        super::usage::advance(self.tx, expected, next)
    }

    fn put_usage(&mut self, buckets: &[UsageBucket]) -> Result<(), StoreError> {
        super::usage::put(self.tx, buckets)
    }

    fn usage_buckets(&mut self, query: &UsageQuery) -> Result<Vec<UsageBucket>, StoreError> {
        super::usage::buckets(self.tx, query)
    }

    fn put_usage_checkpoint(&mut self, at: Timestamp, state: &str) -> Result<(), StoreError> {
        super::usage::put_checkpoint(self.tx, at, state)
    }

    fn usage_checkpoint(&mut self, at: Timestamp) -> Result<Option<String>, StoreError> {
        super::usage::checkpoint(self.tx, at)
    }

    fn save_token(&mut self, token: &TokenRecord) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO tokens (id, user_name, role, hash, created_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    token.id,
                    token.user,
                    token.role.as_str(),
                    token.hash,
                    token.created_at.as_millis(),
                    millis(token.revoked_at),
                ])
            })
            .map_err(unavailable)?;
        self.bump_tokens_version()
    }

    fn token_by_hash(&mut self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self
            .token_rows("SELECT id, user_name, role, hash, created_at, revoked_at FROM tokens WHERE hash = ?1", &[&hash])?
            .pop())
    }

    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        self.token_rows(
            "SELECT id, user_name, role, hash, created_at, revoked_at FROM tokens ORDER BY created_at, id",
            &[],
        )
    }

    fn revoke_token(&mut self, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        let changed = self
            .tx
            .prepare_cached(
                "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            )
            .and_then(|mut s| s.execute(params![id, at.as_millis()]))
            .map_err(unavailable)?;
        if changed > 0 {
            self.bump_tokens_version()?;
        }
        Ok(changed > 0)
    }

    fn tokens_version(&mut self) -> Result<u64, StoreError> {
        self.tx
            .prepare_cached("SELECT value FROM meta WHERE key = 'tokens_version'")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
            .map(|v| v as u64)
            .map_err(unavailable)
    }
}

impl SqliteTx<'_> {
    fn bump_tokens_version(&self) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("UPDATE meta SET value = value + 1 WHERE key = 'tokens_version'")
            .and_then(|mut s| s.execute([]))
            .map_err(unavailable)?;
        Ok(())
    }
}

/// The history's time order key so far: that of the newest event (the
/// smallest time there is when nothing is recorded).
fn last_t(conn: &Connection) -> Result<i64, StoreError> {
    conn.prepare_cached("SELECT t FROM events ORDER BY seq DESC LIMIT 1")
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)).optional())
        .map(|t| t.unwrap_or(i64::MIN))
        .map_err(unavailable)
}
