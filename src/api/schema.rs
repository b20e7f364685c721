//! How the API document describes the domain types that requests and answers
//! carry. The domain stays free of framework derives, so each such type has
//! a mirror here that derives `ToSchema`, and the domain type borrows the
//! mirror's schema (name included): bodies elsewhere (here and in
//! `drivers`) keep naming domain types. The tests check each mirror against
//! the domain type's serde form, so the document cannot drift from the wire.

use serde::Serialize;
use std::borrow::Cow;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;
use utoipa::{PartialSchema, ToSchema};

use crate::domain;

/// Lends `$mirror`'s schema and component name to the domain type `$domain`.
macro_rules! described_by {
    ($($domain:ty => $mirror:ty),* $(,)?) => {$(
        impl PartialSchema for $domain {
            fn schema() -> RefOr<Schema> {
                <$mirror as PartialSchema>::schema()
            }
        }

        impl ToSchema for $domain {
            fn name() -> Cow<'static, str> {
                <$mirror as ToSchema>::name()
            }

            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                <$mirror as ToSchema>::schemas(schemas)
            }
        }
    )*};
}

described_by!(
    domain::LockMode => LockMode,
    domain::Access => Access,
    domain::EventKind => EventKind,
    domain::EndReason => EndReason,
    domain::Event => Event,
);

// No doc comment: it would become a description the document never had.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    Exclusive,
    Observer,
}

/// What a command needs: control actions need the exclusive lock, observe
/// actions an observer or exclusive lock.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Control,
    Observe,
}

/// The names of semantics.md, "Events".
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    LockAcquired,
    LockRefreshed,
    LockReleased,
    LockForceReleased,
    LockExpired,
    ObserverLockAcquired,
    ObserverLockReleased,
    ObserverRevoked,
    Queued,
    Dequeued,
    QueueProcessed,
    SessionCreated,
    SessionEnded,
    SessionExpired,
    QueueTimeout,
    MaintenanceStarted,
    MaintenanceEnded,
    ClaimExpired,
    QueueSteppedBack,
    QueueSwapped,
    QueuePosition,
    LockGranted,
    LockExpiring,
    LockLost,
    QueuePlaceLost,
}

/// Why a lock or queue place ended, when it was not the holder's own request.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Released,
    Timeout,
    SessionEnded,
    SessionExpired,
    SessionNotLive,
    ExclusiveGranted,
    Forced,
    Upgraded,
    WaitTimeout,
    Removed,
    ClaimExpired,
    GrantedElsewhere,
}

/// One recorded change. `session_id` is the session it happened to; the
/// optional fields carry what explains it.
#[derive(ToSchema)]
#[allow(dead_code)] // Only described, never built: `domain::Event` is sent.
pub struct Event {
    /// The history's sequence number: grows with each recorded event, so a
    /// client can page through (and later resume) from the last one it saw.
    /// Set by the store when the event is recorded.
    seq: Option<u64>,
    event: EventKind,
    #[schema(example = "2025-11-08T10:30:00.123Z")]
    timestamp: String,
    equipment_id: Option<String>,
    session_id: Option<String>,
    lock_mode: Option<LockMode>,
    lock_id: Option<String>,
    fencing_token: Option<u64>,
    timeout_seconds: Option<f64>,
    position: Option<usize>,
    queue_id: Option<String>,
    reason: Option<EndReason>,
    /// The session that forced a release (for `lock_force_released`).
    forced_by: Option<String>,
    /// How many locks a session end released (for `session_ended`/`session_expired`).
    locks_released: Option<usize>,
    /// The user whose request caused this (with authentication on); absent
    /// for what the server did on its own, such as an expiry.
    user: Option<String>,
    /// The user whose lock or place this is (for a forced release: the one
    /// whose lock was taken).
    holder_user: Option<String>,
    /// When the lock's lease ends (for `lock_expiring`); on `queued`, when
    /// the place is dropped unless granted first (`max_wait_seconds`).
    expires_at: Option<String>,
    /// Seconds left on the lease (for `lock_expiring`).
    time_remaining: Option<f64>,
    /// What an admin said when acting on someone else's lock, place or
    /// session (a queue removal, a forced session end).
    message: Option<String>,
    /// The priority a waiter asked for (on `queued`, when not 0).
    #[schema(minimum = -10, maximum = 10)]
    priority: Option<i8>,
    /// `true` on a `session_created` opened by an acquire naming a session
    /// that was not live (semantics.md, Sessions 6).
    implicit: Option<bool>,
    /// The lock group (or pool request) this lock or place belongs to.
    group_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    fn schema_json<T: PartialSchema>() -> Value {
        serde_json::to_value(T::schema()).unwrap()
    }

    /// Every value the schema of `D` lists is a value of the domain type,
    /// and comes back under the same name through the mirror. With the
    /// mirror conversions' exhaustive matches (a new domain variant does not
    /// compile without its mirror) the two enums are the same.
    fn assert_mirrors<D, M>()
    where
        D: ToSchema + DeserializeOwned + Into<M>,
        M: Serialize,
    {
        let schema = schema_json::<D>();
        let values = schema["enum"].as_array().expect("an enum schema");
        assert!(!values.is_empty());
        for value in values {
            let domain: D = serde_json::from_value(value.clone())
                .unwrap_or_else(|e| panic!("{value} is not a {}: {e}", D::name()));
            assert_eq!(&serde_json::to_value(domain.into()).unwrap(), value);
        }
    }

    impl From<domain::LockMode> for LockMode {
        fn from(m: domain::LockMode) -> Self {
            match m {
                domain::LockMode::Exclusive => Self::Exclusive,
                domain::LockMode::Observer => Self::Observer,
            }
        }
    }

    impl From<domain::Access> for Access {
        fn from(a: domain::Access) -> Self {
            match a {
                domain::Access::Control => Self::Control,
                domain::Access::Observe => Self::Observe,
            }
        }
    }

    impl From<domain::EventKind> for EventKind {
        fn from(k: domain::EventKind) -> Self {
            use domain::EventKind as D;
            match k {
                D::LockAcquired => Self::LockAcquired,
                D::LockRefreshed => Self::LockRefreshed,
                D::LockReleased => Self::LockReleased,
                D::LockForceReleased => Self::LockForceReleased,
                D::LockExpired => Self::LockExpired,
                D::ObserverLockAcquired => Self::ObserverLockAcquired,
                D::ObserverLockReleased => Self::ObserverLockReleased,
                D::ObserverRevoked => Self::ObserverRevoked,
                D::Queued => Self::Queued,
                D::Dequeued => Self::Dequeued,
                D::QueueProcessed => Self::QueueProcessed,
                D::SessionCreated => Self::SessionCreated,
                D::SessionEnded => Self::SessionEnded,
                D::SessionExpired => Self::SessionExpired,
                D::QueueTimeout => Self::QueueTimeout,
                D::MaintenanceStarted => Self::MaintenanceStarted,
                D::MaintenanceEnded => Self::MaintenanceEnded,
                D::ClaimExpired => Self::ClaimExpired,
                D::QueueSteppedBack => Self::QueueSteppedBack,
                D::QueueSwapped => Self::QueueSwapped,
                D::QueuePosition => Self::QueuePosition,
                D::LockGranted => Self::LockGranted,
                D::LockExpiring => Self::LockExpiring,
                D::LockLost => Self::LockLost,
                D::QueuePlaceLost => Self::QueuePlaceLost,
            }
        }
    }

    impl From<domain::EndReason> for EndReason {
        fn from(r: domain::EndReason) -> Self {
            use domain::EndReason as D;
            match r {
                D::Released => Self::Released,
                D::Timeout => Self::Timeout,
                D::SessionEnded => Self::SessionEnded,
                D::SessionExpired => Self::SessionExpired,
                D::SessionNotLive => Self::SessionNotLive,
                D::ExclusiveGranted => Self::ExclusiveGranted,
                D::Forced => Self::Forced,
                D::Upgraded => Self::Upgraded,
                D::WaitTimeout => Self::WaitTimeout,
                D::Removed => Self::Removed,
                D::ClaimExpired => Self::ClaimExpired,
                D::GrantedElsewhere => Self::GrantedElsewhere,
            }
        }
    }

    #[test]
    fn the_enum_mirrors_match_the_domain() {
        assert_mirrors::<domain::LockMode, LockMode>();
        assert_mirrors::<domain::Access, Access>();
        assert_mirrors::<domain::EventKind, EventKind>();
        assert_mirrors::<domain::EndReason, EndReason>();
        assert_eq!(domain::EventKind::name(), "EventKind");
    }

    /// The mirror lists the fields an event can carry (a struct literal
    /// without `..`: a new domain field does not compile without a value
    /// here), and requires the ones every event has.
    #[test]
    fn the_event_mirror_matches_the_domain() {
        let at = domain::Timestamp::from_millis(0);
        let id = || Some(domain::SessionId::parse("s").unwrap());
        let full = domain::Event {
            seq: Some(1),
            event: domain::EventKind::LockLost,
            timestamp: at,
            equipment_id: Some(domain::EquipmentId::parse("e").unwrap()),
            session_id: id(),
            lock_mode: Some(domain::LockMode::Exclusive),
            lock_id: Some("l".into()),
            fencing_token: Some(1),
            timeout_seconds: Some(1.0),
            position: Some(1),
            queue_id: Some("q".into()),
            reason: Some(domain::EndReason::Forced),
            forced_by: id(),
            locks_released: Some(1),
            user: Some("u".into()),
            holder_user: Some("h".into()),
            expires_at: Some(at),
            time_remaining: Some(1.0),
            message: Some("m".into()),
            priority: Some(1),
            implicit: Some(true),
            group_id: Some("g".into()),
        };
        let keys = |v: Value| -> Vec<String> {
            let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        };
        let schema = schema_json::<domain::Event>();
        assert_eq!(
            keys(serde_json::to_value(&full).unwrap()),
            keys(schema["properties"].clone())
        );
        let bare = domain::Event::new(domain::EventKind::Queued, at);
        let mut required = schema["required"].clone();
        required
            .as_array_mut()
            .unwrap()
            .sort_by_key(|v| v.to_string());
        assert_eq!(json!(keys(serde_json::to_value(&bare).unwrap())), required);
    }
}
