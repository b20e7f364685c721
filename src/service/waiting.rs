//! Use cases that wait on live events: acquire with `wait_seconds`, and
//! the `lock_expiring` warnings.

use super::{AcquireInput, Acquired, At, GroupAcquired, GroupAsk, Service, ServiceError};
use crate::domain::DomainError;
use crate::domain::group::{Bench, GroupOutcome};
use crate::domain::{
    AcquireOutcome, EndReason, EquipmentId, EquipmentLocks, Event, EventKind, SessionId,
};
use crate::live::Warning;

/// Where `session` stands on an equipment: holding, waiting, or neither.
fn standing(locks: &EquipmentLocks, session: &SessionId) -> Option<AcquireOutcome> {
    if let Some(grant) = locks.grant_of(session) {
        return Some(AcquireOutcome::Locked(grant.clone()));
    }
    let position = locks.position_of(session)?;
    Some(AcquireOutcome::Queued {
        entry: locks.queue[position - 1].clone(),
        position,
    })
}

/// Whether `event` tells `session` it was granted a lock: published only
/// once the grant is durable.
fn grants(event: &Event, session: &SessionId) -> bool {
    matches!(
        event.event,
        EventKind::QueueProcessed | EventKind::LockGranted
    ) && event.session_id.as_ref() == Some(session)
}

impl Service {
    /// An equipment's locks through the write path: what is due expires
    /// (and is committed) first, so a waiter answered `locked` holds a
    /// grant that is durable, unlike a read's view of it.
    async fn standing_now(
        &self,
        equipment: &EquipmentId,
    ) -> Result<At<EquipmentLocks>, ServiceError> {
        let equipment = equipment.clone();
        self.run(move |uow| Ok(uow.tx.equipment_locks(&equipment)?))
            .await
    }

    /// Why a waiter neither holds nor waits any more, as told by its
    /// latest event on `equipment`: its `max_wait_seconds` passed, an
    /// admin removed its place, or else its session is gone.
    async fn why_gone(
        &self,
        equipment: EquipmentId,
        session: SessionId,
        timed_out: bool,
    ) -> Result<DomainError, ServiceError> {
        let asked = session.clone();
        let at = self
            .read(move |view| Ok(view.tx.session_events(&asked, 20)?))
            .await?;
        let latest = at
            .value
            .iter()
            .rev()
            .find(|e| e.equipment_id.as_ref() == Some(&equipment));
        Ok(match latest.map(|e| (e.event, e.reason)) {
            _ if timed_out => DomainError::WaitTimedOut { equipment, session },
            Some((EventKind::QueueTimeout, _)) => DomainError::WaitTimedOut { equipment, session },
            Some((EventKind::Dequeued, Some(EndReason::Removed))) => {
                DomainError::NotQueued { equipment, session }
            }
            _ => DomainError::SessionNotFound(session),
        })
    }

    /// An equipment's locks as committed: a read, no commit to wait for.
    pub(super) async fn stored(
        &self,
        equipment: &EquipmentId,
    ) -> Result<At<EquipmentLocks>, ServiceError> {
        let equipment = equipment.clone();
        self.read(move |view| Ok(view.tx.equipment_locks(&equipment)?))
            .await
    }

    /// Sends `lock_expiring` for a scheduled warning if its lease is still
    /// the one it was scheduled for (not renewed, released or expired), as
    /// committed: a warning needs no write.
    pub async fn warn_expiring(&self, warning: Warning) -> Result<bool, ServiceError> {
        let at = self.stored(&warning.equipment_id).await?;
        let grant = at
            .value
            .exclusive
            .iter()
            .chain(&at.value.observers)
            .find(|g| g.lock_id == warning.lock_id && g.deadline() == Some(warning.deadline))
            .filter(|g| g.is_live(at.now))
            .cloned();
        let Some(grant) = grant else {
            return Ok(false);
        };
        let mut e = Event::new(EventKind::LockExpiring, at.now);
        e.equipment_id = Some(warning.equipment_id);
        e.session_id = Some(grant.session_id);
        e.lock_mode = Some(grant.mode);
        e.lock_id = Some(grant.lock_id);
        e.fencing_token = Some(grant.fencing_token);
        e.expires_at = Some(warning.deadline);
        e.time_remaining = crate::domain::time::time_remaining(Some(warning.deadline), at.now);
        self.hub.publish(e);
        Ok(true)
    }

    /// Acquires; if the request is queued and `wait` is given, waits until
    /// the lock is granted or the wait is over, then answers with the
    /// standing at that moment (semantics of issue 5: `wait_seconds`). A
    /// caller that goes away keeps its place: nothing here undoes the queue
    /// entry.
    ///
    /// Each event on the equipment is a reason to look again, by a read (no
    /// commit or fsync waited for). A grant is answered once its event has
    /// been seen, as events go live only once durable: a read alone may
    /// show a commit whose sync is still running.
    pub async fn acquire_waiting(
        &self,
        equipment: EquipmentId,
        input: AcquireInput,
        wait: Option<std::time::Duration>,
    ) -> Result<At<Acquired>, ServiceError> {
        let session = input.session_id.clone();
        let Some(wait) = wait.filter(|w| !w.is_zero()) else {
            return self.acquire(equipment, input).await;
        };
        // Listen before asking, so a grant right after cannot be missed.
        let mut live = self.hub.subscribe();
        let first = self.acquire(equipment.clone(), input).await?;
        if !matches!(first.value.outcome, AcquireOutcome::Queued { .. }) {
            return Ok(first);
        }
        let until = first.now.plus_millis(wait.as_millis() as u64);
        // On shutdown the caller is answered with where it stands; it keeps
        // its place for when the server is back.
        let closed = self.hub.closed();
        tokio::pin!(closed);
        let mut granted = false;
        // Whether its place was dropped (`max_wait_seconds`) meanwhile.
        let mut timed_out = false;
        loop {
            tokio::select! {
                _ = &mut closed => break,
                received = live.recv() => match received {
                    Ok(event) if event.equipment_id.as_ref() != Some(&equipment) => continue,
                    Ok(event) => {
                        granted |= grants(&event, &session);
                        timed_out |= event.event == EventKind::QueueTimeout
                            && event.session_id.as_ref() == Some(&session);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    // A lag may have lost the grant's event: the write
                    // path's answer is durable.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let now = self.standing_now(&equipment).await?;
                        match standing(&now.value, &session) {
                            Some(AcquireOutcome::Queued { .. }) => continue,
                            _ => break,
                        }
                    }
                },
                _ = self.clock.sleep_until(until) => break,
            }
            let now = self.stored(&equipment).await?;
            let holds = now.value.grant_of(&session).is_some();
            if holds && !granted {
                // Committed, its event not yet out: it comes once durable.
                continue;
            }
            match standing(&now.value, &session) {
                Some(AcquireOutcome::Queued { .. }) => {}
                Some(outcome) => {
                    return Ok(At {
                        value: Acquired {
                            outcome,
                            locks: now.value,
                        },
                        now: now.now,
                    });
                }
                // Its place is gone: the durable look below says why.
                None => break,
            }
        }
        let now = self.standing_now(&equipment).await?;
        let Some(outcome) = standing(&now.value, &session) else {
            // The place may have been dropped by this very look, as its
            // `max_wait_seconds` passed with the wait.
            return Err(self.why_gone(equipment, session, timed_out).await?.into());
        };
        Ok(At {
            value: Acquired {
                outcome,
                locks: now.value,
            },
            now: now.now,
        })
    }
}

impl Service {
    /// `acquire_group`, then, if queued and `wait` is given, waits until
    /// the group is granted (its grant's events seen, so it is durable),
    /// its place is dropped, or the wait is over; answers with where the
    /// request stands then, as `acquire_waiting` does for one instrument.
    pub async fn acquire_group_waiting(
        &self,
        input: AcquireInput,
        ask: GroupAsk,
        wait: Option<std::time::Duration>,
    ) -> Result<At<GroupAcquired>, ServiceError> {
        let session = input.session_id.clone();
        let Some(wait) = wait.filter(|w| !w.is_zero()) else {
            return self.acquire_group(input, ask).await;
        };
        let mut live = self.hub.subscribe();
        let first = self.acquire_group(input, ask).await?;
        let Some(group) = first.value.outcome.group().cloned() else {
            return Ok(first);
        };
        if !matches!(first.value.outcome, GroupOutcome::Queued(_)) {
            return Ok(first);
        }
        let until = first.now.plus_millis(wait.as_millis() as u64);
        let closed = self.hub.closed();
        tokio::pin!(closed);
        let mut timed_out = false;
        // Where its place went without its asking, if it did.
        let mut dropped_at: Option<EquipmentId> = None;
        let mut durable = true;
        loop {
            tokio::select! {
                _ = &mut closed => break,
                received = live.recv() => match received {
                    Ok(e) if e.session_id.as_ref() == Some(&session)
                        && e.group_id.as_deref() == Some(group.group_id.as_str()) =>
                    {
                        match e.event {
                            EventKind::QueueProcessed | EventKind::LockGranted => break,
                            EventKind::QueueTimeout => {
                                timed_out = true;
                                break;
                            }
                            EventKind::Dequeued => {
                                dropped_at = e.equipment_id.clone();
                                break;
                            }
                            _ => continue,
                        }
                    }
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        durable = false;
                        break;
                    }
                },
                _ = self.clock.sleep_until(until) => {
                    durable = false;
                    break;
                }
            }
        }
        // After its event, a read shows the grant (events go out once
        // durable); otherwise the write path's answer is the durable one.
        let ids: Vec<EquipmentId> = group.involved().cloned().collect();
        let at = if durable {
            self.read(move |view| {
                let mut bench = Bench::new();
                for id in &ids {
                    bench.insert(id.clone(), view.tx.equipment_locks(id)?);
                }
                Ok(bench)
            })
            .await?
        } else {
            self.run(move |uow| Ok(uow.load_bench(ids.iter())?)).await?
        };
        let Some(outcome) = super::groups::standing(&at.value, &group, &session) else {
            let first = group.involved().next().expect("a group names instruments");
            let equipment = dropped_at.unwrap_or_else(|| first.clone());
            return Err(self.why_gone(equipment, session, timed_out).await?.into());
        };
        Ok(At {
            value: GroupAcquired {
                outcome,
                bench: at.value,
            },
            now: at.now,
        })
    }
}
