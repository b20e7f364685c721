//! Authentication and roles: tokens made with the real `lablink token`
//! command, a server that requires them, and each rule.

use lablink::auth::AuthMode;
use lablink::config::Settings;
use lablink::drivers::{EquipmentConfig, Instruments};
use reqwest::StatusCode;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

use crate::helpers::{TestApp, assert_error, lablink, spawn_with, sqlite_in};

/// `lablink token ...` against the store in `dir`; returns stdout.
fn token_cli(dir: &Path, args: &[&str]) -> String {
    let out = lablink()
        .arg("token")
        .args(args)
        .args(["--store", &format!("sqlite://{}/lablink.db", dir.display())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn create_token(dir: &Path, user: &str, role: &str) -> String {
    token_cli(dir, &["create", "--user", user, "--role", role])
        .trim()
        .to_owned()
}

/// A server requiring tokens, with a `restricted` PSU only alice and
/// admins may lock; and tokens for admin, alice, bob (operators), vera
/// (observer).
pub async fn secured(dir: &Path) -> (TestApp, [String; 4]) {
    let tokens = [
        create_token(dir, "root", "admin"),
        create_token(dir, "alice", "operator"),
        create_token(dir, "bob", "operator"),
        create_token(dir, "vera", "observer"),
    ];
    let mut equipment = Instruments::demo_configs();
    equipment.push(EquipmentConfig {
        id: "restricted".into(),
        driver: "sim-psu".into(),
        name: None,
        allow: Some(vec!["alice".into(), "role:observer".into()]),
        tags: Vec::new(),
        settings: toml::Table::new(),
    });
    let app = spawn_with(Settings {
        auth: Some(AuthMode::Required),
        equipment: Some(equipment),
        ..sqlite_in(dir, "?synchronous=normal")
    })
    .await;
    (app, tokens)
}

#[tokio::test]
async fn requests_without_a_valid_token_get_401_with_www_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let (app, [_, alice, ..]) = secured(dir.path()).await;
    for path in [
        "/api/locks/all",
        "/api/equipment/list",
        "/api/locks/sessions",
    ] {
        let response = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"lablink\""
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], "unauthenticated");
    }
    let wrong = app.as_user("llk_0000000000000000000000000000000000000000000000000000000000000000");
    assert_error(
        &wrong.get("/api/locks/all").await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    assert_error(
        &app.as_user("not-a-token").get("/api/locks/all").await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    assert_eq!(
        app.as_user(&alice).get("/api/locks/all").await.0,
        StatusCode::OK
    );
    // The docs stay readable without a token.
    assert_eq!(app.get("/openapi.json").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_session_belongs_to_its_user_and_knowing_its_id_grants_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (app, [_, alice, bob, _]) = secured(dir.path()).await;
    let (alice, bob) = (app.as_user(&alice), app.as_user(&bob));
    let s = alice.session(0.0).await;
    let (_, info) = alice.get(&format!("/api/locks/sessions/{s}")).await;
    assert_eq!(info["user"], "alice");
    assert_eq!(
        alice.acquire("ps_abc123", &s, json!({})).await.0,
        StatusCode::OK
    );
    let stolen = [
        bob.acquire("scope_123", &s, json!({})).await,
        bob.release("ps_abc123", &s, false).await,
        bob.post("/api/locks/activity/ps_abc123", json!({"session_id": s}))
            .await,
        bob.command(
            "ps_abc123",
            Some(&s),
            "set_output",
            json!({"enabled": true}),
        )
        .await,
        bob.post(&format!("/api/locks/sessions/{s}/activity"), json!({}))
            .await,
        bob.delete(&format!("/api/locks/sessions/{s}")).await,
    ];
    for response in &stolen {
        assert_error(response, StatusCode::FORBIDDEN, "forbidden");
    }
    // Reading is open to every user: lab managers see who holds what.
    let (_, status) = bob.get("/api/locks/status/ps_abc123").await;
    assert_eq!(
        (status["user"].as_str(), status["client_name"].as_str()),
        (Some("alice"), Some("test"))
    );
    let (_, all) = bob.get("/api/locks/all").await;
    assert_eq!(all["exclusive_locks"]["ps_abc123"]["user"], "alice");
    assert_eq!(
        alice
            .command(
                "ps_abc123",
                Some(&s),
                "set_output",
                json!({"enabled": true})
            )
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn force_is_for_admins_and_records_both_users() {
    let dir = tempfile::tempdir().unwrap();
    let (app, [root, alice, bob, _]) = secured(dir.path()).await;
    let (root, alice, bob) = (app.as_user(&root), app.as_user(&alice), app.as_user(&bob));
    let s = alice.session(0.0).await;
    alice.acquire("ps_abc123", &s, json!({})).await;
    assert_error(
        &bob.release("ps_abc123", "whoever", true).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    // Each manager control refused names itself, not a forced release.
    let by = json!({"forced_by": "lab-manager"});
    for (refused, action) in [
        (
            bob.post(
                "/api/equipment/ps_abc123/maintenance",
                json!({"reason": "calibration"}),
            )
            .await,
            "start maintenance",
        ),
        (
            bob.delete("/api/equipment/ps_abc123/maintenance").await,
            "end maintenance",
        ),
        (
            bob.post(
                &format!("/api/locks/queue/ps_abc123/{s}/remove"),
                by.clone(),
            )
            .await,
            "remove a waiter from a queue",
        ),
        (
            bob.post(&format!("/api/locks/sessions/{s}/end"), by).await,
            "force-end a session",
        ),
        (
            bob.release("ps_abc123", "whoever", true).await,
            "force a release",
        ),
    ] {
        assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
        assert_eq!(
            refused.1["detail"],
            format!("only an admin may {action}; bob is operator")
        );
    }
    let admin_session = root.session(0.0).await;
    let (status, body) = root.release("ps_abc123", &admin_session, true).await;
    assert_eq!(
        (status, body["was_forced"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    let (_, events) = root.get("/api/locks/events/ps_abc123?limit=1").await;
    let forced = &events["events"][0];
    assert_eq!(forced["event"], "lock_force_released");
    assert_eq!(
        (forced["user"].as_str(), forced["holder_user"].as_str()),
        (Some("root"), Some("alice"))
    );
    assert_eq!(forced["forced_by"], admin_session.as_str());
    let (_, events) = root.get(&format!("/api/locks/sessions/{s}/events")).await;
    let users: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["user"].as_str())
        .collect();
    assert_eq!(
        users,
        ["alice", "alice", "root"],
        "every event records who caused it"
    );
}

#[tokio::test]
async fn observers_only_observe_and_allow_lists_limit_who_locks() {
    let dir = tempfile::tempdir().unwrap();
    let (app, [root, alice, bob, vera]) = secured(dir.path()).await;
    let vera = app.as_user(&vera);
    let s = vera.session(0.0).await;
    assert_error(
        &vera.acquire("scope_123", &s, json!({})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(
        vera.acquire("scope_123", &s, json!({"lock_mode": "observer"}))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        vera.command("scope_123", Some(&s), "get_status", json!({}))
            .await
            .0,
        StatusCode::OK
    );
    assert_error(
        &vera
            .command("scope_123", Some(&s), "autoscale", json!({}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );

    let bob = app.as_user(&bob);
    let b = bob.session(0.0).await;
    let refused = bob.acquire("restricted", &b, json!({})).await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    assert!(refused.1["detail"].as_str().unwrap().contains("allow list"));
    for user in [alice, root] {
        let user = app.as_user(&user);
        let s = user.session(0.0).await;
        assert_eq!(
            user.acquire("restricted", &s, json!({})).await.0,
            StatusCode::OK
        );
        user.release("restricted", &s, false).await;
    }
    assert_eq!(
        vera.acquire("restricted", &s, json!({"lock_mode": "observer"}))
            .await
            .0,
        StatusCode::OK,
        "role:observer"
    );
}

#[tokio::test]
async fn a_revoked_token_stops_working_on_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let (app, [_, alice, ..]) = secured(dir.path()).await;
    let as_alice = app.as_user(&alice);
    assert_eq!(as_alice.get("/api/locks/all").await.0, StatusCode::OK);
    let listing = token_cli(dir.path(), &["list"]);
    let id = listing
        .lines()
        .find(|l| l.contains("alice"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(
        !listing.contains(&alice[4..]),
        "the list never shows tokens"
    );
    token_cli(dir.path(), &["revoke", &id]);
    // Revoked in another process: the server notices within a second.
    tokio::time::timeout(Duration::from_secs(10), async {
        while as_alice.get("/api/locks/all").await.0 != StatusCode::UNAUTHORIZED {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the revoked token is refused");
    assert!(
        token_cli(dir.path(), &["list"])
            .lines()
            .any(|l| l.contains("alice") && l.trim_end().ends_with('Z')),
        "shown as revoked"
    );
}

#[tokio::test]
async fn binding_beyond_loopback_needs_auth_or_an_explicit_opt_out() {
    let refused = lablink::server::Server::build(
        Settings {
            bind: "0.0.0.0:0".into(),
            auth: Some(AuthMode::Off),
            ..crate::helpers::memory()
        },
        std::sync::Arc::new(lablink::clock::SystemClock),
    )
    .await
    .err()
    .expect("refused");
    let message = refused.to_string();
    assert!(
        message.contains("LABLINK_ALLOW_INSECURE=true") && message.contains("lablink token create"),
        "{message}"
    );
    let out = lablink()
        .args(["serve", "--bind", "0.0.0.0:0", "--store", "memory"])
        .env("LABLINK_AUTH", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("refusing to listen on 0.0.0.0:0 without authentication")
    );
    // Off loopback the default is to require tokens; an explicit opt-out works.
    let dir = tempfile::tempdir().unwrap();
    for (auth, insecure) in [(None, false), (Some(AuthMode::Off), true)] {
        let settings = Settings {
            bind: "0.0.0.0:0".into(),
            auth,
            allow_insecure: insecure,
            ..sqlite_in(dir.path(), "?synchronous=normal")
        };
        let server = lablink::server::Server::build(
            settings,
            std::sync::Arc::new(lablink::clock::SystemClock),
        )
        .await
        .unwrap();
        let expected = if insecure {
            AuthMode::Off
        } else {
            AuthMode::Required
        };
        assert_eq!(server.service().auth().mode(), expected);
        drop(server);
    }
}

/// Runs `command` (expected to exit at once, refusing to start); a server
/// that starts instead is killed after a while, and then fails the test.
fn refused(mut command: std::process::Command) -> String {
    let mut child = Killed(
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = log_lines(&mut child.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut stderr = String::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(line) => stderr.push_str(&format!("{line}\n")),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("it started: {stderr}"),
        }
    }
    assert!(!child.0.wait().unwrap().success(), "{stderr}");
    stderr
}

#[tokio::test]
async fn required_authentication_on_the_memory_store_refuses_to_start() {
    // Tokens cannot be created there: every request would get 401 forever.
    for env in [&[("LABLINK_AUTH", "required")][..], &[][..]] {
        let bind = if env.is_empty() {
            "0.0.0.0:0"
        } else {
            "127.0.0.1:0"
        };
        let mut command = lablink();
        command
            .args(["serve", "--bind", bind, "--store", "memory"])
            .envs(env.iter().copied());
        let stderr = refused(command);
        assert!(
            stderr.contains("the memory store cannot keep API tokens")
                && stderr.contains("sqlite://"),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_other_credentials_are_told_how() {
    let dir = tempfile::tempdir().unwrap();
    let (app, [_, alice, ..]) = secured(dir.path()).await;
    let get = |path: &str, authorization: Option<String>| {
        let mut request = app.client.get(format!("{}{path}", app.base));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        async move {
            let response = request.send().await.unwrap();
            (
                response.status(),
                response.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let (status, body) = get("/api/locks/all", Some(format!("{scheme} {alice}"))).await;
        assert_eq!(status, StatusCode::OK, "{scheme}: {body}");
    }
    let basic = get("/api/locks/all", Some("Basic YWxpY2U6c2VjcmV0".into())).await;
    assert_error(&basic, StatusCode::UNAUTHORIZED, "unauthenticated");
    let detail = basic.1["detail"].as_str().unwrap();
    assert!(
        detail.contains("use a Bearer token") && !detail.contains("revoked"),
        "{detail}"
    );
    // The query string counts on /api/ws only.
    let query = get(&format!("/api/locks/all?access_token={alice}"), None).await;
    assert_error(&query, StatusCode::UNAUTHORIZED, "unauthenticated");
    let detail = query.1["detail"].as_str().unwrap();
    assert!(
        detail.contains("/api/ws only") && detail.contains("Authorization: Bearer"),
        "{detail}"
    );
}

#[tokio::test]
async fn a_revoked_tokens_websocket_is_closed_with_a_policy_violation() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let dir = tempfile::tempdir().unwrap();
    let (app, [_, alice, bob, _]) = secured(dir.path()).await;
    let url = format!("{}/api/ws", app.base.replace("http://", "ws://"));
    let subscribe = Message::text(json!({"type": "subscribe", "all": true}).to_string());
    let mut sockets = Vec::new();
    for token in [&alice, &bob] {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?access_token={token}"))
            .await
            .unwrap();
        ws.send(subscribe.clone()).await.unwrap();
        let ack = ws.next().await.unwrap().unwrap();
        assert!(ack.to_text().unwrap().contains("subscribed"), "{ack:?}");
        sockets.push(ws);
    }
    let [mut alices, mut bobs] = <[_; 2]>::try_from(sockets).unwrap();
    let listing = token_cli(dir.path(), &["list"]);
    let id = listing
        .lines()
        .find(|l| l.contains("alice"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    token_cli(dir.path(), &["revoke", &id]);
    let closed = tokio::time::timeout(Duration::from_secs(10), alices.next())
        .await
        .expect("closed without the client doing anything");
    let Some(Ok(Message::Close(Some(frame)))) = closed else {
        panic!("expected a close frame, got {closed:?}");
    };
    assert_eq!(frame.code, CloseCode::Policy);
    assert_eq!(frame.reason.as_str(), "the API token was revoked");
    // Others' sockets stay open.
    bobs.send(subscribe).await.unwrap();
    let ack = bobs.next().await.unwrap().unwrap();
    assert!(ack.to_text().unwrap().contains("subscribed"), "{ack:?}");
}

/// The binary's log as it comes, line by line.
fn log_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (send, lines) = std::sync::mpsc::channel();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

/// Waits for the first line that has every one of `parts`.
fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, parts: &[&str]) -> String {
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("no log line with {parts:?}: {e}"));
        if parts.iter().all(|p| line.contains(p)) {
            return line;
        }
    }
}

#[tokio::test]
async fn denied_requests_are_logged_at_info_with_the_reason_and_user() {
    let dir = tempfile::tempdir().unwrap();
    let alice = create_token(dir.path(), "alice", "operator");
    let store = format!("sqlite://{}/lablink.db", dir.path().display());
    let mut child = Killed(
        lablink()
            .args(["serve", "--bind", "127.0.0.1:0", "--store", &store])
            .env("LABLINK_AUTH", "required")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = log_lines(&mut child.0);
    let listening = wait_for_line(&lines, &["addr="]);
    let addr = listening.split("addr=").nth(1).unwrap().trim().to_owned();
    let app = TestApp::at(&format!("http://{addr}"));
    assert_error(
        &app.get("/api/locks/all").await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    let unauthenticated = wait_for_line(&lines, &["request denied"]);
    assert!(
        unauthenticated.contains("INFO")
            && unauthenticated.contains("status=401")
            && unauthenticated.contains("this server requires an API token"),
        "{unauthenticated}"
    );
    let alice = app.as_user(&alice);
    let s = alice.session(0.0).await;
    assert_error(
        &alice.release("ps_abc123", &s, true).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let forbidden = wait_for_line(&lines, &["request denied", "status=403"]);
    assert!(
        forbidden.contains("INFO")
            && forbidden.contains("user=alice")
            && forbidden.contains("admin"),
        "{forbidden}"
    );
}

/// A child process that is killed when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn an_unknown_role_in_an_allow_list_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("lab.toml"),
        "[[equipment]]\nid = \"hv_supply\"\ndriver = \"sim-psu\"\nallow = [\"alice\", \"role:wizard\"]\n",
    )
    .unwrap();
    let mut command = lablink();
    command
        .args(["serve", "--config", "lab.toml", "--store", "memory"])
        .current_dir(dir.path());
    let stderr = refused(command);
    assert!(
        stderr.contains("equipment \"hv_supply\"")
            && stderr.contains("\"role:wizard\" names no role"),
        "{stderr}"
    );
}

#[tokio::test]
async fn websockets_take_the_token_as_a_query_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let (app, [_, alice, ..]) = secured(dir.path()).await;
    let url = format!("{}/api/ws", app.base.replace("http://", "ws://"));
    assert!(
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .is_err(),
        "401 without a token"
    );
    let (ws, _) = tokio_tungstenite::connect_async(format!("{url}?access_token={alice}"))
        .await
        .unwrap();
    drop(ws);
}
