//! The history use cases: paging through the recorded events, and
//! forgetting old ones.

use super::inputs::too_many;
use super::{At, Service, ServiceError};
use crate::domain::Timestamp;
use crate::storage::{EventPage, EventQuery, Prune};

impl Service {
    /// The whole history, filtered, oldest first, a page at a time.
    pub async fn history(&self, query: EventQuery) -> Result<At<EventPage>, ServiceError> {
        too_many(query.limit)?;
        in_order(query.since, query.until)?;
        self.read_events(move |tx| Ok(tx.event_page(&query)?)).await
    }

    /// A page of the history as committed, read off the write path: no
    /// batch to join, no commit to wait for, nothing expired first. For
    /// replays that may page through a long history while others write.
    /// (A batch whose fsync is still running is already readable here.)
    pub async fn read_history(&self, query: EventQuery) -> Result<EventPage, ServiceError> {
        too_many(query.limit)?;
        let page = self.read(move |view| Ok(view.tx.event_page(&query)?));
        Ok(page.await?.value)
    }

    /// Forgets what `retention` no longer keeps, except events the
    /// analytics rollups have not summed yet (`roll_up_history` first), a
    /// step of at most
    /// `PRUNE_STEP` events per transaction, so that requests joining the
    /// same commits wait for one small delete, never for the whole job.
    /// Returns how many events went.
    pub async fn prune_history(&self, retention: Retention) -> Result<u64, ServiceError> {
        let mut total = 0;
        loop {
            let before = retention.max_age_days.filter(|&d| d > 0).map(|days| {
                Timestamp::from_millis(self.clock.now().as_millis() - i64::from(days) * 86_400_000)
            });
            let keep = retention.max_events.filter(|&n| n > 0);
            if before.is_none() && keep.is_none() {
                return Ok(total);
            }
            // Events the analytics rollups have not summed yet stay.
            let summed = self
                .read(|view| {
                    let cursor = view.tx.usage_cursor()?;
                    let last = view.tx.last_event_seq()?;
                    Ok(cursor.map(|c| (c.last_seq, c.watermark, last)))
                })
                .await?
                .value;
            let Some((summed_seq, watermark, last)) = summed else {
                return Ok(total);
            };
            let prune = Prune {
                before: before.map(|b| b.min(watermark)),
                keep: keep.map(|k| k.max(last.saturating_sub(summed_seq))),
                max: PRUNE_STEP,
            };
            let pruned = self.store.write(move |tx| tx.prune_events(&prune)).await?;
            total += pruned as u64;
            if pruned < PRUNE_STEP {
                return Ok(total);
            }
            // Let the requests waiting behind this step go first.
            tokio::task::yield_now().await;
        }
    }
}

/// The most events one pruning transaction deletes.
pub const PRUNE_STEP: usize = 1_000;

/// How much history to keep (settings); `None` or 0: no limit of that kind.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Retention {
    /// Events older than this many days go.
    pub max_age_days: Option<u32>,
    /// Only the newest this many events stay.
    pub max_events: Option<u64>,
}

impl Retention {
    /// Whether anything is ever pruned.
    pub fn limits(&self) -> bool {
        self.max_age_days.is_some_and(|d| d > 0) || self.max_events.is_some_and(|n| n > 0)
    }
}

/// A window's ends in order: `since` not after `until` (a window that
/// ends before it starts is a mistake, not an empty answer).
pub(super) fn in_order(
    since: Option<Timestamp>,
    until: Option<Timestamp>,
) -> Result<(), ServiceError> {
    match (since, until) {
        (Some(since), Some(until)) if since > until => Err(ServiceError::Invalid(format!(
            "`since` ({since}) must not be after `until` ({until})"
        ))),
        _ => Ok(()),
    }
}
