//! Allow-listed destinations from `[[targets]]`, validated and immutable.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

/// Where a target leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A named machine: the user types the target's name, portvakt dials `host:port`.
    Host { host: String, port: u16 },
    /// A range: the user types an IP literal inside `net` and a port from `ports`.
    Cidr { net: IpNet, ports: BTreeSet<u16> },
}

/// One `[[targets]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What users type (and what the audit trail shows). Kept as written.
    pub name: String,
    pub destination: Destination,
    pub allow_users: BTreeSet<String>,
    pub allow_groups: BTreeSet<String>,
    /// Standing (the allowed may use it), or on request (they may ask).
    pub access: Access,
    /// `mode = "record"`: portvakt ends the engineer's SSH connection
    /// itself, logs in to the target and records the session.
    pub record: Option<Arc<Recorded>>,
}

/// What a recorded target needs beyond a forward (DESIGN.md §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Accounts users may log in as on the target; `{user}` is the
    /// portvakt user name.
    pub logins: Vec<String>,
    /// How the target's host key is checked (never trust on first use).
    pub trust: HostTrust,
    /// More names clients dial the target by.
    pub aliases: Vec<String>,
    pub agent_forwarding: bool,
    pub permit_port_forwarding: bool,
}

/// The target's host key, or the CA that signs its host certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostTrust {
    Key(russh::keys::PublicKey),
    Ca(russh::keys::PublicKey),
}

impl Recorded {
    /// May `user` log in to the target as `login`?
    pub fn allows_login(&self, user: &str, login: &str) -> bool {
        self.logins
            .iter()
            .any(|l| l == login || (l == "{user}" && login == user))
    }

    /// The logins `user` may use, `{user}` replaced.
    pub fn logins_for(&self, user: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for l in &self.logins {
            let l = if l == "{user}" { user } else { l.as_str() };
            if !out.iter().any(|o| o == l) {
                out.push(l.to_string());
            }
        }
        out
    }
}

/// How the users and groups a target allows may use it (DESIGN.md §13).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Access {
    /// Whenever they like.
    #[default]
    Standing,
    /// Only within a window an approver granted (`access = "request"`).
    Request(RequestRule),
}

/// Who decides requests for a target, and how long a window may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRule {
    /// Groups whose members may approve (never their own request).
    pub approvers: BTreeSet<String>,
    pub max_request: std::time::Duration,
    /// Distinct approvers needed: 1, or 2 for a two-person rule.
    pub approvals: u32,
}

impl Target {
    /// A target that nobody may use yet; grant it with [`Target::with_users`]
    /// and [`Target::with_groups`]. Nothing is checked here: the config loader
    /// validates `[[targets]]` (names, hosts, ranges) before it builds them.
    /// For code that needs a `Target` without a config file (fuzz targets),
    /// so that it does not depend on the fields.
    pub fn new(name: impl Into<String>, destination: Destination) -> Target {
        Target {
            name: name.into(),
            destination,
            allow_users: BTreeSet::new(),
            allow_groups: BTreeSet::new(),
            access: Access::Standing,
            record: None,
        }
    }

    /// The rule for requests, when the target is used on request only.
    pub fn request_rule(&self) -> Option<&RequestRule> {
        match &self.access {
            Access::Request(r) => Some(r),
            Access::Standing => None,
        }
    }

    /// This target, also allowed to each of `users`.
    pub fn with_users(mut self, users: impl IntoIterator<Item = impl Into<String>>) -> Target {
        self.allow_users.extend(users.into_iter().map(Into::into));
        self
    }

    /// This target, used as `access` says.
    pub fn with_access(mut self, access: Access) -> Target {
        self.access = access;
        self
    }

    /// This target, also allowed to members of each of `groups`.
    pub fn with_groups(mut self, groups: impl IntoIterator<Item = impl Into<String>>) -> Target {
        self.allow_groups.extend(groups.into_iter().map(Into::into));
        self
    }

    /// The user may use this target by name or by one of their groups.
    pub fn allows<'a>(&self, user: &str, mut groups: impl Iterator<Item = &'a str>) -> bool {
        self.allow_users.contains(user) || groups.any(|g| self.allow_groups.contains(g))
    }

    /// Does `host` (as typed by the user) name this target? Exact and
    /// case-insensitive; "db-1." is not "db-1".
    pub fn has_name(&self, host: &str) -> bool {
        matches!(self.destination, Destination::Host { .. })
            && (self.name.eq_ignore_ascii_case(host)
                || self
                    .record
                    .as_ref()
                    .is_some_and(|r| r.aliases.iter().any(|a| a.eq_ignore_ascii_case(host))))
    }

    /// Every name a client may dial this target by: its name, its host and
    /// its aliases (the principals of a recorded target's host certificate).
    pub fn dial_names(&self) -> Vec<String> {
        let mut names = vec![self.name.clone()];
        if let Destination::Host { host, .. } = &self.destination {
            names.push(host.clone());
        }
        if let Some(r) = &self.record {
            names.extend(r.aliases.iter().cloned());
        }
        names.dedup();
        names
    }

    /// Does this target's range contain `ip`? IPv4-mapped IPv6 addresses are
    /// not IPv4 addresses here: a v4 range never contains `::ffff:a.b.c.d`.
    ///
    /// Special addresses (loopback, unspecified, link-local, multicast) are
    /// in a range only when the range names them: see [`range_reaches`].
    pub fn contains(&self, ip: IpAddr) -> bool {
        match &self.destination {
            Destination::Cidr { net, .. } => range_reaches(net, ip),
            Destination::Host { .. } => false,
        }
    }

    /// The port is allowed on this target.
    pub fn allows_port(&self, port: u16) -> bool {
        match &self.destination {
            Destination::Host { port: p, .. } => *p == port,
            Destination::Cidr { ports, .. } => ports.contains(&port),
        }
    }
}

/// Address blocks a range reaches only when it names them itself: the
/// bastion's own loopback, "this host" (unspecified), link-local, multicast
/// and broadcast, and IPv6's views of IPv4 (mapped and compatible).
/// `0.0.0.0/0` or `::/0` does not open them; `127.0.0.0/8` opens loopback.
const SPECIAL: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "255.255.255.255/32",
    "::/96",
    "::1/128",
    "::ffff:0:0/96",
    "fe80::/10",
    "ff00::/8",
];

/// The special block `ip` lies in, if any.
fn special_block(ip: IpAddr) -> Option<IpNet> {
    SPECIAL
        .iter()
        .filter_map(|b| b.parse::<IpNet>().ok())
        .find(|b| b.contains(&ip))
}

/// May a range `net` lead to `ip`? Only if `ip` is an ordinary address, or
/// `net` lies wholly inside the special block `ip` is in.
pub fn range_reaches(net: &IpNet, ip: IpAddr) -> bool {
    net.contains(&ip)
        && match special_block(ip) {
            None => true,
            Some(block) => block.contains(net),
        }
}

/// Would a resolver (glibc's `inet_aton`) read `host` as an IPv4 address in
/// one of the legacy spellings: "127.1", "010.0.0.1", "0x7f000001",
/// "2130706433"? Such a host is not a name, and not a canonical address.
pub fn is_legacy_ipv4(host: &str) -> bool {
    let parts: Vec<&str> = host.split('.').collect();
    let number = |p: &str| {
        let p = p.to_ascii_lowercase();
        match p.strip_prefix("0x") {
            Some(hex) => hex.chars().all(|c| c.is_ascii_hexdigit()),
            None => !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()),
        }
    };
    (1..=4).contains(&parts.len()) && parts.iter().all(|p| number(p))
}

/// A DNS host name portvakt will resolve: letters, digits and hyphens in
/// dot-separated labels of 1 to 63 characters, no label starting or ending
/// with a hyphen, at most 253 characters, and a last label that is not all
/// digits (else it reads as an address).
pub fn is_dns_name(host: &str) -> bool {
    let labels: Vec<&str> = host.split('.').collect();
    host.len() <= 253
        && !is_legacy_ipv4(host)
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|l| !l.chars().all(|c| c.is_ascii_digit()))
}

/// Parse `host` as an IP literal only if it is written in canonical form
/// (the form Rust prints), so "127.1", "0177.0.0.1" or "[::1]" never pass
/// as addresses.
pub fn canonical_ip(host: &str) -> Option<IpAddr> {
    let ip: IpAddr = host.parse().ok()?;
    (ip.to_string() == host).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broad_ranges_do_not_reach_special_addresses() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for (range, addr) in [
            ("0.0.0.0/0", "127.0.0.1"),
            ("0.0.0.0/0", "0.0.0.0"),
            ("0.0.0.0/0", "169.254.169.254"),
            ("0.0.0.0/0", "224.0.0.1"),
            ("0.0.0.0/0", "255.255.255.255"),
            ("96.0.0.0/3", "127.0.0.1"),
            ("::/0", "::"),
            ("::/0", "::1"),
            ("::/0", "::ffff:10.0.0.1"),
            ("::/0", "fe80::1"),
            ("::/0", "ff02::1"),
        ] {
            assert!(
                !range_reaches(&net(range), ip(addr)),
                "{range} reached {addr}"
            );
        }
        for (range, addr) in [
            ("0.0.0.0/0", "10.0.0.1"),
            ("127.0.0.0/8", "127.0.0.1"),
            ("127.0.0.1/32", "127.0.0.1"),
            ("169.254.0.0/16", "169.254.1.1"),
            ("::/0", "2001:db8::1"),
            ("fe80::/64", "fe80::1"),
        ] {
            assert!(
                range_reaches(&net(range), ip(addr)),
                "{range} did not reach {addr}"
            );
        }
    }

    #[test]
    fn host_names_and_legacy_address_spellings() {
        for legacy in [
            "127.1",
            "010.0.0.1",
            "0x7f000001",
            "2130706433",
            "0x7f.1",
            "1.2.3.4",
        ] {
            assert!(is_legacy_ipv4(legacy), "{legacy}");
            assert!(!is_dns_name(legacy), "{legacy}");
        }
        for name in ["db-1", "db-1.corp.example", "a1.b2", "x", "0abc.example"] {
            assert!(is_dns_name(name), "{name}");
        }
        for bad in [
            "",
            "a..b",
            "-a.example",
            "a-.example",
            "db_1",
            "db 1",
            "a.123",
            "é.example",
            "a.",
            ".a",
        ] {
            assert!(!is_dns_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn canonical_ip_accepts_only_canonical_forms() {
        assert_eq!(canonical_ip("10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(canonical_ip("::1"), Some("::1".parse().unwrap()));
        for bad in [
            "127.1",
            "0177.0.0.1",
            "0x7f.0.0.1",
            "010.0.0.1",
            "[::1]",
            "::0:1",
            "0:0:0:0:0:0:0:1",
            "10.0.0.1.",
            " 10.0.0.1",
            "FE80::1",
            "db-1",
        ] {
            assert_eq!(canonical_ip(bad), None, "{bad}");
        }
    }
}
