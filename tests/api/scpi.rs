//! The `scpi-tcp` driver end to end: LabLink -> TCP -> a simulated
//! instrument (`lablink sim`'s code, or a scripted fake for failures).

use lablink::config::Settings;
use lablink::drivers::EquipmentConfig;
use lablink::drivers::scpi::sim::{self, SimKind};
use reqwest::StatusCode;
use serde_json::json;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::helpers::{TestApp, assert_error, memory, spawn_with};

/// Starts a simulated instrument on port 0; returns its address.
async fn simulator(kind: SimKind) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(sim::serve(listener, kind, std::future::pending()));
    addr
}

/// What a scripted fake instrument does with one command.
#[derive(Clone)]
enum Fake {
    Answer(&'static str),
    Silent,
    /// Close the connection (only the first time this command is seen).
    HangUp,
    /// Say that the command arrived (`arrived`), then answer once
    /// `release` is notified.
    AnswerWhenReleased(&'static str, Arc<Notify>, Arc<Notify>),
}

/// A fake instrument that answers `*IDN?` and `SYST:ERR?` sensibly, takes
/// `*CLS` silently, and everything else as `script` says.
async fn fake(script: impl Fn(&str) -> Fake + Send + Sync + 'static) -> String {
    fake_instrument(true, script).await
}

/// Like `fake`; with `errors` false, `SYST:ERR?` is left to `script` too.
async fn fake_instrument(
    errors: bool,
    script: impl Fn(&str) -> Fake + Send + Sync + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let script = Arc::new(script);
    let hung_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (script, hung_up) = (script.clone(), hung_up.clone());
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let answer = match line.as_str() {
                        "*IDN?" => Fake::Answer("Fake,Instrument,0,1"),
                        "*CLS" => Fake::Silent,
                        "SYST:ERR?" if errors => Fake::Answer("0,\"No error\""),
                        other => script(other),
                    };
                    match answer {
                        Fake::Answer(text) => write
                            .write_all(format!("{text}\n").as_bytes())
                            .await
                            .unwrap(),
                        Fake::Silent => {}
                        Fake::HangUp => {
                            if !hung_up.swap(true, std::sync::atomic::Ordering::SeqCst) {
                                return;
                            }
                            write.write_all(b"1.5\n").await.unwrap();
                        }
                        Fake::AnswerWhenReleased(text, arrived, release) => {
                            arrived.notify_one();
                            release.notified().await;
                            let _ = write.write_all(format!("{text}\n").as_bytes()).await;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn scpi(id: &str, address: &str, profile: &str, timeout_ms: i64) -> EquipmentConfig {
    let mut settings = toml::Table::new();
    settings.insert("address".into(), address.into());
    settings.insert("profile".into(), profile.into());
    settings.insert("timeout_ms".into(), timeout_ms.into());
    EquipmentConfig {
        id: id.into(),
        driver: "scpi-tcp".into(),
        name: None,
        allow: None,
        tags: Vec::new(),
        settings,
    }
}

async fn lab(equipment: Vec<EquipmentConfig>, config_dir: &std::path::Path) -> TestApp {
    spawn_with(Settings {
        equipment: Some(equipment),
        config_dir: config_dir.to_path_buf(),
        ..memory()
    })
    .await
}

async fn locked(app: &TestApp, equipment: &str) -> String {
    let s = app.session(0.0).await;
    let (status, body) = app.acquire(equipment, &s, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s
}

/// A server with one `psu`-profile instrument at `address`, and a session
/// holding its lock.
async fn holding(id: &str, address: &str, timeout_ms: i64) -> (TestApp, String) {
    let app = lab(
        vec![scpi(id, address, "psu", timeout_ms)],
        std::path::Path::new("."),
    )
    .await;
    let s = locked(&app, id).await;
    (app, s)
}

#[tokio::test]
async fn a_psu_is_driven_through_tcp_like_the_simulated_driver() {
    let addr = simulator(SimKind::Psu).await;
    let (app, s) = holding("psu", &addr, 2000).await;
    let (_, status) = app.get("/api/equipment/psu/status").await;
    assert_eq!(status["driver"], "scpi-tcp");
    assert!(
        status["model"]
            .as_str()
            .unwrap()
            .starts_with("not yet identified"),
        "connects lazily"
    );
    for (action, params) in [
        ("set_voltage", json!({"voltage": 5.0})),
        ("set_current", json!({"current": 0.2})),
        ("set_output", json!({"enabled": true})),
    ] {
        let (code, body) = app.command("psu", Some(&s), action, params).await;
        assert_eq!(code, StatusCode::OK, "{action}: {body}");
    }
    let (_, body) = app
        .command("psu", Some(&s), "get_voltage", json!({"channel": 1}))
        .await;
    assert_eq!(
        body["data"],
        json!({"voltage": 2.0}),
        "current-limited like sim-psu"
    );
    let (_, body) = app.command("psu", Some(&s), "get_status", json!({})).await;
    assert_eq!(
        body["data"]["ch1"],
        json!({"voltage_set": 5.0, "current_limit": 0.2, "output": true, "voltage": 2.0, "current": 0.2})
    );
    assert!(body["data"]["idn"].as_str().unwrap().contains("SimPSU"));
    let (_, status) = app.get("/api/equipment/psu/status").await;
    assert!(
        status["model"]
            .as_str()
            .unwrap()
            .starts_with("LabLink,LabLink SimPSU"),
        "*IDN? shown"
    );
    assert_eq!(status["state"]["connected"], true);

    // The instrument's own range check (channel 3 is a 5 V channel) comes
    // back from SYST:ERR? as a 502 with its text.
    let refused = app
        .command(
            "psu",
            Some(&s),
            "set_voltage",
            json!({"voltage": 6.0, "channel": 3}),
        )
        .await;
    assert_error(&refused, StatusCode::BAD_GATEWAY, "instrument_error");
    assert!(
        refused.1["detail"].as_str().unwrap().contains("-222"),
        "{}",
        refused.1
    );
    // Declared ranges are checked before anything is sent.
    assert_error(
        &app.command("psu", Some(&s), "set_voltage", json!({"voltage": 31}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_parameter",
    );
}

#[tokio::test]
async fn raw_scpi_is_a_control_action() {
    let addr = simulator(SimKind::Psu).await;
    let app = lab(
        vec![scpi("psu", &addr, "psu", 2000)],
        std::path::Path::new("."),
    )
    .await;
    let observer = app.session(0.0).await;
    app.acquire("psu", &observer, json!({"lock_mode": "observer"}))
        .await;
    assert_error(
        &app.command(
            "psu",
            Some(&observer),
            "scpi_query",
            json!({"command": "*IDN?"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "not_lock_holder",
    );
    app.release("psu", &observer, false).await;
    let s = locked(&app, "psu").await;
    assert_eq!(
        app.command(
            "psu",
            Some(&s),
            "scpi_write",
            json!({"command": "SOUR2:VOLT 3.3"})
        )
        .await
        .0,
        StatusCode::OK
    );
    let (_, body) = app
        .command(
            "psu",
            Some(&s),
            "scpi_query",
            json!({"command": "SOUR2:VOLT?"}),
        )
        .await;
    assert_eq!(body["data"], json!({"reply": "3.3"}));
    let bad = app
        .command("psu", Some(&s), "scpi_write", json!({"command": "BOGUS 1"}))
        .await;
    assert_error(&bad, StatusCode::BAD_GATEWAY, "instrument_error");
    assert!(
        bad.1["detail"]
            .as_str()
            .unwrap()
            .contains("Undefined header")
    );
}

#[tokio::test]
async fn scope_waveforms_arrive_as_binary_blocks() {
    let addr = simulator(SimKind::Scope).await;
    let load_addr = simulator(SimKind::Load).await;
    let app = lab(
        vec![
            scpi("scope", &addr, "scope", 2000),
            scpi("load", &load_addr, "load", 2000),
        ],
        std::path::Path::new("."),
    )
    .await;
    let s = locked(&app, "scope").await;
    let (code, body) = app
        .command("scope", Some(&s), "get_waveform", json!({"channel": 1}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["samples"].as_array().unwrap().len(), 1000);
    assert!((body["data"]["x_increment"].as_f64().unwrap() - 2e-6).abs() < 1e-12);
    let (_, vpp) = app
        .command(
            "scope",
            Some(&s),
            "get_measurement",
            json!({"channel": 1, "kind": "vpp"}),
        )
        .await;
    assert!(
        (vpp["data"]["value"].as_f64().unwrap() - 2.0).abs() < 0.05,
        "{vpp}"
    );
    // A query the instrument cannot answer says why.
    let off = app
        .command("scope", Some(&s), "get_waveform", json!({"channel": 4}))
        .await;
    assert_error(&off, StatusCode::BAD_GATEWAY, "instrument_error");
    assert!(
        off.1["detail"].as_str().unwrap().contains("switched off"),
        "{}",
        off.1
    );

    let s = locked(&app, "load").await;
    for (action, params) in [
        ("set_mode", json!({"mode": "CC"})),
        ("set_current", json!({"current": 2.0})),
        ("set_input", json!({"enabled": true})),
    ] {
        assert_eq!(
            app.command("load", Some(&s), action, params).await.0,
            StatusCode::OK
        );
    }
    let (_, m) = app.command("load", Some(&s), "get_status", json!({})).await;
    assert_eq!(
        (
            m["data"]["mode"].as_str(),
            m["data"]["current"].as_f64(),
            m["data"]["input"].as_bool()
        ),
        (Some("CC"), Some(2.0), Some(true))
    );
}

#[tokio::test]
async fn failures_map_to_502_503_504_and_the_driver_reconnects() {
    let hangs_up = fake(|cmd| {
        if cmd.starts_with("MEAS1:VOLT?") {
            Fake::HangUp
        } else {
            Fake::Answer("0")
        }
    })
    .await;
    let silent = fake(|_| Fake::Silent).await;
    let garbage = fake(|_| Fake::Answer("banana")).await;
    let app = lab(
        vec![
            scpi("flaky", &hangs_up, "psu", 2000),
            scpi("mute", &silent, "psu", 200),
            scpi("garbled", &garbage, "psu", 2000),
        ],
        std::path::Path::new("."),
    )
    .await;
    for id in ["flaky", "mute", "garbled"] {
        locked(&app, id).await;
    }
    let (_, all) = app.get("/api/locks/all").await;
    let holder = |id: &str| {
        all["exclusive_locks"][id]["session_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    let state = || async { app.get("/api/equipment/flaky/status").await.1["state"].clone() };
    let before = state().await;
    assert_eq!(
        (&before["connected"], &before["last_error"]),
        (&json!(false), &json!(null))
    );
    let dropped = app
        .command("flaky", Some(&holder("flaky")), "get_voltage", json!({}))
        .await;
    assert_error(
        &dropped,
        StatusCode::SERVICE_UNAVAILABLE,
        "instrument_unavailable",
    );
    let after_failure = state().await;
    assert_eq!(after_failure["connected"], false, "a boolean, never null");
    assert!(
        after_failure["last_error"].as_str().is_some(),
        "{after_failure}"
    );
    let again = app
        .command("flaky", Some(&holder("flaky")), "get_voltage", json!({}))
        .await;
    assert_eq!(
        (again.0, &again.1["data"]),
        (StatusCode::OK, &json!({"voltage": 1.5})),
        "reconnected"
    );
    let reconnected = state().await;
    assert_eq!(
        (&reconnected["connected"], &reconnected["last_error"]),
        (&json!(true), &json!(null)),
        "the error is over once reconnected: {reconnected}"
    );

    let hung = app
        .command("mute", Some(&holder("mute")), "get_voltage", json!({}))
        .await;
    assert_error(&hung, StatusCode::GATEWAY_TIMEOUT, "instrument_timeout");

    let nonsense = app
        .command(
            "garbled",
            Some(&holder("garbled")),
            "get_voltage",
            json!({}),
        )
        .await;
    assert_error(&nonsense, StatusCode::BAD_GATEWAY, "instrument_error");
    assert!(
        nonsense.1["detail"].as_str().unwrap().contains("banana"),
        "{}",
        nonsense.1
    );

    let unreachable = lab(
        vec![scpi("gone", "127.0.0.1:1", "psu", 500)],
        std::path::Path::new("."),
    )
    .await;
    let s = locked(&unreachable, "gone").await;
    assert_error(
        &unreachable
            .command("gone", Some(&s), "get_voltage", json!({}))
            .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "instrument_unavailable",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_instrument_slows_nobody_else() {
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let slow = {
        let (arrived, release) = (arrived.clone(), release.clone());
        fake(move |_| Fake::AnswerWhenReleased("7.5", arrived.clone(), release.clone())).await
    };
    let quick = simulator(SimKind::Psu).await;
    let app = Arc::new(
        lab(
            vec![
                scpi("slow", &slow, "psu", 10_000),
                scpi("quick", &quick, "psu", 2000),
            ],
            std::path::Path::new("."),
        )
        .await,
    );
    let (s_slow, s_quick) = (locked(&app, "slow").await, locked(&app, "quick").await);
    let pending = {
        let app = app.clone();
        tokio::spawn(async move {
            app.command("slow", Some(&s_slow), "get_voltage", json!({}))
                .await
        })
    };
    arrived.notified().await;
    // While the slow instrument sits on its reply, the other instrument,
    // the lock API and the equipment status all answer.
    for _ in 0..5 {
        let (code, _) = app
            .command("quick", Some(&s_quick), "get_status", json!({}))
            .await;
        assert_eq!(code, StatusCode::OK);
    }
    assert_eq!(app.get("/api/locks/status/slow").await.0, StatusCode::OK);
    let (code, status) = app.get("/api/equipment/slow/status").await;
    assert_eq!(
        (code, status["state"]["busy"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    assert_eq!(
        status["state"]["connected"], true,
        "known while busy, never null"
    );
    assert!(!pending.is_finished());
    release.notify_one();
    let (code, body) = pending.await.unwrap();
    assert_eq!(
        (code, &body["data"]),
        (StatusCode::OK, &json!({"voltage": 7.5}))
    );
}

#[tokio::test]
async fn a_lab_adds_its_own_profile_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bench-psu.toml"),
        r#"
description = "One channel of the simulated PSU, the lab's way"

[actions.apply]
access = "control"
params = [
    { name = "volts", type = "number", min = 0, max = 20, unit = "V" },
    { name = "on", type = "boolean", default = true },
]
steps = [{ write = "SOUR1:VOLT {volts}" }, { write = "OUTP1 {on}" }]

[actions.read]
access = "observe"
steps = [
    { query = "*IDN?", reply = "string", key = "identity" },
    { query = "MEAS1:VOLT?", reply = "number", key = "out.volts" },
    { query = "OUTP1?", reply = "boolean", key = "out.on" },
]
"#,
    )
    .unwrap();
    let addr = simulator(SimKind::Psu).await;
    let app = lab(
        vec![scpi("bench", &addr, "bench-psu.toml", 2000)],
        dir.path(),
    )
    .await;
    let s = locked(&app, "bench").await;
    let (_, status) = app.get("/api/equipment/bench/status").await;
    let names: Vec<&str> = status["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["apply", "read", "scpi_write", "scpi_query"]);
    assert_eq!(
        app.command("bench", Some(&s), "apply", json!({"volts": 4.0}))
            .await
            .0,
        StatusCode::OK
    );
    let (_, body) = app.command("bench", Some(&s), "read", json!({})).await;
    assert_eq!(body["data"]["out"], json!({"volts": 4.0, "on": true}));
    assert!(
        body["data"]["identity"]
            .as_str()
            .unwrap()
            .contains("SimPSU")
    );
    assert_error(
        &app.command("bench", Some(&s), "apply", json!({"volts": 25}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_parameter",
    );
}

#[tokio::test]
async fn the_lablink_sim_command_serves_an_instrument() {
    use std::io::{BufRead, BufReader};
    let mut child = crate::helpers::lablink()
        .args(["sim", "--listen", "127.0.0.1:0", "--kind", "load"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(first.starts_with("simulated load listening on"), "{first}");
    let app = lab(
        vec![scpi("load", &addr, "load", 2000)],
        std::path::Path::new("."),
    )
    .await;
    let s = locked(&app, "load").await;
    let (code, body) = app
        .command("load", Some(&s), "get_measurement", json!({}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["voltage"], 12.0,
        "input off: the source's open-circuit voltage"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn an_old_error_is_not_blamed_on_the_next_action() {
    let addr = simulator(SimKind::Psu).await;
    let (app, s) = holding("psu", &addr, 2000).await;
    // A query the instrument does not know is an error with its reason, not "".
    let nope = app
        .command("psu", Some(&s), "scpi_query", json!({"command": "NOPE?"}))
        .await;
    assert_error(&nope, StatusCode::BAD_GATEWAY, "instrument_error");
    assert!(
        nope.1["detail"].as_str().unwrap().contains("-113"),
        "{}",
        nope.1
    );
    // ... and the next good action succeeds.
    let (code, body) = app
        .command("psu", Some(&s), "set_voltage", json!({"voltage": 12.0}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let bad = app
        .command("psu", Some(&s), "scpi_write", json!({"command": "BOGUS 1"}))
        .await;
    assert_error(&bad, StatusCode::BAD_GATEWAY, "instrument_error");
    let (code, body) = app
        .command("psu", Some(&s), "set_output", json!({"enabled": true}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");

    // An error someone else left in the instrument's queue (another
    // connection, the front panel) is not this action's either.
    let mut other = tokio::net::TcpStream::connect(&addr).await.unwrap();
    other.write_all(b"FOO 1\n*OPC?\n").await.unwrap();
    let mut done = String::new();
    BufReader::new(&mut other)
        .read_line(&mut done)
        .await
        .unwrap();
    assert_eq!(done, "1\n", "the simulator has queued the error");
    let (code, body) = app.command("psu", Some(&s), "get_voltage", json!({})).await;
    assert_eq!(
        (code, &body["data"]),
        (StatusCode::OK, &json!({"voltage": 12.0})),
        "{body}"
    );
}

#[tokio::test]
async fn a_query_without_a_reply_is_an_error_not_an_empty_string() {
    let empty = fake(|_| Fake::Answer("")).await;
    let silent = fake(|_| Fake::Silent).await;
    let app = lab(
        vec![
            scpi("empty", &empty, "psu", 2000),
            scpi("silent", &silent, "psu", 200),
        ],
        std::path::Path::new("."),
    )
    .await;
    let s = locked(&app, "empty").await;
    let nothing = app
        .command("empty", Some(&s), "scpi_query", json!({"command": "WHAT?"}))
        .await;
    assert_error(&nothing, StatusCode::BAD_GATEWAY, "instrument_error");
    assert!(
        nothing.1["detail"].as_str().unwrap().contains("WHAT?"),
        "names the query: {}",
        nothing.1
    );
    let s = locked(&app, "silent").await;
    let hung = app
        .command(
            "silent",
            Some(&s),
            "scpi_query",
            json!({"command": "WHAT?"}),
        )
        .await;
    assert_error(&hung, StatusCode::GATEWAY_TIMEOUT, "instrument_timeout");
}

#[tokio::test]
async fn a_timeout_after_a_write_says_the_write_may_have_been_applied() {
    // Takes every command, answers nothing but *IDN?: not even SYST:ERR?.
    let mute = fake_instrument(false, |_| Fake::Silent).await;
    let (app, s) = holding("mute", &mute, 200).await;
    for (action, params) in [
        ("set_voltage", json!({"voltage": 1.0})),
        ("scpi_write", json!({"command": "OUTP1 ON"})),
    ] {
        let timed_out = app.command("mute", Some(&s), action, params).await;
        assert_error(
            &timed_out,
            StatusCode::GATEWAY_TIMEOUT,
            "instrument_timeout",
        );
        let detail = timed_out.1["detail"].as_str().unwrap();
        assert!(
            detail.contains("may have been applied"),
            "{action}: {detail}"
        );
    }
    // A read changes nothing, and says nothing of the kind.
    let read = app
        .command("mute", Some(&s), "get_voltage", json!({}))
        .await;
    assert_error(&read, StatusCode::GATEWAY_TIMEOUT, "instrument_timeout");
    assert!(
        !read.1["detail"].as_str().unwrap().contains("applied"),
        "{}",
        read.1
    );
}

#[tokio::test]
async fn an_answer_nobody_asked_for_does_not_put_the_instrument_out_of_step() {
    let addr = simulator(SimKind::Psu).await;
    let (app, s) = holding("psu", &addr, 2000).await;
    let (code, body) = app
        .command("psu", Some(&s), "set_voltage", json!({"voltage": 12.0}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    // A query sent as a write: its answer arrives where SYST:ERR?'s was due.
    let raw = app
        .command(
            "psu",
            Some(&s),
            "scpi_write",
            json!({"command": "SOUR1:VOLT?"}),
        )
        .await;
    assert_error(&raw, StatusCode::BAD_GATEWAY, "instrument_error");
    assert!(
        raw.1["detail"].as_str().unwrap().contains("out of step"),
        "{}",
        raw.1
    );
    // A compound query answered twice: the answer left over is noticed too.
    let twice = app
        .command(
            "psu",
            Some(&s),
            "scpi_query",
            json!({"command": "*IDN?;*IDN?"}),
        )
        .await;
    assert_error(&twice, StatusCode::BAD_GATEWAY, "instrument_error");
    // Every later action gets its own answers.
    let bad = app
        .command("psu", Some(&s), "scpi_write", json!({"command": "BOGUS 1"}))
        .await;
    assert_error(&bad, StatusCode::BAD_GATEWAY, "instrument_error");
    assert!(
        bad.1["detail"].as_str().unwrap().contains("-113"),
        "{}",
        bad.1
    );
    for _ in 0..2 {
        let (code, body) = app
            .command("psu", Some(&s), "set_voltage", json!({"voltage": 7.0}))
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let (code, body) = app
            .command("psu", Some(&s), "get_readings", json!({}))
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }
    let (_, body) = app
        .command(
            "psu",
            Some(&s),
            "scpi_query",
            json!({"command": "SOUR1:VOLT?"}),
        )
        .await;
    assert_eq!(
        body["data"]["reply"]
            .as_str()
            .map(|r| r.parse::<f64>().unwrap()),
        Some(7.0),
        "{body}"
    );
}

#[tokio::test]
async fn raw_commands_are_one_line_each() {
    let addr = simulator(SimKind::Psu).await;
    let (app, s) = holding("psu", &addr, 2000).await;
    for (action, command) in [
        ("scpi_write", "OUTP1 ON\nOUTP2 ON"),
        ("scpi_write", "OUTP1 ON\r"),
        ("scpi_query", "OUTP1?\nOUTP2 ON"),
        ("scpi_query", "OUTP2 ON\r\nOUTP1?"),
    ] {
        let refused = app
            .command("psu", Some(&s), action, json!({"command": command}))
            .await;
        assert_error(
            &refused,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        );
        assert!(
            refused.1["detail"]
                .as_str()
                .unwrap()
                .contains("\"command\""),
            "{}",
            refused.1
        );
    }
    // Nothing was sent.
    for channel in ["OUTP1?", "OUTP2?"] {
        let (_, body) = app
            .command("psu", Some(&s), "scpi_query", json!({"command": channel}))
            .await;
        assert_eq!(body["data"], json!({"reply": "0"}), "{channel}");
    }
}

// ---- logs of the real binaries -------------------------------------------

/// Starts `lablink ARGS` with `RUST_LOG=log`; returns the child, its stdout's
/// first line, and its log lines as they come.
fn logged(
    args: &[&str],
    log: &str,
    first_line_on_stdout: bool,
) -> (
    std::process::Child,
    String,
    std::sync::mpsc::Receiver<String>,
) {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = crate::helpers::lablink()
        .args(args)
        .env("RUST_LOG", log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (send, lines) = std::sync::mpsc::channel();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = send.send(line);
        }
    });
    let mut first = String::new();
    if first_line_on_stdout {
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
    }
    (child, first.trim().to_owned(), lines)
}

/// The first log line holding every one of `needles` (waits for it).
fn log_line(lines: &std::sync::mpsc::Receiver<String>, needles: &[&str]) -> String {
    let mut seen = Vec::new();
    loop {
        match lines.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(line) if needles.iter().all(|n| line.contains(n)) => return line,
            Ok(line) => seen.push(line),
            Err(_) => panic!("no log line with {needles:?} in {seen:#?}"),
        }
    }
}

#[tokio::test]
async fn instrument_failures_are_logged_with_equipment_session_and_command() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lab.toml");
    std::fs::write(
        &config,
        "[[equipment]]\nid = 'gone_psu'\ndriver = 'scpi-tcp'\naddress = '127.0.0.1:1'\nprofile = 'psu'\n\
         [[equipment]]\nid = 'bench_psu'\ndriver = 'sim-psu'\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (mut child, _, lines) = logged(
        &[
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--config",
            config,
        ],
        "info,lablink::sim=debug",
        false,
    );
    let started = log_line(&lines, &["addr="]);
    let base = format!("http://{}", started.rsplit("addr=").next().unwrap().trim());
    let client = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        let request = client.post(format!("{base}{path}")).json(&body);
        async move {
            let response = request.send().await.unwrap();
            (
                response.status(),
                response.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (_, session) = post("/api/locks/sessions/create", json!({})).await;
    let session = session["session_id"].as_str().unwrap().to_owned();
    for equipment in ["gone_psu", "bench_psu"] {
        let (code, _) = post(
            "/api/locks/acquire",
            json!({"equipment_id": equipment, "session_id": session}),
        )
        .await;
        assert_eq!(code, StatusCode::OK);
    }
    let (code, _) = post(
        "/api/equipment/gone_psu/command",
        json!({"command_id": "cmd_log_7", "action": "get_voltage", "session_id": session}),
    )
    .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    let warning = log_line(&lines, &["cmd_log_7"]);
    for expected in [
        "WARN",
        "gone_psu",
        session.as_str(),
        "instrument unavailable",
    ] {
        assert!(warning.contains(expected), "{expected:?} in {warning}");
    }
    // A simulated instrument logs under its own target, by its id.
    let (code, _) = post(
        "/api/equipment/bench_psu/command",
        json!({"command_id": "cmd_log_8", "action": "set_voltage", "parameters": {"voltage": 4.0}, "session_id": session}),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let applied = log_line(&lines, &["lablink::sim", "set_voltage"]);
    assert!(applied.contains("bench_psu"), "{applied}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn the_simulator_logs_under_its_own_target_with_a_readable_name() {
    let (mut child, first, lines) = logged(
        &["sim", "--listen", "127.0.0.1:0", "--kind", "psu"],
        "info",
        true,
    );
    let addr = first.rsplit(' ').next().unwrap().to_owned();
    assert_eq!(first, format!("simulated psu listening on {addr}"));
    let mut client = tokio::net::TcpStream::connect(&addr).await.unwrap();
    client.write_all(b"FOO 1\n*OPC?\n").await.unwrap();
    let mut done = String::new();
    BufReader::new(&mut client)
        .read_line(&mut done)
        .await
        .unwrap();
    let refused = log_line(&lines, &["FOO 1"]);
    for expected in ["lablink::sim", &format!("psu@{addr}"), "-113"] {
        assert!(refused.contains(expected), "{expected:?} in {refused}");
    }
    assert!(!refused.contains("Psu"), "no debug names: {refused}");
    child.kill().unwrap();
    child.wait().unwrap();
}
