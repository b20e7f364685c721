//! `GET /metrics` scraped from the real binary and read with a Prometheus
//! text parser: the counters, gauges and histograms move as locks are
//! taken, waited for, handed on and released, commands run and WebSockets
//! come and go; labels are route templates, never raw paths or session
//! ids; and whether a scrape needs a token is the setting's to say.

use futures_util::SinkExt;
use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue};
use reqwest::StatusCode;
use serde_json::json;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::auth::create_token;
use crate::helpers::{TestApp, start_binary};

/// A `lablink serve` child, stopped when dropped.
struct Binary {
    child: Child,
    app: TestApp,
}

impl Binary {
    fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let (child, addr, _) = start_binary(dir, args, env);
        // A server bound to every interface is reached on loopback.
        let addr = addr.replace("0.0.0.0", "127.0.0.1");
        Self {
            child,
            app: TestApp::at(&format!("http://{addr}")),
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One parsed scrape (`openmetrics-parser`: its grammar takes any label
/// value, route templates' braces included).
struct Metrics(MetricsExposition<PrometheusType, PrometheusValue>);

impl Metrics {
    /// The samples of `name` whose labels include `labels`.
    fn samples<'a>(
        &'a self,
        name: &str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a PrometheusValue> + 'a {
        self.0
            .families
            .get(name)
            .into_iter()
            .flat_map(|family| family.iter_samples())
            .filter(move |sample| {
                let set = sample.get_labelset().unwrap();
                labels
                    .iter()
                    .all(|(k, v)| set.get_label_value(k) == Some(*v))
            })
            .map(|sample| &sample.value)
    }

    /// The sum of the counters or gauges of `name` whose labels include
    /// `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels)
            .map(|value| match value {
                PrometheusValue::Counter(c) => c.value.as_f64(),
                PrometheusValue::Gauge(v) => v.as_f64(),
                other => panic!("{name} is not a counter or gauge: {other:?}"),
            })
            .sum()
    }

    /// The observation count and sum of the histograms of `name` whose
    /// labels include `labels`.
    fn observed(&self, name: &str, labels: &[(&str, &str)]) -> (u64, f64) {
        self.samples(name, labels)
            .map(|value| match value {
                PrometheusValue::Histogram(h) => {
                    assert!(!h.buckets.is_empty(), "{name} has buckets");
                    (
                        h.count.unwrap_or(0),
                        h.sum.as_ref().map_or(0.0, |s| s.as_f64()),
                    )
                }
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .fold((0, 0.0), |(n, s), (dn, ds)| (n + dn, s + ds))
    }

    /// Every value the label `label` takes on `name`.
    fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self.0.families[name]
            .iter_samples()
            .filter_map(|s| {
                let set = s.get_labelset().unwrap();
                set.get_label_value(label).map(str::to_owned)
            })
            .collect();
        values.sort();
        values.dedup();
        values
    }

    /// Whether `name` is a histogram with buckets.
    fn is_histogram(&self, name: &str) -> bool {
        self.0.families.get(name).is_some_and(|f| {
            f.family_type == PrometheusType::Histogram
                && f.iter_samples().all(
                    |s| matches!(&s.value, PrometheusValue::Histogram(h) if !h.buckets.is_empty()),
                )
        })
    }
}

async fn scrape_as(app: &TestApp) -> (StatusCode, Option<Metrics>) {
    let response = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    let status = response.status();
    if status != StatusCode::OK {
        return (status, None);
    }
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let parsed = parse_prometheus(&text).unwrap_or_else(|e| panic!("{e:?}:\n{text}"));
    (status, Some(Metrics(parsed)))
}

async fn scrape(app: &TestApp) -> Metrics {
    let (status, metrics) = scrape_as(app).await;
    assert_eq!(status, StatusCode::OK);
    metrics.unwrap()
}

/// Scrapes until `done` holds (bounded: a metric that never moves fails).
async fn scrape_until(app: &TestApp, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = scrape(app).await;
        if done(&metrics) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const PSU: &str = "ps_abc123";

#[tokio::test]
async fn metrics_move_as_locks_commands_and_websockets_do() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(
        dir.path(),
        &["--bind", "127.0.0.1:0", "--store", "memory"],
        &[],
    );
    let app = &server.app;

    let idle = scrape(app).await;
    assert_eq!(idle.value("lablink_sessions_live", &[]), 0.0);
    assert_eq!(idle.value("lablink_state_fresh", &[]), 1.0);
    // Every configured instrument is there, idle; no other.
    assert_eq!(
        idle.label_values("lablink_queue_length", "equipment_id"),
        ["load_1", "ps_abc123", "scope_123"]
    );
    assert_eq!(idle.value("lablink_locks_held", &[]), 0.0);
    assert_eq!(idle.value("lablink_websocket_subscribers", &[]), 0.0);
    assert_eq!(idle.value("lablink_websocket_lagged_total", &[]), 0.0);
    // Shown before anything happened to them.
    for histogram in [
        "lablink_store_batch_units",
        "lablink_expiry_handoff_lateness_seconds",
    ] {
        assert!(idle.is_histogram(histogram), "{histogram} has buckets");
    }

    // One holds the PSU, another waits for it, a third observes the scope.
    let (a, b, c) = (
        app.session(600.0).await,
        app.session(600.0).await,
        app.session(600.0).await,
    );
    assert_eq!(app.acquire(PSU, &a, json!({})).await.0, StatusCode::OK);
    let (status, queued) = app.acquire(PSU, &b, json!({"queue_if_busy": true})).await;
    assert_eq!(
        (status, queued["status"].as_str()),
        (StatusCode::OK, Some("queued")),
        "{queued}"
    );
    let (status, _) = app
        .acquire("scope_123", &c, json!({"lock_mode": "observer"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let busy = scrape(app).await;
    let held = |m: &Metrics, id: &str, mode: &str| {
        m.value(
            "lablink_locks_held",
            &[("equipment_id", id), ("mode", mode)],
        )
    };
    assert_eq!(busy.value("lablink_sessions_live", &[]), 3.0);
    assert_eq!(held(&busy, PSU, "exclusive"), 1.0);
    assert_eq!(held(&busy, "scope_123", "observer"), 1.0);
    assert_eq!(held(&busy, "scope_123", "exclusive"), 0.0);
    assert_eq!(
        busy.value("lablink_queue_length", &[("equipment_id", PSU)]),
        1.0
    );
    assert_eq!(busy.value("lablink_locks_held", &[]), 2.0);

    // Commands: one that runs, one the lock rules refuse, one unknown.
    assert_eq!(
        app.command(PSU, Some(&a), "get_status", json!({})).await.0,
        StatusCode::OK
    );
    let (status, _) = app
        .command(PSU, Some(&b), "set_voltage", json!({"voltage": 1.0}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.command(PSU, Some(&a), "brew_tea", json!({})).await.0,
        StatusCode::BAD_REQUEST
    );
    let commanded = scrape(app).await;
    let commands = |m: &Metrics, class: &str, outcome: &str| {
        m.value(
            "lablink_commands_total",
            &[
                ("equipment_id", PSU),
                ("class", class),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(commands(&commanded, "observe", "ok"), 1.0);
    assert_eq!(commands(&commanded, "control", "refused"), 1.0);
    assert_eq!(commands(&commanded, "unknown", "invalid"), 1.0);
    assert_eq!(
        commanded
            .observed("lablink_command_duration_seconds", &[("equipment_id", PSU)])
            .0,
        3
    );

    // The holder leaves: the waiter is granted, after a measured wait.
    assert_eq!(app.release(PSU, &a, false).await.0, StatusCode::OK);
    let handed = scrape(app).await;
    assert_eq!(held(&handed, PSU, "exclusive"), 1.0, "now b's");
    assert_eq!(
        handed.value("lablink_queue_length", &[("equipment_id", PSU)]),
        0.0
    );
    assert_eq!(
        handed
            .observed(
                "lablink_lock_wait_seconds",
                &[("equipment_id", PSU), ("mode", "exclusive")]
            )
            .0,
        1
    );
    assert_eq!(app.release(PSU, &b, false).await.0, StatusCode::OK);
    assert_eq!(app.release("scope_123", &c, false).await.0, StatusCode::OK);
    assert_eq!(
        app.delete(&format!("/api/locks/sessions/{a}")).await.0,
        StatusCode::OK
    );
    let released = scrape(app).await;
    assert_eq!(released.value("lablink_locks_held", &[]), 0.0);
    assert_eq!(released.value("lablink_sessions_live", &[]), 2.0);
    let transactions = |kind| {
        let (count, _) = released.observed("lablink_store_transaction_seconds", &[("kind", kind)]);
        count
    };
    assert!(transactions("write") >= 10, "one a write request at least");
    assert!(transactions("read") >= 1, "the scrapes' reads");
    let (batches, units) = released.observed("lablink_store_batch_units", &[]);
    assert!(
        batches >= 10 && units >= batches as f64,
        "{batches} {units}"
    );

    // A WebSocket subscriber is counted while it is connected.
    let url = format!("{}/api/ws", app.base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text(
        json!({"type": "subscribe", "all": true}).to_string(),
    ))
    .await
    .unwrap();
    scrape_until(app, "one subscriber", |m| {
        m.value("lablink_websocket_subscribers", &[]) == 1.0
    })
    .await;
    ws.close(None).await.unwrap();
    drop(ws);
    scrape_until(app, "no subscriber", |m| {
        m.value("lablink_websocket_subscribers", &[]) == 0.0
    })
    .await;

    // Requests are counted by route template and status: no session id,
    // no instrument id, no unknown path is ever a label value.
    assert_eq!(
        app.get(&format!("/api/locks/status/{PSU}")).await.0,
        StatusCode::OK
    );
    assert_eq!(app.get("/no/such/page").await.0, StatusCode::NOT_FOUND);
    let m = scrape(app).await;
    let requests = |route: &str, status: &str| {
        m.value(
            "lablink_http_requests_total",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("/api/locks/sessions/create", "200"), 3.0);
    assert_eq!(requests("/api/locks/acquire", "200"), 3.0);
    assert_eq!(
        requests("/api/equipment/{equipment_id}/command", "403"),
        1.0
    );
    assert_eq!(requests("/api/locks/sessions/{session_id}", "200"), 1.0);
    assert_eq!(requests("/api/locks/status/{equipment_id}", "200"), 1.0);
    assert_eq!(requests("<unmatched>", "404"), 1.0);
    let routes = m.label_values("lablink_http_requests_total", "route");
    for route in &routes {
        assert!(
            route == "<unmatched>" || route.starts_with('/'),
            "{route} is a route template"
        );
        for raw in [&a, &b, &c, &PSU.to_owned(), &"/no/such/page".to_owned()] {
            assert!(!route.contains(raw.as_str()), "{route} holds {raw}");
        }
    }
    assert!(routes.contains(&"/metrics".to_owned()), "{routes:?}");
    for histogram in [
        "lablink_http_request_duration_seconds",
        "lablink_store_transaction_seconds",
        "lablink_lock_wait_seconds",
        "lablink_command_duration_seconds",
    ] {
        assert!(m.is_histogram(histogram), "{histogram} has buckets");
    }
    assert_eq!(
        m.observed(
            "lablink_http_request_duration_seconds",
            &[("route", "/api/locks/acquire"), ("method", "POST")]
        )
        .0,
        3
    );
}

#[tokio::test]
async fn an_expired_lease_handed_to_a_waiter_is_measured_late_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(
        dir.path(),
        &["--bind", "127.0.0.1:0", "--store", "memory"],
        &[],
    );
    let app = &server.app;
    let (a, b) = (app.session(600.0).await, app.session(600.0).await);
    let (status, _) = app.acquire(PSU, &a, json!({"timeout_seconds": 0.3})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, queued) = app.acquire(PSU, &b, json!({"queue_if_busy": true})).await;
    assert_eq!(queued["status"], "queued", "{queued}");
    // The reaper ends a's lease at its deadline and hands the PSU to b.
    let m = scrape_until(app, "the hand-off after the expiry", |m| {
        m.observed("lablink_expiry_handoff_lateness_seconds", &[]).0 == 1
    })
    .await;
    let (waits, waited) = m.observed(
        "lablink_lock_wait_seconds",
        &[("equipment_id", PSU), ("mode", "exclusive")],
    );
    assert_eq!(waits, 1);
    assert!(waited > 0.0, "b waited until a's lease ended: {waited}");
    let (_, lateness) = m.observed("lablink_expiry_handoff_lateness_seconds", &[]);
    assert!(lateness >= 0.0, "{lateness}");
}

#[tokio::test]
async fn whether_metrics_need_a_token_is_a_setting_open_on_loopback_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let viewer = create_token(dir.path(), "vera", "observer");
    let store = format!("sqlite://{}/lablink.db", dir.path().display());
    let secured = |bind: &str, env: &'static [(&'static str, &'static str)]| {
        Binary::start(
            dir.path(),
            &["--bind", bind, "--store", &store],
            &[&[("LABLINK_AUTH", "required")], env].concat(),
        )
    };

    // Authentication on, loopback, nothing said: open.
    let server = secured("127.0.0.1:0", &[]);
    assert_eq!(scrape_as(&server.app).await.0, StatusCode::OK);
    let (status, _) = server.app.get("/api/locks/all").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the API still needs a token"
    );
    drop(server);

    // Said so: a token of any role is needed.
    let server = secured("127.0.0.1:0", &[("LABLINK_METRICS_PUBLIC", "false")]);
    let (status, _) = server.app.get("/metrics").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        scrape_as(&server.app.as_user("llk_not_a_token")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, metrics) = scrape_as(&server.app.as_user(&viewer)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(metrics.unwrap().value("lablink_state_fresh", &[]), 1.0);
    drop(server);

    // Off loopback, nothing said: a token is needed...
    let server = secured("0.0.0.0:0", &[]);
    assert_eq!(scrape_as(&server.app).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        scrape_as(&server.app.as_user(&viewer)).await.0,
        StatusCode::OK
    );
    drop(server);
    // ... unless the operator opens it.
    let server = secured("0.0.0.0:0", &[("LABLINK_METRICS_PUBLIC", "true")]);
    assert_eq!(scrape_as(&server.app).await.0, StatusCode::OK);
}

/// Every `lablink_*` metric that `text` selects, with the label names its
/// `{...}` matchers use (`up`, `probe_success` and the like are
/// Prometheus's own, not ours, and not listed).
fn selected_metrics(text: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("lablink_") {
        let after = &rest[at..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = after[..end].to_string();
        let mut labels = Vec::new();
        if let Some(matchers) = after[end..].strip_prefix('{') {
            let close = matchers.find('}').expect("a closed {...}");
            for matcher in matchers[..close].split(',') {
                let label: String = matcher
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                labels.push(label);
            }
        }
        // `lablink_*` in prose names them all, not one.
        if !name.ends_with('_') {
            found.push((name, labels));
        }
        rest = &after[end..];
    }
    found
}

/// The alert rules (`deploy/prometheus/lablink-alerts.yml`) and the
/// monitoring section of `docs/deploy.md` name only metrics that a running
/// server exposes, after the activity that makes every family appear, with
/// labels those metrics have; and every alert of the rules is in the
/// guide's table. (`.ci/deploy.sh` checks the rules' syntax and runs their
/// unit tests with promtool.)
#[tokio::test]
async fn the_alert_rules_and_the_deploy_guide_name_only_exposed_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(
        dir.path(),
        &["--bind", "127.0.0.1:0", "--store", "memory"],
        &[],
    );
    let app = &server.app;
    // A lock, a waiter granted after a wait, a command, a subscriber.
    let (a, b) = (app.session(600.0).await, app.session(600.0).await);
    assert_eq!(app.acquire(PSU, &a, json!({})).await.0, StatusCode::OK);
    let (status, _) = app.acquire(PSU, &b, json!({"queue_if_busy": true})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.command(PSU, Some(&a), "get_status", json!({})).await.0,
        StatusCode::OK
    );
    assert_eq!(app.release(PSU, &a, false).await.0, StatusCode::OK);
    let url = format!("{}/api/ws", app.base.replace("http://", "ws://"));
    let (_ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let metrics = scrape_until(app, "the waiter's grant measured", |m| {
        m.observed("lablink_lock_wait_seconds", &[]).0 == 1
    })
    .await;

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/lablink-alerts.yml")).unwrap();
    let guide = std::fs::read_to_string(root.join("docs/deploy.md")).unwrap();
    let start = guide
        .find("## 7. Monitoring")
        .expect("docs/deploy.md has its monitoring section");
    let section = &guide[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    for (file, text) in [("the alert rules", rules.as_str()), ("the guide", section)] {
        let used = selected_metrics(text);
        assert!(used.len() >= 10, "{file} names metrics: {used:?}");
        for (name, labels) in used {
            // A histogram's series are its name with _bucket, _sum, _count.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|suffix| name.strip_suffix(suffix))
                .find(|base| metrics.is_histogram(base))
                .unwrap_or(name.as_str());
            let exposed =
                metrics.0.families.get(family).unwrap_or_else(|| {
                    panic!("{file} uses {name}, which /metrics does not expose")
                });
            for label in labels {
                // Prometheus's own target labels, and the buckets' bound.
                if ["job", "instance", "le"].contains(&label.as_str()) {
                    continue;
                }
                assert!(
                    exposed.iter_samples().any(|s| s
                        .get_labelset()
                        .unwrap()
                        .get_label_value(&label)
                        .is_some()),
                    "{file} selects {name} by {label}, a label it does not have"
                );
            }
        }
    }
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in alerts {
        assert!(
            section.contains(&format!("| `{alert}` |")),
            "{alert} is in the guide's table"
        );
    }
}
