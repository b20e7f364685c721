//! The lab manager's controls: take someone else's queue place, end
//! someone else's session, take an instrument out of service and back;
//! and the waiters' own trades of places (stepping back, swapping). Admins only once authentication is on (with it
//! off, anyone, as with a forced release). Each records who did it as
//! `forced_by`, the admin as `user`, and the admin's `message`.

use super::{At, Service, ServiceError, SessionEnd};
use crate::domain::access::ManagerAction;
use crate::domain::{
    Actor, DomainError, EndReason, EquipmentId, EventKind, Maintenance, QueueEntry, SessionId,
    Timestamp,
};

/// Who acts on someone else's place or session, and what they say.
#[derive(Clone, Debug)]
pub struct Intervention {
    pub actor: Actor,
    /// Recorded as `forced_by` (need not be a session, as in a forced
    /// release: `"lab-manager"`, `"dashboard"`).
    pub forced_by: SessionId,
    pub message: Option<String>,
}

impl Service {
    /// Removes `session`'s entry from `equipment`'s queue; answers it
    /// with the position it had.
    pub async fn remove_from_queue(
        &self,
        equipment: &EquipmentId,
        session: &SessionId,
        by: Intervention,
    ) -> Result<At<(QueueEntry, usize)>, ServiceError> {
        self.registered(equipment)?;
        by.actor.may_manage(ManagerAction::RemoveWaiter)?;
        let (equipment, session) = (equipment.clone(), session.clone());
        self.run(move |uow| {
            uow.acting(&by.actor);
            let now = uow.now;
            let before = uow.events.len();
            let (_, removed) = uow.change_locks(&equipment, |locks, live, events| {
                locks.remove_waiter(&session, &by.forced_by, now, live, events)
            })?;
            for e in &mut uow.events[before..] {
                if e.forced_by.is_some() {
                    e.message = by.message.clone();
                }
            }
            Ok(removed?)
        })
        .await
    }

    /// Ends `session`, whoever's it is: its locks released (whatever the
    /// auto-release setting: the manager asked for it), its queue places
    /// gone, each freed equipment handed on.
    pub async fn end_session_forced(
        &self,
        session: &SessionId,
        by: Intervention,
    ) -> Result<At<SessionEnd>, ServiceError> {
        by.actor.may_manage(ManagerAction::EndSession)?;
        let session = session.clone();
        self.run(move |uow| {
            uow.acting(&by.actor);
            let ended = uow
                .live_session(&session)?
                .ok_or_else(|| DomainError::SessionNotFound(session.clone()))?;
            let before = uow.events.len();
            let locks_released = uow.end_session_releasing(&ended, EndReason::Forced, true)?;
            // Only the ended session's own events name who ended it; a
            // hand-off to the next in line is that one's ordinary grant.
            for e in &mut uow.events[before..] {
                if e.session_id.as_ref() != Some(&session) {
                    continue;
                }
                e.forced_by = Some(by.forced_by.clone());
                e.message = by.message.clone();
                e.holder_user = ended.user.clone();
                if e.event == EventKind::SessionEnded {
                    e.reason = Some(EndReason::Forced);
                }
            }
            Ok(SessionEnd { locks_released })
        })
        .await
    }

    /// Takes `equipment` out of service for `reason` until `until` (or
    /// until an admin ends it); a maintenance in force gets the new reason
    /// and end, keeping its `since` and starter. For a configured group, every member not already in a
    /// maintenance of its own.
    pub async fn start_maintenance(
        &self,
        equipment: &EquipmentId,
        reason: String,
        until: Option<Timestamp>,
        actor: &Actor,
    ) -> Result<At<Maintenance>, ServiceError> {
        let members = self.instruments_of(equipment)?;
        let group = self.named_group(equipment).map(|_| equipment.clone());
        actor.may_manage(ManagerAction::StartMaintenance)?;
        let actor = actor.clone();
        self.run(move |uow| {
            uow.acting(&actor);
            let now = uow.now;
            if let Some(until) = until.filter(|u| *u <= now) {
                return Err(DomainError::InvalidTimestamp(format!(
                    "`until` must be in the future, got {until} (now is {now})"
                ))
                .into());
            }
            let maintenance = Maintenance {
                reason: reason.clone(),
                since: now,
                until,
                user: actor.user.clone(),
                group: group.clone(),
            };
            // The answer is the maintenance as the (first) instrument now
            // has it: a renewal keeps its `since` and starter.
            let mut in_force = None;
            for equipment in &members {
                let started = maintenance.clone();
                let (_, kept) = uow.change_locks(equipment, move |locks, _, events| {
                    locks
                        .start_maintenance(started, now, events)
                        .then(|| locks.maintenance_at(now).cloned())
                        .flatten()
                })?;
                in_force = in_force.or(kept);
            }
            Ok(in_force.unwrap_or(maintenance))
        })
        .await
    }

    /// Puts `equipment` back in service and serves its queue.
    pub async fn end_maintenance(
        &self,
        equipment: &EquipmentId,
        actor: &Actor,
    ) -> Result<At<Maintenance>, ServiceError> {
        let members = self.instruments_of(equipment)?;
        let group = self.named_group(equipment).map(|_| equipment.clone());
        actor.may_manage(ManagerAction::EndMaintenance)?;
        let actor = actor.clone();
        self.run(move |uow| {
            uow.acting(&actor);
            let now = uow.now;
            // A group's members in the group's maintenance come back (not
            // those in one of their own); it is an error only if none was.
            let mut first = None;
            for equipment in &members {
                let (_, ended) = uow.change_locks(equipment, |locks, live, events| {
                    locks.end_maintenance(group.as_ref(), now, live, events)
                })?;
                match (ended, &first) {
                    (Ok(m), None | Some(Err(_))) => first = Some(Ok(m)),
                    (Err(e), None) => first = Some(Err(e)),
                    _ => {}
                }
            }
            match first.expect("a group has members") {
                // None was in the group's maintenance: say so of the group
                // the caller named, not of a member.
                Err(DomainError::NotInMaintenance { .. }) if group.is_some() => {
                    Err(DomainError::NotInMaintenance {
                        equipment: group.clone().expect("a group"),
                    }
                    .into())
                }
                ended => Ok(ended?),
            }
        })
        .await
    }

    /// The instruments `id` names: itself, or a configured group's members.
    pub fn instruments_of(&self, id: &EquipmentId) -> Result<Vec<EquipmentId>, ServiceError> {
        match self.named_group(id) {
            Some(group) => Ok(group.members.clone()),
            None => self.registered(id).map(|()| vec![id.clone()]),
        }
    }

    /// A waiter lets the one right behind it go first. Answers its new
    /// position.
    pub async fn step_back(
        &self,
        equipment: &EquipmentId,
        session: &SessionId,
        actor: &Actor,
    ) -> Result<At<usize>, ServiceError> {
        self.registered(equipment)?;
        let (equipment, session, actor) = (equipment.clone(), session.clone(), actor.clone());
        self.run(move |uow| {
            uow.renew_session(&session, &actor)?;
            let (now, policy) = (uow.now, uow.policy.lock);
            let (_, moved) = uow.change_locks(&equipment, |locks, _, events| {
                locks.step_back(&session, policy, now, events)
            })?;
            Ok(moved?)
        })
        .await
    }

    /// A waiter offers to swap places with `other` in the same queue; they
    /// swap once both have asked. Answers whether they swapped and its
    /// position now.
    pub async fn swap_places(
        &self,
        equipment: &EquipmentId,
        session: &SessionId,
        other: &SessionId,
        actor: &Actor,
    ) -> Result<At<(bool, usize)>, ServiceError> {
        self.registered(equipment)?;
        let (equipment, session, other, actor) = (
            equipment.clone(),
            session.clone(),
            other.clone(),
            actor.clone(),
        );
        self.run(move |uow| {
            uow.renew_session(&session, &actor)?;
            let (now, policy) = (uow.now, uow.policy.lock);
            let (_, swapped) = uow.change_locks(&equipment, |locks, _, events| {
                locks.swap(&session, &other, policy, now, events)
            })?;
            Ok(swapped?)
        })
        .await
    }
}
