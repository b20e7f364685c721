//! The PostgreSQL store: several LabLink servers on one database behave as
//! one. URL: `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (see
//! `options`). The schema is versioned and migrated at start.
//!
//! The driver is `postgres` (the synchronous client built on
//! `tokio-postgres`, same maintainers): units of work are synchronous
//! closures over `Tx` (the domain's rules run between reads and writes), so
//! they run on the store's own threads, one connection each, and the
//! service awaits them across the async boundary; no pool crate is needed
//! for a fixed set of long-lived connections.
//!
//! This file is the store: opening it and the `Store` impl. One concern per
//! file beside it, as for SQLite: `options` (the URL), `migrate` (the
//! schema), `conn` (a connection, its prepared statements, PostgreSQL's
//! errors), `writer` (the writer thread: batches, one order across
//! replicas), `readers` (the reader threads), `tx` (a unit of work's SQL),
//! `usage` (the analytics rollups' SQL) and `feed` (events from other
//! replicas, in order; the shared clock).

mod cache;
mod conn;
mod feed;
mod migrate;
mod options;
mod readers;
mod tx;
mod usage;
mod writer;

#[cfg(test)]
pub(crate) mod test_database;

pub use feed::DbClock;
pub use options::PostgresOptions;

use std::sync::Arc;

use super::{CommitListener, Store, StoreError, Work};
use crate::clock::Clock;
use conn::Conn;
use feed::{Sequencer, Tail};
use readers::Readers;
use writer::Writer;

pub struct PostgresStore {
    writer: Writer,
    readers: Readers,
    sequencer: Arc<Sequencer>,
    clock: Arc<DbClock>,
    /// Stops the tail reader when the store goes.
    _tail: Tail,
    describe: String,
}

impl PostgresStore {
    /// Connects, brings the schema up to date, and starts the writer, the
    /// readers and the tail reader. Live events start after what is
    /// recorded now. Blocks (it is start-up) on a thread of its own: the
    /// client may not block an async worker.
    pub fn open(options: &PostgresOptions) -> Result<Self, StoreError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| Self::open_here(options))
                .join()
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable("opening the store panicked".into()))
                })
        })
    }

    fn open_here(options: &PostgresOptions) -> Result<Self, StoreError> {
        let mut conn = Conn::open(options)?;
        migrate::migrate(&mut conn)?;
        let recorded: i64 = conn
            .query_one("SELECT value FROM meta WHERE key = 'event_seq'", &[])?
            .get(0);
        let clock = Arc::new(DbClock::default());
        clock.measure(&mut conn)?;
        let sequencer = Arc::new(Sequencer::new(recorded as u64));
        Ok(Self {
            readers: Readers::start(options)?,
            _tail: Tail::start(options.clone(), sequencer.clone(), clock.clone())?,
            writer: Writer::start(options.clone(), conn, sequencer.clone())?,
            sequencer,
            clock,
            describe: format!("postgres {}", options.shown),
        })
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn transaction(&self, work: Work) -> Result<(), StoreError> {
        self.writer.run(work).await
    }

    async fn read(&self, work: Work) -> Result<(), StoreError> {
        self.readers.read(work).await
    }

    fn listen(&self, listener: CommitListener) {
        let _first = self.sequencer.listener.set(listener);
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn durable(&self) -> bool {
        true
    }

    fn clock(&self) -> Option<Arc<dyn Clock>> {
        Some(self.clock.clone())
    }
}
