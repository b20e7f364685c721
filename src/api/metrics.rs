//! `GET /metrics`: the server's metrics in the Prometheus text format
//! (`measure` names them). The state gauges (locks held, sessions live,
//! queue lengths) are read from the store at each scrape, on the read
//! path; everything else is recorded as it happens.
//!
//! Whether a scrape needs a token when authentication is on is the
//! operator's choice (`LABLINK_METRICS_PUBLIC`; by default open on a
//! loopback bind, a token of any role otherwise).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::time::Duration;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use crate::measure::{self, InstrumentState};

/// How long the state read may take before a scrape answers without it
/// (Prometheus's own scrape timeout is 10 s by default).
const STATE_WITHIN: Duration = Duration::from_secs(2);

/// The Prometheus text format's content type.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `/metrics` route; `public`: scraped without a token even with
/// authentication on.
pub fn routes(service: AppState, public: bool) -> Router {
    let route = Router::new().route("/metrics", get(scrape));
    let route = if public {
        route
    } else {
        route.route_layer(middleware::from_fn_with_state(
            service.clone(),
            super::caller::authenticate,
        ))
    };
    route.with_state(service)
}

#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics",
    responses(
        (status = 200, content_type = "text/plain; version=0.0.4", body = String,
            description = "The metrics in the Prometheus text format (README, Metrics, lists them)"),
        (status = 500, body = ErrorBody, description = "Metrics are not exported in this process (internal_error)"),
    ))]
pub async fn scrape(State(service): State<AppState>) -> Response {
    let Some(recorder) = measure::recorder() else {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "metrics are not exported: another metrics recorder was installed in this process",
        )
        .into_response();
    };
    match tokio::time::timeout(STATE_WITHIN, service.occupancy()).await {
        Ok(Ok(at)) => measure::state(
            at.value.sessions_live,
            at.value.instruments.iter().map(|i| InstrumentState {
                equipment_id: i.equipment_id.as_str(),
                exclusive: i.exclusive,
                observers: i.observers,
                queued: i.queued,
            }),
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: the state gauges could not be read");
            measure::state_stale();
        }
        Err(_) => {
            tracing::warn!(within = ?STATE_WITHIN, "metrics: the state gauges were not read in time");
            measure::state_stale();
        }
    }
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], recorder.render()).into_response()
}
