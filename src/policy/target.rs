//! Allow-listed destinations from `[[targets]]`, validated and immutable.

use std::collections::BTreeSet;
use std::net::IpAddr;

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
}

impl Target {
    /// The user may use this target by name or by one of their groups.
    pub fn allows<'a>(&self, user: &str, mut groups: impl Iterator<Item = &'a str>) -> bool {
        self.allow_users.contains(user) || groups.any(|g| self.allow_groups.contains(g))
    }

    /// Does `host` (as typed by the user) name this target? Exact and
    /// case-insensitive; "db-1." is not "db-1".
    pub fn has_name(&self, host: &str) -> bool {
        matches!(self.destination, Destination::Host { .. }) && self.name.eq_ignore_ascii_case(host)
    }

    /// Does this target's range contain `ip`? IPv4-mapped IPv6 addresses are
    /// not IPv4 addresses here: a v4 range never contains `::ffff:a.b.c.d`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match &self.destination {
            Destination::Cidr { net, .. } => net.contains(&ip),
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
