//! Renewing after a restart: everything that lapsed while the server was
//! down gets its fresh period, a bounded batch per transaction.

use std::sync::{Arc, Mutex};

use super::{Policy, Service};
use crate::clock::ManualClock;
use crate::domain::{Session, SessionId, Timeout, Timestamp};
use crate::drivers::Instruments;
use crate::storage::memory::MemoryStore;
use crate::storage::{CommitListener, Store, StoreError, Work};

/// The memory store, noting after each transaction how many sessions are
/// live at `start` (so how many each transaction renewed).
struct Watched {
    inner: MemoryStore,
    start: Timestamp,
    live_after_each: Mutex<Vec<usize>>,
}

impl Watched {
    async fn live(&self) -> usize {
        let start = self.start;
        let inner: &dyn Store = &self.inner;
        inner
            .query(move |tx| Ok(tx.sessions()?.iter().filter(|s| s.is_live(start)).count()))
            .await
            .unwrap()
    }
}

#[async_trait::async_trait]
impl Store for Watched {
    async fn transaction(&self, work: Work) -> Result<(), StoreError> {
        self.inner.transaction(work).await?;
        let live = self.live().await;
        self.live_after_each.lock().unwrap().push(live);
        Ok(())
    }
    async fn read(&self, work: Work) -> Result<(), StoreError> {
        self.inner.read(work).await
    }
    fn listen(&self, listener: CommitListener) {
        self.inner.listen(listener);
    }
    fn describe(&self) -> String {
        "watched memory".into()
    }
    fn durable(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn everything_that_lapsed_is_renewed_a_bounded_batch_per_transaction() {
    const LAPSED: usize = 1_000;
    let start = Timestamp::from_millis(10_000);
    let store = Arc::new(Watched {
        inner: MemoryStore::new(),
        start,
        live_after_each: Mutex::new(Vec::new()),
    });
    let inner: &dyn Store = &store.inner;
    inner
        .write(|tx| {
            for i in 0..LAPSED {
                tx.save_session(&Session {
                    id: SessionId::parse(&format!("s{i}")).unwrap(),
                    client_name: "pc".into(),
                    client_ip: None,
                    created_at: Timestamp::from_millis(0),
                    last_activity: Timestamp::from_millis(0),
                    timeout: Timeout::from_millis(1_000),
                    metadata: Default::default(),
                    user: None,
                })?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let instruments =
        Instruments::from_configs(&Instruments::demo_configs(), std::path::Path::new(".")).unwrap();
    let service = Service::new(
        store.clone(),
        Arc::new(ManualClock::new(start)),
        Arc::new(instruments),
        Policy::default(),
    );
    assert_eq!(service.recover_after_restart().await.unwrap(), LAPSED);
    assert_eq!(
        store.live().await,
        LAPSED,
        "every lapsed session got its period"
    );
    let live = store.live_after_each.lock().unwrap().clone();
    let per_transaction: Vec<usize> = std::iter::once(0)
        .chain(live.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .collect();
    assert!(
        per_transaction.iter().all(|n| *n <= 256),
        "renewed per transaction: {per_transaction:?}"
    );
}
