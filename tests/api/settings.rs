//! Each setting's effect through the API, and the real binary's start-up:
//! configuration errors, the demo instruments, and graceful shutdown.

use lablink::config::Settings;
use lablink::domain::Timeout;
use reqwest::StatusCode;
use serde_json::json;
use std::process::Command;

use crate::helpers::{assert_error, lablink, memory, spawn_with, start_binary as start};

fn settings(change: impl FnOnce(&mut Settings)) -> Settings {
    let mut s = memory();
    change(&mut s);
    s
}

#[tokio::test]
async fn locks_disabled_lets_every_command_run() {
    let app = spawn_with(settings(|s| s.policy.locks_enabled = false)).await;
    let (status, body) = app
        .command("ps_abc123", None, "set_voltage", json!({"voltage": 3}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn queue_disabled_refuses_queueing_with_409() {
    let app = spawn_with(settings(|s| s.policy.lock.queue_enabled = false)).await;
    let (a, b) = (app.session(0.0).await, app.session(0.0).await);
    assert_eq!(
        app.acquire("ps_abc123", &a, json!({"queue_if_busy": true}))
            .await
            .1["status"],
        "locked"
    );
    let refused = app
        .acquire("ps_abc123", &b, json!({"queue_if_busy": true}))
        .await;
    assert_error(&refused, StatusCode::CONFLICT, "queue_disabled");
    // The API names the setting the domain's text leaves out.
    let detail = refused.1["detail"].as_str().unwrap();
    assert!(
        detail.contains("LABLINK_ENABLE_LOCK_QUEUE=false"),
        "{detail}"
    );
    // It names the holder, as `equipment_locked` does.
    assert!(
        detail.contains(&format!("locked by session {a} (")),
        "{detail}"
    );
    // A free instrument in maintenance: refused for its maintenance (why,
    // until when), not as busy.
    app.post(
        "/api/equipment/load_1/maintenance",
        json!({"reason": "calibration", "until": "2999-01-01T00:00:00Z"}),
    )
    .await;
    let refused = app
        .acquire("load_1", &b, json!({"queue_if_busy": true}))
        .await;
    assert_error(&refused, StatusCode::CONFLICT, "in_maintenance");
    assert_eq!(
        refused.1["detail"],
        "equipment load_1 is in maintenance (calibration) until 2999-01-01T00:00:00.000Z: try again when service resumes (LABLINK_ENABLE_LOCK_QUEUE=false)"
    );
}

#[tokio::test]
async fn observer_mode_disabled_refuses_observers_with_403() {
    let app = spawn_with(settings(|s| s.policy.lock.observer_enabled = false)).await;
    let a = app.session(0.0).await;
    let refused = app
        .acquire("scope_123", &a, json!({"lock_mode": "observer"}))
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "observer_mode_disabled");
    let detail = refused.1["detail"].as_str().unwrap();
    assert!(
        detail.contains("LABLINK_ENABLE_OBSERVER_MODE=false"),
        "{detail}"
    );
}

#[tokio::test]
async fn without_auto_release_an_ended_sessions_lock_stays_until_its_timeout() {
    let app = spawn_with(settings(|s| s.policy.auto_release_on_disconnect = false)).await;
    let (a, b) = (app.session(0.0).await, app.session(0.0).await);
    app.acquire("ps_abc123", &a, json!({"timeout_seconds": 60}))
        .await;
    app.acquire("scope_123", &b, json!({})).await;
    app.acquire("scope_123", &a, json!({"queue_if_busy": true}))
        .await;
    let (_, ended) = app.delete(&format!("/api/locks/sessions/{a}")).await;
    assert_eq!(ended["locks_released"], 0);
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status["session_id"], a.as_str());
    let (_, queue) = app.get("/api/locks/queue/scope_123").await;
    assert_eq!(queue["queue_length"], 0, "queue places still go");
    app.advance(60.0);
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status["locked"], false);
}

#[tokio::test]
async fn log_lock_events_off_records_no_lock_events() {
    let app = spawn_with(settings(|s| s.policy.log_lock_events = false)).await;
    let a = app.session(0.0).await;
    app.acquire("ps_abc123", &a, json!({})).await;
    assert!(app.events("ps_abc123").await.is_empty());
    let (_, events) = app.get(&format!("/api/locks/sessions/{a}/events")).await;
    assert_eq!(
        events["events"][0]["event"], "session_created",
        "session lifecycle is still kept"
    );
    assert_eq!(events["count"], 1);
}

#[tokio::test]
async fn default_timeouts_apply_to_requests_that_give_none() {
    let app = spawn_with(settings(|s| {
        s.policy.default_lock_timeout = Timeout::from_millis(7_000);
        s.policy.default_session_timeout = Timeout::NONE;
    }))
    .await;
    let (_, session) = app.post("/api/locks/sessions/create", json!({})).await;
    assert_eq!(session["time_remaining"], serde_json::Value::Null);
    let (_, lock) = app
        .acquire(
            "ps_abc123",
            session["session_id"].as_str().unwrap(),
            json!({}),
        )
        .await;
    assert_eq!(lock["lock"]["timeout_seconds"], 7.0);
}

// ---- the real binary ------------------------------------------------------

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lablink-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn configuration_errors_stop_start_up_and_name_the_culprit() {
    let dir = temp_dir("bad-config");
    let cases = [
        (
            "[[equipment]]\nid = 'p'\ndriver = 'gpib-magic'\n",
            "unknown driver \"gpib-magic\"",
        ),
        (
            "[[equipment]]\nid = 'p'\ndriver = 'sim-psu'\nvolts = 3\n",
            "unknown field `volts`",
        ),
        (
            "[server]\nlock_timeout = 3\n",
            "unknown key \"lock_timeout\"",
        ),
        (
            "[server]\nlock_timeout_sec = -3\n",
            "LABLINK_LOCK_TIMEOUT_SEC",
        ),
    ];
    for (text, expected) in cases {
        let path = dir.join("lablink.toml");
        std::fs::write(&path, text).unwrap();
        let out = lablink()
            .args(["serve", "--bind", "127.0.0.1:0", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(stderr.contains(expected), "{text}: {stderr}");
    }
    let out = lablink()
        .args(["serve", "--bind", "127.0.0.1:0", "--store", "mongodb://x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown store"));
    let out = lablink()
        .args(["serve", "--bind", "not an address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // A bad address is what is reported, whatever the store.
    let out = lablink()
        .args(["serve", "--store", "memory", "--bind", "127.0.0.1:99999"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot listen on 127.0.0.1:99999"),
        "{stderr}"
    );
}

/// Sends one request from a synchronous test.
fn blocking_json(request: reqwest::RequestBuilder) -> serde_json::Value {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async { request.send().await.unwrap().json().await.unwrap() })
}

/// Creates a session on the server at `addr` and locks `equipment` with the
/// default lock timeout.
fn lock_through_binary(addr: &str, equipment: &str) -> serde_json::Value {
    let client = reqwest::Client::new();
    let session = blocking_json(client.post(format!("http://{addr}/api/locks/sessions/create")));
    let body = json!({"equipment_id": equipment, "session_id": session["session_id"]});
    blocking_json(
        client
            .post(format!("http://{addr}/api/locks/acquire"))
            .json(&body),
    )
}

#[test]
fn the_binary_serves_the_demo_reads_dotenv_and_stops_on_sigterm() {
    let dir = temp_dir("dotenv");
    std::fs::write(
        dir.join(".env"),
        "LABLINK_BIND=127.0.0.1:0\nLABLINK_LOCK_TIMEOUT_SEC=42\n",
    )
    .unwrap();
    let (mut child, addr, lines) = start(&dir, &[], &[]);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("demo instruments ps_abc123")),
        "{lines:?}"
    );
    let lock = lock_through_binary(&addr, "ps_abc123");
    assert_eq!(lock["lock"]["timeout_seconds"], 42.0, "from .env");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
}

#[test]
fn flags_beat_the_environment_and_a_config_file_sets_equipment() {
    let dir = temp_dir("config");
    std::fs::write(
        dir.join("lab.toml"),
        "[server]\nlock_timeout_sec = 5\n\n[[equipment]]\nid = 'bench_psu'\ndriver = 'sim-psu'\nname = 'Bench PSU'\nload_ohms = [4.0, 10.0, 5.0]\n",
    )
    .unwrap();
    let env = [
        ("LABLINK_BIND", "256.0.0.1:1"),
        ("LABLINK_CONFIG", "lab.toml"),
        ("LABLINK_LOCK_TIMEOUT_SEC", "9"),
    ];
    let (mut child, addr, _) = start(&dir, &["--bind", "127.0.0.1:0"], &env);
    let list: serde_json::Value =
        blocking_json(reqwest::Client::new().get(format!("http://{addr}/api/equipment/list")));
    assert_eq!(list["count"], 1);
    assert_eq!(list["equipment"][0]["name"], "Bench PSU");
    let lock = lock_through_binary(&addr, "bench_psu");
    assert_eq!(
        lock["lock"]["timeout_seconds"], 9.0,
        "environment beats the config file"
    );
    child.kill().unwrap();
    let _ = child.wait();
}
