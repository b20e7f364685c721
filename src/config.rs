//! Settings: defaults < config file `[server]` < `.env` < `LABLINK_*`
//! environment < command-line flags. Resolution is a pure function of those
//! sources, so each layer is testable without touching the process.

use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::edge::{CorsOrigins, Edge};
use crate::auth::AuthMode;
use crate::domain::Timeout;
use crate::drivers::{EquipmentConfig, GroupConfig, Instruments};
use crate::service::Policy;
use crate::telemetry::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}={value:?} (from {origin}): {expected}")]
    BadValue {
        name: &'static str,
        value: String,
        origin: &'static str,
        expected: &'static str,
    },
    #[error("cannot read config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("cannot read .env file {path}: {message}")]
    DotEnv { path: PathBuf, message: String },
}

/// A setting: its environment name, its key in the config file's
/// `[server]` table, its default and what it does (for `serve --help`).
struct Key {
    env: &'static str,
    file: &'static str,
    default: &'static str,
    help: &'static str,
}

const BIND: Key = Key {
    env: "LABLINK_BIND",
    file: "bind",
    default: "127.0.0.1:8000",
    help: "address to listen on",
};
const STORE: Key = Key {
    env: "LABLINK_STORE",
    file: "store",
    default: "sqlite://lablink-data/lablink.db",
    help: "where state lives: sqlite://PATH[?synchronous=full|normal&busy_timeout_ms=N], postgres://USER@HOST[:PORT]/DB (several servers as one) or memory",
};
const LOCKS: Key = Key {
    env: "LABLINK_ENABLE_EQUIPMENT_LOCKS",
    file: "enable_equipment_locks",
    default: "true",
    help: "false: commands are not checked against locks",
};
const LOCK_TIMEOUT: Key = Key {
    env: "LABLINK_LOCK_TIMEOUT_SEC",
    file: "lock_timeout_sec",
    default: "300",
    help: "lock timeout (seconds) when a request gives none; 0 = none",
};
const SESSION_TIMEOUT: Key = Key {
    env: "LABLINK_SESSION_TIMEOUT_SEC",
    file: "session_timeout_sec",
    default: "600",
    help: "session timeout (seconds) when a request gives none; 0 = none",
};
const QUEUE: Key = Key {
    env: "LABLINK_ENABLE_LOCK_QUEUE",
    file: "enable_lock_queue",
    default: "true",
    help: "false: a request that would queue gets 409 queue_disabled",
};
const OBSERVER: Key = Key {
    env: "LABLINK_ENABLE_OBSERVER_MODE",
    file: "enable_observer_mode",
    default: "true",
    help: "false: observer requests get 403",
};
const AUTO_RELEASE: Key = Key {
    env: "LABLINK_AUTO_RELEASE_ON_DISCONNECT",
    file: "auto_release_on_disconnect",
    default: "true",
    help: "false: an ended session's locks stay until their own timeout",
};
const LOG_EVENTS: Key = Key {
    env: "LABLINK_LOG_LOCK_EVENTS",
    file: "log_lock_events",
    default: "true",
    help: "false: lock and queue events are neither recorded nor logged",
};
const CLEANUP: Key = Key {
    env: "LABLINK_CLEANUP_INTERVAL_SEC",
    file: "cleanup_interval_sec",
    default: "10",
    help: "seconds between safety-net sweeps (expiry itself is exact)",
};
const DATA_DIR: Key = Key {
    env: "LABLINK_DATA_DIR",
    file: "data_dir",
    default: "the config file's directory, else .",
    help: "directory relative SQLite paths are under",
};
const EXPIRY_WARNING: Key = Key {
    env: "LABLINK_EXPIRY_WARNING_SEC",
    file: "expiry_warning_sec",
    default: "30",
    help: "seconds before its deadline a holder hears lock_expiring; 0 = never",
};
const AUTH: Key = Key {
    env: "LABLINK_AUTH",
    file: "auth",
    default: "off on loopback, else required",
    help: "API tokens: required or off",
};
const ALLOW_INSECURE: Key = Key {
    env: "LABLINK_ALLOW_INSECURE",
    file: "allow_insecure",
    default: "false",
    help: "true: allow a non-loopback address without authentication",
};
const RETENTION: Key = Key {
    env: "LABLINK_EVENT_RETENTION_DAYS",
    file: "event_retention_days",
    default: "90",
    help: "days of history to keep; 0 = forever",
};
const RETENTION_EVENTS: Key = Key {
    env: "LABLINK_EVENT_RETENTION_MAX_EVENTS",
    file: "event_retention_max_events",
    default: "0",
    help: "keep only the newest this many events; 0 = no limit",
};
const IMPLICIT_SESSIONS: Key = Key {
    env: "LABLINK_IMPLICIT_SESSIONS",
    file: "implicit_sessions",
    default: "true",
    help: "false: an acquire naming a session that is not live gets 404 instead of opening it",
};
const MAX_METADATA: Key = Key {
    env: "LABLINK_MAX_METADATA_BYTES",
    file: "max_metadata_bytes",
    default: "16384",
    help: "largest session metadata, in bytes of compact JSON",
};
const ACCESS_LOG: Key = Key {
    env: "LABLINK_ACCESS_LOG",
    file: "access_log",
    default: "true",
    help: "false: no access-log line per request",
};
const LOG_FORMAT: Key = Key {
    env: "LABLINK_LOG_FORMAT",
    file: "log_format",
    default: "text",
    help: "text, or json (one JSON object a line, for log shippers)",
};
const CORS_ORIGINS: Key = Key {
    env: "LABLINK_CORS_ORIGINS",
    file: "cors_origins",
    default: "none (no cross-origin browser access)",
    help: "browser origins allowed to call the API: a comma list (https://lab.example.org) or *",
};
const METRICS_PUBLIC: Key = Key {
    env: "LABLINK_METRICS_PUBLIC",
    file: "metrics_public",
    default: "true on a loopback bind, false otherwise",
    help: "true: GET /metrics answers without a token even with authentication on; false: it needs a token (any role) when authentication is on",
};
const PRIORITY_AGING: Key = Key {
    env: "LABLINK_PRIORITY_AGING_SEC",
    file: "priority_aging_sec",
    default: "60",
    help: "seconds of waiting that add one step of queue priority (counted continuously); 0 = no aging",
};
const OPERATOR_MAX_PRIORITY: Key = Key {
    env: "LABLINK_OPERATOR_MAX_PRIORITY",
    file: "operator_max_priority",
    default: "0",
    help: "with authentication on, the highest acquire priority (0..10) an operator may ask for; admins may use 10",
};
const OBSERVER_MAX_PRIORITY: Key = Key {
    env: "LABLINK_OBSERVER_MAX_PRIORITY",
    file: "observer_max_priority",
    default: "0",
    help: "with authentication on, the highest acquire priority (0..10) an observer may ask for",
};
const CLAIM_WINDOW: Key = Key {
    env: "LABLINK_CLAIM_WINDOW_SEC",
    file: "claim_window_sec",
    default: "0",
    help: "seconds a lock handed over from the queue waits to be claimed (renewed, commanded, asked again) before it passes on; 0 = off",
};
/// Every setting the config file's `[server]` table may hold.
const SERVER_KEYS: &[&Key] = &[
    &BIND,
    &STORE,
    &LOCKS,
    &LOCK_TIMEOUT,
    &SESSION_TIMEOUT,
    &QUEUE,
    &OBSERVER,
    &AUTO_RELEASE,
    &LOG_EVENTS,
    &CLEANUP,
    &DATA_DIR,
    &RETENTION,
    &RETENTION_EVENTS,
    &EXPIRY_WARNING,
    &AUTH,
    &ALLOW_INSECURE,
    &IMPLICIT_SESSIONS,
    &MAX_METADATA,
    &ACCESS_LOG,
    &LOG_FORMAT,
    &CORS_ORIGINS,
    &METRICS_PUBLIC,
    &PRIORITY_AGING,
    &OPERATOR_MAX_PRIORITY,
    &OBSERVER_MAX_PRIORITY,
    &CLAIM_WINDOW,
];
/// Every `LABLINK_*` variable the server reads.
pub fn setting_names() -> impl Iterator<Item = &'static str> {
    std::iter::once(CONFIG_ENV).chain(SERVER_KEYS.iter().map(|k| k.env))
}

/// The settings as `lablink serve --help` lists them.
pub fn settings_help() -> String {
    let mut help = String::from(
        "Settings, highest first: flags, LABLINK_* environment variables, a .env file in the working directory, the config file's [server] table (same names, lower case, without LABLINK_), defaults.\n\n",
    );
    help.push_str(&format!(
        "  {CONFIG_ENV}\n      the config file (as --config)\n"
    ));
    for key in SERVER_KEYS {
        help.push_str(&format!(
            "  {} ([server] {})\n      {} [default: {}]\n",
            key.env, key.file, key.help, key.default
        ));
    }
    help.push_str("\nRUST_LOG sets the log filter (default info).");
    help
}

/// Where state lives unless told otherwise: a SQLite file under the data
/// directory.
pub const DEFAULT_STORE: &str = "sqlite://lablink-data/lablink.db";
pub const CONFIG_ENV: &str = "LABLINK_CONFIG";

/// The config file: an optional `[server]` table of settings and the
/// `[[equipment]]` entries.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: toml::Table,
    #[serde(default)]
    pub equipment: Vec<EquipmentConfig>,
    /// `[[group]]` entries: instruments locked together under one id.
    #[serde(default)]
    pub group: Vec<GroupConfig>,
}

impl ConfigFile {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.into(),
            message: e.to_string(),
        })?;
        let file: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.into(),
            message: e.to_string(),
        })?;
        let known: Vec<&str> = SERVER_KEYS.iter().map(|k| k.file).collect();
        if let Some(unknown) = file.server.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(ConfigError::File {
                path: path.into(),
                message: format!(
                    "unknown key {unknown:?} in [server]; known keys: {}",
                    known.join(", ")
                ),
            });
        }
        Ok(file)
    }
}

/// Reads `.env` from `dir` if there is one, without touching the process
/// environment.
pub fn read_dotenv(dir: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let path = dir.join(".env");
    if !path.exists() {
        return Ok(HashMap::new());
    }
    let bad = |e: dotenvy::Error| ConfigError::DotEnv {
        path: path.clone(),
        message: e.to_string(),
    };
    dotenvy::from_path_iter(&path)
        .map_err(bad)?
        .map(|item| item.map_err(bad))
        .collect()
}

/// What the command line says (each is optional).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub bind: Option<String>,
    pub config: Option<PathBuf>,
    pub store: Option<String>,
}

/// Every source, before resolution.
#[derive(Debug, Default)]
pub struct Sources {
    pub flags: Flags,
    pub env: HashMap<String, String>,
    pub dotenv: HashMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: String,
    /// A store URL: `memory` or `sqlite://PATH` (relative to `data_dir`).
    pub store: String,
    pub data_dir: PathBuf,
    /// Events older than this many days are pruned; 0 keeps them forever.
    pub event_retention_days: u32,
    /// Only the newest this many events are kept; 0: no limit.
    pub event_retention_max_events: u64,
    pub policy: Policy,
    pub cleanup_interval: Duration,
    /// `None`: no config file, serve the demo instruments.
    pub equipment: Option<Vec<EquipmentConfig>>,
    /// The config file's `[[group]]`s.
    pub groups: Vec<GroupConfig>,
    /// The config file's directory: relative paths in it are taken from here.
    pub config_dir: PathBuf,
    /// `None`: required unless the server listens on loopback only.
    pub auth: Option<AuthMode>,
    /// Allow a non-loopback address without authentication.
    pub allow_insecure: bool,
    /// The access log and cross-origin access.
    pub edge: Edge,
    pub log_format: LogFormat,
    /// Whether `/metrics` answers without a token with authentication on;
    /// `None`: only on a loopback bind.
    pub metrics_public: Option<bool>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8000".into(),
            store: DEFAULT_STORE.into(),
            data_dir: PathBuf::from("."),
            event_retention_days: 90,
            event_retention_max_events: 0,
            policy: Policy::default(),
            cleanup_interval: Duration::from_secs(10),
            equipment: None,
            groups: Vec::new(),
            config_dir: PathBuf::from("."),
            auth: None,
            allow_insecure: false,
            edge: Edge::default(),
            log_format: LogFormat::Text,
            metrics_public: None,
        }
    }
}

impl Settings {
    /// The instruments to serve: the config file's, or the demo set.
    pub fn equipment_configs(&self) -> Vec<EquipmentConfig> {
        self.equipment
            .clone()
            .unwrap_or_else(Instruments::demo_configs)
    }
}

struct Resolver<'a> {
    sources: &'a Sources,
    file: &'a toml::Table,
}

impl Resolver<'_> {
    /// The winning raw value and where it came from.
    fn raw(&self, key: &Key, flag: Option<&str>) -> Option<(String, &'static str)> {
        if let Some(v) = flag {
            return Some((v.to_owned(), "command line"));
        }
        if let Some(v) = self.sources.env.get(key.env) {
            return Some((v.clone(), "environment"));
        }
        if let Some(v) = self.sources.dotenv.get(key.env) {
            return Some((v.clone(), ".env"));
        }
        self.file.get(key.file).map(|v| {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (text, "config file")
        })
    }

    /// A directory setting: relative to the config file's directory when
    /// the config file gave it, else to the working directory `cwd`;
    /// `default` when nobody gave it.
    fn directory(&self, key: &Key, cwd: &Path, config_dir: &Path, default: &Path) -> PathBuf {
        match self.raw(key, None) {
            Some((value, "config file")) => config_dir.join(value),
            Some((value, _)) => cwd.join(value),
            None => default.to_path_buf(),
        }
    }

    fn text(&self, key: &Key, flag: Option<&str>, default: &str) -> String {
        self.raw(key, flag)
            .map_or_else(|| default.to_owned(), |(v, _)| v)
    }

    fn boolean(&self, key: &Key, default: bool) -> Result<bool, ConfigError> {
        let Some((value, source)) = self.raw(key, None) else {
            return Ok(default);
        };
        match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::BadValue {
                name: key.env,
                value,
                origin: source,
                expected: "expected true or false",
            }),
        }
    }

    fn seconds(&self, key: &Key, default: f64) -> Result<f64, ConfigError> {
        let Some((value, source)) = self.raw(key, None) else {
            return Ok(default);
        };
        match value.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 && Timeout::from_seconds(v).is_ok() => Ok(v),
            _ => Err(ConfigError::BadValue {
                name: key.env,
                value,
                origin: source,
                expected: "expected 0 or a number of seconds >= 0.001 (1 ms)",
            }),
        }
    }

    fn auth(&self) -> Result<Option<AuthMode>, ConfigError> {
        let Some((value, source)) = self.raw(&AUTH, None) else {
            return Ok(None);
        };
        match value.trim().to_ascii_lowercase().as_str() {
            "required" => Ok(Some(AuthMode::Required)),
            "off" => Ok(Some(AuthMode::Off)),
            _ => Err(ConfigError::BadValue {
                name: AUTH.env,
                value,
                origin: source,
                expected: "expected required or off",
            }),
        }
    }

    fn log_format(&self) -> Result<LogFormat, ConfigError> {
        let Some((value, source)) = self.raw(&LOG_FORMAT, None) else {
            return Ok(LogFormat::Text);
        };
        LogFormat::parse(&value).ok_or(ConfigError::BadValue {
            name: LOG_FORMAT.env,
            value,
            origin: source,
            expected: "expected text or json",
        })
    }

    fn cors_origins(&self) -> Result<Option<CorsOrigins>, ConfigError> {
        let Some((value, source)) = self.raw(&CORS_ORIGINS, None) else {
            return Ok(None);
        };
        CorsOrigins::parse(&value).map_err(|expected| ConfigError::BadValue {
            name: CORS_ORIGINS.env,
            value,
            origin: source,
            expected,
        })
    }

    fn days(&self, key: &Key, default: u32) -> Result<u32, ConfigError> {
        self.whole(
            key,
            default,
            "expected a whole number of days >= 0 (0 = keep forever)",
        )
    }

    /// A whole number (of days, bytes, ...) >= 0.
    fn whole<T: std::str::FromStr>(
        &self,
        key: &Key,
        default: T,
        expected: &'static str,
    ) -> Result<T, ConfigError> {
        let Some((value, source)) = self.raw(key, None) else {
            return Ok(default);
        };
        value.trim().parse().map_err(|_| ConfigError::BadValue {
            name: key.env,
            value,
            origin: source,
            expected,
        })
    }

    /// A priority cap: a whole number from 0 to the highest priority.
    fn priority_cap(&self, key: &Key) -> Result<i8, ConfigError> {
        let expected = "expected a whole number from 0 to 10";
        let cap: i64 = self.whole(key, 0, expected)?;
        crate::domain::priority::checked(cap)
            .filter(|c| *c >= 0)
            .ok_or_else(|| ConfigError::BadValue {
                name: key.env,
                value: cap.to_string(),
                origin: "settings",
                expected,
            })
    }

    fn timeout(&self, key: &Key, default: f64) -> Result<Timeout, ConfigError> {
        let seconds = self.seconds(key, default)?;
        Ok(Timeout::from_seconds(seconds).expect("checked by seconds()"))
    }
}

/// Where the config file was read from (its directory anchors the relative
/// paths in it) and what it says.
#[derive(Debug)]
pub struct Located<'a> {
    pub file: &'a ConfigFile,
    pub dir: &'a Path,
}

/// Resolves every setting. `file` is the parsed config file, if any; `cwd`
/// the working directory that relative paths outside the file are taken
/// from. Relative paths in the file are taken from its directory, which is
/// also the default data directory when there is a file.
pub fn resolve(
    sources: &Sources,
    file: Option<Located<'_>>,
    cwd: &Path,
) -> Result<Settings, ConfigError> {
    let config_dir = file.as_ref().map_or(cwd, |f| f.dir).to_path_buf();
    let file = file.map(|f| f.file);
    let empty = toml::Table::new();
    let r = Resolver {
        sources,
        file: file.map_or(&empty, |f| &f.server),
    };
    let defaults = Settings::default();
    let cleanup = r.seconds(&CLEANUP, 10.0)?;
    if cleanup <= 0.0 {
        return Err(ConfigError::BadValue {
            name: CLEANUP.env,
            value: cleanup.to_string(),
            origin: "settings",
            expected: "expected a number of seconds > 0",
        });
    }
    Ok(Settings {
        bind: r.text(&BIND, sources.flags.bind.as_deref(), &defaults.bind),
        store: r.text(&STORE, sources.flags.store.as_deref(), &defaults.store),
        data_dir: r.directory(&DATA_DIR, cwd, &config_dir, &config_dir),
        event_retention_days: r.days(&RETENTION, 90)?,
        event_retention_max_events: r.whole(
            &RETENTION_EVENTS,
            0,
            "expected a whole number of events >= 0 (0 = no limit)",
        )?,
        policy: Policy {
            locks_enabled: r.boolean(&LOCKS, true)?,
            lock: crate::domain::LockPolicy {
                queue_enabled: r.boolean(&QUEUE, true)?,
                observer_enabled: r.boolean(&OBSERVER, true)?,
                aging_ms: (r.seconds(&PRIORITY_AGING, 60.0)? * 1000.0).round() as u64,
            },
            auto_release_on_disconnect: r.boolean(&AUTO_RELEASE, true)?,
            log_lock_events: r.boolean(&LOG_EVENTS, true)?,
            default_lock_timeout: r.timeout(&LOCK_TIMEOUT, 300.0)?,
            default_session_timeout: r.timeout(&SESSION_TIMEOUT, 600.0)?,
            expiry_warning_ms: (r.seconds(&EXPIRY_WARNING, 30.0)? * 1000.0).round() as u64,
            live_buffer: crate::live::DEFAULT_BUFFER,
            implicit_sessions: r.boolean(&IMPLICIT_SESSIONS, true)?,
            priority_caps: crate::domain::PriorityCaps {
                operator: r.priority_cap(&OPERATOR_MAX_PRIORITY)?,
                observer: r.priority_cap(&OBSERVER_MAX_PRIORITY)?,
            },
            claim_window: r.timeout(&CLAIM_WINDOW, 0.0)?,
            max_metadata_bytes: r.whole(
                &MAX_METADATA,
                defaults.policy.max_metadata_bytes,
                "expected a whole number of bytes >= 0",
            )?,
        },
        cleanup_interval: Duration::from_secs_f64(cleanup),
        equipment: file.map(|f| f.equipment.clone()),
        groups: file.map(|f| f.group.clone()).unwrap_or_default(),
        config_dir,
        auth: r.auth()?,
        allow_insecure: r.boolean(&ALLOW_INSECURE, false)?,
        edge: Edge {
            access_log: r.boolean(&ACCESS_LOG, true)?,
            cors: r.cors_origins()?,
        },
        log_format: r.log_format()?,
        metrics_public: r
            .raw(&METRICS_PUBLIC, None)
            .map(|_| r.boolean(&METRICS_PUBLIC, false))
            .transpose()?,
    })
}

/// Which config file to read: the flag, else `LABLINK_CONFIG` from the
/// environment, else from `.env`; a relative path is taken from `cwd`.
pub fn config_path(sources: &Sources, cwd: &Path) -> Option<PathBuf> {
    sources
        .flags
        .config
        .clone()
        .or_else(|| sources.env.get(CONFIG_ENV).map(PathBuf::from))
        .or_else(|| sources.dotenv.get(CONFIG_ENV).map(PathBuf::from))
        .map(|path| cwd.join(path))
}

/// Gathers the sources from the process (environment and `.env` in the
/// working directory `cwd`) and resolves them.
pub fn load(flags: Flags, cwd: &Path) -> Result<Settings, ConfigError> {
    let sources = Sources {
        flags,
        env: std::env::vars()
            .filter(|(k, _)| k.starts_with("LABLINK_"))
            .collect(),
        dotenv: read_dotenv(cwd)?,
    };
    let Some(path) = config_path(&sources, cwd) else {
        return resolve(&sources, None, cwd);
    };
    let file = ConfigFile::read(&path)?;
    let dir = path.parent().unwrap_or(cwd);
    resolve(&sources, Some(Located { file: &file, dir }), cwd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(server: &str) -> ConfigFile {
        toml::from_str(&format!("[server]\n{server}")).unwrap()
    }

    #[test]
    fn defaults_match_the_brief() {
        let s = resolve(&Sources::default(), None, Path::new(".")).unwrap();
        assert_eq!(s.bind, "127.0.0.1:8000");
        assert_eq!(s.store, "sqlite://lablink-data/lablink.db");
        assert_eq!(s.data_dir, PathBuf::from("."));
        assert_eq!(s.event_retention_days, 90);
        assert_eq!(s.policy, Policy::default());
        assert_eq!(s.policy.default_lock_timeout.as_seconds(), 300.0);
        assert_eq!(s.policy.default_session_timeout.as_seconds(), 600.0);
        assert_eq!(s.cleanup_interval, Duration::from_secs(10));
        assert!(s.equipment.is_none());
        assert!(
            s.edge.access_log,
            "an access-log line per request by default"
        );
        assert_eq!(s.edge.cors, None, "no cross-origin access by default");
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.metrics_public, None, "decided by the bind");
    }

    #[test]
    fn precedence_is_flags_env_dotenv_file_default() {
        let f = file("bind = 'file:1'\nlock_timeout_sec = 1\nenable_lock_queue = false");
        let layers = |flags: Option<&str>, env: &[(&str, &str)], dotenv: &[(&str, &str)]| {
            let sources = Sources {
                flags: Flags {
                    bind: flags.map(String::from),
                    ..Flags::default()
                },
                env: map(env),
                dotenv: map(dotenv),
            };
            resolve(
                &sources,
                Some(Located {
                    file: &f,
                    dir: Path::new("lab"),
                }),
                Path::new("."),
            )
            .unwrap()
        };
        assert_eq!(layers(None, &[], &[]).bind, "file:1");
        assert_eq!(
            layers(None, &[], &[("LABLINK_BIND", "dot:1")]).bind,
            "dot:1"
        );
        assert_eq!(
            layers(
                None,
                &[("LABLINK_BIND", "env:1")],
                &[("LABLINK_BIND", "dot:1")]
            )
            .bind,
            "env:1"
        );
        assert_eq!(
            layers(Some("flag:1"), &[("LABLINK_BIND", "env:1")], &[]).bind,
            "flag:1"
        );

        let s = layers(
            None,
            &[("LABLINK_LOCK_TIMEOUT_SEC", "0")],
            &[("LABLINK_LOCK_TIMEOUT_SEC", "7")],
        );
        assert_eq!(s.policy.default_lock_timeout, Timeout::NONE);
        assert!(!s.policy.lock.queue_enabled, "from the file");
    }

    #[test]
    fn every_setting_is_read() {
        let env = map(&[
            ("LABLINK_ENABLE_EQUIPMENT_LOCKS", "false"),
            ("LABLINK_LOCK_TIMEOUT_SEC", "30"),
            ("LABLINK_SESSION_TIMEOUT_SEC", "60.5"),
            ("LABLINK_ENABLE_LOCK_QUEUE", "no"),
            ("LABLINK_ENABLE_OBSERVER_MODE", "0"),
            ("LABLINK_AUTO_RELEASE_ON_DISCONNECT", "FALSE"),
            ("LABLINK_LOG_LOCK_EVENTS", "off"),
            ("LABLINK_CLEANUP_INTERVAL_SEC", "2"),
            ("LABLINK_STORE", "memory"),
            ("LABLINK_DATA_DIR", "/srv/lablink"),
            ("LABLINK_EVENT_RETENTION_DAYS", "0"),
            ("LABLINK_EXPIRY_WARNING_SEC", "5"),
            ("LABLINK_AUTH", "required"),
            ("LABLINK_ALLOW_INSECURE", "true"),
            ("LABLINK_IMPLICIT_SESSIONS", "false"),
            ("LABLINK_MAX_METADATA_BYTES", "1024"),
            ("LABLINK_ACCESS_LOG", "false"),
            ("LABLINK_LOG_FORMAT", "JSON"),
            (
                "LABLINK_CORS_ORIGINS",
                "https://a.example, http://b.example:8080",
            ),
            ("LABLINK_METRICS_PUBLIC", "false"),
        ]);
        let s = resolve(
            &Sources {
                env,
                ..Sources::default()
            },
            None,
            Path::new("."),
        )
        .unwrap();
        let p = &s.policy;
        assert!(!p.locks_enabled && !p.lock.queue_enabled && !p.lock.observer_enabled);
        assert!(!p.auto_release_on_disconnect && !p.log_lock_events);
        assert_eq!(p.default_lock_timeout.as_seconds(), 30.0);
        assert_eq!(p.default_session_timeout.as_seconds(), 60.5);
        assert_eq!(p.expiry_warning_ms, 5_000);
        assert_eq!((p.implicit_sessions, p.max_metadata_bytes), (false, 1024));
        assert_eq!((s.auth, s.allow_insecure), (Some(AuthMode::Required), true));
        assert_eq!(s.cleanup_interval, Duration::from_secs(2));
        assert!(!s.edge.access_log);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.metrics_public, Some(false));
        assert_eq!(
            s.edge.cors,
            Some(CorsOrigins::Only(vec![
                "https://a.example".into(),
                "http://b.example:8080".into()
            ]))
        );
        assert_eq!(
            (
                s.store.as_str(),
                s.data_dir.as_path(),
                s.event_retention_days
            ),
            ("memory", Path::new("/srv/lablink"), 0)
        );
    }

    #[test]
    fn bad_values_name_the_setting_and_source() {
        let cases = [
            ("LABLINK_LOCK_TIMEOUT_SEC", "-5"),
            ("LABLINK_LOCK_TIMEOUT_SEC", "0.0004"),
            ("LABLINK_SESSION_TIMEOUT_SEC", "0.0004"),
            ("LABLINK_MAX_METADATA_BYTES", "-1"),
            ("LABLINK_IMPLICIT_SESSIONS", "sometimes"),
            ("LABLINK_SESSION_TIMEOUT_SEC", "ten"),
            ("LABLINK_ENABLE_LOCK_QUEUE", "maybe"),
            ("LABLINK_CLEANUP_INTERVAL_SEC", "0"),
            ("LABLINK_EVENT_RETENTION_DAYS", "-1"),
            ("LABLINK_AUTH", "maybe"),
            ("LABLINK_ACCESS_LOG", "quiet"),
            ("LABLINK_LOG_FORMAT", "xml"),
            ("LABLINK_CORS_ORIGINS", "lab.example.org"),
            ("LABLINK_CORS_ORIGINS", "https://lab.example.org/app"),
            ("LABLINK_CORS_ORIGINS", "*,https://lab.example.org"),
            ("LABLINK_METRICS_PUBLIC", "loopback"),
        ];
        for (name, value) in cases {
            let sources = Sources {
                dotenv: map(&[(name, value)]),
                ..Sources::default()
            };
            let err = resolve(&sources, None, Path::new("."))
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn the_config_file_refuses_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("lablink-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[server]\nlock_timeout = 3\n").unwrap();
        let err = ConfigFile::read(&path).unwrap_err().to_string();
        assert!(err.contains("\"lock_timeout\""), "{err}");
        std::fs::write(&path, "[[instrument]]\nid = 'x'\n").unwrap();
        let err = ConfigFile::read(&path).unwrap_err().to_string();
        assert!(err.contains("instrument"), "{err}");
        std::fs::write(dir.join(".env"), "LABLINK_BIND=0.0.0.0:1\n# comment\n").unwrap();
        assert_eq!(read_dotenv(&dir).unwrap()["LABLINK_BIND"], "0.0.0.0:1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
