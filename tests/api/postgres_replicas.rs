//! Several real `lablink serve` processes on one PostgreSQL database,
//! behaving as one server: one winner of a race, one FIFO queue, live events
//! and `resume_from` across replicas, notifications heard on whichever
//! replica a session listens, leases that end on time when the replica that
//! granted them is gone or the replicas' clocks disagree, `kill -9` of a
//! replica and a restart of PostgreSQL under load losing nothing
//! acknowledged (and subscribers that resume missing no event), token
//! revocation seen by every replica.
//!
//! Each test skips (saying why) without `LABLINK_TEST_POSTGRES`; the restart
//! test also needs `LABLINK_TEST_POSTGRES_CTL` and runs alone, since it stops
//! the cluster under every other test (`.ci/postgres.sh` does both).

use futures_util::StreamExt;
use futures_util::future::join_all;
use lablink::domain::Timestamp;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{TestApp, assert_error, lablink};
use crate::live::connect;
use crate::postgres_support::{
    Follower, Replica, Replicas, assert_one_holder_at_a_time, assert_tokens_strictly_grow,
    exclusive_grants, next_recorded, postgres_ctl, seqs, session, test_database, whole_history,
};

const EQUIPMENT: [&str; 3] = ["ps_abc123", "scope_123", "load_1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_together_on_an_empty_database_share_one_schema() {
    let Some(database) = test_database().await else {
        return;
    };
    let store = database.url();
    // Three processes migrate the empty database at once.
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<Replica> = std::thread::scope(|scope| {
        let starting: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| Replica::start(dir.path(), store, &[])))
            .collect();
        starting.into_iter().map(|s| s.join().unwrap()).collect()
    });
    let apps: Vec<TestApp> = nodes.iter().map(Replica::app).collect();
    let s = session(&apps[0], "pc").await;
    for app in &apps {
        let (status, body) = app.get(&format!("/api/locks/sessions/{s}")).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{} sees the session: {body}",
            app.base
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_racing_through_three_replicas_get_exactly_one_winner() {
    let Some(database) = test_database().await else {
        return;
    };
    let store = database.url();
    let replicas = Replicas::start(store, 3, &[]);
    let apps = replicas.apps();
    let mut sessions = Vec::new();
    for i in 0..24 {
        sessions.push(session(&apps[i % 3], &format!("racer{i}")).await);
    }
    let mut winners = Vec::new();
    for round in 1..=5u64 {
        let answers = join_all(sessions.iter().enumerate().map(|(i, s)| {
            let app = &apps[(i + round as usize) % 3];
            async move {
                let answer = app
                    .acquire("ps_abc123", s, json!({"queue_if_busy": false}))
                    .await;
                (s.clone(), answer)
            }
        }))
        .await;
        let mut won = Vec::new();
        for (s, (status, body)) in answers {
            if status == StatusCode::OK {
                assert_eq!(body["status"], "locked", "{body}");
                won.push((s, body["lock"]["fencing_token"].as_u64().unwrap()));
            } else {
                assert_error(&(status, body), StatusCode::CONFLICT, "equipment_locked");
            }
        }
        assert_eq!(won.len(), 1, "round {round}: exactly one winner: {won:?}");
        let (winner, token) = won.pop().unwrap();
        assert_eq!(
            token, round,
            "the round's grant is the equipment's grant number {round}"
        );
        for app in &apps {
            let (_, status) = app.get("/api/locks/status/ps_abc123").await;
            assert_eq!(
                (
                    status["session_id"].as_str(),
                    status["fencing_token"].as_u64()
                ),
                (Some(winner.as_str()), Some(token)),
                "every replica shows the one holder: {status}"
            );
        }
        let (status, body) = apps[round as usize % 3]
            .release("ps_abc123", &winner, false)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        winners.push(winner);
    }
    let history = whole_history(&apps[0], "&equipment_id=ps_abc123", None).await;
    assert_one_holder_at_a_time(&history);
    let grants = exclusive_grants(&history);
    let expected: Vec<_> = winners
        .iter()
        .zip(1..)
        .map(|(s, token)| ("ps_abc123".to_owned(), token, s.clone()))
        .collect();
    assert_eq!(grants, expected, "one grant per round, to its winner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_queueing_at_once_through_three_replicas_form_one_fifo_queue() {
    let Some(database) = test_database().await else {
        return;
    };
    let replicas = Replicas::start(database.url(), 3, &[]);
    let apps = replicas.apps();
    let mut sessions = Vec::new();
    for i in 0..24 {
        sessions.push(session(&apps[i % 3], &format!("pc{i}")).await);
    }
    let answers = join_all(
        sessions
            .iter()
            .enumerate()
            .map(|(i, s)| apps[i % 3].acquire("ps_abc123", s, json!({"queue_if_busy": true}))),
    )
    .await;
    let mut holder = None;
    let mut positions = Vec::new();
    for ((status, body), s) in answers.into_iter().zip(&sessions) {
        assert_eq!(status, StatusCode::OK, "{body}");
        match body["status"].as_str() {
            Some("locked") => assert!(holder.replace(s.clone()).is_none(), "two holders"),
            Some("queued") => {
                positions.push((body["queue_entry"]["position"].as_u64().unwrap(), s.clone()))
            }
            other => panic!("{other:?}: {body}"),
        }
    }
    let holder = holder.expect("one holder");
    positions.sort();
    assert_eq!(
        positions.iter().map(|p| p.0).collect::<Vec<_>>(),
        (1..=23).collect::<Vec<_>>(),
        "each waiter told a different place, 1 to 23"
    );
    let in_line: Vec<String> = positions.into_iter().map(|p| p.1).collect();
    for app in &apps {
        assert_eq!(
            queue(app).await,
            in_line,
            "every replica shows the queue in that order"
        );
    }
    // Released through the replicas in turn, the lock goes down the line.
    let mut current = holder;
    for (i, next) in in_line.iter().enumerate() {
        let (status, body) = apps[i % 3].release("ps_abc123", &current, false).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, status) = apps[(i + 1) % 3].get("/api/locks/status/ps_abc123").await;
        assert_eq!(status["session_id"], next.as_str(), "{status}");
        current = next.clone();
    }
    let history = whole_history(&apps[0], "&equipment_id=ps_abc123", None).await;
    assert_one_holder_at_a_time(&history);
    let granted: Vec<String> = exclusive_grants(&history)
        .into_iter()
        .map(|g| g.2)
        .collect();
    assert_eq!(granted[1..], in_line[..], "granted in queue order");
}

/// A `wait_seconds` acquire through `app`, answered when it is granted.
fn waiting_acquire(
    app: &TestApp,
    session: &str,
    wait_seconds: f64,
) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let request = app
        .client
        .post(format!("{}/api/locks/acquire", app.base))
        .json(&json!({
            "equipment_id": "ps_abc123", "session_id": session, "queue_if_busy": true,
            "wait_seconds": wait_seconds, "timeout_seconds": 60,
        }));
    tokio::spawn(async move {
        let response = request.send().await.unwrap();
        (response.status(), response.json().await.unwrap())
    })
}

/// The sessions in the queue of `ps_abc123`, in order, as `app` shows them.
async fn queue(app: &TestApp) -> Vec<String> {
    queue_of(app, "ps_abc123").await
}

async fn queue_of(app: &TestApp, equipment: &str) -> Vec<String> {
    let (_, q) = app.get(&format!("/api/locks/queue/{equipment}")).await;
    q["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["session_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits (bounded) until `app` shows `expected` as the queue.
async fn queue_is(app: &TestApp, expected: &[String]) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while queue(app).await != expected {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "queue {:?}, expected {expected:?}",
        queue(app).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_is_shared_and_handed_off_across_replicas_in_fifo_order() {
    let Some(database) = test_database().await else {
        return;
    };
    let store = database.url();
    let replicas = Replicas::start(store, 3, &[]);
    let apps = replicas.apps();
    let mut sessions = Vec::new();
    for i in 0..6 {
        sessions.push(session(&apps[i % 3], &format!("pc{i}")).await);
    }
    let (status, body) = apps[0]
        .acquire("ps_abc123", &sessions[0], json!({"timeout_seconds": 60}))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("locked"))
    );
    let first_token = body["lock"]["fencing_token"].as_u64().unwrap();
    // Waiters on every replica, each queued before the next asks.
    let mut pending = Vec::new();
    for (i, s) in sessions.iter().enumerate().skip(1) {
        pending.push(waiting_acquire(&apps[i % 3], s, 60.0));
        queue_is(&apps[(i + 1) % 3], &sessions[1..=i]).await;
    }
    // Each holder releases through the replica after its own; the next in
    // line, waiting on yet another replica, is answered `locked`.
    let mut tokens = vec![first_token];
    for (i, waiter) in pending.into_iter().enumerate() {
        let holder = &sessions[i];
        let (status, body) = apps[(i + 1) % 3].release("ps_abc123", holder, false).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the waiting acquire is answered after the release")
            .unwrap();
        assert_eq!(
            (
                status,
                body["status"].as_str(),
                body["lock"]["session_id"].as_str()
            ),
            (
                StatusCode::OK,
                Some("locked"),
                Some(sessions[i + 1].as_str())
            ),
            "{body}"
        );
        tokens.push(body["lock"]["fencing_token"].as_u64().unwrap());
        assert_eq!(
            queue(&apps[i % 3]).await,
            &sessions[i + 2..],
            "the rest still wait, in order"
        );
    }
    assert!(
        tokens.windows(2).all(|w| w[1] > w[0]),
        "fencing tokens grow strictly across replicas: {tokens:?}"
    );
    let grants = exclusive_grants(&whole_history(&apps[2], "&equipment_id=ps_abc123", None).await);
    let granted_to: Vec<&str> = grants.iter().map(|g| g.2.as_str()).collect();
    assert_eq!(
        granted_to, sessions,
        "each session granted once, in queue order"
    );
    assert_eq!(grants.iter().map(|g| g.1).collect::<Vec<_>>(), tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_some_replicas_reach_subscribers_on_another_in_seq_order() {
    let Some(database) = test_database().await else {
        return;
    };
    let store = database.url();
    let replicas = Replicas::start(store, 3, &[]);
    let [a, b, c]: [TestApp; 3] = replicas.apps().try_into().ok().unwrap();
    let mut on_b = connect(&b, json!({"type": "subscribe", "all": true})).await;
    let s1 = session(&a, "pc1").await;
    let s2 = session(&c, "pc2").await;
    let mut received = vec![
        next_recorded(&mut on_b, Duration::from_secs(1)).await,
        next_recorded(&mut on_b, Duration::from_secs(1)).await,
    ];

    // One change through A: B's subscriber hears it within a second.
    let (status, _) = a.acquire("ps_abc123", &s1, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let event = next_recorded(&mut on_b, Duration::from_secs(1)).await;
    assert_eq!(
        (event["event"].as_str(), event["session_id"].as_str()),
        (Some("lock_acquired"), Some(s1.as_str())),
        "{event}"
    );
    received.push(event);
    a.release("ps_abc123", &s1, false).await;

    // A and C write at once: B still sends every event once, in seq order.
    concurrent_changes(&a, &s1, &c, &s2, 10).await;
    let history = whole_history(&c, "", None).await;
    while received.len() < history.len() {
        received.push(next_recorded(&mut on_b, Duration::from_secs(2)).await);
    }
    assert_eq!(
        seqs(&received),
        seqs(&history),
        "B's live events are the history"
    );
    assert_eq!(received, history, "with the same content");

    // resume_from on B replays what A and C recorded since, without a gap.
    let last_seen = *seqs(&received).last().unwrap();
    drop(on_b);
    concurrent_changes(&a, &s1, &c, &s2, 10).await;
    let later = whole_history(&a, "", Some(last_seen)).await;
    assert!(!later.is_empty());
    let mut resumed = connect(
        &b,
        json!({"type": "subscribe", "all": true, "resume_from": last_seen}),
    )
    .await;
    let mut replayed = Vec::new();
    while replayed.len() < later.len() {
        replayed.push(next_recorded(&mut resumed, Duration::from_secs(2)).await);
    }
    assert_eq!(
        seqs(&replayed),
        seqs(&later),
        "replayed from {last_seen}, none skipped"
    );
}

/// `s1` through `a` and `s2` through `c`, at the same time, each `rounds`
/// times: acquire (queueing if busy) then release, on `ps_abc123` and
/// `scope_123`.
async fn concurrent_changes(a: &TestApp, s1: &str, c: &TestApp, s2: &str, rounds: usize) {
    let work = |app: &TestApp, s: &str| {
        let (app, s) = (TestApp::at(&app.base), s.to_owned());
        async move {
            for i in 0..rounds {
                let equipment = EQUIPMENT[i % 2];
                let (status, body) = app
                    .acquire(equipment, &s, json!({"queue_if_busy": true}))
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
                let (status, body) = app.release(equipment, &s, false).await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
        }
    };
    tokio::join!(work(a, s1), work(c, s2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_granted_by_a_killed_replica_ends_on_time_and_goes_to_the_waiter() {
    let Some(database) = test_database().await else {
        return;
    };
    let store = database.url();
    let mut replicas = Replicas::start(store, 3, &[]);
    let [a, b, c]: [TestApp; 3] = replicas.apps().try_into().ok().unwrap();
    let holder = session(&a, "holder").await;
    let waiter = session(&b, "waiter").await;
    let asked = Instant::now();
    let (status, body) = a
        .acquire("ps_abc123", &holder, json!({"timeout_seconds": 1}))
        .await;
    let acknowledged = Instant::now();
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("locked")),
        "{body}"
    );
    let token = body["lock"]["fencing_token"].as_u64().unwrap();
    let pending = waiting_acquire(&b, &waiter, 30.0);
    replicas.nodes[0].kill_9();

    let (status, body) = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the waiter on B is answered")
        .unwrap();
    let answered = Instant::now();
    assert_eq!(
        (
            status,
            body["status"].as_str(),
            body["lock"]["session_id"].as_str()
        ),
        (StatusCode::OK, Some("locked"), Some(waiter.as_str())),
        "{body}"
    );
    assert_eq!(body["lock"]["fencing_token"].as_u64(), Some(token + 1));
    assert!(
        answered - asked >= Duration::from_secs(1),
        "never before the lease's end: {:?}",
        answered - asked
    );
    assert!(
        answered - acknowledged <= Duration::from_millis(1500),
        "handed on about when the 1 s lease ended: {:?} after the grant",
        answered - acknowledged
    );
    let history = whole_history(&c, "&equipment_id=ps_abc123", None).await;
    let at = |kind: &str| {
        let e = history
            .iter()
            .find(|e| e["event"] == kind)
            .unwrap_or_else(|| panic!("no {kind}: {history:?}"));
        Timestamp::parse_rfc3339(e["timestamp"].as_str().unwrap()).unwrap()
    };
    let lease = at("lock_expired").seconds_since(at("lock_acquired"));
    assert!(
        (1.0..1.5).contains(&lease),
        "the recorded lease lasted {lease} s, for a 1 s timeout: {history:?}"
    );
}

/// The `event` names of everything `ws` is sent for `period`.
async fn kinds_for(ws: &mut crate::live::Ws, period: Duration) -> Vec<String> {
    let mut kinds = Vec::new();
    let _ = tokio::time::timeout(period, async {
        loop {
            let m = crate::live::next(ws).await;
            kinds.push(m["event"].as_str().unwrap_or("?").to_owned());
        }
    })
    .await;
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_hears_its_notifications_on_whichever_replica_it_listens() {
    let Some(database) = test_database().await else {
        return;
    };
    let replicas = Replicas::start(database.url(), 3, &[("LABLINK_EXPIRY_WARNING_SEC", "1")]);
    let [a, b, c]: [TestApp; 3] = replicas.apps().try_into().ok().unwrap();
    let holder = session(&a, "holder").await;
    let waiter = session(&b, "waiter").await;
    // The holder listens on C, the waiter on B; the lock is taken through A
    // and the waiter queues through C.
    let mut holder_ws = connect(&c, json!({"type": "subscribe", "session_id": holder})).await;
    let mut waiter_ws = connect(&b, json!({"type": "subscribe", "session_id": waiter})).await;
    let (status, _) = a
        .acquire("ps_abc123", &holder, json!({"timeout_seconds": 3}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = c
        .acquire("ps_abc123", &waiter, json!({"queue_if_busy": true}))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("queued")),
        "{body}"
    );

    // Until a little after the 3 s lease ends (and is handed on).
    let (mut holder_heard, mut waiter_heard) = tokio::join!(
        kinds_for(&mut holder_ws, Duration::from_secs(5)),
        kinds_for(&mut waiter_ws, Duration::from_secs(5)),
    );
    // The sessions' own creation may still be on its way from the replica
    // that made it when the subscriptions start (events committed just
    // before subscribing may arrive): not what this test is about.
    holder_heard.retain(|k| k != "session_created");
    waiter_heard.retain(|k| k != "session_created");
    holder_heard.sort();
    waiter_heard.sort();
    // As one server tells them (tests/api/live.rs): notifications beside
    // the recorded events, whichever replica caused them.
    assert_eq!(
        (holder_heard, waiter_heard),
        (
            [
                "lock_acquired",
                "lock_expired",
                "lock_expiring",
                "lock_lost"
            ]
            .map(String::from)
            .to_vec(),
            [
                "lock_granted",
                "queue_position",
                "queue_processed",
                "queued"
            ]
            .map(String::from)
            .to_vec(),
        ),
        "(the holder, on C; the waiter, on B)"
    );
}

/// libfaketime, which shifts a process's wall clock (`LABLINK_TEST_FAKETIME`,
/// else Debian's `libfaketime` path).
fn faketime() -> Option<String> {
    let lib = std::env::var("LABLINK_TEST_FAKETIME")
        .unwrap_or_else(|_| "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1".into());
    std::path::Path::new(&lib).is_file().then_some(lib)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_ends_on_time_whatever_the_replicas_clocks_say() {
    let Some(database) = test_database().await else {
        return;
    };
    let Some(lib) = faketime() else {
        println!(
            "skipped: libfaketime is not installed (.ci/postgres.sh installs Debian's libfaketime)"
        );
        return;
    };
    // A's clock runs 20 s ahead, B's 20 s behind, C's is right. Monotonic
    // time (timers, sleeps) is left alone.
    let dir = tempfile::tempdir().unwrap();
    let replica = |offset: &str| {
        let env = [
            ("LD_PRELOAD", lib.as_str()),
            ("FAKETIME", offset),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ];
        Replica::start(dir.path(), database.url(), &env)
    };
    let nodes = [replica("+20s"), replica("-20s"), replica("+0s")];
    let [a, b, c] = nodes.each_ref().map(Replica::app);
    let holder = session(&a, "holder").await;
    let waiter = session(&b, "waiter").await;
    let asked = Instant::now();
    let (status, body) = a
        .acquire("ps_abc123", &holder, json!({"timeout_seconds": 3}))
        .await;
    let granted = Instant::now();
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("locked")),
        "{body}"
    );
    let pending = waiting_acquire(&b, &waiter, 30.0);

    // Halfway through, every replica shows the holder with its time left.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for app in [&a, &b, &c] {
        let (_, status) = app.get("/api/locks/status/ps_abc123").await;
        let left = status["time_remaining"].as_f64().unwrap_or(0.0);
        assert!(
            status["session_id"] == holder.as_str() && (0.5..=2.0).contains(&left),
            "{} (clock off by 20 s or not) shows the 3 s lease at 1.5 s: {status}",
            app.base
        );
    }
    // The waiter on B (behind) gets it when the lease ends, not 20 s late.
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the waiter is answered")
        .unwrap();
    let handed_on = granted.elapsed();
    assert_eq!(
        (status, body["lock"]["session_id"].as_str()),
        (StatusCode::OK, Some(waiter.as_str())),
        "{body}"
    );
    assert!(
        asked.elapsed() >= Duration::from_secs(3) && handed_on <= Duration::from_millis(4500),
        "handed on {handed_on:?} after a 3 s lease was granted"
    );
    let history = whole_history(&c, "&equipment_id=ps_abc123", None).await;
    let at = |kind: &str| {
        let e = history.iter().find(|e| e["event"] == kind).unwrap();
        Timestamp::parse_rfc3339(e["timestamp"].as_str().unwrap()).unwrap()
    };
    let lease = at("lock_expired").seconds_since(at("lock_acquired"));
    assert!(
        (3.0..3.5).contains(&lease),
        "the recorded lease lasted {lease} s, for a 3 s timeout: {history:?}"
    );
}

// ---- under load -----------------------------------------------------------

/// What the load's clients were told.
#[derive(Debug, Default)]
struct Tally {
    /// Every acquire answered `locked` or `refreshed`: (equipment, fencing
    /// token, session).
    acknowledged: Vec<(String, u64, String)>,
    /// Every release answered 200 after an acknowledged acquire: (equipment,
    /// fencing token, session).
    released: Vec<(String, u64, String)>,
    /// 503 `store_unavailable` answers.
    unavailable: usize,
    /// Requests that got no answer, by server.
    unreachable: BTreeSet<String>,
    /// Anything else: each is a failure.
    unexpected: Vec<String>,
}

/// The instruments the load cycles on (`load_1` stays free for other checks).
const LOADED: [&str; 2] = ["ps_abc123", "scope_123"];

/// Clients cycling acquire and release through the replicas in turn, spread
/// over `LOADED`, until stopped (at most 5,000 cycles each).
struct Load {
    tally: Arc<Mutex<Tally>>,
    targets: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(apps: &[TestApp], clients: usize) -> Load {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let targets = Arc::new(Mutex::new(
            apps.iter().map(|a| a.base.clone()).collect::<Vec<_>>(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for i in 0..clients {
            let s = session(&apps[i % apps.len()], &format!("load{i}")).await;
            let (tally, targets, stop) = (tally.clone(), targets.clone(), stop.clone());
            tasks.push(tokio::spawn(cycle(i, s, tally, targets, stop)));
        }
        Load {
            tally,
            targets,
            stop,
            clients: tasks,
        }
    }

    fn acknowledged(&self) -> usize {
        self.tally.lock().unwrap().acknowledged.len()
    }

    /// Waits (bounded) until `more` acquires have been acknowledged.
    async fn until_acknowledged(&self, more: usize, within: Duration) {
        let goal = self.acknowledged() + more;
        let waited = tokio::time::timeout(within, async {
            while self.acknowledged() < goal {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "{more} more acquires acknowledged within {within:?}: {:?}",
            self.tally.lock().unwrap()
        );
    }

    /// Sends no more requests to `base`.
    fn forget(&self, base: &str) {
        self.targets.lock().unwrap().retain(|t| t != base);
    }

    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.unwrap();
        }
        Arc::try_unwrap(self.tally).unwrap().into_inner().unwrap()
    }
}

/// One load client: acquire through one replica, release through the next.
async fn cycle(
    i: usize,
    session: String,
    tally: Arc<Mutex<Tally>>,
    targets: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let equipment = LOADED[i % LOADED.len()];
    let body = json!({"equipment_id": equipment, "session_id": session, "queue_if_busy": false, "timeout_seconds": 60});
    for round in 0..5_000 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (acquire_at, release_at) = {
            let targets = targets.lock().unwrap();
            let n = targets.len();
            (
                targets[(i + round) % n].clone(),
                targets[(i + round + 1) % n].clone(),
            )
        };
        let answer = send(&client, &acquire_at, "/api/locks/acquire", &body).await;
        // The token of the lock this client now knows it holds, if any.
        let (outcome, holding) = match &answer {
            // `refreshed`: it held the lock already (an earlier answer lost).
            Ok((StatusCode::OK, reply))
                if matches!(reply["status"].as_str(), Some("locked" | "refreshed")) =>
            {
                let token = reply["lock"]["fencing_token"].as_u64().unwrap();
                let mut tally = tally.lock().unwrap();
                tally
                    .acknowledged
                    .push((equipment.into(), token, session.clone()));
                (Outcome::Fine, Some(token))
            }
            Ok((StatusCode::CONFLICT, reply)) if reply["code"] == "equipment_locked" => {
                (Outcome::Fine, None)
            }
            // Maybe applied, maybe not: which lock it holds is unknown.
            _ => (classify(&tally, &acquire_at, "acquire", answer), None),
        };
        if outcome == Outcome::Retry {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let answer = send(&client, &release_at, "/api/locks/release", &body).await;
        let fine = match &answer {
            Ok((StatusCode::OK, _)) => {
                if let Some(token) = holding {
                    let mut tally = tally.lock().unwrap();
                    tally
                        .released
                        .push((equipment.into(), token, session.clone()));
                }
                true
            }
            // Not the holder: the acquire was refused, or its answer lost.
            Ok((StatusCode::FORBIDDEN, reply)) => reply["code"] == "not_lock_holder",
            Ok((StatusCode::NOT_FOUND, reply)) => {
                matches!(reply["code"].as_str(), Some("not_locked" | "no_lock"))
            }
            _ => false,
        };
        if !fine && classify(&tally, &release_at, "release", answer) == Outcome::Retry {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[derive(PartialEq)]
enum Outcome {
    Fine,
    Retry,
}

/// Counts an answer that is neither a success nor a plain refusal.
fn classify(
    tally: &Mutex<Tally>,
    base: &str,
    what: &str,
    answer: Result<(StatusCode, Value), reqwest::Error>,
) -> Outcome {
    let mut tally = tally.lock().unwrap();
    match answer {
        Ok((StatusCode::SERVICE_UNAVAILABLE, reply)) if reply["code"] == "store_unavailable" => {
            tally.unavailable += 1;
        }
        Err(e) if e.is_connect() || e.is_request() => {
            tally.unreachable.insert(base.to_owned());
        }
        // The first few tell what went wrong.
        other if tally.unexpected.len() < 10 => tally
            .unexpected
            .push(format!("{what} through {base}: {other:?}")),
        _ => {}
    }
    Outcome::Retry
}

async fn send(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: &Value,
) -> Result<(StatusCode, Value), reqwest::Error> {
    let response = client
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await?;
    let status = response.status();
    Ok((status, response.json().await?))
}

/// Every acknowledged acquire and release is in the history; every
/// equipment had one holder at a time, with fencing tokens growing strictly.
async fn assert_nothing_acknowledged_lost(app: &TestApp, tally: &Tally) {
    let history = whole_history(app, "", None).await;
    assert_one_holder_at_a_time(&history);
    let grants = exclusive_grants(&history);
    assert_tokens_strictly_grow(&grants);
    let recorded: BTreeSet<_> = grants.iter().collect();
    let lost: Vec<_> = tally
        .acknowledged
        .iter()
        .filter(|a| !recorded.contains(a))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged acquires missing from the history: {lost:?}"
    );
    let releases: BTreeSet<_> = history
        .iter()
        .filter(|e| e["event"] == "lock_released")
        .map(|e| {
            (
                e["equipment_id"].as_str().unwrap().to_owned(),
                e["fencing_token"].as_u64().unwrap(),
                e["session_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let lost: Vec<_> = tally
        .released
        .iter()
        .filter(|r| !releases.contains(r))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged releases missing from the history: {lost:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_replica_under_load_loses_nothing_acknowledged() {
    let Some(database) = test_database().await else {
        return;
    };
    let store = database.url();
    let mut replicas = Replicas::start(store, 3, &[]);
    let apps = replicas.apps();
    let followers = [Follower::start(&apps[1]), Follower::start(&apps[2])];
    let load = Load::start(&apps, 9).await;
    load.until_acknowledged(50, Duration::from_secs(60)).await;

    let killed = apps[0].base.clone();
    replicas.nodes[0].kill_9();
    load.forget(&killed);
    // The others go on serving.
    load.until_acknowledged(50, Duration::from_secs(60)).await;
    let tally = load.finish().await;
    assert!(tally.unexpected.is_empty(), "{:?}", tally.unexpected);
    assert!(
        tally.unreachable.iter().all(|b| *b == killed),
        "only the killed replica went unanswered: {:?}",
        tally.unreachable
    );
    assert_eq!(tally.unavailable, 0, "no store failures: {tally:?}");
    assert_nothing_acknowledged_lost(&apps[1], &tally).await;
    assert_followers_got_the_history(&apps[2], followers).await;
    let s = session(&apps[2], "after").await;
    let (status, body) = apps[1]
        .acquire("ps_abc123", &s, json!({"queue_if_busy": true}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Every follower was sent the whole history, each event once, in `seq`
/// order, across its reconnections.
async fn assert_followers_got_the_history(
    app: &TestApp,
    followers: impl IntoIterator<Item = Follower>,
) {
    let history = seqs(&whole_history(app, "", None).await);
    let last = *history.last().unwrap();
    for follower in followers {
        let received = follower.until(last).await;
        assert_eq!(
            received, history,
            "a subscriber got the history without gaps or repeats"
        );
    }
}

/// A request bounded in time: a store outage must be answered, not hang.
async fn bounded<T>(request: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .expect("answered within 30 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_under_load_is_503_then_every_replica_recovers_on_its_own() {
    let Some(database) = test_database().await else {
        return;
    };
    let store = database.url();
    if std::env::var_os("LABLINK_TEST_POSTGRES_CTL").is_none() {
        println!(
            "skipped: LABLINK_TEST_POSTGRES_CTL is not set (.ci/postgres.sh sets it for this test alone: it stops the cluster under every other test)"
        );
        return;
    }
    // Three replicas under load, and a fourth that nobody uses until after.
    let replicas = Replicas::start(store, 4, &[]);
    let mut apps = replicas.apps();
    let idle = apps.pop().unwrap();
    let followers: Vec<Follower> = apps.iter().map(Follower::start).collect();
    // A holder (through A) and a waiter with `wait_seconds` (on B) across
    // the outage.
    let holder = session(&apps[0], "holder").await;
    let waiter = session(&apps[1], "waiter").await;
    let (status, _) = apps[0].acquire("load_1", &holder, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let request = apps[1].client.post(format!("{}/api/locks/acquire", apps[1].base)).json(&json!({
        "equipment_id": "load_1", "session_id": waiter, "queue_if_busy": true, "wait_seconds": 120,
    }));
    let waiting = tokio::spawn(async move {
        let response = request.send().await.unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    });
    let queued = tokio::time::timeout(Duration::from_secs(10), async {
        while queue_of(&apps[2], "load_1").await != [waiter.clone()] {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(queued.is_ok(), "the waiter is in the queue");
    let load = Load::start(&apps, 9).await;
    load.until_acknowledged(50, Duration::from_secs(60)).await;

    // An immediate stop: PostgreSQL dies as in a crash and recovers from WAL.
    postgres_ctl(&["stop", "immediate"]);
    for app in &apps {
        let write = bounded(app.post(
            "/api/locks/sessions/create",
            json!({"client_name": "during", "timeout_seconds": 0}),
        ))
        .await;
        assert_error(&write, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
        let read = bounded(app.get("/api/locks/status/ps_abc123")).await;
        assert_error(&read, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
        // What needs no store is still served.
        let (status, _) = bounded(app.get("/openapi.json")).await;
        assert_eq!(status, StatusCode::OK);
    }
    postgres_ctl(&["start"]);
    let back = Instant::now();
    for app in &apps {
        let recovered = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let (status, _) = app
                    .post(
                        "/api/locks/sessions/create",
                        json!({"client_name": "after", "timeout_seconds": 0}),
                    )
                    .await;
                if status == StatusCode::OK {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(recovered.is_ok(), "{} serves again", app.base);
    }
    let recovery = back.elapsed();
    assert!(
        recovery <= Duration::from_secs(10),
        "every replica serves again within a few seconds of PostgreSQL: {recovery:?}"
    );
    // A few seconds on, every replica answers every request: no connection
    // of it is left broken from before the outage (reads run on several),
    // the idle one included.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(back.elapsed())).await;
    let (status, body) = idle
        .post(
            "/api/locks/sessions/create",
            json!({"client_name": "idle", "timeout_seconds": 0}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the idle replica writes again: {body}"
    );
    for app in apps.iter().chain([&idle]) {
        let reads = join_all((0..12).map(|i| {
            app.get(if i % 2 == 0 {
                "/api/locks/status/load_1"
            } else {
                "/api/locks/events?limit=1"
            })
        }))
        .await;
        let failed: Vec<_> = reads.iter().filter(|r| r.0 != StatusCode::OK).collect();
        assert!(
            failed.is_empty(),
            "{} failed reads 5 s after PostgreSQL came back: {failed:?}",
            app.base
        );
    }
    load.until_acknowledged(50, Duration::from_secs(60)).await;

    // The waiter kept its place: released through C, load_1 goes to it. If
    // its request was still waiting, it is answered `locked`; it may have
    // been answered 503 during the outage instead.
    let (status, body) = apps[2].release("load_1", &holder, false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting acquire is answered")
        .unwrap();
    if status == StatusCode::OK {
        assert_eq!(body["status"], "locked", "{body}");
    } else {
        assert_error(
            &(status, body),
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
        );
    }
    let (_, load_1) = apps[0].get("/api/locks/status/load_1").await;
    assert_eq!(load_1["session_id"], waiter.as_str(), "{load_1}");

    let tally = load.finish().await;
    println!(
        "all replicas served again {recovery:?} after PostgreSQL was back; {} acquires and {} releases acknowledged, {} answered 503",
        tally.acknowledged.len(),
        tally.released.len(),
        tally.unavailable
    );
    assert!(tally.unexpected.is_empty(), "{:?}", tally.unexpected);
    assert!(tally.unreachable.is_empty(), "{:?}", tally.unreachable);
    assert_nothing_acknowledged_lost(&apps[2], &tally).await;
    assert_followers_got_the_history(&apps[0], followers).await;

    // Live events flow between replicas again (their listeners reconnected).
    for (i, app) in apps.iter().enumerate() {
        let s = session(&apps[(i + 1) % 3], "listener").await;
        let mut ws = connect(app, json!({"type": "subscribe", "session_id": s})).await;
        let (status, _) = apps[(i + 1) % 3]
            .acquire("ps_abc123", &s, json!({"queue_if_busy": true}))
            .await;
        assert_eq!(status, StatusCode::OK);
        let event = next_recorded(&mut ws, Duration::from_secs(1)).await;
        assert_eq!(event["session_id"], s.as_str(), "{event}");
    }
}

// ---- tokens -----------------------------------------------------------------

/// `lablink token ARGS --store STORE`: (stdout, stderr).
fn token_cli(store: &str, args: &[&str]) -> (String, String) {
    let out = lablink()
        .arg("token")
        .args(args)
        .args(["--store", store])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "{args:?}: {stderr}");
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_with_the_cli_is_refused_by_every_replica_within_a_second() {
    let Some(database) = test_database().await else {
        return;
    };
    let store = database.url();
    let (token, created) = token_cli(store, &["create", "--user", "alice", "--role", "operator"]);
    let token = token.trim().to_owned();
    let id = created
        .split_whitespace()
        .find(|w| w.starts_with("tok_"))
        .unwrap_or_else(|| panic!("the token's id: {created}"))
        .to_owned();
    let replicas = Replicas::start(store, 3, &[("LABLINK_AUTH", "required")]);
    let apps: Vec<TestApp> = replicas.apps().iter().map(|a| a.as_user(&token)).collect();
    let mut sockets = Vec::new();
    for app in &apps {
        let (status, body) = app.get("/api/locks/all").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let url = format!(
            "{}/api/ws?access_token={token}",
            app.base.replace("http://", "ws://")
        );
        sockets.push(tokio_tungstenite::connect_async(url).await.unwrap().0);
    }

    token_cli(store, &["revoke", &id]);
    let revoked = Instant::now();
    for app in &apps {
        loop {
            let answer = app.get("/api/locks/all").await;
            if answer.0 == StatusCode::UNAUTHORIZED {
                assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_token");
                break;
            }
            assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
            assert!(
                revoked.elapsed() <= Duration::from_secs(1),
                "{} still accepts the token {:?} after it was revoked",
                app.base,
                revoked.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Open WebSockets on every replica are closed as policy violations.
    for mut ws in sockets {
        let close = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(_)) => continue,
                    other => panic!("a close frame, got {other:?}"),
                }
            }
        })
        .await
        .expect("closed within about a second")
        .expect("with a code");
        assert_eq!(close.code, CloseCode::Policy, "{close:?}");
    }
}
