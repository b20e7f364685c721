//! What commits made by other servers sharing the store mean here. Their
//! events reach this server's hub from the store's feed, but what they
//! imply for particular sessions (a grant from the queue, a lost lock, a
//! new place in a queue) was told only to the committing server's
//! subscribers. This server derives the same: grants and lost locks from
//! the events themselves (`notification_for`), queue places by reading each
//! equipment whose queue may have changed and comparing with what it last
//! announced (`Service::announce_changes_made_elsewhere`).

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc;

use super::DeadlineSignal;
use super::uow::notification_for;
use crate::domain::{EquipmentId, EquipmentLocks, EventKind, SessionId};
use crate::storage::{CommitListener, Origin};

pub(super) struct Elsewhere {
    changed: mpsc::UnboundedSender<EquipmentId>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<EquipmentId>>>,
    /// Each equipment's queue as this server last announced it.
    queues: Mutex<HashMap<EquipmentId, Vec<SessionId>>>,
}

impl Elsewhere {
    pub(super) fn new() -> Self {
        let (changed, receiver) = mpsc::unbounded_channel();
        Self {
            changed,
            receiver: Mutex::new(Some(receiver)),
            queues: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn take_receiver(&self) -> Option<mpsc::UnboundedReceiver<EquipmentId>> {
        self.receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<EquipmentId, Vec<SessionId>>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes the queue of `locks` as announced.
    pub(super) fn remember(&self, locks: &EquipmentLocks) {
        let queue = locks.queue.iter().map(|e| e.session_id.clone()).collect();
        self.queues().insert(locks.equipment_id.clone(), queue);
    }

    pub(super) fn queue_of(&self, id: &EquipmentId) -> Option<Vec<SessionId>> {
        self.queues().get(id).cloned()
    }

    /// Nobody listened: what was announced is no longer what anyone knows.
    pub(super) fn forget_all(&self) {
        self.queues().clear();
    }

    /// The store's feed: events go to `hub` (with, for other servers'
    /// commits, what they imply); every lease a commit started is told to
    /// the reaper, so leases other servers grant end on time here too, even
    /// if the server that granted them is gone. (Renewals only move
    /// deadlines later: a reaper that wakes early finds nothing due.)
    pub(super) fn feed(
        changed: mpsc::UnboundedSender<EquipmentId>,
        hub: CommitListener,
        deadlines: std::sync::Arc<DeadlineSignal>,
    ) -> CommitListener {
        Box::new(move |events, origin| {
            for event in &events {
                let lease = event.timeout_seconds.filter(|t| *t > 0.0);
                if let Some(seconds) = lease {
                    deadlines.saw(event.timestamp.plus_millis((seconds * 1000.0) as u64));
                }
                // A waiter's `max_wait_seconds`.
                if let (EventKind::Queued, Some(at)) = (event.event, event.expires_at) {
                    deadlines.saw(at);
                }
            }
            if origin == Origin::Here {
                return hub(events, origin);
            }
            let notes = events
                .iter()
                .filter_map(notification_for)
                .collect::<Vec<_>>();
            for id in events.iter().filter_map(|e| e.equipment_id.as_ref()) {
                let _ = changed.send(id.clone());
            }
            hub(events, origin);
            if !notes.is_empty() {
                hub(notes, origin);
            }
        })
    }

    pub(super) fn sender(&self) -> mpsc::UnboundedSender<EquipmentId> {
        self.changed.clone()
    }
}
