//! A client session and its lease arithmetic. Pure: every method takes `now`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ids::SessionId;
use super::time::{Timeout, Timestamp, is_live, time_remaining};

/// One client's presence. It owns locks and queue places (held in each
/// equipment's `EquipmentLocks`), and ends when deleted or when its
/// inactivity deadline passes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub client_name: String,
    pub client_ip: Option<String>,
    pub created_at: Timestamp,
    pub last_activity: Timestamp,
    pub timeout: Timeout,
    pub metadata: Map<String, Value>,
    /// The user who created it (with authentication on); only they may act
    /// with it.
    #[serde(default)]
    pub user: Option<String>,
}

impl Session {
    pub fn deadline(&self) -> Option<Timestamp> {
        self.timeout.deadline_after(self.last_activity)
    }

    pub fn is_live(&self, now: Timestamp) -> bool {
        is_live(self.deadline(), now)
    }

    /// Records activity: the lease starts again from `now`.
    pub fn touch(&mut self, now: Timestamp) {
        self.last_activity = self.last_activity.max(now);
    }

    pub fn time_remaining(&self, now: Timestamp) -> Option<f64> {
        time_remaining(self.deadline(), now)
    }

    pub fn duration_seconds(&self, now: Timestamp) -> f64 {
        now.seconds_since(self.created_at).max(0.0)
    }

    /// Gives a session whose deadline passed while the server was down one
    /// fresh period from `start` (semantics.md, "Restart").
    pub fn renew_after_restart(&mut self, start: Timestamp) {
        if !self.is_live(start) {
            self.last_activity = start;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(timeout_ms: u64) -> Session {
        Session {
            id: SessionId::parse("s1").unwrap(),
            client_name: "pc".into(),
            client_ip: None,
            created_at: Timestamp::from_millis(0),
            last_activity: Timestamp::from_millis(0),
            timeout: Timeout::from_millis(timeout_ms),
            metadata: Map::new(),
            user: None,
        }
    }

    #[test]
    fn touching_moves_the_deadline_and_never_back() {
        let mut s = session(1_000);
        assert!(!s.is_live(Timestamp::from_millis(1_000)));
        s.touch(Timestamp::from_millis(800));
        assert!(s.is_live(Timestamp::from_millis(1_500)));
        s.touch(Timestamp::from_millis(100));
        assert_eq!(s.last_activity, Timestamp::from_millis(800));
    }

    #[test]
    fn no_timeout_lives_forever_and_restart_renews_only_the_expired() {
        let mut forever = session(0);
        assert!(forever.is_live(Timestamp::from_millis(i64::MAX / 2)));
        forever.renew_after_restart(Timestamp::from_millis(5_000));
        assert_eq!(forever.last_activity, Timestamp::from_millis(0));

        let mut lapsed = session(1_000);
        lapsed.renew_after_restart(Timestamp::from_millis(5_000));
        assert_eq!(lapsed.deadline(), Some(Timestamp::from_millis(6_000)));
    }
}
