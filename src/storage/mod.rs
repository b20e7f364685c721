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
#[cfg(test)]
pub(crate) mod counting;

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
    /// Up to `limit` sessions with an id greater than `after`, in id order
    /// (a page of the session list; the last id is the next cursor).
    fn sessions_page(
        &mut self,
        after: Option<&SessionId>,
        limit: usize,
    ) -> Result<Vec<Session>, StoreError>;
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
    /// A page of `query` and where the next one starts: after the last
    /// `seq` returned; with nothing new, after the cursor given, but never
    /// past the newest recorded event (a poller would skip what comes next).
    fn event_page(&mut self, query: &EventQuery) -> Result<EventPage, StoreError> {
        let events = self.query_events(query)?;
        let next_cursor = match (events.last(), query.after) {
            (Some(last), _) => last.seq,
            (None, Some(after)) => Some(after.min(self.last_event_seq()?)),
            (None, None) => None,
        };
        Ok(EventPage {
            events,
            next_cursor,
        })
    }
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

/// One page of the history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventPage {
    /// Oldest first.
    pub events: Vec<Event>,
    /// The `after` of the next page; `None` when nothing is recorded and no
    /// cursor was given.
    pub next_cursor: Option<u64>,
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
    /// Only events with a larger `seq` (the paging cursor; any value, also
    /// past the newest event).
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
/// each unit gets its batch's `BatchFate`, which the store settles once the
/// batch is durable or has failed. The service decides when a batch ends
/// (when nobody else is waiting to add to it).
pub trait GroupCommit: Send + Sync {
    /// Runs `work` in the open batch (opening one if none); returns that
    /// batch's fate.
    fn run_in_batch(&self, work: &mut Work<'_>) -> Result<BatchFate, StoreError>;
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
    /// Commits the open batch, if any. Its units hear through their
    /// `BatchFate` once it is durable, which may be later (the store syncs
    /// it without holding up the next batch).
    fn commit_batch(&self) -> Result<(), StoreError>;
    /// Changes whenever committed batches have been made durable (its
    /// value: the last such batch's number): wakes whoever waits for a sync
    /// to end before committing the open batch. Never a batch's outcome:
    /// that is its `BatchFate`'s alone.
    fn finished(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// How one group-commit batch ended, as each unit of work in it holds it.
/// The store settles it exactly once (`BatchSettler`), so every unit learns
/// its own batch's fate whatever happens to other batches; a batch the
/// store drops unsettled (it closed first) failed.
#[derive(Clone, Debug)]
pub struct BatchFate {
    number: u64,
    settled: tokio::sync::watch::Receiver<Option<Result<(), String>>>,
}

impl BatchFate {
    /// The batch's number (batches are numbered in the order they open).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// How the batch ended; `None` while it is open or being made durable.
    pub fn outcome(&self) -> Option<Result<(), StoreError>> {
        // Looked at first: a settler sets the value before it goes, so once
        // it is gone the value is final (looked at after the value, it might
        // have been settled and gone in between).
        let gone = self.settled.has_changed().is_err();
        match &*self.settled.borrow() {
            Some(Ok(())) => Some(Ok(())),
            Some(Err(why)) => Some(Err(StoreError::Unavailable(format!(
                "the commit failed: {why}"
            )))),
            None => gone.then(|| {
                Err(StoreError::Unavailable(
                    "the store closed before the batch was committed".into(),
                ))
            }),
        }
    }

    /// Waits until the batch has ended; returns how.
    pub async fn settled(&mut self) -> Result<(), StoreError> {
        // An error here means the settler is gone: `outcome` says so.
        let _ = self.settled.wait_for(Option::is_some).await;
        self.outcome().unwrap_or_else(|| {
            Err(StoreError::Unavailable(
                "the store closed before the batch was committed".into(),
            ))
        })
    }
}

/// The store's side of a batch's fate: settles it once, for every unit in
/// the batch. Dropped unsettled, the batch counts as failed.
#[derive(Debug)]
pub struct BatchSettler {
    number: u64,
    sender: tokio::sync::watch::Sender<Option<Result<(), String>>>,
}

impl BatchSettler {
    pub fn new(number: u64) -> Self {
        Self {
            number,
            sender: tokio::sync::watch::channel(None).0,
        }
    }

    pub fn number(&self) -> u64 {
        self.number
    }

    /// A handle on the batch's fate, for a unit of work that joins it.
    pub fn fate(&self) -> BatchFate {
        BatchFate {
            number: self.number,
            settled: self.sender.subscribe(),
        }
    }

    /// Ends the batch: tells every unit in it how.
    pub fn settle(self, outcome: Result<(), String>) {
        let _previous = self.sender.send_replace(Some(outcome));
    }
}
