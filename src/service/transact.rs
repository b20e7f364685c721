//! How a unit of work reaches the store and its results reach everyone
//! else: one transaction per use case (batched by group commit on stores
//! that support it), then the events published and the reaper woken.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

use super::uow::{Committed, Uow, notification_for};
use super::{At, ExpiryReport, Service, ServiceError};
use crate::domain::{Event, EventKind, Timestamp};
use crate::storage::{EventQuery, StoreError, Tx};

impl Service {
    /// Runs `op` in one transaction at one instant, after expiring what is
    /// due. Store errors abort (and roll back) the transaction; other errors
    /// are returned after committing the expiries, which stand on their own.
    pub(super) async fn run<R: Send>(
        &self,
        mut op: impl FnMut(&mut Uow<'_>) -> Result<R, ServiceError> + Send,
    ) -> Result<At<R>, ServiceError> {
        let now = self.clock.now();
        let mut outcome = None;
        let mut committed = None;
        let mut earliest = None;
        let mut work = |tx: &mut dyn Tx| {
            let mut uow = Uow {
                tx,
                now,
                policy: &self.policy,
                events: Vec::new(),
                earliest_deadline: None,
                expired: ExpiryReport::default(),
                queues_before: HashMap::new(),
                saved: HashMap::new(),
                actor: None,
            };
            uow.expire_due()?;
            let caused_from = uow.events.len();
            let result = match op(&mut uow) {
                Err(ServiceError::Store(e)) => return Err(e),
                other => other,
            };
            let actor = uow.actor.clone();
            for event in &mut uow.events[caused_from..] {
                event.user = actor.clone();
            }
            uow.record_events()?;
            committed = Some(Committed {
                events: std::mem::take(&mut uow.events),
                queues_before: std::mem::take(&mut uow.queues_before),
                saved: std::mem::take(&mut uow.saved),
            });
            earliest = uow.earliest_deadline;
            outcome = Some(result.map(|value| (value, uow.expired)));
            Ok(())
        };
        self.in_store_gated(&mut work).await?;
        let committed = committed.expect("the transaction ran the operation");
        if self.policy.log_lock_events {
            for e in &committed.events {
                tracing::info!(
                    event = e.event.as_str(),
                    equipment_id = e.equipment_id.as_ref().map(|id| id.as_str()),
                    session_id = e.session_id.as_ref().map(|id| id.as_str()),
                    user = e.user.as_deref(),
                    "lock event"
                );
            }
        }
        if let Some(deadline) = earliest {
            self.deadlines.saw(deadline);
        }
        self.publish(committed, now);
        let (value, _) = outcome.expect("the transaction ran the operation")?;
        Ok(At { value, now })
    }

    /// Sends committed events to live subscribers, with what they imply for
    /// particular sessions: a grant from the queue, a lost lock, a new place
    /// in a queue. Also reschedules the expiry warnings of changed leases.
    pub(super) fn publish(&self, committed: Committed, now: Timestamp) {
        let mut notes: Vec<Event> = committed
            .events
            .iter()
            .filter_map(notification_for)
            .collect();
        for (id, locks) in &committed.saved {
            let before = committed.queues_before.get(id);
            for (i, entry) in locks.queue.iter().enumerate() {
                let was = before
                    .and_then(|b| b.iter().position(|s| s == &entry.session_id))
                    .map(|p| p + 1);
                if was != Some(i + 1) {
                    let mut e = Event::new(EventKind::QueuePosition, now);
                    e.equipment_id = Some(id.clone());
                    e.session_id = Some(entry.session_id.clone());
                    e.lock_mode = Some(entry.mode);
                    e.queue_id = Some(entry.queue_id.clone());
                    e.position = Some(i + 1);
                    notes.push(e);
                }
            }
            self.warnings.reschedule(locks);
        }
        // Recorded events go live from the history, in `seq` order, so a
        // subscriber never sees a later one before an earlier one (see
        // `publish_history`); the rest (notifications, events not recorded
        // because lock-event logging is off) go out now.
        let mut recorded = None;
        for event in committed.events.into_iter().chain(notes) {
            match event.seq {
                Some(seq) => recorded = recorded.max(Some(seq)),
                None => self.hub.publish(event),
            }
        }
        if let Some(seq) = recorded {
            self.recorded_upto.fetch_max(seq, Ordering::SeqCst);
            self.history_grew.notify_one();
        }
    }

    /// The newest recorded `seq`: where live publishing starts.
    pub async fn last_event_seq(&self) -> Result<u64, ServiceError> {
        Ok(self.run(|uow| Ok(uow.tx.last_event_seq()?)).await?.value)
    }

    /// Publishes every recorded event after `after`, in order, and returns
    /// the last `seq` published. The one path recorded events take to live
    /// subscribers: commits finish in any order across threads, the history
    /// does not.
    pub async fn publish_history(&self, after: u64) -> Result<u64, ServiceError> {
        // Nobody listening: nothing to read. (Read the mark first: whatever
        // it covers was committed before anyone could have subscribed.)
        let upto = self.recorded_upto.load(Ordering::SeqCst);
        if self.hub.subscribers() == 0 {
            return Ok(after.max(upto));
        }
        let mut last = after;
        loop {
            let page = self
                .history(EventQuery {
                    after: Some(last),
                    limit: 1000,
                    ..EventQuery::default()
                })
                .await?
                .value
                .events;
            let full = page.len() == 1000;
            for event in page {
                last = event.seq.unwrap_or(last);
                self.hub.publish(event);
            }
            if !full {
                return Ok(last);
            }
        }
    }

    /// Wakes whoever publishes the history when it grows.
    pub fn history_grew(&self) -> &Notify {
        &self.history_grew
    }

    /// Runs a transaction. Requests wait for a blocking store's turn
    /// asynchronously, so at most one worker thread at a time blocks on it
    /// and the others keep serving. (Handing the blocked worker's tasks off
    /// with `block_in_place` measured a third slower: see
    /// docs/benchmarks.md.) A store with group commit gets batched work.
    pub(super) async fn in_store_gated(
        &self,
        work: &mut crate::storage::Work<'_>,
    ) -> Result<(), StoreError> {
        if let Some(group) = self.store.group_commit() {
            return self.in_batch(group, work).await;
        }
        if self.store.blocks() {
            let _turn = self.store_turn.lock().await;
            self.store.transaction(work)
        } else {
            self.store.transaction(work)
        }
    }

    /// Group commit: runs `work` in the store's open batch. Whoever finds
    /// nobody else waiting to add work, and the store not busy syncing an
    /// earlier batch, commits the batch; the others wait for that commit
    /// (or take their turn back and commit it themselves). Everyone is
    /// answered once the store says their batch is durable, which it may
    /// make so while the next batch already runs. Nothing returns before
    /// its work is committed.
    async fn in_batch(
        &self,
        group: &dyn crate::storage::GroupCommit,
        work: &mut crate::storage::Work<'_>,
    ) -> Result<(), StoreError> {
        /// Counts requests waiting for their turn, even if they are dropped.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        const MAX_BATCH: usize = 64;
        self.store_waiting.fetch_add(1, Ordering::SeqCst);
        let waiting = Waiting(&self.store_waiting);
        let turn = self.store_turn.lock().await;
        drop(waiting);
        let mut finished = group.finished();
        let batch = group.run_in_batch(work);
        let others = self.store_waiting.load(Ordering::SeqCst) > 0;
        if group.batch_len() >= MAX_BATCH || (!others && !group.syncing()) {
            // Its outcome reaches everyone in the batch through its fate.
            let _committed = group.commit_batch();
        }
        drop(turn);
        // The batch's own fate: however many other batches end meanwhile,
        // this request hears how its own did.
        let mut fate = batch?;
        let closed = || StoreError::Unavailable("the store is closed".into());
        loop {
            if let Some(outcome) = fate.outcome() {
                return outcome;
            }
            if !group.is_open(fate.number()) {
                // Committed and being made durable.
                return fate.settled().await;
            }
            if group.syncing() {
                // Waiting for the sync under way to end before committing.
                tokio::select! {
                    outcome = fate.settled() => return outcome,
                    changed = finished.changed() => changed.map_err(|_| closed())?,
                }
                continue;
            }
            tokio::select! {
                outcome = fate.settled() => return outcome,
                changed = finished.changed() => changed.map_err(|_| closed())?,
                turn = self.store_turn.lock() => {
                    if group.is_open(fate.number()) && !group.syncing() {
                        // Nobody else committed it: do it now.
                        let _committed = group.commit_batch();
                    }
                    drop(turn);
                }
            }
        }
    }
}
