//! The PostgreSQL store's writer: one thread owns a write connection and
//! runs this server's units of work in batches, one PostgreSQL transaction
//! each (group commit; a failing unit is undone alone: see `cache`, which
//! also keeps the rows it reads between batches). A batch takes everything
//! queued when it starts, so the units that arrive while one commits form
//! the next.
//!
//! Every batch first locks the `event_seq` row of `meta` (`FOR UPDATE`):
//! the writes of all replicas sharing the database run one batch at a time,
//! in one order. That is what keeps one holder per instrument, one FIFO
//! queue and strictly growing fencing tokens across replicas without any
//! coordination of their own, and it numbers the history in commit order,
//! so a reader never sees `seq` N+1 before N. Units are answered once the
//! commit returns (durable with `synchronous_commit` on). The batch's
//! events go to the store's feed (`Sequencer`) before anyone is answered.
//!
//! The commit carries the notification that tells every replica's tail
//! reader (this one's too) that the history grew up to the batch's last
//! `seq`; this server's events are marked as its own before the commit, so
//! whichever of the writer and the tail hands them on, they count as this
//! server's (which told its own subscribers what they mean).
//!
//! A lost connection (PostgreSQL restarted) fails the batch under way with
//! `store_unavailable`; the next batch connects again.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use tokio::sync::oneshot;

use super::PostgresOptions;
use super::cache::{BatchState, Cache, UnitTx};
use super::conn::Conn;
use super::feed::Sequencer;
use crate::domain::Event;
use crate::storage::{StoreError, Work};

/// The most units one batch holds.
const MAX_BATCH: usize = 64;

type Answer = oneshot::Sender<Result<(), StoreError>>;

enum Message {
    Unit(Work, Answer),
    /// From the store, dropped: finish what is queued and stop.
    Close,
}

/// The store's handle on the writer thread.
pub(super) struct Writer {
    inbox: Sender<Message>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub(super) fn start(
        options: PostgresOptions,
        conn: Conn,
        sequencer: Arc<Sequencer>,
    ) -> Result<Self, StoreError> {
        let (inbox, messages) = std::sync::mpsc::channel();
        let state = WriterThread {
            options,
            conn: Some(conn),
            cache: Cache::default(),
            sequencer,
        };
        let thread = std::thread::Builder::new()
            .name("lablink-pg-writer".into())
            .spawn(move || state.serve(&messages))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(Self {
            inbox,
            thread: Some(thread),
        })
    }

    /// Runs `work` in a batch; completes once its batch has committed.
    pub(super) async fn run(&self, work: Work) -> Result<(), StoreError> {
        let closed = || StoreError::Unavailable("the store is closed".into());
        let (answer, answered) = oneshot::channel();
        self.inbox
            .send(Message::Unit(work, answer))
            .map_err(|_| closed())?;
        answered.await.map_err(|_| closed())?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.inbox.send(Message::Close);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct WriterThread {
    options: PostgresOptions,
    /// `None` after the connection was lost, until the next batch.
    conn: Option<Conn>,
    /// Rows kept between batches (see `cache`).
    cache: Cache,
    sequencer: Arc<Sequencer>,
}

impl WriterThread {
    fn serve(mut self, messages: &Receiver<Message>) {
        let mut closing = false;
        while !closing {
            let Ok(Message::Unit(work, answer)) = messages.recv() else {
                break;
            };
            // The rest of the batch is taken once it holds the lock: what
            // arrived while another replica's batch held it joins too.
            let mut more = |room: usize| {
                let mut units = Vec::new();
                while units.len() < room && !closing {
                    match messages.try_recv() {
                        Ok(Message::Unit(work, answer)) => units.push((work, answer)),
                        Ok(Message::Close) => closing = true,
                        Err(_) => break,
                    }
                }
                units
            };
            self.run_batch(vec![(work, answer)], &mut more);
        }
    }

    /// The connection, opened again if it was lost. A new connection
    /// drops the cache: PostgreSQL may have restarted, losing commits that
    /// were never confirmed durable (nobody was told of them, but the cache
    /// holds their rows).
    fn connection(&mut self) -> Result<&mut Conn, StoreError> {
        if self.conn.as_mut().is_none_or(|c| !c.usable()) {
            self.conn = None;
            self.cache.clear();
            self.conn = Some(Conn::open(&self.options)?);
        }
        Ok(self.conn.as_mut().expect("just opened"))
    }

    fn run_batch(
        &mut self,
        units: Vec<(Work, Answer)>,
        more: &mut dyn FnMut(usize) -> Vec<(Work, Answer)>,
    ) {
        let sequencer = self.sequencer.clone();
        let outcome = match self.connection() {
            Ok(_) => {
                let mut cache = std::mem::take(&mut self.cache);
                let conn = self.conn.as_mut().expect("connected above");
                let outcome = run_in_transaction(conn, &mut cache, &sequencer, units, more);
                if outcome.is_err() {
                    // What the cache holds may never have been committed.
                    cache.clear();
                }
                self.cache = cache;
                outcome
            }
            Err(why) => {
                let mut answers: Vec<Answer> =
                    units.into_iter().map(|(_, answer)| answer).collect();
                answers.extend(more(MAX_BATCH).into_iter().map(|(_, answer)| answer));
                Err((answers, why))
            }
        };
        match outcome {
            Ok((answers, events)) => {
                crate::measure::store_batch(answers.len());
                sequencer.offer(events);
                for answer in answers {
                    let _ = answer.send(Ok(()));
                }
            }
            Err((answers, why)) => {
                tracing::error!(error = %why, "batch failed");
                if let Some(conn) = self.conn.as_mut().filter(|c| !c.is_closed()) {
                    let _ = conn.batch("ROLLBACK");
                }
                for answer in answers {
                    let _ = answer.send(Err(why.clone()));
                }
            }
        }
    }
}

/// How many write-journal entries are kept (other replicas' batches a
/// writer can catch up on without dropping its whole cache), and how often
/// older ones are pruned.
const JOURNAL_KEPT: i64 = 4096;
const JOURNAL_PRUNE_EVERY: i64 = 1024;

/// Brings the cache up to `writes` (the batches committed so far): with
/// other replicas' batches since this writer's last, it forgets the rows
/// they changed (all of them if the journal no longer covers them).
fn catch_up(conn: &mut Conn, cache: &mut Cache, writes: i64) -> Result<(), StoreError> {
    let Some(known) = cache.valid_for else {
        cache.clear();
        return Ok(());
    };
    if known == writes {
        return Ok(());
    }
    let rows = conn.query(
        "SELECT sessions, equipment FROM write_journal WHERE writes > $1 AND writes <= $2",
        &[&known, &writes],
    )?;
    if rows.len() as i64 != writes - known {
        cache.clear();
        return Ok(());
    }
    for row in rows {
        let (sessions, equipment): (Vec<String>, Vec<String>) = (row.get(0), row.get(1));
        cache.forget(&sessions, &equipment);
    }
    cache.valid_for = Some(writes);
    Ok(())
}

/// Who is still to be answered, and why the batch failed.
type Failed = (Vec<Answer>, StoreError);

fn run_in_transaction(
    conn: &mut Conn,
    cache: &mut Cache,
    sequencer: &Sequencer,
    mut units: Vec<(Work, Answer)>,
    more: &mut dyn FnMut(usize) -> Vec<(Work, Answer)>,
) -> Result<(Vec<Answer>, Vec<Event>), Failed> {
    let mut answers = Vec::with_capacity(MAX_BATCH);
    let fail = |mut answers: Vec<Answer>, rest: std::vec::IntoIter<(Work, Answer)>, why| {
        answers.extend(rest.map(|(_, answer)| answer));
        (answers, why)
    };
    // Both rows, in one order on every replica (no deadlock between them).
    // One round trip for both.
    let begun = conn.simple(
        "BEGIN; SELECT key, value FROM meta WHERE key IN ('event_seq', 'writes') ORDER BY key FOR UPDATE",
    );
    let (mut last_seq, mut writes) = (None, None);
    match begun {
        Ok(rows) => {
            for (key, value) in rows {
                match key.as_str() {
                    "event_seq" => last_seq = value.parse::<i64>().ok(),
                    _ => writes = value.parse::<i64>().ok(),
                }
            }
        }
        Err(why) => {
            units.extend(more(MAX_BATCH - units.len()));
            return Err(fail(answers, units.into_iter(), why));
        }
    }
    units.extend(more(MAX_BATCH - units.len()));
    let mut pending = units.into_iter();
    let (Some(last_seq), Some(writes)) = (last_seq, writes) else {
        let why = StoreError::Corrupt("the meta table lacks event_seq or writes".into());
        return Err(fail(answers, pending, why));
    };
    if let Err(why) = catch_up(conn, cache, writes) {
        return Err(fail(answers, pending, why));
    }
    let mut batch = BatchState::new(last_seq);
    while let Some((mut work, answer)) = pending.next() {
        let mut unit = UnitTx::new(conn, cache, &mut batch);
        let done = std::panic::catch_unwind(AssertUnwindSafe(|| work(&mut unit)))
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the unit of work panicked".into())));
        let settled = match done {
            Ok(()) => unit.keep().map(|()| Ok(())),
            Err(e) => unit.undo().map(|()| Err(e)),
        };
        match settled {
            Ok(Ok(())) => answers.push(answer),
            Ok(Err(e)) if !conn.is_closed() => {
                let _ = answer.send(Err(e));
            }
            Ok(Err(why)) | Err(why) => {
                answers.push(answer);
                return Err(fail(answers, pending, why));
            }
        }
    }
    // The counters, the notification (delivered at commit to every
    // listening replica, in commit order) and the commit: one round trip.
    let own: Vec<u64> = batch.events.events.iter().filter_map(|e| e.seq).collect();
    sequencer.expect_own(&own);
    let finished = batch.flush(conn, cache, writes + 1).and_then(|()| {
        let events = &batch.events;
        let prune = if (writes + 1) % JOURNAL_PRUNE_EVERY == 0 {
            format!(
                "DELETE FROM write_journal WHERE writes <= {};",
                writes + 1 - JOURNAL_KEPT
            )
        } else {
            String::new()
        };
        let notify = if events.events.is_empty() {
            String::new()
        } else {
            format!("SELECT pg_notify('lablink_events', '{}');", events.last_seq)
        };
        conn.batch(&format!(
            "UPDATE meta SET value = CASE key WHEN 'writes' THEN value + 1 ELSE {} END
             WHERE key IN ('event_seq', 'writes');
             {prune}{notify}COMMIT",
            events.last_seq,
        ))
    });
    match finished {
        Ok(()) => {
            cache.valid_for = Some(writes + 1);
            Ok((answers, batch.events.events))
        }
        Err(why) => {
            sequencer.not_own(&own);
            Err((answers, why))
        }
    }
}
