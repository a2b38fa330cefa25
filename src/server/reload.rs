//! SIGHUP: read the config file again and make everything follow it. The
//! new config is swapped in whole; every logged-in connection's login is
//! asked again under it (those that no longer hold are ended); forwards it
//! no longer allows are closed; `[oidc]` changes take effect; settings that
//! only a restart can change are named, never silently ignored.

use std::sync::Arc;
use std::time::SystemTime;

use super::ServerState;
use crate::audit::{Event, EventKind};
use crate::auth::Authenticator;
use crate::auth::oidc::Idp;
use crate::config::{Config, ConfigError, ConfigErrors};
use crate::reasons::{CloseReason, EventReason};

/// What a reload did.
#[derive(Debug, Default)]
pub struct Reloaded {
    pub closed_connections: usize,
    pub closed_forwards: usize,
    /// Settings that changed but take effect only after a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Read the config file again; keep the old one if the new one is broken.
pub async fn reload(state: &ServerState) {
    let old = state.config.load_full();
    let ev = Event::new(EventKind::ConfigReload).detail("path", old.path.display().to_string());
    match apply(state, &old).await {
        Ok(done) => {
            let restart = done.needs_restart.join(", ");
            if !done.needs_restart.is_empty() {
                tracing::warn!(
                    needs_restart = %restart,
                    "config reloaded, but these settings change only with a restart"
                );
            }
            tracing::info!(
                closed_connections = done.closed_connections,
                closed_forwards = done.closed_forwards,
                "config reloaded"
            );
            let mut ev = ev
                .detail("result", "applied")
                .detail("closed_connections", done.closed_connections)
                .detail("closed_forwards", done.closed_forwards);
            if !done.needs_restart.is_empty() {
                ev = ev.detail("needs_restart", restart);
            }
            state.audit.record(ev).await;
        }
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!(problem = %e, "config reload rejected");
            }
            state
                .audit
                .record(
                    ev.reason(EventReason::InvalidConfig)
                        .detail("result", "rejected")
                        .detail("errors", errors.to_string()),
                )
                .await;
        }
    }
}

async fn apply(state: &ServerState, old: &Config) -> Result<Reloaded, ConfigErrors> {
    let new = Config::load(&old.path)?;
    for w in &new.warnings {
        tracing::warn!(problem = %w, "config warning");
    }
    if new.oidc != old.oidc {
        let idp = match &new.oidc {
            None => None,
            Some(o) => Some(Arc::new(Idp::new(o.clone()).map_err(|e| {
                ConfigErrors(vec![ConfigError {
                    file: new.path.clone(),
                    line: 0,
                    message: format!("[oidc]: cannot set up the identity provider client: {e}"),
                }])
            })?)),
        };
        if let Some(idp) = idp.clone() {
            // As at start: discover now, so that a broken [oidc] (an http
            // endpoint, a wrong issuer) shows in the log at once; logins
            // retry and refuse until it is usable.
            tokio::spawn(async move {
                if let Err(e) = idp.check().await {
                    tracing::warn!(issuer = %idp.config().issuer, error = %e, "identity provider not usable after the reload; IdP logins will retry");
                }
            });
        }
        state.services.idp.store(idp);
    }
    let needs_restart = needs_restart(old, &new);
    let new = Arc::new(new);
    // From here on every decision (new logins, new forwards) uses `new`;
    // what was decided before is asked again below.
    state.config.store(new.clone());
    // After the swap: a login that reads this count before the increment
    // is logged in before the snapshot below and asked there.
    state
        .reloads
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let closed_connections = revalidate_logins(state, old, &new);
    let closed_forwards = state.forwards.recheck(&new).await;
    Ok(Reloaded {
        closed_connections,
        closed_forwards,
        needs_restart,
    })
}

/// End every connection whose login the config in force would refuse now,
/// or whose user lost the last target they had.
fn revalidate_logins(state: &ServerState, old: &Config, new: &Config) -> usize {
    let now = SystemTime::now();
    let mut closed = 0;
    for ctx in state.live.snapshot() {
        let Some(id) = ctx.identity() else { continue };
        let auth = Authenticator::live(state.config.clone(), ctx.source().ip())
            .with_services(state.services.clone());
        let had_targets = old.policy.targets_for(&id.subject(old)).next().is_some();
        let has_targets = new.policy.targets_for(&id.subject(new)).next().is_some();
        let verdict = match auth.revalidate(id, now) {
            Ok(()) if had_targets && !has_targets => Err("no_target_left".to_string()),
            Ok(()) => Ok(()),
            Err(why) => Err(why.as_str().to_string()),
        };
        if let Err(why) = verdict {
            tracing::info!(
                connection_id = %ctx.id(),
                user = %id.user(),
                why = %why,
                "login no longer allowed by the config; closing the connection"
            );
            ctx.close(CloseReason::ConfigRevoked);
            closed += 1;
        }
    }
    closed
}

/// Settings read once at start (listeners, database, keys, limits sized at
/// start, the SSH algorithm set, FIDO user presence): changed values wait
/// for a restart.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.server, &new.server);
    let checks: [(&'static str, bool); 15] = [
        ("server.listen", o.listen != n.listen),
        ("server.host_key_dir", o.host_key_dir != n.host_key_dir),
        (
            "server.max_connections",
            o.max_connections != n.max_connections,
        ),
        (
            "server.max_unauthenticated",
            o.max_unauthenticated != n.max_unauthenticated,
        ),
        (
            "server.keepalive_interval",
            o.keepalive_interval != n.keepalive_interval,
        ),
        ("server.classic_kex", o.classic_kex != n.classic_kex),
        (
            "auth.allow_no_touch_required",
            old.auth.allow_no_touch_required != new.auth.allow_no_touch_required,
        ),
        ("server.node_name", o.node_name != n.node_name),
        ("database.url", old.database.url != new.database.url),
        (
            "database.retention",
            old.database.retention != new.database.retention,
        ),
        // The audit writer holds the key and the checkpoint settings.
        ("audit", old.audit != new.audit),
        (
            "requests.webhook",
            old.requests.webhook != new.requests.webhook,
        ),
        (
            "mfa.secret_key_file",
            old.mfa.secret_key_file != new.mfa.secret_key_file,
        ),
        (
            "metrics.listen",
            old.metrics.as_ref().map(|m| m.listen) != new.metrics.as_ref().map(|m| m.listen),
        ),
        (
            "log",
            old.log.level != new.log.level || old.log.format != new.log.format,
        ),
    ];
    checks
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
}
