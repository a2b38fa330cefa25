//! The allow-list: which identity may reach which `host:port`.
//!
//! [`decide`] is the only way to obtain an [`Authorized`], and
//! `forward` dials nothing else. It is a function of the policy, the identity
//! and the request, plus the resolver it is given, and fails closed.

mod target;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;

pub use target::{
    Access, Destination, HostTrust, Recorded, RequestRule, Target, canonical_ip, is_dns_name,
    is_legacy_ipv4, range_reaches,
};

/// Who asks, as the config in force now sees them: a user name and every
/// group they are in (from the IdP and from `[[users]]`). Built fresh for
/// each decision, never kept, so a reload changes the next answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    user: String,
    groups: BTreeSet<String>,
    /// False when the login's certificate lacks `permit-port-forwarding`.
    may_forward: bool,
    /// Lower-cased names of the request-only targets the user holds an
    /// approved window on now.
    windows: BTreeSet<String>,
}

impl Subject {
    pub fn new(user: impl Into<String>, groups: impl IntoIterator<Item = String>) -> Self {
        Subject {
            user: user.into(),
            groups: groups.into_iter().collect(),
            may_forward: true,
            windows: BTreeSet::new(),
        }
    }
    /// The request-only targets (by name) the user holds an approved
    /// window on now.
    pub fn with_windows(mut self, targets: impl IntoIterator<Item = impl AsRef<str>>) -> Self {
        self.windows
            .extend(targets.into_iter().map(|t| t.as_ref().to_ascii_lowercase()));
        self
    }
    /// May use `t` now: allowed, and within a window if it is on request.
    fn may_use(&self, t: &Target) -> bool {
        t.allows(self.user(), self.groups())
            && (t.request_rule().is_none() || self.windows.contains(&t.name.to_ascii_lowercase()))
    }
    /// The login itself forbids forwarding (a certificate without
    /// `permit-port-forwarding`): every request is refused.
    pub fn without_forwarding(mut self) -> Self {
        self.may_forward = false;
        self
    }
    pub fn user(&self) -> &str {
        &self.user
    }
    pub fn groups(&self) -> impl Iterator<Item = &str> + Clone {
        self.groups.iter().map(String::as_str)
    }
}

/// The validated `[[targets]]` of one config.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    targets: Vec<Target>,
    /// Lower-cased name -> index into `targets`, for named targets.
    by_name: HashMap<String, usize>,
}

impl Policy {
    /// Build from validated targets; names must be unique case-insensitively
    /// (config validation guarantees it).
    pub fn new(targets: Vec<Target>) -> Self {
        let mut by_name = HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            if !matches!(t.destination, Destination::Host { .. }) {
                continue;
            }
            let aliases = t.record.iter().flat_map(|r| r.aliases.iter());
            for name in std::iter::once(&t.name).chain(aliases) {
                // The first target of a name wins (validation refuses two).
                by_name.entry(name.to_ascii_lowercase()).or_insert(i);
            }
        }
        Policy { targets, by_name }
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Targets the identity may use, for the text shown on `ssh user@bastion`.
    pub fn targets_for<'a>(&'a self, id: &'a Subject) -> impl Iterator<Item = &'a Target> + 'a {
        self.targets
            .iter()
            .filter(move |t| t.allows(id.user(), id.groups()))
    }

    fn named(&self, host: &str) -> Option<&Target> {
        let t = &self.targets[*self.by_name.get(&host.to_ascii_lowercase())?];
        t.has_name(host).then_some(t)
    }
}

crate::reasons::reason_enum! {
    /// Why a forward request was refused. The snake_case name is the audit
    /// reason, the log field and the metric label.
    pub enum Refusal {
        /// The login's certificate does not permit port forwarding.
        ForwardingNotPermitted = "certificate_no_port_forwarding",
        UnknownTarget = "unknown_target",
        AddressNotAllowed = "address_not_allowed",
        PortNotAllowed = "port_not_allowed",
        UserNotAllowed = "user_not_allowed",
        /// The target is allowed but its host name does not resolve.
        ResolveFailed = "resolve_failed",
        /// The target is used on request, and the user holds no approved
        /// window on it now.
        RequestRequired = "request_required",
    }
}

impl std::error::Error for Refusal {}

impl Refusal {
    /// `denied` for policy refusals, `failed` when the request was allowed
    /// but could not be carried out.
    pub fn result(self) -> crate::reasons::ForwardResult {
        match self {
            Refusal::ResolveFailed => crate::reasons::ForwardResult::Failed,
            _ => crate::reasons::ForwardResult::Denied,
        }
    }
}

/// A forward the policy allowed: the target and the exact addresses that were
/// checked, which are the addresses `forward` dials. Only [`decide`] makes one.
#[derive(Debug, Clone)]
pub struct Authorized {
    target: String,
    addrs: Vec<SocketAddr>,
    /// A recorded target: how to log in to it, and the names it answers to.
    record: Option<(std::sync::Arc<Recorded>, Vec<String>)>,
}

impl Authorized {
    /// The target's name as configured.
    pub fn target(&self) -> &str {
        &self.target
    }
    /// Addresses to try, in order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
    /// `mode = "record"`: the target's recording settings and every name
    /// it is dialled by.
    pub fn record(&self) -> Option<(&std::sync::Arc<Recorded>, &[String])> {
        self.record.as_ref().map(|(r, n)| (r, n.as_slice()))
    }
}

/// Resolves host names of named targets. Passed in so that tests control it.
pub trait Resolver: Sync {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send;
}

/// The system resolver (getaddrinfo on tokio's blocking pool).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// A request as typed by the client, for messages and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub host: &'a str,
    /// As sent on the wire (u32): out-of-range values are refused, not truncated.
    pub port: u32,
}

impl fmt::Display for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A refused request: why, and which target it matched, if any (for the
/// audit trail only; the client is told the same words whatever the reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub reason: Refusal,
    pub target: Option<String>,
}

impl Refusal {
    fn on(self, target: Option<&Target>) -> Denied {
        Denied {
            reason: self,
            target: target.map(|t| t.name.clone()),
        }
    }
}

/// Decide whether `id` may open a forward to `req`. Deny by default: only a
/// target that matches exactly (DESIGN.md §4 "Matching rules") and allows the
/// user or one of their groups yields an [`Authorized`].
pub async fn decide<R: Resolver>(
    policy: &Policy,
    id: &Subject,
    req: &Request<'_>,
    resolver: &R,
) -> Result<Authorized, Denied> {
    if !id.may_forward {
        return Err(Refusal::ForwardingNotPermitted.on(None));
    }
    let port = u16::try_from(req.port).ok().filter(|p| *p != 0);

    if let Some(ip) = canonical_ip(req.host) {
        let containing: Vec<&Target> = policy.targets.iter().filter(|t| t.contains(ip)).collect();
        let Some(first) = containing.first().copied() else {
            return Err(Refusal::AddressNotAllowed.on(None));
        };
        let allowed: Vec<&Target> = containing
            .into_iter()
            .filter(|t| t.allows(id.user(), id.groups()))
            .collect();
        let Some(first_allowed) = allowed.first().copied() else {
            return Err(Refusal::UserNotAllowed.on(Some(first)));
        };
        let port = port.ok_or_else(|| Refusal::PortNotAllowed.on(Some(first_allowed)))?;
        let with_port: Vec<&Target> = allowed
            .into_iter()
            .filter(|t| t.allows_port(port))
            .collect();
        let Some(first_with_port) = with_port.first().copied() else {
            return Err(Refusal::PortNotAllowed.on(Some(first_allowed)));
        };
        let target = with_port
            .into_iter()
            .find(|t| id.may_use(t))
            .ok_or_else(|| Refusal::RequestRequired.on(Some(first_with_port)))?;
        return Ok(Authorized {
            target: target.name.clone(),
            addrs: vec![SocketAddr::new(ip, port)],
            record: None,
        });
    }

    let target = policy
        .named(req.host)
        .ok_or_else(|| Refusal::UnknownTarget.on(None))?;
    let deny = |r: Refusal| r.on(Some(target));
    if !target.allows(id.user(), id.groups()) {
        return Err(deny(Refusal::UserNotAllowed));
    }
    let port = port.ok_or_else(|| deny(Refusal::PortNotAllowed))?;
    if !target.allows_port(port) {
        return Err(deny(Refusal::PortNotAllowed));
    }
    if !id.may_use(target) {
        return Err(deny(Refusal::RequestRequired));
    }
    let Destination::Host { host, port: dport } = &target.destination else {
        return Err(deny(Refusal::UnknownTarget));
    };
    let addrs = match canonical_ip(host) {
        Some(ip) => vec![SocketAddr::new(ip, *dport)],
        None => resolver
            .resolve(host, *dport)
            .await
            .map_err(|_| deny(Refusal::ResolveFailed))?,
    };
    if addrs.is_empty() {
        return Err(deny(Refusal::ResolveFailed));
    }
    Ok(Authorized {
        target: target.name.clone(),
        addrs,
        record: target
            .record
            .as_ref()
            .map(|r| (r.clone(), target.dial_names())),
    })
}

#[cfg(test)]
mod tests;
