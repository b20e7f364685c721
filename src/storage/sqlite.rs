//! The SQLite store, the embedded default: one database file in WAL mode,
//! each unit of work one `BEGIN IMMEDIATE` transaction, acknowledged only
//! after it commits. The schema is versioned (`PRAGMA user_version`) and
//! migrated at open from SQL embedded in the binary.
//!
//! URL: `sqlite://PATH[?synchronous=full|normal&busy_timeout_ms=N]`.
//! `synchronous=full` (the default) survives power loss; `normal` survives
//! a crash of the process but may lose the last commits on power loss.
//!
//! Group commit with `synchronous=full` writes a batch's commit to the
//! write-ahead log under the connection's lock, and a syncer thread then
//! `fdatasync`s the log outside it, so the next batch runs while the last
//! one is made durable (SQLite itself would fsync inside `COMMIT`, holding
//! everyone up). The connection runs with SQLite's `synchronous=NORMAL`,
//! which keeps its own syncs around checkpoints; a batch is answered only
//! after an fsync that began once its commit was written, so what is
//! acknowledged survives power loss exactly as with SQLite's `FULL`.
//! The same thread checkpoints the log into the database file on a
//! connection of its own, which SQLite would otherwise do inside the
//! `COMMIT` of whichever batch crossed its threshold.

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use serde::de::DeserializeOwned;
use std::collections::{BTreeSet, VecDeque};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::{Due, EventQuery, GroupCommit, Store, StoreError, TokenRecord, Tx, Work};
use crate::domain::{EquipmentId, EquipmentLocks, Event, Role, Session, SessionId, Timestamp};

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/sqlite/0001_initial.sql"),
    include_str!("migrations/sqlite/0002_tokens.sql"),
];

/// Options from the URL's query string.
#[derive(Clone, Debug, PartialEq)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub synchronous_full: bool,
    pub busy_timeout: Duration,
}

impl SqliteOptions {
    /// Parses `sqlite://PATH[?...]`; a relative PATH is taken under `base`.
    pub fn from_url(url: &str, base: &Path) -> Result<Self, String> {
        let rest = url
            .strip_prefix("sqlite://")
            .ok_or("a SQLite URL starts with sqlite://")?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err("the SQLite URL names no file: sqlite://PATH".into());
        }
        let mut options = Self {
            path: base.join(path),
            synchronous_full: true,
            busy_timeout: Duration::from_secs(5),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("synchronous", "full")) => options.synchronous_full = true,
                Some(("synchronous", "normal")) => options.synchronous_full = false,
                Some(("busy_timeout_ms", ms)) => {
                    let ms: u64 = ms.parse().map_err(|_| {
                        format!("busy_timeout_ms must be a whole number, got {ms:?}")
                    })?;
                    options.busy_timeout = Duration::from_millis(ms);
                }
                _ => {
                    return Err(format!(
                        "unknown SQLite option {pair:?}; known: synchronous=full|normal, busy_timeout_ms=N"
                    ));
                }
            }
        }
        Ok(options)
    }
}

/// Turns a SQLite failure into what an operator can act on.
fn unavailable(e: rusqlite::Error) -> StoreError {
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

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

pub struct SqliteStore {
    conn: Mutex<Batch>,
    /// A connection for `read`: WAL lets it read committed state while the
    /// writer works, without taking the writer's lock or joining a batch.
    reader: Mutex<Connection>,
    describe: String,
    durability: Arc<Durability>,
    /// Syncs and checkpoints what batches commit; joined on drop.
    syncer: Option<std::thread::JoinHandle<()>>,
}

/// The connection and the group-commit batch open on it, if any.
struct Batch {
    conn: Connection,
    /// The number of the open batch (`None`: no transaction open).
    open: Option<u64>,
    last: u64,
    works: usize,
    /// No deadline in the database is earlier than this; `None`: not known.
    /// Lets `due` skip its query on most requests (the floor is only ever
    /// lowered by writes, so a rolled-back write leaves it merely low).
    deadline_floor: Option<DeadlineFloor>,
    /// The current unit's events, inserted after its savepoint.
    events: EventBuffer,
}

/// A batched unit's events. They are numbered when recorded but inserted
/// only once the unit's savepoint is released, into the batch's own
/// transaction: inserted inside the savepoint, every index page they touch
/// was first copied to the savepoint's undo journal, which was the largest
/// single cost of a unit in the profile (docs/benchmarks.md). A unit never
/// reads back its own events, and the next unit sees them.
#[derive(Default)]
struct EventBuffer {
    /// The `seq` the next event gets; `None`: read it from the database.
    next_seq: Option<i64>,
    rows: Vec<EventRow>,
}

struct EventRow {
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
    fn new(event: &mut Event, seq: Option<i64>) -> Result<Self, StoreError> {
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
    fn insert(&self, conn: &Connection) -> Result<i64, StoreError> {
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

impl EventBuffer {
    fn flush(&mut self, conn: &Connection) -> Result<(), StoreError> {
        for row in self.rows.drain(..) {
            row.insert(conn)?;
        }
        Ok(())
    }
}

/// The earliest deadline stored, as far as the store knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum DeadlineFloor {
    At(Timestamp),
    /// Nothing has a deadline.
    Never,
}

/// Where committed batches stand on their way to being answered: committed
/// (written to the log), then durable (synced) and finished. Kept apart
/// from the connection so that syncing and waiters never contend for it.
struct Durability {
    /// The write-ahead log to fsync after commits; `None` with
    /// `synchronous=normal`, where a commit is finished when written.
    wal: Option<PathBuf>,
    progress: Mutex<Progress>,
    /// Signalled when `progress` changes (with something to sync).
    progressed: Condvar,
    /// The number of the last finished batch (changes wake waiters).
    finished: tokio::sync::watch::Sender<u64>,
    /// Recent batches whose commit or sync failed, with why.
    failures: Mutex<VecDeque<(RangeInclusive<u64>, String)>>,
}

/// What the syncer has to do.
#[derive(Clone, Copy, Default)]
struct Progress {
    /// The last batch that ended (committed, or rolled back).
    ended: u64,
    closing: bool,
}

impl Durability {
    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, batches: RangeInclusive<u64>, why: String) {
        tracing::error!(batches = ?batches, error = %why, "commit failed");
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() == 64 {
            failures.pop_front();
        }
        failures.push_back((batches, why));
    }

    /// Batch `number` has ended: committed, or failed with `outcome`.
    fn ended(&self, number: u64, outcome: &Result<(), StoreError>) {
        if let Err(e) = outcome {
            self.fail(number..=number, e.to_string());
        }
        self.progress().ended = number;
        match self.wal {
            Some(_) => self.progressed.notify_one(),
            // Nothing to sync: finished now (the syncer only checkpoints,
            // and looks on its own time rather than being woken per commit).
            None => {
                let _previous = self.finished.send_replace(number);
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

    /// The syncer thread: fsyncs whatever has been committed since the last
    /// sync (one fsync covers every batch committed before it began) and
    /// finishes those batches, and checkpoints the log now and then, until
    /// the store closes.
    fn run_syncer(&self, checkpointer: Connection) {
        const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
        let mut synced = 0;
        let (mut checkpointed, mut checkpointed_upto) = (std::time::Instant::now(), 0);
        loop {
            let Progress {
                ended: target,
                closing,
            } = {
                let mut progress = self.progress();
                while progress.ended == synced && !progress.closing {
                    let (guard, waited) = self
                        .progressed
                        .wait_timeout(progress, CHECKPOINT_EVERY)
                        .unwrap_or_else(|p| p.into_inner());
                    progress = guard;
                    if waited.timed_out() {
                        break;
                    }
                }
                *progress
            };
            if self.wal.is_some() && target > synced {
                if let Err(why) = self.sync_wal() {
                    self.fail(synced + 1..=target, why);
                }
                let _previous = self.finished.send_replace(target);
            }
            synced = target;
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

impl Batch {
    /// Commits the open batch, if any; returns its number and outcome.
    fn commit(&mut self) -> Option<(u64, Result<(), StoreError>)> {
        let number = self.open.take()?;
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
        Some((number, outcome))
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

impl SqliteStore {
    /// Opens (creating if needed) the database and brings its schema up to
    /// date.
    pub fn open(options: &SqliteOptions) -> Result<Self, StoreError> {
        if let Some(dir) = options.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let mut conn = Connection::open(&options.path).map_err(unavailable)?;
        conn.busy_timeout(options.busy_timeout)
            .map_err(unavailable)?;
        // Every statement a request runs stays compiled: the default cache
        // (16) is smaller than the set a busy server cycles through, and
        // re-parsing showed in the profile (docs/benchmarks.md).
        conn.set_prepared_statement_cache_capacity(64);
        // One plan per statement whatever values are bound: without this,
        // SQLite re-plans the deadline query (whose partial index it checks
        // against the bound `now`) on every execution.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )
        .map_err(unavailable)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(unavailable)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "cannot switch {} to WAL mode (got {mode})",
                options.path.display()
            )));
        }
        // SQLite's own syncs: NORMAL in both modes (with `full` the store
        // fsyncs the log after each commit itself: see the module's doc).
        // temp_store: group commit runs each unit in a savepoint, whose
        // undo pages (the sub-journal) would otherwise go to a temporary
        // file with a write per page (seen in the profile).
        // wal_autocheckpoint: the syncer thread checkpoints; SQLite's own,
        // inside a commit, is only the backstop for a log that keeps
        // growing (40 MB of 4 KiB pages rather than the default 4 MB).
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY;
             PRAGMA wal_autocheckpoint = 10000;",
        )
        .map_err(unavailable)?;
        migrate(&mut conn)?;
        let mut wal = options.path.clone().into_os_string();
        wal.push("-wal");
        let durability = Arc::new(Durability {
            wal: options.synchronous_full.then(|| wal.into()),
            progress: Mutex::new(Progress::default()),
            progressed: Condvar::new(),
            finished: tokio::sync::watch::channel(0).0,
            failures: Mutex::new(VecDeque::new()),
        });
        let checkpointer = Connection::open(&options.path).map_err(unavailable)?;
        checkpointer
            .busy_timeout(options.busy_timeout)
            .map_err(unavailable)?;
        let syncer = {
            let durability = durability.clone();
            std::thread::Builder::new()
                .name("lablink-wal-sync".into())
                .spawn(move || durability.run_syncer(checkpointer))
                .map_err(|e| StoreError::Unavailable(format!("cannot start the syncer: {e}")))?
        };
        // `query_only`: a read is never a way to write.
        let reader = Connection::open(&options.path).map_err(unavailable)?;
        reader
            .busy_timeout(options.busy_timeout)
            .and_then(|()| reader.execute_batch("PRAGMA query_only = ON;"))
            .map_err(unavailable)?;
        Ok(Self {
            reader: Mutex::new(reader),
            conn: Mutex::new(Batch {
                conn,
                open: None,
                last: 0,
                works: 0,
                deadline_floor: None,
                events: EventBuffer::default(),
            }),
            durability,
            syncer: Some(syncer),
            describe: format!(
                "sqlite {} (synchronous={})",
                options.path.display(),
                if options.synchronous_full {
                    "full"
                } else {
                    "normal"
                }
            ),
        })
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
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

impl SqliteStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Batch> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits the open batch, if any; its waiters hear once it is durable.
    fn finish(&self, batch: &mut Batch) -> Result<(), StoreError> {
        let Some((number, outcome)) = batch.commit() else {
            return Ok(());
        };
        self.durability.ended(number, &outcome);
        outcome
    }
}

impl GroupCommit for SqliteStore {
    fn run_in_batch(&self, work: &mut Work<'_>) -> Result<u64, StoreError> {
        let mut guard = self.lock();
        let batch = &mut *guard;
        let number = match batch.open {
            Some(number) => number,
            None => {
                batch
                    .conn
                    .prepare_cached("BEGIN IMMEDIATE")
                    .and_then(|mut s| s.execute([]))
                    .map_err(unavailable)?;
                batch.last += 1;
                batch.open = Some(batch.last);
                // Plain transactions may have recorded events since.
                batch.events.next_seq = None;
                batch.last
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
                    batch.roll_back();
                    let why = StoreError::Unavailable(format!("the batch was rolled back: {e}"));
                    self.durability.ended(number, &Err(why));
                    return Err(e);
                }
                Ok(number)
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
        self.lock().open == Some(batch)
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

    fn outcome(&self, batch: u64) -> Option<Result<(), StoreError>> {
        // Batches finish in order: up to the last finished one, all are done.
        if *self.durability.finished.borrow() < batch {
            return None;
        }
        let failures = self
            .durability
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Some(match failures.iter().find(|(n, _)| n.contains(&batch)) {
            Some((_, why)) => Err(StoreError::Unavailable(format!("the commit failed: {why}"))),
            None => Ok(()),
        })
    }
}

impl Store for SqliteStore {
    fn transaction(&self, work: &mut Work<'_>) -> Result<(), StoreError> {
        let mut guard = self.lock();
        // A batch left open by group commit is finished first, so this
        // transaction stands alone and is committed when it returns.
        self.finish(&mut guard)?;
        let batch = &mut *guard;
        let tx = batch
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        if let Err(e) = work(&mut SqliteTx::new(&tx, &mut batch.deadline_floor)) {
            // Undone writes may have put earlier deadlines back.
            batch.deadline_floor = None;
            return Err(e);
        }
        if let Err(e) = tx.commit() {
            batch.deadline_floor = None;
            return Err(unavailable(e));
        }
        // On any error above the transaction is dropped, which rolls it back.
        drop(guard);
        self.durability
            .sync_wal()
            .map_err(|why| StoreError::Unavailable(format!("the commit failed: {why}")))
    }

    fn read(&self, work: &mut Work<'_>) -> Result<(), StoreError> {
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        // One snapshot for the whole unit; committing a read writes nothing.
        let tx = reader.unchecked_transaction().map_err(unavailable)?;
        work(&mut SqliteTx::new(&tx, &mut None))?;
        tx.commit().map_err(unavailable)
    }

    fn group_commit(&self) -> Option<&dyn GroupCommit> {
        Some(self)
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn blocks(&self) -> bool {
        true
    }

    fn durable(&self) -> bool {
        true
    }
}

/// A unit of work's view of the connection, inside a transaction (or a
/// savepoint of a batch) that the store opened.
struct SqliteTx<'a> {
    tx: &'a Connection,
    deadline_floor: &'a mut Option<DeadlineFloor>,
    /// Where a batched unit's events wait for its savepoint's release;
    /// `None`: a plain transaction, which inserts them at once.
    events: Option<&'a mut EventBuffer>,
    /// Sessions this unit read or wrote (a lock change checks the same
    /// sessions' liveness more than once).
    sessions: std::collections::HashMap<String, Option<Session>>,
    /// The participants of each equipment as this unit loaded it, so saving
    /// can update the participant index without reading it back.
    loaded: std::collections::HashMap<String, BTreeSet<String>>,
}

impl<'a> SqliteTx<'a> {
    fn new(tx: &'a Connection, deadline_floor: &'a mut Option<DeadlineFloor>) -> Self {
        Self {
            tx,
            deadline_floor,
            events: None,
            sessions: Default::default(),
            loaded: Default::default(),
        }
    }
}

fn millis(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::as_millis)
}

fn read_event(seq: i64, data: &str) -> Result<Event, StoreError> {
    let mut event: Event = serde_json::from_str(data).map_err(corrupt)?;
    event.seq = Some(seq as u64);
    Ok(event)
}

impl SqliteTx<'_> {
    /// Something may now be due at `deadline`.
    fn lower_deadline_floor(&mut self, deadline: Option<Timestamp>) {
        if let (Some(floor), Some(at)) = (self.deadline_floor.as_mut(), deadline) {
            *floor = (*floor).min(DeadlineFloor::At(at));
        }
    }

    /// The one JSON `data` row that `sql` selects by `key`, decoded.
    fn row<T: DeserializeOwned>(&self, sql: &str, key: &str) -> Result<Option<T>, StoreError> {
        let data: Option<String> = self
            .tx
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
            .map_err(unavailable)?;
        data.map(|d| serde_json::from_str(&d).map_err(corrupt))
            .transpose()
    }

    /// Every JSON `data` row that `sql` selects, decoded.
    fn rows<T: DeserializeOwned>(&self, sql: &str) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.tx.prepare_cached(sql).map_err(unavailable)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(unavailable)?;
        rows.map(|row| serde_json::from_str(&row.map_err(unavailable)?).map_err(corrupt))
            .collect()
    }

    fn events(&self, sql: &str, params: &[&dyn rusqlite::ToSql]) -> Result<Vec<Event>, StoreError> {
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
}

impl Tx for SqliteTx<'_> {
    fn session(&mut self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        if let Some(known) = self.sessions.get(id.as_str()) {
            return Ok(known.clone());
        }
        let found: Option<Session> =
            self.row("SELECT data FROM sessions WHERE id = ?1", id.as_str())?;
        self.sessions.insert(id.to_string(), found.clone());
        Ok(found)
    }

    fn sessions(&mut self) -> Result<Vec<Session>, StoreError> {
        self.rows("SELECT data FROM sessions")
    }

    fn save_session(&mut self, session: &Session) -> Result<(), StoreError> {
        let data = serde_json::to_string(session).map_err(corrupt)?;
        self.tx
            .prepare_cached(
                "INSERT INTO sessions (id, deadline, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET deadline = excluded.deadline, data = excluded.data",
            )
            .and_then(|mut s| {
                s.execute(params![
                    session.id.as_str(),
                    millis(session.deadline()),
                    data
                ])
            })
            .map_err(unavailable)?;
        self.lower_deadline_floor(session.deadline());
        self.sessions
            .insert(session.id.to_string(), Some(session.clone()));
        Ok(())
    }

    fn delete_session(&mut self, id: &SessionId) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("DELETE FROM sessions WHERE id = ?1")
            .and_then(|mut s| s.execute([id.as_str()]))
            .map_err(unavailable)?;
        self.sessions.insert(id.to_string(), None);
        Ok(())
    }

    fn equipment_locks(&mut self, id: &EquipmentId) -> Result<EquipmentLocks, StoreError> {
        let found = self.row(
            "SELECT data FROM equipment_locks WHERE equipment_id = ?1",
            id.as_str(),
        )?;
        let locks = found.unwrap_or_else(|| EquipmentLocks::new(id.clone()));
        let participants = locks.participants().map(|s| s.to_string()).collect();
        self.loaded.insert(id.to_string(), participants);
        Ok(locks)
    }

    fn save_equipment_locks(&mut self, locks: &EquipmentLocks) -> Result<(), StoreError> {
        let id = locks.equipment_id.as_str();
        let data = serde_json::to_string(locks).map_err(corrupt)?;
        self.tx
            .prepare_cached(
                "INSERT INTO equipment_locks (equipment_id, deadline, busy, data) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (equipment_id) DO UPDATE
                 SET deadline = excluded.deadline, busy = excluded.busy, data = excluded.data",
            )
            .and_then(|mut s| s.execute(params![id, millis(locks.next_deadline()), !locks.is_idle(), data]))
            .map_err(unavailable)?;
        self.lower_deadline_floor(locks.next_deadline());
        // Keep the participant index in step with the new state: only the
        // sessions that came or went are written.
        let after: BTreeSet<String> = locks.participants().map(|s| s.to_string()).collect();
        let before = match self.loaded.insert(id.to_string(), after.clone()) {
            Some(loaded) => loaded,
            None => {
                let mut stmt = self
                    .tx
                    .prepare_cached("SELECT session_id FROM participants WHERE equipment_id = ?1")
                    .map_err(unavailable)?;
                let rows = stmt.query_map([id], |r| r.get(0)).map_err(unavailable)?;
                rows.collect::<Result<_, _>>().map_err(unavailable)?
            }
        };
        for gone in before.difference(&after) {
            self.tx
                .prepare_cached(
                    "DELETE FROM participants WHERE session_id = ?1 AND equipment_id = ?2",
                )
                .and_then(|mut s| s.execute([gone.as_str(), id]))
                .map_err(unavailable)?;
        }
        for new in after.difference(&before) {
            self.tx
                .prepare_cached(
                    "INSERT INTO participants (session_id, equipment_id) VALUES (?1, ?2)",
                )
                .and_then(|mut s| s.execute([new.as_str(), id]))
                .map_err(unavailable)?;
        }
        Ok(())
    }

    fn busy_equipment(&mut self) -> Result<Vec<EquipmentLocks>, StoreError> {
        self.rows("SELECT data FROM equipment_locks WHERE busy = 1")
    }

    fn equipment_of_session(&mut self, id: &SessionId) -> Result<Vec<EquipmentId>, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached(
                "SELECT equipment_id FROM participants WHERE session_id = ?1 ORDER BY equipment_id",
            )
            .map_err(unavailable)?;
        let rows = stmt
            .query_map([id.as_str()], |r| r.get::<_, String>(0))
            .map_err(unavailable)?;
        rows.map(|row| {
            EquipmentId::parse(&row.map_err(unavailable)?)
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .collect()
    }

    fn due(&mut self, now: Timestamp, max: usize) -> Result<Vec<Due>, StoreError> {
        if self
            .deadline_floor
            .is_some_and(|floor| floor > DeadlineFloor::At(now))
        {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .tx
            .prepare_cached(
                // The explicit `IS NOT NULL` matches the partial indexes
                // without looking at `?1` (the plan must not depend on it:
                // see QPSG in `open`).
                "SELECT kind, id FROM (
                    SELECT 0 AS kind, id, deadline FROM sessions
                    WHERE deadline IS NOT NULL AND deadline <= ?1
                    UNION ALL
                    SELECT 1, equipment_id, deadline FROM equipment_locks
                    WHERE deadline IS NOT NULL AND deadline <= ?1
                 ) ORDER BY deadline LIMIT ?2",
            )
            .map_err(unavailable)?;
        let rows = stmt
            .query_map(params![now.as_millis(), max as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(unavailable)?;
        let bad_id = |e: crate::domain::DomainError| StoreError::Corrupt(e.to_string());
        let due: Vec<Due> = rows
            .map(|row| {
                let (kind, id) = row.map_err(unavailable)?;
                Ok(if kind == 0 {
                    Due::Session(SessionId::parse(&id).map_err(bad_id)?)
                } else {
                    Due::Equipment(EquipmentId::parse(&id).map_err(bad_id)?)
                })
            })
            .collect::<Result<_, StoreError>>()?;
        drop(stmt);
        if due.is_empty() {
            // Nothing is due before the earliest deadline left.
            *self.deadline_floor = Some(match self.next_deadline()? {
                Some(at) => DeadlineFloor::At(at),
                None => DeadlineFloor::Never,
            });
        }
        Ok(due)
    }

    fn next_deadline(&mut self) -> Result<Option<Timestamp>, StoreError> {
        let next: Option<i64> = self
            .tx
            .prepare_cached(
                // `IS NOT NULL` lets SQLite answer each MIN from the partial
                // deadline index instead of scanning the table.
                "SELECT MIN(d) FROM (
                    SELECT MIN(deadline) AS d FROM sessions WHERE deadline IS NOT NULL
                    UNION ALL
                    SELECT MIN(deadline) FROM equipment_locks WHERE deadline IS NOT NULL
                 )",
            )
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(unavailable)?;
        Ok(next.map(Timestamp::from_millis))
    }

    fn record_events(&mut self, events: &mut [Event]) -> Result<(), StoreError> {
        let Some(buffer) = self.events.as_deref_mut() else {
            for event in events {
                let seq = EventRow::new(event, None)?.insert(self.tx)?;
                event.seq = Some(seq as u64);
            }
            return Ok(());
        };
        let mut next = match buffer.next_seq {
            Some(next) => next,
            None => {
                // AUTOINCREMENT's counter: never reused, even after pruning.
                self.tx
                    .prepare_cached(
                        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
                    )
                    .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
                    .map_err(unavailable)?
                    + 1
            }
        };
        for event in events {
            buffer.rows.push(EventRow::new(event, Some(next))?);
            event.seq = Some(next as u64);
            next += 1;
        }
        buffer.next_seq = Some(next);
        Ok(())
    }

    fn equipment_events(
        &mut self,
        id: &EquipmentId,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let mut events = self.events(
            "SELECT seq, data FROM events WHERE equipment_id = ?1 ORDER BY seq DESC LIMIT ?2",
            &[&id.as_str(), &(limit as i64)],
        )?;
        events.reverse();
        Ok(events)
    }

    fn session_events(&mut self, id: &SessionId, limit: usize) -> Result<Vec<Event>, StoreError> {
        let mut events = self.events(
            "SELECT seq, data FROM events WHERE seq IN (
                SELECT seq FROM events WHERE session_id = ?1
                UNION SELECT seq FROM events WHERE forced_by = ?1
             ) ORDER BY seq DESC LIMIT ?2",
            &[&id.as_str(), &(limit as i64)],
        )?;
        events.reverse();
        Ok(events)
    }

    fn last_event_seq(&mut self) -> Result<u64, StoreError> {
        self.tx
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
            .map(|v| v as u64)
            .map_err(unavailable)
    }

    fn query_events(&mut self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        // The filters are fixed; absent ones compare with NULL and pass.
        self.events(
            "SELECT seq, data FROM events
             WHERE (?1 IS NULL OR equipment_id = ?1)
               AND (?2 IS NULL OR session_id = ?2 OR forced_by = ?2)
               AND (?3 IS NULL OR event = ?3)
               AND (?4 IS NULL OR at >= ?4)
               AND (?5 IS NULL OR at < ?5)
               AND seq > ?6
             ORDER BY seq LIMIT ?7",
            &[
                &query.equipment_id.as_ref().map(|e| e.as_str()),
                &query.session_id.as_ref().map(|s| s.as_str()),
                &query.kind.map(|k| k.as_str()),
                &millis(query.since),
                &millis(query.until),
                &(query.after.unwrap_or(0) as i64),
                &(query.limit as i64),
            ],
        )
    }

    fn prune_events(&mut self, before: Timestamp) -> Result<usize, StoreError> {
        self.tx
            .prepare_cached("DELETE FROM events WHERE at < ?1")
            .and_then(|mut s| s.execute([before.as_millis()]))
            .map_err(unavailable)
    }

    fn save_token(&mut self, token: &TokenRecord) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO tokens (id, user_name, role, hash, created_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    token.id,
                    token.user,
                    token.role.as_str(),
                    token.hash,
                    token.created_at.as_millis(),
                    millis(token.revoked_at),
                ])
            })
            .map_err(unavailable)?;
        self.bump_tokens_version()
    }

    fn token_by_hash(&mut self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self
            .token_rows("SELECT id, user_name, role, hash, created_at, revoked_at FROM tokens WHERE hash = ?1", &[&hash])?
            .pop())
    }

    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        self.token_rows(
            "SELECT id, user_name, role, hash, created_at, revoked_at FROM tokens ORDER BY created_at, id",
            &[],
        )
    }

    fn revoke_token(&mut self, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        let changed = self
            .tx
            .prepare_cached(
                "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            )
            .and_then(|mut s| s.execute(params![id, at.as_millis()]))
            .map_err(unavailable)?;
        if changed > 0 {
            self.bump_tokens_version()?;
        }
        Ok(changed > 0)
    }

    fn tokens_version(&mut self) -> Result<u64, StoreError> {
        self.tx
            .prepare_cached("SELECT value FROM meta WHERE key = 'tokens_version'")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
            .map(|v| v as u64)
            .map_err(unavailable)
    }
}

impl SqliteTx<'_> {
    fn bump_tokens_version(&self) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("UPDATE meta SET value = value + 1 WHERE key = 'tokens_version'")
            .and_then(|mut s| s.execute([]))
            .map_err(unavailable)?;
        Ok(())
    }

    fn token_rows(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_file_and_options() {
        let base = Path::new("/data");
        let o = SqliteOptions::from_url("sqlite://lablink-data/lablink.db", base).unwrap();
        assert_eq!(o.path, PathBuf::from("/data/lablink-data/lablink.db"));
        assert!(o.synchronous_full);
        let o = SqliteOptions::from_url(
            "sqlite:///abs/x.db?synchronous=normal&busy_timeout_ms=50",
            base,
        )
        .unwrap();
        assert_eq!(
            (o.path.as_path(), o.synchronous_full, o.busy_timeout),
            (Path::new("/abs/x.db"), false, Duration::from_millis(50))
        );
        assert!(SqliteOptions::from_url("sqlite://", base).is_err());
        assert!(SqliteOptions::from_url("sqlite://x.db?fast=yes", base).is_err());
    }
}
