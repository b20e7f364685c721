use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn framework_rejections_use_our_error_format() {
    let app = spawn_app().await;
    assert_error(
        &app.post_raw("/api/locks/acquire", "{not json").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_json",
    );
    assert_error(
        &app.post_raw("/api/locks/acquire", "[1,2]").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    assert_error(
        &app.post(
            "/api/locks/acquire",
            json!({"equipment_id": 5, "session_id": "x"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    assert_error(
        &app.post("/api/locks/acquire", json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    assert_error(
        &app.get("/api/nothing/here").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // `/` is the dashboard; any other unknown path is a JSON 404.
    assert_error(
        &app.get("/no-such-page").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let wrong_method = app
        .client
        .put(format!("{}/api/locks/all", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: serde_json::Value = wrong_method.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");
    let huge = format!("{{\"client_name\": \"{}\"}}", "a".repeat(1 << 20));
    assert_error(
        &app.post_raw("/api/locks/sessions/create", huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    );
    assert_error(
        &app.post_raw("/api/locks/acquire", vec![0xff, 0xfe, 0x00])
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_json",
    );
    // A lone surrogate is explained, not just "end of hex escape".
    let lone = app
        .post_raw(
            "/api/locks/sessions/create",
            r#"{"client_name": "a\ud800b"}"#,
        )
        .await;
    assert_error(&lone, StatusCode::UNPROCESSABLE_ENTITY, "invalid_json");
    assert!(
        lone.1["detail"]
            .as_str()
            .unwrap()
            .contains("lone surrogate"),
        "{}",
        lone.1
    );
}

/// Every route, the probes', the metrics' and the document's included,
/// answers a method it does not take with the JSON error and its `allow`.
#[tokio::test]
async fn every_route_answers_a_wrong_method_with_the_json_error() {
    let app = spawn_app().await;
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/version",
        "/openapi.json",
        "/api/locks/all",
        "/api/whoami",
        "/",
    ] {
        for method in ["DELETE", "FOO"] {
            let response = app
                .client
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{}{path}", app.base),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            let allow = response.headers()["allow"].to_str().unwrap().to_owned();
            assert!(allow.contains("GET"), "{method} {path}: allow {allow}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["code"], "method_not_allowed", "{method} {path}");
            assert!(body["detail"].as_str().unwrap().contains("method"));
        }
    }
}

#[tokio::test]
async fn odd_ids_and_values_never_give_a_5xx() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    let odd_ids = [
        "",
        " ",
        "a b",
        "%00",
        "\u{202e}",
        &"x".repeat(5000),
        "../../etc/passwd",
        "💥",
    ];
    for id in odd_ids {
        for response in [
            app.acquire(id, &s, json!({})).await,
            app.acquire("ps_abc123", id, json!({})).await,
            app.release(id, id, true).await,
            app.post(
                "/api/locks/sessions/create",
                json!({"client_name": id, "metadata": {id: id}}),
            )
            .await,
        ] {
            assert!(
                response.0.is_client_error() || response.0.is_success(),
                "{id:?}: {}",
                response.1
            );
        }
        let encoded: String = id.bytes().map(|b| format!("%{b:02X}")).collect();
        for path in [
            format!("/api/locks/status/{encoded}"),
            format!("/api/locks/sessions/{encoded}"),
            format!("/api/equipment/{encoded}/status"),
        ] {
            let response = app
                .client
                .get(format!("{}{path}", app.base))
                .send()
                .await
                .unwrap();
            // A well-formed odd id may name a session an acquire above
            // opened implicitly (semantics.md, Sessions 6): then it is found.
            let opened = path.starts_with("/api/locks/sessions/")
                && lablink::domain::SessionId::parse(id).is_ok();
            assert!(
                response.status().is_client_error() || opened,
                "{path}: {}",
                response.status()
            );
        }
    }
    for timeout in [
        json!(1e300),
        json!(-0.0),
        json!(1e-9),
        json!(null),
        json!(true),
        json!([1]),
    ] {
        let response = app
            .acquire("load_1", &s, json!({"timeout_seconds": timeout}))
            .await;
        assert!(!response.0.is_server_error(), "{timeout}: {}", response.1);
    }
    let response = app
        .post("/api/equipment/ps_abc123/command", json!({"action": "set_voltage", "parameters": {"voltage": 1e308}, "session_id": s, "fencing_token": u64::MAX}))
        .await;
    assert!(response.0.is_client_error(), "{}", response.1);
    let response = app
        .post(
            "/api/equipment/ps_abc123/command",
            json!({"action": "get_status", "fencing_token": -1}),
        )
        .await;
    assert_eq!(response.0, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn the_api_describes_itself_offline() {
    let app = spawn_app().await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/locks/sessions/create",
        "/api/locks/sessions/{session_id}",
        "/api/locks/sessions/{session_id}/events",
        "/api/locks/acquire",
        "/api/locks/release",
        "/api/locks/all",
        "/api/locks/cleanup",
        "/api/equipment/{equipment_id}/command",
    ] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    let page = app
        .client
        .get(format!("{}/docs/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"));
    assert!(!html.contains("https://"), "no CDN: the docs work offline");
    let script = app
        .client
        .get(format!("{}/docs/swagger-ui-bundle.js", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
}

/// The CommandResponse fields every command error carries, beside `code`.
fn assert_command_failure(
    response: &(StatusCode, serde_json::Value),
    status: StatusCode,
    code: &str,
) {
    assert_error(response, status, code);
    let body = &response.1;
    assert_eq!(body["success"], false, "{body}");
    assert!(body["data"].is_null(), "{body}");
    assert_eq!(body["error"], body["detail"], "{body}");
    assert!(body["timestamp"].is_string(), "{body}");
    assert!(body.get("command_id").is_some(), "{body}");
}

#[tokio::test]
async fn every_error_is_json_the_websocket_endpoint_and_command_bodies_included() {
    let app = spawn_app().await;
    // A plain GET to the WebSocket endpoint.
    assert_error(
        &app.get("/api/ws").await,
        StatusCode::BAD_REQUEST,
        "websocket_required",
    );
    // A command body that cannot be read still answers as a command.
    let command = "/api/equipment/ps_abc123/command";
    let response = app
        .post(command, json!({"command_id": "c7", "action": 5}))
        .await;
    assert_command_failure(&response, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    assert_eq!(response.1["command_id"], "c7", "the command_id is echoed");
    assert_command_failure(
        &app.post_raw(command, "{\"action\": ").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_json",
    );
    let huge = format!("{{\"action\": \"{}\"}}", "a".repeat(1 << 20));
    assert_command_failure(
        &app.post_raw(command, huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    );
}

#[tokio::test]
async fn a_command_refused_by_authentication_has_the_command_fields() {
    let dir = tempfile::tempdir().unwrap();
    let app = crate::helpers::spawn_with(lablink::config::Settings {
        auth: Some(lablink::auth::AuthMode::Required),
        ..crate::helpers::sqlite_in(dir.path(), "?synchronous=normal")
    })
    .await;
    let response = app
        .post(
            "/api/equipment/ps_abc123/command",
            json!({"action": "get_status"}),
        )
        .await;
    assert_command_failure(&response, StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn a_url_too_long_for_http_still_gets_a_json_error() {
    let app = spawn_app().await;
    // hyper refuses it before any handler runs (and HTTP clients will not
    // even send it), so it is written by hand.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let request = format!(
        "GET /api/locks/status/{} HTTP/1.1\r\nhost: lablink\r\n\r\n",
        "a".repeat(100_000)
    );
    // The server may answer and close before reading it all.
    let _ = tcp.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 414 "), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["code"], "uri_too_long");
    // The server goes on serving.
    assert_eq!(app.get("/api/locks/all").await.0, StatusCode::OK);
}

#[tokio::test]
async fn only_json_whitespace_makes_an_empty_body() {
    let app = spawn_app().await;
    assert_eq!(
        app.post_raw("/api/locks/sessions/create", " \t\r\n")
            .await
            .0,
        StatusCode::OK
    );
    // A form feed is whitespace to ASCII but not to JSON.
    assert_error(
        &app.post_raw("/api/locks/sessions/create", "\u{c}").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_json",
    );
}

#[tokio::test]
async fn id_limits_count_characters() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    // 128 two-byte characters: within the limit, so simply unknown.
    let wide = "é".repeat(128);
    assert_error(
        &app.acquire(&wide, &s, json!({})).await,
        StatusCode::NOT_FOUND,
        "equipment_not_found",
    );
    let (status, body) = app.acquire(&"é".repeat(129), &s, json!({})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_id"))
    );
    assert!(
        body["detail"].as_str().unwrap().contains("128 characters"),
        "{body}"
    );
}

#[tokio::test]
async fn error_texts_name_the_field_and_never_show_internals() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    let cases = [
        (
            app.post(
                "/api/equipment/ps_abc123/command",
                json!({"action": "get_status", "equipment_id": "load_1"}),
            )
            .await,
            "equipment_mismatch",
            "`equipment_id` \"load_1\" in the body does not match \"ps_abc123\" in the path",
        ),
        (
            app.get("/api/locks/events?limit=abc").await,
            "invalid_parameter",
            "`limit` must be a whole number from 1 to 1000, got \"abc\"",
        ),
        (
            app.get("/api/locks/events/ps_abc123?limit=abc").await,
            "invalid_parameter",
            "`limit` must be a whole number from 1 to 1000, got \"abc\"",
        ),
        (
            app.get("/api/locks/events?cursor=-1").await,
            "invalid_parameter",
            "`cursor` must be a whole number from 0 to 9223372036854775807 (the `next_cursor` of a previous page), got \"-1\"",
        ),
        (
            app.post(
                "/api/locks/acquire",
                json!({"equipment_id": 5, "session_id": s}),
            )
            .await,
            "invalid_body",
            "`equipment_id` must be a string, got 5",
        ),
        (
            app.post("/api/locks/acquire", json!({"equipment_id": "ps_abc123"}))
                .await,
            "invalid_body",
            "`session_id` is required",
        ),
        (
            app.post(
                "/api/locks/acquire",
                json!({"equipment_id": "ps_abc123", "session_id": s, "lock_mode": 5}),
            )
            .await,
            "invalid_body",
            "`lock_mode` must be a string, got 5",
        ),
        (
            app.post(
                "/api/locks/acquire",
                json!({"equipment_id": "ps_abc123", "session_id": s, "lock_mode": "solo"}),
            )
            .await,
            "invalid_body",
            "`lock_mode` must be one of \"exclusive\", \"observer\", got \"solo\"",
        ),
        (
            app.post(
                "/api/equipment/ps_abc123/command",
                json!({"action": "get_status", "fencing_token": -1}),
            )
            .await,
            "invalid_body",
            "`fencing_token` must be a whole number (0 or more), got -1",
        ),
        (
            app.post_raw("/api/locks/acquire", "[\"ps_abc123\", \"s\"]")
                .await,
            "invalid_body",
            "the request body must be a JSON object, got an array",
        ),
    ];
    for ((status, body), code, detail) in cases {
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(
            (body["code"].as_str(), body["detail"].as_str()),
            (Some(code), Some(detail))
        );
    }
    // A huge id is not echoed back whole.
    let (status, body) = app
        .get(&format!("/api/locks/status/{}", "x".repeat(5000)))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["detail"].as_str().unwrap().len() < 200, "{body}");
}

#[tokio::test]
async fn a_number_just_past_a_limit_is_past_it() {
    let app = spawn_app().await;
    // The nearest double above 1e9: read exactly, it is out of range.
    let response = app
        .post_raw(
            "/api/locks/sessions/create",
            "{\"timeout_seconds\": 1000000000.0000001}",
        )
        .await;
    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_timeout",
    );
}

#[tokio::test]
async fn websocket_message_errors_speak_the_clients_terms() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let app = spawn_app().await;
    let url = format!("{}/api/ws", app.base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let cases = [
        (
            json!({"type": "subscribe", "resume_from": "x"}),
            "`resume_from` must be a whole number (0 or more), got \"x\"",
        ),
        (
            json!({"type": "dance"}),
            "`type` must be one of \"subscribe\", got \"dance\"",
        ),
        (
            json!(["subscribe"]),
            "the message must be a JSON object, got an array",
        ),
    ];
    for (message, detail) in cases {
        ws.send(Message::text(message.to_string())).await.unwrap();
        let answer = loop {
            let frame = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
                .await
                .expect("an answer within 10 s")
                .unwrap()
                .unwrap();
            if let Message::Text(text) = frame {
                break serde_json::from_str::<serde_json::Value>(&text).unwrap();
            }
        };
        assert_eq!(answer["code"], "invalid_message", "{answer}");
        let text = answer["detail"].as_str().unwrap();
        assert!(text.starts_with(detail), "{text}");
    }
}

#[tokio::test]
async fn codes_follow_the_readme_table() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    // Out of range and unreadable alike: the parameter is invalid.
    for path in [
        "/api/locks/events?limit=0",
        "/api/locks/events?limit=abc",
        "/api/locks/events?limit=1001",
    ] {
        assert_error(
            &app.get(path).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        );
    }
    assert_error(
        &app.get(&format!("/api/locks/sessions/{s}/events?limit=0"))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_parameter",
    );
    assert_error(
        &app.acquire("ps_abc123", &s, json!({"wait_seconds": 3601}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_parameter",
    );
    assert_error(
        &app.get("/api/locks/events?event=lock_granted").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_parameter",
    );
    let (status, body) = app
        .post(
            "/api/equipment/ps_abc123/command",
            json!({"action": "\u{202e}"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("unknown action \"\u{202e}\" for ps_abc123"),
        "JSON quoting, not Rust's: {body}"
    );
    assert_error(
        &app.get("/api/locks/events?since=yesterday").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_timestamp",
    );
}

/// Every `(status, code)` the source can answer with, found where codes are
/// written: `StatusCode::X, "code"` pairs (the mapping in `api/error.rs`
/// and every `ApiError::new`), `unprocessable("code"` (422) and WebSocket
/// `"code": "x"` messages (status 0 here).
fn codes_in_source() -> Vec<(u16, String)> {
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let status = |name: &str| -> u16 {
        match name {
            "BAD_REQUEST" => 400,
            "UNAUTHORIZED" => 401,
            "FORBIDDEN" => 403,
            "NOT_FOUND" => 404,
            "METHOD_NOT_ALLOWED" => 405,
            "CONFLICT" => 409,
            "PAYLOAD_TOO_LARGE" => 413,
            "URI_TOO_LONG" => 414,
            "UNPROCESSABLE_ENTITY" => 422,
            "REQUEST_HEADER_FIELDS_TOO_LARGE" => 431,
            "INTERNAL_SERVER_ERROR" => 500,
            "BAD_GATEWAY" => 502,
            "SERVICE_UNAVAILABLE" => 503,
            "GATEWAY_TIMEOUT" => 504,
            other => panic!("add StatusCode::{other} to this test's table"),
        }
    };
    let literal = |rest: &str| -> Option<String> {
        let rest = rest.strip_prefix('"')?;
        let code: String = rest.chars().take_while(|c| *c != '"').collect();
        (!code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .then_some(code)
    };
    let mut sources = Vec::new();
    files(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut sources,
    );
    let mut found = Vec::new();
    for path in sources {
        let text = std::fs::read_to_string(&path).unwrap();
        // Without whitespace, so line breaks made by rustfmt do not matter.
        let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        for (i, _) in text.match_indices("StatusCode::") {
            let rest = &text[i + "StatusCode::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            if let Some(code) = rest[name.len()..].strip_prefix(',').and_then(literal) {
                found.push((status(&name), code));
            }
        }
        for (i, _) in text.match_indices("unprocessable(") {
            if let Some(code) = literal(&text[i + "unprocessable(".len()..]) {
                found.push((422, code));
            }
        }
        for (i, _) in text.match_indices("\"code\":") {
            if let Some(code) = literal(&text[i + "\"code\":".len()..]) {
                found.push((0, code));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn every_code_the_server_can_answer_is_in_the_readme_table() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### Errors")
        .nth(1)
        .expect("README has an Errors section");
    // Rows `| 404 | `a` (why), `b` |`: the codes are the backticked words
    // outside parentheses; the first cell may list several statuses
    // (`502/503/504`) or be `WebSocket` (status 0 here).
    let mut table: Vec<(Vec<u16>, String)> = Vec::new();
    for line in section.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 3 {
            continue;
        }
        let statuses: Vec<u16> = if cells[1].starts_with("WebSocket") {
            vec![0]
        } else {
            cells[1].split('/').filter_map(|s| s.parse().ok()).collect()
        };
        let mut depth = 0;
        let outside: String = cells[2]
            .chars()
            .filter(|c| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => return depth == 0,
                }
                false
            })
            .collect();
        for code in outside.split('`').skip(1).step_by(2) {
            table.push((statuses.clone(), code.to_owned()));
        }
    }
    let source = codes_in_source();
    for known in [
        (422, "invalid_parameter"),
        (409, "equipment_locked"),
        (0, "invalid_message"),
    ] {
        assert!(
            source.contains(&(known.0, known.1.to_owned())),
            "the scan misses {known:?}: it must see every code"
        );
    }
    // Whether the table lists `code` in a row that has `status`.
    let listed = |status: u16, code: &str| {
        table
            .iter()
            .any(|(statuses, c)| c == code && statuses.contains(&status))
    };
    let missing: Vec<_> = source.iter().filter(|(s, c)| !listed(*s, c)).collect();
    assert!(
        missing.is_empty(),
        "codes the server answers with but README's error table does not list (status, code; 0 = WebSocket): {missing:?}"
    );
    let stale: Vec<_> = table
        .iter()
        .filter(|(statuses, code)| {
            !source
                .iter()
                .any(|(s, c)| c == code && statuses.contains(s))
        })
        .collect();
    assert!(
        stale.is_empty(),
        "codes README's error table lists that the server never answers with: {stale:?}"
    );
}

#[tokio::test]
async fn the_api_document_declares_what_the_api_does() {
    let app = spawn_app().await;
    let (_, doc) = app.get("/openapi.json").await;
    let mut operation_ids = std::collections::HashSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let in_path: Vec<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            assert!(operation_ids.insert(id.to_owned()), "{id} twice");
            for (status, response) in op["responses"].as_object().unwrap() {
                assert!(
                    response["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty()),
                    "{method} {path} {status}: no description"
                );
            }
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            for p in &params {
                let name = p["name"].as_str().unwrap();
                let expected = if in_path.contains(&name) {
                    "path"
                } else {
                    "query"
                };
                assert_eq!(p["in"], expected, "{method} {path} {name}");
            }
            for name in &in_path {
                assert!(
                    params.iter().any(|p| p["name"] == *name),
                    "{method} {path}: {name} not declared"
                );
            }
            let error_schema = if id == "run_command" {
                "CommandResponse"
            } else {
                "ErrorBody"
            };
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        format!("#/components/schemas/{error_schema}"),
                        "{method} {path} {status}"
                    );
                }
            }
            // The version is open like the probes (tests/api/ops.rs).
            if path.starts_with("/api/") && path != "/api/version" {
                for status in ["401", "405"] {
                    assert!(
                        op["responses"].get(status).is_some(),
                        "{method} {path}: {status}"
                    );
                }
            }
            if op.get("requestBody").is_some() {
                for status in ["413", "422"] {
                    assert!(
                        op["responses"].get(status).is_some(),
                        "{method} {path}: {status}"
                    );
                }
            }
        }
    }
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    let command = op("/api/equipment/{equipment_id}/command", "post");
    for status in ["502", "503", "504"] {
        assert!(
            command["responses"].get(status).is_some(),
            "command {status}"
        );
    }
    let ws = op("/api/ws", "get");
    assert!(ws["responses"].get("400").is_some());
    assert_eq!(ws["parameters"][0]["name"], "access_token");
    assert_eq!(ws["parameters"][0]["in"], "query");
    let schemas = &doc["components"]["schemas"];
    assert!(
        schemas["CommandResponse"]["properties"]["data"]["type"]
            .as_array()
            .unwrap()
            .contains(&json!("null"))
    );
    assert!(
        schemas["ParamValue"].get("anyOf").is_some(),
        "{}",
        schemas["ParamValue"]
    );
    assert_eq!(schemas["Id"]["maxLength"], 128);
    // An acquire names what it wants in one of three ways (a lock group
    // or pool, or one instrument): `allOf` the fields and `anyOf` those.
    let acquire = &schemas["AcquireBody"]["allOf"];
    assert_eq!(acquire[0]["properties"]["wait_seconds"]["maximum"], 3600);
    let needs: Vec<&Value> = acquire[1]["anyOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|one| &one["required"][0])
        .collect();
    assert_eq!(
        needs,
        [
            &json!("equipment_id"),
            &json!("equipment_ids"),
            &json!("any_of")
        ]
    );
    // A release names a group by its id or by instruments: exactly one.
    let release = &schemas["ReleaseBody"]["allOf"][1]["oneOf"];
    let ways: Vec<Vec<&Value>> = release
        .as_array()
        .unwrap()
        .iter()
        .map(|way| {
            let fields = way["anyOf"].as_array().unwrap();
            fields.iter().map(|one| &one["required"][0]).collect()
        })
        .collect();
    assert_eq!(
        ways,
        [
            vec![&json!("group_id")],
            vec![&json!("equipment_id"), &json!("equipment_ids")]
        ]
    );
    let history = op("/api/locks/events", "get");
    let param = |name: &str| {
        history["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        (
            param("limit")["schema"]["minimum"].clone(),
            param("limit")["schema"]["maximum"].clone()
        ),
        (json!(1), json!(1000))
    );
    let accepted: Vec<&str> = lablink::domain::EventKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(schemas["HistoryEventKind"]["enum"], json!(accepted));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // Swagger UI asks no other host to validate the document.
    let init = app
        .client
        .get(format!("{}/docs/swagger-initializer.js", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");
}
