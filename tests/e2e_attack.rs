//! Proof by attack (issue 4, item 7): what an attacker throws at a bastion,
//! from raw sockets and a raw SSH client ([`RawSsh`]) that sends messages in
//! whatever order it is told. Every case must be refused (and audited where
//! the design audits it), and afterwards the server must still be up, still
//! serve a normal OpenSSH login, and have stayed within a bounded memory.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::attack::{
    self, Greeting, Handshake, Kex, RawKey, RawSkKey, RawSsh, confirmed_channel, loopback, msg,
    open_failure_text, payload, plain_packet, string, u32be,
};
use common::*;

/// How much portvakt's resident memory may grow during one attack.
const RSS_BOUND_KIB: u64 = 100 * 1024;
/// How long the server may take to drop a connection it should drop.
const DROP_WAIT: Duration = Duration::from_secs(20);

/// A bastion under attack: alice logs in with OpenSSH (a certificate),
/// `svc` with the raw client (a service-account key), both may use the
/// echo target `db-1` (and `lab`, 127.0.0.1/32 on the echo port).
struct Bastion {
    env: TestEnv,
    pv: Portvakt,
    echo: TcpServer,
    alice: UserKey,
    svc: RawKey,
    rss_before: u64,
}

impl Bastion {
    fn start(tweak: impl FnOnce(Config) -> Config) -> Bastion {
        let env = TestEnv::new();
        let echo = EchoServer::start();
        let ca = env.ca("user_ca");
        let alice = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]));
        let svc = RawKey::generate();
        // The default key exchange (mlkem768x25519-sha256 only): the raw
        // client speaks it.
        let config = Config::new()
            .trust(&ca)
            .login_grace_time("5s")
            .user(raw_user("svc", &svc, "none"))
            .target(Target::host("db-1", "127.0.0.1", echo.port).allow_users(&["alice", "svc"]))
            .target(Target::cidr("lab", "127.0.0.1/32", &[echo.port]).allow_users(&["svc"]));
        let pv = env.portvakt(&tweak(config));
        let rss_before = attack::vm_rss_kib(pv.pid());
        Bastion {
            env,
            pv,
            echo,
            alice,
            svc,
            rss_before,
        }
    }

    /// alice's OpenSSH client.
    fn alice(&self) -> SshClient {
        self.env.client(&self.pv, "alice").identity(&self.alice)
    }

    /// A raw client logged in as `svc`.
    fn svc_session(&self) -> RawSsh {
        let mut ssh = RawSsh::connect(self.pv.port);
        assert!(ssh.request_userauth().unwrap(), "ssh-userauth refused");
        let reply = ssh.auth_publickey("svc", &self.svc).unwrap();
        assert_eq!(
            reply[0],
            msg::USERAUTH_SUCCESS,
            "svc login failed: {reply:?}"
        );
        ssh
    }

    /// The server is still running, alice still logs in and forwards, and
    /// memory grew by less than [`RSS_BOUND_KIB`].
    fn assert_survived(&mut self) {
        self.pv.assert_running();
        assert_echo_works(&self.alice(), "db-1", self.echo.port);
        let after = attack::vm_rss_kib(self.pv.pid());
        assert!(
            after < self.rss_before + RSS_BOUND_KIB,
            "portvakt grew from {} KiB to {after} KiB during the attack",
            self.rss_before
        );
        eprintln!(
            "portvakt VmRSS: {} KiB before, {after} KiB after",
            self.rss_before
        );
    }

    /// The reasons of all `connection.close` events so far.
    fn close_reasons(&self) -> Vec<String> {
        self.pv
            .audit()
            .into_iter()
            .filter(|e| e.kind == "connection.close")
            .map(|e| e.reason.unwrap_or_default())
            .collect()
    }
}

/// A `[[users]]` entry for a raw key.
fn raw_user(name: &str, key: &RawKey, mfa: &str) -> User {
    User {
        name: name.to_string(),
        groups: Vec::new(),
        keys: vec![key.public_line()],
        mfa: Some(mfa.to_string()),
    }
}

/// One malformed input, sent on a connection of its own.
struct Case {
    what: String,
    /// The bytes sent after the server's version line.
    bytes: Vec<u8>,
    /// Whether the client then ends its input (EOF).
    then_eof: bool,
    /// The reason its `connection.close` row must give.
    reason: &'static str,
}

fn case(what: &str, bytes: Vec<u8>, then_eof: bool, reason: &'static str) -> Case {
    Case {
        what: what.to_string(),
        bytes,
        then_eof,
        reason,
    }
}

/// A `login_grace_time` far beyond every wait of these tests: a connection
/// they see closed was not closed by the login timer.
const LONG_GRACE: &str = "10m";

/// Sends each case on its own fresh connection from its own source address
/// (127.0.0.`first_source`, the next, ...; all at once), then asserts that
/// the server ended every one within [`DROP_WAIT`] and audited it with the
/// case's reason. One message lists every case that went otherwise.
fn assert_each_dropped(b: &Bastion, first_source: u8, cases: Vec<Case>) {
    let runs: Vec<_> = cases
        .into_iter()
        .enumerate()
        .map(|(i, case)| {
            let source = loopback(first_source + i as u8);
            let port = b.pv.port;
            let run = thread::spawn(move || {
                let mut stream = attack::connect_from(source, port);
                let greeting = attack::read_greeting(&mut stream, Duration::from_secs(10));
                if !greeting.is_banner() {
                    return Err(format!("no version line: {greeting:?}"));
                }
                attack::send_ignoring_close(&mut stream, &case.bytes);
                if case.then_eof {
                    let _ = stream.shutdown(std::net::Shutdown::Write);
                }
                match attack::wait_closed(&mut stream, DROP_WAIT) {
                    Some(_) => Ok(()),
                    None => Err(format!("still open after {DROP_WAIT:?}")),
                }
            });
            (source, case.what, case.reason, run)
        })
        .collect();
    let mut wrong = Vec::new();
    for (source, what, reason, run) in runs {
        if let Err(e) = run.join().expect("case thread") {
            wrong.push(format!("{what} (from {source}): {e}"));
            continue;
        }
        if let Err(e) = check_close_row(b, source, reason) {
            wrong.push(format!("{what} (from {source}): {e}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "malformed input not dropped for its own sake:\n{}",
        wrong.join("\n")
    );
}

/// The `connection.close` row of the one connection from `source` gives
/// `reason`, and a duration far below the login grace time. (Rows are
/// written as each connection finishes: waits for it.)
fn check_close_row(b: &Bastion, source: std::net::Ipv4Addr, reason: &str) -> Result<(), String> {
    let prefix = format!("{source}:");
    let rows = poll_for(AUDIT_TIMEOUT, || {
        let rows: Vec<AuditEvent> =
            b.pv.audit()
                .into_iter()
                .filter(|e| {
                    e.kind == "connection.close"
                        && e.source.as_deref().is_some_and(|s| s.starts_with(&prefix))
                })
                .collect();
        (!rows.is_empty()).then_some(rows)
    })
    .ok_or("no connection.close row")?;
    let [row] = &rows[..] else {
        return Err(format!("{} close rows: {rows:?}", rows.len()));
    };
    if row.reason.as_deref() != Some(reason) {
        return Err(format!(
            "closed as {:?}, not {reason:?}: {row:?}",
            row.reason
        ));
    }
    let took = row.detail["duration_seconds"].as_f64().unwrap_or(f64::MAX);
    if reason != "login_timeout" && took > DROP_WAIT.as_secs_f64() {
        return Err(format!("closed only after {took} s: {row:?}"));
    }
    Ok(())
}

/// A packet whose length field says `length` but which carries `body`.
fn lying_packet(length: u32, body: &[u8]) -> Vec<u8> {
    let mut out = u32be(length).to_vec();
    out.extend_from_slice(body);
    out
}

const CLIENT_BANNER: &[u8] = b"SSH-2.0-attacker\r\n";

#[test]
fn garbage_and_malformed_version_lines_are_dropped() {
    let mut b = Bastion::start(|c| c.login_grace_time(LONG_GRACE));
    let garbage = |what: &str, bytes: Vec<u8>| case(what, bytes, false, "protocol_error");
    let cases = vec![
        garbage("random bytes", random_bytes(4096)),
        garbage("8 MiB without a newline", vec![b'A'; 8 * 1024 * 1024]),
        garbage(
            "an overlong version line",
            [b"SSH-2.0-".as_slice(), &vec![b'x'; 100_000], b"\r\n"].concat(),
        ),
        garbage(
            "thousands of lines before the version",
            b"hello there\r\n".repeat(5000),
        ),
        garbage("SSH-1.5", b"SSH-1.5-OpenSSH_1.2.3\r\n".to_vec()),
        // The version is printable US-ASCII (russh patch 8).
        garbage("a NUL in the version", b"SSH-2.0-a\0b\r\n".to_vec()),
        garbage("SSH-3.0", b"SSH-3.0-future\r\n".to_vec()),
        garbage(
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        garbage("a TLS ClientHello", {
            let mut hello = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
            hello.extend(random_bytes(508));
            hello
        }),
        // A version line and then end-of-input: the client left.
        case(
            "EOF after the version",
            CLIENT_BANNER.to_vec(),
            true,
            "client_closed",
        ),
    ];
    assert_each_dropped(&b, 10, cases);
    assert_no_login(&b.pv);
    b.assert_survived();
}

#[test]
fn malformed_and_truncated_packets_are_dropped() {
    let mut b = Bastion::start(|c| c.login_grace_time(LONG_GRACE));
    let absurd_list = {
        // A KEXINIT whose first name-list claims almost 4 GiB.
        let mut p = vec![msg::KEXINIT];
        p.extend(random_bytes(16));
        p.extend_from_slice(&u32be(0xffff_fff0));
        p.extend_from_slice(b"mlkem768x25519-sha256");
        p
    };
    let many_names = {
        // A well-formed KEXINIT whose kex list has 20 000 names (~220 KiB).
        let names: Vec<String> = (0..20_000).map(|i| format!("x{i}@evil")).collect();
        attack::kexinit([
            names.join(",").as_bytes(),
            b"ssh-ed25519",
            b"aes128-ctr",
            b"aes128-ctr",
            b"hmac-sha2-256-etm@openssh.com",
            b"hmac-sha2-256-etm@openssh.com",
            b"none",
            b"none",
            b"",
            b"",
        ])
    };
    let no_common_algorithm = attack::kexinit([
        b"diffie-hellman-group1-sha1",
        b"ssh-dss",
        b"3des-cbc",
        b"3des-cbc",
        b"hmac-md5",
        b"hmac-md5",
        b"zlib",
        b"zlib",
        b"",
        b"",
    ]);
    let bad = |what: &str, bytes: Vec<u8>| {
        case(
            what,
            [CLIENT_BANNER, &bytes].concat(),
            false,
            "protocol_error",
        )
    };
    let cases = vec![
        bad("random bytes after the version", random_bytes(64 * 1024)),
        bad(
            "a KEXINIT with a 4 GiB name-list",
            plain_packet(&absurd_list),
        ),
        bad(
            "a KEXINIT with 20 000 algorithm names",
            plain_packet(&many_names),
        ),
        bad(
            "a KEXINIT with no algorithm in common",
            plain_packet(&no_common_algorithm),
        ),
        bad(
            "a packet length of 4 GiB",
            lying_packet(0xffff_ffff, &random_bytes(64)),
        ),
        bad(
            "a packet length of 256 MiB",
            lying_packet(256 * 1024 * 1024, &random_bytes(64)),
        ),
        // A packet has at least a message number (russh patch 8).
        bad("a packet length of 0", lying_packet(0, &[0; 16])),
        bad(
            "padding longer than the packet",
            lying_packet(12, &[255, msg::KEXINIT, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ),
        bad(
            "NEWKEYS before any key exchange",
            plain_packet(&[msg::NEWKEYS]),
        ),
        bad(
            "a userauth request before any key exchange",
            plain_packet(&payload(&[
                &[msg::USERAUTH_REQUEST],
                &string(b"alice"),
                &string(b"ssh-connection"),
                &string(b"none"),
            ])),
        ),
        bad(
            "a channel open before any key exchange",
            plain_packet(&payload(&[
                &[msg::CHANNEL_OPEN],
                &string(b"session"),
                &u32be(0),
                &u32be(1 << 20),
                &u32be(1 << 15),
            ])),
        ),
        // Half a packet and then end-of-input: the client left.
        case(
            "a truncated packet, then EOF",
            [
                CLIENT_BANNER,
                &lying_packet(1000, &[4, msg::KEXINIT, 1, 2, 3]),
            ]
            .concat(),
            true,
            "client_closed",
        ),
    ];
    assert_each_dropped(&b, 10, cases);

    // After the key exchange (each from a source of its own): a packet
    // length beyond the limit, random bytes in place of ciphertext, and a
    // second KEXINIT with a broken list.
    let after_kex: [(&str, &[u8], bool); 3] = [
        (
            "a 2 GiB encrypted packet length",
            &lying_packet(0x7fff_ffff, &[0; 64]),
            false,
        ),
        ("bytes that fail authentication", &random_bytes(4096), false),
        ("a broken re-key KEXINIT", &absurd_list, true),
    ];
    let mut wrong = Vec::new();
    for (i, (what, bytes, as_message)) in after_kex.into_iter().enumerate() {
        let source = loopback(40 + i as u8);
        let mut ssh = RawSsh::connect_from(source, b.pv.port)
            .unwrap_or_else(|e| panic!("{what}: no SSH session: {e:?}"));
        if as_message {
            let _ = ssh.send(bytes);
        } else {
            attack::send_ignoring_close(ssh.stream(), bytes);
        }
        if !ssh.closed_within(DROP_WAIT) {
            wrong.push(format!("{what}: still open after {DROP_WAIT:?}"));
        } else if let Err(e) = check_close_row(&b, source, "protocol_error") {
            wrong.push(format!("{what}: {e}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_no_login(&b.pv);
    b.assert_survived();
}

/// Input that stops halfway and then waits is not wrong yet: it is ended
/// by `login_grace_time` (5 s here), not left open.
#[test]
fn input_that_stops_halfway_is_dropped_at_the_login_grace_time() {
    let mut b = Bastion::start(|c| c);
    let cases = vec![
        case(
            "half a version line",
            b"SSH-2.0-".to_vec(),
            false,
            "login_timeout",
        ),
        case(
            "a truncated packet, then silence",
            [
                CLIENT_BANNER,
                &lying_packet(1000, &[4, msg::KEXINIT, 1, 2, 3]),
            ]
            .concat(),
            false,
            "login_timeout",
        ),
    ];
    assert_each_dropped(&b, 10, cases);
    assert_no_login(&b.pv);
    b.assert_survived();
}

#[test]
fn a_flood_of_half_open_connections_does_not_keep_a_real_user_out() {
    let mut b = Bastion::start(|c| c);
    let port = b.pv.port;
    let fds_before = attack::open_fds(b.pv.pid());
    // 400 connections from four addresses that never say anything. Each
    // address may hold 10 login slots (the default); the rest are dropped.
    let mut held = Vec::new();
    let mut dropped = 0;
    for i in 0..400 {
        let src = loopback(2 + (i % 4) as u8);
        match attack::try_connect_from(src, port) {
            Ok(s) => held.push(s),
            Err(_) => dropped += 1,
        }
    }
    assert_eq!(dropped, 0, "TCP connects themselves failed");
    // The real user logs in (from 127.0.0.1) while all of them are open.
    let started = Instant::now();
    assert_echo_works(&b.alice(), "db-1", b.echo.port);
    eprintln!("login during the flood took {:?}", started.elapsed());

    // Portvakt kept only 10 per source and closed the rest at once.
    let mut open = 0;
    for s in &mut held {
        if matches!(
            attack::read_greeting(s, Duration::from_millis(200)),
            Greeting::Banner(_) | Greeting::Silent
        ) {
            open += 1;
        }
    }
    assert!(
        open <= 40,
        "{open} of 400 half-open connections were kept (at most 4 x 10 expected)"
    );
    let log = b.pv.log();
    assert!(
        log.contains("\"reason\":\"max_unauthenticated_per_source\""),
        "refusals are logged with their reason"
    );
    // They end at login_grace_time (5 s) and are audited as login_timeout.
    for s in &mut held {
        let _ = attack::wait_closed(s, DROP_WAIT);
    }
    drop(held);
    poll_until(
        "the kept connections to be closed as login_timeout",
        AUDIT_TIMEOUT,
        || {
            let n = b
                .close_reasons()
                .iter()
                .filter(|r| *r == "login_timeout")
                .count();
            (n >= open).then_some(())
        },
    );
    let fds_after = attack::open_fds(b.pv.pid());
    assert!(
        fds_after < fds_before + 20,
        "file descriptors leaked: {fds_before} before, {fds_after} after"
    );
    b.assert_survived();
}

#[test]
fn thousands_of_failed_logins_from_one_address_do_not_keep_a_real_user_out() {
    // The product's default lockout: 5 failures in 10 minutes ban for 15.
    // The attacker guesses alice's name, so her logins wait up to 10 s
    // (the user-name slowdown): give logins more time than that.
    let mut b = Bastion::start(|c| c.lockout(5, "10m", "15m").login_grace_time("60s"));
    let port = b.pv.port;
    const ATTEMPTS: usize = 3000;
    let attempts = Arc::new(AtomicUsize::new(0));
    const ATTACKERS: usize = 8;
    let refused_before_ssh = Arc::new(AtomicUsize::new(0));
    let cut_in_handshake = Arc::new(std::sync::Mutex::new(Vec::new()));
    let password_refusals = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|_| {
            let attempts = Arc::clone(&attempts);
            let refused_before_ssh = Arc::clone(&refused_before_ssh);
            let cut_in_handshake = Arc::clone(&cut_in_handshake);
            let password_refusals = Arc::clone(&password_refusals);
            thread::spawn(move || {
                while attempts.fetch_add(1, Ordering::SeqCst) < ATTEMPTS {
                    let mut ssh = match RawSsh::connect_from(loopback(2), port) {
                        Ok(ssh) => ssh,
                        Err(e) if e.closed_before_version() => {
                            refused_before_ssh.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        // Anything else: noted, and bounded below.
                        Err(e) => {
                            cut_in_handshake.lock().unwrap().push(format!("{e:?}"));
                            continue;
                        }
                    };
                    if !matches!(ssh.request_userauth(), Ok(true)) {
                        continue;
                    }
                    // Passwords for the real user's name, as a brute-forcer would.
                    for guess in 0..6 {
                        match ssh.auth_password("alice", format!("hunter{guess}").as_bytes()) {
                            Ok(r) if r[0] == msg::USERAUTH_FAILURE => {
                                password_refusals.fetch_add(1, Ordering::SeqCst);
                            }
                            _ => break,
                        }
                    }
                }
            })
        })
        .collect();

    // Meanwhile (once the guessing has begun) alice logs in from
    // 127.0.0.1, twice.
    poll_until("the first refused guess", AUDIT_TIMEOUT, || {
        (password_refusals.load(Ordering::SeqCst) > 0).then_some(())
    });
    for _ in 0..2 {
        let out = forward_stdio(&b.alice(), "db-1", b.echo.port, b"ping\n");
        if out.code() != 0 {
            // Only alice's side of the log: the attackers' lines drown it.
            let log = b.pv.log();
            let mine: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("127.0.0.2"))
                .map(|l| &l[..l.len().min(600)])
                .collect();
            panic!(
                "alice was refused during the attack: {out}\n{}",
                mine.join("\n")
            );
        }
    }
    for a in attackers {
        a.join().expect("attacker thread");
    }
    let took = started.elapsed();
    let refused = refused_before_ssh.load(Ordering::SeqCst);
    let guessed = password_refusals.load(Ordering::SeqCst);
    eprintln!(
        "{ATTEMPTS} connections in {took:?}: {refused} closed before the SSH handshake, \
         {guessed} password guesses refused"
    );
    assert!(
        refused > ATTEMPTS * 9 / 10,
        "the ban should close almost all attempts before the handshake: {refused}"
    );
    // Only a connection already in its handshake when the ban came (one
    // per attacker at most) may end otherwise.
    let cut = cut_in_handshake.lock().unwrap();
    assert!(
        cut.len() <= ATTACKERS,
        "{} handshakes failed other than by the ban: {cut:#?}",
        cut.len()
    );
    assert!(
        guessed >= 5,
        "the first guesses reached the server: {guessed}"
    );

    let bans = b.pv.cli_json(&["lockout", "list", "--json"]);
    let sources: Vec<&str> = bans
        .as_array()
        .expect("lockout list is an array")
        .iter()
        .filter_map(|r| r["source"].as_str())
        .collect();
    assert_eq!(sources, vec!["127.0.0.2"], "only the attacker is banned");
    let ban =
        b.pv.wait_for_audit("lockout.ban", |e| e.kind == "lockout.ban");
    assert_eq!(ban.detail_str("banned"), Some("127.0.0.2"), "{ban:?}");
    let events = b.pv.audit();
    let failures = events
        .iter()
        .filter(|e| e.is("auth.failure", "password_refused"))
        .count();
    assert!(failures >= 5, "password refusals are audited: {failures}");
    assert!(
        events
            .iter()
            .any(|e| e.kind == "auth.success" && e.user.as_deref() == Some("alice")),
        "alice logged in during the attack"
    );
    b.assert_survived();
}

#[test]
fn target_strings_that_try_to_slip_past_the_allow_list_are_refused() {
    let mut b = Bastion::start(|c| c);
    let p = b.echo.port as u32;
    let long_name = "a".repeat(60_000);
    let refused: Vec<(&[u8], u32)> = vec![
        // Other spellings of the allowed address 127.0.0.1.
        (b"127.1", p),
        (b"0x7f.0.0.1", p),
        (b"0x7f000001", p),
        (b"127.000.000.001", p),
        (b"0177.0.0.1", p),
        (b"2130706433", p),
        (b"::ffff:127.0.0.1", p),
        (b"::ffff:7f00:1", p),
        (b"[127.0.0.1]", p),
        (b"127.0.0.1.", p),
        (b" 127.0.0.1", p),
        (b"127.0.0.1 ", p),
        (b"127.0.0.1\0", p),
        (b"127.0.0.1\0.evil", p),
        (b"127.0.0.1:22", p),
        (b"127.0.0.1/32", p),
        // Other loopback and wildcard addresses (they reach this host too).
        (b"127.0.0.2", p),
        (b"0.0.0.0", p),
        (b"0", p),
        (b"::1", p),
        (b"::", p),
        // Other spellings of the target name db-1.
        (b"db-1.", p),
        (b"db-1..", p),
        (b".db-1", p),
        (b"db-1 ", p),
        (b" db-1", p),
        (b"db-1\0", p),
        (b"db-1\0.example.com", p),
        (b"db-1\r\n", p),
        (b"db-1\t", p),
        (b"db\xe2\x80\x901", p),  // U+2010 HYPHEN
        (b"\xd4\x81b-1", p),      // U+0501 CYRILLIC SMALL LETTER KOMI DE
        (b"db-1\xe2\x80\x8b", p), // U+200B ZERO WIDTH SPACE
        (b"DB-1.", p),
        (b"db-1.localdomain", p),
        (b"lab", p), // a CIDR target's name is not a host name
        (b"", p),
        (long_name.as_bytes(), p),
        // Names that resolve to an allowed address but are not target names.
        (b"localhost", p),
        (b"localhost.", p),
        (b"ip6-localhost", p),
        // Ports out of range, and ports that wrap around to the allowed one.
        (b"db-1", 0),
        (b"db-1", p + 1),
        (b"db-1", p + 65536),
        (b"db-1", u32::MAX),
        (b"127.0.0.1", 0),
        (b"127.0.0.1", p + 65536),
        (b"127.0.0.1", 65536),
        (b"127.0.0.1", u32::MAX),
    ];
    let allowed: Vec<(&[u8], u32)> = vec![(b"db-1", p), (b"DB-1", p), (b"127.0.0.1", p)];

    let mut ssh = b.svc_session();
    let mut next_local = 0;
    let mut leaks = Vec::new();
    for (host, port) in &refused {
        next_local += 1;
        let shown = format!("{:?}:{port}", String::from_utf8_lossy(host));
        let reply = ssh
            .open_direct_tcpip(next_local, host, *port)
            .unwrap_or_else(|e| panic!("{shown}: the connection ended: {e}"));
        assert_eq!(
            reply[0],
            msg::CHANNEL_OPEN_FAILURE,
            "{shown} was let through to the echo target"
        );
        let text = open_failure_text(&reply);
        if !text.contains("is not allowed for svc") {
            leaks.push(format!("{shown}: {text:?}"));
        }
    }
    assert!(
        leaks.is_empty(),
        "refusals must all say the same \"is not allowed\" words:\n{}",
        leaks.join("\n")
    );
    assert_eq!(
        b.echo.connections(),
        0,
        "portvakt dialled the target for a refused request"
    );
    for (host, port) in &allowed {
        next_local += 1;
        let reply = ssh.open_direct_tcpip(next_local, host, *port).unwrap();
        let remote = confirmed_channel(&reply).unwrap_or_else(|| {
            panic!(
                "{:?}:{port} is allowed but was refused: {}",
                String::from_utf8_lossy(host),
                open_failure_text(&reply)
            )
        });
        ssh.channel_data(remote, b"ping").unwrap();
        let data = ssh.recv_skipping(|t| t == msg::CHANNEL_DATA).unwrap();
        assert!(data.ends_with(b"ping"), "no echo through {host:?}");
    }

    // A host that is not UTF-8 ends the connection (russh cannot decode
    // the request); nothing is dialled either way.
    let mut ssh = b.svc_session();
    match ssh.open_direct_tcpip(1, b"db-1\xff\xfe", p) {
        Ok(reply) => assert_eq!(reply[0], msg::CHANNEL_OPEN_FAILURE, "{reply:?}"),
        Err(_) => assert!(ssh.closed_within(DROP_WAIT)),
    }
    assert_eq!(b.echo.connections(), allowed.len() as u64);

    // Each refusal is audited as forward.denied with a policy reason.
    let denied = poll_until("every refusal to be audited", AUDIT_TIMEOUT, || {
        let d: Vec<AuditEvent> =
            b.pv.audit()
                .into_iter()
                .filter(|e| e.kind == "forward.denied")
                .collect();
        (d.len() >= refused.len()).then_some(d)
    });
    assert_eq!(denied.len(), refused.len(), "{denied:#?}");
    for e in &denied {
        let reason = e.reason.as_deref().unwrap_or_default();
        assert!(
            ["unknown_target", "address_not_allowed", "port_not_allowed"].contains(&reason),
            "unexpected refusal reason: {e:?}"
        );
        assert_eq!(e.detail_str("result"), Some("denied"), "{e:?}");
    }
    b.assert_survived();
}

#[test]
fn oversized_keyboard_interactive_answers_are_refused() {
    let carol = RawKey::generate();
    let mut b = Bastion::start(|c| c.user(raw_user("carol", &carol, "totp")));
    b.pv.cli(&["totp", "enroll", "carol", "--json"])
        .assert_success();
    let port = b.pv.port;

    // carol proves her key, then gets the TOTP prompt.
    let prompt = |b: &Bastion| -> RawSsh {
        let mut ssh = RawSsh::connect(b.pv.port);
        assert!(ssh.request_userauth().unwrap());
        let r = ssh.auth_publickey("carol", &carol).unwrap();
        assert_eq!(r[0], msg::USERAUTH_FAILURE, "key step: {r:?}");
        assert_eq!(r.last(), Some(&1), "partial success expected: {r:?}");
        let r = ssh.auth_keyboard_interactive("carol").unwrap();
        assert_eq!(r[0], msg::USERAUTH_INFO_REQUEST, "no TOTP prompt: {r:?}");
        ssh
    };

    // One answer of 200 KiB (fits in a packet): refused as a wrong code.
    let mut ssh = prompt(&b);
    ssh.send_info_response(&[vec![b'7'; 200 * 1024]]).unwrap();
    let r = ssh.next_auth_reply().unwrap();
    assert_eq!(r[0], msg::USERAUTH_FAILURE, "{r:?}");

    // 40 000 answers to one prompt (160 KiB: still one packet).
    let mut ssh = prompt(&b);
    let many: Vec<Vec<u8>> = vec![Vec::new(); 40_000];
    ssh.send_info_response(&many).unwrap();
    let r = ssh.next_auth_reply().unwrap();
    assert_eq!(r[0], msg::USERAUTH_FAILURE, "{r:?}");

    // An answer count of 4 billion with no answers behind it.
    let mut ssh = prompt(&b);
    ssh.send(&payload(&[
        &[msg::USERAUTH_INFO_RESPONSE],
        &u32be(u32::MAX),
    ]))
    .unwrap();
    match ssh.next_auth_reply() {
        Ok(r) => assert_eq!(r[0], msg::USERAUTH_FAILURE, "{r:?}"),
        Err(_) => assert!(ssh.closed_within(DROP_WAIT)),
    }

    // One answer of 1 MiB: more than a packet may hold; the connection ends.
    let mut ssh = prompt(&b);
    let _ = ssh.send_info_response(&[vec![b'9'; 1024 * 1024]]);
    assert!(
        ssh.closed_within(DROP_WAIT),
        "a 1 MiB keyboard-interactive answer did not end the connection"
    );

    // Answers without any prompt having been sent.
    let mut ssh = RawSsh::connect(port);
    assert!(ssh.request_userauth().unwrap());
    let _ = ssh.send_info_response(&[b"123456".to_vec()]);
    // A "none" request after it: its FAILURE comes after whatever the
    // server made of the unsolicited answer.
    let answers = ssh.answers_before(&attack::none_auth_request("carol"), |t| {
        t == msg::USERAUTH_FAILURE
    });
    assert!(
        !answers.any(|t| t == msg::USERAUTH_SUCCESS),
        "an unsolicited answer logged in: {answers:?}"
    );

    let events = b.pv.audit();
    let invalid = events
        .iter()
        .filter(|e| e.is("auth.failure", "totp_invalid"))
        .count();
    assert!(
        invalid >= 2,
        "wrong answers audited as totp_invalid: {invalid}"
    );
    assert_no_login(&b.pv);
    b.assert_survived();
}

#[test]
fn channel_messages_in_the_wrong_order_are_refused() {
    let mut b = Bastion::start(|c| c);
    let port = b.pv.port;
    let session_open = || {
        payload(&[
            &[msg::CHANNEL_OPEN],
            &string(b"session"),
            &u32be(0),
            &u32be(1 << 20),
            &u32be(1 << 15),
        ])
    };
    let direct_open = |p: u16| {
        payload(&[
            &[msg::CHANNEL_OPEN],
            &string(b"direct-tcpip"),
            &u32be(0),
            &u32be(1 << 20),
            &u32be(1 << 15),
            &string(b"db-1"),
            &u32be(u32::from(p)),
            &string(b"127.0.0.1"),
            &u32be(1),
        ])
    };
    let exec = |remote: u32| {
        payload(&[
            &[msg::CHANNEL_REQUEST],
            &u32be(remote),
            &string(b"exec"),
            &[1],
            &string(b"id"),
        ])
    };
    let granted = |t: u8| {
        matches!(
            t,
            msg::CHANNEL_OPEN_CONFIRMATION | msg::CHANNEL_SUCCESS | msg::CHANNEL_DATA
        )
    };

    // Before login: a session with exec, and a forward, both before and
    // after the ssh-userauth service request. Nothing may be granted.
    let mut attempts = Vec::new();
    for after_service_request in [false, true] {
        for open in [session_open(), direct_open(b.echo.port)] {
            let mut ssh = RawSsh::connect(port);
            if after_service_request {
                assert!(ssh.request_userauth().unwrap());
            }
            let _ = ssh.send(&open);
            let _ = ssh.send(&exec(0));
            let _ = ssh.send(&payload(&[
                &[msg::CHANNEL_DATA],
                &u32be(0),
                &string(b"data"),
            ]));
            attempts.push((after_service_request, ssh));
        }
    }
    // Each then sends a request the server answers before login; what it
    // answered to the messages above came before that answer.
    for (after_service_request, mut ssh) in attempts {
        let answers = if after_service_request {
            ssh.answers_before(&attack::none_auth_request("svc"), |t| {
                t == msg::USERAUTH_FAILURE
            })
        } else {
            ssh.answers_before(&attack::service_request("ssh-userauth"), |t| {
                t == msg::SERVICE_ACCEPT
            })
        };
        // (A server that ends the connection instead grants nothing either.)
        assert!(
            !answers.any(granted),
            "granted before login (service request: {after_service_request}): {answers:?}"
        );
    }
    // ssh-connection requested as a service before login, then
    // ssh-userauth: the first SERVICE_ACCEPT must name ssh-userauth.
    let mut ssh = RawSsh::connect(port);
    let _ = ssh.send(&attack::service_request("ssh-connection"));
    let _ = ssh.send(&attack::service_request("ssh-userauth"));
    // (A server that ends the connection instead accepts nothing either.)
    if let Ok(accept) = ssh.recv_skipping(|t| t == msg::SERVICE_ACCEPT) {
        let mut at = 1;
        let service = attack::read_string(&accept, &mut at).unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(service),
            "ssh-userauth",
            "ssh-connection accepted before login"
        );
    }
    assert_eq!(
        b.echo.connections(),
        0,
        "a forward was dialled before login"
    );

    // After login: data, requests, EOF and CLOSE for channels never opened.
    let mut ssh = b.svc_session();
    for m in [
        payload(&[&[msg::CHANNEL_DATA], &u32be(0), &string(b"early data")]),
        payload(&[&[msg::CHANNEL_DATA], &u32be(77), &string(b"data")]),
        exec(5),
        payload(&[&[msg::CHANNEL_REQUEST], &u32be(9), &string(b"shell"), &[1]]),
        payload(&[&[msg::CHANNEL_WINDOW_ADJUST], &u32be(3), &u32be(u32::MAX)]),
        payload(&[&[msg::CHANNEL_EOF], &u32be(4)]),
        payload(&[&[msg::CHANNEL_CLOSE], &u32be(6)]),
        payload(&[
            &[msg::CHANNEL_OPEN_CONFIRMATION],
            &u32be(1),
            &u32be(1),
            &u32be(1),
            &u32be(1),
        ]),
        vec![199, 1, 2, 3],
    ] {
        if ssh.send(&m).is_err() {
            break;
        }
    }
    let answers = ssh.answers_before(&attack::keepalive_request(), |t| {
        t == msg::REQUEST_FAILURE || t == msg::REQUEST_SUCCESS
    });
    assert!(
        !answers.any(|t| t == msg::CHANNEL_SUCCESS || t == msg::CHANNEL_DATA),
        "a request on an unopened channel was granted: {answers:?}"
    );

    // A session channel: the shell request gets the help text and the
    // channel closes; a second shell, an exec and data on it get nothing.
    let mut ssh = b.svc_session();
    let reply = ssh.channel_open("session", 0, &[]).unwrap();
    let remote = confirmed_channel(&reply).expect("a session channel opens");
    ssh.channel_request(remote, "shell", true, &[]).unwrap();
    ssh.recv_skipping(|t| t == msg::CHANNEL_CLOSE).unwrap();
    let _ = ssh.channel_request(remote, "shell", true, &[]);
    let _ = ssh.send(&exec(remote));
    let _ = ssh.channel_data(remote, b"rm -rf /\n");
    let _ = ssh.channel_request(remote, "subsystem", true, &string(b"sftp"));
    let answers = ssh.answers_before(&attack::keepalive_request(), |t| {
        t == msg::REQUEST_FAILURE || t == msg::REQUEST_SUCCESS
    });
    assert!(
        answers.ended.is_none() && !answers.any(|t| t == msg::CHANNEL_SUCCESS),
        "a request after the channel closed was granted, or ended the connection: {answers:?}"
    );
    // Requests that are always refused, on a fresh session channel (the
    // subsystem refusal closes the channel, so it comes last).
    let reply = ssh.channel_open("session", 1, &[]).unwrap();
    let remote = confirmed_channel(&reply).expect("a second session channel opens");
    let x11 = payload(&[
        &[0],
        &string(b"MIT-MAGIC-COOKIE-1"),
        &string(b"00"),
        &u32be(0),
    ]);
    for (kind, extra) in [
        ("x11-req", x11),
        ("auth-agent-req@openssh.com", Vec::new()),
        ("subsystem", string(b"sftp")),
    ] {
        ssh.channel_request(remote, kind, true, &extra).unwrap();
        let r = ssh
            .recv_skipping(|t| t == msg::CHANNEL_SUCCESS || t == msg::CHANNEL_FAILURE)
            .unwrap();
        assert_eq!(r[0], msg::CHANNEL_FAILURE, "{kind} was granted");
    }
    // Remote forwarding (a global request) and a streamlocal channel.
    let _ = ssh.send(&payload(&[
        &[msg::GLOBAL_REQUEST],
        &string(b"tcpip-forward"),
        &[1],
        &string(b"0.0.0.0"),
        &u32be(0),
    ]));
    let r = ssh
        .channel_open(
            "direct-streamlocal@openssh.com",
            2,
            &payload(&[&string(b"/run/docker.sock"), &string(b""), &u32be(0)]),
        )
        .unwrap();
    assert_eq!(r[0], msg::CHANNEL_OPEN_FAILURE, "streamlocal opened: {r:?}");
    // A second userauth after login, and a re-key with a broken KEXINIT.
    let _ = ssh.auth_password("root", b"toor");
    let _ = ssh.send(&payload(&[
        &[msg::KEXINIT],
        &random_bytes(16),
        &u32be(u32::MAX),
    ]));
    assert!(
        ssh.closed_within(DROP_WAIT),
        "a broken KEXINIT after login did not end the connection"
    );
    assert_eq!(b.echo.connections(), 0, "nothing was dialled");

    // The refusals that portvakt audits.
    for reason in [
        "shell_refused",
        "subsystem_refused",
        "x11_refused",
        "agent_forward_refused",
        "remote_forward_refused",
        "streamlocal_refused",
    ] {
        b.pv.wait_for_event("channel.refused", reason);
    }
    assert!(
        !b.pv
            .audit()
            .iter()
            .any(|e| e.kind == "auth.success" && e.user.as_deref() == Some("root")),
        "root logged in"
    );
    b.assert_survived();
}

/// svc logs in with the raw client from 127.0.0.`n` and opens a forward
/// to `target`; the session, the server's channel id, and the window and
/// maximum packet size the server granted.
fn svc_forward(b: &Bastion, n: u8, target: &str, port: u16) -> (RawSsh, u32, u32, u32) {
    let mut ssh = RawSsh::connect_from(loopback(n), b.pv.port)
        .unwrap_or_else(|g| panic!("no SSH session: {g:?}"));
    assert!(ssh.request_userauth().unwrap(), "ssh-userauth refused");
    let reply = ssh.auth_publickey("svc", &b.svc).unwrap();
    assert_eq!(reply[0], msg::USERAUTH_SUCCESS, "svc login failed");
    let reply = ssh
        .open_direct_tcpip(0, target.as_bytes(), port as u32)
        .unwrap();
    let remote = confirmed_channel(&reply)
        .unwrap_or_else(|| panic!("{target} refused: {}", open_failure_text(&reply)));
    let (window, max_packet) = attack::confirmed_window(&reply).unwrap();
    (ssh, remote, window, max_packet)
}

/// Issue 10, item 3: a client that ignores the channel receive window once
/// grew portvakt by 200 MB per connection, and the stuck sessions outlived
/// the clients. Data past the granted window, or in a packet above the
/// advertised maximum, must end that connection at once with an audited
/// reason; memory stays bounded while it happens, and others are still
/// served.
#[test]
fn a_client_that_ignores_the_channel_window_is_disconnected() {
    /// portvakt's whole resident memory during the attack.
    const RSS_LIMIT_KIB: u64 = 64 * 1024;
    /// Data messages per flooding connection: 32 KiB each, 37.5 MiB in all.
    const FLOOD_PACKETS: usize = 1200;
    const FLOODERS: u8 = 3;

    let sink = StallServer::start();
    let sink_port = sink.port();
    let mut b = Bastion::start(|c| {
        c.target(Target::host("sink", "127.0.0.1", sink_port).allow_users(&["svc"]))
    });
    let pid = b.pv.pid();

    // Sample portvakt's memory all through the attack.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(Ordering::SeqCst) {
                // Gone: a failed test dropped portvakt.
                let Some(rss) = attack::try_vm_rss_kib(pid) else {
                    break;
                };
                peak = peak.max(rss);
                thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };

    // Several connections at once flood full-size packets and never look
    // at a window adjustment.
    let started = Instant::now();
    let floods: Vec<_> = (0..FLOODERS)
        .map(|i| {
            let (mut ssh, remote, window, max_packet) = svc_forward(&b, 40 + i, "sink", sink_port);
            assert_eq!(max_packet, 32 * 1024, "advertised maximum packet size");
            thread::spawn(move || {
                let sent =
                    ssh.flood_channel_data(remote, max_packet as usize, FLOOD_PACKETS, DROP_WAIT);
                (sent, window, ssh.closed_within(DROP_WAIT))
            })
        })
        .collect();
    for flood in floods {
        let (sent, window, closed) = flood.join().expect("flood thread");
        assert!(closed, "still open after the client ignored the window");
        assert!(
            sent < FLOOD_PACKETS * 32 * 1024,
            "the server took all {sent} bytes (window {window})"
        );
        eprintln!("flood: {sent} bytes sent before the server closed (window {window})");
    }
    // One packet above the advertised maximum, well inside the window.
    let (mut ssh, remote, window, max_packet) = svc_forward(&b, 40 + FLOODERS, "sink", sink_port);
    assert!(max_packet < window);
    ssh.channel_data(remote, &vec![b'x'; max_packet as usize + 1])
        .unwrap();
    assert!(
        ssh.closed_within(DROP_WAIT),
        "still open after an oversized data packet"
    );
    let elapsed = started.elapsed();

    // Each connection was closed for what it did, not by a timer. (The
    // harness's own readiness probe adds a close of its own.)
    let count = |reasons: &[String], reason: &str| reasons.iter().filter(|r| *r == reason).count();
    let reasons = poll_for(AUDIT_TIMEOUT, || {
        let r = b.close_reasons();
        (count(&r, "window_exceeded") + count(&r, "packet_too_large") > FLOODERS as usize)
            .then_some(r)
    })
    .unwrap_or_else(|| panic!("closes not audited: {:?}", b.close_reasons()));
    assert_eq!(
        count(&reasons, "window_exceeded"),
        FLOODERS as usize,
        "{reasons:?}"
    );
    assert_eq!(count(&reasons, "packet_too_large"), 1, "{reasons:?}");
    assert!(
        elapsed < Duration::from_secs(30),
        "the attack took {elapsed:?} to be stopped"
    );
    // The forwards to the sink ended with their connections (the sink
    // still holds its sockets open and reads nothing).
    let rows = poll_until("the sink forwards to end", AUDIT_TIMEOUT, || {
        let rows: Vec<SessionRow> =
            b.pv.sessions()
                .into_iter()
                .filter(|r| r.target.as_deref() == Some("sink"))
                .collect();
        (rows.len() == FLOODERS as usize + 1 && rows.iter().all(|r| r.ended_at.is_some()))
            .then_some(rows)
    });
    for r in &rows {
        assert_eq!(
            r.close_reason.as_deref(),
            Some("connection_closed"),
            "{r:?}"
        );
    }
    assert_eq!(sink.server.connections(), FLOODERS as u64 + 1);

    sampling.store(false, Ordering::SeqCst);
    let peak = sampler.join().expect("sampler");
    eprintln!(
        "portvakt VmRSS: {} KiB before, {peak} KiB at the peak of the attack",
        b.rss_before
    );
    assert!(
        peak < RSS_LIMIT_KIB,
        "portvakt reached {peak} KiB during the attack (limit {RSS_LIMIT_KIB} KiB)"
    );
    // alice still logs in and forwards.
    b.assert_survived();
}

/// Issue 10, item 3: a write towards a target that stopped reading times
/// out. The client keeps to its window, the target talks (so the forward
/// is never idle) but reads nothing: once the socket buffers are full the
/// forward ends with `write_timeout` (the idle timeout, 5 s here, being
/// shorter than forward::WRITE_TIMEOUT), and the connection goes on.
#[test]
fn a_forward_whose_target_stops_reading_ends_after_the_write_timeout() {
    let sink = StallServer::talking(Duration::from_millis(500));
    let sink_port = sink.port();
    let mut b = Bastion::start(|c| {
        c.idle_timeout("5s")
            .target(Target::host("sink", "127.0.0.1", sink_port).allow_users(&["svc"]))
    });
    let (mut ssh, remote, window, _) = svc_forward(&b, 50, "sink", sink_port);
    let started = Instant::now();
    let sent = ssh.send_within_window(remote, window, Duration::from_secs(30));
    let elapsed = started.elapsed();
    eprintln!("sent {sent} bytes within the window; the forward ended after {elapsed:?}");
    assert!(
        ssh.skipped.iter().any(|m| m[0] == msg::CHANNEL_CLOSE),
        "the server did not close the forward"
    );
    assert!(
        ssh.skipped.iter().any(|m| m[0] == msg::CHANNEL_DATA),
        "the target's bytes never arrived"
    );
    let row = b.pv.wait_for_session("the sink forward to end", |r| {
        r.target.as_deref() == Some("sink") && r.ended_at.is_some()
    });
    assert_eq!(
        row.close_reason.as_deref(),
        Some("write_timeout"),
        "{row:?}"
    );
    assert!(row.bytes_to_target < sent as u64, "{row:?}");
    assert!(elapsed < Duration::from_secs(25), "{elapsed:?}");
    // Only the forward ended: the connection still opens channels.
    let reply = ssh
        .open_direct_tcpip(1, b"db-1", b.echo.port as u32)
        .unwrap();
    let remote = confirmed_channel(&reply).expect("db-1 opens after the stuck forward");
    ssh.channel_data(remote, b"ping").unwrap();
    let echo = ssh.recv_skipping(|t| t == msg::CHANNEL_DATA).unwrap();
    assert!(echo.ends_with(b"ping"), "{echo:?}");
    b.assert_survived();
}

/// A user name of 100 kB (the SSH packet allows it) is stored cut to 64
/// characters and marked, so no database index refuses the failure row:
/// the failures are counted and the source is banned, on SQLite and on
/// PostgreSQL alike.
#[test]
fn a_hundred_kilobyte_user_name_is_counted_and_banned() {
    let b = Bastion::start(|c| c.lockout(3, "10m", "15m"));
    let huge = "x".repeat(100_000);
    for _ in 0..3 {
        let Ok(mut ssh) = RawSsh::connect_from(loopback(4), b.pv.port) else {
            break;
        };
        assert!(ssh.request_userauth().unwrap());
        let reply = ssh.auth_password(&huge, b"guess").unwrap();
        assert_eq!(reply[0], msg::USERAUTH_FAILURE);
    }
    let ban =
        b.pv.wait_for_audit("lockout.ban", |e| e.kind == "lockout.ban");
    assert_eq!(ban.detail_str("banned"), Some("127.0.0.4"), "{ban:?}");
    let failures: Vec<AuditEvent> =
        b.pv.audit()
            .into_iter()
            .filter(|e| e.is("auth.failure", "invalid_user_name"))
            .collect();
    assert_eq!(failures.len(), 3, "{failures:?}");
    for f in &failures {
        let user = f.user.as_deref().unwrap_or_default();
        assert_eq!(user.chars().count(), 64, "{user}");
        assert!(user.ends_with('…'), "a cut name is marked: {user}");
        assert_eq!(f.detail["counts"], true, "{f:?}");
    }
}

/// One client sending 100,000 requests portvakt refuses cannot crowd other
/// users' rows out of the audit trail: its refusals are aggregated (one row
/// at once, one with the count when it leaves), and every login of another
/// user made meanwhile is stored.
#[test]
fn a_flood_of_refused_requests_crowds_out_no_other_row() {
    let mut b = Bastion::start(|c| c);
    const FLOOD: u32 = 100_000;
    let mut flooder = b.svc_session();
    let flood = thread::spawn(move || {
        for i in 0..FLOOD {
            let request = payload(&[
                &[msg::GLOBAL_REQUEST],
                &string(b"tcpip-forward"),
                &[0],
                &string(b"0.0.0.0"),
                &u32be(1024 + i % 1000),
            ]);
            flooder.send(&request).expect("send a refused request");
        }
        flooder
    });
    for _ in 0..3 {
        assert_echo_works(&b.alice(), "db-1", b.echo.port);
    }
    let flooder = flood.join().expect("the flood thread");
    for _ in 0..2 {
        assert_echo_works(&b.alice(), "db-1", b.echo.port);
    }
    poll_until("alice's five logins", AUDIT_TIMEOUT, || {
        let n =
            b.pv.audit()
                .iter()
                .filter(|e| e.kind == "auth.success" && e.user.as_deref() == Some("alice"))
                .count();
        (n >= 5).then_some(())
    });
    drop(flooder);
    let summary = b.pv.wait_for_audit("the flood's summary row", |e| {
        e.is("channel.refused", "remote_forward_refused") && e.detail.get("repeated").is_some()
    });
    let refused: Vec<AuditEvent> =
        b.pv.audit()
            .into_iter()
            .filter(|e| e.is("channel.refused", "remote_forward_refused"))
            .collect();
    assert_eq!(
        refused.len(),
        2,
        "one row at once, one summary: {}",
        refused.len()
    );
    // The server may still have been reading when the client left; it
    // cannot have counted more than was sent.
    let repeated = summary.detail["repeated"].as_u64().unwrap();
    assert!(
        repeated > u64::from(FLOOD) / 2 && repeated < u64::from(FLOOD),
        "{summary:?}"
    );
    b.assert_survived();
}

/// A FIDO key (`sk-ssh-ed25519@openssh.com`) of a service account logs in
/// only when its signature says somebody touched it. Without, russh refuses
/// the signature (patch 7) and portvakt audits `sk_user_presence_missing`,
/// counted towards bans like any signed attempt (security review A.13).
#[test]
fn a_fido_key_logs_in_only_with_user_presence() {
    let fido = RawSkKey::generate();
    let b = Bastion::start(|c| {
        c.user(User {
            name: "ci".to_string(),
            groups: Vec::new(),
            keys: vec![fido.public_line()],
            mfa: Some("none".to_string()),
        })
    });
    let mut ssh = RawSsh::connect_from(loopback(6), b.pv.port).unwrap();
    assert!(ssh.request_userauth().unwrap());
    let untouched = ssh.auth_publickey_sk("ci", &fido, 0x00).unwrap();
    assert_eq!(untouched[0], msg::USERAUTH_FAILURE, "{untouched:?}");
    // User verification (a PIN) without a touch is still no presence.
    let verified_only = ssh.auth_publickey_sk("ci", &fido, 0x04).unwrap();
    assert_eq!(verified_only[0], msg::USERAUTH_FAILURE, "{verified_only:?}");
    let touched = ssh
        .auth_publickey_sk("ci", &fido, RawSkKey::USER_PRESENT)
        .unwrap();
    assert_eq!(touched[0], msg::USERAUTH_SUCCESS, "{touched:?}");

    let login = b.pv.wait_for_audit("ci's login", |e| {
        e.kind == "auth.success" && e.user.as_deref() == Some("ci")
    });
    assert!(login.detail_str("key_fingerprint").is_some(), "{login:?}");
    let refusals: Vec<AuditEvent> =
        b.pv.audit()
            .into_iter()
            .filter(|e| e.is("auth.failure", "sk_user_presence_missing"))
            .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    for r in &refusals {
        assert_eq!(r.user.as_deref(), Some("ci"), "{r:?}");
        assert_eq!(r.detail_str("method"), Some("publickey"), "{r:?}");
        assert_eq!(r.detail["counts"], true, "{r:?}");
        assert_eq!(
            r.detail_str("key_fingerprint"),
            login.detail_str("key_fingerprint"),
            "{r:?} {login:?}"
        );
    }
}

/// A signature that does not verify was refused by russh without a word to
/// portvakt (security review B.6). Now it is audited as `signature_invalid`
/// and counts: with `max_failures = 3`, the third bans the source, and only
/// that source.
#[test]
fn bad_signatures_are_audited_and_ban_the_source() {
    let b = Bastion::start(|c| c.lockout(3, "10m", "15m"));
    let mut ssh = RawSsh::connect_from(loopback(5), b.pv.port).unwrap();
    assert!(ssh.request_userauth().unwrap());
    for attempt in 1..=3 {
        match ssh.auth_publickey_bad_signature("svc", &b.svc) {
            Ok(reply) => assert_eq!(reply[0], msg::USERAUTH_FAILURE, "attempt {attempt}"),
            // The ban may end the connection before the last answer.
            Err(e) => assert_eq!(attempt, 3, "attempt {attempt}: {e}"),
        }
    }
    let ban =
        b.pv.wait_for_audit("lockout.ban", |e| e.kind == "lockout.ban");
    assert_eq!(ban.detail_str("banned"), Some("127.0.0.5"), "{ban:?}");
    let failures: Vec<AuditEvent> =
        b.pv.audit()
            .into_iter()
            .filter(|e| e.is("auth.failure", "signature_invalid"))
            .collect();
    assert_eq!(failures.len(), 3, "{failures:?}");
    for f in &failures {
        assert_eq!(f.user.as_deref(), Some("svc"), "{f:?}");
        assert_eq!(f.detail["counts"], true, "{f:?}");
    }
    // The banned source gets no version line; others still log in.
    assert!(!attack::greeting_from(loopback(5), b.pv.port).is_banner());
    drop(b.svc_session());
}

/// Host-based authentication (a client host's key vouching for its users)
/// is never accepted, whatever the request carries; the methods offered
/// after it do not list it.
#[test]
fn host_based_logins_are_refused() {
    let b = Bastion::start(|c| c);
    let host_key = RawKey::generate();
    let mut ssh = RawSsh::connect(b.pv.port);
    assert!(ssh.request_userauth().unwrap());
    ssh.send(&payload(&[
        &[msg::USERAUTH_REQUEST],
        &string(b"svc"),
        &string(b"ssh-connection"),
        &string(b"hostbased"),
        &string(b"ssh-ed25519"),
        &string(&host_key.blob()),
        &string(b"client.example."),
        &string(b"svc"),
        &string(&[0u8; 83]),
    ]))
    .unwrap();
    let reply = ssh
        .recv_skipping(|t| matches!(t, msg::USERAUTH_SUCCESS | msg::USERAUTH_FAILURE))
        .unwrap();
    assert_eq!(
        reply[0],
        msg::USERAUTH_FAILURE,
        "a host-based login was accepted"
    );
    let mut at = 1;
    let methods = attack::read_string(&reply, &mut at).expect("method list");
    let methods = String::from_utf8_lossy(methods);
    assert!(!methods.contains("hostbased"), "offered: {methods}");
    // The same connection still logs in the normal way.
    let ok = ssh.auth_publickey("svc", &b.svc).unwrap();
    assert_eq!(ok[0], msg::USERAUTH_SUCCESS);
}

/// The default config offers the post-quantum hybrid only: a client that
/// speaks nothing but curve25519 gets no session, and its close row says
/// the handshake failed. `[server] classic_kex = true` (for OpenSSH older
/// than 8.5) lets the very same client in. The one classic-KEX case: every
/// other attack here runs over the default mlkem768x25519-sha256.
#[test]
fn a_curve25519_only_client_gets_in_only_with_classic_kex() {
    let b = Bastion::start(|c| c.login_grace_time(LONG_GRACE));
    match RawSsh::connect_with(loopback(7), b.pv.port, Kex::Curve25519) {
        Err(Handshake::KeyExchange(e)) => eprintln!("curve25519 only, default config: {e}"),
        Err(other) => panic!("no key exchange was even tried: {other:?}"),
        Ok(_) => panic!("the default config negotiated curve25519-sha256"),
    }
    check_close_row(&b, loopback(7), "protocol_error").unwrap();

    let classic = Bastion::start(|c| c.classic_kex());
    let mut ssh = RawSsh::connect_with(loopback(7), classic.pv.port, Kex::Curve25519)
        .unwrap_or_else(|e| panic!("curve25519 with classic_kex: {e:?}"));
    assert!(ssh.request_userauth().unwrap(), "ssh-userauth refused");
    let reply = ssh.auth_publickey("svc", &classic.svc).unwrap();
    assert_eq!(reply[0], msg::USERAUTH_SUCCESS, "svc login failed");
    // And the hybrid still works there too.
    drop(classic.svc_session());
}
