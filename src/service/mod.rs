//! The use cases: one method per thing a client can ask. Each reads the
//! clock once. A write runs inside one store transaction (first expiring
//! whatever is due, so nothing past its deadline is ever seen), asks the
//! domain, saves what changed, records the events, and wakes the reaper
//! when a sooner deadline appeared. A read answers from committed state,
//! shown as the rules leave it at that instant, and writes nothing (see
//! `read`). Instruments are driven after the lock check.
//!
//! Where things live:
//! - here: the `Service` itself, its construction and accessors, and the
//!   `DeadlineSignal` it shares with the reaper;
//! - `error`: `ServiceError`; `inputs`: the `Policy` and the use cases'
//!   inputs; `answers`: what they answer with (`At`, ...);
//! - the use cases, one file per subject: `sessions`, `locks` (with
//!   expiry), `commands`, `history`, `waiting` (acquire with a wait, the
//!   expiry warnings), `manage` (the lab manager's controls), `recovery`
//!   (start-up);
//! - how they run: `transact` (a write's transaction, then what it
//!   implies published), `uow` (a write's unit of work), `read` (a read's
//!   view, off the write path), `elsewhere` (what other servers' commits
//!   mean here).
//!
//! It holds no batching, turn or sync state: the store schedules its own
//! work. Recorded events reach the live hub straight from the store once
//! durable (`Store::listen`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::Notify;

use crate::auth::{Auth, AuthMode};
use crate::clock::Clock;
use crate::domain::Timestamp;
use crate::drivers::Instruments;
use crate::live::{ExpiryWarnings, Hub};
use crate::storage::Store;

mod analytics;
mod answers;
mod commands;
mod elsewhere;
mod error;
mod groups;
mod history;
pub use analytics::{AnalyticsInput, MAX_ANALYTICS_DAYS};
pub use history::{PRUNE_STEP, Retention};
#[cfg(test)]
mod analytics_tests;
mod inputs;
mod locks;
mod manage;
#[cfg(test)]
mod measure_tests;
mod read;
#[cfg(test)]
mod read_tests;
mod recovery;
#[cfg(test)]
mod recovery_tests;
mod sessions;
mod transact;
mod uow;
mod waiting;

pub use answers::{
    Acquired, At, ExpiryReport, InstrumentOccupancy, Occupancy, SessionEnd, SessionHoldings,
    SessionPage,
};
pub use error::ServiceError;
pub use groups::{GroupAcquired, GroupAsk, GroupReleased, GroupTarget};
pub use inputs::{
    AcquireInput, ClientInfo, CommandInput, DEFAULT_SESSION_PAGE, NewSession, Policy,
};
pub use locks::Released;
pub use manage::Intervention;

/// Wakes the reaper when a deadline sooner than the one it sleeps towards
/// is saved.
#[derive(Debug)]
pub struct DeadlineSignal {
    pub notify: Notify,
    sleeping_until: AtomicI64,
}

impl Default for DeadlineSignal {
    fn default() -> Self {
        Self {
            notify: Notify::new(),
            sleeping_until: AtomicI64::new(i64::MIN),
        }
    }
}

impl DeadlineSignal {
    pub fn sleeping_until(&self, at: Timestamp) {
        self.sleeping_until.store(at.as_millis(), Ordering::SeqCst);
    }

    fn saw(&self, deadline: Timestamp) {
        if deadline.as_millis() < self.sleeping_until.load(Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }
}

pub struct Service {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    instruments: Arc<Instruments>,
    /// Shared with the units of work, which run wherever the store runs
    /// them.
    policy: Arc<Policy>,
    deadlines: Arc<DeadlineSignal>,
    hub: Hub,
    warnings: Arc<ExpiryWarnings>,
    auth: Auth,
    /// What other servers' commits mean here.
    elsewhere: elsewhere::Elsewhere,
}

impl Service {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        instruments: Arc<Instruments>,
        policy: Policy,
    ) -> Self {
        let hub = Hub::new(policy.live_buffer);
        let deadlines = Arc::new(DeadlineSignal::default());
        let elsewhere = elsewhere::Elsewhere::new();
        store.listen(elsewhere::Elsewhere::feed(
            elsewhere.sender(),
            hub.feed(),
            deadlines.clone(),
        ));
        Self {
            auth: Auth::new(AuthMode::Off, store.clone()),
            hub,
            warnings: Arc::new(ExpiryWarnings::new(policy.expiry_warning_ms)),
            store,
            clock,
            instruments,
            policy: Arc::new(policy),
            deadlines,
            elsewhere,
        }
    }

    /// Turns authentication on or off (off unless told).
    pub fn with_auth(mut self, mode: AuthMode) -> Self {
        self.auth = Auth::new(mode, self.store.clone());
        self
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn instruments(&self) -> &Instruments {
        &self.instruments
    }

    pub fn deadlines(&self) -> &Arc<DeadlineSignal> {
        &self.deadlines
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn warnings(&self) -> &Arc<ExpiryWarnings> {
        &self.warnings
    }
}
