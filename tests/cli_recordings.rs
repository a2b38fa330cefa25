//! `portvakt recordings list|show|export|play` (DESIGN.md §10) through the
//! built binary, on recordings written by `Recorder` into the SQLite
//! database of a config.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use portvakt::recording::store::{self, Kind, Meta, Recorder, Settings};
use portvakt::store::Store;
use serde_json::Value;

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    url: String,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("portvakt.db").display());
    let config = dir.path().join("portvakt.toml");
    std::fs::write(&config, format!("[database]\nurl = {url:?}\n")).unwrap();
    Setup {
        _dir: dir,
        config,
        url,
    }
}

fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portvakt"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("PORTVAKT_CONFIG")
        .output()
        .unwrap()
}

fn ok(out: Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn meta(user: &str, target: &str, kind: Kind, command: Option<&str>) -> Meta {
    Meta {
        node: "node-a".into(),
        connection_id: "conn-1".into(),
        session_id: 1,
        channel: 0,
        user: user.into(),
        target: target.into(),
        login: "root".into(),
        kind,
        command: command.map(str::to_string),
        term: Some("xterm".into()),
        width: 80,
        height: 24,
    }
}

const SETTINGS: Settings = Settings {
    max_bytes: 1 << 20,
    input: true,
};

/// A shell recording of alice on db-1 and an exec of bob on web; their ids.
async fn record(url: &str) -> (i64, i64) {
    let store = Store::open(url).await.unwrap();
    let mut r = Recorder::start(
        store.clone(),
        meta("alice", "db-1", Kind::Shell, None),
        SETTINGS,
    )
    .await
    .unwrap();
    let shell = r.id();
    r.output(b"$ ");
    r.input(b"ls\r");
    r.output(b"ls\r\nfile-\xe2\x82");
    r.flush().await.unwrap();
    r.output(b"\xac\r\n$ ");
    r.resize(100, 30);
    r.output(b"exit\r\n");
    r.finish(Some(0)).await.unwrap();
    let mut r = Recorder::start(
        store.clone(),
        meta("bob", "web", Kind::Exec, Some("uptime")),
        SETTINGS,
    )
    .await
    .unwrap();
    let exec = r.id();
    r.output(b"up 3 days\n");
    r.finish(Some(2)).await.unwrap();
    store.close().await;
    (shell, exec)
}

async fn stored(url: &str, id: i64) -> Vec<u8> {
    let store = Store::open(url).await.unwrap();
    let c = store::content(&store, id).await.unwrap();
    store.close().await;
    c.bytes
}

async fn sql(url: &str, text: &str) {
    let store = Store::open(url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(text.to_string()))
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await;
}

#[tokio::test]
async fn list_show_export_and_play_a_recording() {
    let s = setup();
    let (shell, exec) = record(&s.url).await;

    let rows: Value =
        serde_json::from_slice(&ok(cli(&s.config, &["recordings", "list", "--json"]))).unwrap();
    let ids: Vec<i64> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [exec, shell]);
    let row = &rows[0];
    assert_eq!(
        (row["user"].as_str(), row["kind"].as_str()),
        (Some("bob"), Some("exec"))
    );
    assert_eq!(row["command"], "uptime");
    assert_eq!(
        (row["truncated"].as_bool(), row["exit_status"].as_i64()),
        (Some(false), Some(2))
    );
    assert_eq!(row["sha256"].as_str().map(str::len), Some(64));
    let alice: Value = serde_json::from_slice(&ok(cli(
        &s.config,
        &["recordings", "list", "--user", "alice", "--json"],
    )))
    .unwrap();
    assert_eq!(alice.as_array().unwrap().len(), 1);
    let web: Value = serde_json::from_slice(&ok(cli(
        &s.config,
        &[
            "recordings",
            "list",
            "--target",
            "web",
            "--since",
            "1h",
            "--json",
        ],
    )))
    .unwrap();
    assert_eq!(web[0]["id"].as_i64(), Some(exec));
    let table = String::from_utf8(ok(cli(&s.config, &["recordings", "list"]))).unwrap();
    assert!(
        table.contains("uptime") && table.contains("exit 2"),
        "{table}"
    );

    let id = shell.to_string();
    let shown: Value =
        serde_json::from_slice(&ok(cli(&s.config, &["recordings", "show", &id, "--json"])))
            .unwrap();
    assert_eq!(shown["sha256_ok"], true);
    assert_eq!(shown["content_error"], Value::Null);
    let text = String::from_utf8(ok(cli(&s.config, &["recordings", "show", &id]))).unwrap();
    assert!(text.contains("matches its SHA-256"), "{text}");

    let exported = ok(cli(&s.config, &["recordings", "export", &id]));
    assert_eq!(exported, stored(&s.url, shell).await);
    assert!(exported.starts_with(b"{\"version\":2,"));

    // The output only, the cut euro sign whole; no keystrokes, no resize.
    let played = ok(cli(&s.config, &["recordings", "play", &id, "--no-wait"]));
    assert_eq!(
        String::from_utf8(played).unwrap(),
        "$ ls\r\nfile-€\r\n$ exit\r\n"
    );
    let fast = ok(cli(
        &s.config,
        &["recordings", "play", &id, "--speed", "1000"],
    ));
    assert_eq!(fast, b"$ ls\r\nfile-\xe2\x82\xac\r\n$ exit\r\n");
    let bad_speed = cli(&s.config, &["recordings", "play", &id, "--speed", "0"]);
    assert_eq!(bad_speed.status.code(), Some(2));
}

#[tokio::test]
async fn an_unknown_or_changed_recording_is_not_exported() {
    let s = setup();
    let (shell, _) = record(&s.url).await;

    let missing = cli(&s.config, &["recordings", "export", "999"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stdout.is_empty());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no recording 999"));
    assert_eq!(
        cli(&s.config, &["recordings", "show", "999"]).status.code(),
        Some(1)
    );

    sql(
        &s.url,
        &format!(
            "UPDATE recordings SET sha256 = '{}' WHERE id = {shell}",
            "0".repeat(64)
        ),
    )
    .await;
    let id = shell.to_string();
    for args in [vec!["export", id.as_str()], vec!["play", &id, "--no-wait"]] {
        let mut all = vec!["recordings"];
        all.extend(args);
        let out = cli(&s.config, &all);
        assert_eq!(out.status.code(), Some(1), "{all:?}");
        assert!(out.stdout.is_empty(), "{all:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("does not match its SHA-256"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let shown: Value =
        serde_json::from_slice(&ok(cli(&s.config, &["recordings", "show", &id, "--json"])))
            .unwrap();
    assert_eq!(shown["sha256_ok"], false);
}
