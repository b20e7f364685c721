//! The read-only connections behind `Store::read`: a small pool (one per
//! core, at least two), so reads run side by side. WAL lets each read the
//! committed state while the writer works: a read never takes the
//! writer's lock, joins a batch or waits for a sync. `query_only`: a read
//! is never a way to write.

use rusqlite::Connection;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use super::SqliteOptions;
use super::rows::unavailable;
use super::tx::SqliteTx;
use crate::storage::{StoreError, Work};

pub(super) struct Readers {
    connections: Vec<Mutex<Connection>>,
    /// Where the next read starts looking for a free connection, so reads
    /// spread over the pool.
    next: AtomicUsize,
}

impl Readers {
    /// Opens the pool on a database whose schema is up to date.
    pub(super) fn open(options: &SqliteOptions) -> Result<Self, StoreError> {
        let size = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let connections = (0..size)
            .map(|_| open_reader(options).map(Mutex::new))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            connections,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `work` in one read transaction: one snapshot for the whole unit.
    pub(super) fn read(&self, work: &mut Work<'_>) -> Result<(), StoreError> {
        let reader = self.free_connection();
        // `BEGIN` and `COMMIT` from the statement cache: rusqlite's
        // `Transaction` parses them anew each time, which showed in the
        // status benchmark (docs/benchmarks.md).
        let run = |sql: &str| {
            reader
                .prepare_cached(sql)
                .and_then(|mut s| s.execute([]))
                .map_err(unavailable)
        };
        run("BEGIN")?;
        // Rolls back whatever does not reach the commit (an error, a panic).
        let _ends = EndsRead(&reader);
        work(&mut SqliteTx::new(&reader, &mut None))?;
        // Committing a read writes nothing.
        run("COMMIT").map(|_| ())
    }

    /// A free connection if there is one, else the next in turn once free.
    fn free_connection(&self) -> MutexGuard<'_, Connection> {
        let n = self.connections.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        // A poisoned connection is fine: the read that panicked was rolled
        // back (`EndsRead`).
        for i in 0..n {
            match self.connections[(start + i) % n].try_lock() {
                Ok(guard) => return guard,
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        self.connections[start]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Ends a read that did not commit (it failed or panicked): its snapshot
/// is let go, so the connection is ready for the next. After a commit it
/// does nothing.
struct EndsRead<'a>(&'a Connection);

impl Drop for EndsRead<'_> {
    fn drop(&mut self) {
        if !self.0.is_autocommit() {
            let _ = self.0.execute_batch("ROLLBACK");
        }
    }
}

fn open_reader(options: &SqliteOptions) -> Result<Connection, StoreError> {
    let reader = Connection::open(&options.path).map_err(unavailable)?;
    reader
        .busy_timeout(options.busy_timeout)
        .and_then(|()| reader.execute_batch("PRAGMA query_only = ON;"))
        .map_err(unavailable)?;
    // As the writer's (see `open`): statements stay compiled, one plan each.
    reader.set_prepared_statement_cache_capacity(64);
    reader
        .set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )
        .map_err(unavailable)?;
    Ok(reader)
}
