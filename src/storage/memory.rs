//! The in-memory store: everything in one mutex-guarded state, lost on
//! restart. For throwaway use and tests. Keeps the last 100 events per
//! equipment and per session (semantics.md, Events) and the last 10,000
//! overall. A transaction that fails is undone: writes are logged with the
//! value they replaced, and events are applied only on commit.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::{Due, EventQuery, Store, StoreError, TokenRecord, Tx, Work};
use crate::domain::{EquipmentId, EquipmentLocks, Event, Session, SessionId, Timestamp};

/// Events kept per equipment and per session.
pub const EVENTS_KEPT: usize = 100;
/// Events kept in the overall history.
pub const ALL_EVENTS_KEPT: usize = 10_000;
/// Ended sessions whose history is still kept; older ones are forgotten so
/// that session churn cannot grow memory without bound.
pub const ENDED_SESSION_HISTORIES_KEPT: usize = 10_000;

#[derive(Default)]
struct State {
    sessions: HashMap<SessionId, Session>,
    equipment: HashMap<EquipmentId, EquipmentLocks>,
    participants: HashMap<SessionId, BTreeSet<EquipmentId>>,
    deadlines: BTreeSet<(Timestamp, Due)>,
    deadline_of: HashMap<Due, Timestamp>,
    // Each event is shared by the histories it belongs to, not copied.
    all_events: VecDeque<Arc<Event>>,
    equipment_events: HashMap<EquipmentId, VecDeque<Arc<Event>>>,
    session_events: HashMap<SessionId, VecDeque<Arc<Event>>>,
    ended_sessions: VecDeque<SessionId>,
    last_seq: u64,
    tokens: Vec<TokenRecord>,
    tokens_version: u64,
}

impl State {
    fn set_deadline(&mut self, key: Due, deadline: Option<Timestamp>) {
        if let Some(old) = self.deadline_of.remove(&key) {
            self.deadlines.remove(&(old, key.clone()));
        }
        if let Some(at) = deadline {
            self.deadlines.insert((at, key.clone()));
            self.deadline_of.insert(key, at);
        }
    }

    /// Stores a session; returns the one it replaced.
    fn put_session(&mut self, session: Session) -> Option<Session> {
        self.set_deadline(Due::Session(session.id.clone()), session.deadline());
        self.sessions.insert(session.id.clone(), session)
    }

    fn remove_session(&mut self, id: &SessionId) -> Option<Session> {
        self.set_deadline(Due::Session(id.clone()), None);
        self.sessions.remove(id)
    }

    /// Replaces (or with `None`, removes) an equipment's locks, keeping the
    /// participant and deadline indexes in step; returns what it replaced.
    fn put_locks(
        &mut self,
        id: &EquipmentId,
        locks: Option<EquipmentLocks>,
    ) -> Option<EquipmentLocks> {
        let before: BTreeSet<SessionId> = self
            .equipment
            .get(id)
            .map(|old| old.participants().cloned().collect())
            .unwrap_or_default();
        let after: BTreeSet<SessionId> = locks
            .iter()
            .flat_map(|l| l.participants().cloned())
            .collect();
        for gone in before.difference(&after) {
            if let Some(set) = self.participants.get_mut(gone) {
                set.remove(id);
                if set.is_empty() {
                    self.participants.remove(gone);
                }
            }
        }
        for new in after.difference(&before) {
            self.participants
                .entry(new.clone())
                .or_default()
                .insert(id.clone());
        }
        let deadline = locks.as_ref().and_then(EquipmentLocks::next_deadline);
        self.set_deadline(Due::Equipment(id.clone()), deadline);
        match locks {
            Some(locks) => self.equipment.insert(id.clone(), locks),
            None => self.equipment.remove(id),
        }
    }

    fn append_event(&mut self, event: Event) {
        let event = Arc::new(event);
        let capped = |events: &mut VecDeque<Arc<Event>>, cap: usize, event: &Arc<Event>| {
            if events.len() == cap {
                events.pop_front();
            }
            events.push_back(event.clone());
        };
        if let Some(equipment) = &event.equipment_id {
            let events = self.equipment_events.entry(equipment.clone()).or_default();
            capped(events, EVENTS_KEPT, &event);
        }
        for session in event.session_id.iter().chain(&event.forced_by) {
            let events = self.session_events.entry(session.clone()).or_default();
            capped(events, EVENTS_KEPT, &event);
        }
        capped(&mut self.all_events, ALL_EVENTS_KEPT, &event);
    }

    fn forget_ended_history(&mut self, id: &SessionId) {
        self.ended_sessions.push_back(id.clone());
        if self.ended_sessions.len() > ENDED_SESSION_HISTORIES_KEPT
            && let Some(oldest) = self.ended_sessions.pop_front()
            && !self.sessions.contains_key(&oldest)
        {
            self.session_events.remove(&oldest);
        }
    }
}

fn newest(events: Option<&VecDeque<Arc<Event>>>, limit: usize) -> Vec<Event> {
    events.map_or_else(Vec::new, |events| {
        events
            .iter()
            .skip(events.len().saturating_sub(limit))
            .map(|e| Event::clone(e))
            .collect()
    })
}

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn transaction(&self, work: &mut Work<'_>) -> Result<(), StoreError> {
        // The state is consistent whenever the lock is free (a failed
        // transaction is undone below), so a poisoned lock is safe to reuse.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let last_seq = state.last_seq;
        let mut tx = MemoryTx {
            state: &mut state,
            old_sessions: HashMap::new(),
            old_locks: HashMap::new(),
            ended: Vec::new(),
            events: Vec::new(),
        };
        match work(&mut tx) {
            Ok(()) => {
                let MemoryTx {
                    state,
                    ended,
                    events,
                    ..
                } = tx;
                for id in ended {
                    state.forget_ended_history(&id);
                }
                for event in events {
                    state.append_event(event);
                }
                Ok(())
            }
            Err(e) => {
                let MemoryTx {
                    state,
                    old_sessions,
                    old_locks,
                    ..
                } = tx;
                for (id, old) in old_sessions {
                    match old {
                        Some(session) => {
                            state.put_session(session);
                        }
                        None => {
                            state.remove_session(&id);
                        }
                    }
                }
                for (id, old) in old_locks {
                    state.put_locks(&id, old);
                }
                state.last_seq = last_seq;
                Err(e)
            }
        }
    }

    fn read(&self, work: &mut Work<'_>) -> Result<(), StoreError> {
        // Nothing here touches a disk: a read is a transaction that writes
        // nothing.
        self.transaction(work)
    }

    fn describe(&self) -> String {
        "memory".into()
    }

    fn blocks(&self) -> bool {
        false
    }

    fn durable(&self) -> bool {
        false
    }
}

struct MemoryTx<'a> {
    state: &'a mut State,
    /// What each touched row was before this transaction (`None`: absent).
    old_sessions: HashMap<SessionId, Option<Session>>,
    old_locks: HashMap<EquipmentId, Option<EquipmentLocks>>,
    ended: Vec<SessionId>,
    events: Vec<Event>,
}

impl MemoryTx<'_> {
    /// Keeps the first value a row had in this transaction, for undoing:
    /// the value just replaced is moved here, never copied.
    fn remember_session(&mut self, id: &SessionId, replaced: Option<Session>) {
        self.old_sessions.entry(id.clone()).or_insert(replaced);
    }
}

impl Tx for MemoryTx<'_> {
    fn session(&mut self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        Ok(self.state.sessions.get(id).cloned())
    }

    fn sessions(&mut self) -> Result<Vec<Session>, StoreError> {
        Ok(self.state.sessions.values().cloned().collect())
    }

    fn save_session(&mut self, session: &Session) -> Result<(), StoreError> {
        let replaced = self.state.put_session(session.clone());
        self.remember_session(&session.id, replaced);
        Ok(())
    }

    fn delete_session(&mut self, id: &SessionId) -> Result<(), StoreError> {
        let removed = self.state.remove_session(id);
        if removed.is_some() {
            self.ended.push(id.clone());
        }
        self.remember_session(id, removed);
        Ok(())
    }

    fn equipment_locks(&mut self, id: &EquipmentId) -> Result<EquipmentLocks, StoreError> {
        Ok(self
            .state
            .equipment
            .get(id)
            .cloned()
            .unwrap_or_else(|| EquipmentLocks::new(id.clone())))
    }

    fn save_equipment_locks(&mut self, locks: &EquipmentLocks) -> Result<(), StoreError> {
        let id = &locks.equipment_id;
        let replaced = self.state.put_locks(id, Some(locks.clone()));
        self.old_locks.entry(id.clone()).or_insert(replaced);
        Ok(())
    }

    fn busy_equipment(&mut self) -> Result<Vec<EquipmentLocks>, StoreError> {
        Ok(self
            .state
            .equipment
            .values()
            .filter(|l| !l.is_idle())
            .cloned()
            .collect())
    }

    fn equipment_of_session(&mut self, id: &SessionId) -> Result<Vec<EquipmentId>, StoreError> {
        Ok(self
            .state
            .participants
            .get(id)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default())
    }

    fn due(&mut self, now: Timestamp, max: usize) -> Result<Vec<Due>, StoreError> {
        Ok(self
            .state
            .deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(max)
            .map(|(_, key)| key.clone())
            .collect())
    }

    fn next_deadline(&mut self) -> Result<Option<Timestamp>, StoreError> {
        Ok(self.state.deadlines.first().map(|(at, _)| *at))
    }

    fn record_events(&mut self, events: &mut [Event]) -> Result<(), StoreError> {
        for event in events {
            self.state.last_seq += 1;
            event.seq = Some(self.state.last_seq);
            self.events.push(event.clone());
        }
        Ok(())
    }

    fn equipment_events(
        &mut self,
        id: &EquipmentId,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        Ok(newest(self.state.equipment_events.get(id), limit))
    }

    fn session_events(&mut self, id: &SessionId, limit: usize) -> Result<Vec<Event>, StoreError> {
        Ok(newest(self.state.session_events.get(id), limit))
    }

    fn last_event_seq(&mut self) -> Result<u64, StoreError> {
        Ok(self
            .state
            .all_events
            .back()
            .and_then(|e| e.seq)
            .unwrap_or(0))
    }

    fn query_events(&mut self, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        // The history is in seq order: start right after the cursor.
        let after = query.after.unwrap_or(0);
        let start = self
            .state
            .all_events
            .partition_point(|e| e.seq.is_some_and(|s| s <= after));
        Ok(self
            .state
            .all_events
            .range(start..)
            .filter(|e| query.matches(e))
            .take(query.limit)
            .map(|e| Event::clone(e))
            .collect())
    }

    fn prune_events(&mut self, before: Timestamp) -> Result<usize, StoreError> {
        let old = |e: &Arc<Event>| e.timestamp < before;
        let mut pruned = 0;
        while self.state.all_events.front().is_some_and(old) {
            self.state.all_events.pop_front();
            pruned += 1;
        }
        for events in self
            .state
            .equipment_events
            .values_mut()
            .chain(self.state.session_events.values_mut())
        {
            while events.front().is_some_and(old) {
                events.pop_front();
            }
        }
        Ok(pruned)
    }

    // Token changes are not undone with a failed transaction: every token
    // operation is the only write of its transaction.
    fn save_token(&mut self, token: &TokenRecord) -> Result<(), StoreError> {
        self.state.tokens.push(token.clone());
        self.state.tokens_version += 1;
        Ok(())
    }

    fn token_by_hash(&mut self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.state.tokens.iter().find(|t| t.hash == hash).cloned())
    }

    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        Ok(self.state.tokens.clone())
    }

    fn revoke_token(&mut self, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        let found = self
            .state
            .tokens
            .iter_mut()
            .find(|t| t.id == id && t.revoked_at.is_none());
        let Some(token) = found else { return Ok(false) };
        token.revoked_at = Some(at);
        self.state.tokens_version += 1;
        Ok(true)
    }

    fn tokens_version(&mut self) -> Result<u64, StoreError> {
        Ok(self.state.tokens_version)
    }
}
