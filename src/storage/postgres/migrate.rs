//! The PostgreSQL schema: the migrations, embedded in the binary, and
//! running them at start up to the newest (`lablink_schema` counts those
//! done), all in one transaction. Each migration is known by the number
//! of its file, so numbers may have gaps (branches merged in any order
//! each bring their own); one is run when its number is not recorded yet,
//! in number order. Replicas starting together take turns
//! under a transaction-scoped advisory lock. It only creates and alters the
//! schema; rows are the other files' business.

use super::conn::{Conn, unavailable};
use crate::storage::StoreError;

/// Each migration with the number of its file.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_initial.sql")),
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
