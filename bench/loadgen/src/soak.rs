//! The soak: hours of a lab's mixed traffic against one server, reported a
//! slice at a time so that drift shows (latency creeping up, memory or
//! files growing).
//!
//! `--clients` clients (default 32) each loop on their own instrument:
//! acquire, a command, a status read, release; every 25th round one takes
//! a 0.2 s lease on a spare instrument (instruments from `--clients` on)
//! and leaves it to expire; every 50th it ends its session and opens a new
//! one; every 100th it opens a session with a 1 s lease, locks a spare
//! instrument and abandons both, for the reaper to end. Beside them,
//! `--subscribers` WebSockets (default 200) listen: one in ten to
//! everything, the others to one instrument each. Every `--interval`
//! seconds a line: requests, errors, p50/p99/max latency, the server's RSS
//! (`--server-pid`), the database and WAL sizes (`--db`), live events
//! received and subscribers dropped as too slow (`lagged`).

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::load::{Client, percentile};

#[derive(Clone, Debug)]
pub struct SoakConfig {
    pub url: String,
    pub clients: usize,
    pub subscribers: usize,
    pub duration: Duration,
    pub interval: Duration,
    pub server_pid: Option<u32>,
    pub db: Option<std::path::PathBuf>,
}

/// One slice of the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Slice {
    pub at_seconds: f64,
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub rss_mib: Option<f64>,
    pub db_mb: Option<f64>,
    pub wal_mb: Option<f64>,
    pub events_received: u64,
    pub lagged: u64,
}

impl std::fmt::Display for Slice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        write!(
            f,
            "| {:.0} | {} | {} | {:.2} | {:.2} | {:.1} | {} | {} | {} | {} | {} |",
            self.at_seconds,
            self.requests,
            self.errors,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            opt(self.rss_mib),
            opt(self.db_mb),
            opt(self.wal_mb),
            self.events_received,
            self.lagged
        )
    }
}

pub const HEADER: &str = "| s | requests | errors | p50 ms | p99 ms | max ms | RSS MiB | db MB | wal MB | events to subscribers | lagged |\n|---|---|---|---|---|---|---|---|---|---|---|";

/// What every task adds to, emptied at each slice.
#[derive(Default)]
struct Shared {
    micros: std::sync::Mutex<Vec<u32>>,
    errors: AtomicU64,
    received: AtomicU64,
    lagged: AtomicU64,
}

pub async fn run(config: SoakConfig) -> Result<Vec<Slice>, String> {
    let addr = config
        .url
        .trim_end_matches('/')
        .strip_prefix("http://")
        .ok_or("the URL must start with http://")?
        .to_owned();
    let mut probe = Client::connect(&addr).await?;
    let list = probe
        .get("/equipment/list")
        .await
        .ok_or("no equipment list")?;
    let list: Value = serde_json::from_slice(&list).map_err(|e| e.to_string())?;
    let equipment: Vec<String> = list["equipment"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["equipment_id"].as_str().map(String::from))
        .collect();
    if equipment.len() < config.clients * 2 {
        return Err(format!(
            "the soak needs two instruments per client ({}), the server has {}: serve bench/lab.toml",
            config.clients * 2,
            equipment.len()
        ));
    }
    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let until = started + config.duration;
    let mut tasks = Vec::new();
    for i in 0..config.subscribers {
        let subscription = if i.is_multiple_of(10) {
            json!({"type": "subscribe", "all": true})
        } else {
            json!({"type": "subscribe", "equipment_ids": [equipment[i % equipment.len()]]})
        };
        tasks.push(tokio::spawn(subscribe(
            format!("ws://{addr}/api/ws"),
            subscription,
            shared.clone(),
            until,
        )));
    }
    for i in 0..config.clients {
        let client = Client::connect(&addr).await?;
        let own = equipment[i].clone();
        let spare = equipment[config.clients + i].clone();
        tasks.push(tokio::spawn(mixed(
            client,
            own,
            spare,
            shared.clone(),
            until,
        )));
    }
    let mut slices = Vec::new();
    println!("{HEADER}");
    let mut next = started + config.interval;
    while next <= until + Duration::from_millis(10) {
        tokio::time::sleep_until(next.into()).await;
        let slice = take_slice(&shared, &config, started.elapsed().as_secs_f64());
        println!("{slice}");
        slices.push(slice);
        next += config.interval;
    }
    for task in tasks {
        let _ = task.await;
    }
    Ok(slices)
}

fn take_slice(shared: &Shared, config: &SoakConfig, at: f64) -> Slice {
    let mut micros = std::mem::take(&mut *shared.micros.lock().unwrap_or_else(|p| p.into_inner()));
    micros.sort_unstable();
    let mb = |path: std::path::PathBuf| std::fs::metadata(path).ok().map(|m| m.len() as f64 / 1e6);
    Slice {
        at_seconds: at,
        requests: micros.len() as u64,
        errors: shared.errors.swap(0, Ordering::Relaxed),
        p50_ms: percentile(&micros, 50.0),
        p99_ms: percentile(&micros, 99.0),
        max_ms: micros.last().copied().unwrap_or(0) as f64 / 1000.0,
        rss_mib: config.server_pid.and_then(rss_mib),
        db_mb: config.db.clone().and_then(mb),
        wal_mb: config.db.as_ref().and_then(|db| {
            let mut wal = db.clone().into_os_string();
            wal.push("-wal");
            mb(wal.into())
        }),
        events_received: shared.received.swap(0, Ordering::Relaxed),
        lagged: shared.lagged.swap(0, Ordering::Relaxed),
    }
}

/// The resident set of process `pid`, from /proc (Linux).
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// One WebSocket listening until `until`; a `lagged` disconnect is counted
/// and the subscriber reconnects where it left off.
async fn subscribe(url: String, subscription: Value, shared: Arc<Shared>, until: Instant) {
    let mut resume: Option<u64> = None;
    while Instant::now() < until {
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut message = subscription.clone();
        if let Some(seq) = resume {
            message["resume_from"] = json!(seq);
        }
        if ws.send(Message::text(message.to_string())).await.is_err() {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        loop {
            let next = tokio::time::timeout_at(until.into(), ws.next()).await;
            let Ok(Some(Ok(Message::Text(text)))) = next else {
                if next.is_err() {
                    let _ = ws.close(None).await;
                    return;
                }
                break;
            };
            // Only the few fields needed: the tool must not eat the CPU.
            if text.contains("\"type\":\"lagged\"") {
                shared.lagged.fetch_add(1, Ordering::Relaxed);
                let lagged: Value = serde_json::from_str(&text).unwrap_or_default();
                resume = lagged["resume_from"].as_u64();
                break;
            }
            if text.contains("\"seq\"") {
                shared.received.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One client's mixed loop (see the module's comment).
async fn mixed(
    mut client: Client,
    own: String,
    spare: String,
    shared: Arc<Shared>,
    until: Instant,
) {
    let Ok(mut session) = client.new_session().await else {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut round: u64 = 0;
    let mut volts = 0.0;
    while Instant::now() < until {
        round += 1;
        let lock = json!({"equipment_id": own, "session_id": session, "timeout_seconds": 60});
        let locked = client.post("/locks/acquire", lock).await;
        let token = locked
            .and_then(|l| serde_json::from_slice::<Value>(&l).ok())
            .and_then(|l| l["lock"]["fencing_token"].as_u64());
        volts = if volts >= 20.0 { 0.0 } else { volts + 1.0 };
        let command = json!({"command_id": "soak", "action": "set_voltage", "parameters": {"voltage": volts}, "session_id": session, "fencing_token": token});
        client
            .post(&format!("/equipment/{own}/command"), command)
            .await;
        client.get(&format!("/locks/status/{own}")).await;
        let release = json!({"equipment_id": own, "session_id": session});
        client.post("/locks/release", release).await;
        if round.is_multiple_of(25) {
            // A short lease left to run out (or refreshed, if still held).
            let lease = json!({"equipment_id": spare, "session_id": session, "timeout_seconds": 0.2, "queue_if_busy": true});
            client.post("/locks/acquire", lease).await;
        }
        if round.is_multiple_of(50) {
            client.delete(&format!("/locks/sessions/{session}")).await;
            match client.new_session().await {
                Ok(new) => session = new,
                Err(_) => break,
            }
        }
        if round.is_multiple_of(100) {
            // A client that vanishes: its session and lock end on their own.
            let created = client
                .post(
                    "/locks/sessions/create",
                    json!({"client_name": "soak (abandoned)", "timeout_seconds": 1}),
                )
                .await
                .and_then(|c| serde_json::from_slice::<Value>(&c).ok());
            if let Some(id) = created.as_ref().and_then(|c| c["session_id"].as_str()) {
                let lock = json!({"equipment_id": spare, "session_id": id, "timeout_seconds": 30, "queue_if_busy": true});
                client.post("/locks/acquire", lock).await;
            }
        }
        let mut micros = std::mem::take(&mut client.tally.micros);
        shared
            .micros
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append(&mut micros);
        shared
            .errors
            .fetch_add(std::mem::take(&mut client.tally.errors), Ordering::Relaxed);
    }
    client.delete(&format!("/locks/sessions/{session}")).await;
}
