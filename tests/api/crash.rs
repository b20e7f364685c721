//! Crash tests with the real binary on SQLite: acknowledged work, `kill -9`,
//! restart, and every acknowledged change is there.

use futures_util::future::join_all;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::helpers::start_binary;

const INSTRUMENTS: usize = 8;

fn lab_config(dir: &Path) {
    let mut text = String::new();
    for i in 0..INSTRUMENTS {
        text.push_str(&format!(
            "[[equipment]]\nid = 'psu{i}'\ndriver = 'sim-psu'\n\n"
        ));
    }
    std::fs::write(dir.join("lab.toml"), text).unwrap();
}

fn serve(dir: &Path) -> (std::process::Child, String) {
    let (child, addr, _) =
        start_binary(dir, &["--bind", "127.0.0.1:0", "--config", "lab.toml"], &[]);
    (child, format!("http://{addr}/api"))
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> Result<Value, reqwest::Error> {
    client
        .post(url)
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

async fn get(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

fn kill_9(child: &mut std::process::Child) {
    child.kill().unwrap(); // SIGKILL on Unix: no shutdown code runs
    child.wait().unwrap();
}

#[tokio::test]
async fn acknowledged_changes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    lab_config(dir.path());
    let (mut child, api) = serve(dir.path());
    let client = reqwest::Client::new();
    let mut sessions = Vec::new();
    for i in 0..5 {
        let s = post(
            &client,
            format!("{api}/locks/sessions/create"),
            json!({"client_name": format!("pc{i}"), "timeout_seconds": 0, "metadata": {"run": i}}),
        )
        .await
        .unwrap();
        sessions.push(s["session_id"].as_str().unwrap().to_owned());
    }
    let acquire = |api: &str, s: &str, eq: &str, extra: Value| {
        let mut body = json!({"equipment_id": eq, "session_id": s, "timeout_seconds": 0});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        post(&client, format!("{api}/locks/acquire"), body)
    };
    acquire(&api, &sessions[0], "psu0", json!({}))
        .await
        .unwrap();
    for s in &sessions[1..4] {
        acquire(&api, s, "psu0", json!({"queue_if_busy": true}))
            .await
            .unwrap();
    }
    acquire(&api, &sessions[4], "psu1", json!({"lock_mode": "observer"}))
        .await
        .unwrap();
    acquire(&api, &sessions[1], "psu2", json!({}))
        .await
        .unwrap();
    post(
        &client,
        format!("{api}/locks/release"),
        json!({"equipment_id": "psu2", "session_id": sessions[1]}),
    )
    .await
    .unwrap();
    acquire(&api, &sessions[2], "psu2", json!({}))
        .await
        .unwrap();
    let before = (
        get(&client, format!("{api}/locks/all")).await,
        get(&client, format!("{api}/locks/events?limit=1000")).await,
    );

    kill_9(&mut child);
    let (mut child, api) = serve(dir.path());
    let after = (
        get(&client, format!("{api}/locks/all")).await,
        get(&client, format!("{api}/locks/events?limit=1000")).await,
    );
    assert_eq!(after.0, before.0, "locks, observers and queues, in order");
    assert_eq!(after.1["events"], before.1["events"], "the whole history");
    for (i, s) in sessions.iter().enumerate() {
        let session = get(&client, format!("{api}/locks/sessions/{s}")).await;
        assert_eq!(session["metadata"], json!({"run": i}), "{session}");
    }
    let psu2 = get(&client, format!("{api}/locks/status/psu2")).await;
    assert_eq!(psu2["fencing_token"], 2);
    // The fencing counter keeps growing after the crash.
    post(
        &client,
        format!("{api}/locks/release"),
        json!({"equipment_id": "psu2", "session_id": sessions[2]}),
    )
    .await
    .unwrap();
    let again = acquire(&api, &sessions[3], "psu2", json!({}))
        .await
        .unwrap();
    assert_eq!(again["lock"]["fencing_token"], 3);
    kill_9(&mut child);
}

/// What one client last saw acknowledged, and what it had sent when the
/// server died.
#[derive(Debug, Default)]
struct Ledger {
    session: String,
    /// Some(token) after an acknowledged acquire, None after a release.
    held: Option<u64>,
    max_token: u64,
    in_flight: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_kill_9_under_concurrent_load() {
    let dir = tempfile::tempdir().unwrap();
    lab_config(dir.path());
    let (mut child, api) = serve(dir.path());
    let client = reqwest::Client::new();
    let acked = Arc::new(AtomicUsize::new(0));
    let clients = (0..INSTRUMENTS).map(|i| {
        let (client, api, acked) = (client.clone(), api.clone(), acked.clone());
        tokio::spawn(async move {
            let mut ledger = Ledger::default();
            let created = post(&client, format!("{api}/locks/sessions/create"), json!({"timeout_seconds": 0})).await;
            let Ok(created) = created else { return ledger };
            ledger.session = created["session_id"].as_str().unwrap().to_owned();
            let equipment = format!("psu{i}");
            // Bounded: the test kills the server long before this ends.
            for _ in 0..100_000 {
                ledger.in_flight = true;
                let result = if ledger.held.is_none() {
                    post(&client, format!("{api}/locks/acquire"), json!({"equipment_id": equipment, "session_id": ledger.session, "timeout_seconds": 0}))
                        .await
                        .map(|r| Some(r["lock"]["fencing_token"].as_u64().unwrap()))
                } else {
                    post(&client, format!("{api}/locks/release"), json!({"equipment_id": equipment, "session_id": ledger.session}))
                        .await
                        .map(|_| None)
                };
                match result {
                    Ok(held) => {
                        ledger.in_flight = false;
                        ledger.held = held;
                        ledger.max_token = ledger.max_token.max(held.unwrap_or(0));
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => break,
                }
            }
            ledger
        })
    });
    let clients: Vec<_> = clients.collect();
    // Kill once enough work is acknowledged (counted, not timed).
    while acked.load(Ordering::SeqCst) < 400 {
        tokio::task::yield_now().await;
        assert!(
            !clients.iter().all(|c| c.is_finished()),
            "the clients stopped early"
        );
    }
    kill_9(&mut child);
    let ledgers: Vec<Ledger> = join_all(clients)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    let (mut child, api) = serve(dir.path());
    for (i, ledger) in ledgers.iter().enumerate() {
        if ledger.session.is_empty() {
            continue;
        }
        let session = client
            .get(format!("{api}/locks/sessions/{}", ledger.session))
            .send()
            .await
            .unwrap();
        assert!(
            session.status().is_success(),
            "session {i} was acknowledged"
        );
        let status = get(&client, format!("{api}/locks/status/psu{i}")).await;
        let token = status["fencing_token"].as_u64();
        let holder = status["session_id"].as_str();
        if ledger.in_flight {
            // The last request may or may not have committed; either way the
            // state is one of the two, never something else.
            let unchanged = match ledger.held {
                Some(t) => holder == Some(ledger.session.as_str()) && token == Some(t),
                None => holder.is_none(),
            };
            let applied = match ledger.held {
                Some(_) => holder.is_none(),
                None => holder == Some(ledger.session.as_str()) && token > Some(ledger.max_token),
            };
            assert!(unchanged || applied, "client {i}: {ledger:?} vs {status}");
        } else {
            match ledger.held {
                Some(t) => assert_eq!(
                    (holder, token),
                    (Some(ledger.session.as_str()), Some(t)),
                    "client {i}"
                ),
                None => assert!(holder.is_none(), "client {i}: {status}"),
            }
        }
        let events = get(
            &client,
            format!("{api}/locks/events?equipment_id=psu{i}&event=lock_acquired&limit=1000"),
        )
        .await;
        let recorded = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["fencing_token"].as_u64())
            .max()
            .unwrap_or(0);
        assert!(
            recorded >= ledger.max_token,
            "client {i}: every acknowledged grant is in the history"
        );
    }
    kill_9(&mut child);
}
