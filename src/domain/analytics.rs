//! Lock analytics: how instruments were used over a time window, computed
//! from the history alone (a fold over events in `seq` order).
//!
//! Each grant is followed by its `lock_id` from the event that made it
//! (`lock_acquired`, `observer_lock_acquired`, or `queue_processed` for a
//! hand-off from the queue) to the one that ended it (`lock_released`,
//! `lock_force_released`, `lock_expired`, `claim_expired`,
//! `observer_lock_released`, `observer_revoked`). A wait runs from `queued`
//! to the `queue_processed` of the same queue place.
//!
//! The fold is in three parts that `rollup` reuses: a `Tracker` knows what
//! is open (grants, queue places) and turns each event into facts; a
//! `Tally` adds the facts up per instrument and user over one stretch of
//! time (the part of a lock inside the stretch); `usage_rows` turns the
//! summed figures into the rows asked for. `Usage` is the plain fold over a
//! window: events before the window only tell what is open at its start, so
//! a lock held across the window's start counts from there. Fed only the
//! window's events, a lock ended in it but made before it counts from the
//! window's start, and one held throughout with no event in it is not seen
//! (leases are renewed without events).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::event::{Event, EventKind};
use super::ids::EquipmentId;
use super::lock::LockMode;
use super::rollup::{Figures, UsageBucket, WaitHistogram};
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

/// The user a lock's figures go to: `-` when the server knows none.
pub fn user_key(holder_user: Option<&str>) -> String {
    holder_user.unwrap_or("-").to_string()
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
    /// How long the grants from the queue waited.
    pub waits: WaitHistogram,
    pub forced_releases: u64,
    /// Locks that ended because their lease (or their window to claim a
    /// lock granted from the queue) ran out.
    pub expiries: u64,
}

/// A grant not yet ended, as the tracker remembers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenGrant {
    pub equipment: EquipmentId,
    pub user: Option<String>,
    pub start: i64,
    pub observer: bool,
}

/// What is open at a moment: grants by `lock_id`, and queue places (by
/// instrument, then queue id) with when they were queued. This is what a
/// fold needs to go on from that moment (a rollup checkpoint).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tracker {
    pub open: BTreeMap<String, OpenGrant>,
    pub queued: BTreeMap<EquipmentId, BTreeMap<String, i64>>,
}

/// What one event means for the figures.
#[derive(Clone, Debug, PartialEq)]
pub enum Fact {
    /// An event named the instrument (for this user's locks).
    Seen {
        equipment: EquipmentId,
        user: Option<String>,
    },
    /// A lock held from `start` (`None`: unknown, made before anything the
    /// fold saw) to `end`.
    Held {
        equipment: EquipmentId,
        user: Option<String>,
        observer: bool,
        start: Option<i64>,
        end: i64,
    },
    Granted {
        equipment: EquipmentId,
        user: Option<String>,
        from_queue: bool,
        /// How long it waited in the queue, when its queueing was seen.
        waited: Option<i64>,
    },
    Ended {
        equipment: EquipmentId,
        user: Option<String>,
        forced: bool,
        expired: bool,
    },
}

impl Tracker {
    /// Whether nothing is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.queued.values().all(BTreeMap::is_empty)
    }

    /// Takes in the next event (in `seq` order) as happening at `t`, and
    /// tells `fact` what it means. Events without an equipment, or that
    /// are not about locks or queues, only mark the instrument seen.
    pub fn apply(&mut self, e: &Event, t: i64, fact: &mut impl FnMut(Fact)) {
        let Some(equipment) = e.equipment_id.clone() else {
            return;
        };
        let user = e.holder_user.clone();
        fact(Fact::Seen {
            equipment: equipment.clone(),
            user: user.clone(),
        });
        match e.event {
            EventKind::Queued => {
                if let Some(queue_id) = &e.queue_id {
                    self.queued
                        .entry(equipment)
                        .or_default()
                        .insert(queue_id.clone(), t);
                }
            }
            EventKind::Dequeued | EventKind::QueueTimeout => {
                self.unqueue(&equipment, e.queue_id.as_deref());
            }
            EventKind::LockAcquired
            | EventKind::ObserverLockAcquired
            | EventKind::QueueProcessed => {
                let from_queue = e.event == EventKind::QueueProcessed;
                let waited = from_queue
                    .then(|| self.unqueue(&equipment, e.queue_id.as_deref()))
                    .flatten()
                    .map(|queued_at| t - queued_at);
                fact(Fact::Granted {
                    equipment: equipment.clone(),
                    user: user.clone(),
                    from_queue,
                    waited,
                });
                let observer = e.lock_mode == Some(LockMode::Observer)
                    || e.event == EventKind::ObserverLockAcquired;
                if !observer {
                    self.close_stale(&equipment, t, fact);
                }
                self.open.insert(
                    e.lock_id.clone().unwrap_or_default(),
                    OpenGrant {
                        equipment,
                        user,
                        start: t,
                        observer,
                    },
                );
            }
            EventKind::LockReleased
            | EventKind::LockForceReleased
            | EventKind::LockExpired
            | EventKind::ClaimExpired
            | EventKind::ObserverLockReleased
            | EventKind::ObserverRevoked => {
                let observer = e.lock_mode == Some(LockMode::Observer)
                    || matches!(
                        e.event,
                        EventKind::ObserverLockReleased | EventKind::ObserverRevoked
                    );
                let lock_id = e.lock_id.clone().unwrap_or_default();
                let held = match self.open.remove(&lock_id) {
                    Some(grant) => Fact::Held {
                        equipment: grant.equipment,
                        user: grant.user,
                        observer: grant.observer,
                        start: Some(grant.start),
                        end: t,
                    },
                    None => Fact::Held {
                        equipment: equipment.clone(),
                        user: user.clone(),
                        observer,
                        start: None,
                        end: t,
                    },
                };
                fact(held);
                fact(Fact::Ended {
                    equipment,
                    user,
                    forced: e.event == EventKind::LockForceReleased,
                    expired: matches!(e.event, EventKind::LockExpired | EventKind::ClaimExpired),
                });
            }
            _ => {}
        }
    }

    /// An exclusive grant on `equipment` at `t`: no other lock can be open
    /// there (the rules end or revoke them first, with events). One still
    /// open lost its end event (history that was never seen, such as the
    /// memory store's dropped events): it counts as held until `t`, so that
    /// a lost event costs at most that, not forever.
    fn close_stale(&mut self, equipment: &EquipmentId, t: i64, fact: &mut impl FnMut(Fact)) {
        let stale: Vec<String> = self
            .open
            .iter()
            .filter(|(_, g)| &g.equipment == equipment)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            let grant = self.open.remove(&id).expect("listed above");
            fact(Fact::Held {
                equipment: grant.equipment,
                user: grant.user,
                observer: grant.observer,
                start: Some(grant.start),
                end: t,
            });
        }
    }

    /// Forgets a queue place; returns when it was queued.
    fn unqueue(&mut self, equipment: &EquipmentId, queue_id: Option<&str>) -> Option<i64> {
        let places = self.queued.get_mut(equipment)?;
        let queued_at = places.remove(queue_id?);
        if places.is_empty() {
            self.queued.remove(equipment);
        }
        queued_at
    }

    /// The grants still open, as held from their start to `end`.
    pub fn held_until(&self, end: i64) -> impl Iterator<Item = Fact> + '_ {
        self.open.values().map(move |g| Fact::Held {
            equipment: g.equipment.clone(),
            user: g.user.clone(),
            observer: g.observer,
            start: Some(g.start),
            end,
        })
    }
}

/// One (instrument, user)'s figures in a stretch, with its lock intervals
/// until their union is taken.
#[derive(Clone, Debug, Default)]
struct Cell {
    figures: Figures,
    intervals: Vec<(i64, i64)>,
}

impl Cell {
    fn finish(mut self) -> Figures {
        self.figures.busy_ms = union_length(&self.intervals);
        self.figures
    }
}

/// The facts of one stretch of time [`from`, `to`) added up per
/// instrument and user, and per instrument: the part of each lock inside
/// the stretch. Stretches next to each other add up to the stretch they
/// make (the union of a stretch's lock intervals lies inside it).
#[derive(Clone, Debug)]
pub struct Tally {
    from: i64,
    to: i64,
    cells: BTreeMap<(EquipmentId, String), Cell>,
    instruments: BTreeMap<EquipmentId, Cell>,
}

impl Tally {
    pub fn new(from: i64, to: i64) -> Self {
        Self {
            from,
            to: to.max(from),
            cells: BTreeMap::new(),
            instruments: BTreeMap::new(),
        }
    }

    pub fn from(&self) -> i64 {
        self.from
    }

    fn cells(&mut self, equipment: &EquipmentId, user: Option<&str>) -> [&mut Cell; 2] {
        let cell = self
            .cells
            .entry((equipment.clone(), user_key(user)))
            .or_default();
        let instrument = self.instruments.entry(equipment.clone()).or_default();
        [cell, instrument]
    }

    /// Adds a fact. Held time is clipped to the stretch; the other facts
    /// are the caller's to place (they happen at one instant).
    pub fn add(&mut self, fact: &Fact) {
        match fact {
            Fact::Seen { equipment, user } => {
                self.cells(equipment, user.as_deref());
            }
            Fact::Held {
                equipment,
                user,
                observer,
                start,
                end,
            } => {
                let start = start.unwrap_or(self.from).max(self.from);
                let end = (*end).min(self.to);
                if end < start {
                    return;
                }
                for cell in self.cells(equipment, user.as_deref()) {
                    if *observer {
                        cell.figures.observer_ms += end - start;
                    } else {
                        cell.figures.exclusive_ms += end - start;
                    }
                    cell.intervals.push((start, end));
                    cell.figures.locked = true;
                }
            }
            Fact::Granted {
                equipment,
                user,
                from_queue,
                waited,
            } => {
                for cell in self.cells(equipment, user.as_deref()) {
                    cell.figures.grants += 1;
                    if *from_queue {
                        cell.figures.grants_from_queue += 1;
                    }
                    if let Some(waited) = waited {
                        cell.figures.waits.record(*waited);
                    }
                    cell.figures.locked = true;
                }
            }
            Fact::Ended {
                equipment,
                user,
                forced,
                expired,
            } => {
                for cell in self.cells(equipment, user.as_deref()) {
                    cell.figures.forced_releases += u64::from(*forced);
                    cell.figures.expiries += u64::from(*expired);
                    cell.figures.locked = true;
                }
            }
        }
    }

    /// Whether no fact was added.
    pub fn is_empty(&self) -> bool {
        self.instruments.is_empty()
    }

    /// The figures as buckets of this stretch (`span_ms` long, starting at
    /// its start): per instrument and user, per instrument (all users), and
    /// per user (all instruments; its busy time is the sum over them).
    pub fn buckets(self, span_ms: i64) -> Vec<UsageBucket> {
        let start = Timestamp::from_millis(self.from);
        let bucket = |equipment_id, user, figures| UsageBucket {
            span_ms,
            start,
            equipment_id,
            user,
            figures,
        };
        let mut users: BTreeMap<String, Figures> = BTreeMap::new();
        let mut out = Vec::new();
        for ((equipment, user), cell) in self.cells {
            let figures = cell.finish();
            users.entry(user.clone()).or_default().add(&figures);
            out.push(bucket(Some(equipment), Some(user), figures));
        }
        for (equipment, cell) in self.instruments {
            out.push(bucket(Some(equipment), None, cell.finish()));
        }
        for (user, figures) in users {
            out.push(bucket(None, Some(user), figures));
        }
        out
    }
}

/// The figures of a window, summed over its buckets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summed {
    /// Per instrument, all users.
    pub instruments: BTreeMap<EquipmentId, Figures>,
    /// Per instrument and user.
    pub cells: BTreeMap<(EquipmentId, String), Figures>,
    /// Per user, all instruments.
    pub users: BTreeMap<String, Figures>,
}

impl Summed {
    pub fn add(&mut self, bucket: &UsageBucket) {
        let figures = &bucket.figures;
        match (&bucket.equipment_id, &bucket.user) {
            (Some(e), Some(u)) => self.cells.entry((e.clone(), u.clone())),
            (Some(e), None) => return self.instruments.entry(e.clone()).or_default().add(figures),
            (None, Some(u)) => return self.users.entry(u.clone()).or_default().add(figures),
            (None, None) => return,
        }
        .or_default()
        .add(figures);
    }

    /// The rows of a window `span_ms` long. `seeds`: instruments reported
    /// even if nothing happened to them (all idle). With `user`, only that
    /// user's locks count, and only instruments that user's events named.
    pub fn rows(
        &self,
        group_by: GroupBy,
        span_ms: i64,
        seeds: &[EquipmentId],
        user: Option<&str>,
    ) -> Vec<UsageRow> {
        // Users' totals when not summed apart: from their instruments'.
        let mut from_cells: BTreeMap<String, Figures> = BTreeMap::new();
        if self.users.is_empty() {
            for ((_, u), figures) in &self.cells {
                from_cells.entry(u.clone()).or_default().add(figures);
            }
        }
        let user_totals = if self.users.is_empty() {
            &from_cells
        } else {
            &self.users
        };
        let mut instruments: BTreeMap<EquipmentId, Option<&Figures>> = BTreeMap::new();
        let mut users: BTreeMap<&str, &Figures> = BTreeMap::new();
        match user {
            None => {
                for id in seeds {
                    instruments.insert(id.clone(), None);
                }
                for (id, figures) in &self.instruments {
                    instruments.insert(id.clone(), Some(figures));
                }
                users.extend(user_totals.iter().map(|(u, f)| (u.as_str(), f)));
            }
            Some(user) => {
                for ((id, u), figures) in &self.cells {
                    if u == user {
                        instruments.insert(id.clone(), Some(figures));
                    }
                }
                if let Some(figures) = user_totals.get(user) {
                    users.insert(user, figures);
                }
            }
        }
        let idle = |figures: Option<&Figures>| span_ms - figures.map_or(0, |f| f.busy_ms);
        let locked = |figures: &Option<&Figures>| figures.is_some_and(|f| f.locked);
        match group_by {
            GroupBy::Equipment => instruments
                .iter()
                .filter(|(id, f)| locked(f) || (user.is_none() && seeds.contains(id)))
                .map(|(id, f)| {
                    let none = Figures::default();
                    row_of(id.to_string(), f.unwrap_or(&none), Some(idle(*f)))
                })
                .collect(),
            GroupBy::All => {
                let any = instruments.values().any(locked);
                if !any && (user.is_some() || seeds.is_empty()) {
                    return Vec::new();
                }
                let mut total = Figures::default();
                for f in instruments.values().flatten() {
                    total.add(f);
                }
                let idle = instruments.values().map(|f| idle(*f)).sum();
                vec![row_of("all".into(), &total, Some(idle))]
            }
            GroupBy::User => users
                .into_iter()
                .filter(|(_, f)| f.locked)
                .map(|(u, f)| row_of(u.to_string(), f, None))
                .collect(),
        }
    }
}

fn row_of(key: String, f: &Figures, idle_ms: Option<i64>) -> UsageRow {
    UsageRow {
        key,
        exclusive_ms: f.exclusive_ms,
        observer_ms: f.observer_ms,
        idle_ms,
        grants: f.grants,
        grants_from_queue: f.grants_from_queue,
        waits: f.waits.clone(),
        forced_releases: f.forced_releases,
        expiries: f.expiries,
    }
}

/// A fold over one stretch [`from`, `to`) going on from what was open at
/// some earlier moment (`tracker`): events before `from` only change what
/// is open, events from `to` on are ignored.
#[derive(Clone, Debug)]
pub struct Stretch {
    tracker: Tracker,
    tally: Tally,
}

impl Stretch {
    pub fn new(tracker: Tracker, from: i64, to: i64) -> Self {
        Self {
            tracker,
            tally: Tally::new(from, to),
        }
    }

    pub fn add(&mut self, e: &Event) {
        let t = e.timestamp.as_millis();
        if t >= self.tally.to {
            return;
        }
        let tally = &mut self.tally;
        if t < tally.from {
            self.tracker.apply(e, t, &mut |_| {});
        } else {
            self.tracker.apply(e, t, &mut |f| tally.add(&f));
        }
    }

    /// The stretch's buckets; grants still open count to its end.
    pub fn finish(mut self) -> Vec<UsageBucket> {
        for held in self.tracker.held_until(self.tally.to) {
            self.tally.add(&held);
        }
        let span = self.tally.to - self.tally.from;
        self.tally.buckets(span)
    }
}

/// The plain fold over a window: feed events in `seq` order (those before
/// the window tell what is open at its start), then `finish`.
#[derive(Clone, Debug)]
pub struct Usage {
    stretch: Stretch,
    span: i64,
    group_by: GroupBy,
    seeds: Vec<EquipmentId>,
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
        let (from, to) = (from.as_millis(), to.as_millis().max(from.as_millis()));
        Self {
            stretch: Stretch::new(Tracker::default(), from, to),
            span: to - from,
            group_by,
            seeds: equipment.to_vec(),
        }
    }

    /// Takes in the next event (in `seq` order).
    pub fn add(&mut self, e: &Event) {
        self.stretch.add(e);
    }

    /// The rows, by key. Grants still open count to the window's end.
    pub fn finish(self) -> Vec<UsageRow> {
        let mut summed = Summed::default();
        for bucket in self.stretch.finish() {
            summed.add(&bucket);
        }
        summed.rows(self.group_by, self.span, &self.seeds, None)
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

    fn waits(ms: &[i64]) -> WaitHistogram {
        let mut h = WaitHistogram::default();
        ms.iter().for_each(|&w| h.record(w));
        h
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
                waits: waits(&[20]),
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
    fn a_grant_whose_end_was_lost_ends_at_the_next_exclusive_grant() {
        let mut b = Bench::new("psu");
        b.acquire("a", LockMode::Exclusive, 0, 0);
        b.release("a", false, 10);
        b.acquire("b", LockMode::Exclusive, 0, 50);
        b.release("b", false, 60);
        // a's release (at 10) never reached the fold.
        let seen: Vec<Event> = b
            .events
            .iter()
            .filter(|e| e.timestamp.as_millis() != 10)
            .cloned()
            .collect();
        let rows = usage(&seen, 0, 1_000, GroupBy::User);
        let held: Vec<(&str, i64)> = rows
            .iter()
            .map(|r| (r.key.as_str(), r.exclusive_ms))
            .collect();
        assert_eq!(held, [("user_a", 50), ("user_b", 10)]);
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
                prop_assert!(row.waits.count() <= row.grants_from_queue);
                prop_assert!(row.waits.max().is_none_or(|w| (0..len).contains(&w)));
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
