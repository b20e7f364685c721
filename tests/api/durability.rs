//! The SQLite store through the API: history, restarts, and a store that
//! cannot be written.

use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

use crate::helpers::{assert_error, event_kinds, memory, spawn_with, spawn_with_clock, sqlite_in};

#[tokio::test]
async fn everything_survives_a_restart_and_lapsed_leases_get_one_fresh_period() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_with(sqlite_in(dir.path(), "")).await;
    let (a, b, c) = (
        app.session(60.0).await,
        app.session(0.0).await,
        app.session(100_000.0).await,
    );
    app.acquire("ps_abc123", &a, json!({"timeout_seconds": 30}))
        .await;
    app.acquire(
        "ps_abc123",
        &b,
        json!({"queue_if_busy": true, "timeout_seconds": 45}),
    )
    .await;
    app.acquire("ps_abc123", &c, json!({"queue_if_busy": true}))
        .await;
    app.acquire(
        "scope_123",
        &b,
        json!({"lock_mode": "observer", "timeout_seconds": 0}),
    )
    .await;
    app.acquire("load_1", &c, json!({"timeout_seconds": 50_000}))
        .await;
    let (_, before_all) = app.get("/api/locks/all").await;
    let events_before = app.events("ps_abc123").await;
    app.advance(10.0);
    let clock = app.stop().await;

    // The server is down for an hour: a's session (60 s) and lock (30 s) ran
    // out meanwhile; c's long ones did not.
    clock.advance(Duration::from_secs(3600));
    let app = spawn_with_clock(sqlite_in(dir.path(), ""), clock).await;
    let (status, session) = app.get(&format!("/api/locks/sessions/{a}")).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert_eq!(
        session["time_remaining"], 60.0,
        "one fresh period from the start"
    );
    let (_, lock) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(
        (lock["session_id"].as_str(), lock["time_remaining"].as_f64()),
        (Some(a.as_str()), Some(30.0))
    );
    let (_, load) = app.get("/api/locks/status/load_1").await;
    assert_eq!(
        load["time_remaining"],
        50_000.0 - 3610.0,
        "a lease still running keeps its deadline"
    );
    let (_, after_all) = app.get("/api/locks/all").await;
    assert_eq!(after_all["queues"], before_all["queues"], "queues in order");
    assert_eq!(
        after_all["observer_locks"]["scope_123"][0]["session_id"],
        b.as_str()
    );
    assert_eq!(app.events("ps_abc123").await, events_before, "history kept");

    // Fencing tokens keep growing across the restart, and the queue works.
    app.release("ps_abc123", &a, false).await;
    let (_, lock) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(
        (lock["session_id"].as_str(), lock["fencing_token"].as_u64()),
        (Some(b.as_str()), Some(2))
    );
    app.stop().await;
}

#[tokio::test]
async fn the_history_is_filtered_and_paged_by_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_with(sqlite_in(dir.path(), "?synchronous=normal")).await;
    let (a, b) = (app.session(0.0).await, app.session(0.0).await);
    app.advance(60.0);
    let middle = "2026-01-05T09:01:00.000Z";
    app.acquire("ps_abc123", &a, json!({})).await;
    app.acquire("ps_abc123", &b, json!({"queue_if_busy": true}))
        .await;
    app.acquire("scope_123", &b, json!({})).await;
    app.release("ps_abc123", "admin", true).await;

    let (status, all) = app.get("/api/locks/events").await;
    assert_eq!(status, StatusCode::OK);
    let kinds = event_kinds;
    assert_eq!(
        kinds(&all),
        [
            "session_created",
            "session_created",
            "lock_acquired",
            "queued",
            "lock_acquired",
            "lock_force_released",
            "queue_processed"
        ]
    );
    assert_eq!(
        (all["count"].as_u64(), all["has_more"].as_bool()),
        (Some(7), Some(false))
    );

    let (_, psu) = app
        .get("/api/locks/events?equipment_id=ps_abc123&event=lock_acquired")
        .await;
    assert_eq!(psu["count"], 1);
    let (_, by_b) = app.get(&format!("/api/locks/events?session_id={b}")).await;
    assert_eq!(
        kinds(&by_b),
        [
            "session_created",
            "queued",
            "lock_acquired",
            "queue_processed"
        ]
    );
    let (_, by_admin) = app.get("/api/locks/events?session_id=admin").await;
    assert_eq!(kinds(&by_admin), ["lock_force_released"]);
    let (_, early) = app.get(&format!("/api/locks/events?until={middle}")).await;
    assert_eq!(kinds(&early), ["session_created", "session_created"]);
    let (_, late) = app
        .get(&format!("/api/locks/events?since={middle}&limit=2"))
        .await;
    assert_eq!(
        (late["count"].as_u64(), late["has_more"].as_bool()),
        (Some(2), Some(true))
    );
    let cursor = late["next_cursor"].as_u64().unwrap();
    let (_, next) = app
        .get(&format!("/api/locks/events?since={middle}&cursor={cursor}"))
        .await;
    assert_eq!(
        kinds(&next),
        ["lock_acquired", "lock_force_released", "queue_processed"]
    );
    let last = next["next_cursor"].as_u64().unwrap();
    let (_, empty) = app.get(&format!("/api/locks/events?cursor={last}")).await;
    assert_eq!(
        (empty["count"].as_u64(), empty["next_cursor"].as_u64()),
        (Some(0), Some(last)),
        "poll again from here"
    );

    for bad in [
        "event=lock_stolen",
        "since=yesterday",
        "limit=0",
        "limit=5000",
        "cursor=-1",
        "equipment_id=a%20b",
    ] {
        let response = app.get(&format!("/api/locks/events?{bad}")).await;
        assert_eq!(
            response.0,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            response.1
        );
    }
    // The per-equipment and per-session views read the same history.
    let (_, per_session) = app.get(&format!("/api/locks/sessions/{b}/events")).await;
    assert_eq!(kinds(&per_session), kinds(&by_b));
    app.stop().await;
}

#[tokio::test]
async fn a_cursor_past_the_newest_event_gets_an_empty_page_and_the_newest_seq_on_both_stores() {
    let dir = tempfile::tempdir().unwrap();
    for settings in [memory(), sqlite_in(dir.path(), "?synchronous=normal")] {
        let store = settings.store.clone();
        let app = spawn_with(settings).await;
        let s = app.session(0.0).await;
        app.acquire("ps_abc123", &s, json!({})).await;
        let (_, all) = app.get("/api/locks/events").await;
        let newest = all["next_cursor"].as_u64().unwrap();
        assert_eq!(all["count"], 2, "{store}: {all}");
        for past in [newest + 1, i64::MAX as u64] {
            let (status, page) = app.get(&format!("/api/locks/events?cursor={past}")).await;
            assert_eq!(status, StatusCode::OK, "{store}: {page}");
            assert_eq!(
                (page["count"].as_u64(), page["next_cursor"].as_u64()),
                (Some(0), Some(newest)),
                "{store}, cursor {past}: nothing, and poll again from the newest: {page}"
            );
        }
        // Larger than any event number can be: refused, not wrapped.
        for beyond in [i64::MAX as u64 + 1, u64::MAX] {
            let refused = app.get(&format!("/api/locks/events?cursor={beyond}")).await;
            assert_error(
                &refused,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_parameter",
            );
        }
        // Polling from there, nothing later is skipped.
        app.release("ps_abc123", &s, false).await;
        let (_, next) = app.get(&format!("/api/locks/events?cursor={newest}")).await;
        assert_eq!(event_kinds(&next), ["lock_released"], "{store}");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_gives_a_clear_503_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_with(sqlite_in(dir.path(), "?busy_timeout_ms=100")).await;
    let s = app.session(0.0).await;
    // Another process takes the database's write lock and keeps it.
    let blocker = rusqlite::Connection::open(dir.path().join("lablink.db")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let refused = app.acquire("ps_abc123", &s, json!({})).await;
    assert_error(
        &refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
    );
    assert!(
        refused.1["detail"].as_str().unwrap().contains("locked"),
        "{}",
        refused.1
    );
    // Instruments and the docs are still served meanwhile.
    assert_eq!(app.get("/api/equipment/list").await.0, StatusCode::OK);
    blocker.execute_batch("ROLLBACK").unwrap();
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(
        status["locked"], false,
        "the refused acquire left nothing behind"
    );
    let (status, body) = app.acquire("ps_abc123", &s, json!({})).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("locked"))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_database_from_a_newer_lablink_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("lablink.db")).unwrap();
    conn.execute_batch("PRAGMA user_version = 999").unwrap();
    drop(conn);
    let settings = sqlite_in(dir.path(), "");
    let err =
        lablink::server::Server::build(settings, std::sync::Arc::new(lablink::clock::SystemClock))
            .await
            .err()
            .expect("refused");
    assert!(err.to_string().contains("schema version 999"), "{err}");
}

#[tokio::test]
async fn old_events_are_pruned_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = sqlite_in(dir.path(), "?synchronous=normal");
    settings.event_retention_days = 1;
    let app = spawn_with(settings).await;
    let s = app.session(0.0).await;
    app.acquire("ps_abc123", &s, json!({"timeout_seconds": 0}))
        .await;
    app.advance(2.0 * 86_400.0);
    let fresh = app.session(0.0).await;
    // The pruner wakes once its hour has passed on the (manual) clock.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, page) = app.get("/api/locks/events").await;
            let sessions: Vec<&str> = page["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["session_id"].as_str())
                .collect();
            if sessions == [fresh.as_str()] {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("events older than a day were pruned, the fresh one kept");
    app.stop().await;
}

#[tokio::test]
async fn status_right_after_an_acquire_or_release_shows_it_on_sqlite() {
    // Reads come from committed state on their own connections, not through
    // the batch: each answer below comes after the write's 200, so the
    // write is committed and the read must see it. Three instruments at
    // once, so writes share batches while others read.
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_with(sqlite_in(dir.path(), "")).await;
    let rounds = ["ps_abc123", "scope_123", "load_1"].map(|equipment| {
        let app = &app;
        async move {
            let s = app.session(0.0).await;
            for _ in 0..20 {
                let (status, body) = app
                    .post(
                        "/api/locks/acquire",
                        json!({"equipment_id": equipment, "session_id": s}),
                    )
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
                let (_, lock) = app.get(&format!("/api/locks/status/{equipment}")).await;
                assert_eq!(lock["session_id"], s.as_str(), "{lock}");
                assert_eq!(lock["fencing_token"], body["lock"]["fencing_token"]);
                app.release(equipment, &s, false).await;
                let (_, lock) = app.get(&format!("/api/locks/status/{equipment}")).await;
                assert_eq!(lock["session_id"], serde_json::Value::Null, "{lock}");
            }
        }
    });
    futures_util::future::join_all(rounds).await;
    app.stop().await;
}
