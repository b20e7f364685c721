//! Running totals of the lock analytics (rollups), so that a long window
//! costs a few hundred stored rows instead of every event in it.
//!
//! A `Rollup` follows the history in `seq` order and adds each hour's
//! figures up per instrument and user, per instrument, and per user (a
//! `UsageBucket` each); the service sums finished days from their hours.
//! Every hour's figures are exactly those of the plain fold
//! (`analytics::Usage`) over that hour, going on from what was open at its
//! start, so a lock held across hours is split at the hour boundaries; and
//! buckets next to each other add up to the window they make. Where a
//! window cuts an hour, the service folds that part from the events,
//! starting from the `Tracker` saved at the hour's start (a checkpoint).
//!
//! Waits are kept as a histogram (`WaitHistogram`): exact below 128 ms,
//! then 64 bins per doubling, so a median or p90 read from it is within
//! 1/128 (0.8%) of the exact nearest-rank value; the maximum is exact.

use std::collections::BTreeMap;

use super::analytics::{Tally, Tracker};
use super::event::Event;
use super::ids::EquipmentId;
use super::time::Timestamp;

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

/// Wait times, in bins fine enough for quantiles within 0.8%.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WaitHistogram {
    bins: BTreeMap<u32, u64>,
    max: Option<i64>,
}

/// Values below this have a bin each (exact).
const EXACT_BELOW: i64 = 128;
/// Bins per doubling above that: a bin is at most 1/64 of its values wide.
const SUB_BINS: u32 = 64;

fn bin_of(ms: i64) -> u32 {
    if ms < EXACT_BELOW {
        return ms as u32;
    }
    let exp = 63 - ms.leading_zeros(); // >= 7
    let sub = ((ms >> (exp - 6)) & 63) as u32;
    EXACT_BELOW as u32 + (exp - 7) * SUB_BINS + sub
}

/// The values a bin holds: [low, high).
fn bin_range(bin: u32) -> (i64, i64) {
    if i64::from(bin) < EXACT_BELOW {
        return (i64::from(bin), i64::from(bin) + 1);
    }
    let above = bin - EXACT_BELOW as u32;
    let exp = above / SUB_BINS + 7;
    let sub = i64::from(above % SUB_BINS);
    let width = 1i64 << (exp - 6);
    ((64 + sub) * width, (65 + sub) * width)
}

impl WaitHistogram {
    pub fn record(&mut self, ms: i64) {
        let ms = ms.max(0);
        *self.bins.entry(bin_of(ms)).or_default() += 1;
        self.max = Some(self.max.map_or(ms, |m| m.max(ms)));
    }

    pub fn merge(&mut self, other: &Self) {
        for (bin, n) in &other.bins {
            *self.bins.entry(*bin).or_default() += n;
        }
        self.max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    pub fn count(&self) -> u64 {
        self.bins.values().sum()
    }

    /// The longest wait (exact).
    pub fn max(&self) -> Option<i64> {
        self.max
    }

    /// The `p`-th percentile (0 < p <= 1), nearest rank: the middle of the
    /// bin that holds it (exact below 128 ms, else within 1/128 of it),
    /// never above the maximum.
    pub fn percentile(&self, p: f64) -> Option<i64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((p * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (bin, n) in &self.bins {
            seen += n;
            if seen >= rank {
                let (low, high) = bin_range(*bin);
                let middle = low + (high - low) / 2;
                return Some(self.max.map_or(middle, |m| middle.min(m)));
            }
        }
        self.max
    }

    /// The bins as text, `bin:count` separated by spaces (for storage).
    pub fn encode_bins(&self) -> String {
        let parts: Vec<String> = self.bins.iter().map(|(b, n)| format!("{b}:{n}")).collect();
        parts.join(" ")
    }

    /// Back from `encode_bins` and the maximum; `None` if malformed.
    pub fn decode(bins: &str, max: Option<i64>) -> Option<Self> {
        let mut out = Self {
            bins: BTreeMap::new(),
            max,
        };
        for part in bins.split_whitespace() {
            let (bin, n) = part.split_once(':')?;
            out.bins.insert(bin.parse().ok()?, n.parse().ok()?);
        }
        Some(out)
    }
}

/// The figures of one instrument, user, or both, over one stretch of time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    pub exclusive_ms: i64,
    pub observer_ms: i64,
    /// Time under any lock (the union of the locks): idle is the rest. For
    /// a user's total over instruments, the sum of each instrument's.
    pub busy_ms: i64,
    pub grants: u64,
    pub grants_from_queue: u64,
    pub forced_releases: u64,
    pub expiries: u64,
    pub waits: WaitHistogram,
    /// Whether a lock was granted, ended or held here (a row in the
    /// analytics); otherwise events only named the instrument (its idle
    /// time still counts in a group).
    pub locked: bool,
}

impl Figures {
    /// Adds figures of a stretch next to this one (or of another key).
    pub fn add(&mut self, other: &Figures) {
        self.exclusive_ms += other.exclusive_ms;
        self.observer_ms += other.observer_ms;
        self.busy_ms += other.busy_ms;
        self.grants += other.grants;
        self.grants_from_queue += other.grants_from_queue;
        self.forced_releases += other.forced_releases;
        self.expiries += other.expiries;
        self.waits.merge(&other.waits);
        self.locked |= other.locked;
    }
}

/// One stored running total: the figures of [`start`, `start + span_ms`)
/// for an instrument and a user (`None`: all of them; never both `None`).
/// A new dimension (lock groups) would be one more key here and in the
/// tables.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageBucket {
    pub span_ms: i64,
    pub start: Timestamp,
    pub equipment_id: Option<EquipmentId>,
    pub user: Option<String>,
    pub figures: Figures,
}

impl UsageBucket {
    /// The key it is stored under, besides its span and start.
    pub fn key(&self) -> (Option<EquipmentId>, Option<String>) {
        (self.equipment_id.clone(), self.user.clone())
    }
}

/// The start of the hour (UTC) that holds `t`.
pub fn hour_of(t: i64) -> i64 {
    t.div_euclid(HOUR_MS) * HOUR_MS
}

/// The start of the day (UTC) that holds `t`.
pub fn day_of(t: i64) -> i64 {
    t.div_euclid(DAY_MS) * DAY_MS
}

fn ceil_to(t: i64, unit: i64) -> i64 {
    -(-t).div_euclid(unit) * unit
}

/// Follows the history from a watermark: every event before it is in the
/// stored buckets, and `tracker` is what was open there.
#[derive(Clone, Debug)]
pub struct Rollup {
    tracker: Tracker,
    /// Where this run starts: the hour holding it was partly summed before.
    resumed_at: i64,
    /// The hour being summed and its figures so far (from the watermark).
    tally: Tally,
    /// Buckets of the hours finished or begun in this run.
    buckets: Vec<UsageBucket>,
    /// What was open at each hour boundary passed (only when something was).
    checkpoints: Vec<(i64, Tracker)>,
}

impl Rollup {
    pub fn resume(tracker: Tracker, watermark: i64) -> Self {
        Self {
            tracker,
            resumed_at: watermark,
            tally: Tally::new(watermark, hour_of(watermark) + HOUR_MS),
            buckets: Vec::new(),
            checkpoints: Vec::new(),
        }
    }

    /// Where the stretch being summed starts: the watermark the run
    /// started from, then each hour boundary it crosses; after `advance_to`,
    /// where the run ends.
    pub fn watermark(&self) -> i64 {
        self.tally.from()
    }

    /// Takes in the next event (in `seq` order). One from before the
    /// watermark (the clock was set back) counts as at the watermark.
    pub fn add(&mut self, e: &Event) {
        let t = e.timestamp.as_millis().max(self.watermark());
        self.cross_hours_to(t);
        let tally = &mut self.tally;
        self.tracker.apply(e, t, &mut |f| tally.add(&f));
    }

    /// Ends the run at `t` (at or after every event added): the figures up
    /// to `t`, the hour holding it partly.
    pub fn advance_to(&mut self, t: i64) {
        self.cross_hours_to(t);
        if t > self.watermark() {
            self.close_stretch(t);
        }
    }

    /// Finishes every hour that ends at or before `t`.
    fn cross_hours_to(&mut self, t: i64) {
        loop {
            let hour_end = hour_of(self.watermark()) + HOUR_MS;
            if t < hour_end {
                return;
            }
            self.close_stretch(hour_end);
            if self.tracker.is_empty() && hour_of(t) > hour_end {
                // Nothing open: the hours until `t`'s have no figures.
                self.tally = Tally::new(hour_of(t), hour_of(t) + HOUR_MS);
            } else if !self.tracker.is_empty() {
                self.checkpoints.push((hour_end, self.tracker.clone()));
            }
        }
    }

    /// Adds the stretch from the watermark to `end` (in the same hour, or
    /// the hour's end) to the buckets and moves the watermark there.
    fn close_stretch(&mut self, end: i64) {
        let mut tally = std::mem::replace(&mut self.tally, Tally::new(end, end));
        let hour = hour_of(tally.from());
        for held in self.tracker.held_until(end) {
            tally.add(&held);
        }
        if !tally.is_empty() {
            for mut bucket in tally.buckets(HOUR_MS) {
                bucket.start = Timestamp::from_millis(hour);
                self.buckets.push(bucket);
            }
        }
        let next_hour_end = hour_of(end) + HOUR_MS;
        self.tally = Tally::new(end, next_hour_end);
    }

    /// The run's results: the hour buckets to add to the stored ones (a
    /// key may come several times: add them up), the checkpoints at the
    /// hour boundaries passed, and what is open at the watermark.
    pub fn finish(self) -> RollupRun {
        RollupRun {
            resumed_at: self.resumed_at,
            watermark: self.tally.from(),
            buckets: self.buckets,
            checkpoints: self.checkpoints,
            tracker: self.tracker,
        }
    }
}

/// What a run of `Rollup` found.
#[derive(Clone, Debug)]
pub struct RollupRun {
    pub resumed_at: i64,
    pub watermark: i64,
    pub buckets: Vec<UsageBucket>,
    pub checkpoints: Vec<(i64, Tracker)>,
    pub tracker: Tracker,
}

impl RollupRun {
    /// The days this run finished (each to be summed from its hours).
    pub fn days_finished(&self) -> Vec<i64> {
        let mut days = Vec::new();
        let mut day = day_of(self.resumed_at);
        while day + DAY_MS <= self.watermark {
            if day + DAY_MS > self.resumed_at {
                days.push(day);
            }
            day += DAY_MS;
        }
        days
    }
}

/// Buckets added up per key (their span and start are the first's).
pub fn sum_buckets(
    buckets: impl IntoIterator<Item = UsageBucket>,
    span_ms: i64,
    start: Timestamp,
) -> Vec<UsageBucket> {
    let mut summed: BTreeMap<(Option<EquipmentId>, Option<String>), Figures> = BTreeMap::new();
    for bucket in buckets {
        summed.entry(bucket.key()).or_default().add(&bucket.figures);
    }
    summed
        .into_iter()
        .map(|((equipment_id, user), figures)| UsageBucket {
            span_ms,
            start,
            equipment_id,
            user,
            figures,
        })
        .collect()
}

/// How a window [`from`, `to`) is answered when the rollups are complete
/// before `watermark`: whole days and whole hours from stored buckets, the
/// rest (`edges`) folded from the events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Day buckets starting in this range.
    pub days: Option<(i64, i64)>,
    /// Hour buckets starting in these ranges.
    pub hours: Vec<(i64, i64)>,
    /// Stretches to fold from the events.
    pub edges: Vec<(i64, i64)>,
}

impl Plan {
    pub fn new(from: i64, to: i64, watermark: Option<i64>) -> Self {
        let Some(watermark) = watermark else {
            return Self {
                edges: vec![(from, to)],
                ..Self::default()
            };
        };
        // Only whole hours before the watermark are complete.
        let first_hour = ceil_to(from, HOUR_MS);
        let last_hour = hour_of(to.min(watermark));
        if first_hour >= last_hour {
            return Self {
                edges: (from < to).then_some((from, to)).into_iter().collect(),
                ..Self::default()
            };
        }
        let mut plan = Self::default();
        let (first_day, last_day) = (ceil_to(first_hour, DAY_MS), day_of(last_hour));
        if first_day < last_day {
            plan.days = Some((first_day, last_day));
            plan.hours = [(first_hour, first_day), (last_day, last_hour)]
                .into_iter()
                .filter(|(a, b)| a < b)
                .collect();
        } else {
            plan.hours = vec![(first_hour, last_hour)];
        }
        plan.edges = [(from, first_hour), (last_hour, to)]
            .into_iter()
            .filter(|(a, b)| a < b)
            .collect();
        plan
    }
}

/// Where the fold of an edge starting at `from` begins, knowing what was
/// open there: the start of its hour (a checkpoint), or the watermark when
/// the edge lies after it (the cursor's state). `None` when nothing is
/// summed yet, or when the edge lies after the watermark and that is more
/// than a day behind `now` (catching up after a first start): then the
/// fold starts at `from` knowing nothing open, as the plain fold over the
/// window's events does, rather than read the whole backlog.
pub fn edge_start(from: i64, watermark: Option<i64>, now: i64) -> Option<i64> {
    let watermark = watermark?;
    if hour_of(from) <= watermark {
        Some(hour_of(from))
    } else if now - watermark <= DAY_MS {
        Some(watermark)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The exact nearest-rank percentile of `values`.
    fn exact(values: &[i64], p: f64) -> i64 {
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        let rank = ((p * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1]
    }

    #[test]
    fn short_waits_are_exact_and_the_maximum_always() {
        let mut h = WaitHistogram::default();
        for w in [50, 10, 40, 20, 30, 60, 70, 80, 90, 100] {
            h.record(w);
        }
        assert_eq!(h.percentile(0.5), Some(50));
        assert_eq!(h.percentile(0.9), Some(90));
        assert_eq!(h.percentile(1.0), Some(100));
        h.record(1_234_567);
        assert_eq!(h.max(), Some(1_234_567));
        assert_eq!(h.percentile(1.0), Some(1_234_567));
        assert_eq!(WaitHistogram::default().percentile(0.5), None);
    }

    #[test]
    fn a_window_is_days_then_hours_then_the_cut_hours() {
        let d = 10 * DAY_MS;
        // From 22:30 on day 10 to 01:15 on day 13, summed up to day 14.
        let plan = Plan::new(
            d + 22 * HOUR_MS + 1_800_000,
            d + 3 * DAY_MS + HOUR_MS + 900_000,
            Some(d + 4 * DAY_MS),
        );
        assert_eq!(plan.days, Some((d + DAY_MS, d + 3 * DAY_MS)));
        assert_eq!(
            plan.hours,
            [
                (d + 23 * HOUR_MS, d + DAY_MS),
                (d + 3 * DAY_MS, d + 3 * DAY_MS + HOUR_MS)
            ]
        );
        assert_eq!(
            plan.edges,
            [
                (d + 22 * HOUR_MS + 1_800_000, d + 23 * HOUR_MS),
                (d + 3 * DAY_MS + HOUR_MS, d + 3 * DAY_MS + HOUR_MS + 900_000)
            ]
        );
        // Summed only to 00:20 on day 12: the rest is folded from 00:00.
        let late = Plan::new(d, d + 3 * DAY_MS, Some(d + 2 * DAY_MS + 1_200_000));
        assert_eq!(late.days, Some((d, d + 2 * DAY_MS)));
        assert!(late.hours.is_empty());
        assert_eq!(late.edges, [(d + 2 * DAY_MS, d + 3 * DAY_MS)]);
        assert_eq!(
            edge_start(d + 2 * DAY_MS + 60_000, Some(d + 2 * DAY_MS + 1_200_000), d),
            Some(d + 2 * DAY_MS)
        );
        // Nothing summed yet, or not that far: all from the window's events.
        assert_eq!(Plan::new(5, 9, None).edges, [(5, 9)]);
        assert_eq!(edge_start(5, None, 5), None);
        // After the watermark: from it, unless it is a day behind now.
        let w = Some(d + HOUR_MS);
        assert_eq!(edge_start(d + 9 * DAY_MS, w, d + 2 * HOUR_MS), w);
        assert_eq!(edge_start(d + 3 * HOUR_MS, w, d + 2 * DAY_MS), None);
    }

    proptest! {
        /// Median and p90 from the bins are within 1/128 of the exact
        /// nearest-rank values; merged histograms are one histogram of all
        /// the values; the text form reads back the same.
        #[test]
        fn quantiles_are_within_a_128th(
            values in proptest::collection::vec(
                prop_oneof![0..200i64, 0..100_000i64, 0..3_000_000_000i64], 1..200),
            split in 0..200usize,
        ) {
            let (a, b) = values.split_at(split.min(values.len()));
            let mut h = WaitHistogram::default();
            let (mut ha, mut hb) = (WaitHistogram::default(), WaitHistogram::default());
            values.iter().for_each(|&v| h.record(v));
            a.iter().for_each(|&v| ha.record(v));
            b.iter().for_each(|&v| hb.record(v));
            ha.merge(&hb);
            prop_assert_eq!(&ha, &h);
            for p in [0.5, 0.9] {
                let (got, want) = (h.percentile(p).unwrap(), exact(&values, p));
                prop_assert!((got - want).abs() as f64 <= want as f64 / 128.0, "{} vs {}", got, want);
                if want < 128 {
                    prop_assert_eq!(got, want);
                }
            }
            prop_assert_eq!(h.max(), values.iter().max().copied());
            prop_assert_eq!(WaitHistogram::decode(&h.encode_bins(), h.max()), Some(h));
        }
    }
}
