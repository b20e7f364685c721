//! The use cases: one method per thing a client can ask. Each reads the
//! clock once, runs inside one store transaction (first expiring whatever
//! is due, so nothing past its deadline is ever seen), asks the domain,
//! saves what changed, records the events, and wakes the reaper when a
//! sooner deadline appeared. Instruments are driven after the lock check.

use serde_json::{Map, Value};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use tokio::sync::Notify;

use crate::auth::{Auth, AuthMode};
use crate::clock::Clock;
use crate::domain::lock::Holder;
use crate::domain::{
    AcquireOutcome, Actor, DomainError, EndReason, EquipmentId, EquipmentLocks, Event, EventKind,
    LockMode, LockPolicy, LockRequest, ReleaseOutcome, Session, SessionId, Timeout, Timestamp,
};
use crate::drivers::{ActionSpec, DriverError, Instrument, Instruments, ParamError};
use crate::live::{ExpiryWarnings, Hub, Warning};
use crate::storage::{Due, EventQuery, Store, StoreError, Tx};
use std::collections::HashMap;

/// The brief's switches and defaults, as the service applies them.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub locks_enabled: bool,
    pub lock: LockPolicy,
    pub auto_release_on_disconnect: bool,
    pub log_lock_events: bool,
    pub default_lock_timeout: Timeout,
    pub default_session_timeout: Timeout,
    /// How long before a lease ends its holder hears `lock_expiring` (0: never).
    pub expiry_warning_ms: u64,
    /// How far a live subscriber may fall behind before it is told it lagged.
    pub live_buffer: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            locks_enabled: true,
            lock: LockPolicy::default(),
            auto_release_on_disconnect: true,
            log_lock_events: true,
            default_lock_timeout: Timeout::from_millis(300_000),
            default_session_timeout: Timeout::from_millis(600_000),
            expiry_warning_ms: 30_000,
            live_buffer: crate::live::DEFAULT_BUFFER,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("session {0} not found: it never existed, ended, or expired; create a new one")]
    SessionNotFound(SessionId),
    #[error("equipment {0} is not registered; GET /api/equipment/list shows what is")]
    EquipmentNotFound(EquipmentId),
    #[error("this action needs a session_id: create a session and lock the equipment first")]
    SessionRequired,
    #[error("session {0} is not live (it ended or expired): create a new session")]
    SessionNotLive(SessionId),
    #[error("unknown action {action:?} for {equipment}; valid actions: {}", valid.join(", "))]
    UnknownAction {
        equipment: EquipmentId,
        action: String,
        valid: Vec<String>,
    },
    #[error(transparent)]
    InvalidParameter(#[from] ParamError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("{0}")]
    Invalid(String),
}

/// Wakes the reaper when a deadline sooner than the one it sleeps towards
/// is saved.
#[derive(Debug)]
pub struct DeadlineSignal {
    pub notify: Notify,
    sleeping_until: AtomicI64,
}

impl Default for DeadlineSignal {
    fn default() -> Self {
        Self {
            notify: Notify::new(),
            sleeping_until: AtomicI64::new(i64::MIN),
        }
    }
}

impl DeadlineSignal {
    pub fn sleeping_until(&self, at: Timestamp) {
        self.sleeping_until.store(at.as_millis(), Ordering::SeqCst);
    }

    fn saw(&self, deadline: Timestamp) {
        if deadline.as_millis() < self.sleeping_until.load(Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }
}

/// What the expiry of due deadlines did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ExpiryReport {
    pub expired_locks: usize,
    pub expired_sessions: usize,
    pub queue_processed: usize,
}

/// A value with the instant it was read at, so views can show time left.
#[derive(Clone, Debug)]
pub struct At<T> {
    pub value: T,
    pub now: Timestamp,
}

pub struct NewSession {
    pub actor: Actor,
    pub client_name: Option<String>,
    pub client_ip: Option<String>,
    pub timeout: Option<Timeout>,
    pub metadata: Map<String, Value>,
}

pub struct AcquireInput {
    pub actor: Actor,
    pub equipment_id: EquipmentId,
    pub session_id: SessionId,
    pub mode: LockMode,
    pub timeout: Option<Timeout>,
    pub queue_if_busy: bool,
}

pub struct Acquired {
    pub outcome: AcquireOutcome,
    pub locks: EquipmentLocks,
}

pub struct SessionEnd {
    pub locks_released: usize,
}

/// The locks and queue places of one session.
pub struct SessionHoldings {
    pub locks: Vec<(EquipmentId, crate::domain::Grant)>,
    /// Each queue place with its 1-based position.
    pub queued: Vec<(EquipmentId, crate::domain::QueueEntry, usize)>,
}

pub struct CommandInput {
    pub actor: Actor,
    pub equipment_id: EquipmentId,
    pub action: String,
    pub parameters: Map<String, Value>,
    pub session_id: Option<SessionId>,
    pub fencing_token: Option<u64>,
}

pub struct Service {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    instruments: Arc<Instruments>,
    policy: Policy,
    deadlines: Arc<DeadlineSignal>,
    /// Serialises access to a blocking store (see `in_store_gated`).
    store_turn: tokio::sync::Mutex<()>,
    /// Requests waiting for `store_turn` with work to add to a batch.
    store_waiting: AtomicUsize,
    /// Wakes the history publisher.
    history_grew: Notify,
    /// The highest `seq` this process has recorded.
    recorded_upto: AtomicU64,
    hub: Hub,
    warnings: Arc<ExpiryWarnings>,
    auth: Auth,
}

/// One transaction's working set: the store, the instant, and what happened.
struct Uow<'a> {
    tx: &'a mut dyn Tx,
    now: Timestamp,
    policy: &'a Policy,
    events: Vec<Event>,
    earliest_deadline: Option<Timestamp>,
    expired: ExpiryReport,
    /// Each loaded equipment's queue as it was before this unit of work,
    /// to tell waiters whose place changed.
    queues_before: HashMap<EquipmentId, Vec<SessionId>>,
    /// The last saved state of each equipment this unit of work changed.
    saved: HashMap<EquipmentId, EquipmentLocks>,
    /// The user whose request this is, stamped on the events it causes.
    actor: Option<String>,
}

/// What a committed unit of work leaves for live subscribers.
struct Committed {
    events: Vec<Event>,
    queues_before: HashMap<EquipmentId, Vec<SessionId>>,
    saved: HashMap<EquipmentId, EquipmentLocks>,
}

/// Asks the store whether `session` is live at `now`, remembering the first
/// store error (the domain's callback cannot return one).
fn live_check<'t>(
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
fn notification_for(event: &Event) -> Option<Event> {
    let kind = match (event.event, event.reason) {
        (EventKind::QueueProcessed, _) => EventKind::LockGranted,
        (EventKind::LockForceReleased | EventKind::ObserverRevoked | EventKind::LockExpired, _) => {
            EventKind::LockLost
        }
        (
            EventKind::LockReleased | EventKind::ObserverLockReleased,
            Some(EndReason::SessionExpired),
        ) => EventKind::LockLost,
        _ => return None,
    };
    let mut note = event.clone();
    note.event = kind;
    note.seq = None;
    Some(note)
}

fn count_hand_offs(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| e.event == EventKind::QueueProcessed)
        .count()
}

impl Uow<'_> {
    fn note_deadline(&mut self, deadline: Option<Timestamp>) {
        if let Some(d) = deadline {
            self.earliest_deadline = Some(self.earliest_deadline.map_or(d, |e| e.min(d)));
        }
    }

    fn save_session(&mut self, session: &Session) -> Result<(), StoreError> {
        self.note_deadline(session.deadline());
        self.tx.save_session(session)
    }

    fn save_locks(&mut self, locks: &EquipmentLocks) -> Result<(), StoreError> {
        self.note_deadline(locks.next_deadline());
        self.tx.save_equipment_locks(locks)?;
        self.saved.insert(locks.equipment_id.clone(), locks.clone());
        Ok(())
    }

    /// Loads an equipment's locks, remembering its queue as first seen.
    fn load_locks(&mut self, id: &EquipmentId) -> Result<EquipmentLocks, StoreError> {
        let locks = self.tx.equipment_locks(id)?;
        self.queues_before
            .entry(id.clone())
            .or_insert_with(|| locks.queue.iter().map(|e| e.session_id.clone()).collect());
        Ok(locks)
    }

    /// The session if it exists and is live at `now`.
    fn live_session(&mut self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        Ok(self.tx.session(id)?.filter(|s| s.is_live(self.now)))
    }

    /// Notes who is acting, for the events this unit of work causes.
    fn acting(&mut self, actor: &Actor) {
        self.actor = actor.user.clone();
    }

    /// Loads a live session the actor may use, and renews it (semantics.md,
    /// Sessions 2).
    fn renew_session(&mut self, id: &SessionId, actor: &Actor) -> Result<Session, ServiceError> {
        self.acting(actor);
        let mut session = self
            .live_session(id)?
            .ok_or_else(|| ServiceError::SessionNotFound(id.clone()))?;
        actor.may_use(&session)?;
        session.touch(self.now);
        self.save_session(&session)?;
        Ok(session)
    }

    /// Runs `change` on an equipment's locks with a liveness callback, saves
    /// them, and returns what `change` returned.
    fn change_locks<R>(
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

    /// Ends a session: its locks (if auto-release is on) and queue places
    /// go, each freed equipment passes to its queue, and the session is
    /// deleted. Returns how many locks it held.
    fn end_session(&mut self, session: &Session, reason: EndReason) -> Result<usize, StoreError> {
        let release = self.policy.auto_release_on_disconnect;
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
    fn expire_due(&mut self) -> Result<(), StoreError> {
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
                        let (_, n) = self.change_locks(&id, |locks, live, events| {
                            locks.expire(now, live, events)
                        })?;
                        self.expired.expired_locks += n;
                        self.expired.queue_processed += count_hand_offs(&self.events[before..]);
                    }
                }
            }
        }
        Ok(())
    }

    /// Stores the events worth keeping (lock events only when logging them
    /// is on; session lifecycle events always).
    fn record_events(&mut self) -> Result<(), StoreError> {
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

fn too_many(limit: usize) -> Result<usize, ServiceError> {
    if (1..=1000).contains(&limit) {
        Ok(limit)
    } else {
        Err(ServiceError::Invalid(format!(
            "limit must be between 1 and 1000, got {limit}"
        )))
    }
}

impl Service {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        instruments: Arc<Instruments>,
        policy: Policy,
    ) -> Self {
        Self {
            auth: Auth::new(AuthMode::Off, store.clone()),
            hub: Hub::new(policy.live_buffer),
            warnings: Arc::new(ExpiryWarnings::new(policy.expiry_warning_ms)),
            store,
            clock,
            instruments,
            policy,
            deadlines: Arc::new(DeadlineSignal::default()),
            store_turn: tokio::sync::Mutex::new(()),
            store_waiting: AtomicUsize::new(0),
            history_grew: Notify::new(),
            recorded_upto: AtomicU64::new(0),
        }
    }

    /// Turns authentication on or off (off unless told).
    pub fn with_auth(mut self, mode: AuthMode) -> Self {
        self.auth = Auth::new(mode, self.store.clone());
        self
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn instruments(&self) -> &Instruments {
        &self.instruments
    }

    pub fn deadlines(&self) -> &Arc<DeadlineSignal> {
        &self.deadlines
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn warnings(&self) -> &Arc<ExpiryWarnings> {
        &self.warnings
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
        // Listen before asking, so a grant right after cannot be missed.
        let mut live = self.hub.subscribe();
        let first = self.acquire(input).await?;
        let wait = match (&first.value.outcome, wait) {
            (AcquireOutcome::Queued { .. }, Some(wait)) if !wait.is_zero() => wait,
            _ => return Ok(first),
        };
        let until = first.now.plus_millis(wait.as_millis() as u64);
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    Ok(event) if event.equipment_id.as_ref() != Some(&equipment) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    // Anything on this equipment (or a lag) may change our
                    // standing: look.
                    _ => {}
                },
                _ = self.clock.sleep_until(until) => break,
            }
            let now = self.lock_state(&equipment).await?;
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
        let now = self.lock_state(&equipment).await?;
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

    /// Runs `op` in one transaction at one instant, after expiring what is
    /// due. Store errors abort (and roll back) the transaction; other errors
    /// are returned after committing the expiries, which stand on their own.
    async fn run<R: Send>(
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
    fn publish(&self, committed: Committed, now: Timestamp) {
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
                .value;
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
    async fn in_store_gated(&self, work: &mut crate::storage::Work<'_>) -> Result<(), StoreError> {
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
    /// nobody else waiting to add work commits the batch; the others wait
    /// for that commit (or, if nobody comes, take their turn back and
    /// commit it themselves). Nothing returns before its work is committed.
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
        if !others || group.batch_len() >= MAX_BATCH {
            let committed = group.commit_batch();
            drop(turn);
            return batch.and(committed);
        }
        drop(turn);
        let batch = batch?;
        loop {
            if let Some(outcome) = group.outcome(batch) {
                return outcome;
            }
            tokio::select! {
                changed = finished.changed() => {
                    if changed.is_err() {
                        return Err(StoreError::Unavailable("the store is closed".into()));
                    }
                }
                turn = self.store_turn.lock() => {
                    if group.outcome(batch).is_none() {
                        // Nobody else committed it: do it now.
                        let _ = group.commit_batch();
                    }
                    drop(turn);
                }
            }
        }
    }

    /// At start-up: every session and lock whose deadline passed while the
    /// server was down gets one fresh period from now (semantics.md,
    /// "Restart"). Run before serving, without expiring anything first.
    pub fn recover_after_restart(&self) -> Result<usize, ServiceError> {
        let start = self.clock.now();
        let mut renewed = 0;
        self.store.transaction(&mut |tx| {
            renewed = 0;
            loop {
                let due = tx.due(start, 256)?;
                if due.is_empty() {
                    return Ok(());
                }
                for item in due {
                    match item {
                        Due::Session(id) => match tx.session(&id)? {
                            Some(mut session) => {
                                session.renew_after_restart(start);
                                tx.save_session(&session)?;
                            }
                            None => tx.delete_session(&id)?,
                        },
                        Due::Equipment(id) => {
                            let mut locks = tx.equipment_locks(&id)?;
                            locks.renew_after_restart(start);
                            tx.save_equipment_locks(&locks)?;
                        }
                    }
                    renewed += 1;
                }
            }
        })?;
        Ok(renewed)
    }

    /// The whole history, filtered, oldest first, a page at a time.
    pub async fn history(&self, query: EventQuery) -> Result<At<Vec<Event>>, ServiceError> {
        too_many(query.limit)?;
        self.run(|uow| Ok(uow.tx.query_events(&query)?)).await
    }

    /// Forgets events older than `days` days (0 keeps everything).
    pub async fn prune_history(&self, days: u32) -> Result<usize, ServiceError> {
        if days == 0 {
            return Ok(0);
        }
        let before =
            Timestamp::from_millis(self.clock.now().as_millis() - i64::from(days) * 86_400_000);
        let mut pruned = 0;
        self.in_store_gated(&mut |tx| {
            pruned = tx.prune_events(before)?;
            Ok(())
        })
        .await?;
        Ok(pruned)
    }

    fn registered(&self, id: &EquipmentId) -> Result<(), ServiceError> {
        if self.instruments.contains(id) {
            Ok(())
        } else {
            Err(ServiceError::EquipmentNotFound(id.clone()))
        }
    }

    // ---- sessions ------------------------------------------------------

    pub async fn create_session(&self, new: NewSession) -> Result<At<Session>, ServiceError> {
        let id = SessionId::parse(&uuid::Uuid::new_v4().to_string())?;
        let timeout = new.timeout.unwrap_or(self.policy.default_session_timeout);
        self.run(|uow| {
            let session = Session {
                id: id.clone(),
                client_name: new
                    .client_name
                    .clone()
                    .unwrap_or_else(|| "unnamed client".into()),
                client_ip: new.client_ip.clone(),
                created_at: uow.now,
                last_activity: uow.now,
                timeout,
                metadata: new.metadata.clone(),
                user: new.actor.user.clone(),
            };
            uow.acting(&new.actor);
            uow.save_session(&session)?;
            let mut e = Event::new(EventKind::SessionCreated, uow.now);
            e.session_id = Some(id.clone());
            e.timeout_seconds = Some(timeout.as_seconds());
            uow.events.push(e);
            Ok(session)
        })
        .await
    }

    pub async fn end_session(
        &self,
        id: &SessionId,
        actor: &Actor,
    ) -> Result<At<SessionEnd>, ServiceError> {
        self.run(|uow| {
            uow.acting(actor);
            let session = uow
                .live_session(id)?
                .ok_or_else(|| ServiceError::SessionNotFound(id.clone()))?;
            actor.may_use(&session)?;
            let locks_released = uow.end_session(&session, EndReason::SessionEnded)?;
            Ok(SessionEnd { locks_released })
        })
        .await
    }

    pub async fn session(&self, id: &SessionId) -> Result<At<Session>, ServiceError> {
        self.run(|uow| {
            uow.live_session(id)?
                .ok_or_else(|| ServiceError::SessionNotFound(id.clone()))
        })
        .await
    }

    pub async fn sessions(&self) -> Result<At<Vec<Session>>, ServiceError> {
        self.run(|uow| {
            let mut sessions = uow.tx.sessions()?;
            sessions.retain(|s| s.is_live(uow.now));
            sessions.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            Ok(sessions)
        })
        .await
    }

    pub async fn touch_session(
        &self,
        id: &SessionId,
        actor: &Actor,
    ) -> Result<At<Session>, ServiceError> {
        self.run(|uow| uow.renew_session(id, actor)).await
    }

    pub async fn session_holdings(
        &self,
        id: &SessionId,
    ) -> Result<At<SessionHoldings>, ServiceError> {
        self.run(|uow| {
            uow.live_session(id)?
                .ok_or_else(|| ServiceError::SessionNotFound(id.clone()))?;
            let mut holdings = SessionHoldings {
                locks: Vec::new(),
                queued: Vec::new(),
            };
            for equipment in uow.tx.equipment_of_session(id)? {
                let locks = uow.tx.equipment_locks(&equipment)?;
                if let Some(grant) = locks.grant_of(id) {
                    holdings.locks.push((equipment.clone(), grant.clone()));
                }
                if let Some(position) = locks.position_of(id) {
                    let entry = locks.queue[position - 1].clone();
                    holdings.queued.push((equipment, entry, position));
                }
            }
            Ok(holdings)
        })
        .await
    }

    pub async fn session_events(
        &self,
        id: &SessionId,
        limit: usize,
    ) -> Result<At<Vec<Event>>, ServiceError> {
        let limit = too_many(limit)?;
        self.run(|uow| {
            let events = uow.tx.session_events(id, limit)?;
            if events.is_empty() && uow.tx.session(id)?.is_none() {
                return Err(ServiceError::SessionNotFound(id.clone()));
            }
            Ok(events)
        })
        .await
    }

    // ---- locks ---------------------------------------------------------

    pub async fn acquire(&self, input: AcquireInput) -> Result<At<Acquired>, ServiceError> {
        let instrument = self.instrument(&input.equipment_id)?;
        input.actor.may_lock(input.mode)?;
        input
            .actor
            .may_use_equipment(input.equipment_id.as_str(), instrument.allow.as_deref())?;
        let timeout = input.timeout.unwrap_or(self.policy.default_lock_timeout);
        self.run(|uow| {
            let session = uow.renew_session(&input.session_id, &input.actor)?;
            let request = LockRequest {
                session_id: input.session_id.clone(),
                mode: input.mode,
                timeout,
                queue_if_busy: input.queue_if_busy,
                holder: Holder {
                    user: session.user.clone(),
                    client_name: Some(session.client_name.clone()),
                },
            };
            let mut locks = uow.load_locks(&input.equipment_id)?;
            let outcome = locks.acquire(&request, uow.now, self.policy.lock, &mut uow.events)?;
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
    ) -> Result<At<ReleaseOutcome>, ServiceError> {
        self.registered(equipment)?;
        if force {
            actor.may_force()?;
        }
        self.run(|uow| {
            uow.acting(actor);
            // A forced release may name a session that does not exist (the
            // brief's own example uses "admin_session"); a live one is renewed.
            match uow.live_session(session)? {
                Some(mut s) => {
                    actor.may_use(&s)?;
                    s.touch(uow.now);
                    uow.save_session(&s)?;
                }
                None if !force => return Err(ServiceError::SessionNotFound(session.clone())),
                None => {}
            }
            let now = uow.now;
            let (_, outcome) = uow.change_locks(equipment, |locks, live, events| {
                locks.release(session, force, now, live, events)
            })?;
            Ok(outcome?)
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
        self.run(|uow| {
            uow.renew_session(session, actor)?;
            let mut locks = uow.load_locks(equipment)?;
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
        self.run(|uow| Ok(uow.tx.equipment_locks(equipment)?)).await
    }

    pub async fn busy_equipment(&self) -> Result<At<Vec<EquipmentLocks>>, ServiceError> {
        self.run(|uow| {
            let mut all = uow.tx.busy_equipment()?;
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
        self.run(|uow| Ok(uow.tx.equipment_events(equipment, limit)?))
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

    // ---- commands ------------------------------------------------------

    /// Checks the lock rules for a command and renews what authorised it.
    async fn authorize(
        &self,
        actor: &Actor,
        equipment: &EquipmentId,
        session: Option<&SessionId>,
        access: crate::domain::Access,
        fencing_token: Option<u64>,
    ) -> Result<(), ServiceError> {
        let locks_enabled = self.policy.locks_enabled;
        self.run(|uow| {
            uow.acting(actor);
            let live = match session {
                Some(id) => uow.live_session(id)?,
                None => None,
            };
            if let Some(mut s) = live.clone() {
                actor.may_use(&s)?;
                s.touch(uow.now);
                uow.save_session(&s)?;
            }
            let mut locks = uow.load_locks(equipment)?;
            if !locks_enabled {
                return Ok(locks.check_fencing(fencing_token)?);
            }
            let id = session.ok_or(ServiceError::SessionRequired)?;
            if live.is_none() {
                // A session that lost its lock and then expired still hears
                // `lock_lost`, so its client can tell why it must stop.
                return Err(match locks.loss_of(id) {
                    Some(reason) => DomainError::LockLost {
                        equipment: equipment.clone(),
                        session: id.clone(),
                        reason,
                    }
                    .into(),
                    None => ServiceError::SessionNotLive(id.clone()),
                });
            }
            locks.authorize(id, access, fencing_token, uow.now)?;
            uow.save_locks(&locks)?;
            Ok(())
        })
        .await
        .map(|_| ())
    }

    pub fn instrument(&self, id: &EquipmentId) -> Result<&Arc<Instrument>, ServiceError> {
        self.instruments
            .get(id)
            .ok_or_else(|| ServiceError::EquipmentNotFound(id.clone()))
    }

    /// Runs one command: known action, valid parameters, lock rules, then
    /// the instrument, one command at a time per instrument.
    pub async fn run_command(&self, input: CommandInput) -> Result<At<Value>, ServiceError> {
        let instrument = self.instrument(&input.equipment_id)?;
        let action: &ActionSpec = instrument
            .driver
            .actions()
            .iter()
            .find(|a| a.name == input.action)
            .ok_or_else(|| ServiceError::UnknownAction {
                equipment: input.equipment_id.clone(),
                action: input.action.clone(),
                valid: instrument
                    .driver
                    .actions()
                    .iter()
                    .map(|a| a.name.clone())
                    .collect(),
            })?;
        let params = action.validate(&input.parameters)?;
        input.actor.may_run(action.access)?;
        let _turn = instrument.serial.lock().await;
        self.authorize(
            &input.actor,
            &input.equipment_id,
            input.session_id.as_ref(),
            action.access,
            input.fencing_token,
        )
        .await?;
        let value = instrument.driver.execute(action, &params).await?;
        Ok(At {
            value,
            now: self.clock.now(),
        })
    }
}
