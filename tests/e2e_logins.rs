//! Logins other than a good certificate (issue 2, item 4): service-account
//! keys, keys that need TOTP, weak signatures, unknown keys, denied users and
//! the per-connection attempt limit.

mod common;

use std::io::Read;
use std::net::TcpStream;

use common::*;
use common::{proc, raw_client};

#[test]
fn service_account_key_logs_in_without_mfa() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let key = env.key("svc");
    let echo = EchoServer::start();
    let pv = env.portvakt(
        &Config::new()
            .trust(&ca)
            .user(User::service("svc", &key))
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["svc"])),
    );

    assert_echo_works(&env.client(&pv, "svc").identity(&key), "echo", echo.port);

    let success = pv.wait_for_audit("auth.success for svc", |e| {
        e.kind == "auth.success" && e.user.as_deref() == Some("svc")
    });
    assert_eq!(
        success.detail_str("method"),
        Some("publickey"),
        "{success:?}"
    );
    let row = pv.wait_for_session("svc's forward", |r| r.user.as_deref() == Some("svc"));
    assert_eq!(row.auth_method.as_deref(), Some("publickey"), "{row:?}");
    assert_eq!(row.result, "allowed", "{row:?}");
}

#[test]
fn service_account_key_is_refused_under_another_user_name() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let key = env.key("svc");
    let echo = EchoServer::start();
    let pv = env.portvakt(
        &Config::new()
            .trust(&ca)
            .user(User::service("svc", &key))
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["svc", "other"])),
    );

    let out = env
        .client(&pv, "other")
        .identity(&key)
        .run(&[BASTION, "true"]);

    assert_refused_and_audited(&pv, &out, "other", "unknown_key");
}

#[test]
fn key_of_a_totp_user_alone_does_not_log_in() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let key = env.key("carol");
    let echo = EchoServer::start();
    let pv = env.portvakt(
        &Config::new()
            .trust(&ca)
            .user(User::totp("carol", &key))
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["carol"])),
    );

    // BatchMode: the client can answer no TOTP prompt, so the key is all it has.
    let out = env
        .client(&pv, "carol")
        .identity(&key)
        .run(&[BASTION, "true"]);

    assert_login_refused(&out);
    let failure = pv.wait_for_audit("auth.failure for carol", |e| {
        e.kind == "auth.failure" && e.user.as_deref() == Some("carol")
    });
    assert!(
        matches!(
            failure.reason.as_deref(),
            // Refused outright (no TOTP step), or the key was a first
            // factor and the client left without the second.
            Some("totp_required" | "totp_not_enrolled" | "login_incomplete")
        ),
        "carol's key alone should be refused for want of TOTP: {failure:?}"
    );
    assert_no_login(&pv);
}

/// A bastion with the RSA service account "svc-rsa" and an echo target for it.
fn rsa_bastion(env: &TestEnv, key: &UserKey, echo: &TcpServer) -> Portvakt {
    let ca = env.ca("user_ca");
    env.portvakt(
        &Config::new()
            .trust(&ca)
            .user(User::service("svc-rsa", key))
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["svc-rsa"])),
    )
}

#[test]
fn openssh_client_limited_to_ssh_rsa_cannot_log_in() {
    let env = TestEnv::new();
    let key = env.rsa_key("svc-rsa");
    let echo = EchoServer::start();
    let pv = rsa_bastion(&env, &key, &echo);

    let out = env
        .client(&pv, "svc-rsa")
        .identity(&key)
        .bastion_option("PubkeyAcceptedAlgorithms ssh-rsa")
        .run(&[BASTION, "true"]);

    // portvakt does not offer ssh-rsa in server-sig-algs, so OpenSSH gives up
    // before signing; the attempt that reaches portvakt is tested below.
    assert_login_refused(&out);
    assert_no_login(&pv);
}

#[test]
fn ssh_rsa_sha1_signature_is_refused_and_audited_as_weak_algorithm() {
    let env = TestEnv::new();
    let key = env.rsa_key("svc-rsa");
    let echo = EchoServer::start();
    let pv = rsa_bastion(&env, &key, &echo);

    let accepted = raw_client::ssh_rsa_sha1_login(pv.port, &pv.host_key, "svc-rsa", &key);

    assert!(!accepted, "portvakt accepted an ssh-rsa (SHA-1) signature");
    let event = pv.wait_for_event("auth.failure", "weak_algorithm");
    assert_eq!(event.user.as_deref(), Some("svc-rsa"), "{event:?}");
    assert_no_login(&pv);
    // The key itself is fine: with an rsa-sha2 signature it logs in.
    assert_echo_works(
        &env.client(&pv, "svc-rsa").identity(&key),
        "echo",
        echo.port,
    );
}

#[test]
fn unknown_key_is_refused() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let known = env.key("svc");
    let stranger = env.key("stranger");
    let echo = EchoServer::start();
    let pv = env.portvakt(
        &Config::new()
            .trust(&ca)
            .user(User::service("svc", &known))
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["svc"])),
    );

    let out = env
        .client(&pv, "svc")
        .identity(&stranger)
        .run(&[BASTION, "true"]);

    assert_refused_and_audited(&pv, &out, "svc", "unknown_key");
}

#[test]
fn unknown_user_and_unknown_key_are_refused_alike() {
    // Failures must not reveal whether a user name exists: the client sees
    // the same refusal, and the audited reason is the same.
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let known = env.key("svc");
    let stranger = env.key("stranger");
    let pv = env.portvakt(&Config::new().trust(&ca).user(User::service("svc", &known)));

    let existing = env
        .client(&pv, "svc")
        .identity(&stranger)
        .run(&[BASTION, "true"]);
    let missing = env
        .client(&pv, "nobody")
        .identity(&stranger)
        .run(&[BASTION, "true"]);

    assert_login_refused(&existing);
    assert_login_refused(&missing);
    let strip = |s: &str| s.replace("svc@", "USER@").replace("nobody@", "USER@");
    assert_eq!(strip(&existing.stderr), strip(&missing.stderr));
    pv.wait_for_audit("unknown_key for svc", |e| {
        e.is("auth.failure", "unknown_key") && e.user.as_deref() == Some("svc")
    });
    pv.wait_for_audit("unknown_key for nobody", |e| {
        e.is("auth.failure", "unknown_key") && e.user.as_deref() == Some("nobody")
    });
}

#[test]
fn root_is_refused_even_with_a_valid_certificate() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let key = env.signed_key(&ca, "root", &CertSpec::user(&["root"]));
    let echo = EchoServer::start();
    let pv = env.portvakt(
        &Config::new()
            .trust(&ca)
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["root"])),
    );

    let out = env
        .client(&pv, "root")
        .identity(&key)
        .run(&[BASTION, "true"]);

    assert_refused_and_audited(&pv, &out, "root", "user_denied");
}

#[test]
fn deny_users_refuses_the_listed_users_before_anything_else() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let mallory = env.signed_key(&ca, "mallory", &CertSpec::user(&["mallory"]));
    let alice = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]));
    let echo = EchoServer::start();
    let pv =
        env.portvakt(&Config::new().trust(&ca).deny_users(&["mallory"]).target(
            Target::host("echo", "127.0.0.1", echo.port).allow_users(&["alice", "mallory"]),
        ));

    let out = env
        .client(&pv, "mallory")
        .identity(&mallory)
        .run(&[BASTION, "true"]);

    assert_refused_and_audited(&pv, &out, "mallory", "user_denied");
    assert_echo_works(
        &env.client(&pv, "alice").identity(&alice),
        "echo",
        echo.port,
    );
}

#[test]
fn max_auth_tries_ends_a_connection_that_offers_too_many_keys() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let good = env.key("svc");
    let echo = EchoServer::start();
    let pv = env.portvakt(
        &Config::new()
            .trust(&ca)
            .max_auth_tries(3)
            .user(User::service("svc", &good))
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["svc"])),
    );
    // Five unknown keys first, the good key last: the connection must end
    // before the good key is ever tried.
    let mut client = env.client(&pv, "svc");
    for i in 0..5 {
        client = client.identity(&env.key(&format!("junk{i}")));
    }
    let client = client.identity(&good);

    let out = client.run(&[BASTION, "true"]);

    out.assert_code(255);
    pv.wait_for_event("connection.close", "too_many_attempts");
    pv.wait_for_event("auth.failure", "too_many_attempts");
    assert_no_login(&pv);
    let unknown = pv
        .audit()
        .iter()
        .filter(|e| e.is("auth.failure", "unknown_key"))
        .count();
    assert!(
        unknown <= 3,
        "{unknown} keys were tried with max_auth_tries = 3"
    );
}

#[test]
fn service_account_key_listed_in_revoked_keys_is_refused() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let key = env.key("svc");
    let list = env.write("revoked_keys", format!("{}\n", key.public_line()));
    let pv = env.portvakt(
        &Config::new()
            .trust(&ca)
            .revoked_keys(&list)
            .user(User::service("svc", &key)),
    );

    let out = env
        .client(&pv, "svc")
        .identity(&key)
        .run(&[BASTION, "true"]);

    assert_refused_and_audited(&pv, &out, "svc", "key_revoked");
}

#[test]
fn a_connection_that_does_not_log_in_within_login_grace_time_is_closed() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let pv = env.portvakt(&Config::new().trust(&ca).login_grace_time("2s"));

    // A client that connects and never says anything.
    let mut silent = TcpStream::connect(proc::local(pv.port)).expect("connect");
    silent
        .set_read_timeout(Some(AUDIT_TIMEOUT))
        .expect("set_read_timeout");
    let mut seen = Vec::new();
    let ended = silent.read_to_end(&mut seen);

    assert!(
        ended.is_ok(),
        "portvakt kept a silent connection open past login_grace_time: {ended:?}"
    );
    assert!(
        String::from_utf8_lossy(&seen).starts_with("SSH-2.0-"),
        "portvakt should greet with its version line: {seen:?}"
    );
    pv.wait_for_event("connection.close", "login_timeout");
}
