//! `[audit]`: the signing key and where signed checkpoints go.

use std::path::Path;
use std::time::Duration;

use super::Ctx;
use crate::config::AuditConfig;
use crate::config::schema::RawAudit;

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
