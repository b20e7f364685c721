//! A unit of work's view of a PostgreSQL connection: the `Tx` impl, with
//! the SQL of every read and write and the per-unit caches (sessions read,
//! participants loaded). It runs inside a transaction or savepoint that the
//! store opened, and never begins or commits one itself. It records no
//! events: a write's unit (`cache::UnitTx`) numbers them in its batch's
//! `EventBuffer`, and the writer inserts them with the batch.

use postgres::Row;
use postgres::types::{ToSql, Type};
use std::collections::{BTreeSet, HashMap};

use super::conn::{Conn, corrupt};
use crate::domain::rollup::UsageBucket;
use crate::domain::{EquipmentId, EquipmentLocks, Event, Role, Session, SessionId, Timestamp};
use crate::storage::event_row::{StoredEvent, kind_code};
use crate::storage::{
    Due, EventQuery, Prune, StoreError, TokenRecord, Tx, UsageCursor, UsageQuery,
};

/// A batch's recorded events, numbered, waiting to be inserted.
#[derive(Default)]
pub(super) struct EventBuffer {
    /// The last `seq` handed out (the batch read it under its lock).
    pub(super) last_seq: i64,
    pub(super) events: Vec<Event>,
}

impl EventBuffer {
    /// Numbers `events` after the last `seq` handed out and keeps them.
    pub(super) fn record(&mut self, events: &mut [Event]) {
        for event in events {
            self.last_seq += 1;
            event.seq = Some(self.last_seq as u64);
            self.events.push(event.clone());
        }
    }
}

pub(super) struct PgTx<'a> {
    pub(super) conn: &'a mut Conn,
    sessions: HashMap<String, Option<Session>>,
    /// The participants of each equipment as this unit loaded it, so saving
    /// can update the participant index without reading it back.
    loaded: HashMap<String, BTreeSet<String>>,
}

impl<'a> PgTx<'a> {
    pub(super) fn new(conn: &'a mut Conn) -> Self {
        Self {
            conn,
            sessions: HashMap::new(),
            loaded: HashMap::new(),
        }
    }
}

fn millis(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::as_millis)
}

fn decode<T: serde::de::DeserializeOwned>(row: &Row) -> Result<T, StoreError> {
    serde_json::from_str(row.get::<_, &str>(0)).map_err(corrupt)
}

/// The columns `events_of` decodes, in its order (schema v2: the event's
/// own time is `t - t_lag`).
const EVENT_COLUMNS: &str =
    "seq, t - COALESCE(t_lag, 0), kind, equipment_id, session_id, forced_by, data";

fn events_of(rows: Vec<Row>) -> Result<Vec<Event>, StoreError> {
    rows.iter()
        .map(|row| {
            StoredEvent {
                seq: row.get(0),
                at: row.get(1),
                kind: row.get::<_, i16>(2).into(),
                equipment_id: row.get(3),
                session_id: row.get(4),
                forced_by: row.get(5),
                data: row.get(6),
            }
            .decode()
        })
        .collect()
}

fn token_of(row: &Row) -> Result<TokenRecord, StoreError> {
    let role: &str = row.get(2);
    Ok(TokenRecord {
        id: row.get(0),
        user: row.get(1),
        role: Role::parse(role)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown role {role:?}")))?,
        hash: row.get(3),
        created_at: Timestamp::from_millis(row.get(4)),
        revoked_at: row.get::<_, Option<i64>>(5).map(Timestamp::from_millis),
    })
}

fn bad_id(e: crate::domain::DomainError) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl Tx for PgTx<'_> {
    fn session(&mut self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        if let Some(known) = self.sessions.get(id.as_str()) {
            return Ok(known.clone());
        }
        let found: Option<Session> = self
            .conn
            .query_opt("SELECT data FROM sessions WHERE id = $1", &[&id.as_str()])?
            .map(|row| decode(&row))
            .transpose()?;
        self.sessions.insert(id.to_string(), found.clone());
        Ok(found)
    }

    fn sessions(&mut self) -> Result<Vec<Session>, StoreError> {
        let rows = self.conn.query("SELECT data FROM sessions", &[])?;
        rows.iter().map(decode).collect()
    }

    fn sessions_page(
        &mut self,
        after: Option<&SessionId>,
        limit: usize,
    ) -> Result<Vec<Session>, StoreError> {
        let rows = self.conn.query(
            // The key is COLLATE "C": ids compare byte by byte, as on
            // SQLite, whatever the database's locale.
            "SELECT data FROM sessions WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after.map_or("", |a| a.as_str()), &(limit as i64)],
        )?;
        rows.iter().map(decode).collect()
    }

    fn save_session(&mut self, session: &Session) -> Result<(), StoreError> {
        let data = serde_json::to_string(session).map_err(corrupt)?;
        self.conn.execute(
            "INSERT INTO sessions (id, deadline, data) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET deadline = excluded.deadline, data = excluded.data",
            &[&session.id.as_str(), &millis(session.deadline()), &data],
        )?;
        self.sessions
            .insert(session.id.to_string(), Some(session.clone()));
        Ok(())
    }

    fn delete_session(&mut self, id: &SessionId) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM sessions WHERE id = $1", &[&id.as_str()])?;
        self.sessions.insert(id.to_string(), None);
        Ok(())
    }

    fn equipment_locks(&mut self, id: &EquipmentId) -> Result<EquipmentLocks, StoreError> {
        let found: Option<EquipmentLocks> = self
            .conn
            .query_opt(
                "SELECT data FROM equipment_locks WHERE equipment_id = $1",
                &[&id.as_str()],
            )?
            .map(|row| decode(&row))
            .transpose()?;
        let locks = found.unwrap_or_else(|| EquipmentLocks::new(id.clone()));
        let participants = locks.participants().map(|s| s.to_string()).collect();
        self.loaded.insert(id.to_string(), participants);
        Ok(locks)
    }

    fn save_equipment_locks(&mut self, locks: &EquipmentLocks) -> Result<(), StoreError> {
        let id = locks.equipment_id.as_str();
        let data = serde_json::to_string(locks).map_err(corrupt)?;
        self.conn.execute(
            "INSERT INTO equipment_locks (equipment_id, deadline, busy, data) VALUES ($1, $2, $3, $4)
             ON CONFLICT (equipment_id) DO UPDATE
             SET deadline = excluded.deadline, busy = excluded.busy, data = excluded.data",
            &[&id, &millis(locks.next_deadline()), &!locks.is_idle(), &data],
        )?;
        // Keep the participant index in step with the new state: only the
        // sessions that came or went are written.
        let after: BTreeSet<String> = locks.participants().map(|s| s.to_string()).collect();
        let before = match self.loaded.insert(id.to_string(), after.clone()) {
            Some(loaded) => loaded,
            None => self
                .conn
                .query(
                    "SELECT session_id FROM participants WHERE equipment_id = $1",
                    &[&id],
                )?
                .iter()
                .map(|row| row.get::<_, String>(0))
                .collect(),
        };
        let gone: Vec<&str> = before.difference(&after).map(String::as_str).collect();
        if !gone.is_empty() {
            self.conn.execute(
                "DELETE FROM participants WHERE equipment_id = $1 AND session_id = ANY($2)",
                &[&id, &gone],
            )?;
        }
        let new: Vec<&str> = after.difference(&before).map(String::as_str).collect();
        if !new.is_empty() {
            self.conn.execute(
                "INSERT INTO participants (session_id, equipment_id)
                 SELECT s, $1 FROM unnest($2::text[]) AS s ON CONFLICT DO NOTHING",
                &[&id, &new],
            )?;
        }
        Ok(())
    }

    fn busy_equipment(&mut self) -> Result<Vec<EquipmentLocks>, StoreError> {
        let rows = self
            .conn
            .query("SELECT data FROM equipment_locks WHERE busy", &[])?;
        rows.iter().map(decode).collect()
    }

    fn equipment_of_session(&mut self, id: &SessionId) -> Result<Vec<EquipmentId>, StoreError> {
        self.conn
            .query(
                "SELECT equipment_id FROM participants WHERE session_id = $1 ORDER BY equipment_id",
                &[&id.as_str()],
            )?
            .iter()
            .map(|row| EquipmentId::parse(row.get(0)).map_err(bad_id))
            .collect()
    }

    fn due(&mut self, now: Timestamp, max: usize) -> Result<Vec<Due>, StoreError> {
        self.conn
            .query(
                "SELECT kind, id FROM (
                    (SELECT 0 AS kind, id, deadline FROM sessions
                     WHERE deadline IS NOT NULL AND deadline <= $1 ORDER BY deadline LIMIT $2)
                    UNION ALL
                    (SELECT 1, equipment_id, deadline FROM equipment_locks
                     WHERE deadline IS NOT NULL AND deadline <= $1 ORDER BY deadline LIMIT $2)
                 ) AS due ORDER BY deadline, kind, id LIMIT $2",
                &[&now.as_millis(), &(max as i64)],
            )?
            .iter()
            .map(|row| {
                let id: &str = row.get(1);
                Ok(if row.get::<_, i32>(0) == 0 {
                    Due::Session(SessionId::parse(id).map_err(bad_id)?)
                } else {
                    Due::Equipment(EquipmentId::parse(id).map_err(bad_id)?)
                })
            })
            .collect()
    }

    fn next_deadline(&mut self) -> Result<Option<Timestamp>, StoreError> {
        let next: Option<i64> = self
            .conn
            .query_one(
                "SELECT LEAST(
                    (SELECT MIN(deadline) FROM sessions WHERE deadline IS NOT NULL),
                    (SELECT MIN(deadline) FROM equipment_locks WHERE deadline IS NOT NULL))",
                &[],
            )?
            .get(0);
        Ok(next.map(Timestamp::from_millis))
    }

    fn record_events(&mut self, _events: &mut [Event]) -> Result<(), StoreError> {
        // Writes record through the writer's unit (`cache::UnitTx`), which
        // numbers them in its batch; this view only reads.
        Err(StoreError::Unavailable(
            "a read cannot record events".into(),
        ))
    }

    fn equipment_events(
        &mut self,
        id: &EquipmentId,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let sql = SQL.get_or_init(|| {
            format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE equipment_id = $1 ORDER BY seq DESC LIMIT $2"
            )
        });
        let rows = self.conn.query(sql, &[&id.as_str(), &(limit as i64)])?;
        let mut events = events_of(rows)?;
        events.reverse();
        Ok(events)
    }

    fn session_events(&mut self, id: &SessionId, limit: usize) -> Result<Vec<Event>, StoreError> {
        static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let sql = SQL.get_or_init(|| {
            format!(
                "SELECT {EVENT_COLUMNS} FROM ({}) AS e ORDER BY seq DESC LIMIT $2",
                of_session("$1", "TRUE", "seq DESC", "$2")
            )
        });
        let rows = self.conn.query(sql, &[&id.as_str(), &(limit as i64)])?;
        let mut events = events_of(rows)?;
        events.reverse();
        Ok(events)
    }

    fn query_events(&mut self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        // The time filters first become a range of `seq` (bisection: `t`
        // never decreases with `seq`), which the statement then searches
        // through whichever index fits its other filters; each candidate's
        // own time is checked exactly.
        let since = millis(query.since);
        let until = millis(query.until);
        // No `seq` exceeds i64::MAX: a larger cursor is past them all.
        let after = i64::try_from(query.after.unwrap_or(0)).unwrap_or(i64::MAX);
        let mut from = after.saturating_add(1);
        let mut to = i64::MAX;
        if since.is_some() || until.is_some() {
            // An event before `until` has `t` below `until` plus the
            // largest lag ever recorded.
            let bounds = self.conn.query_one(
                "SELECT lablink_first_reaching($1),
                        lablink_first_reaching(LEAST($2::bigint::numeric
                            + (SELECT value FROM meta WHERE key = 'event_time_lag'),
                            9223372036854775807)::bigint)",
                &[&since, &until],
            )?;
            if let Some(first) = bounds.get::<_, Option<i64>>(0) {
                from = from.max(first);
            }
            if let Some(end) = bounds.get::<_, Option<i64>>(1) {
                to = end;
            }
            if from >= to {
                return Ok(Vec::new());
            }
        }
        // Only the filters given are in the statement, so that the planner
        // picks the index that fits them (one statement per combination).
        let equipment = query.equipment_id.as_ref().map(|e| e.as_str());
        let session = query.session_id.as_ref().map(|s| s.as_str());
        let kind = query.kind.map(kind_code);
        let limit = query.limit as i64;
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> =
            vec![(&from, Type::INT8), (&to, Type::INT8), (&limit, Type::INT8)];
        let mut mask = 0;
        for (bit, value) in [
            (
                1,
                equipment
                    .as_ref()
                    .map(|v| (v as &(dyn ToSql + Sync), Type::TEXT)),
            ),
            (2, session.as_ref().map(|v| (v as _, Type::TEXT))),
            (4, kind.as_ref().map(|v| (v as _, Type::INT2))),
            (8, since.as_ref().map(|v| (v as _, Type::INT8))),
            (16, until.as_ref().map(|v| (v as _, Type::INT8))),
        ] {
            if let Some(value) = value {
                mask |= bit;
                params.push(value);
            }
        }
        let sql = event_query_sql(mask);
        let rows = if mask & 7 == 0 {
            // Only a range of `seq` (the live feed's query, among others):
            // one plan fits every value, so it is prepared once.
            let values: Vec<_> = params.iter().map(|(v, _)| *v).collect();
            self.conn.query(sql, &values)?
        } else {
            self.conn.query_planned_for(sql, &params)?
        };
        events_of(rows)
    }

    fn last_event_seq(&mut self) -> Result<u64, StoreError> {
        let last: i64 = self
            .conn
            .query_one("SELECT COALESCE(MAX(seq), 0) FROM events", &[])?
            .get(0);
        Ok(last as u64)
    }

    fn prune_events(&mut self, prune: &Prune) -> Result<usize, StoreError> {
        let last = self.last_event_seq()?;
        // Nothing to cut is a bound no event passes.
        let cut = prune.keep.map_or(0, |k| last.saturating_sub(k)) as i64;
        let before = prune.before.map_or(i64::MIN, |b| b.as_millis());
        // The oldest events, in order: those that go are a prefix of them
        // (`t` never decreases, so an event past the first kept one is not
        // older than `before` unless the clock went back), and no more
        // than `max` rows are read however few go.
        let pruned = self.conn.execute(
            "DELETE FROM events WHERE seq IN (
                SELECT seq FROM (SELECT seq, t FROM events ORDER BY seq LIMIT $3) AS oldest
                WHERE seq <= $1 OR t < $2
             )",
            &[&cut, &before, &(prune.max as i64)],
        )?;
        Ok(pruned as usize)
    }

    fn usage_cursor(&mut self) -> Result<Option<UsageCursor>, StoreError> {
        super::usage::cursor(self.conn)
    }

    fn advance_usage_cursor(
        &mut self,
        expected: Option<&UsageCursor>,
        next: &UsageCursor,
    ) -> Result<bool, StoreError> {
        super::usage::advance(self.conn, expected, next)
    }

    fn put_usage(&mut self, buckets: &[UsageBucket]) -> Result<(), StoreError> {
        super::usage::put(self.conn, buckets)
    }

    fn usage_buckets(&mut self, query: &UsageQuery) -> Result<Vec<UsageBucket>, StoreError> {
        super::usage::buckets(self.conn, query)
    }

    fn put_usage_checkpoint(&mut self, at: Timestamp, state: &str) -> Result<(), StoreError> {
        super::usage::put_checkpoint(self.conn, at, state)
    }

    fn usage_checkpoint(&mut self, at: Timestamp) -> Result<Option<String>, StoreError> {
        super::usage::checkpoint(self.conn, at)
    }

    fn save_token(&mut self, token: &TokenRecord) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO tokens (id, user_name, role, hash, created_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &token.id,
                &token.user,
                &token.role.as_str(),
                &token.hash,
                &token.created_at.as_millis(),
                &millis(token.revoked_at),
            ],
        )?;
        self.bump_tokens_version()
    }

    fn token_by_hash(&mut self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.conn
            .query_opt(
                "SELECT id, user_name, role, hash, created_at, revoked_at FROM tokens WHERE hash = $1",
                &[&hash],
            )?
            .map(|row| token_of(&row))
            .transpose()
    }

    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        self.conn
            .query(
                "SELECT id, user_name, role, hash, created_at, revoked_at FROM tokens ORDER BY created_at, id",
                &[],
            )?
            .iter()
            .map(token_of)
            .collect()
    }

    fn revoke_token(&mut self, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        let changed = self.conn.execute(
            "UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            &[&id, &at.as_millis()],
        )?;
        if changed > 0 {
            self.bump_tokens_version()?;
        }
        Ok(changed > 0)
    }

    fn tokens_version(&mut self) -> Result<u64, StoreError> {
        let version: i64 = self
            .conn
            .query_one("SELECT value FROM meta WHERE key = 'tokens_version'", &[])?
            .get(0);
        Ok(version as u64)
    }
}

impl PgTx<'_> {
    fn bump_tokens_version(&mut self) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE meta SET value = value + 1 WHERE key = 'tokens_version'",
            &[],
        )?;
        Ok(())
    }
}

/// The first `limit` events in `order` of session `param` (its own, and
/// those it forced on others) that pass `filter`: each of the two read in
/// order from its own index, up to the limit, and the two merged (an `OR`
/// would read all of them to sort them).
fn of_session(param: &str, filter: &str, order: &str, limit: &str) -> String {
    format!(
        "(SELECT * FROM events WHERE session_id = {param} AND {filter}
          ORDER BY {order} LIMIT {limit})
         UNION ALL
         (SELECT * FROM events WHERE forced_by = {param} AND session_id IS DISTINCT FROM {param}
                                 AND {filter}
          ORDER BY {order} LIMIT {limit})"
    )
}

/// The history query for one combination of filters (`mask`: bit 1
/// equipment, 2 session, 4 kind, 8 since, 16 until), its parameters
/// numbered in that order after the `seq` range ($1 inclusive, $2
/// exclusive) and the limit ($3). Made once each: the statement cache keys
/// on `&'static str`.
fn event_query_sql(mask: usize) -> &'static str {
    static ALL: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        (0..32)
            .map(|mask| {
                let mut filter = String::from("seq >= $1 AND seq < $2");
                let mut session = None;
                let mut n = 3;
                for (bit, condition) in [
                    (1, "equipment_id = $"),
                    (2, ""),
                    (4, "kind = $"),
                    (8, "t - COALESCE(t_lag, 0) >= $"),
                    (16, "t - COALESCE(t_lag, 0) < $"),
                ] {
                    if mask & bit != 0 {
                        n += 1;
                        if bit == 2 {
                            session = Some(format!("${n}"));
                        } else {
                            filter.push_str(" AND ");
                            filter.push_str(&condition.replace('$', &format!("${n}")));
                        }
                    }
                }
                let from = match session {
                    Some(param) => {
                        format!("({}) AS e", of_session(&param, &filter, "seq", "$3"))
                    }
                    None => format!("events WHERE {filter}"),
                };
                let sql = format!("SELECT {EVENT_COLUMNS} FROM {from} ORDER BY seq LIMIT $3");
                &*Box::leak(sql.into_boxed_str())
            })
            .collect()
    })[mask]
}
