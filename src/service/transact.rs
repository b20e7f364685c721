//! How a write reaches the store and its results reach everyone else: one
//! store transaction per use case, awaited (how it is batched, synced and
//! scheduled is the store's business), then what it implies for particular
//! sessions published and the reaper woken. The recorded events themselves
//! go live from the store, in `seq` order, once durable (`Store::listen`,
//! set up in `Service::new`).

use std::collections::HashMap;
use std::sync::Arc;

use super::uow::{Committed, Uow, Wait, notification_for};
use super::{At, ExpiryReport, Service, ServiceError};
use crate::domain::{EquipmentLocks, SessionId};
use crate::domain::{Event, EventKind, Timestamp};

/// What one run of a write's unit of work leaves for its caller.
struct Done<R> {
    outcome: Result<(R, ExpiryReport), ServiceError>,
    /// Grants from a queue, and how long each waited (for the metrics).
    waits: Vec<Wait>,
    /// How long after the deadline of the lease whose expiry freed it each
    /// lock was handed on (for the metrics).
    late_hand_offs: Vec<std::time::Duration>,
    committed: Committed,
    earliest: Option<Timestamp>,
}

impl Service {
    /// Runs `op` in one transaction at one instant, after expiring what is
    /// due. Store errors abort (and roll back) the transaction; other errors
    /// are returned after committing the expiries, which stand on their own.
    pub(super) async fn run<R: Send + 'static>(
        &self,
        mut op: impl FnMut(&mut Uow<'_>) -> Result<R, ServiceError> + Send + 'static,
    ) -> Result<At<R>, ServiceError> {
        let now = self.clock.now();
        let policy = Arc::clone(&self.policy);
        let started = std::time::Instant::now();
        let done = self
            .store
            .write(move |tx| {
                let mut uow = Uow {
                    tx,
                    now,
                    policy: &policy,
                    events: Vec::new(),
                    earliest_deadline: None,
                    expired: ExpiryReport::default(),
                    queues_before: HashMap::new(),
                    late_hand_offs: Vec::new(),
                    saved: HashMap::new(),
                    actor: None,
                };
                uow.expire_due()?;
                let caused_from = uow.events.len();
                let result = match op(&mut uow) {
                    Err(ServiceError::Store(e)) => return Err(e),
                    other => other,
                };
                uow.settle_groups()?;
                let actor = uow.actor.clone();
                for event in &mut uow.events[caused_from..] {
                    event.user = actor.clone();
                }
                uow.record_events()?;
                let waits = uow.waits();
                Ok(Done {
                    waits,
                    late_hand_offs: std::mem::take(&mut uow.late_hand_offs),
                    committed: Committed {
                        events: std::mem::take(&mut uow.events),
                        queues_before: std::mem::take(&mut uow.queues_before),
                        saved: std::mem::take(&mut uow.saved),
                    },
                    earliest: uow.earliest_deadline,
                    outcome: result.map(|value| (value, uow.expired)),
                })
            })
            .await;
        crate::measure::store_transaction(crate::measure::StoreWork::Write, started.elapsed());
        let done = done?;
        for wait in &done.waits {
            crate::measure::lock_wait(wait.equipment_id.as_str(), wait.mode.as_str(), wait.waited);
        }
        for late in &done.late_hand_offs {
            crate::measure::handoff_lateness(*late);
        }
        if self.policy.log_lock_events {
            for e in &done.committed.events {
                tracing::info!(
                    event = e.event.as_str(),
                    equipment_id = e.equipment_id.as_ref().map(|id| id.as_str()),
                    session_id = e.session_id.as_ref().map(|id| id.as_str()),
                    user = e.user.as_deref(),
                    "lock event"
                );
            }
        }
        if let Some(deadline) = done.earliest {
            self.deadlines.saw(deadline);
        }
        self.publish(done.committed, now);
        let (value, _) = done.outcome?;
        Ok(At { value, now })
    }

    /// Runs what other servers sharing the store committed past this one's
    /// live subscribers: each equipment whose queue they may have changed
    /// is read, and whoever's place differs from what this server last
    /// announced hears its new one. Until shutdown.
    pub async fn announce_changes_made_elsewhere(
        &self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let Some(mut changed) = self.elsewhere.take_receiver() else {
            return;
        };
        loop {
            let first = tokio::select! {
                first = changed.recv() => first,
                _ = shutdown.changed() => return,
            };
            let Some(first) = first else { return };
            let mut equipment = std::collections::BTreeSet::from([first]);
            while let Ok(more) = changed.try_recv() {
                equipment.insert(more);
            }
            if self.hub.subscribers() == 0 {
                // Nobody listening: nothing to tell, nothing to read.
                self.elsewhere.forget_all();
                continue;
            }
            for id in equipment {
                let Ok(at) = self.stored(&id).await else {
                    continue;
                };
                let before = self.elsewhere.queue_of(&id);
                for note in position_notes(&at.value, before.as_deref(), at.now) {
                    self.hub.publish(note);
                }
                self.elsewhere.remember(&at.value);
            }
        }
    }

    /// Sends what committed events imply for particular sessions to live
    /// subscribers: a grant from the queue, a lost lock, a new place in a
    /// queue; and the events not recorded (lock-event logging off), which
    /// the store's feed does not carry. Also reschedules the expiry
    /// warnings of changed leases.
    fn publish(&self, committed: Committed, now: Timestamp) {
        let mut notes: Vec<Event> = committed
            .events
            .iter()
            .filter_map(notification_for)
            .collect();
        for (id, locks) in &committed.saved {
            let before: Option<Vec<SessionId>> = committed
                .queues_before
                .get(id)
                .map(|b| b.iter().map(|(s, _)| s.clone()).collect());
            notes.extend(position_notes(locks, before.as_deref(), now));
            self.elsewhere.remember(locks);
            self.warnings.reschedule(locks);
        }
        let unrecorded = committed.events.into_iter().filter(|e| e.seq.is_none());
        for event in unrecorded.chain(notes) {
            self.hub.publish(event);
        }
    }
}

/// A `queue_position` notification for each waiter in `locks` whose place
/// differs from `before` (the queue as last known, if known).
pub(super) fn position_notes(
    locks: &EquipmentLocks,
    before: Option<&[SessionId]>,
    now: Timestamp,
) -> Vec<Event> {
    let mut notes = Vec::new();
    for (i, entry) in locks.queue.iter().enumerate() {
        let was = before
            .and_then(|b| b.iter().position(|s| s == &entry.session_id))
            .map(|p| p + 1);
        if was != Some(i + 1) {
            let mut e = Event::new(EventKind::QueuePosition, now);
            e.equipment_id = Some(locks.equipment_id.clone());
            e.session_id = Some(entry.session_id.clone());
            e.lock_mode = Some(entry.mode);
            e.queue_id = Some(entry.queue_id.clone());
            e.position = Some(i + 1);
            notes.push(e);
        }
    }
    notes
}
