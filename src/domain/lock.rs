//! One equipment's lock state: the exclusive holder, the observers, the FIFO
//! queue and the fencing counter, with every rule of semantics.md "Locks".
//!
//! Every method takes `now`; the ones that change state push `Event`s and
//! either succeed or return a `DomainError` without changing anything.
//! Whether another session is still live is asked through a `live` callback,
//! so this module never needs to see the session table.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use super::DomainError;
use super::access::Actor;
use super::event::{EndReason, Event, EventKind};
use super::group::GroupRef;
use super::ids::{EquipmentId, SessionId};
use super::priority;
use super::time::{Timeout, Timestamp, is_live};

/// How many involuntary lock losses an equipment remembers, so that a
/// client whose lock ended gets `lock_lost` instead of a bare 403.
const REMEMBERED_LOSSES: usize = 32;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    #[default]
    Exclusive,
    Observer,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exclusive => "exclusive",
            Self::Observer => "observer",
        }
    }
}

/// What a command needs: control actions need the exclusive lock, observe
/// actions an observer or exclusive lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Control,
    Observe,
}

/// A held lock (exclusive or observer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    pub lock_id: String,
    pub session_id: SessionId,
    pub mode: LockMode,
    pub acquired_at: Timestamp,
    pub last_activity: Timestamp,
    pub timeout: Timeout,
    pub fencing_token: u64,
    /// Who holds it: the session's user and client name, for people
    /// looking at who holds what.
    #[serde(default)]
    pub holder: Holder,
    /// A grant from the queue with a claim window: unless its holder
    /// renews, commands or asks again before this, it passes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_by: Option<Timestamp>,
    /// The lock group this lock is one member of (see `group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Arc<GroupRef>>,
}

/// Who a lock or queue place belongs to, as shown to people.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub user: Option<String>,
    pub client_name: Option<String>,
}

impl Holder {
    /// ` (alice, Lab PC #3)`: what is known of who holds it, or nothing.
    pub fn parenthesised(&self) -> String {
        let known: Vec<&str> = [&self.user, &self.client_name]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if known.is_empty() {
            String::new()
        } else {
            format!(" ({})", known.join(", "))
        }
    }
}

/// What keeps a request waiting for an instrument (`in_the_way`).
#[derive(Clone, Debug, PartialEq)]
pub enum Obstacle {
    Maintenance {
        reason: String,
        until: Option<Timestamp>,
    },
    Holder {
        session: SessionId,
        holder: Holder,
    },
    /// Observers hold it and the request is exclusive.
    Observers(usize),
    /// This many waiters are served before it.
    Ahead(usize),
}

impl fmt::Display for Obstacle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Maintenance { reason, until } => {
                write!(f, "in maintenance: {reason}")?;
                match until {
                    Some(until) => write!(f, " until {until}"),
                    None => Ok(()),
                }
            }
            Self::Holder { session, holder } => {
                write!(f, "locked by session {session}{}", holder.parenthesised())
            }
            Self::Observers(1) => f.write_str("held by an observer"),
            Self::Observers(n) => write!(f, "held by {n} observers"),
            Self::Ahead(n) => write!(f, "busy: others are waiting ({n} ahead)"),
        }
    }
}

impl Grant {
    /// When it ends unless renewed: its lease, or sooner an unmet claim
    /// window.
    pub fn deadline(&self) -> Option<Timestamp> {
        let lease = self.timeout.deadline_after(self.last_activity);
        match (lease, self.claim_by) {
            (Some(l), Some(c)) => Some(l.min(c)),
            (l, c) => l.or(c),
        }
    }

    /// Whether it passed on for want of a claim at `now`.
    fn claim_missed(&self, now: Timestamp) -> bool {
        !is_live(self.claim_by, now)
    }

    pub fn is_live(&self, now: Timestamp) -> bool {
        is_live(self.deadline(), now)
    }

    /// Renews it; any sign of life from the holder is also its claim.
    fn touch(&mut self, now: Timestamp) {
        self.last_activity = self.last_activity.max(now);
        self.claim_by = None;
    }
}

/// A place in an equipment's queue. `timeout` is what the waiter asked for,
/// used when it is granted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub queue_id: String,
    pub session_id: SessionId,
    pub mode: LockMode,
    pub timeout: Timeout,
    pub queued_at: Timestamp,
    #[serde(default)]
    pub holder: Holder,
    /// -10..=10, higher served first (see `priority`); 0 for entries
    /// stored before priorities existed.
    #[serde(default)]
    pub priority: i8,
    /// When the place is dropped unless granted first (`max_wait_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_deadline: Option<Timestamp>,
    /// The claim window of its grant, when it comes from the queue.
    #[serde(default, skip_serializing_if = "Timeout::is_none")]
    pub claim_within: Timeout,
    /// Its place in the service order once traded (stepping back, a
    /// swap): the key of the place it took, which newcomers compare with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traded_key: Option<(i64, i64)>,
    /// The waiter it offered to swap places with, until that one agrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_offer: Option<SessionId>,
    /// The lock group or pool request this place is one of (see `group`):
    /// it waits in each instrument's queue at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Arc<GroupRef>>,
}

impl QueueEntry {
    /// Whether the waiter still waits at `now` (its `max_wait_seconds`
    /// has not passed; the deadline instant itself is past).
    pub fn is_waiting(&self, now: Timestamp) -> bool {
        is_live(self.wait_deadline, now)
    }

    /// Where this entry goes in the queue (see `priority::service_key`).
    pub(super) fn service_key(&self, aging_ms: u64) -> (i64, i64) {
        self.traded_key
            .unwrap_or_else(|| priority::service_key(self.priority, self.queued_at, aging_ms))
    }
}

/// An instrument out of service: new requests wait or are refused until
/// it ends (at `until`, or when an admin ends it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Maintenance {
    pub reason: String,
    pub since: Timestamp,
    /// When service resumes by itself; `None`: when an admin ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    /// The admin who started it (with authentication on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The configured lock group whose maintenance this is; `None`: the
    /// instrument's own. A group's maintenance neither replaces nor ends
    /// one that is not its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<EquipmentId>,
}

impl Maintenance {
    /// Whether a maintenance started or ended for `group` (`None`: for the
    /// instrument itself) may change this one.
    fn yields_to(&self, group: Option<&EquipmentId>) -> bool {
        group.is_none() || self.group.as_ref() == group
    }
}

/// What a command asks of an equipment's locks.
#[derive(Clone, Debug)]
pub struct CommandCheck<'a> {
    pub session: Option<&'a SessionId>,
    /// Whether `session` is live (one that is not holds nothing).
    pub session_live: bool,
    pub access: Access,
    pub fencing_token: Option<u64>,
    /// `false` when the server does not check commands against locks.
    pub locks_enabled: bool,
    /// Whether an acquire opens a session that is not live (what a
    /// session that is not live is advised to do).
    pub implicit_sessions: bool,
}

/// A session that lost its lock without asking, and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LostLock {
    pub session_id: SessionId,
    pub reason: EndReason,
    /// The user whose lock it was: only they hear how it ended.
    #[serde(default)]
    pub user: Option<String>,
}

/// The switches of the brief that change the lock rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockPolicy {
    pub queue_enabled: bool,
    pub observer_enabled: bool,
    /// How long a wait adds one step of priority (`0`: no aging).
    pub aging_ms: u64,
}

/// The default of `LockPolicy::aging_ms`: one step a minute.
pub const DEFAULT_AGING_MS: u64 = 60_000;

impl Default for LockPolicy {
    fn default() -> Self {
        Self {
            queue_enabled: true,
            observer_enabled: true,
            aging_ms: DEFAULT_AGING_MS,
        }
    }
}

/// An acquire request, with defaults already applied.
#[derive(Clone, Debug, PartialEq)]
pub struct LockRequest {
    pub session_id: SessionId,
    pub mode: LockMode,
    pub timeout: Timeout,
    pub queue_if_busy: bool,
    pub holder: Holder,
    /// -10..=10 (checked by the caller); 0 is the ordinary FIFO.
    pub priority: i8,
    /// How long it may wait in the queue (`max_wait_seconds`); none: as
    /// long as it takes.
    pub max_wait: Timeout,
    /// Whether it may be granted while the equipment is in maintenance
    /// (an authenticated admin's request).
    pub maintenance_exempt: bool,
    /// If it is granted from the queue, how soon its holder must claim it.
    pub claim_within: Timeout,
}

impl LockRequest {
    pub(super) fn terms<'a>(&'a self, group: Option<&'a Arc<GroupRef>>) -> Terms<'a> {
        Terms {
            mode: self.mode,
            timeout: self.timeout,
            holder: &self.holder,
            group,
        }
    }
}

/// What a new grant is given: its mode, lease and holder, and the group it
/// belongs to.
#[derive(Clone, Copy, Debug)]
pub(super) struct Terms<'a> {
    pub mode: LockMode,
    pub timeout: Timeout,
    pub holder: &'a Holder,
    pub group: Option<&'a Arc<GroupRef>>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AcquireOutcome {
    /// A new grant.
    Locked(Grant),
    /// The session already held a lock here; its lease starts again.
    Refreshed(Grant),
    /// The session waits; `position` is 1-based.
    Queued { entry: QueueEntry, position: usize },
}

#[derive(Clone, Debug, PartialEq)]
pub enum ReleaseOutcome {
    /// The exclusive lock (or, forced, every observer lock) was released.
    Released {
        was_forced: bool,
    },
    ObserverReleased,
    Dequeued,
}

/// The lock state of one equipment. Invariants (checked by the property
/// tests): an exclusive holder excludes observers; the holder is never
/// queued; a session is queued at most once; the queue only waits when its
/// head is blocked; fencing tokens only grow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EquipmentLocks {
    pub equipment_id: EquipmentId,
    pub exclusive: Option<Grant>,
    pub observers: Vec<Grant>,
    pub queue: VecDeque<QueueEntry>,
    /// The token of the latest grant; the next grant gets one more.
    pub fencing_counter: u64,
    /// Numbers queue entries, so queue ids are unique without randomness.
    pub queue_counter: u64,
    pub lost: VecDeque<LostLock>,
    /// Out of service, if it is (see `start_maintenance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
}

impl EquipmentLocks {
    pub fn new(equipment_id: EquipmentId) -> Self {
        Self {
            equipment_id,
            exclusive: None,
            observers: Vec::new(),
            queue: VecDeque::new(),
            fencing_counter: 0,
            queue_counter: 0,
            lost: VecDeque::new(),
            maintenance: None,
        }
    }

    /// Nobody holds or waits, and it is in service.
    pub fn is_idle(&self) -> bool {
        self.exclusive.is_none()
            && self.observers.is_empty()
            && self.queue.is_empty()
            && self.maintenance.is_none()
    }

    /// The maintenance in force at `now`, if any (it is over at `until`).
    pub fn maintenance_at(&self, now: Timestamp) -> Option<&Maintenance> {
        self.maintenance.as_ref().filter(|m| is_live(m.until, now))
    }

    pub fn holder(&self) -> Option<&SessionId> {
        self.exclusive.as_ref().map(|g| &g.session_id)
    }

    /// Who holds it exclusively, as far as known (nobody: all unknown).
    pub fn holder_is(&self) -> Holder {
        self.exclusive
            .as_ref()
            .map(|g| g.holder.clone())
            .unwrap_or_default()
    }

    /// What keeps the waiter at `position` (1-based) waiting at `now`, as
    /// told to people: maintenance first (it outlasts any holder), then
    /// the exclusive holder, those ahead in line, or the observers. None:
    /// nothing here (a lock group's member waits for the others).
    pub fn in_the_way(&self, position: usize, now: Timestamp) -> Option<Obstacle> {
        if let Some(m) = self.maintenance_at(now) {
            return Some(Obstacle::Maintenance {
                reason: m.reason.clone(),
                until: m.until,
            });
        }
        if let Some(grant) = &self.exclusive {
            return Some(Obstacle::Holder {
                session: grant.session_id.clone(),
                holder: grant.holder.clone(),
            });
        }
        if position > 1 {
            return Some(Obstacle::Ahead(position - 1));
        }
        (!self.observers.is_empty()).then_some(Obstacle::Observers(self.observers.len()))
    }

    /// The lock `session` holds here, exclusive or observer.
    pub fn grant_of(&self, session: &SessionId) -> Option<&Grant> {
        self.exclusive
            .iter()
            .chain(&self.observers)
            .find(|g| &g.session_id == session)
    }

    /// Every session that holds or waits here.
    pub fn participants(&self) -> impl Iterator<Item = &SessionId> {
        self.exclusive
            .iter()
            .chain(&self.observers)
            .map(|g| &g.session_id)
            .chain(self.queue.iter().map(|e| &e.session_id))
    }

    /// 1-based place of `session` in the queue.
    pub fn position_of(&self, session: &SessionId) -> Option<usize> {
        self.queue
            .iter()
            .position(|e| &e.session_id == session)
            .map(|i| i + 1)
    }

    /// The earliest time at which a lock here runs out or a waiter's
    /// `max_wait_seconds` passes.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let leases = self
            .exclusive
            .iter()
            .chain(&self.observers)
            .filter_map(Grant::deadline);
        let waits = self.queue.iter().filter_map(|e| e.wait_deadline);
        let service = self.maintenance.as_ref().and_then(|m| m.until);
        leases.chain(waits).chain(service).min()
    }

    /// The latest deadline among the leases that have run out at `now`:
    /// the earliest instant an expiry at `now` could have freed the lock.
    pub fn lapsed_deadline(&self, now: Timestamp) -> Option<Timestamp> {
        self.exclusive
            .iter()
            .chain(&self.observers)
            .filter(|g| !g.is_live(now))
            .filter_map(Grant::deadline)
            .max()
    }

    pub fn loss_of(&self, session: &SessionId) -> Option<EndReason> {
        self.loss_record(session).map(|l| l.reason)
    }

    fn loss_record(&self, session: &SessionId) -> Option<&LostLock> {
        self.lost.iter().rev().find(|l| &l.session_id == session)
    }

    pub(super) fn remember_loss(&mut self, grant: &Grant, reason: EndReason) {
        self.lost.retain(|l| l.session_id != grant.session_id);
        if self.lost.len() == REMEMBERED_LOSSES {
            self.lost.pop_front();
        }
        self.lost.push_back(LostLock {
            session_id: grant.session_id.clone(),
            reason,
            user: grant.holder.user.clone(),
        });
    }

    fn new_grant(&mut self, session: &SessionId, terms: Terms<'_>, now: Timestamp) -> Grant {
        self.fencing_counter += 1;
        self.lost.retain(|l| &l.session_id != session);
        Grant {
            lock_id: format!("lock_{}_{}", self.equipment_id, self.fencing_counter),
            session_id: session.clone(),
            mode: terms.mode,
            acquired_at: now,
            last_activity: now,
            timeout: terms.timeout,
            fencing_token: self.fencing_counter,
            holder: terms.holder.clone(),
            claim_by: None,
            group: terms.group.cloned(),
        }
    }

    pub(super) fn event(&self, kind: EventKind, session: &SessionId, now: Timestamp) -> Event {
        let mut e = Event::new(kind, now);
        e.equipment_id = Some(self.equipment_id.clone());
        e.session_id = Some(session.clone());
        e
    }

    fn grant_event(&self, kind: EventKind, grant: &Grant, now: Timestamp) -> Event {
        let mut e = self.event(kind, &grant.session_id, now);
        e.holder_user = grant.holder.user.clone();
        e.lock_mode = Some(grant.mode);
        e.lock_id = Some(grant.lock_id.clone());
        e.fencing_token = Some(grant.fencing_token);
        e.timeout_seconds = Some(grant.timeout.as_seconds());
        e.group_id = grant.group.as_ref().map(|g| g.group_id.clone());
        e
    }

    pub(super) fn ended_event(
        &self,
        kind: EventKind,
        grant: &Grant,
        reason: EndReason,
        now: Timestamp,
    ) -> Event {
        let mut e = self.grant_event(kind, grant, now);
        e.reason = Some(reason);
        e
    }

    /// Acquire, refresh, or queue (semantics.md, Locks 2-6).
    pub fn acquire(
        &mut self,
        req: &LockRequest,
        now: Timestamp,
        policy: LockPolicy,
        events: &mut Vec<Event>,
    ) -> Result<AcquireOutcome, DomainError> {
        if req.mode == LockMode::Observer && !policy.observer_enabled {
            return Err(DomainError::ObserverModeDisabled);
        }
        let session = &req.session_id;

        // The exclusive holder asking again, in either mode, keeps its
        // exclusive lock with a fresh lease and the new timeout.
        if self.holder() == Some(session)
            || (req.mode == LockMode::Observer && self.grant_of(session).is_some())
        {
            let grant = self
                .refresh(session, req.timeout, now, events)
                .expect("it holds a lock here");
            return Ok(AcquireOutcome::Refreshed(grant));
        }
        if let Some(position) = self.position_of(session) {
            let entry = self.queue[position - 1].clone();
            return Ok(AcquireOutcome::Queued { entry, position });
        }

        // In maintenance, new requests wait for service to resume (or are
        // refused), whether or not it is free.
        let in_maintenance = self.maintenance_at(now).is_some();
        let out_of_service = !req.maintenance_exempt && in_maintenance;
        // The waiters of a maintenance wait for service to resume, not for
        // the admin doing it.
        let servicing = req.maintenance_exempt && in_maintenance;
        // Free: nobody holds it exclusively and nobody waits. Observers do
        // not make it busy for an exclusive request; they are revoked.
        if !out_of_service && self.exclusive.is_none() && (self.queue.is_empty() || servicing) {
            let grant = self.grant_now(session, req.terms(None), now, events);
            return Ok(AcquireOutcome::Locked(grant));
        }
        // Where it would wait: behind everyone served before it (equal
        // keys keep arrival order). It arrives when it is stored, after
        // everyone already waiting: a request whose clock was read a
        // moment earlier (it waited for its turn at the store, or came
        // through another server) never goes ahead of a waiter of its own
        // priority who was already told its place.
        let arrived = self
            .queue
            .iter()
            .map(|e| e.queued_at)
            .fold(now, Timestamp::max);
        let key = priority::service_key(req.priority, arrived, policy.aging_ms);
        let place = self
            .queue
            .iter()
            .position(|e| key < e.service_key(policy.aging_ms))
            .unwrap_or(self.queue.len());
        // Served before every waiter and nothing blocks it (no exclusive
        // holder; observers only block an exclusive request, unless the
        // only one is its own): it is not busy for this request. Never the
        // case at priority 0 with nobody below 0 waiting.
        if place == 0
            && !out_of_service
            && self.exclusive.is_none()
            && (req.mode == LockMode::Observer
                || self.observers.iter().all(|g| &g.session_id == session))
        {
            let grant = self.grant_now(session, req.terms(None), now, events);
            return Ok(AcquireOutcome::Locked(grant));
        }

        // Refused in maintenance: that is why, whoever holds it (with the
        // queue disabled too: waiting is no way out then).
        if let Some(m) = self
            .maintenance_at(now)
            .filter(|_| out_of_service && !(req.queue_if_busy && policy.queue_enabled))
        {
            return Err(DomainError::InMaintenance {
                equipment: self.equipment_id.clone(),
                reason: m.reason.clone(),
                until: m.until,
                can_queue: policy.queue_enabled,
            });
        }
        if !req.queue_if_busy {
            return Err(DomainError::Busy {
                equipment: self.equipment_id.clone(),
                holder: self.holder().cloned(),
                holder_is: self.holder_is(),
            });
        }
        if !policy.queue_enabled {
            return Err(DomainError::QueueDisabled {
                equipment: self.equipment_id.clone(),
                holder: self.holder().cloned(),
                holder_is: self.holder_is(),
            });
        }
        let entry = self.enqueue(req, place, arrived, None, now, events);
        Ok(AcquireOutcome::Queued {
            entry,
            position: place + 1,
        })
    }

    /// `session`'s lock here with a fresh lease and `timeout` (its holder
    /// asked again), if it holds one.
    pub(super) fn refresh(
        &mut self,
        session: &SessionId,
        timeout: Timeout,
        now: Timestamp,
        events: &mut Vec<Event>,
    ) -> Option<Grant> {
        let grant = self
            .exclusive
            .iter_mut()
            .chain(self.observers.iter_mut())
            .find(|g| &g.session_id == session)?;
        grant.touch(now);
        grant.timeout = timeout;
        let grant = grant.clone();
        events.push(self.grant_event(EventKind::LockRefreshed, &grant, now));
        Some(grant)
    }

    /// Puts `req` in the queue at index `place`, arrived at `arrived`.
    pub(super) fn enqueue(
        &mut self,
        req: &LockRequest,
        place: usize,
        arrived: Timestamp,
        group: Option<&Arc<GroupRef>>,
        now: Timestamp,
        events: &mut Vec<Event>,
    ) -> QueueEntry {
        self.queue_counter += 1;
        let entry = QueueEntry {
            queue_id: format!("queue_{}_{}", self.equipment_id, self.queue_counter),
            session_id: req.session_id.clone(),
            mode: req.mode,
            timeout: req.timeout,
            queued_at: arrived,
            holder: req.holder.clone(),
            priority: req.priority,
            wait_deadline: req.max_wait.deadline_after(now),
            claim_within: req.claim_within,
            traded_key: None,
            swap_offer: None,
            group: group.cloned(),
        };
        self.queue.insert(place, entry.clone());
        let mut e = self.event(EventKind::Queued, &req.session_id, now);
        e.lock_mode = Some(req.mode);
        e.queue_id = Some(entry.queue_id.clone());
        e.position = Some(place + 1);
        e.holder_user = req.holder.user.clone();
        e.timeout_seconds = Some(req.timeout.as_seconds());
        e.priority = (req.priority != 0).then_some(req.priority);
        e.expires_at = entry.wait_deadline;
        e.group_id = group.map(|g| g.group_id.clone());
        events.push(e);
        entry
    }

    /// Removes the places that match `which`, each with a `dequeued` event
    /// giving `reason`.
    pub(super) fn drop_places(
        &mut self,
        which: &dyn Fn(&QueueEntry) -> bool,
        reason: EndReason,
        now: Timestamp,
        events: &mut Vec<Event>,
    ) {
        let (gone, kept): (VecDeque<QueueEntry>, VecDeque<QueueEntry>) =
            std::mem::take(&mut self.queue)
                .into_iter()
                .partition(|e| which(e));
        self.queue = kept;
        for entry in gone {
            let mut e = self.event(EventKind::Dequeued, &entry.session_id, now);
            e.group_id = entry.group.as_ref().map(|g| g.group_id.clone());
            e.lock_mode = Some(entry.mode);
            e.queue_id = Some(entry.queue_id);
            e.holder_user = entry.holder.user;
            e.reason = Some(reason);
            events.push(e);
        }
    }

    /// Removes and returns the grants that match `which`.
    pub(super) fn take_grants(&mut self, which: impl Fn(&Grant) -> bool) -> Vec<Grant> {
        let mut taken: Vec<Grant> = self.exclusive.take_if(|g| which(g)).into_iter().collect();
        let (gone, kept): (Vec<Grant>, Vec<Grant>) = std::mem::take(&mut self.observers)
            .into_iter()
            .partition(|g| which(g));
        self.observers = kept;
        taken.extend(gone);
        taken
    }

    /// Grants `mode` to `session` on equipment with no exclusive holder.
    /// An exclusive grant revokes every other observer and absorbs the
    /// session's own observer lock (an upgrade).
    pub(super) fn grant_now(
        &mut self,
        session: &SessionId,
        terms: Terms<'_>,
        now: Timestamp,
        events: &mut Vec<Event>,
    ) -> Grant {
        debug_assert!(self.exclusive.is_none());
        let mode = terms.mode;
        let grant = self.new_grant(session, terms, now);
        match mode {
            LockMode::Observer => {
                events.push(self.grant_event(EventKind::ObserverLockAcquired, &grant, now));
                self.observers.push(grant.clone());
            }
            LockMode::Exclusive => {
                for observer in std::mem::take(&mut self.observers) {
                    if &observer.session_id == session {
                        events.push(self.ended_event(
                            EventKind::ObserverLockReleased,
                            &observer,
                            EndReason::Upgraded,
                            now,
                        ));
                    } else {
                        events.push(self.ended_event(
                            EventKind::ObserverRevoked,
                            &observer,
                            EndReason::ExclusiveGranted,
                            now,
                        ));
                        self.remember_loss(&observer, EndReason::ExclusiveGranted);
                    }
                }
                events.push(self.grant_event(EventKind::LockAcquired, &grant, now));
                self.exclusive = Some(grant.clone());
            }
        }
        grant
    }

    /// Whether a release by `session` would take other sessions' locks: only
    /// with `force`, and only when `session` is not live or neither holds
    /// nor waits here (those release their own place instead). The caller checks who may
    /// force on this answer.
    pub fn release_forces(
        &self,
        session: &SessionId,
        force: bool,
        live: &mut dyn FnMut(&SessionId) -> bool,
    ) -> bool {
        force && (!live(session) || !self.participants().any(|s| s == session))
    }

    /// Whether `actor` may release here in `session`'s name (semantics.md,
    /// Locks 8-9). Taking others' locks (`release_forces`) needs an admin; a
    /// live session of the caller's releases its own place, `force` or not.
    /// Without `force`, a session that is not live (it may never have
    /// existed: the brief's own example forces as "admin_session") proves
    /// no ownership and hears `departed`; a release never opens a session.
    pub fn may_release(
        &self,
        session: &SessionId,
        force: bool,
        session_live: bool,
        actor: &Actor,
        live: &mut dyn FnMut(&SessionId) -> bool,
    ) -> Result<(), DomainError> {
        if self.release_forces(session, force, live) {
            actor.may_force()
        } else if !session_live && !force {
            Err(self.departed(session, actor))
        } else {
            Ok(())
        }
    }

    /// What a session that is not live hears when it releases or renews
    /// here: that it lost its lock here, if it did and `actor` may know,
    /// else that it does not exist.
    pub fn departed(&self, session: &SessionId, actor: &Actor) -> DomainError {
        self.lost_lock_told_to(session, actor)
            .unwrap_or_else(|| DomainError::SessionNotFound(session.clone()))
    }

    /// Release by `session` (semantics.md, Locks 8). A session that holds or
    /// waits here releases its own lock or place, with or without `force`.
    /// With `force`, a session that does neither, or is not live, releases
    /// whoever holds it: the exclusive holder, or else every observer.
    /// `session` need not exist for a forced release; the caller decides who
    /// may force.
    pub fn release(
        &mut self,
        session: &SessionId,
        force: bool,
        now: Timestamp,
        live: &mut dyn FnMut(&SessionId) -> bool,
        events: &mut Vec<Event>,
    ) -> Result<ReleaseOutcome, DomainError> {
        // A session that is not live proves nothing: with `force` its name
        // is just the forcer's, and its own lock (kept when auto-release is
        // off) is taken like anyone's.
        let for_itself = !force || live(session);
        if let Some(grant) = self
            .exclusive
            .take_if(|g| for_itself && &g.session_id == session)
        {
            events.push(self.ended_event(
                EventKind::LockReleased,
                &grant,
                EndReason::Released,
                now,
            ));
            self.advance_queue(now, live, events);
            return Ok(ReleaseOutcome::Released { was_forced: false });
        }
        if let Some(i) = self
            .observers
            .iter()
            .position(|g| for_itself && &g.session_id == session)
        {
            let grant = self.observers.remove(i);
            events.push(self.ended_event(
                EventKind::ObserverLockReleased,
                &grant,
                EndReason::Released,
                now,
            ));
            self.advance_queue(now, live, events);
            return Ok(ReleaseOutcome::ObserverReleased);
        }
        // A waiter leaves its own place, even with `force`: forcing is for
        // taking others' locks, never for jumping one's own queue.
        if let Some(position) = self.position_of(session).filter(|_| for_itself) {
            let entry = self
                .queue
                .remove(position - 1)
                .expect("position is in range");
            let mut e = self.event(EventKind::Dequeued, session, now);
            e.group_id = entry.group.as_ref().map(|g| g.group_id.clone());
            e.lock_mode = Some(entry.mode);
            e.queue_id = Some(entry.queue_id);
            e.reason = Some(EndReason::Released);
            events.push(e);
            // Leaving may unblock nobody (the head is blocked by a holder),
            // but the head itself leaving can let observers behind it in.
            self.advance_queue(now, live, events);
            return Ok(ReleaseOutcome::Dequeued);
        }
        if force && (self.exclusive.is_some() || !self.observers.is_empty()) {
            let taken: Vec<Grant> = self
                .exclusive
                .take()
                .into_iter()
                .chain(std::mem::take(&mut self.observers))
                .collect();
            for grant in taken {
                let mut e =
                    self.ended_event(EventKind::LockForceReleased, &grant, EndReason::Forced, now);
                e.forced_by = Some(session.clone());
                events.push(e);
                self.remember_loss(&grant, EndReason::Forced);
            }
            self.advance_queue(now, live, events);
            return Ok(ReleaseOutcome::Released { was_forced: true });
        }
        if force {
            return Err(DomainError::NotLocked {
                equipment: self.equipment_id.clone(),
            });
        }
        if let Some(lost) = self.lost_lock(session) {
            return Err(lost);
        }
        match self.holder() {
            Some(holder) => Err(DomainError::NotHolder {
                equipment: self.equipment_id.clone(),
                session: session.clone(),
                holder: Some(holder.clone()),
                needed: "exclusive",
            }),
            None => Err(DomainError::NoLock {
                equipment: self.equipment_id.clone(),
                session: session.clone(),
                lost: None,
            }),
        }
    }

    /// An admin takes `session`'s place in the queue (`forced_by` names
    /// who, as in a forced release). The waiter hears `queue_place_lost`;
    /// those behind move up, and the head leaving may let others in.
    pub fn remove_waiter(
        &mut self,
        session: &SessionId,
        forced_by: &SessionId,
        now: Timestamp,
        live: &mut dyn FnMut(&SessionId) -> bool,
        events: &mut Vec<Event>,
    ) -> Result<(QueueEntry, usize), DomainError> {
        let Some(position) = self.position_of(session) else {
            return Err(DomainError::NotQueued {
                equipment: self.equipment_id.clone(),
                session: session.clone(),
            });
        };
        let entry = self
            .queue
            .remove(position - 1)
            .expect("position is in range");
        let mut e = self.event(EventKind::Dequeued, session, now);
        e.group_id = entry.group.as_ref().map(|g| g.group_id.clone());
        e.lock_mode = Some(entry.mode);
        e.queue_id = Some(entry.queue_id.clone());
        e.reason = Some(EndReason::Removed);
        e.forced_by = Some(forced_by.clone());
        e.holder_user = entry.holder.user.clone();
        e.position = Some(position);
        events.push(e);
        self.advance_queue(now, live, events);
        Ok((entry, position))
    }

    /// Takes the equipment out of service (or changes the reason and end
    /// of a maintenance in force). Nobody loses a lock: the holder is
    /// warned (the `maintenance_started` event names its session) and
    /// keeps it; the queue waits until service resumes. A group's
    /// maintenance leaves one that is not its own as it is (`false`).
    /// Already in maintenance, it keeps `since` (it has been out of
    /// service since then) and, renewing the same maintenance (the
    /// instrument's own, or the same group's), the admin who started it.
    pub fn start_maintenance(
        &mut self,
        mut maintenance: Maintenance,
        now: Timestamp,
        events: &mut Vec<Event>,
    ) -> bool {
        if let Some(current) = self.maintenance_at(now) {
            if !current.yields_to(maintenance.group.as_ref()) {
                return false;
            }
            maintenance.since = current.since;
            if current.group == maintenance.group {
                maintenance.user.clone_from(&current.user);
            }
        }
        let mut e = Event::new(EventKind::MaintenanceStarted, now);
        e.equipment_id = Some(self.equipment_id.clone());
        if let Some(holder) = &self.exclusive {
            e.session_id = Some(holder.session_id.clone());
            e.holder_user = holder.holder.user.clone();
        }
        e.message = Some(maintenance.reason.clone());
        e.expires_at = maintenance.until;
        events.push(e);
        self.maintenance = Some(maintenance);
        true
    }

    /// Puts the equipment back in service at once and serves its queue;
    /// for `group` (a configured group's maintenance ending), only if the
    /// maintenance in force is that group's.
    pub fn end_maintenance(
        &mut self,
        group: Option<&EquipmentId>,
        now: Timestamp,
        live: &mut dyn FnMut(&SessionId) -> bool,
        events: &mut Vec<Event>,
    ) -> Result<Maintenance, DomainError> {
        if !self.maintenance_at(now).is_some_and(|m| m.yields_to(group)) {
            return Err(DomainError::NotInMaintenance {
                equipment: self.equipment_id.clone(),
            });
        }
        let ended = self.close_maintenance(EndReason::Released, now, events);
        self.advance_queue(now, live, events);
        Ok(ended.expect("checked above"))
    }

    fn close_maintenance(
        &mut self,
        reason: EndReason,
        now: Timestamp,
        events: &mut Vec<Event>,
    ) -> Option<Maintenance> {
        let ended = self.maintenance.take()?;
        let mut e = Event::new(EventKind::MaintenanceEnded, now);
        e.equipment_id = Some(self.equipment_id.clone());
        // The holder heard it start (its session is named): it hears it end.
        if let Some(holder) = &self.exclusive {
            e.session_id = Some(holder.session_id.clone());
            e.holder_user = holder.holder.user.clone();
        }
        e.reason = Some(reason);
        e.message = Some(ended.reason.clone());
        events.push(e);
        Some(ended)
    }

    /// `session` lets the waiter right behind it go first: the two trade
    /// places (and service keys); nobody else moves.
    pub fn step_back(
        &mut self,
        session: &SessionId,
        policy: LockPolicy,
        now: Timestamp,
        events: &mut Vec<Event>,
    ) -> Result<usize, DomainError> {
        let position = self.queued_at_place(session)?;
        if position == self.queue.len() {
            return Err(DomainError::CannotTrade(format!(
                "session {session} is last in the queue of {}: nobody to let go first",
                self.equipment_id
            )));
        }
        self.tradable(position - 1, position)?;
        self.trade(position - 1, position, policy);
        let mut e = self.event(EventKind::QueueSteppedBack, session, now);
        e.position = Some(position + 1);
        e.queue_id = Some(self.queue[position].queue_id.clone());
        events.push(e);
        Ok(position + 1)
    }

    /// `session` offers to swap places with `other`; when `other` has
    /// offered the same, they swap (each gets a `queue_swapped` event).
    /// Answers whether they swapped, and `session`'s position now.
    pub fn swap(
        &mut self,
        session: &SessionId,
        other: &SessionId,
        policy: LockPolicy,
        now: Timestamp,
        events: &mut Vec<Event>,
    ) -> Result<(bool, usize), DomainError> {
        let mine = self.queued_at_place(session)?;
        let theirs = self.queued_at_place(other)?;
        if mine == theirs {
            return Err(DomainError::CannotTrade(
                "a waiter cannot swap places with itself".into(),
            ));
        }
        self.tradable(mine - 1, theirs - 1)?;
        if self.queue[theirs - 1].swap_offer.as_ref() != Some(session) {
            self.queue[mine - 1].swap_offer = Some(other.clone());
            return Ok((false, mine));
        }
        self.trade(mine - 1, theirs - 1, policy);
        for (who, place) in [(session, theirs), (other, mine)] {
            self.queue[place - 1].swap_offer = None;
            let mut e = self.event(EventKind::QueueSwapped, who, now);
            e.position = Some(place);
            e.queue_id = Some(self.queue[place - 1].queue_id.clone());
            events.push(e);
        }
        Ok((true, theirs))
    }

    fn queued_at_place(&self, session: &SessionId) -> Result<usize, DomainError> {
        self.position_of(session)
            .ok_or_else(|| DomainError::NotQueued {
                equipment: self.equipment_id.clone(),
                session: session.clone(),
            })
    }

    /// A lock group or pool request keeps one place in the global order
    /// across all its queues; trading it in one queue would let two groups
    /// wait on each other, so it never trades.
    fn tradable(&self, a: usize, b: usize) -> Result<(), DomainError> {
        match [a, b].into_iter().find(|i| self.queue[*i].group.is_some()) {
            Some(i) => Err(DomainError::CannotTrade(format!(
                "session {} waits for {} as part of a lock group or pool: group places are never traded",
                self.queue[i].session_id, self.equipment_id
            ))),
            None => Ok(()),
        }
    }

    /// Swaps the entries at `a` and `b` with their service keys, so the
    /// queue stays in key order for newcomers.
    fn trade(&mut self, a: usize, b: usize, policy: LockPolicy) {
        let key_a = self.queue[a].service_key(policy.aging_ms);
        let key_b = self.queue[b].service_key(policy.aging_ms);
        self.queue[a].traded_key = Some(key_b);
        self.queue[b].traded_key = Some(key_a);
        self.queue.swap(a, b);
    }

    /// The users of `session`'s locks and queue places here.
    pub fn users_of(&self, session: &SessionId) -> impl Iterator<Item = Option<&str>> {
        let grants = self.exclusive.iter().chain(&self.observers);
        grants
            .filter(move |g| &g.session_id == session)
            .map(|g| &g.holder)
            .chain(
                self.queue
                    .iter()
                    .filter(move |q| &q.session_id == session)
                    .map(|q| &q.holder),
            )
            .map(|h| h.user.as_deref())
    }

    /// The one rule release and renew share for a session that holds
    /// nothing here: if it lost its lock here without asking, it hears so
    /// (`lock_lost`), whoever holds the equipment now. A session that never
    /// held a lock here gets `None`, so it is never told why someone else's
    /// lock ended.
    pub fn lost_lock(&self, session: &SessionId) -> Option<DomainError> {
        self.loss_of(session)
            .map(|reason| self.lost_error(session, reason))
    }

    /// `lost_lock` as told to `actor`, who may no longer have a live
    /// session to prove the id is theirs: with authentication on, only the
    /// user whose lock it was hears how it ended.
    pub fn lost_lock_told_to(&self, session: &SessionId, actor: &Actor) -> Option<DomainError> {
        self.loss_told_to(session, actor)
            .map(|reason| self.lost_error(session, reason))
    }

    /// How `session` lost its lock here, if it did and `actor` may know:
    /// with authentication on, only the user whose lock it was.
    pub fn loss_told_to(&self, session: &SessionId, actor: &Actor) -> Option<EndReason> {
        self.loss_record(session)
            .filter(|loss| !actor.authenticated() || loss.user == actor.user)
            .map(|loss| loss.reason)
    }

    fn lost_error(&self, session: &SessionId, reason: EndReason) -> DomainError {
        DomainError::NoLock {
            equipment: self.equipment_id.clone(),
            session: session.clone(),
            lost: Some(reason),
        }
    }

    /// Renews `session`'s lock here (the activity endpoint).
    pub fn renew(&mut self, session: &SessionId, now: Timestamp) -> Result<Grant, DomainError> {
        let grant = self
            .exclusive
            .iter_mut()
            .chain(self.observers.iter_mut())
            .find(|g| &g.session_id == session);
        match grant {
            Some(grant) => {
                grant.touch(now);
                Ok(grant.clone())
            }
            None => Err(self.lost_lock(session).unwrap_or(DomainError::NoLock {
                equipment: self.equipment_id.clone(),
                session: session.clone(),
                lost: None,
            })),
        }
    }

    /// Checks that `session` may run an action needing `access`, and renews
    /// the lock that allows it (semantics.md, Commands 3 and Locks 11).
    /// Whether a command may run (semantics.md, Commands 3): with locks
    /// off, only a stale fencing token stops it; otherwise it needs a live
    /// session holding what `access` needs. A session that is not live but
    /// lost its lock here hears `lock_lost` (only its own user does), so its
    /// client can tell why it must stop. Renews the grant that allows it.
    pub fn authorize_command(
        &mut self,
        check: &CommandCheck<'_>,
        actor: &Actor,
        now: Timestamp,
    ) -> Result<(), DomainError> {
        if !check.locks_enabled {
            return self.check_fencing(check.fencing_token);
        }
        let session = check.session.ok_or(DomainError::SessionRequired)?;
        if !check.session_live {
            return Err(match self.loss_told_to(session, actor) {
                Some(reason) => DomainError::LockLost {
                    equipment: self.equipment_id.clone(),
                    session: session.clone(),
                    reason,
                },
                None => DomainError::SessionNotLive {
                    session: session.clone(),
                    acquire_opens: check.implicit_sessions,
                },
            });
        }
        self.authorize(session, check.access, check.fencing_token, now)
    }

    pub fn authorize(
        &mut self,
        session: &SessionId,
        access: Access,
        fencing_token: Option<u64>,
        now: Timestamp,
    ) -> Result<(), DomainError> {
        let holder = self.holder().cloned();
        let grant = match access {
            Access::Control => self.exclusive.as_mut().filter(|g| &g.session_id == session),
            Access::Observe => self
                .exclusive
                .iter_mut()
                .chain(self.observers.iter_mut())
                .find(|g| &g.session_id == session),
        };
        let Some(grant) = grant else {
            if let Some(reason) = self.loss_of(session) {
                return Err(DomainError::LockLost {
                    equipment: self.equipment_id.clone(),
                    session: session.clone(),
                    reason,
                });
            }
            return Err(DomainError::NotHolder {
                equipment: self.equipment_id.clone(),
                session: session.clone(),
                holder,
                needed: match access {
                    Access::Control => "exclusive",
                    Access::Observe => "observer or exclusive",
                },
            });
        };
        let current = grant.fencing_token;
        if let Some(sent) = fencing_token.filter(|t| *t < current) {
            return Err(DomainError::StaleFencingToken { sent, current });
        }
        Self::issued(&self.equipment_id, self.fencing_counter, fencing_token)?;
        grant.touch(now);
        Ok(())
    }

    /// A token greater than any ever issued here can only be a client bug
    /// (a token of another equipment, a made-up number): refused, so it
    /// shows up instead of passing as "not stale".
    fn issued(
        equipment: &EquipmentId,
        latest: u64,
        fencing_token: Option<u64>,
    ) -> Result<(), DomainError> {
        match fencing_token {
            Some(sent) if sent > latest => Err(DomainError::UnissuedFencingToken {
                equipment: equipment.clone(),
                sent,
                latest,
            }),
            _ => Ok(()),
        }
    }

    /// With locks disabled nothing is authorised, but a fencing token older
    /// than the exclusive holder's grant, or never issued, is still refused.
    pub fn check_fencing(&self, fencing_token: Option<u64>) -> Result<(), DomainError> {
        Self::issued(&self.equipment_id, self.fencing_counter, fencing_token)?;
        match (fencing_token, &self.exclusive) {
            (Some(sent), Some(grant)) if sent < grant.fencing_token => {
                Err(DomainError::StaleFencingToken {
                    sent,
                    current: grant.fencing_token,
                })
            }
            _ => Ok(()),
        }
    }

    /// Ends every lock whose deadline has passed at `now`, then hands the
    /// equipment on. Returns how many locks expired.
    pub fn expire(
        &mut self,
        now: Timestamp,
        live: &mut dyn FnMut(&SessionId) -> bool,
        events: &mut Vec<Event>,
    ) -> usize {
        let mut expired: Vec<Grant> = self
            .exclusive
            .take_if(|g| !g.is_live(now))
            .into_iter()
            .collect();
        let (gone, kept): (Vec<Grant>, Vec<Grant>) = std::mem::take(&mut self.observers)
            .into_iter()
            .partition(|g| !g.is_live(now));
        self.observers = kept;
        expired.extend(gone);
        for grant in &expired {
            let (kind, reason) = if grant.claim_missed(now) {
                (EventKind::ClaimExpired, EndReason::ClaimExpired)
            } else {
                (EventKind::LockExpired, EndReason::Timeout)
            };
            events.push(self.ended_event(kind, grant, reason, now));
            self.remember_loss(grant, reason);
        }
        if self.maintenance.is_some() && self.maintenance_at(now).is_none() {
            self.close_maintenance(EndReason::Timeout, now, events);
        }
        self.advance_queue(now, live, events);
        expired.len()
    }

    /// Gives every lock whose deadline passed while the server was down one
    /// fresh period from `start` (semantics.md, "Restart"). Returns whether
    /// any lock was renewed.
    pub fn renew_after_restart(&mut self, start: Timestamp) -> bool {
        let mut renewed = false;
        for grant in self.exclusive.iter_mut().chain(self.observers.iter_mut()) {
            if !grant.is_live(start) {
                grant.last_activity = start;
                // Its holder could not claim it while the server was down.
                grant.claim_by = None;
                renewed = true;
            }
        }
        renewed
    }

    /// Removes `session` from this equipment because the session ended:
    /// its queue places always, its locks when `release_locks` (the
    /// auto-release setting). Returns how many locks it released.
    pub fn remove_session(
        &mut self,
        session: &SessionId,
        release_locks: bool,
        reason: EndReason,
        now: Timestamp,
        live: &mut dyn FnMut(&SessionId) -> bool,
        events: &mut Vec<Event>,
    ) -> usize {
        let mut released = Vec::new();
        if release_locks {
            released.extend(self.exclusive.take_if(|g| &g.session_id == session));
            let (mine, others): (Vec<Grant>, Vec<Grant>) = std::mem::take(&mut self.observers)
                .into_iter()
                .partition(|g| &g.session_id == session);
            self.observers = others;
            released.extend(mine);
        }
        for grant in &released {
            let kind = match grant.mode {
                LockMode::Exclusive => EventKind::LockReleased,
                LockMode::Observer => EventKind::ObserverLockReleased,
            };
            events.push(self.ended_event(kind, grant, reason, now));
            if matches!(reason, EndReason::SessionExpired | EndReason::Forced) {
                self.remember_loss(grant, reason);
            }
        }
        let (mine, others): (VecDeque<QueueEntry>, VecDeque<QueueEntry>) =
            std::mem::take(&mut self.queue)
                .into_iter()
                .partition(|e| &e.session_id == session);
        self.queue = others;
        for entry in mine {
            let mut e = self.event(EventKind::Dequeued, session, now);
            e.group_id = entry.group.as_ref().map(|g| g.group_id.clone());
            e.lock_mode = Some(entry.mode);
            e.queue_id = Some(entry.queue_id);
            e.reason = Some(reason);
            events.push(e);
        }
        self.advance_queue(now, &mut |s| s != session && live(s), events);
        released.len()
    }

    /// Drops every waiter whose `max_wait_seconds` has passed at `now`,
    /// each with a `queue_timeout` event, so nobody behind it waits for a
    /// ghost.
    fn drop_overdue_waiters(&mut self, now: Timestamp, events: &mut Vec<Event>) {
        if self.queue.iter().all(|e| e.is_waiting(now)) {
            return;
        }
        let (waiting, overdue): (VecDeque<QueueEntry>, VecDeque<QueueEntry>) =
            std::mem::take(&mut self.queue)
                .into_iter()
                .partition(|e| e.is_waiting(now));
        self.queue = waiting;
        for entry in overdue {
            let mut e = self.event(EventKind::QueueTimeout, &entry.session_id, now);
            e.group_id = entry.group.as_ref().map(|g| g.group_id.clone());
            e.lock_mode = Some(entry.mode);
            e.queue_id = Some(entry.queue_id);
            e.holder_user = entry.holder.user;
            e.reason = Some(EndReason::WaitTimeout);
            e.expires_at = entry.wait_deadline;
            events.push(e);
        }
    }

    /// Grants the head of the queue whatever it can now have (semantics.md,
    /// Locks 7). Entries of sessions that are no longer live are dropped.
    /// An exclusive head waits for every other observer to leave: observers
    /// granted from the queue are not revoked by the waiter behind them.
    pub(super) fn advance_queue(
        &mut self,
        now: Timestamp,
        live: &mut dyn FnMut(&SessionId) -> bool,
        events: &mut Vec<Event>,
    ) {
        self.drop_overdue_waiters(now, events);
        // In maintenance the queue waits for service to resume.
        while self.exclusive.is_none() && self.maintenance_at(now).is_none() {
            let Some(head) = self.queue.front() else {
                break;
            };
            if !live(&head.session_id) {
                let entry = self.queue.pop_front().expect("head exists");
                let mut e = self.event(EventKind::Dequeued, &entry.session_id, now);
                e.group_id = entry.group.as_ref().map(|g| g.group_id.clone());
                e.lock_mode = Some(entry.mode);
                e.queue_id = Some(entry.queue_id);
                e.reason = Some(EndReason::SessionNotLive);
                events.push(e);
                continue;
            }
            // A lock group or pool request at the head is granted across
            // its instruments at once (`group::try_grant`); nobody behind
            // it goes first.
            if head.group.is_some() {
                break;
            }
            if head.mode == LockMode::Exclusive
                && self
                    .observers
                    .iter()
                    .any(|g| g.session_id != head.session_id)
            {
                break;
            }
            let entry = self.queue.pop_front().expect("head exists");
            let claim_by = entry.claim_within.deadline_after(now);
            self.grant_from_queue(&entry, claim_by, now, events);
        }
    }

    /// Grants `entry`, taken off the queue, what it waited for; its holder
    /// must claim it by `claim_by`, if given.
    pub(super) fn grant_from_queue(
        &mut self,
        entry: &QueueEntry,
        claim_by: Option<Timestamp>,
        now: Timestamp,
        events: &mut Vec<Event>,
    ) -> Grant {
        let mut granted = Vec::new();
        let terms = Terms {
            mode: entry.mode,
            timeout: entry.timeout,
            holder: &entry.holder,
            group: entry.group.as_ref(),
        };
        let mut grant = self.grant_now(&entry.session_id, terms, now, &mut granted);
        if let Some(claim_by) = claim_by {
            grant.claim_by = Some(claim_by);
            let held = self
                .exclusive
                .iter_mut()
                .chain(self.observers.iter_mut())
                .find(|g| g.lock_id == grant.lock_id);
            if let Some(held) = held {
                held.claim_by = Some(claim_by);
            }
        }
        // A hand-off is recorded as one `queue_processed` event; the
        // grant's own acquired event is folded into it.
        events.extend(granted.into_iter().filter(|e| {
            !matches!(
                e.event,
                EventKind::LockAcquired | EventKind::ObserverLockAcquired
            )
        }));
        let mut e = self.grant_event(EventKind::QueueProcessed, &grant, now);
        e.queue_id = Some(entry.queue_id.clone());
        events.push(e);
        grant
    }
}

#[cfg(test)]
#[path = "lock_tests.rs"]
pub(crate) mod tests;
