//! What the service is told: its policy, and the inputs of the use cases
//! that take more than an id or two, with the bounds they are checked
//! against.

use serde_json::{Map, Value};

use super::ServiceError;
use crate::domain::{Actor, EquipmentId, LockMode, LockPolicy, PriorityCaps, SessionId, Timeout};

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
    /// The highest acquire priority each role may ask for.
    pub priority_caps: PriorityCaps,
    /// How soon a lock granted from the queue must be claimed, unless the
    /// request says (none: no claim needed).
    pub claim_window: Timeout,
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
            priority_caps: PriorityCaps::default(),
            claim_window: Timeout::NONE,
        }
    }
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
    pub session_id: SessionId,
    pub mode: LockMode,
    pub timeout: Option<Timeout>,
    pub queue_if_busy: bool,
    /// -10..=10 (checked by the caller); 0 is the ordinary FIFO.
    pub priority: i8,
    /// How long it may wait if queued (`max_wait_seconds`; none: as long
    /// as it takes).
    pub max_wait: Timeout,
    /// `claim_within_seconds`: the claim window if granted from the queue
    /// (`None`: the server's default).
    pub claim_within: Option<Timeout>,
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

/// The default page size of the session list.
pub const DEFAULT_SESSION_PAGE: usize = 100;

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

/// A page size as asked, if it is one the store answers (1 to 1000).
pub(super) fn too_many(limit: usize) -> Result<usize, ServiceError> {
    if (1..=1000).contains(&limit) {
        Ok(limit)
    } else {
        Err(ServiceError::Invalid(format!(
            "limit must be between 1 and 1000, got {limit}"
        )))
    }
}
