//! Lock groups and pools: one request for several instruments at once (all
//! or nothing), or for any free instrument of a set, with the guarantees of
//! a single lock.
//!
//! A request waits in the queue of every instrument it names or could take,
//! at the same place of one global order: its service key (priority, then
//! arrival) is the same in each of those queues, every queue stays in key
//! order with ties in arrival order, and group places never trade. So of two
//! requests that share instruments, the same one is ahead in every queue
//! they share, and the earliest waiting request heads all of its queues: no
//! two requests ever wait on each other. An instrument whose queue head is a
//! group waits for that group (nobody behind it goes first); the group is
//! granted when it heads the queue of each member (and of one instrument of
//! its pool) and each of those is free for it.
//!
//! Each member gets its own lock and fencing token, tagged with the group.
//! A group never holds part of its members: when one member's lock or place
//! ends, the caller ends the others' the same way (`follow_group_end`), and
//! a renewal of one renews all (`keep_up_with`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

use super::DomainError;
use super::event::{EndReason, Event, EventKind};
use super::ids::{EquipmentId, SessionId};
use super::lock::{EquipmentLocks, Grant, LockMode, LockPolicy, LockRequest, QueueEntry};
use super::priority;
use super::time::Timestamp;

/// The lock states a group request involves, by instrument.
pub type Bench = BTreeMap<EquipmentId, EquipmentLocks>;

/// What a lock group or pool request asks for, kept with each of its queue
/// places and locks so any one of them knows the whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRef {
    pub group_id: String,
    /// The configured group (`[[group]]`) it was asked for by, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<EquipmentId>,
    /// Each of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<EquipmentId>,
    /// And any one of these (a pool; none of them is in `members`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any_of: Vec<EquipmentId>,
}

impl GroupRef {
    /// Every instrument it needs or could take.
    pub fn involved(&self) -> impl Iterator<Item = &EquipmentId> {
        self.members.iter().chain(&self.any_of)
    }

    /// Whether `other` asks for the same instruments (its id, and the
    /// configured name it was asked by, aside).
    pub fn same_request(&self, other: &GroupRef) -> bool {
        let sorted = |ids: &[EquipmentId]| {
            let mut ids = ids.to_vec();
            ids.sort();
            ids
        };
        sorted(&self.members) == sorted(&other.members)
            && sorted(&self.any_of) == sorted(&other.any_of)
    }

    fn is(&self, group: Option<&GroupRef>) -> bool {
        group.is_some_and(|g| g.group_id == self.group_id)
    }
}

/// A member's lock or place, with the instrument it is on.
#[derive(Clone, Debug, PartialEq)]
pub enum GroupOutcome {
    /// Granted now: one lock per instrument taken.
    Locked(Vec<(EquipmentId, Grant)>),
    /// Its holder asked again: every lock's lease starts again.
    Refreshed(Vec<(EquipmentId, Grant)>),
    /// It waits: a place (1-based position) in each instrument's queue.
    Queued(Vec<(EquipmentId, QueueEntry, usize)>),
}

impl GroupOutcome {
    pub fn group(&self) -> Option<&GroupRef> {
        match self {
            Self::Locked(locks) | Self::Refreshed(locks) => locks.first()?.1.group.as_deref(),
            Self::Queued(places) => places.first()?.1.group.as_deref(),
        }
    }
}

/// Whether `locks` can be granted to a request in `mode` right now, as far
/// as its holders and service go (the queue is the caller's concern). An
/// arriving exclusive request revokes observers when nobody waits, as a
/// single one does; one from the queue waits for them to leave.
fn free_for(
    locks: &EquipmentLocks,
    mode: LockMode,
    maintenance_exempt: bool,
    arriving: bool,
    now: Timestamp,
) -> bool {
    let out_of_service = !maintenance_exempt && locks.maintenance_at(now).is_some();
    !out_of_service
        && locks.exclusive.is_none()
        && (mode == LockMode::Observer
            || locks.observers.is_empty()
            || (arriving && locks.queue.is_empty()))
}

/// The pool instrument to take among those `ready`: the one fewest others
/// wait for (so a named request behind is not kept waiting for no reason),
/// then the first listed.
fn pick<'a>(
    bench: &Bench,
    group: &'a GroupRef,
    ready: impl Fn(&EquipmentLocks) -> bool,
) -> Option<&'a EquipmentId> {
    group
        .any_of
        .iter()
        .filter(|id| bench.get(*id).is_some_and(&ready))
        .min_by_key(|id| bench[*id].queue.len())
}

/// Acquire a group (or pool) for `req.session_id`: granted at once if every
/// member (and one pool instrument) is free for it and nobody waiting is
/// served before it; else refused, or queued in every queue it involves.
/// `bench` holds every instrument of `group.involved()`.
pub fn acquire(
    bench: &mut Bench,
    group: &Arc<GroupRef>,
    req: &LockRequest,
    now: Timestamp,
    policy: LockPolicy,
    events: &mut Vec<Event>,
) -> Result<GroupOutcome, DomainError> {
    if req.mode == LockMode::Observer && !policy.observer_enabled {
        return Err(DomainError::ObserverModeDisabled);
    }
    let session = &req.session_id;
    // Asked again by its holder: every member's lease starts again.
    let held: Vec<EquipmentId> = group
        .involved()
        .filter(|id| {
            bench[*id]
                .grant_of(session)
                .and_then(|g| g.group.as_ref())
                .is_some_and(|g| g.same_request(group))
        })
        .cloned()
        .collect();
    if !held.is_empty() {
        let mut refreshed = Vec::new();
        for id in held {
            let grant = bench
                .get_mut(&id)
                .expect("involved")
                .refresh(session, req.timeout, now, events)
                .expect("held");
            refreshed.push((id, grant));
        }
        return Ok(GroupOutcome::Refreshed(refreshed));
    }
    // Already waiting for it: where it stands.
    let places = places_of(bench, session, |g| g.same_request(group));
    if !places.is_empty() {
        return Ok(GroupOutcome::Queued(places));
    }
    if let Some(id) = group
        .involved()
        .find(|id| bench[*id].participants().any(|s| s == session))
    {
        return Err(DomainError::GroupConflict {
            equipment: id.clone(),
            session: session.clone(),
        });
    }

    // It arrives after everyone already waiting in any of its queues, so
    // its key is the same in each (see `EquipmentLocks::acquire`).
    let arrived = group
        .involved()
        .flat_map(|id| bench[id].queue.iter().map(|e| e.queued_at))
        .fold(now, Timestamp::max);
    let key = priority::service_key(req.priority, arrived, policy.aging_ms);
    let place = |locks: &EquipmentLocks| {
        locks
            .queue
            .iter()
            .position(|e| key < e.service_key(policy.aging_ms))
            .unwrap_or(locks.queue.len())
    };
    let open = |locks: &EquipmentLocks| {
        place(locks) == 0 && free_for(locks, req.mode, req.maintenance_exempt, true, now)
    };
    let members_open = group.members.iter().all(|id| open(&bench[id]));
    let chosen = pick(bench, group, open).cloned();
    if members_open && (group.any_of.is_empty() || chosen.is_some()) {
        let mut granted = Vec::new();
        for id in group.members.iter().chain(&chosen) {
            let locks = bench.get_mut(id).expect("involved");
            let grant = locks.grant_now(session, req.terms(Some(group)), now, events);
            granted.push((id.clone(), grant));
        }
        return Ok(GroupOutcome::Locked(granted));
    }

    // The first instrument that keeps it waiting says why: a member, else
    // the first pool candidate that is busy rather than in maintenance (a
    // busy one may come free at any moment), so maintenance is the reason
    // only when a member or every candidate is in maintenance.
    let in_maintenance =
        |id: &EquipmentId| !req.maintenance_exempt && bench[id].maintenance_at(now).is_some();
    let blocker = group
        .members
        .iter()
        .find(|id| !open(&bench[*id]))
        .or_else(|| {
            group
                .any_of
                .iter()
                .find(|id| !open(&bench[*id]) && !in_maintenance(id))
        })
        .or_else(|| group.any_of.iter().find(|id| !open(&bench[*id])))
        .expect("something is not open");
    let blocking = &bench[blocker];
    if !(req.queue_if_busy && policy.queue_enabled)
        && let Some(m) = blocking
            .maintenance_at(now)
            .filter(|_| !req.maintenance_exempt)
    {
        return Err(DomainError::InMaintenance {
            equipment: blocker.clone(),
            reason: m.reason.clone(),
            until: m.until,
            can_queue: policy.queue_enabled,
        });
    }
    if !req.queue_if_busy {
        return Err(DomainError::Busy {
            equipment: blocker.clone(),
            holder: blocking.holder().cloned(),
            holder_is: blocking.holder_is(),
        });
    }
    if !policy.queue_enabled {
        return Err(DomainError::QueueDisabled {
            equipment: blocker.clone(),
            holder: blocking.holder().cloned(),
            holder_is: blocking.holder_is(),
        });
    }
    let mut queued = Vec::new();
    for id in group.involved() {
        let locks = bench.get_mut(id).expect("involved");
        let at = place(locks);
        let entry = locks.enqueue(req, at, arrived, Some(group), now, events);
        queued.push((id.clone(), entry, at + 1));
    }
    Ok(GroupOutcome::Queued(queued))
}

/// `session`'s places in the queues of `bench` whose group `matches`.
pub fn places_of(
    bench: &Bench,
    session: &SessionId,
    matches: impl Fn(&GroupRef) -> bool,
) -> Vec<(EquipmentId, QueueEntry, usize)> {
    let mut places = Vec::new();
    for (id, locks) in bench {
        for (i, entry) in locks.queue.iter().enumerate() {
            if &entry.session_id == session && entry.group.as_deref().is_some_and(&matches) {
                places.push((id.clone(), entry.clone(), i + 1));
            }
        }
    }
    places
}

/// Grants the group request `head` (the head of some queue) if it now heads
/// the queue of each of its members and of one pool instrument, each free
/// for it. Its other places go. A request of a session no longer live is
/// dropped everywhere. Answers whether anything changed; `bench` holds
/// every instrument the request involves.
pub fn try_grant(
    bench: &mut Bench,
    head: &QueueEntry,
    now: Timestamp,
    live: &mut dyn FnMut(&SessionId) -> bool,
    events: &mut Vec<Event>,
) -> bool {
    let Some(group) = head.group.clone() else {
        return false;
    };
    let session = &head.session_id;
    let mine = |e: &QueueEntry| &e.session_id == session && group.is(e.group.as_deref());
    if !live(session) {
        for id in group.involved() {
            let locks = bench.get_mut(id).expect("involved");
            locks.drop_places(&mine, EndReason::SessionNotLive, now, events);
            locks.advance_queue(now, live, events);
        }
        return true;
    }
    let ready = |locks: &EquipmentLocks| {
        locks.queue.front().is_some_and(mine) && free_for(locks, head.mode, false, false, now)
    };
    if !group.members.iter().all(|id| ready(&bench[id])) {
        return false;
    }
    let chosen = pick(bench, &group, ready).cloned();
    if !group.any_of.is_empty() && chosen.is_none() {
        return false;
    }
    let claim_by = head.claim_within.deadline_after(now);
    for id in group.involved() {
        let locks = bench.get_mut(id).expect("involved");
        if group.members.contains(id) || chosen.as_ref() == Some(id) {
            let entry = locks.queue.pop_front().expect("ready");
            locks.grant_from_queue(&entry, claim_by, now, events);
        } else {
            locks.drop_places(&mine, EndReason::GrantedElsewhere, now, events);
        }
    }
    for id in group.involved() {
        bench
            .get_mut(id)
            .expect("involved")
            .advance_queue(now, live, events);
    }
    true
}

/// Whether `event` ends a lock or place that a group's other members must
/// then lose too (`follow_group_end`).
pub fn ends_membership(event: &Event) -> bool {
    event.group_id.is_some()
        && event.reason != Some(EndReason::GrantedElsewhere)
        && matches!(
            event.event,
            EventKind::LockReleased
                | EventKind::LockForceReleased
                | EventKind::LockExpired
                | EventKind::ClaimExpired
                | EventKind::ObserverLockReleased
                | EventKind::ObserverRevoked
                | EventKind::Dequeued
                | EventKind::QueueTimeout
        )
}

impl EquipmentLocks {
    /// Ends the lock or places here of the group `cause` ended on another
    /// member, the same way (kind, reason, who forced it), then serves the
    /// queue. Answers whether anything changed.
    pub fn follow_group_end(
        &mut self,
        cause: &Event,
        now: Timestamp,
        live: &mut dyn FnMut(&SessionId) -> bool,
        events: &mut Vec<Event>,
    ) -> bool {
        let (Some(session), Some(group_id)) = (&cause.session_id, &cause.group_id) else {
            return false;
        };
        let of_group = |g: Option<&GroupRef>| g.is_some_and(|g| &g.group_id == group_id);
        let reason = cause.reason.unwrap_or(EndReason::Released);
        let changed = if matches!(cause.event, EventKind::Dequeued | EventKind::QueueTimeout) {
            let before = self.queue.len();
            let mut dropped = Vec::new();
            self.drop_places(
                &|e: &QueueEntry| &e.session_id == session && of_group(e.group.as_deref()),
                reason,
                now,
                &mut dropped,
            );
            for e in &mut dropped {
                e.event = cause.event;
                e.forced_by = cause.forced_by.clone();
            }
            events.extend(dropped);
            self.queue.len() != before
        } else {
            let taken =
                self.take_grants(|g| &g.session_id == session && of_group(g.group.as_deref()));
            for grant in &taken {
                let mut e = self.ended_event(cause.event, grant, reason, now);
                e.forced_by = cause.forced_by.clone();
                events.push(e);
                if reason.is_involuntary() {
                    self.remember_loss(grant, reason);
                }
            }
            !taken.is_empty()
        };
        if changed {
            self.advance_queue(now, live, events);
        }
        changed
    }

    /// Brings `leader`'s fellow member here up to date with its renewal:
    /// the same last activity, timeout and claim. Answers whether it
    /// changed.
    pub fn keep_up_with(&mut self, leader: &Grant) -> bool {
        let Some(group) = &leader.group else {
            return false;
        };
        let member = self
            .exclusive
            .iter_mut()
            .chain(self.observers.iter_mut())
            .find(|g| g.session_id == leader.session_id && group.is(g.group.as_deref()));
        let Some(member) = member else {
            return false;
        };
        let before = member.clone();
        member.last_activity = member.last_activity.max(leader.last_activity);
        member.timeout = leader.timeout;
        if leader.claim_by.is_none() {
            member.claim_by = None;
        }
        *member != before
    }

    /// The group request at the head of the queue, if there is one and
    /// this instrument is free for it: only then can a change here have
    /// made it grantable (`try_grant`).
    pub fn group_at_head(&self, now: Timestamp) -> Option<&QueueEntry> {
        self.queue
            .front()
            .filter(|e| e.group.is_some() && free_for(self, e.mode, false, false, now))
    }

    /// The lock groups that hold or wait here.
    pub fn groups(&self) -> impl Iterator<Item = &Arc<GroupRef>> {
        let grants = self.exclusive.iter().chain(&self.observers);
        grants
            .filter_map(|g| g.group.as_ref())
            .chain(self.queue.iter().filter_map(|e| e.group.as_ref()))
    }

    /// The grants here that belong to a group.
    pub fn group_grants(&self) -> impl Iterator<Item = &Grant> {
        self.exclusive
            .iter()
            .chain(&self.observers)
            .filter(|g| g.group.is_some())
    }
}

#[cfg(test)]
#[path = "group_tests.rs"]
mod tests;
