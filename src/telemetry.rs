//! Logging setup: `RUST_LOG` filters (default `info`), to stderr, as plain
//! text or as one JSON object a line (`LABLINK_LOG_FORMAT=json`, for log
//! shippers). Text is in colour only when stderr is a terminal (and
//! `NO_COLOR` is unset), so logs that go to a file or a journal carry no
//! escape codes.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-01-05T09:00:00.000Z  INFO target: message key=value ...`
    Text,
    /// `{"timestamp":..,"level":..,"fields":{"message":..,..},"target":..}`
    Json,
}

impl LogFormat {
    /// `text` or `json`, in any case.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "text" => Some(Self::Text),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// Installs the process's logger; later calls do nothing.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => logs
            .with_ansi(colour_wanted(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
            ))
            .try_init(),
        // Fields at the top level beside the message would be tidier for
        // some shippers, but `fields` keeps a field named like a built-in
        // key (`level`, `target`) from clobbering it.
        LogFormat::Json => logs.json().with_ansi(false).try_init(),
    };
}

/// Colour only for a person at a terminal who has not asked for none
/// (<https://no-color.org>).
fn colour_wanted(terminal: bool, no_color: bool) -> bool {
    terminal && !no_color
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_wanted(true, false));
        assert!(!colour_wanted(false, false));
        assert!(!colour_wanted(true, true));
    }

    #[test]
    fn formats_are_text_or_json() {
        assert_eq!(LogFormat::parse(" JSON "), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("text"), Some(LogFormat::Text));
        assert_eq!(LogFormat::parse("logfmt"), None);
    }
}
