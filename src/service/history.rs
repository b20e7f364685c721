//! The history use cases: paging through the recorded events, and
//! forgetting old ones.

use super::inputs::too_many;
use super::{At, Service, ServiceError};
use crate::domain::Timestamp;
use crate::storage::{EventPage, EventQuery};

impl Service {
    /// The whole history, filtered, oldest first, a page at a time.
    pub async fn history(&self, query: EventQuery) -> Result<At<EventPage>, ServiceError> {
        too_many(query.limit)?;
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

    /// Forgets events older than `days` days (0 keeps everything).
    pub async fn prune_history(&self, days: u32) -> Result<usize, ServiceError> {
        if days == 0 {
            return Ok(0);
        }
        let before =
            Timestamp::from_millis(self.clock.now().as_millis() - i64::from(days) * 86_400_000);
        Ok(self.store.write(move |tx| tx.prune_events(before)).await?)
    }
}
