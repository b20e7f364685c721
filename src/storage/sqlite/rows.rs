//! Between SQLite rows and the domain: decoding the JSON `data` columns
//! and the token and event rows, and turning SQLite's failures into
//! `StoreError`s an operator can act on. It decides nothing and keeps no
//! state; which rows to read or write is `tx`'s business.

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use serde::de::DeserializeOwned;

use super::tx::SqliteTx;
use crate::domain::{Event, Role, Timestamp};
use crate::storage::event_row::{StoredEvent, compact_data};
pub(super) use crate::storage::event_row::{corrupt, kind_code};
use crate::storage::{StoreError, TokenRecord};

/// Turns a SQLite failure into what an operator can act on.
pub(super) fn unavailable(e: rusqlite::Error) -> StoreError {
    let what = match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => "the disk is full",
        Some(ErrorCode::ReadOnly) => "the database file is read-only",
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            "the database stayed locked by another process for too long"
        }
        Some(ErrorCode::SystemIoFailure) => "disk I/O error",
        Some(ErrorCode::CannotOpen) => "the database file cannot be opened",
        Some(ErrorCode::PermissionDenied) => "permission denied on the database file",
        _ => "SQLite error",
    };
    StoreError::Unavailable(format!("{what} ({e})"))
}

/// An event as the history table stores it (schema v3): the filtered
/// fields in columns (the kind as a small number), the time as an order key
/// that never decreases with `seq` plus how far the event's own time lies
/// behind it, and only the remaining fields in the JSON `data`.
pub(super) struct EventRow {
    /// `None`: the database numbers it.
    seq: Option<i64>,
    /// The largest timestamp recorded up to this event (ms).
    pub(super) t: i64,
    /// `t` minus this event's own timestamp: 0 unless the clock went back.
    pub(super) t_lag: i64,
    kind: i64,
    equipment_id: Option<String>,
    session_id: Option<String>,
    forced_by: Option<String>,
    data: String,
}

impl EventRow {
    /// The row of `event`, recorded after events up to time `t_before`.
    pub(super) fn new(
        event: &mut Event,
        seq: Option<i64>,
        t_before: i64,
    ) -> Result<Self, StoreError> {
        event.seq = None;
        let at = event.timestamp.as_millis();
        let t = t_before.max(at);
        let data = compact_data(event)?;
        Ok(Self {
            seq,
            t,
            t_lag: t - at,
            kind: kind_code(event.event).into(),
            equipment_id: event.equipment_id.as_ref().map(|e| e.to_string()),
            session_id: event.session_id.as_ref().map(|s| s.to_string()),
            forced_by: event.forced_by.as_ref().map(|s| s.to_string()),
            data,
        })
    }

    /// Inserts the row; returns its `seq`.
    pub(super) fn insert(&self, conn: &Connection) -> Result<i64, StoreError> {
        conn.prepare_cached(
            "INSERT INTO events (seq, t, t_lag, kind, equipment_id, session_id, forced_by, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .and_then(|mut s| {
            s.execute(params![
                self.seq,
                self.t,
                self.t_lag,
                self.kind,
                self.equipment_id,
                self.session_id,
                self.forced_by,
                self.data,
            ])
        })
        .map_err(unavailable)?;
        if self.t_lag > 0 {
            // The largest lag bounds how far behind the order key an
            // event's own time can be (the `until` filter relies on it).
            conn.prepare_cached(
                "UPDATE meta SET value = max(value, ?1) WHERE key = 'event_time_lag'",
            )
            .and_then(|mut s| s.execute([self.t_lag]))
            .map_err(unavailable)?;
        }
        Ok(conn.last_insert_rowid())
    }
}

/// The columns `read_event` decodes, in its order.
pub(super) const EVENT_COLUMNS: &str =
    "seq, t - t_lag, kind, equipment_id, session_id, forced_by, data";

pub(super) fn millis(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::as_millis)
}

/// An event from its row (`EVENT_COLUMNS`).
pub(super) fn read_event(r: &rusqlite::Row) -> Result<Event, StoreError> {
    let text = |i| r.get::<_, Option<String>>(i).map_err(unavailable);
    let (equipment_id, session_id, forced_by) = (text(3)?, text(4)?, text(5)?);
    let data: String = r.get(6).map_err(unavailable)?;
    StoredEvent {
        seq: r.get(0).map_err(unavailable)?,
        at: r.get(1).map_err(unavailable)?,
        kind: r.get(2).map_err(unavailable)?,
        equipment_id: equipment_id.as_deref(),
        session_id: session_id.as_deref(),
        forced_by: forced_by.as_deref(),
        data: &data,
    }
    .decode()
}

impl SqliteTx<'_> {
    /// The one JSON `data` row that `sql` selects by `key`, decoded.
    pub(super) fn row<T: DeserializeOwned>(
        &self,
        sql: &str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let data: Option<String> = self
            .tx
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
            .map_err(unavailable)?;
        data.map(|d| serde_json::from_str(&d).map_err(corrupt))
            .transpose()
    }

    /// Every JSON `data` row that `sql` selects, decoded.
    pub(super) fn rows<T: DeserializeOwned>(&self, sql: &str) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.tx.prepare_cached(sql).map_err(unavailable)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(unavailable)?;
        rows.map(|row| serde_json::from_str(&row.map_err(unavailable)?).map_err(corrupt))
            .collect()
    }

    /// The events that `sql` selects (`EVENT_COLUMNS`), decoded.
    pub(super) fn events(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Event>, StoreError> {
        let mut stmt = self.tx.prepare_cached(sql).map_err(unavailable)?;
        let mut rows = stmt.query(params).map_err(unavailable)?;
        let mut events = Vec::new();
        while let Some(row) = rows.next().map_err(unavailable)? {
            events.push(read_event(row)?);
        }
        Ok(events)
    }

    pub(super) fn token_rows(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let mut stmt = self.tx.prepare_cached(sql).map_err(unavailable)?;
        let rows = stmt
            .query_map(params, |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                ))
            })
            .map_err(unavailable)?;
        rows.map(|row| {
            let (id, user, role, hash, created_at, revoked_at) = row.map_err(unavailable)?;
            Ok(TokenRecord {
                id,
                user,
                role: Role::parse(&role)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown role {role:?}")))?,
                hash,
                created_at: Timestamp::from_millis(created_at),
                revoked_at: revoked_at.map(Timestamp::from_millis),
            })
        })
        .collect()
    }
}
