//! Session channels: the text shown on `ssh user@bastion` (there is no
//! shell), `ssh user@bastion logout`, and the audit of refused channel
//! requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use russh::ChannelId;
use russh::server::Session;

use super::ConnCtx;
use crate::audit::{Event, EventKind};
use crate::reasons::{ChannelRefusal, CloseReason, EventReason};
use crate::server::ServerState;

/// Session channels one connection may hold open at once.
const MAX_SESSIONS: usize = 4;
/// How long a connection whose grant `logout` revoked stays, so that its
/// client can read the answer and leave by itself.
const LOGOUT_GRACE: Duration = Duration::from_secs(2);

/// Open session channels of a connection, and whether each asked for a pty
/// (then lines end in CRLF).
pub struct Sessions {
    state: Arc<ServerState>,
    ctx: Arc<ConnCtx>,
    pty: HashMap<ChannelId, bool>,
}

impl Sessions {
    pub fn new(state: Arc<ServerState>, ctx: Arc<ConnCtx>) -> Self {
        Sessions {
            state,
            ctx,
            pty: HashMap::new(),
        }
    }

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
    fn has_pty(&self, id: ChannelId) -> bool {
        self.pty.get(&id).copied().unwrap_or(false)
    }
    pub fn close(&mut self, id: ChannelId) {
        self.pty.remove(&id);
    }

    fn event(&self, kind: EventKind) -> Event {
        Event::new(kind).connection(self.ctx.id(), self.ctx.source())
    }

    /// Audit a refused channel request: the first of each kind at once, the
    /// repeats as one row when the connection ends.
    pub fn refused(&self, what: ChannelRefusal, detail: Option<&str>) {
        if !self.ctx.channel_refused(what) {
            return;
        }
        let mut ev = self.event(EventKind::ChannelRefused).reason(what);
        if let Some(id) = self.ctx.identity() {
            ev = ev.user(id.user());
        }
        if let Some(d) = detail {
            ev = ev.detail("request", crate::audit::clean(d));
        }
        self.state.audit.emit(ev);
    }

    /// `ssh user@bastion [command]`: who you are and how to jump, then
    /// exit status 1 and close.
    pub fn text(
        &mut self,
        channel: ChannelId,
        what: ChannelRefusal,
        command: Option<String>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        self.refused(what, command.as_deref());
        let Some(id) = self.ctx.identity() else {
            return session.channel_failure(channel);
        };
        let cfg = self.state.config.load();
        let host_ca = cfg
            .policy
            .targets()
            .iter()
            .any(|t| t.record.is_some())
            .then(|| self.state.recording.get(&cfg.recording, &cfg.auth).ok())
            .flatten()
            .and_then(|cas| cas.host_ca().to_openssh().ok());
        let text = super::session_text::render(
            id,
            &cfg,
            self.ctx.local(),
            self.has_pty(channel),
            host_ca.as_deref(),
        );
        session.channel_success(channel)?;
        session.extended_data(channel, 1, text.into_bytes())?;
        session.exit_status_request(channel, 1)?;
        session.eof(channel)?;
        session.close(channel)
    }

    /// `ssh user@bastion request|requests|approve|deny ...` (access
    /// requests), answered off the session loop.
    pub fn requests(
        &mut self,
        channel: ChannelId,
        cmd: Result<crate::requests::commands::Command, String>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(id) = self.ctx.shared_identity() else {
            return session.channel_failure(channel);
        };
        session.channel_success(channel)?;
        let (state, ctx, handle) = (self.state.clone(), self.ctx.clone(), session.handle());
        let crlf = self.has_pty(channel);
        self.ctx.spawn(async move {
            let (text, status) = match cmd {
                Err(usage) => (format!("portvakt: {usage}\n"), 2),
                Ok(cmd) => {
                    let cfg = state.config.load_full();
                    let subject = id.subject(&cfg);
                    let ssh = super::session_text::ssh_command(&id, &cfg, ctx.local());
                    let env = crate::requests::commands::Env {
                        cfg: &cfg,
                        store: &state.services.store,
                        audit: &state.audit,
                        webhook: &state.webhook,
                        subject: &subject,
                        node: &state.services.node,
                        ssh: &ssh,
                        connection: Some((ctx.id(), ctx.source())),
                    };
                    crate::requests::commands::execute(cmd, &env).await
                }
            };
            let text = if crlf {
                text.replace('\n', "\r\n")
            } else {
                text
            };
            let _ = if status == 0 {
                handle.data(channel, text.into_bytes()).await
            } else {
                handle.extended_data(channel, 1, text.into_bytes()).await
            };
            let _ = handle.exit_status_request(channel, status).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
        });
        Ok(())
    }

    /// `ssh user@bastion logout`: revoke this login's grant, so the next
    /// connection asks for a full login again.
    pub fn logout(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(id) = self.ctx.identity() else {
            return session.channel_failure(channel);
        };
        session.channel_success(channel)?;
        let Some(grant) = id.grant_id() else {
            let text =
                "portvakt: this login has no grant to revoke (a certificate login needs none).\n";
            session.extended_data(channel, 1, text.as_bytes().to_vec())?;
            session.exit_status_request(channel, 1)?;
            session.eof(channel)?;
            return session.close(channel);
        };
        let ev = self
            .event(EventKind::GrantRevoke)
            .user(id.user())
            .reason(EventReason::Logout)
            .detail("grant_id", grant);
        let (state, ctx, handle) = (self.state.clone(), self.ctx.clone(), session.handle());
        self.ctx.spawn(async move {
            let store = &state.services.store;
            let revoked = crate::auth::grants::revoke(store, Some(grant), None, EventReason::Logout).await;
            let (text, status) = match &revoked {
                Ok(r) if !r.is_empty() => {
                    // The event takes the row's time: `audit verify`
                    // compares them.
                    let at = r[0].revoked_at.map_or(ev.at, crate::clock::from_micros);
                    state.audit.record(ev.at(at)).await;
                    ("portvakt: your login grant is revoked; the next connection asks you to log in again.\n", 0)
                }
                Ok(_) => ("portvakt: your login grant had already ended.\n", 0),
                Err(e) => {
                    tracing::error!(error = %e, "logout: cannot revoke grant");
                    ("portvakt: cannot revoke your grant right now; try again.\n", 1)
                }
            };
            let _ = handle.data(channel, text.as_bytes().to_vec()).await;
            let _ = handle.exit_status_request(channel, status).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
            if revoked.is_ok() {
                // Every other connection riding on the grant ends now; this
                // one gets a moment to let its client leave by itself.
                state.grant_watch.revoked_except(grant, &ctx);
                tokio::time::sleep(LOGOUT_GRACE).await;
                ctx.close(CloseReason::GrantRevoked);
            }
        });
        Ok(())
    }
}
