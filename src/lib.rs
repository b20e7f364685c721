//! LabLink: a server that lets many people and scripts share a lab's
//! instruments without clobbering each other's experiments.
//!
//! The layers, and the one rule between them (arrows point at what a layer
//! may use; nothing points back up):
//!
//! - `domain`: the rules, pure functions of state and `now`. No I/O, no
//!   framework (no HTTP, OpenAPI or CLI types).
//! - `measure`: the Prometheus metrics' names, labels and buckets, recorded
//!   through the `metrics` facade; a leaf that any layer may record with
//!   (the storage writers too), knowing nothing of HTTP.
//! - `clock`: the only wall-clock read (`SystemClock`), and `ManualClock`.
//! - `storage` <- `domain`: the `Store` trait, its backends (memory, SQLite)
//!   and their contract tests.
//! - `drivers` <- `domain`: instruments (simulated models, SCPI over TCP).
//! - `live` <- `domain`: the live-event hub and expiry-warning schedule.
//! - `auth` <- `domain`, `storage`: API tokens and who the caller is.
//! - `service` <- `domain`, `storage`, `drivers`, `live`, `auth`, `clock`:
//!   one function per use case; reads the clock once, runs the domain
//!   inside a store transaction, then talks to instruments and publishes.
//! - `reaper` <- `service`, `domain`: expires leases on time.
//! - `api` <- `service`, `auth`, `live`, `domain`, `drivers`, `storage`
//!   (query types): axum handlers, thin; errors mapped to HTTP once; owns
//!   the OpenAPI schemas.
//! - `server`, `config`, `cli`, `telemetry`: the composition root; the only
//!   code that names concrete stores and clocks.
//! - `client`: the client commands (`lablink run`, `status`, ...); they
//!   speak HTTP and WebSocket to a server and use nothing above but
//!   `server::Signals`.
//!
//! The load generator is not part of this library: it is the
//! `lablink-bench` binary of `bench/loadgen`, which speaks HTTP to a server.

pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod domain;
pub mod drivers;
pub mod live;
pub mod measure;
pub mod reaper;
pub mod server;
pub mod service;
pub mod storage;
pub mod telemetry;
