//! The PostgreSQL store's writer: one thread owns a write connection and
//! runs this server's units of work in batches, one PostgreSQL transaction
//! each (group commit: a unit per savepoint, so a failing one is undone
//! alone). A batch takes everything queued when it starts, so the units
//! that arrive while one commits form the next.
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
//! A lost connection (PostgreSQL restarted) fails the batch under way with
//! `store_unavailable`; the next batch connects again.

use postgres::types::ToSql;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use tokio::sync::oneshot;

use super::PostgresOptions;
use super::conn::{Conn, corrupt};
use super::feed::Sequencer;
use super::tx::{EventBuffer, PgTx};
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
    sequencer: Arc<Sequencer>,
}

impl WriterThread {
    fn serve(mut self, messages: &Receiver<Message>) {
        let mut closing = false;
        while !closing {
            let Ok(Message::Unit(work, answer)) = messages.recv() else {
                return;
            };
            let mut units = vec![(work, answer)];
            while units.len() < MAX_BATCH {
                match messages.try_recv() {
                    Ok(Message::Unit(work, answer)) => units.push((work, answer)),
                    Ok(Message::Close) => {
                        closing = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.run_batch(units);
        }
    }

    /// The connection, opened again if it was lost.
    fn connection(&mut self) -> Result<&mut Conn, StoreError> {
        if self.conn.as_ref().is_none_or(Conn::is_closed) {
            self.conn = None;
            self.conn = Some(Conn::open(&self.options)?);
        }
        Ok(self.conn.as_mut().expect("just opened"))
    }

    fn run_batch(&mut self, units: Vec<(Work, Answer)>) {
        let sequencer = self.sequencer.clone();
        let outcome = match self.connection() {
            Ok(conn) => run_in_transaction(conn, units),
            Err(why) => Err((units.into_iter().map(|(_, answer)| answer).collect(), why)),
        };
        match outcome {
            Ok((answers, events)) => {
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

/// Who is still to be answered, and why the batch failed.
type Failed = (Vec<Answer>, StoreError);

fn run_in_transaction(
    conn: &mut Conn,
    units: Vec<(Work, Answer)>,
) -> Result<(Vec<Answer>, Vec<crate::domain::Event>), Failed> {
    let mut answers = Vec::with_capacity(units.len());
    let mut pending = units.into_iter();
    let fail = |answers: Vec<Answer>, rest: std::vec::IntoIter<(Work, Answer)>, why: StoreError| {
        let mut all = answers;
        all.extend(rest.map(|(_, answer)| answer));
        (all, why)
    };
    let begun = conn.batch("BEGIN").and_then(|()| {
        conn.query_one(
            "SELECT value FROM meta WHERE key = 'event_seq' FOR UPDATE",
            &[],
        )
    });
    let last_seq: i64 = match begun {
        Ok(row) => row.get(0),
        Err(why) => return Err(fail(answers, pending, why)),
    };
    let mut buffer = EventBuffer {
        last_seq,
        events: Vec::new(),
    };
    while let Some((mut work, answer)) = pending.next() {
        if let Err(why) = conn.batch("SAVEPOINT work") {
            answers.push(answer);
            return Err(fail(answers, pending, why));
        }
        let (seq_mark, events_mark) = (buffer.last_seq, buffer.events.len());
        let done = std::panic::catch_unwind(AssertUnwindSafe(|| {
            work(&mut PgTx::new(conn, Some(&mut buffer)))
        }))
        .unwrap_or_else(|_| Err(StoreError::Unavailable("the unit of work panicked".into())));
        let kept = done.and_then(|()| conn.batch("RELEASE SAVEPOINT work"));
        match kept {
            Ok(()) => answers.push(answer),
            Err(e) => {
                if conn.is_closed() {
                    answers.push(answer);
                    return Err(fail(answers, pending, e));
                }
                // Undo this unit only; the rest of the batch stands.
                if let Err(why) = conn.batch("ROLLBACK TO SAVEPOINT work; RELEASE SAVEPOINT work") {
                    answers.push(answer);
                    return Err(fail(answers, pending, why));
                }
                buffer.last_seq = seq_mark;
                buffer.events.truncate(events_mark);
                let _ = answer.send(Err(e));
            }
        }
    }
    let EventBuffer { last_seq, events } = buffer;
    let finished = insert_events(conn, &events)
        .and_then(|()| {
            if events.is_empty() {
                return Ok(());
            }
            conn.execute(
                "UPDATE meta SET value = $1 WHERE key = 'event_seq'",
                &[&last_seq],
            )?;
            // Delivered to every listening replica at commit, in commit order.
            conn.batch("NOTIFY lablink_events")
        })
        .and_then(|()| conn.batch("COMMIT"));
    match finished {
        Ok(()) => Ok((answers, events)),
        Err(why) => Err((answers, why)),
    }
}

/// Inserts a batch's events in one statement.
fn insert_events(conn: &mut Conn, events: &[crate::domain::Event]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut seq = Vec::with_capacity(events.len());
    let mut at = Vec::with_capacity(events.len());
    let mut kind = Vec::with_capacity(events.len());
    let mut equipment = Vec::with_capacity(events.len());
    let mut session = Vec::with_capacity(events.len());
    let mut forced_by = Vec::with_capacity(events.len());
    let mut data = Vec::with_capacity(events.len());
    for event in events {
        let mut stored = event.clone();
        seq.push(stored.seq.take().map_or(0, |s| s as i64));
        at.push(stored.timestamp.as_millis());
        kind.push(stored.event.as_str());
        equipment.push(stored.equipment_id.as_ref().map(|e| e.to_string()));
        session.push(stored.session_id.as_ref().map(|s| s.to_string()));
        forced_by.push(stored.forced_by.as_ref().map(|s| s.to_string()));
        data.push(serde_json::to_string(&stored).map_err(corrupt)?);
    }
    let params: [&(dyn ToSql + Sync); 7] =
        [&seq, &at, &kind, &equipment, &session, &forced_by, &data];
    conn.execute(
        "INSERT INTO events (seq, at, event, equipment_id, session_id, forced_by, data)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])",
        &params,
    )?;
    Ok(())
}
