//! `spawn_app()`: a real LabLink server on port 0 with a manual clock, and
//! small request helpers that return `(status, json)`.

use lablink::clock::ManualClock;
use lablink::config::Settings;
use lablink::domain::Timestamp;
use lablink::server::Server;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub const START: &str = "2026-01-05T09:00:00.000Z";

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub clock: ManualClock,
    /// Absent on a view made by `as_user`.
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// A server on the memory store.
pub async fn spawn_app() -> TestApp {
    spawn_with(memory()).await
}

/// Default settings on the memory store.
pub fn memory() -> Settings {
    Settings {
        store: "memory".into(),
        ..Settings::default()
    }
}

pub async fn spawn_with(settings: Settings) -> TestApp {
    let clock = ManualClock::new(Timestamp::parse_rfc3339(START).unwrap());
    spawn_with_clock(settings, clock).await
}

/// A server on `settings` whose time is `clock` (share it across restarts).
pub async fn spawn_with_clock(mut settings: Settings, clock: ManualClock) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        lablink::telemetry::init(lablink::telemetry::LogFormat::Text);
    }
    settings.bind = "127.0.0.1:0".into();
    let server = Server::build(settings, Arc::new(clock.clone()))
        .await
        .expect("server starts");
    let base = format!("http://{}", server.local_addr());
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    TestApp {
        base,
        client: reqwest::Client::new(),
        clock,
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

/// Settings for a SQLite store in `dir`.
pub fn sqlite_in(dir: &std::path::Path, options: &str) -> Settings {
    Settings {
        store: format!("sqlite://lablink.db{options}"),
        data_dir: dir.to_path_buf(),
        ..Settings::default()
    }
}

async fn parse(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("a body");
    let body =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text:?}"));
    (status, body)
}

impl TestApp {
    /// Shuts the server down gracefully and waits until it has stopped.
    pub async fn stop(self) -> ManualClock {
        if let (Some(shutdown), Some(server)) = (self.shutdown, self.server) {
            let _ = shutdown.send(());
            server.await.unwrap().unwrap();
        }
        self.clock
    }

    /// A view of a server started elsewhere (the real binary) at `base`.
    pub fn at(base: &str) -> TestApp {
        TestApp {
            base: base.to_owned(),
            client: reqwest::Client::new(),
            clock: ManualClock::new(Timestamp::parse_rfc3339(START).unwrap()),
            shutdown: None,
            server: None,
        }
    }

    /// The same server, with every request sent as `Authorization: Bearer token`.
    pub fn as_user(&self, token: &str) -> TestApp {
        let mut headers = reqwest::header::HeaderMap::new();
        let value = format!("Bearer {token}").parse().unwrap();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        TestApp {
            base: self.base.clone(),
            client: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .unwrap(),
            clock: self.clock.clone(),
            shutdown: None,
            server: None,
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        parse(
            self.client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        parse(
            self.client
                .post(format!("{}{path}", self.base))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        parse(request.body(body).send().await.unwrap()).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        parse(
            self.client
                .delete(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub fn advance(&self, seconds: f64) {
        self.clock.advance(Duration::from_secs_f64(seconds));
    }

    /// A new session with the given timeout; returns its id.
    pub async fn session(&self, timeout_seconds: f64) -> String {
        let (status, body) = self
            .post(
                "/api/locks/sessions/create",
                json!({"client_name": "test", "timeout_seconds": timeout_seconds}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["session_id"].as_str().unwrap().to_owned()
    }

    pub async fn acquire(
        &self,
        equipment: &str,
        session: &str,
        extra: Value,
    ) -> (StatusCode, Value) {
        let mut body = json!({"equipment_id": equipment, "session_id": session});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        self.post("/api/locks/acquire", body).await
    }

    pub async fn release(
        &self,
        equipment: &str,
        session: &str,
        force: bool,
    ) -> (StatusCode, Value) {
        self.post(
            "/api/locks/release",
            json!({"equipment_id": equipment, "session_id": session, "force": force}),
        )
        .await
    }

    pub async fn command(
        &self,
        equipment: &str,
        session: Option<&str>,
        action: &str,
        parameters: Value,
    ) -> (StatusCode, Value) {
        let body = json!({
            "command_id": "cmd",
            "equipment_id": equipment,
            "action": action,
            "parameters": parameters,
            "session_id": session,
        });
        self.post(&format!("/api/equipment/{equipment}/command"), body)
            .await
    }

    pub async fn events(&self, equipment: &str) -> Vec<String> {
        let (_, body) = self
            .get(&format!("/api/locks/events/{equipment}?limit=1000"))
            .await;
        event_kinds(&body)
    }
}

/// The `event` names of a history response, in order.
pub fn event_kinds(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts an error response's status and code.
#[track_caller]
pub fn assert_error(response: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(response.0, status, "{}", response.1);
    assert_eq!(response.1["code"], code, "{}", response.1);
    assert!(
        response.1["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{}",
        response.1
    );
}

// ---- the real binary ------------------------------------------------------

/// The `lablink` binary with a clean `LABLINK_*` environment and plain logs.
pub fn lablink() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lablink"));
    cmd.env("NO_COLOR", "1").env("RUST_LOG", "info");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("LABLINK_")) {
        cmd.env_remove(key);
    }
    cmd
}

/// `lablink serve ARGS` started in `dir`, its stderr piped.
pub fn spawn_serve(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Child {
    lablink()
        .envs(env.iter().copied())
        .arg("serve")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Runs `lablink ARGS` in `dir`: whether it succeeded, its stdout, its stderr.
pub fn run_lablink(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = lablink().args(args).current_dir(dir).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts the binary in `dir`, returns it and the address it listens on.
pub fn start_binary(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Child, String, Vec<String>) {
    let mut child = spawn_serve(dir, args, env);
    let mut lines = Vec::new();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "server exited: {lines:?}"
        );
        if let Some(rest) = line.split("addr=").nth(1) {
            lines.push(line.clone());
            break rest.trim().to_owned();
        }
        lines.push(line);
    };
    std::thread::spawn(move || for _ in reader.lines() {});
    (child, addr, lines)
}
