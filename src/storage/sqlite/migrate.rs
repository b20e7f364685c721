//! The SQLite schema: the migrations, embedded in the binary, and running
//! them at open up to the newest (`PRAGMA user_version` counts those done).
//! It only creates and alters the schema; rows are the other files' business.

use rusqlite::{Connection, TransactionBehavior};

use super::rows::unavailable;
use crate::storage::StoreError;

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_tokens.sql"),
    include_str!("migrations/0003_compact_events.sql"),
    include_str!("migrations/0004_analytics_rollups.sql"),
];

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map_err(unavailable)?
        .try_into()
        .unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(StoreError::Unavailable(format!(
            "the database has schema version {version}, newer than this LabLink knows ({}): upgrade LabLink",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Exclusive)
            .map_err(unavailable)?;
        tx.execute_batch(sql).map_err(unavailable)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
        tracing::info!(version = i + 1, "database schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;
    use crate::domain::{EquipmentId, Event, EventKind, SessionId, Timestamp};
    use crate::storage::sqlite::{SqliteOptions, SqliteStore};
    use crate::storage::{EventQuery, Store};

    /// A history written by schema v2 (the whole event as JSON in `data`)
    /// reads back the same after migration 0003, every kind, the clock set
    /// back once, and the numbering goes on after the largest ever given.
    #[test]
    fn a_v2_history_reads_back_the_same_after_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(MIGRATIONS[1]).unwrap();
        conn.execute_batch("PRAGMA user_version = 2").unwrap();
        let mut events = Vec::new();
        for (i, kind) in EventKind::ALL.into_iter().enumerate() {
            let at = if i == 5 { 1_000 } else { 2_000 + i as i64 };
            let mut e = Event::new(kind, Timestamp::from_millis(at));
            e.equipment_id = (i % 3 != 0).then(|| EquipmentId::parse("psu").unwrap());
            e.session_id = Some(SessionId::parse(&format!("s{i}")).unwrap());
            e.forced_by = (kind == EventKind::LockForceReleased)
                .then(|| SessionId::parse("admin\"x\\y").unwrap());
            e.fencing_token = Some(i as u64);
            e.timeout_seconds = Some(300.0);
            e.user = Some("alice".into());
            let seq = i as i64 + 1;
            conn.execute(
                "INSERT INTO events (seq, at, event, equipment_id, session_id, forced_by, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                rusqlite::params![
                    seq,
                    at,
                    kind.as_str(),
                    e.equipment_id.as_ref().map(|x| x.to_string()),
                    e.session_id.as_ref().map(|x| x.to_string()),
                    e.forced_by.as_ref().map(|x| x.to_string()),
                    serde_json::to_string(&e).unwrap(),
                ],
            )
            .unwrap();
            e.seq = Some(seq as u64);
            events.push(e);
        }
        // Numbers up to 100 were handed out once (and pruned since).
        conn.execute(
            "UPDATE sqlite_sequence SET seq = 100 WHERE name = 'events'",
            [],
        )
        .unwrap();
        drop(conn);
        let options = SqliteOptions::from_url("sqlite://old.db", dir.path()).unwrap();
        let store: Box<dyn Store> = Box::new(SqliteStore::open(&options).unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let read = runtime
            .block_on(store.query(|tx| {
                tx.query_events(&EventQuery {
                    limit: 100,
                    ..EventQuery::default()
                })
            }))
            .unwrap();
        assert_eq!(read, events);
        let late = runtime
            .block_on(store.query(|tx| {
                tx.query_events(&EventQuery {
                    since: Some(Timestamp::from_millis(1_000)),
                    until: Some(Timestamp::from_millis(1_001)),
                    limit: 100,
                    ..EventQuery::default()
                })
            }))
            .unwrap();
        assert_eq!(late, [events[5].clone()], "found by its own time");
        let next = runtime
            .block_on(store.write(|tx| {
                let mut e = [Event::new(
                    EventKind::SessionCreated,
                    Timestamp::from_millis(3_000),
                )];
                tx.record_events(&mut e)?;
                Ok(e[0].seq)
            }))
            .unwrap();
        assert_eq!(next, Some(101));
    }
}
