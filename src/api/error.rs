//! The one place where errors become HTTP: every error of the layers below
//! maps to a status and a snake_case code here, and is sent as
//! `{"detail": ..., "code": ...}`. 5xx causes are logged, and the client
//! is told what failed without internals.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::DomainError;
use crate::drivers::DriverError;
use crate::service::ServiceError;
use crate::storage::StoreError;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What happened and what to do about it.
    pub detail: String,
    /// A stable snake_case code for programs.
    pub code: &'static str,
}

/// `raw` as a JSON string for an error text, cut to 64 characters so a
/// huge value sent by a client is not echoed back whole.
pub fn quoted(raw: &str) -> String {
    const SHOWN: usize = 64;
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    match raw.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}...", quote(&raw[..cut])),
        None => quote(raw),
    }
}

/// Marks a 401 or 403 answer with its code and reason, so the
/// authentication middleware, which knows the user, can log it.
#[derive(Clone, Debug)]
pub struct Denied {
    pub code: &'static str,
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        match e {
            crate::auth::AuthError::Store(store) => ServiceError::Store(store).into(),
            crate::auth::AuthError::Missing
            | crate::auth::AuthError::NotBearer(_)
            | crate::auth::AuthError::QueryTokenNotHere => {
                Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())
            }
            crate::auth::AuthError::Invalid => {
                Self::new(StatusCode::UNAUTHORIZED, "invalid_token", e.to_string())
            }
        }
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
        }
    }

    /// What to mark a 401 or 403 answer with (see `Denied`).
    pub fn denied(&self) -> Option<Denied> {
        matches!(
            self.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        )
        .then(|| Denied {
            code: self.code,
            detail: self.detail.clone(),
        })
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }
}

fn domain_status(e: &DomainError) -> (StatusCode, &'static str) {
    use DomainError::*;
    match e {
        InvalidId { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_id"),
        InvalidTimestamp(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_timestamp"),
        InvalidTimeout(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_timeout"),
        Busy { .. } => (StatusCode::CONFLICT, "equipment_locked"),
        QueueDisabled { .. } => (StatusCode::CONFLICT, "queue_disabled"),
        WaitTimedOut { .. } => (StatusCode::CONFLICT, "queue_timeout"),
        InMaintenance { .. } => (StatusCode::CONFLICT, "in_maintenance"),
        NotInMaintenance { .. } => (StatusCode::NOT_FOUND, "not_in_maintenance"),
        ObserverModeDisabled => (StatusCode::FORBIDDEN, "observer_mode_disabled"),
        NotHolder { .. } => (StatusCode::FORBIDDEN, "not_lock_holder"),
        LockLost { .. } => (StatusCode::FORBIDDEN, "lock_lost"),
        NoLock { lost: Some(_), .. } => (StatusCode::NOT_FOUND, "lock_lost"),
        NoLock { lost: None, .. } => (StatusCode::NOT_FOUND, "no_lock"),
        NotLocked { .. } => (StatusCode::NOT_FOUND, "not_locked"),
        NotQueued { .. } => (StatusCode::NOT_FOUND, "not_queued"),
        CannotTrade(_) => (StatusCode::CONFLICT, "cannot_trade"),
        GroupConflict { .. } => (StatusCode::CONFLICT, "group_conflict"),
        SessionNotFound(_) => (StatusCode::NOT_FOUND, "session_not_found"),
        StaleFencingToken { .. } | UnissuedFencingToken { .. } => {
            (StatusCode::CONFLICT, "stale_fencing_token")
        }
        Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        SessionRequired => (StatusCode::UNAUTHORIZED, "session_required"),
        SessionNotLive { .. } => (StatusCode::FORBIDDEN, "session_not_live"),
        MetadataTooLarge { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
    }
}

/// The setting behind a refusal, appended to the domain's text (the rules
/// do not know how the server is configured) so the client learns what to
/// change.
fn domain_setting(e: &DomainError) -> Option<&'static str> {
    match e {
        DomainError::QueueDisabled { .. }
        | DomainError::InMaintenance {
            can_queue: false, ..
        } => Some("LABLINK_ENABLE_LOCK_QUEUE=false"),
        DomainError::ObserverModeDisabled => Some("LABLINK_ENABLE_OBSERVER_MODE=false"),
        DomainError::MetadataTooLarge { .. } => Some("LABLINK_MAX_METADATA_BYTES"),
        _ => None,
    }
}

fn driver_status(e: &DriverError) -> (StatusCode, &'static str) {
    match e {
        DriverError::InvalidParameter(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_parameter"),
        DriverError::Rejected(_) => (StatusCode::CONFLICT, "instrument_rejected"),
        DriverError::Instrument(_) => (StatusCode::BAD_GATEWAY, "instrument_error"),
        DriverError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "instrument_timeout"),
        DriverError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "instrument_unavailable"),
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let (status, code) = match &e {
            ServiceError::Domain(d) => domain_status(d),
            ServiceError::Store(StoreError::Unavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            ServiceError::Store(StoreError::Corrupt(_)) => {
                tracing::error!(error = %e, "stored data is unreadable");
                return Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "internal error",
                );
            }
            ServiceError::NoSuchGroup(_) => (StatusCode::NOT_FOUND, "no_lock"),
            ServiceError::EquipmentNotFound(_)
            | ServiceError::NoSuchPool(_)
            | ServiceError::GroupIsNoInstrument { .. } => {
                (StatusCode::NOT_FOUND, "equipment_not_found")
            }
            ServiceError::UnknownAction { .. } => (StatusCode::BAD_REQUEST, "unknown_action"),
            ServiceError::InvalidParameter(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_parameter")
            }
            ServiceError::Driver(d) => driver_status(d),
            ServiceError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        };
        // Instrument failures are the instrument's, logged (as warnings) by
        // the service with the command they failed.
        if status.is_server_error() && !matches!(e, ServiceError::Driver(_)) {
            tracing::error!(error = %e, code, "request failed");
        }
        let setting = match &e {
            ServiceError::Domain(d) => domain_setting(d),
            _ => None,
        };
        let detail = match setting {
            Some(setting) => format!("{e} ({setting})"),
            None => e.to_string(),
        };
        Self::new(status, code, detail)
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        ServiceError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized =
            self.status == StatusCode::UNAUTHORIZED && self.code != "session_required";
        let denied = self.denied();
        let mut response = (
            self.status,
            Json(ErrorBody {
                detail: self.detail.clone(),
                code: self.code,
            }),
        )
            .into_response();
        if let Some(denied) = denied {
            response.extensions_mut().insert(denied);
        }
        // Kept beside the body so that a route whose errors have another
        // shape (commands) can reshape the ones raised around its handler.
        response.extensions_mut().insert(self);
        if unauthorized {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"lablink\""),
            );
        }
        response
    }
}

pub type ApiResult<T> = Result<Json<T>, ApiError>;
