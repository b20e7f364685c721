//! Live events over the WebSocket, and acquire's `wait_seconds`.

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{TestApp, spawn_app, spawn_with, sqlite_in};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(app: &TestApp, subscribe: Value) -> Ws {
    let url = format!("{}/api/ws", app.base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text(subscribe.to_string())).await.unwrap();
    let ack = next(&mut ws).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    ws
}

/// The next message (bounded, so a missing event fails instead of hanging).
pub async fn next(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket is open")
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Messages until one whose `event` is `kind`; returns it.
pub async fn until(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let m = next(ws).await;
        if m["event"] == kind {
            return m;
        }
    }
}

/// The `event` names of the next `n` messages.
async fn kinds(ws: &mut Ws, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(next(ws).await["event"].as_str().unwrap_or("?").to_owned());
    }
    out
}

#[tokio::test]
async fn subscriptions_filter_and_can_change_on_the_open_socket() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    let mut ws = connect(
        &app,
        json!({"type": "subscribe", "equipment_ids": ["scope_123"]}),
    )
    .await;
    app.acquire("ps_abc123", &s, json!({})).await;
    app.acquire("scope_123", &s, json!({})).await;
    let m = next(&mut ws).await;
    assert_eq!(
        (m["event"].as_str(), m["equipment_id"].as_str()),
        (Some("lock_acquired"), Some("scope_123")),
        "ps_abc123 filtered out"
    );
    assert!(
        m["seq"].as_u64().is_some(),
        "events carry their history seq"
    );
    let (_, history) = app.get("/api/locks/events/scope_123").await;
    assert_eq!(m, history["events"][0], "the same JSON as the history");

    ws.send(Message::text(
        json!({"type": "subscribe", "session_id": s}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    app.release("load_1", "admin", true).await; // fails: nothing to release, no event
    app.release("ps_abc123", &s, false).await;
    let m = next(&mut ws).await;
    assert_eq!(
        (m["event"].as_str(), m["equipment_id"].as_str()),
        (Some("lock_released"), Some("ps_abc123"))
    );

    ws.send(Message::text("{\"type\": \"dance\"}"))
        .await
        .unwrap();
    let error = next(&mut ws).await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("invalid_message"))
    );
}

#[tokio::test]
async fn waiters_hear_their_position_the_grant_and_holders_the_warning_and_the_loss() {
    let app = spawn_app().await;
    let (holder, w1, w2) = (
        app.session(0.0).await,
        app.session(0.0).await,
        app.session(0.0).await,
    );
    app.acquire("ps_abc123", &holder, json!({"timeout_seconds": 100}))
        .await;
    let mut holder_ws = connect(&app, json!({"type": "subscribe", "session_id": holder})).await;
    let mut w2_ws = connect(&app, json!({"type": "subscribe", "session_id": w2})).await;
    app.acquire(
        "ps_abc123",
        &w1,
        json!({"queue_if_busy": true, "timeout_seconds": 100}),
    )
    .await;
    app.acquire(
        "ps_abc123",
        &w2,
        json!({"queue_if_busy": true, "timeout_seconds": 100}),
    )
    .await;
    // A notification may arrive before the history event it comes from.
    let mut first = kinds(&mut w2_ws, 2).await;
    first.sort();
    assert_eq!(first, ["queue_position", "queued"]);

    app.release("ps_abc123", &w1, false).await;
    let moved = until(&mut w2_ws, "queue_position").await;
    assert_eq!(moved["position"], 1);

    // 30 s (LABLINK_EXPIRY_WARNING_SEC) before the holder's deadline.
    app.advance(69.0);
    app.advance(1.0);
    let warning = until(&mut holder_ws, "lock_expiring").await;
    assert_eq!(
        (
            warning["session_id"].as_str(),
            warning["time_remaining"].as_f64()
        ),
        (Some(holder.as_str()), Some(30.0))
    );

    app.release("ps_abc123", "admin", true).await;
    let lost = until(&mut holder_ws, "lock_lost").await;
    assert_eq!(
        (lost["equipment_id"].as_str(), lost["reason"].as_str()),
        (Some("ps_abc123"), Some("forced"))
    );
    let granted = until(&mut w2_ws, "lock_granted").await;
    assert_eq!(
        (
            granted["session_id"].as_str(),
            granted["fencing_token"].as_u64()
        ),
        (Some(w2.as_str()), Some(2))
    );

    // Expiry is a loss too.
    app.advance(100.0);
    let expired = until(&mut w2_ws, "lock_lost").await;
    assert_eq!(expired["reason"], "timeout");
}

#[tokio::test]
async fn a_client_resumes_from_the_last_seq_it_saw() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    let mut ws = connect(&app, json!({"type": "subscribe", "all": true})).await;
    app.acquire("ps_abc123", &s, json!({})).await;
    let seen = next(&mut ws).await["seq"].as_u64().unwrap();
    drop(ws);
    // While it is away:
    app.release("ps_abc123", &s, false).await;
    app.acquire("load_1", &s, json!({})).await;
    let mut ws = connect(
        &app,
        json!({"type": "subscribe", "all": true, "resume_from": seen}),
    )
    .await;
    let missed = [next(&mut ws).await, next(&mut ws).await];
    assert_eq!(
        missed
            .iter()
            .map(|m| m["event"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["lock_released", "lock_acquired"]
    );
    assert_eq!(missed[0]["seq"].as_u64(), Some(seen + 1));
    // Then live, without repeats.
    app.release("load_1", &s, false).await;
    let live = next(&mut ws).await;
    assert_eq!(
        (live["event"].as_str(), live["seq"].as_u64()),
        (Some("lock_released"), Some(seen + 3))
    );
}

#[tokio::test]
async fn a_resume_from_past_the_newest_event_replays_nothing_then_goes_live() {
    let dir = tempfile::tempdir().unwrap();
    for settings in [crate::helpers::memory(), sqlite_in(dir.path(), "")] {
        let store = settings.store.clone();
        let app = spawn_with(settings).await;
        let s = app.session(0.0).await;
        app.acquire("ps_abc123", &s, json!({})).await;
        let mut ws = connect(
            &app,
            json!({"type": "subscribe", "all": true, "resume_from": i64::MAX as u64 + 1}),
        )
        .await;
        // Acknowledged once the replay above is done (messages are taken
        // in order), so the release below comes after it.
        ws.send(Message::text(
            json!({"type": "subscribe", "all": true}).to_string(),
        ))
        .await
        .unwrap();
        assert_eq!(next(&mut ws).await["type"], "subscribed");
        app.release("ps_abc123", &s, false).await;
        let m = next(&mut ws).await;
        assert_eq!(
            (m["event"].as_str(), m["seq"].as_u64()),
            (Some("lock_released"), Some(3)),
            "{store}: no replay from seq 1, and what comes next is heard: {m}"
        );
        drop(ws);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reads_the_history_without_the_write_path() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_with(sqlite_in(dir.path(), "?busy_timeout_ms=100")).await;
    let s = app.session(0.0).await;
    for _ in 0..3 {
        app.acquire("ps_abc123", &s, json!({})).await;
        app.release("ps_abc123", &s, false).await;
    }
    // Another process holds the database's write lock: writes must wait,
    // but a client far behind still gets what was committed.
    let blocker = rusqlite::Connection::open(dir.path().join("lablink.db")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut ws = connect(
        &app,
        json!({"type": "subscribe", "all": true, "resume_from": 0}),
    )
    .await;
    let replayed = kinds(&mut ws, 7).await;
    assert_eq!(replayed[0], "session_created", "{replayed:?}");
    assert_eq!(
        replayed[1..],
        ["lock_acquired", "lock_released"].repeat(3),
        "{replayed:?}"
    );
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(ws);
    app.stop().await;
}

#[tokio::test]
async fn a_long_history_is_replayed_page_by_page_while_others_write() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    // More than a page (1000) of history.
    for _ in 0..600 {
        app.acquire("load_1", &s, json!({})).await;
        app.release("load_1", &s, false).await;
    }
    let mut ws = connect(
        &app,
        json!({"type": "subscribe", "equipment_ids": ["load_1"], "resume_from": 0}),
    )
    .await;
    let mut seqs = Vec::new();
    for _ in 0..1200 {
        seqs.push(next(&mut ws).await["seq"].as_u64().unwrap());
        if seqs.len() == 10 {
            // Mid-replay, writes go on.
            app.acquire("ps_abc123", &s, json!({})).await;
        }
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, no repeats");
    app.acquire("load_1", &s, json!({})).await;
    let live = next(&mut ws).await;
    assert_eq!(
        (live["event"].as_str(), live["seq"].as_u64()),
        (Some("lock_acquired"), Some(seqs[1199] + 2)),
        "then live, after the other equipment's event: {live}"
    );
}

#[tokio::test]
async fn many_subscribers_each_get_every_event() {
    let app = spawn_app().await;
    let mut clients = Vec::new();
    for _ in 0..25 {
        clients.push(
            connect(
                &app,
                json!({"type": "subscribe", "equipment_ids": ["load_1"]}),
            )
            .await,
        );
    }
    let s = app.session(0.0).await;
    app.acquire("load_1", &s, json!({})).await;
    app.release("load_1", &s, false).await;
    for ws in &mut clients {
        assert_eq!(kinds(ws, 2).await, ["lock_acquired", "lock_released"]);
    }
}

// ---- wait_seconds ---------------------------------------------------------

async fn waiting_acquire(
    app: &TestApp,
    session: &str,
    wait: f64,
) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let request = app
        .client
        .post(format!("{}/api/locks/acquire", app.base))
        .json(&json!({"equipment_id": "ps_abc123", "session_id": session, "queue_if_busy": true, "wait_seconds": wait, "timeout_seconds": 50}));
    tokio::spawn(async move {
        let response = request.send().await.unwrap();
        (response.status(), response.json().await.unwrap())
    })
}

/// Waits (bounded) until `session` is in the queue, so the waiting request
/// has been made.
async fn queued(app: &TestApp, session: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, q) = app.get("/api/locks/queue/ps_abc123").await;
            if q["queue"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["session_id"] == session)
            {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn wait_seconds_returns_locked_on_release_and_on_expiry() {
    let app = spawn_app().await;
    let (holder, waiter) = (app.session(0.0).await, app.session(0.0).await);
    app.acquire("ps_abc123", &holder, json!({"timeout_seconds": 10}))
        .await;
    let pending = waiting_acquire(&app, &waiter, 60.0).await;
    queued(&app, &waiter).await;
    app.release("ps_abc123", &holder, false).await;
    let (status, body) = pending.await.unwrap();
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("locked")),
        "{body}"
    );
    assert_eq!(
        body["lock"]["timeout_seconds"], 50.0,
        "with the timeout it asked for"
    );

    // By expiry: the holder (now `waiter`) runs out after its 50 s.
    let pending = waiting_acquire(&app, &holder, 120.0).await;
    queued(&app, &holder).await;
    app.advance(50.0);
    let (_, body) = pending.await.unwrap();
    assert_eq!(
        (body["status"].as_str(), body["lock"]["session_id"].as_str()),
        (Some("locked"), Some(holder.as_str()))
    );
}

#[tokio::test]
async fn wait_seconds_times_out_queued_and_a_caller_that_leaves_keeps_its_place() {
    let app = spawn_app().await;
    let (holder, first, second) = (
        app.session(0.0).await,
        app.session(0.0).await,
        app.session(0.0).await,
    );
    app.acquire("ps_abc123", &holder, json!({"timeout_seconds": 0}))
        .await;
    app.acquire("ps_abc123", &first, json!({"queue_if_busy": true}))
        .await;
    let pending = waiting_acquire(&app, &second, 5.0).await;
    queued(&app, &second).await;
    app.advance(5.0);
    let (_, body) = pending.await.unwrap();
    assert_eq!(
        (
            body["status"].as_str(),
            body["queue_entry"]["position"].as_u64()
        ),
        (Some("queued"), Some(2))
    );

    // A caller that disconnects while waiting keeps its place.
    let gone = app
        .client
        .post(format!("{}/api/locks/acquire", app.base))
        .timeout(Duration::from_millis(300))
        .json(&json!({"equipment_id": "ps_abc123", "session_id": first, "queue_if_busy": true, "wait_seconds": 3600}))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up");
    let (_, q) = app.get("/api/locks/queue/ps_abc123").await;
    assert_eq!(q["queue"][0]["session_id"], first.as_str());
    for bad in [json!(-1), json!(3601), json!("soon")] {
        let r = app
            .acquire(
                "ps_abc123",
                &second,
                json!({"queue_if_busy": true, "wait_seconds": bad}),
            )
            .await;
        assert_eq!(r.0, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_arrive_in_seq_order_with_none_missing_under_concurrency() {
    let app = spawn_app().await;
    let mut ws = connect(&app, json!({"type": "subscribe", "all": true})).await;
    let sessions = futures_util::future::join_all((0..16).map(|_| app.session(0.0))).await;
    let equipment = ["ps_abc123", "scope_123", "load_1"];
    let work = sessions.iter().enumerate().map(|(i, s)| {
        let app = &app;
        async move {
            for _ in 0..5 {
                app.acquire(equipment[i % 3], s, json!({"queue_if_busy": true}))
                    .await;
                app.release(equipment[i % 3], s, false).await;
            }
        }
    });
    futures_util::future::join_all(work).await;
    let (_, history) = app.get("/api/locks/events?limit=1000").await;
    let expected: Vec<u64> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    let mut received = Vec::new();
    while received.len() < expected.len() {
        let m = next(&mut ws).await;
        if let Some(seq) = m["seq"].as_u64() {
            received.push(seq);
        }
    }
    assert_eq!(received, expected, "every recorded event, once, in order");
}

#[tokio::test]
async fn odd_websocket_messages_are_refused_without_harm() {
    let app = spawn_app().await;
    let mut ws = connect(&app, json!({"type": "subscribe", "all": true})).await;
    ws.send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .unwrap();
    ws.send(Message::text("not json")).await.unwrap();
    assert_eq!(
        next(&mut ws).await["code"],
        "invalid_message",
        "binary frames are ignored, bad text answered"
    );
    ws.send(Message::text(
        json!({"type": "subscribe", "equipment_ids": ["a b"]}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next(&mut ws).await["code"], "invalid_message");
    // An oversized message ends that connection only.
    let _ = ws.send(Message::text("x".repeat(200 << 10))).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the oversized client is disconnected");
    let mut other = connect(&app, json!({"type": "subscribe", "all": true})).await;
    let s = app.session(0.0).await;
    app.acquire("ps_abc123", &s, json!({})).await;
    assert_eq!(
        until(&mut other, "lock_acquired").await["equipment_id"],
        "ps_abc123"
    );
}

/// A subscription naming an instrument that does not exist is refused
/// with the id, as REST's 404 names it, and subscribes to nothing; an
/// unknown field is named once.
#[tokio::test]
async fn a_subscription_to_an_unknown_instrument_is_refused_with_its_id() {
    let app = spawn_app().await;
    let url = format!("{}/api/ws", app.base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text(
        json!({"type": "subscribe", "equipment_ids": ["ps_abc123", "nope"]}).to_string(),
    ))
    .await
    .unwrap();
    let error = next(&mut ws).await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("invalid_message"))
    );
    let (_, rest) = app.get("/api/locks/status/nope").await;
    let detail = error["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(rest["detail"].as_str().unwrap()),
        "{detail} / {rest}"
    );
    ws.send(Message::text(
        json!({"type": "subscribe", "equipment_ids": ["ps_abc123"], "extra": 1}).to_string(),
    ))
    .await
    .unwrap();
    let error = next(&mut ws).await;
    assert!(
        error["detail"]
            .as_str()
            .unwrap()
            .starts_with("`extra` is not a known field;"),
        "{error}"
    );
    // Nothing was subscribed: ps_abc123's event never comes, load_1's does.
    ws.send(Message::text(
        json!({"type": "subscribe", "equipment_ids": ["load_1"]}).to_string(),
    ))
    .await
    .unwrap();
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    let s = app.session(0.0).await;
    app.acquire("ps_abc123", &s, json!({})).await;
    app.acquire("load_1", &s, json!({})).await;
    assert_eq!(next(&mut ws).await["equipment_id"], "load_1");
}
