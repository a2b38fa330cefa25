//! One connection's login, from the first "none" probe to an [`Identity`]
//! or the last refusal: the checks ([`Authenticator`], [`Interactive`]), the
//! tries counted against `max_auth_tries`, the user name attempted, the
//! unknown key whose refusal waits for the connection's end, the slow-down
//! of a user name under attack, and which refusals count towards bans.
//!
//! The russh handler calls one method per callback and gets back a
//! [`Decision`]. Everything that is not a login decision (writing rows,
//! recording a failure towards a ban, ending the connection) goes through
//! the [`LoginSink`] the server gives it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use russh::keys::ssh_key::Certificate;
use russh::keys::ssh_key::public::KeyData;
use russh::server::{Auth, CertificateRefusal, PublicKeyOffer, SignatureRefusal};
use russh::{MethodKind, MethodSet};

use super::interactive::{Interactive, Step};
use super::{AuthFailure, Authenticator, Identity, KeyOutcome, Services, fingerprint};
use crate::audit::{Event, EventKind};
use crate::config::SharedConfig;
use crate::reasons::{CloseReason, EventReason, SshMethod};

/// What a login needs from the connection it belongs to.
pub trait LoginSink: Send + Sync {
    /// A new audit event about this connection (its id and source set).
    fn event(&self, kind: EventKind) -> Event;
    /// Queue an event (a refusal): never waits.
    fn emit(&self, ev: Event);
    /// Store an event and wait for it (enrolments, grants, lockouts).
    fn record(&self, ev: Event) -> impl Future<Output = bool> + Send;
    /// Count a failure towards the source's ban, off the session loop.
    fn count_failure(&self, user: &str, failure: AuthFailure);
    /// End the connection.
    fn close(&self, why: CloseReason);
    fn is_closing(&self) -> bool;
}

/// The outcome of one attempt.
#[derive(Debug)]
pub enum Decision {
    /// The checks passed: the server records the login and lets it in.
    Accept(Identity),
    /// Send this to the client (a refusal already audited and counted, a
    /// prompt, or a partial success).
    Reply(Auth),
}

/// What the connection's end needs to know about a login that never
/// finished. Shared with the connection's driver.
#[derive(Debug, Default)]
pub struct Trail {
    inner: Mutex<TrailInner>,
}

#[derive(Debug, Default)]
struct TrailInner {
    /// The last user name a login attempt was made for.
    attempted: Option<String>,
    /// A refusal was audited on this connection.
    refused: bool,
    /// The last key refused as unknown: audited only if no login follows
    /// (clients offer every key they have before the right one).
    unknown_key: Option<String>,
}

/// A connection that ended without a login and without a refusal audited.
#[derive(Debug, PartialEq, Eq)]
pub struct Abandoned {
    pub user: Option<String>,
    /// The key refused as unknown, if that is why.
    pub unknown_key: Option<String>,
}

impl Abandoned {
    pub fn reason(&self) -> AuthFailure {
        match self.unknown_key {
            Some(_) => AuthFailure::UnknownKey,
            None => AuthFailure::LoginIncomplete,
        }
    }
}

impl Trail {
    fn with<T>(&self, f: impl FnOnce(&mut TrailInner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn attempt(&self, user: &str) {
        self.with(|t| {
            if t.attempted.as_deref() != Some(user) {
                t.attempted = Some(crate::text::user_name(user));
            }
        });
    }

    /// The user name last attempted (cleaned and bounded).
    pub fn user(&self) -> Option<String> {
        self.with(|t| t.attempted.clone())
    }

    /// For a connection that never logged in: did the client give up (at a
    /// prompt, or without a usable key) with no refusal audited?
    pub fn abandoned(&self) -> Option<Abandoned> {
        self.with(|t| {
            (!t.refused && t.attempted.is_some()).then(|| Abandoned {
                user: t.attempted.clone(),
                unknown_key: t.unknown_key.clone(),
            })
        })
    }
}

/// The login of one connection.
pub struct Login<S> {
    sink: S,
    auth: Authenticator,
    interactive: Interactive,
    config: SharedConfig,
    services: Arc<Services>,
    trail: Arc<Trail>,
    /// Refused attempts so far (not counting the "none" probe).
    tries: usize,
    /// When the login grace time ends the connection.
    grace_end: tokio::time::Instant,
}

/// What a slowed-down attempt leaves of the grace time for its answer.
const GRACE_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

impl<S: LoginSink> Login<S> {
    /// `trail` is shared with the connection, which reads it at its end;
    /// `grace_end` is when the login grace time ends the connection.
    pub fn new(
        config: SharedConfig,
        services: Arc<Services>,
        source: SocketAddr,
        sink: S,
        trail: Arc<Trail>,
        grace_end: tokio::time::Instant,
    ) -> Self {
        Login {
            auth: Authenticator::live(config.clone(), source.ip()).with_services(services.clone()),
            interactive: Interactive::new(config.clone(), services.clone(), source),
            config,
            services,
            sink,
            trail,
            tries: 0,
            grace_end,
        }
    }

    /// The checks, with the config in force now (a login that spans a
    /// reload is asked again).
    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    /// Every client starts with "none" to learn the methods; only a denied
    /// user name is worth recording.
    pub fn none(&mut self, user: &str) -> Auth {
        self.trail.attempt(user);
        // Fail closed, and say so while the client still has methods to try
        // (it reads the disconnect then; after its last method it would
        // only print "Permission denied").
        if !self.services.store.is_healthy() && !self.sink.is_closing() {
            return self.refuse(
                user,
                SshMethod::None,
                AuthFailure::DatabaseUnavailable,
                None,
            );
        }
        match self.auth.check_user(user) {
            Err(e) if !self.sink.is_closing() => self.refuse(user, SshMethod::None, e, None),
            _ => Auth::reject(),
        }
    }

    /// Passwords are never accepted.
    pub fn password(&mut self, user: &str) -> Auth {
        self.trail.attempt(user);
        if self.sink.is_closing() {
            return Auth::reject();
        }
        let failure = self
            .auth
            .check_user(user)
            .err()
            .unwrap_or(AuthFailure::PasswordRefused);
        self.refuse(user, SshMethod::Password, failure, None)
    }

    /// Refuse at the probe what can never log in, before the client signs
    /// (sshd does the same); the checks run again after the signature.
    pub fn publickey_offered(&mut self, user: &str, offer: &PublicKeyOffer<'_>) -> Auth {
        self.trail.attempt(user);
        if self.sink.is_closing() {
            return Auth::reject();
        }
        let key = offer.public_key.key_data();
        let now = SystemTime::now();
        let offered = self.auth.offered(user, offer.algorithm);
        let (method, checked) = match offer.certificate {
            Some(cert) => (
                SshMethod::Certificate,
                offered.and_then(|()| self.auth.certificate(user, cert, now).map(drop)),
            ),
            // Offered again after the partial success it earned: let the
            // client move on to its certificate or keyboard-interactive.
            None if self.interactive.is_proven(user, &fingerprint(key)) => {
                return Auth::reject();
            }
            None => (
                SshMethod::Publickey,
                offered.and_then(|()| self.auth.offered_key(user, key)),
            ),
        };
        match checked {
            Ok(()) => Auth::Accept,
            Err(e) => self.refuse_unproven(user, method, e, Some(fingerprint(key))),
        }
    }

    /// A plain key, signature verified.
    pub async fn publickey(&mut self, user: &str, key: &KeyData) -> Decision {
        self.trail.attempt(user);
        self.slow_down(user).await;
        if self.sink.is_closing() {
            return Decision::Reply(Auth::reject());
        }
        match self.auth.key_login(user, key).await {
            KeyOutcome::Accept(id) => Decision::Accept(id),
            KeyOutcome::SecondStep { key, totp_user } => {
                self.interactive.key_proven(user, key, totp_user);
                // publickey stays listed so that a certificate offered after
                // this key still gets its turn (OpenSSH retries its keys
                // after a partial success).
                Decision::Reply(Auth::Reject {
                    proceed_with_methods: Some(MethodSet::from(
                        &[MethodKind::PublicKey, MethodKind::KeyboardInteractive][..],
                    )),
                    partial_success: true,
                })
            }
            KeyOutcome::Reject(e) => {
                Decision::Reply(self.refuse(user, SshMethod::Publickey, e, Some(fingerprint(key))))
            }
        }
    }

    /// A certificate, signature verified.
    pub async fn certificate(&mut self, user: &str, cert: &Certificate) -> Decision {
        self.trail.attempt(user);
        self.slow_down(user).await;
        if self.sink.is_closing() {
            return Decision::Reply(Auth::reject());
        }
        match self.auth.certificate(user, cert, SystemTime::now()) {
            Ok(id) => Decision::Accept(id),
            Err(e) => {
                let key = Some(fingerprint(cert.public_key()));
                Decision::Reply(self.refuse(user, SshMethod::Certificate, e, key))
            }
        }
    }

    /// russh refused a certificate before the client's signature (outside
    /// its validity, or a bad CA signature): audited, never counted.
    pub fn certificate_refused(
        &mut self,
        user: &str,
        cert: &Certificate,
        reason: CertificateRefusal,
    ) {
        self.trail.attempt(user);
        if self.sink.is_closing() {
            return;
        }
        let outside = reason == CertificateRefusal::OutsideValidity;
        let failure = self
            .auth
            .certificate_refused_early(user, cert, outside, SystemTime::now());
        let key = Some(fingerprint(cert.public_key()));
        self.refuse_unproven(user, SshMethod::Certificate, failure, key);
    }

    /// The client's signature did not verify: counted, like a wrong password.
    pub fn signature_refused(
        &mut self,
        user: &str,
        offer: &PublicKeyOffer<'_>,
        reason: SignatureRefusal,
    ) {
        self.trail.attempt(user);
        if self.sink.is_closing() {
            return;
        }
        let method = match offer.certificate {
            Some(_) => SshMethod::Certificate,
            None => SshMethod::Publickey,
        };
        let key = Some(fingerprint(offer.public_key.key_data()));
        self.refuse(user, method, AuthFailure::from(reason), key);
    }

    /// One keyboard-interactive round: `answers` is `None` for the first.
    pub async fn keyboard_interactive(
        &mut self,
        user: &str,
        answers: Option<Vec<String>>,
    ) -> Decision {
        self.trail.attempt(user);
        if self.sink.is_closing() {
            return Decision::Reply(Auth::reject());
        }
        if let Err(e) = self.auth.check_user(user) {
            return Decision::Reply(self.refuse(user, SshMethod::KeyboardInteractive, e, None));
        }
        let step = match answers {
            None => self.interactive.start(user).await,
            Some(answers) => {
                if self.interactive.awaits_code() {
                    self.slow_down(user).await;
                }
                self.interactive.respond(user, answers).await
            }
        };
        self.record_interactive(user).await;
        match step {
            Step::Prompt {
                instructions,
                prompts,
            } => Decision::Reply(prompt(instructions, prompts)),
            Step::Accept { identity, grant } => {
                if let Some(g) = grant {
                    let ev = self
                        .sink
                        .event(EventKind::GrantCreate)
                        .at(crate::clock::from_micros(g.created_at))
                        .user(g.user.clone())
                        .detail("grant_id", g.id)
                        .detail("key_fingerprint", g.key_fingerprint.clone())
                        .detail("method", g.method.clone())
                        .detail("expires_at", crate::clock::rfc3339(g.expires()));
                    self.sink.record(ev).await;
                }
                Decision::Accept(*identity)
            }
            Step::Reject(f) => {
                Decision::Reply(self.refuse(user, SshMethod::KeyboardInteractive, f, None))
            }
        }
    }

    /// The TOTP lock and enrolment a step caused, stored before replying.
    async fn record_interactive(&mut self, user: &str) {
        if let Some(lock) = self.interactive.take_user_lock() {
            let ev = self
                .sink
                .event(EventKind::LockoutUser)
                .user(lock.user)
                .reason(EventReason::TooManyTotpFailures)
                .detail("failures", lock.failures)
                .detail("until", crate::clock::rfc3339_micros(lock.until));
            self.sink.record(ev).await;
        }
        if self.interactive.take_enrolled() {
            let ev = self
                .sink
                .event(EventKind::TotpEnroll)
                .user(user)
                .detail("by", "self");
            self.sink.record(ev).await;
        }
    }

    /// Audit a refused attempt, count it towards bans if it counts, and end
    /// the connection after `max_auth_tries`.
    pub fn refuse(
        &mut self,
        user: &str,
        method: SshMethod,
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
        method: SshMethod,
        failure: AuthFailure,
        key: Option<String>,
    ) -> Auth {
        self.refuse_as(user, method, failure, key, false)
    }

    fn refuse_as(
        &mut self,
        user: &str,
        method: SshMethod,
        failure: AuthFailure,
        key: Option<String>,
        counts: bool,
    ) -> Auth {
        if failure == AuthFailure::UnknownKey {
            if key.is_some() {
                self.trail.with(|t| t.unknown_key = key);
            }
        } else {
            let mut ev = self
                .sink
                .event(EventKind::AuthFailure)
                .user(user)
                .reason(failure)
                .detail("method", method.as_str())
                .detail("counts", counts);
            if let Some(fp) = key {
                ev = ev.detail("key_fingerprint", fp);
            }
            self.sink.emit(ev);
            self.trail.with(|t| t.refused = true);
        }
        if counts {
            self.sink.count_failure(user, failure);
        }
        if failure == AuthFailure::DatabaseUnavailable {
            self.sink.close(CloseReason::DatabaseUnavailable);
        }
        self.tries += 1;
        if self.tries >= self.config.load().auth.max_auth_tries && !self.sink.is_closing() {
            self.sink.emit(
                self.sink
                    .event(EventKind::AuthFailure)
                    .user(user)
                    .reason(AuthFailure::TooManyAttempts)
                    .detail("method", method.as_str())
                    .detail("tries", self.tries),
            );
            self.sink.close(CloseReason::TooManyAttempts);
        }
        Auth::reject()
    }

    /// A user name under attack waits before each attempt is checked, but
    /// never past the login grace time: the client gets its refusal (or
    /// its login) rather than "login took too long".
    async fn slow_down(&self, user: &str) {
        let delay = self
            .services
            .lockout
            .user_delay(user, &self.config.load().lockout);
        let left = self
            .grace_end
            .saturating_duration_since(tokio::time::Instant::now())
            .saturating_sub(GRACE_MARGIN);
        let delay = delay.min(left);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// Keyboard-interactive answers as the login reads them: at most four, each
/// cut at 256 bytes (a prompt has one answer; the rest are not stored).
pub fn answers<I: Iterator<Item = B>, B: AsRef<[u8]>>(response: I) -> Vec<String> {
    response
        .take(4)
        .map(|b| {
            let b = b.as_ref();
            String::from_utf8_lossy(&b[..b.len().min(256)]).into_owned()
        })
        .collect()
}

fn prompt(instructions: String, prompts: Vec<(String, bool)>) -> Auth {
    use std::borrow::Cow;
    Auth::Partial {
        name: Cow::Borrowed("portvakt"),
        instructions: Cow::Owned(instructions),
        prompts: Cow::Owned(
            prompts
                .into_iter()
                .map(|(text, echo)| (Cow::Owned(text), echo))
                .collect(),
        ),
    }
}
