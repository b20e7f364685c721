//! What other replicas did, and the time they all share.
//!
//! `Sequencer`: hands recorded events to the store's listener in `seq`
//! order without gaps or repeats, whether they come from this server's
//! writer (at once, when they follow on from what was handed last) or from
//! the tail reader (everything after what was handed last, read from the
//! history). Writes of all replicas are numbered in commit order (see
//! `writer`), so what the history shows up to a `seq` is complete.
//!
//! The tail thread listens for `NOTIFY lablink_events` (sent by every
//! replica's commits) and then reads the history after what was handed
//! last; every second it looks anyway, in case a notification was lost
//! with a connection. It also keeps `DbClock` set: every replica takes its
//! time from the database's clock, so a lease never ends early because one
//! server's clock runs ahead of another's (within half a round trip).

use postgres::fallible_iterator::FallibleIterator;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::PostgresOptions;
use super::conn::Conn;
use super::tx::PgTx;
use crate::clock::{Clock, SleepFuture, SystemClock};
use crate::domain::{Event, Timestamp};
use crate::storage::{CommitListener, EventQuery, StoreError, Tx};

/// How often the tail reads the history without being told to.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How often the clock offset is measured again.
const CLOCK_EVERY: Duration = Duration::from_secs(5);

pub(super) struct Sequencer {
    /// The last `seq` handed to the listener.
    handed: Mutex<u64>,
    pub(super) listener: OnceLock<CommitListener>,
}

impl Sequencer {
    pub(super) fn new(handed: u64) -> Self {
        Self {
            handed: Mutex::new(handed),
            listener: OnceLock::new(),
        }
    }

    fn handed(&self) -> u64 {
        *self.handed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands on the part of `events` (in `seq` order) that follows on from
    /// what was handed last. Returns `false` if there is a gap before them
    /// (the tail reader fills it from the history).
    pub(super) fn offer(&self, events: Vec<Event>) -> bool {
        self.hand_on(events, false)
    }

    /// `offer` for a page read from the history, which is complete: a gap
    /// before it was pruned, so it is skipped rather than waited for.
    fn offer_from_history(&self, events: Vec<Event>) {
        self.hand_on(events, true);
    }

    fn hand_on(&self, events: Vec<Event>, complete: bool) -> bool {
        let mut handed = self.handed.lock().unwrap_or_else(|p| p.into_inner());
        let new: Vec<Event> = events
            .into_iter()
            .filter(|e| e.seq.is_some_and(|s| s > *handed))
            .collect();
        let Some(first) = new.first().and_then(|e| e.seq) else {
            return true;
        };
        if first != *handed + 1 && !complete {
            return false;
        }
        *handed = new.last().and_then(|e| e.seq).unwrap_or(*handed);
        if let Some(listener) = self.listener.get() {
            listener(new);
        }
        true
    }
}

/// The database's time, read through the local clock and an offset the
/// tail thread measures.
#[derive(Default)]
pub struct DbClock {
    offset_ms: AtomicI64,
}

impl Clock for DbClock {
    fn now(&self) -> Timestamp {
        let local = SystemClock.now().as_millis();
        Timestamp::from_millis(local + self.offset_ms.load(Ordering::Relaxed))
    }

    fn sleep_until(&self, deadline: Timestamp) -> SleepFuture<'_> {
        Box::pin(async move {
            // Sleep in bounded steps so that a new offset is noticed.
            loop {
                let left = deadline.as_millis() - self.now().as_millis();
                if left <= 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(left.clamp(1, 1_000) as u64)).await;
            }
        })
    }
}

impl DbClock {
    /// Measures the offset on `conn`: the database's time against the
    /// middle of the round trip that read it.
    pub(super) fn measure(&self, conn: &mut Conn) -> Result<(), StoreError> {
        let before = SystemClock.now().as_millis();
        let db: i64 = conn
            .query_one(
                "SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint",
                &[],
            )?
            .get(0);
        let after = SystemClock.now().as_millis();
        self.offset_ms
            .store(db - (before + after) / 2, Ordering::Relaxed);
        Ok(())
    }
}

/// The tail thread's handle: stops it when dropped.
pub(super) struct Tail {
    stop: Arc<AtomicBool>,
}

impl Drop for Tail {
    fn drop(&mut self) {
        // It notices within one wait (at most `LOOK_EVERY`); nobody waits
        // for it, so closing the store is never held up by the network.
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Tail {
    pub(super) fn start(
        options: PostgresOptions,
        sequencer: Arc<Sequencer>,
        clock: Arc<DbClock>,
    ) -> Result<Self, StoreError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("lablink-pg-tail".into())
            .spawn(move || tail(&options, &sequencer, &clock, &stopped))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the tail reader: {e}")))?;
        Ok(Self { stop })
    }
}

fn tail(options: &PostgresOptions, sequencer: &Sequencer, clock: &DbClock, stop: &AtomicBool) {
    let mut conn: Option<Conn> = None;
    let mut measured: Option<Instant> = None;
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        if conn.as_ref().is_none_or(Conn::is_closed) {
            conn = Conn::open(options)
                .and_then(|mut c| c.batch("LISTEN lablink_events").map(|()| c))
                .inspect_err(|e| {
                    if !failing {
                        tracing::warn!(error = %e, "live events from other replicas paused; reconnecting");
                    }
                })
                .ok();
            failing = conn.is_none();
            if failing {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        }
        let c = conn.as_mut().expect("connected above");
        if measured.is_none_or(|at| at.elapsed() >= CLOCK_EVERY) {
            if let Err(e) = clock.measure(c) {
                tracing::warn!(error = %e, "cannot read the database's clock");
            }
            measured = Some(Instant::now());
        }
        if let Err(e) = catch_up(c, sequencer) {
            if !failing {
                tracing::warn!(error = %e, "cannot read the history for live events; reconnecting");
            }
            // Start over on a new connection (after a pause: PostgreSQL
            // may be restarting).
            conn = None;
            failing = true;
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        failing = false;
        // Wait for a notification (or look anyway after a while); several
        // arriving together mean one read.
        let mut notifications = c.client().notifications();
        let _ = notifications.timeout_iter(LOOK_EVERY).next();
        let _ = notifications.iter().count();
    }
}

/// Hands on everything recorded after what was handed last.
fn catch_up(conn: &mut Conn, sequencer: &Sequencer) -> Result<(), StoreError> {
    loop {
        let after = sequencer.handed();
        let page = PgTx::new(conn, None).query_events(&EventQuery {
            after: Some(after),
            limit: 1000,
            ..EventQuery::default()
        })?;
        let full = page.len() == 1000;
        sequencer.offer_from_history(page);
        if !full {
            return Ok(());
        }
    }
}
