//! What wraps every route at the HTTP edge: the request metrics (always),
//! and as the operator sets it: one
//! access-log line per request (`LABLINK_ACCESS_LOG`) and cross-origin
//! access for browser clients served from elsewhere
//! (`LABLINK_CORS_ORIGINS`, through tower-http's CORS layer, which answers
//! preflight requests itself).

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::ServiceExt;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::domain::SessionId;

/// The `tracing` target of access-log lines (`RUST_LOG=lablink::access=off`
/// silences them too).
pub const ACCESS_TARGET: &str = "lablink::access";

/// The edge settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    /// One info line per request.
    pub access_log: bool,
    /// `None`: browsers may call the API only from pages it serves itself.
    pub cors: Option<CorsOrigins>,
}

impl Default for Edge {
    fn default() -> Self {
        Self {
            access_log: true,
            cors: None,
        }
    }
}

/// Which browser origins may call the API from their pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `*`: any page (tokens are sent as a header, never as cookies, so no
    /// page gets a user's access without the user's token).
    Any,
    /// Exactly these origins (`https://lab.example.org:8443`).
    Only(Vec<String>),
}

impl CorsOrigins {
    /// `*`, or a comma list of `http(s)://host[:port]`; blank means none.
    pub fn parse(raw: &str) -> Result<Option<Self>, &'static str> {
        const EXPECTED: &str = "expected * or a comma list of origins such as https://lab.example.org or http://localhost:3000 (scheme, host and port only, no path)";
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        if raw == "*" {
            return Ok(Some(Self::Any));
        }
        let mut origins = Vec::new();
        for origin in raw.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            // Browsers send the origin without a trailing slash.
            let origin = origin.strip_suffix('/').unwrap_or(origin);
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                .ok_or(EXPECTED)?;
            let valid = !host.is_empty()
                && !host.contains(['/', '?', '#', '*', ' '])
                && HeaderValue::from_str(origin).is_ok();
            if !valid {
                return Err(EXPECTED);
            }
            origins.push(origin.to_owned());
        }
        if origins.is_empty() {
            return Err(EXPECTED);
        }
        Ok(Some(Self::Only(origins)))
    }

    fn layer(&self) -> CorsLayer {
        let origins = match self {
            Self::Any => AllowOrigin::any(),
            Self::Only(list) => AllowOrigin::list(
                list.iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok())
                    .collect::<Vec<_>>(),
            ),
        };
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            // Error answers to a missing token say how to authenticate.
            .expose_headers([header::WWW_AUTHENTICATE])
            // A browser asks again at most every ten minutes.
            .max_age(Duration::from_secs(600))
    }
}

impl Edge {
    /// `app` with the request metrics, the access log and CORS around
    /// every route (the fallback included).
    pub fn wrap(&self, mut app: Router) -> Router {
        if let Some(cors) = &self.cors {
            // A request without `Origin` is no cross-origin one: it is
            // answered as if CORS were off (no `access-control-*` header;
            // an `OPTIONS` is not taken for a preflight).
            let same_origin = app.clone();
            app = app.layer(cors.layer());
            app = app.layer(middleware::from_fn(move |request: Request, next: Next| {
                let same_origin = same_origin.clone();
                async move {
                    if request.headers().contains_key(header::ORIGIN) {
                        next.run(request).await
                    } else {
                        match same_origin.oneshot(request).await {
                            Ok(response) => response,
                            Err(never) => match never {},
                        }
                    }
                }
            }));
            if let CorsOrigins::Only(list) = cors {
                let listed: Arc<[HeaderValue]> = list
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok())
                    .collect();
                app = app.layer(middleware::from_fn(move |request, next| {
                    without_cors_for_others(listed.clone(), request, next)
                }));
            }
        }
        // Outside CORS, so preflights are counted too.
        app = app.layer(middleware::from_fn(measure_request));
        if self.access_log {
            // Outermost, so preflights and refusals are logged too.
            app = app.layer(middleware::from_fn(access_log));
        }
        app
    }
}

/// An answer to a page of an origin not listed carries no
/// `access-control-*` header at all: tower-http leaves out only
/// `Access-Control-Allow-Origin` (which suffices for the browser), but
/// methods and headers allowed to others are nobody else's business.
async fn without_cors_for_others(
    listed: Arc<[HeaderValue]>,
    request: Request,
    next: Next,
) -> Response {
    let unlisted = request
        .headers()
        .get(header::ORIGIN)
        .is_some_and(|origin| !listed.contains(origin));
    let mut response = next.run(request).await;
    if unlisted {
        let names: Vec<header::HeaderName> = response
            .headers()
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in names {
            response.headers_mut().remove(name);
        }
    }
    response
}

/// Who sent a request and which session it named, as the layers inside
/// learn them (authentication, the body), for its access-log line.
#[derive(Clone, Default)]
pub struct AccessNote(Arc<Mutex<Noted>>);

#[derive(Default)]
struct Noted {
    user: Option<String>,
    session: Option<SessionId>,
}

impl AccessNote {
    pub fn user(&self, user: Option<&str>) {
        self.noted().user = user.map(str::to_owned);
    }

    /// A session id the request names, if it is one.
    pub fn session(&self, raw: &str) {
        if let Ok(id) = SessionId::parse(raw) {
            self.noted().session = Some(id);
        }
    }

    /// Notes the `session_id` of a JSON body, if it has one.
    pub fn session_in_body(&self, body: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Named<'a> {
            #[serde(borrow)]
            session_id: Option<&'a str>,
        }
        // Most bodies name no session: skip the second parse for them.
        let mentions = body.windows(12).any(|w| w == b"\"session_id\"");
        if let Some(raw) = mentions
            .then(|| serde_json::from_slice::<Named<'_>>(body).ok())
            .flatten()
            .and_then(|n| n.session_id)
        {
            self.session(raw);
        }
    }

    fn noted(&self) -> std::sync::MutexGuard<'_, Noted> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The path segment a route template names `{session_id}`.
fn session_in_path<'a>(route: &str, path: &'a str) -> Option<&'a str> {
    let at = route.split('/').position(|s| s == "{session_id}")?;
    path.split('/').nth(at)
}

/// Counts each request and times it, by method, route template (the
/// fallback's requests as `<unmatched>`: never the raw path) and status.
async fn measure_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    crate::measure::http_request(
        method.as_str(),
        route.as_ref().map_or(UNMATCHED, |r| r.as_str()),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The route of a request no route matched, in logs and metrics.
const UNMATCHED: &str = "<unmatched>";

/// Logs each request once it is answered: method, route template (not the
/// raw path, so every session id is not its own key), status, latency,
/// user and session when known.
async fn access_log(mut request: Request, next: Next) -> Response {
    // Only pay for the note and the clock when the line will be written.
    if !tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
        return next.run(request).await;
    }
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let note = AccessNote::default();
    if let Some(raw) = route
        .as_deref()
        .and_then(|r| session_in_path(r, request.uri().path()))
    {
        note.session(raw);
    }
    request.extensions_mut().insert(note.clone());
    let response = next.run(request).await;
    let latency_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    let noted = note.noted();
    tracing::info!(
        target: ACCESS_TARGET,
        method = %method,
        route = route.as_deref().unwrap_or(UNMATCHED),
        status = response.status().as_u16(),
        latency_ms,
        user = noted.user.as_deref().unwrap_or("-"),
        session = noted.session.as_ref().map_or("-", |s| s.as_str()),
        "request"
    );
    drop(noted);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_a_star_or_a_list_of_scheme_host_port() {
        assert_eq!(CorsOrigins::parse(" "), Ok(None));
        assert_eq!(CorsOrigins::parse("*"), Ok(Some(CorsOrigins::Any)));
        assert_eq!(
            CorsOrigins::parse("https://a.example/, http://localhost:3000"),
            Ok(Some(CorsOrigins::Only(vec![
                "https://a.example".into(),
                "http://localhost:3000".into()
            ])))
        );
        for bad in [
            "a.example",
            "https://",
            "https://a.example/app",
            "*, https://a.example",
            "ftp://a.example",
            ",",
        ] {
            assert!(CorsOrigins::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_session_is_found_in_the_path_or_the_body() {
        assert_eq!(
            session_in_path(
                "/api/locks/sessions/{session_id}/events",
                "/api/locks/sessions/s1/events"
            ),
            Some("s1")
        );
        assert_eq!(
            session_in_path("/api/locks/acquire", "/api/locks/acquire"),
            None
        );
        let note = AccessNote::default();
        note.session_in_body(br#"{"equipment_id": "x", "session_id": "s2"}"#);
        assert_eq!(
            note.noted().session.as_ref().map(|s| s.as_str()),
            Some("s2")
        );
        let note = AccessNote::default();
        note.session_in_body(br#"{"session_id": 5}"#);
        assert!(note.noted().session.is_none(), "not a session id");
    }
}
