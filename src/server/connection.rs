//! One SSH connection: its shared state ([`ConnCtx`]) and the russh
//! [`Handler`] that turns callbacks into calls on `auth`, `policy` and
//! `forward`. No decision is made here.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use russh::keys::ssh_key::Certificate;
use russh::server::{
    Auth, CertificateRefusal, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Response, Session,
    SignatureRefusal, VerifiedPublicKey,
};
use russh::{Channel, ChannelId};
use russh::{MethodKind, MethodSet};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

use super::ServerState;
use super::channel::{self, Refused};
use super::limits::LoginSlot;
use crate::audit::{Event, EventKind};
use crate::auth::interactive::{Interactive, Step};
use crate::auth::{AuthFailure, Authenticator, Identity, KeyOutcome, fingerprint};
use crate::config::Config;

/// How long a closing connection waits for its forwards to record their end.
const FINISH_WAIT: Duration = Duration::from_secs(10);

/// State of one connection shared by its handler, its forward tasks and the
/// task that drives it.
#[derive(Debug)]
pub struct ConnCtx {
    id: String,
    source: SocketAddr,
    /// The address the client connected to (shown in the `ssh -J` hint).
    local: SocketAddr,
    opened: Instant,
    /// Fires when the connection must end (wakes the driving task).
    cancel: CancellationToken,
    /// Fires when the forwards must end; every forward task listens. Fired
    /// after `cancel`, once the client was told why.
    forwards_cancel: CancellationToken,
    /// The first reason given for ending, which is the one recorded.
    reason: OnceLock<&'static str>,
    identity: OnceLock<Identity>,
    /// When the login stops being valid, and the reason to record then.
    deadline: OnceLock<(Instant, &'static str)>,
    /// Flips to true on login (wakes the driving task to arm the deadline).
    authenticated: watch::Sender<bool>,
    /// Forward tasks; waited for so their close rows are written.
    tasks: TaskTracker,
    /// Open (or opening) forwards; an idle connection has none.
    forwards: AtomicUsize,
    /// Milliseconds after `opened` of the last channel activity.
    last_activity: AtomicU64,
    /// The client's SSH version string, known after login.
    client_version: OnceLock<String>,
    /// The last user name a login attempt was made for (for the audit of a
    /// connection that never logged in).
    attempted: std::sync::Mutex<Option<String>>,
    /// A login attempt was refused (and audited) on this connection.
    refused: std::sync::atomic::AtomicBool,
    /// The last key refused as unknown (audited only if no login follows).
    unknown_key: std::sync::Mutex<Option<String>>,
    /// Channel refusals by reason: the first of each is audited at once,
    /// the rest counted and audited as one row when the connection ends,
    /// so a client flooding requests cannot crowd out other rows.
    channel_refusals: std::sync::Mutex<std::collections::HashMap<&'static str, u64>>,
}

impl ConnCtx {
    pub fn new(source: SocketAddr, local: SocketAddr) -> Self {
        ConnCtx {
            id: uuid::Uuid::now_v7().to_string(),
            source,
            local,
            opened: Instant::now(),
            cancel: CancellationToken::new(),
            forwards_cancel: CancellationToken::new(),
            reason: OnceLock::new(),
            identity: OnceLock::new(),
            deadline: OnceLock::new(),
            authenticated: watch::Sender::new(false),
            tasks: TaskTracker::new(),
            forwards: AtomicUsize::new(0),
            last_activity: AtomicU64::new(0),
            client_version: OnceLock::new(),
            attempted: std::sync::Mutex::new(None),
            refused: std::sync::atomic::AtomicBool::new(false),
            unknown_key: std::sync::Mutex::new(None),
            channel_refusals: Default::default(),
        }
    }

    /// Count a channel refusal; true for the first of its kind.
    fn channel_refused(&self, reason: &'static str) -> bool {
        let Ok(mut m) = self.channel_refusals.lock() else {
            return true;
        };
        let n = m.entry(reason).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Refusals after the first of each kind, by reason.
    pub fn repeated_channel_refusals(&self) -> Vec<(&'static str, u64)> {
        self.channel_refusals
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, n)| **n > 1)
                    .map(|(r, n)| (*r, n - 1))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn source(&self) -> SocketAddr {
        self.source
    }
    pub fn local(&self) -> SocketAddr {
        self.local
    }
    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// Record why the connection ends (first reason wins), without ending
    /// its forwards yet.
    pub fn set_reason(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
    }

    /// Give the forwards up to `wait` to end by themselves (no new ones can
    /// start after this).
    pub async fn settle(&self, wait: Duration) {
        self.tasks.close();
        let _ = tokio::time::timeout(wait, self.tasks.wait()).await;
    }

    /// End the connection (first reason wins). The driving task tells the
    /// client why, then ends the forwards ([`Self::end_forwards`]): the other
    /// way round `ssh -W` would leave with its channel, before reading why.
    pub fn close(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
        self.cancel.cancel();
    }

    /// End every forward of this connection now.
    pub fn end_forwards(&self) {
        self.forwards_cancel.cancel();
    }
    pub fn is_closing(&self) -> bool {
        self.cancel.is_cancelled()
    }
    pub fn closing(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }
    /// Fires when this connection's forwards must end.
    pub fn forwards_token(&self) -> &CancellationToken {
        &self.forwards_cancel
    }
    /// Resolves when this connection's forwards must end.
    pub fn forwards_ending(&self) -> WaitForCancellationFuture<'_> {
        self.forwards_cancel.cancelled()
    }
    pub fn close_reason(&self) -> &'static str {
        self.reason.get().copied().unwrap_or("connection_closed")
    }
    /// The close reason of a forward that ends because its connection does.
    pub fn forward_close_reason(&self) -> &'static str {
        match self.close_reason() {
            "client_closed" | "protocol_error" | "window_exceeded" | "packet_too_large"
            | "keepalive_timeout" | "too_many_attempts" => "connection_closed",
            other => other,
        }
    }

    /// Note a login attempt for `user`.
    pub fn attempt(&self, user: &str) {
        if let Ok(mut a) = self.attempted.lock()
            && a.as_deref() != Some(user)
        {
            *a = Some(crate::text::user_name(user));
        }
    }

    /// Did the client give up on a login without any refusal audited (left
    /// at a prompt, or without a usable key)?
    pub fn login_abandoned(&self) -> bool {
        !self.is_authenticated()
            && !self.refused.load(Ordering::Relaxed)
            && self.attempted.lock().map(|a| a.is_some()).unwrap_or(false)
    }

    /// The last key refused as unknown, if any.
    pub fn unknown_key(&self) -> Option<String> {
        self.unknown_key.lock().ok().and_then(|k| k.clone())
    }

    /// Who the connection is, or tried to be.
    pub fn user_name(&self) -> Option<String> {
        match self.identity() {
            Some(id) => Some(id.user().to_string()),
            None => self.attempted.lock().ok().and_then(|a| a.clone()),
        }
    }

    pub fn client_version(&self) -> Option<&str> {
        self.client_version.get().map(String::as_str)
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.authenticated.subscribe()
    }
    pub fn is_authenticated(&self) -> bool {
        self.identity.get().is_some()
    }
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.get()
    }
    pub fn deadline(&self) -> Option<(Instant, &'static str)> {
        self.deadline.get().copied()
    }

    fn authenticated(&self, id: Identity, max_duration: Duration) {
        let cap = self.opened + max_duration;
        let expiry = id.expires_at().map(|at| {
            let left = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            Instant::now().checked_add(left)
        });
        let deadline = match expiry {
            Some(Some(at)) if at <= cap => (at, expiry_reason(&id)),
            _ => (cap, "max_duration"),
        };
        let _ = self.deadline.set(deadline);
        let _ = self.identity.set(id);
        self.authenticated.send_replace(true);
    }

    /// Run a task that belongs to this connection.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(fut);
    }

    /// Wait (bounded) for the connection's tasks after `close`.
    pub async fn finish(&self) {
        self.tasks.close();
        if tokio::time::timeout(FINISH_WAIT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(connection_id = %self.id, "forward tasks did not finish in time");
        }
    }

    pub fn touch(&self) {
        self.last_activity
            .store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    pub fn forward_started(&self) -> usize {
        self.touch();
        self.forwards.fetch_add(1, Ordering::Relaxed) + 1
    }
    pub fn forward_ended(&self) {
        self.touch();
        self.forwards.fetch_sub(1, Ordering::Relaxed);
    }
    /// When the connection counts as idle: `None` while a forward is open.
    pub fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        (self.forwards.load(Ordering::Relaxed) == 0).then(|| {
            self.opened + Duration::from_millis(self.last_activity.load(Ordering::Relaxed)) + idle
        })
    }
}

fn expiry_reason(id: &Identity) -> &'static str {
    match id.method() {
        crate::auth::AuthMethod::Certificate => "certificate_expired",
        _ => "grant_expired",
    }
}

/// The russh handler of one connection.
pub struct Connection {
    state: Arc<ServerState>,
    ctx: Arc<ConnCtx>,
    auth: Authenticator,
    /// Held while logging in (`max_unauthenticated`), dropped on login.
    login_permit: Option<LoginSlot>,
    /// `ServerState::reloads` when the connection opened.
    reloads_at_open: u64,
    /// Refused login attempts so far (not counting the "none" probe).
    tries: usize,
    /// Session channels (the text shown on `ssh user@bastion`).
    sessions: channel::Sessions,
    /// IdP device flow, TOTP and grant creation.
    interactive: Interactive,
}

impl Connection {
    pub fn new(state: Arc<ServerState>, ctx: Arc<ConnCtx>, permit: LoginSlot) -> Self {
        let auth = Authenticator::live(state.config.clone(), ctx.source().ip())
            .with_services(state.services.clone());
        let interactive =
            Interactive::new(state.config.clone(), state.services.clone(), ctx.source());
        Connection {
            interactive,
            reloads_at_open: state.reloads.load(Ordering::SeqCst),
            state,
            ctx,
            auth,
            login_permit: Some(permit),
            tries: 0,
            sessions: channel::Sessions::default(),
        }
    }

    /// The config in force now (a reload reaches the next decision).
    fn cfg(&self) -> Arc<Config> {
        self.state.config.load_full()
    }

    fn event(&self, kind: EventKind) -> Event {
        Event::new(kind).connection(self.ctx.id(), self.ctx.source())
    }

    /// Audit a refused attempt; end the connection after `max_auth_tries`.
    fn refuse(
        &mut self,
        user: &str,
        method: &str,
        failure: AuthFailure,
        key: Option<String>,
    ) -> Auth {
        self.refuse_as(user, method, failure, key, failure.counts())
    }

    /// A refusal before the client proved it holds the key (the unsigned
    /// probe, or russh's checks of a certificate before the signature):
    /// audited, but never counted towards bans. Clients offer every key and
    /// certificate they have, and anyone may replay a public certificate.
    fn refuse_unproven(
        &mut self,
        user: &str,
        method: &str,
        failure: AuthFailure,
        key: Option<String>,
    ) -> Auth {
        self.refuse_as(user, method, failure, key, false)
    }

    fn refuse_as(
        &mut self,
        user: &str,
        method: &str,
        failure: AuthFailure,
        key: Option<String>,
        counts: bool,
    ) -> Auth {
        if failure == AuthFailure::UnknownKey {
            // Clients offer every key they have before the right one (a plain
            // key before its certificate): recorded only if the connection
            // never logs in (see `ConnCtx::unknown_key`).
            if let (Ok(mut k), Some(fp)) = (self.ctx.unknown_key.lock(), key) {
                *k = Some(fp);
            }
        } else {
            let mut ev = self
                .event(EventKind::AuthFailure)
                .user(user)
                .reason(failure.as_str())
                .detail("method", method)
                .detail("counts", counts);
            if let Some(fp) = key {
                ev = ev.detail("key_fingerprint", fp);
            }
            self.state.audit.emit(ev);
            self.ctx.refused.store(true, Ordering::Relaxed);
        }
        if counts {
            self.count_failure(user, failure);
        }
        self.tries += 1;
        if self.tries >= self.cfg().auth.max_auth_tries && !self.ctx.is_closing() {
            self.state.audit.emit(
                self.event(EventKind::AuthFailure)
                    .user(user)
                    .reason(AuthFailure::TooManyAttempts.as_str())
                    .detail("tries", self.tries),
            );
            self.ctx.close("too_many_attempts");
        }
        Auth::reject()
    }

    /// Brute-force accounting, off the session loop; a ban it causes ends
    /// this connection too.
    fn count_failure(&self, user: &str, failure: AuthFailure) {
        let state = self.state.clone();
        let lockout = self.state.services.lockout.clone();
        let audit = self.state.audit.clone();
        let ctx = self.ctx.clone();
        let cfg = self.cfg().lockout.clone();
        let user = user.to_string();
        self.ctx.spawn(async move {
            match lockout
                .record_failure(ctx.source().ip(), Some(&user), failure.as_str(), &cfg)
                .await
            {
                Ok(Some(ban)) => {
                    ctx.close("banned");
                    // Every connection of the banned source that is still
                    // logging in goes too, not only the one that tripped it.
                    for other in state.live.snapshot() {
                        if !other.is_authenticated()
                            && lockout.key_of(other.source().ip()) == ban.source
                        {
                            other.close("banned");
                        }
                    }
                    audit
                        .record(
                            Event::new(EventKind::LockoutBan)
                                .connection(ctx.id(), ctx.source())
                                .user(user)
                                .reason("too_many_failures")
                                .detail("banned", ban.source)
                                .detail("failures", ban.failures)
                                .detail("until", crate::clock::rfc3339_micros(ban.until)),
                        )
                        .await;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot record a login failure"),
            }
        });
    }

    /// A user name under attack waits before each attempt is checked.
    async fn slow_down(&self, user: &str) {
        let delay = self
            .state
            .services
            .lockout
            .user_delay(user, &self.cfg().lockout);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    async fn accept(&mut self, id: Identity) -> Auth {
        let user = id.user().to_string();
        let method = id.method().as_str();
        // Fail closed: without the audit database, nobody gets in.
        if !self.state.services.store.is_healthy() {
            let auth = self.refuse(&user, method, AuthFailure::DatabaseUnavailable, None);
            self.ctx.close("database_unavailable");
            return auth;
        }
        let mut ev = self
            .event(EventKind::AuthSuccess)
            .detail("login_seconds", self.ctx.opened().elapsed().as_secs_f64())
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
        let Some(id) = self.ctx.identity() else {
            return Auth::reject();
        };
        let reloaded = self.state.reloads.load(Ordering::SeqCst) != self.reloads_at_open;
        let still = if reloaded {
            self.auth.revalidate(id, SystemTime::now())
        } else {
            Ok(())
        };
        if let Err(why) = still {
            let auth = self.refuse(&user, method, why, None);
            self.ctx.close("config_revoked");
            return auth;
        }
        // The login waits for its row, as forwards do: no row, no login.
        if !self
            .state
            .audit
            .login(self.ctx.id(), self.ctx.source(), ev, &user, method)
            .await
        {
            let auth = self.refuse(&user, method, AuthFailure::DatabaseUnavailable, None);
            self.ctx.close("database_unavailable");
            return auth;
        }
        Auth::Accept
    }

    /// Once closing (too many attempts), refuse without further ado.
    fn closing(&self) -> bool {
        self.ctx.is_closing()
    }
}

impl Handler for Connection {
    type Error = russh::Error;

    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        Ok(self
            .cfg()
            .server
            .banner
            .as_ref()
            .map(|b| format!("{}\r\n", b.trim_end())))
    }

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        self.ctx.attempt(user);
        // Every client starts with "none" to learn the methods; only a denied
        // user name is worth recording here.
        match self.auth.check_user(user) {
            Err(e) if !self.closing() => Ok(self.refuse(user, "none", e, None)),
            _ => Ok(Auth::reject()),
        }
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        self.ctx.attempt(user);
        if self.closing() {
            return Ok(Auth::reject());
        }
        let failure = self
            .auth
            .check_user(user)
            .err()
            .unwrap_or(AuthFailure::PasswordRefused);
        Ok(self.refuse(user, "password", failure, None))
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        self.ctx.attempt(user);
        if self.closing() {
            return Ok(Auth::reject());
        }
        // Refuse at the probe what can never log in, before the client signs
        // (sshd does the same); the checks run again after the signature.
        let key = offer.public_key.key_data();
        let (method, checked) = match offer.certificate {
            Some(cert) => (
                "certificate",
                self.auth.offered(user, offer.algorithm).and_then(|()| {
                    self.auth
                        .certificate(user, cert, SystemTime::now())
                        .map(drop)
                }),
            ),
            None => {
                // Offered again after the partial success it earned: let the
                // client move on to its certificate or keyboard-interactive.
                if self.interactive.is_proven(user, &fingerprint(key)) {
                    return Ok(Auth::reject());
                }
                (
                    "publickey",
                    self.auth
                        .offered(user, offer.algorithm)
                        .and_then(|()| self.auth.offered_key(user, key)),
                )
            }
        };
        match checked {
            Ok(()) => Ok(Auth::Accept),
            Err(e) => Ok(self.refuse_unproven(user, method, e, Some(fingerprint(key)))),
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.ctx.attempt(user);
        self.slow_down(user).await;
        if self.closing() {
            return Ok(Auth::reject());
        }
        let key = key.public_key.key_data();
        match self.auth.key_login(user, key).await {
            KeyOutcome::Accept(id) => Ok(self.accept(id).await),
            KeyOutcome::SecondStep { key, totp_user } => {
                self.interactive.key_proven(user, key, totp_user);
                // publickey stays listed so that a certificate offered after
                // this key still gets its turn (OpenSSH retries its keys
                // after a partial success).
                Ok(Auth::Reject {
                    proceed_with_methods: Some(MethodSet::from(
                        &[MethodKind::PublicKey, MethodKind::KeyboardInteractive][..],
                    )),
                    partial_success: true,
                })
            }
            KeyOutcome::Reject(e) => Ok(self.refuse(user, "publickey", e, Some(fingerprint(key)))),
        }
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        self.ctx.attempt(user);
        if self.closing() {
            return Ok(Auth::reject());
        }
        if let Err(e) = self.auth.check_user(user) {
            return Ok(self.refuse(user, "keyboard-interactive", e, None));
        }
        let step = match response {
            None => self.interactive.start(user).await,
            Some(answers) => {
                self.slow_down(user).await;
                // A prompt has one answer; extra ones are ignored, not stored.
                let answers = answers
                    .take(4)
                    .map(|b| String::from_utf8_lossy(&b[..b.len().min(256)]).into_owned())
                    .collect();
                self.interactive.respond(user, answers).await
            }
        };
        if let Some(lock) = self.interactive.take_user_lock() {
            self.state
                .audit
                .record(
                    self.event(EventKind::LockoutUser)
                        .user(lock.user)
                        .reason("too_many_totp_failures")
                        .detail("failures", lock.failures)
                        .detail("until", crate::clock::rfc3339_micros(lock.until)),
                )
                .await;
        }
        if self.interactive.take_enrolled() {
            self.state
                .audit
                .record(
                    self.event(EventKind::TotpEnroll)
                        .user(user)
                        .detail("by", "self"),
                )
                .await;
        }
        Ok(match step {
            Step::Prompt {
                instructions,
                prompts,
            } => Auth::Partial {
                name: Cow::Borrowed("portvakt"),
                instructions: Cow::Owned(instructions),
                prompts: Cow::Owned(
                    prompts
                        .into_iter()
                        .map(|(text, echo)| (Cow::Owned(text), echo))
                        .collect(),
                ),
            },
            Step::Accept { identity, grant } => {
                if let Some(g) = grant {
                    self.state
                        .audit
                        .record(
                            self.event(EventKind::GrantCreate)
                                .user(g.user.clone())
                                .detail("grant_id", g.id)
                                .detail("key_fingerprint", g.key_fingerprint.clone())
                                .detail("method", g.method.clone())
                                .detail("expires_at", crate::clock::rfc3339(g.expires())),
                        )
                        .await;
                }
                self.accept(*identity).await
            }
            Step::Reject(f) => self.refuse(user, "keyboard-interactive", f, None),
        })
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        self.ctx.attempt(user);
        self.slow_down(user).await;
        if self.closing() {
            return Ok(Auth::reject());
        }
        match self.auth.certificate(user, cert, SystemTime::now()) {
            Ok(id) => Ok(self.accept(id).await),
            Err(e) => Ok(self.refuse(user, "certificate", e, Some(fingerprint(cert.public_key())))),
        }
    }

    async fn auth_certificate_refused(
        &mut self,
        user: &str,
        cert: &Certificate,
        reason: CertificateRefusal,
    ) -> Result<(), Self::Error> {
        self.ctx.attempt(user);
        if !self.closing() {
            let outside = reason == CertificateRefusal::OutsideValidity;
            let failure =
                self.auth
                    .certificate_refused_early(user, cert, outside, SystemTime::now());
            // russh checks the certificate before the client's signature.
            self.refuse_unproven(
                user,
                "certificate",
                failure,
                Some(fingerprint(cert.public_key())),
            );
        }
        Ok(())
    }

    async fn auth_signature_refused(
        &mut self,
        user: &str,
        request: PublicKeyOffer<'_>,
        reason: SignatureRefusal,
    ) -> Result<(), Self::Error> {
        self.ctx.attempt(user);
        if !self.closing() {
            let method = match request.certificate {
                Some(_) => "certificate",
                None => "publickey",
            };
            // The client sent a signature: counted, like a wrong password.
            self.refuse(
                user,
                method,
                AuthFailure::from(reason),
                Some(fingerprint(request.public_key.key_data())),
            );
        }
        Ok(())
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        // No longer counts against max_unauthenticated.
        self.login_permit = None;
        let version = String::from_utf8_lossy(session.remote_sshid());
        let _ = self
            .ctx
            .client_version
            .set(crate::text::clean(&version, 200));
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
        self.session_text(channel, Refused::Shell, None, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(&data[..data.len().min(256)]).into_owned();
        if command.trim() == "logout" {
            return self.logout(channel, session);
        }
        self.session_text(channel, Refused::Exec, Some(command), session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused(Refused::Subsystem, Some(name));
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
        self.refused(Refused::X11, None);
        session.channel_failure(channel)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused(Refused::AgentForward, None);
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
        self.refused(Refused::X11, None);
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
        self.refused(Refused::RemoteForward, Some(&format!("{host}:{port}")));
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        _reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused(Refused::Streamlocal, Some(socket_path));
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused(Refused::RemoteForward, Some(&format!("{address}:{port}")));
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused(Refused::Streamlocal, Some(socket_path));
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
        let Some(identity) = self.ctx.identity().cloned() else {
            return Ok(());
        };
        if self.ctx.is_closing() {
            return Ok(());
        }
        if self.ctx.forward_started() > self.cfg().server.max_channels_per_connection {
            self.ctx.forward_ended();
            self.refused(Refused::TooManyChannels, Some(&format!("{host}:{port}")));
            reply
                .reject(russh::ChannelOpenFailure::Other {
                    code: 4,
                    reason: format!(
                        "portvakt: at most {} forwards per connection",
                        self.cfg().server.max_channels_per_connection
                    ),
                })
                .await;
            return Ok(());
        }
        // Decide, audit, dial and pump off the session loop: a dead target
        // must not hold up this connection's other channels.
        let job = channel::ForwardJob {
            audit: self.state.audit.clone(),
            forwards: self.state.forwards.clone(),
            config: self.state.config.clone(),
            ctx: self.ctx.clone(),
            identity,
            host: host.to_string(),
            port,
            channel,
            reply,
        };
        let ctx = self.ctx.clone();
        self.ctx.spawn(async move {
            channel::forward(job).await;
            ctx.forward_ended();
        });
        Ok(())
    }
}

impl Connection {
    fn refused(&self, what: Refused, detail: Option<&str>) {
        if !self.ctx.channel_refused(what.as_str()) {
            return;
        }
        let mut ev = self.event(EventKind::ChannelRefused).reason(what.as_str());
        if let Some(id) = self.ctx.identity() {
            ev = ev.user(id.user());
        }
        if let Some(d) = detail {
            ev = ev.detail("request", crate::audit::clean(d));
        }
        self.state.audit.emit(ev);
    }

    /// `ssh user@bastion logout`: revoke this login's grant, so the next
    /// connection asks for a full login again.
    fn logout(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), russh::Error> {
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
        let handle = session.handle();
        let store = self.state.services.store.clone();
        let audit = self.state.audit.clone();
        let watch = self.state.grant_watch.clone();
        let ctx = self.ctx.clone();
        let ev = self
            .event(EventKind::GrantRevoke)
            .user(id.user())
            .reason("logout")
            .detail("grant_id", grant);
        self.ctx.spawn(async move {
            let revoked = crate::auth::grants::revoke(&store, Some(grant), None, "logout").await;
            let (text, status) = match &revoked {
                Ok(r) if !r.is_empty() => {
                    audit.record(ev).await;
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
                watch.revoked_except(grant, &ctx);
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                ctx.close("grant_revoked");
            }
        });
        Ok(())
    }

    /// `ssh user@bastion [command]`: who you are and how to jump, then
    /// exit status 1 and close. There is no shell.
    fn session_text(
        &mut self,
        channel: ChannelId,
        what: Refused,
        command: Option<String>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        self.refused(what, command.as_deref());
        let Some(id) = self.ctx.identity() else {
            return session.channel_failure(channel);
        };
        let text = super::session_text::render(
            id,
            &self.cfg(),
            self.ctx.local(),
            self.sessions.has_pty(channel),
        );
        session.channel_success(channel)?;
        session.extended_data(channel, 1, text.into_bytes())?;
        session.exit_status_request(channel, 1)?;
        session.eof(channel)?;
        session.close(channel)
    }
}
