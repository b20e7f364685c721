//! Who goes first in a queue: priorities and aging, as pure arithmetic.
//!
//! A waiter's effective priority at `now` is its priority plus one step
//! for each `aging` it has waited, counted continuously (half an `aging`
//! adds half a step). Every waiter ages at the same rate, so the order of
//! two waiters never changes while they wait: comparing effective
//! priorities at any `now` after both arrived gives the same answer as
//! comparing `queued_at - priority * aging` (their "virtual arrival"), a
//! key that does not depend on `now`. A queue kept in that order is
//! therefore always in its real order, and stored state never needs a
//! rewrite as time passes; positions change only when someone joins or
//! leaves. (Whole steps only would make orders flip at step boundaries,
//! with nobody told.)

use super::time::Timestamp;

/// The lowest priority a request may ask for.
pub const MIN_PRIORITY: i8 = -10;
/// The highest priority a request may ask for.
pub const MAX_PRIORITY: i8 = 10;

/// `raw` as a priority, if it is within `MIN_PRIORITY..=MAX_PRIORITY`.
pub fn checked(raw: i64) -> Option<i8> {
    (i64::from(MIN_PRIORITY)..=i64::from(MAX_PRIORITY))
        .contains(&raw)
        .then_some(raw as i8)
}

/// The effective priority of a waiter with `priority` that joined at
/// `queued_at`, at `now`, when each `aging_ms` of waiting adds one step
/// (`0`: no aging). Only for showing; ordering uses `service_key`, which
/// agrees with it exactly (a property test checks it).
pub fn effective_priority(
    priority: i8,
    queued_at: Timestamp,
    now: Timestamp,
    aging_ms: u64,
) -> f64 {
    if aging_ms == 0 {
        return f64::from(priority);
    }
    let waited = (now.as_millis() - queued_at.as_millis()).max(0) as f64;
    f64::from(priority) + waited / aging_ms as f64
}

/// The order in which waiters are served: the smaller key first; equal
/// keys in arrival order. With aging, the virtual arrival
/// `queued_at - priority * aging` (then the real arrival, so equal
/// effective priorities are FIFO); without it, strict priority then
/// arrival.
pub fn service_key(priority: i8, queued_at: Timestamp, aging_ms: u64) -> (i64, i64) {
    let at = queued_at.as_millis();
    if aging_ms == 0 {
        return (-i64::from(priority), at);
    }
    let lead = i64::from(priority).saturating_mul(aging_ms.min(i64::MAX as u64) as i64);
    (at.saturating_sub(lead), at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn priorities_outside_the_range_are_refused() {
        assert_eq!(checked(-10), Some(-10));
        assert_eq!(checked(10), Some(10));
        assert_eq!(checked(0), Some(0));
        assert_eq!(checked(11), None);
        assert_eq!(checked(-11), None);
        assert_eq!(checked(i64::MAX), None);
    }

    #[test]
    fn one_step_per_aging_period_counted_continuously() {
        assert_eq!(effective_priority(2, t(0), t(0), 60_000), 2.0);
        assert_eq!(effective_priority(2, t(0), t(60_000), 60_000), 3.0);
        assert_eq!(effective_priority(2, t(0), t(90_000), 60_000), 3.5);
        assert_eq!(effective_priority(-3, t(0), t(600_000), 60_000), 7.0);
        assert_eq!(effective_priority(4, t(0), t(600_000), 0), 4.0, "no aging");
    }

    #[test]
    fn a_waiter_is_overtaken_only_by_those_more_important_by_more_than_it_waited() {
        // With one step a minute, a priority-5 arrival goes ahead of a
        // priority-0 waiter that has waited under five minutes, not of one
        // that waited longer; exactly five minutes is a tie: FIFO.
        let old = service_key(0, t(0), 60_000);
        assert!(service_key(5, t(299_999), 60_000) < old);
        assert!(service_key(5, t(300_001), 60_000) > old);
        assert!(service_key(5, t(300_000), 60_000) > old);
        // No aging: strict priority, then arrival.
        assert!(service_key(1, t(10_000_000), 0) < service_key(0, t(0), 0));
        assert!(service_key(0, t(0), 0) < service_key(0, t(1), 0));
    }

    proptest! {
        /// The key orders waiters exactly as their effective priorities do
        /// at every instant after both arrived (higher first, ties by
        /// arrival), so the order never changes with time.
        #[test]
        fn the_key_agrees_with_effective_priority_at_every_instant(
            pa in MIN_PRIORITY..=MAX_PRIORITY, pb in MIN_PRIORITY..=MAX_PRIORITY,
            qa in 0i64..10_000_000, qb in 0i64..10_000_000,
            later in 0i64..100_000_000, aging in prop_oneof![Just(0u64), 1u64..10_000_000],
        ) {
            let now = t(qa.max(qb) + later);
            // Effective priority times aging, exactly, as integers.
            let scaled = |p: i8, q: i64| {
                if aging == 0 { (i128::from(p), 0) } else {
                    (i128::from(p) * i128::from(aging) + i128::from(now.as_millis() - q), 0)
                }
            };
            let (ea, _) = scaled(pa, qa);
            let (eb, _) = scaled(pb, qb);
            let by_effective = eb.cmp(&ea).then(qa.cmp(&qb));
            let by_key = service_key(pa, t(qa), aging).cmp(&service_key(pb, t(qb), aging));
            prop_assert_eq!(by_key, by_effective);
        }
    }
}
