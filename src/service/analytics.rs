//! The lock analytics use cases: answering a window from the rollups
//! (stored running totals per hour and per UTC day, `domain::rollup`) and
//! folding only the parts of hours at its edges from the events; and
//! keeping the rollups up to date (`roll_up_history`), a background step
//! that follows the history by `seq` off the request path.

use super::{Service, ServiceError};
use crate::domain::analytics::{GroupBy, Stretch, Summed, Tracker, UsageRow};
use crate::domain::rollup::{
    DAY_MS, HOUR_MS, Plan, Rollup, UsageBucket, edge_start, hour_of, sum_buckets,
};
use crate::domain::{EquipmentId, Event, Timestamp};
use crate::storage::{EventQuery, Pick, StoreError, Tx, UsageCursor, UsageQuery};

/// The longest window analytics answer. With the rollups a window costs
/// its days, hours at its edges and at most two partial hours of events,
/// so a year is as cheap as a month.
pub const MAX_ANALYTICS_DAYS: i64 = 366;
/// The window when none is given: the last 7 days.
pub const DEFAULT_ANALYTICS_DAYS: i64 = 7;
/// Events read per step of a fold.
const PAGE: usize = 1_000;
/// How far behind the clock the rollups stay: a transaction's events carry
/// the time it read the clock, and may commit a little after a later one's.
/// (An event that still comes in older than the rollups' watermark counts
/// as at the watermark.)
pub const ROLLUP_GRACE_MS: i64 = 5_000;
/// The most events one roll-up step reads (a step is one read and one
/// small write transaction).
const ROLLUP_STEP_EVENTS: usize = 20_000;

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
    /// How many events were read (for the parts not in the rollups).
    pub events: u64,
    /// How many stored rollup rows were read.
    pub rollup_rows: u64,
}

/// The instruments and user a request selects.
#[derive(Clone, Debug)]
struct Selection {
    /// None: every instrument.
    equipment: Vec<EquipmentId>,
    user: Option<String>,
    group_by: GroupBy,
}

impl Selection {
    /// Whether a bucket counts toward this selection's figures.
    fn wants(&self, b: &UsageBucket) -> bool {
        let equipment = match &b.equipment_id {
            Some(id) => self.equipment.is_empty() || self.equipment.contains(id),
            // Users' totals over every instrument: only where `queries`
            // reads them too.
            None => {
                self.equipment.is_empty() && self.user.is_none() && self.group_by == GroupBy::User
            }
        };
        let user = match (&self.user, &b.user) {
            (Some(want), Some(user)) => want == user,
            (Some(_), None) => false,
            (None, _) => true,
        };
        equipment && user
    }

    /// The stored buckets it needs of one span starting in [from, to).
    fn queries(&self, span_ms: i64, from: i64, to: i64) -> Vec<UsageQuery> {
        let equipment: Vec<Pick<EquipmentId>> = if self.equipment.is_empty() {
            vec![Pick::Each]
        } else {
            self.equipment.iter().cloned().map(Pick::One).collect()
        };
        let query = |equipment, user| UsageQuery {
            span_ms,
            since: Timestamp::from_millis(from),
            until: Timestamp::from_millis(to),
            equipment,
            user,
        };
        let mut out = Vec::new();
        match &self.user {
            // A user's own figures per instrument.
            Some(user) => {
                for e in equipment {
                    out.push(query(e, Pick::One(user.clone())));
                }
            }
            None => {
                for e in &equipment {
                    out.push(query(e.clone(), Pick::Total));
                }
                if self.group_by == GroupBy::User {
                    if self.equipment.is_empty() {
                        out.push(query(Pick::Total, Pick::Each));
                    } else {
                        for e in equipment {
                            out.push(query(e, Pick::Each));
                        }
                    }
                }
            }
        }
        out
    }
}

fn encode(tracker: &Tracker) -> String {
    serde_json::to_string(tracker).expect("a tracker is plain data")
}

fn decode(state: &str) -> Result<Tracker, StoreError> {
    serde_json::from_str(state)
        .map_err(|e| StoreError::Corrupt(format!("lock_usage checkpoint: {e}")))
}

/// What was open at `at` (a checkpoint, the cursor's state at its
/// watermark, or nothing when neither was saved).
fn tracker_at(
    tx: &mut dyn Tx,
    cursor: Option<&UsageCursor>,
    at: i64,
) -> Result<Tracker, StoreError> {
    if let Some(c) = cursor.filter(|c| c.watermark.as_millis() == at) {
        return decode(&c.state);
    }
    match tx.usage_checkpoint(Timestamp::from_millis(at))? {
        Some(state) => decode(&state),
        None => Ok(Tracker::default()),
    }
}

/// Reads the events from `from` (inclusive) to `to`, of `equipment` (all
/// when empty), in `seq` order, a page at a time.
fn each_event(
    tx: &mut dyn Tx,
    equipment: &[EquipmentId],
    from: i64,
    to: i64,
    mut each: impl FnMut(&Event),
) -> Result<u64, StoreError> {
    let passes: Vec<Option<EquipmentId>> = if equipment.is_empty() {
        vec![None]
    } else {
        equipment.iter().cloned().map(Some).collect()
    };
    let mut read = 0;
    for equipment in passes {
        let mut after = None;
        loop {
            let page = tx.query_events(&EventQuery {
                equipment_id: equipment.clone(),
                since: Some(Timestamp::from_millis(from)),
                until: Some(Timestamp::from_millis(to)),
                after,
                limit: PAGE,
                ..EventQuery::default()
            })?;
            read += page.len() as u64;
            page.iter().for_each(&mut each);
            after = page.last().and_then(|e| e.seq);
            if page.len() < PAGE {
                break;
            }
        }
    }
    Ok(read)
}

/// The answer for [since, until): stored buckets where the plan has them,
/// the edges folded from the events. Returns the summed figures, the
/// events read and the rollup rows read.
fn answer(
    tx: &mut dyn Tx,
    selection: &Selection,
    since: i64,
    until: i64,
    now: i64,
) -> Result<(Summed, u64, u64), StoreError> {
    let cursor = tx.usage_cursor()?;
    let watermark = cursor.as_ref().map(|c| c.watermark.as_millis());
    let plan = Plan::new(since, until, watermark);
    let mut summed = Summed::default();
    let mut rows = 0;
    let ranges = plan
        .days
        .iter()
        .map(|&range| (DAY_MS, range))
        .chain(plan.hours.iter().map(|&range| (HOUR_MS, range)));
    for (span, (from, to)) in ranges {
        for query in selection.queries(span, from, to) {
            for bucket in tx.usage_buckets(&query)? {
                rows += 1;
                summed.add(&bucket);
            }
        }
    }
    let mut events = 0;
    for (from, to) in plan.edges {
        let (start, tracker) = match edge_start(from, watermark, now) {
            Some(start) => (start, tracker_at(tx, cursor.as_ref(), start)?),
            None => (from, Tracker::default()),
        };
        let mut stretch = Stretch::new(tracker, from, to);
        events += each_event(tx, &selection.equipment, start, to, |e| stretch.add(e))?;
        for bucket in stretch.finish() {
            if selection.wants(&bucket) {
                summed.add(&bucket);
            }
        }
    }
    Ok((summed, events, rows))
}

/// One step of the rollups, found by a read: where the cursor was, where
/// it goes, and what to store.
struct Step {
    expected: Option<UsageCursor>,
    next: UsageCursor,
    hours: Vec<UsageBucket>,
    checkpoints: Vec<(i64, String)>,
    days: Vec<i64>,
}

impl Service {
    pub async fn analytics(&self, mut input: AnalyticsInput) -> Result<Analytics, ServiceError> {
        // A configured lock group stands for its members.
        input.equipment = std::mem::take(&mut input.equipment)
            .into_iter()
            .flat_map(|id| match self.instruments.group(&id) {
                Some(group) => group.members.clone(),
                None => vec![id],
            })
            .fold(Vec::new(), |mut ids, id| {
                if !ids.contains(&id) {
                    ids.push(id);
                }
                ids
            });
        let now = self.clock.now();
        let until = input.until.unwrap_or(now);
        let since = input.since.unwrap_or(Timestamp::from_millis(
            until
                .as_millis()
                .saturating_sub(DEFAULT_ANALYTICS_DAYS * DAY_MS),
        ));
        super::history::in_order(Some(since), Some(until))?;
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
        // Instruments reported even when nothing happened to them (not
        // when only one user's locks count).
        let seeds: Vec<EquipmentId> = match (&input.user, input.equipment.is_empty()) {
            (Some(_), _) => Vec::new(),
            (None, true) => self.instruments.iter().map(|i| i.id.clone()).collect(),
            (None, false) => input.equipment.clone(),
        };
        let selection = Selection {
            equipment: input.equipment,
            user: input.user,
            group_by: input.group_by,
        };
        let (from, to) = (since.as_millis(), until.as_millis());
        let read = self
            .read(move |view| {
                let now = view.now.as_millis();
                let (summed, events, rows) = answer(view.tx, &selection, from, to, now)?;
                let usage = summed.rows(
                    selection.group_by,
                    to - from,
                    &seeds,
                    selection.user.as_deref(),
                );
                Ok((usage, events, rows))
            })
            .await?;
        let (rows, events, rollup_rows) = read.value;
        Ok(Analytics {
            since,
            until,
            rows,
            events,
            rollup_rows,
        })
    }

    /// Brings the rollups up to `ROLLUP_GRACE_MS` before now, a step at a
    /// time (each a read of at most `ROLLUP_STEP_EVENTS` events and one
    /// small write), so that requests never wait behind the whole job.
    /// Returns how many events it summed. Another server sharing the store
    /// may take a step first: then this one reads again from where that
    /// one left off.
    pub async fn roll_up_history(&self) -> Result<u64, ServiceError> {
        let mut total = 0;
        loop {
            let cutoff = self.clock.now().as_millis() - ROLLUP_GRACE_MS;
            let Some((step, summed)) = self
                .read(move |view| Ok(plan_step(view.tx, cutoff)?))
                .await?
                .value
            else {
                return Ok(total);
            };
            let more = summed >= ROLLUP_STEP_EVENTS as u64;
            self.store
                .write(move |tx| save_step(tx, &step).map(|_| ()))
                .await?;
            total += summed;
            if !more {
                return Ok(total);
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Reads what the next roll-up step sums: the events after the cursor, up
/// to `cutoff` or `ROLLUP_STEP_EVENTS` of them. `None`: nothing to do.
fn plan_step(tx: &mut dyn Tx, cutoff: i64) -> Result<Option<(Step, u64)>, StoreError> {
    let expected = tx.usage_cursor()?;
    let (last_seq, mut rollup) = match &expected {
        Some(c) if c.watermark.as_millis() >= cutoff => return Ok(None),
        Some(c) => (
            c.last_seq,
            Rollup::resume(decode(&c.state)?, c.watermark.as_millis()),
        ),
        None => {
            // The first run starts at the hour of the oldest event kept.
            let first = tx.query_events(&EventQuery {
                limit: 1,
                ..EventQuery::default()
            })?;
            let start = first
                .first()
                .map_or(cutoff, |e| e.timestamp.as_millis().min(cutoff));
            (0, Rollup::resume(Tracker::default(), hour_of(start)))
        }
    };
    let mut after = last_seq;
    let mut summed = 0u64;
    let mut last_time = None;
    'pages: loop {
        let page = tx.query_events(&EventQuery {
            after: Some(after),
            limit: PAGE,
            ..EventQuery::default()
        })?;
        for e in &page {
            let t = e.timestamp.as_millis();
            if t >= cutoff {
                break 'pages;
            }
            // Stop only between instants, so that the watermark (the next
            // event's time) leaves no event of its own instant behind.
            if summed >= ROLLUP_STEP_EVENTS as u64 && last_time.is_some_and(|l| t > l) {
                rollup.advance_to(t.max(rollup.watermark()));
                return Ok(Some((finish(expected, rollup, after), summed)));
            }
            rollup.add(e);
            after = e.seq.unwrap_or(after);
            summed += 1;
            last_time = Some(t.max(last_time.unwrap_or(t)));
        }
        if page.len() < PAGE {
            break;
        }
    }
    rollup.advance_to(cutoff.max(rollup.watermark()));
    Ok(Some((finish(expected, rollup, after), summed)))
}

fn finish(expected: Option<UsageCursor>, rollup: Rollup, last_seq: u64) -> Step {
    let run = rollup.finish();
    let days = run.days_finished();
    Step {
        next: UsageCursor {
            last_seq,
            watermark: Timestamp::from_millis(run.watermark),
            state: encode(&run.tracker),
        },
        expected,
        hours: run.buckets,
        checkpoints: run
            .checkpoints
            .iter()
            .map(|(at, tracker)| (*at, encode(tracker)))
            .collect(),
        days,
    }
}

/// Stores a step: moves the cursor (or finds another server did), adds
/// the step's hour figures to those stored, and sums the days it finished.
fn save_step(tx: &mut dyn Tx, step: &Step) -> Result<bool, StoreError> {
    if !tx.advance_usage_cursor(step.expected.as_ref(), &step.next)? {
        return Ok(false);
    }
    let mut hours: Vec<i64> = step.hours.iter().map(|b| b.start.as_millis()).collect();
    hours.sort_unstable();
    hours.dedup();
    for hour in hours {
        let stored = every_bucket(tx, HOUR_MS, hour, hour + HOUR_MS)?;
        let new = step.hours.iter().filter(|b| b.start.as_millis() == hour);
        let merged = sum_buckets(
            stored.into_iter().chain(new.cloned()),
            HOUR_MS,
            Timestamp::from_millis(hour),
        );
        tx.put_usage(&merged)?;
    }
    for (at, state) in &step.checkpoints {
        tx.put_usage_checkpoint(Timestamp::from_millis(*at), state)?;
    }
    for &day in &step.days {
        let hours = every_bucket(tx, HOUR_MS, day, day + DAY_MS)?;
        tx.put_usage(&sum_buckets(hours, DAY_MS, Timestamp::from_millis(day)))?;
    }
    Ok(true)
}

/// Every stored bucket of one span starting in [from, to), whatever its key.
fn every_bucket(
    tx: &mut dyn Tx,
    span_ms: i64,
    from: i64,
    to: i64,
) -> Result<Vec<UsageBucket>, StoreError> {
    let mut out = Vec::new();
    for (equipment, user) in [
        (Pick::Each, Pick::Each),
        (Pick::Each, Pick::Total),
        (Pick::Total, Pick::Each),
    ] {
        out.extend(tx.usage_buckets(&UsageQuery {
            span_ms,
            since: Timestamp::from_millis(from),
            until: Timestamp::from_millis(to),
            equipment,
            user,
        })?);
    }
    Ok(out)
}
