//! The PostgreSQL schema: the migrations, embedded in the binary, and
//! running them at start up to the newest (`lablink_schema` counts those
//! done), all in one transaction. Replicas starting together take turns
//! under a transaction-scoped advisory lock. It only creates and alters the
//! schema; rows are the other files' business.

use super::conn::{Conn, unavailable};
use crate::storage::StoreError;

const MIGRATIONS: &[&str] = &[include_str!("migrations/0001_initial.sql")];

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
    let done: i64 = tx
        .query_one("SELECT COUNT(*) FROM lablink_schema", &[])
        .map_err(unavailable)?
        .get(0);
    let done = usize::try_from(done).unwrap_or(usize::MAX);
    if done > MIGRATIONS.len() {
        return Err(StoreError::Unavailable(format!(
            "the database has schema version {done}, newer than this LabLink knows ({}): upgrade LabLink",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        tx.batch_execute(sql).map_err(unavailable)?;
        tx.execute(
            "INSERT INTO lablink_schema (version) VALUES ($1)",
            &[&((i + 1) as i32)],
        )
        .map_err(unavailable)?;
        tracing::info!(version = i + 1, "database schema migrated");
    }
    tx.commit().map_err(unavailable)
}
