//! `decide`, exhaustively: every way a request can match or not.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;

use super::*;

/// A resolver with fixed answers that records what it was asked.
#[derive(Default)]
struct FakeResolver {
    answers: Vec<(&'static str, Vec<SocketAddr>)>,
    asked: Mutex<Vec<String>>,
}

impl Resolver for FakeResolver {
    async fn resolve(&self, host: &str, _port: u16) -> io::Result<Vec<SocketAddr>> {
        self.asked.lock().unwrap().push(host.to_string());
        self.answers
            .iter()
            .find(|(h, _)| *h == host)
            .map(|(_, a)| a.clone())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"))
    }
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn policy() -> Policy {
    Policy::new(vec![
        Target {
            name: "db-1".into(),
            destination: Destination::Host {
                host: "10.0.1.5".into(),
                port: 22,
            },
            allow_users: set(&["alice"]),
            allow_groups: set(&["dba"]),
            access: Default::default(),
            record: None,
        },
        Target {
            name: "web".into(),
            destination: Destination::Host {
                host: "web.internal".into(),
                port: 2222,
            },
            allow_users: set(&[]),
            allow_groups: set(&["sre"]),
            access: Default::default(),
            record: None,
        },
        Target {
            name: "lab".into(),
            destination: Destination::Cidr {
                net: "10.20.0.0/24".parse().unwrap(),
                ports: [22, 2222].into_iter().collect(),
            },
            allow_users: set(&[]),
            allow_groups: set(&["sre"]),
            access: Default::default(),
            record: None,
        },
        Target {
            name: "lab6".into(),
            destination: Destination::Cidr {
                net: "fd00::/64".parse().unwrap(),
                ports: [22].into_iter().collect(),
            },
            allow_users: set(&["bob"]),
            allow_groups: set(&[]),
            access: Default::default(),
            record: None,
        },
    ])
}

fn resolver() -> FakeResolver {
    FakeResolver {
        answers: vec![(
            "web.internal",
            vec![
                "10.0.9.9:2222".parse().unwrap(),
                "10.0.9.10:2222".parse().unwrap(),
            ],
        )],
        ..Default::default()
    }
}

fn run(id: &Subject, host: &str, port: u32) -> Result<Authorized, Refusal> {
    let p = policy();
    let r = resolver();
    let req = Request { host, port };
    futures::executor::block_on(decide(&p, id, &req, &r)).map_err(|d| d.reason)
}

fn addrs(a: &Authorized) -> Vec<String> {
    a.addrs().iter().map(|a| a.to_string()).collect()
}

#[test]
fn named_target_by_user_and_by_group() {
    let alice = subject("alice", &[]);
    let a = run(&alice, "db-1", 22).unwrap();
    assert_eq!(a.target(), "db-1");
    assert_eq!(addrs(&a), vec!["10.0.1.5:22"]);
    let carol = subject("carol", &["dba"]);
    assert_eq!(run(&carol, "db-1", 22).unwrap().target(), "db-1");
}

#[test]
fn names_match_exactly_and_case_insensitively() {
    let alice = subject("alice", &[]);
    assert_eq!(run(&alice, "DB-1", 22).unwrap().target(), "db-1");
    for other in [
        "db-1.",
        "db-1 ",
        " db-1",
        "db-10",
        "db",
        "db-1.example.com",
        "",
        "db\u{2010}1",
    ] {
        assert_eq!(
            run(&alice, other, 22).unwrap_err(),
            Refusal::UnknownTarget,
            "{other:?}"
        );
    }
}

#[test]
fn the_address_of_a_named_target_is_not_a_way_in() {
    let alice = subject("alice", &[]);
    // 10.0.1.5 is db-1's host, but only the name is allowed.
    assert_eq!(
        run(&alice, "10.0.1.5", 22).unwrap_err(),
        Refusal::AddressNotAllowed
    );
}

#[test]
fn ports_must_match() {
    let alice = subject("alice", &[]);
    assert_eq!(
        run(&alice, "db-1", 2222).unwrap_err(),
        Refusal::PortNotAllowed
    );
    assert_eq!(run(&alice, "db-1", 0).unwrap_err(), Refusal::PortNotAllowed);
    assert_eq!(
        run(&alice, "db-1", 65536 + 22).unwrap_err(),
        Refusal::PortNotAllowed
    );
    assert_eq!(
        run(&alice, "db-1", u32::MAX).unwrap_err(),
        Refusal::PortNotAllowed
    );
    let sre = subject("sam", &["sre"]);
    assert!(run(&sre, "10.20.0.7", 2222).is_ok());
    assert_eq!(
        run(&sre, "10.20.0.7", 23).unwrap_err(),
        Refusal::PortNotAllowed
    );
}

#[test]
fn users_not_allowed() {
    let bob = subject("bob", &["dev"]);
    assert_eq!(run(&bob, "db-1", 22).unwrap_err(), Refusal::UserNotAllowed);
    assert_eq!(run(&bob, "web", 2222).unwrap_err(), Refusal::UserNotAllowed);
    assert_eq!(
        run(&bob, "10.20.0.7", 22).unwrap_err(),
        Refusal::UserNotAllowed
    );
    // Not allowed wins over a wrong port: the reason says what matters.
    assert_eq!(run(&bob, "db-1", 23).unwrap_err(), Refusal::UserNotAllowed);
}

#[test]
fn cidr_targets_take_canonical_ip_literals_only() {
    let sre = subject("sam", &["sre"]);
    let a = run(&sre, "10.20.0.7", 22).unwrap();
    assert_eq!(a.target(), "lab");
    assert_eq!(addrs(&a), vec!["10.20.0.7:22"]);
    for outside in [
        "10.20.1.7",
        "10.21.0.7",
        "127.0.0.1",
        "::ffff:10.20.0.7",
        "::1",
    ] {
        assert_eq!(
            run(&sre, outside, 22).unwrap_err(),
            Refusal::AddressNotAllowed,
            "{outside}"
        );
    }
    // Other spellings of an inside address are names, and no such name exists.
    for spelling in [
        "10.20.0.07",
        "010.20.0.7",
        "0x0a.20.0.7",
        "10.20.7",
        "168034311",
        "10.20.0.7.",
        "[10.20.0.7]",
    ] {
        assert_eq!(
            run(&sre, spelling, 22).unwrap_err(),
            Refusal::UnknownTarget,
            "{spelling}"
        );
    }
    let bob = subject("bob", &[]);
    assert!(run(&bob, "fd00::1", 22).is_ok());
    assert_eq!(
        run(&bob, "FD00::1", 22).unwrap_err(),
        Refusal::UnknownTarget
    );
    assert_eq!(
        run(&bob, "fd00:0::1", 22).unwrap_err(),
        Refusal::UnknownTarget
    );
}

#[test]
fn names_are_resolved_by_portvakt_and_those_addresses_dialled() {
    let sre = subject("sam", &["sre"]);
    let p = policy();
    let r = resolver();
    let a = futures::executor::block_on(decide(
        &p,
        &sre,
        &Request {
            host: "web",
            port: 2222,
        },
        &r,
    ))
    .unwrap();
    assert_eq!(addrs(&a), vec!["10.0.9.9:2222", "10.0.9.10:2222"]);
    assert_eq!(*r.asked.lock().unwrap(), vec!["web.internal".to_string()]);
    // Refused requests never reach the resolver.
    let bob = subject("bob", &[]);
    let _ = futures::executor::block_on(decide(
        &p,
        &bob,
        &Request {
            host: "web",
            port: 2222,
        },
        &r,
    ));
    assert_eq!(r.asked.lock().unwrap().len(), 1);
}

#[test]
fn resolution_failure_fails_closed() {
    let p = Policy::new(vec![Target {
        name: "gone".into(),
        destination: Destination::Host {
            host: "gone.internal".into(),
            port: 22,
        },
        allow_users: set(&["alice"]),
        allow_groups: set(&[]),
        access: Default::default(),
        record: None,
    }]);
    let alice = subject("alice", &[]);
    let r = FakeResolver::default();
    let e = futures::executor::block_on(decide(
        &p,
        &alice,
        &Request {
            host: "gone",
            port: 22,
        },
        &r,
    ))
    .unwrap_err()
    .reason;
    assert_eq!(e, Refusal::ResolveFailed);
    assert_eq!(e.result().as_str(), "failed");
}

#[test]
fn targets_for_lists_only_allowed_ones() {
    let sre = subject("sam", &["sre"]);
    let p = policy();
    let names: Vec<&str> = p.targets_for(&sre).map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["web", "lab"]);
}

#[test]
fn request_display_brackets_ipv6() {
    assert_eq!(
        Request {
            host: "fd00::1",
            port: 22
        }
        .to_string(),
        "[fd00::1]:22"
    );
    assert_eq!(
        Request {
            host: "db-1",
            port: 22
        }
        .to_string(),
        "db-1:22"
    );
}

#[test]
fn denials_name_the_target_they_matched() {
    let p = policy();
    let r = resolver();
    let bob = subject("bob", &["dev"]);
    let d = |id: &Subject, host: &str, port: u32| {
        futures::executor::block_on(decide(&p, id, &Request { host, port }, &r)).unwrap_err()
    };
    assert_eq!(d(&bob, "db-1", 22).target.as_deref(), Some("db-1"));
    assert_eq!(d(&bob, "10.20.0.7", 22).target.as_deref(), Some("lab"));
    assert_eq!(d(&bob, "nope", 22).target, None);
    assert_eq!(d(&bob, "10.99.0.1", 22).target, None);
    let alice = subject("alice", &[]);
    assert_eq!(d(&alice, "db-1", 23).target.as_deref(), Some("db-1"));
}

fn subject(user: &str, groups: &[&str]) -> Subject {
    Subject::new(user, groups.iter().map(|g| g.to_string()))
}

/// A policy with one target used on request (named) and one range used on
/// request beside a standing range.
fn on_request() -> Policy {
    let rule = Access::Request(RequestRule {
        approvers: set(&["leads"]),
        max_request: std::time::Duration::from_secs(3600),
        approvals: 1,
    });
    Policy::new(vec![
        Target::new(
            "prod-db",
            Destination::Host {
                host: "10.0.9.9".into(),
                port: 5432,
            },
        )
        .with_groups(["dba"])
        .with_access(rule.clone()),
        Target::new(
            "prod-net",
            Destination::Cidr {
                net: "10.9.0.0/24".parse().unwrap(),
                ports: [22].into_iter().collect(),
            },
        )
        .with_groups(["sre"])
        .with_access(rule),
        Target::new(
            "lab-net",
            Destination::Cidr {
                net: "10.9.0.0/25".parse().unwrap(),
                ports: [22].into_iter().collect(),
            },
        )
        .with_users(["carol"]),
    ])
}

#[test]
fn a_target_on_request_needs_a_window_and_only_for_the_allowed() {
    let p = on_request();
    let r = FakeResolver::default();
    let ask = |id: &Subject, host: &str, port: u32| {
        futures::executor::block_on(decide(&p, id, &Request { host, port }, &r))
            .map(|a| a.target().to_string())
            .map_err(|d| d.reason)
    };
    let dba = subject("dana", &["dba"]);
    assert_eq!(ask(&dba, "prod-db", 5432), Err(Refusal::RequestRequired));
    // A wrong port says so first: a request would not help.
    assert_eq!(ask(&dba, "prod-db", 22), Err(Refusal::PortNotAllowed));
    let with = dba.clone().with_windows(["PROD-DB"]);
    assert_eq!(ask(&with, "prod-db", 5432).unwrap(), "prod-db");
    // A window on one target opens no other.
    assert_eq!(
        ask(&dba.clone().with_windows(["prod-net"]), "prod-db", 5432),
        Err(Refusal::RequestRequired)
    );
    // Someone the target does not allow gets the usual refusal, window or not.
    let eve = subject("eve", &[]).with_windows(["prod-db"]);
    assert_eq!(ask(&eve, "prod-db", 5432), Err(Refusal::UserNotAllowed));

    // Ranges: a request-only range needs its window; a standing range
    // that also contains the address serves whoever it allows.
    let sre = subject("sam", &["sre"]);
    assert_eq!(ask(&sre, "10.9.0.7", 22), Err(Refusal::RequestRequired));
    let a = ask(&sre.clone().with_windows(["prod-net"]), "10.9.0.7", 22).unwrap();
    assert_eq!(a, "prod-net");
    let carol = subject("carol", &["sre"]);
    assert_eq!(ask(&carol, "10.9.0.7", 22).unwrap(), "lab-net");
}
