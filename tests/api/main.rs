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
mod helpers;
mod live;
mod locks;
mod ops;
mod queueing;
mod races;
mod scpi;
mod sessions;
mod settings;
mod shutdown;
