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
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use super::views::LockStatusView;
use super::{AppState, equipment_in_path};
use crate::domain::SessionId;
use crate::drivers::ActionSpec;
use crate::service::CommandInput;

#[derive(Debug, Serialize, ToSchema)]
pub struct EquipmentSummary {
    pub equipment_id: String,
    pub name: String,
    pub driver: String,
    pub model: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EquipmentList {
    pub equipment: Vec<EquipmentSummary>,
    pub count: usize,
}

#[utoipa::path(get, path = "/api/equipment/list", tag = "equipment",
    responses((status = 200, body = EquipmentList)))]
pub async fn list(State(app): State<AppState>) -> Json<EquipmentList> {
    let equipment: Vec<EquipmentSummary> = app
        .instruments()
        .iter()
        .map(|i| EquipmentSummary {
            equipment_id: i.id.to_string(),
            name: i.name.clone(),
            driver: i.driver.driver_name().into(),
            model: i.driver.model(),
        })
        .collect();
    Json(EquipmentList {
        count: equipment.len(),
        equipment,
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

#[utoipa::path(get, path = "/api/equipment/{equipment_id}/status", tag = "equipment",
    responses((status = 200, body = EquipmentStatus), (status = 404, body = ErrorBody)))]
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
    /// The client's id for this command, echoed back.
    #[serde(default)]
    pub command_id: Option<String>,
    /// Must match the path when given.
    #[serde(default)]
    pub equipment_id: Option<String>,
    pub action: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    /// Required for every action while locks are enabled.
    #[serde(default)]
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
    #[schema(value_type = Object)]
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

#[utoipa::path(post, path = "/api/equipment/{equipment_id}/command", tag = "equipment",
    request_body = Command,
    responses((status = 200, body = CommandResponse),
        (status = 400, body = CommandResponse, description = "unknown action"),
        (status = 401, body = CommandResponse, description = "no session_id"),
        (status = 403, body = CommandResponse, description = "no suitable lock; code lock_lost if it was lost"),
        (status = 404, body = ErrorBody),
        (status = 409, body = CommandResponse, description = "stale fencing token or instrument state"),
        (status = 422, body = CommandResponse, description = "bad parameter")))]
pub async fn command(
    State(app): State<AppState>,
    Caller(actor): Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Command>,
) -> Response {
    let command_id = body.command_id.clone();
    let outcome = async {
        let id = equipment_in_path(&id)?;
        if let Some(given) = body
            .equipment_id
            .as_deref()
            .filter(|given| *given != id.as_str())
        {
            return Err(ApiError::unprocessable(
                "equipment_mismatch",
                format!("equipment_id {given:?} in the body does not match {id:?} in the path"),
            ));
        }
        let session_id = body
            .session_id
            .as_deref()
            .map(SessionId::parse)
            .transpose()?;
        let input = CommandInput {
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
