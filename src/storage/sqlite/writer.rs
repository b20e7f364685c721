//! Group commit for the SQLite store: units of work run in savepoints of
//! one open batch transaction, committed together, and answered only once
//! durable.
//!
//! With `synchronous=full` a batch's commit is written to the write-ahead
//! log under the connection's lock, and a syncer thread then `fdatasync`s
//! the log outside it, so the next batch runs while the last one is made
//! durable (SQLite itself would fsync inside `COMMIT`, holding everyone
//! up). The connection runs with SQLite's `synchronous=NORMAL`, which keeps
//! its own syncs around checkpoints; a batch is answered only after an
//! fsync that began once its commit was written, so what is acknowledged
//! survives power loss exactly as with SQLite's `FULL`. The same thread
//! checkpoints the log into the database file on a connection of its own,
//! which SQLite would otherwise do inside the `COMMIT` of whichever batch
//! crossed its threshold.
//!
//! It schedules and settles; what a unit reads and writes is `tx`'s, and
//! it never answers a batch before the fsync that covers it.

use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::SqliteStore;
use super::rows::{EventRow, unavailable};
use super::tx::{DeadlineFloor, SqliteTx};
use crate::storage::{BatchFate, BatchSettler, GroupCommit, StoreError, Work};

/// The connection and the group-commit batch open on it, if any.
pub(super) struct Batch {
    pub(super) conn: Connection,
    /// The open batch, which settles its units' fate (`None`: no
    /// transaction open).
    open: Option<BatchSettler>,
    last: u64,
    works: usize,
    /// No deadline in the database is earlier than this; `None`: not known.
    /// Lets `due` skip its query on most requests (the floor is only ever
    /// lowered by writes, so a rolled-back write leaves it merely low).
    pub(super) deadline_floor: Option<DeadlineFloor>,
    /// The current unit's events, inserted after its savepoint.
    events: EventBuffer,
}

impl Batch {
    pub(super) fn new(conn: Connection) -> Self {
        Self {
            conn,
            open: None,
            last: 0,
            works: 0,
            deadline_floor: None,
            events: EventBuffer::default(),
        }
    }

    /// Commits the open batch, if any; returns it and the outcome.
    fn commit(&mut self) -> Option<(BatchSettler, Result<(), StoreError>)> {
        let batch = self.open.take()?;
        self.works = 0;
        let outcome = self
            .conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .map_err(unavailable);
        if outcome.is_err() {
            self.roll_back();
        }
        Some((batch, outcome))
    }

    /// Rolls the open batch back, whole, and forgets what it had noted.
    fn roll_back(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
        self.open = None;
        self.works = 0;
        self.events = EventBuffer::default();
        // Undone writes may have put earlier deadlines back.
        self.deadline_floor = None;
    }
}

/// A batched unit's events. They are numbered when recorded but inserted
/// only once the unit's savepoint is released, into the batch's own
/// transaction: inserted inside the savepoint, every index page they touch
/// was first copied to the savepoint's undo journal, which was the largest
/// single cost of a unit in the profile (docs/benchmarks.md). A unit never
/// reads back its own events, and the next unit sees them.
#[derive(Default)]
pub(super) struct EventBuffer {
    /// The `seq` the next event gets; `None`: read it from the database.
    pub(super) next_seq: Option<i64>,
    pub(super) rows: Vec<EventRow>,
}

impl EventBuffer {
    fn flush(&mut self, conn: &Connection) -> Result<(), StoreError> {
        for row in self.rows.drain(..) {
            row.insert(conn)?;
        }
        Ok(())
    }
}

/// Where committed batches stand on their way to being answered: committed
/// (written to the log), then durable (synced) and finished. Kept apart
/// from the connection so that syncing and waiters never contend for it.
pub(super) struct Durability {
    /// The write-ahead log to fsync after commits; `None` with
    /// `synchronous=normal`, where a commit is finished when written.
    wal: Option<PathBuf>,
    progress: Mutex<Progress>,
    /// Signalled when `progress` changes (with something to sync).
    progressed: Condvar,
    /// The number of the last batch made durable (changes wake whoever
    /// waits for a sync to end; each batch's outcome is its own fate's).
    finished: tokio::sync::watch::Sender<u64>,
}

/// What the syncer has to do.
#[derive(Default)]
struct Progress {
    /// The last batch committed.
    ended: u64,
    /// Committed batches waiting for an fsync, whose fate it settles.
    unsynced: Vec<BatchSettler>,
    closing: bool,
}

impl Durability {
    /// `wal`: the write-ahead log to fsync after commits, if any.
    pub(super) fn new(wal: Option<PathBuf>) -> Self {
        Self {
            wal,
            progress: Mutex::new(Progress::default()),
            progressed: Condvar::new(),
            finished: tokio::sync::watch::channel(0).0,
        }
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A batch failed: its units hear why at once (nothing to sync).
    fn failed(&self, batch: BatchSettler, why: &StoreError) {
        tracing::error!(batch = batch.number(), error = %why, "commit failed");
        batch.settle(Err(why.to_string()));
    }

    /// `batch` has ended: committed, or failed with `outcome`.
    fn ended(&self, batch: BatchSettler, outcome: &Result<(), StoreError>) {
        if let Err(e) = outcome {
            return self.failed(batch, e);
        }
        let number = batch.number();
        let mut progress = self.progress();
        progress.ended = number;
        match self.wal {
            Some(_) => {
                progress.unsynced.push(batch);
                drop(progress);
                self.progressed.notify_one();
            }
            // Nothing to sync: finished now (the syncer only checkpoints,
            // and looks on its own time rather than being woken per commit).
            None => {
                drop(progress);
                batch.settle(Ok(()));
                let _previous = self.finished.send_replace(number);
            }
        }
    }

    /// Fsyncs the write-ahead log (a no-op with `synchronous=normal`).
    pub(super) fn sync_wal(&self) -> Result<(), String> {
        let Some(wal) = &self.wal else {
            return Ok(());
        };
        // Opened by name each time, so a log SQLite replaced is never
        // missed.
        match std::fs::OpenOptions::new().write(true).open(wal) {
            Ok(file) => file
                .sync_data()
                .map_err(|e| format!("cannot sync the write-ahead log: {e}")),
            // No log: everything is in the database file, synced by SQLite.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot open the write-ahead log: {e}")),
        }
    }

    /// The syncer thread: fsyncs whatever has been committed since the last
    /// sync (one fsync covers every batch committed before it began) and
    /// finishes those batches, and checkpoints the log now and then, until
    /// the store closes.
    pub(super) fn run_syncer(&self, checkpointer: Connection) {
        const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
        let (mut checkpointed, mut checkpointed_upto) = (std::time::Instant::now(), 0);
        loop {
            let (target, unsynced, closing) = {
                let mut progress = self.progress();
                while progress.unsynced.is_empty() && !progress.closing {
                    let (guard, waited) = self
                        .progressed
                        .wait_timeout(progress, CHECKPOINT_EVERY)
                        .unwrap_or_else(|p| p.into_inner());
                    progress = guard;
                    if waited.timed_out() {
                        break;
                    }
                }
                // Taken before the fsync begins: it covers their commits.
                let unsynced = std::mem::take(&mut progress.unsynced);
                (progress.ended, unsynced, progress.closing)
            };
            if !unsynced.is_empty() {
                let outcome = self.sync_wal();
                if let Err(why) = &outcome {
                    let batches = unsynced.iter().map(BatchSettler::number);
                    tracing::error!(first = batches.clone().min(), last = batches.max(), error = %why, "commit failed");
                }
                for batch in unsynced {
                    batch.settle(outcome.clone());
                }
                let _previous = self.finished.send_replace(target);
            }
            if closing {
                return;
            }
            if target > checkpointed_upto && checkpointed.elapsed() >= CHECKPOINT_EVERY {
                // PASSIVE: copies what it can without holding up writers.
                if let Err(e) = checkpointer.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                    tracing::warn!(error = %e, "checkpoint failed; SQLite's own will run");
                }
                (checkpointed, checkpointed_upto) = (std::time::Instant::now(), target);
            }
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.durability.progress().closing = true;
        self.durability.progressed.notify_one();
        if let Some(syncer) = self.syncer.take() {
            let _ = syncer.join();
        }
    }
}

impl SqliteStore {
    /// Commits the open batch, if any; its waiters hear once it is durable.
    pub(super) fn finish(&self, batch: &mut Batch) -> Result<(), StoreError> {
        let Some((batch, outcome)) = batch.commit() else {
            return Ok(());
        };
        self.durability.ended(batch, &outcome);
        outcome
    }
}

impl GroupCommit for SqliteStore {
    fn run_in_batch(&self, work: &mut Work<'_>) -> Result<BatchFate, StoreError> {
        let mut guard = self.lock();
        let batch = &mut *guard;
        let fate = match &batch.open {
            Some(open) => open.fate(),
            None => {
                batch
                    .conn
                    .prepare_cached("BEGIN IMMEDIATE")
                    .and_then(|mut s| s.execute([]))
                    .map_err(unavailable)?;
                batch.last += 1;
                let open = BatchSettler::new(batch.last);
                let fate = open.fate();
                batch.open = Some(open);
                // Plain transactions may have recorded events since.
                batch.events.next_seq = None;
                fate
            }
        };
        batch.works += 1;
        let tx = &batch.conn;
        // Cached statements: these run for every unit of work.
        let run = |sql: &str| tx.prepare_cached(sql).and_then(|mut s| s.execute([]));
        run("SAVEPOINT work").map_err(unavailable)?;
        let next_seq = batch.events.next_seq;
        let mut unit = SqliteTx::new(tx, &mut batch.deadline_floor);
        unit.events = Some(&mut batch.events);
        match work(&mut unit) {
            Ok(()) => {
                let kept = run("RELEASE work")
                    .map_err(unavailable)
                    .and_then(|_| batch.events.flush(tx));
                if let Err(e) = kept {
                    // The batch cannot stand without this unit's events:
                    // roll all of it back; its waiters hear it failed.
                    let open = batch.open.take();
                    batch.roll_back();
                    let why = StoreError::Unavailable(format!("the batch was rolled back: {e}"));
                    if let Some(open) = open {
                        self.durability.failed(open, &why);
                    }
                    return Err(e);
                }
                Ok(fate)
            }
            Err(e) => {
                // Undo this work only; the rest of the batch stands.
                let _ = tx.execute_batch("ROLLBACK TO work; RELEASE work");
                batch.events.rows.clear();
                batch.events.next_seq = next_seq;
                // Undone writes may have put earlier deadlines back.
                batch.deadline_floor = None;
                Err(e)
            }
        }
    }

    fn batch_len(&self) -> usize {
        self.lock().works
    }

    fn is_open(&self, batch: u64) -> bool {
        self.lock()
            .open
            .as_ref()
            .is_some_and(|open| open.number() == batch)
    }

    fn syncing(&self) -> bool {
        self.durability.progress().ended > *self.durability.finished.borrow()
    }

    fn commit_batch(&self) -> Result<(), StoreError> {
        let mut batch = self.lock();
        self.finish(&mut batch)
    }

    fn finished(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durability.finished.subscribe()
    }
}
