//! Lock groups and pools: each rule as a table case, and property tests of
//! the invariants over random histories of groups, pools and single locks
//! on a small bench.
//!
//! `Floor` plays the service's part (`Uow::settle_groups`): after every
//! operation it keeps groups whole and grants the group requests that head
//! a queue, until nothing more follows.

use super::*;
use crate::domain::lock::tests::check_invariants;
use crate::domain::lock::{AcquireOutcome, Holder, Maintenance, ReleaseOutcome};
use crate::domain::time::Timeout;
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};

fn sid(name: &str) -> SessionId {
    SessionId::parse(name).unwrap()
}

fn eid(name: &str) -> EquipmentId {
    EquipmentId::parse(name).unwrap()
}

const INSTRUMENTS: [&str; 4] = ["a", "b", "c", "d"];

/// Every instrument of a small bench, the sessions that ended, and time.
struct Floor {
    bench: Bench,
    dead: HashSet<SessionId>,
    policy: LockPolicy,
    now: Timestamp,
    events: Vec<Event>,
    groups: u32,
}

impl Floor {
    fn new() -> Self {
        Self {
            bench: INSTRUMENTS
                .iter()
                .map(|id| (eid(id), EquipmentLocks::new(eid(id))))
                .collect(),
            dead: HashSet::new(),
            policy: LockPolicy::default(),
            now: Timestamp::from_millis(0),
            events: Vec::new(),
            groups: 0,
        }
    }

    fn request(&self, who: &str, queue: bool, priority: i8) -> LockRequest {
        LockRequest {
            session_id: sid(who),
            mode: LockMode::Exclusive,
            timeout: Timeout::from_millis(10_000),
            queue_if_busy: queue,
            holder: Holder::default(),
            priority,
            max_wait: Timeout::NONE,
            maintenance_exempt: false,
            claim_within: Timeout::NONE,
        }
    }

    /// A group of `members` and, if given, one of `any_of`.
    fn group(
        &mut self,
        who: &str,
        members: &[&str],
        any_of: &[&str],
        queue: bool,
    ) -> Result<GroupOutcome, DomainError> {
        self.prioritized_group(who, members, any_of, queue, 0)
    }

    fn prioritized_group(
        &mut self,
        who: &str,
        members: &[&str],
        any_of: &[&str],
        queue: bool,
        priority: i8,
    ) -> Result<GroupOutcome, DomainError> {
        self.groups += 1;
        let group = std::sync::Arc::new(GroupRef {
            group_id: format!("g{}", self.groups),
            name: None,
            members: members.iter().map(|m| eid(m)).collect(),
            any_of: any_of
                .iter()
                .filter(|c| !members.contains(c))
                .map(|c| eid(c))
                .fold(Vec::new(), |mut all, c| {
                    if !all.contains(&c) {
                        all.push(c);
                    }
                    all
                }),
        });
        let req = self.request(who, queue, priority);
        let from = self.events.len();
        let result = acquire(
            &mut self.bench,
            &group,
            &req,
            self.now,
            self.policy,
            &mut self.events,
        );
        self.settle(from);
        result
    }

    fn single(&mut self, who: &str, on: &str, queue: bool) -> Result<AcquireOutcome, DomainError> {
        let req = self.request(who, queue, 0);
        let from = self.events.len();
        let (now, policy) = (self.now, self.policy);
        let locks = self.bench.get_mut(&eid(on)).unwrap();
        let result = locks.acquire(&req, now, policy, &mut self.events);
        self.settle(from);
        result
    }

    fn release(&mut self, who: &str, on: &str) -> Result<ReleaseOutcome, DomainError> {
        let from = self.events.len();
        let (now, dead) = (self.now, self.dead.clone());
        let locks = self.bench.get_mut(&eid(on)).unwrap();
        let result = locks.release(
            &sid(who),
            false,
            now,
            &mut |s| !dead.contains(s),
            &mut self.events,
        );
        self.settle(from);
        result
    }

    fn end_session(&mut self, who: &str) {
        self.dead.insert(sid(who));
        let from = self.events.len();
        let (now, dead) = (self.now, self.dead.clone());
        for locks in self.bench.values_mut() {
            locks.remove_session(
                &sid(who),
                true,
                EndReason::SessionEnded,
                now,
                &mut |s| !dead.contains(s),
                &mut self.events,
            );
        }
        self.settle(from);
    }

    fn advance(&mut self, ms: i64) {
        self.now = Timestamp::from_millis(self.now.as_millis() + ms);
        let from = self.events.len();
        let (now, dead) = (self.now, self.dead.clone());
        for locks in self.bench.values_mut() {
            locks.expire(now, &mut |s| !dead.contains(s), &mut self.events);
        }
        self.settle(from);
    }

    fn locks(&mut self, id: &str) -> &mut EquipmentLocks {
        self.bench.get_mut(&eid(id)).unwrap()
    }

    /// What `Uow::settle_groups` does, over the whole bench.
    fn settle(&mut self, mut next: usize) {
        let (now, dead) = (self.now, self.dead.clone());
        let mut live = |s: &SessionId| !dead.contains(s);
        loop {
            let mut changed = false;
            while next < self.events.len() {
                let cause = self.events[next].clone();
                next += 1;
                if !ends_membership(&cause) {
                    continue;
                }
                for (id, locks) in self.bench.iter_mut() {
                    if Some(id) != cause.equipment_id.as_ref() {
                        changed |= locks.follow_group_end(&cause, now, &mut live, &mut self.events);
                    }
                }
            }
            let heads: Vec<QueueEntry> = self
                .bench
                .values()
                .filter_map(|locks| locks.group_at_head(now))
                .cloned()
                .collect();
            for head in heads {
                changed |= try_grant(&mut self.bench, &head, now, &mut live, &mut self.events);
            }
            if !changed && next == self.events.len() {
                return;
            }
        }
    }

    /// Who holds each instrument.
    fn holders(&self) -> Vec<Option<&str>> {
        self.bench
            .values()
            .map(|l| l.holder().map(|s| s.as_str()))
            .collect()
    }

    fn queue(&self, id: &str) -> Vec<&str> {
        self.bench[&eid(id)]
            .queue
            .iter()
            .map(|e| e.session_id.as_str())
            .collect()
    }
}

#[test]
fn a_group_is_granted_whole_or_waits_in_every_queue() {
    let mut f = Floor::new();
    f.single("x", "b", false).unwrap();
    let busy = f.group("g", &["a", "b"], &[], false).unwrap_err();
    assert!(matches!(busy, DomainError::Busy { ref equipment, .. } if equipment.as_str() == "b"));
    assert_eq!(f.holders(), [None, Some("x"), None, None], "nothing taken");

    let queued = f.group("g", &["a", "b"], &[], true).unwrap();
    let GroupOutcome::Queued(places) = queued else {
        panic!("{queued:?}")
    };
    let positions: Vec<(&str, usize)> = places.iter().map(|(id, _, p)| (id.as_str(), *p)).collect();
    assert_eq!(positions, [("a", 1), ("b", 1)]);
    // The free member waits for its group: nobody behind it goes first.
    f.single("y", "a", true).unwrap();
    assert_eq!(f.queue("a"), ["g", "y"]);
    assert_eq!(f.holders(), [None, Some("x"), None, None]);

    f.release("x", "b").unwrap();
    assert_eq!(f.holders(), [Some("g"), Some("g"), None, None]);
    assert_eq!(f.queue("a"), ["y"]);
    let grants: Vec<&str> = f
        .events
        .iter()
        .filter(|e| e.event == EventKind::QueueProcessed)
        .filter_map(|e| e.group_id.as_deref())
        .collect();
    assert_eq!(grants, ["g2", "g2"], "each member's grant names the group");
}

#[test]
fn releasing_or_expiring_one_member_ends_the_whole_group() {
    let mut f = Floor::new();
    f.group("g", &["a", "b", "c"], &[], false).unwrap();
    f.single("y", "c", true).unwrap();
    f.release("g", "b").unwrap();
    assert_eq!(f.holders(), [None, None, Some("y"), None]);
    let released: Vec<&str> = f
        .events
        .iter()
        .filter(|e| e.event == EventKind::LockReleased)
        .map(|e| e.equipment_id.as_ref().unwrap().as_str())
        .collect();
    assert_eq!(released, ["b", "a", "c"]);

    let mut f = Floor::new();
    f.group("g", &["a", "b"], &[], false).unwrap();
    f.advance(10_000);
    assert_eq!(f.holders(), [None, None, None, None]);
    let lost: Vec<EndReason> = f
        .events
        .iter()
        .filter(|e| e.event == EventKind::LockExpired)
        .filter_map(|e| e.reason)
        .collect();
    assert_eq!(lost, [EndReason::Timeout, EndReason::Timeout]);
    assert_eq!(
        f.bench[&eid("b")].loss_of(&sid("g")),
        Some(EndReason::Timeout),
        "each member remembers how the group ended"
    );
}

#[test]
fn two_groups_over_the_same_instruments_never_wait_on_each_other() {
    let mut f = Floor::new();
    f.single("x", "a", false).unwrap();
    f.single("z", "b", false).unwrap();
    f.group("g", &["a", "b"], &[], true).unwrap();
    f.group("h", &["b", "a"], &[], true).unwrap();
    assert_eq!(f.queue("a"), ["g", "h"]);
    assert_eq!(f.queue("b"), ["g", "h"], "the same order in every queue");
    f.release("z", "b").unwrap();
    assert_eq!(f.holders(), [Some("x"), None, None, None], "b waits for g");
    f.release("x", "a").unwrap();
    assert_eq!(f.holders(), [Some("g"), Some("g"), None, None]);
    f.release("g", "a").unwrap();
    assert_eq!(f.holders(), [Some("h"), Some("h"), None, None]);
}

#[test]
fn a_pool_takes_a_free_instrument_or_the_first_to_come_free_in_turn() {
    let mut f = Floor::new();
    f.single("x", "a", false).unwrap();
    let got = f.group("p", &[], &["a", "b"], false).unwrap();
    let GroupOutcome::Locked(locks) = got else {
        panic!("{got:?}")
    };
    assert_eq!(locks[0].0.as_str(), "b", "the free one");

    // Both busy: it waits in both queues, FIFO with those who named one.
    f.group("q", &[], &["a", "b"], true).unwrap();
    f.single("y", "b", true).unwrap();
    assert_eq!((f.queue("a"), f.queue("b")), (vec!["q"], vec!["q", "y"]));
    f.release("x", "a").unwrap();
    assert_eq!(f.holders(), [Some("q"), Some("p"), None, None]);
    assert_eq!(f.queue("b"), ["y"], "its other place is gone");
    let gone = f
        .events
        .iter()
        .find(|e| e.reason == Some(EndReason::GrantedElsewhere))
        .expect("a dequeued event for the other place");
    assert_eq!(gone.equipment_id.as_ref().unwrap().as_str(), "b");
}

#[test]
fn a_group_with_a_pool_takes_its_members_and_one_of_the_pool() {
    let mut f = Floor::new();
    f.single("x", "c", false).unwrap();
    let got = f.group("g", &["a"], &["c", "d"], false).unwrap();
    let GroupOutcome::Locked(locks) = got else {
        panic!("{got:?}")
    };
    let ids: Vec<&str> = locks.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["a", "d"]);
    f.release("g", "d").unwrap();
    assert_eq!(f.holders(), [None, None, Some("x"), None]);
}

#[test]
fn a_higher_priority_group_goes_first_in_every_queue() {
    let mut f = Floor::new();
    f.policy.aging_ms = 0;
    f.single("x", "a", false).unwrap();
    f.group("g", &["a", "b"], &[], true).unwrap();
    f.prioritized_group("h", &["a", "b"], &[], true, 5).unwrap();
    assert_eq!(f.queue("a"), ["h", "g"]);
    assert_eq!(f.queue("b"), ["h", "g"]);
}

#[test]
fn group_places_never_trade_and_sessions_may_not_overlap_their_groups() {
    let mut f = Floor::new();
    f.single("x", "a", false).unwrap();
    f.single("y", "a", true).unwrap();
    f.group("g", &["a", "b"], &[], true).unwrap();
    let policy = f.policy;
    let now = f.now;
    let refused = f
        .locks("a")
        .step_back(&sid("y"), policy, now, &mut Vec::new())
        .unwrap_err();
    assert!(
        matches!(refused, DomainError::CannotTrade(_)),
        "{refused:?}"
    );
    let conflict = f.group("y", &["a", "c"], &[], true).unwrap_err();
    assert!(
        matches!(conflict, DomainError::GroupConflict { .. }),
        "{conflict:?}"
    );
    // Asking again for the same group answers where it stands.
    let again = f.group("g", &["b", "a"], &[], true).unwrap();
    assert!(
        matches!(again, GroupOutcome::Queued(ref p) if p.len() == 2),
        "{again:?}"
    );
}

#[test]
fn a_group_ends_with_its_session_and_a_dead_waiter_is_dropped_everywhere() {
    let mut f = Floor::new();
    f.single("x", "a", false).unwrap();
    f.group("g", &["a", "b"], &[], true).unwrap();
    f.single("y", "b", true).unwrap();
    f.end_session("g");
    assert_eq!(f.queue("a"), Vec::<&str>::new());
    assert_eq!(f.holders(), [Some("x"), Some("y"), None, None]);
}

/// An instrument's own maintenance from `now`, with no end.
fn calibration(now: Timestamp) -> Maintenance {
    Maintenance {
        reason: "calibration".into(),
        since: now,
        until: None,
        user: None,
        group: None,
    }
}

#[test]
fn maintenance_on_a_member_keeps_the_group_waiting() {
    let mut f = Floor::new();
    let m = calibration(f.now);
    let now = f.now;
    f.locks("b").start_maintenance(m, now, &mut Vec::new());
    let refused = f.group("g", &["a", "b"], &[], false).unwrap_err();
    assert!(
        matches!(refused, DomainError::InMaintenance { .. }),
        "{refused:?}"
    );
    f.group("g", &["a", "b"], &[], true).unwrap();
    assert_eq!(f.holders(), [None, None, None, None]);
    let from = f.events.len();
    let locks = f.bench.get_mut(&eid("b")).unwrap();
    locks
        .end_maintenance(None, now, &mut |_| true, &mut f.events)
        .unwrap();
    f.settle(from);
    assert_eq!(f.holders(), [Some("g"), Some("g"), None, None]);
}

#[test]
fn a_pool_refused_without_queueing_names_a_busy_candidate_before_one_in_maintenance() {
    let mut f = Floor::new();
    let m = calibration(f.now);
    let now = f.now;
    f.locks("a")
        .start_maintenance(m.clone(), now, &mut Vec::new());
    f.single("x", "b", false).unwrap();
    // `a` is listed first, but `b` may come free: the refusal is `b`'s.
    let refused = f.group("p", &[], &["a", "b"], false).unwrap_err();
    assert!(
        matches!(&refused, DomainError::Busy { equipment, holder: Some(h), .. }
            if equipment.as_str() == "b" && h.as_str() == "x"),
        "{refused:?}"
    );
    // A member in maintenance keeps the whole request out: its reason.
    let refused = f.group("g", &["a"], &["b", "c"], false).unwrap_err();
    assert!(
        matches!(&refused, DomainError::InMaintenance { equipment, .. } if equipment.as_str() == "a"),
        "{refused:?}"
    );
    // Every candidate in maintenance: maintenance is the reason.
    f.locks("b").start_maintenance(m, now, &mut Vec::new());
    let refused = f.group("q", &[], &["a", "b"], false).unwrap_err();
    assert!(
        matches!(&refused, DomainError::InMaintenance { equipment, .. } if equipment.as_str() == "a"),
        "{refused:?}"
    );
}

#[derive(Clone, Debug)]
enum Op {
    Group {
        who: u8,
        members: Vec<u8>,
        any_of: Vec<u8>,
        queue: bool,
        priority: i8,
    },
    Single {
        who: u8,
        on: u8,
        queue: bool,
    },
    Release {
        who: u8,
        on: u8,
    },
    End {
        who: u8,
    },
    Advance {
        ms: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let who = 0u8..5;
    let on = 0u8..4;
    let set = prop::collection::vec(0u8..4, 0..3);
    prop_oneof![
        4 => (who.clone(), set.clone(), set, any::<bool>(), -2i8..3).prop_map(
            |(who, members, any_of, queue, priority)| Op::Group { who, members, any_of, queue, priority }
        ),
        3 => (who.clone(), on.clone(), any::<bool>()).prop_map(|(who, on, queue)| Op::Single { who, on, queue }),
        3 => (who.clone(), on).prop_map(|(who, on)| Op::Release { who, on }),
        1 => who.prop_map(|who| Op::End { who }),
        2 => (0u16..6_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// The invariants of groups over the whole bench.
fn check_bench(f: &Floor) -> Result<(), TestCaseError> {
    let mut held: HashMap<String, (GroupRef, Vec<EquipmentId>)> = HashMap::new();
    for (id, locks) in &f.bench {
        check_invariants(locks, f.now)?;
        for grant in locks.group_grants() {
            let group = GroupRef::clone(grant.group.as_ref().unwrap());
            let entry = held
                .entry(group.group_id.clone())
                .or_insert((group, Vec::new()));
            entry.1.push(id.clone());
        }
    }
    for (group, on) in held.values() {
        for member in &group.members {
            prop_assert!(
                on.contains(member),
                "a group holds all of its members: {group:?} on {on:?}"
            );
        }
        let picked = on.iter().filter(|id| group.any_of.contains(id)).count();
        prop_assert_eq!(
            picked,
            usize::from(!group.any_of.is_empty()),
            "one of its pool: {:?}",
            group
        );
    }
    // Nothing waits on a free instrument it could have: a group heading a
    // queue could not be granted now.
    for locks in f.bench.values() {
        if let Some(head) = locks.queue.front().filter(|e| e.group.is_some()) {
            let mut bench = f.bench.clone();
            let granted = try_grant(
                &mut bench,
                head,
                f.now,
                &mut |s| !f.dead.contains(s),
                &mut Vec::new(),
            );
            prop_assert!(!granted, "a grantable group waits: {head:?}");
        }
    }
    // One global order: two requests sharing queues are in the same order
    // in each.
    let mut order: HashMap<(String, String), bool> = HashMap::new();
    for locks in f.bench.values() {
        let ids: Vec<&str> = locks
            .queue
            .iter()
            .filter_map(|e| e.group.as_ref().map(|g| g.group_id.as_str()))
            .collect();
        for (i, first) in ids.iter().enumerate() {
            for second in &ids[i + 1..] {
                let pair = (first.to_string(), second.to_string());
                let reverse = (second.to_string(), first.to_string());
                prop_assert!(
                    !order.contains_key(&reverse),
                    "{first} and {second} wait in opposite orders"
                );
                order.insert(pair, true);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    #[test]
    fn groups_stay_whole_ordered_and_never_wait_for_nothing(
        ops in prop::collection::vec(op(), 1..50),
        aging_ms in prop_oneof![Just(0u64), Just(1_000u64), Just(60_000u64)],
    ) {
        let mut f = Floor::new();
        f.policy.aging_ms = aging_ms;
        let name = |who: u8| format!("s{who}");
        let id = |on: u8| INSTRUMENTS[usize::from(on)];
        for op in ops {
            let before = f.bench.clone();
            let refused = match &op {
                Op::Group { who, members, any_of, queue, priority } => {
                    let mut members: Vec<&str> = members.iter().map(|m| id(*m)).collect();
                    members.dedup();
                    let any_of: Vec<&str> = any_of.iter().map(|m| id(*m)).collect();
                    if (members.is_empty() && any_of.iter().all(|c| members.contains(c)))
                        || f.dead.contains(&sid(&name(*who)))
                    {
                        continue;
                    }
                    members.sort();
                    members.dedup();
                    f.prioritized_group(&name(*who), &members, &any_of, *queue, *priority).is_err()
                }
                Op::Single { who, on, queue } => {
                    if f.dead.contains(&sid(&name(*who))) { continue; }
                    f.single(&name(*who), id(*on), *queue).is_err()
                }
                Op::Release { who, on } => f.release(&name(*who), id(*on)).is_err(),
                Op::End { who } => { f.end_session(&name(*who)); false }
                Op::Advance { ms } => { f.advance(i64::from(*ms)); false }
            };
            if refused {
                prop_assert_eq!(&f.bench, &before, "a refused request changes nothing: {:?}", op);
            }
            check_bench(&f)?;
        }
    }
}
