use reqwest::StatusCode;
use serde_json::json;

use lablink::config::Settings;
use lablink::service::Policy;

use crate::helpers::{START, TestApp, assert_error, memory, spawn_app, spawn_with, sqlite_in};

#[tokio::test]
async fn create_returns_the_briefs_shape_with_defaults() {
    let app = spawn_app().await;
    let (status, body) = app.post("/api/locks/sessions/create", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let id = body["session_id"].as_str().unwrap();
    assert_eq!(uuid_version(id), Some('4'), "{id}");
    assert_eq!(body["client_ip"], "127.0.0.1", "defaults to the caller");
    assert_eq!(body["created_at"], START);
    assert_eq!(body["last_activity"], START);
    assert_eq!(
        body["time_remaining"], 600.0,
        "LABLINK_SESSION_TIMEOUT_SEC default"
    );
    assert_eq!(body["duration_seconds"], 0.0);
    assert_eq!(body["metadata"], json!({}));

    let (status, body) = app
        .post(
            "/api/locks/sessions/create",
            json!({"client_name": "Lab PC #3", "client_ip": "192.168.1.100", "timeout_seconds": 0, "metadata": {"user": "researcher_1"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["client_name"], "Lab PC #3");
    assert_eq!(body["client_ip"], "192.168.1.100");
    assert_eq!(
        body["time_remaining"],
        serde_json::Value::Null,
        "0 = no timeout"
    );
    assert_eq!(body["metadata"], json!({"user": "researcher_1"}));

    // An empty body is an empty object.
    let (status, _) = app.post_raw("/api/locks/sessions/create", "").await;
    assert_eq!(status, StatusCode::OK);
}

fn uuid_version(id: &str) -> Option<char> {
    (id.len() == 36).then(|| id.chars().nth(14)).flatten()
}

#[tokio::test]
async fn create_rejects_bad_fields_and_creates_nothing() {
    let app = spawn_app().await;
    for body in [
        json!({"timeout_seconds": -1}),
        json!({"timeout_seconds": "ten"}),
        json!({"metadata": [1, 2]}),
        json!({"metadata": "x"}),
        json!({"client_name": 5}),
        json!({"client_name": "x".repeat(300)}),
    ] {
        let response = app.post("/api/locks/sessions/create", body.clone()).await;
        assert_eq!(
            response.0,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            response.1
        );
    }
    let (_, list) = app.get("/api/locks/sessions").await;
    assert_eq!(
        list,
        json!({"sessions": [], "count": 0, "next_cursor": null})
    );
}

#[tokio::test]
async fn get_list_activity_and_end() {
    let app = spawn_app().await;
    let a = app.session(100.0).await;
    app.advance(0.001);
    let b = app.session(100.0).await;
    app.advance(39.999);
    let (status, body) = app.get(&format!("/api/locks/sessions/{a}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["time_remaining"], 60.0);
    assert_eq!(body["duration_seconds"], 40.0);

    let (_, body) = app
        .post(&format!("/api/locks/sessions/{a}/activity"), json!({}))
        .await;
    assert_eq!(body["time_remaining"], 100.0, "activity renews");
    assert_eq!(body["success"], true, "as the original server answered");
    assert_eq!(body["session_id"], a.as_str());

    let (_, list) = app.get("/api/locks/sessions").await;
    assert_eq!(list["count"], 2);
    let ids: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap())
        .collect();
    let mut both = [a.as_str(), b.as_str()];
    both.sort();
    assert_eq!(ids, both, "in session id order");

    app.acquire("ps_abc123", &a, json!({})).await;
    app.acquire("scope_123", &a, json!({"lock_mode": "observer"}))
        .await;
    let (status, body) = app.delete(&format!("/api/locks/sessions/{a}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"success": true, "message": "Session ended", "session_id": a, "locks_released": 2})
    );
    let (_, status_body) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status_body["locked"], false);

    for path in [
        format!("/api/locks/sessions/{a}"),
        format!("/api/locks/sessions/{a}/locks"),
        "/api/locks/sessions/never-existed".to_string(),
    ] {
        assert_error(
            &app.get(&path).await,
            StatusCode::NOT_FOUND,
            "session_not_found",
        );
    }
    assert_error(
        &app.delete(&format!("/api/locks/sessions/{a}")).await,
        StatusCode::NOT_FOUND,
        "session_not_found",
    );
    assert_error(
        &app.post(&format!("/api/locks/sessions/{a}/activity"), json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "session_not_found",
    );

    // Its history stays readable after it ends.
    let (status, events) = app.get(&format!("/api/locks/sessions/{a}/events")).await;
    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "session_created",
            "lock_acquired",
            "observer_lock_acquired",
            "lock_released",
            "observer_lock_released",
            "session_ended"
        ]
    );
    assert_eq!(events["count"], 6);
    let (_, last) = app
        .get(&format!("/api/locks/sessions/{a}/events?limit=1"))
        .await;
    assert_eq!(last["events"][0]["event"], "session_ended");
    assert_eq!(last["events"][0]["locks_released"], 2);
}

#[tokio::test]
async fn a_session_expires_exactly_at_its_deadline_and_releases_its_locks() {
    let app = spawn_app().await;
    let a = app.session(30.0).await;
    let b = app.session(0.0).await;
    app.acquire("ps_abc123", &a, json!({"timeout_seconds": 0}))
        .await;
    app.acquire("ps_abc123", &b, json!({"queue_if_busy": true}))
        .await;
    app.advance(29.999);
    let (_, body) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(body["session_id"], a.as_str());
    app.advance(0.001);
    assert_error(
        &app.get(&format!("/api/locks/sessions/{a}")).await,
        StatusCode::NOT_FOUND,
        "session_not_found",
    );
    let (_, body) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(body["session_id"], b.as_str(), "handed to the queue");
    let (_, list) = app.get("/api/locks/sessions").await;
    assert_eq!(list["count"], 1);
    let (_, events) = app.get(&format!("/api/locks/sessions/{a}/events")).await;
    let last = events["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["event"].as_str(), last["locks_released"].as_u64()),
        (Some("session_expired"), Some(1))
    );
}

#[tokio::test]
async fn a_session_lists_its_locks_and_queue_places() {
    let app = spawn_app().await;
    let a = app.session(0.0).await;
    let b = app.session(0.0).await;
    app.acquire("ps_abc123", &a, json!({})).await;
    app.acquire("scope_123", &b, json!({})).await;
    app.acquire("scope_123", &a, json!({"queue_if_busy": true}))
        .await;
    let (status, body) = app.get(&format!("/api/locks/sessions/{a}/locks")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["count"], 1);
    assert_eq!(body["locks"][0]["equipment_id"], "ps_abc123");
    assert_eq!(body["queued"][0]["equipment_id"], "scope_123");
    assert_eq!(body["queued"][0]["position"], 1);
}

#[tokio::test]
async fn metadata_is_capped_by_max_metadata_bytes() {
    let app = spawn_app().await;
    // The default cap is 16 KiB of compact JSON.
    let (status, _) = app
        .post(
            "/api/locks/sessions/create",
            json!({"metadata": {"notes": "a".repeat(16 * 1024 - 12)}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "exactly 16 KiB fits");
    let refused = app
        .post(
            "/api/locks/sessions/create",
            json!({"metadata": {"notes": "a".repeat(16 * 1024)}}),
        )
        .await;
    assert_error(&refused, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    let detail = refused.1["detail"].as_str().unwrap();
    assert!(detail.contains("LABLINK_MAX_METADATA_BYTES"), "{detail}");

    let app = spawn_with(Settings {
        policy: Policy {
            max_metadata_bytes: 20,
            ..Policy::default()
        },
        ..memory()
    })
    .await;
    // {"user":"researcher"}: 21 bytes.
    assert_error(
        &app.post(
            "/api/locks/sessions/create",
            json!({"metadata": {"user": "researcher"}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    let (status, _) = app
        .post(
            "/api/locks/sessions/create",
            json!({"metadata": {"user": "researche"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = app.get("/api/locks/sessions").await;
    assert_eq!(list["count"], 1, "the refused one was not created");
}

/// Pages through the session list `limit` at a time; returns every id seen.
async fn every_page(app: &TestApp, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut path = format!("/api/locks/sessions?limit={limit}");
    loop {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let sessions = page["sessions"].as_array().unwrap();
        assert_eq!(page["count"], sessions.len());
        assert!(sessions.len() <= limit);
        ids.extend(
            sessions
                .iter()
                .map(|s| s["session_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/locks/sessions?limit={limit}&cursor={cursor}"),
            None => return ids,
        }
    }
}

#[tokio::test]
async fn the_session_list_pages_on_both_stores() {
    let dir = tempfile::tempdir().unwrap();
    for settings in [memory(), sqlite_in(dir.path(), "?synchronous=normal")] {
        let app = spawn_with(settings).await;
        let mut created = Vec::new();
        for _ in 0..5 {
            created.push(app.session(0.0).await);
        }
        created.sort();
        assert_eq!(every_page(&app, 2).await, created);
        assert_eq!(every_page(&app, 5).await, created);
        let (_, last) = app
            .get(&format!("/api/locks/sessions?cursor={}", created[4]))
            .await;
        assert_eq!(
            last,
            json!({"sessions": [], "count": 0, "next_cursor": null})
        );
        for bad in ["limit=0", "limit=1001", "limit=abc", "cursor=a%20b"] {
            let (status, body) = app.get(&format!("/api/locks/sessions?{bad}")).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn the_session_list_has_a_default_page_size() {
    let app = spawn_app().await;
    for _ in 0..101 {
        app.session(0.0).await;
    }
    let (_, page) = app.get("/api/locks/sessions").await;
    assert_eq!(page["count"], 100);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = app
        .get(&format!("/api/locks/sessions?cursor={cursor}"))
        .await;
    assert_eq!(
        (rest["count"].as_u64(), rest["next_cursor"].as_str()),
        (Some(1), None)
    );
    // The API document says where the paging parameters go.
    let (_, doc) = app.get("/openapi.json").await;
    let params = doc["paths"]["/api/locks/sessions"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["in"].as_str().unwrap()))
        .collect::<Vec<_>>();
    assert_eq!(params, [("limit", "query"), ("cursor", "query")]);
}

/// Free texts people read (a client name, a reason, a manager's message, a
/// command id) refuse control characters, naming the field; an implicit
/// session's name from the User-Agent loses them instead. `client_ip` must
/// be an address, a `command_id` at most 128 characters.
#[tokio::test]
async fn free_texts_refuse_control_characters_and_client_ip_must_be_an_address() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    let sent: [(&str, serde_json::Value, &str); 7] = [
        (
            "/api/locks/sessions/create",
            json!({"client_name": "\u{1b}[2J\u{1b}[31mPWNED\u{1b}[0m"}),
            "client_name",
        ),
        (
            "/api/locks/sessions/create",
            json!({"client_name": "a\u{7}\nb"}),
            "client_name",
        ),
        (
            "/api/locks/sessions/create",
            json!({"client_name": "x\u{85}"}),
            "client_name",
        ),
        (
            "/api/equipment/ps_abc123/maintenance",
            json!({"reason": "calibration\nrm -rf"}),
            "reason",
        ),
        (
            &format!("/api/locks/queue/ps_abc123/{s}/remove"),
            json!({"forced_by": "lab-manager", "message": "bye\u{1b}[2J"}),
            "message",
        ),
        (
            &format!("/api/locks/sessions/{s}/end"),
            json!({"forced_by": "lab-manager", "message": "\u{7}"}),
            "message",
        ),
        (
            "/api/locks/sessions/create",
            json!({"client_ip": "not an ip"}),
            "client_ip",
        ),
    ];
    for (path, body, field) in sent {
        let refused = app.post(path, body.clone()).await;
        assert_error(
            &refused,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        );
        assert!(
            refused.1["detail"]
                .as_str()
                .unwrap()
                .starts_with(&format!("`{field}`")),
            "{body}: {}",
            refused.1
        );
    }
    // Nothing was stored: the one session, live and in service.
    let (_, sessions) = app.get("/api/locks/sessions").await;
    assert_eq!(sessions["count"], 1, "{sessions}");
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status["maintenance"], serde_json::Value::Null);
    // Addresses of both kinds, in their usual form.
    for (given, kept) in [
        ("192.168.1.100", "192.168.1.100"),
        ("2001:DB8::0001", "2001:db8::1"),
    ] {
        let (status, body) = app
            .post("/api/locks/sessions/create", json!({"client_ip": given}))
            .await;
        assert_eq!(
            (status, body["client_ip"].as_str()),
            (StatusCode::OK, Some(kept))
        );
    }
    // A command id: like other ids, at most 128 characters, and refused
    // ones are not echoed.
    let holder = app.session(0.0).await;
    app.acquire("ps_abc123", &holder, json!({})).await;
    let long = "c".repeat(129);
    for bad in [long.as_str(), "id\u{1b}[2J"] {
        let (status, body) = app
            .post(
                "/api/equipment/ps_abc123/command",
                json!({"command_id": bad, "action": "get_status", "session_id": holder}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["code"], "invalid_parameter");
        assert!(body["detail"].as_str().unwrap().starts_with("`command_id`"));
        assert_eq!(body["command_id"], serde_json::Value::Null);
    }
    let fits = "c".repeat(128);
    let (status, body) = app
        .post(
            "/api/equipment/ps_abc123/command",
            json!({"command_id": fits, "action": "get_status", "session_id": holder}),
        )
        .await;
    assert_eq!(
        (status, body["command_id"].as_str()),
        (StatusCode::OK, Some(fits.as_str()))
    );
    // An implicit session is named after its User-Agent, without its
    // control characters.
    let (status, _) = app
        .client
        .post(format!("{}/api/locks/acquire", app.base))
        .header("user-agent", "probe\t/1.0")
        .json(&json!({"equipment_id": "scope_123", "session_id": "ua-test"}))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let (_, session) = app.get("/api/locks/sessions/ua-test").await;
    assert_eq!(session["client_name"], "probe/1.0");
    // A maintenance `until` that is no time names the field.
    let refused = app
        .post(
            "/api/equipment/ps_abc123/maintenance",
            json!({"reason": "calibration", "until": "tomorrow"}),
        )
        .await;
    assert_error(
        &refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_timestamp",
    );
    assert!(
        refused.1["detail"].as_str().unwrap().starts_with("`until`"),
        "{}",
        refused.1
    );
}
