//! One unit of work: the store transaction, the instant, and what the
//! work did (events, deadlines, saved lock states). The use cases in
//! `service` write their rules against it.

use std::collections::HashMap;
use std::time::Duration;

use super::{AcquireInput, ClientInfo, ExpiryReport, Policy, ServiceError};
use crate::domain::DomainError;
use crate::domain::lock::Holder;
use crate::domain::{
    Actor, EndReason, EquipmentId, EquipmentLocks, Event, EventKind, LockMode, LockRequest, Role,
    Session, SessionId, Timestamp,
};
use crate::storage::{Due, StoreError, Tx};

/// How many of an id's newest events an implicit open reads to learn who
/// used the id before.
const FORMER_USER_EVENTS: usize = 100;

/// One transaction's working set: the store, the instant, and what happened.
pub(super) struct Uow<'a> {
    pub(super) tx: &'a mut dyn Tx,
    pub(super) now: Timestamp,
    pub(super) policy: &'a Policy,
    pub(super) events: Vec<Event>,
    pub(super) earliest_deadline: Option<Timestamp>,
    pub(super) expired: ExpiryReport,
    /// Each loaded equipment's queue as it was before this unit of work
    /// (each waiter and when it joined), to tell waiters whose place
    /// changed and how long one granted here waited.
    pub(super) queues_before: HashMap<EquipmentId, Vec<(SessionId, Timestamp)>>,
    /// How long after the deadline of the lease whose expiry freed it each
    /// lock was handed on.
    pub(super) late_hand_offs: Vec<Duration>,
    /// The last saved state of each equipment this unit of work changed.
    pub(super) saved: HashMap<EquipmentId, EquipmentLocks>,
    /// The user whose request this is, stamped on the events it causes.
    pub(super) actor: Option<String>,
}

/// What a committed unit of work leaves for live subscribers.
pub(super) struct Committed {
    pub(super) events: Vec<Event>,
    pub(super) queues_before: HashMap<EquipmentId, Vec<(SessionId, Timestamp)>>,
    pub(super) saved: HashMap<EquipmentId, EquipmentLocks>,
}

/// A lock granted from a queue, and how long its waiter waited.
pub(super) struct Wait {
    pub(super) equipment_id: EquipmentId,
    pub(super) mode: LockMode,
    pub(super) waited: Duration,
}

/// The time from `from` to `to`; zero if `to` is not later.
fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    Duration::from_millis(u64::try_from(to.as_millis() - from.as_millis()).unwrap_or(0))
}

/// Asks the store whether `session` is live at `now`, remembering the first
/// store error (the domain's callback cannot return one).
pub(super) fn live_check<'t>(
    tx: &'t mut dyn Tx,
    now: Timestamp,
    failure: &'t mut Option<StoreError>,
) -> impl FnMut(&SessionId) -> bool + 't {
    move |session| match tx.session(session) {
        Ok(found) => found.is_some_and(|s| s.is_live(now)),
        Err(e) => {
            failure.get_or_insert(e);
            false
        }
    }
}

/// The notification a history event implies for the session it names.
pub(super) fn notification_for(event: &Event) -> Option<Event> {
    let kind = match (event.event, event.reason) {
        (EventKind::QueueProcessed, _) => EventKind::LockGranted,
        (EventKind::QueueTimeout, _) => EventKind::QueuePlaceLost,
        (
            EventKind::LockForceReleased
            | EventKind::ObserverRevoked
            | EventKind::LockExpired
            | EventKind::ClaimExpired,
            _,
        ) => EventKind::LockLost,
        (
            EventKind::LockReleased | EventKind::ObserverLockReleased,
            Some(EndReason::SessionExpired | EndReason::Forced),
        ) => EventKind::LockLost,
        (EventKind::Dequeued, Some(EndReason::Removed | EndReason::Forced)) => {
            EventKind::QueuePlaceLost
        }
        _ => return None,
    };
    let mut note = event.clone();
    note.event = kind;
    note.seq = None;
    Some(note)
}

pub(super) fn count_hand_offs(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| e.event == EventKind::QueueProcessed)
        .count()
}

impl Uow<'_> {
    pub(super) fn note_deadline(&mut self, deadline: Option<Timestamp>) {
        if let Some(d) = deadline {
            self.earliest_deadline = Some(self.earliest_deadline.map_or(d, |e| e.min(d)));
        }
    }

    pub(super) fn save_session(&mut self, session: &Session) -> Result<(), StoreError> {
        self.note_deadline(session.deadline());
        self.tx.save_session(session)
    }

    pub(super) fn save_locks(&mut self, locks: &EquipmentLocks) -> Result<(), StoreError> {
        self.note_deadline(locks.next_deadline());
        self.tx.save_equipment_locks(locks)?;
        self.saved.insert(locks.equipment_id.clone(), locks.clone());
        Ok(())
    }

    /// Loads an equipment's locks, remembering its queue as first seen.
    pub(super) fn load_locks(&mut self, id: &EquipmentId) -> Result<EquipmentLocks, StoreError> {
        let locks = self.tx.equipment_locks(id)?;
        self.queues_before.entry(id.clone()).or_insert_with(|| {
            let queue = locks.queue.iter();
            queue.map(|e| (e.session_id.clone(), e.queued_at)).collect()
        });
        Ok(locks)
    }

    /// The session if it exists and is live at `now`.
    pub(super) fn live_session(&mut self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        Ok(self.tx.session(id)?.filter(|s| s.is_live(self.now)))
    }

    /// Notes who is acting, for the events this unit of work causes.
    pub(super) fn acting(&mut self, actor: &Actor) {
        self.actor = actor.user.clone();
    }

    /// The one way a request renews the session it names (semantics.md,
    /// Sessions 2): if `id` is live, the actor must be allowed to use it,
    /// and it is renewed and saved. `None` when it is not live.
    pub(super) fn renew_if_live(
        &mut self,
        id: &SessionId,
        actor: &Actor,
    ) -> Result<Option<Session>, ServiceError> {
        self.acting(actor);
        let Some(mut session) = self.live_session(id)? else {
            return Ok(None);
        };
        actor.may_use(&session)?;
        session.touch(self.now);
        self.save_session(&session)?;
        Ok(Some(session))
    }

    /// `renew_if_live` for requests that need the session live.
    pub(super) fn renew_session(
        &mut self,
        id: &SessionId,
        actor: &Actor,
    ) -> Result<Session, ServiceError> {
        self.renew_if_live(id, actor)?
            .ok_or_else(|| DomainError::SessionNotFound(id.clone()).into())
    }

    /// The session an acquire that named `id` while it was not live opens
    /// (or re-opens, with a fresh lease: semantics.md, Sessions 6), not yet
    /// saved: it is opened only if the acquire succeeds (`open_implicit`).
    /// It belongs to the caller; one still stored for another user is
    /// refused.
    pub(super) fn implicit_session(
        &mut self,
        id: &SessionId,
        actor: &Actor,
        client: &ClientInfo,
    ) -> Result<Session, ServiceError> {
        self.acting(actor);
        if actor.user.is_some() {
            // An ended id still belongs to whoever used it: its locks (kept
            // when auto-release is off), queue places and recent history
            // say who that was.
            let mut places = Vec::new();
            for equipment in self.tx.equipment_of_session(id)? {
                places.push(self.tx.equipment_locks(&equipment)?);
            }
            let history = self.tx.session_events(id, FORMER_USER_EVENTS)?;
            let former = places
                .iter()
                .flat_map(|locks| locks.users_of(id))
                .chain(history.iter().rev().find_map(|e| e.user_of(id)).map(Some));
            actor.may_claim(id, former)?;
        }
        if let Some(stale) = self.tx.session(id)? {
            // Past its deadline but not yet expired: end it properly first,
            // so its locks and places go as an expiry's would.
            actor.may_use(&stale)?;
            self.end_session(&stale, EndReason::SessionExpired)?;
        }
        Ok(Session::implicit(
            id.clone(),
            client.name.as_deref(),
            client.ip.clone(),
            self.policy.default_session_timeout,
            actor.user.clone(),
            self.now,
        ))
    }

    /// Saves an implicit session, its `session_created` recorded at
    /// `event_index`: before the events of the acquire that opened it.
    pub(super) fn open_implicit(
        &mut self,
        session: &Session,
        event_index: usize,
    ) -> Result<(), StoreError> {
        self.save_session(session)?;
        let mut e = Event::new(EventKind::SessionCreated, self.now);
        e.session_id = Some(session.id.clone());
        e.timeout_seconds = Some(session.timeout.as_seconds());
        e.implicit = Some(true);
        self.events.insert(event_index, e);
        Ok(())
    }

    /// Runs `change` on an equipment's locks with a liveness callback, saves
    /// them, and returns what `change` returned.
    pub(super) fn change_locks<R>(
        &mut self,
        id: &EquipmentId,
        change: impl FnOnce(
            &mut EquipmentLocks,
            &mut dyn FnMut(&SessionId) -> bool,
            &mut Vec<Event>,
        ) -> R,
    ) -> Result<(EquipmentLocks, R), StoreError> {
        let mut locks = self.load_locks(id)?;
        let mut failure = None;
        let result = {
            let mut live = live_check(&mut *self.tx, self.now, &mut failure);
            change(&mut locks, &mut live, &mut self.events)
        };
        if let Some(e) = failure {
            return Err(e);
        }
        self.save_locks(&locks)?;
        Ok((locks, result))
    }

    /// Runs `change` on an equipment's locks and saves them if it answers
    /// that they changed; answers the same.
    pub(super) fn update_locks(
        &mut self,
        id: &EquipmentId,
        change: impl FnOnce(
            &mut EquipmentLocks,
            Timestamp,
            &mut dyn FnMut(&SessionId) -> bool,
            &mut Vec<Event>,
        ) -> bool,
    ) -> Result<bool, StoreError> {
        let mut locks = self.load_locks(id)?;
        let mut failure = None;
        let changed = {
            let mut live = live_check(&mut *self.tx, self.now, &mut failure);
            change(&mut locks, self.now, &mut live, &mut self.events)
        };
        if let Some(e) = failure {
            return Err(e);
        }
        if changed {
            self.save_locks(&locks)?;
        }
        Ok(changed)
    }

    /// The request an acquire makes, with the session it uses (see
    /// `session_for_acquire`) and whether that session is opened by it.
    pub(super) fn lock_request(
        &mut self,
        input: &AcquireInput,
    ) -> Result<(LockRequest, Session, bool), ServiceError> {
        let (session, opened) = self.session_for_acquire(input)?;
        let request = LockRequest {
            session_id: input.session_id.clone(),
            mode: input.mode,
            timeout: input.timeout.unwrap_or(self.policy.default_lock_timeout),
            queue_if_busy: input.queue_if_busy,
            holder: Holder {
                user: session.user.clone(),
                client_name: Some(session.client_name.clone()),
            },
            priority: input.priority,
            max_wait: input.max_wait,
            // Admins do the maintenance; with authentication off nobody
            // is exempt (everyone could start or end it anyway).
            maintenance_exempt: input.actor.authenticated() && input.actor.role == Role::Admin,
            claim_within: input.claim_within.unwrap_or(self.policy.claim_window),
        };
        Ok((request, session, opened))
    }

    /// The session an acquire uses: the live one it names, renewed, or one
    /// it opens (not yet saved: `open_implicit` once the acquire succeeds).
    /// Answers whether it is opened.
    pub(super) fn session_for_acquire(
        &mut self,
        input: &AcquireInput,
    ) -> Result<(Session, bool), ServiceError> {
        match self.renew_if_live(&input.session_id, &input.actor)? {
            Some(session) => Ok((session, false)),
            None if self.policy.implicit_sessions => Ok((
                self.implicit_session(&input.session_id, &input.actor, &input.client)?,
                true,
            )),
            None => Err(DomainError::SessionNotFound(input.session_id.clone()).into()),
        }
    }

    /// Ends a session: its locks (if auto-release is on) and queue places
    /// go, each freed equipment passes to its queue, and the session is
    /// deleted. Returns how many locks it held.
    pub(super) fn end_session(
        &mut self,
        session: &Session,
        reason: EndReason,
    ) -> Result<usize, StoreError> {
        let release = self.policy.auto_release_on_disconnect;
        self.end_session_releasing(session, reason, release)
    }

    /// `end_session`, releasing its locks or not as told (an admin's
    /// forced end always releases them).
    pub(super) fn end_session_releasing(
        &mut self,
        session: &Session,
        reason: EndReason,
        release: bool,
    ) -> Result<usize, StoreError> {
        let now = self.now;
        let mut released = 0;
        for equipment in self.tx.equipment_of_session(&session.id)? {
            let (_, n) = self.change_locks(&equipment, |locks, live, events| {
                locks.remove_session(&session.id, release, reason, now, live, events)
            })?;
            released += n;
        }
        self.tx.delete_session(&session.id)?;
        let kind = if reason == EndReason::SessionExpired {
            EventKind::SessionExpired
        } else {
            EventKind::SessionEnded
        };
        let mut e = Event::new(kind, now);
        e.session_id = Some(session.id.clone());
        e.locks_released = Some(released);
        self.events.push(e);
        Ok(released)
    }

    /// Expires everything whose deadline is at or before `now`, in deadline
    /// order. Work is proportional to what is due, not to what exists.
    pub(super) fn expire_due(&mut self) -> Result<(), StoreError> {
        const BATCH: usize = 256;
        // Each round removes what it was handed; the bound only guards
        // against a store whose index disagrees with its rows.
        for _ in 0..1024 {
            let due = self.tx.due(self.now, BATCH)?;
            if due.is_empty() {
                break;
            }
            for item in due {
                match item {
                    Due::Session(id) => match self.tx.session(&id)? {
                        Some(session) if !session.is_live(self.now) => {
                            self.end_session(&session, EndReason::SessionExpired)?;
                            self.expired.expired_sessions += 1;
                        }
                        Some(session) => self.save_session(&session)?,
                        None => self.tx.delete_session(&id)?,
                    },
                    Due::Equipment(id) => {
                        let now = self.now;
                        let before = self.events.len();
                        let (_, (n, lapsed)) = self.change_locks(&id, |locks, live, events| {
                            let lapsed = locks.lapsed_deadline(now);
                            (locks.expire(now, live, events), lapsed)
                        })?;
                        self.expired.expired_locks += n;
                        let hand_offs = count_hand_offs(&self.events[before..]);
                        self.expired.queue_processed += hand_offs;
                        if let Some(deadline) = lapsed.filter(|_| hand_offs > 0) {
                            self.late_hand_offs.push(elapsed(deadline, now));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The grants from a queue among this unit's events, with how long
    /// each waiter waited since it joined the queue.
    pub(super) fn waits(&self) -> Vec<Wait> {
        self.events
            .iter()
            .filter(|e| e.event == EventKind::QueueProcessed)
            .filter_map(|e| {
                let (equipment, session) = (e.equipment_id.as_ref()?, e.session_id.as_ref()?);
                let before = self.queues_before.get(equipment)?;
                let (_, joined) = before.iter().find(|(s, _)| s == session)?;
                Some(Wait {
                    equipment_id: equipment.clone(),
                    mode: e.lock_mode?,
                    waited: elapsed(*joined, e.timestamp),
                })
            })
            .collect()
    }

    /// Stores the events worth keeping (lock events only when logging them
    /// is on; session lifecycle events always).
    pub(super) fn record_events(&mut self) -> Result<(), StoreError> {
        if self.policy.log_lock_events {
            return self.tx.record_events(&mut self.events);
        }
        // Only the session lifecycle is recorded; the rest still goes live,
        // without a sequence number.
        let kept: Vec<usize> = (0..self.events.len())
            .filter(|i| self.events[*i].event.is_session_lifecycle())
            .collect();
        let mut recorded: Vec<Event> = kept.iter().map(|i| self.events[*i].clone()).collect();
        self.tx.record_events(&mut recorded)?;
        for (i, event) in kept.into_iter().zip(recorded) {
            self.events[i].seq = event.seq;
        }
        Ok(())
    }
}
