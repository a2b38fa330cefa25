//! `[console]`: the review console (DESIGN.md §12). Off when the section
//! is absent. Refused here, so that `check-config` says it before a start:
//! plain HTTP anywhere but loopback, half a TLS pair, a port shared with SSH
//! or metrics, a console without `[oidc]` (its only login), and a
//! `public_url` that would send session cookies in clear text.

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::Ctx;
use crate::config::schema::{RawConsole, SString};
use crate::config::{ConsoleConfig, ConsoleTls};

/// What the console must not collide with, and whether it can log anyone in.
pub(super) struct Others<'a> {
    pub ssh: &'a [SocketAddr],
    pub metrics: Option<SocketAddr>,
    pub oidc: bool,
}

pub(super) fn console(
    cx: &mut Ctx<'_>,
    raw: &Spanned<RawConsole>,
    others: &Others<'_>,
) -> Option<ConsoleConfig> {
    let section = raw.span();
    let raw = raw.get_ref();
    if !others.oidc {
        cx.err(
            &section,
            "console: reviewers log in at the identity provider; add an [oidc] section",
        );
    }
    let listen = listen(cx, &raw.listen, others)?;
    let tls = tls(cx, raw, listen);
    let public_url = public_url(cx, &raw.public_url, listen)?;
    let groups = |list: &[SString]| -> Vec<String> {
        list.iter()
            .map(|g| g.get_ref().clone())
            .filter(|g| !g.is_empty())
            .collect()
    };
    let reviewer_groups = groups(&raw.reviewer_groups);
    let admin_groups = groups(&raw.admin_groups);
    if reviewer_groups.is_empty() && admin_groups.is_empty() {
        cx.warn(
            &section,
            "console: neither reviewer_groups nor admin_groups is set; nobody can use the console",
        );
    }
    let session_idle = cx.duration(
        "console.session_idle",
        &raw.session_idle,
        Duration::from_secs(30 * 60),
    );
    let session_max = cx.duration(
        "console.session_max",
        &raw.session_max,
        Duration::from_secs(8 * 3600),
    );
    if session_idle > session_max
        && let Some(v) = raw.session_idle.as_ref()
    {
        cx.err(
            &v.span(),
            "console.session_idle: longer than console.session_max",
        );
    }
    let mut audit_keys = Vec::new();
    for f in &raw.audit_keys {
        let path = cx.path(f.get_ref());
        match crate::audit::checkpoint::read_key_files(std::slice::from_ref(&path)) {
            Ok(keys) => audit_keys.extend(keys),
            Err(e) => cx.err(
                &f.span(),
                format!("console.audit_keys: {e} (files of OpenSSH Ed25519 public keys, as `portvakt audit key` prints)"),
            ),
        }
    }
    Some(ConsoleConfig {
        audit_keys,
        listen,
        tls,
        public_url,
        reviewer_groups,
        admin_groups,
        session_idle,
        session_max,
    })
}

fn listen(cx: &mut Ctx<'_>, raw: &SString, others: &Others<'_>) -> Option<SocketAddr> {
    let Ok(listen) = raw.get_ref().parse::<SocketAddr>() else {
        cx.err(
            &raw.span(),
            format!(
                "console.listen: {:?} is not an address like 127.0.0.1:8443",
                raw.get_ref()
            ),
        );
        return None;
    };
    if others.ssh.iter().any(|s| overlaps(*s, listen)) {
        cx.err(
            &raw.span(),
            format!("console.listen: {listen} is an SSH port (server.listen); give the console its own port"),
        );
    }
    if others.metrics.is_some_and(|m| overlaps(m, listen)) {
        cx.err(
            &raw.span(),
            format!("console.listen: {listen} is the metrics port (metrics.listen); give the console its own port"),
        );
    }
    Some(listen)
}

/// Would binding both fail, or serve both on one socket? Same port, and
/// the same address or a wildcard on either side.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// `tls_cert` and `tls_key`: both (readable) or neither; an empty string
/// is neither (DESIGN.md §12 writes them empty). Neither means plain HTTP,
/// allowed only on loopback.
fn tls(cx: &mut Ctx<'_>, raw: &RawConsole, listen: SocketAddr) -> Option<ConsoleTls> {
    let given = |v: &Option<SString>| v.clone().filter(|s| !s.get_ref().is_empty());
    match (given(&raw.tls_cert), given(&raw.tls_key)) {
        (Some(cert), Some(key)) => {
            let ok_cert = cx.read("console.tls_cert", &cert).is_some();
            let ok_key = cx.read("console.tls_key", &key).is_some();
            (ok_cert && ok_key).then(|| ConsoleTls {
                cert: cx.path(cert.get_ref()),
                key: cx.path(key.get_ref()),
            })
        }
        (Some(one), None) | (None, Some(one)) => {
            cx.err(
                &one.span(),
                "console: give both tls_cert and tls_key (HTTPS), or neither (plain HTTP on loopback)",
            );
            None
        }
        (None, None) => {
            if !listen.ip().is_loopback() {
                cx.err(
                    &raw.listen.span(),
                    format!(
                        "console.listen: plain HTTP on {listen} would send logins and session cookies in clear text; \
                         set tls_cert and tls_key, or listen on loopback (127.0.0.1) behind a TLS reverse proxy"
                    ),
                );
            }
            None
        }
    }
}

/// `public_url`: an absolute http(s) URL without query or fragment; https
/// unless the console listens on loopback (a local proxy or a test).
fn public_url(cx: &mut Ctx<'_>, raw: &SString, listen: SocketAddr) -> Option<String> {
    let text = raw.get_ref();
    let url = match openidconnect::url::Url::parse(text) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https")
                && u.host().is_some()
                && u.query().is_none()
                && u.fragment().is_none()
                && u.username().is_empty()
                && u.password().is_none() =>
        {
            u
        }
        _ => {
            cx.err(
                &raw.span(),
                format!(
                    "console.public_url: {text:?} is not a URL like https://bastion.example.com:8443"
                ),
            );
            return None;
        }
    };
    if url.scheme() != "https" && !listen.ip().is_loopback() {
        cx.err(
            &raw.span(),
            format!("console.public_url: {text:?} must be https:// (plain http only when console.listen is loopback)"),
        );
    }
    Some(url.as_str().trim_end_matches('/').to_string())
}
