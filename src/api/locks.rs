//! Lock endpoints: acquire, release, renew, status, queue, everything held,
//! an equipment's history, and the manual cleanup.

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::http::header::USER_AGENT;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use utoipa::ToSchema;

use super::caller::Caller;
use super::error::{ApiError, ApiResult, ErrorBody, quoted};
use super::extract::{self, ApiJson, ApiPath, ApiQuery};
use super::sessions::{Limit, MAX_TEXT};
use super::views::{LockStatusView, LockView, QueueEntryView};
use super::{AppState, Id, equipment_in_path};
use crate::domain::group::GroupOutcome;
use crate::domain::number::Compact;
use crate::domain::priority::{MAX_PRIORITY, MIN_PRIORITY, checked as checked_priority};
use crate::domain::{
    AcquireOutcome, EquipmentId, Event, EventKind, LockMode, Obstacle, ReleaseOutcome, SessionId,
    Timeout, Timestamp,
};
use crate::service::{
    AcquireInput, At, ClientInfo, ExpiryReport, GroupAcquired, GroupAsk, GroupTarget,
};
use crate::storage::EventQuery;

#[derive(Debug, Deserialize, ToSchema)]
pub struct AcquireBody {
    /// The instrument, or a configured lock group's id. Required unless
    /// `equipment_ids` or `any_of` is given.
    #[schema(value_type = Id, required = false, example = "ps_abc123")]
    #[serde(default)]
    pub equipment_id: Option<String>,
    /// A lock group: every one of these instruments, granted all at once
    /// or not at all (with `equipment_id` naming one more, or a group).
    #[schema(value_type = Vec<Id>, required = false, min_items = 1, max_items = 64)]
    #[serde(default)]
    pub equipment_ids: Option<Vec<String>>,
    /// A pool: any one free instrument among these (its tags, or its
    /// ids), alone or with the group named by the other fields.
    #[schema(value_type = AnyOf, required = false)]
    #[serde(default)]
    pub any_of: Option<AnyOf>,
    /// A session that is not live is opened for the caller (implicit
    /// sessions, unless LABLINK_IMPLICIT_SESSIONS=false).
    #[schema(value_type = Id)]
    pub session_id: String,
    /// "exclusive" (default) or "observer".
    #[serde(default)]
    pub lock_mode: Option<LockMode>,
    /// Inactivity timeout in seconds; defaults to LABLINK_LOCK_TIMEOUT_SEC; 0 = none.
    #[schema(value_type = Option<super::TimeoutSeconds>)]
    pub timeout_seconds: Option<f64>,
    /// Wait in the FIFO queue when the equipment is busy.
    #[serde(default)]
    pub queue_if_busy: Option<bool>,
    /// If queued, hold the request open up to this many seconds (0..=3600)
    /// until the lock is granted; the answer is then `locked`, or `queued`
    /// with the current position.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 3600)]
    pub wait_seconds: Option<f64>,
    /// -10..=10 (default 0): a higher priority is served first from the
    /// queue, equal ones in arrival order; waiting raises it by one step
    /// each LABLINK_PRIORITY_AGING_SEC. Never takes a held lock. Above 0
    /// needs an admin once authentication is on (or a role's cap).
    /// Read as a number: JSON's `-4.0` is the integer -4, as the schema
    /// says.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = -10, maximum = 10)]
    pub priority: Option<f64>,
    /// If queued, leave the queue after this many seconds without a grant
    /// (a `queue_timeout` event); 0 or absent: wait as long as it takes.
    #[serde(default)]
    #[schema(value_type = Option<super::TimeoutSeconds>)]
    pub max_wait_seconds: Option<f64>,
    /// If granted from the queue, claim it (renew, command, or ask again)
    /// within this many seconds or it passes to the next (`claim_expired`);
    /// defaults to LABLINK_CLAIM_WINDOW_SEC; 0 = no claim needed.
    #[serde(default)]
    #[schema(value_type = Option<super::TimeoutSeconds>)]
    pub claim_within_seconds: Option<f64>,
}

/// A pool: the instruments an acquire may get any one of.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AnyOf {
    /// Instruments that have every one of these tags (`tags` in
    /// `[[equipment]]`).
    #[serde(default)]
    #[schema(value_type = Vec<String>, required = false, min_items = 1, max_items = 16)]
    pub tags: Option<Vec<String>>,
    /// Instruments by id.
    #[schema(value_type = Vec<Id>, required = false, min_items = 1, max_items = 64)]
    #[serde(default)]
    pub equipment_ids: Option<Vec<String>>,
}

/// The most instruments one group or pool request may name.
const MAX_GROUP_IDS: usize = 64;
/// The most tags one pool request may name.
const MAX_POOL_TAGS: usize = 16;

/// `raw` as equipment ids, at most `MAX_GROUP_IDS`.
fn equipment_ids(field: &str, raw: &[String]) -> Result<Vec<EquipmentId>, ApiError> {
    let mut ids: Vec<EquipmentId> = Vec::new();
    for id in raw {
        let id = EquipmentId::parse(id)?;
        // The same instrument named twice is named once.
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.len() > MAX_GROUP_IDS {
        return Err(ApiError::unprocessable(
            "invalid_parameter",
            format!("`{field}` may list at most {MAX_GROUP_IDS} instruments"),
        ));
    }
    Ok(ids)
}

/// The lock group or pool `body` asks for, if it asks for one: several
/// instruments, a pool, or a configured group's id as `equipment_id`.
fn group_ask(app: &AppState, body: &AcquireBody) -> Result<Option<GroupAsk>, ApiError> {
    let named = body
        .equipment_id
        .as_deref()
        .map(EquipmentId::parse)
        .transpose()?;
    let group = named.as_ref().and_then(|id| app.named_group(id));
    if group.is_none() && body.equipment_ids.is_none() && body.any_of.is_none() {
        return Ok(None);
    }
    let mut ask = GroupAsk::default();
    match (group, named) {
        (Some(group), _) if body.equipment_ids.is_some() => {
            return Err(ApiError::unprocessable(
                "invalid_parameter",
                format!(
                    "`equipment_id` names the lock group {}: list extra instruments in `any_of`, not `equipment_ids`",
                    group.id
                ),
            ));
        }
        (Some(group), _) => {
            ask.name = Some(group.id.clone());
            ask.members = group.members.clone();
        }
        (None, Some(id)) => ask.members.push(id),
        (None, None) => {}
    }
    if let Some(ids) = &body.equipment_ids {
        ask.members.extend(equipment_ids("equipment_ids", ids)?);
    }
    if let Some(pool) = &body.any_of {
        let tags = pool.tags.clone().unwrap_or_default();
        if tags.len() > MAX_POOL_TAGS {
            return Err(ApiError::unprocessable(
                "invalid_parameter",
                format!("`any_of.tags` may list at most {MAX_POOL_TAGS} tags"),
            ));
        }
        ask.any_of = equipment_ids(
            "any_of.equipment_ids",
            pool.equipment_ids.as_deref().unwrap_or_default(),
        )?;
        if tags.is_empty() && ask.any_of.is_empty() {
            return Err(ApiError::unprocessable(
                "invalid_parameter",
                "`any_of` needs `tags` or `equipment_ids`",
            ));
        }
        ask.any_of_tags = tags;
    }
    if ask.members.is_empty() && ask.any_of.is_empty() && ask.any_of_tags.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_parameter",
            "`equipment_ids` lists no instrument",
        ));
    }
    Ok(Some(ask))
}

/// The longest an acquire may wait for its turn.
const MAX_WAIT_SECONDS: f64 = 3600.0;

#[derive(Debug, Serialize, ToSchema)]
pub struct AcquireResponse {
    pub success: bool,
    /// "locked", "refreshed" or "queued".
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_entry: Option<QueueEntryView>,
    /// Observers now holding the equipment (observer grants only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observer_count: Option<usize>,
    /// A lock group or pool request: its id (release it with it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// A lock group or pool request: one lock per instrument granted
    /// (`lock` is also set when that is a single one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locks: Option<Vec<LockView>>,
    /// A lock group or pool request that waits: its place in each
    /// instrument's queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_entries: Option<Vec<QueueEntryView>>,
}

impl AcquireResponse {
    fn for_group(at: &At<GroupAcquired>) -> Self {
        let group_id = at.value.outcome.group().map(|g| g.group_id.clone());
        match &at.value.outcome {
            GroupOutcome::Locked(held) | GroupOutcome::Refreshed(held) => {
                let locks: Vec<LockView> = held
                    .iter()
                    .map(|(id, grant)| LockView::new(id, grant, at.now))
                    .collect();
                Self {
                    success: true,
                    status: if matches!(at.value.outcome, GroupOutcome::Locked(_)) {
                        "locked"
                    } else {
                        "refreshed"
                    },
                    message: None,
                    lock: (held.len() == 1).then(|| LockView::new(&held[0].0, &held[0].1, at.now)),
                    queue_entry: None,
                    observer_count: None,
                    group_id,
                    locks: Some(locks),
                    queue_entries: None,
                }
            }
            GroupOutcome::Queued(places) => {
                // What stands in its way: holders and maintenance (the rest
                // waits for those ahead of it in line).
                let in_the_way: Vec<String> = places
                    .iter()
                    .filter_map(|(id, _, position)| {
                        let locks = at.value.bench.get(id)?;
                        match locks.in_the_way(*position, at.now)? {
                            Obstacle::Ahead(_) => None,
                            obstacle => Some(format!("{id}, {obstacle}")),
                        }
                    })
                    .collect();
                let message = if in_the_way.is_empty() {
                    "Waiting behind others in line".to_owned()
                } else {
                    format!("Waiting for {}", in_the_way.join("; "))
                };
                Self {
                    success: false,
                    status: "queued",
                    message: Some(message),
                    lock: None,
                    queue_entry: None,
                    observer_count: None,
                    group_id,
                    locks: None,
                    queue_entries: Some(
                        places
                            .iter()
                            .map(|(id, entry, position)| QueueEntryView::new(id, entry, *position))
                            .collect(),
                    ),
                }
            }
        }
    }
}

/// What an acquire asks for: one instrument, or a lock group or pool (which
/// may include the `equipment_id` given with it).
enum AcquireTarget {
    One(EquipmentId),
    Group(GroupAsk),
}

#[utoipa::path(post, path = "/api/locks/acquire", tag = "locks", operation_id = "acquire_lock",
    request_body = AcquireBody,
    responses(
        (status = 200, body = AcquireResponse, description = "Locked, refreshed, or queued (`status`)"),
        (status = 403, body = ErrorBody, description = "Not allowed (forbidden, session_not_live, observer_mode_disabled)"),
        (status = 404, body = ErrorBody, description = "No such session or equipment"),
        (status = 409, body = ErrorBody, description = "Busy and not queued (equipment_locked, queue_disabled)"),
        (status = 422, body = ErrorBody, description = "A field is out of range (invalid_id, invalid_timeout, invalid_parameter)")))]
pub async fn acquire(
    State(app): State<AppState>,
    Caller(actor): Caller,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AcquireBody>,
) -> ApiResult<AcquireResponse> {
    // Names a session this acquire may open (semantics.md, Sessions 6).
    let client = ClientInfo {
        name: headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(MAX_TEXT).collect()),
        ip: Some(peer.ip().to_string()),
    };
    let target = match (group_ask(&app, &body)?, &body.equipment_id) {
        (Some(ask), _) => AcquireTarget::Group(ask),
        (None, Some(id)) => AcquireTarget::One(EquipmentId::parse(id)?),
        (None, None) => {
            return Err(ApiError::unprocessable(
                "invalid_parameter",
                "name the instrument: `equipment_id` (or `equipment_ids`, `any_of` for a group or pool)",
            ));
        }
    };
    let input = AcquireInput {
        actor,
        session_id: SessionId::parse(&body.session_id)?,
        mode: body.lock_mode.unwrap_or_default(),
        timeout: body
            .timeout_seconds
            .map(Timeout::from_seconds)
            .transpose()?,
        queue_if_busy: body.queue_if_busy.unwrap_or(false),
        priority: match body.priority {
            None => 0,
            Some(raw) => (raw.fract() == 0.0)
                .then(|| checked_priority(raw as i64))
                .flatten()
                .ok_or_else(|| {
                ApiError::unprocessable(
                    "invalid_parameter",
                    format!(
                        "`priority` must be a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}, got {}",
                        Compact(raw)
                    ),
                )
            })?,
        },
        max_wait: match body.max_wait_seconds {
            None => Timeout::NONE,
            Some(raw) => Timeout::from_seconds(raw).map_err(|_| {
                ApiError::unprocessable(
                    "invalid_timeout",
                    format!(
                        "`max_wait_seconds` must be 0 (no limit) or a number of seconds from 0.001 to 1e9, got {}",
                        Compact(raw)
                    ),
                )
            })?,
        },
        claim_within: body
            .claim_within_seconds
            .map(|raw| {
                Timeout::from_seconds(raw).map_err(|_| {
                    ApiError::unprocessable(
                        "invalid_timeout",
                        format!(
                            "`claim_within_seconds` must be 0 (no claim) or a number of seconds from 0.001 to 1e9, got {}",
                            Compact(raw)
                        ),
                    )
                })
            })
            .transpose()?,
        client,
    };
    let wait = match body.wait_seconds {
        None => None,
        Some(w) if (0.0..=MAX_WAIT_SECONDS).contains(&w) => {
            Some(std::time::Duration::from_secs_f64(w))
        }
        Some(w) => {
            return Err(ApiError::unprocessable(
                "invalid_parameter",
                format!(
                    "`wait_seconds` must be between 0 and {MAX_WAIT_SECONDS}, got {}",
                    Compact(w)
                ),
            ));
        }
    };
    let equipment = match target {
        AcquireTarget::One(equipment) => equipment,
        AcquireTarget::Group(ask) => {
            let at = app.acquire_group_waiting(input, ask, wait).await?;
            return Ok(Json(AcquireResponse::for_group(&at)));
        }
    };
    let at = app.acquire_waiting(equipment, input, wait).await?;
    let locks = &at.value.locks;
    let equipment = &locks.equipment_id;
    let observer_count =
        |mode: LockMode| (mode == LockMode::Observer).then_some(locks.observers.len());
    let response = match &at.value.outcome {
        AcquireOutcome::Locked(grant) | AcquireOutcome::Refreshed(grant) => AcquireResponse {
            success: true,
            status: if matches!(at.value.outcome, AcquireOutcome::Locked(_)) {
                "locked"
            } else {
                "refreshed"
            },
            message: None,
            lock: Some(LockView::new(equipment, grant, at.now)),
            queue_entry: None,
            observer_count: observer_count(grant.mode),
            group_id: grant.group.as_ref().map(|g| g.group_id.clone()),
            locks: None,
            queue_entries: None,
        },
        AcquireOutcome::Queued { entry, position } => AcquireResponse {
            success: false,
            status: "queued",
            message: Some(match locks.in_the_way(*position, at.now) {
                Some(obstacle) => format!("Equipment {obstacle}"),
                None => "Equipment busy: waiting for its turn".into(),
            }),
            lock: None,
            queue_entry: Some(QueueEntryView::new(equipment, entry, *position)),
            observer_count: None,
            group_id: entry.group.as_ref().map(|g| g.group_id.clone()),
            locks: None,
            queue_entries: None,
        },
    };
    Ok(Json(response))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ReleaseBody {
    /// The instrument (releasing a lock group's member releases the whole
    /// group), or a configured lock group's id. Required unless
    /// `equipment_ids` or `group_id` is given.
    #[schema(value_type = Id, required = false, example = "ps_abc123")]
    #[serde(default)]
    pub equipment_id: Option<String>,
    /// A lock group by the instruments it was acquired with.
    #[schema(value_type = Vec<Id>, required = false, min_items = 1, max_items = 64)]
    #[serde(default)]
    pub equipment_ids: Option<Vec<String>>,
    /// A lock group or pool request by its `group_id`.
    #[serde(default)]
    #[schema(value_type = String, required = false, min_length = 1, max_length = 64)]
    pub group_id: Option<String>,
    /// The releasing session; for a forced release, whoever forces it
    /// (recorded as `forced_by`).
    #[schema(value_type = Id)]
    pub session_id: String,
    /// Release whoever holds it (an administrator's action).
    #[serde(default)]
    pub force: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseResponse {
    pub success: bool,
    /// "released", "observer_released" or "dequeued".
    pub status: &'static str,
    pub was_forced: bool,
    /// The instrument; for a lock group, its configured id or first member.
    pub equipment_id: String,
    /// A lock group's release: its id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// A lock group's release: every instrument it held or waited for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub equipment_ids: Option<Vec<String>>,
}

fn release_status(outcome: &ReleaseOutcome) -> (&'static str, bool) {
    match outcome {
        ReleaseOutcome::Released { was_forced } => ("released", *was_forced),
        ReleaseOutcome::ObserverReleased => ("observer_released", false),
        ReleaseOutcome::Dequeued => ("dequeued", false),
    }
}

/// The lock group a release names, if it names one.
fn group_target(app: &AppState, body: &ReleaseBody) -> Result<Option<GroupTarget>, ApiError> {
    if let Some(id) = &body.group_id {
        if id.is_empty() || id.len() > 64 {
            return Err(ApiError::unprocessable(
                "invalid_parameter",
                "`group_id` must be the 1 to 64 characters an acquire answered",
            ));
        }
        if body.equipment_id.is_some() || body.equipment_ids.is_some() {
            // Two names for what to release could disagree: which one
            // was meant is not guessed.
            return Err(ApiError::unprocessable(
                "invalid_parameter",
                "name what to release once: `group_id` alone, or the instruments \
                 (`equipment_id`, `equipment_ids`)",
            ));
        }
        return Ok(Some(GroupTarget::Id(id.clone())));
    }
    if let Some(ids) = &body.equipment_ids {
        let mut ids = equipment_ids("equipment_ids", ids)?;
        if ids.is_empty() {
            return Err(ApiError::unprocessable(
                "invalid_parameter",
                "`equipment_ids` lists no instrument",
            ));
        }
        if let Some(id) = &body.equipment_id {
            ids.push(EquipmentId::parse(id)?);
        }
        return Ok(Some(GroupTarget::Members(ids)));
    }
    let named = body
        .equipment_id
        .as_deref()
        .map(EquipmentId::parse)
        .transpose()?
        .filter(|id| app.named_group(id).is_some());
    Ok(named.map(|id| GroupTarget::Members(vec![id])))
}

#[utoipa::path(post, path = "/api/locks/release", tag = "locks", operation_id = "release_lock",
    request_body = ReleaseBody,
    responses(
        (status = 200, body = ReleaseResponse, description = "Released, or left the queue (`status`)"),
        (status = 403, body = ErrorBody, description = "Not the holder, or not allowed (not_lock_holder, lock_lost, forbidden)"),
        (status = 404, body = ErrorBody, description = "Nothing to release (no_lock, lock_lost, not_locked, session_not_found, equipment_not_found)"),
        (status = 422, body = ErrorBody, description = "A malformed id (invalid_id)")))]
pub async fn release(
    State(app): State<AppState>,
    Caller(actor): Caller,
    ApiJson(body): ApiJson<ReleaseBody>,
) -> ApiResult<ReleaseResponse> {
    let session = SessionId::parse(&body.session_id)?;
    let force = body.force.unwrap_or(false);
    if let Some(target) = group_target(&app, &body)? {
        let named = match &target {
            GroupTarget::Members(ids) if ids.len() == 1 => Some(ids[0].to_string()),
            _ => None,
        };
        let at = app.release_group(target, &session, force, &actor).await?;
        let (status, was_forced) = release_status(&at.value.outcome);
        let ids: Vec<String> = at.value.equipment.iter().map(|i| i.to_string()).collect();
        return Ok(Json(ReleaseResponse {
            success: true,
            status,
            was_forced,
            equipment_id: named.unwrap_or_else(|| ids[0].clone()),
            group_id: Some(at.value.group_id),
            equipment_ids: Some(ids),
        }));
    }
    let Some(equipment) = &body.equipment_id else {
        return Err(ApiError::unprocessable(
            "invalid_parameter",
            "name what to release: `equipment_id` (or `equipment_ids`, `group_id` for a lock group)",
        ));
    };
    let equipment = EquipmentId::parse(equipment)?;
    let at = app.release(&equipment, &session, force, &actor).await?;
    let (status, was_forced) = release_status(&at.value.outcome);
    let (group_id, equipment_ids) = match at.value.group {
        Some((group, places)) => (
            Some(group.group_id.clone()),
            Some(places.iter().map(|i| i.to_string()).collect()),
        ),
        None => (None, None),
    };
    Ok(Json(ReleaseResponse {
        success: true,
        status,
        was_forced,
        equipment_id: equipment.to_string(),
        group_id,
        equipment_ids,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ActivityBody {
    #[schema(value_type = Id)]
    pub session_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityResponse {
    pub success: bool,
    pub lock: LockView,
}

#[utoipa::path(post, path = "/api/locks/activity/{equipment_id}", tag = "locks", operation_id = "renew_lock",
    request_body = ActivityBody,
    responses(
        (status = 200, body = ActivityResponse, description = "The renewed lock"),
        (status = 403, body = ErrorBody, description = "Not the holder, or not allowed (not_lock_holder, lock_lost, session_not_live, forbidden)"),
        (status = 404, body = ErrorBody, description = "No such lock, session or equipment (no_lock, lock_lost, session_not_found, equipment_not_found)"),
        (status = 422, body = ErrorBody, description = "A malformed id (invalid_id)")))]
pub async fn activity(
    State(app): State<AppState>,
    Caller(actor): Caller,
    ApiPath(equipment): ApiPath<String>,
    ApiJson(body): ApiJson<ActivityBody>,
) -> ApiResult<ActivityResponse> {
    let equipment = equipment_in_path(&equipment)?;
    let at = app
        .lock_activity(&equipment, &SessionId::parse(&body.session_id)?, &actor)
        .await?;
    Ok(Json(ActivityResponse {
        success: true,
        lock: LockView::new(&equipment, &at.value, at.now),
    }))
}

#[utoipa::path(get, path = "/api/locks/status/{equipment_id}", tag = "locks", operation_id = "lock_status",
    responses(
        (status = 200, body = LockStatusView, description = "Who holds it and how many wait"),
        (status = 404, body = ErrorBody, description = "No such equipment (equipment_not_found)")))]
pub async fn status(
    State(app): State<AppState>,
    ApiPath(equipment): ApiPath<String>,
) -> ApiResult<LockStatusView> {
    let at = app.lock_state(&equipment_in_path(&equipment)?).await?;
    Ok(Json(LockStatusView::new(&at.value, at.now)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueResponse {
    pub equipment_id: String,
    pub queue: Vec<QueueEntryView>,
    pub queue_length: usize,
}

#[utoipa::path(get, path = "/api/locks/queue/{equipment_id}", tag = "locks", operation_id = "lock_queue",
    responses(
        (status = 200, body = QueueResponse, description = "Its queue, next in line first"),
        (status = 404, body = ErrorBody, description = "No such equipment (equipment_not_found)")))]
pub async fn queue(
    State(app): State<AppState>,
    ApiPath(equipment): ApiPath<String>,
) -> ApiResult<QueueResponse> {
    let at = app.lock_state(&equipment_in_path(&equipment)?).await?;
    let queue = QueueEntryView::all(&at.value);
    Ok(Json(QueueResponse {
        equipment_id: at.value.equipment_id.to_string(),
        queue_length: queue.len(),
        queue,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AllLocks {
    pub exclusive_locks: BTreeMap<String, LockView>,
    pub observer_locks: BTreeMap<String, Vec<LockView>>,
    pub queues: BTreeMap<String, Vec<QueueEntryView>>,
}

#[utoipa::path(get, path = "/api/locks/all", tag = "locks", operation_id = "all_locks",
    responses((status = 200, body = AllLocks, description = "Every lock and queue, by equipment")))]
pub async fn all(State(app): State<AppState>) -> ApiResult<AllLocks> {
    let at = app.busy_equipment().await?;
    let mut all = AllLocks {
        exclusive_locks: BTreeMap::new(),
        observer_locks: BTreeMap::new(),
        queues: BTreeMap::new(),
    };
    for locks in &at.value {
        let id = &locks.equipment_id;
        if let Some(g) = &locks.exclusive {
            all.exclusive_locks
                .insert(id.to_string(), LockView::new(id, g, at.now));
        }
        if !locks.observers.is_empty() {
            let views = locks
                .observers
                .iter()
                .map(|g| LockView::new(id, g, at.now))
                .collect();
            all.observer_locks.insert(id.to_string(), views);
        }
        if !locks.queue.is_empty() {
            all.queues
                .insert(id.to_string(), QueueEntryView::all(locks));
        }
    }
    Ok(Json(all))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EquipmentEvents {
    pub equipment_id: String,
    pub events: Vec<Event>,
    pub count: usize,
}

#[utoipa::path(get, path = "/api/locks/events/{equipment_id}", tag = "locks", operation_id = "equipment_events",
    params(Limit),
    responses(
        (status = 200, body = EquipmentEvents, description = "Its newest events, oldest first"),
        (status = 404, body = ErrorBody, description = "No such equipment (equipment_not_found)"),
        (status = 422, body = ErrorBody, description = "`limit` out of range (invalid_parameter)")))]
pub async fn events(
    State(app): State<AppState>,
    ApiPath(equipment): ApiPath<String>,
    ApiQuery(limit): ApiQuery<Limit>,
) -> ApiResult<EquipmentEvents> {
    let equipment = equipment_in_path(&equipment)?;
    let at = app.equipment_events(&equipment, limit.get()).await?;
    Ok(Json(EquipmentEvents {
        equipment_id: equipment.to_string(),
        count: at.value.len(),
        events: at.value,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CleanupResponse {
    pub success: bool,
    /// Locks whose lease ran out.
    pub expired_locks: usize,
    /// Sessions whose lease ran out.
    pub expired_sessions: usize,
    /// Equipment handed to the next in its queue.
    pub queue_processed: usize,
}

impl From<ExpiryReport> for CleanupResponse {
    fn from(report: ExpiryReport) -> Self {
        Self {
            success: true,
            expired_locks: report.expired_locks,
            expired_sessions: report.expired_sessions,
            queue_processed: report.queue_processed,
        }
    }
}

#[utoipa::path(post, path = "/api/locks/cleanup", tag = "locks", operation_id = "cleanup",
    responses((status = 200, body = CleanupResponse, description = "What was expired")))]
pub async fn cleanup(State(app): State<AppState>) -> ApiResult<CleanupResponse> {
    let at = app.expire_due().await?;
    Ok(Json(at.value.0.into()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only events of this equipment.
    #[param(value_type = Option<Id>)]
    pub equipment_id: Option<String>,
    /// Only events that name this session (including as the one who forced).
    #[param(value_type = Option<Id>)]
    pub session_id: Option<String>,
    /// Only this kind of event (a history event: live notifications such
    /// as `lock_granted` are never stored).
    #[param(value_type = Option<HistoryEventKind>)]
    pub event: Option<String>,
    /// At or after this instant (RFC 3339).
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Before this instant (RFC 3339).
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// Continue after this `seq` (the `next_cursor` of the previous page).
    #[serde(default, deserialize_with = "extract::cursor")]
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_u64)]
    pub cursor: Option<u64>,
    /// Page size, 1..=1000 (default 100).
    #[serde(default, deserialize_with = "extract::limit")]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// The kinds of event the history keeps (`EventKind::ALL`), which are the
/// values the `event` filter accepts.
pub struct HistoryEventKind;

impl utoipa::PartialSchema for HistoryEventKind {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(EventKind::ALL.iter().map(|k| k.as_str())))
            .into()
    }
}

impl ToSchema for HistoryEventKind {}

#[derive(Debug, Serialize, ToSchema)]
pub struct History {
    /// Oldest first.
    pub events: Vec<Event>,
    pub count: usize,
    /// Pass as `cursor` for the events after this page (also to poll for
    /// new ones); null when nothing has been recorded yet.
    pub next_cursor: Option<u64>,
    /// Whether the page was full, so more may follow right away.
    pub has_more: bool,
}

impl HistoryQuery {
    fn parse(self) -> Result<EventQuery, ApiError> {
        let time = |name: &str, raw: Option<String>| {
            raw.map(|raw| {
                Timestamp::parse_rfc3339(&raw).map_err(|_| {
                    ApiError::unprocessable(
                        "invalid_timestamp",
                        format!(
                            "`{name}` must be an RFC 3339 timestamp such as 2026-11-01T00:00:00Z, got {}",
                            quoted(&raw)
                        ),
                    )
                })
            })
            .transpose()
        };
        let kind = match self.event.as_deref() {
            None => None,
            Some(raw) => Some(EventKind::parse(raw).ok_or_else(|| {
                let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                ApiError::unprocessable(
                    "invalid_parameter",
                    format!(
                        "`event` must be one of {}, got {}",
                        names.join(", "),
                        quoted(raw)
                    ),
                )
            })?),
        };
        Ok(EventQuery {
            equipment_id: self
                .equipment_id
                .as_deref()
                .map(EquipmentId::parse)
                .transpose()?,
            session_id: self
                .session_id
                .as_deref()
                .map(SessionId::parse)
                .transpose()?,
            kind,
            since: time("since", self.since)?,
            until: time("until", self.until)?,
            after: self.cursor,
            limit: self.limit.unwrap_or(100),
        })
    }
}

#[utoipa::path(get, path = "/api/locks/events", tag = "locks", operation_id = "history",
    params(HistoryQuery),
    responses(
        (status = 200, body = History, description = "A page of the history, oldest first"),
        (status = 422, body = ErrorBody, description = "A malformed filter (invalid_parameter, invalid_timestamp, invalid_id)")))]
pub async fn history(
    State(app): State<AppState>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> ApiResult<History> {
    let query = query.parse()?;
    let limit = query.limit;
    let page = app.history(query).await?.value;
    Ok(Json(History {
        count: page.events.len(),
        next_cursor: page.next_cursor,
        has_more: page.events.len() == limit,
        events: page.events,
    }))
}
