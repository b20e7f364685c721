//! The lock use cases: acquire, release, renew, look at an equipment's
//! locks and events, and expire what is due.

use super::inputs::too_many;
use super::{AcquireInput, Acquired, At, ExpiryReport, Service, ServiceError};
use crate::domain::group::GroupRef;
use crate::domain::{
    Actor, EquipmentId, EquipmentLocks, Event, ReleaseOutcome, SessionId, Timestamp,
};
use std::sync::Arc;

/// A release's answer: what ended, and, if it was a lock group's member,
/// the group and every instrument it held or waited for (all released).
#[derive(Clone, Debug)]
pub struct Released {
    pub outcome: ReleaseOutcome,
    pub group: Option<(Arc<GroupRef>, Vec<EquipmentId>)>,
}

impl Service {
    pub async fn acquire(
        &self,
        equipment: EquipmentId,
        input: AcquireInput,
    ) -> Result<At<Acquired>, ServiceError> {
        let instrument = self.instrument(&equipment)?;
        input.actor.may_lock(input.mode)?;
        input
            .actor
            .may_use_priority(input.priority, self.policy.priority_caps)?;
        input
            .actor
            .may_use_equipment(equipment.as_str(), instrument.allow.as_deref())?;
        self.run(move |uow| {
            let (request, session, opened) = uow.lock_request(&input)?;
            let mut locks = uow.load_locks(&equipment)?;
            let opened_at = uow.events.len();
            let outcome = locks.acquire(&request, uow.now, uow.policy.lock, &mut uow.events)?;
            // A refused acquire opens no session.
            if opened {
                uow.open_implicit(&session, opened_at)?;
            }
            uow.save_locks(&locks)?;
            Ok(Acquired { outcome, locks })
        })
        .await
    }

    pub async fn release(
        &self,
        equipment: &EquipmentId,
        session: &SessionId,
        force: bool,
        actor: &Actor,
    ) -> Result<At<Released>, ServiceError> {
        self.registered(equipment)?;
        let (equipment, session, actor) = (equipment.clone(), session.clone(), actor.clone());
        self.run(move |uow| {
            let (equipment, session, actor) = (&equipment, &session, &actor);
            // A forced release may name a session that does not exist (the
            // brief's own example uses "admin_session"); a live one is renewed.
            let live = uow.renew_if_live(session, actor)?.is_some();
            let now = uow.now;
            let (_, outcome) = uow.change_locks(equipment, |locks, alive, events| {
                locks.may_release(session, force, live, actor, alive)?;
                let groups: Vec<_> = locks.groups().cloned().collect();
                let from = events.len();
                let outcome = locks.release(session, force, now, alive, events)?;
                // The lock group whose member this was: it goes whole.
                let ended = events[from..].iter().find_map(|e| e.group_id.as_ref());
                let group = groups.into_iter().find(|g| Some(&g.group_id) == ended);
                Ok::<_, crate::domain::DomainError>((outcome, group))
            })?;
            let (outcome, group) = outcome?;
            // Its other members go when the unit of work settles.
            let group = match group {
                Some(group) => {
                    let mut places = vec![equipment.clone()];
                    places.extend(uow.group_places(&group)?);
                    Some((group, places))
                }
                None => None,
            };
            Ok(Released { outcome, group })
        })
        .await
    }

    pub async fn lock_activity(
        &self,
        equipment: &EquipmentId,
        session: &SessionId,
        actor: &Actor,
    ) -> Result<At<crate::domain::Grant>, ServiceError> {
        self.registered(equipment)?;
        let (equipment, session, actor) = (equipment.clone(), session.clone(), actor.clone());
        self.run(move |uow| {
            let (equipment, session, actor) = (&equipment, &session, &actor);
            let mut locks = uow.load_locks(equipment)?;
            if uow.renew_if_live(session, actor)?.is_none() {
                // The same rule as release: a lost lock is `lock_lost`.
                return Err(locks.departed(session, actor).into());
            }
            let grant = locks.renew(session, uow.now)?;
            uow.save_locks(&locks)?;
            Ok(grant)
        })
        .await
    }

    pub async fn lock_state(
        &self,
        equipment: &EquipmentId,
    ) -> Result<At<EquipmentLocks>, ServiceError> {
        self.registered(equipment)?;
        let equipment = equipment.clone();
        self.read(move |view| Ok(view.locks(&equipment)?)).await
    }

    pub async fn busy_equipment(&self) -> Result<At<Vec<EquipmentLocks>>, ServiceError> {
        self.read(|view| {
            let mut all = Vec::new();
            for stored in view.tx.busy_equipment()? {
                // What expired at `now` may have left it idle.
                let locks = view.at_now(stored)?;
                if !locks.is_idle() {
                    all.push(locks);
                }
            }
            all.sort_by(|a, b| a.equipment_id.cmp(&b.equipment_id));
            Ok(all)
        })
        .await
    }

    pub async fn equipment_events(
        &self,
        equipment: &EquipmentId,
        limit: usize,
    ) -> Result<At<Vec<Event>>, ServiceError> {
        self.registered(equipment)?;
        let limit = too_many(limit)?;
        let equipment = equipment.clone();
        self.read_events(move |tx| Ok(tx.equipment_events(&equipment, limit)?))
            .await
    }

    /// Expires what is due and says when the next deadline is. The reaper's
    /// step, and the manual cleanup endpoint's.
    pub async fn expire_due(&self) -> Result<At<(ExpiryReport, Option<Timestamp>)>, ServiceError> {
        let at = self
            .run(|uow| Ok((uow.expired, uow.tx.next_deadline()?)))
            .await?;
        Ok(at)
    }
}
