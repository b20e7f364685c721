//! The HTTP API (axum). Handlers are thin: extract, call one service method,
//! shape the answer. Errors go through `error::ApiError`, the only mapping
//! to status codes. The API describes itself at `/openapi.json` and `/docs`.

pub mod analytics;
pub mod caller;
pub mod dashboard;
pub mod edge;
pub mod equipment;
pub mod error;
pub mod extract;
pub mod health;
pub mod locks;
pub mod manage;
pub mod metrics;
pub mod schema;
pub mod sessions;
pub mod views;
pub mod wire;
pub mod ws;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
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
        description = "Share a lab's instruments: sessions, exclusive and observer locks, a fair queue, leases, permission-checked commands, and history. With authentication on, send `Authorization: Bearer <token>` (the Authorize button)."
    ),
    paths(
        sessions::create, sessions::end, sessions::get, sessions::list, sessions::activity,
        sessions::locks, sessions::events,
        locks::acquire, locks::release, locks::activity, locks::status, locks::queue,
        locks::all, locks::events, locks::history, locks::cleanup, analytics::analytics,
        manage::remove_queue_entry, manage::force_end_session,
        manage::start_maintenance, manage::end_maintenance, manage::list_maintenance,
        manage::step_back, manage::swap_places,
        equipment::list, equipment::status, equipment::command,
        ws::upgrade, dashboard::whoami,
        health::healthz, health::readyz, health::version, metrics::scrape,
    ),
    components(schemas(Id, locks::HistoryEventKind, analytics::GroupByName, analytics::FormatName)),
    modifiers(&Conventions),
    // Optional: the same document serves servers with authentication on
    // and off.
    security((), ("bearer" = [])),
    tags(
        (name = "sessions", description = "Client sessions"),
        (name = "locks", description = "Locks, queues and history"),
        (name = "manage", description = "The lab manager's controls (admins once authentication is on)"),
        (name = "equipment", description = "Instruments and their commands"),
        (name = "live", description = "Live events over a WebSocket"),
        (name = "operations", description = "Health, readiness, version and metrics, for operators' tools (no token needed; /metrics needs one with authentication on unless LABLINK_METRICS_PUBLIC, which is the default on loopback)"),
        (name = "auth", description = "Who the caller is"),
    )
)]
pub struct ApiDoc;

/// A session or equipment id as the API accepts it (`domain::ids`): 1 to
/// 128 characters, none of them whitespace or control characters.
pub struct Id;

impl utoipa::PartialSchema for Id {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(crate::domain::ids::MAX_ID_LEN))
            .pattern(Some(crate::domain::ids::ID_PATTERN))
            .description(Some(
                "1 to 128 characters, none of them whitespace or control characters",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Id {}

/// A client's address in the schema: an IPv4 or an IPv6 address.
pub struct IpAddress;

impl utoipa::PartialSchema for IpAddress {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
        };
        let address = |format| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(format)))
        };
        OneOfBuilder::new()
            .item(address(KnownFormat::Ipv4))
            .item(address(KnownFormat::Ipv6))
            .description(Some("An IPv4 or IPv6 address"))
            .into()
    }
}

impl utoipa::ToSchema for IpAddress {}

/// A `timeout_seconds` in the schema: exactly 0 (no timeout), or from 1 ms
/// to 10⁹ s (what `Timeout::from_seconds` accepts).
pub struct TimeoutSeconds;

impl utoipa::PartialSchema for TimeoutSeconds {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Type};
        let range = |min: f64, max: f64| {
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(min))
                .maximum(Some(max))
        };
        AnyOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .enum_values(Some([0])),
            )
            .item(range(0.001, 1e9))
            .description(Some(
                "Seconds of inactivity before the lease ends: 0 = none, else 0.001 (1 ms) to 1e9",
            ))
            .into()
    }
}

impl utoipa::ToSchema for TimeoutSeconds {}

/// What every operation shares, added to the generated document in one
/// place: the bearer scheme, path parameters, and the error answers that
/// come from the layers around the handlers (authentication, body and query
/// parsing, the store). Command errors carry the `CommandResponse` fields.
struct Conventions;

impl utoipa::Modify for Conventions {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("llk_ token from `lablink token create`")
                    .description(Some(
                        "Needed when the server runs with authentication on (LABLINK_AUTH=required)",
                    ))
                    .build(),
            ),
        );
        any_of_param_values(components);
        for (schema, alternatives) in [
            (
                "AcquireBody",
                &[&["equipment_id", "equipment_ids", "any_of"][..]][..],
            ),
            // A release names its group by id or by instruments, not both.
            (
                "ReleaseBody",
                &[&["group_id"][..], &["equipment_id", "equipment_ids"][..]][..],
            ),
            ("AnyOf", &[&["tags", "equipment_ids"][..]][..]),
        ] {
            require_one_of(components, schema, alternatives);
        }
        declare_links(api);
        let components = api.components.clone().unwrap_or_default();
        for (path, item) in api.paths.paths.iter_mut() {
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.delete,
                &mut item.put,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                declare_path_params(path, op);
                optional_body_when_no_field_is_required(&components, op);
                declare_layer_errors(path, op);
            }
        }
    }
}

/// How answers feed later requests (OpenAPI links): a new session's id goes
/// into lock and command requests, a lock's equipment, session and fencing
/// token into commands, renewals and releases. Clients and generated tests
/// read these to chain calls as a person would.
fn declare_links(api: &mut utoipa::openapi::OpenApi) {
    use serde_json::json;
    use utoipa::openapi::RefOr;
    use utoipa::openapi::link::LinkBuilder;
    let from_session = json!({"session_id": "$response.body#/session_id"});
    let from_lock = json!({
        "session_id": "$request.body#/session_id",
        "equipment_id": "$request.body#/equipment_id",
    });
    let links = [
        (
            "/api/locks/sessions/create",
            "acquire_lock",
            "Acquire",
            from_session.clone(),
            None,
        ),
        (
            "/api/locks/sessions/create",
            "release_lock",
            "Release",
            from_session.clone(),
            None,
        ),
        (
            "/api/locks/sessions/create",
            "run_command",
            "Command",
            from_session,
            None,
        ),
        (
            "/api/locks/acquire",
            "release_lock",
            "Release",
            from_lock.clone(),
            None,
        ),
        (
            "/api/locks/acquire",
            "renew_lock",
            "Renew",
            json!({"session_id": "$request.body#/session_id"}),
            Some("$request.body#/equipment_id"),
        ),
        (
            "/api/locks/acquire",
            "run_command",
            "Command",
            json!({
                "session_id": "$request.body#/session_id",
                "fencing_token": "$response.body#/lock/fencing_token",
            }),
            Some("$request.body#/equipment_id"),
        ),
    ];
    for (path, target, name, body, equipment) in links {
        let Some(RefOr::T(ok)) = api
            .paths
            .paths
            .get_mut(path)
            .and_then(|item| item.post.as_mut())
            .and_then(|op| op.responses.responses.get_mut("200"))
        else {
            continue;
        };
        let mut link = LinkBuilder::new()
            .operation_id(target)
            .request_body(Some(body));
        if let Some(equipment) = equipment {
            link = link.parameter("equipment_id", equipment);
        }
        ok.links.insert(name.into(), RefOr::T(link.build()));
    }
}

/// A parameter default is a number, an integer, a boolean or a string; an
/// integer is also a number, so the alternatives overlap: `anyOf`, not
/// `oneOf` (under which `1` would match two and be invalid).
fn any_of_param_values(components: &mut utoipa::openapi::Components) {
    use utoipa::openapi::{RefOr, schema::AnyOf, schema::Schema};
    if let Some(RefOr::T(Schema::OneOf(one_of))) = components.schemas.get_mut("ParamValue") {
        let mut any_of = AnyOf::new();
        any_of.items = std::mem::take(&mut one_of.items);
        any_of.description = one_of.description.take();
        components
            .schemas
            .insert("ParamValue".into(), RefOr::T(Schema::AnyOf(any_of)));
    }
}

/// Says that an object needs fields of exactly one of `alternatives` (each
/// field optional on its own): at least one field of that alternative, and
/// none of another. Written next to the object's schema as `anyOf` of
/// `required` lists, in a `oneOf` when there are several alternatives.
fn require_one_of(
    components: &mut utoipa::openapi::Components,
    name: &str,
    alternatives: &[&[&str]],
) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{AllOf, AnyOf, ObjectBuilder, OneOf, Schema};
    let Some(object) = components.schemas.remove(name) else {
        return;
    };
    let any_field_of = |fields: &[&str]| {
        let mut any = AnyOf::new();
        for field in fields {
            let required = ObjectBuilder::new().required(*field).build();
            any.items.push(RefOr::T(Schema::Object(required)));
        }
        Schema::AnyOf(any)
    };
    let needed = match alternatives {
        [only] => any_field_of(only),
        several => {
            let mut one = OneOf::new();
            one.items = several
                .iter()
                .map(|fields| RefOr::T(any_field_of(fields)))
                .collect();
            Schema::OneOf(one)
        }
    };
    let mut all = AllOf::new();
    all.items = vec![object, RefOr::T(needed)];
    components
        .schemas
        .insert(name.into(), RefOr::T(Schema::AllOf(all)));
}

/// An empty body reads as `{}` (`extract::ApiJson`), so a body none of
/// whose fields is required may be left out.
fn optional_body_when_no_field_is_required(
    components: &utoipa::openapi::Components,
    op: &mut utoipa::openapi::path::Operation,
) {
    use utoipa::openapi::{RefOr, Required, schema::Schema};
    let Some(RefOr::T(body)) = &mut op.request_body else {
        return;
    };
    let schema_name = body.content.values().find_map(|c| match c {
        RefOr::T(c) => match &c.schema {
            Some(RefOr::Ref(r)) => r.ref_location.rsplit('/').next().map(str::to_owned),
            _ => None,
        },
        RefOr::Ref(_) => None,
    });
    let all_optional = schema_name
        .and_then(|name| components.schemas.get(&name))
        .is_some_and(|s| matches!(s, RefOr::T(Schema::Object(o)) if o.required.is_empty()));
    if all_optional {
        body.required = Some(Required::False);
    }
}

fn path_param_names(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
}

fn declare_path_params(path: &str, op: &mut utoipa::openapi::path::Operation) {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::{RefOr, Required, schema::Ref};
    let params = op.parameters.get_or_insert_with(Vec::new);
    for name in path_param_names(path) {
        let declared = params
            .iter()
            .any(|p| matches!(p, RefOr::T(p) if p.name == name));
        if declared {
            continue;
        }
        let (description, example) = match name {
            "equipment_id" => (
                "A registered instrument's id (see GET /api/equipment/list)",
                Some("ps_abc123"),
            ),
            "session_id" => (
                "A session's id, as POST /api/locks/sessions/create returned it",
                None,
            ),
            _ => ("", None),
        };
        params.push(RefOr::T(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(description))
                .schema(Some(Ref::from_schema_name("Id")))
                .example(example.map(serde_json::Value::from))
                .build(),
        ));
    }
}

fn declare_layer_errors(path: &str, op: &mut utoipa::openapi::path::Operation) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder, schema::Ref};
    let body = if path == "/api/equipment/{equipment_id}/command" {
        "CommandResponse"
    } else {
        "ErrorBody"
    };
    let has = |kind: ParameterIn| {
        op.parameters.iter().flatten().any(|p| match p {
            RefOr::T(p) => p.parameter_in == kind,
            RefOr::Ref(_) => false,
        })
    };
    let (has_path, has_query) = (has(ParameterIn::Path), has(ParameterIn::Query));
    let has_body = op.request_body.is_some();
    let touches_store = !matches!(
        path,
        "/api/equipment/list" | "/api/ws" | "/healthz" | "/api/version" | "/metrics"
    );
    // The probes take no token (`health`).
    let authenticated = !matches!(path, "/healthz" | "/readyz" | "/api/version");
    let layer_errors = [
        (
            "400",
            has_path || has_body,
            "The path or the body could not be read (invalid_path, unreadable_body)",
        ),
        (
            "401",
            authenticated,
            "Authentication is on and the request has no valid token (unauthenticated, invalid_token)",
        ),
        (
            "405",
            true,
            "The path does not take the method sent (method_not_allowed); the operations listed for the path are the methods it takes",
        ),
        (
            "413",
            has_body,
            "The request body is larger than 1 MiB (body_too_large)",
        ),
        (
            "422",
            has_body || has_query,
            "The body or a query parameter is malformed (invalid_json, invalid_body, invalid_parameter)",
        ),
        (
            "503",
            touches_store,
            "The store is unavailable; nothing was changed (store_unavailable)",
        ),
    ];
    for (status, applies, description) in layer_errors {
        if applies && !op.responses.responses.contains_key(status) {
            op.responses.responses.insert(
                status.into(),
                RefOr::T(
                    ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name(body)))
                                .build(),
                        )
                        .build(),
                ),
            );
        }
    }
}

/// The OpenAPI document served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// An equipment id from a path: one that cannot be valid is simply unknown.
pub fn equipment_in_path(raw: &str) -> Result<EquipmentId, ApiError> {
    EquipmentId::parse(raw).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "equipment_not_found",
            format!(
                "equipment {} is not registered; GET /api/equipment/list shows what is",
                error::quoted(raw)
            ),
        )
    })
}

/// A session id from a path: one that cannot be valid is simply unknown.
pub fn session_in_path(raw: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(raw).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "session_not_found",
            format!("session {} not found", error::quoted(raw)),
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

pub fn router(service: AppState) -> Router {
    let authenticate = middleware::from_fn_with_state(service.clone(), caller::authenticate);
    // Commands answer every error with the CommandResponse fields, those of
    // authentication included, so their reshaping wraps it.
    let commands = Router::new()
        .route(
            "/api/equipment/{equipment_id}/command",
            post(equipment::command),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(authenticate.clone())
        .route_layer(middleware::map_response_with_state(
            service.clone(),
            equipment::command_errors,
        ))
        .with_state(service.clone());
    let dashboard = dashboard::router(service.clone());
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
        .route(
            "/api/locks/sessions/{session_id}/end",
            post(manage::force_end_session),
        )
        .route(
            "/api/locks/queue/{equipment_id}/{session_id}/remove",
            post(manage::remove_queue_entry),
        )
        .route("/api/equipment/maintenance", get(manage::list_maintenance))
        .route(
            "/api/equipment/{equipment_id}/maintenance",
            post(manage::start_maintenance).delete(manage::end_maintenance),
        )
        .route(
            "/api/locks/queue/{equipment_id}/step-back",
            post(manage::step_back),
        )
        .route(
            "/api/locks/queue/{equipment_id}/swap",
            post(manage::swap_places),
        )
        .route("/api/locks/acquire", post(locks::acquire))
        .route("/api/locks/release", post(locks::release))
        .route("/api/locks/activity/{equipment_id}", post(locks::activity))
        .route("/api/locks/status/{equipment_id}", get(locks::status))
        .route("/api/locks/queue/{equipment_id}", get(locks::queue))
        .route("/api/locks/all", get(locks::all))
        .route("/api/locks/events", get(locks::history))
        .route("/api/locks/analytics", get(analytics::analytics))
        .route("/api/locks/events/{equipment_id}", get(locks::events))
        .route("/api/locks/cleanup", post(locks::cleanup))
        .route("/api/ws", get(ws::upgrade))
        .route("/api/equipment/list", get(equipment::list))
        .route(
            "/api/equipment/{equipment_id}/status",
            get(equipment::status),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(authenticate)
        .with_state(service)
        .merge(commands);
    Router::new()
        .merge(api)
        .merge(dashboard)
        .merge(
            SwaggerUi::new("/docs")
                .url("/openapi.json", openapi())
                // No requests to swagger.io's online validator: the docs
                // stay offline and private ("none" switches it off).
                .config(utoipa_swagger_ui::Config::new(["/openapi.json"]).validator_url("none")),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

/// Everything the server serves: the API, the probes (`store_file`: the
/// database file of a file store), the metrics (`metrics_public`: scraped
/// without a token with authentication on) and the edge layers around them.
pub fn app(
    service: AppState,
    edge: &edge::Edge,
    store_file: Option<health::StoreFile>,
    metrics_public: bool,
) -> Router {
    edge.wrap(
        router(service.clone())
            .merge(health::routes(service.clone(), store_file))
            .merge(metrics::routes(service, metrics_public))
            // Every route answers a method it does not take with the JSON
            // error, the probes' and the docs' too (the routers above set
            // theirs; this reaches the ones merged without it).
            .method_not_allowed_fallback(method_not_allowed),
    )
}
