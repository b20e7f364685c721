//! LabLink: a server that lets many people and scripts share a lab's
//! instruments without clobbering each other's experiments.
//!
//! The layers, and the one rule between them (arrows point at what a layer
//! may use):
//!
//! - `domain`: the rules, pure functions of state and `now`. No I/O.
//! - `service` <- `domain`, `storage`, `drivers`, `clock`: one function per
//!   use case; reads the clock once, runs the domain inside a store
//!   transaction, then talks to instruments.
//! - `api` <- `service`: axum handlers, thin; errors mapped to HTTP once.
//! - `reaper` <- `service`: expires leases on time.
//! - `server`, `config`, `cli`: the composition root; the only code that
//!   names concrete stores and clocks.

pub mod api;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod drivers;
pub mod live;
pub mod reaper;
pub mod server;
pub mod service;
pub mod storage;
pub mod telemetry;
