//! The lock analytics use case: reads a bounded window of the history
//! (through the equipment index when instruments are named) in one read
//! transaction and folds it with `domain::analytics`.

use super::{Service, ServiceError};
use crate::domain::analytics::{GroupBy, Usage, UsageRow};
use crate::domain::{EquipmentId, Timestamp};
use crate::storage::EventQuery;

/// The longest window analytics read: its cost is the events in it.
pub const MAX_ANALYTICS_DAYS: i64 = 31;
/// The window when none is given: the last 7 days.
pub const DEFAULT_ANALYTICS_DAYS: i64 = 7;
const DAY_MS: i64 = 86_400_000;
/// Events read per step of the fold.
const PAGE: usize = 1_000;

/// What to summarize.
#[derive(Clone, Debug)]
pub struct AnalyticsInput {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// Only these instruments (none: every instrument).
    pub equipment: Vec<EquipmentId>,
    /// Only the locks of this user.
    pub user: Option<String>,
    pub group_by: GroupBy,
}

/// The figures and the window they cover.
#[derive(Clone, Debug)]
pub struct Analytics {
    pub since: Timestamp,
    pub until: Timestamp,
    pub rows: Vec<UsageRow>,
    /// How many events were read.
    pub events: u64,
}

impl Service {
    pub async fn analytics(&self, input: AnalyticsInput) -> Result<Analytics, ServiceError> {
        let now = self.clock.now();
        let until = input.until.unwrap_or(now);
        let since = input.since.unwrap_or(Timestamp::from_millis(
            until
                .as_millis()
                .saturating_sub(DEFAULT_ANALYTICS_DAYS * DAY_MS),
        ));
        if since > until {
            return Err(ServiceError::Invalid(format!(
                "`since` ({since}) must not be after `until` ({until})"
            )));
        }
        if until.as_millis().saturating_sub(since.as_millis()) > MAX_ANALYTICS_DAYS * DAY_MS {
            return Err(ServiceError::Invalid(format!(
                "the window from `since` to `until` may be at most {MAX_ANALYTICS_DAYS} days: ask for several"
            )));
        }
        for id in &input.equipment {
            if !self.instruments.contains(id) {
                return Err(ServiceError::EquipmentNotFound(id.clone()));
            }
        }
        // Instruments reported even when nothing happened to them.
        let seeded: Vec<EquipmentId> = if input.equipment.is_empty() {
            self.instruments.iter().map(|i| i.id.clone()).collect()
        } else {
            input.equipment.clone()
        };
        // `None`: the whole history in one pass; else one pass each.
        let passes: Vec<Option<EquipmentId>> = if input.equipment.is_empty() {
            vec![None]
        } else {
            input.equipment.iter().cloned().map(Some).collect()
        };
        let (user, group_by) = (input.user, input.group_by);
        let seeds = if user.is_some() { Vec::new() } else { seeded };
        let read = self
            .read(move |view| {
                let mut usage = Usage::new(since, until, group_by, &seeds);
                let mut events = 0;
                for equipment in &passes {
                    let mut after = None;
                    loop {
                        let page = view.tx.query_events(&EventQuery {
                            equipment_id: equipment.clone(),
                            since: Some(since),
                            until: Some(until),
                            after,
                            limit: PAGE,
                            ..EventQuery::default()
                        })?;
                        events += page.len() as u64;
                        for e in &page {
                            if user.is_none() || e.holder_user == user {
                                usage.add(e);
                            }
                        }
                        after = page.last().and_then(|e| e.seq);
                        if page.len() < PAGE {
                            break;
                        }
                    }
                }
                Ok((usage.finish(), events))
            })
            .await?;
        let (rows, events) = read.value;
        Ok(Analytics {
            since,
            until,
            rows,
            events,
        })
    }
}
