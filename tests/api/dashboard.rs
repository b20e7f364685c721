//! The dashboard's serving, without a browser: `GET /` is the page, every
//! file it loads (followed through the modules' imports) is embedded and
//! served with its media type, caching validators and a Content-Security-
//! Policy that allows this server only; `/api/whoami` says who a token is.

use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use serde_json::json;

use crate::auth::secured;
use crate::helpers::{assert_error, spawn_app};

/// The asset paths a file refers to: `/assets/...` in HTML and CSS,
/// `./x.js` imports in modules.
fn references(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (marker, prefix) in [("\"/assets/", "/assets/"), ("from './", "/assets/")] {
        for piece in text.split(marker).skip(1) {
            let end = piece.find(['"', '\'']).unwrap_or(piece.len());
            found.push(format!("{prefix}{}", &piece[..end]));
        }
    }
    found
}

#[tokio::test]
async fn the_page_and_every_file_it_loads_are_served_from_the_binary() {
    let app = spawn_app().await;
    let page = app
        .client
        .get(format!("{}/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    assert_eq!(headers[CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(headers[CACHE_CONTROL], "no-cache");
    assert!(headers.contains_key(ETAG));
    let csp = headers[CONTENT_SECURITY_POLICY].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/assets/app.js"></script>"#));
    assert!(!html.contains("http://") && !html.contains("https://"));

    // Follow every reference from the page and the modules.
    let mut queue = references(&html);
    let mut served = Vec::new();
    while let Some(path) = queue.pop() {
        if served.contains(&path) {
            continue;
        }
        let answer = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{path}");
        let kind = answer.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
        let expected = match path.rsplit('.').next().unwrap() {
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            "svg" => "image/svg+xml",
            other => panic!("unexpected asset type {other} ({path})"),
        };
        assert_eq!(kind, expected, "{path}");
        assert!(answer.headers().contains_key(CONTENT_SECURITY_POLICY));
        let text = answer.text().await.unwrap();
        // No other host: nothing loaded or fetched from elsewhere.
        assert!(
            !text.contains("//cdn") && !text.contains("https://"),
            "{path}"
        );
        queue.extend(references(&text));
        served.push(path);
    }
    served.sort();
    assert_eq!(
        served,
        [
            "/assets/analytics.js",
            "/assets/api.js",
            "/assets/app.css",
            "/assets/app.js",
            "/assets/favicon.svg",
            "/assets/instrument.js",
            "/assets/live.js",
            "/assets/model.js",
            "/assets/overview.js",
            "/assets/sessions.js",
            "/assets/ui.js",
        ]
    );
}

#[tokio::test]
async fn a_current_copy_is_revalidated_with_a_304() {
    let app = spawn_app().await;
    let url = format!("{}/assets/app.js", app.base);
    let first = app.client.get(&url).send().await.unwrap();
    let etag = first.headers()[ETAG].clone();
    let again = app
        .client
        .get(&url)
        .header(IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()[ETAG], etag);
    assert!(again.bytes().await.unwrap().is_empty());
    let stale = app
        .client
        .get(&url)
        .header(IF_NONE_MATCH, "\"something-older\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
    // Each file has its own validator.
    let css = app
        .client
        .get(format!("{}/assets/app.css", app.base))
        .send()
        .await
        .unwrap();
    assert_ne!(css.headers()[ETAG], etag);
}

#[tokio::test]
async fn unknown_assets_and_other_methods_get_json_errors() {
    let app = spawn_app().await;
    assert_error(
        &app.get("/assets/nope.js").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &app.get("/assets/..%2FCargo.toml").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &app.post("/", json!({})).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

#[tokio::test]
async fn whoami_without_authentication_is_anyone_with_every_right() {
    let app = spawn_app().await;
    let (status, body) = app.get("/api/whoami").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"auth_required": false, "user": null, "role": "admin"})
    );
}

#[tokio::test]
async fn whoami_names_the_tokens_user_and_role() {
    let dir = tempfile::tempdir().unwrap();
    let (app, [admin, alice, _, vera]) = secured(dir.path()).await;
    assert_error(
        &app.get("/api/whoami").await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_error(
        &app.as_user("llk_wrong").get("/api/whoami").await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    for (token, user, role) in [
        (&admin, "root", "admin"),
        (&alice, "alice", "operator"),
        (&vera, "vera", "observer"),
    ] {
        let (status, body) = app.as_user(token).get("/api/whoami").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"auth_required": true, "user": user, "role": role})
        );
    }
    // The page itself needs no token (it asks for one).
    let page = app
        .client
        .get(format!("{}/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
}

/// The overview reads every instrument's maintenance at once (the lock
/// listing, `/api/locks/all`, is about locks).
#[tokio::test]
async fn the_instruments_in_maintenance_are_listed_at_once_until_they_end() {
    let app = spawn_app().await;
    assert_eq!(
        app.get("/api/equipment/maintenance").await.1,
        json!({"maintenance": {}, "count": 0})
    );
    let until = "2026-01-05T09:01:00Z";
    let (status, started) = app
        .post(
            "/api/equipment/ps_abc123/maintenance",
            json!({"reason": "calibration", "until": until}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    app.post(
        "/api/equipment/load_1/maintenance",
        json!({"reason": "fan broken"}),
    )
    .await;
    let (status, listed) = app.get("/api/equipment/maintenance").await;
    assert_eq!(status, StatusCode::OK);
    let (_, psu) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(listed["maintenance"]["ps_abc123"], psu["maintenance"]);
    assert_eq!(listed["maintenance"]["ps_abc123"], started["maintenance"]);
    assert_eq!(listed["maintenance"]["load_1"]["reason"], "fan broken");
    assert_eq!(listed["count"], 2);
    // One ends with its `until`, the other when ended.
    app.advance(60.0);
    let (_, listed) = app.get("/api/equipment/maintenance").await;
    assert_eq!(
        listed["maintenance"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["load_1"]
    );
    app.delete("/api/equipment/load_1/maintenance").await;
    assert_eq!(
        app.get("/api/equipment/maintenance").await.1,
        json!({"maintenance": {}, "count": 0})
    );
}
