//! The byte pump (issue 2, item 5): exact bytes both ways with half-close,
//! byte counts in the audit, a dead target that stalls nothing else, and the
//! limits that end a forward (idle, certificate expiry, max duration, the
//! connection going away).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

const MIB: usize = 1024 * 1024;

/// alice with a certificate, and a bastion whose targets are `targets`.
fn bastion(env: &TestEnv, config: Config) -> (Portvakt, UserKey) {
    let ca = env.ca("user_ca");
    let alice = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]));
    (env.portvakt(&config.trust(&ca)), alice)
}

/// Describes where two byte strings first differ.
fn diff(got: &[u8], want: &[u8]) -> String {
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    format!(
        "got {} bytes, want {}; first difference at {:?}",
        got.len(),
        want.len(),
        first
    )
}

/// alice sends `mib` MiB of random bytes to an echo target with `ssh -W`
/// through a fresh bastion (client log level `log_level`) and gets them
/// back byte for byte; the bastion and the client's output.
fn echo_through_ssh_w(mib: usize, log_level: &str) -> (TestEnv, Portvakt, RunOutput) {
    let env = TestEnv::new();
    let echo = EchoServer::start();
    let (pv, alice) = bastion(
        &env,
        Config::new().target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["alice"])),
    );
    let data = random_bytes(mib * MIB);
    let out = forward_stdio(
        &env.client(&pv, "alice")
            .identity(&alice)
            .log_level(log_level)
            .timeout(Duration::from_secs(300)),
        "echo",
        echo.port,
        &data,
    );
    assert_eq!(out.code(), 0, "ssh -W failed: {}", out.stderr);
    assert!(
        out.stdout == data,
        "echo mismatch: {}",
        diff(&out.stdout, &data)
    );
    (env, pv, out)
}

#[test]
fn twenty_mib_through_ssh_w_arrive_byte_exact_and_are_counted() {
    let (_env, pv, _) = echo_through_ssh_w(20, "ERROR");
    let row = pv.wait_for_session("the echo forward closed", |r| {
        r.target.as_deref() == Some("echo") && r.ended_at.is_some()
    });
    assert_eq!(row.bytes_to_target, (20 * MIB) as u64, "{row:?}");
    assert_eq!(row.bytes_from_target, (20 * MIB) as u64, "{row:?}");
    assert_eq!(row.close_reason.as_deref(), Some("closed"), "{row:?}");
}

/// OpenSSH's first cipher, chacha20-poly1305, is what the client and
/// portvakt agree on, and portvakt computes it with libcrypto's ChaCha20
/// and Poly1305 (russh patch 13; it says so at start-up): 4 MiB both ways
/// through it arrive intact.
#[test]
fn chacha20_poly1305_is_negotiated_and_runs_on_libcrypto() {
    let (_env, pv, out) = echo_through_ssh_w(4, "DEBUG");
    for direction in ["server->client", "client->server"] {
        let line = format!("kex: {direction} cipher: chacha20-poly1305@openssh.com");
        assert!(out.stderr.contains(&line), "no {line:?} in: {}", out.stderr);
    }
    let log = pv.log();
    assert!(
        log.contains("chacha20-poly1305 with ChaCha20 and Poly1305 of OpenSSL's libcrypto"),
        "{log}"
    );
    assert!(!log.contains("with the RustCrypto crates"), "{log}");
}

#[test]
fn bytes_are_counted_in_their_own_direction() {
    let env = TestEnv::new();
    let sink = SinkServer::start();
    let source_payload = random_bytes(300 * 1024 + 3);
    let source = SourceServer::start(source_payload.clone());
    let (pv, alice) = bastion(
        &env,
        Config::new()
            .target(Target::host("sink", "127.0.0.1", sink.port()).allow_users(&["alice"]))
            .target(Target::host("source", "127.0.0.1", source.port).allow_users(&["alice"])),
    );
    let client = env.client(&pv, "alice").identity(&alice);

    // To the target only: the sink gets every byte, nothing comes back.
    let upload = random_bytes(MIB + 7);
    let out = forward_stdio(&client, "sink", sink.port(), &upload);
    assert_eq!(out.code(), 0, "ssh -W to the sink failed: {out}");
    assert!(out.stdout.is_empty(), "the sink sent something: {out}");
    let received = poll_until("the sink to see end-of-input", AUDIT_TIMEOUT, || {
        sink.received.lock().unwrap().first().cloned()
    });
    assert!(
        received == upload,
        "sink mismatch: {}",
        diff(&received, &upload)
    );
    let row = pv.wait_for_session("the sink forward closed", |r| {
        r.target.as_deref() == Some("sink") && r.ended_at.is_some()
    });
    assert_eq!(row.bytes_to_target, upload.len() as u64, "{row:?}");
    assert_eq!(row.bytes_from_target, 0, "{row:?}");

    // From the target only: all of the source's bytes arrive after our EOF.
    let out = forward_stdio(&client, "source", source.port, b"");
    assert_eq!(out.code(), 0, "ssh -W to the source failed: {}", out.stderr);
    assert!(
        out.stdout == source_payload,
        "source mismatch: {}",
        diff(&out.stdout, &source_payload)
    );
    let row = pv.wait_for_session("the source forward closed", |r| {
        r.target.as_deref() == Some("source") && r.ended_at.is_some()
    });
    assert_eq!(
        row.bytes_from_target,
        source_payload.len() as u64,
        "{row:?}"
    );
    assert_eq!(row.bytes_to_target, 0, "{row:?}");
}

#[test]
fn a_dead_target_does_not_stall_the_connections_other_channels() {
    let env = TestEnv::new();
    let dead = DeadTarget::start();
    let echo = EchoServer::start();
    let (pv, alice) = bastion(
        &env,
        Config::new()
            .connect_timeout("30s")
            .target(Target::host("dead", "127.0.0.1", dead.port).allow_users(&["alice"]))
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["alice"])),
    );
    let (p1, p2) = (free_port(), free_port());
    // One SSH connection, two local forwards through portvakt itself.
    let mut ssh = env
        .client(&pv, "alice")
        .identity(&alice)
        .bastion_option("ExitOnForwardFailure yes")
        .spawn(&[
            "-N",
            "-L",
            &format!("127.0.0.1:{p1}:dead:{}", dead.port),
            "-L",
            &format!("127.0.0.1:{p2}:echo:{}", echo.port),
            BASTION,
        ]);
    poll_until("ssh to listen on its -L ports", AUDIT_TIMEOUT, || {
        ssh.assert_running();
        port_accepts(p2).then_some(())
    });

    // Channel 1: its target never answers the SYN; portvakt keeps dialling.
    let mut stuck = TcpStream::connect(proc::local(p1)).expect("connect to -L p1");
    pv.wait_for_session("the dead forward to be recorded", |r| {
        r.target.as_deref() == Some("dead")
    });

    // Channel 2, opened while channel 1 is still dialling: echoes at once.
    let mut live = TcpStream::connect(proc::local(p2)).expect("connect to -L p2");
    live.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let payload = b"the other channel still flows\n";
    live.write_all(payload).unwrap();
    let mut back = vec![0u8; payload.len()];
    live.read_exact(&mut back)
        .expect("echo through the second channel");
    assert_eq!(&back[..], &payload[..]);

    // Ordering, not timing: channel 1 is still waiting for its target.
    stuck.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    match stuck.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the dead forward ended before the live one echoed: {other:?}"),
    }
    let dead_row = pv
        .sessions()
        .into_iter()
        .find(|r| r.target.as_deref() == Some("dead"))
        .expect("dead row");
    assert_eq!(dead_row.ended_at, None, "{dead_row:?}");
    ssh.assert_running();
}

#[test]
fn a_refused_connection_to_the_target_is_recorded_as_failed() {
    let env = TestEnv::new();
    let closed_port = free_port();
    let (pv, alice) = bastion(
        &env,
        Config::new()
            .target(Target::host("gone", "127.0.0.1", closed_port).allow_users(&["alice"])),
    );

    let out = forward_stdio(
        &env.client(&pv, "alice").identity(&alice).log_level("INFO"),
        "gone",
        closed_port,
        b"",
    );

    out.assert_code(255);
    out.assert_stderr_contains("open failed");
    let row = pv.wait_for_session("the failed forward", |r| r.result == "failed");
    assert_eq!(row.reason.as_deref(), Some("connect_refused"), "{row:?}");
    assert_eq!(row.target.as_deref(), Some("gone"), "{row:?}");
    assert_eq!(
        row.address,
        Some(format!("127.0.0.1:{closed_port}")),
        "the address dialled is recorded: {row:?}"
    );
}

/// Starts `ssh -W echo:PORT bastion` with stdin held open, checks one line
/// echoes, and returns the running client.
fn open_echo_forward(env: &TestEnv, pv: &Portvakt, key: &UserKey, echo: &TcpServer) -> ChildGuard {
    let mut ssh = env.client(pv, "alice").identity(key).spawn(&[
        "-W",
        &format!("echo:{}", echo.port),
        BASTION,
    ]);
    ssh.stdin().write_all(b"hi\n").unwrap();
    ssh.stdin().flush().unwrap();
    let (_stdout, back) = proc::read_exact_within(ssh.take_stdout(), 3, AUDIT_TIMEOUT);
    assert_eq!(&back, b"hi\n");
    ssh
}

#[test]
fn an_idle_forward_is_closed_with_idle_timeout() {
    let env = TestEnv::new();
    let echo = EchoServer::start();
    let (pv, alice) = bastion(
        &env,
        Config::new()
            .idle_timeout("2s")
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["alice"])),
    );

    let mut ssh = open_echo_forward(&env, &pv, &alice, &echo);

    let row = pv.wait_for_session("the idle forward closed", |r| r.ended_at.is_some());
    assert_eq!(row.close_reason.as_deref(), Some("idle_timeout"), "{row:?}");
    assert_eq!(
        (row.bytes_to_target, row.bytes_from_target),
        (3, 3),
        "{row:?}"
    );
    ssh.wait_exit(AUDIT_TIMEOUT);
    poll_until("the target connection to close", AUDIT_TIMEOUT, || {
        (echo.active() == 0).then_some(())
    });
}

#[test]
fn a_forward_ends_when_the_certificate_expires() {
    let env = TestEnv::new();
    let echo = EchoServer::start();
    let ca = env.ca("user_ca");
    let alice = env.key("alice");
    let pv = env.portvakt(
        &Config::new()
            .trust(&ca)
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["alice"])),
    );
    // Signed only now that portvakt is up, and valid for 30 s more: time
    // enough to log in on a loaded machine, after which the live forward
    // must end because the certificate expired.
    const VALID_FOR: Duration = Duration::from_secs(30);
    ca.sign(
        &alice,
        &CertSpec::user(&["alice"]).validity(&format!("-1m:+{}s", VALID_FOR.as_secs())),
    );

    let mut ssh = open_echo_forward(&env, &pv, &alice, &echo);

    let row = poll_until(
        "the forward to close at certificate expiry",
        VALID_FOR + AUDIT_TIMEOUT,
        || pv.sessions().into_iter().find(|r| r.ended_at.is_some()),
    );
    assert_eq!(
        row.close_reason.as_deref(),
        Some("certificate_expired"),
        "{row:?}"
    );
    pv.wait_for_event("connection.close", "certificate_expired");
    ssh.wait_exit(AUDIT_TIMEOUT);
}

#[test]
fn a_connection_ends_at_max_duration() {
    let env = TestEnv::new();
    let echo = EchoServer::start();
    let (pv, alice) = bastion(
        &env,
        Config::new()
            .max_duration("3s")
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["alice"])),
    );

    let mut ssh = open_echo_forward(&env, &pv, &alice, &echo);

    let row = pv.wait_for_session("the forward closed at max_duration", |r| {
        r.ended_at.is_some()
    });
    assert_eq!(row.close_reason.as_deref(), Some("max_duration"), "{row:?}");
    pv.wait_for_event("connection.close", "max_duration");
    ssh.wait_exit(AUDIT_TIMEOUT);
}

#[test]
fn a_forward_ends_with_its_connection_and_releases_the_target() {
    let env = TestEnv::new();
    let echo = EchoServer::start();
    let (pv, alice) = bastion(
        &env,
        Config::new().target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["alice"])),
    );

    let mut ssh = open_echo_forward(&env, &pv, &alice, &echo);
    assert_eq!(echo.active(), 1);
    ssh.kill();

    let row = pv.wait_for_session("the forward closed", |r| r.ended_at.is_some());
    assert_eq!(
        row.close_reason.as_deref(),
        Some("connection_closed"),
        "{row:?}"
    );
    // No pump outlives its connection: portvakt closes the target side too.
    poll_until(
        "portvakt to close the target connection",
        AUDIT_TIMEOUT,
        || (echo.active() == 0).then_some(()),
    );
}
