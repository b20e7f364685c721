use lablink::clock::ManualClock;
use lablink::config::{Flags, Settings};
use lablink::domain::Timestamp;
use lablink::server::Server;
use reqwest::StatusCode;
use serde_json::json;
use std::sync::Arc;

use crate::helpers::{START, assert_error, lablink, spawn_app, spawn_with};

#[tokio::test]
async fn the_demo_instruments_are_listed_with_their_drivers() {
    let app = spawn_app().await;
    let (status, body) = app.get("/api/equipment/list").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["count"], 3);
    let pairs: Vec<(&str, &str)> = body["equipment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["equipment_id"].as_str().unwrap(),
                e["driver"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("ps_abc123", "sim-psu"),
            ("scope_123", "sim-scope"),
            ("load_1", "sim-load")
        ]
    );
}

#[tokio::test]
async fn status_shows_driver_model_state_holder_and_actions() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    app.acquire("ps_abc123", &s, json!({})).await;
    let (status, body) = app.get("/api/equipment/ps_abc123/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["driver"], "sim-psu");
    assert!(body["model"].as_str().unwrap().contains("SimPSU"));
    assert_eq!(body["state"]["channels"].as_array().unwrap().len(), 3);
    assert_eq!(body["lock"]["session_id"], s.as_str());
    let set_voltage = body["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "set_voltage")
        .unwrap();
    assert_eq!(set_voltage["access"], "control");
    assert_eq!(
        set_voltage["params"][0],
        json!({"name": "voltage", "type": "number", "min": 0.0, "max": 30.0, "default": null, "unit": "V"})
    );
    assert_error(
        &app.get("/api/equipment/nope/status").await,
        StatusCode::NOT_FOUND,
        "equipment_not_found",
    );
}

#[tokio::test]
async fn control_needs_the_exclusive_lock_and_behaves_like_the_instrument() {
    let app = spawn_app().await;
    let (s, other) = (app.session(0.0).await, app.session(0.0).await);
    assert_error(
        &app.command("ps_abc123", None, "set_voltage", json!({"voltage": 5}))
            .await,
        StatusCode::UNAUTHORIZED,
        "session_required",
    );
    assert_error(
        &app.command("ps_abc123", Some(&s), "set_voltage", json!({"voltage": 5}))
            .await,
        StatusCode::FORBIDDEN,
        "not_lock_holder",
    );
    assert_error(
        &app.command("ps_abc123", Some("ghost"), "get_voltage", json!({}))
            .await,
        StatusCode::FORBIDDEN,
        "session_not_live",
    );
    app.acquire("ps_abc123", &s, json!({})).await;
    let refused = app
        .command(
            "ps_abc123",
            Some(&other),
            "set_voltage",
            json!({"voltage": 5}),
        )
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "not_lock_holder");
    assert!(
        refused.1["detail"].as_str().unwrap().contains(&s),
        "names the holder"
    );
    assert_eq!(refused.1["success"], false);
    assert_eq!(refused.1["command_id"], "cmd");

    for (action, params) in [
        ("set_voltage", json!({"voltage": 5.0})),
        ("set_current", json!({"current": 0.2})),
        ("set_output", json!({"enabled": true})),
    ] {
        let (status, body) = app.command("ps_abc123", Some(&s), action, params).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["success"], true);
        assert_eq!(body["error"], serde_json::Value::Null);
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    // 5 V into the 10 ohm load would draw 0.5 A; the 0.2 A limit holds it at 2 V.
    let (_, body) = app
        .command("ps_abc123", Some(&s), "get_voltage", json!({"channel": 1}))
        .await;
    assert_eq!(body["data"], json!({"channel": 1, "voltage": 2.0}));
    let (_, body) = app
        .command("ps_abc123", Some(&s), "get_current", json!({}))
        .await;
    assert_eq!(body["data"]["current"], 0.2);
}

#[tokio::test]
async fn unknown_actions_and_bad_parameters_are_refused_before_running() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    app.acquire("ps_abc123", &s, json!({})).await;
    let unknown = app
        .command("ps_abc123", Some(&s), "self_destruct", json!({}))
        .await;
    assert_error(&unknown, StatusCode::BAD_REQUEST, "unknown_action");
    assert!(
        unknown.1["detail"]
            .as_str()
            .unwrap()
            .contains("set_voltage, set_current"),
        "{}",
        unknown.1
    );
    for (params, name) in [
        (json!({"voltage": 31}), "voltage"),
        (json!({"voltage": "high"}), "voltage"),
        (json!({}), "voltage"),
        (json!({"voltage": 1, "channel": 9}), "channel"),
        (json!({"voltage": 6, "channel": 3}), "voltage"),
    ] {
        let response = app
            .command("ps_abc123", Some(&s), "set_voltage", params.clone())
            .await;
        assert_error(
            &response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        );
        assert!(
            response.1["error"].as_str().unwrap().contains(name),
            "{params}: {}",
            response.1
        );
    }
    let (_, body) = app
        .command("ps_abc123", Some(&s), "get_readings", json!({}))
        .await;
    assert_eq!(
        body["data"]["channels"][0]["voltage_set"], 0.0,
        "nothing was applied"
    );
    let mismatch = app
        .post(
            "/api/equipment/ps_abc123/command",
            json!({"equipment_id": "scope_123", "action": "get_status", "session_id": s}),
        )
        .await;
    assert_error(
        &mismatch,
        StatusCode::UNPROCESSABLE_ENTITY,
        "equipment_mismatch",
    );
    let missing = app
        .post(
            "/api/equipment/nope/command",
            json!({"action": "get_status", "session_id": s}),
        )
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "equipment_not_found");
}

#[tokio::test]
async fn observers_may_observe_but_not_control() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    app.acquire("scope_123", &s, json!({"lock_mode": "observer"}))
        .await;
    let (status, body) = app
        .command("scope_123", Some(&s), "get_waveform", json!({"channel": 1}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["samples"].as_array().unwrap().len(), 1000);
    assert_error(
        &app.command(
            "scope_123",
            Some(&s),
            "set_timebase",
            json!({"seconds_per_div": 0.001}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "not_lock_holder",
    );
    let off = app
        .command("scope_123", Some(&s), "get_waveform", json!({"channel": 4}))
        .await;
    assert_error(&off, StatusCode::CONFLICT, "instrument_rejected");
}

#[tokio::test]
async fn the_load_and_scope_drivers_run_their_actions() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    app.acquire("load_1", &s, json!({})).await;
    for (action, params) in [
        ("set_mode", json!({"mode": "CC"})),
        ("set_current", json!({"current": 2.0})),
        ("set_input", json!({"enabled": true})),
    ] {
        assert_eq!(
            app.command("load_1", Some(&s), action, params).await.0,
            StatusCode::OK
        );
    }
    let (_, body) = app
        .command("load_1", Some(&s), "get_measurement", json!({}))
        .await;
    assert_eq!(body["data"]["current"], 2.0);
    assert_eq!(body["data"]["voltage"], 11.8);
    assert_error(
        &app.command("load_1", Some(&s), "set_mode", json!({"mode": "XX"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_parameter",
    );

    app.acquire("scope_123", &s, json!({})).await;
    for action in [
        "trigger_stop",
        "trigger_run",
        "trigger_single",
        "autoscale",
        "reset",
    ] {
        let (status, body) = app.command("scope_123", Some(&s), action, json!({})).await;
        assert_eq!(status, StatusCode::OK, "{action}: {body}");
    }
    let (_, body) = app
        .command(
            "scope_123",
            Some(&s),
            "get_measurement",
            json!({"channel": 2, "kind": "vmax"}),
        )
        .await;
    assert!(
        (body["data"]["value"].as_f64().unwrap() - 3.3).abs() < 0.1,
        "{body}"
    );
}

#[tokio::test]
async fn the_brief_example_reads_back_the_voltage_it_set() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    app.acquire("ps_abc123", &s, json!({})).await;
    for (action, params) in [
        ("set_voltage", json!({"voltage": 12.0})),
        ("set_output", json!({"enabled": true})),
    ] {
        let (status, body) = app.command("ps_abc123", Some(&s), action, params).await;
        assert_eq!(status, StatusCode::OK, "{action}: {body}");
    }
    let (_, body) = app
        .command("ps_abc123", Some(&s), "get_voltage", json!({}))
        .await;
    assert_eq!(body["data"], json!({"channel": 1, "voltage": 12.0}));
    // The limit defaults to the channel's maximum: 12 V into 10 ohms draws
    // 1.2 A, well inside it, so the supply regulates the voltage.
    let (_, status) = app.get("/api/equipment/ps_abc123/status").await;
    let channel = &status["state"]["channels"][0];
    assert_eq!(
        (
            &channel["current_limit"],
            &channel["current"],
            &channel["mode"]
        ),
        (&json!(3.0), &json!(1.2), &json!("CV")),
        "{channel}"
    );
    // The constant-current model still holds when the limit is lowered.
    app.command(
        "ps_abc123",
        Some(&s),
        "set_current",
        json!({"current": 0.5}),
    )
    .await;
    let (_, body) = app
        .command("ps_abc123", Some(&s), "get_voltage", json!({}))
        .await;
    assert_eq!(body["data"]["voltage"], 5.0);
}

/// Settings loaded through the real configuration path: `config` written
/// to a file and read as `lablink serve --config` reads it.
fn settings_from_file(config: &str) -> Settings {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lab.toml");
    std::fs::write(&path, config).unwrap();
    let flags = Flags {
        bind: Some("127.0.0.1:0".into()),
        config: Some(path),
        store: Some("memory".into()),
    };
    lablink::config::load(flags, dir.path()).expect("the file parses")
}

/// Why a server with the config file `config` refuses to start.
async fn start_up_error(config: &str) -> String {
    let clock = ManualClock::new(Timestamp::parse_rfc3339(START).unwrap());
    match Server::build(settings_from_file(config), Arc::new(clock)).await {
        Ok(_) => panic!("started with {config}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn impossible_simulator_settings_stop_start_up_naming_them() {
    let cases = [
        ("sim-psu", "load_ohms = [-1, 0, 1]", "load_ohms", "-1"),
        (
            "sim-psu",
            "load_ohms = [10, 0, 5]",
            "load_ohms",
            "channel 2",
        ),
        ("sim-psu", "load_ohms = [10, nan, 5]", "load_ohms", "NaN"),
        ("sim-psu", "load_ohms = [10, 10]", "load_ohms", "3 values"),
        (
            "sim-psu",
            "load_ohms = [10, 10, 5, 5]",
            "load_ohms",
            "3 values",
        ),
        ("sim-load", "source_voltage = 0", "source_voltage", "0"),
        ("sim-load", "source_voltage = -12", "source_voltage", "-12"),
        ("sim-load", "source_voltage = nan", "source_voltage", "NaN"),
        ("sim-load", "source_voltage = 1000", "source_voltage", "150"),
        (
            "sim-load",
            "source_resistance = 0",
            "source_resistance",
            "0",
        ),
        (
            "sim-load",
            "source_resistance = -0.1",
            "source_resistance",
            "-0.1",
        ),
        (
            "sim-load",
            "source_resistance = inf",
            "source_resistance",
            "inf",
        ),
    ];
    for (driver, setting, name, detail) in cases {
        let config = format!(
            "[[equipment]]\nid = 'ok'\ndriver = 'sim-scope'\n\n\
             [[equipment]]\nid = 'bench3'\ndriver = '{driver}'\n{setting}\n"
        );
        let error = start_up_error(&config).await;
        for expected in ["\"bench3\"", driver, name, detail] {
            assert!(
                error.contains(expected),
                "{setting}: {error:?} lacks {expected:?}"
            );
        }
    }
    // Possible settings start, integers included.
    let app = spawn_with(settings_from_file(
        "[[equipment]]\nid = 'p'\ndriver = 'sim-psu'\nload_ohms = [10, 2.5, 1e6]\n\
         [[equipment]]\nid = 'l'\ndriver = 'sim-load'\nsource_voltage = 48\nsource_resistance = 0.01\n",
    ))
    .await;
    let (_, status) = app.get("/api/equipment/l/status").await;
    assert_eq!(
        status["state"]["source"],
        json!({"voltage": 48.0, "resistance": 0.01})
    );
}

#[test]
fn the_binary_refuses_an_impossible_load_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lab.toml");
    std::fs::write(
        &path,
        "[[equipment]]\nid = 'bench3_psu'\ndriver = 'sim-psu'\nload_ohms = [-1, 0, 1]\n",
    )
    .unwrap();
    let mut child = lablink()
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--config",
        ])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A server that starts would run forever: give it a while, then stop it.
    let mut waited = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        waited += 1;
        if waited > 300 {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the server started with an impossible load");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("bench3_psu") && stderr.contains("load_ohms"),
        "{stderr}"
    );
}

/// What a refused parameter's detail says: a huge whole number is out of
/// range (not "not whole"), huge and tiny numbers are echoed short, an
/// action without parameters says so plainly; -0 is answered as 0.
#[tokio::test]
async fn parameter_errors_read_well_and_minus_zero_is_zero() {
    let app = spawn_app().await;
    let s = app.session(0.0).await;
    app.acquire("ps_abc123", &s, json!({})).await;
    for (action, parameters, says) in [
        (
            "get_voltage",
            json!({"channel": 18446744073709551616.0_f64}),
            "parameter \"channel\" must be between 1 and 3, got 1.8446744073709552e19",
        ),
        (
            "set_voltage",
            json!({"voltage": 1e308}),
            "parameter \"voltage\" must be between 0 and 30, got 1e308",
        ),
        (
            "get_status",
            json!({"x": 1}),
            "parameter \"x\" is not a parameter of get_status, which takes none",
        ),
    ] {
        let (status, body) = app.command("ps_abc123", Some(&s), action, parameters).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["code"], "invalid_parameter");
        assert_eq!(body["detail"], says);
    }
    let (status, body) = app
        .command(
            "ps_abc123",
            Some(&s),
            "set_voltage",
            json!({"voltage": -0.0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let set = body["data"]["voltage_set"].as_f64().unwrap();
    assert!(set == 0.0 && set.is_sign_positive(), "{body}");
    let refused = app
        .post(
            "/api/locks/sessions/create",
            json!({"timeout_seconds": 1e300}),
        )
        .await;
    assert_error(
        &refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_timeout",
    );
    assert_eq!(
        refused.1["detail"],
        "timeout_seconds must be at most 1000000000, got 1e300"
    );
}
