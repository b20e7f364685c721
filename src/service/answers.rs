//! What the use cases answer with, beyond the domain's own types: each
//! value comes with the instant it was read at (`At`).

use crate::domain::{AcquireOutcome, EquipmentId, EquipmentLocks, Session, SessionId, Timestamp};

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

/// A page of live sessions, in session id order.
pub struct SessionPage {
    pub sessions: Vec<Session>,
    /// The cursor for the next page; `None` on the last one.
    pub next_cursor: Option<SessionId>,
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

/// How busy the server is, as its state gauges show it: the live sessions,
/// and each configured instrument's locks and queue as they stand now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub sessions_live: usize,
    /// In the configured instruments' order; idle ones included.
    pub instruments: Vec<InstrumentOccupancy>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstrumentOccupancy {
    pub equipment_id: EquipmentId,
    /// 0 or 1.
    pub exclusive: usize,
    pub observers: usize,
    pub queued: usize,
}
