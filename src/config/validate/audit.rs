//! `[audit]`: the signing key and where signed checkpoints go; and
//! `[requests]`: how access requests expire and whom they notify.

use std::path::Path;
use std::time::Duration;

use super::Ctx;
use crate::config::schema::{RawAudit, RawRequests};
use crate::config::{AuditConfig, RequestsConfig, WebhookConfig};

pub(super) fn audit(cx: &mut Ctx<'_>, raw: &RawAudit, host_key_dir: &Path) -> AuditConfig {
    let signing_key = raw
        .signing_key
        .as_ref()
        .map(|f| cx.path(f.get_ref()))
        .unwrap_or_else(|| host_key_dir.join("audit_signing_key"));
    let checkpoint_file = raw
        .checkpoint_file
        .as_ref()
        .filter(|f| !f.get_ref().is_empty())
        .map(|f| cx.path(f.get_ref()));
    let checkpoint_url = match &raw.checkpoint_url {
        Some(u) if !u.get_ref().is_empty() => {
            if !crate::config::is_secure_url(u.get_ref()) {
                cx.err(
                    &u.span(),
                    format!(
                        "audit.checkpoint_url: {:?} must be an https:// URL (plain http only to this machine)",
                        u.get_ref()
                    ),
                );
            }
            Some(u.get_ref().clone())
        }
        _ => None,
    };
    AuditConfig {
        signing_key,
        checkpoint_every: cx.int(
            "audit.checkpoint_every",
            &raw.checkpoint_every,
            1000,
            1..1_000_001,
        ) as u64,
        checkpoint_interval: cx.duration(
            "audit.checkpoint_interval",
            &raw.checkpoint_interval,
            Duration::from_secs(60),
        ),
        checkpoint_file,
        checkpoint_url,
    }
}

pub(super) fn requests(cx: &mut Ctx<'_>, raw: &RawRequests) -> RequestsConfig {
    let pending_ttl = cx.duration(
        "requests.pending_ttl",
        &raw.pending_ttl,
        Duration::from_secs(3600),
    );
    let url = raw.webhook_url.as_ref().filter(|u| !u.get_ref().is_empty());
    let webhook = match (url, &raw.webhook_secret_file) {
        (None, _) => None,
        (Some(u), None) => {
            cx.err(
                &u.span(),
                "requests.webhook_url: set webhook_secret_file too (the receiver checks each body's HMAC)",
            );
            None
        }
        (Some(u), Some(f)) => {
            if !crate::config::is_secure_url(u.get_ref()) {
                cx.err(
                    &u.span(),
                    format!(
                        "requests.webhook_url: {:?} must be an https:// URL (plain http only to this machine)",
                        u.get_ref()
                    ),
                );
            }
            let secret = cx
                .read("requests.webhook_secret_file", f)
                .map(|s| s.trim().as_bytes().to_vec());
            match secret {
                Some(s) if s.len() >= 16 => Some(WebhookConfig {
                    url: u.get_ref().clone(),
                    secret: s,
                }),
                Some(_) => {
                    cx.err(
                        &f.span(),
                        "requests.webhook_secret_file: the secret must be at least 16 characters",
                    );
                    None
                }
                None => None,
            }
        }
    };
    RequestsConfig {
        pending_ttl,
        webhook,
    }
}
