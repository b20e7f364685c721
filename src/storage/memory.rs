//! The in-memory store: everything in one mutex-guarded state, lost on
//! restart. For throwaway use and tests. Keeps the last 100 events per
//! equipment and per session (semantics.md, Events) and the last 10,000
//! overall. A transaction that fails is undone: writes are logged with the
//! value they replaced, and events are applied only on commit.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::{
    CommitListener, Due, EventQuery, Prune, Store, StoreError, TokenRecord, Tx, UsageCursor,
    UsageQuery, Work,
};
use crate::domain::rollup::UsageBucket;
use crate::domain::{EquipmentId, EquipmentLocks, Event, Session, SessionId, Timestamp};

/// A rollup bucket's key: span, start, instrument and user ('' : all).
type UsageKey = (i64, Timestamp, String, String);

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
    /// How many times each id is in `ended_sessions` (an id re-opened and
    /// ended again is there twice): its history goes with its last entry.
    ended_entries: HashMap<SessionId, u32>,
    last_seq: u64,
    tokens: Vec<TokenRecord>,
    tokens_version: u64,
    usage_cursor: Option<UsageCursor>,
    usage: std::collections::BTreeMap<UsageKey, UsageBucket>,
    usage_checkpoints: HashMap<Timestamp, String>,
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
            // A history for no live session (the made-up `forced_by` of a
            // forced release, or an ended session's once forgotten) counts
            // among the ended ones from the start; a live session's does
            // when it ends. So every history is bounded in number too.
            let untracked =
                !self.session_events.contains_key(session) && !self.sessions.contains_key(session);
            let events = self.session_events.entry(session.clone()).or_default();
            capped(events, EVENTS_KEPT, &event);
            if untracked {
                self.forget_ended_history(session);
            }
        }
        capped(&mut self.all_events, ALL_EVENTS_KEPT, &event);
    }

    /// Counts `id`'s history among the ended sessions' and forgets the
    /// oldest of those past the bound (unless it is live again).
    fn forget_ended_history(&mut self, id: &SessionId) {
        // An id re-opened and ended again keeps its history until its
        // latest end is the oldest: counted, not searched for, so a session
        // end costs the same however many ended histories are kept.
        *self.ended_entries.entry(id.clone()).or_default() += 1;
        self.ended_sessions.push_back(id.clone());
        if self.ended_sessions.len() <= ENDED_SESSION_HISTORIES_KEPT {
            return;
        }
        let Some(oldest) = self.ended_sessions.pop_front() else {
            return;
        };
        let entries = self.ended_entries.entry(oldest.clone()).or_default();
        *entries -= 1;
        if *entries == 0 {
            self.ended_entries.remove(&oldest);
            if !self.sessions.contains_key(&oldest) {
                self.session_events.remove(&oldest);
            }
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
    /// Hears each commit's events, called under the state's lock so that
    /// commits reach it in `seq` order.
    listener: std::sync::OnceLock<CommitListener>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl MemoryStore {
    /// Runs `work` at once on the calling thread: nothing here waits for a
    /// disk, so it needs no thread of its own.
    fn run(
        &self,
        work: &mut (dyn FnMut(&mut dyn Tx) -> Result<(), StoreError> + Send),
    ) -> Result<(), StoreError> {
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
        // A unit that panics is undone like one that fails.
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&mut tx)))
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the unit of work panicked".into())));
        match done {
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
                if let Some(listener) = self.listener.get().filter(|_| !events.is_empty()) {
                    listener(events.clone(), super::Origin::Here);
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
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn transaction(&self, mut work: Work) -> Result<(), StoreError> {
        // Every unit commits alone here: a batch of one.
        let done = self.run(&mut *work);
        if done.is_ok() {
            crate::measure::store_batch(1);
        }
        done
    }

    async fn read(&self, mut work: Work) -> Result<(), StoreError> {
        // Nothing here touches a disk: a read is a transaction that writes
        // nothing.
        self.run(&mut *work)
    }

    fn listen(&self, listener: CommitListener) {
        let _first = self.listener.set(listener);
    }

    fn describe(&self) -> String {
        "memory".into()
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

    fn sessions_page(
        &mut self,
        after: Option<&SessionId>,
        limit: usize,
    ) -> Result<Vec<Session>, StoreError> {
        // One pass over the ids, keeping only the `limit` smallest past the
        // cursor; only the page itself is cloned.
        let mut ids: Vec<&SessionId> = self
            .state
            .sessions
            .keys()
            .filter(|id| after.is_none_or(|a| *id > a))
            .collect();
        if ids.len() > limit {
            ids.select_nth_unstable(limit);
            ids.truncate(limit);
        }
        ids.sort_unstable();
        Ok(ids
            .into_iter()
            .map(|id| self.state.sessions[id].clone())
            .collect())
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

    fn prune_events(&mut self, prune: &Prune) -> Result<usize, StoreError> {
        let last = self.last_event_seq()?;
        let mut upto = None;
        let mut pruned = 0;
        while pruned < prune.max
            && let Some(e) = self.state.all_events.front()
            && prune.drops(e.seq.unwrap_or(0), e.timestamp, last)
        {
            upto = e.seq;
            self.state.all_events.pop_front();
            pruned += 1;
        }
        let Some(upto) = upto else {
            return Ok(0);
        };
        let gone = |e: &Arc<Event>| e.seq.is_some_and(|s| s <= upto);
        for events in self
            .state
            .equipment_events
            .values_mut()
            .chain(self.state.session_events.values_mut())
        {
            while events.front().is_some_and(gone) {
                events.pop_front();
            }
        }
        Ok(pruned)
    }

    // Rollup writes are not undone with a failed transaction either: the
    // unit that writes them writes nothing else, and nothing in it fails
    // after the cursor moved.
    fn usage_cursor(&mut self) -> Result<Option<UsageCursor>, StoreError> {
        Ok(self.state.usage_cursor.clone())
    }

    fn advance_usage_cursor(
        &mut self,
        expected: Option<&UsageCursor>,
        next: &UsageCursor,
    ) -> Result<bool, StoreError> {
        if self.state.usage_cursor.as_ref() != expected {
            return Ok(false);
        }
        self.state.usage_cursor = Some(next.clone());
        Ok(true)
    }

    fn put_usage(&mut self, buckets: &[UsageBucket]) -> Result<(), StoreError> {
        for b in buckets {
            let key = (
                b.span_ms,
                b.start,
                b.equipment_id
                    .as_ref()
                    .map_or("", |e| e.as_str())
                    .to_string(),
                b.user.clone().unwrap_or_default(),
            );
            self.state.usage.insert(key, b.clone());
        }
        Ok(())
    }

    fn usage_buckets(&mut self, query: &UsageQuery) -> Result<Vec<UsageBucket>, StoreError> {
        let from = (query.span_ms, query.since, String::new(), String::new());
        Ok(self
            .state
            .usage
            .range(from..)
            .take_while(|((span, start, ..), _)| *span == query.span_ms && *start < query.until)
            .map(|(_, b)| b)
            .filter(|b| query.matches(b))
            .cloned()
            .collect())
    }

    fn put_usage_checkpoint(&mut self, at: Timestamp, state: &str) -> Result<(), StoreError> {
        self.state.usage_checkpoints.insert(at, state.to_string());
        Ok(())
    }

    fn usage_checkpoint(&mut self, at: Timestamp) -> Result<Option<String>, StoreError> {
        Ok(self.state.usage_checkpoints.get(&at).cloned())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventKind;

    #[test]
    fn histories_of_sessions_that_only_forced_a_release_are_bounded_too() {
        let store = MemoryStore::new();
        let forced_by = |i: usize| SessionId::parse(&format!("admin-{i}")).unwrap();
        for i in 0..=ENDED_SESSION_HISTORIES_KEPT {
            let mut e = Event::new(EventKind::LockForceReleased, Timestamp::from_millis(0));
            e.forced_by = Some(forced_by(i));
            store
                .run(&mut |tx| tx.record_events(&mut [e.clone()]))
                .unwrap();
        }
        let newest = |id: SessionId| {
            let mut events = Vec::new();
            store
                .run(&mut |tx| {
                    events = tx.session_events(&id, 10)?;
                    Ok(())
                })
                .unwrap();
            events.len()
        };
        assert_eq!(newest(forced_by(0)), 0, "the oldest is forgotten");
        assert_eq!(newest(forced_by(ENDED_SESSION_HISTORIES_KEPT)), 1);
        let state = store.state.lock().unwrap();
        assert_eq!(state.session_events.len(), ENDED_SESSION_HISTORIES_KEPT);
    }

    #[test]
    fn an_id_that_ends_twice_is_counted_once_from_its_latest_end() {
        let store = MemoryStore::new();
        let id = |i: usize| SessionId::parse(&format!("s-{i}")).unwrap();
        let forced = |who: SessionId| {
            let mut e = Event::new(EventKind::LockForceReleased, Timestamp::from_millis(0));
            e.forced_by = Some(who);
            store
                .run(&mut |tx| tx.record_events(&mut [e.clone()]))
                .unwrap();
        };
        forced(id(0));
        forced(id(1));
        let mut state = store.state.lock().unwrap();
        state.forget_ended_history(&id(0)); // it was re-opened and ended again
        // Ended histories past the bound are forgotten from the oldest end:
        // id 1's goes, id 0's stays (its latest end is newer).
        for i in 2..=ENDED_SESSION_HISTORIES_KEPT {
            state.session_events.insert(id(i), VecDeque::new());
            state.forget_ended_history(&id(i));
        }
        assert!(state.session_events.contains_key(&id(0)));
        assert!(!state.session_events.contains_key(&id(1)));
        assert_eq!(state.ended_sessions.len(), ENDED_SESSION_HISTORIES_KEPT);
    }
}
