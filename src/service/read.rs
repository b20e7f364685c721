//! How the read use cases reach the store: off the write path. A read joins
//! no batch, expires nothing, and waits for no commit or fsync; it loads
//! committed state and shows it as the rules leave it at `now`
//! (`domain::view`), so nothing past its deadline is shown as live or held
//! (semantics.md, "Expiry is exact") while the reaper, or the next write,
//! makes the expiry durable. Where a read runs (SQLite: its reader threads)
//! is the store's business.

use std::collections::HashMap;

use super::{At, InstrumentOccupancy, Occupancy, Service, ServiceError};
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
        let release_locks = self.policy.auto_release_on_disconnect;
        let started = std::time::Instant::now();
        let outcome = self
            .store
            .query(move |tx| {
                let mut view = View {
                    tx,
                    now,
                    release_locks,
                };
                match op(&mut view) {
                    Err(ServiceError::Store(e)) => Err(e),
                    other => Ok(other),
                }
            })
            .await;
        crate::measure::store_transaction(crate::measure::StoreWork::Read, started.elapsed());
        let value = outcome??;
        Ok(At { value, now })
    }

    /// Whether the store answers a cheap read (the readiness probe).
    pub async fn check_store(&self) -> Result<(), ServiceError> {
        self.read(|view| Ok(view.tx.last_event_seq()?)).await?;
        Ok(())
    }

    /// How busy the server is now (the metrics' state gauges), in one read:
    /// every session is looked at, and the equipment someone holds or
    /// waits for; instruments no longer configured are left out, so the
    /// gauges' labels stay those of the configuration.
    pub async fn occupancy(&self) -> Result<At<Occupancy>, ServiceError> {
        let configured: Vec<EquipmentId> = self.instruments.iter().map(|i| i.id.clone()).collect();
        self.read(move |view| {
            let now = view.now;
            let sessions_live = view
                .tx
                .sessions()?
                .iter()
                .filter(|s| s.is_live(now))
                .count();
            let mut busy = HashMap::new();
            for stored in view.tx.busy_equipment()? {
                let locks = view.at_now(stored)?;
                busy.insert(locks.equipment_id.clone(), locks);
            }
            let instruments = configured
                .iter()
                .map(|id| {
                    let locks = busy.get(id);
                    InstrumentOccupancy {
                        equipment_id: id.clone(),
                        exclusive: locks.map_or(0, |l| usize::from(l.exclusive.is_some())),
                        observers: locks.map_or(0, |l| l.observers.len()),
                        queued: locks.map_or(0, |l| l.queue.len()),
                    }
                })
                .collect();
            Ok(Occupancy {
                sessions_live,
                instruments,
            })
        })
        .await
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
