//! The server's Prometheus metrics: every name, its labels and its buckets
//! in one place, recorded through the `metrics` facade, so any layer (the
//! storage writers' threads included) records without being handed
//! anything, and nothing here knows HTTP. A leaf: it uses no other module.
//!
//! `recorder()` installs the Prometheus recorder (`metrics-exporter-
//! prometheus`, without its own HTTP listener: `GET /metrics` renders it
//! from an axum route). Before it is installed (unit tests), recording is
//! a no-op.
//!
//! Label values are bounded: route templates (never raw paths), the
//! configured instruments' ids, lock modes, action classes and outcomes,
//! never session ids or users.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "lablink_http_requests_total";
pub const HTTP_DURATION: &str = "lablink_http_request_duration_seconds";
pub const LOCKS_HELD: &str = "lablink_locks_held";
pub const SESSIONS_LIVE: &str = "lablink_sessions_live";
pub const QUEUE_LENGTH: &str = "lablink_queue_length";
pub const STATE_FRESH: &str = "lablink_state_fresh";
pub const LOCK_WAIT: &str = "lablink_lock_wait_seconds";
pub const HANDOFF_LATENESS: &str = "lablink_expiry_handoff_lateness_seconds";
pub const STORE_TRANSACTION: &str = "lablink_store_transaction_seconds";
pub const STORE_BATCH_UNITS: &str = "lablink_store_batch_units";
pub const WS_SUBSCRIBERS: &str = "lablink_websocket_subscribers";
pub const WS_LAGGED: &str = "lablink_websocket_lagged_total";
pub const COMMANDS: &str = "lablink_commands_total";
pub const COMMAND_DURATION: &str = "lablink_command_duration_seconds";

/// Latencies from a fraction of a millisecond (a memory-store request) to
/// tens of seconds (an instrument timing out).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Waits for a lock: seconds to hours.
const WAIT_BUCKETS: &[f64] = &[
    0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0,
];
/// How late a hand-off after an expiry is: the reaper wakes at the
/// deadline, so milliseconds unless it is starved.
const LATENESS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];
/// Units of work per store batch (the writers cap a batch at 1024 or less).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// How often histograms are folded in between scrapes, so samples never
/// pile up however rarely the server is scraped.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process's recorder, installed on first use; `None` if another
/// recorder was installed first (then nothing is exported).
pub fn recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE.get_or_init(install).as_ref()
}

fn install() -> Option<PrometheusHandle> {
    let buckets = [
        (HTTP_DURATION, LATENCY_BUCKETS),
        (STORE_TRANSACTION, LATENCY_BUCKETS),
        (COMMAND_DURATION, LATENCY_BUCKETS),
        (LOCK_WAIT, WAIT_BUCKETS),
        (HANDOFF_LATENESS, LATENESS_BUCKETS),
        (STORE_BATCH_UNITS, BATCH_BUCKETS),
    ];
    let mut builder = PrometheusBuilder::new();
    for (name, values) in buckets {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.into()), values)
            .expect("bucket lists are not empty");
    }
    let handle = match builder.install_recorder() {
        Ok(handle) => handle,
        Err(e) => {
            tracing::warn!(error = %e, "metrics are not exported");
            return None;
        }
    };
    describe();
    // Shown from the first scrape, before anything happened to them.
    gauge!(WS_SUBSCRIBERS).increment(0.0);
    counter!(WS_LAGGED).increment(0);
    let _registered = histogram!(HANDOFF_LATENESS);
    let _registered = histogram!(STORE_BATCH_UNITS);
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("lablink-metrics".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no metrics upkeep thread: histograms are folded in at each scrape only");
    }
    Some(handle)
}

/// The `# HELP` lines.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route template and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request, by method and route template"
    );
    describe_gauge!(
        LOCKS_HELD,
        "Locks held now, by instrument and mode (read from the store at scrape)"
    );
    describe_gauge!(
        SESSIONS_LIVE,
        "Sessions live now (read from the store at scrape)"
    );
    describe_gauge!(
        QUEUE_LENGTH,
        "Sessions waiting in each instrument's queue now (read from the store at scrape)"
    );
    describe_gauge!(
        STATE_FRESH,
        "1 if this scrape read the locks, sessions and queues from the store; 0 if the read failed and those gauges are from the last scrape that succeeded"
    );
    describe_histogram!(
        LOCK_WAIT,
        Unit::Seconds,
        "Time from joining an instrument's queue to being granted the lock, by instrument and mode"
    );
    describe_histogram!(
        HANDOFF_LATENESS,
        Unit::Seconds,
        "How long after an expired lease's deadline the lock was handed to the next waiter"
    );
    describe_histogram!(
        STORE_TRANSACTION,
        Unit::Seconds,
        "Time for a store unit of work to be done (a write: durable), by kind (write, read)"
    );
    describe_histogram!(
        STORE_BATCH_UNITS,
        "Units of work committed together in one store batch (one transaction and sync)"
    );
    describe_gauge!(WS_SUBSCRIBERS, "Open live-event WebSocket connections");
    describe_counter!(
        WS_LAGGED,
        "WebSocket clients disconnected because they fell too far behind the live events"
    );
    describe_counter!(
        COMMANDS,
        "Instrument commands, by instrument, action class (control, observe, unknown) and outcome"
    );
    describe_histogram!(
        COMMAND_DURATION,
        Unit::Seconds,
        "Time to run an instrument command (waiting for the instrument's turn included), by instrument and action class"
    );
}

/// HTTP methods as a label: the standard ones by name, anything else
/// `other` (a client may send any token as a method).
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("other")
}

/// One answered request; `route` is the matched route template.
pub fn http_request(method: &str, route: &str, status: u16, took: Duration) {
    let method = method_label(method);
    let route = route.to_owned();
    counter!(HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    histogram!(HTTP_DURATION, "method" => method, "route" => route).record(took.as_secs_f64());
}

/// What the state gauges show at one scrape, for one instrument.
pub struct InstrumentState<'a> {
    pub equipment_id: &'a str,
    pub exclusive: usize,
    pub observers: usize,
    pub queued: usize,
}

/// Sets the state gauges from a read of the store.
pub fn state<'a>(sessions_live: usize, instruments: impl IntoIterator<Item = InstrumentState<'a>>) {
    gauge!(SESSIONS_LIVE).set(sessions_live as f64);
    for i in instruments {
        let id = i.equipment_id.to_owned();
        gauge!(LOCKS_HELD, "equipment_id" => id.clone(), "mode" => "exclusive")
            .set(i.exclusive as f64);
        gauge!(LOCKS_HELD, "equipment_id" => id.clone(), "mode" => "observer")
            .set(i.observers as f64);
        gauge!(QUEUE_LENGTH, "equipment_id" => id).set(i.queued as f64);
    }
    gauge!(STATE_FRESH).set(1.0);
}

/// The store did not answer the scrape's read: the state gauges keep their
/// last values, and say so.
pub fn state_stale() {
    gauge!(STATE_FRESH).set(0.0);
}

/// A lock granted from the queue after `waited`.
pub fn lock_wait(equipment_id: &str, mode: &'static str, waited: Duration) {
    histogram!(LOCK_WAIT, "equipment_id" => equipment_id.to_owned(), "mode" => mode)
        .record(waited.as_secs_f64());
}

/// A lock handed to a waiter `late` after the deadline of the lease that
/// expired to free it.
pub fn handoff_lateness(late: Duration) {
    histogram!(HANDOFF_LATENESS).record(late.as_secs_f64());
}

/// Which kind of store unit of work.
#[derive(Clone, Copy, Debug)]
pub enum StoreWork {
    Write,
    Read,
}

/// One store unit of work done, from asking to its answer.
pub fn store_transaction(kind: StoreWork, took: Duration) {
    let kind = match kind {
        StoreWork::Write => "write",
        StoreWork::Read => "read",
    };
    histogram!(STORE_TRANSACTION, "kind" => kind).record(took.as_secs_f64());
}

/// One store batch committed with `units` units of work.
pub fn store_batch(units: usize) {
    histogram!(STORE_BATCH_UNITS).record(units as f64);
}

/// An open live-event WebSocket; counted until dropped.
pub struct Subscriber(());

impl Subscriber {
    pub fn open() -> Self {
        gauge!(WS_SUBSCRIBERS).increment(1.0);
        Self(())
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        gauge!(WS_SUBSCRIBERS).decrement(1.0);
    }
}

/// A WebSocket client disconnected for falling behind.
pub fn websocket_lagged() {
    counter!(WS_LAGGED).increment(1);
}

/// One instrument command: its instrument, action class (`control`,
/// `observe`, `unknown`), outcome and duration.
pub fn command(equipment_id: &str, class: &'static str, outcome: &'static str, took: Duration) {
    let id = equipment_id.to_owned();
    counter!(COMMANDS, "equipment_id" => id.clone(), "class" => class, "outcome" => outcome)
        .increment(1);
    histogram!(COMMAND_DURATION, "equipment_id" => id, "class" => class).record(took.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_standard_set_share_one_label() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("BREW"), "other");
        assert_eq!(method_label("get"), "other");
    }
}
