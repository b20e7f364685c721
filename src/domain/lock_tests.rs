//! Table-driven tests of every lock rule, and property tests of the
//! invariants over random sequences of operations and clock advances.

use super::*;
use proptest::prelude::*;
use std::collections::HashSet;

fn sid(name: &str) -> SessionId {
    SessionId::parse(name).unwrap()
}

fn t(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

/// One equipment plus the set of live sessions, at a settable time.
struct World {
    locks: EquipmentLocks,
    dead: HashSet<SessionId>,
    policy: LockPolicy,
    now: Timestamp,
    events: Vec<Event>,
    /// The `max_wait` of the next requests.
    max_wait: Timeout,
    /// The `claim_within` of the next requests.
    claim_within: Timeout,
}

impl World {
    fn new() -> Self {
        Self {
            locks: EquipmentLocks::new(EquipmentId::parse("psu").unwrap()),
            dead: HashSet::new(),
            policy: LockPolicy::default(),
            now: t(0),
            events: Vec::new(),
            max_wait: Timeout::NONE,
            claim_within: Timeout::NONE,
        }
    }

    fn request(
        &mut self,
        who: &str,
        mode: LockMode,
        timeout_ms: u64,
        queue: bool,
    ) -> Result<AcquireOutcome, DomainError> {
        self.prioritized(who, mode, timeout_ms, queue, 0)
    }

    fn prioritized(
        &mut self,
        who: &str,
        mode: LockMode,
        timeout_ms: u64,
        queue: bool,
        priority: i8,
    ) -> Result<AcquireOutcome, DomainError> {
        let req = LockRequest {
            session_id: sid(who),
            mode,
            timeout: Timeout::from_millis(timeout_ms),
            queue_if_busy: queue,
            holder: Default::default(),
            priority,
            max_wait: self.max_wait,
            maintenance_exempt: false,
            claim_within: self.claim_within,
        };
        self.locks
            .acquire(&req, self.now, self.policy, &mut self.events)
    }

    fn refresh_a(&mut self) -> Result<AcquireOutcome, DomainError> {
        self.ex("a", false)
    }

    fn ex(&mut self, who: &str, queue: bool) -> Result<AcquireOutcome, DomainError> {
        self.request(who, LockMode::Exclusive, 10_000, queue)
    }

    fn obs(&mut self, who: &str, queue: bool) -> Result<AcquireOutcome, DomainError> {
        self.request(who, LockMode::Observer, 10_000, queue)
    }

    fn release(&mut self, who: &str, force: bool) -> Result<ReleaseOutcome, DomainError> {
        let dead = self.dead.clone();
        self.locks.release(
            &sid(who),
            force,
            self.now,
            &mut |s| !dead.contains(s),
            &mut self.events,
        )
    }

    fn advance_to(&mut self, ms: i64) -> usize {
        self.now = t(ms);
        let dead = self.dead.clone();
        self.locks
            .expire(self.now, &mut |s| !dead.contains(s), &mut self.events)
    }

    fn holder(&self) -> Option<&str> {
        self.locks.holder().map(|s| s.as_str())
    }

    fn observers(&self) -> Vec<&str> {
        self.locks
            .observers
            .iter()
            .map(|g| g.session_id.as_str())
            .collect()
    }

    fn queue(&self) -> Vec<&str> {
        self.locks
            .queue
            .iter()
            .map(|e| e.session_id.as_str())
            .collect()
    }

    fn kinds(&self) -> Vec<EventKind> {
        self.events.iter().map(|e| e.event).collect()
    }
}

/// `who` is refused `access` because it lost its lock for `reason`.
#[track_caller]
fn assert_lost(w: &mut World, who: &str, access: Access, reason: EndReason) {
    let err = w
        .locks
        .authorize(&sid(who), access, None, w.now)
        .unwrap_err();
    assert!(
        matches!(err, DomainError::LockLost { reason: r, .. } if r == reason),
        "{who}: {err:?}"
    );
}

fn status(outcome: &AcquireOutcome) -> (&'static str, Option<usize>) {
    match outcome {
        AcquireOutcome::Locked(_) => ("locked", None),
        AcquireOutcome::Refreshed(_) => ("refreshed", None),
        AcquireOutcome::Queued { position, .. } => ("queued", Some(*position)),
    }
}

#[test]
fn acquire_table() {
    use LockMode::{Exclusive as X, Observer as O};
    // (setup: who holds/queues, then the request) -> expected status or error
    type Request = (&'static str, LockMode, bool);
    type Setup = &'static [Request];
    type Expected = Result<(&'static str, Option<usize>), &'static str>;
    let cases: &[(&str, Setup, Request, Expected)] = &[
        ("free exclusive", &[], ("a", X, false), Ok(("locked", None))),
        ("free observer", &[], ("a", O, false), Ok(("locked", None))),
        (
            "busy, no queue",
            &[("a", X, false)],
            ("b", X, false),
            Err("Busy"),
        ),
        (
            "busy, queue",
            &[("a", X, false)],
            ("b", X, true),
            Ok(("queued", Some(1))),
        ),
        (
            "second in line",
            &[("a", X, false), ("b", X, true)],
            ("c", X, true),
            Ok(("queued", Some(2))),
        ),
        (
            "ask again while queued",
            &[("a", X, false), ("b", X, true), ("c", X, true)],
            ("b", X, true),
            Ok(("queued", Some(1))),
        ),
        (
            "holder again",
            &[("a", X, false)],
            ("a", X, false),
            Ok(("refreshed", None)),
        ),
        (
            "holder asks observer",
            &[("a", X, false)],
            ("a", O, false),
            Ok(("refreshed", None)),
        ),
        (
            "observer again",
            &[("a", O, false)],
            ("a", O, false),
            Ok(("refreshed", None)),
        ),
        (
            "observers share",
            &[("a", O, false)],
            ("b", O, false),
            Ok(("locked", None)),
        ),
        (
            "observer on exclusive",
            &[("a", X, false)],
            ("b", O, false),
            Err("Busy"),
        ),
        (
            "observer queues on exclusive",
            &[("a", X, false)],
            ("b", O, true),
            Ok(("queued", Some(1))),
        ),
        (
            "exclusive over observers",
            &[("a", O, false), ("b", O, false)],
            ("c", X, false),
            Ok(("locked", None)),
        ),
        (
            "sole observer upgrades",
            &[("a", O, false)],
            ("a", X, false),
            Ok(("locked", None)),
        ),
        (
            "nobody jumps the queue",
            &[("a", X, false), ("b", X, true)],
            ("c", O, false),
            Err("Busy"),
        ),
    ];
    for (name, setup, (who, mode, queue), expected) in cases {
        let mut w = World::new();
        for (s, m, q) in *setup {
            w.request(s, *m, 10_000, *q)
                .unwrap_or_else(|e| panic!("{name}: setup {s}: {e}"));
        }
        let before = w.locks.clone();
        let got = w.request(who, *mode, 10_000, *queue);
        match (got, expected) {
            (Ok(outcome), Ok(want)) => assert_eq!(status(&outcome), *want, "{name}"),
            (Err(e), Err(want)) => {
                assert!(format!("{e:?}").starts_with(want), "{name}: {e:?}");
                assert_eq!(w.locks, before, "{name}: an error changes nothing");
            }
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn an_exclusive_grant_revokes_observers_and_remembers_it() {
    let mut w = World::new();
    w.obs("a", false).unwrap();
    w.obs("b", false).unwrap();
    w.ex("b", false).unwrap();
    assert_eq!(w.holder(), Some("b"));
    assert!(w.observers().is_empty());
    assert_eq!(
        w.kinds(),
        [
            EventKind::ObserverLockAcquired,
            EventKind::ObserverLockAcquired,
            EventKind::ObserverRevoked,
            EventKind::ObserverLockReleased, // b's own observer lock, upgraded
            EventKind::LockAcquired,
        ]
    );
    assert_lost(&mut w, "a", Access::Observe, EndReason::ExclusiveGranted);
}

#[test]
fn refresh_replaces_the_timeout_and_restarts_the_lease() {
    let mut w = World::new();
    w.request("a", LockMode::Exclusive, 1_000, false).unwrap();
    w.now = t(900);
    let AcquireOutcome::Refreshed(g) = w.request("a", LockMode::Observer, 5_000, false).unwrap()
    else {
        panic!("expected refreshed");
    };
    assert_eq!(
        (g.mode, g.deadline()),
        (LockMode::Exclusive, Some(t(5_900)))
    );
    assert_eq!(g.fencing_token, 1, "a refresh is not a new grant");
}

#[test]
fn hand_off_is_fifo_with_the_waiters_own_timeout() {
    let mut w = World::new();
    w.ex("a", false).unwrap();
    w.request("b", LockMode::Exclusive, 2_000, true).unwrap();
    w.request("c", LockMode::Exclusive, 3_000, true).unwrap();
    w.now = t(100);
    assert_eq!(
        w.release("a", false).unwrap(),
        ReleaseOutcome::Released { was_forced: false }
    );
    let g = w.locks.exclusive.clone().unwrap();
    assert_eq!(
        (g.session_id.as_str(), g.deadline(), g.fencing_token),
        ("b", Some(t(2_100)), 2)
    );
    assert_eq!(w.queue(), ["c"]);
    assert_eq!(w.locks.position_of(&sid("c")), Some(1));
    assert_eq!(w.kinds().last(), Some(&EventKind::QueueProcessed));
}

#[test]
fn observers_at_the_head_are_granted_together_up_to_the_first_exclusive() {
    let mut w = World::new();
    w.ex("a", false).unwrap();
    for (who, mode) in [
        ("o1", LockMode::Observer),
        ("o2", LockMode::Observer),
        ("x", LockMode::Exclusive),
        ("o3", LockMode::Observer),
    ] {
        w.request(who, mode, 10_000, true).unwrap();
    }
    w.release("a", false).unwrap();
    assert_eq!(w.observers(), ["o1", "o2"]);
    assert_eq!(
        w.queue(),
        ["x", "o3"],
        "x waits for the observers; o3 may not jump it"
    );
    assert!(matches!(
        w.obs("late", false),
        Err(DomainError::Busy { holder: None, .. })
    ));
    w.release("o1", false).unwrap();
    assert_eq!(w.holder(), None);
    assert_eq!(
        w.release("o2", false).unwrap(),
        ReleaseOutcome::ObserverReleased
    );
    assert_eq!(w.holder(), Some("x"));
    assert_eq!(w.queue(), ["o3"]);
}

#[test]
fn a_queued_observer_waiting_for_exclusive_is_upgraded_at_its_turn() {
    let mut w = World::new();
    w.ex("a", false).unwrap();
    w.obs("o", true).unwrap();
    w.ex("x", true).unwrap();
    w.release("a", false).unwrap();
    assert_eq!((w.observers(), w.queue()), (vec!["o"], vec!["x"]));
    w.ex("o", true).unwrap(); // o observes and now also waits for exclusive
    assert_eq!(w.queue(), ["x", "o"]);
    w.release("x", false).unwrap(); // x leaves: o's own observer lock does not block o
    assert_eq!(w.holder(), Some("o"));
    assert!(w.observers().is_empty());
}

#[test]
fn entries_of_sessions_that_are_gone_are_dropped_not_granted() {
    let mut w = World::new();
    w.ex("a", false).unwrap();
    w.ex("gone", true).unwrap();
    w.ex("b", true).unwrap();
    w.dead.insert(sid("gone"));
    w.release("a", false).unwrap();
    assert_eq!(w.holder(), Some("b"));
    assert!(
        w.events
            .iter()
            .any(|e| e.event == EventKind::Dequeued && e.reason == Some(EndReason::SessionNotLive))
    );
}

#[test]
fn higher_priority_is_served_first_equal_ones_in_arrival_order_and_nobody_is_preempted() {
    let mut w = World::new();
    w.ex("a", false).unwrap();
    for (who, priority) in [("b", 0), ("c", 5), ("d", 0), ("e", 5), ("f", -2)] {
        w.prioritized(who, LockMode::Exclusive, 10_000, true, priority)
            .unwrap();
    }
    assert_eq!(w.holder(), Some("a"), "no preemption");
    assert_eq!(w.queue(), ["c", "e", "b", "d", "f"]);
    // The answer's position is the real one.
    let again = w.prioritized("e", LockMode::Exclusive, 10_000, true, 5);
    assert_eq!(status(&again.unwrap()), ("queued", Some(2)));
    let queued = w.events.iter().rfind(|e| e.event == EventKind::Queued);
    assert_eq!(queued.and_then(|e| e.priority), Some(-2));
    w.release("a", false).unwrap();
    assert_eq!(w.holder(), Some("c"));
    assert_eq!(w.queue(), ["e", "b", "d", "f"]);
}

#[test]
fn waiting_ages_a_request_so_a_later_more_important_one_overtakes_only_recent_waiters() {
    // One step a minute (the default): a priority-5 request goes ahead of
    // a priority-0 waiter that has waited under five minutes only.
    let mut w = World::new();
    w.ex("a", false).unwrap();
    w.ex("old", true).unwrap();
    w.now = t(300_001);
    w.ex("young", true).unwrap();
    w.prioritized("vip", LockMode::Exclusive, 10_000, true, 5)
        .unwrap();
    assert_eq!(w.queue(), ["old", "vip", "young"]);
    // Without aging, priority alone decides.
    let mut w = World::new();
    w.policy.aging_ms = 0;
    w.ex("a", false).unwrap();
    w.ex("old", true).unwrap();
    w.now = t(100_000_000);
    w.prioritized("vip", LockMode::Exclusive, 10_000, true, 1)
        .unwrap();
    assert_eq!(w.queue(), ["vip", "old"]);
}

#[test]
fn a_request_served_before_every_waiter_that_nothing_blocks_is_granted_at_once() {
    // Observers hold; an exclusive waiter waits for them. An observer of
    // higher priority would be first in line and observers do not block
    // it: granted. At priority 0 it waits behind the exclusive request.
    let mut w = World::new();
    w.ex("a", false).unwrap();
    w.obs("o1", true).unwrap();
    w.ex("x", true).unwrap();
    w.release("a", false).unwrap();
    assert_eq!(status(&w.obs("o2", true).unwrap()), ("queued", Some(2)));
    let granted = w
        .prioritized("o3", LockMode::Observer, 10_000, false, 1)
        .unwrap();
    assert_eq!(status(&granted), ("locked", None));
    assert_eq!(w.observers(), ["o1", "o3"]);
    assert_eq!(w.queue(), ["x", "o2"]);
    // An exclusive one of higher priority is still blocked by observers:
    // first in line, not granted, and 409 without queue_if_busy.
    assert!(matches!(
        w.prioritized("y", LockMode::Exclusive, 10_000, false, 3),
        Err(DomainError::Busy { .. })
    ));
    let queued = w.prioritized("y", LockMode::Exclusive, 10_000, true, 3);
    assert_eq!(status(&queued.unwrap()), ("queued", Some(1)));
}

#[test]
fn a_waiter_past_its_max_wait_is_dropped_and_the_next_moves_up() {
    let mut w = World::new();
    w.ex("a", false).unwrap();
    w.max_wait = Timeout::from_millis(3_000);
    w.ex("b", true).unwrap();
    w.max_wait = Timeout::NONE;
    w.ex("c", true).unwrap();
    assert_eq!(w.locks.queue[0].wait_deadline, Some(t(3_000)));
    // The deadline is the equipment's next one (a's lock runs 10 s).
    assert_eq!(w.locks.next_deadline(), Some(t(3_000)));
    w.advance_to(2_999);
    assert_eq!(w.queue(), ["b", "c"]);
    w.events.clear();
    w.advance_to(3_000);
    assert_eq!(w.queue(), ["c"], "over at its deadline");
    assert_eq!(w.kinds(), [EventKind::QueueTimeout]);
    assert_eq!(w.events[0].reason, Some(EndReason::WaitTimeout));
    assert_eq!(w.locks.next_deadline(), Some(t(10_000)));
    w.release("a", false).unwrap();
    assert_eq!(w.holder(), Some("c"), "nobody waits for a ghost");
}

#[test]
fn an_admin_removes_a_waiter_and_the_head_leaving_lets_the_next_in() {
    let mut w = World::new();
    w.ex("a", false).unwrap();
    w.obs("o1", true).unwrap();
    w.ex("x", true).unwrap();
    w.obs("o2", true).unwrap();
    w.release("a", false).unwrap();
    assert_eq!((w.observers(), w.queue()), (vec!["o1"], vec!["x", "o2"]));
    let before = w.locks.clone();
    let missing = w.locks.remove_waiter(
        &sid("nobody"),
        &sid("admin"),
        w.now,
        &mut |_| true,
        &mut w.events,
    );
    assert!(matches!(missing, Err(DomainError::NotQueued { .. })));
    assert_eq!(w.locks, before, "a refused removal changes nothing");
    w.events.clear();
    let (entry, position) = w
        .locks
        .remove_waiter(
            &sid("x"),
            &sid("admin"),
            w.now,
            &mut |_| true,
            &mut w.events,
        )
        .unwrap();
    assert_eq!((entry.session_id, position), (sid("x"), 1));
    assert_eq!(w.kinds(), [EventKind::Dequeued, EventKind::QueueProcessed]);
    assert_eq!(w.events[0].reason, Some(EndReason::Removed));
    assert_eq!(w.events[0].forced_by, Some(sid("admin")));
    assert_eq!(
        w.observers(),
        ["o1", "o2"],
        "the observer behind x is let in"
    );
}

fn service(reason: &str, until: Option<i64>) -> Maintenance {
    Maintenance {
        reason: reason.into(),
        since: t(0),
        until: until.map(t),
        user: None,
        group: None,
    }
}

#[test]
fn maintenance_refuses_or_queues_new_requests_keeps_the_holder_and_ends_on_time() {
    let mut w = World::new();
    w.ex("a", false).unwrap();
    w.events.clear();
    w.locks
        .start_maintenance(service("calibration", Some(5_000)), w.now, &mut w.events);
    assert_eq!(w.kinds(), [EventKind::MaintenanceStarted]);
    assert_eq!(
        w.events[0].session_id,
        Some(sid("a")),
        "the holder is warned"
    );
    assert_eq!(w.holder(), Some("a"), "and keeps its lock");
    assert!(matches!(w.refresh_a(), Ok(AcquireOutcome::Refreshed(_))));
    assert!(matches!(
        w.ex("b", false),
        Err(DomainError::InMaintenance { until: Some(u), .. }) if u == t(5_000)
    ));
    assert_eq!(status(&w.ex("b", true).unwrap()), ("queued", Some(1)));
    // Released during maintenance: the queue waits for service.
    w.release("a", false).unwrap();
    assert_eq!((w.holder(), w.queue()), (None, vec!["b"]));
    // Free, yet new requests still wait (or are refused).
    assert_eq!(status(&w.obs("c", true).unwrap()), ("queued", Some(2)));
    assert_eq!(w.locks.next_deadline(), Some(t(5_000)));
    w.events.clear();
    w.advance_to(5_000);
    assert_eq!(
        w.kinds(),
        [EventKind::MaintenanceEnded, EventKind::QueueProcessed]
    );
    assert_eq!(w.events[0].reason, Some(EndReason::Timeout));
    assert_eq!((w.holder(), w.queue()), (Some("b"), vec!["c"]));
    assert!(w.locks.maintenance.is_none());
}

#[test]
fn an_admin_is_exempt_and_ending_maintenance_serves_the_queue() {
    let mut w = World::new();
    w.locks
        .start_maintenance(service("repair", None), w.now, &mut w.events);
    assert_eq!(status(&w.ex("b", true).unwrap()), ("queued", Some(1)));
    let admin = LockRequest {
        session_id: sid("admin"),
        mode: LockMode::Observer,
        timeout: Timeout::from_millis(10_000),
        queue_if_busy: false,
        holder: Default::default(),
        priority: 0,
        max_wait: Timeout::NONE,
        maintenance_exempt: true,
        claim_within: Timeout::NONE,
    };
    let granted = w.locks.acquire(&admin, w.now, w.policy, &mut w.events);
    assert_eq!(status(&granted.unwrap()), ("locked", None));
    w.release("admin", false).unwrap();
    assert_eq!(w.holder(), None, "still in maintenance");
    w.events.clear();
    w.locks
        .end_maintenance(None, w.now, &mut |_| true, &mut w.events)
        .unwrap();
    assert_eq!(
        w.kinds(),
        [EventKind::MaintenanceEnded, EventKind::QueueProcessed]
    );
    assert_eq!(w.holder(), Some("b"));
    assert!(matches!(
        w.locks
            .end_maintenance(None, w.now, &mut |_| true, &mut w.events),
        Err(DomainError::NotInMaintenance { .. })
    ));
}

#[test]
fn maintenance_started_again_changes_reason_and_until_but_keeps_since_and_starter() {
    let mut w = World::new();
    let by = |user: &str, reason: &str, since: i64, until: Option<i64>| Maintenance {
        user: Some(user.into()),
        since: t(since),
        ..service(reason, until)
    };
    w.now = t(1_000);
    let first = by("root", "calibration", 1_000, Some(5_000));
    w.locks.start_maintenance(first, w.now, &mut w.events);
    w.now = t(3_000);
    let again = by("ops", "repair", 3_000, Some(9_000));
    assert!(w.locks.start_maintenance(again, w.now, &mut w.events));
    let m = w.locks.maintenance_at(w.now).unwrap();
    assert_eq!(
        (m.reason.as_str(), m.until, m.since, m.user.as_deref()),
        ("repair", Some(t(9_000)), t(1_000), Some("root"))
    );
    // Over (its `until` passed): a new one starts afresh.
    w.now = t(10_000);
    let later = by("ops", "cleaning", 10_000, None);
    w.locks.start_maintenance(later, w.now, &mut w.events);
    let m = w.locks.maintenance_at(w.now).unwrap();
    assert_eq!((m.since, m.user.as_deref()), (t(10_000), Some("ops")));
}

#[test]
fn a_groups_maintenance_neither_replaces_nor_ends_an_instruments_own() {
    let mut w = World::new();
    let bench = EquipmentId::parse("bench3").unwrap();
    let of_bench = |reason: &str| Maintenance {
        group: Some(bench.clone()),
        ..service(reason, None)
    };
    w.locks
        .start_maintenance(service("calibration", Some(5_000)), w.now, &mut w.events);
    w.events.clear();
    assert!(
        !w.locks
            .start_maintenance(of_bench("recabling"), w.now, &mut w.events)
    );
    assert_eq!(w.kinds(), []);
    assert!(matches!(
        w.locks
            .end_maintenance(Some(&bench), w.now, &mut |_| true, &mut w.events),
        Err(DomainError::NotInMaintenance { .. })
    ));
    let own = w.locks.maintenance_at(w.now).unwrap();
    assert_eq!(
        (own.reason.as_str(), own.group.as_ref()),
        ("calibration", None)
    );

    // Once the instrument's own is over, the group's applies and ends.
    w.locks
        .end_maintenance(None, w.now, &mut |_| true, &mut w.events)
        .unwrap();
    assert!(
        w.locks
            .start_maintenance(of_bench("recabling"), w.now, &mut w.events)
    );
    // The instrument's own replaces the group's (an admin named it).
    assert!(
        w.locks
            .start_maintenance(service("repair", None), w.now, &mut w.events)
    );
    assert!(
        w.locks
            .end_maintenance(Some(&bench), w.now, &mut |_| true, &mut w.events)
            .is_err()
    );
    w.locks
        .start_maintenance(of_bench("recabling"), w.now, &mut w.events);
    assert_eq!(w.locks.maintenance_at(w.now).unwrap().reason, "repair");
}

#[test]
fn a_lock_from_the_queue_not_claimed_in_its_window_passes_to_the_next() {
    let mut w = World::new();
    w.ex("a", false).unwrap();
    w.claim_within = Timeout::from_millis(2_000);
    w.ex("b", true).unwrap();
    w.claim_within = Timeout::NONE;
    w.ex("c", true).unwrap();
    w.now = t(1_000);
    w.release("a", false).unwrap();
    let granted = w.locks.exclusive.clone().unwrap();
    assert_eq!(
        (granted.claim_by, granted.deadline()),
        (Some(t(3_000)), Some(t(3_000)))
    );
    w.events.clear();
    w.advance_to(3_000);
    assert_eq!(
        w.kinds(),
        [EventKind::ClaimExpired, EventKind::QueueProcessed]
    );
    assert_eq!(w.events[0].reason, Some(EndReason::ClaimExpired));
    assert_eq!(w.holder(), Some("c"));
    // c's own request had no window: it keeps its full lease.
    assert_eq!(w.locks.exclusive.as_ref().unwrap().claim_by, None);
    assert_lost(&mut w, "b", Access::Control, EndReason::ClaimExpired);

    // A renewal is the claim: the lease runs on.
    let mut w = World::new();
    w.ex("a", false).unwrap();
    w.claim_within = Timeout::from_millis(2_000);
    w.ex("b", true).unwrap();
    w.release("a", false).unwrap();
    w.now = t(1_999);
    w.locks.renew(&sid("b"), w.now).unwrap();
    w.advance_to(5_000);
    assert_eq!(w.holder(), Some("b"));
    assert_eq!(
        w.locks.exclusive.as_ref().unwrap().deadline(),
        Some(t(11_999))
    );
}

#[test]
fn waiters_step_back_and_swap_only_when_both_ask_and_nobody_else_moves() {
    let mut w = World::new();
    w.ex("a", false).unwrap();
    for who in ["b", "c", "d", "e"] {
        w.ex(who, true).unwrap();
    }
    let p = w.policy;
    w.events.clear();
    assert_eq!(w.locks.step_back(&sid("b"), p, w.now, &mut w.events), Ok(2));
    assert_eq!(w.queue(), ["c", "b", "d", "e"]);
    assert_eq!(w.kinds(), [EventKind::QueueSteppedBack]);
    let before = w.locks.clone();
    assert!(matches!(
        w.locks.step_back(&sid("e"), p, w.now, &mut w.events),
        Err(DomainError::CannotTrade(_))
    ));
    assert_eq!(w.locks, before, "last in line: nothing changes");
    // A swap needs both: the first ask is only an offer.
    w.events.clear();
    assert_eq!(
        w.locks.swap(&sid("c"), &sid("e"), p, w.now, &mut w.events),
        Ok((false, 1))
    );
    assert_eq!(w.queue(), ["c", "b", "d", "e"]);
    assert_eq!(
        w.locks.swap(&sid("e"), &sid("c"), p, w.now, &mut w.events),
        Ok((true, 1))
    );
    assert_eq!(w.queue(), ["e", "b", "d", "c"]);
    assert_eq!(
        w.kinds(),
        [EventKind::QueueSwapped, EventKind::QueueSwapped]
    );
    // A newcomer of higher priority still lands by the traded keys.
    w.prioritized("f", LockMode::Exclusive, 10_000, true, 1)
        .unwrap();
    assert_eq!(w.queue(), ["f", "e", "b", "d", "c"]);
    w.release("a", false).unwrap();
    assert_eq!(w.holder(), Some("f"));
}

#[test]
fn release_table() {
    let mut w = World::new();
    w.ex("a", false).unwrap();
    w.ex("q", true).unwrap();
    assert!(matches!(
        w.release("b", false),
        Err(DomainError::NotHolder {
            holder: Some(_),
            ..
        })
    ));
    assert_eq!(w.release("q", false).unwrap(), ReleaseOutcome::Dequeued);
    assert!(matches!(
        w.release("q", false),
        Err(DomainError::NotHolder { .. })
    ));
    assert_eq!(
        w.release("admin", true).unwrap(),
        ReleaseOutcome::Released { was_forced: true }
    );
    let forced = w
        .events
        .iter()
        .find(|e| e.event == EventKind::LockForceReleased)
        .unwrap();
    assert_eq!(
        (forced.session_id.as_ref(), forced.forced_by.as_ref()),
        (Some(&sid("a")), Some(&sid("admin")))
    );
    assert!(matches!(
        w.release("admin", true),
        Err(DomainError::NotLocked { .. })
    ));
    assert!(matches!(
        w.release("b", false),
        Err(DomainError::NoLock { lost: None, .. })
    ));
    assert!(matches!(
        w.release("a", false),
        Err(DomainError::NoLock {
            lost: Some(EndReason::Forced),
            ..
        })
    ));
    assert_lost(&mut w, "a", Access::Control, EndReason::Forced);
}

#[test]
fn a_forced_release_by_a_waiter_leaves_its_own_place() {
    let mut w = World::new();
    w.ex("a", false).unwrap();
    w.ex("q", true).unwrap();
    w.ex("r", true).unwrap();
    let mut alive = |_: &SessionId| true;
    assert!(
        !w.locks.release_forces(&sid("q"), true, &mut alive),
        "q waits here"
    );
    assert!(w.locks.release_forces(&sid("admin"), true, &mut alive));
    assert!(!w.locks.release_forces(&sid("admin"), false, &mut alive));
    let mut ended = |_: &SessionId| false;
    assert!(
        w.locks.release_forces(&sid("q"), true, &mut ended),
        "an ended session's name proves nothing"
    );
    assert_eq!(w.release("q", true).unwrap(), ReleaseOutcome::Dequeued);
    assert_eq!((w.holder(), w.queue()), (Some("a"), vec!["r"]));
    assert!(!w.kinds().contains(&EventKind::LockForceReleased));
    // The holder forcing releases its own lock, not as a forced release.
    assert_eq!(
        w.release("a", true).unwrap(),
        ReleaseOutcome::Released { was_forced: false }
    );
    assert_eq!(w.holder(), Some("r"));
}

#[test]
fn release_and_renew_agree_on_a_lost_lock_and_tell_nobody_else() {
    let mut w = World::new();
    w.ex("a", false).unwrap();
    w.release("admin", true).unwrap();
    w.ex("b", false).unwrap();
    // a lost its lock to a force release; b holds it now.
    let lost = |e: &DomainError| {
        matches!(
            e,
            DomainError::NoLock {
                lost: Some(EndReason::Forced),
                ..
            }
        )
    };
    assert!(lost(&w.release("a", false).unwrap_err()));
    assert!(lost(&w.locks.renew(&sid("a"), w.now).unwrap_err()));
    // c never held a lock here: the plain answers, not why a's lock ended.
    assert!(matches!(
        w.release("c", false).unwrap_err(),
        DomainError::NotHolder {
            holder: Some(_),
            ..
        }
    ));
    assert!(matches!(
        w.locks.renew(&sid("c"), w.now).unwrap_err(),
        DomainError::NoLock { lost: None, .. }
    ));
    assert!(w.locks.lost_lock(&sid("c")).is_none());
}

#[test]
fn expiry_is_exact_and_hands_off() {
    let mut w = World::new();
    w.request("a", LockMode::Exclusive, 1_000, false).unwrap();
    w.request("b", LockMode::Exclusive, 1_000, true).unwrap();
    assert_eq!(w.locks.next_deadline(), Some(t(1_000)));
    assert_eq!(w.advance_to(999), 0);
    assert_eq!(w.holder(), Some("a"));
    assert_eq!(w.advance_to(1_000), 1);
    assert_eq!(w.holder(), Some("b"));
    assert_eq!(
        w.locks.next_deadline(),
        Some(t(2_000)),
        "b's lease starts at the hand-off"
    );
    assert_lost(&mut w, "a", Access::Control, EndReason::Timeout);
    // No timeout never expires.
    let mut w = World::new();
    w.request("a", LockMode::Exclusive, 0, false).unwrap();
    assert_eq!(w.locks.next_deadline(), None);
    assert_eq!(w.advance_to(i64::MAX / 4), 0);
}

#[test]
fn authorize_table() {
    let mut w = World::new();
    w.ex("x", false).unwrap();
    let cases: &[(&str, Access, Option<u64>, Option<&str>)] = &[
        ("x", Access::Control, None, None),
        ("x", Access::Observe, None, None),
        ("x", Access::Control, Some(1), None),
        // Greater than any token ever issued here: a client bug.
        ("x", Access::Control, Some(2), Some("UnissuedFencingToken")),
        ("x", Access::Control, Some(7), Some("UnissuedFencingToken")),
        ("x", Access::Control, Some(0), Some("StaleFencingToken")),
        ("y", Access::Control, None, Some("NotHolder")),
        ("y", Access::Observe, None, Some("NotHolder")),
    ];
    for (who, access, token, expected) in cases {
        let got = w.locks.authorize(&sid(who), *access, *token, w.now);
        match expected {
            None => assert!(got.is_ok(), "{who} {access:?} {token:?}: {got:?}"),
            Some(want) => assert!(
                format!("{got:?}").contains(want),
                "{who} {access:?}: {got:?}"
            ),
        }
    }
    let mut w = World::new();
    w.obs("o", false).unwrap();
    assert!(
        w.locks
            .authorize(&sid("o"), Access::Observe, None, w.now)
            .is_ok()
    );
    assert!(
        w.locks
            .authorize(&sid("o"), Access::Control, None, w.now)
            .is_err()
    );
    // With locks disabled, a token never issued is refused all the same.
    assert!(w.locks.check_fencing(Some(1)).is_ok());
    assert!(matches!(
        w.locks.check_fencing(Some(2)),
        Err(DomainError::UnissuedFencingToken {
            sent: 2,
            latest: 1,
            ..
        })
    ));
}

#[test]
fn authorize_and_renew_restart_the_lease() {
    let mut w = World::new();
    w.request("x", LockMode::Exclusive, 1_000, false).unwrap();
    w.now = t(800);
    w.locks
        .authorize(&sid("x"), Access::Control, None, w.now)
        .unwrap();
    assert_eq!(w.locks.next_deadline(), Some(t(1_800)));
    w.now = t(1_500);
    w.locks.renew(&sid("x"), w.now).unwrap();
    assert_eq!(w.locks.next_deadline(), Some(t(2_500)));
    assert!(matches!(
        w.locks.renew(&sid("y"), w.now),
        Err(DomainError::NoLock { .. })
    ));
}

#[test]
fn a_session_end_releases_its_locks_and_places_unless_auto_release_is_off() {
    for auto_release in [true, false] {
        let mut w = World::new();
        w.ex("a", false).unwrap();
        w.ex("b", true).unwrap();
        w.ex("a2", true).unwrap();
        let released = w.locks.remove_session(
            &sid("a"),
            auto_release,
            EndReason::SessionEnded,
            w.now,
            &mut |_| true,
            &mut w.events,
        );
        if auto_release {
            assert_eq!((released, w.holder()), (1, Some("b")));
        } else {
            assert_eq!((released, w.holder()), (0, Some("a")));
        }
        w.locks.remove_session(
            &sid("a2"),
            auto_release,
            EndReason::SessionExpired,
            w.now,
            &mut |_| true,
            &mut w.events,
        );
        assert!(!w.queue().contains(&"a2"), "queue places always go");
    }
}

#[test]
fn switches_refuse_queueing_and_observers() {
    let mut w = World::new();
    w.policy = LockPolicy {
        queue_enabled: false,
        observer_enabled: false,
        ..LockPolicy::default()
    };
    assert_eq!(w.obs("a", false), Err(DomainError::ObserverModeDisabled));
    assert!(
        w.ex("a", true).is_ok(),
        "queue_if_busy on free equipment just locks"
    );
    let refused = w.ex("b", true).unwrap_err();
    assert!(
        matches!(&refused, DomainError::QueueDisabled { holder: Some(h), .. } if h.as_str() == "a"),
        "{refused:?}"
    );
    assert!(
        refused.to_string().contains("busy: locked by session a;"),
        "names the holder as a busy refusal does: {refused}"
    );
}

#[test]
fn maintenance_with_the_queue_disabled_is_refused_as_maintenance() {
    let mut w = World::new();
    w.policy = LockPolicy {
        queue_enabled: false,
        ..LockPolicy::default()
    };
    w.locks
        .start_maintenance(service("calibration", Some(5_000)), w.now, &mut w.events);
    let refused = w.ex("b", true).unwrap_err();
    assert!(matches!(
        refused,
        DomainError::InMaintenance { until: Some(u), can_queue: false, .. } if u == t(5_000)
    ));
    assert_eq!(
        refused.to_string(),
        format!(
            "equipment psu is in maintenance (calibration) until {}: try again when service resumes",
            t(5_000)
        )
    );
}

#[test]
fn in_the_way_names_maintenance_the_holder_observers_or_those_ahead() {
    let mut w = World::new();
    let holder = Holder {
        user: Some("alice".into()),
        client_name: Some("Lab PC #3".into()),
    };
    let req = LockRequest {
        session_id: sid("a"),
        mode: LockMode::Exclusive,
        timeout: Timeout::from_millis(10_000),
        queue_if_busy: false,
        holder: holder.clone(),
        priority: 0,
        max_wait: Timeout::NONE,
        maintenance_exempt: false,
        claim_within: Timeout::NONE,
    };
    w.locks
        .acquire(&req, w.now, w.policy, &mut w.events)
        .unwrap();
    let busy = w.ex("b", false).unwrap_err();
    assert_eq!(
        busy.to_string(),
        "equipment psu is busy: locked by session a (alice, Lab PC #3); set queue_if_busy to wait in line"
    );
    w.ex("b", true).unwrap();
    w.ex("c", true).unwrap();
    assert_eq!(
        w.locks.in_the_way(2, w.now).unwrap().to_string(),
        "locked by session a (alice, Lab PC #3)"
    );
    w.locks
        .start_maintenance(service("calibration", Some(5_000)), w.now, &mut w.events);
    assert_eq!(
        w.locks.in_the_way(2, w.now).unwrap().to_string(),
        format!("in maintenance: calibration until {}", t(5_000))
    );
    // Served after maintenance: b holds it, c waits for b.
    w.advance_to(5_000);
    w.release("a", false).unwrap();
    assert_eq!(w.holder(), Some("b"));
    w.release("b", false).unwrap();
    assert_eq!(w.holder(), Some("c"));
    w.ex("d", true).unwrap();
    w.ex("e", true).unwrap();
    w.release("c", false).unwrap();
    // d holds it; e is first in line behind d.
    assert_eq!(
        w.locks.in_the_way(1, w.now).unwrap().to_string(),
        "locked by session d"
    );
    assert_eq!(
        w.locks.in_the_way(3, w.now),
        Some(Obstacle::Holder {
            session: sid("d"),
            holder: Holder::default()
        })
    );
    w.release("d", false).unwrap();
    w.release("e", false).unwrap();
    w.obs("o", false).unwrap();
    assert_eq!(
        w.locks.in_the_way(1, w.now).unwrap().to_string(),
        "held by an observer"
    );
    assert_eq!(
        Obstacle::Ahead(2).to_string(),
        "busy: others are waiting (2 ahead)"
    );
}

// ---- property tests ------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Acquire {
        who: u8,
        observer: bool,
        timeout_ms: u64,
        queue: bool,
        priority: i8,
        max_wait_ms: u64,
    },
    Release {
        who: u8,
        force: bool,
    },
    Renew {
        who: u8,
    },
    Authorize {
        who: u8,
        control: bool,
    },
    EndSession {
        who: u8,
        auto_release: bool,
    },
    Kill {
        who: u8,
    },
    RemoveWaiter {
        who: u8,
    },
    Maintenance {
        until_ms: Option<u16>,
    },
    EndMaintenance,
    StepBack {
        who: u8,
    },
    Swap {
        who: u8,
        with: u8,
    },
    Advance {
        ms: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let who = 0u8..5;
    prop_oneof![
        4 => (who.clone(), any::<bool>(), prop_oneof![Just(0u64), 1u64..3_000], any::<bool>(), prop_oneof![3 => Just(0i8), 1 => -10i8..=10], prop_oneof![Just(0u64), 1u64..3_000])
            .prop_map(|(who, observer, timeout_ms, queue, priority, max_wait_ms)| Op::Acquire { who, observer, timeout_ms, queue, priority, max_wait_ms }),
        2 => (who.clone(), prop::bool::weighted(0.2)).prop_map(|(who, force)| Op::Release { who, force }),
        1 => who.clone().prop_map(|who| Op::Renew { who }),
        1 => (who.clone(), any::<bool>()).prop_map(|(who, control)| Op::Authorize { who, control }),
        1 => (who.clone(), any::<bool>()).prop_map(|(who, auto_release)| Op::EndSession { who, auto_release }),
        1 => who.clone().prop_map(|who| Op::Kill { who }),
        1 => who.clone().prop_map(|who| Op::RemoveWaiter { who }),
        1 => prop::option::of(1u16..3_000).prop_map(|until_ms| Op::Maintenance { until_ms }),
        1 => Just(Op::EndMaintenance),
        1 => who.clone().prop_map(|who| Op::StepBack { who }),
        1 => (who.clone(), who.clone()).prop_map(|(who, with)| Op::Swap { who, with }),
        3 => (0u16..2_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// The invariants of one equipment's lock state after every operation
/// (and expiry at `now`), shared with the lock group property test.
pub(crate) fn check_invariants(
    locks: &EquipmentLocks,
    now: Timestamp,
) -> Result<(), TestCaseError> {
    if locks.exclusive.is_some() {
        prop_assert!(
            locks.observers.is_empty(),
            "an exclusive holder excludes observers"
        );
    }
    let queued: Vec<&SessionId> = locks.queue.iter().map(|e| &e.session_id).collect();
    let unique: HashSet<&SessionId> = queued.iter().copied().collect();
    prop_assert_eq!(
        unique.len(),
        queued.len(),
        "a session is queued at most once"
    );
    if let Some(holder) = locks.holder() {
        prop_assert!(!unique.contains(holder), "the holder is never queued");
    }
    let observers: HashSet<&SessionId> = locks.observers.iter().map(|g| &g.session_id).collect();
    prop_assert_eq!(
        observers.len(),
        locks.observers.len(),
        "one observer lock per session"
    );
    for (i, e) in locks.queue.iter().enumerate() {
        prop_assert_eq!(
            locks.position_of(&e.session_id),
            Some(i + 1),
            "positions are 1..n"
        );
    }
    if locks.maintenance.is_some() {
        prop_assert!(
            locks.maintenance_at(now).is_some(),
            "a maintenance past its end is over after expire"
        );
    }
    // A group at the head waits for its other instruments (checked by the
    // group property test).
    if locks.exclusive.is_none()
        && locks.maintenance_at(now).is_none()
        && let Some(head) = locks.queue.front().filter(|h| h.group.is_none())
    {
        prop_assert_eq!(
            head.mode,
            LockMode::Exclusive,
            "an observer head with no holder would have been granted"
        );
        prop_assert!(
            locks
                .observers
                .iter()
                .any(|g| g.session_id != head.session_id),
            "the head waits only when blocked"
        );
    }
    for e in &locks.queue {
        prop_assert!(e.is_waiting(now), "nobody waits past its max_wait");
        if let Some(deadline) = e.wait_deadline {
            prop_assert!(
                locks.next_deadline().is_some_and(|d| d <= deadline),
                "the reaper sees every waiter's deadline"
            );
        }
    }
    for g in locks.exclusive.iter().chain(&locks.observers) {
        prop_assert!(
            g.is_live(now),
            "nothing past its deadline is held after expire"
        );
        prop_assert!(g.fencing_token <= locks.fencing_counter);
    }
    let tokens: HashSet<u64> = locks
        .exclusive
        .iter()
        .chain(&locks.observers)
        .map(|g| g.fencing_token)
        .collect();
    prop_assert_eq!(
        tokens.len(),
        locks.exclusive.iter().count() + locks.observers.len(),
        "tokens are unique"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn invariants_hold_over_random_histories(
        ops in prop::collection::vec(op(), 1..60),
        aging_ms in prop_oneof![Just(0u64), Just(1_000u64), Just(60_000u64)],
    ) {
        let mut w = World::new();
        w.policy.aging_ms = aging_ms;
        let name = |who: u8| format!("s{who}");
        let mut counter = 0;
        for op in ops {
            let before = w.locks.clone();
            let result: Result<(), DomainError> = match &op {
                Op::Acquire { who, observer, timeout_ms, queue, priority, max_wait_ms } => {
                    let mode = if *observer { LockMode::Observer } else { LockMode::Exclusive };
                    w.max_wait = Timeout::from_millis(*max_wait_ms);
                    w.claim_within = Timeout::from_millis(*max_wait_ms / 2);
                    if w.dead.contains(&sid(&name(*who))) { Ok(()) } else {
                        w.prioritized(&name(*who), mode, *timeout_ms, *queue, *priority).map(|_| ())
                    }
                }
                Op::Release { who, force } => w.release(&name(*who), *force).map(|_| ()),
                Op::Renew { who } => w.locks.renew(&sid(&name(*who)), w.now).map(|_| ()),
                Op::Authorize { who, control } => {
                    let access = if *control { Access::Control } else { Access::Observe };
                    w.locks.authorize(&sid(&name(*who)), access, None, w.now)
                }
                Op::EndSession { who, auto_release } => {
                    let s = sid(&name(*who));
                    w.dead.insert(s.clone());
                    let dead = w.dead.clone();
                    w.locks.remove_session(&s, *auto_release, EndReason::SessionEnded, w.now, &mut |x| !dead.contains(x), &mut w.events);
                    Ok(())
                }
                Op::Kill { who } => { w.dead.insert(sid(&name(*who))); Ok(()) }
                Op::Maintenance { until_ms } => {
                    let until = until_ms.map(|ms| t(w.now.as_millis() + i64::from(ms)));
                    let m = Maintenance { reason: "r".into(), since: w.now, until, user: None, group: None };
                    w.locks.start_maintenance(m, w.now, &mut w.events);
                    Ok(())
                }
                Op::StepBack { who } => {
                    let p = w.policy;
                    w.locks.step_back(&sid(&name(*who)), p, w.now, &mut w.events).map(|_| ())
                }
                Op::Swap { who, with } => {
                    let (p, now) = (w.policy, w.now);
                    let before: Vec<SessionId> = w.locks.queue.iter().map(|e| e.session_id.clone()).collect();
                    let result = w.locks.swap(&sid(&name(*who)), &sid(&name(*with)), p, now, &mut w.events);
                    if let Ok((swapped, _)) = result {
                        // Nobody else's place changes.
                        for (i, e) in w.locks.queue.iter().enumerate() {
                            let other = e.session_id != sid(&name(*who)) && e.session_id != sid(&name(*with));
                            prop_assert!(!other || before[i] == e.session_id);
                            prop_assert!(swapped || before[i] == e.session_id);
                        }
                    }
                    result.map(|_| ())
                }
                Op::EndMaintenance => {
                    let dead = w.dead.clone();
                    w.locks.end_maintenance(None, w.now, &mut |x| !dead.contains(x), &mut w.events).map(|_| ())
                }
                Op::RemoveWaiter { who } => {
                    let dead = w.dead.clone();
                    w.locks.remove_waiter(&sid(&name(*who)), &sid("admin"), w.now, &mut |x| !dead.contains(x), &mut w.events).map(|_| ())
                }
                Op::Advance { ms } => { w.advance_to(w.now.as_millis() + i64::from(*ms)); Ok(()) }
            };
            if result.is_err() {
                prop_assert_eq!(&w.locks, &before, "a refused request changes nothing: {:?}", op);
            }
            prop_assert!(w.locks.fencing_counter >= counter, "fencing tokens only grow");
            counter = w.locks.fencing_counter;
            // The service expires what is due before every operation.
            let now = w.now;
            w.advance_to(now.as_millis());
            check_invariants(&w.locks, w.now)?;
            let keys: Vec<(i64, i64)> = w.locks.queue.iter().map(|e| e.service_key(aging_ms)).collect();
            prop_assert!(keys.is_sorted(), "the queue is in its service order: {:?}", keys);
        }
    }
}

#[test]
fn commands_need_a_live_holding_session_unless_locks_are_off() {
    let mut w = World::new();
    let alices = LockRequest {
        session_id: sid("a"),
        mode: LockMode::Exclusive,
        timeout: Timeout::from_millis(10_000),
        queue_if_busy: false,
        holder: Holder {
            user: Some("alice".into()),
            client_name: None,
        },
        priority: 0,
        max_wait: Timeout::NONE,
        maintenance_exempt: false,
        claim_within: Timeout::NONE,
    };
    w.locks
        .acquire(&alices, w.now, w.policy, &mut w.events)
        .unwrap();
    w.release("admin", true).unwrap(); // a loses its lock to a forced release
    let (alice, bob) = (
        Actor::user("alice", crate::domain::Role::Operator),
        Actor::user("bob", crate::domain::Role::Operator),
    );
    let cases: &[(Option<&str>, bool, bool, &Actor, &str)] = &[
        (None, false, false, &bob, "Ok"),
        (None, false, true, &bob, "SessionRequired"),
        (Some("a"), false, true, &alice, "LockLost"),
        (Some("a"), false, true, &Actor::anyone(), "LockLost"),
        // Someone else's ended session: not told how its lock ended.
        (Some("a"), false, true, &bob, "SessionNotLive"),
        (Some("z"), false, true, &bob, "SessionNotLive"),
        (Some("b"), true, true, &bob, "NotHolder"),
    ];
    for (session, live, enabled, actor, want) in cases {
        let id = session.map(sid);
        let check = CommandCheck {
            session: id.as_ref(),
            session_live: *live,
            access: Access::Control,
            fencing_token: None,
            locks_enabled: *enabled,
            implicit_sessions: true,
        };
        let got = w.locks.authorize_command(&check, actor, w.now);
        assert!(
            format!("{got:?}").contains(want),
            "{session:?} live={live} locks={enabled} {actor:?}: {got:?}"
        );
    }
}

#[test]
fn a_request_whose_clock_was_read_earlier_still_joins_behind_those_waiting() {
    // Requests read the clock when they arrive, then wait for their turn at
    // the store (or come through another server): the one stored later
    // joins behind, whatever its clock said, and nobody's place moves back.
    let mut w = World::new();
    w.now = t(100);
    w.request("a", LockMode::Exclusive, 60_000, true).unwrap();
    w.request("b", LockMode::Exclusive, 60_000, true).unwrap();
    w.now = t(90);
    let late = w.request("c", LockMode::Exclusive, 60_000, true).unwrap();
    assert!(
        matches!(late, AcquireOutcome::Queued { position: 2, .. }),
        "{late:?}"
    );
    let order: Vec<&str> = w
        .locks
        .queue
        .iter()
        .map(|e| e.session_id.as_str())
        .collect();
    assert_eq!(order, ["b", "c"]);
}
