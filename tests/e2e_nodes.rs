//! Several nodes, one bastion (issue 6, item 3): two `portvakt serve`
//! processes on one PostgreSQL database, with one host key and one TOTP key,
//! behave as one bastion. A grant made through node A lets the user in
//! through node B; a revocation or a ban made on one node holds on the other
//! within seconds; a TOTP code used on one node is a replay on the other;
//! `sessions list` on any node shows the forwards of all nodes with their
//! names; and nodes starting at once on a fresh database migrate it once.
//!
//! These tests always use PostgreSQL (several nodes cannot share SQLite
//! across hosts), also in the SQLite pass of `scripts/test`: they need
//! `PORTVAKT_TEST_POSTGRES_URL`, e.g.
//! `export PORTVAKT_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres`.

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::proc::{self, run_ok};
use common::*;

/// How long a revocation or ban made through one node may take to hold
/// on the others in these tests. The nodes re-read the shared database
/// every couple of seconds; a budget of a few seconds would also time the
/// CLI and the ssh client on a loaded machine, so the tests print how long
/// it took and wait as long as for any audit row.
const PROPAGATION: Duration = AUDIT_TIMEOUT;

/// Why these tests need PostgreSQL, for the panic when it is not configured.
const NEEDS_POSTGRES: &str = "tests/e2e_nodes.rs (two portvakt nodes sharing one database)";

/// Two nodes of one bastion. Field order is drop order: the nodes stop
/// before their database is dropped.
struct Pair {
    a: Portvakt,
    b: Portvakt,
    /// One known_hosts line that names both nodes with the one host key.
    known_hosts: String,
    /// The shared host public key ("ssh-ed25519 AAAA...").
    host_key: String,
    _db: Database,
}

impl Pair {
    /// Node A and node B with `config` (plus their `node_name` and TOTP key
    /// file) on one fresh PostgreSQL database. The host key is made once with
    /// ssh-keygen and copied into both host key folders, and node A's TOTP
    /// key file is copied to node B, as docs/DEPLOYING.md says.
    fn start(env: &TestEnv, config: &Config) -> Pair {
        let db = Database::postgres_required(NEEDS_POSTGRES);
        let shared = env.path().join("shared-host-key");
        fs::create_dir_all(&shared).unwrap();
        let key_file = shared.join("ssh_host_ed25519_key");
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "portvakt", "-f"])
                .arg(&key_file),
        );
        let host_key =
            public_key_of(&fs::read_to_string(shared.join("ssh_host_ed25519_key.pub")).unwrap());

        let a_dir = env.path().join("node-a");
        install_host_key(&shared, &a_dir.join("hostkey"));
        let a = Portvakt::start_node(&a_dir, &node_config(config, "node-a", &a_dir), &db);
        // Node A created the TOTP key at its start; node B gets a copy.
        let b_dir = env.path().join("node-b");
        install_host_key(&shared, &b_dir.join("hostkey"));
        install_secret(&a_dir.join("totp.key"), &b_dir.join("totp.key"));
        let b = Portvakt::start_node(&b_dir, &node_config(config, "node-b", &b_dir), &db);
        assert_ne!(a.port, b.port);

        let known_hosts = format!("[127.0.0.1]:{},[127.0.0.1]:{} {host_key}", a.port, b.port);
        Pair {
            a,
            b,
            known_hosts,
            host_key,
            _db: db,
        }
    }

    /// An ssh client of `node` as `user`, trusting both nodes with one line.
    fn client(&self, env: &TestEnv, node: &Portvakt, user: &str) -> SshClient {
        env.client(node, user).bastion_known_host(&self.known_hosts)
    }
}

/// `config` for one node: its name and its own copy of the TOTP key.
fn node_config(config: &Config, name: &str, dir: &Path) -> Config {
    let mut config = config.clone().node_name(name);
    let mfa = config.mfa.take().unwrap_or_default();
    config.mfa(mfa.secret_key_file(&dir.join("totp.key")))
}

/// Copies the host key pair from `from` into the host key folder `to`
/// (private key 0600, as portvakt demands).
fn install_host_key(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    let name = "ssh_host_ed25519_key";
    install_secret(&from.join(name), &to.join(name));
    fs::copy(
        from.join(format!("{name}.pub")),
        to.join(format!("{name}.pub")),
    )
    .unwrap();
}

/// Copies a secret file, mode 0600.
fn install_secret(from: &Path, to: &Path) {
    assert!(from.exists(), "{} does not exist", from.display());
    fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
    fs::set_permissions(to, fs::Permissions::from_mode(0o600)).unwrap();
}

/// "ssh-ed25519 AAAA..." of a public key line (without its comment).
fn public_key_of(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The ed25519 host key that a client sees at 127.0.0.1:`port` (ssh-keyscan).
fn scanned_host_key(port: u16) -> String {
    let out = run_ok(Command::new("ssh-keyscan").args([
        "-T",
        "20",
        "-t",
        "ed25519",
        "-p",
        &port.to_string(),
        "127.0.0.1",
    ]));
    let text = out.stdout_text();
    let line = text
        .lines()
        .find(|l| !l.starts_with('#') && l.contains("ssh-ed25519"))
        .unwrap_or_else(|| panic!("ssh-keyscan saw no ed25519 key on port {port}: {out}"));
    // "[127.0.0.1]:PORT ssh-ed25519 AAAA..."
    public_key_of(line.split_once(' ').map(|(_, k)| k).unwrap_or(""))
}

/// The SHA256 fingerprint of a public key ("ssh-ed25519 AAAA...").
fn fingerprint(dir: &Path, public_key: &str) -> String {
    let path = dir.join(format!("fp-{}.pub", free_port()));
    fs::write(&path, format!("{public_key}\n")).unwrap();
    let out = run_ok(Command::new("ssh-keygen").arg("-lf").arg(&path));
    out.stdout_text()
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no fingerprint in {out}"))
        .to_string()
}

/// A string field of a JSON object.
fn field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// `audit list --json --kind KIND` through `node`.
fn events_of(node: &Portvakt, kind: &str) -> Vec<Value> {
    match node.cli_json(&["audit", "list", "--json", "--kind", kind]) {
        Value::Array(rows) => rows,
        other => panic!("audit list --json is not an array: {other}"),
    }
}

/// Polls the audit trail (through `node`) until an event of `kind`
/// matches `pred`.
fn wait_event(node: &Portvakt, kind: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Vec::new();
    poll_for(AUDIT_TIMEOUT, || {
        last = events_of(node, kind);
        last.iter().find(|e| pred(e)).cloned()
    })
    .unwrap_or_else(|| {
        panic!("no {kind} event {what} within {AUDIT_TIMEOUT:?}; {kind} events were:\n{last:#?}")
    })
}

/// `ssh -W echo:PORT bastion` through `client`, held open after one line
/// came back.
fn open_echo_forward(client: &SshClient, echo: &TcpServer) -> ChildGuard {
    let mut ssh = client.spawn(&["-W", &format!("echo:{}", echo.port), BASTION]);
    ssh.stdin().write_all(b"hi\n").unwrap();
    ssh.stdin().flush().unwrap();
    let (_stdout, back) = proc::read_exact_within(ssh.take_stdout(), 3, AUDIT_TIMEOUT);
    assert_eq!(&back, b"hi\n");
    ssh
}

/// What a TCP client sees at 127.0.0.1:`port` before sending anything:
/// `Some(banner)` when the server speaks SSH, `None` when it closes the
/// connection without a word (a banned source).
fn ssh_banner(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => None,
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ) =>
        {
            None
        }
        Err(e) => panic!("reading the banner on port {port}: {e}"),
    }
}

#[test]
fn both_nodes_present_one_host_key_and_a_grant_made_on_a_works_on_b_until_revoked() {
    let env = TestEnv::new();
    let echo = EchoServer::start();
    let key = env.key("alice");
    let config = Config::new()
        .user(User::totp("alice", &key))
        .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["alice"]));
    let mut pair = Pair::start(&env, &config);

    // One identity: both nodes present the key made once and copied, so one
    // known_hosts line (naming both) serves clients of either.
    let seen_a = scanned_host_key(pair.a.port);
    let seen_b = scanned_host_key(pair.b.port);
    assert_eq!(seen_a, pair.host_key, "node A presents another host key");
    assert_eq!(seen_b, pair.host_key, "node B presents another host key");
    assert_eq!(
        fingerprint(env.path(), &seen_a),
        fingerprint(env.path(), &seen_b)
    );

    // alice logs in through node A with her key and a TOTP code (issue 3):
    // that makes a grant bound to her key.
    let enrolled = pair.a.cli_json(&["totp", "enroll", "alice", "--json"]);
    let askpass = Askpass::with_issuer(env.path(), "http://127.0.0.1:9", Decision::Ignore);
    askpass.set_secret(field(&enrolled, "secret").expect("secret in totp enroll --json"));
    let via_a = pair.client(&env, &pair.a, "alice").identity(&key);
    let out = askpass.run_with_input(
        &via_a,
        &["-W", &format!("echo:{}", echo.port), BASTION],
        b"through node a\n",
    );
    out.assert_success();
    assert_eq!(
        out.stdout_text(),
        "through node a\n",
        "{out}\nprompts:\n{}",
        askpass.describe()
    );
    let created = wait_event(&pair.a, "grant.create", "for alice", |e| {
        field(e, "user") == Some("alice")
    });
    assert_eq!(field(&created, "node"), Some("node-a"), "{created}");
    let grant_id = created["detail"]["grant_id"].clone();
    assert!(
        grant_id.is_i64(),
        "grant.create without a grant id: {created}"
    );

    // Through node B, BatchMode (no prompt can be answered): the grant made
    // on node A lets her in, with method `grant`.
    let via_b = pair.client(&env, &pair.b, "alice").identity(&key);
    let mut live = open_echo_forward(&via_b, &echo);
    let success = wait_event(&pair.b, "auth.success", "on node-b", |e| {
        field(e, "node") == Some("node-b")
    });
    assert_eq!(field(&success, "user"), Some("alice"), "{success}");
    assert_eq!(success["detail"]["method"], "grant", "{success}");
    assert_eq!(success["detail"]["grant_id"], grant_id, "{success}");

    // sessions list on either node shows the forwards of both, with the
    // name of the node that carried each.
    for node in [&pair.a, &pair.b] {
        let rows = poll_until("sessions of both nodes", AUDIT_TIMEOUT, || {
            let rows = node.sessions_json(&[]);
            let nodes: Vec<&str> = rows.iter().filter_map(|r| field(r, "node")).collect();
            (nodes.contains(&"node-a") && nodes.contains(&"node-b")).then_some(rows)
        });
        assert_eq!(rows.len(), 2, "{rows:#?}");
        let a_row = rows
            .iter()
            .find(|r| field(r, "node") == Some("node-a"))
            .unwrap();
        let b_row = rows
            .iter()
            .find(|r| field(r, "node") == Some("node-b"))
            .unwrap();
        assert_eq!(
            field(a_row, "auth_method"),
            Some("publickey+totp"),
            "{a_row}"
        );
        assert_eq!(a_row["bytes_to_target"], 15, "{a_row}");
        assert_eq!(field(b_row, "auth_method"), Some("grant"), "{b_row}");
        assert!(
            b_row["ended_at"].is_null(),
            "node B's forward is open: {b_row}"
        );
        for row in [a_row, b_row] {
            assert_eq!(field(row, "user"), Some("alice"), "{row}");
            assert_eq!(field(row, "target"), Some("echo"), "{row}");
        }
    }

    // An admin revokes the grant through node A's config: the live forward
    // on node B ends (within seconds).
    let revoked_at = Instant::now();
    pair.a
        .cli(&["grants", "revoke", "--user", "alice"])
        .assert_success();
    let ended = poll_for(PROPAGATION.saturating_sub(revoked_at.elapsed()), || {
        live.try_wait()
    });
    assert!(
        ended.is_some(),
        "the forward on node B still runs {:?} after `grants revoke` on node A",
        revoked_at.elapsed()
    );
    eprintln!(
        "node B ended the forward {:?} after `grants revoke` started on node A",
        revoked_at.elapsed()
    );
    let row = pair.b.wait_for_session("node B's forward closed", |r| {
        r.auth_method.as_deref() == Some("grant") && r.ended_at.is_some()
    });
    assert_eq!(
        row.close_reason.as_deref(),
        Some("grant_revoked"),
        "{row:?}"
    );
    wait_event(
        &pair.b,
        "connection.close",
        "grant_revoked on node-b",
        |e| field(e, "node") == Some("node-b") && field(e, "reason") == Some("grant_revoked"),
    );

    // The next login through node B finds no grant: BatchMode cannot do the
    // TOTP step, so it is refused.
    let out = forward_stdio(&via_b, "echo", echo.port, b"again\n");
    assert_login_refused(&out);
    let successes: Vec<Value> = events_of(&pair.b, "auth.success")
        .into_iter()
        .filter(|e| field(e, "node") == Some("node-b"))
        .collect();
    assert_eq!(
        successes.len(),
        1,
        "no login on node B after the revocation: {successes:#?}"
    );

    // Both nodes appended their chains to one database at once; stopped,
    // each has signed its last rows with its own key: the whole trail
    // verifies against the two keys `audit key` prints, cross-checks too.
    let mut pinned = String::new();
    for node in [&mut pair.a, &mut pair.b] {
        node.signal("TERM");
        assert!(node.wait_exit(Duration::from_secs(30)).success());
        let key = node.cli(&["audit", "key"]);
        key.assert_success();
        pinned += &key.stdout_text();
    }
    let keys = env.write("nodes.pub", &pinned);
    let report = pair
        .a
        .cli_json(&["audit", "verify", "--key", keys.to_str().unwrap(), "--json"]);
    assert_eq!(report["intact"], true, "{report:#}");
    let signed: Vec<&str> = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["checkpoints"].as_u64().unwrap_or(0) > 0 && n["unsigned_rows"] == 0)
        .filter_map(|n| n["node"].as_str())
        .collect();
    for node in ["node-a", "node-b", "node-a (cli)"] {
        assert!(
            signed.contains(&node),
            "{node} is signed to its end: {report:#}"
        );
    }
}

#[test]
fn a_totp_code_used_on_one_node_is_refused_as_a_replay_on_the_other() {
    let env = TestEnv::new();
    let echo = EchoServer::start();
    let laptop = env.key("alice-laptop");
    let desktop = env.key("alice-desktop");
    let mut alice = User::totp("alice", &laptop);
    alice.keys.push(desktop.public_line());
    let config = Config::new()
        .user(alice)
        .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["alice"]));
    let pair = Pair::start(&env, &config);

    // Enrolled through node B: the secret is sealed with B's copy of the key.
    let enrolled = pair.b.cli_json(&["totp", "enroll", "alice", "--json"]);
    let mut askpass = Askpass::with_issuer(env.path(), "http://127.0.0.1:9", Decision::Ignore);
    askpass.set_secret(field(&enrolled, "secret").expect("secret in totp enroll --json"));
    // The next step's code (one step of skew accepts it): its replay below
    // is still a replay, not a stale code, for at least 60 s after it was
    // typed, wherever in its 30 s step the test runs.
    askpass.set_totp(TotpAnswer::Next);

    // A new code logs alice in through node A (which opens the secret with
    // its own copy of the key).
    let via_a = pair.client(&env, &pair.a, "alice").identity(&laptop);
    let out = askpass.run_with_input(
        &via_a,
        &["-W", &format!("echo:{}", echo.port), BASTION],
        b"ok\n",
    );
    out.assert_success();
    let used = askpass
        .prompts_of("totp")
        .last()
        .map(|p| p.answer.clone())
        .unwrap_or_else(|| panic!("no TOTP prompt answered:\n{}", askpass.describe()));
    wait_event(&pair.a, "auth.success", "publickey+totp on node-a", |e| {
        field(e, "node") == Some("node-a") && e["detail"]["method"] == "publickey+totp"
    });

    // The same code through node B, from another key (no grant yet): a replay.
    askpass.set_totp(TotpAnswer::Fixed(used.clone()));
    let via_b = pair.client(&env, &pair.b, "alice").identity(&desktop);
    let out = askpass.run_with_input(
        &via_b,
        &["-W", &format!("echo:{}", echo.port), BASTION],
        b"replay\n",
    );
    assert_login_refused(&out);
    let replay = wait_event(&pair.b, "auth.failure", "totp_replayed on node-b", |e| {
        field(e, "reason") == Some("totp_replayed")
    });
    assert_eq!(field(&replay, "node"), Some("node-b"), "{replay}");
    assert_eq!(field(&replay, "user"), Some("alice"), "{replay}");
    assert!(
        !events_of(&pair.b, "auth.success")
            .iter()
            .any(|e| field(e, "node") == Some("node-b")),
        "the replayed code {used} logged in on node B"
    );

    // A fresh code does work on node B: the nodes share the TOTP key, so the
    // refusal above was the replay guard, not an unreadable secret.
    askpass.set_totp(TotpAnswer::Fresh);
    let out = askpass.run_with_input(
        &via_b,
        &["-W", &format!("echo:{}", echo.port), BASTION],
        b"fresh\n",
    );
    out.assert_success();
    assert_eq!(out.stdout_text(), "fresh\n", "{out}");
    wait_event(&pair.b, "auth.success", "publickey+totp on node-b", |e| {
        field(e, "node") == Some("node-b") && e["detail"]["method"] == "publickey+totp"
    });
}

#[test]
fn a_ban_made_by_failures_on_node_a_refuses_connections_on_node_b() {
    let env = TestEnv::new();
    let echo = EchoServer::start();
    let ca = env.ca("user_ca");
    let alice = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]));
    let rogue = env.ca("rogue_ca");
    let mallory = env.signed_key(&rogue, "mallory", &CertSpec::user(&["alice"]));
    let config = Config::new()
        .trust(&ca)
        .lockout(3, "10m", "10m")
        .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["alice"]));
    let pair = Pair::start(&env, &config);

    // Before: node B serves 127.0.0.1.
    let banner = ssh_banner(pair.b.port);
    assert!(
        banner.as_deref().is_some_and(|b| b.starts_with("SSH-2.0-")),
        "node B does not speak SSH: {banner:?}"
    );
    assert_echo_works(
        &pair.client(&env, &pair.b, "alice").identity(&alice),
        "echo",
        echo.port,
    );

    // Failed logins on node A (each try as the denied user root counts)
    // until node A bans the source. The clock starts with the attempt that
    // made the ban.
    let via_a = pair.client(&env, &pair.a, "root").identity(&mallory);
    let mut banned_during = None;
    for _ in 0..6 {
        let started = Instant::now();
        let out = via_a.run(&[BASTION, "true"]);
        out.assert_code(255);
        let bans = pair.a.cli_json(&["lockout", "list", "--json"]);
        if bans.as_array().is_some_and(|b| !b.is_empty()) {
            banned_during = Some(started);
            break;
        }
    }
    let ban_started = banned_during.expect("node A did not ban 127.0.0.1 after 6 failed logins");
    let ban = wait_event(&pair.a, "lockout.ban", "on node-a", |e| {
        field(e, "node") == Some("node-a")
    });
    assert_eq!(ban["detail"]["banned"], "127.0.0.1", "{ban}");

    // Node B closes connections from 127.0.0.1 before the SSH handshake
    // (within seconds of the ban).
    let refused = poll_for(PROPAGATION.saturating_sub(ban_started.elapsed()), || {
        ssh_banner(pair.b.port).is_none().then_some(())
    });
    assert!(
        refused.is_some(),
        "node B still greets 127.0.0.1 {:?} after node A banned it",
        ban_started.elapsed()
    );
    eprintln!(
        "node B refused 127.0.0.1 {:?} after the failed login that made the ban began",
        ban_started.elapsed()
    );
    // A login that worked before is refused now, without a login prompt.
    let out = pair
        .client(&env, &pair.b, "alice")
        .identity(&alice)
        .run(&[BASTION, "true"]);
    out.assert_code(255);
    assert!(
        !out.stderr.contains("Permission denied"),
        "node B let a banned source try to log in: {out}"
    );
    let bans = pair.b.cli_json(&["lockout", "list", "--json"]);
    let rows = bans.as_array().expect("lockout list --json is an array");
    assert_eq!(rows.len(), 1, "{bans}");
    assert_eq!(field(&rows[0], "source"), Some("127.0.0.1"), "{bans}");
    assert_eq!(field(&rows[0], "node"), Some("node-a"), "{bans}");
}

#[test]
fn three_nodes_starting_at_once_migrate_a_fresh_database_once() {
    let env = TestEnv::new();
    let echo = EchoServer::start();
    let ca = env.ca("user_ca");
    let alice = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]));
    let db = Database::postgres_required(NEEDS_POSTGRES);
    let names = ["node-1", "node-2", "node-3"];
    let metrics: Vec<u16> = names.iter().map(|_| free_port()).collect();

    // All three `portvakt serve` start together on the empty database.
    let nodes: Vec<Portvakt> = std::thread::scope(|s| {
        let starting: Vec<_> = names
            .iter()
            .zip(&metrics)
            .map(|(name, port)| {
                let config = Config::new()
                    .trust(&ca)
                    .node_name(name)
                    .metrics(*port)
                    .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["alice"]));
                let dir: PathBuf = env.path().join(name);
                let db = &db;
                s.spawn(move || Portvakt::start_node(&dir, &config, db))
            })
            .collect();
        starting
            .into_iter()
            .map(|h| h.join().expect("a node did not start"))
            .collect()
    });

    // Each becomes ready (database reachable) and serves a login.
    for ((node, port), name) in nodes.iter().zip(&metrics).zip(names) {
        let ready = poll_for(Duration::from_secs(30), || {
            try_http_get(*port, "/readyz")
                .ok()
                .filter(|r| r.status == 200)
        });
        assert!(
            ready.is_some(),
            "{name} never became ready; log:\n{}",
            node.log()
        );
        assert_echo_works(
            &env.client(node, "alice").identity(&alice),
            "echo",
            echo.port,
        );
    }

    // Every migration was applied exactly once, successfully.
    let mut expected: Vec<i64> =
        fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres"))
            .expect("read migrations/postgres")
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".sql")?.split('_').next()?.parse().ok()
            })
            .collect();
    expected.sort_unstable();
    assert!(!expected.is_empty());
    let applied = db.psql_query(
        "SELECT version, count(*), bool_and(success) FROM _sqlx_migrations GROUP BY version ORDER BY version",
    );
    let rows: Vec<(i64, i64, bool)> = applied
        .lines()
        .map(|l| {
            let cols: Vec<&str> = l.split('|').collect();
            (
                cols[0].parse().unwrap(),
                cols[1].parse().unwrap(),
                cols[2] == "t",
            )
        })
        .collect();
    let want: Vec<(i64, i64, bool)> = expected.iter().map(|v| (*v, 1, true)).collect();
    assert_eq!(rows, want, "_sqlx_migrations:\n{applied}");

    // And any node lists the forwards of all three.
    let listed = poll_until("forwards of all three nodes", AUDIT_TIMEOUT, || {
        let rows = nodes[0].sessions_json(&[]);
        let mut seen: Vec<String> = rows
            .iter()
            .filter_map(|r| field(r, "node").map(str::to_string))
            .collect();
        seen.sort();
        (seen == names).then_some(seen)
    });
    assert_eq!(listed, names);
}

/// Just-in-time access across nodes (issue 15): alice asks on node A, bob
/// approves on node B, and alice's next forward through node A works at
/// once (each decision reads the shared database); the revocation on node
/// B's host ends her live forward on node A within seconds.
#[test]
fn a_request_approved_on_node_b_opens_the_target_on_node_a() {
    let env = TestEnv::new();
    let echo = EchoServer::start();
    let ca = env.ca("user_ca");
    let alice = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]));
    let bob = env.signed_key(&ca, "bob", &CertSpec::user(&["bob"]));
    let config = Config::new()
        .trust(&ca)
        .user(User::groups("alice", &["dba"]))
        .user(User::groups("bob", &["leads"]))
        .target(
            Target::host("echo", "127.0.0.1", echo.port)
                .allow_groups(&["dba"])
                .on_request(&["leads"], "1h", 1),
        );
    let pair = Pair::start(&env, &config);
    let via_a = pair.client(&env, &pair.a, "alice").identity(&alice);
    let bob_b = pair.client(&env, &pair.b, "bob").identity(&bob);
    assert_eq!(forward_stdio(&via_a, "echo", echo.port, b"x").code(), 255);

    let out = via_a.run(&[BASTION, "request", "echo", "30m", "INC-7"]);
    out.assert_success();
    let id: i64 = out
        .stdout_text()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    bob_b
        .run(&[BASTION, "approve", &id.to_string()])
        .assert_success();
    let approved_at = Instant::now();
    assert_echo_works(&via_a, "echo", echo.port);
    eprintln!(
        "node A allowed the forward {:?} after the approval on node B",
        approved_at.elapsed()
    );
    assert!(approved_at.elapsed() < Duration::from_secs(5), "within 5 s");

    let mut live = open_echo_forward(&via_a, &echo);
    pair.b
        .cli(&["requests", "revoke", &id.to_string()])
        .assert_success();
    let revoked_at = Instant::now();
    let ended = poll_for(PROPAGATION, || live.try_wait());
    assert!(
        ended.is_some(),
        "the forward on node A still runs after the revocation on node B"
    );
    eprintln!(
        "node A ended the forward {:?} after the revocation on node B",
        revoked_at.elapsed()
    );
    pair.a
        .wait_for_session("node A's forward closed by the revocation", |r| {
            r.close_reason.as_deref() == Some("request_revoked")
        });
}
