//! The SQLite store, the embedded default: one database file in WAL mode,
//! each unit of work one `BEGIN IMMEDIATE` transaction, acknowledged only
//! after it commits. The schema is versioned (`PRAGMA user_version`) and
//! migrated at open from SQL embedded in the binary.
//!
//! URL: `sqlite://PATH[?synchronous=full|normal&busy_timeout_ms=N]`.
//! `synchronous=full` (the default) survives power loss; `normal` survives
//! a crash of the process but may lose the last commits on power loss.
//!
//! This file is the store: opening its connections (writer, checkpointer)
//! with their settings, and the `Store` impl. One concern per file beside
//! it: `options` (the URL), `migrate` (the schema), `writer` (the writer
//! thread: group commit, syncing, checkpoints), `readers` (the read-only
//! connections and their threads), `tx` (a unit of work's SQL), `usage`
//! (the analytics rollups' SQL) and `rows`
//! (row <-> domain mapping, SQLite's errors). It holds no table's SQL and
//! no batching or syncing of its own. No SQLite call runs on an async
//! worker: writes run on the writer thread, reads on the reader threads.

pub mod backup;
mod migrate;
mod options;
mod readers;
mod rows;
mod search;
mod tx;
mod usage;
mod writer;

pub use options::SqliteOptions;

use rusqlite::Connection;
use std::sync::{Arc, OnceLock};

use super::{CommitListener, Store, StoreError, Work};
use migrate::migrate;
use readers::Readers;
use rows::unavailable;
use writer::{Writer, WriterSetup};

pub struct SqliteStore {
    /// Runs every write; on drop, commits what is open and stops.
    writer: Writer,
    /// The connections for `read`: WAL lets them read committed state while
    /// the writer works, without joining a batch.
    readers: Readers,
    listener: Arc<OnceLock<CommitListener>>,
    describe: String,
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
        let checkpointer = Connection::open(&options.path).map_err(unavailable)?;
        checkpointer
            .busy_timeout(options.busy_timeout)
            .map_err(unavailable)?;
        let listener = Arc::new(OnceLock::new());
        let readers = Readers::open(options)?;
        let writer = Writer::start(
            conn,
            WriterSetup {
                checkpointer,
                wal: options.synchronous_full.then(|| wal.into()),
                listener: listener.clone(),
            },
        )?;
        Ok(Self {
            writer,
            readers,
            listener,
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

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn transaction(&self, work: Work) -> Result<(), StoreError> {
        self.writer.run(work).await
    }

    async fn read(&self, work: Work) -> Result<(), StoreError> {
        self.readers.read(work).await
    }

    fn listen(&self, listener: CommitListener) {
        let _first = self.listener.set(listener);
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn durable(&self) -> bool {
        true
    }
}
