//! The storage contract: one suite of tests that every backend must pass,
//! run against `memory`, `sqlite` and (with `LABLINK_TEST_POSTGRES` set)
//! `postgres`.

use super::memory::MemoryStore;
use super::sqlite::{SqliteOptions, SqliteStore};
use super::{Due, EventQuery, Pick, Prune, Store, StoreError, Tx, UsageCursor, UsageQuery, Work};
use crate::domain::rollup::{Figures, UsageBucket, WaitHistogram};
use crate::domain::{
    EquipmentId, EquipmentLocks, Event, EventKind, LockMode, LockPolicy, LockRequest, Session,
    SessionId, Timeout, Timestamp,
};

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

fn eid(s: &str) -> EquipmentId {
    EquipmentId::parse(s).unwrap()
}

fn t(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn session(id: &str, timeout_ms: u64) -> Session {
    Session {
        id: sid(id),
        client_name: "pc".into(),
        client_ip: Some("10.0.0.1".into()),
        created_at: t(0),
        last_activity: t(0),
        timeout: Timeout::from_millis(timeout_ms),
        metadata: serde_json::json!({"project": "battery"})
            .as_object()
            .unwrap()
            .clone(),
        user: Some("alice".into()),
    }
}

/// Equipment `id` locked by `holder` (lease `timeout_ms`) with `waiters` queued.
fn locked(id: &str, holder: &str, timeout_ms: u64, waiters: &[&str]) -> EquipmentLocks {
    let mut locks = EquipmentLocks::new(eid(id));
    let mut events = Vec::new();
    for (who, queue) in std::iter::once((holder, false)).chain(waiters.iter().map(|w| (*w, true))) {
        let req = LockRequest {
            session_id: sid(who),
            mode: LockMode::Exclusive,
            timeout: Timeout::from_millis(timeout_ms),
            queue_if_busy: queue,
            holder: Default::default(),
            priority: 0,
            max_wait: Timeout::NONE,
            maintenance_exempt: false,
            claim_within: Timeout::NONE,
        };
        locks
            .acquire(&req, t(0), LockPolicy::default(), &mut events)
            .unwrap();
    }
    locks
}

fn event(kind: EventKind, at: i64, equipment: Option<&str>, session: Option<&str>) -> Event {
    let mut e = Event::new(kind, t(at));
    e.equipment_id = equipment.map(eid);
    e.session_id = session.map(sid);
    e
}

/// Waits for `future` on a runtime of its own (the contract is checked from
/// plain tests; stores run their work wherever they like).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

/// Runs `f` in one transaction and returns its value.
fn with<R: Send + 'static>(
    store: &dyn Store,
    f: impl FnMut(&mut dyn Tx) -> Result<R, StoreError> + Send + 'static,
) -> R {
    block_on(store.write(f)).unwrap()
}

fn save_session(store: &dyn Store, session: &Session) {
    let session = session.clone();
    with(store, move |tx| tx.save_session(&session));
}

fn save_locks(store: &dyn Store, locks: &EquipmentLocks) {
    let locks = locks.clone();
    with(store, move |tx| tx.save_equipment_locks(&locks));
}

/// Records `events`; returns them numbered.
fn record(store: &dyn Store, events: Vec<Event>) -> Vec<Event> {
    with(store, move |tx| {
        let mut events = events.clone();
        tx.record_events(&mut events)?;
        Ok(events)
    })
}

/// Runs `f` as a transaction that may fail.
fn try_with(
    store: &dyn Store,
    f: impl FnMut(&mut dyn Tx) -> Result<(), StoreError> + Send + 'static,
) -> Result<(), StoreError> {
    block_on(store.transaction(Box::new(f)))
}

fn sessions_round_trip(store: &dyn Store) {
    let s = session("s1", 1_000);
    save_session(store, &s);
    assert_eq!(with(store, |tx| tx.session(&sid("s1"))), Some(s.clone()));
    assert_eq!(with(store, |tx| tx.session(&sid("nope"))), None);
    let mut renewed = s.clone();
    renewed.touch(t(500));
    save_session(store, &renewed);
    assert_eq!(with(store, |tx| tx.sessions()), vec![renewed]);
    with(store, |tx| tx.delete_session(&sid("s1")));
    assert!(with(store, |tx| tx.sessions()).is_empty());
}

fn sessions_page_in_id_order(store: &dyn Store) {
    for id in ["c", "a", "e", "b", "d"] {
        with(store, |tx| tx.save_session(&session(id, 0)));
    }
    let page = |after: Option<&str>, limit: usize| -> Vec<String> {
        let after = after.map(sid);
        with(store, move |tx| tx.sessions_page(after.as_ref(), limit))
            .into_iter()
            .map(|s| s.id.to_string())
            .collect()
    };
    assert_eq!(page(None, 2), ["a", "b"]);
    assert_eq!(page(Some("b"), 2), ["c", "d"]);
    assert_eq!(page(Some("d"), 2), ["e"]);
    assert_eq!(page(Some("bb"), 10), ["c", "d", "e"], "any id is a cursor");
    assert!(page(Some("e"), 2).is_empty());
    assert_eq!(page(None, 10).len(), 5);
}

fn equipment_round_trip_and_participants(store: &dyn Store) {
    assert_eq!(
        with(store, |tx| tx.equipment_locks(&eid("psu"))),
        EquipmentLocks::new(eid("psu"))
    );
    let locks = locked("psu", "a", 1_000, &["b", "c"]);
    save_locks(store, &locks);
    assert_eq!(with(store, |tx| tx.equipment_locks(&eid("psu"))), locks);
    assert_eq!(
        with(store, |tx| tx.equipment_of_session(&sid("b"))),
        vec![eid("psu")]
    );
    let other = locked("scope", "b", 0, &[]);
    save_locks(store, &other);
    assert_eq!(
        with(store, |tx| tx.equipment_of_session(&sid("b"))),
        vec![eid("psu"), eid("scope")]
    );
    assert_eq!(with(store, |tx| tx.busy_equipment()).len(), 2);
    // Freed, it keeps its fencing counter but leaves the indexes.
    let mut freed = locks.clone();
    freed.exclusive = None;
    freed.queue.clear();
    save_locks(store, &freed);
    assert!(with(store, |tx| tx.equipment_of_session(&sid("a"))).is_empty());
    assert_eq!(
        with(store, |tx| tx.equipment_of_session(&sid("b"))),
        vec![eid("scope")]
    );
    assert_eq!(
        with(store, |tx| tx.equipment_locks(&eid("psu"))).fencing_counter,
        1
    );
    assert_eq!(with(store, |tx| tx.busy_equipment()), vec![other]);
}

fn due_in_deadline_order(store: &dyn Store) {
    with(store, |tx| {
        tx.save_session(&session("late", 3_000))?;
        tx.save_session(&session("never", 0))?;
        tx.save_equipment_locks(&locked("psu", "late", 2_000, &[]))?;
        tx.save_session(&session("early", 1_000))
    });
    assert_eq!(with(store, |tx| tx.next_deadline()), Some(t(1_000)));
    assert!(with(store, |tx| tx.due(t(999), 10)).is_empty());
    assert_eq!(
        with(store, |tx| tx.due(t(2_000), 10)),
        vec![Due::Session(sid("early")), Due::Equipment(eid("psu"))]
    );
    assert_eq!(
        with(store, |tx| tx.due(t(5_000), 1)),
        vec![Due::Session(sid("early"))]
    );
    with(store, |tx| tx.delete_session(&sid("early")));
    assert_eq!(with(store, |tx| tx.next_deadline()), Some(t(2_000)));
}

fn events_per_equipment_and_session(store: &dyn Store) {
    let mut forced = event(EventKind::LockForceReleased, 3, Some("psu"), Some("a"));
    forced.forced_by = Some(sid("admin"));
    let mut events = vec![
        event(EventKind::SessionCreated, 1, None, Some("a")),
        event(EventKind::LockAcquired, 2, Some("psu"), Some("a")),
        forced,
        event(EventKind::LockAcquired, 4, Some("scope"), Some("b")),
    ];
    record(store, events.clone());
    events.iter_mut().for_each(|e| e.seq = None);
    record(store, events[..1].to_vec());
    let all = with(store, |tx| {
        tx.query_events(&EventQuery {
            limit: 100,
            ..EventQuery::default()
        })
    });
    let seqs: Vec<u64> = all.iter().map(|e| e.seq.unwrap()).collect();
    assert_eq!(seqs.len(), 5);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq grows: {seqs:?}");
    let kinds = |events: Vec<Event>| events.into_iter().map(|e| e.event).collect::<Vec<_>>();
    assert_eq!(
        kinds(with(store, |tx| tx.equipment_events(&eid("psu"), 10))),
        [EventKind::LockAcquired, EventKind::LockForceReleased]
    );
    assert_eq!(
        kinds(with(store, |tx| tx.session_events(&sid("a"), 2))),
        [EventKind::LockForceReleased, EventKind::SessionCreated],
        "newest two, oldest first"
    );
    assert_eq!(
        kinds(with(store, |tx| tx.session_events(&sid("admin"), 10))),
        [EventKind::LockForceReleased]
    );
    assert!(with(store, |tx| tx.equipment_events(&eid("load"), 10)).is_empty());
}

fn history_filters_and_cursor(store: &dyn Store) {
    let events: Vec<Event> = (0..10)
        .map(|i| {
            let equipment = if i % 2 == 0 { "psu" } else { "scope" };
            let kind = if i % 3 == 0 {
                EventKind::Queued
            } else {
                EventKind::LockAcquired
            };
            event(kind, i * 1_000, Some(equipment), Some(&format!("s{i}")))
        })
        .collect();
    record(store, events);
    let query = |q: EventQuery| with(store, move |tx| tx.query_events(&q));
    let base = EventQuery {
        limit: 100,
        ..EventQuery::default()
    };
    let psu = query(EventQuery {
        equipment_id: Some(eid("psu")),
        ..base.clone()
    });
    assert_eq!(psu.len(), 5);
    let queued = query(EventQuery {
        kind: Some(EventKind::Queued),
        ..base.clone()
    });
    assert_eq!(
        queued
            .iter()
            .map(|e| e.timestamp.as_millis())
            .collect::<Vec<_>>(),
        [0, 3_000, 6_000, 9_000]
    );
    let window = query(EventQuery {
        since: Some(t(2_000)),
        until: Some(t(5_000)),
        ..base.clone()
    });
    assert_eq!(window.len(), 3, "since is inclusive, until exclusive");
    let one = query(EventQuery {
        session_id: Some(sid("s7")),
        ..base.clone()
    });
    assert_eq!(one.len(), 1);
    // Paging: a cursor continues exactly after the last seq seen.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = query(EventQuery {
            after,
            limit: 3,
            ..base.clone()
        });
        if page.is_empty() {
            break;
        }
        after = page.last().and_then(|e| e.seq);
        seen.extend(page);
    }
    assert_eq!(seen, query(base));
}

fn a_failed_transaction_changes_nothing(store: &dyn Store) {
    with(store, |tx| tx.save_session(&session("kept", 1_000)));
    let result = try_with(store, |tx| {
        tx.save_session(&session("new", 1_000))?;
        tx.delete_session(&sid("kept"))?;
        tx.save_equipment_locks(&locked("psu", "new", 1_000, &[]))?;
        tx.record_events(&mut [event(EventKind::LockAcquired, 1, Some("psu"), Some("new"))])?;
        Err(StoreError::Unavailable("simulated failure".into()))
    });
    assert!(result.is_err());
    assert_eq!(
        with(store, |tx| tx.sessions()),
        vec![session("kept", 1_000)]
    );
    assert_eq!(
        with(store, |tx| tx.equipment_locks(&eid("psu"))),
        EquipmentLocks::new(eid("psu"))
    );
    assert!(with(store, |tx| tx.equipment_of_session(&sid("new"))).is_empty());
    assert_eq!(with(store, |tx| tx.next_deadline()), Some(t(1_000)));
    assert!(with(store, |tx| tx.equipment_events(&eid("psu"), 10)).is_empty());
}

fn pruning_forgets_old_events(store: &dyn Store) {
    let events: Vec<Event> = (0..5)
        .map(|i| event(EventKind::LockAcquired, i * 10, Some("psu"), Some("a")))
        .collect();
    record(store, events);
    assert_eq!(with(store, |tx| tx.prune_events(&older_than(20))), 2);
    let left = with(store, |tx| tx.equipment_events(&eid("psu"), 100));
    assert_eq!(
        left.iter()
            .map(|e| e.timestamp.as_millis())
            .collect::<Vec<_>>(),
        [20, 30, 40]
    );
    assert_eq!(with(store, |tx| tx.session_events(&sid("a"), 100)).len(), 3);
}

/// Retention by age alone, with no limit on the step.
fn older_than(ms: i64) -> Prune {
    Prune {
        before: Some(t(ms)),
        keep: None,
        max: usize::MAX / 2,
    }
}

fn pruning_keeps_the_newest_events_a_step_at_a_time(store: &dyn Store) {
    let events: Vec<Event> = (0..10)
        .map(|i| event(EventKind::LockAcquired, i * 10, Some("psu"), Some("a")))
        .collect();
    let events = record(store, events);
    let keep_four = Prune {
        before: None,
        keep: Some(4),
        max: 4,
    };
    // Six must go: four in the first step, the last two in the next.
    assert_eq!(with(store, move |tx| tx.prune_events(&keep_four)), 4);
    assert_eq!(with(store, move |tx| tx.prune_events(&keep_four)), 2);
    assert_eq!(with(store, move |tx| tx.prune_events(&keep_four)), 0);
    let left = with(store, |tx| {
        tx.query_events(&EventQuery {
            limit: 100,
            ..EventQuery::default()
        })
    });
    assert_eq!(left, events[6..].to_vec());
    assert_eq!(
        with(store, |tx| tx.equipment_events(&eid("psu"), 100)),
        events[6..].to_vec()
    );
    assert_eq!(
        with(store, |tx| tx.session_events(&sid("a"), 100)),
        events[6..].to_vec()
    );
    // Age and count together: whichever lets go of more.
    let both = Prune {
        before: Some(t(80)),
        keep: Some(3),
        max: 100,
    };
    assert_eq!(with(store, move |tx| tx.prune_events(&both)), 2);
    let left = with(store, |tx| tx.equipment_events(&eid("psu"), 100));
    assert_eq!(left, events[8..].to_vec());
}

/// Every combination of filters, cursors and time bounds gives exactly the
/// events that `EventQuery::matches` picks, in `seq` order, however the
/// backend searches (SQLite leapfrogs across its indexes). The clock goes
/// back once in the middle, so time order and `seq` order differ there.
fn every_filter_combination_finds_what_matches(store: &dyn Store) {
    let equipment = ["psu", "scope", "load"];
    let sessions = ["a", "b", "c", "d"];
    let kinds = [
        EventKind::LockAcquired,
        EventKind::LockReleased,
        EventKind::LockForceReleased,
        EventKind::SessionCreated,
    ];
    let mut all = Vec::new();
    // A small deterministic mix: some kinds rare, some sessions rare.
    let mut x: u64 = 7;
    for i in 0..400i64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = (x >> 33) as usize;
        let kind = kinds[if r.is_multiple_of(17) {
            2
        } else if r.is_multiple_of(5) {
            3
        } else {
            r % 2
        }];
        // The clock is set back 50 ms at event 200.
        let at = if i < 200 { i * 10 } else { i * 10 - 50 };
        let mut e = event(
            kind,
            at,
            (kind != EventKind::SessionCreated).then_some(equipment[(r / 7) % 3]),
            Some(sessions[if r.is_multiple_of(13) { 3 } else { (r / 3) % 3 }]),
        );
        if kind == EventKind::LockForceReleased {
            e.forced_by = Some(sid(sessions[(r / 11) % 4]));
        }
        all.push(e);
    }
    let all = record(store, all);
    let mut checked = 0;
    for mask in 0..32 {
        for variant in 0..3usize {
            let query = EventQuery {
                equipment_id: (mask & 1 != 0).then(|| eid(equipment[variant])),
                session_id: (mask & 2 != 0).then(|| sid(sessions[variant + 1])),
                kind: (mask & 4 != 0).then_some(kinds[variant + 1]),
                since: (mask & 8 != 0).then(|| t([0, 1_000, 1_960][variant])),
                until: (mask & 16 != 0).then(|| t([1_990, 2_500, 4_000][variant])),
                after: [
                    None,
                    Some(all[50].seq.unwrap()),
                    Some(all[390].seq.unwrap()),
                ][variant],
                limit: [1_000, 7, 3][variant],
            };
            let want: Vec<Event> = all
                .iter()
                .filter(|e| query.matches(e))
                .take(query.limit)
                .cloned()
                .collect();
            let q = query.clone();
            let got = with(store, move |tx| tx.query_events(&q));
            assert_eq!(got, want, "{query:?}");
            checked += want.len();
        }
    }
    assert!(checked > 500, "the queries found something ({checked})");
}

/// The clock set back between two transactions (a restart, another
/// replica's clock): the later event is still found by its own time, and
/// the earlier one is not found by the later one's.
fn an_event_recorded_after_the_clock_went_back_is_found_by_its_own_time(store: &dyn Store) {
    let first = record(
        store,
        vec![event(
            EventKind::LockAcquired,
            1_000,
            Some("psu"),
            Some("a"),
        )],
    );
    let back = record(
        store,
        vec![event(EventKind::LockReleased, 500, Some("psu"), Some("a"))],
    );
    let after = record(
        store,
        vec![event(EventKind::LockAcquired, 700, Some("psu"), Some("b"))],
    );
    let window = |since: i64, until: i64, equipment: Option<&str>| {
        let query = EventQuery {
            equipment_id: equipment.map(eid),
            since: Some(t(since)),
            until: Some(t(until)),
            limit: 10,
            ..EventQuery::default()
        };
        with(store, move |tx| tx.query_events(&query))
    };
    assert_eq!(window(400, 600, None), back);
    assert_eq!(window(400, 600, Some("psu")), back);
    assert_eq!(window(600, 800, None), after);
    assert_eq!(window(900, 1_100, None), first);
    assert_eq!(window(0, 2_000, None), [first, back, after].concat());
}

fn a_failed_transaction_puts_earlier_deadlines_back(store: &dyn Store) {
    with(store, |tx| tx.save_session(&session("s", 1_000)));
    let result = try_with(store, |tx| {
        let mut later = session("s", 1_000);
        later.last_activity = t(5_000);
        tx.save_session(&later)?;
        // Nothing is due yet; a store that remembers where the earliest
        // deadline lies must forget it when this is undone.
        assert!(tx.due(t(500), 10)?.is_empty());
        Err(StoreError::Unavailable("simulated failure".into()))
    });
    assert!(result.is_err());
    assert_eq!(
        with(store, |tx| tx.due(t(1_000), 10)),
        vec![Due::Session(sid("s"))]
    );
}

fn event_numbers_are_never_reused(store: &dyn Store) {
    let first: Vec<Event> = (0..3)
        .map(|i| event(EventKind::LockAcquired, i, Some("psu"), Some("a")))
        .collect();
    let first = record(store, first.to_vec());
    assert_eq!(with(store, |tx| tx.prune_events(&older_than(100))), 3);
    let later = [event(EventKind::LockReleased, 200, Some("psu"), Some("a"))];
    let later = record(store, later.to_vec());
    assert!(later[0].seq > first[2].seq, "{later:?} after {first:?}");
}

fn a_cursor_past_the_newest_event_pages_nothing_and_points_back(store: &dyn Store) {
    let page = |after: Option<u64>| {
        with(store, move |tx| {
            tx.event_page(&EventQuery {
                after,
                limit: 100,
                ..EventQuery::default()
            })
        })
    };
    assert_eq!(page(None), super::EventPage::default(), "nothing recorded");
    assert_eq!(page(Some(5)).next_cursor, Some(0));
    let events: Vec<Event> = (0..3)
        .map(|i| event(EventKind::LockAcquired, i, Some("psu"), Some("a")))
        .collect();
    let events = record(store, events.to_vec());
    let newest = events[2].seq.unwrap();
    let all = page(None);
    assert_eq!((all.events.len(), all.next_cursor), (3, Some(newest)));
    let mid = page(events[0].seq);
    assert_eq!((mid.events.len(), mid.next_cursor), (2, Some(newest)));
    // Past the newest: nothing, and the cursor comes back to the newest, so
    // a poller hears what is recorded next. Above i64::MAX too (no wrap).
    for past in [
        newest,
        newest + 1,
        i64::MAX as u64,
        i64::MAX as u64 + 1,
        u64::MAX,
    ] {
        assert_eq!(
            page(Some(past)),
            super::EventPage {
                events: Vec::new(),
                next_cursor: Some(newest)
            },
            "cursor {past}"
        );
    }
    // A filter that matches nothing new keeps the cursor given.
    let after = events[0].seq;
    let filtered = with(store, move |tx| {
        tx.event_page(&EventQuery {
            equipment_id: Some(eid("scope")),
            after,
            limit: 100,
            ..EventQuery::default()
        })
    });
    assert_eq!(
        (filtered.events.len(), filtered.next_cursor),
        (0, events[0].seq)
    );
    let later = [event(EventKind::LockReleased, 9, Some("psu"), Some("a"))];
    let later = record(store, later.to_vec());
    assert_eq!(page(Some(newest)).events, later);
}

fn usage_bucket(
    span_ms: i64,
    start: i64,
    equipment: Option<&str>,
    user: Option<&str>,
    n: i64,
) -> UsageBucket {
    let mut waits = WaitHistogram::default();
    for w in [n, 3 * n, 5_000 * n] {
        waits.record(w);
    }
    UsageBucket {
        span_ms,
        start: t(start),
        equipment_id: equipment.map(eid),
        user: user.map(str::to_string),
        figures: Figures {
            exclusive_ms: n,
            observer_ms: 2 * n,
            busy_ms: 3 * n,
            grants: n as u64,
            grants_from_queue: 1,
            forced_releases: 2,
            expiries: 3,
            waits,
            locked: n % 2 == 0,
        },
    }
}

/// Rollup buckets read back as stored, selected by span, start and key
/// (total, each, one); a bucket with the same key replaces the old one.
fn usage_buckets_round_trip_and_select(store: &dyn Store) {
    let hour = 3_600_000;
    let stored = vec![
        usage_bucket(hour, 0, Some("psu"), Some("ana"), 2),
        usage_bucket(hour, 0, Some("psu"), None, 4),
        usage_bucket(hour, 0, None, Some("ana"), 6),
        usage_bucket(hour, hour, Some("psu"), Some("ben"), 7),
        usage_bucket(hour, hour, Some("scope"), Some("ana"), 8),
        usage_bucket(hour, hour, Some("scope"), None, 9),
        usage_bucket(24 * hour, 0, Some("psu"), None, 10),
    ];
    let put = stored.clone();
    with(store, move |tx| tx.put_usage(&put));
    let select = |span_ms, since, until, equipment, user| {
        let q = UsageQuery {
            span_ms,
            since: t(since),
            until: t(until),
            equipment,
            user,
        };
        let mut found = with(store, move |tx| tx.usage_buckets(&q));
        found.sort_by_key(|b| (b.start, b.equipment_id.clone(), b.user.clone()));
        found
    };
    assert_eq!(
        select(hour, 0, 2 * hour, Pick::Each, Pick::Total),
        [stored[1].clone(), stored[5].clone()]
    );
    assert_eq!(
        select(hour, 0, 2 * hour, Pick::Each, Pick::One("ana".to_string())),
        [stored[0].clone(), stored[4].clone()]
    );
    assert_eq!(
        select(hour, 0, hour, Pick::Total, Pick::Each),
        [stored[2].clone()]
    );
    assert_eq!(
        select(hour, hour, 2 * hour, Pick::One(eid("psu")), Pick::Each),
        [stored[3].clone()]
    );
    assert_eq!(
        select(24 * hour, 0, 1, Pick::One(eid("psu")), Pick::Total),
        [stored[6].clone()]
    );
    let replaced = usage_bucket(hour, 0, Some("psu"), None, 40);
    let put = vec![replaced.clone()];
    with(store, move |tx| tx.put_usage(&put));
    assert_eq!(
        select(hour, 0, hour, Pick::One(eid("psu")), Pick::Total),
        [replaced]
    );
}

/// The rollups' cursor moves only from where the mover saw it;
/// checkpoints are kept by instant.
fn usage_cursor_moves_only_from_where_it_was(store: &dyn Store) {
    assert_eq!(with(store, |tx| tx.usage_cursor()), None);
    let first = UsageCursor {
        last_seq: 7,
        watermark: t(3_600_000),
        state: "{\"open\":{}}".into(),
    };
    let second = UsageCursor {
        last_seq: 9,
        watermark: t(3_700_000),
        state: "{}".into(),
    };
    let (a, b) = (first.clone(), second.clone());
    assert!(with(store, move |tx| tx.advance_usage_cursor(None, &a)));
    let b2 = b.clone();
    assert!(
        !with(store, move |tx| tx.advance_usage_cursor(None, &b2)),
        "already there"
    );
    assert_eq!(with(store, |tx| tx.usage_cursor()), Some(first.clone()));
    let (a, b2) = (first.clone(), b.clone());
    assert!(with(store, move |tx| tx.advance_usage_cursor(Some(&a), &b2)));
    let (a, b2) = (first.clone(), b.clone());
    assert!(
        !with(store, move |tx| tx.advance_usage_cursor(Some(&a), &b2)),
        "moved by someone else"
    );
    assert_eq!(with(store, |tx| tx.usage_cursor()), Some(second));
    with(store, |tx| tx.put_usage_checkpoint(t(3_600_000), "one"));
    with(store, |tx| tx.put_usage_checkpoint(t(3_600_000), "two"));
    assert_eq!(
        with(store, |tx| tx.usage_checkpoint(t(3_600_000))),
        Some("two".to_string())
    );
    assert_eq!(with(store, |tx| tx.usage_checkpoint(t(0))), None);
}

/// What a backend's test needs kept until it ends (a directory, a
/// database), dropped after the store.
type Keep = Box<dyn std::any::Any>;

fn memory() -> Option<(Box<dyn Store>, Keep)> {
    Some((Box::new(MemoryStore::new()), Box::new(())))
}

fn sqlite() -> Option<(Box<dyn Store>, Keep)> {
    let dir = tempfile::tempdir().unwrap();
    let options =
        SqliteOptions::from_url("sqlite://contract.db?synchronous=normal", dir.path()).unwrap();
    Some((
        Box::new(SqliteStore::open(&options).unwrap()),
        Box::new(dir),
    ))
}

fn postgres() -> Option<(Box<dyn Store>, Keep)> {
    let database = super::postgres::test_database::fresh()?;
    let options = super::postgres::PostgresOptions::from_url(database.url()).unwrap();
    let store = super::postgres::PostgresStore::open(&options).unwrap();
    Some((Box::new(store), Box::new(database)))
}

macro_rules! contract {
    ($backend:ident: $($test:ident),* $(,)?) => {
        mod $backend {
            $(
                #[test]
                fn $test() {
                    let Some((store, keep)) = super::$backend() else { return };
                    super::$test(store.as_ref());
                    drop(store);
                    drop(keep);
                }
            )*
        }
    };
}

macro_rules! every_backend {
    ($($test:ident),* $(,)?) => {
        contract!(memory: $($test),*);
        contract!(sqlite: $($test),*);
        contract!(postgres: $($test),*);
    };
}

every_backend!(
    sessions_round_trip,
    sessions_page_in_id_order,
    equipment_round_trip_and_participants,
    due_in_deadline_order,
    events_per_equipment_and_session,
    history_filters_and_cursor,
    a_failed_transaction_changes_nothing,
    pruning_forgets_old_events,
    pruning_keeps_the_newest_events_a_step_at_a_time,
    every_filter_combination_finds_what_matches,
    an_event_recorded_after_the_clock_went_back_is_found_by_its_own_time,
    a_failed_transaction_puts_earlier_deadlines_back,
    event_numbers_are_never_reused,
    a_cursor_past_the_newest_event_pages_nothing_and_points_back,
    the_listener_hears_every_commit_in_seq_order,
    units_sent_together_stand_or_fall_alone,
    usage_buckets_round_trip_and_select,
    usage_cursor_moves_only_from_where_it_was,
);

#[test]
fn sqlite_keeps_everything_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions::from_url("sqlite://data/reopen.db", dir.path()).unwrap();
    let locks = locked("psu", "a", 1_000, &["b"]);
    {
        let store = SqliteStore::open(&options).unwrap();
        let saved = locks.clone();
        with(&store, move |tx| {
            tx.save_session(&session("a", 1_000))?;
            tx.save_equipment_locks(&saved)?;
            tx.record_events(&mut [event(EventKind::LockAcquired, 1, Some("psu"), Some("a"))])
        });
    }
    let store = SqliteStore::open(&options).unwrap();
    assert_eq!(
        with(&store, |tx| tx.session(&sid("a"))),
        Some(session("a", 1_000))
    );
    assert_eq!(with(&store, |tx| tx.equipment_locks(&eid("psu"))), locks);
    assert_eq!(
        with(&store, |tx| tx.equipment_events(&eid("psu"), 10)).len(),
        1
    );
}

fn sqlite_at(name: &str, dir: &tempfile::TempDir) -> SqliteStore {
    let options = SqliteOptions::from_url(&format!("sqlite://{name}"), dir.path()).unwrap();
    SqliteStore::open(&options).unwrap()
}

/// Units sent together: they share batches as the writer finds them.
fn together(store: &dyn Store, units: Vec<Work>) -> Vec<Result<(), StoreError>> {
    block_on(async {
        let pending: Vec<_> = units.into_iter().map(|w| store.transaction(w)).collect();
        let mut outcomes = Vec::new();
        for p in pending {
            outcomes.push(p.await);
        }
        outcomes
    })
}

#[test]
fn sqlite_a_failed_unit_among_others_is_undone_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_at("batch.db", &dir);
    let outcomes = together(
        &store,
        vec![
            Box::new(|tx| tx.save_session(&session("kept", 0))),
            Box::new(|tx| {
                tx.save_session(&session("undone", 0))?;
                Err(StoreError::Unavailable("simulated failure".into()))
            }),
            Box::new(|tx| tx.save_session(&session("also", 0))),
        ],
    );
    assert_eq!(
        outcomes.iter().map(Result::is_ok).collect::<Vec<_>>(),
        [true, false, true]
    );
    drop(store);
    let reopened = sqlite_at("batch.db", &dir);
    let mut ids: Vec<String> = with(&reopened, |tx| tx.sessions())
        .into_iter()
        .map(|s| s.id.to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["also", "kept"], "the failed unit alone was undone");
}

#[test]
fn sqlite_units_number_their_events_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_at("events.db", &dir);
    // An earlier, pruned history: its numbers are not handed out again.
    let old = with(&store, |tx| {
        let mut old = [event(EventKind::LockAcquired, 0, Some("psu"), Some("a"))];
        tx.record_events(&mut old)?;
        Ok(old[0].seq.unwrap())
    });
    with(&store, |tx| tx.prune_events(&older_than(1)));
    let record = |at: i64, fail: bool| -> Work {
        Box::new(move |tx| {
            let mut events = [
                event(EventKind::LockAcquired, at, Some("psu"), Some("a")),
                event(EventKind::LockReleased, at, Some("psu"), Some("a")),
            ];
            tx.record_events(&mut events)?;
            if fail {
                return Err(StoreError::Unavailable("simulated failure".into()));
            }
            Ok(())
        })
    };
    let outcomes = together(
        &store,
        vec![record(10, false), record(20, true), record(30, false)],
    );
    assert_eq!(
        outcomes.iter().map(Result::is_ok).collect::<Vec<_>>(),
        [true, false, true]
    );
    let stored = with(&store, |tx| tx.equipment_events(&eid("psu"), 10));
    assert_eq!(
        stored
            .iter()
            .map(|e| (e.seq.unwrap(), e.timestamp.as_millis()))
            .collect::<Vec<_>>(),
        [(old + 1, 10), (old + 2, 10), (old + 3, 30), (old + 4, 30)],
        "the failed unit's events are gone and the numbers stay in order"
    );
}

#[test]
fn sqlite_a_failed_unit_puts_earlier_deadlines_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_at("floor.db", &dir);
    with(&store, |tx| tx.save_session(&session("s", 1_000)));
    let outcomes = together(
        &store,
        vec![
            Box::new(|tx| {
                let mut later = session("s", 1_000);
                later.last_activity = t(5_000);
                tx.save_session(&later)?;
                assert!(tx.due(t(500), 10)?.is_empty());
                Err(StoreError::Unavailable("simulated failure".into()))
            }),
            Box::new(|tx| {
                assert_eq!(tx.due(t(1_000), 10)?, vec![Due::Session(sid("s"))]);
                Ok(())
            }),
        ],
    );
    assert!(outcomes[0].is_err());
    outcomes[1].as_ref().unwrap();
}

#[test]
fn sqlite_a_unit_panicking_is_undone_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_at("panic.db", &dir);
    let outcome = try_with(&store, |tx| {
        tx.save_session(&session("undone", 0))?;
        panic!("a bug in a unit of work");
    });
    assert!(outcome.is_err());
    with(&store, |tx| tx.save_session(&session("next", 0)));
    let ids: Vec<String> = with(&store, |tx| tx.sessions())
        .into_iter()
        .map(|s| s.id.to_string())
        .collect();
    assert_eq!(ids, ["next"]);
}

#[test]
fn sqlite_nothing_is_acknowledged_that_could_not_be_made_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_at("sick.db", &dir);
    with(&store, |tx| tx.save_session(&session("before", 0)));
    // The disk goes bad: the write-ahead log can no longer be synced (its
    // name now leads to a directory, which cannot be opened for writing,
    // even by root; SQLite keeps writing through the file it has open).
    let wal = dir.path().join("sick.db-wal");
    std::fs::rename(&wal, dir.path().join("elsewhere")).unwrap();
    std::fs::create_dir(&wal).unwrap();
    for i in 0..20 {
        let outcome = try_with(&store, move |tx| {
            tx.save_session(&session(&format!("s{i}"), 0))
        });
        assert!(
            matches!(&outcome, Err(StoreError::Unavailable(why)) if why.contains("write-ahead log")),
            "unit {i}: {outcome:?}"
        );
    }
}

#[test]
fn sqlite_units_sent_before_the_store_closes_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(sqlite_at("closing.db", &dir));
    let sent = {
        let store = store.clone();
        std::thread::spawn(move || {
            (0..50)
                .map(|i| {
                    try_with(&*store, move |tx| {
                        tx.save_session(&session(&format!("s{i:02}"), 0))
                    })
                })
                .collect::<Vec<_>>()
        })
    };
    let acknowledged: Vec<_> = sent.join().unwrap();
    drop(store);
    let reopened = sqlite_at("closing.db", &dir);
    let kept = with(&reopened, |tx| tx.sessions()).len();
    assert_eq!(
        kept,
        acknowledged.iter().filter(|o| o.is_ok()).count(),
        "every acknowledged unit is kept"
    );
}

fn units_sent_together_stand_or_fall_alone(store: &dyn Store) {
    save_session(store, &session("s", 1_000));
    let outcomes = together(
        store,
        vec![
            Box::new(|tx| {
                tx.save_session(&session("kept", 0))?;
                tx.record_events(&mut [event(
                    EventKind::LockAcquired,
                    10,
                    Some("psu"),
                    Some("kept"),
                )])
            }),
            Box::new(|tx| {
                tx.save_session(&session("undone", 0))?;
                let mut later = session("s", 1_000);
                later.last_activity = t(5_000);
                tx.save_session(&later)?;
                tx.save_equipment_locks(&locked("psu", "undone", 0, &[]))?;
                tx.record_events(&mut [event(
                    EventKind::LockAcquired,
                    20,
                    Some("psu"),
                    Some("undone"),
                )])?;
                // Something only SQL answers, after writes: they must be
                // undone in the database too.
                assert_eq!(tx.equipment_of_session(&sid("undone"))?, vec![eid("psu")]);
                assert!(tx.due(t(1_000), 10)?.is_empty());
                Err(StoreError::Unavailable("simulated failure".into()))
            }),
            Box::new(|tx| {
                tx.save_session(&session("also", 0))?;
                assert_eq!(tx.due(t(1_000), 10)?, vec![Due::Session(sid("s"))]);
                assert!(tx.equipment_of_session(&sid("undone"))?.is_empty());
                tx.record_events(&mut [event(
                    EventKind::LockReleased,
                    30,
                    Some("psu"),
                    Some("also"),
                )])
            }),
            Box::new(|_| -> Result<(), StoreError> { panic!("a bug in a unit of work") }),
        ],
    );
    assert_eq!(
        outcomes.iter().map(Result::is_ok).collect::<Vec<_>>(),
        [true, false, true, false]
    );
    let mut ids: Vec<String> = with(store, |tx| tx.sessions())
        .into_iter()
        .map(|s| s.id.to_string())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["also", "kept", "s"],
        "the failed units alone were undone"
    );
    assert_eq!(
        with(store, |tx| tx.equipment_locks(&eid("psu"))),
        EquipmentLocks::new(eid("psu"))
    );
    let events = with(store, |tx| tx.equipment_events(&eid("psu"), 10));
    let seqs: Vec<u64> = events.iter().map(|e| e.seq.unwrap()).collect();
    assert_eq!(
        events
            .iter()
            .map(|e| e.timestamp.as_millis())
            .collect::<Vec<_>>(),
        [10, 30]
    );
    assert_eq!(seqs[1], seqs[0] + 1, "numbers stay contiguous: {seqs:?}");
    assert_eq!(with(store, |tx| tx.next_deadline()), Some(t(1_000)));
}

fn the_listener_hears_every_commit_in_seq_order(store: &dyn Store) {
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let ear = heard.clone();
    store.listen(Box::new(move |events, _| {
        ear.lock()
            .unwrap()
            .extend(events.iter().map(|e| e.seq.unwrap()));
    }));
    let units = (0..30)
        .map(|i| -> Work {
            Box::new(move |tx| {
                let mut events = [event(EventKind::LockAcquired, i, Some("psu"), Some("a"))];
                tx.record_events(&mut events)?;
                if i % 7 == 3 {
                    return Err(StoreError::Unavailable("simulated failure".into()));
                }
                Ok(())
            })
        })
        .collect();
    let outcomes = together(store, units);
    let kept = outcomes.iter().filter(|o| o.is_ok()).count() as u64;
    // Every unit was answered, so every durable batch was heard.
    let heard = heard.lock().unwrap().clone();
    let first = heard.first().copied().unwrap();
    assert_eq!(heard, (first..first + kept).collect::<Vec<_>>());
}

#[test]
fn postgres_two_servers_on_one_database_see_each_others_writes() {
    let Some(database) = super::postgres::test_database::fresh() else {
        return;
    };
    let options = super::postgres::PostgresOptions::from_url(database.url()).unwrap();
    let a = super::postgres::PostgresStore::open(&options).unwrap();
    let b = super::postgres::PostgresStore::open(&options).unwrap();
    // Each writer caches what it read and wrote; the other's writes in
    // between must be seen, in a write as in a read.
    save_session(&a, &session("s", 1_000));
    save_locks(&a, &locked("psu", "s", 1_000, &[]));
    assert_eq!(
        with(&b, |tx| tx.session(&sid("s"))),
        Some(session("s", 1_000))
    );
    let mut renewed = session("s", 1_000);
    renewed.touch(t(500));
    save_session(&b, &renewed);
    save_locks(&b, &locked("psu", "s", 1_000, &["w"]));
    assert_eq!(with(&a, |tx| tx.session(&sid("s"))), Some(renewed.clone()));
    assert_eq!(
        with(&a, |tx| tx.equipment_locks(&eid("psu"))),
        locked("psu", "s", 1_000, &["w"])
    );
    assert_eq!(
        with(&a, |tx| tx.equipment_of_session(&sid("w"))),
        vec![eid("psu")]
    );
    // An earlier deadline saved by the other is due for this one.
    save_session(&b, &session("early", 100));
    assert_eq!(
        with(&a, |tx| tx.due(t(200), 10)),
        vec![Due::Session(sid("early"))]
    );
    with(&b, |tx| tx.delete_session(&sid("s")));
    assert_eq!(with(&a, |tx| tx.session(&sid("s"))), None);
    // Events are numbered in one order across both.
    let first = record(
        &a,
        vec![event(EventKind::LockAcquired, 1, Some("psu"), Some("s"))],
    );
    let second = record(
        &b,
        vec![event(EventKind::LockReleased, 2, Some("psu"), Some("s"))],
    );
    assert_eq!(second[0].seq, first[0].seq.map(|s| s + 1));
    drop((a, b));
    drop(database);
}
