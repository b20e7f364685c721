//! What other replicas did, and the time they all share.
//!
//! `Sequencer`: hands recorded events to the store's listener in `seq`
//! order without gaps or repeats, whether they come from this server's
//! writer (at once, when they follow on from what was handed last) or from
//! the tail reader (everything after what was handed last, read from the
//! history). Writes of all replicas are numbered in commit order (see
//! `writer`), so what the history shows up to a `seq` is complete.
//!
//! The tail thread listens for `NOTIFY lablink_events` (sent with every
//! replica's commits, carrying the last `seq` committed) and then reads the
//! history after what was handed last, up to what was announced. When
//! nothing is heard for a second it looks anyway (a notification may have
//! been lost with a connection), taking what it found a second earlier:
//! by then it is durable, whatever committed it. It also keeps `DbClock` set: every replica takes its
//! time from the database's clock, so a lease never ends early because one
//! server's clock runs ahead of another's (within half a round trip).

use postgres::fallible_iterator::FallibleIterator;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::PostgresOptions;
use super::conn::Conn;
use super::tx::PgTx;
use crate::clock::{Clock, SleepFuture, SystemClock};
use crate::domain::{Event, Timestamp};
use crate::storage::{CommitListener, EventQuery, Origin, StoreError, Tx};

/// How often the tail reads the history without being told to.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How often the clock offset is measured again.
const CLOCK_EVERY: Duration = Duration::from_secs(5);

pub(super) struct Sequencer {
    /// The last `seq` handed to the listener, and the `seq`s of this
    /// server's own events that had to wait for a gap to be filled.
    handed: Mutex<(u64, BTreeSet<u64>)>,
    pub(super) listener: OnceLock<CommitListener>,
}

impl Sequencer {
    pub(super) fn new(handed: u64) -> Self {
        Self {
            handed: Mutex::new((handed, BTreeSet::new())),
            listener: OnceLock::new(),
        }
    }

    fn handed(&self) -> u64 {
        self.handed.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Hands on the part of `events` (in `seq` order) that follows on from
    /// what was handed last. Returns `false` if there is a gap before them
    /// (the tail reader fills it from the history).
    pub(super) fn offer(&self, events: Vec<Event>) -> bool {
        self.hand_on(events, false)
    }

    /// Marks `seqs` as this server's own before their commit: the tail may
    /// hear of them (the commit notifies this server too) before the
    /// writer offers them.
    pub(super) fn expect_own(&self, seqs: &[u64]) {
        let mut guard = self.handed.lock().unwrap_or_else(|p| p.into_inner());
        guard.1.extend(seqs.iter().copied());
    }

    /// The commit of `seqs` failed: if they appear after all, they are not
    /// known here to be this server's.
    pub(super) fn not_own(&self, seqs: &[u64]) {
        let mut guard = self.handed.lock().unwrap_or_else(|p| p.into_inner());
        for seq in seqs {
            guard.1.remove(seq);
        }
    }

    /// `offer` for a page read from the history, which is complete: a gap
    /// before it was pruned, so it is skipped rather than waited for.
    fn offer_from_history(&self, events: Vec<Event>) {
        self.hand_on(events, true);
    }

    fn hand_on(&self, events: Vec<Event>, complete: bool) -> bool {
        let mut guard = self.handed.lock().unwrap_or_else(|p| p.into_inner());
        let (handed, own_waiting) = &mut *guard;
        let new: Vec<Event> = events
            .into_iter()
            .filter(|e| e.seq.is_some_and(|s| s > *handed))
            .collect();
        let Some(first) = new.first().and_then(|e| e.seq) else {
            return true;
        };
        if first != *handed + 1 && !complete {
            // This server's own (marked by `expect_own`): the tail hands
            // them on with the gap, as this server's.
            return false;
        }
        *handed = new.last().and_then(|e| e.seq).unwrap_or(*handed);
        let Some(listener) = self.listener.get() else {
            own_waiting.clear();
            return true;
        };
        if !complete {
            for event in &new {
                own_waiting.remove(&event.seq.unwrap_or_default());
            }
            listener(new, Origin::Here);
            return true;
        }
        // From the history: split into runs by whose they are, in order.
        let mut run: Vec<Event> = Vec::new();
        let mut run_origin = Origin::Elsewhere;
        for event in new {
            let origin = match event.seq {
                Some(seq) if own_waiting.remove(&seq) => Origin::Here,
                _ => Origin::Elsewhere,
            };
            if origin != run_origin && !run.is_empty() {
                listener(std::mem::take(&mut run), run_origin);
            }
            run_origin = origin;
            run.push(event);
        }
        if !run.is_empty() {
            listener(run, run_origin);
        }
        let upto = *handed;
        own_waiting.retain(|s| *s > upto);
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
    // Events up to here are known to be durable (announced by the replica
    // that made them so); later ones may still be in flight.
    let mut announced = sequencer.handed();
    // The newest `seq` seen unannounced at a quiet moment, and when.
    let mut unannounced: Option<(u64, Instant)> = None;
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
            // What was seen unannounced before may have been lost with the
            // connection (PostgreSQL restarted): look afresh.
            unannounced = None;
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
        if let Err(e) = catch_up(c, sequencer, announced) {
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
        let mut heard = Vec::new();
        if let Ok(Some(first)) = notifications.timeout_iter(LOOK_EVERY).next() {
            heard.push(first);
        }
        while let Ok(Some(more)) = notifications.iter().next() {
            heard.push(more);
        }
        drop(notifications);
        for note in &heard {
            if let Ok(seq) = note.payload().parse::<u64>() {
                announced = announced.max(seq);
            }
        }
        if heard.is_empty() {
            // Quiet: a notification may have been lost with a connection.
            // What was already there a second ago has long been flushed
            // (commits wait for their flush; PostgreSQL's WAL writer
            // flushes any other within three `wal_writer_delay`s).
            if let Some((seq, at)) = unannounced.take() {
                if at.elapsed() >= LOOK_EVERY {
                    announced = announced.max(seq);
                } else {
                    unannounced = Some((seq, at));
                }
            }
            if unannounced.is_none() {
                let newest = PgTx::new(c).last_event_seq().unwrap_or(0);
                if newest > announced {
                    unannounced = Some((newest, Instant::now()));
                }
            }
        }
    }
}

/// Hands on everything recorded after what was handed last, up to
/// `durable`.
fn catch_up(conn: &mut Conn, sequencer: &Sequencer, durable: u64) -> Result<(), StoreError> {
    loop {
        let after = sequencer.handed();
        if after >= durable {
            return Ok(());
        }
        let mut page = PgTx::new(conn).query_events(&EventQuery {
            after: Some(after),
            limit: 1000,
            ..EventQuery::default()
        })?;
        let full = page.len() == 1000;
        page.retain(|e| e.seq.is_some_and(|s| s <= durable));
        let last = page.last().and_then(|e| e.seq);
        sequencer.offer_from_history(page);
        if !full || last.is_none_or(|l| l >= durable) {
            return Ok(());
        }
    }
}
