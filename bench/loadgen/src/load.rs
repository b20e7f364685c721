//! The load itself: N concurrent keep-alive clients drive a running server
//! over HTTP for a fixed time; their latencies are merged into requests per
//! second and percentiles. Measurement lives here and in
//! `docs/benchmarks.md`, never in the test suite.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Acquire and release on the client's own instrument.
    Cycle,
    /// Lock status reads.
    Status,
    /// Every client on one instrument, through the queue.
    Contended,
    /// Session create and end.
    Sessions,
    /// Instrument commands under a held lock.
    Commands,
    /// Sessions created and never ended (for memory per idle session).
    OpenSessions,
    /// Hand-off lateness: a 250 ms lease runs out with a waiter queued (via
    /// `wait_seconds`); measures how long after the deadline the waiter has
    /// the lock. Reported percentiles are lateness, not request latency.
    Expiry,
    /// Mixed traffic for a long time, reported a slice at a time (see
    /// `soak.rs`).
    Soak,
    /// A lock group of three instruments (each client its own three)
    /// acquired and released by its `group_id`.
    Group,
    /// A pool of the first ten instruments shared by every client: acquire
    /// any one (queued, `wait_seconds`), release it.
    Pool,
}

/// How many instruments the `pool` scenario shares.
const POOL_SIZE: usize = 10;

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub url: String,
    pub scenario: Scenario,
    pub clients: usize,
    pub duration: Duration,
    /// Skip this many instruments of the server's list (so two runs at once
    /// use different instruments).
    pub offset: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    /// What the percentiles measure.
    pub measures: &'static str,
    pub clients: usize,
    pub seconds: f64,
    pub requests: u64,
    pub errors: u64,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} clients={} seconds={:.1} requests={} errors={} rps={:.0} {}: p50={:.3}ms p99={:.3}ms max={:.3}ms",
            self.scenario,
            self.clients,
            self.seconds,
            self.requests,
            self.errors,
            self.requests_per_second,
            self.measures,
            self.p50_ms,
            self.p99_ms,
            self.max_ms
        )
    }
}

/// One client's tally: latencies in microseconds and errors.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) micros: Vec<u32>,
    pub(crate) errors: u64,
}

/// One keep-alive HTTP/1.1 connection (hyper's client connection: no pool,
/// no URL parsing per request), so the load tool spends as little of the
/// shared CPU as it can.
pub(crate) struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
    pub(crate) tally: Tally,
}

impl Client {
    pub(crate) async fn connect(addr: &str) -> Result<Self, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            host: addr.to_owned(),
            tally: Tally::default(),
        })
    }

    /// Sends one request, timing it until the whole body is in; `None` on
    /// any failure (counted). The body comes back unparsed: parsing JSON
    /// the load tool does not need would take CPU from the server.
    async fn send(&mut self, method: Method, path: &str, body: Option<&Value>) -> Option<Bytes> {
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.host)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(bytes));
        let started = Instant::now();
        let result = async {
            let request = request.map_err(|e| e.to_string())?;
            self.sender.ready().await.map_err(|e| e.to_string())?;
            let response = self
                .sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let ok = response.status().is_success();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if ok {
                Ok(body)
            } else {
                Err(format!("status with body {body:?}"))
            }
        }
        .await;
        self.tally
            .micros
            .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
        match result {
            Ok(body) => Some(body),
            Err(_) => {
                self.tally.errors += 1;
                None
            }
        }
    }

    pub(crate) async fn post(&mut self, path: &str, body: Value) -> Option<Bytes> {
        self.send(Method::POST, &format!("/api{path}"), Some(&body))
            .await
    }

    pub(crate) async fn get(&mut self, path: &str) -> Option<Bytes> {
        self.send(Method::GET, &format!("/api{path}"), None).await
    }

    pub(crate) async fn delete(&mut self, path: &str) -> Option<Bytes> {
        self.send(Method::DELETE, &format!("/api{path}"), None)
            .await
    }

    pub(crate) async fn new_session(&mut self) -> Result<String, String> {
        let created = self
            .post(
                "/locks/sessions/create",
                json!({"client_name": "lablink bench", "timeout_seconds": 0}),
            )
            .await
            .ok_or("cannot create a session")?;
        let created: Value = serde_json::from_slice(&created).map_err(|e| e.to_string())?;
        Ok(created["session_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }
}

pub(crate) fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

async fn run_client(
    mut client: Client,
    scenario: Scenario,
    equipment: String,
    several: Vec<String>,
    until: Instant,
) -> Result<Tally, String> {
    let session = client.new_session().await?;
    let lock = json!({"equipment_id": equipment, "session_id": session, "timeout_seconds": 60});
    let release = json!({"equipment_id": equipment, "session_id": session});
    if scenario == Scenario::Commands {
        client
            .post("/locks/acquire", lock.clone())
            .await
            .ok_or("cannot lock for commands")?;
        client.tally = Tally::default();
    }
    let mut volts = 0.0;
    let waiter = match scenario {
        Scenario::Expiry => Some(client.new_session().await?),
        _ => None,
    };
    while Instant::now() < until {
        match scenario {
            Scenario::Expiry => {
                let waiter = waiter.as_deref().unwrap_or_default();
                let short = json!({"equipment_id": equipment, "session_id": session, "timeout_seconds": 0.25});
                let Some(held) = client.post("/locks/acquire", short).await else {
                    continue;
                };
                let held: Value = serde_json::from_slice(&held).unwrap_or_default();
                let Some(deadline) = held["lock"]["expires_at"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                else {
                    continue;
                };
                let wait = json!({"equipment_id": equipment, "session_id": waiter, "queue_if_busy": true, "wait_seconds": 10, "timeout_seconds": 60});
                let before = client.tally.micros.len();
                let granted = client.post("/locks/acquire", wait).await;
                // Replace the request's latency with the hand-off's lateness.
                client.tally.micros.truncate(before);
                let now = Utc::now();
                let got = granted
                    .and_then(|g| serde_json::from_slice::<Value>(&g).ok())
                    .is_some_and(|g| g["status"] == "locked");
                if got {
                    let late_ms =
                        (now.timestamp_millis() - deadline.timestamp_millis()).max(0) as u32;
                    client.tally.micros.push(late_ms.saturating_mul(1000));
                    let release = json!({"equipment_id": equipment, "session_id": waiter});
                    let before = client.tally.micros.len();
                    client.post("/locks/release", release).await;
                    client.tally.micros.truncate(before);
                } else {
                    client.tally.errors += 1;
                }
            }
            Scenario::OpenSessions => {
                client
                    .post(
                        "/locks/sessions/create",
                        json!({"client_name": "idle", "timeout_seconds": 0}),
                    )
                    .await;
            }
            Scenario::Cycle => {
                client.post("/locks/acquire", lock.clone()).await;
                client.post("/locks/release", release.clone()).await;
            }
            Scenario::Group | Scenario::Pool => {
                let ask = if scenario == Scenario::Group {
                    json!({"equipment_ids": several, "session_id": session, "timeout_seconds": 60})
                } else {
                    json!({"any_of": {"equipment_ids": several}, "session_id": session,
                        "queue_if_busy": true, "wait_seconds": 30, "timeout_seconds": 60})
                };
                let answer = client.post("/locks/acquire", ask).await;
                let answer: Value = answer
                    .and_then(|a| serde_json::from_slice(&a).ok())
                    .unwrap_or_default();
                match answer["group_id"].as_str() {
                    Some(group) => {
                        let release = json!({"group_id": group, "session_id": session});
                        client.post("/locks/release", release).await;
                    }
                    // The HTTP floor answers without a group: release as
                    // for one instrument, for the same number of requests.
                    None => {
                        client.post("/locks/release", release.clone()).await;
                    }
                }
            }
            Scenario::Status => {
                client.get(&format!("/locks/status/{equipment}")).await;
            }
            Scenario::Contended => {
                let queued = json!({"equipment_id": equipment, "session_id": session, "queue_if_busy": true, "timeout_seconds": 60});
                let answer = client.post("/locks/acquire", queued).await;
                let granted = answer
                    .and_then(|a| serde_json::from_slice::<Value>(&a).ok())
                    .is_some_and(|a| a["status"] == "locked" || a["status"] == "refreshed");
                if granted {
                    client.post("/locks/release", release.clone()).await;
                }
            }
            Scenario::Sessions => {
                let created = client
                    .post(
                        "/locks/sessions/create",
                        json!({"client_name": "bench", "timeout_seconds": 600}),
                    )
                    .await;
                let created = created.and_then(|c| serde_json::from_slice::<Value>(&c).ok());
                if let Some(id) = created.as_ref().and_then(|c| c["session_id"].as_str()) {
                    let path = format!("/locks/sessions/{id}");
                    client.delete(&path).await;
                }
            }
            // Run by `soak::run`, never here.
            Scenario::Soak => break,
            Scenario::Commands => {
                volts = if volts >= 20.0 { 0.0 } else { volts + 1.0 };
                let command = json!({"command_id": "bench", "action": "set_voltage", "parameters": {"voltage": volts}, "session_id": session});
                client
                    .post(&format!("/equipment/{equipment}/command"), command)
                    .await;
            }
        }
    }
    Ok(client.tally)
}

/// Runs the scenario and returns the merged report.
pub async fn run(config: BenchConfig) -> Result<Report, String> {
    let addr = config
        .url
        .trim_end_matches('/')
        .strip_prefix("http://")
        .ok_or("the URL must start with http://")?
        .to_owned();
    let mut probe = Client::connect(&addr).await?;
    let equipment: Vec<String> = match probe.get("/equipment/list").await {
        Some(list) => {
            let list: Value = serde_json::from_slice(&list).map_err(|e| e.to_string())?;
            list["equipment"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["equipment_id"].as_str().map(String::from))
                .collect()
        }
        // The HTTP floor (../shared/tools/http-floor) has no equipment list:
        // it answers the lock routes for any id.
        None => {
            eprintln!("no equipment list: using eq_0, eq_1, ... (the HTTP floor)");
            (0..config.clients + config.offset)
                .map(|i| format!("eq_{i}"))
                .collect()
        }
    };
    if equipment.is_empty() {
        return Err("the server has no equipment".into());
    }
    if matches!(config.scenario, Scenario::Cycle | Scenario::Commands)
        && equipment.len() < config.clients
    {
        eprintln!(
            "warning: {} clients share {} instruments, so some requests will be refused; serve bench/lab.toml for one each",
            config.clients,
            equipment.len()
        );
    }
    let mut clients = Vec::new();
    for _ in 0..config.clients {
        clients.push(Client::connect(&addr).await?);
    }
    let started = Instant::now();
    let until = started + config.duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let target = match config.scenario {
                Scenario::Contended => equipment[0].clone(),
                _ => equipment[(config.offset + i) % equipment.len()].clone(),
            };
            let several: Vec<String> = match config.scenario {
                Scenario::Group => (0..3)
                    .map(|k| equipment[(config.offset + 3 * i + k) % equipment.len()].clone())
                    .collect(),
                Scenario::Pool => equipment.iter().take(POOL_SIZE).cloned().collect(),
                _ => Vec::new(),
            };
            tokio::spawn(run_client(client, config.scenario, target, several, until))
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let tally = task.await.map_err(|e| e.to_string())??;
        all.extend(tally.micros);
        errors += tally.errors;
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok(Report {
        scenario: format!("{:?}", config.scenario).to_lowercase(),
        measures: if config.scenario == Scenario::Expiry {
            "hand-off lateness"
        } else {
            "latency"
        },
        clients: config.clients,
        seconds,
        requests: all.len() as u64,
        errors,
        requests_per_second: all.len() as f64 / seconds,
        p50_ms: percentile(&all, 50.0),
        p99_ms: percentile(&all, 99.0),
        max_ms: all.last().copied().unwrap_or(0) as f64 / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let micros: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile(&micros, 50.0), 50.0);
        assert_eq!(percentile(&micros, 99.0), 99.0);
        assert_eq!(percentile(&micros, 100.0), 100.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }
}
