//! Use cases that wait on live events: acquire with `wait_seconds`, and
//! the `lock_expiring` warnings.

use super::{AcquireInput, Acquired, At, Service, ServiceError};
use crate::domain::{AcquireOutcome, EquipmentId, EquipmentLocks, Event, EventKind, SessionId};
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

impl Service {
    /// An equipment's locks through the write path: what is due expires
    /// (and is committed) first, so a waiter answered `locked` holds a
    /// grant that is durable, unlike a read's view of it.
    async fn standing_now(
        &self,
        equipment: &EquipmentId,
    ) -> Result<At<EquipmentLocks>, ServiceError> {
        self.run(|uow| Ok(uow.tx.equipment_locks(equipment)?)).await
    }

    /// Sends `lock_expiring` for a scheduled warning if its lease is still
    /// the one it was scheduled for (not renewed, released or expired).
    pub async fn warn_expiring(&self, warning: Warning) -> Result<bool, ServiceError> {
        let at = self
            .run(|uow| {
                let locks = uow.tx.equipment_locks(&warning.equipment_id)?;
                let grant = locks
                    .exclusive
                    .iter()
                    .chain(&locks.observers)
                    .find(|g| {
                        g.lock_id == warning.lock_id && g.deadline() == Some(warning.deadline)
                    })
                    .filter(|g| g.is_live(uow.now))
                    .cloned();
                Ok(grant)
            })
            .await?;
        let Some(grant) = at.value else {
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
    pub async fn acquire_waiting(
        &self,
        input: AcquireInput,
        wait: Option<std::time::Duration>,
    ) -> Result<At<Acquired>, ServiceError> {
        let (equipment, session) = (input.equipment_id.clone(), input.session_id.clone());
        let Some(wait) = wait.filter(|w| !w.is_zero()) else {
            // No waiting: no listening either. (A subscriber makes every
            // commit's events go live through the history: see
            // `publish_history`.)
            return self.acquire(input).await;
        };
        // Listen before asking, so a grant right after cannot be missed.
        let mut live = self.hub.subscribe();
        let first = self.acquire(input).await?;
        if !matches!(first.value.outcome, AcquireOutcome::Queued { .. }) {
            return Ok(first);
        }
        let until = first.now.plus_millis(wait.as_millis() as u64);
        // On shutdown the caller is answered with where it stands; it keeps
        // its place for when the server is back.
        let closed = self.hub.closed();
        tokio::pin!(closed);
        loop {
            tokio::select! {
                _ = &mut closed => break,
                received = live.recv() => match received {
                    Ok(event) if event.equipment_id.as_ref() != Some(&equipment) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    // Anything on this equipment (or a lag) may change our
                    // standing: look.
                    _ => {}
                },
                _ = self.clock.sleep_until(until) => break,
            }
            let now = self.standing_now(&equipment).await?;
            match standing(&now.value, &session) {
                Some(AcquireOutcome::Queued { .. }) => continue,
                Some(outcome) => {
                    return Ok(At {
                        value: Acquired {
                            outcome,
                            locks: now.value,
                        },
                        now: now.now,
                    });
                }
                None => return Err(ServiceError::SessionNotFound(session)),
            }
        }
        let now = self.standing_now(&equipment).await?;
        let outcome =
            standing(&now.value, &session).ok_or(ServiceError::SessionNotFound(session))?;
        Ok(At {
            value: Acquired {
                outcome,
                locks: now.value,
            },
            now: now.now,
        })
    }
}
