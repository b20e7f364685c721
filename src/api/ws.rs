//! `GET /api/ws`: live events over a WebSocket. A client subscribes to
//! equipment ids, a session, or everything (and may change that on the open
//! socket), optionally resuming from the last `seq` it saw; it then gets
//! every matching event as it happens, in the history's JSON shape, plus
//! the notifications for its sessions (`queue_position`, `lock_granted`,
//! `lock_expiring`, `lock_lost`). A client that falls too far behind is
//! told it lagged and from which `seq` to resume, and is disconnected; it
//! never slows the server or other clients.

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use super::error::ErrorBody;
use super::extract::{ApiWebSocket, parse_message};
use crate::auth::Credential;
use crate::domain::{EquipmentId, SessionId};
use crate::live::Subscription;
use crate::storage::EventQuery;

/// What a client may send: a subscription, the only kind of message. A
/// struct with a `type` field rather than a tagged enum, so that an error
/// can name the field at fault (serde loses the path inside tagged enums).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientMessage {
    #[serde(rename = "type")]
    _kind: MessageKind,
    #[serde(default)]
    equipment_ids: Vec<String>,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    all: bool,
    /// Replay the history after this `seq` before going live.
    #[serde(default)]
    resume_from: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum MessageKind {
    Subscribe,
}

/// The two directions of a socket, so the protocol can be tested without a
/// network.
pub trait Socket: Send {
    /// The next text message; `None` when the client has gone.
    fn recv(&mut self) -> impl std::future::Future<Output = Option<String>> + Send;
    /// Sends a text message; `false` when the client has gone.
    fn send(&mut self, text: String) -> impl std::future::Future<Output = bool> + Send;
    /// Sends a close frame with `code` (RFC 6455 section 7.4) and `reason`.
    fn close(&mut self, code: u16, reason: &str) -> impl std::future::Future<Output = ()> + Send;
}

/// Close code for "the server is going away" (RFC 6455 section 7.4.1).
pub const CLOSE_GOING_AWAY: u16 = 1001;

struct Axum {
    socket: WebSocket,
    /// The token the connection was opened with, if authentication is on.
    token: Option<Token>,
}

/// What a connection needs to notice that its token was revoked.
struct Token {
    app: AppState,
    credential: Credential,
    changes: tokio::sync::watch::Receiver<u64>,
}

impl Axum {
    /// The next frame; `None` when the client has gone or, if its token was
    /// revoked, after closing the socket with code 1008 (policy violation),
    /// as a REST request with that token would be refused.
    async fn next(&mut self) -> Option<Result<Message, axum::Error>> {
        let Some(token) = &mut self.token else {
            return self.socket.recv().await;
        };
        tokio::select! {
            message = self.socket.recv() => message,
            () = token.app.auth().revoked(&token.credential, &mut token.changes) => {
                let close = CloseFrame {
                    code: close_code::POLICY,
                    reason: "the API token was revoked".into(),
                };
                let _ = self.socket.send(Message::Close(Some(close))).await;
                None
            }
        }
    }
}

impl Socket for Axum {
    async fn recv(&mut self) -> Option<String> {
        loop {
            match self.next().await? {
                Ok(Message::Text(text)) => return Some(text.to_string()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue, // pings are answered by axum; binary is ignored
            }
        }
    }

    async fn send(&mut self, text: String) -> bool {
        self.socket.send(Message::Text(text.into())).await.is_ok()
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // A client that has gone or stopped reading does not delay the
        // shutdown: the send gives up with the connection.
        let _ = self.socket.send(Message::Close(Some(frame))).await;
    }
}

#[utoipa::path(get, path = "/api/ws", tag = "live", operation_id = "live_events",
    params(("access_token" = Option<String>, Query,
        description = "The API token, for WebSocket clients that cannot send an Authorization header")),
    responses(
        (status = 101, description = "WebSocket: send {\"type\": \"subscribe\", \"equipment_ids\": [...], \"session_id\": ..., \"all\": false, \"resume_from\": seq}; receive events"),
        (status = 400, body = ErrorBody, description = "Not a WebSocket handshake (websocket_required)")))]
pub async fn upgrade(
    State(app): State<AppState>,
    credential: Option<Extension<Credential>>,
    ApiWebSocket(ws): ApiWebSocket,
) -> Response {
    let token = credential.map(|Extension(credential)| Token {
        changes: app.auth().changes(),
        app: app.clone(),
        credential,
    });
    // Clients only ever send small subscription messages.
    ws.max_message_size(64 << 10)
        .on_upgrade(move |socket| serve(app, Axum { socket, token }))
}

fn subscription(
    equipment_ids: &[String],
    session_id: Option<&str>,
    all: bool,
) -> Result<Subscription, String> {
    let equipment = equipment_ids
        .iter()
        .map(|id| EquipmentId::parse(id).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let session = session_id
        .map(SessionId::parse)
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok(Subscription {
        all,
        equipment,
        session,
    })
}

/// Sends the history after `after` that `filter` wants; returns where it
/// stopped (the last `seq` sent or skipped; a cursor past the newest event
/// comes back to it). Reads a bounded page at a time, off the store's write
/// path and holding nothing while it sends, so a client far behind (or a
/// slow one) never holds up anyone else.
async fn replay<S: Socket>(
    app: &AppState,
    socket: &mut S,
    filter: &Subscription,
    after: u64,
) -> Option<u64> {
    const PAGE: usize = 1000;
    let mut last = after;
    loop {
        let page = app
            .read_history(EventQuery {
                after: Some(last),
                limit: PAGE,
                ..EventQuery::default()
            })
            .await;
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                let error = json!({"type": "error", "code": "history_unavailable", "detail": e.to_string()});
                socket.send(error.to_string()).await;
                return Some(last);
            }
        };
        for event in page.events.iter().filter(|e| filter.wants(e)) {
            if !socket
                .send(serde_json::to_string(event).unwrap_or_default())
                .await
            {
                return None;
            }
        }
        last = page.next_cursor.unwrap_or(last);
        if page.events.len() < PAGE {
            return Some(last);
        }
    }
}

/// Runs one live connection until the client leaves or lags.
pub async fn serve<S: Socket>(app: AppState, mut socket: S) {
    let _counted = crate::measure::Subscriber::open();
    let mut live = app.hub().subscribe();
    let mut filter = Subscription::default();
    let mut last_seq = 0;
    let closed = app.hub().closed();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            _ = &mut closed => {
                socket.close(CLOSE_GOING_AWAY, "the server is shutting down; reconnect with resume_from").await;
                return;
            }
            incoming = socket.recv() => {
                let Some(text) = incoming else { return };
                let message = parse_message::<ClientMessage>(&text);
                let subscribed = message.and_then(|ClientMessage { equipment_ids, session_id, all, resume_from, .. }| {
                    let mut new_filter = subscription(&equipment_ids, session_id.as_deref(), all)?;
                    // A configured lock group's id stands for its members;
                    // an id that is neither refuses the whole subscription,
                    // as REST answers 404 for it.
                    let mut members = Vec::new();
                    for id in &new_filter.equipment {
                        members.extend(app.instruments_of(id).map_err(|e| e.to_string())?);
                    }
                    new_filter.equipment.extend(members);
                    Ok((new_filter, equipment_ids, session_id, all, resume_from))
                });
                match subscribed {
                    Ok((new_filter, equipment_ids, session_id, all, resume_from)) => {
                        filter = new_filter;
                        let ack = json!({
                            "type": "subscribed",
                            "equipment_ids": equipment_ids,
                            "session_id": session_id,
                            "all": all,
                            "resume_from": resume_from,
                        });
                        if !socket.send(ack.to_string()).await {
                            return;
                        }
                        if let Some(after) = resume_from {
                            match replay(&app, &mut socket, &filter, after).await {
                                Some(last) => last_seq = last_seq.max(last),
                                None => return,
                            }
                        }
                    }
                    Err(detail) => {
                        let error = json!({
                            "type": "error",
                            "code": "invalid_message",
                            "detail": format!("{detail}; expected {{\"type\": \"subscribe\", \"equipment_ids\": [...], \"session_id\": \"...\", \"all\": false, \"resume_from\": 0}}"),
                        });
                        if !socket.send(error.to_string()).await {
                            return;
                        }
                    }
                }
            }
            received = live.recv() => match received {
                Ok(event) => {
                    if !filter.wants(&event) || event.seq.is_some_and(|s| s <= last_seq) {
                        continue;
                    }
                    if let Some(seq) = event.seq {
                        last_seq = seq;
                    }
                    let text = serde_json::to_string(&*event).unwrap_or_default();
                    if !socket.send(text).await {
                        return;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    crate::measure::websocket_lagged();
                    let lagged: Value = json!({
                        "type": "lagged",
                        "missed": missed,
                        "resume_from": last_seq,
                        "detail": "this client fell too far behind; reconnect and subscribe with resume_from to get what it missed",
                    });
                    socket.send(lagged.to_string()).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::{Event, EventKind, Timestamp};
    use crate::drivers::Instruments;
    use crate::service::{Policy, Service};
    use crate::storage::memory::MemoryStore;
    use std::sync::Arc;
    use tokio::sync::mpsc;

    struct TestSocket {
        incoming: mpsc::Receiver<String>,
        outgoing: mpsc::Sender<String>,
    }

    impl Socket for TestSocket {
        async fn recv(&mut self) -> Option<String> {
            self.incoming.recv().await
        }
        async fn send(&mut self, text: String) -> bool {
            self.outgoing.send(text).await.is_ok()
        }
        async fn close(&mut self, code: u16, reason: &str) {
            let _ = self.outgoing.send(format!("close {code} {reason}")).await;
        }
    }

    fn event(seq: u64) -> Event {
        let mut e = Event::new(EventKind::LockAcquired, Timestamp::from_millis(0));
        e.seq = Some(seq);
        e.equipment_id = Some(EquipmentId::parse("ps_abc123").unwrap());
        e
    }

    #[tokio::test]
    async fn a_stalled_client_is_told_it_lagged_and_others_are_not_slowed() {
        let policy = Policy {
            live_buffer: 4,
            ..Policy::default()
        };
        let instruments =
            Instruments::from_configs(&Instruments::demo_configs(), std::path::Path::new("."))
                .unwrap();
        let app = Arc::new(Service::new(
            Arc::new(MemoryStore::new()),
            Arc::new(ManualClock::new(Timestamp::from_millis(0))),
            Arc::new(instruments),
            policy,
        ));
        // A client that reads nothing: its socket holds one message.
        let (to_server, incoming) = mpsc::channel(8);
        let (outgoing, mut from_server) = mpsc::channel(1);
        let connection = tokio::spawn(serve(app.clone(), TestSocket { incoming, outgoing }));
        to_server
            .send(json!({"type": "subscribe", "all": true}).to_string())
            .await
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&from_server.recv().await.unwrap()).unwrap()["type"],
            "subscribed"
        );
        let mut other = app.hub().subscribe();
        for seq in 1..=20 {
            app.hub().publish(event(seq)); // never waits for anyone
            tokio::task::yield_now().await;
        }
        // Publishing never waited: the other (equally idle) subscriber just
        // lost its oldest events and reads on from the newest four.
        assert!(matches!(other.recv().await, Err(RecvError::Lagged(16))));
        assert_eq!(other.recv().await.unwrap().seq, Some(17));
        let mut seen = Vec::new();
        while let Some(text) = from_server.recv().await {
            seen.push(serde_json::from_str::<Value>(&text).unwrap());
        }
        let last = seen.last().unwrap();
        assert_eq!(last["type"], "lagged", "{seen:?}");
        let delivered: Vec<u64> = seen.iter().filter_map(|m| m["seq"].as_u64()).collect();
        assert_eq!(
            last["resume_from"].as_u64(),
            delivered.last().copied(),
            "resume after the last delivered"
        );
        connection.await.unwrap();
    }
}
