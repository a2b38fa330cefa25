//! Channels other than `direct-tcpip` (issue 2, item 5; DESIGN.md §6): a shell
//! or command on the bastion gets a short text and exit status 1; remote
//! forwarding, agent forwarding and subsystems are refused and audited.

mod common;

use common::*;

/// A bastion with targets "db-1" (alice may use it) and "secret-9" (only bob).
fn bastion(env: &TestEnv) -> (Portvakt, UserKey) {
    let ca = env.ca("user_ca");
    let alice = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]));
    let pv = env.portvakt(
        &Config::new()
            .trust(&ca)
            .target(Target::host("db-1", "127.0.0.1", 22).allow_users(&["alice"]))
            .target(Target::host("secret-9", "127.0.0.1", 2222).allow_users(&["bob"])),
    );
    (pv, alice)
}

#[test]
fn shell_on_the_bastion_prints_who_you_are_and_the_jump_line_then_exits_1() {
    let env = TestEnv::new();
    let (pv, alice) = bastion(&env);

    let out = env.client(&pv, "alice").identity(&alice).run(&[BASTION]);

    out.assert_code(1);
    let text = format!("{}{}", out.stdout_text(), out.stderr);
    assert!(
        text.contains("alice"),
        "the text should say who you are: {out}"
    );
    assert!(
        text.contains("ssh -J"),
        "the text should show the ssh -J line: {out}"
    );
    assert!(
        text.contains("db-1"),
        "the text should list alice's targets: {out}"
    );
    assert!(
        !text.contains("secret-9"),
        "the text lists a target alice may not use: {out}"
    );
    pv.wait_for_event("channel.refused", "shell_refused");
}

#[test]
fn command_on_the_bastion_is_refused_with_exit_status_1() {
    let env = TestEnv::new();
    let (pv, alice) = bastion(&env);

    let out = env
        .client(&pv, "alice")
        .identity(&alice)
        .run(&[BASTION, "cat", "/etc/passwd"]);

    out.assert_code(1);
    assert!(
        !out.stdout_text().contains("root:"),
        "a command ran on the bastion: {out}"
    );
    pv.wait_for_event("channel.refused", "exec_refused");
}

#[test]
fn remote_forwarding_is_refused() {
    let env = TestEnv::new();
    let (pv, alice) = bastion(&env);

    let out = env
        .client(&pv, "alice")
        .identity(&alice)
        .bastion_option("ExitOnForwardFailure yes")
        .run(&["-N", "-R", "127.0.0.1:0:127.0.0.1:9", BASTION]);

    out.assert_code(255);
    out.assert_stderr_contains("remote port forwarding failed");
    pv.wait_for_event("channel.refused", "remote_forward_refused");
}

#[test]
fn subsystem_is_refused() {
    let env = TestEnv::new();
    let (pv, alice) = bastion(&env);

    let out = env
        .client(&pv, "alice")
        .identity(&alice)
        .run(&["-s", BASTION, "sftp"]);

    assert_ne!(out.code(), 0, "a subsystem started on the bastion: {out}");
    pv.wait_for_event("channel.refused", "subsystem_refused");
}

#[test]
fn agent_forwarding_is_refused() {
    let env = TestEnv::new();
    let (pv, alice) = bastion(&env);
    // The client asks for agent forwarding only when it has an agent: log in
    // through one and forward it.
    let agent = SshAgent::start(env.path());
    agent.add(&alice);

    let out = env
        .client(&pv, "alice")
        .agent(&agent)
        .bastion_option("ForwardAgent yes")
        .run(&[BASTION]);

    out.assert_code(1);
    pv.wait_for_event("channel.refused", "agent_forward_refused");
}
