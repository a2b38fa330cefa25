//! Target policy (issue 2, item 5, DESIGN.md §4 "Matching rules"): a
//! `direct-tcpip` request is forwarded only to an allow-listed target for a
//! user allowed on it; every other request is refused with one text that
//! leaks nothing, and audited with its own reason.

mod common;

use common::*;

/// alice's certificate login and a bastion with:
/// - "echo": 127.0.0.1:echo.port for alice;
/// - "lab": 127.0.0.0/8 on echo.port for group sre (alice is in sre via [[users]]);
/// - "vault": a target only bob may use, at an internal address that must never leak.
struct World {
    env: TestEnv,
    echo: TcpServer,
    alice: UserKey,
    pv: Portvakt,
}

const VAULT_ADDRESS: &str = "10.77.0.5";

fn world() -> World {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let alice = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]));
    let echo = EchoServer::start();
    let pv = env.portvakt(
        &Config::new()
            .trust(&ca)
            .user(User::groups("alice", &["sre"]))
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["alice"]))
            .target(Target::cidr("lab", "127.0.0.0/8", &[echo.port]).allow_groups(&["sre"]))
            .target(Target::host("vault", VAULT_ADDRESS, 22).allow_users(&["bob"])),
    );
    World {
        env,
        echo,
        alice,
        pv,
    }
}

impl World {
    /// alice's client, logging what the client says about refused channels.
    fn alice(&self) -> SshClient {
        self.env
            .client(&self.pv, "alice")
            .identity(&self.alice)
            .log_level("INFO")
    }

    /// Asserts that alice's `-W host:port` is refused with the policy text,
    /// audited as `forward.denied` with `reason`, and recorded as a denied
    /// sessions row; returns that row.
    fn assert_denied(&self, host: &str, port: u16, reason: &str) -> SessionRow {
        let out = forward_stdio(&self.alice(), host, port, b"should not arrive\n");
        assert_forward_prohibited(&out, "alice");
        assert!(
            !out.stderr.contains(VAULT_ADDRESS),
            "a refusal leaked another target's address: {out}"
        );
        let event = self.pv.wait_for_event("forward.denied", reason);
        assert_eq!(event.user.as_deref(), Some("alice"), "{event:?}");
        let row = self
            .pv
            .wait_for_session(&format!("denied {host}:{port}"), |r| {
                r.host == host && r.port == port
            });
        assert_eq!(row.result, "denied", "{row:?}");
        assert_eq!(row.reason.as_deref(), Some(reason), "{row:?}");
        assert_eq!(row.user.as_deref(), Some("alice"), "{row:?}");
        assert_eq!(row.address, None, "a denied forward dials nothing: {row:?}");
        assert_eq!(row.bytes_to_target, 0, "{row:?}");
        assert_eq!(
            self.echo.connections(),
            0,
            "a denied forward reached the echo target"
        );
        row
    }
}

#[test]
fn ssh_w_reaches_an_allowed_named_target() {
    let w = world();

    assert_echo_works(&w.alice(), "echo", w.echo.port);

    let row = w.pv.wait_for_session("echo forward closed", |r| {
        r.target.as_deref() == Some("echo") && r.ended_at.is_some()
    });
    assert_eq!(row.result, "allowed", "{row:?}");
    assert_eq!(row.host, "echo");
    assert_eq!(row.port, w.echo.port);
    assert_eq!(row.close_reason.as_deref(), Some("closed"), "{row:?}");
    let open =
        w.pv.wait_for_audit("forward.open", |e| e.kind == "forward.open");
    assert_eq!(open.user.as_deref(), Some("alice"), "{open:?}");
    w.pv.wait_for_audit("forward.close", |e| e.kind == "forward.close");
}

#[test]
fn target_names_match_case_insensitively() {
    let w = world();

    assert_echo_works(&w.alice(), "ECHO", w.echo.port);

    let row = w.pv.wait_for_session("ECHO forward", |r| r.host == "ECHO");
    assert_eq!(row.target.as_deref(), Some("echo"), "{row:?}");
    assert_eq!(row.result, "allowed", "{row:?}");
}

#[test]
fn ip_literal_inside_a_cidr_target_is_allowed_for_its_group() {
    let w = world();

    assert_echo_works(&w.alice(), "127.0.0.1", w.echo.port);

    let row =
        w.pv.wait_for_session("lab forward", |r| r.host == "127.0.0.1");
    assert_eq!(row.target.as_deref(), Some("lab"), "{row:?}");
    assert_eq!(row.result, "allowed", "{row:?}");
}

#[test]
fn unlisted_target_is_refused() {
    let w = world();
    let row = w.assert_denied("db-9", 22, "unknown_target");
    assert_eq!(row.target, None, "{row:?}");
}

#[test]
fn target_name_with_a_trailing_dot_is_not_the_target() {
    let w = world();
    w.assert_denied("echo.", w.echo.port, "unknown_target");
}

#[test]
fn named_target_on_another_port_is_refused() {
    let w = world();
    w.assert_denied(
        "echo",
        w.echo.port.wrapping_add(1).max(1),
        "port_not_allowed",
    );
}

#[test]
fn cidr_target_on_a_port_not_listed_is_refused() {
    let w = world();
    w.assert_denied("127.0.0.1", 22, "port_not_allowed");
}

#[test]
fn address_outside_every_cidr_is_refused() {
    let w = world();
    w.assert_denied("10.1.2.3", w.echo.port, "address_not_allowed");
}

#[test]
fn target_the_user_is_not_allowed_on_is_refused() {
    let w = world();
    let row = w.assert_denied("vault", 22, "user_not_allowed");
    assert_eq!(row.target.as_deref(), Some("vault"), "{row:?}");
}

#[test]
fn the_refusal_text_is_the_same_whatever_the_reason() {
    let w = world();
    let text = |host: &str, port: u16| {
        let out = forward_stdio(&w.alice(), host, port, b"");
        out.stderr
            .lines()
            .find(|l| l.contains("administratively prohibited"))
            .unwrap_or_else(|| panic!("no refusal line: {out}"))
            .replace(&format!("{host}:{port}"), "TARGET")
    };
    let unknown = text("db-9", 22);
    assert_eq!(text("vault", 22), unknown);
    assert_eq!(text("echo", w.echo.port.wrapping_add(1).max(1)), unknown);
    assert_eq!(text("10.1.2.3", w.echo.port), unknown);
}

/// A range as broad as 0.0.0.0/0 does not reach the bastion's own loopback
/// (nor unspecified, link-local or multicast addresses): only a range that
/// names such a block does (here "lab", 127.0.0.0/8, for group sre).
#[test]
fn a_broad_range_does_not_reach_loopback_unless_a_range_names_it() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let alice = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]));
    let bob = env.signed_key(&ca, "bob", &CertSpec::user(&["bob"]));
    let echo = EchoServer::start();
    let pv = env.portvakt(
        &Config::new()
            .trust(&ca)
            .target(
                Target::cidr("anywhere", "0.0.0.0/0", &[echo.port]).allow_users(&["alice", "bob"]),
            )
            .target(Target::cidr("lab", "127.0.0.0/8", &[echo.port]).allow_users(&["bob"])),
    );
    let out = forward_stdio(
        &env.client(&pv, "alice").identity(&alice).log_level("INFO"),
        "127.0.0.1",
        echo.port,
        b"x",
    );
    assert_forward_prohibited(&out, "alice");
    // Only "lab" contains it, and lab is bob's.
    let denied = pv.wait_for_event("forward.denied", "user_not_allowed");
    assert_eq!(denied.detail_str("target"), Some("lab"), "{denied:?}");
    for zero in ["0.0.0.0", "169.254.169.254", "224.0.0.1"] {
        let out = forward_stdio(
            &env.client(&pv, "alice").identity(&alice).log_level("INFO"),
            zero,
            echo.port,
            b"x",
        );
        assert_forward_prohibited(&out, "alice");
    }
    let outside = pv
        .audit()
        .into_iter()
        .filter(|e| e.is("forward.denied", "address_not_allowed"))
        .count();
    assert_eq!(outside, 3, "0.0.0.0/0 reached a special address");
    assert_eq!(echo.connections(), 0, "a special address was dialled");
    // bob reaches loopback through "lab", which names it.
    assert_echo_works(
        &env.client(&pv, "bob").identity(&bob),
        "127.0.0.1",
        echo.port,
    );
}
