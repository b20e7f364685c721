//! Running it for real, through the binary an operator runs: the probes,
//! the access log and its settings, JSON logs, the start-up banner,
//! cross-origin access, and `lablink backup` taken under load and restored.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{TestApp, lablink, run_lablink, spawn_app, spawn_serve};

/// A `lablink serve` child whose stderr lines are kept as they come.
struct Running {
    child: Mutex<Child>,
    addr: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Running {
    /// Starts `lablink serve --bind 127.0.0.1:0 ARGS` in `dir` and waits
    /// until it listens.
    async fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = spawn_serve(dir, &[&["--bind", "127.0.0.1:0"], args].concat(), env);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = BufReader::new(child.stderr.take().unwrap());
        let kept = lines.clone();
        std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        let mut running = Self {
            child: Mutex::new(child),
            addr: String::new(),
            lines,
        };
        let listening = running.wait_for(|l| l.contains("LabLink listening")).await;
        running.addr = match serde_json::from_str::<Value>(&listening) {
            Ok(json) => json["fields"]["addr"].as_str().unwrap().to_owned(),
            Err(_) => listening.split("addr=").nth(1).unwrap().trim().to_owned(),
        };
        running
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn app(&self) -> TestApp {
        TestApp::at(&self.base())
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The first line `matches`, waiting up to ten seconds for it.
    async fn wait_for(&self, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| matches(l)) {
                return line;
            }
            if Instant::now() > deadline {
                panic!("no such line in {:#?}", self.lines());
            }
            if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
                panic!("the server exited ({status}): {:#?}", self.lines());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The `key=value` fields of a text log line (values quoted or bare).
fn fields(line: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = line;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].rsplit(' ').next().unwrap_or("").to_owned();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..end], &quoted[(end + 1).min(quoted.len())..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        out.insert(key, value.to_owned());
        rest = next;
    }
    out
}

fn is_access_line(line: &str) -> bool {
    line.contains("lablink::access")
}

/// Creates an API token for `user` in the store `dir`'s settings name.
fn create_token(dir: &Path, user: &str, role: &str, args: &[&str]) -> String {
    let out = lablink()
        .args(["token", "create", "--user", user, "--role", role])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

// ---- probes -----------------------------------------------------------------

#[tokio::test]
async fn probes_answer_without_a_token_and_readyz_says_when_the_database_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let store = ["--store", "sqlite://state/lab.db"];
    let server = Running::start(dir.path(), &store, &[("LABLINK_AUTH", "required")]).await;
    let app = server.app();
    let (status, health) = app.get("/healthz").await;
    assert_eq!((status, health), (StatusCode::OK, json!({"status": "ok"})));
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["status"], "ready");
    let db = dir.path().join("state/lab.db");
    assert!(
        ready["store"].as_str().unwrap().contains("lab.db"),
        "{ready}"
    );
    let (status, version) = app.get("/api/version").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        version,
        json!({"name": "lablink", "version": env!("CARGO_PKG_VERSION")})
    );
    assert_eq!(
        app.get("/api/locks/all").await.0,
        StatusCode::UNAUTHORIZED,
        "the API itself still asks for a token"
    );

    // The data directory goes away under the running server.
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    let (status, down) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{down}");
    assert_eq!(down["code"], "store_unavailable");
    let detail = down["detail"].as_str().unwrap();
    assert!(
        detail.contains("is gone") && detail.contains(&db.display().to_string()),
        "{detail}"
    );
    assert_eq!(app.get("/healthz").await.0, StatusCode::OK, "still alive");
    server.wait_for(|l| l.contains("not ready")).await;
}

#[tokio::test]
async fn the_openapi_document_describes_the_probes_as_open() {
    let app = spawn_app().await;
    let (_, doc) = app.get("/openapi.json").await;
    for path in ["/healthz", "/readyz", "/api/version"] {
        let get = &doc["paths"][path]["get"];
        assert_eq!(get["tags"], json!(["operations"]), "{path}: {get}");
        assert_eq!(get["security"], json!([{}]), "{path}: no token");
        assert!(get["responses"]["401"].is_null(), "{path}: {get}");
    }
    let ready = &doc["paths"]["/readyz"]["get"]["responses"];
    assert!(
        ready["200"].is_object() && ready["503"].is_object(),
        "{ready}"
    );
    assert!(doc["paths"]["/healthz"]["get"]["responses"]["503"].is_null());
    app.stop().await;
}

// ---- logs -----------------------------------------------------------------

#[tokio::test]
async fn each_request_gets_an_access_log_line_with_its_user_and_session() {
    let dir = tempfile::tempdir().unwrap();
    let store = ["--store", "sqlite://lab.db"];
    let token = create_token(dir.path(), "alice", "operator", &store);
    // Metrics behind a token, so that the banner says so.
    let env = [
        ("LABLINK_AUTH", "required"),
        ("LABLINK_METRICS_PUBLIC", "false"),
    ];
    let server = Running::start(dir.path(), &store, &env).await;
    let alice = server.app().as_user(&token);
    let session = alice.session(0.0).await;
    let (status, _) = alice.acquire("ps_abc123", &session, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = alice
        .get(&format!("/api/locks/sessions/{session}/events"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.app().get("/api/locks/status/ps_abc123").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Each line is written before its answer is sent; the last one read
    // means every earlier one was.
    server
        .wait_for(|l| is_access_line(l) && l.contains("status=401"))
        .await;
    let logged: Vec<_> = server
        .lines()
        .into_iter()
        .filter(|l| is_access_line(l))
        .map(|l| fields(&l))
        .collect();
    let seen: Vec<[&str; 5]> = logged
        .iter()
        .map(|f| {
            ["method", "route", "status", "user", "session"]
                .map(|k| f.get(k).map_or("(missing)", String::as_str))
        })
        .collect();
    assert_eq!(
        seen,
        [
            ["POST", "/api/locks/sessions/create", "200", "alice", "-"],
            ["POST", "/api/locks/acquire", "200", "alice", &session],
            [
                "GET",
                "/api/locks/sessions/{session_id}/events",
                "200",
                "alice",
                &session
            ],
            ["GET", "/api/locks/status/{equipment_id}", "401", "-", "-"],
        ]
    );
    for line in &logged {
        let latency: f64 = line["latency_ms"].parse().unwrap();
        assert!(latency >= 0.0, "{line:?}");
    }
    // Lock events carry the user too.
    let acquired = server
        .wait_for(|l| l.contains("lock event") && l.contains("lock_acquired"))
        .await;
    let acquired = fields(&acquired);
    assert_eq!(
        (acquired["user"].as_str(), acquired["session_id"].as_str()),
        ("alice", session.as_str())
    );

    // The banner: where to go, where the data is, what is served, auth.
    let banner = server.wait_for(|l| l.contains("LabLink started")).await;
    let banner = fields(&banner);
    let base = server.base();
    assert_eq!(banner["url"], base);
    assert_eq!(banner["docs"], format!("{base}/docs"));
    assert_eq!(banner["dashboard"], format!("{base}/"));
    assert_eq!(banner["metrics"], format!("{base}/metrics"));
    assert!(banner["metrics_token"].starts_with("needed"), "{banner:?}");
    let data = PathBuf::from(&banner["data"]);
    assert!(data.is_absolute(), "{data:?}");
    assert_eq!(
        data.canonicalize().unwrap(),
        dir.path().join("lab.db").canonicalize().unwrap()
    );
    assert!(banner["store"].starts_with("sqlite"), "{banner:?}");
    assert_eq!(banner["instruments"], "ps_abc123,scope_123,load_1");
    assert!(banner["auth"].starts_with("required"), "{banner:?}");
}

#[tokio::test]
async fn the_access_log_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("LABLINK_ACCESS_LOG", "false")];
    let server = Running::start(dir.path(), &["--store", "memory"], &env).await;
    let app = server.app();
    let session = app.session(0.0).await;
    app.acquire("ps_abc123", &session, json!({})).await;
    app.release("ps_abc123", &session, false).await;
    // The release's own line comes after every earlier request's would have.
    server
        .wait_for(|l| l.contains("lock event") && l.contains("lock_released"))
        .await;
    let lines = server.lines();
    assert!(!lines.iter().any(|l| is_access_line(l)), "{lines:#?}");
}

#[tokio::test]
async fn json_logs_are_one_object_a_line_with_the_same_fields() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("LABLINK_LOG_FORMAT", "json")];
    let server = Running::start(dir.path(), &["--store", "memory"], &env).await;
    let app = server.app();
    let session = app.session(0.0).await;
    app.acquire("scope_123", &session, json!({})).await;
    server
        .wait_for(|l| l.contains(r#""route":"/api/locks/acquire""#))
        .await;
    let parsed: Vec<Value> = server
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let find = |message: &str| {
        parsed
            .iter()
            .filter(|v| v["fields"]["message"] == message)
            .cloned()
            .collect::<Vec<_>>()
    };
    let banner = &find("LabLink started")[0]["fields"];
    assert_eq!(banner["url"], server.base());
    assert_eq!(banner["metrics"], format!("{}/metrics", server.base()));
    assert_eq!(
        banner["metrics_token"], "not needed",
        "authentication is off"
    );
    assert_eq!(banner["instruments"], "ps_abc123,scope_123,load_1");
    assert!(
        banner["data"].as_str().unwrap().contains("memory"),
        "{banner}"
    );
    let access = find("request");
    let acquire = access
        .iter()
        .find(|v| v["fields"]["route"] == "/api/locks/acquire")
        .expect("an access line for the acquire");
    assert_eq!(acquire["target"], "lablink::access");
    assert_eq!(acquire["level"], "INFO");
    let f = &acquire["fields"];
    assert_eq!(
        (&f["method"], &f["status"], &f["session"], &f["user"]),
        (&json!("POST"), &json!(200), &json!(session), &json!("-"))
    );
    assert!(f["latency_ms"].as_f64().unwrap() >= 0.0, "{f}");
}

#[test]
fn a_bad_log_format_stops_start_up_naming_the_setting() {
    let out = lablink()
        .args(["serve", "--bind", "127.0.0.1:0", "--store", "memory"])
        .env("LABLINK_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("LABLINK_LOG_FORMAT") && stderr.contains("text or json"),
        "{stderr}"
    );
}

// ---- cross-origin access --------------------------------------------------

async fn preflight(base: &str, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{base}/api/locks/acquire"),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn cors_answers_preflights_for_the_origins_listed_and_no_others() {
    let dir = tempfile::tempdir().unwrap();
    let env = [(
        "LABLINK_CORS_ORIGINS",
        "https://lab.example.org, http://localhost:3000",
    )];
    let server = Running::start(dir.path(), &["--store", "memory"], &env).await;
    let base = server.base();
    let allowed = preflight(&base, "https://lab.example.org").await;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        header(&allowed, "access-control-allow-origin"),
        Some("https://lab.example.org")
    );
    let methods = header(&allowed, "access-control-allow-methods").unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let headers = header(&allowed, "access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        headers.contains("authorization") && headers.contains("content-type"),
        "{headers}"
    );
    let other = preflight(&base, "https://evil.example").await;
    let cors_headers: Vec<&str> = other
        .headers()
        .keys()
        .map(|name| name.as_str())
        .filter(|name| name.starts_with("access-control-"))
        .collect();
    assert_eq!(cors_headers, Vec::<&str>::new(), "none for other origins");
    // Without `Origin` it is no cross-origin request: answered as with
    // CORS off (no preflight, no `access-control-*` header).
    let no_origin = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{base}/api/locks/acquire"),
        )
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(no_origin.status(), StatusCode::METHOD_NOT_ALLOWED);
    let cors_headers: Vec<&str> = no_origin
        .headers()
        .keys()
        .map(|name| name.as_str())
        .filter(|name| name.starts_with("access-control-"))
        .collect();
    assert_eq!(cors_headers, Vec::<&str>::new(), "none without an origin");
    // An ordinary request from a listed page gets the header as well.
    let answer = reqwest::Client::new()
        .get(format!("{base}/api/equipment/list"))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        header(&answer, "access-control-allow-origin"),
        Some("http://localhost:3000")
    );
}

#[tokio::test]
async fn cors_is_off_by_default_and_star_allows_any_page() {
    let off = spawn_app().await;
    let answer = preflight(&off.base, "https://lab.example.org").await;
    assert_eq!(answer.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&answer, "access-control-allow-origin"), None);
    off.stop().await;

    let mut settings = crate::helpers::memory();
    settings.edge.cors = Some(lablink::api::edge::CorsOrigins::Any);
    let any = crate::helpers::spawn_with(settings).await;
    let answer = preflight(&any.base, "https://anywhere.example").await;
    assert!(answer.status().is_success());
    assert_eq!(header(&answer, "access-control-allow-origin"), Some("*"));
    any.stop().await;
}

// ---- backup -----------------------------------------------------------------

fn backup(dir: &Path, args: &[&str]) -> (bool, String, String) {
    run_lablink(dir, &[&["backup"], args].concat())
}

/// A change the server acknowledged, and when its answer arrived.
#[derive(Clone, Debug)]
struct Acknowledged {
    event: &'static str,
    equipment: String,
    session: String,
    fencing_token: u64,
    at: Instant,
}

/// Acquires and releases `equipment` in turn until `stop`, recording each
/// acknowledged change.
async fn cycle(
    app: TestApp,
    equipment: &'static str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Acknowledged> {
    let session = app.session(0.0).await;
    let mut done = Vec::new();
    while !*stop.borrow() {
        let (status, body) = app.acquire(equipment, &session, json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let fencing_token = body["lock"]["fencing_token"].as_u64().unwrap();
        let ack = |event| Acknowledged {
            event,
            equipment: equipment.into(),
            session: session.clone(),
            fencing_token,
            at: Instant::now(),
        };
        done.push(ack("lock_acquired"));
        let (status, body) = app.release(equipment, &session, false).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        done.push(ack("lock_released"));
    }
    done
}

/// Every event in the history of the server at `app`, oldest first.
async fn whole_history(app: &TestApp) -> Vec<Value> {
    let mut events = Vec::new();
    let mut cursor = 0;
    loop {
        let (status, page) = app
            .get(&format!("/api/locks/events?limit=1000&cursor={cursor}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let got = page["events"].as_array().unwrap();
        if got.is_empty() {
            return events;
        }
        events.extend(got.iter().cloned());
        cursor = page["next_cursor"].as_u64().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_holds_every_change_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("lab.toml"),
        "[server]\nstore = 'sqlite://state/lab.db'\n\n[[equipment]]\nid = 'psu'\ndriver = 'sim-psu'\n\n[[equipment]]\nid = 'scope'\ndriver = 'sim-scope'\n\n[[equipment]]\nid = 'load'\ndriver = 'sim-load'\n",
    )
    .unwrap();
    let config = ["--config", "lab.toml"];
    let server = Running::start(dir.path(), &config, &[]).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let load: Vec<_> = ["psu", "scope", "load"]
        .into_iter()
        .map(|equipment| tokio::spawn(cycle(server.app(), equipment, stopped.clone())))
        .collect();
    // Mid-load: some changes in already, more coming.
    server
        .wait_for(|l| l.matches("lock_released").count() > 0 && l.contains("lock event"))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let cwd = dir.path().to_path_buf();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        backup(&cwd, &["backups-copy.db", "--config", "lab.toml"])
    })
    .await
    .unwrap();
    assert!(ok, "{stderr}");
    assert!(stdout.contains("backed up"), "{stdout}");
    // The load goes on after the backup too.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(true).unwrap();
    let mut acknowledged = Vec::new();
    for cycle in load {
        acknowledged.extend(cycle.await.unwrap());
    }
    drop(server);
    let (before, after): (Vec<_>, Vec<_>) = acknowledged.into_iter().partition(|a| a.at < started);
    assert!(
        !before.is_empty() && !after.is_empty(),
        "the backup was taken mid-load: {} before, {} after",
        before.len(),
        after.len()
    );

    // Restore: a server on the copy.
    let copy = dir.path().join("backups-copy.db");
    let restored = Running::start(
        dir.path(),
        &["--store", &format!("sqlite://{}", copy.display())],
        &[],
    )
    .await;
    let history = whole_history(&restored.app()).await;
    let key = |event: &str, equipment: &str, session: &str, token: u64| {
        format!("{event} {equipment} {session} {token}")
    };
    let recorded: std::collections::HashSet<String> = history
        .iter()
        .filter(|e| e["fencing_token"].is_u64())
        .map(|e| {
            key(
                e["event"].as_str().unwrap(),
                e["equipment_id"].as_str().unwrap_or("-"),
                e["session_id"].as_str().unwrap_or("-"),
                e["fencing_token"].as_u64().unwrap(),
            )
        })
        .collect();
    let missing: Vec<_> = before
        .iter()
        .filter(|a| !recorded.contains(&key(a.event, &a.equipment, &a.session, a.fencing_token)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged changes missing from the copy, first {:?}",
        missing.len(),
        before.len(),
        missing.first()
    );
}

#[test]
fn backup_refuses_what_it_cannot_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = backup(dir.path(), &["copy.db", "--store", "memory"]);
    assert!(!ok);
    assert!(stderr.contains("nothing to back up"), "{stderr}");
    let (ok, _, stderr) = backup(dir.path(), &["copy.db"]);
    assert!(!ok);
    assert!(
        stderr.contains("there is no store at") && stderr.contains("lablink-data/lablink.db"),
        "{stderr}"
    );
    assert!(!dir.path().join("lablink-data").exists(), "nothing created");
    assert!(!dir.path().join("copy.db").exists());
}

#[test]
fn the_example_service_config_loads_and_names_the_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::canonicalize("deploy/lablink.toml").unwrap();
    let copy = dir.path().join("copy.db");
    let out = lablink()
        .arg("backup")
        .arg(&copy)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Read without a complaint; on a machine without the service, its
    // store is simply not there.
    assert!(
        out.status.success() || stderr.contains("there is no store at /var/lib/lablink/lablink.db"),
        "{stderr}"
    );
}
