//! Checks of the test harness itself, without portvakt: if these fail, the
//! machine's OpenSSH or the harness is at fault, not portvakt.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

#[test]
fn real_ssh_logs_into_real_sshd_with_a_certificate_through_the_generated_config() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let login = target_login_user();
    let key = env.signed_key(&ca, "alice", &CertSpec::user(&[&login]));
    // No authorized keys: only the certificate can get in.
    let sshd = Sshd::start(env.path(), &[], Some(&ca));

    let out = SshClient::to_sshd(env.path(), &sshd, &login)
        .identity(&key)
        .run(&[BASTION, "echo", "hello"]);

    out.assert_success();
    assert_eq!(out.stdout_text(), "hello\n");
    assert!(
        sshd.log().contains("Accepted publickey") && sshd.log().contains("CERT"),
        "sshd did not log a certificate login:\n{}",
        sshd.log()
    );
}

#[test]
fn a_key_without_certificate_is_refused_by_the_ca_only_sshd() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let key = env.key("stranger");
    let sshd = Sshd::start(env.path(), &[], Some(&ca));

    let out = SshClient::to_sshd(env.path(), &sshd, &target_login_user())
        .identity(&key)
        .run(&[BASTION, "true"]);

    assert_login_refused(&out);
}

#[test]
fn echo_sink_and_source_servers_move_exact_bytes() {
    let data = random_bytes(256 * 1024);

    let echo = EchoServer::start();
    let mut stream = TcpStream::connect(proc::local(echo.port)).unwrap();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || {
            stream.write_all(&data).unwrap();
            stream.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::new();
    stream.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == data, "echo returned {} different bytes", back.len());

    let sink = SinkServer::start();
    let mut stream = TcpStream::connect(proc::local(sink.port())).unwrap();
    stream.write_all(&data).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    let received = poll_until("the sink to finish", Duration::from_secs(10), || {
        sink.received.lock().unwrap().first().cloned()
    });
    assert!(
        received == data,
        "sink got {} different bytes",
        received.len()
    );

    let source = SourceServer::start(data.clone());
    let mut stream = TcpStream::connect(proc::local(source.port)).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).unwrap();
    assert!(got == data, "source sent {} different bytes", got.len());
}

#[test]
fn the_dead_target_fills_its_accept_queue() {
    // The constructor asserts that a connect stopped completing.
    let dead = DeadTarget::start();
    assert_ne!(dead.port, 0);
}

#[test]
fn proxyjump_through_an_openssh_jump_host_reaches_the_target() {
    // The same client config portvakt tests use, with sshd as the jump host:
    // proves the generated -F file carries everything to the jump hop.
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let login = target_login_user();
    let key = env.signed_key(&ca, "alice", &CertSpec::user(&[&login]));
    let target_key = env.key("target_key");
    let jump = Sshd::start(env.path(), &[], Some(&ca));
    let target = Sshd::start(env.path(), &[&target_key], None);

    // The jump sshd resolves the alias: use one that resolves to 127.0.0.1.
    let out = SshClient::to_sshd(env.path(), &jump, &login)
        .identity(&key)
        .target("localhost", &target, &login, &target_key)
        .run(&["localhost", "echo", "through-the-jump"]);

    out.assert_success();
    assert_eq!(out.stdout_text(), "through-the-jump\n");
}

#[test]
fn an_agent_offers_a_host_certificate_that_the_client_itself_would_not() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let login = target_login_user();
    let key = env.signed_key(&ca, "hosty", &CertSpec::user(&[&login]).host());
    let sshd = Sshd::start(env.path(), &[], Some(&ca));
    let agent = SshAgent::start(env.path());
    agent.add(&key);

    let out = SshClient::to_sshd(env.path(), &sshd, &login)
        .agent(&agent)
        .run(&[BASTION, "true"]);

    assert_login_refused(&out);
    poll_until(
        "sshd to log the host certificate",
        Duration::from_secs(10),
        || sshd.log().contains("not a user certificate").then_some(()),
    );
}

#[test]
fn twenty_mib_through_an_openssh_jump_host_arrive_byte_exact() {
    // The 20 MiB forwarding test, with sshd in portvakt's place: proves the
    // client, pipes and echo target move the bytes without stalling.
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let login = target_login_user();
    let key = env.signed_key(&ca, "alice", &CertSpec::user(&[&login]));
    let jump = Sshd::start(env.path(), &[], Some(&ca));
    let echo = EchoServer::start();
    let data = random_bytes(20 * 1024 * 1024);

    let client = SshClient::to_sshd(env.path(), &jump, &login)
        .identity(&key)
        .timeout(Duration::from_secs(300));
    let out = forward_stdio(&client, "127.0.0.1", echo.port, &data);

    assert_eq!(out.code(), 0, "ssh -W through sshd failed: {}", out.stderr);
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "the bytes differ");
}
