//! The SQLite store's writer: one thread owns the write connection and runs
//! every unit of work, so no SQLite call ever blocks an async worker and
//! nothing else needs the connection's lock. Units arrive on a channel and
//! run in savepoints of one open batch transaction (group commit): a unit
//! that fails is undone alone, and the batch commits once nobody else is
//! waiting to join it (or it is full). Each unit is answered only once its
//! batch is durable.
//!
//! With `synchronous=full` a batch's commit is written to the write-ahead
//! log here, and the syncer thread then `fdatasync`s the log, so the next
//! batch runs while the last one is made durable (SQLite itself would fsync
//! inside `COMMIT`, holding everyone up). The connection runs with
//! SQLite's `synchronous=NORMAL`, which keeps its own syncs around
//! checkpoints; a batch is answered only after an fsync that began once its
//! commit was written, so what is acknowledged survives power loss exactly
//! as with SQLite's `FULL`. While a sync is under way the open batch stays
//! open: committed now, it would only wait for the next sync, so more units
//! may as well join it. The syncer also checkpoints the log into the
//! database file on a connection of its own, which SQLite would otherwise
//! do inside the `COMMIT` of whichever batch crossed its threshold.
//!
//! Once a batch is durable its recorded events go to the store's listener,
//! in `seq` order (batches are committed and synced in order).

use rusqlite::Connection;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use super::rows::{EventRow, unavailable};
use super::tx::{DeadlineFloor, SqliteTx};
use crate::domain::Event;
use crate::storage::{CommitListener, StoreError, Work};

/// The most units one batch holds: a batch that never ends would answer
/// nobody.
const MAX_BATCH: usize = 64;

/// How often the syncer checkpoints the log (when something was committed).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// A unit of work and where its outcome goes.
struct Unit {
    work: Work,
    answer: oneshot::Sender<Result<(), StoreError>>,
}

enum Message {
    Unit(Unit),
    /// From the syncer: every batch up to this number is durable.
    Synced(u64),
    /// From the store, dropped: commit what is open and stop.
    Close,
}

/// The store's handle on the writer thread.
pub(super) struct Writer {
    inbox: Sender<Message>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the writer needs besides its connection.
pub(super) struct WriterSetup {
    /// The checkpointer's connection (the syncer's).
    pub(super) checkpointer: Connection,
    /// The write-ahead log to fsync after commits; `None` with
    /// `synchronous=normal`, where a commit is durable enough when written.
    pub(super) wal: Option<PathBuf>,
    pub(super) listener: Arc<OnceLock<CommitListener>>,
}

impl Writer {
    /// Starts the writer and syncer threads on `conn`.
    pub(super) fn start(conn: Connection, setup: WriterSetup) -> Result<Self, StoreError> {
        let (inbox, messages) = std::sync::mpsc::channel();
        let (to_syncer, committed) = std::sync::mpsc::channel();
        let committed_upto = Arc::new(AtomicU64::new(0));
        let syncer = Syncer {
            wal: setup.wal.clone(),
            checkpointer: setup.checkpointer,
            listener: setup.listener.clone(),
            writer: inbox.clone(),
            committed_upto: committed_upto.clone(),
        };
        let syncer = std::thread::Builder::new()
            .name("lablink-wal-sync".into())
            .spawn(move || syncer.run(committed))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the syncer: {e}")))?;
        let state = WriterThread {
            conn,
            open: None,
            last: 0,
            handed: 0,
            synced: 0,
            deadline_floor: None,
            events: EventBuffer::default(),
            syncs: setup.wal.is_some(),
            to_syncer: Some(to_syncer),
            syncer: Some(syncer),
            committed_upto,
            listener: setup.listener,
        };
        let thread = std::thread::Builder::new()
            .name("lablink-writer".into())
            .spawn(move || state.serve(messages))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(Self {
            inbox,
            thread: Some(thread),
        })
    }

    /// Runs `work` in a batch; completes once its batch is durable.
    pub(super) async fn run(&self, work: Work) -> Result<(), StoreError> {
        let closed = || StoreError::Unavailable("the store is closed".into());
        let (answer, answered) = oneshot::channel();
        self.inbox
            .send(Message::Unit(Unit { work, answer }))
            .map_err(|_| closed())?;
        answered.await.map_err(|_| closed())?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Units sent before this still run: the channel keeps their order.
        let _ = self.inbox.send(Message::Close);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The batch open on the connection.
struct OpenBatch {
    number: u64,
    /// Its units that succeeded, answered when it ends.
    answers: Vec<oneshot::Sender<Result<(), StoreError>>>,
    /// What they recorded, with their `seq`, for the listener.
    events: Vec<Event>,
}

/// A committed batch on its way to being durable.
struct Committed {
    number: u64,
    answers: Vec<oneshot::Sender<Result<(), StoreError>>>,
    events: Vec<Event>,
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
    /// The history's time order key so far (see `EventRow::t`); `None`:
    /// read it from the database.
    pub(super) last_t: Option<i64>,
    pub(super) rows: Vec<EventRow>,
    /// The same events, numbered, for the listener.
    pub(super) recorded: Vec<Event>,
}

impl EventBuffer {
    fn flush(&mut self, conn: &Connection) -> Result<(), StoreError> {
        for row in self.rows.drain(..) {
            row.insert(conn)?;
        }
        Ok(())
    }

    /// Forgets the current unit's events (it was undone).
    fn discard(&mut self, (next_seq, last_t): (Option<i64>, Option<i64>)) {
        self.rows.clear();
        self.recorded.clear();
        self.next_seq = next_seq;
        self.last_t = last_t;
    }
}

struct WriterThread {
    conn: Connection,
    open: Option<OpenBatch>,
    /// The number of the last batch opened.
    last: u64,
    /// The last batch handed to the syncer, and the last it made durable.
    handed: u64,
    synced: u64,
    /// No deadline in the database is earlier than this; `None`: not known.
    /// Lets `due` skip its query on most units (the floor is only ever
    /// lowered by writes, so a rolled-back write leaves it merely low).
    deadline_floor: Option<DeadlineFloor>,
    events: EventBuffer,
    /// Whether commits go to the syncer to be fsynced (`synchronous=full`).
    syncs: bool,
    to_syncer: Option<Sender<Committed>>,
    syncer: Option<std::thread::JoinHandle<()>>,
    /// The last batch committed, for the syncer's checkpoints.
    committed_upto: Arc<AtomicU64>,
    listener: Arc<OnceLock<CommitListener>>,
}

impl WriterThread {
    fn serve(mut self, messages: Receiver<Message>) {
        loop {
            let ready_to_commit = self.open.is_some() && self.handed == self.synced;
            let message = if ready_to_commit {
                match messages.try_recv() {
                    Ok(message) => message,
                    // Nobody else is waiting to join: the batch ends.
                    Err(TryRecvError::Empty) => {
                        self.commit();
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match messages.recv() {
                    Ok(message) => message,
                    Err(_) => break,
                }
            };
            match message {
                Message::Unit(unit) => {
                    self.run_unit(unit);
                    if self
                        .open
                        .as_ref()
                        .is_some_and(|b| b.answers.len() >= MAX_BATCH)
                    {
                        self.commit();
                    }
                }
                Message::Synced(number) => self.synced = self.synced.max(number),
                Message::Close => break,
            }
        }
        self.commit();
        // The syncer makes what was handed to it durable, then stops.
        drop(self.to_syncer.take());
        if let Some(syncer) = self.syncer.take() {
            let _ = syncer.join();
        }
    }

    /// Runs one unit in the open batch (opening one if none).
    fn run_unit(&mut self, Unit { mut work, answer }: Unit) {
        if self.open.is_none() {
            let begun = self
                .conn
                .prepare_cached("BEGIN IMMEDIATE")
                .and_then(|mut s| s.execute([]))
                .map_err(unavailable);
            if let Err(e) = begun {
                let _ = answer.send(Err(e));
                return;
            }
            self.last += 1;
            self.open = Some(OpenBatch {
                number: self.last,
                answers: Vec::new(),
                events: Vec::new(),
            });
            // Another connection may have recorded events since.
            self.events.next_seq = None;
            self.events.last_t = None;
        }
        let conn = &self.conn;
        // Cached statements: these run for every unit of work.
        let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
        if let Err(e) = run("SAVEPOINT work") {
            let _ = answer.send(Err(unavailable(e)));
            return;
        }
        let next_seq = (self.events.next_seq, self.events.last_t);
        let mut unit = SqliteTx::new(conn, &mut self.deadline_floor);
        unit.events = Some(&mut self.events);
        // A unit that panics is undone like one that fails, and the thread
        // goes on serving everyone else.
        let done = std::panic::catch_unwind(AssertUnwindSafe(|| work(&mut unit)))
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the unit of work panicked".into())));
        drop(unit);
        if let Err(e) = done {
            // Undo this unit only; the rest of the batch stands.
            let _ = conn.execute_batch("ROLLBACK TO work; RELEASE work");
            self.events.discard(next_seq);
            // Undone writes may have put earlier deadlines back.
            self.deadline_floor = None;
            let _ = answer.send(Err(e));
            return;
        }
        let kept = run("RELEASE work")
            .map_err(unavailable)
            .and_then(|_| self.events.flush(conn));
        let Some(open) = self.open.as_mut() else {
            return;
        };
        match kept {
            Ok(()) => {
                open.answers.push(answer);
                open.events.append(&mut self.events.recorded);
            }
            Err(e) => {
                // The batch cannot stand without this unit's events: roll
                // all of it back; everyone in it hears it failed.
                let why = StoreError::Unavailable(format!("the batch was rolled back: {e}"));
                let _ = answer.send(Err(e));
                self.roll_back(&why);
            }
        }
    }

    /// Commits the open batch, if any, and sends it on to be made durable.
    fn commit(&mut self) {
        let Some(batch) = self.open.take() else {
            return;
        };
        let committed = self
            .conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))
            .map_err(unavailable);
        if let Err(e) = committed {
            let why = StoreError::Unavailable(format!("the commit failed: {e}"));
            self.open = Some(batch);
            return self.roll_back(&why);
        }
        self.committed_upto.store(batch.number, Ordering::Release);
        crate::measure::store_batch(batch.answers.len());
        let committed = Committed {
            number: batch.number,
            answers: batch.answers,
            events: batch.events,
        };
        if !self.syncs {
            // Durable as `synchronous=normal` promises, once written.
            return settle(vec![committed], Ok(()), &self.listener);
        }
        self.handed = committed.number;
        if let Some(Err(returned)) = self.to_syncer.as_ref().map(|s| s.send(committed)) {
            // The syncer is gone (it only goes when the store closes).
            let why = "the syncer stopped".to_string();
            settle(vec![returned.0], Err(why), &self.listener);
            self.synced = self.handed;
        }
    }

    /// Rolls the open batch back, whole; everyone in it hears `why`.
    fn roll_back(&mut self, why: &StoreError) {
        let _ = self.conn.execute_batch("ROLLBACK");
        self.events = EventBuffer::default();
        // Undone writes may have put earlier deadlines back.
        self.deadline_floor = None;
        if let Some(batch) = self.open.take() {
            tracing::error!(batch = batch.number, error = %why, "batch failed");
            for answer in batch.answers {
                let _ = answer.send(Err(StoreError::Unavailable(why.to_string())));
            }
        }
    }
}

/// Hands the events of `batches` to the listener, then answers every unit
/// with `outcome`: whoever is answered finds its events already live. A
/// failed sync still publishes: the batches were committed, so their events
/// are in the history that readers see, and leaving them out would put a
/// gap in the live `seq` order.
fn settle(
    batches: Vec<Committed>,
    outcome: Result<(), String>,
    listener: &OnceLock<CommitListener>,
) {
    let (mut events, mut answers) = (Vec::new(), Vec::new());
    for batch in batches {
        events.extend(batch.events);
        answers.extend(batch.answers);
    }
    if let Some(listener) = listener.get().filter(|_| !events.is_empty()) {
        listener(events, crate::storage::Origin::Here);
    }
    for answer in answers {
        let told = outcome
            .clone()
            .map_err(|why| StoreError::Unavailable(format!("the commit failed: {why}")));
        let _ = answer.send(told);
    }
}

/// The syncer thread's state.
struct Syncer {
    wal: Option<PathBuf>,
    checkpointer: Connection,
    listener: Arc<OnceLock<CommitListener>>,
    writer: Sender<Message>,
    committed_upto: Arc<AtomicU64>,
}

impl Syncer {
    /// Fsyncs whatever has been committed since the last sync (one fsync
    /// covers every batch committed before it began) and settles those
    /// batches, and checkpoints the log now and then, until the writer
    /// stops.
    fn run(self, committed: Receiver<Committed>) {
        let (mut checkpointed, mut checkpointed_upto) = (Instant::now(), 0);
        loop {
            let first = match committed.recv_timeout(CHECKPOINT_EVERY) {
                Ok(batch) => Some(batch),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if let Some(first) = first {
                // Taken before the fsync begins: it covers their commits.
                let mut batches = vec![first];
                batches.extend(committed.try_iter());
                let last = batches.last().map_or(0, |b| b.number);
                let outcome = self.sync_wal();
                if let Err(why) = &outcome {
                    tracing::error!(first = batches[0].number, last, error = %why, "commit failed");
                }
                settle(batches, outcome, &self.listener);
                let _ = self.writer.send(Message::Synced(last));
            }
            let upto = self.committed_upto.load(Ordering::Acquire);
            if upto > checkpointed_upto && checkpointed.elapsed() >= CHECKPOINT_EVERY {
                // PASSIVE: copies what it can without holding up the writer.
                if let Err(e) = self
                    .checkpointer
                    .execute_batch("PRAGMA wal_checkpoint(PASSIVE)")
                {
                    tracing::warn!(error = %e, "checkpoint failed; SQLite's own will run");
                }
                (checkpointed, checkpointed_upto) = (Instant::now(), upto);
            }
        }
    }

    /// Fsyncs the write-ahead log (a no-op with `synchronous=normal`).
    fn sync_wal(&self) -> Result<(), String> {
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
}
