//! The lab manager's endpoints: remove someone's queue entry, end
//! someone's session, maintenance. Admins only once authentication is on
//! (the list of instruments in maintenance is a read, open to all).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

use super::caller::Caller;
use super::error::{ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use super::sessions::{SessionEnded, short_text};
use super::views::{MaintenanceView, QueueEntryView};
use super::{AppState, Id, equipment_in_path, session_in_path};
use crate::domain::{Actor, SessionId, Timestamp};
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
    #[schema(max_length = 256, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub message: Option<String>,
}

impl InterventionBody {
    fn parse(self, actor: Actor) -> Result<Intervention, super::error::ApiError> {
        Ok(Intervention {
            actor,
            forced_by: SessionId::parse_field("forced_by", &self.forced_by)?,
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

#[derive(Debug, Deserialize, ToSchema)]
pub struct MaintenanceBody {
    /// Why it is out of service (1 to 256 characters), shown in its status.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*$",
        example = "calibration"
    )]
    pub reason: String,
    /// When service resumes by itself (RFC 3339, in the future); absent:
    /// when an admin ends it.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub until: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MaintenanceResponse {
    pub success: bool,
    pub equipment_id: String,
    /// The maintenance started, or the one that ended.
    pub maintenance: MaintenanceView,
}

#[utoipa::path(post, path = "/api/equipment/{equipment_id}/maintenance", tag = "manage", operation_id = "start_maintenance",
    request_body = MaintenanceBody,
    responses(
        (status = 200, body = MaintenanceResponse, description = "Out of service; the holder keeps its lock and is warned"),
        (status = 403, body = ErrorBody, description = "Not an admin (forbidden)"),
        (status = 404, body = ErrorBody, description = "No such equipment (equipment_not_found)"),
        (status = 422, body = ErrorBody, description = "A bad reason or until (invalid_body, invalid_timestamp)")))]
pub async fn start_maintenance(
    State(app): State<AppState>,
    Caller(actor): Caller,
    ApiPath(equipment): ApiPath<String>,
    ApiJson(body): ApiJson<MaintenanceBody>,
) -> ApiResult<MaintenanceResponse> {
    let equipment = equipment_in_path(&equipment)?;
    let reason = short_text("reason", Some(body.reason))?.unwrap_or_default();
    if reason.trim().is_empty() {
        return Err(super::error::ApiError::unprocessable(
            "invalid_body",
            "`reason` must say why the equipment is out of service",
        ));
    }
    let until = body
        .until
        .as_deref()
        .map(|raw| {
            Timestamp::parse_rfc3339(raw).map_err(|e| {
                super::error::ApiError::unprocessable("invalid_timestamp", format!("`until`: {e}"))
            })
        })
        .transpose()?;
    let at = app
        .start_maintenance(&equipment, reason, until, &actor)
        .await?;
    Ok(Json(MaintenanceResponse {
        success: true,
        equipment_id: equipment.to_string(),
        maintenance: MaintenanceView::new(&at.value),
    }))
}

#[utoipa::path(delete, path = "/api/equipment/{equipment_id}/maintenance", tag = "manage", operation_id = "end_maintenance",
    responses(
        (status = 200, body = MaintenanceResponse, description = "Back in service; its queue is served"),
        (status = 403, body = ErrorBody, description = "Not an admin (forbidden)"),
        (status = 404, body = ErrorBody, description = "No such equipment, or not in maintenance (equipment_not_found, not_in_maintenance)")))]
pub async fn end_maintenance(
    State(app): State<AppState>,
    Caller(actor): Caller,
    ApiPath(equipment): ApiPath<String>,
) -> ApiResult<MaintenanceResponse> {
    let equipment = equipment_in_path(&equipment)?;
    let at = app.end_maintenance(&equipment, &actor).await?;
    Ok(Json(MaintenanceResponse {
        success: true,
        equipment_id: equipment.to_string(),
        maintenance: MaintenanceView::new(&at.value),
    }))
}

/// Every instrument out of service, for views of all of them at once
/// (the dashboard's overview, `GET /api/locks/all` being about locks).
#[derive(Debug, Serialize, ToSchema)]
pub struct MaintenanceList {
    /// By equipment id; an instrument in service is not listed.
    pub maintenance: BTreeMap<String, MaintenanceView>,
    pub count: usize,
}

#[utoipa::path(get, path = "/api/equipment/maintenance", tag = "manage", operation_id = "list_maintenance",
    responses((status = 200, body = MaintenanceList, description = "Every instrument in maintenance now")))]
pub async fn list_maintenance(State(app): State<AppState>) -> ApiResult<MaintenanceList> {
    // Equipment in maintenance is never idle, so it is among the busy.
    let at = app.busy_equipment().await?;
    let maintenance: BTreeMap<String, MaintenanceView> = at
        .value
        .iter()
        .filter_map(|locks| {
            let m = locks.maintenance_at(at.now)?;
            Some((locks.equipment_id.to_string(), MaintenanceView::new(m)))
        })
        .collect();
    Ok(Json(MaintenanceList {
        count: maintenance.len(),
        maintenance,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct TradeBody {
    /// The waiting session that trades its place (yours).
    #[schema(value_type = Id)]
    pub session_id: String,
}

/// A swap: both waiters ask, each naming the other.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SwapBody {
    /// The waiting session that trades its place (yours).
    #[schema(value_type = Id)]
    pub session_id: String,
    /// The waiter to swap with (it must ask for the same).
    #[schema(value_type = Id)]
    pub with_session_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TradeResponse {
    pub success: bool,
    /// "stepped_back", "swapped", or "offered" (a swap waiting for the
    /// other waiter to ask too).
    pub status: &'static str,
    pub equipment_id: String,
    /// The session's position now (1-based).
    pub position: usize,
}

#[utoipa::path(post, path = "/api/locks/queue/{equipment_id}/step-back", tag = "locks", operation_id = "step_back",
    request_body = TradeBody,
    responses(
        (status = 200, body = TradeResponse, description = "It and the waiter behind it traded places"),
        (status = 403, body = ErrorBody, description = "Another user's session (forbidden)"),
        (status = 404, body = ErrorBody, description = "Not in that queue, no such session or equipment (not_queued, session_not_found, equipment_not_found)"),
        (status = 409, body = ErrorBody, description = "Last in line: nobody to let go first (cannot_trade)"),
        (status = 422, body = ErrorBody, description = "A malformed id (invalid_id)")))]
pub async fn step_back(
    State(app): State<AppState>,
    Caller(actor): Caller,
    ApiPath(equipment): ApiPath<String>,
    ApiJson(body): ApiJson<TradeBody>,
) -> ApiResult<TradeResponse> {
    let equipment = equipment_in_path(&equipment)?;
    let session = SessionId::parse(&body.session_id)?;
    let at = app.step_back(&equipment, &session, &actor).await?;
    Ok(Json(TradeResponse {
        success: true,
        status: "stepped_back",
        equipment_id: equipment.to_string(),
        position: at.value,
    }))
}

#[utoipa::path(post, path = "/api/locks/queue/{equipment_id}/swap", tag = "locks", operation_id = "swap_places",
    request_body = SwapBody,
    responses(
        (status = 200, body = TradeResponse, description = "Swapped (both asked), or offered"),
        (status = 403, body = ErrorBody, description = "Another user's session (forbidden)"),
        (status = 404, body = ErrorBody, description = "One of them is not in that queue, or no such session or equipment (not_queued, session_not_found, equipment_not_found)"),
        (status = 409, body = ErrorBody, description = "Swapping with itself (cannot_trade)"),
        (status = 422, body = ErrorBody, description = "A malformed or missing id (invalid_id, invalid_body)")))]
pub async fn swap_places(
    State(app): State<AppState>,
    Caller(actor): Caller,
    ApiPath(equipment): ApiPath<String>,
    ApiJson(body): ApiJson<SwapBody>,
) -> ApiResult<TradeResponse> {
    let equipment = equipment_in_path(&equipment)?;
    let session = SessionId::parse(&body.session_id)?;
    let other = SessionId::parse_field("with_session_id", &body.with_session_id)?;
    let at = app
        .swap_places(&equipment, &session, &other, &actor)
        .await?;
    let (swapped, position) = at.value;
    Ok(Json(TradeResponse {
        success: true,
        status: if swapped { "swapped" } else { "offered" },
        equipment_id: equipment.to_string(),
        position,
    }))
}
