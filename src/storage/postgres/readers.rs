//! The connections behind `Store::read`, each owned by a reader thread, so
//! views run side by side, never on an async worker and never in the
//! writer's batches: a read joins no batch and takes no lock, and sees one
//! snapshot of what is committed (`REPEATABLE READ READ ONLY`). A lost
//! connection fails the read under way and is opened again for the next.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

use super::PostgresOptions;
use super::conn::Conn;
use super::tx::PgTx;
use crate::storage::{StoreError, Work};

type Job = (Work, oneshot::Sender<Result<(), StoreError>>);

/// Reads wait on the network, not the CPU: more threads than cores.
const READERS: usize = 4;

pub(super) struct Readers {
    /// The reader threads end once this is dropped.
    jobs: Sender<Job>,
}

impl Readers {
    pub(super) fn start(options: &PostgresOptions) -> Result<Self, StoreError> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..READERS {
            let (queue, options) = (queue.clone(), options.clone());
            std::thread::Builder::new()
                .name(format!("lablink-pg-read-{i}"))
                .spawn(move || serve(&options, &queue))
                .map_err(|e| StoreError::Unavailable(format!("cannot start a reader: {e}")))?;
        }
        Ok(Self { jobs })
    }

    pub(super) async fn read(&self, work: Work) -> Result<(), StoreError> {
        let stopped = || StoreError::Unavailable("the read stopped".into());
        let (answer, answered) = oneshot::channel();
        self.jobs.send((work, answer)).map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

fn serve(options: &PostgresOptions, queue: &Mutex<Receiver<Job>>) {
    let mut conn: Option<Conn> = None;
    loop {
        // The lock is held only while waiting for a job.
        let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok((mut work, answer)) = job else {
            return;
        };
        // A read may run twice: once more on a new connection if the
        // connection it ran on turned out closed (PostgreSQL restarted).
        let mut outcome = Err(StoreError::Unavailable("the read did not run".into()));
        for _ in 0..2 {
            if conn.as_mut().is_none_or(|c| !c.usable()) {
                conn = match Conn::open(options) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                };
            }
            let c = conn.as_mut().expect("connected above");
            outcome = std::panic::catch_unwind(AssertUnwindSafe(|| read_once(c, &mut work)))
                .unwrap_or_else(|_| Err(StoreError::Unavailable("the read panicked".into())));
            if outcome.is_ok() || !c.is_closed() {
                break;
            }
        }
        if let Some(c) = conn.as_mut().filter(|c| outcome.is_err() && !c.is_closed()) {
            let _ = c.batch("ROLLBACK");
        }
        let _ = answer.send(outcome);
    }
}

fn read_once(conn: &mut Conn, work: &mut Work) -> Result<(), StoreError> {
    conn.batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
    work(&mut PgTx::new(conn))?;
    conn.batch("COMMIT")
}
