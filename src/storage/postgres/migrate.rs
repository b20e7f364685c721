//! The PostgreSQL schema: the migrations, embedded in the binary, and
//! running them at start up to the newest (`lablink_schema` counts those
//! done), all in one transaction. Each migration is known by the number
//! of its file, so numbers may have gaps (branches merged in any order
//! each bring their own); one is run when its number is not recorded yet,
//! in number order. Replicas starting together take turns
//! under a transaction-scoped advisory lock. It only creates and alters the
//! schema; rows are the other files' business.

use super::conn::{Conn, unavailable};
use crate::domain::EventKind;
use crate::storage::StoreError;
use crate::storage::event_row::kind_code;

/// Each migration with the number of its file.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_initial.sql")),
    (2, include_str!("migrations/0002_compact_events.sql")),
    (3, include_str!("migrations/0003_analytics_rollups.sql")),
];

/// The advisory lock key that serialises migrations across replicas.
const MIGRATION_LOCK: i64 = 0x4c61_624c_696e_6b00; // "LabLink\0"

pub(super) fn migrate(conn: &mut Conn) -> Result<(), StoreError> {
    let mut tx = conn.client().transaction().map_err(unavailable)?;
    // First of all, even before the version table exists: two replicas
    // starting together would both create it.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(unavailable)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS lablink_schema (version INTEGER NOT NULL)")
        .map_err(unavailable)?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM lablink_schema", &[])
        .map_err(unavailable)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let newest = MIGRATIONS.iter().map(|(n, _)| *n).max().unwrap_or(0);
    if let Some(unknown) = done.iter().find(|&&v| v > newest) {
        return Err(StoreError::Unavailable(format!(
            "the database has schema version {unknown}, newer than this LabLink knows ({newest}): upgrade LabLink"
        )));
    }
    if MIGRATIONS.iter().any(|(n, _)| !done.contains(n)) {
        // The kinds' numbers, for the migrations that store them: from the
        // one place that numbers them, not a copy in SQL.
        let (names, codes): (Vec<&str>, Vec<i16>) = EventKind::ALL
            .into_iter()
            .map(|k| (k.as_str(), kind_code(k)))
            .filter(|(_, code)| *code != 0)
            .unzip();
        tx.batch_execute(
            "CREATE TEMPORARY TABLE lablink_event_kinds (name TEXT PRIMARY KEY, code SMALLINT NOT NULL)
             ON COMMIT DROP",
        )
        .map_err(unavailable)?;
        tx.execute(
            "INSERT INTO lablink_event_kinds SELECT * FROM unnest($1::text[], $2::smallint[])",
            &[&names, &codes],
        )
        .map_err(unavailable)?;
    }
    for (number, sql) in MIGRATIONS {
        if done.contains(number) {
            continue;
        }
        tx.batch_execute(sql).map_err(unavailable)?;
        tx.execute(
            "INSERT INTO lablink_schema (version) VALUES ($1)",
            &[number],
        )
        .map_err(unavailable)?;
        tracing::info!(version = number, "database schema migrated");
    }
    tx.commit().map_err(unavailable)
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;
    use crate::domain::{EquipmentId, Event, EventKind, SessionId, Timestamp};
    use crate::storage::postgres::{PostgresOptions, PostgresStore, test_database};
    use crate::storage::{EventQuery, Store};

    /// A history written by schema v1 (the whole event as JSON in `data`,
    /// the kind as text) reads back the same after migration 0002: every
    /// kind, the clock set back once, a string JSON allows but `jsonb`
    /// does not; time filters find events by their own time, and the
    /// numbering goes on after the largest ever given.
    #[test]
    fn a_v1_history_reads_back_the_same_after_migration() {
        let Some(database) = test_database::fresh() else {
            return;
        };
        let mut client = postgres::Client::connect(database.url(), postgres::NoTls).unwrap();
        client.batch_execute(MIGRATIONS[0].1).unwrap();
        client
            .batch_execute(
                "CREATE TABLE lablink_schema (version INTEGER NOT NULL);
                 INSERT INTO lablink_schema VALUES (1);
                 UPDATE meta SET value = 100 WHERE key = 'event_seq'",
            )
            .unwrap();
        let mut events = Vec::new();
        for (i, kind) in EventKind::ALL
            .into_iter()
            .filter(|k| crate::storage::event_row::kind_code(*k) != 0)
            .enumerate()
        {
            let at = if i == 5 { 1_000 } else { 2_000 + i as i64 };
            let mut e = Event::new(kind, Timestamp::from_millis(at));
            e.equipment_id = (i % 3 != 0).then(|| EquipmentId::parse("psu").unwrap());
            e.session_id = Some(SessionId::parse(&format!("s{i}")).unwrap());
            e.forced_by = (kind == EventKind::LockForceReleased)
                .then(|| SessionId::parse("admin\"x\\y").unwrap());
            e.fencing_token = Some(u64::MAX - i as u64);
            e.timeout_seconds = Some(300.0);
            e.time_remaining = Some(1e-7);
            e.user = Some("alice".into());
            e.message = (i == 2).then(|| "nul \u{0}, one \u{1}, \\u0000 and ü".into());
            let seq = i as i64 + 1;
            client
                .execute(
                    "INSERT INTO events (seq, at, event, equipment_id, session_id, forced_by, data)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &seq,
                        &at,
                        &kind.as_str(),
                        &e.equipment_id.as_ref().map(|x| x.to_string()),
                        &e.session_id.as_ref().map(|x| x.to_string()),
                        &e.forced_by.as_ref().map(|x| x.to_string()),
                        &serde_json::to_string(&e).unwrap(),
                    ],
                )
                .unwrap();
            e.seq = Some(seq as u64);
            events.push(e);
        }
        drop(client);
        let options = PostgresOptions::from_url(database.url()).unwrap();
        let store: Box<dyn Store> = Box::new(PostgresStore::open(&options).unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let query = |q: EventQuery| runtime.block_on(store.query(move |tx| tx.query_events(&q)));
        let read = query(EventQuery {
            limit: 100,
            ..EventQuery::default()
        })
        .unwrap();
        assert_eq!(read, events);
        let late = query(EventQuery {
            since: Some(Timestamp::from_millis(1_000)),
            until: Some(Timestamp::from_millis(1_001)),
            limit: 100,
            ..EventQuery::default()
        })
        .unwrap();
        assert_eq!(late, [events[5].clone()], "found by its own time");
        let forced = query(EventQuery {
            session_id: Some(SessionId::parse("admin\"x\\y").unwrap()),
            kind: Some(EventKind::LockForceReleased),
            limit: 100,
            ..EventQuery::default()
        })
        .unwrap();
        let expected: Vec<Event> = events
            .iter()
            .filter(|e| e.event == EventKind::LockForceReleased)
            .cloned()
            .collect();
        assert_eq!(forced, expected);
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
