//! The composition root: turns `Settings` into a running server. The only
//! place that names concrete stores; `build` binds (port 0 works, for
//! tests) and `run` serves until the shutdown future completes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::health::StoreFile;
use crate::auth::AuthMode;
use crate::clock::Clock;
use crate::config::Settings;
use crate::drivers::Instruments;
use crate::drivers::registry::RegistryError;
use crate::service::{Retention, Service};
use crate::storage::Store;
use crate::storage::memory::MemoryStore;
use crate::storage::postgres::{PostgresOptions, PostgresStore};
use crate::storage::sqlite::{SqliteOptions, SqliteStore};
use crate::{api, reaper};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Equipment(#[from] RegistryError),
    #[error("store {url:?}: {message}")]
    Store { url: String, message: String },
    #[error(
        "refusing to listen on {addr} without authentication: anyone on the network could take or release any instrument. Create tokens with `lablink token create --user NAME --role admin|operator|observer` and set LABLINK_AUTH=required (the default off loopback), or set LABLINK_ALLOW_INSECURE=true if this network is trusted"
    )]
    Insecure { addr: String },
    #[error(
        "authentication is required (LABLINK_AUTH=required, the default off loopback) but the {store} store cannot keep API tokens, so every request would be refused: use a durable store (--store sqlite://PATH), or LABLINK_AUTH=off on loopback"
    )]
    AuthWithoutTokens { store: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// Opens the store a URL names: `memory`, or `sqlite://PATH` with a
/// relative PATH under `data_dir`.
pub fn open_store(url: &str, data_dir: &Path) -> Result<Arc<dyn Store>, StartError> {
    let failed = |message: String| StartError::Store {
        url: url.into(),
        message,
    };
    let scheme = url.split("://").next().unwrap_or(url);
    match scheme {
        "memory" => Ok(Arc::new(MemoryStore::new())),
        "sqlite" => {
            let options = SqliteOptions::from_url(url, data_dir).map_err(failed)?;
            let store = SqliteStore::open(&options).map_err(|e| failed(e.to_string()))?;
            Ok(Arc::new(store))
        }
        "postgres" | "postgresql" => {
            let options = PostgresOptions::from_url(url).map_err(failed)?;
            let store = PostgresStore::open(&options).map_err(|e| failed(e.to_string()))?;
            Ok(Arc::new(store))
        }
        _ => Err(failed(
            "unknown store; expected memory, sqlite://PATH or postgres://USER@HOST/DATABASE".into(),
        )),
    }
}

/// The options of a `sqlite://` store URL; `None` for another kind of store.
pub fn sqlite_options(url: &str, data_dir: &Path) -> Result<Option<SqliteOptions>, StartError> {
    if !url.starts_with("sqlite://") {
        return Ok(None);
    }
    SqliteOptions::from_url(url, data_dir)
        .map(Some)
        .map_err(|message| StartError::Store {
            url: url.into(),
            message,
        })
}

/// The file a store URL keeps its state in, if it is kept in a file.
pub fn store_file(url: &str, data_dir: &Path) -> Option<std::path::PathBuf> {
    SqliteOptions::from_url(url, data_dir).ok().map(|o| o.path)
}

pub struct Server {
    listener: TcpListener,
    service: Arc<Service>,
    settings: Settings,
    /// The database file of a file store, as opened (for `/readyz`).
    store_file: Option<StoreFile>,
    /// `/metrics` answers without a token with authentication on.
    metrics_public: bool,
}

impl Server {
    pub async fn build(settings: Settings, clock: Arc<dyn Clock>) -> Result<Self, StartError> {
        let instruments =
            Instruments::from_configs(&settings.equipment_configs(), &settings.config_dir)?
                .with_groups(&settings.groups)?;
        if settings.equipment.is_none() {
            tracing::info!(
                "no config file: serving the demo instruments ps_abc123 (sim-psu), scope_123 (sim-scope), load_1 (sim-load)"
            );
        } else if instruments.is_empty() {
            tracing::warn!("the config file lists no [[equipment]]: no instruments to serve");
        }
        // Installed before anything is recorded (the store's batches).
        crate::measure::recorder();
        let store = open_store(&settings.store, &settings.data_dir)?;
        let loopback = is_loopback(&settings.bind).await?;
        let auth = auth_mode(&settings, loopback)?;
        let metrics_public = settings.metrics_public.unwrap_or(loopback);
        // Tokens cannot be made in a store that forgets them at exit.
        if auth == AuthMode::Required && !store.durable() {
            return Err(StartError::AuthWithoutTokens {
                store: store.describe(),
            });
        }
        // Servers sharing a store take their time from it, so they agree
        // on when a lease ends (`clock` is for a store of one's own).
        let clock = store.clock().unwrap_or(clock);
        let service = Arc::new(
            Service::new(
                store.clone(),
                clock,
                Arc::new(instruments),
                settings.policy.clone(),
            )
            .with_auth(auth),
        );
        tracing::info!(auth = ?auth, "authentication");
        let renewed = service
            .recover_after_restart()
            .await
            .map_err(|e| StartError::Store {
                url: settings.store.clone(),
                message: e.to_string(),
            })?;
        if renewed > 0 {
            tracing::info!(
                renewed,
                "leases that ran out while the server was down get one fresh period"
            );
        }
        let listener =
            TcpListener::bind(&settings.bind)
                .await
                .map_err(|source| StartError::Bind {
                    addr: settings.bind.clone(),
                    source,
                })?;
        tracing::info!(store = %store.describe(), "store opened");
        let store_file = store_file(&settings.store, &settings.data_dir)
            .map(|path| StoreFile::at(std::path::absolute(&path).unwrap_or(path)));
        Ok(Self {
            listener,
            service,
            settings,
            store_file,
            metrics_public,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Serves until `shutdown` completes, then stops at once whatever
    /// clients do: waiting acquires are answered with where they stand,
    /// WebSockets are closed with 1001, and requests still running after
    /// `SHUTDOWN_GRACE` are dropped.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop_reaper, reaper_stopped) = watch::channel(false);
        let reaper = reaper::spawn(
            self.service.clone(),
            self.settings.cleanup_interval,
            reaper_stopped,
        );
        let refresher = tokio::spawn(refresh_tokens(
            self.service.clone(),
            stop_reaper.subscribe(),
        ));
        let warner = tokio::spawn(reaper::warn(self.service.clone(), stop_reaper.subscribe()));
        let elsewhere = {
            let (service, stop) = (self.service.clone(), stop_reaper.subscribe());
            tokio::spawn(async move { service.announce_changes_made_elsewhere(stop).await })
        };
        let pruner = tokio::spawn(keep_history(
            self.service.clone(),
            Retention {
                max_age_days: Some(self.settings.event_retention_days),
                max_events: Some(self.settings.event_retention_max_events),
            },
            stop_reaper.subscribe(),
        ));
        self.banner();
        tracing::info!(addr = %self.local_addr(), "LabLink listening");
        let app = api::app(
            self.service.clone(),
            &self.settings.edge,
            self.store_file,
            self.metrics_public,
        )
        .into_make_service_with_connect_info::<SocketAddr>();
        // Answers go out at once rather than waiting to be coalesced
        // (Nagle): lock requests are small and latency matters.
        let listener = api::wire::JsonParseErrors(self.listener).tap_io(|tcp| {
            let _ = tcp.get_ref().set_nodelay(true);
        });
        let (signalled, mut stopping) = watch::channel(false);
        let hub_closer = self.service.clone();
        let graceful = async move {
            shutdown.await;
            let _ = signalled.send(true);
            hub_closer.hub().close();
        };
        let serving = axum::serve(listener, app).with_graceful_shutdown(graceful);
        let served = tokio::select! {
            served = serving => served,
            _ = async {
                let _ = stopping.wait_for(|s| *s).await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "requests still running after the grace period are dropped");
                Ok(())
            }
        };
        let _ = stop_reaper.send(true);
        // Each stops at its next await; one stuck in a store call (a
        // database locked by another process) does not hold up the exit.
        let background = async {
            let _ = reaper.await;
            let _ = pruner.await;
            let _ = warner.await;
            let _ = elsewhere.await;
            let _ = refresher.await;
        };
        if tokio::time::timeout(Duration::from_secs(1), background)
            .await
            .is_err()
        {
            tracing::warn!("background tasks still busy after the grace period are dropped");
        }
        tracing::info!("LabLink stopped");
        served
    }
}

impl Server {
    /// What an operator needs at start-up, in one line: where to point a
    /// browser, where the data is, what is served and whether tokens are
    /// asked for.
    fn banner(&self) {
        let url = format!("http://{}", self.local_addr());
        let data = match &self.store_file {
            Some(file) => file.path().display().to_string(),
            None if self.service.describe_store().starts_with("postgres") => {
                "in PostgreSQL (see store)".into()
            }
            None => "none (the memory store keeps nothing on disk)".into(),
        };
        let instruments: Vec<&str> = self
            .service
            .instruments()
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        let auth = match self.service.auth().mode() {
            AuthMode::Required => "required (API tokens)",
            AuthMode::Off => "off (anyone who can connect may act)",
        };
        // As `api::metrics::routes` decides: a token only when
        // authentication is on and the metrics are not public.
        let metrics_token = match self.service.auth().mode() {
            AuthMode::Required if !self.metrics_public => {
                "needed (a token of any role; LABLINK_METRICS_PUBLIC=true opens it)"
            }
            _ => "not needed",
        };
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            url = %url,
            docs = %format!("{url}/docs"),
            dashboard = %format!("{url}/"),
            metrics = %format!("{url}/metrics"),
            metrics_token,
            data = %data,
            store = %self.service.describe_store(),
            instruments = %if instruments.is_empty() {
                "none".into()
            } else {
                instruments.join(",")
            },
            auth,
            "LabLink started"
        );
    }
}

/// How long in-flight requests (an instrument command mid-way, a client
/// sending its body slowly) may take to finish after a shutdown signal;
/// background tasks then get one more second, so the exit stays within 5 s.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Whether `bind` only accepts connections from this machine. An address
/// that cannot be resolved is refused here, before anything is decided
/// from it.
async fn is_loopback(bind: &str) -> Result<bool, StartError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(bind)
        .await
        .map_err(|source| StartError::Bind {
            addr: bind.into(),
            source,
        })?
        .collect();
    Ok(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()))
}

/// Authentication is required off loopback unless said otherwise; off
/// loopback without it, start-up is refused unless explicitly allowed.
fn auth_mode(settings: &Settings, loopback: bool) -> Result<AuthMode, StartError> {
    let mode = settings.auth.unwrap_or(if loopback {
        AuthMode::Off
    } else {
        AuthMode::Required
    });
    if mode == AuthMode::Off && !loopback && !settings.allow_insecure {
        return Err(StartError::Insecure {
            addr: settings.bind.clone(),
        });
    }
    Ok(mode)
}

/// Notices token changes made by other processes (`lablink token revoke`).
async fn refresh_tokens(service: Arc<Service>, mut shutdown: watch::Receiver<bool>) {
    if service.auth().mode() == AuthMode::Off {
        return;
    }
    let mut every = tokio::time::interval(crate::auth::REFRESH_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {
                if let Err(e) = service.auth().refresh().await {
                    tracing::warn!(error = %e, "cannot check for token changes");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// How often the history is pruned: often enough that, under sustained
/// load, each round deletes a few steps' worth rather than a backlog.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Brings the analytics rollups up to date, then prunes the history (what
/// they summed may go), at start and then every `PRUNE_EVERY`, until shut
/// down.
async fn keep_history(
    service: Arc<Service>,
    retention: Retention,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // Counted from the round's start: a clock that moves while it runs
        // (a manual one in tests, a long first summing) is not missed.
        let next = service
            .clock()
            .now()
            .plus_millis(PRUNE_EVERY.as_millis() as u64);
        match service.roll_up_history().await {
            Ok(0) => {}
            Ok(events) => tracing::debug!(events, "summed events into the analytics rollups"),
            Err(e) => tracing::error!(error = %e, "summing the analytics rollups failed"),
        }
        let pruned = if retention.limits() {
            service.prune_history(retention).await
        } else {
            Ok(0)
        };
        match pruned {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(
                pruned,
                days = retention.max_age_days,
                max_events = retention.max_events,
                "pruned old events"
            ),
            Err(e) => tracing::error!(error = %e, "pruning old events failed"),
        }
        tokio::select! {
            _ = service.clock().sleep_until(next) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// SIGINT and SIGTERM, listened for from the moment this is made (a
/// signal that arrives before anyone awaits `next` is not lost, and does not
/// kill the process).
pub struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn listen() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Completes at the next signal; returns its name.
    pub async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
