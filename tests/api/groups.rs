//! Lock groups and pools through the API: configured groups and tags from
//! the real binary's config file, all-or-nothing grants and whole-group
//! release and expiry on every store, across a restart, and races of many
//! clients for overlapping groups and pools.

use lablink::config::Settings;
use lablink::drivers::{EquipmentConfig, GroupConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashMap;

use crate::helpers::{
    TestApp, assert_error, spawn_with, spawn_with_clock, sqlite_in, start_binary,
};
use crate::live::{connect, until};
use crate::queueing::on_every_store_with;

/// psu1..psu3 (tag "psu"; psu1 also "30V"), scope1 and load1; the group
/// bench3 = psu1 + scope1 + load1.
pub(crate) fn bench(settings: Settings) -> Settings {
    let entry = |id: &str, driver: &str, tags: &[&str]| EquipmentConfig {
        id: id.into(),
        driver: driver.into(),
        name: None,
        allow: None,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        settings: toml::Table::new(),
    };
    Settings {
        equipment: Some(vec![
            entry("psu1", "sim-psu", &["psu", "30V"]),
            entry("psu2", "sim-psu", &["psu"]),
            entry("psu3", "sim-psu", &["psu"]),
            entry("scope1", "sim-scope", &[]),
            entry("load1", "sim-load", &[]),
        ]),
        groups: vec![GroupConfig {
            id: "bench3".into(),
            name: Some("Bench 3".into()),
            members: vec!["psu1".into(), "scope1".into(), "load1".into()],
        }],
        ..settings
    }
}

async fn acquire(app: &TestApp, body: Value) -> (StatusCode, Value) {
    app.post("/api/locks/acquire", body).await
}

/// Who holds each of `ids` (exclusive), as the status endpoint says.
async fn holders(app: &TestApp, ids: &[&str]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for id in ids {
        let (_, status) = app.get(&format!("/api/locks/status/{id}")).await;
        out.push(status["session_id"].as_str().map(str::to_owned));
    }
    out
}

fn some(names: &[&str]) -> Vec<Option<String>> {
    names
        .iter()
        .map(|n| (!n.is_empty()).then(|| n.to_string()))
        .collect()
}

#[tokio::test]
async fn the_binary_serves_configured_groups_and_tags_from_its_config_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("lablink.toml"),
        r#"
[server]
store = "memory"

[[equipment]]
id = "psu1"
driver = "sim-psu"
tags = ["psu", "30V"]

[[equipment]]
id = "psu2"
driver = "sim-psu"
tags = ["psu"]

[[equipment]]
id = "scope1"
driver = "sim-scope"

[[group]]
id = "bench3"
name = "Bench 3"
members = ["psu1", "scope1"]
"#,
    )
    .unwrap();
    let (mut child, addr, _) = start_binary(
        dir.path(),
        &["--config", "lablink.toml", "--bind", "127.0.0.1:0"],
        &[],
    );
    let app = TestApp::at(&format!("http://{addr}"));
    let (_, list) = app.get("/api/equipment/list").await;
    assert_eq!(
        list["groups"],
        json!([{"group_id": "bench3", "name": "Bench 3", "members": ["psu1", "scope1"]}])
    );
    assert_eq!(list["equipment"][0]["tags"], json!(["psu", "30V"]));

    let (status, got) = acquire(
        &app,
        json!({"session_id": "alice", "equipment_id": "bench3"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let locked: Vec<&str> = got["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["equipment_id"].as_str().unwrap())
        .collect();
    assert_eq!(locked, ["psu1", "scope1"]);
    assert_eq!(got["locks"][0]["group_name"], "bench3");
    let group_id = got["group_id"].as_str().unwrap().to_owned();

    // A pool by tag gets the free one.
    let (_, pool) = acquire(
        &app,
        json!({"session_id": "bob", "any_of": {"tags": ["psu"]}}),
    )
    .await;
    assert_eq!(pool["lock"]["equipment_id"], "psu2", "{pool}");

    let (status, released) = app
        .post(
            "/api/locks/release",
            json!({"session_id": "alice", "group_id": group_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{released}");
    assert_eq!(released["equipment_ids"], json!(["psu1", "scope1"]));
    assert_eq!(holders(&app, &["psu1", "scope1"]).await, some(&["", ""]));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn a_group_is_granted_all_at_once_and_released_whole_on_every_store() {
    on_every_store_with(bench, |app, store| async move {
        whole_group_scenario(&app, store).await;
        app
    })
    .await;
}

async fn whole_group_scenario(app: &TestApp, store: &str) {
    let ids = ["psu1", "scope1", "load1"];
    let (status, _) = acquire(app, json!({"session_id": "x", "equipment_id": "scope1"})).await;
    assert_eq!(status, StatusCode::OK);
    // Not a part: refused while one member is busy, and nothing is taken.
    let busy = acquire(app, json!({"session_id": "g", "equipment_id": "bench3"})).await;
    assert_error(&busy, StatusCode::CONFLICT, "equipment_locked");
    assert_eq!(holders(app, &ids).await, some(&["", "x", ""]), "{store}");

    let (_, queued) = acquire(
        app,
        json!({"session_id": "g", "equipment_ids": ["psu1", "scope1", "load1"], "queue_if_busy": true}),
    )
    .await;
    assert_eq!(queued["status"], "queued", "{queued}");
    let places: Vec<(String, u64)> = queued["queue_entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["equipment_id"].as_str().unwrap().to_owned(),
                e["position"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        places,
        [
            ("psu1".into(), 1),
            ("scope1".into(), 1),
            ("load1".into(), 1)
        ]
    );
    // Nobody behind the group takes a member it waits for.
    let (_, behind) = acquire(
        app,
        json!({"session_id": "y", "equipment_id": "psu1", "queue_if_busy": true}),
    )
    .await;
    assert_eq!(behind["queue_entry"]["position"], 2, "{behind}");

    app.release("scope1", "x", false).await;
    assert_eq!(holders(app, &ids).await, some(&["g", "g", "g"]), "{store}");
    let group_id = queued["group_id"].as_str().unwrap();
    let (_, all) = app.get("/api/locks/all").await;
    assert_eq!(all["exclusive_locks"]["load1"]["group_id"], group_id);

    // Releasing one member releases the group; psu1 passes to y.
    let (status, released) = app.release("load1", "g", false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(released["group_id"], queued["group_id"], "{released}");
    assert_eq!(
        released["equipment_ids"],
        json!(["load1", "psu1", "scope1"])
    );
    assert_eq!(holders(app, &ids).await, some(&["y", "", ""]), "{store}");
    let (_, history) = app
        .get("/api/locks/events?event=lock_released&limit=100")
        .await;
    let released: Vec<(&str, &str)> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["group_id"] == group_id)
        .map(|e| {
            (
                e["equipment_id"].as_str().unwrap(),
                e["session_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        released,
        [("load1", "g"), ("psu1", "g"), ("scope1", "g")],
        "{store}"
    );
}

#[tokio::test]
async fn a_group_renews_and_expires_as_one_and_its_holder_hears_it() {
    let app = spawn_with(bench(crate::helpers::memory())).await;
    let mut ws = connect(&app, json!({"type": "subscribe", "session_id": "g"})).await;
    let (_, got) = acquire(
        &app,
        json!({"session_id": "g", "equipment_ids": ["psu1", "psu2"], "timeout_seconds": 10}),
    )
    .await;
    assert_eq!(got["status"], "locked", "{got}");
    app.advance(8.0);
    // A command on one member renews both.
    let (status, body) = app
        .command("psu1", Some("g"), "get_voltage", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.advance(8.0);
    assert_eq!(holders(&app, &["psu1", "psu2"]).await, some(&["g", "g"]));
    app.advance(3.0);
    app.post("/api/locks/cleanup", json!({})).await;
    assert_eq!(holders(&app, &["psu1", "psu2"]).await, some(&["", ""]));
    let lost = until(&mut ws, "lock_lost").await;
    assert_eq!(lost["group_id"], got["group_id"], "{lost}");
    app.stop().await;
}

#[tokio::test]
async fn a_held_group_survives_a_restart_and_still_releases_whole() {
    let dir = tempfile::tempdir().unwrap();
    let settings = || bench(sqlite_in(dir.path(), ""));
    let app = spawn_with(settings()).await;
    let (_, got) = acquire(&app, json!({"session_id": "g", "equipment_id": "bench3"})).await;
    let (_, waiting) = acquire(
        &app,
        json!({"session_id": "h", "equipment_ids": ["scope1", "psu2"], "queue_if_busy": true}),
    )
    .await;
    assert_eq!(waiting["status"], "queued");
    let clock = app.stop().await;
    let app = spawn_with_clock(settings(), clock).await;
    let ids = ["psu1", "scope1", "load1", "psu2"];
    assert_eq!(holders(&app, &ids).await, some(&["g", "g", "g", ""]));
    let (status, released) = app
        .post(
            "/api/locks/release",
            json!({"session_id": "g", "equipment_id": "bench3"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{released}");
    assert_eq!(released["group_id"], got["group_id"]);
    assert_eq!(holders(&app, &ids).await, some(&["", "h", "", "h"]));
    app.stop().await;
}

#[tokio::test]
async fn a_pool_is_fair_to_those_who_asked_for_it_and_for_a_member_by_name() {
    let app = spawn_with(bench(crate::helpers::memory())).await;
    for who in ["a", "b", "c"] {
        let (_, got) = acquire(
            &app,
            json!({"session_id": who, "any_of": {"tags": ["psu"]}}),
        )
        .await;
        assert_eq!(got["status"], "locked", "{got}");
    }
    assert_eq!(
        holders(&app, &["psu1", "psu2", "psu3"]).await,
        some(&["a", "b", "c"])
    );
    // p waits for any psu; n then asks for psu3 by name; q for any psu.
    let (_, p) = acquire(
        &app,
        json!({"session_id": "p", "any_of": {"tags": ["psu"]}, "queue_if_busy": true}),
    )
    .await;
    assert_eq!(p["queue_entries"].as_array().unwrap().len(), 3, "{p}");
    acquire(
        &app,
        json!({"session_id": "n", "equipment_id": "psu3", "queue_if_busy": true}),
    )
    .await;
    acquire(&app, json!({"session_id": "q", "any_of": {"equipment_ids": ["psu2", "psu3"]}, "queue_if_busy": true})).await;
    app.release("psu3", "c", false).await;
    assert_eq!(
        holders(&app, &["psu1", "psu2", "psu3"]).await,
        some(&["a", "b", "p"])
    );
    app.release("psu3", "p", false).await;
    assert_eq!(
        holders(&app, &["psu1", "psu2", "psu3"]).await,
        some(&["a", "b", "n"])
    );
    app.release("psu2", "b", false).await;
    assert_eq!(
        holders(&app, &["psu1", "psu2", "psu3"]).await,
        some(&["a", "q", "n"])
    );
    app.stop().await;
}

#[tokio::test]
async fn a_group_waits_with_wait_seconds_until_granted() {
    let app = spawn_with(bench(crate::helpers::memory())).await;
    acquire(&app, json!({"session_id": "x", "equipment_id": "load1"})).await;
    let waiter = {
        let app = TestApp::at(&app.base);
        tokio::spawn(async move {
            acquire(
                &app,
                json!({"session_id": "g", "equipment_id": "bench3", "queue_if_busy": true, "wait_seconds": 30}),
            )
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    app.release("load1", "x", false).await;
    let (status, got) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["status"], "locked", "{got}");
    assert_eq!(got["locks"].as_array().unwrap().len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn bad_group_requests_get_clear_errors_and_change_nothing() {
    let app = spawn_with(bench(crate::helpers::memory())).await;
    acquire(&app, json!({"session_id": "s", "equipment_id": "psu2"})).await;
    let cases = [
        (
            json!({"session_id": "s", "equipment_ids": ["psu1", "psu2"]}),
            StatusCode::CONFLICT,
            "group_conflict",
        ),
        (
            json!({"session_id": "t", "equipment_ids": ["psu1", "nope"]}),
            StatusCode::NOT_FOUND,
            "equipment_not_found",
        ),
        (
            json!({"session_id": "t", "equipment_ids": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        ),
        (
            json!({"session_id": "t", "any_of": {"tags": ["nothing-has-this"]}}),
            StatusCode::NOT_FOUND,
            "equipment_not_found",
        ),
        (
            json!({"session_id": "t", "any_of": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        ),
        (
            json!({"session_id": "t", "equipment_id": "bench3", "equipment_ids": ["psu2"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        ),
        (
            json!({"session_id": "t"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        ),
    ];
    for (body, status, code) in cases {
        let got = acquire(&app, body.clone()).await;
        assert_error(&got, status, code);
    }
    assert_eq!(
        holders(&app, &["psu1", "psu2", "psu3", "scope1", "load1"]).await,
        some(&["", "s", "", "", ""])
    );
    let missing = app
        .post(
            "/api/locks/release",
            json!({"session_id": "s", "group_id": "grp_none"}),
        )
        .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "no_lock");
    // A group id and instruments at once: refused, nothing released.
    let both = app
        .post(
            "/api/locks/release",
            json!({"session_id": "s", "group_id": "grp_none", "equipment_id": "psu2"}),
        )
        .await;
    assert_error(&both, StatusCode::UNPROCESSABLE_ENTITY, "invalid_parameter");
    assert_eq!(
        holders(&app, &["psu1", "psu2", "psu3", "scope1", "load1"]).await,
        some(&["", "s", "", "", ""])
    );
    app.stop().await;
}

#[tokio::test]
async fn many_clients_racing_for_overlapping_groups_and_pools_all_get_their_turn() {
    let app = spawn_with(bench(crate::helpers::memory())).await;
    let asks = [
        json!({"equipment_id": "bench3"}),
        json!({"equipment_ids": ["psu1", "psu2"]}),
        json!({"equipment_ids": ["scope1", "psu3"]}),
        json!({"any_of": {"tags": ["psu"]}}),
        json!({"any_of": {"tags": ["psu"]}, "equipment_ids": ["load1"]}),
        json!({"equipment_id": "psu2"}),
    ];
    let mut clients = Vec::new();
    for i in 0..18 {
        let app = TestApp::at(&app.base);
        let mut body = asks[i % asks.len()].clone();
        let session = format!("c{i}");
        body["session_id"] = json!(session);
        body["queue_if_busy"] = json!(true);
        body["wait_seconds"] = json!(60);
        clients.push(tokio::spawn(async move {
            for round in 0..3 {
                let (status, got) = acquire(&app, body.clone()).await;
                assert_eq!(status, StatusCode::OK, "{got}");
                assert_eq!(got["status"], "locked", "{session} round {round}: {got}");
                let held: Vec<String> = match got["locks"].as_array() {
                    Some(locks) => locks
                        .iter()
                        .map(|l| l["equipment_id"].as_str().unwrap().to_owned())
                        .collect(),
                    None => vec![got["lock"]["equipment_id"].as_str().unwrap().to_owned()],
                };
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                let (status, _) = app.release(&held[0], &session, false).await;
                assert_eq!(status, StatusCode::OK);
            }
        }));
    }
    for client in clients {
        tokio::time::timeout(std::time::Duration::from_secs(60), client)
            .await
            .expect("no deadlock: every client gets its turn")
            .unwrap();
    }
    // Per instrument, grants and releases alternate: never two holders.
    let (_, history) = app.get("/api/locks/events?limit=1000").await;
    let mut holder: HashMap<String, Option<String>> = HashMap::new();
    for e in history["events"].as_array().unwrap() {
        let (Some(id), Some(session)) = (e["equipment_id"].as_str(), e["session_id"].as_str())
        else {
            continue;
        };
        let now = holder.entry(id.to_owned()).or_default();
        match e["event"].as_str().unwrap() {
            "lock_acquired" | "queue_processed" => {
                assert_eq!(
                    *now, None,
                    "{id} granted to {session} while held by {now:?}"
                );
                *now = Some(session.to_owned());
            }
            "lock_released" => {
                assert_eq!(now.as_deref(), Some(session), "{id}");
                *now = None;
            }
            _ => {}
        }
    }
    assert!(holder.values().all(Option::is_none), "{holder:?}");
    app.stop().await;
}

#[tokio::test]
async fn leaving_one_queue_leaves_them_all_and_an_admin_force_releases_a_group_by_id() {
    let app = spawn_with(bench(crate::helpers::memory())).await;
    acquire(&app, json!({"session_id": "x", "equipment_id": "scope1"})).await;
    let (_, waiting) = acquire(
        &app,
        json!({"session_id": "w", "equipment_ids": ["scope1", "psu3"], "queue_if_busy": true}),
    )
    .await;
    let (status, left) = app
        .post(
            "/api/locks/release",
            json!({"session_id": "w", "equipment_ids": ["psu3", "scope1"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{left}");
    assert_eq!(left["status"], "dequeued");
    assert_eq!(left["group_id"], waiting["group_id"]);
    for id in ["scope1", "psu3"] {
        let (_, queue) = app.get(&format!("/api/locks/queue/{id}")).await;
        assert_eq!(queue["queue_length"], 0, "{id}: {queue}");
    }

    let (_, held) = acquire(
        &app,
        json!({"session_id": "g", "equipment_id": "bench3", "queue_if_busy": true}),
    )
    .await;
    app.release("scope1", "x", false).await;
    assert_eq!(
        holders(&app, &["psu1", "scope1", "load1"]).await,
        some(&["g", "g", "g"])
    );
    let (status, forced) = app
        .post(
            "/api/locks/release",
            json!({"session_id": "lab-manager", "group_id": held["group_id"], "force": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{forced}");
    assert_eq!(forced["was_forced"], true);
    assert_eq!(
        holders(&app, &["psu1", "scope1", "load1"]).await,
        some(&["", "", ""])
    );
    let (_, history) = app
        .get("/api/locks/events?event=lock_force_released&limit=10")
        .await;
    let forced_by: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["forced_by"].as_str().unwrap())
        .collect();
    assert_eq!(forced_by, ["lab-manager"; 3]);
    app.stop().await;
}

#[tokio::test]
async fn a_configured_group_goes_into_maintenance_and_back_as_one() {
    let app = spawn_with(bench(crate::helpers::memory())).await;
    // One member is already out for its own reason: the group's
    // maintenance leaves it as it is.
    let (status, body) = app
        .post(
            "/api/equipment/scope1/maintenance",
            json!({"reason": "calibration"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .post(
            "/api/equipment/bench3/maintenance",
            json!({"reason": "recabling"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (id, reason, group) in [
        ("psu1", "recabling", json!("bench3")),
        ("scope1", "calibration", json!(null)),
        ("load1", "recabling", json!("bench3")),
    ] {
        let (_, s) = app.get(&format!("/api/locks/status/{id}")).await;
        assert_eq!(s["maintenance"]["reason"], reason, "{id}: {s}");
        assert_eq!(s["maintenance"]["group"], group, "{id}: {s}");
    }
    let refused = acquire(&app, json!({"session_id": "g", "equipment_id": "bench3"})).await;
    assert_error(&refused, StatusCode::CONFLICT, "in_maintenance");
    let (_, queued) = acquire(
        &app,
        json!({"session_id": "g", "equipment_id": "bench3", "queue_if_busy": true}),
    )
    .await;
    assert_eq!(queued["status"], "queued", "{queued}");
    let (status, body) = app.delete("/api/equipment/bench3/maintenance").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, s) = app.get("/api/locks/status/scope1").await;
    assert_eq!(s["maintenance"]["reason"], "calibration", "{s}");
    assert_eq!(
        holders(&app, &["psu1", "scope1", "load1"]).await,
        some(&["", "", ""])
    );
    // Nothing of the group's is left to end.
    let (status, body) = app.delete("/api/equipment/bench3/maintenance").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        (&body["code"], &body["detail"]),
        (
            &json!("not_in_maintenance"),
            &json!("equipment bench3 is not in maintenance")
        ),
        "the group named, not a member"
    );
    let (status, body) = app.delete("/api/equipment/scope1/maintenance").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        holders(&app, &["psu1", "scope1", "load1"]).await,
        some(&["g", "g", "g"])
    );
    app.stop().await;
}

#[tokio::test]
async fn analytics_of_a_configured_group_sum_its_members() {
    let app = spawn_with(bench(crate::helpers::memory())).await;
    let (_, held) = acquire(
        &app,
        json!({"session_id": "g", "equipment_id": "bench3", "timeout_seconds": 0}),
    )
    .await;
    assert_eq!(held["status"], "locked", "{held}");
    app.advance(60.0);
    app.post(
        "/api/locks/release",
        json!({"session_id": "g", "group_id": held["group_id"]}),
    )
    .await;
    app.advance(40.0);
    let (status, report) = app
        .get("/api/locks/analytics?equipment_id=bench3&group_by=all&since=2026-01-05T09:00:00Z&until=2026-01-05T09:01:40Z")
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let row = &report["rows"][0];
    assert_eq!(
        (
            &row["grants"],
            &row["exclusive_seconds"],
            &row["idle_seconds"]
        ),
        (&json!(3), &json!(180.0), &json!(120.0)),
        "{report}"
    );
    app.stop().await;
}

#[tokio::test]
async fn what_a_new_user_tried_answers_as_the_readme_says() {
    let app = spawn_with(bench(crate::helpers::memory())).await;
    // A pool is released by the instrument it got, not by another one.
    let (_, got) = acquire(
        &app,
        json!({"session_id": "a", "any_of": {"equipment_ids": ["psu1", "psu2"], "note": "ignored"}}),
    )
    .await;
    assert_eq!(got["lock"]["equipment_id"], "psu1", "{got}");
    let wrong = app
        .post(
            "/api/locks/release",
            json!({"session_id": "a", "equipment_ids": ["psu2"]}),
        )
        .await;
    assert_error(&wrong, StatusCode::NOT_FOUND, "no_lock");
    assert_eq!(holders(&app, &["psu1"]).await, some(&["a"]));
    let empty = app
        .post(
            "/api/locks/release",
            json!({"session_id": "a", "equipment_ids": []}),
        )
        .await;
    assert_error(
        &empty,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_parameter",
    );
    app.release("psu1", "a", false).await;

    // The configured group's members taken by id are that group.
    acquire(
        &app,
        json!({"session_id": "b", "equipment_ids": ["load1", "scope1", "psu1"]}),
    )
    .await;
    let (_, again) = acquire(&app, json!({"session_id": "b", "equipment_id": "bench3"})).await;
    assert_eq!(again["status"], "refreshed", "{again}");
    let (status, released) = app
        .post(
            "/api/locks/release",
            json!({"session_id": "b", "equipment_id": "bench3"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{released}");

    // A group's id where an instrument is needed says what it is.
    let (status, body) = app.get("/api/locks/status/bench3").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["detail"].as_str().unwrap().contains("is a lock group"),
        "{body}"
    );

    // A waiting group whose place a manager takes hears not_queued.
    acquire(&app, json!({"session_id": "x", "equipment_id": "load1"})).await;
    let polling = {
        let app = TestApp::at(&app.base);
        tokio::spawn(async move {
            acquire(
                &app,
                json!({"session_id": "w", "equipment_ids": ["load1", "psu3"], "queue_if_busy": true, "wait_seconds": 30}),
            )
            .await
        })
    };
    for _ in 0..100 {
        let (_, queue) = app.get("/api/locks/queue/psu3").await;
        if queue["queue_length"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, _) = app
        .post(
            "/api/locks/queue/load1/w/remove",
            json!({"forced_by": "mgr"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let answer = polling.await.unwrap();
    assert_error(&answer, StatusCode::NOT_FOUND, "not_queued");
    app.stop().await;
}

#[tokio::test]
async fn a_group_id_subscribes_to_its_members_and_an_expired_group_says_it_was_lost() {
    let app = spawn_with(bench(crate::helpers::memory())).await;
    let mut ws = connect(
        &app,
        json!({"type": "subscribe", "equipment_ids": ["bench3"]}),
    )
    .await;
    acquire(&app, json!({"session_id": "x", "equipment_id": "scope1"})).await;
    let heard = until(&mut ws, "lock_acquired").await;
    assert_eq!(heard["equipment_id"], "scope1", "{heard}");
    // Waiting: the message names only what stands in the way.
    let (_, queued) = acquire(
        &app,
        json!({"session_id": "g", "equipment_ids": ["psu2", "scope1"], "queue_if_busy": true}),
    )
    .await;
    assert_eq!(
        queued["message"], "Waiting for scope1, locked by session x (implicit)",
        "{queued}"
    );
    app.release("scope1", "x", false).await;
    app.post("/api/locks/activity/psu2", json!({"session_id": "g"}))
        .await;
    app.advance(301.0);
    app.post("/api/locks/cleanup", json!({})).await;
    let lost = app
        .post(
            "/api/locks/release",
            json!({"session_id": "g", "equipment_ids": ["psu2", "scope1"]}),
        )
        .await;
    assert_error(&lost, StatusCode::NOT_FOUND, "lock_lost");
    app.stop().await;
}
