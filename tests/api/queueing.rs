//! Advanced queueing through the API: priorities and aging, on every
//! store and across restarts.

use lablink::auth::AuthMode;
use lablink::config::Settings;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::auth::create_token;
use crate::helpers::{
    TestApp, assert_error, memory, spawn_with, spawn_with_clock, sqlite_in, start_binary,
};
use crate::live::{connect, until};

const PSU: &str = "ps_abc123";

/// A fresh database on the PostgreSQL server of `LABLINK_TEST_POSTGRES`,
/// dropped at the end; `None` (the test says it skipped) without one.
pub struct Postgres {
    admin: String,
    name: String,
    pub url: String,
}

impl Postgres {
    pub fn fresh() -> Option<Self> {
        let Ok(admin) = std::env::var("LABLINK_TEST_POSTGRES") else {
            eprintln!("skipped PostgreSQL: LABLINK_TEST_POSTGRES is not set");
            return None;
        };
        let name = format!("lablink_queueing_{}", uuid::Uuid::new_v4().simple());
        // The synchronous client runs its own runtime: off the test's.
        run_sql(&admin, format!("CREATE DATABASE {name}")).expect("a test database");
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Some(Self { admin, name, url })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = run_sql(&self.admin, drop);
    }
}

/// Runs `sql` on the server at `url`, on a thread of its own.
fn run_sql(url: &str, sql: String) -> Result<(), postgres::Error> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        postgres::Client::connect(&url, postgres::NoTls)?.batch_execute(&sql)
    })
    .join()
    .expect("the SQL thread")
}

/// Runs `scenario` on a fresh server of each store: memory, SQLite, and
/// PostgreSQL when one is given.
pub async fn on_every_store<F, Fut>(scenario: F)
where
    F: Fn(TestApp, &'static str) -> Fut,
    Fut: std::future::Future<Output = TestApp>,
{
    on_every_store_with(|s| s, scenario).await;
}

/// `on_every_store`, each server's settings first passed through
/// `configure` (to add instruments, say).
pub async fn on_every_store_with<F, Fut>(configure: fn(Settings) -> Settings, scenario: F)
where
    F: Fn(TestApp, &'static str) -> Fut,
    Fut: std::future::Future<Output = TestApp>,
{
    scenario(spawn_with(configure(memory())).await, "memory")
        .await
        .stop()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = spawn_with(configure(sqlite_in(dir.path(), "?synchronous=normal"))).await;
    scenario(sqlite, "sqlite").await.stop().await;
    if let Some(pg) = Postgres::fresh() {
        let settings = configure(Settings {
            store: pg.url.clone(),
            ..Settings::default()
        });
        scenario(spawn_with(settings).await, "postgres")
            .await
            .stop()
            .await;
    }
}

/// The session ids of an equipment's queue, next in line first, with the
/// positions it reports checked to be 1..n.
pub async fn queue_of(app: &TestApp, equipment: &str) -> Vec<String> {
    let (status, body) = app.get(&format!("/api/locks/queue/{equipment}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let queue = body["queue"].as_array().unwrap();
    for (i, e) in queue.iter().enumerate() {
        assert_eq!(e["position"], i + 1, "{body}");
    }
    queue
        .iter()
        .map(|e| e["session_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A SQLite server in `dir` that requires tokens (make them first).
fn auth_required(dir: &std::path::Path) -> Settings {
    Settings {
        auth: Some(AuthMode::Required),
        ..sqlite_in(dir, "?synchronous=normal")
    }
}

/// `n` sessions with no timeout.
async fn sessions(app: &TestApp, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(app.session(0.0).await);
    }
    out
}

async fn queue_with(app: &TestApp, session: &str, extra: Value) -> Value {
    let mut body = json!({"queue_if_busy": true, "timeout_seconds": 0});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    let (status, answer) = app.acquire(PSU, session, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

#[tokio::test]
async fn higher_priority_is_served_first_equal_ones_fifo_and_the_holder_keeps_its_lock() {
    on_every_store(|app, store| async move {
        let s = sessions(&app, 5).await;
        let (holder, b, c, d, e) = (&s[0], &s[1], &s[2], &s[3], &s[4]);
        assert_eq!(
            queue_with(&app, holder, json!({"priority": 10})).await["status"],
            "locked"
        );
        assert_eq!(
            queue_with(&app, b, json!({})).await["queue_entry"]["position"],
            1
        );
        let vip = queue_with(&app, c, json!({"priority": 5})).await;
        assert_eq!(
            (
                &vip["status"],
                &vip["queue_entry"]["position"],
                &vip["queue_entry"]["priority"]
            ),
            (&json!("queued"), &json!(1), &json!(5)),
            "{store}"
        );
        queue_with(&app, d, json!({"priority": 0})).await;
        assert_eq!(
            queue_with(&app, e, json!({"priority": -3})).await["queue_entry"]["position"],
            4
        );
        // No preemption: a priority-10 request never takes a held lock.
        let (_, status) = app.get(&format!("/api/locks/status/{PSU}")).await;
        assert_eq!(status["session_id"], holder.as_str());
        assert_eq!(
            queue_of(&app, PSU).await,
            [c.as_str(), b.as_str(), d.as_str(), e.as_str()],
            "{store}"
        );
        // Asking again answers the real position.
        let again = queue_with(&app, b, json!({})).await;
        assert_eq!(again["queue_entry"]["position"], 2);
        // Served in that order.
        let mut served = Vec::new();
        let mut current = holder.clone();
        for _ in 0..4 {
            app.release(PSU, &current, false).await;
            let (_, status) = app.get(&format!("/api/locks/status/{PSU}")).await;
            current = status["session_id"].as_str().unwrap().to_owned();
            served.push(current.clone());
        }
        assert_eq!(
            served,
            [c.as_str(), b.as_str(), d.as_str(), e.as_str()],
            "{store}"
        );
        let (_, history) = app
            .get(&format!(
                "/api/locks/events?equipment_id={PSU}&event=queued"
            ))
            .await;
        let priorities: Vec<&Value> = history["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["priority"])
            .collect();
        assert_eq!(
            priorities,
            [&Value::Null, &json!(5), &Value::Null, &json!(-3)]
        );
        app
    })
    .await;
}

#[tokio::test]
async fn waiting_ages_a_request_so_it_cannot_be_overtaken_forever() {
    // The default: one step a minute. A priority-3 request goes ahead of a
    // priority-0 waiter that has waited two minutes, not of one that has
    // waited four.
    let app = spawn_with(memory()).await;
    let s = sessions(&app, 5).await;
    queue_with(&app, &s[0], json!({})).await;
    queue_with(&app, &s[1], json!({})).await;
    app.advance(120.0);
    queue_with(&app, &s[2], json!({})).await;
    app.advance(120.0);
    // s1 has waited 240 s (4 steps), s2 120 s (2 steps).
    let vip = queue_with(&app, &s[3], json!({"priority": 3})).await;
    assert_eq!(vip["queue_entry"]["position"], 2);
    assert_eq!(
        queue_of(&app, PSU).await,
        [s[1].as_str(), s[3].as_str(), s[2].as_str()]
    );

    // LABLINK_PRIORITY_AGING_SEC=0: strict priority.
    let mut settings = memory();
    settings.policy.lock.aging_ms = 0;
    let app = spawn_with(settings).await;
    let s = sessions(&app, 3).await;
    queue_with(&app, &s[0], json!({})).await;
    queue_with(&app, &s[1], json!({})).await;
    app.advance(100_000.0);
    queue_with(&app, &s[2], json!({"priority": 1})).await;
    assert_eq!(queue_of(&app, PSU).await, [s[2].as_str(), s[1].as_str()]);
}

#[tokio::test]
async fn waiters_pushed_back_hear_their_new_position() {
    let app = spawn_with(memory()).await;
    let s = sessions(&app, 3).await;
    queue_with(&app, &s[0], json!({})).await;
    queue_with(&app, &s[1], json!({})).await;
    let mut ws = connect(&app, json!({"type": "subscribe", "session_id": s[1]})).await;
    queue_with(&app, &s[2], json!({"priority": 2})).await;
    let note = until(&mut ws, "queue_position").await;
    assert_eq!(
        (&note["session_id"], &note["position"]),
        (&json!(s[1]), &json!(2))
    );
}

#[tokio::test]
async fn a_priority_outside_minus_10_to_10_or_not_whole_is_refused_and_changes_nothing() {
    let app = spawn_with(memory()).await;
    let s = sessions(&app, 2).await;
    queue_with(&app, &s[0], json!({})).await;
    // A whole number written with a point is that number (JSON Schema's
    // integer); 1.5 is not whole.
    for bad in [json!(11), json!(-11), json!(1000), json!(1.5)] {
        let answer = app
            .acquire(PSU, &s[1], json!({"queue_if_busy": true, "priority": bad}))
            .await;
        assert_error(
            &answer,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        );
        assert!(answer.1["detail"].as_str().unwrap().contains("priority"));
    }
    for bad in [json!("high")] {
        let answer = app
            .acquire(PSU, &s[1], json!({"queue_if_busy": true, "priority": bad}))
            .await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    }
    assert!(queue_of(&app, PSU).await.is_empty());
}

#[tokio::test]
async fn with_authentication_a_priority_above_0_needs_an_admin_or_the_roles_cap() {
    let dir = tempfile::tempdir().unwrap();
    let root = create_token(dir.path(), "root", "admin");
    let alice = create_token(dir.path(), "alice", "operator");
    let vera = create_token(dir.path(), "vera", "observer");
    let mut settings = auth_required(dir.path());
    settings.policy.priority_caps.operator = 3;
    let app = spawn_with(settings).await;
    let (root, alice, vera) = (app.as_user(&root), app.as_user(&alice), app.as_user(&vera));
    let holder = root.session(0.0).await;
    root.acquire(PSU, &holder, json!({})).await;

    let a = alice.session(0.0).await;
    let refused = alice
        .acquire(PSU, &a, json!({"queue_if_busy": true, "priority": 4}))
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    assert!(refused.1["detail"].as_str().unwrap().contains("at most 3"));
    let ok = alice
        .acquire(PSU, &a, json!({"queue_if_busy": true, "priority": 3}))
        .await;
    assert_eq!(ok.1["queue_entry"]["priority"], 3, "{}", ok.1);

    let v = vera.session(0.0).await;
    let observer = json!({"queue_if_busy": true, "lock_mode": "observer", "priority": 1});
    assert_error(
        &vera.acquire(PSU, &v, observer).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    // Letting others go first is open to all.
    let polite = json!({"queue_if_busy": true, "lock_mode": "observer", "priority": -5});
    assert_eq!(vera.acquire(PSU, &v, polite).await.0, StatusCode::OK);

    let r = root.session(0.0).await;
    let top = root
        .acquire(PSU, &r, json!({"queue_if_busy": true, "priority": 10}))
        .await;
    assert_eq!(top.1["queue_entry"]["position"], 1, "{}", top.1);
    assert_eq!(
        queue_of(&root, PSU).await,
        [r.as_str(), a.as_str(), v.as_str()]
    );
}

#[tokio::test]
async fn the_order_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_with(sqlite_in(dir.path(), "")).await;
    let s = sessions(&app, 4).await;
    queue_with(&app, &s[0], json!({})).await;
    queue_with(&app, &s[1], json!({})).await;
    queue_with(&app, &s[2], json!({"priority": 4})).await;
    let clock = app.stop().await;
    let app = spawn_with_clock(sqlite_in(dir.path(), ""), clock).await;
    queue_with(&app, &s[3], json!({"priority": 2})).await;
    assert_eq!(
        queue_of(&app, PSU).await,
        [s[2].as_str(), s[3].as_str(), s[1].as_str()]
    );
    let (_, queue) = app.get(&format!("/api/locks/queue/{PSU}")).await;
    assert_eq!(queue["queue"][0]["priority"], 4);
}

#[tokio::test]
async fn the_real_binary_reads_the_aging_setting() {
    // Strict priority (aging off) from the environment: a priority-1
    // request goes ahead of a waiter of any age.
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, _) = start_binary(
        dir.path(),
        &["--store", "memory"],
        &[("LABLINK_PRIORITY_AGING_SEC", "0")],
    );
    let app = TestApp::at(&format!("http://{addr}"));
    let s = sessions(&app, 3).await;
    queue_with(&app, &s[0], json!({})).await;
    queue_with(&app, &s[1], json!({})).await;
    queue_with(&app, &s[2], json!({"priority": 1})).await;
    assert_eq!(queue_of(&app, PSU).await, [s[2].as_str(), s[1].as_str()]);
    child.kill().unwrap();
    child.wait().unwrap();
}

// ---- max_wait_seconds -----------------------------------------------------

#[tokio::test]
async fn a_waiter_past_its_max_wait_is_dropped_by_the_reaper_and_told() {
    on_every_store(|app, store| async move {
        let s = sessions(&app, 3).await;
        let (holder, patient, next) = (&s[0], &s[1], &s[2]);
        // PostgreSQL servers take their time from the database, not the
        // test's clock: there the wait is one real second.
        let manual = store != "postgres";
        let max_wait = if manual { 30.0 } else { 1.0 };
        queue_with(&app, holder, json!({})).await;
        let queued = queue_with(&app, patient, json!({"max_wait_seconds": max_wait})).await;
        let at = |field: &str| {
            let raw = queued["queue_entry"][field].as_str().unwrap();
            chrono::DateTime::parse_from_rfc3339(raw).unwrap()
        };
        assert_eq!(
            (at("wait_expires_at") - at("queued_at")).num_milliseconds(),
            (max_wait * 1000.0) as i64,
            "{store}"
        );
        queue_with(&app, next, json!({})).await;
        let mut mine = connect(&app, json!({"type": "subscribe", "session_id": patient})).await;
        let mut theirs = connect(&app, json!({"type": "subscribe", "session_id": next})).await;
        if manual {
            app.advance(29.9);
            assert_eq!(queue_of(&app, PSU).await.len(), 2, "{store}");
            // The reaper drops it at its deadline, with no request made.
            app.advance(0.1);
        }
        let timeout = until(&mut mine, "queue_timeout").await;
        assert_eq!(
            (
                &timeout["equipment_id"],
                &timeout["reason"],
                &timeout["seq"].is_u64()
            ),
            (&json!(PSU), &json!("wait_timeout"), &true),
            "{store}: {timeout}"
        );
        let note = until(&mut mine, "queue_place_lost").await;
        assert_eq!(note["reason"], "wait_timeout");
        let moved = until(&mut theirs, "queue_position").await;
        assert_eq!(moved["position"], 1, "{store}");
        assert_eq!(queue_of(&app, PSU).await, [next.as_str()], "{store}");
        // Nobody waits for a ghost: the next in line gets the lock.
        app.release(PSU, holder, false).await;
        let (_, status) = app.get(&format!("/api/locks/status/{PSU}")).await;
        assert_eq!(status["session_id"], next.as_str(), "{store}");
        let kinds = app.events(PSU).await;
        assert!(kinds.contains(&"queue_timeout".to_owned()), "{kinds:?}");
        // Its own release now: it holds nothing and waits nowhere.
        let gone = app.release(PSU, patient, false).await;
        assert_eq!(gone.0, StatusCode::FORBIDDEN, "{}", gone.1);
        app
    })
    .await;
}

#[tokio::test]
async fn a_long_polled_acquire_whose_max_wait_passes_is_answered_409_queue_timeout() {
    let app = spawn_with(memory()).await;
    let s = sessions(&app, 2).await;
    queue_with(&app, &s[0], json!({})).await;
    let request = app
        .client
        .post(format!("{}/api/locks/acquire", app.base))
        .json(&json!({
            "equipment_id": PSU, "session_id": s[1], "queue_if_busy": true,
            "wait_seconds": 600, "max_wait_seconds": 10,
        }));
    let waiting = tokio::spawn(async move {
        let response = request.send().await.unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    });
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while queue_of(&app, PSU).await.is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    app.advance(10.0);
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_error(&answer, StatusCode::CONFLICT, "queue_timeout");
    assert!(queue_of(&app, PSU).await.is_empty());
}

#[tokio::test]
async fn a_bad_max_wait_is_refused_and_the_deadline_outlives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_with(sqlite_in(dir.path(), "")).await;
    let s = sessions(&app, 3).await;
    queue_with(&app, &s[0], json!({})).await;
    for bad in [json!(-1), json!(0.0001), json!(2e9)] {
        let answer = app
            .acquire(
                PSU,
                &s[1],
                json!({"queue_if_busy": true, "max_wait_seconds": bad}),
            )
            .await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_timeout");
        assert!(
            answer.1["detail"]
                .as_str()
                .unwrap()
                .contains("max_wait_seconds")
        );
    }
    assert!(queue_of(&app, PSU).await.is_empty());
    queue_with(&app, &s[1], json!({"max_wait_seconds": 60})).await;
    queue_with(&app, &s[2], json!({"max_wait_seconds": 0})).await;
    let clock = app.stop().await;
    // Down for 20 s: the place is kept, its deadline unchanged (a
    // waiter's patience is its own, not a lease it had to renew).
    clock.advance(std::time::Duration::from_secs(20));
    let app = spawn_with_clock(sqlite_in(dir.path(), ""), clock).await;
    assert_eq!(queue_of(&app, PSU).await, [s[1].as_str(), s[2].as_str()]);
    app.advance(40.0);
    let mut ws = connect(&app, json!({"type": "subscribe", "equipment_ids": [PSU]})).await;
    let _ = &mut ws;
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while queue_of(&app, PSU).await.len() != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the reaper of the restarted server drops it");
    assert_eq!(queue_of(&app, PSU).await, [s[2].as_str()]);
}

// ---- the lab manager's controls ---------------------------------------------

#[tokio::test]
async fn a_manager_removes_a_stuck_queue_entry_and_everyone_is_told() {
    on_every_store(|app, store| async move {
        let s = sessions(&app, 3).await;
        let (holder, stuck, next) = (&s[0], &s[1], &s[2]);
        queue_with(&app, holder, json!({})).await;
        queue_with(&app, stuck, json!({})).await;
        queue_with(&app, next, json!({})).await;
        let mut theirs = connect(&app, json!({"type": "subscribe", "session_id": stuck})).await;
        let mut behind = connect(&app, json!({"type": "subscribe", "session_id": next})).await;
        let path = format!("/api/locks/queue/{PSU}/{stuck}/remove");
        let body = json!({"forced_by": "lab-manager", "message": "left for lunch"});
        let (status, removed) = app.post(&path, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{store}: {removed}");
        assert_eq!(
            (
                &removed["status"],
                &removed["queue_entry"]["session_id"],
                &removed["queue_entry"]["position"]
            ),
            (&json!("removed"), &json!(stuck), &json!(1))
        );
        let lost = until(&mut theirs, "queue_place_lost").await;
        assert_eq!(
            (&lost["reason"], &lost["forced_by"], &lost["message"]),
            (
                &json!("removed"),
                &json!("lab-manager"),
                &json!("left for lunch")
            ),
            "{store}"
        );
        assert_eq!(until(&mut behind, "queue_position").await["position"], 1);
        assert_eq!(queue_of(&app, PSU).await, [next.as_str()], "{store}");
        let (_, history) = app
            .get(&format!(
                "/api/locks/events?session_id={stuck}&event=dequeued"
            ))
            .await;
        let dequeued = &history["events"][0];
        assert_eq!(
            (
                &dequeued["reason"],
                &dequeued["forced_by"],
                &dequeued["message"]
            ),
            (
                &json!("removed"),
                &json!("lab-manager"),
                &json!("left for lunch")
            )
        );
        // Not (or no longer) in the queue: 404, nothing changes.
        assert_error(
            &app.post(&path, body).await,
            StatusCode::NOT_FOUND,
            "not_queued",
        );
        let unknown = app
            .post("/api/locks/queue/nope/x/remove", json!({"forced_by": "m"}))
            .await;
        assert_error(&unknown, StatusCode::NOT_FOUND, "equipment_not_found");
        assert_error(
            &app.post(&format!("/api/locks/queue/{PSU}/{next}/remove"), json!({}))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        );
        // A malformed `forced_by` is named as such, not as the session.
        refused_naming_forced_by(&app, &format!("/api/locks/queue/{PSU}/{next}/remove")).await;
        assert_eq!(queue_of(&app, PSU).await, [next.as_str()]);
        app
    })
    .await;
}

#[tokio::test]
async fn a_manager_ends_someone_elses_session_its_locks_go_and_the_history_says_who() {
    // Auto-release off: the manager's end releases the locks anyway.
    let mut settings = memory();
    settings.policy.auto_release_on_disconnect = false;
    let app = spawn_with(settings).await;
    let s = sessions(&app, 3).await;
    let (gone, next, other) = (&s[0], &s[1], &s[2]);
    queue_with(&app, gone, json!({})).await;
    queue_with(&app, next, json!({})).await;
    app.acquire("scope_123", other, json!({})).await;
    app.acquire("scope_123", gone, json!({"queue_if_busy": true}))
        .await;
    let mut ws = connect(&app, json!({"type": "subscribe", "session_id": gone})).await;
    // A malformed `forced_by` is named as such and ends nothing.
    refused_naming_forced_by(&app, &format!("/api/locks/sessions/{gone}/end")).await;
    let (status, ended) = app
        .post(
            &format!("/api/locks/sessions/{gone}/end"),
            json!({"forced_by": "lab-manager", "message": "instrument needed"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    assert_eq!(ended["locks_released"], 1);
    // Notifications and history events may interleave either way.
    let mut heard = std::collections::HashMap::new();
    while heard.len() < 3 {
        let m = crate::live::next(&mut ws).await;
        let kind = m["event"].as_str().unwrap_or("").to_owned();
        if ["lock_lost", "queue_place_lost", "session_ended"].contains(&kind.as_str()) {
            heard.insert(kind, m);
        }
    }
    let lost = &heard["lock_lost"];
    assert_eq!(
        (&lost["reason"], &lost["forced_by"]),
        (&json!("forced"), &json!("lab-manager"))
    );
    assert_eq!(heard["queue_place_lost"]["equipment_id"], "scope_123");
    let end = &heard["session_ended"];
    assert_eq!(
        (&end["reason"], &end["forced_by"], &end["message"]),
        (
            &json!("forced"),
            &json!("lab-manager"),
            &json!("instrument needed")
        )
    );
    let (_, status) = app.get(&format!("/api/locks/status/{PSU}")).await;
    assert_eq!(status["session_id"], next.as_str(), "handed to the next");
    assert!(queue_of(&app, "scope_123").await.is_empty());
    assert_eq!(
        app.get(&format!("/api/locks/sessions/{gone}")).await.0,
        StatusCode::NOT_FOUND
    );
    // Its client hears why it must stop.
    let command = app
        .command(PSU, Some(gone), "set_voltage", json!({"voltage": 1.0}))
        .await;
    assert_error(&command, StatusCode::FORBIDDEN, "lock_lost");
    assert_error(
        &app.post(
            &format!("/api/locks/sessions/{gone}/end"),
            json!({"forced_by": "m"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "session_not_found",
    );
}

#[tokio::test]
async fn with_authentication_only_admins_manage_and_the_events_name_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = create_token(dir.path(), "root", "admin");
    let alice = create_token(dir.path(), "alice", "operator");
    let bob = create_token(dir.path(), "bob", "operator");
    let app = spawn_with(auth_required(dir.path())).await;
    let (root, alice, bob) = (app.as_user(&root), app.as_user(&alice), app.as_user(&bob));
    let a = alice.session(0.0).await;
    let b = bob.session(0.0).await;
    alice.acquire(PSU, &a, json!({})).await;
    bob.acquire(PSU, &b, json!({"queue_if_busy": true})).await;
    let remove = format!("/api/locks/queue/{PSU}/{b}/remove");
    let end = format!("/api/locks/sessions/{a}/end");
    let by = json!({"forced_by": "alice-pc"});
    assert_error(
        &alice.post(&remove, by.clone()).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        &bob.post(&end, by.clone()).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(queue_of(&root, PSU).await, [b.as_str()]);
    let by = json!({"forced_by": "lab-manager"});
    assert_eq!(root.post(&end, by).await.0, StatusCode::OK);
    let (_, history) = root
        .get(&format!(
            "/api/locks/events?session_id={a}&event=session_ended"
        ))
        .await;
    let ended = &history["events"][0];
    assert_eq!(
        (&ended["user"], &ended["holder_user"], &ended["forced_by"]),
        (&json!("root"), &json!("alice"), &json!("lab-manager"))
    );
    let (_, status) = root.get(&format!("/api/locks/status/{PSU}")).await;
    assert_eq!(status["session_id"], b.as_str());
}

// ---- maintenance ------------------------------------------------------------

#[tokio::test]
async fn maintenance_refuses_new_requests_or_queues_them_and_the_holder_keeps_its_lock() {
    on_every_store(|app, store| async move {
        let s = sessions(&app, 3).await;
        let (holder, refused, waiter) = (&s[0], &s[1], &s[2]);
        queue_with(&app, holder, json!({})).await;
        let mut ws = connect(&app, json!({"type": "subscribe", "session_id": holder})).await;
        let path = format!("/api/equipment/{PSU}/maintenance");
        let (status, started) = app.post(&path, json!({"reason": "calibration"})).await;
        assert_eq!(status, StatusCode::OK, "{store}: {started}");
        assert_eq!(started["maintenance"]["reason"], "calibration");
        let warned = until(&mut ws, "maintenance_started").await;
        assert_eq!(
            (&warned["session_id"], &warned["message"]),
            (&json!(holder), &json!("calibration")),
            "{store}"
        );
        let (_, status) = app.get(&format!("/api/locks/status/{PSU}")).await;
        assert_eq!(
            (
                &status["session_id"],
                &status["maintenance"]["reason"],
                &status["maintenance"]["until"]
            ),
            (&json!(holder), &json!("calibration"), &Value::Null),
            "{store}"
        );
        let no = app.acquire(PSU, refused, json!({})).await;
        assert_error(&no, StatusCode::CONFLICT, "in_maintenance");
        assert!(no.1["detail"].as_str().unwrap().contains("calibration"));
        // The holder still works with its instrument.
        let command = app
            .command(PSU, Some(holder), "set_voltage", json!({"voltage": 2.0}))
            .await;
        assert_eq!(command.0, StatusCode::OK, "{}", command.1);
        queue_with(&app, waiter, json!({})).await;
        app.release(PSU, holder, false).await;
        let (_, status) = app.get(&format!("/api/locks/status/{PSU}")).await;
        assert_eq!(
            (&status["locked"], &status["queue_length"]),
            (&json!(false), &json!(1)),
            "the queue waits for service: {store}"
        );
        let (status, ended) = app.delete(&path).await;
        assert_eq!(status, StatusCode::OK, "{ended}");
        let (_, status) = app.get(&format!("/api/locks/status/{PSU}")).await;
        assert_eq!(
            (&status["session_id"], &status["maintenance"]),
            (&json!(waiter), &Value::Null),
            "{store}"
        );
        assert_error(
            &app.delete(&path).await,
            StatusCode::NOT_FOUND,
            "not_in_maintenance",
        );
        let kinds = app.events(PSU).await;
        for kind in ["maintenance_started", "maintenance_ended"] {
            assert!(kinds.contains(&kind.to_owned()), "{store}: {kinds:?}");
        }
        app
    })
    .await;
}

/// A queued request's message names what stands in its way: maintenance
/// on a free instrument (not "others are waiting": nobody is), the holder
/// with who it is, and waiters ahead only when there are some.
#[tokio::test]
async fn a_queued_message_names_what_stands_in_the_way() {
    let app = spawn_with(memory()).await;
    let (status, _) = app
        .post(
            "/api/equipment/load_1/maintenance",
            json!({"reason": "calibration", "until": "2999-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let m1 = app.session(0.0).await;
    let queued = app
        .acquire("load_1", &m1, json!({"queue_if_busy": true}))
        .await
        .1;
    assert_eq!(
        queued["message"], "Equipment in maintenance: calibration until 2999-01-01T00:00:00.000Z",
        "{queued}"
    );
    let holder = app.session(0.0).await;
    app.acquire(PSU, &holder, json!({})).await;
    let waiter = app.session(0.0).await;
    let queued = queue_with(&app, &waiter, json!({})).await;
    assert_eq!(
        queued["message"],
        format!("Equipment locked by session {holder} (test)"),
        "{queued}"
    );
    app.release(PSU, &holder, false).await;
    // The waiter holds it now; the next one waits for it, not for others.
    let next = app.session(0.0).await;
    let queued = queue_with(&app, &next, json!({})).await;
    assert_eq!(
        queued["message"],
        format!("Equipment locked by session {waiter} (test)")
    );
}

#[tokio::test]
async fn maintenance_ends_at_its_until_by_the_reaper_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_with(sqlite_in(dir.path(), "")).await;
    let path = format!("/api/equipment/{PSU}/maintenance");
    for (bad, says) in [
        (
            json!({"reason": "x", "until": "2026-01-05T08:00:00Z"}),
            "`until` must be in the future, got 2026-01-05T08:00:00.000Z (now is ",
        ),
        (
            json!({"reason": "x", "until": "tomorrow"}),
            "`until`: invalid timestamp \"tomorrow\": ",
        ),
    ] {
        let refused = app.post(&path, bad).await;
        assert_error(
            &refused,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_timestamp",
        );
        let detail = refused.1["detail"].as_str().unwrap();
        assert!(detail.starts_with(says), "{detail}");
    }
    assert_error(
        &app.post(&path, json!({"reason": " "})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    let (_, status) = app.get(&format!("/api/locks/status/{PSU}")).await;
    assert_eq!(
        status["maintenance"],
        Value::Null,
        "refused: nothing changed"
    );
    let until_at = "2026-01-05T09:01:00.000Z";
    let (code, _) = app
        .post(
            &path,
            json!({"reason": "firmware update", "until": until_at}),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let s = sessions(&app, 1).await;
    queue_with(&app, &s[0], json!({})).await;
    let clock = app.stop().await;
    let app = spawn_with_clock(sqlite_in(dir.path(), ""), clock).await;
    let (_, status) = app.get(&format!("/api/locks/status/{PSU}")).await;
    assert_eq!(
        (&status["maintenance"]["until"], &status["queue_length"]),
        (&json!(until_at), &json!(1))
    );
    let mut ws = connect(&app, json!({"type": "subscribe", "session_id": s[0]})).await;
    app.advance(60.0);
    let granted = until(&mut ws, "lock_granted").await;
    assert_eq!(granted["equipment_id"], PSU);
    let kinds = app.events(PSU).await;
    assert!(kinds.contains(&"maintenance_ended".to_owned()), "{kinds:?}");
}

#[tokio::test]
async fn with_authentication_only_admins_set_maintenance_and_may_still_lock() {
    let dir = tempfile::tempdir().unwrap();
    let root = create_token(dir.path(), "root", "admin");
    let alice = create_token(dir.path(), "alice", "operator");
    let app = spawn_with(auth_required(dir.path())).await;
    let (root, alice) = (app.as_user(&root), app.as_user(&alice));
    let path = format!("/api/equipment/{PSU}/maintenance");
    let body = json!({"reason": "repair"});
    assert_error(
        &alice.post(&path, body.clone()).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(root.post(&path, body).await.0, StatusCode::OK);
    let a = alice.session(0.0).await;
    queue_with(&alice, &a, json!({})).await;
    // The admin doing the work locks it and runs commands.
    let r = root.session(0.0).await;
    let (code, locked) = root.acquire(PSU, &r, json!({})).await;
    assert_eq!(
        (code, &locked["status"]),
        (StatusCode::OK, &json!("locked")),
        "{locked}"
    );
    let command = root
        .command(PSU, Some(&r), "set_voltage", json!({"voltage": 5.0}))
        .await;
    assert_eq!(command.0, StatusCode::OK, "{}", command.1);
    assert_error(
        &alice.delete(&path).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    root.release(PSU, &r, false).await;
    let (_, ended) = root.delete(&path).await;
    assert_eq!(ended["maintenance"]["user"], "root");
    let (_, status) = root.get(&format!("/api/locks/status/{PSU}")).await;
    assert_eq!(status["session_id"], a.as_str());
}

// ---- claim window -------------------------------------------------------------

#[tokio::test]
async fn a_lock_handed_over_and_not_claimed_passes_on_and_a_claim_keeps_it() {
    // The server's default window (LABLINK_CLAIM_WINDOW_SEC) is 20 s here;
    // one request asks for 5 s, one for none.
    let mut settings = memory();
    settings.policy.claim_window = lablink::domain::Timeout::from_millis(20_000);
    let app = spawn_with(settings).await;
    let s = sessions(&app, 4).await;
    let (holder, away, unclaimed, present) = (&s[0], &s[1], &s[2], &s[3]);
    queue_with(&app, holder, json!({})).await;
    queue_with(&app, away, json!({"claim_within_seconds": 5})).await;
    queue_with(&app, unclaimed, json!({"claim_within_seconds": 0})).await;
    let mut ws = connect(&app, json!({"type": "subscribe", "session_id": away})).await;
    app.release(PSU, holder, false).await;
    let (_, status) = app.get(&format!("/api/locks/status/{PSU}")).await;
    assert_eq!(
        (&status["session_id"], &status["expires_at"]),
        (&json!(away), &json!("2026-01-05T09:00:05.000Z")),
        "its lock ends at the claim deadline unless claimed"
    );
    // Every view of the lock says it is in its claim window.
    assert_eq!(status["claim_by"], "2026-01-05T09:00:05.000Z", "{status}");
    let (_, all) = app.get("/api/locks/all").await;
    assert_eq!(
        all["exclusive_locks"][PSU]["claim_by"], "2026-01-05T09:00:05.000Z",
        "{all}"
    );
    let (_, equipment) = app.get(&format!("/api/equipment/{PSU}/status")).await;
    assert_eq!(
        equipment["lock"]["claim_by"], "2026-01-05T09:00:05.000Z",
        "{equipment}"
    );
    app.advance(5.0);
    let expired = until(&mut ws, "claim_expired").await;
    assert_eq!(expired["reason"], "claim_expired");
    assert_eq!(until(&mut ws, "lock_lost").await["reason"], "claim_expired");
    let (_, status) = app.get(&format!("/api/locks/status/{PSU}")).await;
    assert_eq!(status["session_id"], unclaimed.as_str());
    // Its client hears why.
    let command = app
        .command(PSU, Some(away), "set_voltage", json!({"voltage": 1.0}))
        .await;
    assert_error(&command, StatusCode::FORBIDDEN, "lock_lost");

    // The default window applies; a command is the claim.
    queue_with(&app, present, json!({})).await;
    app.release(PSU, unclaimed, false).await;
    let (_, holding) = app
        .get(&format!("/api/locks/sessions/{present}/locks"))
        .await;
    assert_eq!(
        holding["locks"][0]["claim_by"], "2026-01-05T09:00:25.000Z",
        "{holding}"
    );
    app.advance(19.0);
    let command = app
        .command(PSU, Some(present), "set_voltage", json!({"voltage": 1.0}))
        .await;
    assert_eq!(command.0, StatusCode::OK, "{}", command.1);
    app.advance(60.0);
    let (_, status) = app.get(&format!("/api/locks/status/{PSU}")).await;
    assert_eq!(
        status["session_id"],
        present.as_str(),
        "claimed: the lease runs on"
    );
    assert_eq!(status.get("claim_by"), None, "no window: no claim_by");
    let kinds = app.events(PSU).await;
    assert_eq!(kinds.iter().filter(|k| *k == "claim_expired").count(), 1);

    let bad = app
        .acquire(
            PSU,
            away,
            json!({"queue_if_busy": true, "claim_within_seconds": -1}),
        )
        .await;
    assert_error(&bad, StatusCode::UNPROCESSABLE_ENTITY, "invalid_timeout");
}

// ---- position trading -------------------------------------------------------

#[tokio::test]
async fn waiters_step_back_and_swap_when_both_ask_and_nobody_else_moves() {
    on_every_store(|app, store| async move {
        let s = sessions(&app, 5).await;
        let (holder, b, c, d, e) = (&s[0], &s[1], &s[2], &s[3], &s[4]);
        for who in [holder, b, c, d, e] {
            queue_with(&app, who, json!({})).await;
        }
        let mut ws = connect(&app, json!({"type": "subscribe", "session_id": c})).await;
        let step = format!("/api/locks/queue/{PSU}/step-back");
        let (code, answer) = app.post(&step, json!({"session_id": b})).await;
        assert_eq!(code, StatusCode::OK, "{store}: {answer}");
        assert_eq!(
            (&answer["status"], &answer["position"]),
            (&json!("stepped_back"), &json!(2))
        );
        assert_eq!(
            until(&mut ws, "queue_position").await["position"],
            1,
            "{store}"
        );
        let order = |v: [&String; 4]| v.map(|s| s.clone()).to_vec();
        assert_eq!(queue_of(&app, PSU).await, order([c, b, d, e]), "{store}");

        let swap = format!("/api/locks/queue/{PSU}/swap");
        let (_, offered) = app
            .post(&swap, json!({"session_id": c, "with_session_id": e}))
            .await;
        assert_eq!(
            (&offered["status"], &offered["position"]),
            (&json!("offered"), &json!(1))
        );
        assert_eq!(
            queue_of(&app, PSU).await,
            order([c, b, d, e]),
            "an offer moves nobody"
        );
        let (_, swapped) = app
            .post(&swap, json!({"session_id": e, "with_session_id": c}))
            .await;
        assert_eq!(
            (&swapped["status"], &swapped["position"]),
            (&json!("swapped"), &json!(1))
        );
        assert_eq!(queue_of(&app, PSU).await, order([e, b, d, c]), "{store}");
        let kinds = app.events(PSU).await;
        let trades: Vec<&String> = kinds.iter().filter(|k| k.starts_with("queue_s")).collect();
        assert_eq!(
            trades,
            ["queue_stepped_back", "queue_swapped", "queue_swapped"]
        );

        let last = app.post(&step, json!({"session_id": c})).await;
        assert_error(&last, StatusCode::CONFLICT, "cannot_trade");
        let holding = app.post(&step, json!({"session_id": holder})).await;
        assert_error(&holding, StatusCode::NOT_FOUND, "not_queued");
        let alone = app.post(&swap, json!({"session_id": c})).await;
        assert_error(&alone, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
        assert_eq!(queue_of(&app, PSU).await, order([e, b, d, c]));
        app.release(PSU, holder, false).await;
        let (_, status) = app.get(&format!("/api/locks/status/{PSU}")).await;
        assert_eq!(
            status["session_id"],
            e.as_str(),
            "served in the traded order"
        );
        app
    })
    .await;
}

#[tokio::test]
async fn with_authentication_only_a_sessions_owner_trades_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let alice = create_token(dir.path(), "alice", "operator");
    let bob = create_token(dir.path(), "bob", "operator");
    let app = spawn_with(auth_required(dir.path())).await;
    let (alice, bob) = (app.as_user(&alice), app.as_user(&bob));
    let (a, b1, b2) = (
        alice.session(0.0).await,
        bob.session(0.0).await,
        bob.session(0.0).await,
    );
    bob.acquire(PSU, &b1, json!({})).await;
    alice.acquire(PSU, &a, json!({"queue_if_busy": true})).await;
    bob.acquire(PSU, &b2, json!({"queue_if_busy": true})).await;
    let step = format!("/api/locks/queue/{PSU}/step-back");
    assert_error(
        &bob.post(&step, json!({"session_id": a})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(queue_of(&alice, PSU).await, [a.as_str(), b2.as_str()]);
    assert_eq!(
        alice.post(&step, json!({"session_id": a})).await.0,
        StatusCode::OK
    );
    assert_eq!(queue_of(&alice, PSU).await, [b2.as_str(), a.as_str()]);
}

#[tokio::test]
async fn a_waiter_whose_place_a_manager_removes_while_it_long_polls_hears_not_queued() {
    let app = spawn_with(memory()).await;
    let s = sessions(&app, 2).await;
    let (holder, waiter) = (s[0].clone(), s[1].clone());
    queue_with(&app, &holder, json!({})).await;
    let polling = {
        let app = TestApp::at(&app.base);
        let waiter = waiter.clone();
        tokio::spawn(async move {
            let body = json!({"queue_if_busy": true, "wait_seconds": 30});
            app.acquire(PSU, &waiter, body).await
        })
    };
    for _ in 0..100 {
        if queue_of(&app, PSU).await == [waiter.clone()] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let path = format!("/api/locks/queue/{PSU}/{waiter}/remove");
    let (status, _) = app.post(&path, json!({"forced_by": "lab-manager"})).await;
    assert_eq!(status, StatusCode::OK);
    let answer = polling.await.unwrap();
    assert_error(&answer, StatusCode::NOT_FOUND, "not_queued");
    app.stop().await;
}

/// A manager's request to `path` with a malformed `forced_by` is refused
/// naming that field (not the session it acts on).
async fn refused_naming_forced_by(app: &TestApp, path: &str) {
    let bad_by = app.post(path, json!({"forced_by": "x y"})).await;
    assert_error(&bad_by, StatusCode::UNPROCESSABLE_ENTITY, "invalid_id");
    let detail = bad_by.1["detail"].as_str().unwrap();
    assert!(detail.starts_with("invalid forced_by:"), "{detail}");
}
