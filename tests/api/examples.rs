//! The brief's four usage examples, as written (same requests, same checks).

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn basic_workflow() {
    let app = spawn_app().await;
    let (_, session) = app
        .post(
            "/api/locks/sessions/create",
            json!({"client_name": "My Lab PC", "timeout_seconds": 600}),
        )
        .await;
    let session_id = session["session_id"].as_str().unwrap();
    let (_, lock) = app
        .post(
            "/api/locks/acquire",
            json!({"equipment_id": "ps_abc123", "session_id": session_id, "lock_mode": "exclusive", "timeout_seconds": 300, "queue_if_busy": true}),
        )
        .await;
    assert_eq!(lock["status"], "locked");
    let (status, cmd) = app
        .post(
            "/api/equipment/ps_abc123/command",
            json!({"command_id": "cmd_001", "equipment_id": "ps_abc123", "action": "set_voltage", "parameters": {"voltage": 12.0}, "session_id": session_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (cmd["command_id"].as_str(), cmd["success"].as_bool()),
        (Some("cmd_001"), Some(true))
    );
    let (status, _) = app
        .post(
            "/api/locks/release",
            json!({"equipment_id": "ps_abc123", "session_id": session_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, ended) = app
        .delete(&format!("/api/locks/sessions/{session_id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ended["locks_released"], 0);
}

#[tokio::test]
async fn observer_mode() {
    let app = spawn_app().await;
    let session_id = app.session(600.0).await;
    let (_, observer) = app
        .post(
            "/api/locks/acquire",
            json!({"equipment_id": "scope_123", "session_id": session_id, "lock_mode": "observer", "timeout_seconds": 600}),
        )
        .await;
    assert_eq!(observer["status"], "locked");
    let (status, data) = app
        .post(
            "/api/equipment/scope_123/command",
            json!({"command_id": "cmd_002", "equipment_id": "scope_123", "action": "get_waveform", "parameters": {"channel": 1}, "session_id": session_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(data["data"]["channel"], 1);
    let (status, blocked) = app
        .post(
            "/api/equipment/scope_123/command",
            json!({"command_id": "cmd_003", "equipment_id": "scope_123", "action": "set_timebase", "parameters": {"seconds_per_div": 0.001}, "session_id": session_id}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "BLOCKED: {blocked}");
}

#[tokio::test]
async fn queue() {
    let app = spawn_app().await;
    let holder = app.session(0.0).await;
    app.acquire("ps_abc123", &holder, json!({"timeout_seconds": 30}))
        .await;
    let session_id = app.session(0.0).await;
    let (_, resp) = app
        .post(
            "/api/locks/acquire",
            json!({"equipment_id": "ps_abc123", "session_id": session_id, "lock_mode": "exclusive", "queue_if_busy": true}),
        )
        .await;
    assert_eq!(resp["status"], "queued");
    assert_eq!(resp["queue_entry"]["position"], 1);
    // The example's polling loop: we are next.
    let (_, q) = app.get("/api/locks/queue/ps_abc123").await;
    let queue = q["queue"].as_array().unwrap();
    assert!(queue.is_empty() || queue[0]["session_id"] == session_id.as_str());
    // Time passes (instead of the example's sleep); the holder's lease ends.
    app.advance(30.0);
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status["session_id"], session_id.as_str());
    let (_, q) = app.get("/api/locks/queue/ps_abc123").await;
    assert!(q["queue"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn keeping_a_lock_alive() {
    let app = spawn_app().await;
    let session_id = app.session(600.0).await;
    app.acquire("ps_abc123", &session_id, json!({"timeout_seconds": 300}))
        .await;
    // The keep-alive thread posts every minute; a long run stays locked.
    for _ in 0..30 {
        app.advance(60.0);
        let (status, _) = app
            .post(
                "/api/locks/activity/ps_abc123",
                json!({"session_id": session_id}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status["session_id"], session_id.as_str());
    assert_eq!(status["time_remaining"], 300.0);
}
