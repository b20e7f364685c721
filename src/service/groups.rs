//! Lock groups and pools: acquiring and releasing several instruments as
//! one (`domain::group` holds the rules), and keeping each group whole in
//! every unit of work (`Uow::settle_groups`).

use std::collections::HashSet;
use std::sync::Arc;

use super::uow::{Uow, live_check};
use super::{AcquireInput, At, Service, ServiceError};
use crate::domain::group::{self, Bench, GroupOutcome, GroupRef};
use crate::domain::{Actor, EquipmentId, QueueEntry, ReleaseOutcome, SessionId};
use crate::storage::StoreError;

/// What a group acquire asks for: every one of `members` and one of
/// `any_of` (at least one of the two given).
#[derive(Clone, Debug, Default)]
pub struct GroupAsk {
    /// The configured group it names (its members are `members`).
    pub name: Option<EquipmentId>,
    pub members: Vec<EquipmentId>,
    /// A pool: instrument ids, or what `any_of_tags` selects.
    pub any_of: Vec<EquipmentId>,
    pub any_of_tags: Vec<String>,
}

/// A group acquire's answer.
#[derive(Clone, Debug)]
pub struct GroupAcquired {
    pub outcome: GroupOutcome,
    /// The lock state of every instrument involved, as left.
    pub bench: Bench,
}

/// How a group release names the group.
#[derive(Clone, Debug)]
pub enum GroupTarget {
    /// Its `group_id`.
    Id(String),
    /// The instruments it was acquired with (`equipment_ids`, or a
    /// configured group's id): the group holding or waiting for them.
    Members(Vec<EquipmentId>),
}

/// A group release's answer: what ended, and on which instruments.
#[derive(Clone, Debug)]
pub struct GroupReleased {
    pub group_id: String,
    pub outcome: ReleaseOutcome,
    pub equipment: Vec<EquipmentId>,
}

impl Service {
    /// The group `ask` describes, resolved against the configuration.
    fn resolve(&self, ask: &GroupAsk, actor: &Actor) -> Result<Arc<GroupRef>, ServiceError> {
        let mut members: Vec<EquipmentId> = Vec::new();
        // An instrument named twice is the same instrument.
        for id in &ask.members {
            self.registered(id)?;
            if !members.contains(id) {
                members.push(id.clone());
            }
        }
        let pool_asked = !ask.any_of.is_empty() || !ask.any_of_tags.is_empty();
        let mut any_of = Vec::new();
        if !ask.any_of_tags.is_empty() {
            any_of = self.instruments.tagged(&ask.any_of_tags);
        }
        for id in &ask.any_of {
            self.registered(id)?;
            if !any_of.contains(id) {
                any_of.push(id.clone());
            }
        }
        // With authentication on, a pool offers only what the caller may use.
        any_of.retain(|id| !members.contains(id) && self.may_use(actor, id));
        if pool_asked && any_of.is_empty() {
            return Err(ServiceError::NoSuchPool(
                "`any_of` matches no instrument you may lock outside `equipment_ids`: check its tags or ids".into(),
            ));
        }
        if members.is_empty() && any_of.is_empty() {
            return Err(ServiceError::Invalid(
                "name the instruments: `equipment_id`, `equipment_ids` or `any_of`".into(),
            ));
        }
        for id in &members {
            let allow = self.instrument(id)?.allow.as_deref();
            actor.may_use_equipment(id.as_str(), allow)?;
        }
        Ok(Arc::new(GroupRef {
            group_id: format!("grp_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]),
            name: ask.name.clone(),
            members,
            any_of,
        }))
    }

    /// A configured `[[group]]` by id.
    pub fn named_group(&self, id: &EquipmentId) -> Option<&crate::drivers::NamedGroup> {
        self.instruments.group(id)
    }

    /// The configured `[[group]]`s.
    pub fn named_groups(&self) -> &[crate::drivers::NamedGroup] {
        self.instruments.groups()
    }

    fn may_use(&self, actor: &Actor, id: &EquipmentId) -> bool {
        self.instrument(id).is_ok_and(|i| {
            actor
                .may_use_equipment(id.as_str(), i.allow.as_deref())
                .is_ok()
        })
    }

    /// Acquire a lock group or pool (`ask`) with the settings of `input`.
    pub async fn acquire_group(
        &self,
        input: AcquireInput,
        ask: GroupAsk,
    ) -> Result<At<GroupAcquired>, ServiceError> {
        input.actor.may_lock(input.mode)?;
        input
            .actor
            .may_use_priority(input.priority, self.policy.priority_caps)?;
        let group = self.resolve(&ask, &input.actor)?;
        self.run(move |uow| {
            let (request, session, opened) = uow.lock_request(&input)?;
            let mut bench = uow.load_bench(group.involved())?;
            let opened_at = uow.events.len();
            let outcome = group::acquire(
                &mut bench,
                &group,
                &request,
                uow.now,
                uow.policy.lock,
                &mut uow.events,
            )?;
            if opened {
                uow.open_implicit(&session, opened_at)?;
            }
            uow.save_bench(&bench)?;
            Ok(GroupAcquired { outcome, bench })
        })
        .await
    }

    /// Releases `session`'s group (or leaves its places), or with `force`
    /// whoever holds it; the members' locks all end (one `lock_released`
    /// per member, each naming the group).
    pub async fn release_group(
        &self,
        target: GroupTarget,
        session: &SessionId,
        force: bool,
        actor: &Actor,
    ) -> Result<At<GroupReleased>, ServiceError> {
        // A configured group's id stands for its members.
        let target = match target {
            GroupTarget::Members(ids) => {
                let mut members: Vec<EquipmentId> = Vec::new();
                for id in ids {
                    let expanded = match self.named_group(&id) {
                        Some(group) => group.members.clone(),
                        None => {
                            self.registered(&id)?;
                            vec![id]
                        }
                    };
                    for member in expanded {
                        if !members.contains(&member) {
                            members.push(member);
                        }
                    }
                }
                GroupTarget::Members(members)
            }
            target => target,
        };
        let (session, actor) = (session.clone(), actor.clone());
        self.run(move |uow| {
            let live = uow.renew_if_live(&session, &actor)?.is_some();
            let Some((group, equipment)) = uow.find_group(&target, &session, force)? else {
                // A group that ended without its asking says how, as a
                // single lock does.
                if let GroupTarget::Members(ids) = &target {
                    for id in ids {
                        let locks = uow.tx.equipment_locks(id)?;
                        if let Some(lost) = locks.lost_lock_told_to(&session, &actor) {
                            return Err(lost.into());
                        }
                    }
                }
                let whose = if force { "anyone" } else { "this session" };
                let ids = |ids: &[EquipmentId]| {
                    let ids: Vec<&str> = ids.iter().map(|i| i.as_str()).collect();
                    ids.join(", ")
                };
                return Err(ServiceError::NoSuchGroup(match &target {
                    GroupTarget::Id(id) => format!("{whose} holds or waits for no lock group {id}"),
                    GroupTarget::Members(members) => format!(
                        "{whose} holds or waits for no lock group of {}",
                        ids(members)
                    ),
                }));
            };
            let now = uow.now;
            let places = uow.group_places(&group)?;
            // One member's release ends the group (`settle_groups`).
            let (_, outcome) = uow.change_locks(&equipment, |locks, alive, events| {
                locks.may_release(&session, force, live, &actor, alive)?;
                locks.release(&session, force, now, alive, events)
            })?;
            let outcome = outcome?;
            Ok(GroupReleased {
                group_id: group.group_id.clone(),
                outcome,
                equipment: places,
            })
        })
        .await
    }
}

/// Where `session` stands with `group` in `bench`: holding it, waiting for
/// it, or neither.
pub(super) fn standing(
    bench: &Bench,
    group: &GroupRef,
    session: &SessionId,
) -> Option<GroupOutcome> {
    let held: Vec<_> = bench
        .iter()
        .filter_map(|(id, locks)| {
            let grant = locks.grant_of(session)?;
            let same = grant.group.as_ref()?.group_id == group.group_id;
            same.then(|| (id.clone(), grant.clone()))
        })
        .collect();
    if !held.is_empty() {
        return Some(GroupOutcome::Locked(held));
    }
    let places = group::places_of(bench, session, |g| g.group_id == group.group_id);
    (!places.is_empty()).then_some(GroupOutcome::Queued(places))
}

impl Uow<'_> {
    /// The lock states of `ids`.
    pub(super) fn load_bench<'i>(
        &mut self,
        ids: impl Iterator<Item = &'i EquipmentId>,
    ) -> Result<Bench, StoreError> {
        let mut bench = Bench::new();
        for id in ids {
            let locks = self.load_locks(id)?;
            bench.insert(id.clone(), locks);
        }
        Ok(bench)
    }

    pub(super) fn save_bench(&mut self, bench: &Bench) -> Result<(), StoreError> {
        for locks in bench.values() {
            self.save_locks(locks)?;
        }
        Ok(())
    }

    /// The instruments where `group` holds a lock or waits (for a pool: the
    /// one it got, or every one it waits for).
    pub(super) fn group_places(
        &mut self,
        group: &GroupRef,
    ) -> Result<Vec<EquipmentId>, StoreError> {
        let mut places = Vec::new();
        for id in group.involved() {
            let locks = self.tx.equipment_locks(id)?;
            let of_group =
                |g: Option<&Arc<GroupRef>>| g.is_some_and(|g| g.group_id == group.group_id);
            let held = locks
                .exclusive
                .iter()
                .chain(&locks.observers)
                .any(|g| of_group(g.group.as_ref()));
            if held || locks.queue.iter().any(|e| of_group(e.group.as_ref())) {
                places.push(id.clone());
            }
        }
        Ok(places)
    }

    /// The group `target` names and an instrument where it holds or waits:
    /// `session`'s own, or (forcing) anyone's.
    fn find_group(
        &mut self,
        target: &GroupTarget,
        session: &SessionId,
        force: bool,
    ) -> Result<Option<(Arc<GroupRef>, EquipmentId)>, StoreError> {
        // Named by its members: each member named, and nothing else but
        // the pool instrument it got (checked below: where it holds or
        // waits).
        let matches = |g: &GroupRef| match target {
            GroupTarget::Id(id) => &g.group_id == id,
            GroupTarget::Members(ids) => {
                ids.iter().all(|i| g.involved().any(|m| m == i))
                    && g.members.iter().all(|m| ids.contains(m))
            }
        };
        let mut candidates: Vec<EquipmentId> = self.tx.equipment_of_session(session)?;
        if force {
            candidates.extend(
                self.tx
                    .busy_equipment()?
                    .into_iter()
                    .map(|l| l.equipment_id),
            );
        }
        for id in candidates {
            let locks = self.tx.equipment_locks(&id)?;
            let found = locks
                .exclusive
                .iter()
                .chain(&locks.observers)
                .filter(|g| force || &g.session_id == session)
                .filter_map(|g| g.group.as_ref())
                .chain(
                    locks
                        .queue
                        .iter()
                        .filter(|e| &e.session_id == session)
                        .filter_map(|e| e.group.as_ref()),
                )
                .find(|g| matches(g))
                .cloned();
            let Some(group) = found else {
                continue;
            };
            if let GroupTarget::Members(ids) = target {
                let places = self.group_places(&group)?;
                let picked = ids.iter().filter(|i| !group.members.contains(i));
                if !picked.clone().all(|i| places.contains(i)) {
                    continue;
                }
            }
            return Ok(Some((group, id)));
        }
        Ok(None)
    }

    /// Keeps every lock group whole after the unit's own changes: a member's
    /// lock or place that ended ends the others' the same way; a renewed
    /// member renews the others; a group request that now heads a changed
    /// queue of an instrument free for it is granted if it can be (a group
    /// can only become grantable by a change to one of its instruments). Repeats until nothing more follows.
    pub(super) fn settle_groups(&mut self) -> Result<(), StoreError> {
        let mut next_event = 0;
        let mut renewed: HashSet<String> = HashSet::new();
        let mut waiting: HashSet<String> = HashSet::new();
        loop {
            let mut changed = false;
            while next_event < self.events.len() {
                let cause = self.events[next_event].clone();
                next_event += 1;
                if !group::ends_membership(&cause) {
                    continue;
                }
                let Some(session) = cause.session_id.clone() else {
                    continue;
                };
                for id in self.tx.equipment_of_session(&session)? {
                    if Some(&id) == cause.equipment_id.as_ref() {
                        continue;
                    }
                    changed |= self.update_locks(&id, |locks, now, live, events| {
                        locks.follow_group_end(&cause, now, live, events)
                    })?;
                }
            }
            // Renewed now, granted earlier (members granted together need
            // nothing): its fellow members, where its session holds them.
            let leaders: Vec<(EquipmentId, crate::domain::Grant)> = self
                .saved
                .iter()
                .flat_map(|(id, locks)| locks.group_grants().map(move |g| (id.clone(), g.clone())))
                .filter(|(_, g)| g.last_activity == self.now && g.acquired_at != self.now)
                .collect();
            for (at, leader) in leaders {
                let group = leader.group.as_ref().expect("a group grant");
                if !renewed.insert(group.group_id.clone()) {
                    continue;
                }
                for id in self.tx.equipment_of_session(&leader.session_id)? {
                    if id != at && group.involved().any(|m| *m == id) {
                        changed |=
                            self.update_locks(&id, |locks, _, _, _| locks.keep_up_with(&leader))?;
                    }
                }
            }
            let heads: Vec<QueueEntry> = self
                .saved
                .values()
                .filter_map(|locks| locks.group_at_head(self.now))
                .filter(|e| {
                    let id = &e.group.as_ref().expect("a group place").group_id;
                    !waiting.contains(id)
                })
                .cloned()
                .collect();
            for head in heads {
                let group = head.group.clone().expect("a group place");
                if waiting.contains(&group.group_id) {
                    continue;
                }
                let mut bench = self.load_bench(group.involved())?;
                let now = self.now;
                let mut failure = None;
                let granted = {
                    let mut live = live_check(&mut *self.tx, now, &mut failure);
                    group::try_grant(&mut bench, &head, now, &mut live, &mut self.events)
                };
                if let Some(e) = failure {
                    return Err(e);
                }
                if granted {
                    self.save_bench(&bench)?;
                    changed = true;
                    // What was granted may let groups that could not go on.
                    waiting.clear();
                } else {
                    waiting.insert(group.group_id.clone());
                }
            }
            if !changed && next_event == self.events.len() {
                return Ok(());
            }
        }
    }
}
