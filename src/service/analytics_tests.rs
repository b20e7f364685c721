//! The analytics answered from the rollups equal the plain fold over the
//! whole history (`domain::analytics::Usage`), figure for figure and bin
//! for bin, on random histories summed in random steps and asked about in
//! random windows; and the rollups survive pruning.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::{AnalyticsInput, Policy, Retention, Service};
use crate::clock::{Clock, ManualClock};
use crate::domain::analytics::{GroupBy, Usage, UsageRow};
use crate::domain::lock::Holder;
use crate::domain::{
    EquipmentId, EquipmentLocks, Event, LockMode, LockPolicy, LockRequest, SessionId, Timeout,
    Timestamp,
};
use crate::drivers::Instruments;
use crate::storage::memory::MemoryStore;
use crate::storage::postgres::{PostgresOptions, PostgresStore, test_database};
use crate::storage::sqlite::{SqliteOptions, SqliteStore};
use crate::storage::{EventQuery, Store};

/// An hour into a day, so that histories cross hour and day boundaries.
const START: i64 = 1_790_000_000_000 - 1_790_000_000_000 % 86_400_000 + 82_800_000;
const INSTRUMENTS: [&str; 3] = ["ps_abc123", "scope_123", "load_1"];
const USERS: [&str; 3] = ["ana", "ben", "cy"];

fn service(store: Arc<dyn Store>, clock: Arc<ManualClock>) -> Service {
    let instruments =
        Instruments::from_configs(&Instruments::demo_configs(), std::path::Path::new(".")).unwrap();
    Service::new(store, clock, Arc::new(instruments), Policy::default())
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
        (0..4usize, any::<bool>(), 0..7_200_000u64).prop_map(|(s, o, d)| Op::Acquire(s, o, d)),
        (0..4usize).prop_map(Op::Release),
        Just(Op::Force),
        Just(Op::Expire),
    ]
}

/// A step of time: mostly seconds, sometimes hours (crossing days).
fn step() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 1..120_000i64,
        1 => 1..14_400_000i64,
    ]
}

/// Runs `ops` on the instruments through the real lock rules; returns the
/// events in order, in batches as recorded (one per op).
fn history(ops: &[(usize, Op, i64)]) -> Vec<Vec<Event>> {
    let mut locks: Vec<EquipmentLocks> = INSTRUMENTS
        .iter()
        .map(|id| EquipmentLocks::new(EquipmentId::parse(id).unwrap()))
        .collect();
    let mut now = START;
    let mut out = Vec::new();
    for (which, op, step) in ops {
        now += step;
        let at = Timestamp::from_millis(now);
        let l = &mut locks[*which];
        let mut events = Vec::new();
        l.expire(at, &mut |_| true, &mut events);
        let session = |i: usize| SessionId::parse(["a", "b", "c", "d"][i]).unwrap();
        match op {
            Op::Acquire(s, observer, timeout) => {
                let req = LockRequest {
                    session_id: session(*s),
                    mode: if *observer {
                        LockMode::Observer
                    } else {
                        LockMode::Exclusive
                    },
                    timeout: Timeout::from_millis(*timeout),
                    queue_if_busy: true,
                    // Session d has no user (authentication off).
                    holder: Holder {
                        user: USERS.get(*s).map(|u| u.to_string()),
                        client_name: None,
                    },
                    priority: 0,
                    max_wait: Timeout::NONE,
                    maintenance_exempt: false,
                    claim_within: Timeout::NONE,
                };
                let _ = l.acquire(&req, at, LockPolicy::default(), &mut events);
            }
            Op::Release(s) => {
                let _ = l.release(&session(*s), false, at, &mut |_| true, &mut events);
            }
            Op::Force => {
                let admin = SessionId::parse("admin").unwrap();
                let _ = l.release(&admin, true, at, &mut |_| true, &mut events);
            }
            Op::Expire => {
                l.expire(at, &mut |_| true, &mut events);
            }
        }
        if !events.is_empty() {
            out.push(events);
        }
    }
    out
}

/// The plain fold over the whole history, with the selection applied to
/// the events as the fold used to be fed.
fn reference(events: &[Event], input: &AnalyticsInput) -> Vec<UsageRow> {
    let seeds: Vec<EquipmentId> = match (&input.user, input.equipment.is_empty()) {
        (Some(_), _) => Vec::new(),
        (None, true) => INSTRUMENTS
            .iter()
            .map(|i| EquipmentId::parse(i).unwrap())
            .collect(),
        (None, false) => input.equipment.clone(),
    };
    let mut usage = Usage::new(
        input.since.unwrap(),
        input.until.unwrap(),
        input.group_by,
        &seeds,
    );
    for e in events {
        let equipment = input.equipment.is_empty()
            || e.equipment_id
                .as_ref()
                .is_some_and(|id| input.equipment.contains(id));
        let user = input.user.is_none() || e.holder_user == input.user;
        if equipment && user {
            usage.add(e);
        }
    }
    usage.finish()
}

#[derive(Clone, Debug)]
struct Ask {
    from: i64,
    len: i64,
    group_by: usize,
    equipment: Option<usize>,
    user: Option<usize>,
}

fn ask() -> impl Strategy<Value = Ask> {
    (
        0..400_000_000i64,
        0..300_000_000i64,
        0..3usize,
        proptest::option::of(0..3usize),
        proptest::option::of(0..3usize),
    )
        .prop_map(|(from, len, group_by, equipment, user)| Ask {
            from,
            len,
            group_by,
            equipment,
            user,
        })
}

fn input(ask: &Ask) -> AnalyticsInput {
    let since = START + ask.from;
    AnalyticsInput {
        since: Some(Timestamp::from_millis(since)),
        until: Some(Timestamp::from_millis(since + ask.len)),
        equipment: ask
            .equipment
            .map(|i| EquipmentId::parse(INSTRUMENTS[i]).unwrap())
            .into_iter()
            .collect(),
        user: ask.user.map(|i| USERS[i].to_string()),
        group_by: [GroupBy::Equipment, GroupBy::User, GroupBy::All][ask.group_by],
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever happened and however the summing was cut into steps, every
    /// window's figures from the rollups are the plain fold's.
    #[test]
    fn the_rollups_answer_what_the_whole_fold_does(
        ops in proptest::collection::vec((0..3usize, op(), step()), 1..120),
        roll_every in 1..30usize,
        asks in proptest::collection::vec(ask(), 1..6),
    ) {
        let batches = history(&ops);
        let all: Vec<Event> = runtime().block_on(async {
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let clock = Arc::new(ManualClock::new(Timestamp::from_millis(START)));
            let service = service(store.clone(), clock.clone());
            let mut all = Vec::new();
            for (i, batch) in batches.into_iter().enumerate() {
                // Sum up to this batch's time first (as the server does
                // every few seconds), then record it.
                if i % roll_every == 0 {
                    let at = batch[0].timestamp.as_millis();
                    let now = clock.now().as_millis();
                    clock.advance(Duration::from_millis((at - now).max(0) as u64));
                    service.roll_up_history().await.unwrap();
                }
                let recorded = store
                    .write(move |tx| {
                        let mut b = batch.clone();
                        tx.record_events(&mut b)?;
                        Ok(b)
                    })
                    .await
                    .unwrap();
                all.extend(recorded);
            }
            clock.advance(Duration::from_secs(7_200));
            service.roll_up_history().await.unwrap();
            for ask in &asks {
                let input = input(ask);
                let got = service.analytics(input.clone()).await.unwrap();
                let want = reference(&all, &input);
                assert_eq!(got.rows, want, "{ask:?}");
            }
            all
        });
        prop_assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    }
}

/// 40 days, a lock every 10 minutes on each instrument in turn; returns
/// the events as recorded and the time of the last.
async fn record_forty_days(store: &Arc<dyn Store>) -> (Vec<Event>, i64) {
    let ops: Vec<(usize, Op, i64)> = (0..40 * 144)
        .flat_map(|i| {
            [
                (i % 3, Op::Acquire(i % 3, false, 0), 300_000),
                (i % 3, Op::Release(i % 3), 300_000),
            ]
        })
        .collect();
    let events: Vec<Event> = history(&ops).into_iter().flatten().collect();
    let end = events.last().unwrap().timestamp.as_millis();
    let recorded = store
        .write(move |tx| {
            let mut e = events.clone();
            tx.record_events(&mut e)?;
            Ok(e)
        })
        .await
        .unwrap();
    (recorded, end)
}

/// A month's window cut mid-hour at both ends.
fn month() -> AnalyticsInput {
    AnalyticsInput {
        since: Some(Timestamp::from_millis(START + 86_400_000 + 1_234_567)),
        until: Some(Timestamp::from_millis(START + 32 * 86_400_000 + 7_654_321)),
        equipment: Vec::new(),
        user: None,
        group_by: GroupBy::Equipment,
    }
}

/// A long history: a 31-day window reads a few hundred rollup rows and
/// only the events of its two cut hours; pruning every event leaves the
/// whole hours and days as they were.
async fn pruned_history_leaves_the_summed_days_as_they_were(store: Arc<dyn Store>) {
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(START)));
    let service = service(store.clone(), clock.clone());
    let (recorded, end) = record_forty_days(&store).await;
    clock.advance(Duration::from_millis((end - START) as u64 + 60_000));
    service.roll_up_history().await.unwrap();
    let window = month();
    let before = service.analytics(window.clone()).await.unwrap();
    assert_eq!(before.rows, reference(&recorded, &window));
    assert!(
        before.events < 50 && before.rollup_rows < 300,
        "{} events and {} rollup rows read",
        before.events,
        before.rollup_rows
    );
    // Keep one event: everything else goes, the rollups stay.
    let retention = Retention {
        max_age_days: None,
        max_events: Some(1),
    };
    while service.prune_history(retention).await.unwrap() > 0 {}
    let left = store
        .query(|tx| {
            tx.query_events(&EventQuery {
                limit: 10,
                ..EventQuery::default()
            })
        })
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    let whole_days = AnalyticsInput {
        since: Some(Timestamp::from_millis(START + 3_600_000)),
        until: Some(Timestamp::from_millis(START + 3_600_000 + 30 * 86_400_000)),
        ..window
    };
    let after = service.analytics(whole_days.clone()).await.unwrap();
    assert_eq!(after.rows, reference(&recorded, &whole_days));
    assert_eq!(after.events, 0);
}

#[test]
fn pruned_history_leaves_the_summed_days_as_they_were_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions::from_url("sqlite://lablink.db", dir.path()).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&options).unwrap());
    runtime().block_on(pruned_history_leaves_the_summed_days_as_they_were(store));
}

fn postgres_store(url: &str) -> Arc<dyn Store> {
    let options = PostgresOptions::from_url(url).unwrap();
    Arc::new(PostgresStore::open(&options).unwrap())
}

#[test]
fn pruned_history_leaves_the_summed_days_as_they_were_on_postgres() {
    let Some(database) = test_database::fresh() else {
        return;
    };
    let store = postgres_store(database.url());
    runtime().block_on(pruned_history_leaves_the_summed_days_as_they_were(store));
}

/// Two servers on one PostgreSQL database summing at the same time, in
/// small steps: each stretch is summed once (the cursor moves by
/// compare-and-set), so either answers what the fold does.
#[test]
fn postgres_two_servers_sum_each_stretch_once() {
    let Some(database) = test_database::fresh() else {
        return;
    };
    let (a, b) = (
        postgres_store(database.url()),
        postgres_store(database.url()),
    );
    runtime().block_on(async {
        let clock = Arc::new(ManualClock::new(Timestamp::from_millis(START)));
        let (one, two) = (service(a.clone(), clock.clone()), service(b, clock.clone()));
        let (recorded, end) = record_forty_days(&a).await;
        // Half a day at a time, both at once.
        while clock.now().as_millis() < end + 60_000 {
            clock.advance(Duration::from_secs(43_200));
            let (x, y) = tokio::join!(one.roll_up_history(), two.roll_up_history());
            x.unwrap();
            y.unwrap();
        }
        let window = month();
        for service in [&one, &two] {
            let got = service.analytics(window.clone()).await.unwrap();
            assert_eq!(got.rows, reference(&recorded, &window));
        }
    });
}
