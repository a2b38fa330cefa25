//! Channels after login: session channels (text only, no shell), refusals,
//! and the forward task of a `direct-tcpip` channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use russh::server::ChannelOpenHandle;
use russh::server::Msg;
use russh::{Channel, ChannelId, ChannelOpenFailure};

use super::connection::ConnCtx;
use crate::audit::{Audit, ForwardRecord};
use crate::auth::Identity;
use crate::config::SharedConfig;
use crate::forward::{self, Counters, Limits};
use crate::policy::{self, Refusal, Request, SystemResolver};

/// Channel requests portvakt refuses; the names are audit reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Shell,
    Exec,
    Subsystem,
    RemoteForward,
    X11,
    AgentForward,
    Streamlocal,
    TooManyChannels,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Shell => "shell_refused",
            Refused::Exec => "exec_refused",
            Refused::Subsystem => "subsystem_refused",
            Refused::RemoteForward => "remote_forward_refused",
            Refused::X11 => "x11_refused",
            Refused::AgentForward => "agent_forward_refused",
            Refused::Streamlocal => "streamlocal_refused",
            Refused::TooManyChannels => "too_many_channels",
        }
    }
}

/// Open session channels of a connection, and whether each asked for a pty
/// (then lines end in CRLF).
#[derive(Debug, Default)]
pub struct Sessions {
    pty: HashMap<ChannelId, bool>,
}

/// Session channels one connection may hold open at once.
const MAX_SESSIONS: usize = 4;

impl Sessions {
    /// Register a new session channel; false when there are too many.
    pub fn open(&mut self, id: ChannelId) -> bool {
        if self.pty.len() >= MAX_SESSIONS {
            return false;
        }
        self.pty.insert(id, false);
        true
    }
    pub fn pty(&mut self, id: ChannelId) {
        if let Some(p) = self.pty.get_mut(&id) {
            *p = true;
        }
    }
    pub fn has_pty(&self, id: ChannelId) -> bool {
        self.pty.get(&id).copied().unwrap_or(false)
    }
    pub fn close(&mut self, id: ChannelId) {
        self.pty.remove(&id);
    }
}

/// Everything a forward task needs, moved off the session loop.
pub struct ForwardJob {
    pub audit: Audit,
    /// This node's live forwards (reload re-checks them).
    pub forwards: Arc<super::forwards::Forwards>,
    /// The config in force; loaded when the decision is made.
    pub config: SharedConfig,
    pub ctx: Arc<ConnCtx>,
    pub identity: Identity,
    pub host: String,
    pub port: u32,
    pub channel: Channel<Msg>,
    pub reply: ChannelOpenHandle,
}

/// Decide, audit (before dialling), dial, pump, audit the end.
pub async fn forward(job: ForwardJob) {
    let ForwardJob {
        audit,
        forwards,
        config,
        ctx,
        identity,
        host,
        port,
        channel,
        reply,
    } = job;
    // Registered before deciding: a reload from here on re-checks this
    // forward too (and ends it through `live.forward.cancel`); one that came
    // before is seen by loading the config below.
    let live = forwards.register(identity.clone(), host.clone(), port, ctx.forwards_token());
    let cancelled = &live.forward.cancel;
    let cfg = config.load_full();
    let mut rec = ForwardRecord {
        connection_id: ctx.id().to_string(),
        user: identity.user().to_string(),
        auth_method: identity.method().as_str().to_string(),
        source: ctx.source(),
        target: None,
        host: host.clone(),
        port,
    };
    let req = Request { host: &host, port };
    let user = identity.user();

    let decided = if identity.may_forward() {
        let subject = identity.subject(&cfg);
        tokio::select! {
            d = policy::decide(&cfg.policy, &subject, &req, &SystemResolver) => d,
            () = cancelled.cancelled() => return,
        }
    } else {
        audit
            .forward_refused(&rec, "denied", "certificate_no_port_forwarding")
            .await;
        reply
            .reject(prohibited(format!(
                "portvakt: your certificate does not permit port forwarding ({req})"
            )))
            .await;
        return;
    };
    let authorized = match decided {
        Ok(a) => a,
        Err(denied) => {
            let refusal = denied.reason;
            rec.target = denied.target;
            audit
                .forward_refused(&rec, refusal.result(), refusal.as_str())
                .await;
            let message = match refusal {
                // The name is known and allowed; only DNS failed.
                Refusal::ResolveFailed => ChannelOpenFailure::Other {
                    code: 2,
                    reason: format!("portvakt: cannot resolve the address of {host}"),
                },
                // Same words for every policy refusal: nothing leaks about
                // which targets exist.
                _ => prohibited(format!("portvakt: target {req} is not allowed for {user}")),
            };
            reply.reject(message).await;
            return;
        }
    };
    rec.target = Some(authorized.target().to_string());
    let planned = authorized
        .addrs()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");

    // Fail closed: no audit row, no forward.
    let opened = if audit.store().is_healthy() {
        audit.forward_open(&rec, &planned).await
    } else {
        Err(crate::store::StoreError::Query(sqlx::Error::PoolTimedOut))
    };
    let id = match opened {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "cannot record forward; refusing it");
            audit
                .forward_refused(&rec, "denied", "audit_unavailable")
                .await;
            reply
                .reject(prohibited(
                    "portvakt: the audit trail is unavailable, so forwarding is refused".into(),
                ))
                .await;
            return;
        }
    };
    let dial_start = Instant::now();
    let dialled = tokio::select! {
        d = forward::dial(&authorized, cfg.sessions.connect_timeout) => d,
        () = cancelled.cancelled() => {
            let reason = live.forward.reason().unwrap_or_else(|| ctx.forward_close_reason());
            audit.forward_failed(id, &rec, reason).await;
            return;
        }
    };
    crate::metrics::get()
        .dial_seconds
        .observe(dial_start.elapsed().as_secs_f64());
    let (tcp, addr) = match dialled {
        Ok(x) => x,
        Err(e) => {
            audit.forward_failed(id, &rec, e.as_str()).await;
            let what = match e {
                forward::DialError::Refused => "connection refused",
                forward::DialError::Timeout => "no answer in time",
                forward::DialError::Failed(_) => "cannot connect",
            };
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 2,
                    reason: format!("portvakt: {} ({what})", authorized.target()),
                })
                .await;
            return;
        }
    };
    if addr.to_string() != planned {
        audit.forward_dialled(id, &addr.to_string()).await;
    }
    reply.accept().await;
    let started = Instant::now();
    let counters = Counters {
        totals: Some(crate::metrics::bytes_counters()),
        ..Default::default()
    };
    let limits = Limits {
        idle_timeout: cfg.sessions.idle_timeout,
        write_timeout: Limits::write_timeout(cfg.sessions.idle_timeout),
        deadline: ctx.deadline(),
    };
    let end = forward::pump(
        channel,
        tcp,
        &limits,
        &live.forward.cancel,
        || {
            live.forward
                .reason()
                .unwrap_or_else(|| ctx.forward_close_reason())
        },
        &counters,
    )
    .await;
    if let forward::End::Error(e) = &end {
        tracing::debug!(forward_id = id, error = %e, "forward ended with an error");
    }
    audit
        .forward_close(
            id,
            &rec,
            counters
                .to_target
                .load(std::sync::atomic::Ordering::Relaxed),
            counters
                .from_target
                .load(std::sync::atomic::Ordering::Relaxed),
            end.reason(),
            started.elapsed(),
        )
        .await;
}

fn prohibited(reason: String) -> ChannelOpenFailure {
    ChannelOpenFailure::Other { code: 1, reason }
}
