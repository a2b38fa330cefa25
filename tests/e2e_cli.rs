//! The reviewer's side (issue 2, item 6; DESIGN.md §5): `sessions list`
//! filters, `sessions show`, `audit list --since`, and exit codes; and
//! `audit verify` (issue 13, DESIGN.md §11) after real traffic and after
//! tampering by SQL.

mod common;

use serde_json::Value;

use common::*;
use common::{portvakt, proc};

/// A bastion where alice (certificate) used "echo" and svc (service key)
/// used "sink", both forwards closed.
fn reviewed_bastion(env: &TestEnv) -> (Portvakt, TcpServer, SinkServer) {
    reviewed_bastion_with(env, "")
}

/// The same, with raw TOML appended to its config.
fn reviewed_bastion_with(env: &TestEnv, extra: &str) -> (Portvakt, TcpServer, SinkServer) {
    let ca = env.ca("user_ca");
    let alice = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]));
    let svc = env.key("svc");
    let echo = EchoServer::start();
    let sink = SinkServer::start();
    let mut config = Config::new()
        .trust(&ca)
        .user(User::service("svc", &svc))
        .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["alice"]))
        .target(Target::host("sink", "127.0.0.1", sink.port()).allow_users(&["svc"]));
    config.extra = extra.to_string();
    let pv = env.portvakt(&config);
    assert_echo_works(
        &env.client(&pv, "alice").identity(&alice),
        "echo",
        echo.port,
    );
    forward_stdio(
        &env.client(&pv, "svc").identity(&svc),
        "sink",
        sink.port(),
        b"data\n",
    )
    .assert_success();
    poll_until("both forwards to be closed", AUDIT_TIMEOUT, || {
        let rows = pv.sessions();
        (rows.iter().filter(|r| r.ended_at.is_some()).count() >= 2).then_some(())
    });
    (pv, echo, sink)
}

fn id_arg(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn sessions_list_filters_by_user_target_and_time() {
    let env = TestEnv::new();
    let (pv, _echo, _sink) = reviewed_bastion(&env);

    let alice = pv.sessions_filtered(&["--user", "alice"]);
    assert!(!alice.is_empty(), "no rows for alice");
    assert!(
        alice.iter().all(|r| r.user.as_deref() == Some("alice")),
        "{alice:#?}"
    );

    let sink = pv.sessions_filtered(&["--target", "sink"]);
    assert!(!sink.is_empty(), "no rows for sink");
    assert!(
        sink.iter().all(|r| r.target.as_deref() == Some("sink")),
        "{sink:#?}"
    );
    assert!(
        sink.iter().all(|r| r.user.as_deref() == Some("svc")),
        "{sink:#?}"
    );

    let all = pv.sessions();
    let since_past = pv.sessions_filtered(&["--since", "2000-01-01T00:00:00Z"]);
    assert!(since_past.len() >= all.len(), "{since_past:#?}");
    assert!(
        pv.sessions_filtered(&["--since", "2999-01-01T00:00:00Z"])
            .is_empty()
    );
    assert!(
        pv.sessions_filtered(&["--until", "2000-01-01T00:00:00Z"])
            .is_empty()
    );
    let until_future = pv.sessions_filtered(&["--until", "2999-01-01T00:00:00Z"]);
    assert!(until_future.len() >= all.len(), "{until_future:#?}");
}

#[test]
fn sessions_show_prints_one_row() {
    let env = TestEnv::new();
    let (pv, _echo, _sink) = reviewed_bastion(&env);
    let row = pv
        .sessions_filtered(&["--target", "echo"])
        .into_iter()
        .next()
        .expect("an echo row");

    let shown = pv.cli_json(&["sessions", "show", &id_arg(&row.id), "--json"]);

    assert_eq!(shown.get("id"), Some(&row.id), "{shown}");
    for key in SESSION_KEYS {
        assert!(
            shown.get(key).is_some(),
            "sessions show lacks {key}: {shown}"
        );
    }
    assert_eq!(shown["target"], "echo");
    assert_eq!(shown["user"], "alice");
    // A session row points at the connection it belongs to.
    let events = pv.audit();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "connection.open" && e.connection_id == row.connection_id),
        "no connection.open with the row's connection_id {}",
        row.connection_id
    );
}

#[test]
fn sessions_show_of_an_unknown_id_fails_with_exit_1() {
    let env = TestEnv::new();
    let (pv, _echo, _sink) = reviewed_bastion(&env);

    pv.cli(&["sessions", "show", "999999", "--json"])
        .assert_code(1);
}

#[test]
fn audit_list_filters_by_time() {
    let env = TestEnv::new();
    let (pv, _echo, _sink) = reviewed_bastion(&env);

    let all = pv.audit();
    for kind in [
        "auth.success",
        "connection.open",
        "forward.open",
        "forward.close",
    ] {
        assert!(
            all.iter().any(|e| e.kind == kind),
            "no {kind} in the audit trail"
        );
    }
    let future = pv.cli_json(&["audit", "list", "--json", "--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(future, Value::Array(Vec::new()));
    let past = pv.cli_json(&["audit", "list", "--json", "--since", "2000-01-01T00:00:00Z"]);
    // Later events (a connection.close) may land between the two reads.
    assert!(
        past.as_array().map(Vec::len).unwrap_or(0) >= all.len(),
        "{past}"
    );
}

#[test]
fn a_usage_error_exits_2() {
    let out = run(
        std::process::Command::new(portvakt::portvakt_bin()).args([
            "sessions",
            "list",
            "--no-such-flag",
        ]),
        None,
        proc::RUN_TIMEOUT,
    );
    out.assert_code(2);
}

/// Runs `sql` on the bastion's database, as someone with write access to
/// it (and not to portvakt) would.
#[test]
fn audit_verify_passes_after_real_traffic_and_names_a_tampered_row() {
    let env = TestEnv::new();
    let (pv, _echo, _sink) = reviewed_bastion(&env);

    let out = pv.cli(&["audit", "verify"]);
    out.assert_code(0);
    let text = out.stdout_text();
    assert!(text.contains(": intact: "), "{out}");
    assert!(
        text.contains("A chain cut off at its end is caught only against checkpoints"),
        "the limits are spelled out: {out}"
    );
    let report = pv.cli_json(&["audit", "verify", "--json"]);
    assert_eq!(report["intact"], true, "{report}");
    let nodes = report["nodes"].as_array().expect("nodes");
    assert!(!nodes.is_empty(), "{report}");
    for n in nodes {
        for key in ["node", "rows", "last_seq", "last_checkpoint", "problems"] {
            assert!(n.get(key).is_some(), "no {key}: {report}");
        }
        assert!(n["rows"].as_i64().unwrap_or(0) > 0, "{report}");
        assert_eq!(n["last_seq"], n["rows"], "gapless from 1: {report}");
        assert_eq!(n["problems"], serde_json::json!([]), "{report}");
    }

    // Somebody makes a forward look smaller than it was: `forwards` is
    // updated in place, not chained, but cross-checked with the chain.
    let forward = pv
        .sessions()
        .into_iter()
        .find(|r| r.ended_at.is_some())
        .expect("a closed forward");
    let forward_id = id_arg(&forward.id);
    pv.wait_for_audit("the forward's close", |e| {
        e.kind == "forward.close" && id_arg(&e.detail["forward_id"]) == forward_id
    });
    let bytes = |sign: char| {
        format!(
            "UPDATE forwards SET bytes_to_target = bytes_to_target {sign} 1000 WHERE id = {forward_id}"
        )
    };
    database::execute(pv.database_url(), bytes('+'));
    let out = pv.cli(&["audit", "verify"]);
    out.assert_code(1);
    assert!(
        out.stdout_text().contains(&format!(
            "row_mismatch: forwards row {forward_id}: bytes_to_target"
        )),
        "names the table, the row and the field: {out}"
    );
    database::execute(pv.database_url(), bytes('-'));
    pv.cli(&["audit", "verify"]).assert_code(0);

    // Somebody makes alice's login look like mallory's.
    let login = pv
        .audit()
        .into_iter()
        .find(|e| e.kind == "auth.success" && e.user.as_deref() == Some("alice"))
        .expect("alice's auth.success");
    let id = id_arg(&login.id);
    database::execute(
        pv.database_url(),
        format!("UPDATE audit_events SET user_name = 'mallory' WHERE id = {id}"),
    );
    let out = pv.cli(&["audit", "verify"]);
    out.assert_code(1);
    let text = out.stdout_text();
    assert!(text.contains("TAMPERED"), "{out}");
    assert!(
        text.contains(&format!("hash_mismatch: row {id} ")),
        "names the row: {out}"
    );
    let out = pv.cli(&["audit", "verify", "--json"]);
    out.assert_code(1);
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(report["intact"], false, "{report}");
    let problem = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["problems"].as_array().unwrap().clone())
        .next()
        .expect("a problem");
    assert_eq!(id_arg(&problem["id"]), id, "{report}");
    assert_eq!(problem["problem"], "hash_mismatch", "{report}");

    // A node without events cannot be checked.
    pv.cli(&["audit", "verify", "--node", "no-such-node"])
        .assert_code(2);
}

#[test]
fn audit_verify_without_a_database_exits_2() {
    let env = TestEnv::new();
    // Nothing listens on port 1.
    let config = env.write(
        "unreachable.toml",
        Config::new().render(
            free_port(),
            &env.path().join("hostkey"),
            "postgres://portvakt@127.0.0.1:1/portvakt",
        ),
    );
    let out = run(
        std::process::Command::new(portvakt::portvakt_bin())
            .args(["audit", "verify", "--config"])
            .arg(&config)
            .env_remove("PORTVAKT_CONFIG"),
        None,
        proc::RUN_TIMEOUT,
    );
    out.assert_code(2);
}

/// The ids of `node`'s chain rows of `kind`, oldest first, and the chain's
/// newest seq, read with `audit export`.
fn exported(pv: &Portvakt) -> Vec<Value> {
    let out = pv.cli(&["audit", "export"]);
    out.assert_success();
    out.stdout_text()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON lines"))
        .filter(|v| v["type"] == "row")
        .collect()
}

/// Signed checkpoints with real traffic (issue 13, DESIGN.md §11): the
/// server signs its chain (here every 3 events, and as it stops); verify
/// pins the key `audit key` prints; an export verifies on its own; a chain
/// re-signed with another key fails against the pinned key; a tail cut off
/// is caught with the checkpoints from the server's JSON log and from the
/// checkpoint file, though the database alone cannot tell.
#[test]
fn signed_checkpoints_pin_the_key_verify_exports_and_catch_a_cut_tail() {
    let env = TestEnv::new();
    let cp_file = env.path().join("checkpoints.jsonl");
    let extra = format!(
        "[audit]\ncheckpoint_every = 3\ncheckpoint_file = {:?}\n",
        cp_file.display().to_string()
    );
    let (mut pv, echo, _sink) = reviewed_bastion_with(&env, &extra);
    pv.signal("TERM");
    assert!(pv.wait_exit(proc::RUN_TIMEOUT).success());

    let key = pv.cli(&["audit", "key"]);
    key.assert_success();
    let key_text = key.stdout_text();
    assert!(
        key_text.starts_with("ssh-ed25519 ") && key_text.contains(" portvakt/"),
        "{key}"
    );
    let pinned = env.write("node.pub", &key_text);
    let pinned = pinned.to_str().unwrap();
    let log = env.write("portvakt-log.jsonl", pv.log());
    let log = log.to_str().unwrap();

    let report = pv.cli_json(&[
        "audit",
        "verify",
        "--key",
        pinned,
        "--checkpoints",
        log,
        "--json",
    ]);
    assert_eq!(report["intact"], true, "{report}");
    let node = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["checkpoints"].as_u64().unwrap_or(0) > 0)
        .unwrap_or_else(|| panic!("a node with checkpoints: {report}"))
        .clone();
    assert_eq!(node["unsigned_rows"], 0, "signed as it stopped: {report}");
    assert_eq!(
        node["complete_to"].as_i64(),
        node["last_seq"].as_i64().map(|s| s - 1),
        "{report}"
    );
    let node_name = node["node"].as_str().unwrap().to_string();
    let logged = pv
        .log()
        .lines()
        .filter(|l| l.contains("\"event\":\"audit.checkpoint\""))
        .count();
    assert_eq!(
        logged as u64,
        node["checkpoints"].as_u64().unwrap(),
        "each checkpoint logged once"
    );
    let filed = std::fs::read_to_string(&cp_file).expect("the checkpoint file");
    assert_eq!(filed.lines().count(), logged, "{filed}");

    // An export verifies offline, without the config or the database.
    let export = pv.cli(&["audit", "export", "--node", &node_name]);
    export.assert_success();
    let export_path = env.write("export.jsonl", &export.stdout);
    let offline = run(
        std::process::Command::new(portvakt::portvakt_bin())
            .args(["audit", "verify", "--file"])
            .arg(&export_path)
            .args(["--key", pinned, "--config", "/nonexistent.toml"]),
        None,
        proc::RUN_TIMEOUT,
    );
    offline.assert_code(0);
    assert!(offline.stdout_text().contains(": intact: "), "{offline}");
    // Without a pinned key there is nothing to trust it with.
    pv.cli(&["audit", "verify", "--file", export_path.to_str().unwrap()])
        .assert_code(2);

    // Someone with the database but not the key: a new key signs on.
    let keyfile = pv.host_key_dir().join("audit_signing_key");
    std::fs::remove_file(&keyfile).expect("the signing key is in the host key folder");
    pv.restart();
    let mallory = env.key("mallory");
    let refused = forward_stdio(
        &env.client(&pv, "mallory").identity(&mallory),
        "echo",
        echo.port,
        b"x",
    );
    assert_eq!(refused.code(), 255, "{refused}");
    pv.signal("TERM");
    assert!(pv.wait_exit(proc::RUN_TIMEOUT).success());
    let out = pv.cli(&["audit", "verify", "--node", &node_name]);
    out.assert_code(0);
    assert!(out.stdout_text().contains("pin with --key"), "{out}");
    let out = pv.cli(&["audit", "verify", "--node", &node_name, "--key", pinned]);
    out.assert_code(1);
    assert!(
        out.stdout_text().contains("bad_signature: checkpoint row"),
        "{out}"
    );

    // The newest rows go, with the newest checkpoints: only the copies
    // outside the database show it.
    let rows = exported(&pv);
    let mine: Vec<&Value> = rows
        .iter()
        .filter(|r| r["node"] == node_name.as_str())
        .collect();
    let cps: Vec<i64> = mine
        .iter()
        .filter(|r| r["kind"] == "audit.checkpoint")
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    assert!(cps.len() >= 2, "{cps:?}");
    let first_key_last_cp = filed
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .max()
        .unwrap();
    let cut = first_key_last_cp - 1;
    database::execute(
        pv.database_url(),
        format!("DELETE FROM audit_events WHERE node = '{node_name}' AND seq > {cut}"),
    );
    pv.cli(&["audit", "verify", "--node", &node_name])
        .assert_code(0);
    let out = pv.cli(&[
        "audit",
        "verify",
        "--node",
        &node_name,
        "--checkpoints",
        log,
    ]);
    out.assert_code(1);
    assert!(
        out.stdout_text()
            .contains("truncated: the chain ends at seq"),
        "{out}"
    );
    let out = pv.cli(&[
        "audit",
        "verify",
        "--node",
        &node_name,
        "--checkpoints",
        cp_file.to_str().unwrap(),
    ]);
    out.assert_code(1);
    assert!(out.stdout_text().contains("truncated"), "{out}");
}
