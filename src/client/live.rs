//! The live-event WebSocket (`/api/ws`, tokio-tungstenite) as the client
//! commands use it: connect with the token, subscribe, wait for the
//! server's acknowledgement (so nothing that follows is missed), then read
//! events one at a time.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::ClientError;
use super::http::Api;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What to hear about (the server's subscription message).
#[derive(Clone, Debug, Default)]
pub struct Subscription {
    pub equipment_ids: Vec<String>,
    pub session_id: Option<String>,
    pub all: bool,
    /// Replay the history after this `seq` first.
    pub resume_from: Option<u64>,
}

pub struct LiveEvents {
    socket: Socket,
}

impl LiveEvents {
    /// Connects and subscribes; returns once the server has acknowledged.
    pub async fn connect(api: &Api, subscription: &Subscription) -> Result<Self, ClientError> {
        let mut url = api.url(&["api", "ws"]);
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        let _ = url.set_scheme(scheme);
        let unreachable = |reason: String| ClientError::Unreachable {
            url: api.base().to_string().trim_end_matches('/').to_owned(),
            reason,
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Input(format!("bad WebSocket URL {url}: {e}")))?;
        if let Some(token) = api.token() {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                ClientError::Input("the token holds characters a header cannot".into())
            })?;
            request.headers_mut().insert("authorization", value);
        }
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(response) => {
                    let detail = response
                        .body()
                        .as_deref()
                        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                        .and_then(|b| b["detail"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| format!("HTTP {}", response.status()));
                    ClientError::Server {
                        status: response.status().as_u16(),
                        code: "websocket_refused".into(),
                        detail,
                    }
                }
                other => unreachable(other.to_string()),
            })?;
        let mut live = Self { socket };
        let mut message = json!({
            "type": "subscribe",
            "equipment_ids": subscription.equipment_ids,
            "all": subscription.all,
        });
        if let Some(session) = &subscription.session_id {
            message["session_id"] = json!(session);
        }
        if let Some(seq) = subscription.resume_from {
            message["resume_from"] = json!(seq);
        }
        live.socket
            .send(Message::text(message.to_string()))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        match live.next().await {
            Some(Ok(ack)) if ack["type"] == "subscribed" => Ok(live),
            Some(Ok(error)) => Err(ClientError::Server {
                status: 400,
                code: error["code"].as_str().unwrap_or("invalid_message").into(),
                detail: error["detail"]
                    .as_str()
                    .map(|d| without_template(d).to_owned())
                    .unwrap_or_else(|| error.to_string()),
            }),
            Some(Err(e)) => Err(e),
            None => Err(unreachable(
                "the WebSocket closed before subscribing".into(),
            )),
        }
    }

    /// The next message (an event, a notification, or a `lagged`/`error`
    /// message); `None` once the socket has closed.
    pub async fn next(&mut self) -> Option<Result<Value, ClientError>> {
        loop {
            match self.socket.next().await? {
                Ok(Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).map_err(|e| {
                        ClientError::Unexpected(format!("a live event that is not JSON: {e}"))
                    }));
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue, // pings are answered by tungstenite
            }
        }
    }
}

/// A refused subscription's detail without the message template the server
/// appends for WebSocket programmers (`; expected {"type": "subscribe",
/// ...}`): the client wrote the message, its user needs only the reason.
fn without_template(detail: &str) -> &str {
    detail
        .rfind("; expected {")
        .map_or(detail, |at| &detail[..at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_subscription_says_why_without_the_template() {
        assert_eq!(
            without_template(
                r#"equipment nope is not registered; expected {"type": "subscribe", "equipment_ids": [...], "all": false}"#
            ),
            "equipment nope is not registered"
        );
        assert_eq!(without_template("bad id"), "bad id");
    }
}
