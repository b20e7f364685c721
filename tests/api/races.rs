//! Many clients at once for one instrument.

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use std::collections::BTreeSet;

use crate::helpers::{TestApp, spawn_app, spawn_with, sqlite_in};

const CLIENTS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_winner_without_the_queue() {
    let app = spawn_app().await;
    let sessions = join_all((0..CLIENTS).map(|_| app.session(0.0))).await;
    let results = join_all(
        sessions
            .iter()
            .map(|s| app.acquire("ps_abc123", s, json!({}))),
    )
    .await;
    let winners = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .count();
    let conflicts = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::CONFLICT)
        .count();
    assert_eq!((winners, conflicts), (1, CLIENTS - 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_winner_and_a_gapless_queue() {
    one_winner_and_a_gapless_queue_on(spawn_app().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_winner_and_a_gapless_queue_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_with(sqlite_in(dir.path(), "?synchronous=normal")).await;
    one_winner_and_a_gapless_queue_on(app).await;
}

async fn one_winner_and_a_gapless_queue_on(app: TestApp) {
    let sessions = join_all((0..CLIENTS).map(|_| app.session(0.0))).await;
    let results = join_all(
        sessions
            .iter()
            .map(|s| app.acquire("ps_abc123", s, json!({"queue_if_busy": true}))),
    )
    .await;
    let locked: Vec<_> = results
        .iter()
        .filter(|(_, b)| b["status"] == "locked")
        .collect();
    assert_eq!(locked.len(), 1);
    let positions: BTreeSet<u64> = results
        .iter()
        .filter(|(_, b)| b["status"] == "queued")
        .map(|(_, b)| b["queue_entry"]["position"].as_u64().unwrap())
        .collect();
    assert_eq!(
        positions,
        (1..CLIENTS as u64).collect(),
        "positions 1..n, none lost or doubled"
    );

    // Everybody releases (holder or waiter) at once: each gets exactly one
    // answer, and the instrument ends up free with an empty queue.
    let mut holders = BTreeSet::new();
    for _ in 0..CLIENTS {
        let (_, status) = app.get("/api/locks/status/ps_abc123").await;
        let Some(holder) = status["session_id"].as_str() else {
            break;
        };
        assert!(holders.insert(holder.to_owned()), "each session holds once");
        let (code, _) = app.release("ps_abc123", holder, false).await;
        assert_eq!(code, StatusCode::OK);
    }
    assert_eq!(
        holders.len(),
        CLIENTS,
        "every waiter got its turn, in order"
    );
    let (_, queue) = app.get("/api/locks/queue/ps_abc123").await;
    assert_eq!(queue["queue_length"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_and_releases_never_fail_oddly() {
    let app = spawn_app().await;
    let sessions = join_all((0..CLIENTS).map(|_| app.session(0.0))).await;
    for s in &sessions {
        app.acquire("load_1", s, json!({"queue_if_busy": true}))
            .await;
    }
    let work = sessions.iter().enumerate().map(|(i, s)| {
        let app = &app;
        async move {
            if i % 2 == 0 {
                app.release("load_1", s, false).await.0
            } else {
                app.command("load_1", Some(s), "get_measurement", json!({}))
                    .await
                    .0
            }
        }
    });
    for status in join_all(work).await {
        assert!(
            matches!(status, StatusCode::OK | StatusCode::FORBIDDEN),
            "{status}"
        );
    }
    let (_, all) = app.get("/api/locks/all").await;
    let queue_len = all["queues"]["load_1"].as_array().map_or(0, Vec::len);
    let held = usize::from(all["exclusive_locks"]["load_1"].is_object());
    assert_eq!(
        held + queue_len,
        CLIENTS / 2,
        "the odd half still hold or wait, in one piece"
    );
}
