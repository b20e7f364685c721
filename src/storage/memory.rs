//! The in-memory store: everything in one mutex-guarded state, lost on
//! restart. For throwaway use and tests; keeps the last 100 events per
//! equipment and per session (semantics.md, Events).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use super::{Due, Store, StoreError, Tx, Work};
use crate::domain::{EquipmentId, EquipmentLocks, Event, Session, SessionId, Timestamp};

/// Events kept per equipment and per session.
pub const EVENTS_KEPT: usize = 100;
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
    equipment_events: HashMap<EquipmentId, VecDeque<Event>>,
    session_events: HashMap<SessionId, VecDeque<Event>>,
    ended_sessions: VecDeque<SessionId>,
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
}

fn push_capped(events: &mut VecDeque<Event>, event: &Event) {
    if events.len() == EVENTS_KEPT {
        events.pop_front();
    }
    events.push_back(event.clone());
}

fn newest(events: Option<&VecDeque<Event>>, limit: usize) -> Vec<Event> {
    events.map_or_else(Vec::new, |events| {
        events
            .iter()
            .skip(events.len().saturating_sub(limit))
            .cloned()
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
        // A panic elsewhere while holding the lock cannot leave a half-applied
        // change behind (the service writes only after the domain agreed), so
        // a poisoned lock is safe to keep using.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        work(&mut MemoryTx { state: &mut state })
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

struct MemoryTx<'a> {
    state: &'a mut State,
}

impl Tx for MemoryTx<'_> {
    fn session(&mut self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        Ok(self.state.sessions.get(id).cloned())
    }

    fn sessions(&mut self) -> Result<Vec<Session>, StoreError> {
        Ok(self.state.sessions.values().cloned().collect())
    }

    fn save_session(&mut self, session: &Session) -> Result<(), StoreError> {
        self.state
            .set_deadline(Due::Session(session.id.clone()), session.deadline());
        self.state
            .sessions
            .insert(session.id.clone(), session.clone());
        Ok(())
    }

    fn delete_session(&mut self, id: &SessionId) -> Result<(), StoreError> {
        self.state.set_deadline(Due::Session(id.clone()), None);
        if self.state.sessions.remove(id).is_some() {
            self.state.ended_sessions.push_back(id.clone());
            if self.state.ended_sessions.len() > ENDED_SESSION_HISTORIES_KEPT
                && let Some(oldest) = self.state.ended_sessions.pop_front()
                && !self.state.sessions.contains_key(&oldest)
            {
                self.state.session_events.remove(&oldest);
            }
        }
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
        let before: BTreeSet<SessionId> = self
            .state
            .equipment
            .get(id)
            .map(|old| old.participants().cloned().collect())
            .unwrap_or_default();
        let after: BTreeSet<SessionId> = locks.participants().cloned().collect();
        for gone in before.difference(&after) {
            if let Some(set) = self.state.participants.get_mut(gone) {
                set.remove(id);
                if set.is_empty() {
                    self.state.participants.remove(gone);
                }
            }
        }
        for new in after.difference(&before) {
            self.state
                .participants
                .entry(new.clone())
                .or_default()
                .insert(id.clone());
        }
        self.state
            .set_deadline(Due::Equipment(id.clone()), locks.next_deadline());
        self.state.equipment.insert(id.clone(), locks.clone());
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

    fn record_events(&mut self, events: &[Event]) -> Result<(), StoreError> {
        for event in events {
            if let Some(equipment) = &event.equipment_id {
                push_capped(
                    self.state
                        .equipment_events
                        .entry(equipment.clone())
                        .or_default(),
                    event,
                );
            }
            for session in event.session_id.iter().chain(&event.forced_by) {
                push_capped(
                    self.state
                        .session_events
                        .entry(session.clone())
                        .or_default(),
                    event,
                );
            }
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
}
