//! PostgreSQL for the black-box tests: a fresh database per test on the
//! cluster `.ci/postgres.sh` starts (`LABLINK_TEST_POSTGRES`), several real
//! `lablink serve` processes on it, the cluster's stop/start control
//! (`LABLINK_TEST_POSTGRES_CTL`), and readers of the whole history.
//!
//! Without `LABLINK_TEST_POSTGRES` every test here says it was skipped and
//! why, so `cargo test` passes on a machine without PostgreSQL.

use futures_util::{SinkExt, StreamExt};
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{TestApp, start_binary};
use crate::live::{Ws, next};

/// A database made for one test, dropped when the test ends.
pub struct TestDatabase {
    admin: String,
    name: String,
    url: String,
}

/// A fresh, empty database for one test; `None` (having said why) when no
/// test cluster is configured.
pub async fn test_database() -> Option<TestDatabase> {
    let Ok(admin) = std::env::var("LABLINK_TEST_POSTGRES") else {
        println!("skipped: LABLINK_TEST_POSTGRES is not set (.ci/postgres.sh sets it)");
        return None;
    };
    let name = format!("lablink_test_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("LABLINK_TEST_POSTGRES={admin}: cannot connect: {e}"));
    let connection = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    drop(client);
    let _ = connection.await;
    let mut url = Url::parse(&admin).expect("LABLINK_TEST_POSTGRES is a postgres:// URL");
    url.set_path(&format!("/{name}"));
    Some(TestDatabase {
        admin,
        name,
        url: url.into(),
    })
}

impl TestDatabase {
    /// The database's URL, for `--store`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // On a thread of its own: this may run inside the test's runtime.
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let Ok((client, connection)) =
                    tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(connection);
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                let _ = client.batch_execute(&sql).await;
            });
        });
        let _ = dropped.join();
    }
}

/// Runs the cluster's control script: `stop immediate`, `start`, ...
pub fn postgres_ctl(args: &[&str]) {
    let ctl = std::env::var("LABLINK_TEST_POSTGRES_CTL")
        .expect("LABLINK_TEST_POSTGRES_CTL names the cluster's control script (.ci/postgres.sh)");
    let out = std::process::Command::new(&ctl)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{ctl} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One `lablink serve` process; killed when dropped.
pub struct Replica {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl Replica {
    /// Starts the real binary on `store` in `dir`, listening on a free port.
    pub fn start(dir: &Path, store: &str, env: &[(&str, &str)]) -> Replica {
        let (child, addr, _) = start_binary(dir, &["--bind", "127.0.0.1:0", "--store", store], env);
        Replica {
            child: Some(child),
            base: format!("http://{addr}"),
        }
    }

    pub fn app(&self) -> TestApp {
        TestApp::at(&self.base)
    }

    /// `kill -9`: no shutdown code runs.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// `n` replicas on one database, started one after the other, in a
/// temporary working directory (no config file: the demo instruments).
pub struct Replicas {
    pub nodes: Vec<Replica>,
    _dir: tempfile::TempDir,
}

impl Replicas {
    pub fn start(store: &str, n: usize, env: &[(&str, &str)]) -> Replicas {
        let dir = tempfile::tempdir().unwrap();
        let nodes = (0..n)
            .map(|_| Replica::start(dir.path(), store, env))
            .collect();
        Replicas { nodes, _dir: dir }
    }

    pub fn apps(&self) -> Vec<TestApp> {
        self.nodes.iter().map(Replica::app).collect()
    }
}

/// Every event in the history (`filter`ed, e.g. `&equipment_id=psu`) after
/// the event numbered `after`, oldest first, paged through `next_cursor`.
pub async fn whole_history(app: &TestApp, filter: &str, after: Option<u64>) -> Vec<Value> {
    let mut events = Vec::new();
    let mut cursor = after;
    loop {
        let cursor_param = cursor.map(|c| format!("&cursor={c}")).unwrap_or_default();
        let (status, page) = app
            .get(&format!(
                "/api/locks/events?limit=1000{filter}{cursor_param}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let batch = page["events"].as_array().unwrap().clone();
        if batch.is_empty() {
            return events;
        }
        cursor = page["next_cursor"].as_u64();
        events.extend(batch);
    }
}

/// The `seq` numbers of `events`, in order.
pub fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

/// The grants of exclusive locks in a history (direct and from the queue),
/// as `(equipment, fencing token, session)` in `seq` order.
pub fn exclusive_grants(events: &[Value]) -> Vec<(String, u64, String)> {
    events
        .iter()
        .filter(|e| {
            matches!(
                e["event"].as_str(),
                Some("lock_acquired" | "queue_processed")
            ) && e["lock_mode"] == "exclusive"
        })
        .map(|e| {
            (
                e["equipment_id"].as_str().unwrap().to_owned(),
                e["fencing_token"].as_u64().unwrap(),
                e["session_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Asserts that no equipment ever had two exclusive holders: in `seq`
/// order, each grant comes after the previous holder's lock ended.
#[track_caller]
pub fn assert_one_holder_at_a_time(events: &[Value]) {
    let mut holding: std::collections::HashMap<&str, u64> = Default::default();
    for e in events.iter().filter(|e| e["lock_mode"] == "exclusive") {
        let (Some(equipment), Some(token)) =
            (e["equipment_id"].as_str(), e["fencing_token"].as_u64())
        else {
            continue;
        };
        match e["event"].as_str().unwrap() {
            "lock_acquired" | "queue_processed" => {
                if let Some(held) = holding.insert(equipment, token) {
                    panic!("{equipment}: granted {token} while {held} was held: {e}");
                }
            }
            "lock_released" | "lock_expired" | "lock_force_released" => {
                assert_eq!(holding.remove(equipment), Some(token), "{e}");
            }
            _ => {}
        }
    }
}

/// Asserts that on every equipment the grants' fencing tokens grow strictly
/// in `seq` order: no token given twice, none going back.
#[track_caller]
pub fn assert_tokens_strictly_grow(grants: &[(String, u64, String)]) {
    let mut last: std::collections::HashMap<&str, u64> = Default::default();
    for (equipment, token, session) in grants {
        if let Some(previous) = last.insert(equipment, *token) {
            assert!(
                *token > previous,
                "{equipment}: token {token} (to {session}) after {previous}: {grants:?}"
            );
        }
    }
}

/// The next history event (one with a `seq`) on `ws`, skipping
/// notifications; fails if none comes within `within`.
pub async fn next_recorded(ws: &mut Ws, within: Duration) -> Value {
    tokio::time::timeout(within, async {
        loop {
            let m = next(ws).await;
            if m["seq"].is_u64() {
                return m;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no recorded event within {within:?}"))
}

/// A session without a timeout, made through `app`.
pub async fn session(app: &TestApp, name: &str) -> String {
    let (status, body) = app
        .post(
            "/api/locks/sessions/create",
            json!({"client_name": name, "timeout_seconds": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["session_id"].as_str().unwrap().to_owned()
}

/// A live subscriber to everything on one replica, as a careful client
/// runs it: from the start of the history (`resume_from: 0`), reconnecting
/// with `resume_from` its last `seq` whenever the socket closes, lags or
/// cannot replay. Collects every `seq` it is sent.
pub struct Follower {
    seqs: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    pub fn start(app: &TestApp) -> Follower {
        let url = format!("{}/api/ws", app.base.replace("http://", "ws://"));
        let seqs = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(follow(url, seqs.clone(), stop.clone()));
        Follower { seqs, stop, task }
    }

    /// Waits (bounded) until it has been sent `last`, then stops; returns
    /// every `seq` it was sent, in order.
    pub async fn until(self, last: u64) -> Vec<u64> {
        let caught_up = tokio::time::timeout(Duration::from_secs(15), async {
            while self.seqs.lock().unwrap().last().is_none_or(|s| *s < last) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
        let seqs = self.seqs.lock().unwrap().clone();
        assert!(
            caught_up.is_ok(),
            "a subscriber never got seq {last}; it got up to {:?}",
            seqs.last()
        );
        seqs
    }
}

async fn follow(url: String, seqs: Arc<Mutex<Vec<u64>>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let last = seqs.lock().unwrap().last().copied().unwrap_or(0);
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await {
            let subscription = json!({"type": "subscribe", "all": true, "resume_from": last});
            if ws
                .send(Message::text(subscription.to_string()))
                .await
                .is_ok()
            {
                // Until the socket ends, lags, or reports an error.
                while let Some(Ok(message)) = ws.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let m: Value = serde_json::from_str(&text).unwrap();
                    if let Some(seq) = m["seq"].as_u64() {
                        seqs.lock().unwrap().push(seq);
                    } else if m["type"] == "lagged" || m["type"] == "error" {
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
