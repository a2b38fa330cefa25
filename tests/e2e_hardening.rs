//! Hardening (issue 4, items 1-5): brute-force lockout, connection limits
//! and timeouts, the crypto policy as ssh-audit sees it, SIGHUP / SIGTERM /
//! kill -9, and failing closed when the database is unreachable.
//!
//! Other source addresses than 127.0.0.1 are other loopback addresses
//! (127.0.0.2, ...): OpenSSH binds to them with `BindAddress`, raw sockets
//! with [`attack::try_connect_from`].

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{ChildStdout, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::attack::{self, Greeting, RawKey, RawSsh, loopback};
use common::proc::{self, RUN_TIMEOUT, read_exact_within};
use common::*;
use serde_json::Value;

// ---------------------------------------------------------------------------
// Helpers

/// A running `ssh -W target:port bastion` whose stdin and stdout are ours.
struct LiveForward {
    ssh: ChildGuard,
    stdout: Option<ChildStdout>,
}

impl LiveForward {
    /// Starts the forward and checks that one line echoes.
    fn open(client: &SshClient, target: &str, port: u16) -> LiveForward {
        let mut ssh = client.spawn(&["-W", &format!("{target}:{port}"), BASTION]);
        let stdout = Some(ssh.take_stdout());
        let mut forward = LiveForward { ssh, stdout };
        forward.echo(b"hello\n");
        forward
    }

    /// Sends `line` and waits for it to come back from the echo target.
    fn echo(&mut self, line: &[u8]) {
        self.ssh.stdin().write_all(line).unwrap();
        self.ssh.stdin().flush().unwrap();
        let stdout = self.stdout.take().expect("stdout");
        let (stdout, back) = read_exact_within(stdout, line.len(), AUDIT_TIMEOUT);
        assert_eq!(back, line, "echo mismatch");
        self.stdout = Some(stdout);
    }

    /// Ends input; the forward then finishes by itself.
    fn finish(&mut self) {
        self.ssh.close_stdin();
    }
}

/// A client of `pv` as `user` with `key`, connecting from 127.0.0.`n`.
fn client_from(env: &TestEnv, pv: &Portvakt, user: &str, key: &UserKey, n: u8) -> SshClient {
    env.client(pv, user)
        .identity(key)
        .bastion_option(&format!("BindAddress 127.0.0.{n}"))
}

/// The JSON log lines of `pv` whose `field` is `value`.
fn log_lines_with(pv: &Portvakt, field: &str, value: &str) -> Vec<Value> {
    pv.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v[field].as_str() == Some(value))
        .collect()
}

/// Polls the log until a line has `field` = `value`.
fn wait_for_log(pv: &Portvakt, field: &str, value: &str) -> Value {
    poll_until(
        &format!("a log line with {field} = {value:?}"),
        AUDIT_TIMEOUT,
        || log_lines_with(pv, field, value).into_iter().next(),
    )
}

/// Waits until at least `n` events of `kind` with `reason` exist.
fn wait_count(pv: &Portvakt, kind: &str, reason: &str, n: usize) -> Vec<AuditEvent> {
    poll_until(&format!("{n} {kind} {reason}"), AUDIT_TIMEOUT, || {
        let found: Vec<AuditEvent> = pv
            .audit()
            .into_iter()
            .filter(|e| e.is(kind, reason))
            .collect();
        (found.len() >= n).then_some(found)
    })
}

/// One guessed password for `user` from 127.0.0.`n` (a counted failure:
/// refusals before a client proves a key never count, guesses do); the
/// client's address, as audit rows give the connection's source.
fn guess_password(port: u16, user: &str, n: u8) -> String {
    let mut raw = RawSsh::connect_from(loopback(n), port).expect("SSH handshake");
    let source = raw
        .stream()
        .local_addr()
        .expect("local address")
        .to_string();
    assert!(raw.request_userauth().expect("ssh-userauth"));
    let reply = raw.auth_password(user, b"hunter2").expect("password reply");
    assert_eq!(reply[0], attack::msg::USERAUTH_FAILURE);
    source
}

/// Waits for the one `lockout.ban` and asserts that the failure on the
/// connection from `source` made it: no earlier failure had banned the
/// source (the accounting runs after the reply, so a wrong ban could still
/// be on its way when the next guess starts; its row would name the
/// earlier connection, or the next guess would find the source banned).
fn assert_ban_made_by(pv: &Portvakt, source: &str) -> AuditEvent {
    let ban = pv.wait_for_audit("lockout.ban", |e| e.kind == "lockout.ban");
    assert_eq!(
        ban.source.as_deref(),
        Some(source),
        "the ban was made by another connection than the last guess: {ban:?}"
    );
    ban
}

/// `connection.refused` rows for `reason` from 127.0.0.`n`, and how many
/// refusals they count in all.
fn refused_from(pv: &Portvakt, reason: &str, n: u8) -> (Vec<AuditEvent>, u64) {
    let prefix = format!("127.0.0.{n}:");
    let rows: Vec<AuditEvent> = pv
        .audit()
        .into_iter()
        .filter(|e| {
            e.is("connection.refused", reason)
                && e.source.as_deref().is_some_and(|s| s.starts_with(&prefix))
        })
        .collect();
    let total = rows
        .iter()
        .map(|e| e.detail["refused"].as_u64().unwrap())
        .sum();
    (rows, total)
}

/// The value of `portvakt_connections_refused_total{reason="..."}`.
fn refused_metric(metrics: u16, reason: &str) -> f64 {
    let needle = format!("portvakt_connections_refused_total{{reason=\"{reason}\"}} ");
    let text = scrape_metrics(metrics);
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn lockout_sources(pv: &Portvakt) -> Vec<Value> {
    match pv.cli_json(&["lockout", "list", "--json"]) {
        Value::Array(rows) => rows,
        other => panic!("lockout list --json is not an array: {other}"),
    }
}

/// alice (certificate from a trusted CA), an echo target `echo` for her.
struct Setup {
    env: TestEnv,
    ca: UserCa,
    alice: UserKey,
    echo: TcpServer,
}

impl Setup {
    fn new() -> Setup {
        let env = TestEnv::new();
        let ca = env.ca("user_ca");
        let alice = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]));
        Setup {
            env,
            ca,
            alice,
            echo: EchoServer::start(),
        }
    }

    /// The base config: the CA trusted, `echo` allowed for alice.
    fn config(&self) -> Config {
        Config::new()
            .trust(&self.ca)
            .target(Target::host("echo", "127.0.0.1", self.echo.port).allow_users(&["alice"]))
    }

    fn alice(&self, pv: &Portvakt) -> SshClient {
        self.env.client(pv, "alice").identity(&self.alice)
    }
}

// ---------------------------------------------------------------------------
// 1. Brute-force protection

#[test]
fn failed_logins_ban_the_source_before_the_handshake_and_slow_the_user_name() {
    let s = Setup::new();
    let metrics = free_port();
    let started = Instant::now();
    let mut pv = s
        .env
        .portvakt(&s.config().lockout(3, "10m", "15m").metrics(metrics));
    // mallory guesses alice's password (portvakt takes none).
    let attempt = |n: u8| guess_password(pv.port, "alice", n);
    for n in 1..=2 {
        attempt(2);
        wait_count(&pv, "auth.failure", "password_refused", n);
    }
    let third = attempt(2);
    let ban = assert_ban_made_by(&pv, &third);
    assert_eq!(ban.detail_str("banned"), Some("127.0.0.2"), "{ban:?}");
    assert_eq!(ban.detail["failures"], 3, "{ban:?}");
    assert!(ban.detail_str("until").is_some(), "{ban:?}");
    assert!(
        ban.source
            .as_deref()
            .is_some_and(|s| s.starts_with("127.0.0.2:")),
        "{ban:?}"
    );

    // Closed before the SSH handshake: not even a version line.
    const REFUSALS: u32 = 20;
    for _ in 0..REFUSALS {
        match attack::greeting_from(loopback(2), pv.port) {
            Greeting::Closed(bytes) => assert!(bytes.is_empty(), "sent {bytes:?}"),
            other => panic!("a banned source got {other:?}"),
        }
    }
    assert!(attack::greeting_from(loopback(1), pv.port).is_banner());
    // Audited: the first refusal at once, the others counted (written each
    // minute, and at shutdown below); counted in the metric at once.
    let first = pv.wait_for_event("connection.refused", "banned");
    assert!(
        first
            .source
            .as_deref()
            .is_some_and(|s| s.starts_with("127.0.0.2:")),
        "{first:?}"
    );
    assert_eq!(first.detail["refused"], 1, "{first:?}");
    assert_eq!(refused_metric(metrics, "banned"), f64::from(REFUSALS));
    let bans = lockout_sources(&pv);
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0]["source"], "127.0.0.2", "{bans:?}");
    assert_eq!(bans[0]["failures"], 3, "{bans:?}");
    for key in ["created_at", "until", "node"] {
        assert!(
            bans[0][key].is_string(),
            "lockout list lacks {key}: {bans:?}"
        );
    }

    // Two more failures for "alice" from 127.0.0.3 (not enough to ban it):
    // five in all, so the name waits 3 s per attempt.
    for _ in 0..2 {
        attempt(3);
    }
    wait_count(&pv, "auth.failure", "password_refused", 5);
    assert!(attack::greeting_from(loopback(3), pv.port).is_banner());
    // The real alice, from 127.0.0.1 with her valid certificate, still gets
    // in, slowed down. (The failures are counted after their replies: the
    // fifth may not be in yet, so a first login may wait only 2 s.)
    let took = poll_until("alice's login to be slowed down", AUDIT_TIMEOUT, || {
        let login = Instant::now();
        assert_echo_works(&s.alice(&pv), "echo", s.echo.port);
        let took = login.elapsed();
        (took >= Duration::from_millis(2500)).then_some(took)
    });
    eprintln!("alice's slowed-down login took {took:?}");

    // `lockout clear` lifts the ban within seconds.
    pv.cli(&["lockout", "clear", "127.0.0.2"]).assert_success();
    assert!(lockout_sources(&pv).is_empty());
    let cleared = pv.wait_for_audit("lockout.clear", |e| e.kind == "lockout.clear");
    assert_eq!(
        cleared.detail_str("source"),
        Some("127.0.0.2"),
        "{cleared:?}"
    );
    assert_eq!(cleared.detail["lifted"], 1, "{cleared:?}");
    poll_until(
        "the cleared source to be served again",
        AUDIT_TIMEOUT,
        || {
            attack::greeting_from(loopback(2), pv.port)
                .is_banner()
                .then_some(())
        },
    );

    // No refusal goes unrecorded: SIGTERM writes the counted ones.
    let refused = refused_metric(metrics, "banned") as u64;
    pv.signal("TERM");
    assert!(pv.wait_exit(Duration::from_secs(60)).success());
    let (rows, total) = refused_from(&pv, "banned", 2);
    assert_eq!(total, refused, "{rows:?}");
    // Aggregated, not a row per refusal: in each minute the server ran
    // (refusals::WINDOW) at most one row at once and one when the minute
    // ends, the last minute's at exit; the first refusal alone is written
    // at once, so at least one more row carries the others.
    let minutes = started.elapsed().as_secs() / 60 + 1;
    assert!(
        rows.len() >= 2 && rows.len() as u64 <= 2 * minutes,
        "{} rows for {total} refusals in {minutes} minute(s): {rows:?}",
        rows.len()
    );
}

#[test]
fn offered_but_unknown_keys_do_not_count_towards_a_ban() {
    let s = Setup::new();
    let pv = s.env.portvakt(&s.config().lockout(3, "10m", "15m"));
    let stranger = s.env.key("stranger");
    for _ in 0..6 {
        let out = client_from(&s.env, &pv, "alice", &stranger, 2).run(&["-W", "echo:1", BASTION]);
        assert_login_refused(&out);
    }
    let unknown = wait_count(&pv, "auth.failure", "unknown_key", 6);
    for e in &unknown {
        assert_eq!(e.detail["counts"], false, "{e:?}");
    }
    assert!(
        lockout_sources(&pv).is_empty(),
        "unknown keys banned the source"
    );
    assert!(attack::greeting_from(loopback(2), pv.port).is_banner());

    // Two counted failures do not ban either (3 are needed), the third
    // does: the six unknown keys were not counted.
    for _ in 0..2 {
        guess_password(pv.port, "alice", 2);
    }
    wait_count(&pv, "auth.failure", "password_refused", 2);
    let third = guess_password(pv.port, "alice", 2);
    let ban = assert_ban_made_by(&pv, &third);
    assert_eq!(ban.detail["failures"], 3, "{ban:?}");
}

/// Clients offer every certificate they hold before the one that works (an
/// expired one, one from another CA): refused at the probe, before any
/// signature, so they are audited but never counted, and the address of a
/// busy client (an Ansible controller, a NAT) is never banned for them.
#[test]
fn certificates_refused_at_the_probe_never_ban_the_clients_address() {
    let s = Setup::new();
    let pv = s.env.portvakt(&s.config().lockout(3, "10m", "15m"));
    // alice's own key, certified twice more: by a CA this bastion does not
    // trust, and by the right CA but long expired.
    let staging = s.alice.copy_as("alice-staging");
    s.env
        .ca("staging_ca")
        .sign(&staging, &CertSpec::user(&["alice"]));
    let expired = s.alice.copy_as("alice-expired");
    s.ca.sign(
        &expired,
        &CertSpec::user(&["alice"]).validity("20200101:20200102"),
    );
    let client = s
        .env
        .client(&pv, "alice")
        .certificate(&staging.cert_path())
        .certificate(&expired.cert_path())
        .certificate(&s.alice.cert_path())
        .identity(&s.alice);
    for _ in 0..20 {
        let out = forward_stdio(&client, "echo", s.echo.port, b"ping\n");
        assert!(out.code() == 0, "{out}\n{}", pv.log());
    }
    let untrusted = wait_count(&pv, "auth.failure", "certificate_untrusted_ca", 20);
    let expired = wait_count(&pv, "auth.failure", "certificate_expired", 20);
    for e in untrusted.iter().chain(&expired) {
        assert_eq!(e.detail["counts"], false, "{e:?}");
    }
    assert!(
        lockout_sources(&pv).is_empty(),
        "the client's address was banned"
    );
    assert!(attack::greeting_from(loopback(1), pv.port).is_banner());
}

// ---------------------------------------------------------------------------
// 2. Limits and timeouts

#[test]
fn unauthenticated_connection_limits_drop_the_next_one_but_not_logged_in_users() {
    let s = Setup::new();
    let metrics = free_port();
    let pv = s.env.portvakt(
        &s.config()
            .metrics(metrics)
            .max_unauthenticated(4)
            .max_unauthenticated_per_source(2)
            .login_grace_time("2m"),
    );
    // alice logs in first and keeps a forward open: her login slot is
    // given back once she is in.
    let mut forward = LiveForward::open(&s.alice(&pv), "echo", s.echo.port);

    let half_open = |n: u8| {
        let mut stream = attack::connect_from(loopback(n), pv.port);
        let greeting = attack::read_greeting(&mut stream, Duration::from_secs(10));
        (stream, greeting)
    };
    let mut held = Vec::new();
    for n in [2, 2] {
        let (stream, greeting) = half_open(n);
        assert!(greeting.is_banner(), "127.0.0.{n}: {greeting:?}");
        held.push(stream);
    }
    let (_third, greeting) = half_open(2);
    assert_eq!(
        greeting,
        Greeting::Closed(Vec::new()),
        "a third half-open connection from 127.0.0.2 was kept"
    );
    wait_for_log(&pv, "reason", "max_unauthenticated_per_source");
    let refused = pv.wait_for_event("connection.refused", "max_unauthenticated_per_source");
    assert!(
        refused
            .source
            .as_deref()
            .is_some_and(|s| s.starts_with("127.0.0.2:")),
        "{refused:?}"
    );
    assert_eq!(
        refused_metric(metrics, "max_unauthenticated_per_source"),
        1.0
    );

    for n in [3, 3] {
        let (stream, greeting) = half_open(n);
        assert!(greeting.is_banner(), "127.0.0.{n}: {greeting:?}");
        held.push(stream);
    }
    let (_fifth, greeting) = half_open(4);
    assert_eq!(
        greeting,
        Greeting::Closed(Vec::new()),
        "a fifth half-open connection was kept"
    );
    wait_for_log(&pv, "reason", "max_unauthenticated");
    let (rows, total) = poll_until("the max_unauthenticated refusal", AUDIT_TIMEOUT, || {
        let (rows, total) = refused_from(&pv, "max_unauthenticated", 4);
        (total == 1).then_some((rows, total))
    });
    assert_eq!((rows.len(), total), (1, 1), "{rows:?}");
    assert_eq!(refused_metric(metrics, "max_unauthenticated"), 1.0);

    // alice's live forward is not affected.
    forward.echo(b"still here\n");

    // A slot that frees up is taken again.
    drop(held.pop());
    poll_until("a freed login slot to be reused", AUDIT_TIMEOUT, || {
        let (stream, greeting) = half_open(4);
        greeting.is_banner().then_some(stream)
    });
}

#[test]
fn max_connections_closes_the_next_connection_before_the_handshake_and_audits_it() {
    let s = Setup::new();
    let metrics = free_port();
    let pv = s
        .env
        .portvakt(&s.config().metrics(metrics).max_connections(2));
    let mut forward = LiveForward::open(&s.alice(&pv), "echo", s.echo.port);
    let mut held = attack::connect_from(loopback(2), pv.port);
    let greeting = attack::read_greeting(&mut held, Duration::from_secs(10));
    assert!(greeting.is_banner(), "{greeting:?}");

    let mut third = attack::connect_from(loopback(3), pv.port);
    let greeting = attack::read_greeting(&mut third, Duration::from_secs(10));
    assert_eq!(
        greeting,
        Greeting::Closed(Vec::new()),
        "a third connection was served"
    );
    let refused = pv.wait_for_event("connection.refused", "max_connections");
    assert!(
        refused
            .source
            .as_deref()
            .is_some_and(|s| s.starts_with("127.0.0.3:")),
        "{refused:?}"
    );
    assert_eq!(refused.detail["refused"], 1, "{refused:?}");
    assert_eq!(refused_metric(metrics, "max_connections"), 1.0);
    forward.echo(b"still here\n");

    // Once the half-open one goes, a new connection is served.
    drop(held);
    poll_until(
        "a freed connection slot to be reused",
        AUDIT_TIMEOUT,
        || {
            attack::greeting_from(loopback(3), pv.port)
                .is_banner()
                .then_some(())
        },
    );
}

#[test]
fn login_grace_time_ends_connections_that_do_not_log_in_and_frees_their_slots() {
    let s = Setup::new();
    let pv = s.env.portvakt(
        &s.config()
            .login_grace_time("2s")
            .max_unauthenticated_per_source(1),
    );
    // 127.0.0.2 says nothing; 127.0.0.3 sends its version line only;
    // 127.0.0.4 completes the key exchange and never authenticates.
    let mut silent = attack::connect_from(loopback(2), pv.port);
    let mut version_only = attack::connect_from(loopback(3), pv.port);
    version_only
        .write_all(format!("{}\r\n", attack::CLIENT_ID).as_bytes())
        .unwrap();
    let mut after_kex = RawSsh::connect_from(loopback(4), pv.port).expect("key exchange");
    let started = Instant::now();

    let mut still_open = Vec::new();
    for (what, stream) in [
        ("silent", &mut silent),
        ("version only", &mut version_only),
        ("after the key exchange", after_kex.stream()),
    ] {
        if attack::wait_closed(stream, Duration::from_secs(20)).is_none() {
            still_open.push(what);
        }
    }
    let closes = wait_count(&pv, "connection.close", "login_timeout", 3);
    for e in &closes {
        let secs = e.detail["duration_seconds"].as_f64().unwrap_or(0.0);
        assert!(secs >= 1.9, "closed before the grace time: {e:?}");
    }
    // Each source held its only login slot; all three must be free again.
    let slots_held: Vec<u8> = [2, 3, 4]
        .into_iter()
        .filter(|n| {
            poll_for(Duration::from_secs(10), || {
                attack::greeting_from(loopback(*n), pv.port)
                    .is_banner()
                    .then_some(())
            })
            .is_none()
        })
        .collect();
    assert!(
        still_open.is_empty() && slots_held.is_empty(),
        "audited as login_timeout, but {:?} after they started these TCP connections \
         were still open: {still_open:?}, and these sources (127.0.0.N) still could \
         not get a login slot: {slots_held:?}",
        started.elapsed()
    );
}

#[test]
fn a_connection_may_hold_at_most_max_channels_per_connection_forwards() {
    let s = Setup::new();
    let pv = s.env.portvakt(&s.config().max_channels_per_connection(2));
    let local = free_port();
    let mut ssh = s.alice(&pv).spawn(&[
        "-N",
        "-L",
        &format!("127.0.0.1:{local}:echo:{}", s.echo.port),
        BASTION,
    ]);
    poll_until("ssh to listen on its -L port", AUDIT_TIMEOUT, || {
        ssh.assert_running();
        port_accepts(local).then_some(())
    });
    // port_accepts opened (and closed) one channel; wait until it is gone.
    pv.wait_for_session("the probe's forward to end", |r| r.ended_at.is_some());

    let open = || {
        let c = TcpStream::connect(proc::local(local)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c
    };
    let echo = |c: &mut TcpStream, line: &[u8]| {
        c.write_all(line).unwrap();
        let mut back = vec![0u8; line.len()];
        c.read_exact(&mut back).map(|()| back)
    };
    let mut first = open();
    let mut second = open();
    assert_eq!(echo(&mut first, b"one\n").unwrap(), b"one\n");
    assert_eq!(echo(&mut second, b"two\n").unwrap(), b"two\n");
    let mut third = open();
    let _ = third.write_all(b"three\n");
    let mut buf = [0u8; 16];
    assert!(
        matches!(third.read(&mut buf), Ok(0) | Err(_)),
        "a third forward on the connection was opened"
    );
    let refused = pv.wait_for_event("channel.refused", "too_many_channels");
    assert_eq!(refused.user.as_deref(), Some("alice"), "{refused:?}");
    // The first two still work, and a slot that frees up is usable again.
    assert_eq!(echo(&mut first, b"one again\n").unwrap(), b"one again\n");
    drop(second);
    poll_until("a freed channel slot to be reused", AUDIT_TIMEOUT, || {
        let mut c = open();
        echo(&mut c, b"four\n").ok().map(|_| ())
    });
}

#[test]
fn keepalives_notice_a_client_that_stopped_answering() {
    let s = Setup::new();
    let pv = s.env.portvakt(&s.config().keepalive_interval("1s"));
    let forward = LiveForward::open(&s.alice(&pv), "echo", s.echo.port);
    // The client stops answering (its TCP stack still acknowledges).
    proc::run_ok(
        Command::new("kill")
            .arg("-STOP")
            .arg(forward.ssh.pid().to_string()),
    );
    let close = pv.wait_for_audit("connection.close of alice", |e| {
        e.kind == "connection.close" && e.user.as_deref() == Some("alice")
    });
    assert_eq!(
        close.reason.as_deref(),
        Some("keepalive_timeout"),
        "{close:?}"
    );
    let secs = close.detail["duration_seconds"].as_f64().unwrap_or(0.0);
    assert!(secs < 30.0, "noticed only after {secs} s");
    let row = pv.wait_for_session("the forward closed", |r| r.ended_at.is_some());
    assert_eq!(
        row.close_reason.as_deref(),
        Some("connection_closed"),
        "{row:?}"
    );
    drop(forward); // SIGKILL works on a stopped process
}

// ---------------------------------------------------------------------------
// 3. Crypto policy

/// The ssh-audit program: $PORTVAKT_SSH_AUDIT, the venv scripts/test
/// makes, or `ssh-audit` on PATH.
fn ssh_audit() -> PathBuf {
    if let Ok(path) = std::env::var("PORTVAKT_SSH_AUDIT") {
        return PathBuf::from(path);
    }
    let venv =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-tools/venv/bin/ssh-audit");
    if venv.exists() {
        return venv;
    }
    let on_path = Command::new("sh")
        .args(["-c", "command -v ssh-audit"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    on_path.unwrap_or_else(|| {
        panic!(
            "ssh-audit not found: run scripts/test (it installs ssh-audit into \
             target/test-tools/venv), or set PORTVAKT_SSH_AUDIT"
        )
    })
}

#[test]
fn ssh_audit_finds_no_failure_or_warning_and_sees_strict_and_post_quantum_kex() {
    let s = Setup::new();
    let pv = s.env.portvakt(&s.config());
    let out = proc::run(
        Command::new(ssh_audit())
            .args(["-jj", "--skip-rate-test", "-p", &pv.port.to_string()])
            .arg("127.0.0.1"),
        None,
        RUN_TIMEOUT,
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ssh-audit printed no JSON ({e}): {out}"));
    let names = |kind: &str| -> Vec<String> {
        report[kind]
            .as_array()
            .unwrap_or_else(|| panic!("no {kind} list: {report}"))
            .iter()
            .filter_map(|a| a["algorithm"].as_str().map(str::to_string))
            .collect()
    };
    let kex = names("kex");
    assert!(
        kex.iter().any(|k| k == "kex-strict-s-v00@openssh.com"),
        "no strict KEX marker: {kex:?}"
    );
    assert!(
        kex.iter().any(|k| k == "mlkem768x25519-sha256"),
        "no post-quantum hybrid key exchange: {kex:?}"
    );
    assert_eq!(names("key"), vec!["ssh-ed25519"], "host key algorithms");
    assert_eq!(
        report["compression"],
        serde_json::json!(["none"]),
        "compression"
    );
    let mut findings = Vec::new();
    for kind in ["kex", "key", "enc", "mac"] {
        for alg in report[kind].as_array().unwrap() {
            for level in ["fail", "warn"] {
                if let Some(notes) = alg["notes"][level].as_array()
                    && !notes.is_empty()
                {
                    findings.push(format!("{kind} {} {level}: {notes:?}", alg["algorithm"]));
                }
            }
        }
    }
    let cves = report["cves"].as_array().map(Vec::len).unwrap_or(0);
    assert!(
        findings.is_empty() && cves == 0,
        "ssh-audit {} found:\n{}\ncves: {}",
        out.code(),
        findings.join("\n"),
        report["cves"]
    );
    assert_eq!(out.code(), 0, "ssh-audit exit code (0 = good): {out}");
}

// ---------------------------------------------------------------------------
// 4. Safe operations

#[test]
fn sighup_with_a_broken_file_keeps_the_old_config_and_audits_the_errors() {
    let s = Setup::new();
    let config = s.config();
    let mut pv = s.env.portvakt(&config);
    // The broken file also drops `echo`: if it were applied, echo would go.
    let mut broken = Config::new().trust(&s.ca);
    broken.extra = "[[targets]]\nname = \"bad\"\nhost = \"127.0.0.1\"\nport = 99999\n\
                    allow_users = [\"alice\"]\nbogus_key = 1\n"
        .to_string();
    pv.write_config(&broken);
    let check = check_config(&pv.config_path);
    check.assert_code(2);
    pv.signal("HUP");
    wait_for_log(&pv, "message", "config reload rejected");
    pv.assert_running();
    assert_echo_works(&s.alice(&pv), "echo", s.echo.port);

    // The CLI needs a valid file too; put the old one back (no SIGHUP).
    pv.write_config(&config);
    let ev = pv.wait_for_audit("config.reload", |e| e.kind == "config.reload");
    assert_eq!(ev.detail_str("result"), Some("rejected"), "{ev:?}");
    let errors = ev.detail_str("errors").unwrap_or_default();
    let expected: Vec<String> = check
        .stdout_text()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    assert!(
        !expected.is_empty(),
        "check-config printed nothing: {check}"
    );
    for line in &expected {
        assert!(
            errors.contains(line.as_str()),
            "the reload error lacks check-config's {line:?}; it says:\n{errors}"
        );
    }
}

#[test]
fn sighup_closes_live_forwards_the_new_config_refuses() {
    let s = Setup::new();
    let echo2 = EchoServer::start();
    let pv = s.env.portvakt(
        &s.config()
            .target(Target::host("echo2", "127.0.0.1", echo2.port).allow_users(&["alice"])),
    );
    let mut forward = LiveForward::open(&s.alice(&pv), "echo", s.echo.port);
    let mut other = LiveForward::open(&s.alice(&pv), "echo2", echo2.port);

    // The new file no longer has `echo`.
    pv.write_config(
        &Config::new()
            .trust(&s.ca)
            .target(Target::host("echo2", "127.0.0.1", echo2.port).allow_users(&["alice"])),
    );
    pv.signal("HUP");
    let ev = pv.wait_for_audit("config.reload", |e| e.kind == "config.reload");
    assert_eq!(ev.detail_str("result"), Some("applied"), "{ev:?}");
    assert_eq!(ev.detail["closed_forwards"], 1, "{ev:?}");
    let row = pv.wait_for_session("the echo forward closed", |r| {
        r.target.as_deref() == Some("echo") && r.ended_at.is_some()
    });
    assert_eq!(
        row.close_reason.as_deref(),
        Some("config_reload"),
        "{row:?}"
    );
    forward.ssh.wait_exit(AUDIT_TIMEOUT);
    pv.wait_for_audit("forward.close config_reload", |e| {
        e.is("forward.close", "config_reload")
    });

    // echo2 goes on; new forwards to echo are refused.
    other.echo(b"echo2 is still allowed\n");
    let out = forward_stdio(&s.alice(&pv).log_level("INFO"), "echo", s.echo.port, b"x");
    assert_forward_prohibited(&out, "alice");
    pv.wait_for_event("forward.denied", "unknown_target");
}

#[test]
fn sigterm_stops_accepting_drains_forwards_audits_each_close_and_exits_zero() {
    let s = Setup::new();
    let metrics = free_port();
    let mut pv = s.env.portvakt(&s.config().metrics(metrics));
    let mut quick = LiveForward::open(&s.alice(&pv), "echo", s.echo.port);
    let mut slow = LiveForward::open(&s.alice(&pv), "echo", s.echo.port);
    assert_eq!(attack::http_get(metrics, "/readyz").unwrap().0, 200);

    // Taken before the signal: portvakt's drain deadline starts later.
    let stopped = Instant::now();
    pv.signal("TERM");
    poll_until("the listener to close", AUDIT_TIMEOUT, || {
        (!port_accepts(pv.port)).then_some(())
    });
    let (status, body) = attack::http_get(metrics, "/readyz").expect("/readyz while draining");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");

    // Live forwards go on while draining; one finishes by itself.
    quick.echo(b"draining\n");
    slow.echo(b"draining too\n");
    quick.finish();
    let status = quick.ssh.wait_exit(AUDIT_TIMEOUT);
    assert!(status.success(), "the finished forward's ssh: {status}");

    // The other is closed at the drain deadline; then portvakt exits 0.
    let exit = pv.wait_exit(Duration::from_secs(60));
    let took = stopped.elapsed();
    assert!(exit.success(), "portvakt exited with {exit}:\n{}", pv.log());
    assert!(
        took >= Duration::from_secs(15),
        "exited after {took:?}, before the drain deadline"
    );
    slow.ssh.wait_exit(AUDIT_TIMEOUT);

    let rows = pv.sessions();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let mut reasons: Vec<&str> = rows
        .iter()
        .map(|r| r.close_reason.as_deref().unwrap_or("(open)"))
        .collect();
    reasons.sort();
    assert_eq!(reasons, vec!["closed", "shutdown"], "{rows:#?}");
    let events = pv.audit();
    let closes = events.iter().filter(|e| e.kind == "forward.close").count();
    assert_eq!(closes, 2, "each close is audited");
    assert!(
        events
            .iter()
            .any(|e| e.is("connection.close", "shutdown") && e.user.as_deref() == Some("alice")),
        "the drained connection is audited as shutdown"
    );
}

#[test]
fn after_kill_9_the_next_start_marks_open_forwards_interrupted() {
    let s = Setup::new();
    let mut pv = s.env.portvakt(&s.config());
    let forward = LiveForward::open(&s.alice(&pv), "echo", s.echo.port);
    let open = pv.wait_for_session("the forward to be recorded", |r| r.ended_at.is_none());
    pv.signal("KILL");
    pv.wait_exit(AUDIT_TIMEOUT);
    drop(forward);

    pv.restart();
    let row = pv.wait_for_session("the open forward marked", |r| r.id == open.id);
    assert_eq!(row.close_reason.as_deref(), Some("interrupted"), "{row:?}");
    assert!(row.ended_at.is_some(), "{row:?}");
    assert!(
        pv.log().contains("marked interrupted"),
        "the start logs what it marked"
    );
    // And the restarted server serves.
    assert_echo_works(&s.alice(&pv), "echo", s.echo.port);
}

// ---------------------------------------------------------------------------
// 5. Fail closed

/// A TCP proxy in front of PostgreSQL that the test can cut and restore.
struct CuttableProxy {
    port: u16,
    cut: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl CuttableProxy {
    fn start(upstream: String) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, l) = (Arc::clone(&cut), Arc::clone(&live));
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: the database is "unreachable"
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut live = l.lock().unwrap();
                live.push(client.try_clone().unwrap());
                live.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        CuttableProxy { port, cut, live }
    }

    /// Closes every proxied connection and refuses new ones.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// A fresh PostgreSQL database for one test, dropped at the end.
struct PgDatabase {
    admin: String,
    name: String,
}

impl PgDatabase {
    fn create(admin_url: &str) -> PgDatabase {
        let base = admin_url.split('?').next().unwrap();
        let admin = format!("{}/postgres", &base[..base.rfind('/').unwrap()]);
        let name = format!(
            "portvakt_outage_{:08x}",
            u32::from_le_bytes(random_bytes(4).try_into().unwrap())
        );
        proc::run_ok(
            Command::new("psql")
                .arg(&admin)
                .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
                .arg(format!("CREATE DATABASE {name}")),
        );
        PgDatabase { admin, name }
    }

    /// `host:port` of the server.
    fn host_port(&self) -> String {
        let rest = self.admin.split("://").nth(1).unwrap();
        let authority = rest.split('/').next().unwrap();
        let host_port = authority.rsplit('@').next().unwrap();
        if host_port.contains(':') {
            host_port.to_string()
        } else {
            format!("{host_port}:5432")
        }
    }

    /// The URL of this database through 127.0.0.1:`port`.
    fn url_via(&self, port: u16) -> String {
        let rest = self.admin.split("://").nth(1).unwrap();
        let authority = rest.split('/').next().unwrap();
        let user = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        format!("postgres://{user}127.0.0.1:{port}/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = proc::run(
            Command::new("psql")
                .arg(&self.admin)
                .args(["-q", "-c"])
                .arg(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                )),
            None,
            RUN_TIMEOUT,
        );
    }
}

#[test]
fn an_unreachable_database_refuses_new_logins_and_forwards_but_keeps_live_ones() {
    // Never skipped: scripts/test (and CI) always set it.
    let admin_url = std::env::var("PORTVAKT_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "the database outage test runs against a PostgreSQL server: run scripts/test, \
                 which starts a throw-away one and sets PORTVAKT_TEST_POSTGRES_URL"
            )
        });
    let db = PgDatabase::create(&admin_url);
    let proxy = CuttableProxy::start(db.host_port());
    let s = Setup::new();
    let metrics = free_port();
    // A service account, for the raw client that reads what the server says.
    let svc = RawKey::generate();
    let mut pv = s.env.portvakt(
        &s.config()
            .metrics(metrics)
            .database_url(&db.url_via(proxy.port))
            .user(User {
                name: "svc".to_string(),
                groups: Vec::new(),
                keys: vec![svc.public_line()],
                mfa: Some("none".to_string()),
            }),
    );
    assert_eq!(attack::http_get(metrics, "/readyz").unwrap().0, 200);
    assert_eq!(attack::http_get(metrics, "/healthz").unwrap().0, 200);
    let mut live = LiveForward::open(&s.alice(&pv), "echo", s.echo.port);
    // A logged-in connection that will ask for a new forward during the outage.
    let local = free_port();
    let mut tunnel = s.alice(&pv).spawn(&[
        "-N",
        "-L",
        &format!("127.0.0.1:{local}:echo:{}", s.echo.port),
        BASTION,
    ]);
    poll_until("the -L tunnel to log in", AUDIT_TIMEOUT, || {
        tunnel.assert_running();
        (pv.audit()
            .iter()
            .filter(|e| e.kind == "auth.success")
            .count()
            >= 2)
            .then_some(())
    });

    proxy.cut();
    let body = poll_until("/readyz to say not ready", AUDIT_TIMEOUT, || {
        let (status, body) = attack::http_get(metrics, "/readyz").ok()?;
        (status == 503).then_some(body)
    });
    assert!(
        body.contains("database"),
        "/readyz does not say why: {body}"
    );
    assert_eq!(attack::http_get(metrics, "/healthz").unwrap().0, 200);
    wait_for_log(
        &pv,
        "message",
        "database unreachable: new logins and forwards are refused until it answers again",
    );

    // The live forward keeps running.
    live.echo(b"during the outage\n");
    // A new login is refused, with the reason in the log.
    let out = forward_stdio(&s.alice(&pv).log_level("INFO"), "echo", s.echo.port, b"x");
    out.assert_code(255);
    wait_for_log(&pv, "reason", "database_unavailable");
    // OpenSSH shows why: the server says it at the client's first ("none")
    // request, while the client still has methods to try and reads on.
    assert!(
        out.stderr
            .contains("portvakt: the audit database is unavailable, so logins are refused"),
        "the user is not told why: {}",
        out.stderr
    );
    // A client that goes straight to its key is told in the disconnect
    // message that follows the refusal.
    let mut raw = RawSsh::connect_from(loopback(3), pv.port).expect("SSH handshake");
    assert!(raw.request_userauth().expect("ssh-userauth"));
    let reply = raw.auth_publickey("svc", &svc).expect("svc's login reply");
    assert_eq!(reply[0], attack::msg::USERAUTH_FAILURE, "{reply:?}");
    let bye = raw
        .recv_skipping(|t| t == attack::msg::DISCONNECT)
        .expect("a disconnect message");
    assert_eq!(
        attack::disconnect_text(&bye),
        "portvakt: the audit database is unavailable, so logins are refused for now; \
         try again later"
    );
    // A new forward on the logged-in connection is refused too.
    let mut c = TcpStream::connect(proc::local(local)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = c.write_all(b"x");
    let mut buf = [0u8; 8];
    assert!(
        matches!(c.read(&mut buf), Ok(0) | Err(_)),
        "a forward was opened without an audit row"
    );
    wait_for_log(&pv, "reason", "audit_unavailable");
    assert_eq!(
        s.echo.connections(),
        1,
        "only the live forward reached the target"
    );

    // Recovery.
    proxy.restore();
    poll_until("/readyz to be ready again", AUDIT_TIMEOUT, || {
        let (status, _) = attack::http_get(metrics, "/readyz").ok()?;
        (status == 200).then_some(())
    });
    assert_echo_works(&s.alice(&pv), "echo", s.echo.port);
    live.echo(b"after the outage\n");
    pv.assert_running();
    let (_, text) = attack::http_get(metrics, "/metrics").unwrap();
    assert!(text.contains("portvakt_database_errors_total"), "{text}");
}

/// Another process's write lock on a SQLite database (as a backup tool or
/// a stuck `sqlite3` shell holds it): the file is there but cannot be
/// written. (As root, `chmod 000` would not stop portvakt.)
struct SqliteWriteLock {
    runtime: tokio::runtime::Runtime,
    conn: Option<sqlx::SqliteConnection>,
}

impl SqliteWriteLock {
    fn take(url: &str) -> SqliteWriteLock {
        use sqlx::Connection;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conn = runtime.block_on(async {
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::raw_sql("PRAGMA busy_timeout = 10000; BEGIN EXCLUSIVE")
                .execute(&mut conn)
                .await
                .unwrap();
            conn
        });
        SqliteWriteLock {
            runtime,
            conn: Some(conn),
        }
    }

    fn release(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            self.runtime.block_on(async {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
            });
        }
    }
}

impl Drop for SqliteWriteLock {
    fn drop(&mut self) {
        self.release();
    }
}

#[test]
fn a_sqlite_database_that_cannot_be_written_refuses_new_logins_and_readyz_says_why() {
    let s = Setup::new();
    let metrics = free_port();
    let db = s.env.path().join("locked.db");
    let url = format!("sqlite://{}", db.display());
    let mut pv = s
        .env
        .portvakt(&s.config().metrics(metrics).database_url(&url));
    let mut live = LiveForward::open(&s.alice(&pv), "echo", s.echo.port);

    let mut lock = SqliteWriteLock::take(&url);
    // portvakt checks its database every couple of seconds (and after a
    // failed audit write): once /readyz says so, logins are refused.
    let ready = poll_until(
        "/readyz to report the locked database",
        Duration::from_secs(20),
        || {
            attack::http_get(metrics, "/readyz")
                .ok()
                .filter(|r| r.0 == 503)
        },
    );
    let out = forward_stdio(&s.alice(&pv).log_level("INFO"), "echo", s.echo.port, b"x");
    out.assert_code(255);
    live.echo(b"during the lock\n");
    let logins = log_lines_with(&pv, "event", "auth.success").len();
    let refused_login = log_lines_with(&pv, "reason", "database_unavailable");
    lock.release();
    assert!(
        !refused_login.is_empty() && logins == 1 && ready.0 == 503,
        "while the database could not be written: {} logins succeeded (1 was before \
         the lock), /readyz answered {ready:?}, database_unavailable refusals: {}; \
         the client saw: {}",
        logins,
        refused_login.len(),
        out.stderr
    );
    pv.assert_running();
    // Recovered once the next check reaches the database.
    poll_until("/readyz to recover", Duration::from_secs(20), || {
        attack::http_get(metrics, "/readyz")
            .ok()
            .filter(|r| r.0 == 200)
    });
    assert_echo_works(&s.alice(&pv), "echo", s.echo.port);
}

/// A ban ends every connection of the banned source that is still logging
/// in, not only the one whose failure tripped it: idle logins held open
/// from that address would otherwise keep guessing.
#[test]
fn a_ban_closes_every_unauthenticated_connection_of_the_source() {
    let s = Setup::new();
    let pv = s
        .env
        .portvakt(&s.config().lockout(3, "10m", "15m").login_grace_time("2m"));
    let mut waiting: Vec<RawSsh> = (0..3)
        .map(|_| {
            let mut raw = RawSsh::connect_from(loopback(5), pv.port).expect("handshake");
            assert!(raw.request_userauth().unwrap());
            raw
        })
        .collect();
    for _ in 0..2 {
        guess_password(pv.port, "alice", 5);
    }
    // The guess that makes the ban keeps its connection open: the ban, not
    // the client leaving, must end it (a client that leaves at once races
    // the ban's write, and on a slow database it wins).
    let mut last = RawSsh::connect_from(loopback(5), pv.port).expect("handshake");
    assert!(last.request_userauth().unwrap());
    let reply = last
        .auth_password("alice", b"hunter2")
        .expect("password reply");
    assert_eq!(reply[0], attack::msg::USERAUTH_FAILURE);
    waiting.push(last);
    pv.wait_for_audit("lockout.ban", |e| e.kind == "lockout.ban");
    for raw in &mut waiting {
        assert!(
            raw.closed_within(Duration::from_secs(10)),
            "a connection of the banned source is still open"
        );
    }
    // Their close rows say why (the guesser's own connection too).
    let closes = wait_count(&pv, "connection.close", "banned", 4);
    assert!(
        closes.iter().all(|e| e
            .source
            .as_deref()
            .is_some_and(|s| s.starts_with("127.0.0.5:"))),
        "{closes:?}"
    );
    // Another address is not affected.
    assert_echo_works(&s.alice(&pv), "echo", s.echo.port);
}

/// A PROXY protocol header names the client only when it comes from a
/// listed balancer: from anyone else it is not believed (the spoofed
/// address appears nowhere, bans and the audit trail see the real one) and
/// the connection is not served.
#[test]
fn a_proxy_header_counts_only_from_a_listed_balancer() {
    let s = Setup::new();
    let pv = s.env.portvakt(
        &s.config()
            .proxy_protocol_from(&["127.0.0.2/32"])
            .login_grace_time("5s"),
    );
    let header = b"PROXY TCP4 192.0.2.9 127.0.0.1 5555 22\r\n";

    // Not a balancer: SSH starts at once; the header is not a version line.
    let mut direct = attack::connect_from(loopback(3), pv.port);
    assert!(attack::read_greeting(&mut direct, Duration::from_secs(10)).is_banner());
    attack::send_ignoring_close(&mut direct, header);
    assert!(
        attack::wait_closed(&mut direct, Duration::from_secs(30)).is_some(),
        "a client sending a PROXY header was served"
    );
    let close = pv.wait_for_audit("the direct connection's close", |e| {
        e.kind == "connection.close"
            && e.source
                .as_deref()
                .is_some_and(|s| s.starts_with("127.0.0.3:"))
    });
    assert_ne!(close.reason.as_deref(), Some("client_closed"), "{close:?}");

    // The balancer: its header names the client, and the client is audited.
    let mut lb = attack::connect_from(loopback(2), pv.port);
    lb.write_all(header).unwrap();
    assert!(attack::read_greeting(&mut lb, Duration::from_secs(10)).is_banner());
    drop(lb);
    pv.wait_for_audit("the balanced client's connection", |e| {
        e.kind == "connection.open" && e.source.as_deref() == Some("192.0.2.9:5555")
    });
    let spoofed_direct = pv.audit().into_iter().filter(|e| {
        e.connection_id == close.connection_id
            && e.source
                .as_deref()
                .is_some_and(|s| s.starts_with("192.0.2.9"))
    });
    assert_eq!(
        spoofed_direct.count(),
        0,
        "the direct client's header was believed"
    );
}
