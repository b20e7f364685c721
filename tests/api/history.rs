//! The history at work: retention by count on a running server, and lock
//! analytics (JSON and CSV) computed from what was recorded.

use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn only_the_newest_events_are_kept_when_a_count_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = sqlite_in(dir.path(), "?synchronous=normal");
    settings.event_retention_max_events = 4;
    let app = spawn_with(settings).await;
    let s = app.session(0.0).await;
    for _ in 0..5 {
        app.acquire("ps_abc123", &s, json!({"timeout_seconds": 0}))
            .await;
        app.release("ps_abc123", &s, false).await;
    }
    let (_, all) = app.get("/api/locks/events?limit=1000").await;
    let newest: Vec<u64> = all["events"].as_array().unwrap()[7..]
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(newest.len(), 4, "{all}");
    // The pruner runs every 10 s (on the manual clock).
    app.advance(10.0);
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, page) = app.get("/api/locks/events?limit=1000").await;
            let kept: Vec<u64> = page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["seq"].as_u64().unwrap())
                .collect();
            if kept == newest {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("only the newest four events are kept");
    app.stop().await;
}

#[tokio::test]
async fn analytics_add_up_what_happened_to_an_instrument() {
    let app = spawn_app().await;
    let (_, start) = app.get("/api/version").await;
    assert_eq!(start["name"], "lablink");
    let a = app.session(0.0).await;
    let b = app.session(0.0).await;
    app.acquire("ps_abc123", &a, json!({"timeout_seconds": 0}))
        .await;
    app.advance(10.0);
    let (_, queued) = app
        .acquire(
            "ps_abc123",
            &b,
            json!({"timeout_seconds": 0, "queue_if_busy": true}),
        )
        .await;
    assert_eq!(queued["status"], "queued", "{queued}");
    app.advance(20.0);
    app.release("ps_abc123", &a, false).await; // b waited 20 s
    app.advance(30.0);
    app.release("ps_abc123", "admin", true).await; // b held 30 s, forced
    app.advance(40.0); // idle 40 s
    let since = "2026-01-05T09:00:00Z";
    let until = "2026-01-05T09:01:40Z"; // 100 s after the start
    let (status, report) = app
        .get(&format!(
            "/api/locks/analytics?equipment_id=ps_abc123&since={since}&until={until}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        report["rows"],
        json!([{
            "key": "ps_abc123",
            "exclusive_seconds": 60.0,
            "observer_seconds": 0.0,
            "idle_seconds": 40.0,
            "grants": 2,
            "grants_from_queue": 1,
            "wait_median_seconds": 20.0,
            "wait_p90_seconds": 20.0,
            "wait_max_seconds": 20.0,
            "forced_releases": 1,
            "expiries": 0
        }])
    );
    assert_eq!(report["group_by"], "equipment");
    // Every instrument has a row; the others were idle throughout.
    let (_, every) = app
        .get(&format!("/api/locks/analytics?since={since}&until={until}"))
        .await;
    let keys: Vec<(&str, f64)> = every["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap(),
                r["idle_seconds"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [("load_1", 100.0), ("ps_abc123", 40.0), ("scope_123", 100.0)]
    );
    // CSV, asked for by the Accept header.
    let csv = reqwest::Client::new()
        .get(format!(
            "{}/api/locks/analytics?equipment_id=ps_abc123&since={since}&until={until}&group_by=all",
            app.base
        ))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        csv.text().await.unwrap(),
        "group,exclusive_seconds,observer_seconds,idle_seconds,grants,grants_from_queue,wait_median_seconds,wait_p90_seconds,wait_max_seconds,forced_releases,expiries\r\n\
         all,60,0,40,2,1,20,20,20,1,0\r\n"
    );
    app.stop().await;
}

#[tokio::test]
async fn analytics_refuse_what_they_cannot_answer() {
    let app = spawn_app().await;
    for (query, status, code) in [
        (
            "group_by=team",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        ),
        (
            "format=xml",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        ),
        (
            "since=yesterday",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_timestamp",
        ),
        (
            "since=2026-01-01T00:00:00Z&until=2027-01-03T00:00:00Z",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "equipment_id=nope",
            StatusCode::NOT_FOUND,
            "equipment_not_found",
        ),
        (
            "equipment_id=ps_abc123,,load_1",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_id",
        ),
        (
            "user=",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        ),
    ] {
        let response = app.get(&format!("/api/locks/analytics?{query}")).await;
        assert_error(&response, status, code);
    }
    // The history refuses a window that ends before it starts, as
    // analytics does; equal ends are an empty window.
    let backwards = app
        .get("/api/locks/events?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z")
        .await;
    assert_error(
        &backwards,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
    assert!(
        backwards.1["detail"]
            .as_str()
            .unwrap()
            .contains("must not be after `until`")
    );
    let (status, empty) = app
        .get("/api/locks/events?since=2026-01-02T00:00:00Z&until=2026-01-02T00:00:00Z")
        .await;
    assert_eq!((status, empty["count"].as_u64()), (StatusCode::OK, Some(0)));
    app.stop().await;
}

/// Over days, the figures come from the rollups summed in the background
/// (hours and days), and only the cut hours at the window's edges from the
/// events: the same figures as the fold, fewer events read.
#[tokio::test]
async fn long_windows_are_answered_from_the_rollups() {
    let app = spawn_app().await;
    let a = app.session(0.0).await;
    // Three days, a lock held for an hour each day from 10:00.
    app.advance(3_600.0); // 10:00 on 2026-01-05
    for _ in 0..3 {
        app.acquire("ps_abc123", &a, json!({"timeout_seconds": 0}))
            .await;
        app.advance(3_600.0);
        app.release("ps_abc123", &a, false).await;
        app.advance(23.0 * 3_600.0);
    }
    // The background step runs every 10 s of the clock.
    app.advance(10.0);
    let url = "/api/locks/analytics?equipment_id=ps_abc123&since=2026-01-05T09:30:00Z&until=2026-01-08T09:30:00Z";
    let report = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (status, report) = app.get(url).await;
            assert_eq!(status, StatusCode::OK, "{report}");
            if report["rollup_rows_read"].as_u64() > Some(0) {
                return report;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the rollups are summed");
    let row = &report["rows"][0];
    assert_eq!(row["exclusive_seconds"], 3.0 * 3_600.0, "{report}");
    assert_eq!(row["idle_seconds"], 69.0 * 3_600.0, "{report}");
    assert_eq!(row["grants"], 3, "{report}");
    // Only the half hours at each end were read from the events (none).
    assert_eq!(report["events_read"], 0, "{report}");
    app.stop().await;
}
