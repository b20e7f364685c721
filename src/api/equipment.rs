//! Equipment endpoints: what is registered, each instrument's status, and
//! running commands under the lock rules.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::caller::Caller;
use super::error::{ApiError, ApiResult, ErrorBody, quoted};
use super::extract::{ApiJson, ApiPath};
use super::views::LockStatusView;
use super::{AppState, Id, equipment_in_path};
use crate::domain::SessionId;
use crate::domain::ids::MAX_ID_LEN;
use crate::drivers::ActionSpec;
use crate::service::CommandInput;

#[derive(Debug, Serialize, ToSchema)]
pub struct EquipmentSummary {
    pub equipment_id: String,
    pub name: String,
    pub driver: String,
    pub model: String,
    /// What it is, for pools (`any_of: {"tags": [...]}` on acquire).
    pub tags: Vec<String>,
}

/// A configured lock group: acquire and release it by `group_id` like an
/// instrument; it is granted only with every member.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupSummary {
    pub group_id: String,
    pub name: String,
    pub members: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EquipmentList {
    pub equipment: Vec<EquipmentSummary>,
    pub count: usize,
    /// The configured lock groups (`[[group]]`).
    pub groups: Vec<GroupSummary>,
}

#[utoipa::path(get, path = "/api/equipment/list", tag = "equipment", operation_id = "list_equipment",
    responses((status = 200, body = EquipmentList, description = "Every registered instrument")))]
pub async fn list(State(app): State<AppState>) -> Json<EquipmentList> {
    let equipment: Vec<EquipmentSummary> = app
        .instruments()
        .iter()
        .map(|i| EquipmentSummary {
            equipment_id: i.id.to_string(),
            name: i.name.clone(),
            driver: i.driver.driver_name().into(),
            model: i.driver.model(),
            tags: i.tags.clone(),
        })
        .collect();
    let groups = app
        .named_groups()
        .iter()
        .map(|g| GroupSummary {
            group_id: g.id.to_string(),
            name: g.name.clone(),
            members: g.members.iter().map(|m| m.to_string()).collect(),
        })
        .collect();
    Json(EquipmentList {
        count: equipment.len(),
        equipment,
        groups,
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EquipmentStatus {
    pub equipment_id: String,
    pub name: String,
    pub driver: String,
    pub model: String,
    /// The instrument's own state (setpoints, readings, ...).
    #[schema(value_type = Object)]
    pub state: Value,
    /// Who holds it and who waits.
    pub lock: LockStatusView,
    /// Every action the driver knows, with its access class and parameters.
    pub actions: Vec<ActionSpec>,
}

#[utoipa::path(get, path = "/api/equipment/{equipment_id}/status", tag = "equipment", operation_id = "equipment_status",
    responses(
        (status = 200, body = EquipmentStatus, description = "Its state, lock and actions"),
        (status = 404, body = ErrorBody, description = "No such equipment (equipment_not_found)")))]
pub async fn status(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<EquipmentStatus> {
    let id = equipment_in_path(&id)?;
    let instrument = app.instrument(&id)?.clone();
    let locks = app.lock_state(&id).await?;
    // Drivers answer this from what they know, without waiting for the
    // instrument, so a busy or hung instrument never slows the status page.
    let state = instrument.driver.state().await;
    Ok(Json(EquipmentStatus {
        equipment_id: id.to_string(),
        name: instrument.name.clone(),
        driver: instrument.driver.driver_name().into(),
        model: instrument.driver.model(),
        state,
        lock: LockStatusView::new(&locks.value, locks.now),
        actions: instrument.driver.actions().to_vec(),
    }))
}

/// The brief's `Command`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Command {
    /// The client's id for this command, echoed back: at most 128
    /// characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 128, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub command_id: Option<String>,
    /// Must match the path when given.
    #[serde(default)]
    #[schema(value_type = Option<Id>)]
    pub equipment_id: Option<String>,
    /// One of the instrument's actions (GET /api/equipment/{equipment_id}/status lists them).
    pub action: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    /// Required for every action while locks are enabled.
    #[serde(default)]
    #[schema(value_type = Option<Id>)]
    pub session_id: Option<String>,
    /// The fencing token of the lock this command is sent under.
    #[serde(default)]
    pub fencing_token: Option<u64>,
}

/// The brief's `CommandResponse`. Failures also carry `detail` and `code`,
/// like every other error.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandResponse {
    pub command_id: Option<String>,
    pub success: bool,
    /// What the action returned; null when it failed.
    #[schema(value_type = Option<Object>)]
    pub data: Value,
    pub error: Option<String>,
    pub timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
}

struct CommandFailure {
    command_id: Option<String>,
    timestamp: String,
    error: ApiError,
}

impl IntoResponse for CommandFailure {
    fn into_response(self) -> Response {
        let status: StatusCode = self.error.status;
        let denied = self.error.denied();
        let body = CommandResponse {
            command_id: self.command_id,
            success: false,
            data: Value::Null,
            error: Some(self.error.detail.clone()),
            timestamp: self.timestamp,
            detail: Some(self.error.detail),
            code: Some(self.error.code),
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(denied) = denied {
            response.extensions_mut().insert(denied);
        }
        response
    }
}

/// Gives the errors raised around the command handler (authentication)
/// the `CommandResponse` fields, like the handler's own failures.
pub async fn command_errors(State(app): State<AppState>, response: Response) -> Response {
    let Some(error) = response.extensions().get::<ApiError>().cloned() else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let (_, body) = CommandFailure {
        command_id: None,
        timestamp: app.clock().now().to_rfc3339(),
        error,
    }
    .into_response()
    .into_parts();
    Response::from_parts(parts, body)
}

/// A `command_id`: like other ids, at most `MAX_ID_LEN` characters; like
/// other texts, no control characters.
fn check_command_id(raw: &str) -> Result<(), ApiError> {
    if raw.chars().count() > MAX_ID_LEN {
        return Err(ApiError::unprocessable(
            "invalid_parameter",
            format!("`command_id` must be at most {MAX_ID_LEN} characters"),
        ));
    }
    super::sessions::plain("command_id", raw)
}

#[utoipa::path(post, path = "/api/equipment/{equipment_id}/command", tag = "equipment", operation_id = "run_command",
    request_body = Command,
    responses(
        (status = 200, body = CommandResponse, description = "Done: `data` is what the action returned"),
        (status = 400, body = CommandResponse, description = "Unknown action (unknown_action), or an unreadable path or body"),
        (status = 401, body = CommandResponse, description = "No session_id while locks are on (session_required), or no valid token (unauthenticated, invalid_token)"),
        (status = 403, body = CommandResponse, description = "No suitable lock (not_lock_holder; lock_lost if it was lost), or not allowed (forbidden, session_not_live)"),
        (status = 404, body = CommandResponse, description = "No such equipment or session (equipment_not_found, session_not_found)"),
        (status = 409, body = CommandResponse, description = "A stale fencing token, or the instrument's state forbids it (stale_fencing_token, instrument_rejected)"),
        (status = 422, body = CommandResponse, description = "A malformed body or parameter (invalid_json, invalid_body, invalid_parameter, invalid_id, equipment_mismatch)"),
        (status = 502, body = CommandResponse, description = "The instrument reported an error (instrument_error)"),
        (status = 503, body = CommandResponse, description = "The instrument or the store is unavailable (instrument_unavailable, store_unavailable)"),
        (status = 504, body = CommandResponse, description = "The instrument did not answer in time (instrument_timeout)")))]
pub async fn command(
    State(app): State<AppState>,
    Caller(actor): Caller,
    ApiPath(id): ApiPath<String>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Response {
    // A body that is JSON but not a valid command still has its
    // command_id echoed in the failure, like every other command error.
    let body = body.map(|ApiJson(value)| value);
    let given_id = body
        .as_ref()
        .ok()
        .and_then(|v| v.get("command_id")?.as_str().map(str::to_owned));
    // One that is too long or has control characters is refused, and not
    // echoed back.
    let id_refused = given_id
        .as_deref()
        .map(check_command_id)
        .and_then(Result::err);
    let command_id = given_id.filter(|_| id_refused.is_none());
    let outcome = async {
        let body: Command = ApiJson::from_value(body?)?;
        if let Some(refused) = id_refused {
            return Err(refused);
        }
        let id = equipment_in_path(&id)?;
        if let Some(given) = body
            .equipment_id
            .as_deref()
            .filter(|given| *given != id.as_str())
        {
            return Err(ApiError::unprocessable(
                "equipment_mismatch",
                format!(
                    "`equipment_id` {} in the body does not match {} in the path",
                    quoted(given),
                    quoted(id.as_str())
                ),
            ));
        }
        let session_id = body
            .session_id
            .as_deref()
            .map(SessionId::parse)
            .transpose()?;
        let input = CommandInput {
            command_id: command_id.clone(),
            actor,
            equipment_id: id,
            action: body.action,
            parameters: body.parameters.unwrap_or_default(),
            session_id,
            fencing_token: body.fencing_token,
        };
        Ok(app.run_command(input).await?)
    }
    .await;
    match outcome {
        Ok(at) => Json(CommandResponse {
            command_id,
            success: true,
            data: at.value,
            error: None,
            timestamp: at.now.to_rfc3339(),
            detail: None,
            code: None,
        })
        .into_response(),
        Err(error) => CommandFailure {
            command_id,
            timestamp: app.clock().now().to_rfc3339(),
            error,
        }
        .into_response(),
    }
}
