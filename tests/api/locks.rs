use reqwest::StatusCode;
use serde_json::{Value, json};

use lablink::config::Settings;
use lablink::service::Policy;

use crate::auth::secured;
use crate::helpers::{START, TestApp, assert_error, memory, spawn_app, spawn_with, start_binary};

/// The memory store with `LABLINK_IMPLICIT_SESSIONS=false`.
fn without_implicit_sessions() -> Settings {
    Settings {
        policy: Policy {
            implicit_sessions: false,
            ..Policy::default()
        },
        ..memory()
    }
}

/// `N` sessions without a timeout.
async fn sessions<const N: usize>(app: &TestApp) -> [String; N] {
    let mut ids = Vec::with_capacity(N);
    for _ in 0..N {
        ids.push(app.session(0.0).await);
    }
    ids.try_into().unwrap()
}

#[tokio::test]
async fn acquire_locks_free_equipment_with_the_briefs_shape() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    let (status, body) = app
        .acquire(
            "ps_abc123",
            &s,
            json!({"lock_mode": "exclusive", "timeout_seconds": 300}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({
            "success": true,
            "status": "locked",
            "lock": {
                "lock_id": "lock_ps_abc123_1",
                "equipment_id": "ps_abc123",
                "session_id": s,
                "lock_mode": "exclusive",
                "acquired_at": START,
                "last_activity": START,
                "timeout_seconds": 300.0,
                "time_remaining": 300.0,
                "expires_at": "2026-01-05T09:05:00.000Z",
                "fencing_token": 1,
                "user": null,
                "client_name": "test"
            }
        })
    );
    let (_, status_body) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(
        status_body,
        json!({
            "equipment_id": "ps_abc123",
            "locked": true,
            "lock_mode": "exclusive",
            "session_id": s,
            "lock_id": "lock_ps_abc123_1",
            "acquired_at": START,
            "time_remaining": 300.0,
            "expires_at": "2026-01-05T09:05:00.000Z",
            "fencing_token": 1,
            "queue_length": 0,
            "observer_count": 0,
            "observer_sessions": [],
            "user": null,
            "client_name": "test"
        })
    );
}

#[tokio::test]
async fn defaults_refresh_and_no_timeout() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    let (_, body) = app.acquire("ps_abc123", &s, json!({})).await;
    assert_eq!(
        body["lock"]["timeout_seconds"], 300.0,
        "LABLINK_LOCK_TIMEOUT_SEC default"
    );
    app.advance(100.0);
    let (status, body) = app
        .acquire("ps_abc123", &s, json!({"timeout_seconds": 0}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "refreshed");
    assert_eq!(body["lock"]["time_remaining"], Value::Null);
    let (_, status_body) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status_body["time_remaining"], Value::Null);
}

#[tokio::test]
async fn busy_equipment_is_409_naming_the_holder_or_queued_in_order() {
    let app = spawn_app().await;
    let holder = app.session(0.0).await;
    app.acquire("ps_abc123", &holder, json!({})).await;
    let busy = app
        .acquire("ps_abc123", &app.session(0.0).await, json!({}))
        .await;
    assert_error(&busy, StatusCode::CONFLICT, "equipment_locked");
    assert!(busy.1["detail"].as_str().unwrap().contains(&holder));

    let mut waiters = Vec::new();
    for expected in 1..=3 {
        let w = app.session(0.0).await;
        let (status, body) = app
            .acquire(
                "ps_abc123",
                &w,
                json!({"queue_if_busy": true, "timeout_seconds": 60}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], false);
        assert_eq!(body["status"], "queued");
        assert_eq!(
            body["message"],
            format!("Equipment locked by session {holder} (test)")
        );
        assert_eq!(body["queue_entry"]["position"], expected);
        assert_eq!(body["queue_entry"]["session_id"], w.as_str());
        waiters.push(w);
    }
    // Asking again keeps the place.
    let (_, again) = app
        .acquire("ps_abc123", &waiters[1], json!({"queue_if_busy": true}))
        .await;
    assert_eq!(again["queue_entry"]["position"], 2);
    let (_, queue) = app.get("/api/locks/queue/ps_abc123").await;
    let order: Vec<&str> = queue["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        waiters.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(queue["queue"][2]["position"], 3);

    // The second waiter leaves; the first gets the lock on release, with the
    // timeout it asked for.
    let (_, left) = app.release("ps_abc123", &waiters[1], false).await;
    assert_eq!(left["status"], "dequeued");
    let (_, released) = app.release("ps_abc123", &holder, false).await;
    assert_eq!(
        released,
        json!({"success": true, "status": "released", "was_forced": false, "equipment_id": "ps_abc123"})
    );
    let (_, status_body) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status_body["session_id"], waiters[0].as_str());
    assert_eq!(status_body["time_remaining"], 60.0);
    assert_eq!(status_body["fencing_token"], 2);
    assert_eq!(status_body["queue_length"], 1);
    let (_, queue) = app.get("/api/locks/queue/ps_abc123").await;
    assert_eq!(queue["queue"][0]["session_id"], waiters[2].as_str());
    assert_eq!(queue["queue"][0]["position"], 1);
    assert_eq!(
        app.events("ps_abc123").await,
        [
            "lock_acquired",
            "queued",
            "queued",
            "queued",
            "dequeued",
            "lock_released",
            "queue_processed"
        ]
    );
}

#[tokio::test]
async fn observers_share_are_revoked_by_exclusive_and_queue_behind_it() {
    let app = spawn_app().await;
    let (o1, o2, x) = (
        app.session(0.0).await,
        app.session(0.0).await,
        app.session(0.0).await,
    );
    let (_, body) = app
        .acquire("scope_123", &o1, json!({"lock_mode": "observer"}))
        .await;
    assert_eq!(
        (body["status"].as_str(), body["observer_count"].as_u64()),
        (Some("locked"), Some(1))
    );
    assert_eq!(body["lock"]["lock_mode"], "observer");
    let (_, body) = app
        .acquire("scope_123", &o2, json!({"lock_mode": "observer"}))
        .await;
    assert_eq!(body["observer_count"], 2);
    let (_, status_body) = app.get("/api/locks/status/scope_123").await;
    assert_eq!(
        (
            status_body["locked"].as_bool(),
            status_body["lock_mode"].as_str()
        ),
        (Some(false), Some("observer"))
    );
    assert_eq!(status_body["observer_sessions"], json!([o1, o2]));

    let (_, body) = app.acquire("scope_123", &x, json!({})).await;
    assert_eq!(body["status"], "locked");
    let (_, status_body) = app.get("/api/locks/status/scope_123").await;
    assert_eq!(status_body["observer_count"], 0);
    assert_eq!(
        app.events("scope_123").await[2..],
        ["observer_revoked", "observer_revoked", "lock_acquired"]
    );

    // The revoked observer is told it lost its lock.
    let lost = app
        .command("scope_123", Some(&o1), "get_status", json!({}))
        .await;
    assert_error(&lost, StatusCode::FORBIDDEN, "lock_lost");

    assert_error(
        &app.acquire("scope_123", &o1, json!({"lock_mode": "observer"}))
            .await,
        StatusCode::CONFLICT,
        "equipment_locked",
    );
    let (_, queued) = app
        .acquire(
            "scope_123",
            &o1,
            json!({"lock_mode": "observer", "queue_if_busy": true}),
        )
        .await;
    assert_eq!(queued["status"], "queued");
    let (_, released) = app.release("scope_123", &x, false).await;
    assert_eq!(released["status"], "released");
    let (_, status_body) = app.get("/api/locks/status/scope_123").await;
    assert_eq!(status_body["observer_sessions"], json!([o1]));
    let (_, released) = app.release("scope_123", &o1, false).await;
    assert_eq!(released["status"], "observer_released");
}

#[tokio::test]
async fn release_by_others_is_403_and_force_records_who() {
    let app = spawn_app().await;
    let (a, b) = (app.session(0.0).await, app.session(0.0).await);
    app.acquire("load_1", &a, json!({})).await;
    let refused = app.release("load_1", &b, false).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "not_lock_holder");
    assert!(refused.1["detail"].as_str().unwrap().contains(&a));
    // The brief's admin example names a session that need not exist.
    let (status, forced) = app.release("load_1", "admin_session", true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(forced["was_forced"], true);
    let (_, events) = app.get("/api/locks/events/load_1?limit=1").await;
    assert_eq!(events["events"][0]["event"], "lock_force_released");
    assert_eq!(events["events"][0]["session_id"], a.as_str());
    assert_eq!(events["events"][0]["forced_by"], "admin_session");
    assert_error(
        &app.release("load_1", &a, false).await,
        StatusCode::NOT_FOUND,
        "lock_lost",
    );
    assert_error(
        &app.release("load_1", &b, false).await,
        StatusCode::NOT_FOUND,
        "no_lock",
    );
    assert_error(
        &app.release("load_1", "admin_session", true).await,
        StatusCode::NOT_FOUND,
        "not_locked",
    );
    assert_error(
        &app.release("load_1", "nobody", false).await,
        StatusCode::NOT_FOUND,
        "session_not_found",
    );
}

#[tokio::test]
async fn acquire_needs_a_live_session_and_registered_equipment() {
    let app = spawn_with(without_implicit_sessions()).await;
    let s = app.session(0.0).await;
    assert_error(
        &app.acquire("ps_abc123", "no-such-session", json!({})).await,
        StatusCode::NOT_FOUND,
        "session_not_found",
    );
    assert_error(
        &app.acquire("no_such_psu", &s, json!({})).await,
        StatusCode::NOT_FOUND,
        "equipment_not_found",
    );
    for bad in [
        json!({"lock_mode": "shared"}),
        json!({"timeout_seconds": -3}),
        json!({"timeout_seconds": "5"}),
        json!({"queue_if_busy": "yes"}),
    ] {
        let response = app.acquire("ps_abc123", &s, bad.clone()).await;
        assert_eq!(
            response.0,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            response.1
        );
    }
    let (_, status_body) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(
        status_body["locked"], false,
        "refused requests change nothing"
    );
    assert_error(
        &app.get("/api/locks/status/nope").await,
        StatusCode::NOT_FOUND,
        "equipment_not_found",
    );
    assert_error(
        &app.get("/api/locks/queue/nope").await,
        StatusCode::NOT_FOUND,
        "equipment_not_found",
    );
    assert_error(
        &app.get("/api/locks/events/nope").await,
        StatusCode::NOT_FOUND,
        "equipment_not_found",
    );
}

#[tokio::test]
async fn leases_expire_exactly_and_hand_off_with_lock_lost() {
    let app = spawn_app().await;
    let (a, b) = (app.session(0.0).await, app.session(0.0).await);
    app.acquire("ps_abc123", &a, json!({"timeout_seconds": 10}))
        .await;
    app.acquire(
        "ps_abc123",
        &b,
        json!({"queue_if_busy": true, "timeout_seconds": 20}),
    )
    .await;
    app.advance(9.999);
    let ok = app
        .command("ps_abc123", Some(&a), "get_status", json!({}))
        .await;
    assert_eq!(ok.0, StatusCode::OK, "{}", ok.1);
    app.advance(9.999); // the command renewed the lease
    let (_, s) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(
        (s["session_id"].as_str(), s["time_remaining"].as_f64()),
        (Some(a.as_str()), Some(0.001))
    );
    app.advance(0.001);
    let (_, s) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(
        (s["session_id"].as_str(), s["time_remaining"].as_f64()),
        (Some(b.as_str()), Some(20.0))
    );
    assert_error(
        &app.command(
            "ps_abc123",
            Some(&a),
            "set_output",
            json!({"enabled": true}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "lock_lost",
    );
    assert!(
        app.events("ps_abc123")
            .await
            .ends_with(&["lock_expired".to_string(), "queue_processed".to_string()])
    );
}

#[tokio::test]
async fn lock_activity_renews_the_lock_and_the_session() {
    let app = spawn_app().await;
    let s = app.session(60.0).await;
    app.acquire("ps_abc123", &s, json!({"timeout_seconds": 30}))
        .await;
    app.advance(25.0);
    let (status, body) = app
        .post("/api/locks/activity/ps_abc123", json!({"session_id": s}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["lock"]["time_remaining"], 30.0);
    let (_, session) = app.get(&format!("/api/locks/sessions/{s}")).await;
    assert_eq!(session["time_remaining"], 60.0);
    assert_error(
        &app.post("/api/locks/activity/scope_123", json!({"session_id": s}))
            .await,
        StatusCode::NOT_FOUND,
        "no_lock",
    );
    assert_error(
        &app.post("/api/locks/activity/ps_abc123", json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
}

#[tokio::test]
async fn all_locks_are_keyed_by_equipment() {
    let app = spawn_app().await;
    let [a, b, c] = sessions(&app).await;
    app.acquire("ps_abc123", &a, json!({})).await;
    app.acquire("ps_abc123", &b, json!({"queue_if_busy": true}))
        .await;
    app.acquire("scope_123", &c, json!({"lock_mode": "observer"}))
        .await;
    let (status, all) = app.get("/api/locks/all").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        all["exclusive_locks"]["ps_abc123"]["session_id"],
        a.as_str()
    );
    assert_eq!(
        all["observer_locks"]["scope_123"][0]["session_id"],
        c.as_str()
    );
    assert_eq!(all["queues"]["ps_abc123"][0]["session_id"], b.as_str());
    assert_eq!(all["exclusive_locks"].as_object().unwrap().len(), 1);
}

#[tokio::test]
async fn events_limit_is_validated_and_returns_the_newest_oldest_first() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    for _ in 0..3 {
        app.acquire("ps_abc123", &s, json!({})).await;
    }
    let (_, body) = app.get("/api/locks/events/ps_abc123?limit=2").await;
    assert_eq!(body["count"], 2);
    assert_eq!(body["equipment_id"], "ps_abc123");
    assert_eq!(body["events"][0]["event"], "lock_refreshed");
    for bad in ["0", "1001", "-1", "abc"] {
        let response = app
            .get(&format!("/api/locks/events/ps_abc123?limit={bad}"))
            .await;
        assert_eq!(
            response.0,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            response.1
        );
    }
    let response = app
        .get(&format!("/api/locks/sessions/{s}/events?limit=0"))
        .await;
    assert_eq!(response.0, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn fencing_tokens_grow_and_stale_ones_are_refused() {
    let app = spawn_app().await;
    let (a, b) = (app.session(0.0).await, app.session(0.0).await);
    let (_, first) = app.acquire("ps_abc123", &a, json!({})).await;
    let old = first["lock"]["fencing_token"].as_u64().unwrap();
    app.release("ps_abc123", &a, false).await;
    app.acquire("ps_abc123", &b, json!({})).await;
    app.release("ps_abc123", &b, false).await;
    let (_, again) = app.acquire("ps_abc123", &a, json!({})).await;
    let new = again["lock"]["fencing_token"].as_u64().unwrap();
    assert!(new > old + 1, "{old} -> {new}");
    let body = json!({"command_id": "late", "action": "set_output", "parameters": {"enabled": true}, "session_id": a, "fencing_token": old});
    assert_error(
        &app.post("/api/equipment/ps_abc123/command", body).await,
        StatusCode::CONFLICT,
        "stale_fencing_token",
    );
    let body = json!({"command_id": "now", "action": "set_output", "parameters": {"enabled": true}, "session_id": a, "fencing_token": new});
    assert_eq!(
        app.post("/api/equipment/ps_abc123/command", body).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn cleanup_reports_and_the_expiry_is_recorded_once() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    app.acquire("ps_abc123", &s, json!({"timeout_seconds": 5}))
        .await;
    app.advance(6.0);
    let (status, body) = app.post("/api/locks/cleanup", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    // The reaper (woken by the clock) may have expired it first: either way
    // it is expired exactly once.
    assert_eq!(body["success"], true);
    assert!(body["expired_locks"].as_u64().unwrap() <= 1, "{body}");
    assert_eq!(
        (
            body["expired_sessions"].as_u64(),
            body["queue_processed"].as_u64()
        ),
        (Some(0), Some(0))
    );
    let (_, body) = app.post("/api/locks/cleanup", json!({})).await;
    assert_eq!(body["expired_locks"], 0);
    assert_eq!(
        app.events("ps_abc123").await,
        ["lock_acquired", "lock_expired"]
    );
}

#[tokio::test]
async fn a_forced_release_by_a_queued_session_leaves_its_own_place() {
    let app = spawn_app().await;
    let [a, q, r] = sessions(&app).await;
    app.acquire("ps_abc123", &a, json!({})).await;
    app.acquire("ps_abc123", &q, json!({"queue_if_busy": true}))
        .await;
    app.acquire("ps_abc123", &r, json!({"queue_if_busy": true}))
        .await;
    let (status, body) = app.release("ps_abc123", &q, true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"success": true, "status": "dequeued", "was_forced": false, "equipment_id": "ps_abc123"})
    );
    let (_, lock) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(lock["session_id"], a.as_str(), "the holder keeps its lock");
    let (_, queue) = app.get("/api/locks/queue/ps_abc123").await;
    assert_eq!(queue["queue"][0]["session_id"], r.as_str());
    assert_eq!(queue["queue_length"], 1);
    assert!(
        !app.events("ps_abc123")
            .await
            .contains(&"lock_force_released".to_string())
    );
}

#[tokio::test]
async fn a_queued_admin_forcing_a_release_leaves_its_own_place() {
    let dir = tempfile::tempdir().unwrap();
    let (app, [root, alice, bob, _]) = secured(dir.path()).await;
    let (admin, alice, bob) = (app.as_user(&root), app.as_user(&alice), app.as_user(&bob));
    let holder = alice.session(0.0).await;
    alice.acquire("ps_abc123", &holder, json!({})).await;
    // An admin and an operator, each waiting, each sending `force`: both
    // leave their own place (the operator needs no admin rights for that).
    for waiter in [&admin, &bob] {
        let waiting = waiter.session(0.0).await;
        waiter
            .acquire("ps_abc123", &waiting, json!({"queue_if_busy": true}))
            .await;
        let (status, body) = waiter.release("ps_abc123", &waiting, true).await;
        assert_eq!(
            (
                status,
                body["status"].as_str(),
                body["was_forced"].as_bool()
            ),
            (StatusCode::OK, Some("dequeued"), Some(false)),
            "{body}"
        );
        let (_, lock) = admin.get("/api/locks/status/ps_abc123").await;
        assert_eq!(
            (lock["session_id"].as_str(), lock["queue_length"].as_u64()),
            (Some(holder.as_str()), Some(0))
        );
    }
    // Forcing others' locks is still for admins only.
    let outsider = bob.session(0.0).await;
    assert_error(
        &bob.release("ps_abc123", &outsider, true).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
}

#[tokio::test]
async fn a_timeout_under_a_millisecond_is_refused_not_taken_as_none() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    for tiny in [0.0004, 0.000_999, 1e-9] {
        assert_error(
            &app.acquire("ps_abc123", &s, json!({"timeout_seconds": tiny}))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_timeout",
        );
        assert_error(
            &app.post(
                "/api/locks/sessions/create",
                json!({"timeout_seconds": tiny}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_timeout",
        );
    }
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status["locked"], false, "refused requests change nothing");
    let (_, list) = app.get("/api/locks/sessions").await;
    assert_eq!(list["count"], 1);
    // 1 ms is the shortest lease, and it does end.
    let (_, body) = app
        .acquire("ps_abc123", &s, json!({"timeout_seconds": 0.001}))
        .await;
    assert_eq!(body["lock"]["time_remaining"], 0.001, "{body}");
    app.advance(0.001);
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status["locked"], false);
}

#[tokio::test]
async fn release_and_renew_agree_that_a_lost_lock_is_lost() {
    let app = spawn_app().await;
    let [a, b, c] = sessions(&app).await;
    app.acquire("ps_abc123", &a, json!({})).await;
    app.release("ps_abc123", "admin_session", true).await;
    app.acquire("ps_abc123", &b, json!({})).await;
    // a's lock was force-released and b holds the equipment now.
    let renew = |s: &str| app.post("/api/locks/activity/ps_abc123", json!({"session_id": s}));
    assert_error(
        &app.release("ps_abc123", &a, false).await,
        StatusCode::NOT_FOUND,
        "lock_lost",
    );
    assert_error(&renew(&a).await, StatusCode::NOT_FOUND, "lock_lost");
    // c never held it: the plain answers, and not a word about a's lock.
    for response in [app.release("ps_abc123", &c, false).await, renew(&c).await] {
        let detail = response.1["detail"].as_str().unwrap();
        assert!(!detail.contains("force"), "{detail}");
    }
    assert_error(
        &app.release("ps_abc123", &c, false).await,
        StatusCode::FORBIDDEN,
        "not_lock_holder",
    );
    assert_error(&renew(&c).await, StatusCode::NOT_FOUND, "no_lock");
    let (_, lock) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(lock["session_id"], b.as_str(), "nothing changed");
}

#[tokio::test]
async fn a_fencing_token_never_issued_is_refused() {
    for locks_enabled in [true, false] {
        let app = spawn_with(Settings {
            policy: Policy {
                locks_enabled,
                ..Policy::default()
            },
            ..memory()
        })
        .await;
        let s = app.session(0.0).await;
        let (_, body) = app.acquire("ps_abc123", &s, json!({})).await;
        assert_eq!(body["lock"]["fencing_token"], 1);
        let command = |token: u64| {
            json!({"command_id": "c", "equipment_id": "ps_abc123", "action": "set_output",
                "parameters": {"enabled": true}, "session_id": s, "fencing_token": token})
        };
        let refused = app
            .post("/api/equipment/ps_abc123/command", command(2))
            .await;
        assert_error(&refused, StatusCode::CONFLICT, "stale_fencing_token");
        assert!(
            refused.1["detail"]
                .as_str()
                .unwrap()
                .contains("never issued"),
            "{}",
            refused.1
        );
        let (status, body) = app
            .post("/api/equipment/ps_abc123/command", command(1))
            .await;
        assert_eq!(status, StatusCode::OK, "locks {locks_enabled}: {body}");
    }
}

/// What the original LabLink client sends: no session of its own making
/// at the server, a UUID it made up, and these exact bodies.
mod original_client {
    use super::*;

    pub fn acquire_body(session: &str, timeout_seconds: f64) -> Value {
        json!({"equipment_id": "ps_abc123", "session_id": session, "lock_mode": "exclusive",
            "timeout_seconds": timeout_seconds, "queue_if_busy": false})
    }

    pub async fn acquire(
        app: &TestApp,
        session: &str,
        timeout_seconds: f64,
    ) -> (StatusCode, Value) {
        app.post("/api/locks/acquire", acquire_body(session, timeout_seconds))
            .await
    }

    pub async fn command(app: &TestApp, session: &str) -> (StatusCode, Value) {
        let body = json!({"command_id": "cmd_001", "equipment_id": "ps_abc123", "action": "set_voltage",
            "parameters": {"voltage": 12.0}, "session_id": session});
        app.post("/api/equipment/ps_abc123/command", body).await
    }

    pub async fn release(app: &TestApp, session: &str) -> (StatusCode, Value) {
        let body = json!({"equipment_id": "ps_abc123", "session_id": session, "force": false});
        app.post("/api/locks/release", body).await
    }

    /// The same server, seen by a client that sends `user_agent`.
    pub fn with_user_agent(app: &TestApp, user_agent: &str) -> TestApp {
        let mut view = app.as_user("unused");
        view.client = reqwest::Client::builder()
            .user_agent(user_agent.to_owned())
            .build()
            .unwrap();
        view
    }

    pub fn made_up_id() -> String {
        uuid::Uuid::new_v4().to_string()
    }
}

#[tokio::test]
async fn the_original_client_locks_commands_and_releases_with_its_own_session_id() {
    let server = spawn_app().await;
    let app = original_client::with_user_agent(&server, "python-requests/2.31.0");
    let s = original_client::made_up_id();
    let (status, body) = original_client::acquire(&app, &s, 3600.0).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["status"].as_str(), body["lock"]["session_id"].as_str()),
        (Some("locked"), Some(s.as_str()))
    );
    let (status, session) = app.get(&format!("/api/locks/sessions/{s}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(session["client_name"], "python-requests/2.31.0");
    assert_eq!(session["client_ip"], "127.0.0.1");
    assert_eq!(session["time_remaining"], 600.0, "the default timeout");
    let (_, events) = app.get(&format!("/api/locks/sessions/{s}/events")).await;
    let created = &events["events"][0];
    assert_eq!(
        (
            created["event"].as_str(),
            created["implicit"].as_bool(),
            created["timeout_seconds"].as_f64()
        ),
        (Some("session_created"), Some(true), Some(600.0)),
        "{events}"
    );

    let (status, body) = original_client::command(&app, &s).await;
    assert_eq!(
        (status, &body["success"]),
        (StatusCode::OK, &json!(true)),
        "{body}"
    );
    let (status, body) = original_client::release(&app, &s).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("released"))
    );
    // A live session is reused, not opened again.
    let (status, _) = original_client::acquire(&app, &s, 3600.0).await;
    assert_eq!(status, StatusCode::OK);
    let (_, events) = app
        .get(&format!(
            "/api/locks/events?session_id={s}&event=session_created"
        ))
        .await;
    assert_eq!(events["count"], 1);
}

#[tokio::test]
async fn the_original_client_hears_lock_lost_after_its_session_ends_and_can_start_again() {
    let app = spawn_app().await;
    let s = original_client::made_up_id();
    original_client::acquire(&app, &s, 3600.0).await;
    // The session (600 s by default) ends before the lock's own timeout.
    app.advance(600.0);
    assert_error(
        &original_client::command(&app, &s).await,
        StatusCode::FORBIDDEN,
        "lock_lost",
    );
    assert_error(
        &original_client::release(&app, &s).await,
        StatusCode::NOT_FOUND,
        "lock_lost",
    );
    assert_error(
        &app.post("/api/locks/activity/ps_abc123", json!({"session_id": s}))
            .await,
        StatusCode::NOT_FOUND,
        "lock_lost",
    );
    // None of them opened the session again.
    assert_error(
        &app.get(&format!("/api/locks/sessions/{s}")).await,
        StatusCode::NOT_FOUND,
        "session_not_found",
    );
    // An acquire re-opens it with a fresh lease, named "implicit" for a
    // client that sends no User-Agent.
    let (status, body) = original_client::acquire(&app, &s, 3600.0).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("locked"))
    );
    let (_, session) = app.get(&format!("/api/locks/sessions/{s}")).await;
    assert_eq!(
        (
            session["client_name"].as_str(),
            session["time_remaining"].as_f64()
        ),
        (Some("implicit"), Some(600.0))
    );
    let (_, events) = app
        .get(&format!(
            "/api/locks/events?session_id={s}&event=session_created"
        ))
        .await;
    assert_eq!(events["count"], 2, "opened twice: {events}");
}

#[tokio::test]
async fn implicit_sessions_can_be_turned_off_and_ids_are_still_checked() {
    let app = spawn_with(without_implicit_sessions()).await;
    let s = original_client::made_up_id();
    assert_error(
        &original_client::acquire(&app, &s, 300.0).await,
        StatusCode::NOT_FOUND,
        "session_not_found",
    );
    // A command from a session that is gone is not told to acquire with
    // it, which would not open it here.
    let gone = app
        .command("ps_abc123", Some(&s), "get_status", json!({}))
        .await;
    assert_error(&gone, StatusCode::FORBIDDEN, "session_not_live");
    assert_eq!(
        gone.1["detail"],
        format!(
            "session {s} is not live (it never existed, ended or expired): create a session and acquire a lock with it first"
        )
    );
    let app = spawn_app().await;
    for bad in ["a b".to_string(), "x".repeat(129), String::new()] {
        assert_error(
            &original_client::acquire(&app, &bad, 300.0).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_id",
        );
    }
    // Releases and commands never open a session.
    assert_error(
        &original_client::release(&app, &s).await,
        StatusCode::NOT_FOUND,
        "session_not_found",
    );
    let (status, _) = original_client::command(&app, &s).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, list) = app.get("/api/locks/sessions").await;
    assert_eq!(list["count"], 0);
}

#[tokio::test]
async fn an_implicit_session_belongs_to_its_caller() {
    let dir = tempfile::tempdir().unwrap();
    let (app, [_, alice, bob, _]) = secured(dir.path()).await;
    let (alice, bob) = (app.as_user(&alice), app.as_user(&bob));
    let s = original_client::made_up_id();
    let (status, _) = original_client::acquire(&alice, &s, 300.0).await;
    assert_eq!(status, StatusCode::OK);
    let (_, session) = alice.get(&format!("/api/locks/sessions/{s}")).await;
    assert_eq!(session["user"], "alice");
    assert_error(
        &original_client::acquire(&bob, &s, 300.0).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
}

#[tokio::test]
async fn a_refused_acquire_opens_no_session() {
    let app = spawn_app().await;
    let holder = app.session(0.0).await;
    app.acquire("ps_abc123", &holder, json!({})).await;
    let s = original_client::made_up_id();
    assert_error(
        &original_client::acquire(&app, &s, 300.0).await,
        StatusCode::CONFLICT,
        "equipment_locked",
    );
    assert_error(
        &app.get(&format!("/api/locks/sessions/{s}")).await,
        StatusCode::NOT_FOUND,
        "session_not_found",
    );
    let (_, events) = app.get(&format!("/api/locks/events?session_id={s}")).await;
    assert_eq!(events["count"], 0, "{events}");
}

/// The two new settings, read by the real binary from a config file's
/// `[server]` table.
#[tokio::test]
async fn the_binary_reads_implicit_sessions_and_max_metadata_bytes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("lab.toml"),
        "[server]\nimplicit_sessions = false\nmax_metadata_bytes = 10\n",
    )
    .unwrap();
    let (mut child, addr, _) = start_binary(
        dir.path(),
        &[
            "--config",
            "lab.toml",
            "--store",
            "memory",
            "--bind",
            "127.0.0.1:0",
        ],
        &[],
    );
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        client
            .post(format!("http://{addr}{path}"))
            .json(&body)
            .send()
    };
    let s = original_client::made_up_id();
    let acquire = post(
        "/api/locks/acquire",
        original_client::acquire_body(&s, 300.0),
    )
    .await
    .unwrap();
    assert_eq!(
        acquire.status(),
        StatusCode::NOT_FOUND,
        "implicit sessions off"
    );
    let create =
        |metadata: Value| post("/api/locks/sessions/create", json!({"metadata": metadata}));
    // {"a":"12345"}: 13 bytes; {"a":"1"}: 9.
    assert_eq!(
        create(json!({"a": "12345"})).await.unwrap().status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        create(json!({"a": "1"})).await.unwrap().status(),
        StatusCode::OK
    );
    child.kill().unwrap();
    let _ = child.wait();
}

/// With authentication on and auto-release off, an ended session keeps its
/// lock; its id (shown in every status) must not let another user take the
/// lock over, force it without being an admin, or learn how it ended.
#[tokio::test]
async fn an_ended_sessions_id_stays_its_users() {
    let dir = tempfile::tempdir().unwrap();
    let [root, alice, bob] = ["root:admin", "alice:operator", "bob:operator"].map(|who| {
        let (user, role) = who.split_once(':').unwrap();
        crate::auth::create_token(dir.path(), user, role)
    });
    let app = spawn_with(Settings {
        auth: Some(lablink::auth::AuthMode::Required),
        policy: Policy {
            auto_release_on_disconnect: false,
            ..Policy::default()
        },
        ..crate::helpers::sqlite_in(dir.path(), "?synchronous=normal")
    })
    .await;
    let (root, alice, bob) = (app.as_user(&root), app.as_user(&alice), app.as_user(&bob));
    let s = alice.session(0.0).await;
    let (status, _) = alice.acquire("ps_abc123", &s, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    alice.delete(&format!("/api/locks/sessions/{s}")).await;

    let forced = json!({"equipment_id": "ps_abc123", "session_id": s, "force": true});
    let refused = bob.post("/api/locks/release", forced.clone()).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    assert_error(
        &original_client::acquire(&bob, &s, 300.0).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (_, status) = bob.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status["session_id"], json!(s), "{status}");

    // An id whose session ended holding nothing is its user's too.
    let t = alice.session(0.0).await;
    alice.delete(&format!("/api/locks/sessions/{t}")).await;
    assert_error(
        &original_client::acquire(&bob, &t, 300.0).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );

    // Only the user whose lock it was hears how it ended.
    let (status, _) = root.post("/api/locks/release", forced).await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &original_client::release(&bob, &s).await,
        StatusCode::NOT_FOUND,
        "session_not_found",
    );
    assert_error(
        &original_client::release(&alice, &s).await,
        StatusCode::NOT_FOUND,
        "lock_lost",
    );
    assert_error(
        &original_client::command(&bob, &s).await,
        StatusCode::FORBIDDEN,
        "session_not_live",
    );
    assert_error(
        &original_client::command(&alice, &s).await,
        StatusCode::FORBIDDEN,
        "lock_lost",
    );
    let (status, body) = original_client::acquire(&alice, &s, 300.0).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
