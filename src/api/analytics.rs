//! `GET /api/locks/analytics`: lock usage over a time window, per
//! instrument, per user or for a group, as JSON or CSV.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody, quoted};
use super::extract::ApiQuery;
use crate::domain::analytics::{GroupBy, UsageRow};
use crate::domain::{EquipmentId, Timestamp};
use crate::service::AnalyticsInput;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AnalyticsQuery {
    /// The window's start (RFC 3339; default: 7 days before `until`).
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// The window's end, exclusive (RFC 3339; default: now). At most 366
    /// days after `since`.
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// Only these instruments: one id or a comma-separated list (default:
    /// every instrument); a configured lock group's id stands for its
    /// members (with `group_by=all`, one row for the group).
    #[param(value_type = Option<String>)]
    pub equipment_id: Option<String>,
    /// Only the locks this user held (`holder_user`).
    #[param(min_length = 1, max_length = 128)]
    pub user: Option<String>,
    /// `equipment` (default): a row per instrument; `user`: a row per user;
    /// `all`: one row for everything selected (a group).
    #[param(value_type = Option<GroupByName>)]
    pub group_by: Option<String>,
    /// `json` (default) or `csv`; without it, `Accept: text/csv` asks for CSV.
    #[param(value_type = Option<FormatName>)]
    pub format: Option<String>,
}

/// A string from a fixed list, for a query parameter's schema.
macro_rules! choice {
    ($name:ident, $doc:literal, [$($value:literal),*]) => {
        #[doc = $doc]
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                use utoipa::openapi::schema::{ObjectBuilder, Type};
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some([$($value),*]))
                    .into()
            }
        }

        impl ToSchema for $name {}
    };
}

choice!(
    GroupByName,
    "`equipment`, `user` or `all`.",
    ["equipment", "user", "all"]
);
choice!(FormatName, "`json` or `csv`.", ["json", "csv"]);

/// Lock usage over a window. Seconds are decimal (millisecond precision).
#[derive(Debug, Serialize, ToSchema)]
pub struct AnalyticsReport {
    #[schema(value_type = String, format = DateTime)]
    pub since: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub until: Timestamp,
    /// `equipment`, `user` or `all`.
    pub group_by: &'static str,
    /// How many history events were read for it: those of the parts of
    /// hours at the window's edges (and of the last moments, not summed
    /// yet), the rest coming from the rollups.
    pub events_read: u64,
    /// How many stored rollup rows (hour and day totals) were read for it.
    pub rollup_rows_read: u64,
    pub rows: Vec<UsageView>,
}

/// One instrument's, user's or group's figures.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    /// The instrument id, the user (`-`: unknown, authentication off), or `all`.
    pub key: String,
    /// Time under exclusive locks.
    pub exclusive_seconds: f64,
    /// Time under observer locks, summed over observers.
    pub observer_seconds: f64,
    /// Time with no lock at all (summed over a group's instruments); null per user.
    pub idle_seconds: Option<f64>,
    /// Locks granted (at once or from the queue).
    pub grants: u64,
    /// Of those, granted from the queue.
    pub grants_from_queue: u64,
    /// How long grants from the queue waited (null when none did in the window).
    pub wait_median_seconds: Option<f64>,
    pub wait_p90_seconds: Option<f64>,
    pub wait_max_seconds: Option<f64>,
    pub forced_releases: u64,
    pub expiries: u64,
}

fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

impl From<UsageRow> for UsageView {
    fn from(row: UsageRow) -> Self {
        Self {
            exclusive_seconds: seconds(row.exclusive_ms),
            observer_seconds: seconds(row.observer_ms),
            idle_seconds: row.idle_ms.map(seconds),
            grants: row.grants,
            grants_from_queue: row.grants_from_queue,
            wait_median_seconds: row.waits.percentile(0.5).map(seconds),
            wait_p90_seconds: row.waits.percentile(0.9).map(seconds),
            wait_max_seconds: row.waits.max().map(seconds),
            forced_releases: row.forced_releases,
            expiries: row.expiries,
            key: row.key,
        }
    }
}

impl UsageView {
    const CSV_HEADER: &'static str = "exclusive_seconds,observer_seconds,idle_seconds,grants,grants_from_queue,wait_median_seconds,wait_p90_seconds,wait_max_seconds,forced_releases,expiries";

    fn csv_line(&self) -> String {
        let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
        format!(
            "{},{},{},{},{},{},{},{},{},{},{}\r\n",
            csv_field(&self.key),
            self.exclusive_seconds,
            self.observer_seconds,
            opt(self.idle_seconds),
            self.grants,
            self.grants_from_queue,
            opt(self.wait_median_seconds),
            opt(self.wait_p90_seconds),
            opt(self.wait_max_seconds),
            self.forced_releases,
            self.expiries
        )
    }
}

/// A CSV field (RFC 4180): quoted when it holds a comma, quote or line
/// break; a leading `=`, `+`, `-` or `@` is kept as text by a quote mark
/// so that a spreadsheet does not run a user name as a formula.
fn csv_field(raw: &str) -> String {
    let guarded = if raw.len() > 1 && raw.starts_with(['=', '+', '-', '@']) {
        format!("'{raw}")
    } else {
        raw.to_string()
    };
    if guarded.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

impl AnalyticsQuery {
    fn parse(self) -> Result<(AnalyticsInput, bool), ApiError> {
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
        let group_by = match self.group_by.as_deref() {
            None => GroupBy::Equipment,
            Some(raw) => GroupBy::parse(raw).ok_or_else(|| {
                ApiError::unprocessable(
                    "invalid_parameter",
                    format!(
                        "`group_by` must be equipment, user or all, got {}",
                        quoted(raw)
                    ),
                )
            })?,
        };
        let csv = match self.format.as_deref() {
            None | Some("json") => false,
            Some("csv") => true,
            Some(raw) => {
                return Err(ApiError::unprocessable(
                    "invalid_parameter",
                    format!("`format` must be json or csv, got {}", quoted(raw)),
                ));
            }
        };
        let equipment = match self.equipment_id.as_deref() {
            None => Vec::new(),
            Some(raw) => raw
                .split(',')
                .map(|id| EquipmentId::parse(id.trim()))
                .collect::<Result<_, _>>()?,
        };
        let user = self
            .user
            .map(|u| {
                if u.is_empty() || u.chars().count() > 128 || u.chars().any(char::is_control) {
                    Err(ApiError::unprocessable(
                        "invalid_parameter",
                        format!(
                            "`user` must be 1 to 128 characters, no control characters, got {}",
                            quoted(&u)
                        ),
                    ))
                } else {
                    Ok(u)
                }
            })
            .transpose()?;
        Ok((
            AnalyticsInput {
                since: time("since", self.since)?,
                until: time("until", self.until)?,
                equipment,
                user,
                group_by,
            },
            csv,
        ))
    }
}

#[utoipa::path(get, path = "/api/locks/analytics", tag = "locks", operation_id = "analytics",
    params(AnalyticsQuery),
    responses(
        (status = 200, description = "Lock usage over the window: JSON, or CSV (a header line, then a row each) with `format=csv` or `Accept: text/csv`",
            content(
                (AnalyticsReport = "application/json"),
                (String = "text/csv"),
            )),
        (status = 404, body = ErrorBody, description = "An instrument that is not registered (equipment_not_found)"),
        (status = 422, body = ErrorBody, description = "A malformed parameter, or a window that is empty or longer than 366 days (invalid_parameter, invalid_timestamp, invalid_id, invalid_request)")))]
pub async fn analytics(
    State(app): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<AnalyticsQuery>,
) -> Result<Response, ApiError> {
    let asked_format = query.format.is_some();
    let (input, csv) = query.parse()?;
    let csv = csv
        || (!asked_format
            && headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("text/csv")));
    let group_by = input.group_by;
    let report = app.analytics(input).await?;
    let rows: Vec<UsageView> = report.rows.into_iter().map(UsageView::from).collect();
    if csv {
        let key = match group_by {
            GroupBy::Equipment => "equipment_id",
            GroupBy::User => "user",
            GroupBy::All => "group",
        };
        let mut body = format!("{key},{}\r\n", UsageView::CSV_HEADER);
        for row in &rows {
            body.push_str(&row.csv_line());
        }
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response());
    }
    Ok(axum::Json(AnalyticsReport {
        since: report.since,
        until: report.until,
        group_by: group_by.as_str(),
        events_read: report.events,
        rollup_rows_read: report.rollup_rows,
        rows,
    })
    .into_response())
}
