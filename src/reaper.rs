//! Ends leases on time. `Service::expire_due` is the one step; this loop
//! runs it at the next deadline (woken early when a sooner one is saved),
//! and at least every cleanup interval as a safety net. Running it on
//! several servers at once is safe: each step is one store transaction.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::Timestamp;
use crate::service::Service;

pub async fn run(service: Arc<Service>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let interval_ms = interval.as_millis().clamp(1, i64::MAX as u128) as u64;
    loop {
        // While a step runs, any newly saved deadline leaves a wake-up
        // permit, so one saved between the step and the sleep is not missed.
        service
            .deadlines()
            .sleeping_until(Timestamp::from_millis(i64::MAX));
        let next = match service.expire_due().await {
            Ok(at) => {
                let (report, next) = at.value;
                if report != Default::default() {
                    tracing::debug!(?report, "expired due leases");
                }
                let safety = at.now.plus_millis(interval_ms);
                next.map_or(safety, |n| n.min(safety))
            }
            Err(e) => {
                tracing::error!(error = %e, "reaper step failed; retrying after the cleanup interval");
                service.clock().now().plus_millis(interval_ms)
            }
        };
        service.deadlines().sleeping_until(next);
        tokio::select! {
            _ = sleep_until(&service, next) => {}
            _ = service.deadlines().notify.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn sleep_until(service: &Service, at: Timestamp) {
    service.clock().sleep_until(at).await;
}

/// Sends `lock_expiring` warnings when they are due, sleeping until the
/// next one (woken early when a sooner one is scheduled).
pub async fn warn(service: Arc<Service>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let now = service.clock().now();
        for warning in service.warnings().due(now) {
            if let Err(e) = service.warn_expiring(warning).await {
                tracing::warn!(error = %e, "could not send an expiry warning");
            }
        }
        let next = service.warnings().next();
        tokio::select! {
            _ = async {
                match next {
                    Some(at) => service.clock().sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = service.warnings().changed.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Spawns the reaper on the current runtime.
pub fn spawn(
    service: Arc<Service>,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(service, interval, shutdown))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::{EquipmentId, EquipmentLocks, LockMode, SessionId, Timeout};
    use crate::drivers::Instruments;
    use crate::service::{AcquireInput, NewSession, Policy};
    use crate::storage::Store;
    use crate::storage::memory::MemoryStore;

    /// Reads the store directly: going through the service would expire
    /// what is due itself and hide whether the reaper did it.
    async fn peek(store: &MemoryStore, id: &EquipmentId) -> EquipmentLocks {
        let id = id.clone();
        let store: &dyn Store = store;
        store
            .query(move |tx| tx.equipment_locks(&id))
            .await
            .unwrap()
    }

    async fn session(service: &Service) -> SessionId {
        let new = NewSession {
            actor: crate::domain::Actor::anyone(),
            client_name: None,
            client_ip: None,
            timeout: Some(Timeout::NONE),
            metadata: Default::default(),
        };
        service.create_session(new).await.unwrap().value.id
    }

    #[tokio::test]
    async fn the_reaper_hands_off_at_the_deadline_without_any_request() {
        let store = Arc::new(MemoryStore::new());
        let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
        let instruments =
            Instruments::from_configs(&Instruments::demo_configs(), std::path::Path::new("."))
                .unwrap();
        let service = Arc::new(Service::new(
            store.clone(),
            Arc::new(clock.clone()),
            Arc::new(instruments),
            Policy::default(),
        ));
        let psu = EquipmentId::parse("ps_abc123").unwrap();
        let (a, b) = (session(&service).await, session(&service).await);
        let (_stop, stopped) = watch::channel(false);
        // A long safety interval: only the deadline can wake the reaper.
        spawn(service.clone(), Duration::from_secs(3600), stopped);
        for (who, queue) in [(&a, false), (&b, true)] {
            service
                .acquire(
                    psu.clone(),
                    AcquireInput {
                        actor: crate::domain::Actor::anyone(),
                        session_id: who.clone(),
                        mode: LockMode::Exclusive,
                        timeout: Some(Timeout::from_millis(5_000)),
                        queue_if_busy: queue,
                        priority: 0,
                        max_wait: crate::domain::Timeout::NONE,
                        claim_within: None,
                        client: Default::default(),
                    },
                )
                .await
                .unwrap();
        }
        clock.advance(Duration::from_millis(4_999));
        tokio::task::yield_now().await;
        assert_eq!(peek(&store, &psu).await.holder(), Some(&a));
        clock.advance(Duration::from_millis(1));
        tokio::time::timeout(Duration::from_secs(10), async {
            while peek(&store, &psu).await.holder() != Some(&b) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the reaper handed the lock to the waiter");
    }
}
