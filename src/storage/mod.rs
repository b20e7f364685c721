//! Storage: the one authority for sessions, locks, queues, fencing counters
//! and the event history. A `Store` runs a unit of work atomically against a
//! `Tx`; the service does the reading, deciding (through the domain) and
//! writing inside it. Backends are chosen by URL scheme in `server.rs`.
//!
//! Stores keep two indexes that the service relies on so that no request
//! scans every lock: sessions and equipment by deadline (`due`), and the
//! equipment each session holds or waits for (`equipment_of_session`).

pub mod memory;
pub mod sqlite;

#[cfg(test)]
mod contract;

use crate::domain::{
    EquipmentId, EquipmentLocks, Event, EventKind, Role, Session, SessionId, Timestamp,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot serve requests right now (disk full, read-only,
    /// locked too long, connection lost). Nothing was changed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A stored row could not be read back (a bug or a foreign write).
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

/// Something whose deadline the store indexes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Due {
    Session(SessionId),
    Equipment(EquipmentId),
}

/// One atomic unit of work's view of the store.
pub trait Tx {
    fn session(&mut self, id: &SessionId) -> Result<Option<Session>, StoreError>;
    fn sessions(&mut self) -> Result<Vec<Session>, StoreError>;
    fn save_session(&mut self, session: &Session) -> Result<(), StoreError>;
    fn delete_session(&mut self, id: &SessionId) -> Result<(), StoreError>;

    /// The lock state of `id`; a fresh one if it was never locked.
    fn equipment_locks(&mut self, id: &EquipmentId) -> Result<EquipmentLocks, StoreError>;
    fn save_equipment_locks(&mut self, locks: &EquipmentLocks) -> Result<(), StoreError>;
    /// Every equipment that someone holds or waits for.
    fn busy_equipment(&mut self) -> Result<Vec<EquipmentLocks>, StoreError>;
    fn equipment_of_session(&mut self, id: &SessionId) -> Result<Vec<EquipmentId>, StoreError>;

    /// Up to `max` things whose deadline is at or before `now`, earliest first.
    fn due(&mut self, now: Timestamp, max: usize) -> Result<Vec<Due>, StoreError>;
    fn next_deadline(&mut self) -> Result<Option<Timestamp>, StoreError>;

    /// Appends events to the history, giving each its `seq`.
    fn record_events(&mut self, events: &mut [Event]) -> Result<(), StoreError>;
    /// The newest `limit` events of an equipment, oldest first.
    fn equipment_events(
        &mut self,
        id: &EquipmentId,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;
    /// The newest `limit` events naming a session, oldest first.
    fn session_events(&mut self, id: &SessionId, limit: usize) -> Result<Vec<Event>, StoreError>;
    /// Events matching `query`, oldest first.
    fn query_events(&mut self, query: &EventQuery) -> Result<Vec<Event>, StoreError>;
    /// The `seq` of the newest recorded event (0 if none).
    fn last_event_seq(&mut self) -> Result<u64, StoreError>;
    /// Forgets events older than `before`; returns how many.
    fn prune_events(&mut self, before: Timestamp) -> Result<usize, StoreError>;

    fn save_token(&mut self, token: &TokenRecord) -> Result<(), StoreError>;
    /// The token whose SHA-256 (hex) is `hash`, revoked or not.
    fn token_by_hash(&mut self, hash: &str) -> Result<Option<TokenRecord>, StoreError>;
    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Marks a token revoked; `false` if there is no such live token.
    fn revoke_token(&mut self, id: &str, at: Timestamp) -> Result<bool, StoreError>;
    /// A number that changes whenever a token is created or revoked.
    fn tokens_version(&mut self) -> Result<u64, StoreError>;
}

/// An API token as stored: never the token itself, only its hash.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TokenRecord {
    pub id: String,
    pub user: String,
    pub role: Role,
    /// SHA-256 of the token, hex.
    #[serde(skip)]
    pub hash: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// A filter over the whole history. Every field narrows the result.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventQuery {
    pub equipment_id: Option<EquipmentId>,
    /// Events that name the session (as `session_id` or `forced_by`).
    pub session_id: Option<SessionId>,
    pub kind: Option<EventKind>,
    /// At or after this instant.
    pub since: Option<Timestamp>,
    /// Before this instant.
    pub until: Option<Timestamp>,
    /// Only events with a larger `seq` (the paging cursor).
    pub after: Option<u64>,
    pub limit: usize,
}

impl EventQuery {
    pub fn matches(&self, e: &Event) -> bool {
        self.equipment_id
            .as_ref()
            .is_none_or(|id| e.equipment_id.as_ref() == Some(id))
            && self
                .session_id
                .as_ref()
                .is_none_or(|id| e.names_session(id))
            && self.kind.is_none_or(|k| e.event == k)
            && self.since.is_none_or(|t| e.timestamp >= t)
            && self.until.is_none_or(|t| e.timestamp < t)
            && self.after.is_none_or(|a| e.seq.is_some_and(|s| s > a))
    }
}

pub type Work<'a> = dyn FnMut(&mut dyn Tx) -> Result<(), StoreError> + Send + 'a;

pub trait Store: Send + Sync + 'static {
    /// Runs `work` as one atomic unit: all its writes are kept or none are.
    /// May run `work` again if the backend asks for a retry.
    fn transaction(&self, work: &mut Work<'_>) -> Result<(), StoreError>;

    /// Runs `work` against the committed state as a read: no write
    /// transaction, no batch to join, no commit or fsync to wait for. For
    /// checks that anyone can trigger (verifying a bearer token), which
    /// must not be a way to load the disk. `work` must only read; SQLite
    /// refuses a write here.
    fn read(&self, work: &mut Work<'_>) -> Result<(), StoreError>;

    /// How the store names itself in logs (never includes secrets).
    fn describe(&self) -> String;

    /// Whether a transaction may block the thread on I/O (the service then
    /// takes turns on it).
    fn blocks(&self) -> bool;

    /// Whether what it stores outlives the process (tokens need that).
    fn durable(&self) -> bool;

    /// Group commit, for stores whose commits are costly (an fsync each).
    fn group_commit(&self) -> Option<&dyn GroupCommit> {
        None
    }
}

/// Group commit: several units of work share one transaction and one
/// commit. Each unit runs in its own savepoint, so a failing one is undone
/// alone. Nothing is acknowledged until the batch that holds it commits:
/// callers wait on `finished` for their batch's number. The service decides
/// when a batch ends (when nobody else is waiting to add to it).
pub trait GroupCommit: Send + Sync {
    /// Runs `work` in the open batch (opening one if none); returns the
    /// batch's number.
    fn run_in_batch(&self, work: &mut Work<'_>) -> Result<u64, StoreError>;
    /// How many units the open batch holds.
    fn batch_len(&self) -> usize;
    /// Whether `batch` is the open batch (not yet committed).
    fn is_open(&self, batch: u64) -> bool;
    /// Whether a committed batch is still being made durable. A batch
    /// committed meanwhile would only wait for the next sync: better to
    /// keep it open and let more work join it.
    fn syncing(&self) -> bool {
        false
    }
    /// Commits the open batch, if any. Its waiters hear through `finished`
    /// once it is durable, which may be later (the store syncs it without
    /// holding up the next batch).
    fn commit_batch(&self) -> Result<(), StoreError>;
    /// Changes whenever a batch finishes (its value: that batch's number).
    fn finished(&self) -> tokio::sync::watch::Receiver<u64>;
    /// How batch `batch` ended; `None` while it is still open.
    fn outcome(&self, batch: u64) -> Option<Result<(), StoreError>>;
}
