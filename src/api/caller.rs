//! Authentication at the HTTP edge: a middleware that verifies every API
//! request's bearer token (or, for WebSockets, whose browsers cannot set
//! headers, an `access_token` query parameter) and the `Caller` extractor
//! that hands handlers the verified `Actor`.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::domain::Actor;

fn query_token(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("access_token="))
        .map(|t| t.to_owned())
}

/// Rejects API requests without valid credentials (when authentication is
/// on) and records who sent the others.
pub async fn authenticate(
    State(app): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let credentials = header.or_else(|| query_token(request.uri().query()));
    match app.auth().verify(credentials.as_deref()) {
        Ok(actor) => {
            request.extensions_mut().insert(actor);
            next.run(request).await
        }
        Err(e) => ApiError::from(e).into_response(),
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
