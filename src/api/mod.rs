//! The HTTP API (axum). Handlers are thin: extract, call one service method,
//! shape the answer. Errors go through `error::ApiError`, the only mapping
//! to status codes. The API describes itself at `/openapi.json` and `/docs`.

pub mod caller;
pub mod equipment;
pub mod error;
pub mod extract;
pub mod locks;
pub mod sessions;
pub mod views;
pub mod ws;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::domain::{EquipmentId, SessionId};
use crate::service::Service;
use error::ApiError;

pub type AppState = Arc<Service>;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 1 << 20;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "LabLink",
        description = "Share a lab's instruments: sessions, exclusive and observer locks, a fair queue, leases, permission-checked commands, and history."
    ),
    paths(
        sessions::create, sessions::end, sessions::get, sessions::list, sessions::activity,
        sessions::locks, sessions::events,
        locks::acquire, locks::release, locks::activity, locks::status, locks::queue,
        locks::all, locks::events, locks::history, locks::cleanup,
        equipment::list, equipment::status, equipment::command,
        ws::upgrade,
    ),
    tags(
        (name = "sessions", description = "Client sessions"),
        (name = "locks", description = "Locks, queues and history"),
        (name = "equipment", description = "Instruments and their commands"),
        (name = "live", description = "Live events over a WebSocket"),
    )
)]
pub struct ApiDoc;

/// An equipment id from a path: one that cannot be valid is simply unknown.
pub fn equipment_in_path(raw: &str) -> Result<EquipmentId, ApiError> {
    EquipmentId::parse(raw).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "equipment_not_found",
            format!("equipment {raw:?} is not registered; GET /api/equipment/list shows what is"),
        )
    })
}

/// A session id from a path: one that cannot be valid is simply unknown.
pub fn session_in_path(raw: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(raw).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "session_not_found",
            format!("session {raw:?} not found"),
        )
    })
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /docs for the API")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method; see /docs for the API",
    )
}

/// Logs each request with its route template (not the raw path, which
/// would make every session id its own log key).
async fn log_request(request: Request, next: Next) -> Response {
    // Only pay for the route and the clock when the line will be written.
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "<unmatched>".into());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    tracing::debug!(
        %method,
        route,
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}

pub fn router(service: AppState) -> Router {
    let api = Router::new()
        .route("/api/locks/sessions/create", post(sessions::create))
        .route("/api/locks/sessions", get(sessions::list))
        .route(
            "/api/locks/sessions/{session_id}",
            get(sessions::get).delete(sessions::end),
        )
        .route(
            "/api/locks/sessions/{session_id}/activity",
            post(sessions::activity),
        )
        .route(
            "/api/locks/sessions/{session_id}/locks",
            get(sessions::locks),
        )
        .route(
            "/api/locks/sessions/{session_id}/events",
            get(sessions::events),
        )
        .route("/api/locks/acquire", post(locks::acquire))
        .route("/api/locks/release", post(locks::release))
        .route("/api/locks/activity/{equipment_id}", post(locks::activity))
        .route("/api/locks/status/{equipment_id}", get(locks::status))
        .route("/api/locks/queue/{equipment_id}", get(locks::queue))
        .route("/api/locks/all", get(locks::all))
        .route("/api/locks/events", get(locks::history))
        .route("/api/locks/events/{equipment_id}", get(locks::events))
        .route("/api/locks/cleanup", post(locks::cleanup))
        .route("/api/ws", get(ws::upgrade))
        .route("/api/equipment/list", get(equipment::list))
        .route(
            "/api/equipment/{equipment_id}/status",
            get(equipment::status),
        )
        .route(
            "/api/equipment/{equipment_id}/command",
            post(equipment::command),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(
            service.clone(),
            caller::authenticate,
        ))
        .with_state(service);
    Router::new()
        .merge(api)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(log_request))
}
