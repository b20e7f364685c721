//! The rules of LabLink, as pure functions of state and time.
//!
//! Nothing in here does I/O, reads a clock, or makes random numbers: callers
//! pass `now` and fresh ids in, and get back the new state plus the events
//! that describe the change, or a `DomainError` with the state untouched.

pub mod access;
pub mod analytics;
pub mod event;
pub mod group;
pub mod ids;
pub mod lock;
pub mod number;
pub mod priority;
pub mod rollup;
pub mod session;
pub mod time;
pub mod view;

pub use access::{Actor, PriorityCaps, Role};
pub use event::{EndReason, Event, EventKind};
pub use ids::{EquipmentId, SessionId};
pub use lock::{
    Access, AcquireOutcome, EquipmentLocks, Grant, Holder, LockMode, LockPolicy, LockRequest,
    Maintenance, Obstacle, QueueEntry, ReleaseOutcome,
};
pub use session::Session;
pub use time::{Timeout, Timestamp};

/// A request the rules refuse. Each variant maps to one HTTP status and code
/// in `api::error`; the state is unchanged when one is returned. The texts
/// name no setting or route: the layer that knows them adds such hints.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DomainError {
    #[error("invalid {kind}: {reason}")]
    InvalidId { kind: &'static str, reason: String },
    /// A timestamp that is malformed or out of range; the text says which.
    #[error("{0}")]
    InvalidTimestamp(String),
    #[error("{0}")]
    InvalidTimeout(String),
    #[error("equipment {equipment} is busy: {}", busy_detail(holder.as_ref(), holder_is))]
    Busy {
        equipment: EquipmentId,
        holder: Option<SessionId>,
        /// The holder's user and client name, as far as known.
        holder_is: lock::Holder,
    },
    #[error("equipment {equipment} is busy: {}; the lock queue is disabled: try again later", holding(holder.as_ref(), holder_is))]
    QueueDisabled {
        equipment: EquipmentId,
        holder: Option<SessionId>,
        /// The holder's user and client name, as far as known.
        holder_is: lock::Holder,
    },
    #[error(
        "session {session} waited its max_wait_seconds in the queue of {equipment}: its place was dropped; acquire again to queue anew"
    )]
    WaitTimedOut {
        equipment: EquipmentId,
        session: SessionId,
    },
    #[error("equipment {equipment} is in maintenance ({reason}){}: {}", until.map(|u| format!(" until {u}")).unwrap_or_default(), if *can_queue { "set queue_if_busy to wait until service resumes" } else { "try again when service resumes" })]
    InMaintenance {
        equipment: EquipmentId,
        reason: String,
        until: Option<Timestamp>,
        /// Whether a request may wait in the queue (the queue is enabled).
        can_queue: bool,
    },
    #[error("equipment {equipment} is not in maintenance")]
    NotInMaintenance { equipment: EquipmentId },
    #[error("observer mode is disabled")]
    ObserverModeDisabled,
    #[error("session {session} does not hold the {needed} lock on {equipment}: {}", holder_detail(holder.as_ref()))]
    NotHolder {
        equipment: EquipmentId,
        session: SessionId,
        holder: Option<SessionId>,
        needed: &'static str,
    },
    #[error("session {session} lost its lock on {equipment} ({}): stop and acquire it again", reason_text(*reason))]
    LockLost {
        equipment: EquipmentId,
        session: SessionId,
        reason: EndReason,
    },
    #[error("session {session} holds no lock on {equipment} and is not in its queue{}", lost.map(|r| format!(" (its lock ended: {})", reason_text(r))).unwrap_or_default())]
    NoLock {
        equipment: EquipmentId,
        session: SessionId,
        lost: Option<EndReason>,
    },
    #[error("session {session} is not in the queue of {equipment}")]
    NotQueued {
        equipment: EquipmentId,
        session: SessionId,
    },
    #[error("{0}")]
    CannotTrade(String),
    #[error(
        "session {session} already holds or waits for {equipment} (alone, or in another lock group or pool): release that first, or use another session"
    )]
    GroupConflict {
        equipment: EquipmentId,
        session: SessionId,
    },
    #[error("session {0} not found: it never existed, ended, or expired; create a new one")]
    SessionNotFound(SessionId),
    #[error("equipment {equipment} is not locked: nothing to force-release")]
    NotLocked { equipment: EquipmentId },
    #[error(
        "fencing token {sent} is older than the current grant's token {current}: this command comes from a lock that has since ended"
    )]
    StaleFencingToken { sent: u64, current: u64 },
    #[error(
        "fencing token {sent} was never issued for {equipment} (the latest is {latest}): send the fencing_token of your own grant"
    )]
    UnissuedFencingToken {
        equipment: EquipmentId,
        sent: u64,
        latest: u64,
    },
    #[error("metadata is {size} bytes as JSON, more than the {max} allowed: keep it small")]
    MetadataTooLarge { size: usize, max: usize },
    /// The caller is authenticated but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("this action needs a session_id: open a session and lock the equipment first")]
    SessionRequired,
    #[error(
        "session {session} is not live (it never existed, ended or expired): {}",
        if *acquire_opens { "acquire a lock with it (which opens it) or create a session first" } else { "create a session and acquire a lock with it first" }
    )]
    SessionNotLive {
        session: SessionId,
        /// Whether an acquire naming it would open it (implicit sessions).
        acquire_opens: bool,
    },
}

fn busy_detail(holder: Option<&SessionId>, holder_is: &lock::Holder) -> String {
    format!(
        "{}; set queue_if_busy to wait in line",
        holding(holder, holder_is)
    )
}

/// What keeps a busy instrument from a newcomer: its holder, as far as
/// known, or those waiting ahead.
fn holding(holder: Option<&SessionId>, holder_is: &lock::Holder) -> String {
    match holder {
        // Worded as what stands in a waiter's way (one wording for both).
        Some(h) => lock::Obstacle::Holder {
            session: h.clone(),
            holder: holder_is.clone(),
        }
        .to_string(),
        None => "other sessions are waiting in its queue".into(),
    }
}

fn holder_detail(holder: Option<&SessionId>) -> String {
    match holder {
        Some(h) => format!("it is locked by session {h}"),
        None => "acquire a lock first".into(),
    }
}

fn reason_text(reason: EndReason) -> &'static str {
    match reason {
        EndReason::Released => "released",
        EndReason::Timeout => "its lease expired",
        EndReason::SessionEnded => "its session ended",
        EndReason::SessionExpired => "its session expired",
        EndReason::SessionNotLive => "its session is no longer live",
        EndReason::ExclusiveGranted => "revoked for an exclusive lock",
        EndReason::Forced => "force-released by another session",
        EndReason::Upgraded => "upgraded to exclusive",
        EndReason::WaitTimeout => "its max_wait_seconds passed",
        EndReason::Removed => "removed by an admin",
        EndReason::ClaimExpired => "not claimed within its claim window",
        EndReason::GrantedElsewhere => "its pool request was granted another instrument",
    }
}
