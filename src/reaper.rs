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
        let next = match service.expire_due() {
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

/// Spawns the reaper on the current runtime.
pub fn spawn(
    service: Arc<Service>,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(service, interval, shutdown))
}
