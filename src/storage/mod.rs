//! Storage: the one authority for sessions, locks, queues, fencing counters
//! and the event history. A `Store` runs a unit of work atomically against a
//! `Tx`, and the service awaits it; the service does the reading, deciding
//! (through the domain) and writing inside it. How units are scheduled,
//! batched and made durable, and on which threads, is each backend's own
//! business behind the async boundary. Once durable, each commit's recorded
//! events go to the store's listener in `seq` order (the live feed).
//! Backends are chosen by URL scheme in `server.rs`.
//!
//! Stores keep two indexes that the service relies on so that no request
//! scans every lock: sessions and equipment by deadline (`due`), and the
//! equipment each session holds or waits for (`equipment_of_session`).

pub mod memory;
pub mod postgres;
pub mod sqlite;
pub(crate) mod usage;

#[cfg(test)]
mod contract;
#[cfg(test)]
pub(crate) mod counting;
mod event_row;

use crate::domain::rollup::UsageBucket;
use crate::domain::{
    EquipmentId, EquipmentLocks, Event, EventKind, Role, Session, SessionId, Timestamp,
};

#[derive(Clone, Debug, thiserror::Error)]
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
    /// Forgets up to `prune.max` of the oldest events that `prune` no
    /// longer keeps, oldest first (a prefix of the history: an event
    /// recorded out of time order, after the clock was set back, goes with
    /// the events recorded around it); returns how many.
    fn prune_events(&mut self, prune: &Prune) -> Result<usize, StoreError>;

    /// Where the lock-usage rollups stand; `None` before the first run.
    fn usage_cursor(&mut self) -> Result<Option<UsageCursor>, StoreError>;
    /// Moves the rollups' cursor from `expected` (`None`: there is none
    /// yet) to `next`; `false`, changing nothing, if it is not at
    /// `expected` (another server sharing the store moved it first). The
    /// unit that moves it writes nothing else but rollups.
    fn advance_usage_cursor(
        &mut self,
        expected: Option<&UsageCursor>,
        next: &UsageCursor,
    ) -> Result<bool, StoreError>;
    /// Stores rollup buckets, each replacing the one with its span, start,
    /// instrument and user.
    fn put_usage(&mut self, buckets: &[UsageBucket]) -> Result<(), StoreError>;
    /// The stored buckets `query` selects, in no particular order.
    fn usage_buckets(&mut self, query: &UsageQuery) -> Result<Vec<UsageBucket>, StoreError>;
    /// Saves what was open at an hour boundary (an encoded tracker).
    fn put_usage_checkpoint(&mut self, at: Timestamp, state: &str) -> Result<(), StoreError>;
    /// The checkpoint saved at `at`, if any.
    fn usage_checkpoint(&mut self, at: Timestamp) -> Result<Option<String>, StoreError>;

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

/// What the history keeps (retention), as one step of pruning: the
/// events that are older than `before`, or not among the newest `keep`
/// (by `seq`), go, at most `max` of them in this step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prune {
    pub before: Option<Timestamp>,
    pub keep: Option<u64>,
    pub max: usize,
}

impl Prune {
    /// Whether the event numbered `seq`, recorded at `at`, goes, when the
    /// newest event is numbered `last`.
    pub fn drops(&self, seq: u64, at: Timestamp, last: u64) -> bool {
        self.before.is_some_and(|b| at < b)
            || self.keep.is_some_and(|k| seq <= last.saturating_sub(k))
    }
}

/// Where the lock-usage rollups stand: every event up to `last_seq` and
/// before `watermark` is summed; `state` is what was open at the watermark
/// (an encoded tracker).
#[derive(Clone, Debug, PartialEq)]
pub struct UsageCursor {
    pub last_seq: u64,
    pub watermark: Timestamp,
    pub state: String,
}

/// Which of a rollup key's values a query selects.
#[derive(Clone, Debug, PartialEq)]
pub enum Pick<T> {
    /// The total over all values (stored as its own bucket).
    Total,
    /// Each single value, not the total.
    Each,
    /// This value only.
    One(T),
}

impl<T: PartialEq> Pick<T> {
    /// Whether a bucket's key value (`None`: the total) is selected.
    pub fn selects(&self, value: Option<&T>) -> bool {
        match self {
            Self::Total => value.is_none(),
            Self::Each => value.is_some(),
            Self::One(one) => value == Some(one),
        }
    }
}

/// Rollup buckets of one span starting in [`since`, `until`).
#[derive(Clone, Debug, PartialEq)]
pub struct UsageQuery {
    pub span_ms: i64,
    pub since: Timestamp,
    pub until: Timestamp,
    pub equipment: Pick<EquipmentId>,
    pub user: Pick<String>,
}

impl UsageQuery {
    pub fn matches(&self, b: &UsageBucket) -> bool {
        b.span_ms == self.span_ms
            && b.start >= self.since
            && b.start < self.until
            && self.equipment.selects(b.equipment_id.as_ref())
            && self.user.selects(b.user.as_ref())
    }
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

/// A unit of work: reads and writes through a `Tx`. It may run more than
/// once (a backend may retry it); only its last run's writes are kept. It
/// owns what it needs, so a backend may run it on a thread of its own.
pub type Work = Box<dyn FnMut(&mut dyn Tx) -> Result<(), StoreError> + Send>;

/// Told the recorded events of every commit, in `seq` order, once they are
/// durable (see `Store::listen`), and whose commit they were.
pub type CommitListener = Box<dyn Fn(Vec<Event>, Origin) + Send + Sync>;

/// Who committed events a listener hears of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// This server: it also told its own live subscribers what the commit
    /// meant for them (grants, lost locks, queue places).
    Here,
    /// Another server sharing the store: nobody here knows more than the
    /// events say.
    Elsewhere,
}

/// The boundary between the use cases and a backend. The service asks for
/// a unit of work and awaits it; how units are scheduled, batched, made
/// durable and run off the async workers is the backend's business.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Runs `work` as one atomic unit: all its writes are kept or none are.
    /// Completes once they are durable (as the backend promises: see
    /// `durable`), never before.
    async fn transaction(&self, work: Work) -> Result<(), StoreError>;

    /// Runs `work` against the committed state as a read: no write
    /// transaction, no batch to join, no commit or fsync to wait for. For
    /// views and for checks that anyone can trigger (verifying a bearer
    /// token), which must not be a way to load the disk. `work` must only
    /// read; SQLite refuses a write here.
    async fn read(&self, work: Work) -> Result<(), StoreError>;

    /// Hands every commit's recorded events, in `seq` order and without
    /// gaps, to `listener` once they are durable (the live feed). Set once,
    /// before the first transaction; a second call is ignored.
    fn listen(&self, listener: CommitListener);

    /// How the store names itself in logs (never includes secrets).
    fn describe(&self) -> String;

    /// Whether what it stores outlives the process (tokens need that).
    fn durable(&self) -> bool;

    /// The clock every server sharing this store must use, if the store
    /// has one (PostgreSQL: the database's), so that replicas agree on
    /// when a lease ends.
    fn clock(&self) -> Option<std::sync::Arc<dyn crate::clock::Clock>> {
        None
    }
}

impl dyn Store {
    /// Runs `op` as one transaction (see `Store::transaction`) and returns
    /// what its last run returned.
    pub async fn write<R: Send + 'static>(
        &self,
        op: impl FnMut(&mut dyn Tx) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (work, result) = returning(op);
        self.transaction(work).await?;
        result.take()
    }

    /// Runs `op` as a read (see `Store::read`) and returns what it returned.
    pub async fn query<R: Send + 'static>(
        &self,
        op: impl FnMut(&mut dyn Tx) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (work, result) = returning(op);
        self.read(work).await?;
        result.take()
    }
}

/// Where a unit of work leaves what it returned, for its caller to take
/// once the store says it ran.
pub struct Returned<R>(std::sync::Arc<std::sync::Mutex<Option<R>>>);

impl<R> Returned<R> {
    /// The value of the unit's last run.
    pub fn take(&self) -> Result<R, StoreError> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| StoreError::Unavailable("the store did not run the work".into()))
    }
}

/// `op` as a `Work`, and where its value will be.
pub fn returning<R: Send + 'static>(
    mut op: impl FnMut(&mut dyn Tx) -> Result<R, StoreError> + Send + 'static,
) -> (Work, Returned<R>) {
    let slot = std::sync::Arc::new(std::sync::Mutex::new(None));
    let out = slot.clone();
    let work: Work = Box::new(move |tx| {
        let value = op(tx)?;
        *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
        Ok(())
    });
    (work, Returned(slot))
}
