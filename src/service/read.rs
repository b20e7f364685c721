//! How the read use cases reach the store: off the write path. A read joins
//! no batch, expires nothing, and waits for no commit or fsync; it loads
//! committed state and shows it as the rules leave it at `now`
//! (`domain::view`), so nothing past its deadline is shown as live or held
//! (semantics.md, "Expiry is exact") while the reaper, or the next write,
//! makes the expiry durable. A blocking store is read on the service's own
//! reader threads (`ReadPool`), never on an async worker.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use super::{At, Service, ServiceError};
use crate::domain::view::locks_at;
use crate::domain::{EquipmentId, EquipmentLocks, Session, SessionId, Timestamp};
use crate::storage::{StoreError, Tx};

/// A read's view of the store at one instant.
pub(super) struct View<'a> {
    pub(super) tx: &'a mut dyn Tx,
    pub(super) now: Timestamp,
    /// The auto-release setting: whether a lapsed session's locks go with it.
    release_locks: bool,
}

impl View<'_> {
    /// The session if it is stored and live at `now`.
    pub(super) fn live_session(&mut self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        Ok(self.tx.session(id)?.filter(|s| s.is_live(self.now)))
    }

    /// An equipment's locks as they stand at `now`.
    pub(super) fn locks(&mut self, id: &EquipmentId) -> Result<EquipmentLocks, StoreError> {
        let stored = self.tx.equipment_locks(id)?;
        self.at_now(stored)
    }

    /// `stored` as it stands at `now`: expired leases gone, lapsed
    /// sessions gone, the queue served.
    pub(super) fn at_now(&mut self, stored: EquipmentLocks) -> Result<EquipmentLocks, StoreError> {
        if stored.is_idle() {
            // Nobody holds or waits: nothing can be due.
            return Ok(stored);
        }
        let mut sessions = HashMap::new();
        for id in stored.participants() {
            if let Some(session) = self.tx.session(id)? {
                sessions.insert(id.clone(), session);
            }
        }
        Ok(locks_at(&stored, &sessions, self.now, self.release_locks))
    }
}

impl Service {
    /// Runs `op` against committed state at one instant, as a read: no
    /// write transaction, no batch, nothing expired, no commit or fsync
    /// waited for.
    pub(super) async fn read<R: Send + 'static>(
        &self,
        mut op: impl FnMut(&mut View<'_>) -> Result<R, ServiceError> + Send + 'static,
    ) -> Result<At<R>, ServiceError> {
        let now = self.clock.now();
        let store = self.store.clone();
        let release_locks = self.policy.auto_release_on_disconnect;
        let mut read = move || {
            let mut outcome = None;
            store.read(&mut |tx| {
                let mut view = View {
                    tx,
                    now,
                    release_locks,
                };
                match op(&mut view) {
                    Err(ServiceError::Store(e)) => Err(e),
                    other => {
                        outcome = Some(other);
                        Ok(())
                    }
                }
            })?;
            outcome.expect("the read ran the operation")
        };
        let value = if self.store.blocks() {
            let (answer, answered) = tokio::sync::oneshot::channel();
            self.readers
                .get_or_init(ReadPool::start)
                .run(Box::new(move || {
                    let _gone = answer.send(read());
                }))?;
            answered.await.map_err(|_| {
                ServiceError::Store(StoreError::Unavailable("the read stopped".into()))
            })??
        } else {
            read()?
        };
        Ok(At { value, now })
    }

    /// Whether the store answers a cheap read (the readiness probe).
    pub async fn check_store(&self) -> Result<(), ServiceError> {
        self.read(|view| Ok(view.tx.last_event_seq()?)).await?;
        Ok(())
    }

    /// How the store names itself (never includes secrets).
    pub fn describe_store(&self) -> String {
        self.store.describe()
    }

    /// A read of the history: from committed state, after making what is
    /// overdue at `now` durable if anything is. The history is a record,
    /// not a view: the expiry events it must then show exist only once
    /// recorded, so such a read first expires what is due, as the reaper
    /// would a moment later. Nothing overdue, the common case: it never
    /// writes.
    pub(super) async fn read_events<R: Send + 'static>(
        &self,
        op: impl Fn(&mut dyn Tx) -> Result<R, ServiceError> + Clone + Send + 'static,
    ) -> Result<At<R>, ServiceError> {
        let quick = op.clone();
        let read = self
            .read(move |view| {
                if !view.tx.due(view.now, 1)?.is_empty() {
                    return Ok(None);
                }
                quick(&mut *view.tx).map(Some)
            })
            .await?;
        if let Some(value) = read.value {
            return Ok(At {
                value,
                now: read.now,
            });
        }
        self.expire_due().await?;
        self.read(move |view| op(&mut *view.tx)).await
    }
}

/// A read handed to the pool.
type Job = Box<dyn FnOnce() + Send>;

/// The threads that run reads of a blocking store, one per core (at least
/// two, as many as SQLite's read connections): never a tokio worker, and
/// measured faster for status than `spawn_blocking`, whose threads pile up
/// on the few connections under load (docs/benchmarks.md). They end when
/// the service is dropped.
pub(super) struct ReadPool {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl ReadPool {
    fn start() -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        for i in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("lablink-read-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for a job.
                        let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            // A read that panics loses its answer (its
                            // caller hears the read stopped), not the thread.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                            }
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a reader thread");
            }
        }
        Self { jobs }
    }

    fn run(&self, job: Job) -> Result<(), ServiceError> {
        self.jobs.send(job).map_err(|_| {
            ServiceError::Store(StoreError::Unavailable(
                "no reader thread is running".into(),
            ))
        })
    }
}
