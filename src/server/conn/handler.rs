//! The russh [`Handler`] of one connection: each callback hands its request
//! to the login ([`Login`]), the session text, the channel refusals or the
//! forward task, in a few lines. No decision is made here.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use russh::keys::ssh_key::Certificate;
use russh::server::{
    Auth, CertificateRefusal, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Response, Session,
    SignatureRefusal, VerifiedPublicKey,
};
use russh::{Channel, ChannelId};

use super::ConnCtx;
use super::forward_task::{self, ForwardJob};
use super::session::Sessions;
use super::sink::Sink;
use crate::auth::login::{self, Decision, Login};
use crate::auth::{AuthFailure, Identity};
use crate::config::Config;
use crate::reasons::{ChannelRefusal, CloseReason};
use crate::server::ServerState;
use crate::server::limits::LoginSlot;

/// The russh handler of one connection.
pub struct Connection {
    state: Arc<ServerState>,
    ctx: Arc<ConnCtx>,
    login: Login<Sink>,
    /// Held while logging in (`max_unauthenticated`), dropped on login.
    login_permit: Option<LoginSlot>,
    /// `ServerState::reloads` when the connection opened.
    reloads_at_open: u64,
    /// Session channels (the text shown on `ssh user@bastion`).
    sessions: Sessions,
}

impl Connection {
    /// `grace_end`: when the login grace time ends the connection.
    pub fn new(
        state: Arc<ServerState>,
        ctx: Arc<ConnCtx>,
        permit: LoginSlot,
        grace_end: tokio::time::Instant,
    ) -> Self {
        let sink = Sink::new(state.clone(), ctx.clone());
        let login = Login::new(
            state.config.clone(),
            state.services.clone(),
            ctx.source(),
            sink,
            ctx.trail(),
            grace_end,
        );
        Connection {
            reloads_at_open: state.reloads.load(Ordering::SeqCst),
            sessions: Sessions::new(state.clone(), ctx.clone()),
            login,
            state,
            ctx,
            login_permit: Some(permit),
        }
    }

    /// The config in force now (a reload reaches the next decision).
    fn cfg(&self) -> Arc<Config> {
        self.state.config.load_full()
    }

    async fn decided(&mut self, d: Decision) -> Auth {
        match d {
            Decision::Accept(id) => self.accept(id).await,
            Decision::Reply(auth) => auth,
        }
    }

    /// The checks passed: let the client in once the login is stored.
    async fn accept(&mut self, id: Identity) -> Auth {
        let user = id.user().to_string();
        let method = id.method();
        let refused = |this: &mut Self, why: AuthFailure, close: CloseReason| {
            this.ctx.close(close);
            this.login.refuse(&user, method.ssh_method(), why, None)
        };
        // Fail closed: without the audit database, nobody gets in.
        if !self.state.services.store.is_healthy() {
            return refused(
                self,
                AuthFailure::DatabaseUnavailable,
                CloseReason::DatabaseUnavailable,
            );
        }
        let login_seconds = self.ctx.opened().elapsed().as_secs_f64();
        let mut ev = crate::audit::Event::new(crate::audit::EventKind::AuthSuccess)
            .detail("key_fingerprint", id.key_fingerprint())
            .detail("detail", id.detail());
        if let Some(g) = id.grant_id() {
            ev = ev.detail("grant_id", g);
            self.state.grant_watch.register(g, &self.ctx);
        }
        self.ctx.authenticated(id, self.cfg().sessions.max_duration);
        // The connection is in `state.live` since it opened, so a reload
        // from here on sees this login. One that came while it was logging
        // in (its checks may have used the old config) is caught by asking
        // once more; without a reload there is nothing to ask again.
        let reloaded = self.state.reloads.load(Ordering::SeqCst) != self.reloads_at_open;
        if let Some(id) = self.ctx.identity()
            && reloaded
            && let Err(why) = self.login.authenticator().revalidate(id, SystemTime::now())
        {
            return refused(self, why, CloseReason::ConfigRevoked);
        }
        // The login waits for its row, as forwards do: no row, no login.
        let stored = self
            .state
            .audit
            .login(
                self.ctx.id(),
                self.ctx.source(),
                ev,
                &user,
                method,
                login_seconds,
            )
            .await;
        if !stored {
            return refused(
                self,
                AuthFailure::DatabaseUnavailable,
                CloseReason::DatabaseUnavailable,
            );
        }
        Auth::Accept
    }

    fn refused(&self, what: ChannelRefusal, detail: Option<&str>) {
        self.sessions.refused(what, detail);
    }
}

impl Handler for Connection {
    type Error = russh::Error;

    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        let banner = self.cfg().server.banner.clone();
        Ok(banner.map(|b| format!("{}\r\n", b.trim_end())))
    }

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        Ok(self.login.none(user))
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(self.login.password(user))
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.login.publickey_offered(user, &offer))
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let d = self.login.publickey(user, key.public_key.key_data()).await;
        Ok(self.decided(d).await)
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let answers = response.map(login::answers);
        let d = self.login.keyboard_interactive(user, answers).await;
        Ok(self.decided(d).await)
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        let d = self.login.certificate(user, cert).await;
        Ok(self.decided(d).await)
    }

    async fn auth_certificate_refused(
        &mut self,
        user: &str,
        cert: &Certificate,
        reason: CertificateRefusal,
    ) -> Result<(), Self::Error> {
        self.login.certificate_refused(user, cert, reason);
        Ok(())
    }

    async fn auth_signature_refused(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
        reason: SignatureRefusal,
    ) -> Result<(), Self::Error> {
        self.login.signature_refused(user, &offer, reason);
        Ok(())
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        // No longer counts against max_unauthenticated.
        self.login_permit = None;
        self.ctx.set_client_version(session.remote_sshid());
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.ctx.is_authenticated() && self.sessions.open(channel.id()) {
            reply.accept().await;
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Accepted so that the text shows without a warning; no shell follows.
        self.sessions.pty(channel);
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.sessions
            .text(channel, ChannelRefusal::Shell, None, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(&data[..data.len().min(4096)]).into_owned();
        if command.trim() == "logout" {
            return self.sessions.logout(channel, session);
        }
        if let Some(cmd) = crate::requests::commands::parse(&command) {
            return self.sessions.requests(channel, cmd, session);
        }
        self.sessions
            .text(channel, ChannelRefusal::Exec, Some(command), session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused(ChannelRefusal::Subsystem, Some(name));
        session.channel_failure(channel)?;
        session.close(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused(ChannelRefusal::X11, None);
        session.channel_failure(channel)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused(ChannelRefusal::AgentForward, None);
        Ok(false)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.sessions.close(channel);
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        _reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused(ChannelRefusal::X11, None);
        Ok(())
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        _reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused(
            ChannelRefusal::RemoteForward,
            Some(&format!("{host}:{port}")),
        );
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        _reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused(ChannelRefusal::Streamlocal, Some(socket_path));
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused(
            ChannelRefusal::RemoteForward,
            Some(&format!("{address}:{port}")),
        );
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused(ChannelRefusal::Streamlocal, Some(socket_path));
        Ok(false)
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(identity) = self.ctx.shared_identity() else {
            return Ok(());
        };
        if self.ctx.is_closing() {
            return Ok(());
        }
        let max = self.cfg().server.max_channels_per_connection;
        if self.ctx.forward_started() > max {
            self.ctx.forward_ended();
            self.refused(
                ChannelRefusal::TooManyChannels,
                Some(&format!("{host}:{port}")),
            );
            let reason = format!("portvakt: at most {max} forwards per connection");
            reply
                .reject(russh::ChannelOpenFailure::Other { code: 4, reason })
                .await;
            return Ok(());
        }
        let job = ForwardJob {
            audit: self.state.audit.clone(),
            forwards: self.state.forwards.clone(),
            config: self.state.config.clone(),
            ctx: self.ctx.clone(),
            identity,
            host: host.to_string(),
            port,
            channel,
            reply,
            recording: self.state.recording.clone(),
        };
        let ctx = self.ctx.clone();
        self.ctx.spawn(async move {
            forward_task::forward(job).await;
            ctx.forward_ended();
        });
        Ok(())
    }
}
