//! Shutdown through the real binary: a signal answers every waiting
//! acquire with where it stands (its place is kept), closes WebSockets with
//! 1001, and the process exits promptly whatever its clients do.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::start_binary;

fn signal(child: &Child, name: &str) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// Waits for the process to exit (at most `limit`).
async fn exited(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the server still runs {limit:?} after the signal");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let response = client.post(url).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn get(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// A client that sent headers promising a body it never sends: graceful
/// shutdown alone would wait for it forever.
async fn stuck_request(addr: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncReadExt;
    let mut stuck = tokio::net::TcpStream::connect(addr).await.unwrap();
    // One whole request first, answered: the server has taken the connection.
    stuck
        .write_all(b"GET /api/equipment/list HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    stuck.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    stuck
        .write_all(b"POST /api/locks/acquire HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    stuck
}

#[tokio::test]
async fn a_signal_answers_waiters_closes_sockets_and_exits_within_five_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--bind", "127.0.0.1:0"];
    let (mut child, addr, _) = start_binary(dir.path(), &args, &[]);
    let base = format!("http://{addr}/api/locks");
    let client = reqwest::Client::new();
    let (_, holder) = post(&client, format!("{base}/sessions/create"), json!({})).await;
    let (_, waiter) = post(&client, format!("{base}/sessions/create"), json!({})).await;
    let lock = json!({"equipment_id": "ps_abc123", "session_id": holder["session_id"]});
    assert_eq!(post(&client, format!("{base}/acquire"), lock).await.0, 200);

    let wait = json!({"equipment_id": "ps_abc123", "session_id": waiter["session_id"],
                      "queue_if_busy": true, "wait_seconds": 3600});
    let waiting = tokio::spawn({
        let (client, url) = (client.clone(), format!("{base}/acquire"));
        async move { post(&client, url, wait).await }
    });
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
        .await
        .unwrap();
    ws.send(Message::text(
        json!({"type": "subscribe", "all": true}).to_string(),
    ))
    .await
    .unwrap();
    let _stuck = stuck_request(&addr).await;
    // The waiter is in the queue before the signal.
    loop {
        let queue = get(&client, format!("{base}/queue/ps_abc123")).await;
        if queue["queue"].as_array().is_some_and(|q| q.len() == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let signalled = Instant::now();
    signal(&child, "-TERM");
    let (status, answer) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting acquire is answered at once")
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "queued", "{answer}");
    assert_eq!(answer["queue_entry"]["position"], 1, "{answer}");
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.unwrap().code, CloseCode::Away);
    let status = exited(&mut child, Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // The waiter kept its place across the restart.
    let (mut child, addr, _) = start_binary(dir.path(), &args, &[]);
    let queue = get(&client, format!("http://{addr}/api/locks/queue/ps_abc123")).await;
    assert_eq!(queue["queue"][0]["session_id"], waiter["session_id"]);
    assert_eq!(queue["queue"][0]["position"], 1);
    child.kill().unwrap();
    let _ = child.wait();
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--bind", "127.0.0.1:0", "--store", "memory"];
    let (mut child, addr, _) = start_binary(dir.path(), &args, &[]);
    let _stuck = stuck_request(&addr).await;
    // Until the server has read the stuck request's head, its connection is
    // idle and graceful shutdown would simply close it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&child, "-INT");
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&child, "-INT");
    let status = exited(&mut child, Duration::from_secs(10)).await;
    assert_eq!(
        status.code(),
        Some(130),
        "the second signal, not the grace period, ended it: {status:?}"
    );
}
