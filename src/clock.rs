//! Where time comes from. `SystemClock` is the only place that reads the wall
//! clock; tests use `ManualClock` and move time forward by hand.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::domain::Timestamp;

pub type SleepFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;

    /// Completes once `now() >= deadline` (or a little later).
    fn sleep_until(&self, deadline: Timestamp) -> SleepFuture<'_>;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(chrono::Utc::now().timestamp_millis())
    }

    fn sleep_until(&self, deadline: Timestamp) -> SleepFuture<'_> {
        Box::pin(async move {
            // Sleep in bounded steps so that a wall-clock jump is noticed.
            loop {
                let left = deadline.as_millis() - self.now().as_millis();
                if left <= 0 {
                    return;
                }
                let step = left.clamp(1, 60_000) as u64;
                tokio::time::sleep(Duration::from_millis(step)).await;
            }
        })
    }
}

/// A clock that moves only when told to. Sleepers wake when it passes their
/// deadline.
#[derive(Debug, Clone)]
pub struct ManualClock {
    millis: Arc<AtomicI64>,
    moved: Arc<Notify>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        Self {
            millis: Arc::new(AtomicI64::new(start.as_millis())),
            moved: Arc::new(Notify::new()),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.millis
            .fetch_add(by.as_millis() as i64, Ordering::SeqCst);
        self.moved.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.millis.load(Ordering::SeqCst))
    }

    fn sleep_until(&self, deadline: Timestamp) -> SleepFuture<'_> {
        Box::pin(async move {
            loop {
                // Register before checking, so an advance in between is seen.
                let moved = self.moved.notified();
                if self.now() >= deadline {
                    return;
                }
                moved.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleepers_wake_when_time_passes_their_deadline() {
        let clock = ManualClock::new(Timestamp::from_millis(0));
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep_until(Timestamp::from_millis(1_000)).await })
        };
        tokio::task::yield_now().await;
        clock.advance(Duration::from_millis(500));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_millis(500));
        sleeper.await.unwrap();
    }
}
