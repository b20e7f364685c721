//! The web dashboard: `GET /` and `GET /assets/{file}` serve the page
//! (plain HTML, CSS and ES modules from `web/`, compiled into the binary
//! with `include_bytes!`, so it works offline and needs no build step), and
//! `GET /api/whoami` tells the page who its token belongs to, so it shows
//! only what that user may do. The page itself speaks the public API only.
//!
//! Every asset is answered with an `ETag` (a hash of its bytes) and
//! `Cache-Control: no-cache`, so a browser revalidates with one cheap 304
//! and never runs a page older than the binary; and with a
//! Content-Security-Policy that lets the page load and connect to this
//! server only.

use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router, middleware};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::AppState;
use super::caller::{self, Caller};
use super::error::ApiError;
use crate::auth::AuthMode;

/// Scripts, styles, images and connections (fetch and the WebSocket) from
/// this server only; no inline script or style, no plugins, no framing.
const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; manifest-src 'self'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file: its name under `/assets/`, its media type, its bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("live.js", JS),
    asset!("ui.js", JS),
    asset!("overview.js", JS),
    asset!("instrument.js", JS),
    asset!("sessions.js", JS),
    asset!("analytics.js", JS),
    asset!("model.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
];

/// Each asset's ETag, computed once: a strong validator from its bytes.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.bytes);
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header value")
        })
        .collect()
});

/// The dashboard's routes; `/api/whoami` goes through authentication like
/// every other API route.
pub fn router(app: AppState) -> Router {
    let whoami_route = Router::new()
        .route("/api/whoami", get(whoami))
        .method_not_allowed_fallback(super::method_not_allowed)
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            caller::authenticate,
        ))
        .with_state(app);
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
        .method_not_allowed_fallback(super::method_not_allowed)
        .merge(whoami_route)
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers).expect("index.html is embedded")
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    serve(&file, &headers).ok_or_else(|| {
        ApiError::not_found(format!(
            "no dashboard asset {}; the dashboard is at /",
            super::error::quoted(&file)
        ))
    })
}

/// The asset named `name` (304 when the client's copy is current), or
/// `None` if there is no such asset.
fn serve(name: &str, headers: &HeaderMap) -> Option<Response> {
    let index = ASSETS.iter().position(|a| a.name == name)?;
    let (asset, etag) = (&ASSETS[index], &ETAGS[index]);
    let fresh = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    let common = [
        (ETAG, etag.clone()),
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
        ),
        (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ];
    Some(if fresh {
        (StatusCode::NOT_MODIFIED, common).into_response()
    } else {
        (
            common,
            [(CONTENT_TYPE, HeaderValue::from_static(asset.content_type))],
            asset.bytes,
        )
            .into_response()
    })
}

/// Who the request's token belongs to.
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    /// Whether this server requires API tokens.
    pub auth_required: bool,
    /// The token's user; null when authentication is off.
    pub user: Option<String>,
    /// `admin`, `operator` or `observer`; `admin` when authentication is
    /// off (anyone may do anything).
    pub role: String,
}

#[utoipa::path(get, path = "/api/whoami", tag = "auth", operation_id = "whoami",
    responses((status = 200, body = WhoAmI, description = "The caller's user and role")))]
pub async fn whoami(State(app): State<AppState>, Caller(actor): Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        auth_required: app.auth().mode() == AuthMode::Required,
        user: actor.user,
        role: actor.role.as_str().to_owned(),
    })
}
