//! Black-box tests of the HTTP API against a real server on port 0.

mod auth;
mod cli;
mod cli_client;
mod crash;
mod dashboard;
mod durability;
mod equipment;
mod errors;
mod examples;
mod groups;
mod helpers;
mod history;
mod live;
mod locks;
mod metrics;
mod ops;
mod postgres_proxy;
mod postgres_replicas;
mod postgres_support;
mod queueing;
mod races;
mod scpi;
mod sessions;
mod settings;
mod shutdown;
