//! The events: what the history stores and what clients are shown. Each is
//! one change to a session, a lock or a queue, with the details that explain it.

use serde::{Deserialize, Serialize};

use super::ids::{EquipmentId, SessionId};
use super::lock::LockMode;
use super::time::Timestamp;

/// The names of semantics.md, "Events".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    LockAcquired,
    LockRefreshed,
    LockReleased,
    LockForceReleased,
    LockExpired,
    ObserverLockAcquired,
    ObserverLockReleased,
    ObserverRevoked,
    Queued,
    Dequeued,
    QueueProcessed,
    SessionCreated,
    SessionEnded,
    SessionExpired,
    /// A waiter's place was dropped: it waited its `max_wait_seconds`.
    QueueTimeout,
    /// A lock granted from the queue passed on: its holder did not claim
    /// it in time (`claim_within_seconds`).
    ClaimExpired,
    /// A waiter let the one behind it go first (`position`: its new one).
    QueueSteppedBack,
    /// Two waiters swapped places, both having asked (`position`: the new
    /// one; one event each).
    QueueSwapped,
    /// The equipment was taken out of service.
    MaintenanceStarted,
    /// The equipment is back in service.
    MaintenanceEnded,
    // Live notifications: sent to subscribers, never stored in the history.
    /// A waiting session's place in the queue changed.
    QueuePosition,
    /// A waiting session got the lock from the queue.
    LockGranted,
    /// A holder's lease ends soon (how soon is a server setting).
    LockExpiring,
    /// A holder's lock was force-released, revoked, or expired.
    LockLost,
    /// A waiter's place in a queue was dropped without its asking.
    QueuePlaceLost,
}

impl EventKind {
    pub const ALL: [EventKind; 20] = [
        Self::LockAcquired,
        Self::LockRefreshed,
        Self::LockReleased,
        Self::LockForceReleased,
        Self::LockExpired,
        Self::ObserverLockAcquired,
        Self::ObserverLockReleased,
        Self::ObserverRevoked,
        Self::Queued,
        Self::Dequeued,
        Self::QueueProcessed,
        Self::SessionCreated,
        Self::SessionEnded,
        Self::SessionExpired,
        Self::QueueTimeout,
        Self::MaintenanceStarted,
        Self::MaintenanceEnded,
        Self::ClaimExpired,
        Self::QueueSteppedBack,
        Self::QueueSwapped,
    ];

    /// Whether this is a live notification rather than a history event.
    pub fn is_notification(self) -> bool {
        matches!(
            self,
            Self::QueuePosition
                | Self::LockGranted
                | Self::LockExpiring
                | Self::LockLost
                | Self::QueuePlaceLost
        )
    }

    /// A history event kind by name (notifications are not history).
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }

    /// Session lifecycle events are kept even when lock-event logging is off.
    pub fn is_session_lifecycle(self) -> bool {
        matches!(
            self,
            Self::SessionCreated | Self::SessionEnded | Self::SessionExpired
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LockAcquired => "lock_acquired",
            Self::LockRefreshed => "lock_refreshed",
            Self::LockReleased => "lock_released",
            Self::LockForceReleased => "lock_force_released",
            Self::LockExpired => "lock_expired",
            Self::ObserverLockAcquired => "observer_lock_acquired",
            Self::ObserverLockReleased => "observer_lock_released",
            Self::ObserverRevoked => "observer_revoked",
            Self::Queued => "queued",
            Self::Dequeued => "dequeued",
            Self::QueueProcessed => "queue_processed",
            Self::SessionCreated => "session_created",
            Self::SessionEnded => "session_ended",
            Self::SessionExpired => "session_expired",
            Self::QueueTimeout => "queue_timeout",
            Self::MaintenanceStarted => "maintenance_started",
            Self::MaintenanceEnded => "maintenance_ended",
            Self::ClaimExpired => "claim_expired",
            Self::QueueSteppedBack => "queue_stepped_back",
            Self::QueueSwapped => "queue_swapped",
            Self::QueuePosition => "queue_position",
            Self::LockGranted => "lock_granted",
            Self::LockExpiring => "lock_expiring",
            Self::LockLost => "lock_lost",
            Self::QueuePlaceLost => "queue_place_lost",
        }
    }
}

/// Why a lock or queue place ended, when it was not the holder's own request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Released,
    Timeout,
    SessionEnded,
    SessionExpired,
    SessionNotLive,
    ExclusiveGranted,
    Forced,
    Upgraded,
    /// A waiter's `max_wait_seconds` passed.
    WaitTimeout,
    /// An admin removed a waiter's queue entry.
    Removed,
    /// A lock from the queue was not claimed within its window.
    ClaimExpired,
    /// A pool request's other places, once it was granted one instrument.
    GrantedElsewhere,
}

impl EndReason {
    /// Whether the holder lost it without asking (its client then hears
    /// `lock_lost`).
    pub fn is_involuntary(self) -> bool {
        matches!(
            self,
            Self::Timeout
                | Self::SessionExpired
                | Self::Forced
                | Self::ExclusiveGranted
                | Self::ClaimExpired
        )
    }
}

/// One recorded change. `session_id` is the session it happened to; the
/// optional fields carry what explains it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The history's sequence number: grows with each recorded event, so a
    /// client can page through (and later resume) from the last one it saw.
    /// Set by the store when the event is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub event: EventKind,
    pub timestamp: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equipment_id: Option<EquipmentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_mode: Option<LockMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<EndReason>,
    /// The session that forced a release (for `lock_force_released`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_by: Option<SessionId>,
    /// How many locks a session end released (for `session_ended`/`session_expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locks_released: Option<usize>,
    /// The user whose request caused this (with authentication on); absent
    /// for what the server did on its own, such as an expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The user whose lock or place this is (for a forced release: the one
    /// whose lock was taken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_user: Option<String>,
    /// When the lock's lease ends (for `lock_expiring`); on `queued`, when
    /// the place is dropped unless granted first (`max_wait_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Seconds left on the lease (for `lock_expiring`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_remaining: Option<f64>,
    /// What an admin said when acting on someone else's lock, place or
    /// session (a queue removal, a forced session end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The priority a waiter asked for (on `queued`, when not 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i8>,
    /// `true` on a `session_created` opened by an acquire naming a session
    /// that was not live (semantics.md, Sessions 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implicit: Option<bool>,
    /// The lock group (or pool request) this lock or place belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
}

impl Event {
    pub fn new(event: EventKind, timestamp: Timestamp) -> Self {
        Self {
            seq: None,
            event,
            timestamp,
            equipment_id: None,
            session_id: None,
            lock_mode: None,
            lock_id: None,
            fencing_token: None,
            timeout_seconds: None,
            position: None,
            queue_id: None,
            reason: None,
            forced_by: None,
            locks_released: None,
            user: None,
            holder_user: None,
            expires_at: None,
            time_remaining: None,
            message: None,
            priority: None,
            implicit: None,
            group_id: None,
        }
    }

    /// Whether this event belongs in the history of `session`.
    /// The user who acted with `session` in this event, if it tells: the
    /// one whose lock a forced release took, else the one who asked.
    pub fn user_of(&self, session: &SessionId) -> Option<&str> {
        if self.session_id.as_ref() != Some(session) {
            return None;
        }
        match self.event {
            EventKind::LockForceReleased => self.holder_user.as_deref(),
            _ => self.user.as_deref(),
        }
    }

    pub fn names_session(&self, session: &SessionId) -> bool {
        self.session_id.as_ref() == Some(session) || self.forced_by.as_ref() == Some(session)
    }
}
