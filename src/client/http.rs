//! A thin typed client for the server's HTTP API (reqwest). Reads answer
//! the server's JSON as it is (`--json` prints it untouched); the calls
//! `run` builds on answer small typed structs. Every failure becomes one
//! `ClientError`: the server's `code` and `detail`, or why it could not be
//! reached.

use reqwest::{Method, RequestBuilder, Url};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

use super::{ClientError, Connection};

/// How long an ordinary request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take (a host that drops packets).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Api {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

/// A granted lock, as `run` needs it.
#[derive(Clone, Debug, Deserialize)]
pub struct Lock {
    pub equipment_id: String,
    pub lock_id: String,
    pub fencing_token: u64,
    /// Set on a lock handed over from the queue with a claim window: it
    /// must be claimed (renewed) before then.
    #[serde(default)]
    pub claim_by: Option<String>,
    /// The lock group (or pool request) it belongs to.
    #[serde(default)]
    pub group_id: Option<String>,
}

/// What an acquire asks for: one instrument (or a configured group's id)
/// as `equipment_id`, several as `equipment_ids` (a lock group, all or
/// nothing), and a pool (`any_of`), alone or with the others.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub equipment_id: Option<String>,
    pub equipment_ids: Vec<String>,
    pub any_of: Option<Pool>,
}

/// A pool: any one free instrument with all these tags, or of these ids.
#[derive(Clone, Debug, PartialEq)]
pub enum Pool {
    Tags(Vec<String>),
    Ids(Vec<String>),
}

impl Target {
    /// The request's fields naming what it asks for.
    fn fields(&self) -> Value {
        let mut body = json!({});
        if let Some(id) = &self.equipment_id {
            body["equipment_id"] = json!(id);
        }
        if !self.equipment_ids.is_empty() {
            body["equipment_ids"] = json!(self.equipment_ids);
        }
        match &self.any_of {
            Some(Pool::Tags(tags)) => body["any_of"] = json!({"tags": tags}),
            Some(Pool::Ids(ids)) => body["any_of"] = json!({"equipment_ids": ids}),
            None => {}
        }
        body
    }
}

/// What a request asks of the queue besides the lock (README, "Queueing");
/// each is sent only when set, so the server's defaults apply otherwise.
#[derive(Clone, Copy, Debug, Default)]
pub struct Queueing {
    /// -10..=10: a higher one is served first.
    pub priority: Option<i8>,
    /// The server drops the place after this long without a grant.
    pub max_wait: Option<Duration>,
    /// A lock handed over from the queue must be claimed within this.
    pub claim_within: Option<Duration>,
}

/// What an acquire came to. A lock group or pool request is answered with
/// its `group_id`, a lock per instrument when granted and a place per
/// instrument while it waits; a single instrument with one of each.
#[derive(Debug)]
pub enum Acquired {
    Locked {
        locks: Vec<Lock>,
        group_id: Option<String>,
    },
    Queued {
        /// (instrument, position) for each queue it waits in.
        places: Vec<(String, usize)>,
        message: String,
        group_id: Option<String>,
    },
}

impl Api {
    pub fn new(conn: &Connection) -> Result<Self, ClientError> {
        let base = Url::parse(conn.url.trim_end_matches('/'))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| {
                ClientError::Input(format!(
                    "--url must be an http:// or https:// URL such as http://127.0.0.1:8000, got {:?}",
                    conn.url
                ))
            })?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("lablink-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Unexpected(format!("cannot set up HTTP: {e}")))?;
        Ok(Self {
            http,
            base,
            token: conn.token.clone(),
        })
    }

    /// The server's URL, as given (without a trailing slash).
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The API token requests are sent with.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The URL of `segments` under the base; each segment is escaped, so an
    /// id holding `/` or `?` stays one segment.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        let request = self
            .http
            .request(method, self.url(segments))
            .timeout(REQUEST_TIMEOUT);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request`; the answer's JSON, or the error it stands for.
    async fn send(&self, request: RequestBuilder) -> Result<Value, ClientError> {
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.transport(e))?;
        let body: Option<Value> = serde_json::from_str(&text).ok();
        if status.is_success() {
            return body.ok_or_else(|| {
                ClientError::Unexpected(format!(
                    "the server's answer is not JSON ({status}): {}",
                    excerpt(&text)
                ))
            });
        }
        let field = |name: &str| {
            body.as_ref()
                .and_then(|b| b.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Err(ClientError::Server {
            status: status.as_u16(),
            code: field("code").unwrap_or_else(|| "http_error".into()),
            detail: field("detail").unwrap_or_else(|| format!("HTTP {status}: {}", excerpt(&text))),
        })
    }

    /// A failure below HTTP, in one line: the innermost cause says it best
    /// ("Connection refused (os error 111)").
    fn transport(&self, e: reqwest::Error) -> ClientError {
        let reason = if e.is_timeout() {
            "no answer in time".to_owned()
        } else {
            let mut cause: &dyn std::error::Error = &e;
            while let Some(inner) = cause.source() {
                cause = inner;
            }
            cause.to_string()
        };
        ClientError::Unreachable {
            url: self.base.to_string().trim_end_matches('/').to_owned(),
            reason,
        }
    }

    pub async fn get(&self, segments: &[&str]) -> Result<Value, ClientError> {
        self.send(self.request(Method::GET, segments)).await
    }

    pub async fn get_query(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Value, ClientError> {
        self.send(self.request(Method::GET, segments).query(query))
            .await
    }

    pub async fn post(&self, segments: &[&str], body: &Value) -> Result<Value, ClientError> {
        self.send(self.request(Method::POST, segments).json(body))
            .await
    }

    pub async fn delete(&self, segments: &[&str]) -> Result<Value, ClientError> {
        self.send(self.request(Method::DELETE, segments)).await
    }

    // ---- what `run` builds on ----------------------------------------------

    /// Opens a session; its id.
    pub async fn create_session(
        &self,
        client_name: &str,
        timeout: Duration,
        metadata: Value,
    ) -> Result<String, ClientError> {
        let body = json!({
            "client_name": client_name,
            "timeout_seconds": timeout.as_secs_f64(),
            "metadata": metadata,
        });
        let answer = self
            .post(&["api", "locks", "sessions", "create"], &body)
            .await?;
        answer["session_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| unexpected("a new session", &answer))
    }

    /// Asks for `target`; queued if busy when `queue` (placed as
    /// `queueing` says), and then waits up to `wait` for the turn (the
    /// server holds the request open).
    #[allow(clippy::too_many_arguments)]
    pub async fn acquire(
        &self,
        target: &Target,
        session: &str,
        observer: bool,
        lease: Duration,
        queue: bool,
        queueing: Queueing,
        wait: Duration,
    ) -> Result<Acquired, ClientError> {
        let mut body = target.fields();
        body["session_id"] = json!(session);
        body["lock_mode"] = json!(if observer { "observer" } else { "exclusive" });
        body["timeout_seconds"] = json!(lease.as_secs_f64());
        body["queue_if_busy"] = json!(queue);
        body["wait_seconds"] = json!(wait.as_secs_f64());
        if let Some(priority) = queueing.priority {
            body["priority"] = json!(priority);
        }
        if let Some(max_wait) = queueing.max_wait {
            body["max_wait_seconds"] = json!(max_wait.as_secs_f64());
        }
        if let Some(claim_within) = queueing.claim_within {
            body["claim_within_seconds"] = json!(claim_within.as_secs_f64());
        }
        let request = self
            .request(Method::POST, &["api", "locks", "acquire"])
            .timeout(wait + REQUEST_TIMEOUT)
            .json(&body);
        let answer = self.send(request).await?;
        let group_id = answer["group_id"].as_str().map(str::to_owned);
        // A group's `locks`, or the single `lock`.
        let locks = match (answer.get("locks"), answer.get("lock")) {
            (Some(locks), _) if locks.is_array() => Some(locks.clone()),
            (_, Some(lock)) if lock.is_object() => Some(json!([lock])),
            _ => None,
        };
        if let Some(locks) = locks {
            return serde_json::from_value(locks)
                .map(|locks| Acquired::Locked { locks, group_id })
                .map_err(|_| unexpected("a lock", &answer));
        }
        let entries = match (answer.get("queue_entries"), answer.get("queue_entry")) {
            (Some(entries), _) if entries.is_array() => entries.clone(),
            (_, Some(entry)) if entry.is_object() => json!([entry]),
            _ => return Err(unexpected("a lock or a queue place", &answer)),
        };
        let places = entries
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let id = e["equipment_id"].as_str()?.to_owned();
                Some((id, e["position"].as_u64()? as usize))
            })
            .collect::<Vec<_>>();
        if places.is_empty() {
            return Err(unexpected("a lock or a queue place", &answer));
        }
        Ok(Acquired::Queued {
            places,
            message: answer["message"].as_str().unwrap_or_default().to_owned(),
            group_id,
        })
    }

    /// Renews `session`'s lock on `equipment` (and the session).
    pub async fn renew_lock(&self, equipment: &str, session: &str) -> Result<(), ClientError> {
        let body = json!({"session_id": session});
        self.post(&["api", "locks", "activity", equipment], &body)
            .await
            .map(drop)
    }

    pub async fn renew_session(&self, session: &str) -> Result<(), ClientError> {
        self.post(
            &["api", "locks", "sessions", session, "activity"],
            &json!({}),
        )
        .await
        .map(drop)
    }

    /// Releases `session`'s lock or queue place on `equipment` (a lock
    /// group's member or configured id releases the whole group); `force`
    /// releases whoever holds it.
    pub async fn release(
        &self,
        equipment: &str,
        session: &str,
        force: bool,
    ) -> Result<Value, ClientError> {
        self.release_what(json!({"equipment_id": equipment}), session, force)
            .await
    }

    /// Releases a lock group (held or waiting) by its `group_id`.
    pub async fn release_group(
        &self,
        group_id: &str,
        session: &str,
        force: bool,
    ) -> Result<Value, ClientError> {
        self.release_what(json!({"group_id": group_id}), session, force)
            .await
    }

    /// Releases what `what` names (`equipment_id`, `equipment_ids` or
    /// `group_id`).
    pub async fn release_what(
        &self,
        mut what: Value,
        session: &str,
        force: bool,
    ) -> Result<Value, ClientError> {
        what["session_id"] = json!(session);
        what["force"] = json!(force);
        self.post(&["api", "locks", "release"], &what).await
    }

    pub async fn end_session(&self, session: &str) -> Result<(), ClientError> {
        self.delete(&["api", "locks", "sessions", session])
            .await
            .map(drop)
    }
}

fn unexpected(what: &str, answer: &Value) -> ClientError {
    ClientError::Unexpected(format!(
        "expected {what} from the server, got {}",
        excerpt(&answer.to_string())
    ))
}

/// At most 200 characters of `text`, for messages.
fn excerpt(text: &str) -> String {
    let mut short: String = text.chars().take(200).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(url: &str) -> Result<Api, ClientError> {
        Api::new(&Connection {
            url: url.into(),
            token: None,
        })
    }

    #[test]
    fn ids_stay_one_path_segment_under_any_base_path() {
        let api = api("https://lab.example/lablink/").unwrap();
        assert_eq!(
            api.url(&["api", "locks", "status", "a/b?c"]).as_str(),
            "https://lab.example/lablink/api/locks/status/a%2Fb%3Fc"
        );
        let api = api_ok("http://127.0.0.1:8000");
        assert_eq!(
            api.url(&["api", "ws"]).as_str(),
            "http://127.0.0.1:8000/api/ws"
        );
    }

    fn api_ok(url: &str) -> Api {
        api(url).unwrap()
    }

    #[test]
    fn a_url_that_is_not_http_is_refused_with_an_example() {
        for bad in ["127.0.0.1:8000", "ftp://x", "not a url", ""] {
            let err = api(bad).err().expect(bad);
            assert!(err.to_string().contains("http://127.0.0.1:8000"), "{err}");
            assert_eq!(err.exit_status(), super::super::exit::USAGE);
        }
    }
}
