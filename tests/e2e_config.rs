//! `portvakt check-config` (issue 2, item 2): every problem in a broken file
//! is printed as `file:line: message`, and the exit code is 2; a good file
//! passes with 0.

mod common;

use std::path::PathBuf;

use common::keys::read_line;
use common::portvakt::portvakt_bin;
use common::proc::RUN_TIMEOUT;
use common::*;

/// A small, valid config; relative paths are relative to its folder.
const GOOD: &str = r#"[server]
listen = ["127.0.0.1:2222"]
host_key_dir = "hostkey"
login_grace_time = "1m"

[database]
url = "sqlite://portvakt.db"

[auth]
trusted_user_ca_keys = ["user_ca.pub"]
max_auth_tries = 6

[sessions]
idle_timeout = "30m"
connect_timeout = "10s"

[[users]]
name = "alice"
groups = ["sre"]

[[targets]]
name = "db-1"
host = "127.0.0.1"
port = 22
allow_users = ["alice"]

[[targets]]
name = "lab"
cidr = "10.20.0.0/24"
ports = [22, 2222]
allow_groups = ["sre"]
"#;

/// A folder with the CA file the good config names, and `text` as its config.
fn config_file(env: &TestEnv, text: &str) -> PathBuf {
    let ca = env.ca("user_ca");
    assert!(ca.public_path().ends_with("user_ca.pub"));
    env.write("portvakt.toml", text)
}

/// The 1-based line number of the first line of `text` containing `needle`,
/// searching from the `nth` (0-based) occurrence onwards.
fn line_of(text: &str, needle: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth)
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in the test config"))
}

/// Runs check-config on `text` and asserts exit 2 and a `file:line:` message
/// at one of `lines` mentioning one of `words` (case-insensitive).
fn assert_reported(text: &str, lines: &[usize], words: &[&str]) {
    let env = TestEnv::new();
    let path = config_file(&env, text);
    let out = check_config(&path);
    out.assert_code(2);
    assert_problem(&out, lines, words);
}

fn assert_problem(out: &RunOutput, lines: &[usize], words: &[&str]) {
    let printed = format!("{}\n{}", out.stdout_text(), out.stderr);
    let found = printed.lines().any(|l| {
        lines
            .iter()
            .any(|n| l.contains(&format!("portvakt.toml:{n}: ")))
            && words
                .iter()
                .any(|w| l.to_lowercase().contains(&w.to_lowercase()))
    });
    assert!(
        found,
        "expected a `portvakt.toml:LINE: message` line for line(s) {lines:?} mentioning one of {words:?}:\n{out}"
    );
}

#[test]
fn a_good_file_passes() {
    let env = TestEnv::new();
    let path = config_file(&env, GOOD);
    check_config(&path).assert_success();
}

#[test]
fn an_unknown_key_is_reported_with_its_line() {
    let text = GOOD.replace(
        "login_grace_time = \"1m\"\n",
        "login_grace_time = \"1m\"\nfrobnicate = true\n",
    );
    assert_reported(&text, &[line_of(&text, "frobnicate", 0)], &["frobnicate"]);
}

#[test]
fn a_bad_cidr_is_reported_with_its_line() {
    let text = GOOD.replace("10.20.0.0/24", "10.20.0.0/33");
    assert_reported(
        &text,
        &[line_of(&text, "10.20.0.0/33", 0)],
        &["cidr", "10.20.0.0/33"],
    );
}

#[test]
fn a_port_out_of_range_is_reported_with_its_line() {
    let text = GOOD.replace("port = 22\n", "port = 70000\n");
    assert_reported(
        &text,
        &[line_of(&text, "port = 70000", 0)],
        &["port", "70000"],
    );
}

#[test]
fn a_bad_listen_address_is_reported_with_its_line() {
    let text = GOOD.replace("127.0.0.1:2222", "127.0.0.1:notaport");
    assert_reported(
        &text,
        &[line_of(&text, "notaport", 0)],
        &["listen", "address", "notaport"],
    );
}

#[test]
fn a_bad_duration_is_reported_with_its_line() {
    let text = GOOD.replace("idle_timeout = \"30m\"", "idle_timeout = \"5 parsecs\"");
    assert_reported(
        &text,
        &[line_of(&text, "5 parsecs", 0)],
        &["idle_timeout", "duration", "5 parsecs"],
    );
}

#[test]
fn a_duplicate_target_is_reported_with_its_line() {
    let text = format!(
        "{GOOD}\n[[targets]]\nname = \"db-1\"\nhost = \"10.0.0.9\"\nallow_users = [\"alice\"]\n"
    );
    // Either the second entry's header or its name line.
    let name = line_of(&text, "name = \"db-1\"", 1);
    assert_reported(&text, &[name - 1, name], &["db-1"]);
}

#[test]
fn a_target_nobody_may_use_is_reported_with_its_line() {
    let text = format!("{GOOD}\n[[targets]]\nname = \"orphan\"\nhost = \"10.0.0.9\"\n");
    let name = line_of(&text, "name = \"orphan\"", 0);
    assert_reported(&text, &[name - 1, name], &["orphan"]);
}

#[test]
fn an_unreadable_ca_file_is_reported_with_its_line() {
    let text = GOOD.replace("\"user_ca.pub\"", "\"missing_ca.pub\"");
    assert_reported(
        &text,
        &[line_of(&text, "missing_ca.pub", 0)],
        &["missing_ca.pub"],
    );
}

#[test]
fn every_problem_of_a_file_is_reported_at_once() {
    let env = TestEnv::new();
    let text = format!(
        "{}\n[[targets]]\nname = \"db-1\"\nhost = \"10.0.0.9\"\nallow_users = [\"alice\"]\n\
         \n[[targets]]\nname = \"orphan\"\nhost = \"10.0.0.8\"\n",
        GOOD.replace("\"user_ca.pub\"", "\"missing_ca.pub\"")
    );
    let path = config_file(&env, &text);

    let out = check_config(&path);

    out.assert_code(2);
    assert_problem(
        &out,
        &[line_of(&text, "missing_ca.pub", 0)],
        &["missing_ca.pub"],
    );
    let dup = line_of(&text, "name = \"db-1\"", 1);
    assert_problem(&out, &[dup - 1, dup], &["db-1"]);
    let orphan = line_of(&text, "name = \"orphan\"", 0);
    assert_problem(&out, &[orphan - 1, orphan], &["orphan"]);
}

/// The README's first command: `config/dev.toml`, started from the
/// repository root with a relative `--config`, opens its SQLite database
/// (`sqlite://../data/dev/portvakt.db`, relative to the config's folder),
/// serves a certificate login and records it. The checkout is copied into
/// the test's folder (only the listen port changed) so that a developer's
/// own `data/dev` stays untouched.
#[test]
fn the_dev_config_serves_when_started_from_the_repository_root() {
    let env = TestEnv::new();
    let root = env.path().join("checkout");
    let dev = root.join("data/dev");
    std::fs::create_dir_all(root.join("config")).unwrap();
    std::fs::create_dir_all(&dev).unwrap();
    let port = free_port();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/dev.toml"))
        .expect("read config/dev.toml");
    let listen = "\"127.0.0.1:2222\"";
    assert!(text.contains(listen), "config/dev.toml listens elsewhere");
    let text = text.replace(listen, &format!("\"127.0.0.1:{port}\""));
    std::fs::write(root.join("config/dev.toml"), text).unwrap();
    // What scripts/dev makes: a throw-away CA in data/dev.
    let ca = UserCa::new(&dev, "user_ca");
    let key = env.signed_key(&ca, "dev", &CertSpec::user(&["dev"]));

    let log = env.path().join("serve.log");
    let mut server = ChildGuard::spawn(
        "portvakt",
        std::process::Command::new(portvakt_bin())
            .current_dir(&root)
            .args(["serve", "--config", "config/dev.toml"])
            .env_remove("PORTVAKT_CONFIG"),
        Some(&log),
    );
    server.wait_for_port(port);
    let host_key_file = dev.join("ssh_host_ed25519_key.pub");
    let host_key = poll_until("the host key", std::time::Duration::from_secs(10), || {
        host_key_file.exists().then(|| read_line(&host_key_file))
    });
    let client = SshClient::new(
        env.path(),
        port,
        format!("[127.0.0.1]:{port} {host_key}"),
        "dev",
    )
    .identity(&key);

    let out = client.run(&[BASTION]);
    out.assert_code(1);
    let said = format!("{}{}", out.stdout_text(), out.stderr);
    assert!(
        said.contains("dev"),
        "the session text names the user: {out}"
    );
    assert!(
        dev.join("portvakt.db").is_file(),
        "the database is in data/dev"
    );
    let audit = poll_until("the login in the audit trail", AUDIT_TIMEOUT, || {
        let out = run(
            std::process::Command::new(portvakt_bin())
                .current_dir(&root)
                .args(["audit", "list", "--json", "--config", "config/dev.toml"])
                .env_remove("PORTVAKT_CONFIG"),
            None,
            RUN_TIMEOUT,
        );
        out.assert_success();
        let events: Vec<AuditEvent> = serde_json::from_str(&out.stdout_text()).unwrap();
        events
            .iter()
            .any(|e| e.kind == "auth.success" && e.user.as_deref() == Some("dev"))
            .then_some(events)
    });
    assert!(!audit.is_empty());
    server.assert_running();
}

/// A target host in a legacy address spelling ("010.0.0.1" dials 8.0.0.1,
/// a name like "127.1" dials 127.0.0.1) is refused with its line.
#[test]
fn a_host_in_a_legacy_address_spelling_is_reported_with_its_line() {
    for host in ["010.0.0.1", "127.1", "0x7f000001", "db_1"] {
        let text = GOOD.replace("host = \"127.0.0.1\"", &format!("host = {host:?}"));
        assert_reported(
            &text,
            &[line_of(&text, host, 0)],
            &["canonical", "DNS name"],
        );
    }
}

/// The review console (issue 14): plain HTTP on a public address is
/// refused, and so is a console without `[oidc]`; on loopback it passes.
#[test]
fn a_plain_http_console_off_loopback_is_refused() {
    let oidc = "\n[oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"portvakt\"\n";
    let console = "\n[console]\nlisten = \"0.0.0.0:8443\"\npublic_url = \"https://bastion.example.com:8443\"\nreviewer_groups = [\"security\"]\n";
    let text = format!("{GOOD}{oidc}{console}");
    assert_reported(
        &text,
        &[line_of(&text, "0.0.0.0:8443", 0)],
        &["plain HTTP on 0.0.0.0:8443"],
    );
    let text = format!("{GOOD}{console}");
    assert_reported(
        &text,
        &[line_of(&text, "[console]", 0)],
        &["add an [oidc] section"],
    );
    let env = TestEnv::new();
    let loopback = console.replace("0.0.0.0:8443", "127.0.0.1:8443");
    let path = config_file(&env, &format!("{GOOD}{oidc}{loopback}"));
    check_config(&path).assert_success();
}
