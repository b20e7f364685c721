//! Points in time and lease lengths, as plain numbers. The domain never reads
//! a clock: every function that needs the time takes a `Timestamp` argument.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

use super::DomainError;
use super::number::Compact;

/// Milliseconds since the Unix epoch, UTC. Shown as RFC 3339 with
/// milliseconds (`2025-11-08T10:30:00.123Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// This instant plus `millis`, saturating instead of overflowing.
    pub const fn plus_millis(self, millis: u64) -> Self {
        let millis = if millis > i64::MAX as u64 {
            i64::MAX
        } else {
            millis as i64
        };
        Self(self.0.saturating_add(millis))
    }

    /// Seconds from `earlier` to `self` (negative if `earlier` is later).
    pub fn seconds_since(self, earlier: Timestamp) -> f64 {
        (self.0 - earlier.0) as f64 / 1000.0
    }

    pub fn to_rfc3339(self) -> String {
        match Utc.timestamp_millis_opt(self.0).single() {
            Some(at) => at.to_rfc3339_opts(SecondsFormat::Millis, true),
            None => format!("@{}ms", self.0),
        }
    }

    /// Parses RFC 3339 (any offset; converted to UTC).
    pub fn parse_rfc3339(raw: &str) -> Result<Self, DomainError> {
        DateTime::parse_from_rfc3339(raw)
            .map(|at| Self(at.timestamp_millis()))
            .map_err(|e| DomainError::InvalidTimestamp(format!("invalid timestamp {raw:?}: {e}")))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse_rfc3339(&raw).map_err(serde::de::Error::custom)
    }
}

/// The longest timeout accepted: about 31 years. Longer values are almost
/// certainly mistakes, and `0` already means "never".
pub const MAX_TIMEOUT_SECONDS: f64 = 1_000_000_000.0;

/// An inactivity timeout: the lease ends `timeout` after the last activity.
/// `None` means no timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Timeout(Option<u64>);

impl Timeout {
    pub const NONE: Timeout = Timeout(None);

    /// `0` means no timeout; negative, non-finite and absurdly large values
    /// are rejected.
    pub fn from_seconds(seconds: f64) -> Result<Self, DomainError> {
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(DomainError::InvalidTimeout(format!(
                "timeout_seconds must be a number >= 0 (0 = no timeout), got {}",
                Compact(seconds)
            )));
        }
        if seconds > MAX_TIMEOUT_SECONDS {
            return Err(DomainError::InvalidTimeout(format!(
                "timeout_seconds must be at most {MAX_TIMEOUT_SECONDS}, got {}",
                Compact(seconds)
            )));
        }
        // Only exactly 0 means "no timeout": a positive value that would
        // round to 0 ms must not silently become a lease that never ends.
        if seconds > 0.0 && seconds < 0.001 {
            return Err(DomainError::InvalidTimeout(format!(
                "timeout_seconds must be 0 (no timeout) or at least 0.001 (1 ms), got {}",
                Compact(seconds)
            )));
        }
        let millis = (seconds * 1000.0).round() as u64;
        Ok(Self((millis > 0).then_some(millis)))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self(if millis == 0 { None } else { Some(millis) })
    }

    pub const fn millis(self) -> Option<u64> {
        self.0
    }

    /// No timeout (`0`).
    pub const fn is_none(&self) -> bool {
        self.0.is_none()
    }

    /// The timeout in seconds as the API shows it: `0.0` for no timeout.
    pub fn as_seconds(self) -> f64 {
        self.0.map_or(0.0, |ms| ms as f64 / 1000.0)
    }

    /// When a lease whose last activity was `last_activity` ends.
    pub fn deadline_after(self, last_activity: Timestamp) -> Option<Timestamp> {
        self.0.map(|ms| last_activity.plus_millis(ms))
    }
}

/// Whether a lease with `deadline` is still live at `now`. A lease is over
/// from its deadline on (the deadline instant itself is not live).
pub fn is_live(deadline: Option<Timestamp>, now: Timestamp) -> bool {
    deadline.is_none_or(|d| now < d)
}

/// Seconds left before `deadline` at `now` (never negative), or `None` for
/// no deadline.
pub fn time_remaining(deadline: Option<Timestamp>, now: Timestamp) -> Option<f64> {
    deadline.map(|d| d.seconds_since(now).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_print_rfc3339_millis_utc() {
        let t = Timestamp::parse_rfc3339("2025-11-08T10:30:00.123Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2025-11-08T10:30:00.123Z");
        let offset = Timestamp::parse_rfc3339("2025-11-08T12:30:00+02:00").unwrap();
        assert_eq!(offset.to_rfc3339(), "2025-11-08T10:30:00.000Z");
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn timeouts_table() {
        let cases: &[(f64, Option<Option<u64>>)] = &[
            (0.0, Some(None)),
            (300.0, Some(Some(300_000))),
            (0.25, Some(Some(250))),
            (0.001, Some(Some(1))),
            (0.0015, Some(Some(2))),
            // Below 1 ms is refused, never "no timeout".
            (0.0004, None),
            (0.000_999, None),
            (f64::MIN_POSITIVE, None),
            (-1.0, None),
            (f64::NAN, None),
            (f64::INFINITY, None),
            (2e9, None),
        ];
        for (seconds, expected) in cases {
            let got = Timeout::from_seconds(*seconds).ok().map(Timeout::millis);
            assert_eq!(got, *expected, "{seconds}");
        }
    }

    #[test]
    fn the_deadline_instant_is_not_live() {
        let start = Timestamp::from_millis(1_000);
        let deadline = Timeout::from_millis(500).deadline_after(start);
        assert!(is_live(deadline, Timestamp::from_millis(1_499)));
        assert!(!is_live(deadline, Timestamp::from_millis(1_500)));
        assert!(is_live(None, Timestamp::from_millis(i64::MAX)));
        assert_eq!(
            time_remaining(deadline, Timestamp::from_millis(2_000)),
            Some(0.0)
        );
    }
}
