//! The `lablink` client commands (`run`, `status`, `sessions`, `queue`,
//! `release`, `command`, `events`, and the queueing controls): they talk to a running server over its
//! HTTP API and `/api/ws`, never to the store, so they work against any
//! LabLink server the user can reach. `cli.rs` parses the arguments; this
//! module and its files do the work and return the process exit status.
//!
//! - `http`: a thin typed HTTP client (errors carry the server's `code`
//!   and `detail`; an unreachable server is one line).
//! - `live`: the live-event WebSocket.
//! - `output`: every write (server text with its control characters
//!   shown as text; a closed stdout ends the command quietly), aligned
//!   tables, durations written and read.
//! - `reads`: `status`, `sessions`, `queue`, `release`, `command`.
//! - `events`: `events`, with `--follow`.
//! - `manage`: `maintenance`, `dequeue`, `end-session`, `step-back`, `swap`.
//! - `run`: a command run under locks.

pub mod events;
pub mod http;
pub mod live;
pub mod manage;
pub mod output;
pub mod reads;
pub mod run;

/// The environment variables the client commands read (`run` also sets
/// them for its command). The server reads none of them.
pub mod vars {
    pub const URL: &str = "LABLINK_URL";
    pub const TOKEN: &str = "LABLINK_TOKEN";
    pub const SESSION_ID: &str = "LABLINK_SESSION_ID";
}

/// Where the server is and who is asking (`--url`/`LABLINK_URL`,
/// `--token`/`LABLINK_TOKEN`).
#[derive(Clone, Debug)]
pub struct Connection {
    pub url: String,
    pub token: Option<String>,
}

/// The exit statuses of the client commands (the README's table).
pub mod exit {
    /// The server refused (its `detail` is printed), could not be reached,
    /// or answered something unexpected.
    pub const ERROR: i32 = 1;
    /// Bad arguments (clap's own status for usage errors too).
    pub const USAGE: i32 = 2;
    /// `run`: the lock was lost while the command ran (expired,
    /// force-released, revoked); the command was stopped. EX_UNAVAILABLE.
    pub const LOCK_LOST: i32 = 69;
    /// `run`: `--wait` ran out before every lock was granted; nothing is
    /// left behind. EX_TEMPFAIL ("try again later").
    pub const WAIT_RAN_OUT: i32 = 75;
    /// `run`: `--max-wait` passed and the server dropped the queue place;
    /// nothing is left behind.
    pub const QUEUE_TIMEOUT: i32 = 76;
    /// `run`: a lab manager removed the queue place (or ended the
    /// session) while `run` waited; the command never started.
    pub const PLACE_REMOVED: i32 = 77;
    /// `run --wait 0`: the instrument is in maintenance (not queued).
    pub const IN_MAINTENANCE: i32 = 78;
    /// `run`: the command exists but could not be executed (as shells do).
    pub const CANNOT_EXECUTE: i32 = 126;
    /// `run`: the command was not found (as shells do).
    pub const NOT_FOUND: i32 = 127;
    /// Stopped by signal `n` (the command, or `run` itself on Ctrl-C or
    /// SIGTERM): 128 + n, as shells report it.
    pub const fn signalled(n: i32) -> i32 {
        128 + n
    }
}

/// What can go wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error: its `detail`, as it wrote it.
    #[error("{detail}")]
    Server {
        status: u16,
        code: String,
        detail: String,
    },
    /// No answer at all: the one line a user needs.
    #[error(
        "cannot reach the LabLink server at {url}: {reason} (is it running? set --url or LABLINK_URL)"
    )]
    Unreachable { url: String, reason: String },
    /// The user's own input is wrong (a parameter that is not a number, a
    /// bad URL, ...).
    #[error("{0}")]
    Input(String),
    /// The server answered something this client cannot read.
    #[error("{0}")]
    Unexpected(String),
}

impl ClientError {
    /// The server's error code, when the server answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the server may answer the same request later: it could not
    /// be reached, or it (or a proxy in front of it) said it cannot answer
    /// now (502, 503 such as `store_unavailable` during a database
    /// failover, 504). Nothing was decided: a lock is not lost by it.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Server { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }

    /// The status a command that failed this way exits with.
    pub fn exit_status(&self) -> i32 {
        match self {
            ClientError::Input(_) => exit::USAGE,
            _ => exit::ERROR,
        }
    }
}

/// Prints `err` as `lablink NAME: ...` on stderr and returns its exit status.
pub fn fail(name: &str, err: &ClientError) -> i32 {
    output::errln!("lablink {name}: {err}");
    err.exit_status()
}
