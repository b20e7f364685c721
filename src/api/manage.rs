//! The lab manager's endpoints: remove someone's queue entry, end
//! someone's session. Admins only once authentication is on.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::caller::Caller;
use super::error::{ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use super::sessions::{SessionEnded, short_text};
use super::views::QueueEntryView;
use super::{AppState, Id, equipment_in_path, session_in_path};
use crate::domain::{Actor, SessionId};
use crate::service::Intervention;

/// Who intervenes and why.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InterventionBody {
    /// Recorded as `forced_by` in the events, as in a forced release (a
    /// session id or a name such as "lab-manager").
    #[schema(value_type = Id, example = "lab-manager")]
    pub forced_by: String,
    /// Why, for the history and the one it happens to (at most 256
    /// characters).
    #[serde(default)]
    #[schema(max_length = 256)]
    pub message: Option<String>,
}

impl InterventionBody {
    fn parse(self, actor: Actor) -> Result<Intervention, super::error::ApiError> {
        Ok(Intervention {
            actor,
            forced_by: SessionId::parse(&self.forced_by)?,
            message: short_text("message", self.message)?,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueRemoved {
    pub success: bool,
    /// "removed".
    pub status: &'static str,
    /// The entry as it was (its position just before removal).
    pub queue_entry: QueueEntryView,
}

#[utoipa::path(post, path = "/api/locks/queue/{equipment_id}/{session_id}/remove", tag = "manage", operation_id = "remove_queue_entry",
    request_body = InterventionBody,
    responses(
        (status = 200, body = QueueRemoved, description = "Removed; the waiter hears `queue_place_lost`"),
        (status = 403, body = ErrorBody, description = "Not an admin (forbidden)"),
        (status = 404, body = ErrorBody, description = "Not in that queue, or no such equipment (not_queued, equipment_not_found)"),
        (status = 422, body = ErrorBody, description = "A malformed field (invalid_id, invalid_body)")))]
pub async fn remove_queue_entry(
    State(app): State<AppState>,
    Caller(actor): Caller,
    ApiPath((equipment, session)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<InterventionBody>,
) -> ApiResult<QueueRemoved> {
    let equipment = equipment_in_path(&equipment)?;
    let session = session_in_path(&session)?;
    let by = body.parse(actor)?;
    let at = app.remove_from_queue(&equipment, &session, by).await?;
    Ok(Json(QueueRemoved {
        success: true,
        status: "removed",
        queue_entry: QueueEntryView::new(&equipment, &at.value.0, at.value.1),
    }))
}

#[utoipa::path(post, path = "/api/locks/sessions/{session_id}/end", tag = "manage", operation_id = "force_end_session",
    request_body = InterventionBody,
    responses(
        (status = 200, body = SessionEnded, description = "Ended: its locks released (whatever LABLINK_AUTO_RELEASE_ON_DISCONNECT says), its queue places gone"),
        (status = 403, body = ErrorBody, description = "Not an admin (forbidden)"),
        (status = 404, body = ErrorBody, description = "No live session with this id (session_not_found)"),
        (status = 422, body = ErrorBody, description = "A malformed field (invalid_id, invalid_body)")))]
pub async fn force_end_session(
    State(app): State<AppState>,
    Caller(actor): Caller,
    ApiPath(session): ApiPath<String>,
    ApiJson(body): ApiJson<InterventionBody>,
) -> ApiResult<SessionEnded> {
    let session = session_in_path(&session)?;
    let by = body.parse(actor)?;
    let at = app.end_session_forced(&session, by).await?;
    Ok(Json(SessionEnded {
        success: true,
        message: "Session ended by an admin".into(),
        session_id: session.to_string(),
        locks_released: at.value.locks_released,
    }))
}
