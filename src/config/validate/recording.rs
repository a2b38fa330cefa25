//! `[recording]` and the keys of a `[[targets]]` entry with `mode = "record"`
//! (DESIGN.md §10).

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PublicKey;

use super::{Ctx, valid_name};
use crate::config::RecordingConfig;
use crate::config::schema::{RawRecording, RawTarget, SString};
use crate::policy::{Destination, HostTrust, Recorded, is_dns_name};

/// Host and user certificates live minutes; a day is the most that makes sense.
const MAX_VALIDITY: Duration = Duration::from_secs(24 * 3600);

pub(super) fn recording(
    cx: &mut Ctx<'_>,
    raw: &RawRecording,
    host_key_dir: &Path,
) -> RecordingConfig {
    let key = |cx: &mut Ctx<'_>, v: &Option<SString>, default: &str| {
        v.as_ref()
            .map(|f| cx.path(f.get_ref()))
            .unwrap_or_else(|| host_key_dir.join(default))
    };
    let host_ca_key = key(cx, &raw.host_ca_key, "recording_host_ca");
    let target_ca_key = key(cx, &raw.target_ca_key, "recording_target_ca");
    if host_ca_key == target_ca_key {
        let span = raw
            .target_ca_key
            .as_ref()
            .or(raw.host_ca_key.as_ref())
            .map(|k| k.span())
            .unwrap_or_default();
        cx.err(
            &span,
            "recording: host_ca_key and target_ca_key must be different keys",
        );
    }
    let certificate_validity = cx.duration(
        "recording.certificate_validity",
        &raw.certificate_validity,
        Duration::from_secs(300),
    );
    if certificate_validity < Duration::from_secs(60) || certificate_validity > MAX_VALIDITY {
        let span = raw
            .certificate_validity
            .as_ref()
            .map(|v| v.span())
            .unwrap_or_default();
        cx.err(
            &span,
            "recording.certificate_validity: between 1m and 24h (minutes are enough: certificates are checked at login)",
        );
    }
    let max_bytes = match &raw.max_bytes {
        None => 64 << 20,
        Some(v) => match parse_size(v.get_ref()) {
            Some(n) if n >= 4096 => n,
            _ => {
                cx.err(
                    &v.span(),
                    format!(
                        "recording.max_bytes: {:?} is not a size of at least 4KiB like \"64MiB\"",
                        v.get_ref()
                    ),
                );
                64 << 20
            }
        },
    };
    let close_on_failure = cx.one_of(
        "recording.on_failure",
        &raw.on_failure,
        true,
        &[("close", true), ("continue", false)],
    );
    RecordingConfig {
        host_ca_key,
        target_ca_key,
        certificate_validity,
        input: raw.input.unwrap_or(false),
        max_bytes,
        close_on_failure,
    }
}

/// "64MiB", "512KiB", "1GiB", "100MB", "4096": bytes.
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The recording settings of a target, when `mode = "record"`; errors for
/// keys that need it when it is not.
pub(super) fn target_record(
    cx: &mut Ctx<'_>,
    span: &Range<usize>,
    t: &RawTarget,
    destination: Option<&Destination>,
    ok: &mut bool,
) -> Option<Arc<Recorded>> {
    let name = t.name.get_ref();
    let record = cx.one_of(
        &format!("target {name}: mode"),
        &t.mode,
        false,
        &[("forward", false), ("record", true)],
    );
    if !record {
        only_with_record(cx, t, ok);
        return None;
    }
    if let Some(Destination::Cidr { .. }) = destination {
        cx.err(
            span,
            format!(
                "target {name}: a cidr target cannot be recorded (mode = \"record\" needs host)"
            ),
        );
        *ok = false;
    }
    let logins = logins(cx, span, t, ok);
    let trust = trust(cx, span, t, ok);
    let mut aliases = Vec::new();
    for a in t.aliases.iter().flatten() {
        if is_dns_name(a.get_ref()) || crate::policy::canonical_ip(a.get_ref()).is_some() {
            aliases.push(a.get_ref().clone());
        } else {
            cx.err(
                &a.span(),
                format!(
                    "target {name}: alias {:?} is not a DNS name or IP address",
                    a.get_ref()
                ),
            );
            *ok = false;
        }
    }
    Some(Arc::new(Recorded {
        logins,
        trust: trust?,
        aliases,
        agent_forwarding: t.agent_forwarding.as_ref().is_some_and(|b| *b.get_ref()),
        permit_port_forwarding: t
            .permit_port_forwarding
            .as_ref()
            .is_some_and(|b| *b.get_ref()),
    }))
}

/// Keys that mean something only for a recorded target.
fn only_with_record(cx: &mut Ctx<'_>, t: &RawTarget, ok: &mut bool) {
    let name = t.name.get_ref();
    let spans = [
        (
            "logins",
            t.logins.as_ref().and_then(|l| l.first()).map(|l| l.span()),
        ),
        ("host_key", t.host_key.as_ref().map(|k| k.span())),
        ("host_ca", t.host_ca.as_ref().map(|k| k.span())),
        (
            "aliases",
            t.aliases.as_ref().and_then(|l| l.first()).map(|l| l.span()),
        ),
        (
            "agent_forwarding",
            t.agent_forwarding.as_ref().map(|b| b.span()),
        ),
        (
            "permit_port_forwarding",
            t.permit_port_forwarding.as_ref().map(|b| b.span()),
        ),
    ];
    for (key, span) in spans {
        if let Some(span) = span {
            cx.err(
                &span,
                format!("target {name}: {key} applies only with mode = \"record\""),
            );
            *ok = false;
        }
    }
}

fn logins(cx: &mut Ctx<'_>, span: &Range<usize>, t: &RawTarget, ok: &mut bool) -> Vec<String> {
    let name = t.name.get_ref();
    let mut logins = Vec::new();
    for l in t.logins.iter().flatten() {
        let v = l.get_ref();
        if v == "{user}" || valid_name(v) {
            if v == "root" {
                cx.warn(
                    &l.span(),
                    format!("target {name}: logging in to targets as root; prefer a named account and sudo"),
                );
            }
            logins.push(v.clone());
        } else {
            cx.err(
                &l.span(),
                format!("target {name}: login {v:?} is not an account name or \"{{user}}\""),
            );
            *ok = false;
        }
    }
    if logins.is_empty() {
        cx.err(
            span,
            format!("target {name}: mode = \"record\" needs logins = [...] (accounts users may log in as; \"{{user}}\" is their own name)"),
        );
        *ok = false;
    }
    logins
}

fn trust(cx: &mut Ctx<'_>, span: &Range<usize>, t: &RawTarget, ok: &mut bool) -> Option<HostTrust> {
    let name = t.name.get_ref();
    let parse =
        |cx: &mut Ctx<'_>, key: &str, v: &SString| match PublicKey::from_openssh(v.get_ref()) {
            Ok(k) => Some(k),
            Err(_) => {
                cx.err(
                &v.span(),
                format!(
                    "target {name}: {key} is not an OpenSSH public key (\"ssh-ed25519 AAAA...\")"
                ),
            );
                None
            }
        };
    let found = match (&t.host_key, &t.host_ca) {
        (Some(k), None) => parse(cx, "host_key", k).map(HostTrust::Key),
        (None, Some(k)) => parse(cx, "host_ca", k).map(HostTrust::Ca),
        (Some(k), Some(_)) => {
            cx.err(
                &k.span(),
                format!("target {name}: give host_key or host_ca, not both"),
            );
            None
        }
        (None, None) => {
            cx.err(
                span,
                format!("target {name}: mode = \"record\" needs the target's host_key or its host_ca (portvakt never trusts a target key on first use)"),
            );
            None
        }
    };
    if found.is_none() {
        *ok = false;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_size("5 parsecs"), None);
        assert_eq!(parse_size("99999999999999999999GiB"), None);
    }
}
