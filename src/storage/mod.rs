//! Storage: the one authority for sessions, locks, queues, fencing counters
//! and the event history. A `Store` runs a unit of work atomically against a
//! `Tx`; the service does the reading, deciding (through the domain) and
//! writing inside it. Backends are chosen by URL scheme in `server.rs`.
//!
//! Stores keep two indexes that the service relies on so that no request
//! scans every lock: sessions and equipment by deadline (`due`), and the
//! equipment each session holds or waits for (`equipment_of_session`).

pub mod memory;

use crate::domain::{EquipmentId, EquipmentLocks, Event, Session, SessionId, Timestamp};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot serve requests right now (disk full, read-only,
    /// locked too long, connection lost). Nothing was changed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
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

    fn record_events(&mut self, events: &[Event]) -> Result<(), StoreError>;
    /// The newest `limit` events of an equipment, oldest first.
    fn equipment_events(
        &mut self,
        id: &EquipmentId,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;
    /// The newest `limit` events naming a session, oldest first.
    fn session_events(&mut self, id: &SessionId, limit: usize) -> Result<Vec<Event>, StoreError>;
}

pub type Work<'a> = dyn FnMut(&mut dyn Tx) -> Result<(), StoreError> + Send + 'a;

pub trait Store: Send + Sync + 'static {
    /// Runs `work` as one atomic unit: all its writes are kept or none are.
    /// May run `work` again if the backend asks for a retry.
    fn transaction(&self, work: &mut Work<'_>) -> Result<(), StoreError>;

    /// How the store names itself in logs (never includes secrets).
    fn describe(&self) -> String;
}
