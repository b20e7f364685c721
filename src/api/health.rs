//! Probes for operators and their tools: `/healthz` (the process answers),
//! `/readyz` (the store answers) and `/api/version`. None of them needs a
//! token, so a load balancer or an orchestrator can ask without one; none
//! tells more than the version and whether the store is up.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};

/// How long the readiness read may take before the store counts as down.
const READY_WITHIN: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// The store, as the server names it.
    #[schema(example = "sqlite:///var/lib/lablink/lablink.db")]
    pub store: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Version {
    #[schema(example = "lablink")]
    pub name: &'static str,
    /// This server's version (from its Cargo package).
    #[schema(example = "0.1.0")]
    pub version: &'static str,
}

/// The database file a file store was opened on, as it was then: if the
/// path no longer leads to that file (deleted, moved, its directory
/// unmounted), the server still reads and writes the open file, but
/// whatever it writes is lost at the next start.
#[derive(Clone, Debug)]
pub struct StoreFile {
    path: PathBuf,
    identity: Option<(u64, u64)>,
}

impl StoreFile {
    /// The file at `path` as it is now.
    pub fn at(path: PathBuf) -> Self {
        let identity = identity(&path);
        Self { path, identity }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Why the file is not the one the store works on, if it is not.
    fn moved(&self) -> Option<String> {
        let path = self.path.display();
        match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
                "the database file {path} is gone (deleted, or its directory moved or unmounted): changes would be lost at the next start; put it back or restart the server"
            )),
            Err(e) => Some(format!("the database file {path} cannot be examined: {e}")),
            Ok(_) if identity(&self.path) != self.identity => Some(format!(
                "the database file {path} was replaced by another file since the server opened it; restart the server to use it"
            )),
            Ok(_) => None,
        }
    }
}

#[cfg(unix)]
fn identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn identity(_: &std::path::Path) -> Option<(u64, u64)> {
    None
}

#[derive(Clone)]
pub struct Probes {
    service: AppState,
    store_file: Option<Arc<StoreFile>>,
}

/// The probe routes; `store_file` is the database file of a file store.
pub fn routes(service: AppState, store_file: Option<StoreFile>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/version", get(version))
        .with_state(Probes {
            service,
            store_file: store_file.map(Arc::new),
        })
}

#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "health",
    security(()),
    responses((status = 200, body = Health, description = "The process answers")))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "ready",
    security(()),
    responses(
        (status = 200, body = Ready, description = "The store answers a read"),
        (status = 503, body = ErrorBody, description = "The store does not answer, or its file is gone (store_unavailable); the detail says why"),
    ))]
pub async fn readyz(State(probes): State<Probes>) -> Result<Json<Ready>, ApiError> {
    let down = |detail: String| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", detail)
    };
    if let Some(why) = probes.store_file.as_ref().and_then(|f| f.moved()) {
        tracing::warn!(reason = %why, "not ready");
        return Err(down(why));
    }
    match tokio::time::timeout(READY_WITHIN, probes.service.check_store()).await {
        Ok(Ok(())) => Ok(Json(Ready {
            status: "ready",
            store: probes.service.describe_store(),
        })),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready");
            Err(down(e.to_string()))
        }
        Err(_) => Err(down(format!(
            "the store did not answer a read within {} s",
            READY_WITHIN.as_secs()
        ))),
    }
}

#[utoipa::path(get, path = "/api/version", tag = "operations", operation_id = "version",
    security(()),
    responses((status = 200, body = Version, description = "Which LabLink this is")))]
pub async fn version() -> Json<Version> {
    Json(Version {
        name: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
    })
}
