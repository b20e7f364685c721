//! The SQLite store's options: what a `sqlite://` URL names and sets.
//! Parsing only: it opens nothing and touches no file.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Options from the URL's query string.
#[derive(Clone, Debug, PartialEq)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub synchronous_full: bool,
    pub busy_timeout: Duration,
}

impl SqliteOptions {
    /// Parses `sqlite://PATH[?...]`; a relative PATH is taken under `base`.
    pub fn from_url(url: &str, base: &Path) -> Result<Self, String> {
        let rest = url
            .strip_prefix("sqlite://")
            .ok_or("a SQLite URL starts with sqlite://")?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if path.is_empty() {
            return Err("the SQLite URL names no file: sqlite://PATH".into());
        }
        let mut options = Self {
            path: base.join(path),
            synchronous_full: true,
            busy_timeout: Duration::from_secs(5),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("synchronous", "full")) => options.synchronous_full = true,
                Some(("synchronous", "normal")) => options.synchronous_full = false,
                Some(("busy_timeout_ms", ms)) => {
                    let ms: u64 = ms.parse().map_err(|_| {
                        format!("busy_timeout_ms must be a whole number, got {ms:?}")
                    })?;
                    options.busy_timeout = Duration::from_millis(ms);
                }
                _ => {
                    return Err(format!(
                        "unknown SQLite option {pair:?}; known: synchronous=full|normal, busy_timeout_ms=N"
                    ));
                }
            }
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_file_and_options() {
        let base = Path::new("/data");
        let o = SqliteOptions::from_url("sqlite://lablink-data/lablink.db", base).unwrap();
        assert_eq!(o.path, PathBuf::from("/data/lablink-data/lablink.db"));
        assert!(o.synchronous_full);
        let o = SqliteOptions::from_url(
            "sqlite:///abs/x.db?synchronous=normal&busy_timeout_ms=50",
            base,
        )
        .unwrap();
        assert_eq!(
            (o.path.as_path(), o.synchronous_full, o.busy_timeout),
            (Path::new("/abs/x.db"), false, Duration::from_millis(50))
        );
        assert!(SqliteOptions::from_url("sqlite://", base).is_err());
        assert!(SqliteOptions::from_url("sqlite://x.db?fast=yes", base).is_err());
    }
}
