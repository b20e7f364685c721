//! The binary as an operator meets it: where a config file's relative paths
//! lead, the token commands' answers, `serve --help`, and how it logs.

use std::path::Path;

use crate::helpers::{lablink, run_lablink, start_binary};

const PSU_PROFILE: &str = include_str!("../../src/drivers/scpi/profiles/psu.toml");

/// `dir/other/lab.toml` with a relative SQLite store and a relative
/// profile, both meant to be beside it.
fn lab_beside_config(dir: &Path) {
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("my-psu.toml"), PSU_PROFILE).unwrap();
    std::fs::write(
        other.join("lab.toml"),
        "[server]\nstore = 'sqlite://state/lab.db'\n\n[[equipment]]\nid = 'tcp_psu'\ndriver = 'scpi-tcp'\naddress = '127.0.0.1:9'\nprofile = 'my-psu.toml'\n",
    )
    .unwrap();
}

fn token(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    run_lablink(cwd, &[&["token"], args].concat())
}

#[test]
fn relative_paths_in_a_config_file_are_taken_from_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    lab_beside_config(dir.path());
    let config = dir.path().join("other/lab.toml");
    let config = config.to_str().unwrap();

    let (ok, _, stderr) = token(
        dir.path(),
        &[
            "create",
            "--user",
            "alice",
            "--role",
            "admin",
            "--config",
            "other/lab.toml",
        ],
    );
    assert!(ok, "{stderr}");
    let db = dir.path().join("other/state/lab.db");
    assert!(db.exists(), "the store is beside the config file");
    assert!(
        stderr.contains(&db.display().to_string()),
        "says where: {stderr}"
    );

    // From another directory, the same config file finds the same store.
    let (ok, stdout, stderr) = token(elsewhere.path(), &["list", "--config", config]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("alice"), "{stdout}");

    // The server finds the profile beside the config file, whatever its
    // working directory.
    let (mut child, addr, _) = start_binary(
        elsewhere.path(),
        &["--bind", "127.0.0.1:0", "--config", config],
        &[],
    );
    let list: serde_json::Value = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let url = format!("http://{addr}/api/equipment/list");
        reqwest::get(url).await.unwrap().json().await.unwrap()
    });
    assert_eq!(list["equipment"][0]["equipment_id"], "tcp_psu", "{list}");
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        std::fs::read_dir(elsewhere.path())
            .unwrap()
            .next()
            .is_none(),
        "nothing was created in the working directory"
    );
}

#[test]
fn token_list_and_revoke_do_not_create_a_store() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["list"][..], &["revoke", "tok_0123456789ab"][..]] {
        let (ok, _, stderr) = token(dir.path(), args);
        assert!(!ok, "{args:?}");
        assert!(stderr.contains("there is no store at"), "{stderr}");
        assert!(stderr.contains("lablink-data/lablink.db"), "{stderr}");
    }
    assert!(!dir.path().join("lablink-data").exists());
    // Not a bad argument (2): it cannot be done (1), as README's client
    // exit statuses say.
    let out = lablink()
        .current_dir(dir.path())
        .args(["token", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = lablink()
        .current_dir(dir.path())
        .args(["token", "list", "--config", "missing.toml"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a config file that is not there"
    );
}

#[test]
fn serve_help_shows_the_real_default_store_and_every_setting() {
    let out = lablink().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("[default: sqlite://lablink-data/lablink.db]"),
        "{help}"
    );
    assert!(!help.contains("[default: memory]"), "{help}");
    let readme = std::fs::read_to_string("README.md").unwrap();
    for name in lablink::config::setting_names() {
        assert!(
            help.contains(name),
            "{name} missing from serve --help:\n{help}"
        );
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} missing from the README"
        );
    }
    // Every LABLINK_ variable the server reads is a known setting.
    let mut read = Vec::new();
    for file in ["src/config.rs", "src/server.rs", "src/cli.rs"] {
        let text = std::fs::read_to_string(file).unwrap();
        let names = text.split('"').filter(|p| {
            p.starts_with("LABLINK_") && p.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        });
        for piece in names {
            read.push(piece.to_owned());
        }
    }
    assert!(!read.is_empty());
    for name in read {
        assert!(
            help.contains(&name),
            "{name} is read but not in serve --help"
        );
    }
}

#[test]
fn logs_have_no_colour_off_a_terminal_and_a_fatal_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[server]\nlock_timeout = 3\n").unwrap();
    let out = lablink()
        .env_remove("NO_COLOR")
        .args(["serve", "--bind", "127.0.0.1:0", "--config", "bad.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.matches("unknown key \"lock_timeout\"").count(),
        1,
        "{stderr}"
    );

    let (mut child, _, lines) = start_binary(
        dir.path(),
        &["--bind", "127.0.0.1:0", "--store", "memory"],
        &[("NO_COLOR", "")],
    );
    child.kill().unwrap();
    let _ = child.wait();
    assert!(lines.iter().all(|l| !l.contains('\u{1b}')), "{lines:?}");
}
