//! `auth::certificate::check` on certificates that are validly signed, so that
//! every rule after the signature is reached: the fuzzer picks the fields
//! (type, principals, validity, critical options, extensions, key id, serial)
//! and the login (user, source address, time), the target signs with a CA
//! (trusted or not) and compares `check` with the rules as DESIGN.md states
//! them, in the order `check` reports them.
#![no_main]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Arbitrary;
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use portvakt::auth::AuthFailure;
use portvakt::auth::certificate::{CertPolicy, check};
use portvakt::revocation::RevocationList;
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::public::KeyData;

/// A time near which most fields are chosen (mid 2025).
const BASE: u64 = 1_750_000_000;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Time {
    Near(i32),
    Raw(u64),
    /// OpenSSH's "forever".
    Forever,
    /// Past the largest `SystemTime` (i64::MAX seconds).
    PastI64(u32),
    /// Around the last second RFC 3339 can write (the year 9999).
    NearLastSecond(i16),
    Zero,
}

impl Time {
    fn secs(self) -> u64 {
        match self {
            Time::Near(d) => BASE.saturating_add_signed(i64::from(d)),
            Time::Raw(s) => s,
            Time::Forever => u64::MAX,
            Time::PastI64(d) => (i64::MAX as u64).saturating_add(u64::from(d)),
            Time::NearLastSecond(d) => common::LAST_SECOND.saturating_add_signed(i64::from(d)),
            Time::Zero => 0,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Name {
    Pool(u8),
    Raw(String),
}

const NAMES: &[&str] = &["alice", "bob", "Alice", "alice ", "", "*", "root", "al*"];

fn name(n: &Name) -> String {
    match n {
        Name::Pool(i) => NAMES[usize::from(*i) % NAMES.len()].to_string(),
        Name::Raw(s) => s.clone(),
    }
}

#[derive(Arbitrary, Debug)]
enum Ip {
    V4([u8; 4]),
    V6([u8; 16]),
    Mapped([u8; 4]),
    Loopback,
}

impl Ip {
    fn addr(&self) -> IpAddr {
        match self {
            Ip::V4(a) => Ipv4Addr::from(*a).into(),
            Ip::V6(a) => Ipv6Addr::from(*a).into(),
            Ip::Mapped(a) => Ipv4Addr::from(*a).to_ipv6_mapped().into(),
            Ip::Loopback => Ipv4Addr::LOCALHOST.into(),
        }
    }
}

/// One item of a `source-address` list.
#[derive(Arbitrary, Debug)]
enum SourceItem {
    Addr(Ip),
    Net(Ip, u8),
    /// The login's source address, so that lists match now and then.
    Source,
    SourceNet(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Critical {
    SourceAddress {
        items: Vec<SourceItem>,
        spaces: bool,
    },
    ForceCommand(String),
    VerifyRequired,
    Other(String, String),
}

#[derive(Arbitrary, Debug)]
enum Extension {
    PermitPortForwarding,
    PermitPty,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    host_cert: bool,
    untrusted: bool,
    key_id: String,
    serial: u64,
    principals: Vec<Name>,
    valid_after: Time,
    valid_before: Time,
    critical: Vec<Critical>,
    extensions: Vec<Extension>,
    user: Name,
    source: Ip,
    now: Time,
}

fn subject() -> &'static KeyData {
    static KEY: OnceLock<KeyData> = OnceLock::new();
    KEY.get_or_init(|| KeyData::from(Ed25519Keypair::from_seed(&[3; 32]).public))
}

fn source_list(items: &[SourceItem], spaces: bool, source: IpAddr) -> String {
    let items: Vec<String> = items
        .iter()
        .take(6)
        .map(|item| match item {
            SourceItem::Addr(ip) => ip.addr().to_string(),
            SourceItem::Net(ip, p) => format!("{}/{p}", ip.addr()),
            SourceItem::Source => source.to_string(),
            SourceItem::SourceNet(p) => format!("{source}/{p}"),
            SourceItem::Raw(s) => s.clone(),
        })
        .collect();
    items.join(if spaces { ", " } else { "," })
}

/// The rule: every item is an address or a range, and one of them holds the
/// source (an IPv4-mapped IPv6 source is its IPv4 address).
fn source_ok(list: &str, source: IpAddr) -> Result<bool, AuthFailure> {
    let source = source.to_canonical();
    let mut any = false;
    for item in list.split(',').map(str::trim) {
        let net = match (item.parse::<IpNet>(), item.parse::<IpAddr>()) {
            (Ok(net), _) => net,
            (_, Ok(ip)) => IpNet::from(ip),
            _ => return Err(AuthFailure::CertificateSourceAddress),
        };
        any |= net.contains(&source);
    }
    Ok(any)
}

fuzz_target!(|input: Input| {
    let source = input.source.addr();
    let ca = if input.untrusted {
        common::untrusted_ca()
    } else {
        common::signing_ca()
    };
    let (va, vb) = (input.valid_after.secs(), input.valid_before.secs());
    let Ok(mut b) = Builder::new([0u8; 16], subject().clone(), va, vb) else {
        return;
    };
    let _ = b.serial(input.serial);
    let _ = b.key_id(input.key_id.clone());
    let _ = b.cert_type(if input.host_cert {
        CertType::Host
    } else {
        CertType::User
    });
    let principals: Vec<String> = input.principals.iter().take(4).map(name).collect();
    if principals.is_empty() {
        let _ = b.all_principals_valid();
    }
    for p in &principals {
        let _ = b.valid_principal(p.clone());
    }
    for c in input.critical.iter().take(3) {
        let (k, v) = match c {
            Critical::SourceAddress { items, spaces } => (
                "source-address".to_string(),
                source_list(items, *spaces, source),
            ),
            Critical::ForceCommand(cmd) => ("force-command".to_string(), cmd.clone()),
            Critical::VerifyRequired => ("verify-required".to_string(), String::new()),
            Critical::Other(k, v) => (k.clone(), v.clone()),
        };
        let _ = b.critical_option(k, v);
    }
    for e in input.extensions.iter().take(3) {
        let k = match e {
            Extension::PermitPortForwarding => "permit-port-forwarding".to_string(),
            Extension::PermitPty => "permit-pty".to_string(),
            Extension::Other(k) => k.clone(),
        };
        let _ = b.extension(k, String::new());
    }
    let Ok(cert) = b.sign(ca) else {
        return;
    };
    let user = name(&input.user);
    let Some(now) = UNIX_EPOCH.checked_add(Duration::from_secs(input.now.secs())) else {
        return;
    };
    let now_s = input.now.secs();

    let revoked = RevocationList::empty();
    let policy = CertPolicy {
        trusted_cas: common::trusted_cas(),
        revoked: &revoked,
    };
    let got = check(&cert, &user, source, now, policy);

    // The rules, in the order check reports them.
    let want: Result<(), AuthFailure> = (|| {
        if input.host_cert {
            return Err(AuthFailure::CertificateNotUser);
        }
        if input.untrusted {
            return Err(AuthFailure::CertificateUntrustedCa);
        }
        if now_s < cert.valid_after() {
            return Err(AuthFailure::CertificateNotYetValid);
        }
        if now_s >= cert.valid_before() {
            return Err(AuthFailure::CertificateExpired);
        }
        if !cert.valid_principals().iter().any(|p| *p == user) {
            return Err(AuthFailure::CertificatePrincipalMismatch);
        }
        for (k, v) in cert.critical_options().iter() {
            if k != "source-address" {
                return Err(AuthFailure::CertificateCriticalOption);
            }
            if !source_ok(v, source)? {
                return Err(AuthFailure::CertificateSourceAddress);
            }
        }
        Ok(())
    })();
    match (&got, &want) {
        (Ok(login), Ok(())) => common::assert_login_matches(login, &cert),
        (Err(g), Err(w)) => assert_eq!(g, w, "{cert:?}"),
        _ => panic!("check said {got:?}, the rules say {want:?} for {cert:?}"),
    }
});
