//! Certificate logins (issue 2, item 4): a certificate from a trusted CA gets
//! an engineer through `ssh -J` to a real sshd; every way a certificate can be
//! wrong is refused and audited with its reason.

mod common;

use common::*;

/// A bastion trusting `ca`, with an echo target "echo" that alice may use.
fn bastion(env: &TestEnv, ca: &UserCa, echo: &TcpServer) -> Portvakt {
    env.portvakt(
        &Config::new()
            .trust(ca)
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["alice"])),
    )
}

/// Tries to log in as `user` with `key` (and the certificate beside it).
fn login(env: &TestEnv, pv: &Portvakt, user: &str, key: &UserKey) -> RunOutput {
    env.client(pv, user).identity(key).run(&[BASTION, "true"])
}

#[test]
fn certificate_login_reaches_an_allowed_sshd_target_through_proxyjump() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let alice = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]));
    let login_user = target_login_user();
    let target_key = env.key("target_key");
    let sshd = Sshd::start(env.path(), &[&target_key], None);
    let pv = env.portvakt(
        &Config::new()
            .trust(&ca)
            .target(Target::host("db-1", "127.0.0.1", sshd.port).allow_users(&["alice"])),
    );

    let out = env
        .client(&pv, "alice")
        .identity(&alice)
        .target("db-1", &sshd, &login_user, &target_key)
        .run(&["db-1", "echo", "hello"]);

    out.assert_success();
    assert_eq!(out.stdout_text(), "hello\n");

    let success = pv.wait_for_audit("auth.success for alice", |e| {
        e.kind == "auth.success" && e.user.as_deref() == Some("alice")
    });
    assert_eq!(
        success.detail_str("method"),
        Some("certificate"),
        "{success:?}"
    );

    let row = pv.wait_for_session("db-1 forward closed", |r| {
        r.target.as_deref() == Some("db-1") && r.ended_at.is_some()
    });
    assert_eq!(row.user.as_deref(), Some("alice"));
    assert_eq!(row.auth_method.as_deref(), Some("certificate"));
    assert_eq!(row.result, "allowed");
    assert_eq!(row.reason, None);
    assert_eq!(row.host, "db-1");
    assert_eq!(row.port, sshd.port);
    assert_eq!(
        row.address,
        Some(format!("127.0.0.1:{}", sshd.port)),
        "the address dialled: {row:?}"
    );
    assert!(
        row.source
            .as_deref()
            .is_some_and(|s| s.starts_with("127.0.0.1:")),
        "source should be ip:port: {row:?}"
    );
    // `ssh -J`'s jump hop (`ssh -W`) ends by dropping its connection, often
    // before the target's end reached portvakt: either way a normal end.
    assert!(
        matches!(
            row.close_reason.as_deref(),
            Some("closed" | "connection_closed")
        ),
        "{row:?}"
    );
    // An SSH session to the target went through: both directions carried bytes.
    assert!(
        row.bytes_to_target > 0 && row.bytes_from_target > 0,
        "{row:?}"
    );

    pv.wait_for_audit("forward.open for db-1", |e| e.kind == "forward.open");
    pv.wait_for_audit("connection.open", |e| e.kind == "connection.open");
    pv.wait_for_event("connection.close", "client_closed");

    // The JSON carries every documented key, null or not.
    for row in pv.sessions_json(&[]) {
        for key in SESSION_KEYS {
            assert!(row.get(key).is_some(), "sessions row lacks {key}: {row}");
        }
    }
    for event in pv.audit_json() {
        for key in AUDIT_KEYS {
            assert!(event.get(key).is_some(), "audit event lacks {key}: {event}");
        }
    }
}

#[test]
fn certificate_from_an_untrusted_ca_is_refused() {
    let env = TestEnv::new();
    let trusted = env.ca("trusted_ca");
    let rogue = env.ca("rogue_ca");
    let echo = EchoServer::start();
    let pv = bastion(&env, &trusted, &echo);
    let key = env.signed_key(&rogue, "alice", &CertSpec::user(&["alice"]));

    let out = login(&env, &pv, "alice", &key);

    assert_refused_and_audited(&pv, &out, "alice", "certificate_untrusted_ca");
}

#[test]
fn certificate_for_another_principal_is_refused() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let echo = EchoServer::start();
    let pv = bastion(&env, &ca, &echo);
    let key = env.signed_key(&ca, "bobs", &CertSpec::user(&["bob"]));

    let out = login(&env, &pv, "alice", &key);

    assert_refused_and_audited(&pv, &out, "alice", "certificate_principal_mismatch");
}

#[test]
fn expired_certificate_is_refused() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let echo = EchoServer::start();
    let pv = bastion(&env, &ca, &echo);
    let key = env.signed_key(
        &ca,
        "alice",
        &CertSpec::user(&["alice"]).validity("20200101:20200102"),
    );

    let out = login(&env, &pv, "alice", &key);

    assert_refused_and_audited(&pv, &out, "alice", "certificate_expired");
}

#[test]
fn not_yet_valid_certificate_is_refused() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let echo = EchoServer::start();
    let pv = bastion(&env, &ca, &echo);
    let key = env.signed_key(
        &ca,
        "alice",
        &CertSpec::user(&["alice"]).validity("+1d:+2d"),
    );

    let out = login(&env, &pv, "alice", &key);

    assert_refused_and_audited(&pv, &out, "alice", "certificate_not_yet_valid");
}

#[test]
fn host_certificate_is_refused_as_a_user_login() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let echo = EchoServer::start();
    let pv = bastion(&env, &ca, &echo);
    let key = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]).host());
    // The OpenSSH client will not offer a host certificate from a file; an
    // agent offers whatever it holds.
    let agent = SshAgent::start(env.path());
    agent.add(&key);

    let out = env
        .client(&pv, "alice")
        .agent(&agent)
        .run(&[BASTION, "true"]);

    assert_refused_and_audited(&pv, &out, "alice", "certificate_not_user");
}

#[test]
fn certificate_bound_to_another_source_address_is_refused() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let echo = EchoServer::start();
    let pv = bastion(&env, &ca, &echo);
    let key = env.signed_key(
        &ca,
        "alice",
        &CertSpec::user(&["alice"]).option("source-address=10.9.9.9/32"),
    );

    let out = login(&env, &pv, "alice", &key);

    assert_refused_and_audited(&pv, &out, "alice", "certificate_source_address");
}

#[test]
fn certificate_with_a_matching_source_address_logs_in() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let echo = EchoServer::start();
    let pv = bastion(&env, &ca, &echo);
    let key = env.signed_key(
        &ca,
        "alice",
        &CertSpec::user(&["alice"]).option("source-address=10.9.9.9/32,127.0.0.0/8"),
    );

    assert_echo_works(&env.client(&pv, "alice").identity(&key), "echo", echo.port);
}

#[test]
fn certificate_with_another_critical_option_is_refused() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let echo = EchoServer::start();
    let pv = bastion(&env, &ca, &echo);
    let key = env.signed_key(
        &ca,
        "alice",
        &CertSpec::user(&["alice"]).option("force-command=/bin/true"),
    );

    let out = login(&env, &pv, "alice", &key);

    assert_refused_and_audited(&pv, &out, "alice", "certificate_critical_option");
}

#[test]
fn certificate_revoked_by_serial_in_a_krl_is_refused() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let echo = EchoServer::start();
    let revoked = env.signed_key(&ca, "revoked", &CertSpec::user(&["alice"]).serial(42));
    let current = env.signed_key(&ca, "current", &CertSpec::user(&["alice"]).serial(43));
    let krl = env.path().join("revoked.krl");
    ca.write_krl_serials(&krl, &[42]);
    let pv = env.portvakt(
        &Config::new()
            .trust(&ca)
            .revoked_keys(&krl)
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["alice"])),
    );

    let out = login(&env, &pv, "alice", &revoked);

    assert_refused_and_audited(&pv, &out, "alice", "certificate_revoked");
    // The KRL names serial 42 only: the CA's other certificates still work.
    assert_echo_works(
        &env.client(&pv, "alice").identity(&current),
        "echo",
        echo.port,
    );
}

#[test]
fn certificate_whose_key_is_listed_in_revoked_keys_is_refused() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let echo = EchoServer::start();
    let revoked = env.signed_key(&ca, "revoked", &CertSpec::user(&["alice"]));
    let current = env.signed_key(&ca, "current", &CertSpec::user(&["alice"]));
    let list = env.write("revoked_keys", format!("{}\n", revoked.public_line()));
    let pv = env.portvakt(
        &Config::new()
            .trust(&ca)
            .revoked_keys(&list)
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["alice"])),
    );

    let out = login(&env, &pv, "alice", &revoked);

    assert_refused_and_audited(&pv, &out, "alice", "key_revoked");
    assert_echo_works(
        &env.client(&pv, "alice").identity(&current),
        "echo",
        echo.port,
    );
}

/// Any u64 is a legal `valid_before` on the wire. One past i64::MAX seconds
/// (found by the `certificate` fuzz target) used to panic the connection's
/// task at the key probe, before the client even proved it held the key;
/// one past the year 9999 made the session text unprintable. Both are "valid
/// forever" now, capped like any login by `sessions.max_duration`.
#[test]
fn certificate_valid_beyond_the_year_9999_logs_in_without_a_panic() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let echo = EchoServer::start();
    let pv = bastion(&env, &ca, &echo);
    for (name, until) in [
        ("past_i64", "0x8000000000000001"),
        ("year_10000", "0x3b02039980"),
    ] {
        let key = env.signed_key(
            &ca,
            name,
            &CertSpec::user(&["alice"]).validity(&format!("-5m:{until}")),
        );
        let client = env.client(&pv, "alice").identity(&key);
        assert_echo_works(&client, "echo", echo.port);
        let out = client.run(&[BASTION]);
        out.assert_code(1);
        assert!(
            out.stderr.contains("You are alice (login: certificate)")
                && out.stderr.contains("Your login has no expiry of its own."),
            "{out}"
        );
    }
    assert!(!pv.log().contains("panicked"), "{}", pv.log());
}
