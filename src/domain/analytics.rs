//! Lock analytics: how instruments were used over a time window, computed
//! from the history alone (a pure fold over events in `seq` order).
//!
//! Each grant is followed by its `lock_id` from the event that made it
//! (`lock_acquired`, `observer_lock_acquired`, or `queue_processed` for a
//! hand-off from the queue) to the one that ended it (`lock_released`,
//! `lock_force_released`, `lock_expired`, `observer_lock_released`,
//! `observer_revoked`). A grant ended in the window but made before it
//! counts from the window's start; one still open at its end counts to the
//! end. A wait runs from `queued` to the `queue_processed` of the same
//! queue place (both in the window). A lock held across the whole window
//! with no event in it is not seen (leases are renewed without events).

use std::collections::{BTreeMap, HashMap};

use super::event::{Event, EventKind};
use super::ids::EquipmentId;
use super::lock::LockMode;
use super::time::Timestamp;

/// What the rows are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    /// One row per instrument.
    Equipment,
    /// One row per user holding the locks (`holder_user`; `-` when the
    /// server runs without authentication and knows no user).
    User,
    /// One row for everything selected: a group of instruments or users.
    All,
}

impl GroupBy {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "equipment" => Some(Self::Equipment),
            "user" => Some(Self::User),
            "all" => Some(Self::All),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Equipment => "equipment",
            Self::User => "user",
            Self::All => "all",
        }
    }
}

/// One row of the analytics. Times are milliseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageRow {
    /// The instrument id, the user, or `all`.
    pub key: String,
    /// Exclusive lock time (a lock-millisecond each).
    pub exclusive_ms: i64,
    /// Observer lock time, summed over observers (two observers for an
    /// hour are two hours).
    pub observer_ms: i64,
    /// Instrument time with no lock of any kind (for a group: summed over
    /// its instruments); `None` for users.
    pub idle_ms: Option<i64>,
    /// Locks granted, at once or from the queue.
    pub grants: u64,
    /// Of those, granted from the queue.
    pub grants_from_queue: u64,
    /// How long each grant from the queue waited, in grant order.
    pub waits_ms: Vec<i64>,
    pub forced_releases: u64,
    pub expiries: u64,
}

impl UsageRow {
    /// The `p`-th percentile (0 < p <= 1) of the waits, nearest rank.
    pub fn wait_percentile(&self, p: f64) -> Option<i64> {
        let mut waits = self.waits_ms.clone();
        waits.sort_unstable();
        let rank = ((p * waits.len() as f64).ceil() as usize).max(1);
        waits.get(rank - 1).copied()
    }
}

#[derive(Clone, Debug)]
struct OpenGrant {
    equipment: EquipmentId,
    key: String,
    start: i64,
    observer: bool,
}

/// The fold: feed the window's events in `seq` order, then `finish`.
#[derive(Clone, Debug)]
pub struct Usage {
    from: i64,
    to: i64,
    group_by: GroupBy,
    open: HashMap<String, OpenGrant>,
    /// Queue places waiting: (equipment, queue id) -> when queued.
    queued: HashMap<(EquipmentId, String), i64>,
    /// Each instrument's lock intervals, for its idle time.
    busy: BTreeMap<EquipmentId, Vec<(i64, i64)>>,
    rows: BTreeMap<String, UsageRow>,
}

impl Usage {
    /// A window [`from`, `to`); `equipment` are instruments to report even
    /// if nothing happened to them (all idle).
    pub fn new(
        from: Timestamp,
        to: Timestamp,
        group_by: GroupBy,
        equipment: &[EquipmentId],
    ) -> Self {
        let mut usage = Self {
            from: from.as_millis(),
            to: to.as_millis().max(from.as_millis()),
            group_by,
            open: HashMap::new(),
            queued: HashMap::new(),
            busy: BTreeMap::new(),
            rows: BTreeMap::new(),
        };
        for id in equipment {
            usage.busy.entry(id.clone()).or_default();
            if group_by != GroupBy::User {
                usage.row(usage.key_of(id, None));
            }
        }
        usage
    }

    fn key_of(&self, equipment: &EquipmentId, user: Option<&str>) -> String {
        match self.group_by {
            GroupBy::Equipment => equipment.to_string(),
            GroupBy::User => user.unwrap_or("-").to_string(),
            GroupBy::All => "all".to_string(),
        }
    }

    fn row(&mut self, key: String) -> &mut UsageRow {
        self.rows.entry(key.clone()).or_insert_with(|| UsageRow {
            key,
            ..UsageRow::default()
        })
    }

    /// Takes in the next event (in `seq` order). Events outside the window,
    /// without an equipment, or that are not about locks change nothing.
    pub fn add(&mut self, e: &Event) {
        let Some(equipment) = e.equipment_id.clone() else {
            return;
        };
        let t = e.timestamp.as_millis();
        if t < self.from || t >= self.to {
            return;
        }
        let lock_id = e.lock_id.clone().unwrap_or_default();
        let key = self.key_of(&equipment, e.holder_user.as_deref());
        self.busy.entry(equipment.clone()).or_default();
        match e.event {
            EventKind::Queued => {
                if let Some(queue_id) = &e.queue_id {
                    self.queued.insert((equipment, queue_id.clone()), t);
                }
            }
            EventKind::Dequeued => {
                if let Some(queue_id) = &e.queue_id {
                    self.queued.remove(&(equipment, queue_id.clone()));
                }
            }
            EventKind::LockAcquired
            | EventKind::ObserverLockAcquired
            | EventKind::QueueProcessed => {
                let waited = (e.event == EventKind::QueueProcessed)
                    .then(|| {
                        e.queue_id
                            .as_ref()
                            .and_then(|q| self.queued.remove(&(equipment.clone(), q.clone())))
                    })
                    .flatten();
                let row = self.row(key.clone());
                row.grants += 1;
                if e.event == EventKind::QueueProcessed {
                    row.grants_from_queue += 1;
                    if let Some(queued_at) = waited {
                        row.waits_ms.push(t - queued_at);
                    }
                }
                let observer = e.lock_mode == Some(LockMode::Observer)
                    || e.event == EventKind::ObserverLockAcquired;
                self.open.insert(
                    lock_id,
                    OpenGrant {
                        equipment,
                        key,
                        start: t,
                        observer,
                    },
                );
            }
            EventKind::LockReleased
            | EventKind::LockForceReleased
            | EventKind::LockExpired
            | EventKind::ObserverLockReleased
            | EventKind::ObserverRevoked => {
                // A grant made before the window counts from its start.
                let observer = e.lock_mode == Some(LockMode::Observer)
                    || matches!(
                        e.event,
                        EventKind::ObserverLockReleased | EventKind::ObserverRevoked
                    );
                let grant = self.open.remove(&lock_id).unwrap_or(OpenGrant {
                    equipment,
                    key,
                    start: self.from,
                    observer,
                });
                self.close(grant, t);
                let row = self.row(self.key_of(
                    e.equipment_id.as_ref().expect("checked above"),
                    e.holder_user.as_deref(),
                ));
                match e.event {
                    EventKind::LockForceReleased => row.forced_releases += 1,
                    EventKind::LockExpired => row.expiries += 1,
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn close(&mut self, grant: OpenGrant, end: i64) {
        let held = end - grant.start;
        let observer = grant.observer;
        self.busy
            .entry(grant.equipment)
            .or_default()
            .push((grant.start, end));
        let row = self.row(grant.key);
        if observer {
            row.observer_ms += held;
        } else {
            row.exclusive_ms += held;
        }
    }

    /// The rows, by key. Grants still open count to the window's end.
    pub fn finish(mut self) -> Vec<UsageRow> {
        let open: Vec<OpenGrant> = std::mem::take(&mut self.open).into_values().collect();
        for grant in open {
            self.close(grant, self.to);
        }
        let span = self.to - self.from;
        let idle: BTreeMap<EquipmentId, i64> = self
            .busy
            .iter()
            .map(|(id, intervals)| (id.clone(), span - union_length(intervals)))
            .collect();
        let group_by = self.group_by;
        let mut rows: Vec<UsageRow> = self.rows.into_values().collect();
        for row in &mut rows {
            row.idle_ms = match group_by {
                GroupBy::Equipment => EquipmentId::parse(&row.key)
                    .ok()
                    .and_then(|id| idle.get(&id).copied()),
                GroupBy::All => Some(idle.values().sum()),
                GroupBy::User => None,
            };
        }
        rows
    }
}

/// The length of the union of `intervals`.
fn union_length(intervals: &[(i64, i64)]) -> i64 {
    let mut sorted = intervals.to_vec();
    sorted.sort_unstable();
    let mut total = 0;
    let mut current: Option<(i64, i64)> = None;
    for (start, end) in sorted {
        current = match current {
            Some((s, e)) if start <= e => Some((s, e.max(end))),
            Some((s, e)) => {
                total += e - s;
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    total + current.map_or(0, |(s, e)| e - s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::lock::Holder;
    use crate::domain::{EquipmentLocks, LockPolicy, LockRequest, SessionId, Timeout};
    use proptest::prelude::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    /// An instrument driven through the real lock rules, recording events.
    struct Bench {
        locks: EquipmentLocks,
        events: Vec<Event>,
    }

    impl Bench {
        fn new(id: &str) -> Self {
            Self {
                locks: EquipmentLocks::new(EquipmentId::parse(id).unwrap()),
                events: Vec::new(),
            }
        }

        fn acquire(&mut self, who: &str, mode: LockMode, timeout_ms: u64, at: i64) {
            let req = LockRequest {
                session_id: SessionId::parse(who).unwrap(),
                mode,
                timeout: Timeout::from_millis(timeout_ms),
                queue_if_busy: true,
                holder: Holder {
                    user: Some(format!("user_{who}")),
                    client_name: None,
                },
                priority: 0,
                max_wait: Timeout::NONE,
                maintenance_exempt: false,
                claim_within: Timeout::NONE,
            };
            let _ = self
                .locks
                .acquire(&req, t(at), LockPolicy::default(), &mut self.events);
        }

        fn release(&mut self, who: &str, force: bool, at: i64) {
            let session = SessionId::parse(who).unwrap();
            let _ = self
                .locks
                .release(&session, force, t(at), &mut |_| true, &mut self.events);
        }

        fn expire(&mut self, at: i64) {
            self.locks.expire(t(at), &mut |_| true, &mut self.events);
        }
    }

    fn usage(events: &[Event], from: i64, to: i64, by: GroupBy) -> Vec<UsageRow> {
        let mut usage = Usage::new(t(from), t(to), by, &[]);
        for e in events {
            usage.add(e);
        }
        usage.finish()
    }

    #[test]
    fn a_morning_on_one_instrument_adds_up() {
        let mut b = Bench::new("psu");
        b.acquire("a", LockMode::Exclusive, 0, 0); // a holds from 0
        b.acquire("b", LockMode::Exclusive, 0, 10); // b queues at 10
        b.release("a", false, 30); // b granted at 30: waited 20
        b.release("admin", true, 50); // b forced off at 50
        b.acquire("c", LockMode::Observer, 20, 60); // c observes from 60
        b.acquire("d", LockMode::Observer, 0, 70); // d too, from 70
        b.expire(80); // c's lease ends at 80
        // d still observes at the window's end, 100.
        let rows = usage(&b.events, 0, 100, GroupBy::Equipment);
        assert_eq!(
            rows,
            [UsageRow {
                key: "psu".into(),
                exclusive_ms: 30 + 20,
                observer_ms: 20 + 30,
                idle_ms: Some(10), // 50..60
                grants: 4,
                grants_from_queue: 1,
                waits_ms: vec![20],
                forced_releases: 1,
                expiries: 1,
            }]
        );
        let by_user = usage(&b.events, 0, 100, GroupBy::User);
        let keys: Vec<(&str, i64, i64)> = by_user
            .iter()
            .map(|r| (r.key.as_str(), r.exclusive_ms, r.observer_ms))
            .collect();
        assert_eq!(
            keys,
            [
                ("user_a", 30, 0),
                ("user_b", 20, 0),
                ("user_c", 0, 20),
                ("user_d", 0, 30)
            ]
        );
        assert_eq!(by_user[1].forced_releases, 1, "b's lock was forced");
        assert!(by_user.iter().all(|r| r.idle_ms.is_none()));
    }

    #[test]
    fn a_window_clips_grants_made_before_or_open_after_it() {
        let mut b = Bench::new("psu");
        b.acquire("a", LockMode::Exclusive, 0, 0);
        b.release("a", false, 40);
        b.acquire("b", LockMode::Exclusive, 0, 70);
        // The window [20, 90): a's lock from 20 (its start is before),
        // b's to 90 (still held).
        let window: Vec<Event> = b
            .events
            .iter()
            .filter(|e| (20..90).contains(&e.timestamp.as_millis()))
            .cloned()
            .collect();
        let rows = usage(&window, 20, 90, GroupBy::All);
        assert_eq!(rows[0].exclusive_ms, 20 + 20);
        assert_eq!(rows[0].idle_ms, Some(30));
        assert_eq!(rows[0].grants, 1, "a's grant was before the window");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let row = UsageRow {
            waits_ms: vec![50, 10, 40, 20, 30, 60, 70, 80, 90, 100],
            ..UsageRow::default()
        };
        assert_eq!(row.wait_percentile(0.5), Some(50));
        assert_eq!(row.wait_percentile(0.9), Some(90));
        assert_eq!(row.wait_percentile(1.0), Some(100));
        assert_eq!(UsageRow::default().wait_percentile(0.5), None);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Acquire(usize, bool, u64),
        Release(usize),
        Force,
        Expire,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize, any::<bool>(), 0..40u64).prop_map(|(s, o, d)| Op::Acquire(s, o, d)),
            (0..4usize).prop_map(Op::Release),
            Just(Op::Force),
            Just(Op::Expire),
        ]
    }

    proptest! {
        /// Whatever happens on two instruments: exclusive and observer time
        /// never overlap (the rules revoke observers), so per instrument
        /// exclusive + idle <= window <= exclusive + observer + idle; the
        /// counts are the events'; a group is the sum of its instruments,
        /// and users split the same lock time.
        #[test]
        fn the_figures_agree_with_the_events(
            ops in proptest::collection::vec((0..2usize, op(), 1..15i64), 1..80),
            from in 0..200i64,
            len in 1..800i64,
        ) {
            let mut benches = [Bench::new("psu"), Bench::new("scope")];
            let mut now = 0;
            let mut all = Vec::new();
            for (which, op, step) in ops {
                now += step;
                let b = &mut benches[which];
                b.expire(now);
                let session = |i: usize| ["a", "b", "c", "d"][i];
                match op {
                    Op::Acquire(s, observer, timeout) => {
                        let mode = if observer { LockMode::Observer } else { LockMode::Exclusive };
                        b.acquire(session(s), mode, timeout, now);
                    }
                    Op::Release(s) => b.release(session(s), false, now),
                    Op::Force => b.release("admin", true, now),
                    Op::Expire => b.expire(now),
                }
                all.append(&mut b.events);
            }
            let to = from + len;
            let window: Vec<Event> = all
                .iter()
                .filter(|e| (from..to).contains(&e.timestamp.as_millis()))
                .cloned()
                .collect();
            let ids = [EquipmentId::parse("psu").unwrap(), EquipmentId::parse("scope").unwrap()];
            let run = |by| {
                let mut u = Usage::new(t(from), t(to), by, &ids);
                window.iter().for_each(|e| u.add(e));
                u.finish()
            };
            let rows = run(GroupBy::Equipment);
            prop_assert_eq!(rows.len(), 2);
            for row in &rows {
                let idle = row.idle_ms.unwrap();
                prop_assert!(idle >= 0 && row.exclusive_ms >= 0 && row.observer_ms >= 0);
                prop_assert!(row.exclusive_ms + idle <= len, "{:?}", row);
                prop_assert!(row.exclusive_ms + row.observer_ms + idle >= len, "{:?}", row);
                let of = |kinds: &[EventKind]| window
                    .iter()
                    .filter(|e| e.equipment_id.as_ref().map(|i| i.as_str()) == Some(row.key.as_str()))
                    .filter(|e| kinds.contains(&e.event))
                    .count() as u64;
                prop_assert_eq!(row.grants, of(&[EventKind::LockAcquired, EventKind::ObserverLockAcquired, EventKind::QueueProcessed]));
                prop_assert_eq!(row.grants_from_queue, of(&[EventKind::QueueProcessed]));
                prop_assert_eq!(row.forced_releases, of(&[EventKind::LockForceReleased]));
                prop_assert_eq!(row.expiries, of(&[EventKind::LockExpired]));
                prop_assert!(row.waits_ms.len() as u64 <= row.grants_from_queue);
                prop_assert!(row.waits_ms.iter().all(|&w| (0..len).contains(&w)));
            }
            let group = &run(GroupBy::All)[0];
            prop_assert_eq!(group.exclusive_ms, rows.iter().map(|r| r.exclusive_ms).sum::<i64>());
            prop_assert_eq!(group.observer_ms, rows.iter().map(|r| r.observer_ms).sum::<i64>());
            prop_assert_eq!(group.idle_ms, Some(rows.iter().map(|r| r.idle_ms.unwrap()).sum::<i64>()));
            prop_assert_eq!(group.grants, rows.iter().map(|r| r.grants).sum::<u64>());
            let users = run(GroupBy::User);
            prop_assert_eq!(
                users.iter().map(|r| r.exclusive_ms + r.observer_ms).sum::<i64>(),
                group.exclusive_ms + group.observer_ms
            );
        }
    }
}
