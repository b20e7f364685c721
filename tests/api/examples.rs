//! The brief's four usage examples, as written (same requests, same checks),
//! and the README's curl examples, run top to bottom as a reader would.

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

/// The block under "Using it: one curl per endpoint", copied into a shell
/// from top to bottom: every request answers 2xx (the forced release, after
/// the lock was released, the 404 its comment announces).
#[tokio::test]
async fn the_readme_curl_examples_work_in_order() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Using it: one curl per endpoint").unwrap()..];
    let block = &section[section.find("```sh\n").unwrap() + 6..];
    let block = &block[..block.find("```").unwrap()];
    let app = spawn_app().await;
    // A lab with others at work: the session list has a next page.
    for i in 0..lablink::service::DEFAULT_SESSION_PAGE {
        app.post(
            "/api/locks/sessions/create",
            json!({"client_name": format!("bench {i}")}),
        )
        .await;
    }
    let mut vars = vec![("$B".to_owned(), format!("{}/api", app.base))];
    let mut last = serde_json::Value::Null;
    let mut ran = 0;
    let mut pending = String::new();
    for line in block.lines() {
        pending.push_str(line);
        pending.push('\n');
        // A command goes on while a quote is open or a line ends in `\`.
        let Some(words) = shlex::split(&pending) else {
            continue;
        };
        if line.ends_with('\\') {
            continue;
        }
        let text = std::mem::take(&mut pending);
        match words.first().map(String::as_str) {
            None => continue,
            Some(w) if w.starts_with("S=") => {
                vars.push(("$S".into(), last["session_id"].as_str().unwrap().into()));
                continue;
            }
            Some(w) if w.starts_with("C=") => {
                let cursor = last["next_cursor"].as_str().unwrap_or_default();
                vars.push(("$C".into(), cursor.into()));
                continue;
            }
            Some("B=http://127.0.0.1:8000/api") => continue,
            Some("curl") => {}
            Some(other) => panic!("not a curl command: {other} ({text})"),
        }
        // A shell drops a backslash-newline (shlex would make it a word).
        let mut text = text.replace("\\\n", " ");
        for (name, value) in &vars {
            text = text.replace(name.as_str(), value);
        }
        let words = shlex::split(&text).unwrap();
        let (mut method, mut url, mut body) = (None, None, None);
        let mut args = words[1..].iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "-s" => {}
                "-X" => method = args.next().cloned(),
                "-H" => {
                    args.next();
                }
                "-d" => body = args.next().cloned(),
                url_arg => url = Some(url_arg.to_owned()),
            }
        }
        let method = method.unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.into());
        let url = url.unwrap_or_else(|| panic!("no URL in {text}"));
        let mut request = app
            .client
            .request(method.parse().unwrap(), url.as_str())
            .header("content-type", "application/json");
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}: {text}"));
        let status = response.status();
        last = response.json().await.unwrap();
        let forced_after_release = text.contains("\"force\": true");
        if forced_after_release {
            assert_eq!(
                (status, last["code"].as_str()),
                (StatusCode::NOT_FOUND, Some("not_locked")),
                "{text}"
            );
        } else {
            assert!(status.is_success(), "{status} {last}: {text}");
        }
        ran += 1;
    }
    assert!(pending.trim().is_empty(), "unfinished: {pending}");
    assert!(ran >= 25, "only {ran} commands");
    app.stop().await;
}
