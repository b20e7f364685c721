//! A client session and its lease arithmetic. Pure: every method takes `now`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::DomainError;
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

/// The name of an implicit session whose client did not say who it is.
pub const IMPLICIT_CLIENT_NAME: &str = "implicit";

impl Session {
    /// A session opened by an acquire that named an id which is not live
    /// (semantics.md, Sessions 6): a fresh lease from `now`, named after
    /// the client if it said who it is, owned by `user`.
    pub fn implicit(
        id: SessionId,
        client_name: Option<&str>,
        client_ip: Option<String>,
        timeout: Timeout,
        user: Option<String>,
        now: Timestamp,
    ) -> Self {
        // A User-Agent is kept, without what a terminal would act on.
        let client_name = client_name
            .map(super::ids::without_control_characters)
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| IMPLICIT_CLIENT_NAME.to_owned());
        Self {
            id,
            client_name,
            client_ip,
            created_at: now,
            last_activity: now,
            timeout,
            metadata: Map::new(),
            user,
        }
    }

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

    /// Session `metadata` is bounded (`max`, a server setting), counted
    /// as its compact JSON, so no client can make every session listing
    /// and stored row grow without limit. An empty object is always fine.
    pub fn check_metadata(metadata: &Map<String, Value>, max: usize) -> Result<(), DomainError> {
        if metadata.is_empty() {
            return Ok(());
        }
        let size = serde_json::to_string(metadata).map_or(usize::MAX, |json| json.len());
        if size > max {
            return Err(DomainError::MetadataTooLarge { size, max });
        }
        Ok(())
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
    fn an_implicit_session_is_named_after_its_client_or_implicit() {
        let now = Timestamp::from_millis(7_000);
        let id = SessionId::parse("c0ffee").unwrap();
        let timeout = Timeout::from_millis(600_000);
        let named = Session::implicit(
            id.clone(),
            Some("python-requests/2.31"),
            None,
            timeout,
            None,
            now,
        );
        assert_eq!(named.client_name, "python-requests/2.31");
        assert_eq!((named.created_at, named.last_activity), (now, now));
        assert_eq!(named.deadline(), Some(Timestamp::from_millis(607_000)));
        let cleaned = Session::implicit(
            id.clone(),
            Some("curl\t/8\u{1b}[2J"),
            None,
            timeout,
            None,
            now,
        );
        assert_eq!(cleaned.client_name, "curl/8[2J", "control characters go");
        for nameless in [None, Some(""), Some("  "), Some("\t\u{7}")] {
            let s = Session::implicit(id.clone(), nameless, None, timeout, Some("al".into()), now);
            assert_eq!(
                (s.client_name.as_str(), s.user.as_deref()),
                ("implicit", Some("al"))
            );
        }
    }

    #[test]
    fn metadata_is_bounded_by_its_json_size() {
        let meta = |json: Value| json.as_object().cloned().unwrap();
        let small = meta(serde_json::json!({"user": "r1"})); // {"user":"r1"}: 13 bytes
        assert!(Session::check_metadata(&small, 13).is_ok());
        assert_eq!(
            Session::check_metadata(&small, 12),
            Err(DomainError::MetadataTooLarge { size: 13, max: 12 })
        );
        assert!(Session::check_metadata(&Map::new(), 0).is_ok());
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
