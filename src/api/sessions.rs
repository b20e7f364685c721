//! Session endpoints: create, end, read, list, renew, and a session's locks
//! and history.

use axum::Json;
use axum::extract::{ConnectInfo, State};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::{IpAddr, SocketAddr};
use utoipa::{IntoParams, ToSchema};

use super::caller::Caller;
use super::error::{ApiError, ApiResult, ErrorBody, quoted};
use super::extract::{self, ApiJson, ApiPath, ApiQuery};
use super::views::{LockView, QueueEntryView, SessionView};
use super::{AppState, session_in_path};
use crate::domain::ids::control_character;
use crate::domain::{Event, SessionId, Timeout};
use crate::service::{DEFAULT_SESSION_PAGE, NewSession};

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateSession {
    /// Defaults to "unnamed client". At most 256 characters, no control
    /// characters.
    #[schema(max_length = 256, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub client_name: Option<String>,
    /// An IPv4 or IPv6 address; defaults to the caller's address.
    #[schema(value_type = Option<super::IpAddress>)]
    pub client_ip: Option<String>,
    /// Inactivity timeout in seconds; defaults to LABLINK_SESSION_TIMEOUT_SEC; 0 = none.
    #[schema(value_type = Option<super::TimeoutSeconds>)]
    pub timeout_seconds: Option<f64>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// The longest client name or address kept for a session.
pub const MAX_TEXT: usize = 256;

/// A free text people will read (a client name, a reason, a message): at
/// most `MAX_TEXT` characters, none of them a control character.
pub fn short_text(field: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.chars().count() > MAX_TEXT => Err(ApiError::unprocessable(
            "invalid_body",
            format!("`{field}` must be at most {MAX_TEXT} characters"),
        )),
        Some(v) => plain(field, &v).map(|()| Some(v)),
        None => Ok(None),
    }
}

/// Refuses a text with a control character (422 `invalid_parameter`).
pub fn plain(field: &str, text: &str) -> Result<(), ApiError> {
    match control_character(text) {
        Some(c) => Err(ApiError::unprocessable(
            "invalid_parameter",
            format!(
                "`{field}` must not contain control characters (it has U+{:04X})",
                u32::from(c)
            ),
        )),
        None => Ok(()),
    }
}

/// A client's address as given (`client_ip`): an IPv4 or IPv6 address,
/// stored in its usual form.
fn client_ip(value: Option<String>) -> Result<Option<String>, ApiError> {
    value
        .map(|raw| {
            raw.parse::<IpAddr>().map(|ip| ip.to_string()).map_err(|_| {
                ApiError::unprocessable(
                    "invalid_parameter",
                    format!(
                        "`client_ip` must be an IPv4 or IPv6 address, got {}",
                        quoted(&raw)
                    ),
                )
            })
        })
        .transpose()
}

#[utoipa::path(post, path = "/api/locks/sessions/create", tag = "sessions", operation_id = "create_session",
    request_body = CreateSession,
    responses(
        (status = 200, body = SessionView, description = "The new session"),
        (status = 422, body = ErrorBody, description = "A field is out of range (invalid_body, invalid_timeout)")))]
pub async fn create(
    State(app): State<AppState>,
    Caller(actor): Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(body): ApiJson<CreateSession>,
) -> ApiResult<SessionView> {
    let timeout = body
        .timeout_seconds
        .map(Timeout::from_seconds)
        .transpose()?;
    let new = NewSession {
        actor,
        client_name: short_text("client_name", body.client_name)?,
        client_ip: Some(client_ip(body.client_ip)?.unwrap_or_else(|| peer.ip().to_string())),
        timeout,
        metadata: body.metadata.unwrap_or_default(),
    };
    let at = app.create_session(new).await?;
    Ok(Json(SessionView::new(&at.value, at.now)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionEnded {
    pub success: bool,
    pub message: String,
    pub session_id: String,
    pub locks_released: usize,
}

#[utoipa::path(delete, path = "/api/locks/sessions/{session_id}", tag = "sessions", operation_id = "end_session",
    responses(
        (status = 200, body = SessionEnded, description = "Ended: its locks released, its queue places left"),
        (status = 403, body = ErrorBody, description = "Another user's session (forbidden)"),
        (status = 404, body = ErrorBody, description = "No live session with this id (session_not_found)")))]
pub async fn end(
    State(app): State<AppState>,
    Caller(actor): Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<SessionEnded> {
    let id = session_in_path(&id)?;
    let at = app.end_session(&id, &actor).await?;
    Ok(Json(SessionEnded {
        success: true,
        message: "Session ended".into(),
        session_id: id.to_string(),
        locks_released: at.value.locks_released,
    }))
}

#[utoipa::path(get, path = "/api/locks/sessions/{session_id}", tag = "sessions", operation_id = "get_session",
    responses(
        (status = 200, body = SessionView, description = "The session"),
        (status = 404, body = ErrorBody, description = "No live session with this id (session_not_found)")))]
pub async fn get(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<SessionView> {
    let at = app.session(&session_in_path(&id)?).await?;
    Ok(Json(SessionView::new(&at.value, at.now)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    /// Live sessions, in session id order.
    pub sessions: Vec<SessionView>,
    /// How many are on this page.
    pub count: usize,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionListQuery {
    /// Page size, 1..=1000 (default 100).
    #[serde(default, deserialize_with = "extract::limit")]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Continue after this session id (the `next_cursor` of the previous page).
    #[param(value_type = Option<super::Id>)]
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/locks/sessions", tag = "sessions", operation_id = "list_sessions",
    params(SessionListQuery),
    responses(
        (status = 200, body = SessionList, description = "A page of the live sessions, in session-id order"),
        (status = 422, body = ErrorBody, description = "`limit` out of range or a malformed `cursor` (invalid_parameter)")))]
pub async fn list(
    State(app): State<AppState>,
    ApiQuery(query): ApiQuery<SessionListQuery>,
) -> ApiResult<SessionList> {
    let cursor = query
        .cursor
        .as_deref()
        .map(|raw| {
            SessionId::parse(raw).map_err(|_| {
                ApiError::unprocessable(
                    "invalid_parameter",
                    format!(
                        "`cursor` must be the `next_cursor` of a previous page (a session id), got {}",
                        quoted(raw)
                    ),
                )
            })
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(DEFAULT_SESSION_PAGE);
    let at = app.sessions(cursor.as_ref(), limit).await?;
    let sessions: Vec<SessionView> = at
        .value
        .sessions
        .iter()
        .map(|s| SessionView::new(s, at.now))
        .collect();
    Ok(Json(SessionList {
        count: sessions.len(),
        sessions,
        next_cursor: at.value.next_cursor.map(|id| id.to_string()),
    }))
}

/// The renewed session, with `success` as the original server answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionActivity {
    pub success: bool,
    #[serde(flatten)]
    pub session: SessionView,
}

#[utoipa::path(post, path = "/api/locks/sessions/{session_id}/activity", tag = "sessions", operation_id = "renew_session",
    responses(
        (status = 200, body = SessionActivity, description = "The renewed session"),
        (status = 403, body = ErrorBody, description = "Another user's session (forbidden)"),
        (status = 404, body = ErrorBody, description = "No live session with this id (session_not_found)")))]
pub async fn activity(
    State(app): State<AppState>,
    Caller(actor): Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<SessionActivity> {
    let at = app.touch_session(&session_in_path(&id)?, &actor).await?;
    Ok(Json(SessionActivity {
        success: true,
        session: SessionView::new(&at.value, at.now),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionLocks {
    pub session_id: String,
    /// The locks it holds, exclusive and observer.
    pub locks: Vec<LockView>,
    /// The queues it waits in, with its position in each.
    pub queued: Vec<QueueEntryView>,
    pub count: usize,
}

#[utoipa::path(get, path = "/api/locks/sessions/{session_id}/locks", tag = "sessions", operation_id = "session_locks",
    responses(
        (status = 200, body = SessionLocks, description = "Its locks and queue places"),
        (status = 404, body = ErrorBody, description = "No live session with this id (session_not_found)")))]
pub async fn locks(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<SessionLocks> {
    let id = session_in_path(&id)?;
    let at = app.session_holdings(&id).await?;
    let locks: Vec<LockView> = at
        .value
        .locks
        .iter()
        .map(|(equipment, g)| LockView::new(equipment, g, at.now))
        .collect();
    let queued = at
        .value
        .queued
        .iter()
        .map(|(equipment, e, pos)| QueueEntryView::new(equipment, e, *pos))
        .collect();
    Ok(Json(SessionLocks {
        session_id: id.to_string(),
        count: locks.len(),
        locks,
        queued,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Limit {
    /// How many of the newest events to return (1..=1000, default 50).
    #[serde(default, deserialize_with = "extract::limit")]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

impl Limit {
    pub fn get(&self) -> usize {
        self.limit.unwrap_or(50)
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionEvents {
    pub session_id: String,
    pub events: Vec<Event>,
    pub count: usize,
}

#[utoipa::path(get, path = "/api/locks/sessions/{session_id}/events", tag = "sessions", operation_id = "session_events",
    params(Limit),
    responses(
        (status = 200, body = SessionEvents, description = "Its newest events, oldest first (readable after it ends)"),
        (status = 404, body = ErrorBody, description = "No session ever had this id (session_not_found)"),
        (status = 422, body = ErrorBody, description = "`limit` out of range (invalid_parameter)")))]
pub async fn events(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(limit): ApiQuery<Limit>,
) -> ApiResult<SessionEvents> {
    let id = session_in_path(&id)?;
    let at = app.session_events(&id, limit.get()).await?;
    Ok(Json(SessionEvents {
        session_id: id.to_string(),
        count: at.value.len(),
        events: at.value,
    }))
}
