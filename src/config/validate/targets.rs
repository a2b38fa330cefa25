//! `[[targets]]`: names, destinations (a host and port, or a CIDR range and
//! ports) and who may use each.

use std::collections::{BTreeSet, HashSet};
use std::ops::Range;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::{Ctx, port, valid_name};
use crate::config::schema::RawTarget;
use crate::policy::{Access, Destination, RequestRule, Target, canonical_ip, is_dns_name};

pub(super) fn targets(cx: &mut Ctx<'_>, raw: &[Spanned<RawTarget>]) -> Vec<Target> {
    let mut seen = HashSet::new();
    let targets: Vec<Target> = raw
        .iter()
        .filter_map(|t| target(cx, t.span(), t.get_ref(), &mut seen))
        .collect();
    // An alias is one more name: it may name no other target.
    for t in raw.iter().map(|t| t.get_ref()) {
        for a in t.aliases.iter().flatten() {
            let taken = targets
                .iter()
                .filter(|o| !o.name.eq_ignore_ascii_case(t.name.get_ref()))
                .any(|o| o.has_name(a.get_ref()));
            if taken {
                cx.err(
                    &a.span(),
                    format!(
                        "target {}: alias {:?} already names another target",
                        t.name.get_ref(),
                        a.get_ref()
                    ),
                );
            }
        }
    }
    targets
}

/// One target, or `None` (with its errors noted) when any part is wrong.
fn target(
    cx: &mut Ctx<'_>,
    span: Range<usize>,
    t: &RawTarget,
    seen: &mut HashSet<String>,
) -> Option<Target> {
    let name = t.name.get_ref();
    let mut ok = name_ok(cx, t, seen);
    let destination = match &t.cidr {
        Some(cidr) => cidr_destination(cx, &span, t, cidr, &mut ok),
        None => host_destination(cx, &span, t, &mut ok),
    };
    for u in t.allow_users.iter().chain(&t.allow_groups) {
        if !valid_name(u.get_ref()) {
            cx.err(
                &u.span(),
                format!(
                    "target {name}: {:?} is not a valid user or group name",
                    u.get_ref()
                ),
            );
            ok = false;
        }
    }
    let access = access(cx, t, &mut ok);
    let record = super::recording::target_record(cx, &span, t, destination.as_ref(), &mut ok);
    let destination = destination.filter(|_| ok)?;
    Some(Target {
        name: name.clone(),
        destination,
        allow_users: t.allow_users.iter().map(|u| u.get_ref().clone()).collect(),
        allow_groups: t.allow_groups.iter().map(|g| g.get_ref().clone()).collect(),
        access,
        record,
    })
}

/// The most a request may ask for, whatever `max_request` says.
const MAX_REQUEST: Duration = Duration::from_secs(7 * 24 * 3600);

/// `access`, and for `"request"` who approves and for how long.
fn access(cx: &mut Ctx<'_>, t: &RawTarget, ok: &mut bool) -> Access {
    let name = t.name.get_ref();
    let standing = cx.one_of(
        &format!("target {name}: access"),
        &t.access,
        true,
        &[("standing", true), ("request", false)],
    );
    let keys = [
        (
            "approvers",
            t.approvers
                .as_ref()
                .and_then(|a| a.first())
                .map(|a| a.span()),
        ),
        ("max_request", t.max_request.as_ref().map(|m| m.span())),
        ("approvals", t.approvals.as_ref().map(|a| a.span())),
    ];
    if standing {
        for (key, span) in keys {
            if let Some(span) = span {
                cx.err(
                    &span,
                    format!("target {name}: {key} applies only with access = \"request\""),
                );
                *ok = false;
            }
        }
        return Access::Standing;
    }
    let approvers: BTreeSet<String> = t
        .approvers
        .iter()
        .flatten()
        .map(|a| a.get_ref().clone())
        .collect();
    for a in t.approvers.iter().flatten() {
        if !valid_name(a.get_ref()) {
            cx.err(
                &a.span(),
                format!("target {name}: {:?} is not a valid group name", a.get_ref()),
            );
            *ok = false;
        }
    }
    if approvers.is_empty() {
        cx.err(
            &t.name.span(),
            format!(
                "target {name}: access = \"request\" needs approvers (groups whose members decide)"
            ),
        );
        *ok = false;
    }
    let max_request = cx.duration(
        &format!("target {name}: max_request"),
        &t.max_request,
        Duration::from_secs(4 * 3600),
    );
    if max_request > MAX_REQUEST {
        let span = t.max_request.as_ref().map(|m| m.span()).unwrap_or_default();
        cx.err(&span, format!("target {name}: max_request is at most 7d"));
        *ok = false;
    }
    let approvals = cx.int(&format!("target {name}: approvals"), &t.approvals, 1, 1..3) as u32;
    Access::Request(RequestRule {
        approvers,
        max_request,
        approvals,
    })
}

/// A valid, unique name, and somebody allowed to use it.
fn name_ok(cx: &mut Ctx<'_>, t: &RawTarget, seen: &mut HashSet<String>) -> bool {
    let name = t.name.get_ref();
    let mut ok = true;
    if !valid_name(name) || canonical_ip(name).is_some() || name.parse::<std::net::IpAddr>().is_ok()
    {
        cx.err(&t.name.span(), format!("targets.name: {name:?} is not a valid target name (letters, digits, . _ -; not an address)"));
        ok = false;
    }
    if !seen.insert(name.to_ascii_lowercase()) {
        cx.err(
            &t.name.span(),
            format!("targets.name: target {name} is defined twice"),
        );
        ok = false;
    }
    if t.allow_users.is_empty() && t.allow_groups.is_empty() {
        cx.err(
            &t.name.span(),
            format!("target {name}: nobody may use it; set allow_users or allow_groups"),
        );
        ok = false;
    }
    ok
}

/// `cidr = "..."` with `ports = [...]`.
fn cidr_destination(
    cx: &mut Ctx<'_>,
    span: &Range<usize>,
    t: &RawTarget,
    cidr: &Spanned<String>,
    ok: &mut bool,
) -> Option<Destination> {
    let name = t.name.get_ref();
    if let Some(h) = &t.host {
        cx.err(
            &h.span(),
            format!("target {name}: host and cidr exclude each other"),
        );
        *ok = false;
    }
    if let Some(p) = &t.port {
        cx.err(
            &p.span(),
            format!("target {name}: a cidr target takes ports = [...], not port"),
        );
        *ok = false;
    }
    let net = cidr_net(cx, name, cidr);
    let mut ports = BTreeSet::new();
    match &t.ports {
        None => {
            cx.err(
                span,
                format!("target {name}: a cidr target needs ports = [...]"),
            );
            *ok = false;
        }
        Some(list) if list.get_ref().is_empty() => {
            cx.err(&list.span(), format!("target {name}: ports is empty"));
            *ok = false;
        }
        Some(list) => {
            for p in list.get_ref() {
                match port(cx, "targets.ports", p) {
                    Some(p) => {
                        ports.insert(p);
                    }
                    None => *ok = false,
                }
            }
        }
    }
    net.map(|net| Destination::Cidr { net, ports })
}

/// The range of a cidr target: no host bits; a warning when very broad.
fn cidr_net(cx: &mut Ctx<'_>, name: &str, cidr: &Spanned<String>) -> Option<IpNet> {
    match cidr.get_ref().parse::<IpNet>() {
        Ok(net) if net.trunc() == net => {
            let broad = match net {
                IpNet::V4(n) => n.prefix_len() < 8,
                IpNet::V6(n) => n.prefix_len() < 16,
            };
            if broad {
                cx.warn(
                    &cidr.span(),
                    format!(
                        "target {name}: cidr {net} is very broad; loopback, link-local, multicast and unspecified addresses stay out unless a range names them"
                    ),
                );
            }
            Some(net)
        }
        Ok(net) => {
            cx.err(
                &cidr.span(),
                format!(
                    "target {name}: cidr {} has host bits set; did you mean {}?",
                    cidr.get_ref(),
                    net.trunc()
                ),
            );
            None
        }
        Err(_) => {
            cx.err(
                &cidr.span(),
                format!(
                    "target {name}: {:?} is not a CIDR range like 10.20.0.0/24",
                    cidr.get_ref()
                ),
            );
            None
        }
    }
}

/// `host = "..."` (the name itself by default) and `port` (22 by default).
fn host_destination(
    cx: &mut Ctx<'_>,
    span: &Range<usize>,
    t: &RawTarget,
    ok: &mut bool,
) -> Option<Destination> {
    let name = t.name.get_ref();
    if let Some(p) = &t.ports {
        cx.err(
            &p.span(),
            format!("target {name}: ports = [...] is for cidr targets; use port"),
        );
        *ok = false;
    }
    let host = t
        .host
        .as_ref()
        .map_or(name.clone(), |h| h.get_ref().clone());
    // What portvakt dials must be what the admin meant: glibc reads
    // "010.0.0.1" as 8.0.0.1 and a name "127.1" as 127.0.0.1.
    if canonical_ip(&host).is_none() && !is_dns_name(&host) {
        cx.err(
            &t.host.as_ref().map_or(span.clone(), |h| h.span()),
            format!(
                "target {name}: host {host:?} is neither an IP address in canonical form (like 10.0.1.5 or fd00::5) nor a DNS name"
            ),
        );
        *ok = false;
    }
    let port = match &t.port {
        None => Some(22),
        Some(p) => port(cx, "targets.port", p),
    };
    port.map(|port| Destination::Host { host, port })
}
