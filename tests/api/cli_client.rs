//! The client commands through the real binary against a real server:
//! `status`, `sessions`, `queue`, `events` (tables and `--json`),
//! `command` (typed parameters), `release --force`, and `run` with real
//! child processes (exit status, environment, lock loss, signals, `--wait`),
//! and the queueing controls (priority, `--max-wait`, claims, maintenance,
//! `dequeue`, `end-session`, `step-back`, `swap`).

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

use crate::helpers::{TestApp, event_kinds, lablink, memory, spawn_app, spawn_with, start_binary};

const PSU: &str = "ps_abc123";

/// The binary as a client of `base`.
fn client(base: &str) -> Command {
    let mut cmd = Command::from(lablink());
    cmd.env("LABLINK_URL", base).kill_on_drop(true);
    cmd
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cli(base: &str, args: &[&str]) -> Out {
    let out = client(base).args(args).output().await.unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `cli` that must succeed; its stdout.
async fn ok(base: &str, args: &[&str]) -> String {
    let out = cli(base, args).await;
    assert_eq!(out.code, 0, "{args:?}: {}{}", out.stdout, out.stderr);
    out.stdout
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The table's rows (after the header), split on runs of 2+ spaces.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|line| {
            line.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// A holder of the PSU and a session queued behind it.
async fn busy_psu(app: &TestApp) -> (String, String) {
    let holder = app.session(600.0).await;
    let waiter = app.session(600.0).await;
    app.acquire(PSU, &holder, json!({})).await;
    let (_, queued) = app
        .acquire(PSU, &waiter, json!({"queue_if_busy": true}))
        .await;
    assert_eq!(queued["status"], "queued");
    (holder, waiter)
}

async fn live_sessions(app: &TestApp) -> Vec<String> {
    let (_, body) = app.get("/api/locks/sessions").await;
    body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn status_sessions_and_queue_show_who_holds_what_as_tables_and_as_the_servers_json() {
    let app = spawn_app().await;
    let (holder, waiter) = busy_psu(&app).await;

    let table = ok(&app.base, &["status"]).await;
    assert_eq!(
        table.lines().next().unwrap(),
        "EQUIPMENT  NAME                  STATE   HOLDER  TIME LEFT  QUEUE  OBSERVERS"
    );
    assert_eq!(
        rows(&table),
        vec![
            vec![
                "ps_abc123",
                "Demo power supply",
                "locked",
                "test",
                "5m 00s",
                "1",
                "0"
            ],
            vec!["scope_123", "Demo oscilloscope", "free", "-", "-", "0", "0"],
            vec!["load_1", "Demo electronic load", "free", "-", "-", "0", "0"],
        ]
    );
    let statuses = json_of(&ok(&app.base, &["status", "--json"]).await);
    let (_, psu) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(statuses[0], psu, "the server's own lock status object");
    assert_eq!(statuses[0]["session_id"], holder.as_str());
    assert_eq!(statuses.as_array().unwrap().len(), 3);

    let detail = ok(&app.base, &["status", PSU]).await;
    assert!(
        detail.contains(&format!("session:    {holder}")),
        "{detail}"
    );
    assert!(
        detail.contains("lock:       lock_ps_abc123_1, fencing token 1"),
        "{detail}"
    );
    let queue_rows: Vec<_> = rows(detail.split("\n\n").nth(1).unwrap());
    assert_eq!(queue_rows.len(), 1, "{detail}");
    assert_eq!(
        queue_rows[0][..4],
        ["1", waiter.as_str(), "test", "exclusive"]
    );
    assert_eq!(
        json_of(&ok(&app.base, &["status", PSU, "--json"]).await),
        psu
    );

    let (_, queue) = app.get("/api/locks/queue/ps_abc123").await;
    assert_eq!(
        json_of(&ok(&app.base, &["queue", PSU, "--json"]).await),
        queue
    );
    let table = ok(&app.base, &["queue", PSU]).await;
    assert_eq!(rows(&table)[0][..2], ["1", waiter.as_str()]);
    assert_eq!(
        ok(&app.base, &["queue", "load_1"]).await,
        "nobody is waiting for load_1\n"
    );

    let table = ok(&app.base, &["sessions"]).await;
    let mut listed: Vec<(String, String)> = rows(&table)
        .into_iter()
        .map(|r| (r[0].clone(), r[3].clone()))
        .collect();
    listed.sort();
    let mut expected = vec![
        (holder.clone(), "ps_abc123".to_owned()),
        (waiter.clone(), "ps_abc123 (queued 1)".to_owned()),
    ];
    expected.sort();
    assert_eq!(listed, expected, "{table}");
    let sessions = json_of(&ok(&app.base, &["sessions", "--json"]).await);
    let (_, server) = app.get("/api/locks/sessions").await;
    assert_eq!(sessions["sessions"], server["sessions"]);
    assert_eq!(sessions["count"], 2);
}

#[tokio::test]
async fn a_server_error_prints_its_detail_and_an_unreachable_server_is_one_line() {
    let app = spawn_app().await;
    let out = cli(&app.base, &["status", "no_such_psu"]).await;
    let (_, body) = app.get("/api/locks/status/no_such_psu").await;
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        format!("lablink status: {}\n", body["detail"].as_str().unwrap())
    );

    let out = cli("http://127.0.0.1:1", &["sessions"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with(
            "lablink sessions: cannot reach the LabLink server at http://127.0.0.1:1:"
        ),
        "{}",
        out.stderr
    );
    let out = cli(&app.base, &["status", "--url", "localhost:8000"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
}

/// A reader that goes away early (`lablink status --json | true`) ends a
/// client command quietly, as SIGPIPE ends Unix tools: status 141 (128 +
/// SIGPIPE), nothing on stderr, no panic; `events --follow` stops too.
#[tokio::test]
async fn a_closed_stdout_ends_a_client_command_quietly() {
    let app = spawn_app().await;
    let session = app.session(600.0).await;
    app.acquire(PSU, &session, json!({})).await;
    for args in [
        &["status", "--json"][..],
        &["status"],
        &["sessions"],
        &["events"],
        &["events", "--follow", "--json"],
    ] {
        let mut child = client(&app.base)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Closed before the answer comes back, as `| true` does.
        drop(child.stdout.take());
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{args:?} went on writing to nobody"))
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
    }
}

/// A stand-in for a server (an older or a hostile one): answers each GET
/// path with its canned `(status, body)`; 404 for the others. Its URL.
fn canned_server(routes: Vec<(&'static str, u16, Value)>) -> String {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let path = request.split(' ').nth(1).unwrap_or("");
            let path = path.split('?').next().unwrap_or("");
            let (status, body) = routes
                .iter()
                .find(|(p, _, _)| *p == path)
                .map(|(_, status, body)| (*status, body.to_string()))
                .unwrap_or((
                    404,
                    json!({"detail": "no", "code": "not_found"}).to_string(),
                ));
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    base
}

/// What a terminal would act on rather than show (a line's end aside).
fn hidden_in(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{200b}'..='\u{200f}').contains(&c)
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
        })
        .collect()
}

/// Text from the server (a client name, a user, an event's fields, an
/// error's detail) is shown with its control characters written as text,
/// so it can neither clear the screen nor break a table row. Served by a
/// stand-in server, as this server may refuse such names at the door; the
/// same check on this server's own answers runs when it accepts one.
#[tokio::test]
async fn control_characters_from_the_server_are_shown_escaped() {
    const PWNED: &str = "\u{1b}[2J\u{1b}[31mPWNED\u{1b}[0m";
    let session = json!({"session_id": "s1", "client_name": PWNED, "user": "a\u{7}\nb\u{2028}c\u{200b}\u{feff}",
                         "duration_seconds": 5.0, "time_remaining": 30.0});
    let event = json!({"seq": 1, "event": "lock_acquired", "timestamp": "2026-01-05T09:00:00Z",
                       "equipment_id": PSU, "session_id": "s1", "client_name": PWNED,
                       "message": "x\u{9b}31my\r\nz"});
    let base = canned_server(vec![
        (
            "/api/locks/sessions",
            200,
            json!({"sessions": [session], "count": 1, "next_cursor": null}),
        ),
        (
            "/api/locks/all",
            200,
            json!({"exclusive_locks": {}, "observer_locks": {}, "queues": {}}),
        ),
        (
            "/api/locks/events",
            200,
            json!({"events": [event], "has_more": false, "next_cursor": 1}),
        ),
        (
            "/api/equipment/list",
            403,
            json!({"detail": format!("refused {PWNED}\nforged line"), "code": "forbidden"}),
        ),
    ]);

    let table = ok(&base, &["sessions"]).await;
    assert_eq!(hidden_in(&table), Vec::<char>::new(), "{table:?}");
    assert_eq!(
        rows(&table),
        [[
            "s1",
            r"\e[2J\e[31mPWNED\e[0m",
            r"a\u{7}\nb\u{2028}c\u{200b}\u{feff}",
            "-",
            "5s",
            "30s"
        ]],
        "one row: {table:?}"
    );

    let human = ok(&base, &["events"]).await;
    assert_eq!(hidden_in(&human), Vec::<char>::new(), "{human:?}");
    assert_eq!(human.lines().count(), 1, "{human:?}");
    assert!(
        human.contains(r"client_name=\e[2J\e[31mPWNED\e[0m message=x\u{9b}31my\r\nz"),
        "{human:?}"
    );
    let lines = ok(&base, &["events", "--json"]).await;
    assert_eq!(hidden_in(&lines), Vec::<char>::new(), "{lines:?}");
    assert_eq!(json_of(&lines), event, "the same JSON, only escaped");
    let sessions = ok(&base, &["sessions", "--json"]).await;
    assert_eq!(json_of(&sessions)["sessions"][0], session);

    let out = cli(&base, &["status"]).await;
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        "lablink status: refused \\e[2J\\e[31mPWNED\\e[0m\\nforged line\n"
    );

    // This server's own answers, should it take such a name.
    let app = spawn_app().await;
    let (status, created) = app
        .post(
            "/api/locks/sessions/create",
            json!({"client_name": format!("{PWNED}\nb"), "timeout_seconds": 600}),
        )
        .await;
    if status.is_success() {
        app.acquire(PSU, created["session_id"].as_str().unwrap(), json!({}))
            .await;
        for args in [&["sessions"][..], &["status"]] {
            let out = ok(&app.base, args).await;
            assert_eq!(hidden_in(&out), Vec::<char>::new(), "{args:?}: {out:?}");
            assert!(out.contains(r"\e[2J\e[31mPWNED\e[0m\nb"), "{args:?}: {out}");
        }
    }
}

#[tokio::test]
async fn events_print_the_history_filtered_and_follow_streams_what_comes_next() {
    let app = spawn_app().await;
    let (holder, waiter) = busy_psu(&app).await;

    let lines = ok(&app.base, &["events", "--equipment", PSU, "--json"]).await;
    let events: Vec<Value> = lines.lines().map(json_of).collect();
    let (_, history) = app
        .get("/api/locks/events?equipment_id=ps_abc123&limit=1000")
        .await;
    assert_eq!(
        Value::Array(events),
        history["events"],
        "the server's events, one per line"
    );

    let human = ok(&app.base, &["events", "--session", &waiter]).await;
    let kinds: Vec<&str> = human
        .lines()
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(kinds, ["session_created", "queued"], "{human}");
    assert!(human.lines().all(|l| l.contains(&waiter)), "{human}");
    let later = ok(&app.base, &["events", "--since", "2030-01-01T00:00:00Z"]).await;
    assert_eq!(later, "");
    let out = cli(&app.base, &["events", "--since", "yesterday-ish"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("`since` must be an RFC 3339 timestamp"),
        "{}",
        out.stderr
    );

    // --follow: the history, then what happens next, without a repeat.
    let mut follower = client(&app.base)
        .args(["events", "--follow", "--equipment", PSU, "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(follower.stdout.take().unwrap()).lines();
    let count = history["events"].as_array().unwrap().len();
    let mut seen = Vec::new();
    for _ in 0..count {
        seen.push(json_of(&out.next_line().await.unwrap().unwrap()));
    }
    assert_eq!(Value::Array(seen), history["events"]);
    app.release(PSU, &holder, false).await;
    let mut next = Vec::new();
    while next.len() < 2 {
        let line = out.next_line().await.unwrap().unwrap();
        let event = json_of(&line);
        if event.get("seq").is_some() {
            next.push(event["event"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(next, ["lock_released", "queue_processed"]);
    follower.kill().await.unwrap();
}

/// The next `n` history events (with a `seq`) a follower prints.
async fn next_events(
    out: &mut Lines<BufReader<tokio::process::ChildStdout>>,
    n: usize,
) -> Vec<Value> {
    let mut events = Vec::new();
    while events.len() < n {
        let event = json_of(&out.next_line().await.unwrap().unwrap());
        if event.get("seq").is_some() {
            events.push(event);
        }
    }
    events
}

/// `events --follow` keeps the history's meaning live: `--since` past
/// every event starts with what happens next (not the whole history), and
/// `--equipment` with `--session` prints only events matching both,
/// though the server's subscription is their union.
#[tokio::test]
async fn events_follow_honours_since_and_every_filter() {
    let app = spawn_app().await;
    let (holder, waiter) = busy_psu(&app).await;
    let follow = |args: &[&str]| {
        let mut child = client(&app.base)
            .args(["events", "--follow", "--json"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap()).lines();
        (child, out)
    };
    let (mut recent, mut recent_out) = follow(&["--since", "2030-01-01T00:00:00Z"]);
    let (mut both, mut both_out) = follow(&["--equipment", PSU, "--session", &waiter]);
    // The history part of the second: the waiter's place in the PSU's queue.
    let kinds = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(kinds(&next_events(&mut both_out, 1).await), ["queued"]);

    // Until `recent` is live, new sessions; the first event it prints
    // must be one of theirs, never the history before them.
    let mut fresh = Vec::new();
    let first = loop {
        fresh.push(app.session(600.0).await);
        let wait = tokio::time::timeout(Duration::from_millis(200), recent_out.next_line());
        if let Ok(line) = wait.await {
            break json_of(&line.unwrap().unwrap());
        }
    };
    assert_eq!(first["event"], "session_created", "{first}");
    assert!(
        fresh.iter().any(|s| first["session_id"] == s.as_str()),
        "{first}"
    );

    app.release(PSU, &holder, false).await; // hands the PSU to the waiter
    app.release(PSU, &waiter, false).await;
    let (_, history) = app.get("/api/locks/events?limit=1000").await;
    let later: Vec<Value> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["seq"].as_u64() > first["seq"].as_u64())
        .cloned()
        .collect();
    assert_eq!(
        next_events(&mut recent_out, later.len()).await,
        later,
        "only what came after"
    );
    let after: Vec<Value> = later
        .iter()
        .filter(|e| e["equipment_id"] == PSU)
        .cloned()
        .collect();
    let of_both: Vec<Value> = after
        .iter()
        .filter(|e| e["session_id"] == waiter.as_str() || e["forced_by"] == waiter.as_str())
        .cloned()
        .collect();
    assert!(
        of_both.len() < after.len(),
        "the holder's release is not the waiter's"
    );
    let printed = next_events(&mut both_out, of_both.len()).await;
    assert_eq!(printed, of_both);
    assert_eq!(kinds(&printed).last().unwrap(), "lock_released");
    recent.kill().await.unwrap();
    both.kill().await.unwrap();

    // Following an unknown instrument: refused, saying only why.
    let out = cli(&app.base, &["events", "--equipment", "nope", "--follow"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(
        out.stderr,
        "lablink events: equipment nope is not registered; GET /api/equipment/list shows what is\n"
    );
}

#[tokio::test]
async fn command_types_parameters_from_the_action_catalog() {
    let app = spawn_app().await;
    let session = app.session(600.0).await;
    app.acquire(PSU, &session, json!({})).await;

    let out = ok(
        &app.base,
        &[
            "command",
            PSU,
            "set_voltage",
            "voltage=12",
            "channel=2",
            "--session",
            &session,
        ],
    )
    .await;
    assert_eq!(json_of(&out), json!({"channel": 2, "voltage_set": 12.0}));
    let (_, status) = app.get("/api/equipment/ps_abc123/status").await;
    assert_eq!(status["state"]["channels"][1]["voltage_set"], 12.0);
    let out = ok(
        &app.base,
        &[
            "command",
            PSU,
            "set_output",
            "enabled=on",
            "channel=2",
            "--session",
            &session,
            "--json",
        ],
    )
    .await;
    let answer = json_of(&out);
    assert_eq!(answer["success"], true, "the whole CommandResponse");
    assert!(answer["command_id"].as_str().unwrap().starts_with("cli-"));

    // Typed before anything is sent.
    let out = cli(
        &app.base,
        &[
            "command",
            PSU,
            "set_voltage",
            "voltage=twelve",
            "--session",
            &session,
        ],
    )
    .await;
    assert_eq!(out.code, 2);
    assert_eq!(
        out.stderr,
        "lablink command: `voltage` must be a number, got \"twelve\"\n"
    );
    // The server's own refusals, with their detail.
    let out = cli(&app.base, &["command", PSU, "set_voltage", "voltage=12"]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("needs a session_id"), "{}", out.stderr);
    let out = cli(&app.base, &["command", PSU, "fly", "--session", &session]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("set_voltage"),
        "lists the valid ones: {}",
        out.stderr
    );
}

#[tokio::test]
async fn release_takes_a_session_or_force() {
    let app = spawn_app().await;
    let (holder, waiter) = busy_psu(&app).await;

    let out = cli(&app.base, &["release", PSU]).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("--session or LABLINK_SESSION_ID"),
        "{}",
        out.stderr
    );

    assert_eq!(
        ok(&app.base, &["release", PSU, "--session", &waiter]).await,
        "left the queue for ps_abc123\n"
    );
    let stranger = app.session(600.0).await;
    let out = cli(&app.base, &["release", PSU, "--session", &stranger]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(&holder),
        "names the holder: {}",
        out.stderr
    );

    let answer = json_of(&ok(&app.base, &["release", PSU, "--force", "--json"]).await);
    assert_eq!(
        answer,
        json!({"success": true, "status": "released", "was_forced": true, "equipment_id": PSU})
    );
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status["locked"], false);
    let (_, history) = app
        .get("/api/locks/events?equipment_id=ps_abc123&event=lock_force_released")
        .await;
    assert_eq!(history["events"][0]["forced_by"], "lablink-cli");
    assert_eq!(history["events"][0]["session_id"], holder.as_str());
}

// ---- run -----------------------------------------------------------------

/// `lablink run ARGS` in the background, its stderr readable line by line.
fn start_run(
    base: &str,
    args: &[&str],
    env: &[(&str, &Path)],
) -> (Child, Lines<BufReader<ChildStderr>>) {
    let mut cmd = client(base);
    cmd.arg("run")
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    (child, stderr)
}

/// Waits (without a time limit of its own: the test's is enough) until
/// `file` holds `text`.
async fn until_file_has(file: &Path, text: &str) {
    loop {
        if std::fs::read_to_string(file).is_ok_and(|t| t.contains(text)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads stderr until a line containing `text`; the lines read.
async fn until_line(stderr: &mut Lines<BufReader<ChildStderr>>, text: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = stderr
            .next_line()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no {text:?} in {seen:?}"));
        seen.push(line.clone());
        if line.contains(text) {
            return seen;
        }
    }
}

fn signal(child: &Child, signal: Signal) {
    let pid = Pid::from_raw(child.id().unwrap() as i32);
    kill(pid, signal).unwrap();
}

/// A child that says it started, notes the signals it gets, and runs
/// until one comes (for a minute at most, should a failing test leave it).
const TRAPPING_CHILD: &str = r#"trap 'echo TERM >> "$F"; exit 0' TERM; trap 'echo INT >> "$F"; exit 0' INT; echo started >> "$F"; for _ in $(seq 1200); do sleep 0.05; done"#;

#[tokio::test]
async fn run_gives_the_command_its_lock_and_exits_with_its_status() {
    let app = spawn_app().await;
    let bin = env!("CARGO_BIN_EXE_lablink");
    let script = format!(
        r#"echo "$LABLINK_URL|$LABLINK_SESSION_ID|$LABLINK_EQUIPMENT_ID|$LABLINK_LOCK_ID|$LABLINK_FENCING_TOKEN"; "{bin}" status ps_abc123 --json; exit 3"#
    );
    let out = client(&app.base)
        .args(["run", "--lock", PSU, "--", "sh", "-c", &script])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (first, status) = stdout.split_once('\n').unwrap();
    let env: Vec<&str> = first.split('|').collect();
    let session = env[1];
    assert_eq!(
        env,
        [app.base.as_str(), session, PSU, "lock_ps_abc123_1", "1"]
    );
    let status = json_of(status);
    assert_eq!(status["session_id"], session, "held while the command ran");
    assert_eq!(status["lock_id"], "lock_ps_abc123_1");

    // Released and ended after.
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status["locked"], false);
    assert_eq!(live_sessions(&app).await, Vec::<String>::new());
    let (_, history) = app
        .get(&format!("/api/locks/sessions/{session}/events?limit=100"))
        .await;
    assert_eq!(
        event_kinds(&history),
        [
            "session_created",
            "lock_acquired",
            "lock_released",
            "session_ended"
        ]
    );

    // Several locks: in sorted order, each variable a list in step.
    let out = client(&app.base)
        .args([
            "run",
            "--lock",
            "scope_123",
            "--lock",
            PSU,
            "--observer",
            "--",
            "sh",
            "-c",
            r#"echo "$LABLINK_EQUIPMENT_ID|$LABLINK_LOCK_ID|$LABLINK_FENCING_TOKEN""#,
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ps_abc123 scope_123|lock_ps_abc123_2 lock_scope_123_1|2 1\n"
    );

    // A command that cannot be found: 127, and nothing left behind.
    let out = cli(&app.base, &["run", "--lock", PSU, "--", "/no/such/program"]).await;
    assert_eq!(out.code, 127, "{}", out.stderr);
    assert_eq!(live_sessions(&app).await, Vec::<String>::new());
}

#[tokio::test]
async fn run_shows_its_queue_position_as_it_changes_and_runs_when_its_turn_comes() {
    let app = spawn_app().await;
    let (holder, waiter) = busy_psu(&app).await;
    let (mut run, mut stderr) = start_run(&app.base, &["--lock", PSU, "--", "true"], &[]);
    let busy = format!(
        "ps_abc123 is busy (Equipment locked by session {holder} (test)); waiting at position 2 in the queue"
    );
    until_line(&mut stderr, &busy).await;
    app.release(PSU, &waiter, false).await; // leaves the queue: the run moves up
    until_line(&mut stderr, "ps_abc123: position 1 in the queue").await;
    app.release(PSU, &holder, false).await;
    until_line(
        &mut stderr,
        "ps_abc123 is ours (lock lock_ps_abc123_2, fencing token 2)",
    )
    .await;
    assert_eq!(run.wait().await.unwrap().code(), Some(0));
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status["locked"], false);
}

#[tokio::test]
async fn a_force_released_lock_stops_the_command_with_sigterm_and_a_distinct_status() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("marks");
    let (mut run, mut stderr) = start_run(
        &app.base,
        &["--lock", PSU, "--", "sh", "-c", TRAPPING_CHILD],
        &[("F", &marks)],
    );
    until_file_has(&marks, "started").await;
    app.release(PSU, "admin", true).await;
    assert_eq!(run.wait().await.unwrap().code(), Some(69));
    assert_eq!(std::fs::read_to_string(&marks).unwrap(), "started\nTERM\n");
    let said = until_line(&mut stderr, "the command was stopped").await;
    assert!(
        said.last()
            .unwrap()
            .contains("lost the lock on ps_abc123: it was force-released by admin"),
        "{said:?}"
    );
    assert_eq!(live_sessions(&app).await, Vec::<String>::new());

    // A command that ignores SIGTERM is killed after the grace period.
    let (mut run, mut stderr) = start_run(
        &app.base,
        &[
            "--lock",
            PSU,
            "--grace",
            "0.5",
            "--",
            "sh",
            "-c",
            r#"trap '' TERM; echo started >> "$F"; for _ in $(seq 1200); do sleep 0.05; done"#,
        ],
        &[("F", &dir.path().join("stubborn"))],
    );
    until_file_has(&dir.path().join("stubborn"), "started").await;
    app.release(PSU, "admin", true).await;
    assert_eq!(run.wait().await.unwrap().code(), Some(69));
    until_line(&mut stderr, "did not stop within 1s: SIGKILL").await;
}

#[tokio::test]
async fn ctrl_c_or_sigterm_to_run_stops_the_command_and_releases_everything() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("marks");
    let (mut run, _stderr) = start_run(
        &app.base,
        &["--lock", PSU, "--", "sh", "-c", TRAPPING_CHILD],
        &[("F", &marks)],
    );
    until_file_has(&marks, "started").await;
    signal(&run, Signal::SIGINT);
    assert_eq!(run.wait().await.unwrap().code(), Some(130));
    assert_eq!(
        std::fs::read_to_string(&marks).unwrap(),
        "started\nINT\n",
        "passed on as it came"
    );
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status["locked"], false);
    assert_eq!(live_sessions(&app).await, Vec::<String>::new());

    // While waiting in the queue: it leaves the queue.
    let holder = app.session(600.0).await;
    app.acquire(PSU, &holder, json!({})).await;
    let (mut run, mut stderr) = start_run(&app.base, &["--lock", PSU, "--", "true"], &[]);
    until_line(&mut stderr, "position 1").await;
    signal(&run, Signal::SIGTERM);
    assert_eq!(run.wait().await.unwrap().code(), Some(143));
    let (_, queue) = app.get("/api/locks/queue/ps_abc123").await;
    assert_eq!(queue["queue"], json!([]));
    assert_eq!(live_sessions(&app).await, [holder]);
}

#[tokio::test]
async fn wait_running_out_exits_with_its_own_status_and_leaves_nothing_behind() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let holder = app.session(600.0).await;
    app.acquire(PSU, &holder, json!({})).await;
    let touch = format!("touch {}", ran.display());
    // `run --wait WAIT` gives up (75) saying `why`, with nothing left behind.
    let gives_up = async |wait: &str, why: &str| {
        let args = [
            "run", "--lock", PSU, "--wait", wait, "--", "sh", "-c", &touch,
        ];
        let out = cli(&app.base, &args).await;
        assert_eq!(out.code, 75, "{}", out.stderr);
        assert!(out.stderr.contains(why), "{}", out.stderr);
        let (_, queue) = app.get("/api/locks/queue/ps_abc123").await;
        assert_eq!(queue["queue"], json!([]));
        assert_eq!(live_sessions(&app).await, std::slice::from_ref(&holder));
    };

    gives_up(
        "1s",
        "gave up waiting for ps_abc123: --wait 1s ran out at position 1",
    )
    .await;
    // --wait 0 does not even queue.
    let before = app.events(PSU).await;
    // The server's hint is said the CLI's way.
    gives_up("0", "it is busy and --wait is 0").await;
    gives_up("0", "; give --wait DURATION to wait in line)").await;
    assert_eq!(app.events(PSU).await, before);
    assert!(!ran.exists(), "the command never ran");
}

/// On a server with a real clock: renewals keep a 1 s lease alive for
/// several seconds, and a `run` that cannot renew (stopped) loses it.
#[tokio::test]
async fn run_renews_short_leases_and_a_lease_that_runs_out_stops_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr, _) = start_binary(
        dir.path(),
        &["--bind", "127.0.0.1:0", "--store", "memory"],
        &[("LABLINK_EXPIRY_WARNING_SEC", "0")],
    );
    let _server = Running(server);
    let base = format!("http://{addr}");
    let app = TestApp::at(&base);
    let out = cli(
        &base,
        &[
            "run",
            "--lock",
            PSU,
            "--timeout",
            "1s",
            "--",
            "sleep",
            "3.5",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let kinds = app.events(PSU).await;
    assert_eq!(kinds, ["lock_acquired", "lock_released"]);

    let marks = dir.path().join("marks");
    let (mut run, mut stderr) = start_run(
        &base,
        &[
            "--lock",
            PSU,
            "--timeout",
            "1s",
            "--",
            "sh",
            "-c",
            TRAPPING_CHILD,
        ],
        &[("F", &marks)],
    );
    until_file_has(&marks, "started").await;
    signal(&run, Signal::SIGSTOP);
    loop {
        let (_, status) = app.get("/api/locks/status/ps_abc123").await;
        if status["locked"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(&run, Signal::SIGCONT);
    assert_eq!(run.wait().await.unwrap().code(), Some(69));
    assert_eq!(std::fs::read_to_string(&marks).unwrap(), "started\nTERM\n");
    let said = until_line(&mut stderr, "the command was stopped").await;
    assert!(
        said.last().unwrap().contains("lost the lock on ps_abc123"),
        "{said:?}"
    );
}

#[tokio::test]
async fn with_authentication_on_the_token_comes_from_the_flag_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (app, [root, alice, ..]) = crate::auth::secured(dir.path()).await;
    let out = cli(&app.base, &["status"]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.starts_with("lablink status: "), "{}", out.stderr);
    assert!(
        out.stderr.contains("Bearer"),
        "the server's detail: {}",
        out.stderr
    );

    // `run` as alice: her session, her lock; the live events need the
    // token too. An admin's forced release from the command line stops it.
    let marks = dir.path().join("marks");
    let mut cmd = client(&app.base);
    cmd.env("LABLINK_TOKEN", &alice)
        .args(["run", "--lock", PSU, "--", "sh", "-c", TRAPPING_CHILD])
        .env("F", &marks)
        .stderr(Stdio::piped());
    let mut run = cmd.spawn().unwrap();
    let mut stderr = BufReader::new(run.stderr.take().unwrap()).lines();
    until_file_has(&marks, "started").await;
    let status = json_of(&ok(&app.base, &["status", PSU, "--json", "--token", &alice]).await);
    assert_eq!(status["user"], "alice");

    let out = cli(&app.base, &["release", PSU, "--force", "--token", &alice]).await;
    assert_eq!(out.code, 1, "only admins force: {}", out.stderr);
    ok(&app.base, &["release", PSU, "--force", "--token", &root]).await;
    assert_eq!(run.wait().await.unwrap().code(), Some(69));
    let said = until_line(&mut stderr, "the command was stopped").await;
    assert!(
        said.last()
            .unwrap()
            .contains("it was force-released by root"),
        "{said:?}"
    );
}

/// `events --follow` across a server restart: it reconnects and resumes
/// after the last `seq` it printed, so every event shows exactly once.
#[tokio::test]
async fn events_follow_resumes_across_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let serve = restartable(dir.path());
    let (server, base) = serve();
    let app = TestApp::at(&base);
    let session = app.session(600.0).await;
    app.acquire(PSU, &session, json!({})).await;

    let mut follower = client(&base)
        .args(["events", "--follow", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(follower.stdout.take().unwrap()).lines();
    let mut seqs = Vec::new();
    // The next history event's seq (notifications have none).
    let mut next_seq = async || loop {
        let line = out
            .next_line()
            .await
            .unwrap()
            .expect("the follower runs on");
        if let Some(seq) = json_of(&line)["seq"].as_u64() {
            return seq;
        }
    };
    for _ in 0..2 {
        seqs.push(next_seq().await);
    }
    stop_server(server);

    // Events recorded while the follower is away, then after it is back.
    let (_server, _) = serve();
    let app = TestApp::at(&base); // no pooled connection to the old server
    app.release(PSU, &session, false).await;
    app.acquire(PSU, &session, json!({})).await;
    for _ in 0..2 {
        seqs.push(next_seq().await);
    }
    app.release(PSU, &session, false).await;
    seqs.push(next_seq().await);
    assert_eq!(seqs, [1, 2, 3, 4, 5], "each event once, in order");
    follower.kill().await.unwrap();
}

/// Starts the server binary on a SQLite store in `dir`, at the same
/// address each time (port 0 would change across a restart); its URL.
fn restartable(dir: &Path) -> impl Fn() -> (Running, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bind = listener.local_addr().unwrap().to_string();
    drop(listener);
    move || {
        let (server, addr, _) = start_binary(dir, &["--bind", &bind], &[]);
        (Running(server), format!("http://{addr}"))
    }
}

/// A server binary, killed when the test ends, passing or failing.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops the server binary as an operator would (SIGTERM), and waits.
fn stop_server(mut server: Running) {
    kill(Pid::from_raw(server.0.id() as i32), Signal::SIGTERM).unwrap();
    server.0.wait().unwrap();
}

/// A `run` waiting in a queue keeps its place across a server restart and
/// runs its command when its turn comes.
#[tokio::test]
async fn run_waits_in_the_queue_across_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let serve = restartable(dir.path());
    let (server, base) = serve();
    let holder = TestApp::at(&base).session(600.0).await;
    TestApp::at(&base).acquire(PSU, &holder, json!({})).await;
    let (mut run, mut stderr) = start_run(&base, &["--lock", PSU, "--", "true"], &[]);
    until_line(&mut stderr, "waiting at position 1").await;

    stop_server(server);
    let (_server, _) = serve();
    let app = TestApp::at(&base);
    let (_, queue) = app.get("/api/locks/queue/ps_abc123").await;
    assert_eq!(
        queue["queue"].as_array().unwrap().len(),
        1,
        "its place is kept"
    );
    app.release(PSU, &holder, false).await;
    until_line(&mut stderr, "ps_abc123 is ours").await;
    assert_eq!(run.wait().await.unwrap().code(), Some(0));
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status["locked"], false);
}

/// A `run` holding the PSU with a 6 s lease, its command running until
/// told to finish.
struct HoldingRun {
    run: Child,
    stderr: Lines<BufReader<ChildStderr>>,
    done: std::path::PathBuf,
}

impl HoldingRun {
    /// Starts it against `base` (files in `dir`); returns once the command runs.
    async fn start(base: &str, dir: &Path) -> Self {
        let (marks, done) = (dir.join("marks"), dir.join("done"));
        let script = r#"echo started >> "$F"; while [ ! -f "$D" ]; do sleep 0.05; done"#;
        let (run, stderr) = start_run(
            base,
            &["--lock", PSU, "--timeout", "6s", "--", "sh", "-c", script],
            &[("F", &marks), ("D", &done)],
        );
        until_file_has(&marks, "started").await;
        Self { run, stderr, done }
    }

    /// Tells the command to finish; checks that `run` exits 0 having
    /// released the PSU (asked of `app`), and returns what it said.
    async fn finish(mut self, app: &TestApp) -> Vec<String> {
        std::fs::write(&self.done, "").unwrap();
        let code = self.run.wait().await.unwrap().code();
        let mut said = Vec::new();
        while let Some(line) = self.stderr.next_line().await.unwrap() {
            said.push(line);
        }
        assert_eq!(code, Some(0), "{said:?}");
        let (_, status) = app.get("/api/locks/status/ps_abc123").await;
        assert_eq!(status["locked"], false, "released after");
        said
    }
}

/// A `run` holding a lock keeps it across a server restart that ends
/// before the lease would: here the server stops just before a renewal is
/// due (two thirds of the lease left) and is away for about half the lease.
/// `run` tries again every quarter second while the server is away, so its
/// renewal arrives as soon as the server is back, not a third of a lease
/// later (after the deadline).
#[tokio::test]
async fn run_keeps_its_lock_across_a_server_restart_shorter_than_the_lease() {
    const LEASE: f64 = 6.0;
    let dir = tempfile::tempdir().unwrap();
    let serve = restartable(dir.path());
    let (server, base) = serve();
    let run = HoldingRun::start(&base, dir.path()).await;
    let app = TestApp::at(&base);
    let expires = async || {
        let (_, status) = app.get("/api/locks/status/ps_abc123").await;
        assert_eq!(status["locked"], true, "{status}");
        status["expires_at"].as_str().unwrap().to_owned()
    };
    // A renewal seen: the next one is due a third of the lease on.
    let first = expires().await;
    while expires().await == first {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let renewed = tokio::time::Instant::now();
    tokio::time::sleep_until(renewed + Duration::from_secs_f64(LEASE / 3.0 - 0.3)).await;
    stop_server(server);
    tokio::time::sleep(Duration::from_secs_f64(LEASE / 2.0 - 0.5)).await;
    let (_server, _) = serve();

    // Past the deadline the lease had when the server stopped: still ours.
    tokio::time::sleep_until(renewed + Duration::from_secs_f64(LEASE + 0.5)).await;
    let app = TestApp::at(&base); // no pooled connection to the old server
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status["locked"], true, "{status}");
    assert_eq!(run.finish(&app).await, Vec::<String>::new());
}

/// A SIGKILL to `run`'s whole process group (a CI runner cancelling a job,
/// `timeout -k`) ends the command too: a command that outlived `run` would
/// go on using the instrument once the lock lapsed.
#[tokio::test]
async fn a_sigkill_to_runs_process_group_ends_the_command_too() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let mut cmd = client(&app.base);
    cmd.args([
        "run",
        "--lock",
        PSU,
        "--",
        "sh",
        "-c",
        r#"echo $$ > "$P"; exec sleep 60"#,
    ])
    .env("P", &pid_file)
    .stderr(Stdio::null())
    .process_group(0);
    let mut run = cmd.spawn().unwrap();
    until_file_has(&pid_file, "\n").await;
    let command: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let group = run.id().unwrap() as i32;
    nix::sys::signal::killpg(Pid::from_raw(group), Signal::SIGKILL).unwrap();
    run.wait().await.unwrap();
    // Gone, or a zombie waiting for whoever adopted it.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{command}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    for _ in 0..250 {
        if !alive() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the command (pid {command}) outlived run");
}

/// A proxy in front of `upstream` (an address) that passes everything
/// through, except while `outage` is set: then every connection is
/// answered 503 `store_unavailable`, as a server whose database is failing
/// over answers (or a proxy whose backend is down). Setting it drops the
/// connections open until then. Its URL and the switch.
async fn failing_over(upstream: String) -> (String, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (outage, watch) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let mut watch = watch.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                if *watch.borrow_and_update() {
                    let body =
                        r#"{"detail":"the store is unavailable","code":"store_unavailable"}"#;
                    let answer = format!(
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = client.write_all(answer.as_bytes()).await;
                    return;
                }
                let mut server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = watch.wait_for(|down| *down) => {}
                }
            });
        }
    });
    (url, outage)
}

/// A renewal answered 503 (the store failing over, a proxy's backend down)
/// is tried again like an outage, not taken for a lost lock: the lock and
/// the command go on.
#[tokio::test]
async fn run_keeps_its_lock_while_the_server_answers_503_for_a_while() {
    let app = spawn_app().await;
    let upstream = app.base.trim_start_matches("http://").to_owned();
    let (proxy, outage) = failing_over(upstream).await;
    let dir = tempfile::tempdir().unwrap();
    let run = HoldingRun::start(&proxy, dir.path()).await;
    // Longer than the renewal interval (a third of the lease), shorter
    // than the lease.
    outage.send(true).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    outage.send(false).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status["locked"], true, "{status}");
    run.finish(&app).await;
}

// ---- the queueing controls (issue 14) --------------------------------------

/// The session of the `n`th waiter (1-based) for the PSU.
async fn waiter_at(app: &TestApp, n: usize) -> String {
    let (_, queue) = app.get("/api/locks/queue/ps_abc123").await;
    queue["queue"][n - 1]["session_id"]
        .as_str()
        .unwrap_or_else(|| panic!("nobody at {n}: {queue}"))
        .to_owned()
}

#[tokio::test]
async fn maintenance_from_the_command_line_shows_in_status_with_the_queues_priorities() {
    let app = spawn_app().await;
    let (holder, waiter) = busy_psu(&app).await;
    let urgent = app.session(600.0).await;
    app.acquire(PSU, &urgent, json!({"queue_if_busy": true, "priority": 3}))
        .await;

    let out = ok(
        &app.base,
        &[
            "maintenance",
            "start",
            PSU,
            "--reason",
            "calibration",
            "--until",
            "2026-01-05T11:00:00Z",
        ],
    )
    .await;
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    let since = status["maintenance"]["since"].as_str().unwrap().to_owned();
    assert_eq!(
        out,
        format!(
            "ps_abc123 is in maintenance: calibration (since {since}, until 2026-01-05T11:00:00.000Z)\n"
        )
    );

    let table = ok(&app.base, &["status"]).await;
    let psu = &rows(&table)[0];
    assert_eq!(
        psu[..5],
        [
            "ps_abc123",
            "Demo power supply",
            "maintenance",
            "test",
            "5m 00s"
        ],
        "{table}"
    );
    assert_eq!(psu[5], "2 (priorities 3, 0)", "{table}");
    assert!(
        table.ends_with(&format!(
            "ps_abc123 in maintenance: calibration (since {since}, until 2026-01-05T11:00:00.000Z)\n"
        )),
        "{table}"
    );
    let detail = ok(&app.base, &["status", PSU]).await;
    assert!(
        detail.contains("state:        maintenance\n")
            && detail.contains(&format!("maintenance:  calibration (since {since}"))
            && detail.contains(&format!("session:      {holder}")),
        "{detail}"
    );
    // The queue in serving order, each with its priority.
    let queue = ok(&app.base, &["queue", PSU]).await;
    assert!(
        queue.starts_with(
            "POS  SESSION                               WHO   MODE       PRIORITY  LOCK TIMEOUT  QUEUED AT                 GIVES UP AT\n"
        ),
        "{queue}"
    );
    let order: Vec<(String, String)> = rows(&queue)
        .iter()
        .map(|r| (r[1].clone(), r[4].clone()))
        .collect();
    assert_eq!(
        order,
        [(urgent.clone(), "3".into()), (waiter.clone(), "0".into())]
    );
    let sessions = ok(&app.base, &["sessions"]).await;
    assert!(
        sessions.contains("ps_abc123 (queued 1, priority 3)"),
        "{sessions}"
    );
    let statuses = json_of(&ok(&app.base, &["status", "--json"]).await);
    assert_eq!(statuses[0], status, "the server's own object");

    // Back in service: the maintenance that ended, and the state as before.
    let ended = json_of(&ok(&app.base, &["maintenance", "end", PSU, "--json"]).await);
    assert_eq!(ended["maintenance"], status["maintenance"]);
    assert_eq!(ended["equipment_id"], PSU);
    assert_eq!(rows(&ok(&app.base, &["status"]).await)[0][2], "locked");
    let out = cli(&app.base, &["maintenance", "end", PSU]).await;
    assert_eq!(out.code, 1);
    let (_, refused) = app.delete("/api/equipment/ps_abc123/maintenance").await;
    assert_eq!(
        out.stderr,
        format!(
            "lablink maintenance end: {}\n",
            refused["detail"].as_str().unwrap()
        )
    );
    // A bad --until is the user's mistake (2), and nothing is sent.
    let out = cli(
        &app.base,
        &[
            "maintenance",
            "start",
            PSU,
            "--reason",
            "x",
            "--until",
            "soon",
        ],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    assert!(status.get("maintenance").is_none(), "{status}");
    // `--until 2h`: two hours from now. The server's clock is the test's
    // (09:00 on 5 January 2026), so it is the server that refuses a past one.
    let out = cli(
        &app.base,
        &[
            "maintenance",
            "start",
            PSU,
            "--reason",
            "x",
            "--until",
            "2h",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[tokio::test]
async fn run_with_a_priority_goes_ahead_and_is_told_when_a_manager_takes_its_place() {
    let app = spawn_app().await;
    let (_holder, waiter) = busy_psu(&app).await;
    let (mut run, mut stderr) = start_run(
        &app.base,
        &["--lock", PSU, "--priority", "2", "--", "true"],
        &[],
    );
    until_line(&mut stderr, "waiting at position 1 in the queue").await;
    assert_eq!(
        waiter_at(&app, 2).await,
        waiter,
        "served before the earlier waiter"
    );
    let (_, queue) = app.get("/api/locks/queue/ps_abc123").await;
    assert_eq!(queue["queue"][0]["priority"], 2);
    let session = waiter_at(&app, 1).await;

    let out = ok(
        &app.base,
        &["dequeue", PSU, &session, "--reason", "left for lunch"],
    )
    .await;
    assert_eq!(
        out,
        format!("removed session {session} (position 1) from the queue for ps_abc123\n")
    );
    assert_eq!(run.wait().await.unwrap().code(), Some(77));
    let said = until_line(&mut stderr, "the command was not started").await;
    assert!(
        said.last().unwrap().contains(
            "lost the place in the queue for ps_abc123: it was removed from the queue by lablink-cli: left for lunch"
        ),
        "{said:?}"
    );
    // It did not queue again behind the manager's back, and its session ended.
    assert_eq!(waiter_at(&app, 1).await, waiter);
    assert!(!live_sessions(&app).await.contains(&session));

    // A session ended by a manager while waiting: the same status.
    let (mut run, mut stderr) = start_run(&app.base, &["--lock", PSU, "--", "true"], &[]);
    until_line(&mut stderr, "waiting at position 2").await;
    let session = waiter_at(&app, 2).await;
    let out = ok(
        &app.base,
        &["end-session", &session, "--forced-by", "lab-manager"],
    )
    .await;
    assert_eq!(out, format!("ended session {session}; 0 locks released\n"));
    assert_eq!(run.wait().await.unwrap().code(), Some(77));
    let said = until_line(&mut stderr, "the command was not started").await;
    assert!(
        said.last()
            .unwrap()
            .contains("the session was ended by lab-manager"),
        "{said:?}"
    );

    // Errors print the server's detail and exit 1.
    let out = cli(&app.base, &["dequeue", PSU, &session]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with("lablink dequeue: "),
        "{}",
        out.stderr
    );
    // A refused --reason is named as the flag, not the body's `message`.
    let long = "x".repeat(257);
    let out = cli(&app.base, &["dequeue", PSU, &waiter, "--reason", &long]).await;
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (
            1,
            "lablink dequeue: --reason must be at most 256 characters\n"
        )
    );
    let out = cli(&app.base, &["end-session", &waiter, "--reason", "a\u{7}b"]).await;
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (
            1,
            "lablink end-session: --reason must not contain control characters (it has U+0007)\n"
        )
    );
    assert_eq!(waiter_at(&app, 1).await, waiter, "nothing changed");
    let out = cli(
        &app.base,
        &["run", "--lock", PSU, "--priority", "11", "--", "true"],
    )
    .await;
    assert_eq!(out.code, 2, "clap refuses it: {}", out.stderr);
}

#[tokio::test]
async fn run_with_max_wait_exits_76_once_the_server_drops_its_place() {
    let app = spawn_app().await;
    let (_holder, waiter) = busy_psu(&app).await;
    let (mut run, mut stderr) = start_run(
        &app.base,
        &["--lock", PSU, "--max-wait", "30s", "--", "true"],
        &[],
    );
    until_line(&mut stderr, "waiting at position 2").await;
    let (_, queue) = app.get("/api/locks/queue/ps_abc123").await;
    assert!(queue["queue"][1]["wait_expires_at"].is_string(), "{queue}");
    let table = ok(&app.base, &["queue", PSU]).await;
    assert_eq!(
        rows(&table)[1].last().unwrap(),
        "2026-01-05T09:00:30.000Z",
        "{table}"
    );
    app.advance(30.0); // the server's clock: the reaper drops the place
    assert_eq!(run.wait().await.unwrap().code(), Some(76));
    let said = until_line(&mut stderr, "nothing was left behind").await;
    assert!(
        said.last().unwrap().contains(
            "gave up waiting for ps_abc123: --max-wait 30s ran out and the server dropped the place"
        ),
        "{said:?}"
    );
    assert_eq!(
        live_sessions(&app).await.len(),
        2,
        "only the holder's and the waiter's"
    );
    assert_eq!(waiter_at(&app, 1).await, waiter);
}

#[tokio::test]
async fn run_claims_a_lock_handed_over_within_its_claim_window_and_maintenance_warns_it() {
    // No `lock_expiring` warnings: `run` renews on one, and a window shorter
    // than the warning is warned at once, which would claim it anyway.
    let mut settings = crate::helpers::memory();
    settings.policy.expiry_warning_ms = 0;
    let app = crate::helpers::spawn_with(settings).await;
    let holder = app.session(600.0).await;
    app.acquire(PSU, &holder, json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("marks");
    let (mut run, mut stderr) = start_run(
        &app.base,
        &[
            "--lock",
            PSU,
            "--claim-within",
            "5s",
            "--",
            "sh",
            "-c",
            TRAPPING_CHILD,
        ],
        &[("F", &marks)],
    );
    until_line(&mut stderr, "waiting at position 1").await;
    // Its long-polled ask follows the first answer at once: let it reach
    // the server, so that the hand-off answers it (asking again after the
    // hand-off would itself be a claim, and prove nothing).
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.release(PSU, &holder, false).await;
    until_file_has(&marks, "started").await;
    // Past the window: still its lock (it claimed it at once).
    app.advance(10.0);
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    assert_eq!(status["lock_id"], "lock_ps_abc123_2", "{status}");
    assert!(
        status.get("claim_by").is_none_or(Value::is_null),
        "{status}"
    );
    assert!(!app.events(PSU).await.contains(&"claim_expired".to_owned()));

    // Maintenance starts while it holds the lock: told, and it keeps it.
    ok(
        &app.base,
        &["maintenance", "start", PSU, "--reason", "calibration"],
    )
    .await;
    until_line(
        &mut stderr,
        "ps_abc123 is going into maintenance (calibration); the lock is kept until the command ends",
    )
    .await;
    signal(&run, Signal::SIGTERM);
    assert_eq!(run.wait().await.unwrap().code(), Some(143));

    // In maintenance, `--wait 0` does not queue: its own status.
    let out = cli(
        &app.base,
        &["run", "--lock", PSU, "--wait", "0", "--", "true"],
    )
    .await;
    assert_eq!(out.code, 78, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("ps_abc123 is in maintenance and --wait is 0 (")
            && out.stderr.contains("calibration")
            && out
                .stderr
                .contains("give --wait DURATION to wait until service resumes")
            && !out.stderr.contains("queue_if_busy"),
        "{}",
        out.stderr
    );
    // With others, only the one in maintenance is named (then both).
    let wanted = [
        "run",
        "--lock",
        "scope_123,ps_abc123",
        "--wait",
        "0",
        "--",
        "true",
    ];
    let out = cli(&app.base, &wanted).await;
    assert_eq!(out.code, 78, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("lablink run: ps_abc123 is in maintenance and --wait is 0 ("),
        "{}",
        out.stderr
    );
    ok(
        &app.base,
        &[
            "maintenance",
            "start",
            "scope_123",
            "--reason",
            "probe swap",
        ],
    )
    .await;
    let out = cli(&app.base, &wanted).await;
    assert!(
        out.stderr
            .starts_with("lablink run: ps_abc123, scope_123 are in maintenance and --wait is 0 ("),
        "{}",
        out.stderr
    );
    ok(&app.base, &["maintenance", "end", "scope_123"]).await;
    assert_eq!(live_sessions(&app).await, [holder]);
}

/// A server whose queue is disabled cannot queue any `--wait`: in
/// maintenance `run` says that (not "--wait is 0") and exits 78.
#[tokio::test]
async fn run_on_a_server_without_a_queue_says_so_for_maintenance_and_busy() {
    let mut settings = memory();
    settings.policy.lock.queue_enabled = false;
    let app = spawn_with(settings).await;
    ok(
        &app.base,
        &["maintenance", "start", "load_1", "--reason", "calibration"],
    )
    .await;
    let out = cli(
        &app.base,
        &["run", "--lock", "load_1", "--wait", "1h", "--", "true"],
    )
    .await;
    assert_eq!(out.code, 78, "{}", out.stderr);
    assert!(
        out.stderr.starts_with(
            "lablink run: load_1 is in maintenance and the server does not queue (its queue is disabled) ("
        ) && out.stderr.contains("calibration"),
        "{}",
        out.stderr
    );
    assert!(live_sessions(&app).await.is_empty());

    // Busy there: as busy with `--wait 0` (try again later).
    ok(&app.base, &["maintenance", "end", "load_1"]).await;
    let holder = app.session(600.0).await;
    app.acquire("load_1", &holder, json!({})).await;
    let out = cli(
        &app.base,
        &["run", "--lock", "load_1", "--wait", "1h", "--", "true"],
    )
    .await;
    assert_eq!(out.code, 75, "{}", out.stderr);
    assert!(
        out.stderr.contains("busy and the server does not queue"),
        "{}",
        out.stderr
    );
    assert_eq!(live_sessions(&app).await, [holder]);
}

/// `status EQ` shows a lock handed over within a claim window with until
/// when it must be claimed; once claimed, no such line.
#[tokio::test]
async fn status_shows_the_claim_window_of_a_handed_over_lock() {
    let app = spawn_app().await;
    let (holder, waiter) = (app.session(600.0).await, app.session(600.0).await);
    app.acquire(PSU, &holder, json!({})).await;
    let (_, queued) = app
        .acquire(
            PSU,
            &waiter,
            json!({"queue_if_busy": true, "claim_within_seconds": 60}),
        )
        .await;
    assert_eq!(queued["status"], "queued", "{queued}");
    let before = ok(&app.base, &["status", PSU]).await;
    assert!(!before.contains("claim:"), "{before}");
    app.release(PSU, &holder, false).await;
    let (_, status) = app.get("/api/locks/status/ps_abc123").await;
    let claim_by = status["claim_by"]
        .as_str()
        .expect("a claim window")
        .to_owned();
    let detail = ok(&app.base, &["status", PSU]).await;
    let line = detail
        .lines()
        .find(|l| l.starts_with("claim:"))
        .unwrap_or_else(|| panic!("{detail}"));
    assert_eq!(
        line.split_once(':').unwrap().1.trim(),
        format!("claim by {claim_by} or it passes to the next in line")
    );
    // Claimed (a renewal): the window is gone, and so is the line.
    let (code, _) = app
        .post(
            &format!("/api/locks/activity/{PSU}"),
            json!({"session_id": waiter}),
        )
        .await;
    assert!(code.is_success());
    let after = ok(&app.base, &["status", PSU]).await;
    assert!(!after.contains("claim:"), "{after}");
}

#[tokio::test]
async fn waiters_step_back_and_swap_from_the_command_line() {
    let app = spawn_app().await;
    let holder = app.session(600.0).await;
    app.acquire(PSU, &holder, json!({})).await;
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let s = app.session(600.0).await;
        app.acquire(PSU, &s, json!({"queue_if_busy": true})).await;
        waiters.push(s);
    }
    let (a, b, c) = (&waiters[0], &waiters[1], &waiters[2]);
    let out = client(&app.base)
        .args(["step-back", PSU])
        .env("LABLINK_SESSION_ID", a)
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "stepped back: now position 2 in the queue for ps_abc123\n"
    );
    let order = async || {
        let mut order = Vec::new();
        for n in 1..=3 {
            order.push(waiter_at(&app, n).await);
        }
        order
    };
    assert_eq!(order().await, [b.clone(), a.clone(), c.clone()]);

    let out = ok(&app.base, &["swap", PSU, c, "--session", b]).await;
    assert_eq!(
        out,
        format!(
            "offered to swap with {c}; it happens when {c} asks too (still position 1 in the queue for ps_abc123)\n"
        )
    );
    assert_eq!(
        order().await,
        [b.clone(), a.clone(), c.clone()],
        "nothing moved yet"
    );
    let answer = json_of(&ok(&app.base, &["swap", PSU, b, "--session", c, "--json"]).await);
    assert_eq!(
        answer,
        json!({"success": true, "status": "swapped", "equipment_id": PSU, "position": 1})
    );
    assert_eq!(order().await, [c.clone(), a.clone(), b.clone()]);

    // Last in line cannot step back (the server's 409), and without a
    // session it says how to name one.
    let out = cli(&app.base, &["step-back", PSU, "--session", b]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with("lablink step-back: "),
        "{}",
        out.stderr
    );
    let out = cli(&app.base, &["step-back", PSU]).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("--session or LABLINK_SESSION_ID"),
        "{}",
        out.stderr
    );
}

// ---- lock groups and pools -------------------------------------------------

/// The bench of `tests/api/groups.rs`: psu1..psu3 (tag psu; psu1 also
/// 30V), scope1, load1, and the group bench3 = psu1 + scope1 + load1.
async fn bench_app() -> TestApp {
    crate::helpers::spawn_with(crate::groups::bench(crate::helpers::memory())).await
}

/// Who holds each of `ids` (exclusive), and with which lock group.
async fn holders(app: &TestApp, ids: &[&str]) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for id in ids {
        let (_, s) = app.get(&format!("/api/locks/status/{id}")).await;
        out.push((s["session_id"].clone(), s["group_id"].clone()));
    }
    out
}

/// What a command run by `run` printed of its environment: `NAME=value`
/// for each of `names` (`unset` when it was not set).
fn env_script(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!(r#"echo "{n}=${{{n}-unset}}""#))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn run_env(base: &str, args: &[&str], names: &[&str]) -> Vec<String> {
    let script = env_script(names);
    let mut all = vec!["run"];
    all.extend(args);
    all.extend(["--", "sh", "-c", &script]);
    let out = cli(base, &all).await;
    assert_eq!(out.code, 0, "{args:?}: {}{}", out.stdout, out.stderr);
    out.stdout.lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn run_takes_a_group_or_a_pool_and_gives_the_command_every_members_lock() {
    let app = bench_app().await;
    let bin = env!("CARGO_BIN_EXE_lablink");

    // A configured group by its id: every member held, as one group, while
    // the command runs; the variables per instrument; all released after.
    let script = format!(
        "{}; \"{bin}\" status --json",
        env_script(&[
            "LABLINK_GROUP_ID",
            "LABLINK_EQUIPMENT_IDS",
            "LABLINK_EQUIPMENT_ID",
            "LABLINK_LOCK_ID",
            "LABLINK_FENCING_TOKEN",
            "LABLINK_LOCK_ID_PSU1",
            "LABLINK_FENCING_TOKEN_SCOPE1",
            "LABLINK_LOCK_ID_LOAD1",
        ])
    );
    let out = cli(
        &app.base,
        &["run", "--lock", "bench3", "--", "sh", "-c", &script],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let group = lines[0].strip_prefix("LABLINK_GROUP_ID=").unwrap();
    assert!(group.starts_with("grp_"), "{}", out.stdout);
    assert_eq!(
        lines[1..8],
        [
            "LABLINK_EQUIPMENT_IDS=load1 psu1 scope1",
            "LABLINK_EQUIPMENT_ID=load1 psu1 scope1",
            "LABLINK_LOCK_ID=lock_load1_1 lock_psu1_1 lock_scope1_1",
            "LABLINK_FENCING_TOKEN=1 1 1",
            "LABLINK_LOCK_ID_PSU1=lock_psu1_1",
            "LABLINK_FENCING_TOKEN_SCOPE1=1",
            "LABLINK_LOCK_ID_LOAD1=lock_load1_1",
        ]
    );
    let statuses = json_of(&lines[8..].join("\n"));
    let held: Vec<(&str, &str)> = statuses
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["locked"] == true)
        .map(|s| {
            (
                s["equipment_id"].as_str().unwrap(),
                s["group_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        held,
        [("psu1", group), ("scope1", group), ("load1", group)],
        "held as one group while the command ran"
    );
    assert!(
        holders(&app, &["psu1", "scope1", "load1"])
            .await
            .iter()
            .all(|(s, _)| s.is_null()),
        "released after"
    );
    assert_eq!(live_sessions(&app).await, Vec::<String>::new());

    // Several instruments, repeated or comma-separated: one lock group.
    let names = ["LABLINK_EQUIPMENT_IDS", "LABLINK_LOCK_ID_PSU2"];
    for args in [
        &["--lock", "scope1", "--lock", "psu2"][..],
        &["--lock", "scope1,psu2"][..],
    ] {
        let env = run_env(&app.base, args, &names).await;
        assert_eq!(env[0], "LABLINK_EQUIPMENT_IDS=psu2 scope1", "{args:?}");
        assert!(
            env[1].starts_with("LABLINK_LOCK_ID_PSU2=lock_psu2_"),
            "{env:?}"
        );
    }

    // A pool by tag, with another instrument: psu1 is busy, so the other
    // supply that fits.
    let holder = app.session(600.0).await;
    app.acquire("psu1", &holder, json!({})).await;
    let env = run_env(
        &app.base,
        &["--any-of", "tag:psu", "--lock", "scope1"],
        &["LABLINK_EQUIPMENT_IDS", "LABLINK_GROUP_ID"],
    )
    .await;
    assert_eq!(env[0], "LABLINK_EQUIPMENT_IDS=psu2 scope1");
    assert!(env[1].starts_with("LABLINK_GROUP_ID=grp_"), "{env:?}");
    // Tags must all fit: only psu1 is tagged 30V, and it is busy.
    let out = cli(
        &app.base,
        &[
            "run",
            "--any-of",
            "tag:psu,tag:30V",
            "--wait",
            "0",
            "--",
            "true",
        ],
    )
    .await;
    assert_eq!(out.code, 75, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("gave up waiting for any of tag psu and 30V: it is busy and --wait is 0"),
        "{}",
        out.stderr
    );
    // A pool by ids.
    let env = run_env(
        &app.base,
        &["--any-of", "psu1,psu3"],
        &["LABLINK_EQUIPMENT_IDS"],
    )
    .await;
    assert_eq!(env, ["LABLINK_EQUIPMENT_IDS=psu3"]);

    // One instrument alone keeps today's variables, and no group ones.
    let env = run_env(
        &app.base,
        &["--lock", "psu2"],
        &[
            "LABLINK_EQUIPMENT_ID",
            "LABLINK_GROUP_ID",
            "LABLINK_LOCK_ID_PSU2",
        ],
    )
    .await;
    assert_eq!(
        env,
        [
            "LABLINK_EQUIPMENT_ID=psu2",
            "LABLINK_GROUP_ID=unset",
            "LABLINK_LOCK_ID_PSU2=unset"
        ]
    );

    // A pool is tags or instruments, not both: refused before anything.
    let out = cli(
        &app.base,
        &["run", "--any-of", "tag:psu,psu2", "--", "true"],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("not both"), "{}", out.stderr);
    assert_eq!(live_sessions(&app).await, [holder]);
}

#[tokio::test]
async fn run_waits_for_the_whole_group_and_losing_any_member_stops_the_command() {
    let app = bench_app().await;
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("marks");
    let holder = app.session(600.0).await;
    let waiter = app.session(600.0).await;
    app.acquire("psu1", &holder, json!({})).await;
    app.acquire("psu1", &waiter, json!({"queue_if_busy": true}))
        .await;

    // --wait 0: nothing queued, nothing taken.
    let out = cli(
        &app.base,
        &["run", "--lock", "bench3", "--wait", "0", "--", "true"],
    )
    .await;
    assert_eq!(out.code, 75, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("gave up waiting for bench3: it is busy and --wait is 0"),
        "{}",
        out.stderr
    );

    let (mut run, mut stderr) = start_run(
        &app.base,
        &["--lock", "bench3", "--", "sh", "-c", TRAPPING_CHILD],
        &[("F", &marks)],
    );
    let busy = until_line(
        &mut stderr,
        "waiting in every queue at once: psu1 at position 2, scope1 at position 1, load1 at position 1",
    )
    .await;
    // Only the member in the way is named busy, not the free ones.
    assert!(
        busy.last()
            .unwrap()
            .starts_with("lablink run: psu1 is busy (Waiting for psu1, "),
        "{busy:?}"
    );
    // Its free members stay free for it: nobody behind takes them.
    let other = app.session(600.0).await;
    let (_, taken) = app.acquire("scope1", &other, json!({})).await;
    assert_eq!(taken["code"], "equipment_locked", "{taken}");
    app.release("psu1", &waiter, false).await; // the run moves up on psu1
    until_line(&mut stderr, "psu1: position 1 in the queue").await;
    app.release("psu1", &holder, false).await;
    until_line(&mut stderr, "bench3 is ours (load1: lock lock_load1_1").await;
    until_file_has(&marks, "started").await;
    let held = holders(&app, &["psu1", "scope1", "load1"]).await;
    assert!(
        held.iter().all(|h| h == &held[0] && h.1.is_string()),
        "{held:?}"
    );

    // One member force-released: the group is lost, the command stopped.
    app.release("scope1", "admin", true).await;
    assert_eq!(run.wait().await.unwrap().code(), Some(69));
    assert_eq!(std::fs::read_to_string(&marks).unwrap(), "started\nTERM\n");
    let said = until_line(&mut stderr, "the command was stopped").await;
    let group = held[0].1.as_str().unwrap();
    assert!(
        said.last().unwrap().contains(&format!(
            "lost the lock on scope1 (lock group {group}): it was force-released by admin"
        )),
        "{said:?}"
    );
    assert!(
        holders(&app, &["psu1", "scope1", "load1"])
            .await
            .iter()
            .all(|(s, _)| s.is_null())
    );
    let mut left = live_sessions(&app).await;
    left.sort();
    let mut expected = [holder, waiter, other];
    expected.sort();
    assert_eq!(left, expected, "run's own session ended");
}

#[tokio::test]
async fn status_shows_tags_and_groups_and_release_takes_a_group_however_it_is_named() {
    let app = bench_app().await;
    let s = app.session(600.0).await;
    let (_, got) = app.acquire("bench3", &s, json!({})).await;
    let group = got["group_id"].as_str().unwrap().to_owned();

    let table = ok(&app.base, &["status"]).await;
    let (instruments, groups) = table.split_once("\n\n").unwrap();
    assert_eq!(
        instruments.lines().next().unwrap(),
        "EQUIPMENT  NAME    TAGS     STATE   HOLDER  GROUP   TIME LEFT  QUEUE  OBSERVERS"
    );
    let row = |cells: &[&str]| cells.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rows(instruments),
        vec![
            row(&[
                "psu1", "psu1", "psu,30V", "locked", "test", "bench3", "5m 00s", "0", "0"
            ]),
            row(&["psu2", "psu2", "psu", "free", "-", "-", "-", "0", "0"]),
            row(&["psu3", "psu3", "psu", "free", "-", "-", "-", "0", "0"]),
            row(&[
                "scope1", "scope1", "-", "locked", "test", "bench3", "5m 00s", "0", "0"
            ]),
            row(&[
                "load1", "load1", "-", "locked", "test", "bench3", "5m 00s", "0", "0"
            ]),
        ]
    );
    assert_eq!(
        rows(groups),
        vec![row(&[
            "bench3",
            "Bench 3",
            "psu1, scope1, load1",
            "test",
            "0"
        ])]
    );
    let detail = ok(&app.base, &["status", "psu1"]).await;
    assert!(detail.contains("tags:       psu, 30V"), "{detail}");
    assert!(detail.contains(&format!("group:      {group}")), "{detail}");

    // By the configured id.
    let out = ok(&app.base, &["release", "bench3", "--session", &s]).await;
    assert_eq!(
        out,
        format!("released lock group {group} (psu1, scope1, load1)\n")
    );
    // By the instruments it was taken with, comma- or space-separated.
    let take = async |ids: &[&str]| {
        let (_, got) = app
            .post(
                "/api/locks/acquire",
                json!({"equipment_ids": ids, "session_id": s}),
            )
            .await;
        got["group_id"].as_str().unwrap().to_owned()
    };
    let g = take(&["psu2", "psu3"]).await;
    let out = ok(&app.base, &["release", "psu2,psu3", "--session", &s]).await;
    assert_eq!(out, format!("released lock group {g} (psu2, psu3)\n"));
    let g = take(&["psu2", "psu3"]).await;
    let out = ok(&app.base, &["release", "psu3", "psu2", "--session", &s]).await;
    assert_eq!(out, format!("released lock group {g} (psu2, psu3)\n"));
    // By its group_id (--json: the server's answer), or by any member.
    let g = take(&["psu2", "psu3"]).await;
    let answer = json_of(
        &ok(
            &app.base,
            &["release", "--group-id", &g, "--session", &s, "--json"],
        )
        .await,
    );
    assert_eq!(answer["group_id"], g.as_str());
    assert_eq!(answer["equipment_ids"], json!(["psu2", "psu3"]));
    // A member's release names the group it ended, member first.
    let g = take(&["psu2", "psu3"]).await;
    let out = ok(&app.base, &["release", "psu3", "--session", &s]).await;
    assert_eq!(out, format!("released lock group {g} (psu3, psu2)\n"));
    assert!(
        holders(&app, &["psu2", "psu3"])
            .await
            .iter()
            .all(|(s, _)| s.is_null())
    );
    // A group nobody holds: the server's detail, exit 1.
    let out = cli(
        &app.base,
        &["release", "--group-id", "grp_nope", "--session", &s],
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("no lock group grp_nope"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn run_refuses_an_empty_instrument_or_tag_before_asking_the_server() {
    // No server at all: nothing is sent, the arguments are refused (2).
    for args in [
        ["run", "--lock", "psu1,", "--", "true"],
        ["run", "--any-of", "tag:", "--", "true"],
    ] {
        let out = cli("http://127.0.0.1:9", &args).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
    }
}

/// Nothing to lock: the error says either flag will do, and the usage does
/// not make `--url` (given here by LABLINK_URL, else defaulted) look
/// required. Two pools: refused, saying why.
#[tokio::test]
async fn run_says_what_to_lock_is_missing_and_why_one_pool() {
    let out = cli("http://127.0.0.1:9", &["run", "--", "true"]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("<--lock <EQ>|--any-of <POOL>>"),
        "{}",
        out.stderr
    );
    let usage = out.stderr.lines().find(|l| l.starts_with("Usage:"));
    assert_eq!(
        usage,
        Some(
            "Usage: lablink run [OPTIONS] <--lock EQ[,EQ...] | --any-of POOL | both> -- CMD [ARGS]..."
        ),
        "{}",
        out.stderr
    );
    let out = cli(
        "http://127.0.0.1:9",
        &[
            "run",
            "--any-of",
            "psu1,psu2",
            "--any-of",
            "scope1",
            "--",
            "true",
        ],
    )
    .await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.starts_with(
            "lablink run: one --any-of per run: the server takes one pool per request."
        ),
        "{}",
        out.stderr
    );
}
