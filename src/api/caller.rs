//! Authentication at the HTTP edge: a middleware that verifies every API
//! request's bearer token (or, on `/api/ws` only, since browsers cannot set
//! headers on a WebSocket, an `access_token` query parameter) and the
//! `Caller` extractor that hands handlers the verified `Actor`. Denied
//! requests (401, 403) are logged here, at info, with the reason and the
//! user when known.

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::edge::AccessNote;
use super::error::{ApiError, Denied};
use crate::auth::Credentials;
use crate::domain::Actor;

/// The route that takes a token in its query string.
const QUERY_TOKEN_ROUTE: &str = "/api/ws";

fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("access_token="))
}

/// Rejects API requests without valid credentials (when authentication is
/// on) and records who sent the others.
pub async fn authenticate(
    State(app): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("(not text)").to_owned());
    let in_query = query_token(request.uri().query());
    let credentials = match (&header, in_query) {
        (Some(header), _) => Credentials::Header(header),
        (None, Some(token)) if route == QUERY_TOKEN_ROUTE => Credentials::QueryToken(token),
        (None, Some(_)) => Credentials::MisplacedQueryToken,
        (None, None) => Credentials::None,
    };
    let method = request.method().clone();
    match app.auth().verify(credentials).await {
        Ok(verified) => {
            let user = verified.actor.user.clone();
            if let Some(note) = request.extensions().get::<AccessNote>() {
                note.user(user.as_deref());
            }
            request.extensions_mut().insert(verified.actor);
            if let Some(credential) = verified.credential {
                request.extensions_mut().insert(credential);
            }
            let response = next.run(request).await;
            if let Some(Denied { code, detail }) = response.extensions().get::<Denied>() {
                tracing::info!(%method, %route, status = response.status().as_u16(), %code, user = %user.as_deref().unwrap_or("-"), reason = %detail, "request denied");
            }
            response
        }
        Err(e) => {
            let error = ApiError::from(e);
            if !error.status.is_server_error() {
                tracing::info!(%method, %route, status = error.status.as_u16(), code = %error.code, reason = %error.detail, "request denied");
            }
            error.into_response()
        }
    }
}

/// The verified caller of this request.
pub struct Caller(pub Actor);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // The middleware always runs first on API routes; refuse rather
        // than guess if it somehow did not.
        parts
            .extensions
            .get::<Actor>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| ApiError::from(crate::auth::AuthError::Missing))
    }
}
