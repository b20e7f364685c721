//! Response shapes shared by several resources: sessions, locks and queue
//! entries as the brief shows them, computed at the instant the service
//! read the state (`now`), so `time_remaining` is never stale.

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::domain::{EquipmentId, EquipmentLocks, Grant, LockMode, QueueEntry, Session, Timestamp};

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    pub session_id: String,
    pub client_name: String,
    pub client_ip: Option<String>,
    #[schema(example = "2025-11-08T10:30:00.000Z")]
    pub created_at: String,
    pub last_activity: String,
    /// Seconds until the session expires; null for no timeout.
    pub time_remaining: Option<f64>,
    pub duration_seconds: f64,
    /// 0 means no timeout.
    pub timeout_seconds: f64,
    pub expires_at: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// The user who owns it (with authentication on).
    pub user: Option<String>,
}

impl SessionView {
    pub fn new(s: &Session, now: Timestamp) -> Self {
        Self {
            session_id: s.id.to_string(),
            client_name: s.client_name.clone(),
            client_ip: s.client_ip.clone(),
            created_at: s.created_at.to_rfc3339(),
            last_activity: s.last_activity.to_rfc3339(),
            time_remaining: s.time_remaining(now),
            duration_seconds: s.duration_seconds(now),
            timeout_seconds: s.timeout.as_seconds(),
            expires_at: s.deadline().map(Timestamp::to_rfc3339),
            metadata: s.metadata.clone(),
            user: s.user.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LockView {
    pub lock_id: String,
    pub equipment_id: String,
    pub session_id: String,
    pub lock_mode: LockMode,
    pub acquired_at: String,
    pub last_activity: String,
    /// 0 means no timeout.
    pub timeout_seconds: f64,
    /// Seconds until the lock expires; null for no timeout.
    pub time_remaining: Option<f64>,
    pub expires_at: Option<String>,
    /// Only grows, per equipment; send it with commands to refuse stale ones.
    pub fencing_token: u64,
    /// The holder's user (with authentication on) and client name.
    pub user: Option<String>,
    pub client_name: Option<String>,
    /// A lock handed over from the queue with a claim window: renew it,
    /// command, or ask again before this or it passes on. Absent once
    /// claimed (or when no claim is needed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_by: Option<String>,
    /// The lock group (or pool request) this lock is one member of: all
    /// its members are held, renewed and released together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The configured group (`[[group]]`) it was acquired as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_name: Option<String>,
}

impl LockView {
    pub fn new(equipment: &EquipmentId, g: &Grant, now: Timestamp) -> Self {
        Self {
            lock_id: g.lock_id.clone(),
            equipment_id: equipment.to_string(),
            session_id: g.session_id.to_string(),
            lock_mode: g.mode,
            acquired_at: g.acquired_at.to_rfc3339(),
            last_activity: g.last_activity.to_rfc3339(),
            timeout_seconds: g.timeout.as_seconds(),
            time_remaining: crate::domain::time::time_remaining(g.deadline(), now),
            expires_at: g.deadline().map(Timestamp::to_rfc3339),
            fencing_token: g.fencing_token,
            user: g.holder.user.clone(),
            client_name: g.holder.client_name.clone(),
            claim_by: g.claim_by.map(Timestamp::to_rfc3339),
            group_id: g.group.as_ref().map(|g| g.group_id.clone()),
            group_name: g
                .group
                .as_ref()
                .and_then(|g| g.name.as_ref().map(|n| n.to_string())),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueEntryView {
    pub queue_id: String,
    pub equipment_id: String,
    pub session_id: String,
    pub lock_mode: LockMode,
    /// 1-based: the next in line is 1.
    pub position: usize,
    pub queued_at: String,
    /// The lock timeout this waiter asked for, applied when it is granted.
    pub timeout_seconds: f64,
    pub user: Option<String>,
    pub client_name: Option<String>,
    /// The priority it asked for (-10..=10; 0 by default). The queue is
    /// in the order it is served: priority plus one step per
    /// LABLINK_PRIORITY_AGING_SEC waited, then arrival.
    pub priority: i8,
    /// When the place is dropped unless granted first (`max_wait_seconds`);
    /// null: it waits as long as it takes.
    pub wait_expires_at: Option<String>,
    /// The lock group (or pool request) this place is one of: it waits in
    /// each of its instruments' queues at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
}

impl QueueEntryView {
    pub fn new(equipment: &EquipmentId, e: &QueueEntry, position: usize) -> Self {
        Self {
            queue_id: e.queue_id.clone(),
            equipment_id: equipment.to_string(),
            session_id: e.session_id.to_string(),
            lock_mode: e.mode,
            position,
            queued_at: e.queued_at.to_rfc3339(),
            timeout_seconds: e.timeout.as_seconds(),
            user: e.holder.user.clone(),
            client_name: e.holder.client_name.clone(),
            priority: e.priority,
            wait_expires_at: e.wait_deadline.map(|at| at.to_rfc3339()),
            group_id: e.group.as_ref().map(|g| g.group_id.clone()),
        }
    }

    pub fn all(locks: &EquipmentLocks) -> Vec<Self> {
        locks
            .queue
            .iter()
            .enumerate()
            .map(|(i, e)| Self::new(&locks.equipment_id, e, i + 1))
            .collect()
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LockStatusView {
    pub equipment_id: String,
    /// True when a session holds the exclusive lock.
    pub locked: bool,
    /// "exclusive" when locked, "observer" when only observed, else null.
    pub lock_mode: Option<LockMode>,
    /// The exclusive holder.
    pub session_id: Option<String>,
    pub lock_id: Option<String>,
    pub acquired_at: Option<String>,
    pub time_remaining: Option<f64>,
    pub expires_at: Option<String>,
    pub fencing_token: Option<u64>,
    pub queue_length: usize,
    pub observer_count: usize,
    pub observer_sessions: Vec<String>,
    /// The exclusive holder's user (with authentication on) and client name.
    pub user: Option<String>,
    pub client_name: Option<String>,
    /// Set while the equipment is out of service: new requests get 409
    /// `in_maintenance` or wait in the queue until it ends. Absent in
    /// service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceView>,
    /// The lock group the exclusive holder holds it as part of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// A lock handed over from the queue with a claim window: unless its
    /// holder renews, commands or asks again before this (RFC 3339), it
    /// passes on. Absent outside a claim window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_by: Option<String>,
}

/// An equipment out of service.
#[derive(Debug, Serialize, ToSchema)]
pub struct MaintenanceView {
    pub reason: String,
    pub since: String,
    /// When service resumes by itself; null: when an admin ends it.
    pub until: Option<String>,
    /// The admin who started it (with authentication on).
    pub user: Option<String>,
    /// The configured lock group whose maintenance this is (absent: the
    /// instrument's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl MaintenanceView {
    pub fn new(m: &crate::domain::Maintenance) -> Self {
        Self {
            reason: m.reason.clone(),
            since: m.since.to_rfc3339(),
            until: m.until.map(Timestamp::to_rfc3339),
            user: m.user.clone(),
            group: m.group.as_ref().map(ToString::to_string),
        }
    }
}

impl LockStatusView {
    pub fn new(locks: &EquipmentLocks, now: Timestamp) -> Self {
        let holder = locks.exclusive.as_ref();
        let lock_mode = match (holder, locks.observers.is_empty()) {
            (Some(_), _) => Some(LockMode::Exclusive),
            (None, false) => Some(LockMode::Observer),
            (None, true) => None,
        };
        Self {
            equipment_id: locks.equipment_id.to_string(),
            locked: holder.is_some(),
            lock_mode,
            session_id: holder.map(|g| g.session_id.to_string()),
            lock_id: holder.map(|g| g.lock_id.clone()),
            acquired_at: holder.map(|g| g.acquired_at.to_rfc3339()),
            time_remaining: holder
                .and_then(|g| crate::domain::time::time_remaining(g.deadline(), now)),
            expires_at: holder.and_then(|g| g.deadline()).map(Timestamp::to_rfc3339),
            fencing_token: holder.map(|g| g.fencing_token),
            queue_length: locks.queue.len(),
            observer_count: locks.observers.len(),
            observer_sessions: locks
                .observers
                .iter()
                .map(|g| g.session_id.to_string())
                .collect(),
            user: holder.and_then(|g| g.holder.user.clone()),
            client_name: holder.and_then(|g| g.holder.client_name.clone()),
            maintenance: locks.maintenance_at(now).map(MaintenanceView::new),
            group_id: holder
                .and_then(|g| g.group.as_ref())
                .map(|g| g.group_id.clone()),
            claim_by: holder.and_then(|g| g.claim_by).map(Timestamp::to_rfc3339),
        }
    }
}
