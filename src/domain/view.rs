//! Views: stored state as the rules leave it at `now`, for reads that must
//! not write. What is past its deadline shows as expired, and its
//! equipment as handed on, exactly as the reaper or the next write will
//! make it durable; nothing here is saved and no event is kept.

use std::collections::HashMap;

use super::event::EndReason;
use super::ids::SessionId;
use super::lock::EquipmentLocks;
use super::session::Session;
use super::time::Timestamp;

/// `locks` as they stand at `now` (semantics.md, "Expiry is exact"):
/// sessions in `sessions` whose lease ran out have ended (their queue
/// places gone, their locks too when `release_locks`, the auto-release
/// setting), locks past their deadline have expired, and the queue has
/// been served. `sessions` are the stored sessions the state names; one
/// missing from it has ended already (its locks, kept without auto-release,
/// last until their own deadline). The order in which the deadlines are
/// met does not change the view (a property test checks it), so this is
/// what expiring them one by one would leave.
pub fn locks_at(
    locks: &EquipmentLocks,
    sessions: &HashMap<SessionId, Session>,
    now: Timestamp,
    release_locks: bool,
) -> EquipmentLocks {
    let mut view = locks.clone();
    let mut live = |id: &SessionId| sessions.get(id).is_some_and(|s| s.is_live(now));
    let mut lapsed: Vec<SessionId> = Vec::new();
    for id in view.participants() {
        // An observer waiting to upgrade is named twice.
        if sessions.get(id).is_some_and(|s| !s.is_live(now)) && !lapsed.contains(id) {
            lapsed.push(id.clone());
        }
    }
    // The events say what the reaper will record; a view keeps none.
    let mut events = Vec::new();
    for id in &lapsed {
        view.remove_session(
            id,
            release_locks,
            EndReason::SessionExpired,
            now,
            &mut live,
            &mut events,
        );
    }
    view.expire(now, &mut live, &mut events);
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EquipmentId, LockMode, LockPolicy, LockRequest, Timeout};
    use proptest::prelude::*;

    fn sid(name: &str) -> SessionId {
        SessionId::parse(name).unwrap()
    }

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn session(name: &str, timeout_ms: u64) -> Session {
        Session::implicit(
            sid(name),
            None,
            None,
            Timeout::from_millis(timeout_ms),
            None,
            t(0),
        )
    }

    fn sessions(list: &[Session]) -> HashMap<SessionId, Session> {
        list.iter().map(|s| (s.id.clone(), s.clone())).collect()
    }

    /// `who` asks at 0 for `mode` with a lock timeout of `timeout_ms`,
    /// queueing if busy.
    fn ask(locks: &mut EquipmentLocks, who: &str, mode: LockMode, timeout_ms: u64) {
        let req = LockRequest {
            session_id: sid(who),
            mode,
            timeout: Timeout::from_millis(timeout_ms),
            queue_if_busy: true,
            holder: Default::default(),
            priority: 0,
            max_wait: Timeout::NONE,
            maintenance_exempt: false,
            claim_within: Timeout::NONE,
        };
        locks
            .acquire(&req, t(0), LockPolicy::default(), &mut Vec::new())
            .unwrap();
    }

    fn psu() -> EquipmentLocks {
        EquipmentLocks::new(EquipmentId::parse("psu").unwrap())
    }

    #[test]
    fn an_expired_lock_shows_as_handed_to_the_next_live_waiter_and_the_state_is_untouched() {
        let mut locks = psu();
        ask(&mut locks, "a", LockMode::Exclusive, 1_000);
        ask(&mut locks, "b", LockMode::Exclusive, 5_000);
        ask(&mut locks, "c", LockMode::Exclusive, 5_000);
        let stored = locks.clone();
        // b's session lapsed at 500: it is skipped, c gets the lock.
        let all = sessions(&[
            session("a", 10_000),
            session("b", 500),
            session("c", 10_000),
        ]);
        let view = locks_at(&locks, &all, t(1_000), true);
        assert_eq!(locks, stored, "a view changes nothing");
        let holder = view.exclusive.as_ref().unwrap();
        assert_eq!(holder.session_id, sid("c"));
        assert_eq!(holder.acquired_at, t(1_000));
        assert_eq!(holder.fencing_token, 2);
        assert!(view.queue.is_empty());
        // Just before the deadline, everything is as stored.
        assert_eq!(locks_at(&locks, &all, t(499), true), stored);
    }

    #[test]
    fn a_lapsed_session_leaves_its_locks_only_with_auto_release_and_an_ended_one_keeps_them() {
        let mut locks = psu();
        ask(&mut locks, "a", LockMode::Exclusive, 0);
        ask(&mut locks, "b", LockMode::Exclusive, 0);
        let lapsed = sessions(&[session("a", 100), session("b", 0)]);
        let view = locks_at(&locks, &lapsed, t(100), true);
        assert_eq!(view.holder(), Some(&sid("b")));
        let kept = locks_at(&locks, &lapsed, t(100), false);
        assert_eq!(kept.holder(), Some(&sid("a")), "without auto-release");
        // An ended session (no longer stored) keeps a lock with no timeout.
        let ended = sessions(&[session("b", 0)]);
        assert_eq!(locks_at(&locks, &ended, t(100), true), locks);
    }

    /// A lock state built at 0 from random requests, the sessions' leases,
    /// and an instant to look at it.
    fn scene() -> impl Strategy<Value = (EquipmentLocks, HashMap<SessionId, Session>, Timestamp)> {
        let asks = prop::collection::vec((0u8..5, any::<bool>(), 0u64..3_000), 0..8);
        let leases = prop::collection::vec(prop::option::of(0u64..3_000), 5);
        (asks, leases, 0i64..4_000).prop_map(|(asks, leases, now)| {
            let mut locks = psu();
            for (who, observer, timeout_ms) in asks {
                let mode = if observer {
                    LockMode::Observer
                } else {
                    LockMode::Exclusive
                };
                ask(&mut locks, &format!("s{who}"), mode, timeout_ms);
            }
            let stored = leases
                .iter()
                .enumerate()
                .filter_map(|(i, lease)| lease.map(|ms| session(&format!("s{i}"), ms)))
                .collect::<Vec<_>>();
            (locks, sessions(&stored), t(now))
        })
    }

    proptest! {
        #[test]
        fn nothing_past_its_deadline_shows_and_the_order_of_expiry_does_not_matter(
            (locks, all, now) in scene(),
            release_locks in any::<bool>(),
        ) {
            let view = locks_at(&locks, &all, now, release_locks);
            let lapsed = |id: &SessionId| all.get(id).is_some_and(|s| !s.is_live(now));
            for grant in view.exclusive.iter().chain(&view.observers) {
                prop_assert!(grant.is_live(now), "a lock past its deadline shows as held");
                prop_assert!(!(release_locks && lapsed(&grant.session_id)));
            }
            prop_assert!(view.queue.iter().all(|e| !lapsed(&e.session_id)));
            prop_assert_eq!(&locks_at(&view, &all, now, release_locks), &view, "a view of a view");

            // The other order: locks first, then the sessions (the reaper
            // meets deadlines in time order, which may be either).
            let mut other = locks.clone();
            let mut live = |id: &SessionId| all.get(id).is_some_and(|s| s.is_live(now));
            let mut events = Vec::new();
            other.expire(now, &mut live, &mut events);
            let gone: Vec<SessionId> = other.participants().filter(|id| lapsed(id)).cloned().collect();
            for id in gone {
                other.remove_session(&id, release_locks, EndReason::SessionExpired, now, &mut live, &mut events);
            }
            prop_assert_eq!(&other.exclusive, &view.exclusive);
            prop_assert_eq!(&other.observers, &view.observers);
            prop_assert_eq!(&other.queue, &view.queue);
            prop_assert_eq!(other.fencing_counter, view.fencing_counter);
        }
    }
}
