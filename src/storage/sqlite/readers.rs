//! The read-only connections behind `Store::read`, each owned by a reader
//! thread (one per core, at least two), so reads run side by side and never
//! on an async worker. WAL lets each read the committed state while the
//! writer works: a read never takes the writer's connection, joins a batch
//! or waits for a sync. `query_only`: a read is never a way to write.
//! Dedicated threads measured faster for status than `spawn_blocking`,
//! whose threads pile up on the few connections under load
//! (docs/benchmarks.md).

use rusqlite::Connection;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

use super::SqliteOptions;
use super::rows::unavailable;
use super::tx::SqliteTx;
use crate::storage::{StoreError, Work};

/// A read and where its outcome goes.
type Job = (Work, oneshot::Sender<Result<(), StoreError>>);

pub(super) struct Readers {
    /// The reader threads end once this is dropped.
    jobs: Sender<Job>,
}

impl Readers {
    /// Opens the connections, on a database whose schema is up to date,
    /// and starts their threads.
    pub(super) fn open(options: &SqliteOptions) -> Result<Self, StoreError> {
        let size = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..size {
            let connection = open_reader(options)?;
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("lablink-read-{i}"))
                .spawn(move || serve(&connection, &queue))
                .map_err(|e| StoreError::Unavailable(format!("cannot start a reader: {e}")))?;
        }
        Ok(Self { jobs })
    }

    /// Runs `work` in one read transaction on a reader thread.
    pub(super) async fn read(&self, work: Work) -> Result<(), StoreError> {
        let stopped = || StoreError::Unavailable("the read stopped".into());
        let (answer, answered) = oneshot::channel();
        self.jobs.send((work, answer)).map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// A reader thread: runs reads until the store is dropped.
fn serve(reader: &Connection, queue: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for a job.
        let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok((mut work, answer)) = job else {
            return;
        };
        // A read that panics is an error for its caller, not the thread's end.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| read_once(reader, &mut work)))
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the read panicked".into())));
        let _ = answer.send(outcome);
    }
}

/// Runs `work` in one read transaction: one snapshot for the whole unit.
fn read_once(reader: &Connection, work: &mut Work) -> Result<(), StoreError> {
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
    let _ends = EndsRead(reader);
    work(&mut SqliteTx::new(reader, &mut None))?;
    // Committing a read writes nothing.
    run("COMMIT").map(|_| ())
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
