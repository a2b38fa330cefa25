//! `policy::decide` on a random allow-list, identity and request. Beyond "no
//! panic" it checks what the allow-list promises (DESIGN.md §4):
//!
//! * an `Authorized` names a target that allows the user (by name or group),
//!   and the request's port;
//! * for a CIDR target: the host was typed in canonical IP form, lies inside
//!   the range, and the one address to dial is exactly that IP and port;
//! * for a named target: the host is the target's name (case-insensitively),
//!   and the addresses are the destination's IP or what the resolver said;
//! * a host not in canonical IP form never matches a CIDR target;
//! * a user that no target allows is never authorized;
//! * a host that is neither a canonical IP nor a target name is
//!   `unknown_target`, and a canonical IP outside every range is
//!   `address_not_allowed`.
//!
//! Identities come from the public API only: a config with service accounts
//! `u0`..`u15` (user `uN` is in group `gK` when bit K of N is set) and
//! `Authenticator::publickey`, as a `mfa = "none"` key login makes them.
#![no_main]

use std::collections::{BTreeSet, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portvakt::auth::Authenticator;
use portvakt::config::Config;
use portvakt::policy::{
    self, Destination, Policy, Refusal, Request, Resolver, Subject, Target, range_reaches,
};
use russh::keys::ssh_key::PublicKey;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl fuzz";
const USERS: usize = 16;
const GROUPS: usize = 4;

/// `u0`..`u15`, each with the groups of its bits, logged in by key, as
/// policy sees them under the config.
fn identities() -> &'static [Subject] {
    static IDS: OnceLock<Vec<Subject>> = OnceLock::new();
    IDS.get_or_init(|| {
        let mut text = String::new();
        for u in 0..USERS {
            let groups: Vec<String> = (0..GROUPS)
                .filter(|g| u & (1 << g) != 0)
                .map(|g| format!("\"g{g}\""))
                .collect();
            text += &format!(
                "[[users]]\nname = \"u{u}\"\ngroups = [{}]\nkeys = [\"{KEY}\"]\nmfa = \"none\"\n",
                groups.join(", ")
            );
        }
        let cfg = Config::parse(Path::new("/nonexistent/fuzz.toml"), &text)
            .unwrap_or_else(|e| panic!("fixed config: {e}"));
        let key = PublicKey::from_openssh(KEY).unwrap();
        let cfg = Arc::new(cfg);
        let auth = Authenticator::new(cfg.clone(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        (0..USERS)
            .map(|u| {
                let id = auth
                    .publickey(&format!("u{u}"), key.key_data())
                    .expect("service account logs in")
                    .subject(&cfg);
                let groups: BTreeSet<&str> = id.groups().collect();
                let want: BTreeSet<String> = (0..GROUPS)
                    .filter(|g| u & (1 << g) != 0)
                    .map(|g| format!("g{g}"))
                    .collect();
                assert_eq!(groups, want.iter().map(String::as_str).collect());
                id
            })
            .collect()
    })
}

/// Answers every name with the loopback addresses, except two names that fail.
struct FixedResolver;

const LOOPBACK: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
];

impl Resolver for FixedResolver {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        match host {
            "fail.invalid" => Err(io::Error::other("no such host")),
            "empty.invalid" => Ok(Vec::new()),
            _ => Ok(LOOPBACK
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect()),
        }
    }
}

/// Names for allow lists: the users and groups that exist, other spellings of
/// them, and names nobody has.
const NAMES: &[&str] = &[
    "u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8", "u9", "u10", "u11", "u12", "u13", "u14",
    "u15", "g0", "g1", "g2", "g3", "U1", "G1", "u1.", "g2@x", "u", "g", "nobody",
];

/// Target names (validation allows letters, digits and `._-@+`, no address).
const TARGET_NAMES: &[&str] = &[
    "db-1",
    "DB-2",
    "web",
    "web.internal",
    "lab",
    "a",
    "x.y.z",
    "10.0.0.1.",
    "127.1",
    "db_3",
    "svc@eu",
    "1.2.3.4.5",
];

/// Destination hosts of named targets.
const DEST_HOSTS: &[&str] = &[
    "10.0.1.5",
    "::1",
    "db.internal",
    "fail.invalid",
    "empty.invalid",
    "010.0.0.1",
    "127.1",
    "::ffff:10.0.0.1",
    "localhost",
];

#[derive(Arbitrary, Debug)]
enum Name {
    Pool(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Dest {
    Host {
        host: Name,
        port: u16,
    },
    V4 {
        addr: [u8; 4],
        prefix: u8,
        ports: Vec<u16>,
    },
    V6 {
        addr: [u8; 16],
        prefix: u8,
        ports: Vec<u16>,
    },
}

#[derive(Arbitrary, Debug)]
struct TargetSpec {
    name: Name,
    dest: Dest,
    allow_users: Vec<u8>,
    allow_groups: Vec<u8>,
}

/// Ways of writing an address, most of them not canonical.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Form {
    Canonical,
    Mapped,
    Compatible,
    FullV6,
    Upper,
    Brackets,
    TrailingDot,
    LeadingZero,
    Octal,
    Hex,
    Short,
    Decimal,
    Zone,
    WithPort,
    Space,
}

#[derive(Arbitrary, Debug)]
enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
    /// An address inside (or just past) the range of target `target`.
    InTarget {
        target: u8,
        offset: u128,
    },
}

#[derive(Arbitrary, Debug)]
enum Host {
    Raw(String),
    /// The name of target `target`, with the case of some letters flipped and
    /// maybe a suffix.
    TargetName {
        target: u8,
        flip: u64,
        suffix: u8,
    },
    Ip {
        addr: Addr,
        form: Form,
    },
}

#[derive(Arbitrary, Debug)]
enum Port {
    /// A port the target allows.
    OfTarget(u8, u8),
    Any(u32),
}

#[derive(Arbitrary, Debug)]
struct Input {
    targets: Vec<TargetSpec>,
    user: u8,
    host: Host,
    port: Port,
}

fn pick<'a>(pool: &[&'a str], i: u8) -> &'a str {
    pool[usize::from(i) % pool.len()]
}

fn name(n: &Name, pool: &[&str]) -> String {
    match n {
        Name::Pool(i) => pick(pool, *i).to_string(),
        Name::Raw(s) => s.clone(),
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@+".contains(c))
}

/// The targets as config validation would accept them (`config::validate`):
/// valid unique names that are not addresses, someone allowed, ranges without
/// host bits, ports 1..=65535, hosts without spaces.
fn targets(specs: &[TargetSpec]) -> Vec<Target> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for spec in specs.iter().take(8) {
        let tname = name(&spec.name, TARGET_NAMES);
        if !valid_name(&tname) || tname.parse::<IpAddr>().is_ok() {
            continue;
        }
        let allow = |list: &[u8]| -> BTreeSet<String> {
            list.iter()
                .take(4)
                .map(|i| pick(NAMES, *i).to_string())
                .collect()
        };
        let (allow_users, allow_groups) = (allow(&spec.allow_users), allow(&spec.allow_groups));
        if allow_users.is_empty() && allow_groups.is_empty() {
            continue;
        }
        let ports = |list: &[u16]| -> Option<BTreeSet<u16>> {
            let set: BTreeSet<u16> = list.iter().take(4).copied().collect();
            (!set.is_empty() && !set.contains(&0)).then_some(set)
        };
        let destination = match &spec.dest {
            Dest::Host { host, port } => {
                let host = name(host, DEST_HOSTS);
                if host.is_empty()
                    || host.contains(char::is_whitespace)
                    || host == "."
                    || *port == 0
                {
                    continue;
                }
                Destination::Host { host, port: *port }
            }
            Dest::V4 {
                addr,
                prefix,
                ports: p,
            } => {
                let Ok(net) = ipnet::Ipv4Net::new(Ipv4Addr::from(*addr), prefix % 33) else {
                    continue;
                };
                let Some(ports) = ports(p) else { continue };
                Destination::Cidr {
                    net: net.trunc().into(),
                    ports,
                }
            }
            Dest::V6 {
                addr,
                prefix,
                ports: p,
            } => {
                let Ok(net) = ipnet::Ipv6Net::new(Ipv6Addr::from(*addr), prefix % 129) else {
                    continue;
                };
                let Some(ports) = ports(p) else { continue };
                Destination::Cidr {
                    net: net.trunc().into(),
                    ports,
                }
            }
        };
        if !seen.insert(tname.to_ascii_lowercase()) {
            continue;
        }
        out.push(
            Target::new(tname, destination)
                .with_users(allow_users)
                .with_groups(allow_groups),
        );
    }
    out
}

fn address(addr: &Addr, targets: &[Target]) -> IpAddr {
    match addr {
        Addr::V4(a) => Ipv4Addr::from(*a).into(),
        Addr::V6(a) => Ipv6Addr::from(*a).into(),
        Addr::InTarget { target, offset } => {
            let nets: Vec<ipnet::IpNet> = targets
                .iter()
                .filter_map(|t| match &t.destination {
                    Destination::Cidr { net, .. } => Some(*net),
                    Destination::Host { .. } => None,
                })
                .collect();
            let Some(net) = nets.get(usize::from(*target) % nets.len().max(1)) else {
                return Ipv4Addr::new(10, 0, 0, 1).into();
            };
            // Anywhere in the range, or one past its end.
            match net {
                ipnet::IpNet::V4(n) => {
                    let size = 1u64 << (32 - n.prefix_len());
                    let off = (*offset % u128::from(size + 1)) as u64;
                    Ipv4Addr::from((u32::from(n.network()) as u64).wrapping_add(off) as u32).into()
                }
                ipnet::IpNet::V6(n) => {
                    let size = if n.prefix_len() == 0 {
                        u128::MAX
                    } else {
                        1u128 << (128 - n.prefix_len())
                    };
                    let off = offset % size.saturating_add(1).max(1);
                    Ipv6Addr::from(u128::from(n.network()).wrapping_add(off)).into()
                }
            }
        }
    }
}

fn write(ip: IpAddr, form: Form) -> String {
    let v4 = |f: &dyn Fn(u8) -> String, ip: Ipv4Addr| {
        ip.octets()
            .iter()
            .map(|o| f(*o))
            .collect::<Vec<_>>()
            .join(".")
    };
    match (form, ip) {
        (Form::Canonical, _) => ip.to_string(),
        (Form::Mapped, IpAddr::V4(a)) => format!("::ffff:{a}"),
        (Form::Mapped, IpAddr::V6(a)) => match a.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => a.to_string(),
        },
        (Form::Compatible, IpAddr::V4(a)) => format!("::{a}"),
        (Form::Compatible, IpAddr::V6(a)) => a.to_ipv4().map_or(a.to_string(), |v| v.to_string()),
        (Form::FullV6, IpAddr::V4(a)) => format!("0:0:0:0:0:ffff:{a}"),
        (Form::FullV6, IpAddr::V6(a)) => a
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join(":"),
        (Form::Upper, _) => ip.to_string().to_uppercase(),
        (Form::Brackets, _) => format!("[{ip}]"),
        (Form::TrailingDot, _) => format!("{ip}."),
        (Form::LeadingZero, IpAddr::V4(a)) => v4(&|o| format!("{o:03}"), a),
        (Form::LeadingZero, IpAddr::V6(a)) => a
            .segments()
            .iter()
            .map(|s| format!("{s:04x}"))
            .collect::<Vec<_>>()
            .join(":"),
        (Form::Octal, IpAddr::V4(a)) => v4(&|o| format!("0{o:o}"), a),
        (Form::Hex, IpAddr::V4(a)) => v4(&|o| format!("0x{o:x}"), a),
        (Form::Short, IpAddr::V4(a)) => {
            let o = a.octets();
            format!("{}.{}", o[0], u32::from_be_bytes([0, o[1], o[2], o[3]]))
        }
        (Form::Decimal, IpAddr::V4(a)) => u32::from(a).to_string(),
        (Form::Zone, _) => format!("{ip}%eth0"),
        (Form::WithPort, IpAddr::V4(a)) => format!("{a}:22"),
        (Form::WithPort, IpAddr::V6(a)) => format!("[{a}]:22"),
        (Form::Space, _) => format!(" {ip}"),
        (_, IpAddr::V6(a)) => format!("{a}"),
    }
}

fn host(h: &Host, targets: &[Target]) -> String {
    match h {
        Host::Raw(s) => s.clone(),
        Host::TargetName {
            target,
            flip,
            suffix,
        } => {
            let Some(t) = targets.get(usize::from(*target) % targets.len().max(1)) else {
                return "db-1".into();
            };
            let name: String = t
                .name
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if flip >> (i % 64) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            match suffix % 6 {
                0 | 1 | 2 => name,
                3 => format!("{name}."),
                4 => format!("{name}:22"),
                _ => format!("{name}\0"),
            }
        }
        Host::Ip { addr, form } => write(address(addr, targets), *form),
    }
}

fn port(p: &Port, targets: &[Target]) -> u32 {
    match p {
        Port::Any(p) => *p,
        Port::OfTarget(t, i) => match targets.get(usize::from(*t) % targets.len().max(1)) {
            None => 22,
            Some(t) => match &t.destination {
                Destination::Host { port, .. } => u32::from(*port),
                Destination::Cidr { ports, .. } => {
                    u32::from(*ports.iter().nth(usize::from(*i) % ports.len()).unwrap())
                }
            },
        },
    }
}

/// The spec's canonical form: what Rust prints for the address.
fn canonical(host: &str) -> Option<IpAddr> {
    let ip: IpAddr = host.parse().ok()?;
    (ip.to_string() == host).then_some(ip)
}

fn allows(t: &Target, id: &Subject) -> bool {
    t.allow_users.contains(id.user()) || id.groups().any(|g| t.allow_groups.contains(g))
}

fuzz_target!(|input: Input| {
    let ids = identities();
    let id = &ids[usize::from(input.user) % ids.len()];
    let targets = targets(&input.targets);
    let host = host(&input.host, &targets);
    let port = port(&input.port, &targets);
    let policy = Policy::new(targets.clone());
    let req = Request { host: &host, port };
    let result = futures::executor::block_on(policy::decide(&policy, id, &req, &FixedResolver));

    let canon = canonical(&host);
    // Deny by default, but not more: a request that a target plainly allows
    // is authorized.
    let port16 = u16::try_from(port).ok().filter(|p| *p != 0);
    let plainly_allowed = port16.is_some_and(|p| {
        targets.iter().any(|t| {
            allows(t, id)
                && match (&t.destination, canon) {
                    (Destination::Cidr { net, ports }, Some(ip)) => {
                        range_reaches(net, ip) && ports.contains(&p)
                    }
                    (
                        Destination::Host {
                            host: dest,
                            port: dport,
                        },
                        None,
                    ) => {
                        t.name.eq_ignore_ascii_case(&host)
                            && *dport == p
                            && dest != "fail.invalid"
                            && dest != "empty.invalid"
                    }
                    _ => false,
                }
        })
    });
    if plainly_allowed {
        assert!(
            result.is_ok(),
            "{} {host:?}:{port} refused: {result:?}",
            id.user()
        );
    }
    if !targets.iter().any(|t| allows(t, id)) {
        assert!(
            result.is_err(),
            "{} authorized by no target: {result:?}",
            id.user()
        );
    }
    match &result {
        Ok(a) => {
            let t = targets
                .iter()
                .find(|t| t.name == a.target())
                .unwrap_or_else(|| panic!("authorized for unknown target {:?}", a.target()));
            assert!(allows(t, id), "{} not allowed on {}", id.user(), t.name);
            assert!((1..=65535).contains(&port), "port {port}");
            let port = port as u16;
            match &t.destination {
                Destination::Cidr { net, ports } => {
                    let ip = canon.unwrap_or_else(|| {
                        panic!("non-canonical host {host:?} matched cidr target {}", t.name)
                    });
                    assert!(net.contains(&ip), "{ip} outside {net}");
                    assert_eq!(ip.is_ipv4(), matches!(net, ipnet::IpNet::V4(_)));
                    assert!(ports.contains(&port), "port {port} not in {ports:?}");
                    assert_eq!(a.addrs(), &[SocketAddr::new(ip, port)]);
                }
                Destination::Host {
                    host: dest,
                    port: dport,
                } => {
                    assert!(
                        canon.is_none(),
                        "address {host:?} matched named target {}",
                        t.name
                    );
                    assert!(
                        t.name.eq_ignore_ascii_case(&host),
                        "{host:?} is not {}",
                        t.name
                    );
                    assert_eq!(port, *dport);
                    let want: Vec<SocketAddr> = match canonical(dest) {
                        Some(ip) => vec![SocketAddr::new(ip, *dport)],
                        None => LOOPBACK
                            .iter()
                            .map(|ip| SocketAddr::new(*ip, *dport))
                            .collect(),
                    };
                    assert_eq!(a.addrs(), want.as_slice());
                    assert!(dest != "fail.invalid" && dest != "empty.invalid");
                }
            }
        }
        Err(denied) => {
            let reason = &denied.reason;
            match canon {
                None if !targets.iter().any(|t| {
                    matches!(t.destination, Destination::Host { .. })
                        && t.name.eq_ignore_ascii_case(&host)
                }) =>
                {
                    assert_eq!(reason, &Refusal::UnknownTarget, "{host:?}");
                }
                Some(ip) if !targets.iter().any(|t| t.contains(ip)) => {
                    assert_eq!(reason, &Refusal::AddressNotAllowed, "{host:?}");
                }
                _ => {}
            }
            // The target named in the audit trail is one the request matched.
            match &denied.target {
                None => assert!(
                    matches!(reason, Refusal::UnknownTarget | Refusal::AddressNotAllowed),
                    "{denied:?} without a target"
                ),
                Some(name) => {
                    let t = targets
                        .iter()
                        .find(|t| &t.name == name)
                        .unwrap_or_else(|| panic!("denied on unknown target {name:?}"));
                    match canon {
                        Some(ip) => assert!(t.contains(ip), "{ip} not in {name}"),
                        None => assert!(t.has_name(&host), "{host:?} is not {name}"),
                    }
                    if *reason == Refusal::UserNotAllowed {
                        assert!(!allows(t, id), "{} is allowed on {name}", id.user());
                    }
                }
            }
        }
    }
});
