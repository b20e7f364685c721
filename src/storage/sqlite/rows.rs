//! Between SQLite rows and the domain: decoding the JSON `data` columns
//! and the token and event rows, and turning SQLite's failures into
//! `StoreError`s an operator can act on. It decides nothing and keeps no
//! state; which rows to read or write is `tx`'s business.

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use serde::de::DeserializeOwned;

use super::tx::SqliteTx;
use crate::domain::{Event, Role, Timestamp};
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

pub(super) fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

pub(super) struct EventRow {
    /// `None`: the database numbers it.
    seq: Option<i64>,
    at: i64,
    kind: &'static str,
    equipment_id: Option<String>,
    session_id: Option<String>,
    forced_by: Option<String>,
    data: String,
}

impl EventRow {
    pub(super) fn new(event: &mut Event, seq: Option<i64>) -> Result<Self, StoreError> {
        event.seq = None;
        Ok(Self {
            seq,
            at: event.timestamp.as_millis(),
            kind: event.event.as_str(),
            equipment_id: event.equipment_id.as_ref().map(|e| e.to_string()),
            session_id: event.session_id.as_ref().map(|s| s.to_string()),
            forced_by: event.forced_by.as_ref().map(|s| s.to_string()),
            data: serde_json::to_string(event).map_err(corrupt)?,
        })
    }

    /// Inserts the row; returns its `seq`.
    pub(super) fn insert(&self, conn: &Connection) -> Result<i64, StoreError> {
        conn.prepare_cached(
            "INSERT INTO events (seq, at, event, equipment_id, session_id, forced_by, data)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .and_then(|mut s| {
            s.execute(params![
                self.seq,
                self.at,
                self.kind,
                self.equipment_id,
                self.session_id,
                self.forced_by,
                self.data,
            ])
        })
        .map_err(unavailable)?;
        Ok(conn.last_insert_rowid())
    }
}

pub(super) fn millis(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::as_millis)
}

fn read_event(seq: i64, data: &str) -> Result<Event, StoreError> {
    let mut event: Event = serde_json::from_str(data).map_err(corrupt)?;
    event.seq = Some(seq as u64);
    Ok(event)
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

    pub(super) fn events(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Event>, StoreError> {
        let mut stmt = self.tx.prepare_cached(sql).map_err(unavailable)?;
        let rows = stmt
            .query_map(params, |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(unavailable)?;
        let mut events = Vec::new();
        for row in rows {
            let (seq, data) = row.map_err(unavailable)?;
            events.push(read_event(seq, &data)?);
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
