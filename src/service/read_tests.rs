//! Reads never write: every read use case answers without a write
//! transaction, on both stores, and shows what is past its deadline as
//! expired at `now` without saving anything.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{AcquireInput, ClientInfo, NewSession, Policy, Service, ServiceError};
use crate::clock::ManualClock;
use crate::domain::DomainError;
use crate::domain::{AcquireOutcome, Actor, EquipmentId, LockMode, SessionId, Timeout, Timestamp};
use crate::drivers::Instruments;
use crate::storage::counting::Counting;
use crate::storage::memory::MemoryStore;
use crate::storage::sqlite::{SqliteOptions, SqliteStore};
use crate::storage::{EventQuery, Store};

struct Lab {
    service: Service,
    store: Arc<Counting<dyn Store>>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn lab(sqlite: bool) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let inner: Box<dyn Store> = if sqlite {
        let options = SqliteOptions::from_url("sqlite://lablink.db", dir.path()).unwrap();
        Box::new(SqliteStore::open(&options).unwrap())
    } else {
        Box::new(MemoryStore::new())
    };
    let store = Arc::new(Counting::new(inner));
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_000_000)));
    let instruments =
        Instruments::from_configs(&Instruments::demo_configs(), std::path::Path::new(".")).unwrap();
    let service = Service::new(
        store.clone(),
        clock.clone(),
        Arc::new(instruments),
        Policy::default(),
    );
    Lab {
        service,
        store,
        clock,
        _dir: dir,
    }
}

impl Lab {
    async fn session(&self, timeout_ms: u64) -> SessionId {
        let new = NewSession {
            actor: Actor::anyone(),
            client_name: None,
            client_ip: None,
            timeout: Some(Timeout::from_millis(timeout_ms)),
            metadata: Default::default(),
        };
        self.service.create_session(new).await.unwrap().value.id
    }

    async fn acquire(&self, equipment: &EquipmentId, session: &SessionId, timeout_ms: u64) {
        let input = AcquireInput {
            actor: Actor::anyone(),
            session_id: session.clone(),
            mode: LockMode::Exclusive,
            timeout: Some(Timeout::from_millis(timeout_ms)),
            queue_if_busy: true,
            priority: 0,
            max_wait: crate::domain::Timeout::NONE,
            claim_within: None,
            client: ClientInfo::default(),
        };
        self.service
            .acquire(equipment.clone(), input)
            .await
            .unwrap();
    }

    /// Runs every read use case once; returns how many writes they made.
    async fn read_everything(&self, equipment: &EquipmentId, sessions: &[&SessionId]) -> usize {
        let before = self.store.writes();
        let s = &self.service;
        s.lock_state(equipment).await.unwrap();
        s.busy_equipment().await.unwrap();
        s.sessions(None, 10).await.unwrap();
        for id in sessions {
            // Those past their deadline are not found: still a read.
            let _ = s.session(id).await;
            let _ = s.session_holdings(id).await;
            s.session_events(id, 10).await.unwrap();
        }
        s.equipment_events(equipment, 10).await.unwrap();
        let query = EventQuery {
            limit: 10,
            ..EventQuery::default()
        };
        s.history(query.clone()).await.unwrap();
        s.read_history(query).await.unwrap();
        self.store.writes() - before
    }
}

fn psu() -> EquipmentId {
    EquipmentId::parse("ps_abc123").unwrap()
}

#[tokio::test]
async fn no_read_use_case_writes_on_either_store() {
    for sqlite in [false, true] {
        let lab = lab(sqlite);
        let (a, b) = (lab.session(60_000).await, lab.session(60_000).await);
        lab.acquire(&psu(), &a, 30_000).await;
        lab.acquire(&psu(), &b, 30_000).await;
        let reads = lab.store.reads.load(Ordering::SeqCst);
        assert_eq!(lab.read_everything(&psu(), &[&a, &b]).await, 0, "{sqlite}");
        assert!(lab.store.reads.load(Ordering::SeqCst) > reads);
    }
}

#[tokio::test]
async fn a_read_past_a_deadline_shows_it_expired_without_writing() {
    for sqlite in [false, true] {
        let lab = lab(sqlite);
        let (a, b) = (lab.session(10_000).await, lab.session(60_000).await);
        lab.acquire(&psu(), &a, 5_000).await;
        lab.acquire(&psu(), &b, 20_000).await;
        let writes = lab.store.writes();

        // a's lock ran out: b holds it (with the next token), as the
        // reaper will record it.
        lab.clock.advance(Duration::from_millis(5_000));
        let s = &lab.service;
        let at = s.lock_state(&psu()).await.unwrap();
        let holder = at.value.exclusive.clone().unwrap();
        assert_eq!(
            (&holder.session_id, holder.fencing_token, holder.acquired_at),
            (&b, 2, at.now)
        );
        assert!(at.value.queue.is_empty());
        let all = s.busy_equipment().await.unwrap().value;
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].holder(), Some(&b));
        let held = s.session_holdings(&b).await.unwrap().value;
        assert_eq!((held.locks.len(), held.queued.len()), (1, 0), "{sqlite}");
        let gone = s.session_holdings(&a).await.unwrap().value;
        assert!(gone.locks.is_empty() && gone.queued.is_empty());

        // a's session ran out: not found, not listed.
        lab.clock.advance(Duration::from_millis(5_000));
        assert!(matches!(
            s.session(&a).await,
            Err(ServiceError::Domain(DomainError::SessionNotFound(_)))
        ));
        let listed = s.sessions(None, 10).await.unwrap().value.sessions;
        assert_eq!(listed.iter().map(|s| &s.id).collect::<Vec<_>>(), [&b]);
        assert_eq!(lab.store.writes(), writes, "views write nothing");

        // The next write makes it durable, as the views showed it.
        let shown = s.lock_state(&psu()).await.unwrap().value;
        s.expire_due().await.unwrap();
        assert!(lab.store.writes() > writes);
        let inner: &dyn Store = &*lab.store.inner;
        let stored = inner.query(|tx| tx.equipment_locks(&psu())).await.unwrap();
        assert_eq!(
            (&stored.exclusive, &stored.queue),
            (&shown.exclusive, &shown.queue)
        );
        assert!(matches!(
            s.acquire_waiting(
                psu(),
                AcquireInput {
                    actor: Actor::anyone(),
                    session_id: b.clone(),
                    mode: LockMode::Exclusive,
                    timeout: None,
                    queue_if_busy: false,
                    priority: 0,
                    max_wait: crate::domain::Timeout::NONE,
                    claim_within: None,
                    client: ClientInfo::default(),
                },
                None
            )
            .await
            .unwrap()
            .value
            .outcome,
            AcquireOutcome::Refreshed(_)
        ));
    }
}

#[tokio::test]
async fn a_history_read_with_something_overdue_records_the_expiry_first() {
    for sqlite in [false, true] {
        let lab = lab(sqlite);
        let a = lab.session(60_000).await;
        lab.acquire(&psu(), &a, 5_000).await;
        lab.clock.advance(Duration::from_millis(5_000));
        let writes = lab.store.writes();
        let events = lab.service.equipment_events(&psu(), 10).await.unwrap();
        let kinds: Vec<&str> = events.value.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(kinds, ["lock_acquired", "lock_expired"], "{sqlite}");
        assert_eq!(lab.store.writes(), writes + 1);
        // Nothing overdue any more: reads again.
        assert_eq!(lab.read_everything(&psu(), &[&a]).await, 0);
    }
}
