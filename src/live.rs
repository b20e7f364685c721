//! Live events: a bounded broadcast of every committed event and of the
//! notifications derived from them, the subscription filter clients choose,
//! and the schedule of lease-expiry warnings. A slow subscriber only ever
//! loses its own place (it is told it lagged); publishing never waits.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, broadcast, watch};

use crate::domain::{EquipmentId, EquipmentLocks, Event, SessionId, Timestamp};

/// How many events a subscriber may fall behind before it is told it lagged.
pub const DEFAULT_BUFFER: usize = 1024;

pub struct Hub {
    sender: broadcast::Sender<Arc<Event>>,
    /// `true` once the server is shutting down: whoever waits on live
    /// events (a `wait_seconds` acquire, a WebSocket) stops waiting.
    closing: watch::Sender<bool>,
}

impl Hub {
    pub fn new(buffer: usize) -> Self {
        Self {
            sender: broadcast::channel(buffer.max(1)).0,
            closing: watch::Sender::new(false),
        }
    }

    /// Tells every waiter the server is going away.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Completes once `close` has been called (at once if it already was).
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.subscribe();
        async move {
            // An error means the hub itself is gone: nothing is left to wait for.
            let _ = closing.wait_for(|closed| *closed).await;
        }
    }

    pub fn publish(&self, event: Event) {
        // No subscribers is fine: nobody is listening.
        let _ = self.sender.send(Arc::new(event));
    }

    /// What the store calls with each commit's recorded events, in `seq`
    /// order (`Store::listen`): they go out as they come.
    pub fn feed(&self) -> crate::storage::CommitListener {
        let sender = self.sender.clone();
        Box::new(move |events, _origin| {
            for event in events {
                // No subscribers is fine: nobody is listening.
                let _ = sender.send(Arc::new(event));
            }
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }

    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }
}

/// What a live client wants to hear about.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Subscription {
    pub all: bool,
    pub equipment: HashSet<EquipmentId>,
    pub session: Option<SessionId>,
}

impl Subscription {
    pub fn wants(&self, event: &Event) -> bool {
        self.all
            || event
                .equipment_id
                .as_ref()
                .is_some_and(|e| self.equipment.contains(e))
            || self
                .session
                .as_ref()
                .is_some_and(|s| event.names_session(s))
    }
}

/// One scheduled warning: the lock, and the deadline it was scheduled for
/// (a renewed lease has a new deadline, so an old warning is skipped).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    pub equipment_id: EquipmentId,
    pub lock_id: String,
    pub deadline: Timestamp,
}

#[derive(Default)]
struct Schedule {
    by_equipment: HashMap<EquipmentId, Vec<(Timestamp, Warning)>>,
    queue: BTreeSet<(Timestamp, Warning)>,
}

/// When to warn holders that their lease ends soon. Kept per equipment and
/// replaced whenever its locks are saved, so it holds one entry per live
/// lease, whatever the request rate.
pub struct ExpiryWarnings {
    lead_ms: u64,
    schedule: Mutex<Schedule>,
    pub changed: Notify,
}

impl ExpiryWarnings {
    /// Warns `lead_ms` before each deadline (0 turns warnings off). A lease
    /// shorter than twice that is warned halfway through instead, so short,
    /// often-renewed leases are not warned on every renewal.
    pub fn new(lead_ms: u64) -> Self {
        Self {
            lead_ms,
            schedule: Mutex::new(Schedule::default()),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the warnings of `locks`' equipment with its current leases.
    pub fn reschedule(&self, locks: &EquipmentLocks) {
        if self.lead_ms == 0 {
            return;
        }
        let fresh: Vec<(Timestamp, Warning)> = locks
            .exclusive
            .iter()
            .chain(&locks.observers)
            .filter_map(|g| {
                let deadline = g.deadline()?;
                let lead = self.lead_ms.min(g.timeout.millis()? / 2);
                let warning = Warning {
                    equipment_id: locks.equipment_id.clone(),
                    lock_id: g.lock_id.clone(),
                    deadline,
                };
                Some((
                    Timestamp::from_millis(deadline.as_millis() - lead as i64),
                    warning,
                ))
            })
            .collect();
        let earliest = fresh.iter().map(|(at, _)| *at).min();
        let mut schedule = self.lock();
        if let Some(old) = schedule.by_equipment.remove(&locks.equipment_id) {
            for entry in old {
                schedule.queue.remove(&entry);
            }
        }
        if fresh.is_empty() {
            return;
        }
        let was_first = schedule.queue.first().map(|(at, _)| *at);
        schedule.queue.extend(fresh.iter().cloned());
        schedule
            .by_equipment
            .insert(locks.equipment_id.clone(), fresh);
        drop(schedule);
        if earliest < was_first || was_first.is_none() {
            self.changed.notify_one();
        }
    }

    /// Takes the warnings due at `now`.
    pub fn due(&self, now: Timestamp) -> Vec<Warning> {
        let mut schedule = self.lock();
        let mut due = Vec::new();
        while let Some((at, _)) = schedule.queue.first() {
            if *at > now {
                break;
            }
            let (at, warning) = schedule.queue.pop_first().expect("checked");
            if let Some(list) = schedule.by_equipment.get_mut(&warning.equipment_id) {
                list.retain(|(a, w)| !(*a == at && *w == warning));
            }
            due.push(warning);
        }
        due
    }

    pub fn next(&self) -> Option<Timestamp> {
        self.lock().queue.first().map(|(at, _)| *at)
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventKind, LockMode, LockPolicy, LockRequest, Timeout};

    fn locks_with(timeout_ms: u64) -> EquipmentLocks {
        let mut locks = EquipmentLocks::new(EquipmentId::parse("psu").unwrap());
        let req = LockRequest {
            session_id: SessionId::parse("a").unwrap(),
            mode: LockMode::Exclusive,
            timeout: Timeout::from_millis(timeout_ms),
            queue_if_busy: false,
            holder: Default::default(),
            priority: 0,
            max_wait: Timeout::NONE,
            maintenance_exempt: false,
            claim_within: Timeout::NONE,
        };
        locks
            .acquire(
                &req,
                Timestamp::from_millis(0),
                LockPolicy::default(),
                &mut Vec::new(),
            )
            .unwrap();
        locks
    }

    #[test]
    fn warnings_come_lead_before_the_deadline_once_per_lease() {
        let w = ExpiryWarnings::new(30_000);
        let locks = locks_with(300_000);
        w.reschedule(&locks);
        w.reschedule(&locks);
        assert_eq!(w.len(), 1, "rescheduling replaces");
        assert_eq!(w.next(), Some(Timestamp::from_millis(270_000)));
        assert!(w.due(Timestamp::from_millis(269_999)).is_empty());
        let due = w.due(Timestamp::from_millis(270_000));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].deadline, Timestamp::from_millis(300_000));
        assert!(w.is_empty());
        // A short lease is warned halfway; a released one not at all.
        w.reschedule(&locks_with(10_000));
        assert_eq!(w.next(), Some(Timestamp::from_millis(5_000)));
        w.reschedule(&EquipmentLocks::new(EquipmentId::parse("psu").unwrap()));
        assert!(w.is_empty());
    }

    #[test]
    fn subscriptions_filter_by_equipment_session_or_all() {
        let mut e = Event::new(EventKind::LockAcquired, Timestamp::from_millis(0));
        e.equipment_id = Some(EquipmentId::parse("psu").unwrap());
        e.session_id = Some(SessionId::parse("s").unwrap());
        let none = Subscription::default();
        let psu = Subscription {
            equipment: [EquipmentId::parse("psu").unwrap()].into(),
            ..Subscription::default()
        };
        let session = Subscription {
            session: Some(SessionId::parse("s").unwrap()),
            ..Subscription::default()
        };
        let other = Subscription {
            session: Some(SessionId::parse("t").unwrap()),
            ..Subscription::default()
        };
        let all = Subscription {
            all: true,
            ..Subscription::default()
        };
        assert_eq!(
            [&none, &psu, &session, &other, &all].map(|s| s.wants(&e)),
            [false, true, true, false, true]
        );
    }
}
