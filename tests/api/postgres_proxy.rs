//! nginx in front of three replicas on one PostgreSQL, configured with
//! `deploy/nginx-replicas.conf` itself (only its upstream addresses and
//! listen port changed): acquires, a `wait_seconds` hand-off and a
//! WebSocket through the proxy, and a replica killed behind it.
//!
//! Skips (saying why) without `LABLINK_TEST_POSTGRES` or without nginx
//! (`LABLINK_TEST_NGINX`, else `nginx` on PATH or in /usr/sbin).

use reqwest::StatusCode;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::helpers::TestApp;
use crate::live::connect;
use crate::postgres_support::{Replicas, next_recorded, session, test_database};

/// The deployment file, as users copy it.
const CONFIG: &str = include_str!("../../deploy/nginx-replicas.conf");

fn nginx_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("LABLINK_TEST_NGINX") {
        return Some(path.into());
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|path| path.is_file())
}

/// `CONFIG` with its upstream servers replaced by `replicas` (host:port)
/// and its `listen 80;` by `listen 127.0.0.1:PORT;`. Fails if the file no
/// longer has the lines this relies on, so the test never runs another
/// configuration than the one shipped.
fn config_for(replicas: &[String], port: u16) -> String {
    let mut upstreams = replicas.iter();
    let mut replaced = 0;
    let lines: Vec<String> = CONFIG
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("server 127.0.0.1:") {
                let rest = trimmed.split_once(' ').unwrap().1;
                let options = rest.split_once(' ').map(|(_, o)| o).unwrap_or(";");
                let addr = upstreams.next().expect("an upstream line per replica");
                replaced += 1;
                format!("    server {addr} {options}")
            } else if trimmed == "listen 80;" {
                replaced += 1;
                format!("    listen 127.0.0.1:{port};")
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert_eq!(
        replaced,
        replicas.len() + 1,
        "deploy/nginx-replicas.conf has one upstream `server 127.0.0.1:...` line per replica and `listen 80;`"
    );
    lines.join("\n")
}

/// An nginx master running in a temporary prefix; stopped when dropped.
struct Nginx {
    binary: PathBuf,
    prefix: tempfile::TempDir,
    base: String,
}

impl Nginx {
    fn start(binary: &Path, replicas: &[String]) -> Nginx {
        let prefix = tempfile::tempdir().unwrap();
        let dir = prefix.path();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(dir.join("lablink.conf"), config_for(replicas, port)).unwrap();
        // The main file around it, as a distribution's nginx.conf would be:
        // everything nginx writes goes in the prefix.
        let d = dir.display();
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nworker_processes 1;\n\
                 events {{ worker_connections 512; }}\n\
                 http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    \
                 proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    \
                 uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n    \
                 include {d}/lablink.conf;\n}}\n"
            ),
        )
        .unwrap();
        // As root, nginx's workers run as an unprivileged user: let them in.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let nginx = Nginx {
            binary: binary.to_owned(),
            base: format!("http://127.0.0.1:{port}"),
            prefix,
        };
        // Daemonized: it returns once its listening socket is open.
        let out = nginx.command(&[]).output().unwrap();
        assert!(
            out.status.success(),
            "nginx did not start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(nginx.prefix.path().join("error.log")).unwrap_or_default()
        );
        nginx
    }

    fn command(&self, args: &[&str]) -> Command {
        let dir = self.prefix.path();
        let mut command = Command::new(&self.binary);
        command
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(args);
        command
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.command(&["-s", "stop"]).output();
    }
}

/// Recorded events until one named `kind` (the subscription may start with
/// the waiter's `session_created`, recorded through another replica just
/// before it subscribed).
async fn recorded_until(ws: &mut crate::live::Ws, kind: &str) {
    loop {
        let event = next_recorded(ws, Duration::from_secs(5)).await;
        if event["event"] == kind {
            return;
        }
        assert_eq!(event["event"], "session_created", "{event}");
    }
}

#[test]
fn the_shipped_config_has_what_the_test_replaces() {
    let config = config_for(
        &[
            "127.0.0.1:1".into(),
            "127.0.0.1:2".into(),
            "127.0.0.1:3".into(),
        ],
        9,
    );
    assert!(
        config.contains("server 127.0.0.1:2 max_fails=1 fail_timeout=5s;"),
        "{config}"
    );
    assert!(config.contains("listen 127.0.0.1:9;"), "{config}");
    assert!(config.contains("proxy_set_header Upgrade $http_upgrade;"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_with_the_shipped_config_serves_locks_waits_and_live_events() {
    let Some(database) = test_database().await else {
        return;
    };
    let Some(binary) = nginx_binary() else {
        println!("skipped: nginx is not installed (.ci/postgres.sh installs Debian's nginx)");
        return;
    };
    let mut replicas = Replicas::start(database.url(), 3, &[]);
    let addresses: Vec<String> = replicas
        .nodes
        .iter()
        .map(|n| n.base.trim_start_matches("http://").to_owned())
        .collect();
    let nginx = Nginx::start(&binary, &addresses);
    let proxy = TestApp::at(&nginx.base);

    // An acquire through the proxy.
    let holder = session(&proxy, "holder").await;
    let (status, body) = proxy.acquire("ps_abc123", &holder, json!({})).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("locked")),
        "{body}"
    );

    // A WebSocket through the proxy hears a change made through it.
    let waiter = session(&proxy, "waiter").await;
    let mut ws = connect(&proxy, json!({"type": "subscribe", "session_id": waiter})).await;
    // A waiting acquire through the proxy is answered at the release.
    let request = proxy.client.post(format!("{}/api/locks/acquire", proxy.base)).json(&json!({
        "equipment_id": "ps_abc123", "session_id": waiter, "queue_if_busy": true, "wait_seconds": 30,
    }));
    let pending = tokio::spawn(async move { request.send().await.unwrap() });
    recorded_until(&mut ws, "queued").await;
    let (status, _) = proxy.release("ps_abc123", &holder, false).await;
    assert_eq!(status, StatusCode::OK);
    let granted = next_recorded(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(granted["event"], "queue_processed", "{granted}");
    let answer = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("the waiting acquire is answered")
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["status"], "locked", "{body}");

    // A replica killed behind the proxy: every request still answered.
    replicas.nodes[0].kill_9();
    for i in 0..6 {
        let (status, body) = proxy
            .post(
                "/api/locks/sessions/create",
                json!({"client_name": format!("after{i}"), "timeout_seconds": 0}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}
