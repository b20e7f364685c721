//! The use cases: one method per thing a client can ask. Each reads the
//! clock once. A write runs inside one store transaction (first expiring
//! whatever is due, so nothing past its deadline is ever seen), asks the
//! domain, saves what changed, records the events, and wakes the reaper
//! when a sooner deadline appeared. A read answers from committed state,
//! shown as the rules leave it at that instant, and writes nothing (see
//! `read`). Instruments are driven after the lock check.

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
use crate::storage::{Due, EventPage, EventQuery, Store, StoreError, Tx};
use std::collections::HashMap;

mod read;
#[cfg(test)]
mod read_tests;
#[cfg(test)]
mod recovery_tests;
mod transact;
mod uow;
mod waiting;

use uow::{Committed, Uow};

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
    /// Whether an acquire naming a session that is not live opens it
    /// (semantics.md, Sessions 6).
    pub implicit_sessions: bool,
    /// The largest session `metadata` accepted, as compact JSON bytes.
    pub max_metadata_bytes: usize,
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
            implicit_sessions: true,
            max_metadata_bytes: 16 * 1024,
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
    #[error("unknown action {} for {equipment}; valid actions: {}", serde_json::Value::from(action.as_str()), valid.join(", "))]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// Who the client says it is, for a session this acquire opens.
    pub client: ClientInfo,
}

/// What a request tells about its client, used to name a session opened
/// implicitly (semantics.md, Sessions 6).
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    /// The `User-Agent`, if any.
    pub name: Option<String>,
    pub ip: Option<String>,
}

/// A page of live sessions, in session id order.
pub struct SessionPage {
    pub sessions: Vec<Session>,
    /// The cursor for the next page; `None` on the last one.
    pub next_cursor: Option<SessionId>,
}

/// The default page size of the session list.
pub const DEFAULT_SESSION_PAGE: usize = 100;

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
    /// The client's id for the command (for the log).
    pub command_id: Option<String>,
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
    /// Runs the reads of a blocking store (started on the first).
    readers: std::sync::OnceLock<read::ReadPool>,
}

/// Where `session` stands on an equipment: holding, waiting, or neither.
pub(super) fn standing(locks: &EquipmentLocks, session: &SessionId) -> Option<AcquireOutcome> {
    if let Some(grant) = locks.grant_of(session) {
        return Some(AcquireOutcome::Locked(grant.clone()));
    }
    let position = locks.position_of(session)?;
    Some(AcquireOutcome::Queued {
        entry: locks.queue[position - 1].clone(),
        position,
    })
}

/// What a session that is not live hears when it releases or renews: that
/// it lost its lock here, if it did (semantics.md, Locks 8-9), else that it
/// does not exist.
fn lost_or_unknown(locks: &EquipmentLocks, session: &SessionId, actor: &Actor) -> ServiceError {
    locks.lost_lock_told_to(session, actor).map_or_else(
        || ServiceError::SessionNotFound(session.clone()),
        ServiceError::from,
    )
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
            readers: std::sync::OnceLock::new(),
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

    /// At start-up: every session and lock whose deadline passed while the
    /// server was down gets one fresh period from now (semantics.md,
    /// "Restart"). Run before serving, without expiring anything first.
    /// Like `expire_due`, a bounded batch per transaction, however much
    /// lapsed; a batch that changes nothing (a store whose deadline index
    /// disagrees with its rows) ends it.
    pub fn recover_after_restart(&self) -> Result<usize, ServiceError> {
        const BATCH: usize = 256;
        let start = self.clock.now();
        let mut renewed = 0;
        let mut last_round = Vec::new();
        loop {
            let mut round = Vec::new();
            self.store.transaction(&mut |tx| {
                round = tx.due(start, BATCH)?;
                for item in round.iter().cloned() {
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
                }
                Ok(())
            })?;
            if round.is_empty() {
                return Ok(renewed);
            }
            if round == last_round {
                tracing::warn!(
                    left = round.len(),
                    "renewing after the restart made no progress; the reaper will expire the rest"
                );
                return Ok(renewed);
            }
            renewed += round.len();
            last_round = round;
        }
    }

    /// The whole history, filtered, oldest first, a page at a time.
    pub async fn history(&self, query: EventQuery) -> Result<At<EventPage>, ServiceError> {
        too_many(query.limit)?;
        self.read_events(move |tx| Ok(tx.event_page(&query)?)).await
    }

    /// A page of the history as committed, read off the write path: no
    /// batch to join, no commit to wait for, nothing expired first. For
    /// replays that may page through a long history while others write.
    /// (A batch whose fsync is still running is already readable here.)
    pub async fn read_history(&self, query: EventQuery) -> Result<EventPage, ServiceError> {
        too_many(query.limit)?;
        let page = self.read(move |view| Ok(view.tx.event_page(&query)?));
        Ok(page.await?.value)
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
        Session::check_metadata(&new.metadata, self.policy.max_metadata_bytes)?;
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
        let id = id.clone();
        self.read(move |view| {
            view.live_session(&id)?
                .ok_or_else(|| ServiceError::SessionNotFound(id.clone()))
        })
        .await
    }

    /// Live sessions, `limit` at a time, in session id order, after
    /// `cursor` (the previous page's last id).
    pub async fn sessions(
        &self,
        cursor: Option<&SessionId>,
        limit: usize,
    ) -> Result<At<SessionPage>, ServiceError> {
        let limit = too_many(limit)?;
        let cursor = cursor.cloned();
        self.read(move |view| {
            let mut sessions = view.tx.sessions_page(cursor.as_ref(), limit)?;
            // The page is full when the store had `limit` more: only then
            // may another follow (a page shortened by the liveness filter
            // still points past what it skipped).
            let next_cursor = (sessions.len() == limit)
                .then(|| sessions.last().map(|s| s.id.clone()))
                .flatten();
            sessions.retain(|s| s.is_live(view.now));
            Ok(SessionPage {
                sessions,
                next_cursor,
            })
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
        let id = id.clone();
        self.read(move |view| {
            let id = &id;
            view.live_session(id)?
                .ok_or_else(|| ServiceError::SessionNotFound(id.clone()))?;
            let mut holdings = SessionHoldings {
                locks: Vec::new(),
                queued: Vec::new(),
            };
            for equipment in view.tx.equipment_of_session(id)? {
                let locks = view.locks(&equipment)?;
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
        let id = id.clone();
        self.read_events(move |tx| {
            let events = tx.session_events(&id, limit)?;
            if events.is_empty() && tx.session(&id)?.is_none() {
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
            let (session, opened) = match uow.renew_if_live(&input.session_id, &input.actor)? {
                Some(session) => (session, false),
                None if self.policy.implicit_sessions => {
                    let id = &input.session_id;
                    (uow.implicit_session(id, &input.actor, &input.client)?, true)
                }
                None => return Err(ServiceError::SessionNotFound(input.session_id.clone())),
            };
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
            let opened_at = uow.events.len();
            let outcome = locks.acquire(&request, uow.now, self.policy.lock, &mut uow.events)?;
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
    ) -> Result<At<ReleaseOutcome>, ServiceError> {
        self.registered(equipment)?;
        self.run(|uow| {
            // A forced release may name a session that does not exist (the
            // brief's own example uses "admin_session"); a live one is renewed.
            let live = uow.renew_if_live(session, actor)?.is_some();
            let now = uow.now;
            let (_, outcome) = uow.change_locks(equipment, |locks, alive, events| {
                // Only taking others' locks needs an admin: a live session
                // of the caller's that holds or waits here releases its own
                // place, `force` or not. A session that is not live proves
                // no ownership, so forcing in its name stays an admin's.
                if locks.release_forces(session, force, alive) {
                    actor.may_force()?;
                } else if !live && !force {
                    // Releases never open a session; one whose lock was
                    // lost still hears so.
                    return Err(lost_or_unknown(locks, session, actor));
                }
                Ok(locks.release(session, force, now, alive, events)?)
            })?;
            outcome
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
            let mut locks = uow.load_locks(equipment)?;
            if uow.renew_if_live(session, actor)?.is_none() {
                // The same rule as release: a lost lock is `lock_lost`.
                return Err(lost_or_unknown(&locks, session, actor));
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
                Some(id) => uow.renew_if_live(id, actor)?,
                None => None,
            };
            let mut locks = uow.load_locks(equipment)?;
            let check = crate::domain::lock::CommandCheck {
                session,
                session_live: live.is_some(),
                access,
                fencing_token,
                locks_enabled,
            };
            locks.authorize_command(&check, actor, uow.now)?;
            if locks_enabled {
                // The grant that allowed it was renewed.
                uow.save_locks(&locks)?;
            }
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
        let value = instrument
            .driver
            .execute(action, &params)
            .await
            .inspect_err(|e| {
                // Answered as 502/503/504 without a cause on our side: say
                // which instrument, for whom and for which command.
                if e.is_instrument_failure() {
                    tracing::warn!(
                        equipment = %input.equipment_id,
                        session = input.session_id.as_ref().map(|s| s.as_str()).unwrap_or("-"),
                        command_id = input.command_id.as_deref().unwrap_or("-"),
                        action = %action.name,
                        error = %e,
                        "instrument command failed"
                    );
                }
            })?;
        Ok(At {
            value,
            now: self.clock.now(),
        })
    }
}
