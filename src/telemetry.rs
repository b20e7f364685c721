//! Logging setup: `RUST_LOG` filters (default `info`), to stderr, in colour
//! only when stderr is a terminal (and `NO_COLOR` is unset), so logs that go
//! to a file or a journal carry no escape codes.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_wanted(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
        ))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Colour only for a person at a terminal who has not asked for none
/// (<https://no-color.org>).
fn colour_wanted(terminal: bool, no_color: bool) -> bool {
    terminal && !no_color
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(super::colour_wanted(true, false));
        assert!(!super::colour_wanted(false, false));
        assert!(!super::colour_wanted(true, true));
    }
}
