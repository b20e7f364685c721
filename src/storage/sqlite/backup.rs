//! `lablink backup`: a consistent copy of a SQLite store, taken while a
//! server may be using it, through SQLite's online backup API.
//!
//! The whole database is copied in one step, that is inside one read
//! transaction: the copy is the database as of one instant, holding every
//! transaction committed before the step began (so every change a server
//! acknowledged before `lablink backup` started) and nothing half-done.
//! In WAL mode a read blocks no writer, so the server keeps serving
//! meanwhile. (Copying a few pages at a time would let writers in between
//! steps, and SQLite restarts such a backup whenever another connection
//! writes: under steady load it might never finish.)
//!
//! The copy is written beside its destination under a temporary name,
//! checked, synced and then renamed into place, so a backup that fails
//! leaves nothing that looks complete; it never overwrites a file.

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::SqliteOptions;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "there is no store at {0}: check --config, --store and LABLINK_DATA_DIR (the server creates it on first start)"
    )]
    NoStore(PathBuf),
    #[error("{0} already exists; a backup never overwrites a file: choose a new name")]
    Exists(PathBuf),
    #[error("cannot write the backup in {0}: the directory does not exist")]
    NoDirectory(PathBuf),
    #[error("the backup of {from} failed: {message}")]
    Failed { from: PathBuf, message: String },
}

/// What was copied.
#[derive(Debug)]
pub struct Copied {
    pub to: PathBuf,
    pub bytes: u64,
    /// The number of the newest event in the copy (0: none).
    pub last_event_seq: u64,
    pub schema_version: i64,
}

/// Copies the store `options` names to the new file `to`.
pub fn backup(options: &SqliteOptions, to: &Path) -> Result<Copied, BackupError> {
    let from = options.path.clone();
    if !from.is_file() {
        return Err(BackupError::NoStore(from));
    }
    if to.exists() {
        return Err(BackupError::Exists(to.into()));
    }
    let dir = match to.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(BackupError::NoDirectory(dir));
    }
    let name = to
        .file_name()
        .map_or_else(|| "backup".into(), |n| n.to_string_lossy().into_owned());
    let partial = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let failed = |message: String| BackupError::Failed {
        from: from.clone(),
        message,
    };
    let copied = copy(options, &partial).map_err(failed);
    let copied = copied.and_then(|(last_event_seq, schema_version)| {
        // The copy is durable before it takes the name.
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::rename(&partial, to))
            .and_then(|()| sync_dir(&dir))
            .map_err(|e| failed(format!("cannot put the copy at {}: {e}", to.display())))?;
        Ok(Copied {
            to: to.into(),
            bytes: std::fs::metadata(to).map_or(0, |m| m.len()),
            last_event_seq,
            schema_version,
        })
    });
    if copied.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    copied
}

/// Copies the database into `partial`; answers the copy's newest event
/// number and schema version.
fn copy(options: &SqliteOptions, partial: &Path) -> Result<(u64, i64), String> {
    let sqlite = |e: rusqlite::Error| e.to_string();
    // Never creates the store: it exists, or the settings point elsewhere.
    let source = Connection::open_with_flags(
        &options.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite)?;
    source.busy_timeout(options.busy_timeout).map_err(sqlite)?;
    source
        .execute_batch("PRAGMA query_only = 1")
        .map_err(sqlite)?;
    let mut copy = Connection::open(partial).map_err(sqlite)?;
    {
        let backup = Backup::new(&source, &mut copy).map_err(sqlite)?;
        let deadline = Instant::now() + options.busy_timeout;
        loop {
            // All pages at once: one read transaction, one instant.
            match backup.step(-1).map_err(sqlite)? {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked if Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                StepResult::Busy | StepResult::Locked => {
                    return Err(format!(
                        "the database stayed locked for {} ms (busy_timeout_ms)",
                        options.busy_timeout.as_millis()
                    ));
                }
                _ => {}
            }
        }
    }
    let check: String = copy
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(sqlite)?;
    if check != "ok" {
        return Err(format!("the copy does not check out: {check}"));
    }
    let schema_version: i64 = copy
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sqlite)?;
    let last_event_seq: i64 = copy
        .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
        .map_err(sqlite)?;
    // One self-contained file (no -wal beside it) to move around; a
    // server switches it back to WAL when it opens it.
    copy.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
        .map_err(sqlite)?;
    copy.close().map_err(|(_, e)| e.to_string())?;
    Ok((last_event_seq as u64, schema_version))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::SqliteStore;

    #[test]
    fn a_backup_never_overwrites_and_needs_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteOptions::from_url("sqlite://lab.db", dir.path()).unwrap();
        let to = dir.path().join("copy.db");
        assert!(matches!(
            backup(&options, &to),
            Err(BackupError::NoStore(_))
        ));
        assert!(!options.path.exists(), "the store is not created");
        drop(SqliteStore::open(&options).unwrap());
        std::fs::write(&to, "precious").unwrap();
        assert!(matches!(backup(&options, &to), Err(BackupError::Exists(_))));
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "precious");
        let nowhere = dir.path().join("no/such/dir/copy.db");
        assert!(matches!(
            backup(&options, &nowhere),
            Err(BackupError::NoDirectory(_))
        ));
        let fresh = dir.path().join("fresh.db");
        let copied = backup(&options, &fresh).unwrap();
        assert_eq!(copied.last_event_seq, 0);
        assert!(copied.schema_version > 0);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial") || n.starts_with("fresh.db-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
