//! The keyboard-interactive part of a login, one connection at a time:
//! the IdP device flow shown in the SSH prompt, then TOTP (or TOTP
//! enrolment), then a login grant bound to the key proven before.
//!
//! Each call returns a [`Step`]: more prompts, a login, or a refusal. The IdP
//! is polled by a spawned task; a call only waits a bounded time for its
//! news, so the SSH session loop is never held for long (and before login a
//! connection has no channels that could starve).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::grants::{self, Grant, NewGrant};
use super::oidc::{DeviceFlow, IdpLogin, OidcError};
use super::totp::{Secret, TotpCheck, qr_text};
use russh::keys::ssh_key::public::KeyData;

use super::{AuthFailure, AuthMethod, Credential, Identity, Services, fingerprint};
use crate::config::{Config, SharedConfig, TotpMode};

/// Device flows one connection may start (the OpenSSH client retries
/// keyboard-interactive three times).
const MAX_FLOWS: u32 = 3;
/// Waiting for the IdP to hand out a user code.
const START_WAIT: Duration = Duration::from_secs(12);
/// After the user pressed Enter, how long to wait for the approval to show.
const APPROVAL_WAIT: Duration = Duration::from_secs(6);
/// Any database step of a login.
const DB_WAIT: Duration = Duration::from_secs(5);
/// Longest answer looked at; anything longer is cut (a TOTP code is 6).
const MAX_ANSWER: usize = 64;

/// What to do next in a keyboard-interactive exchange.
#[derive(Debug)]
pub enum Step {
    /// Show these prompts: `(text, echo)`.
    Prompt {
        instructions: String,
        prompts: Vec<(String, bool)>,
    },
    /// Logged in; `grant` is set when a new grant was created.
    Accept {
        identity: Box<Identity>,
        grant: Option<Box<Grant>>,
    },
    Reject(AuthFailure),
}

/// A user who passed the first part and now needs TOTP (or nothing more).
#[derive(Debug, Clone)]
struct Pending {
    /// Groups the IdP gave (none for a `[[users]]` key); `[[users]]` groups
    /// are added at each use, from the config in force then.
    idp_groups: BTreeSet<String>,
    /// The method to record once this succeeds.
    method: AuthMethod,
}

enum State {
    Idle,
    Device {
        flow: Box<DeviceFlow>,
        result: watch::Receiver<Option<Result<IdpLogin, OidcError>>>,
        /// The poller; aborted when the connection goes.
        task: AbortOnDrop,
    },
    Totp(Pending),
    Enroll(Pending),
    /// A message was shown; the next answer ends in this refusal.
    Failed(AuthFailure),
}

struct AbortOnDrop(JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The keyboard-interactive state of one connection.
pub struct Interactive {
    cfg: SharedConfig,
    svc: Arc<Services>,
    source: String,
    /// The source as brute-force limits count it (an IPv4 address or an
    /// IPv6 prefix).
    source_key: String,
    user: String,
    /// The key the client proved before (partial success), and whether it
    /// is a `[[users]]` key that needs TOTP.
    proven_key: Option<(KeyData, bool)>,
    /// The IdP login of this connection, kept across retries so that a
    /// mistyped TOTP code does not mean another browser round.
    idp: Option<IdpLogin>,
    flows: u32,
    /// The secret shown for enrolment, kept so the QR code scanned stays valid.
    enroll_secret: Option<Secret>,
    /// A TOTP secret was stored by this connection and not yet audited.
    enrolled: bool,
    /// This connection's wrong code locked the user's TOTP step (to audit).
    user_lock: Option<super::lockout::UserLock>,
    state: State,
}

impl Interactive {
    pub fn new(cfg: SharedConfig, svc: Arc<Services>, source: std::net::SocketAddr) -> Self {
        Interactive {
            source_key: svc.lockout.key_of(source.ip()),
            cfg,
            svc,
            source: source.to_string(),
            user: String::new(),
            proven_key: None,
            idp: None,
            flows: 0,
            enroll_secret: None,
            enrolled: false,
            user_lock: None,
            state: State::Idle,
        }
    }

    /// Did the last step lock the user's TOTP step? Asked once.
    pub fn take_user_lock(&mut self) -> Option<super::lockout::UserLock> {
        self.user_lock.take()
    }

    /// Did the last step store a TOTP secret (self-enrolment)? Asked once.
    pub fn take_enrolled(&mut self) -> bool {
        std::mem::take(&mut self.enrolled)
    }

    /// The client proved it holds this key for `user` (first factor).
    pub fn key_proven(&mut self, user: &str, key: KeyData, totp_user: bool) {
        self.switch_user(user);
        self.proven_key = Some((key, totp_user));
    }

    fn cfg(&self) -> arc_swap::Guard<Arc<Config>> {
        self.cfg.load()
    }

    /// Is this the key already proven for `user` (offered again after the
    /// partial success)?
    pub fn is_proven(&self, user: &str, fp: &str) -> bool {
        self.user == user
            && self
                .proven_key
                .as_ref()
                .is_some_and(|(k, _)| fingerprint(k) == fp)
    }

    /// A different user name starts over (russh does the same).
    fn switch_user(&mut self, user: &str) {
        if self.user != user {
            self.user = user.to_string();
            self.proven_key = None;
            self.idp = None;
            self.enroll_secret = None;
            self.state = State::Idle;
        }
    }

    /// A keyboard-interactive request begins.
    pub async fn start(&mut self, user: &str) -> Step {
        self.switch_user(user);
        if let Some((_, true)) = &self.proven_key {
            let pending = Pending {
                idp_groups: BTreeSet::new(),
                method: AuthMethod::PublickeyTotp,
            };
            return self.totp_step(pending).await;
        }
        if let Some(login) = self.idp.clone() {
            return self.after_idp(login).await;
        }
        let Some(idp) = self.svc.idp().filter(|_| self.cfg().oidc.is_some()) else {
            return Step::Reject(AuthFailure::InteractiveUnavailable);
        };
        // A [[users]] account with keys (a service account, a key+TOTP
        // user) logs in with those keys: an IdP identity of the same name
        // must not take it over, nor enrol a TOTP secret for it.
        if self.cfg().user(user).is_some_and(|u| !u.keys.is_empty()) {
            return self.fail(
                AuthFailure::IdpKeyAccount,
                "this account logs in with its SSH key, not at the identity provider",
            );
        }
        // The IdP is asked only for clients that proved a key (the grant is
        // bound to it), and only so often per source and per node.
        if self.proven_key.is_none() {
            return self.fail(
                AuthFailure::KeyRequired,
                "offer an SSH key first: portvakt binds your login to it (make one with ssh-keygen -t ed25519)",
            );
        }
        if self.flows >= MAX_FLOWS || !self.svc.flows.try_start(&self.source_key) {
            return Step::Reject(AuthFailure::IdpFlowLimit);
        }
        self.flows += 1;
        let (started_tx, started_rx) = oneshot::channel();
        let (result_tx, result_rx) = watch::channel(None);
        let task = tokio::spawn(async move {
            let flow = match idp.start().await {
                Ok(flow) => flow,
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
            };
            if started_tx.send(Ok(flow.clone())).is_err() {
                return;
            }
            let outcome = idp.wait(&flow).await;
            let _ = result_tx.send(Some(outcome));
        });
        let task = AbortOnDrop(task);
        match tokio::time::timeout(START_WAIT, started_rx).await {
            Ok(Ok(Ok(flow))) => {
                let prompt = device_prompt(&flow, None);
                self.state = State::Device {
                    flow: Box::new(flow),
                    result: result_rx,
                    task,
                };
                prompt
            }
            Ok(Ok(Err(e))) => self.fail(AuthFailure::from_oidc(&e), e.message()),
            _ => self.fail(
                AuthFailure::IdpUnreachable,
                "the identity provider cannot be reached right now",
            ),
        }
    }

    /// The client answered the last prompts.
    pub async fn respond(&mut self, user: &str, answers: Vec<String>) -> Step {
        if self.user != user {
            return Step::Reject(AuthFailure::InteractiveUnavailable);
        }
        let answer: String = answers
            .into_iter()
            .next()
            .unwrap_or_default()
            .chars()
            .take(MAX_ANSWER)
            .collect();
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle => Step::Reject(AuthFailure::InteractiveUnavailable),
            State::Failed(f) => Step::Reject(f),
            State::Device {
                flow,
                mut result,
                task,
            } => {
                if result.borrow().is_none() {
                    let _ = tokio::time::timeout(APPROVAL_WAIT, result.changed()).await;
                }
                let outcome = result.borrow().clone();
                match outcome {
                    None => {
                        let prompt = device_prompt(&flow, Some("Not approved yet."));
                        self.state = State::Device { flow, result, task };
                        prompt
                    }
                    Some(Err(e)) => self.fail(AuthFailure::from_oidc(&e), e.message()),
                    Some(Ok(login)) => {
                        if login.username != self.user {
                            tracing::info!(ssh_user = %self.user, idp_user = %crate::text::clean(&login.username, 64), "IdP user name differs from the SSH user name");
                            let message = format!(
                                "you logged in at the identity provider as {}, not as {}",
                                crate::text::for_prompt(&login.username, 64),
                                self.user
                            );
                            return self.fail_with(AuthFailure::IdpUserMismatch, message);
                        }
                        self.idp = Some(login.clone());
                        self.after_idp(login).await
                    }
                }
            }
            State::Totp(pending) => self.check_totp(pending, &answer).await,
            State::Enroll(pending) => {
                let Some(secret) = self.enroll_secret.clone() else {
                    return Step::Reject(AuthFailure::TotpNotEnrolled);
                };
                let stored = tokio::time::timeout(
                    DB_WAIT,
                    self.svc
                        .totp
                        .enroll(&self.user, &secret, Some((&answer, SystemTime::now()))),
                )
                .await;
                match stored {
                    Ok(Ok(TotpCheck::Ok)) => {
                        tracing::info!(user = %self.user, "TOTP enrolled");
                        self.enroll_secret = None;
                        self.enrolled = true;
                        self.finish(pending).await
                    }
                    Ok(Ok(_)) => Step::Reject(AuthFailure::TotpInvalid),
                    _ => Step::Reject(AuthFailure::DatabaseUnavailable),
                }
            }
        }
    }

    /// Does the next answer carry a code to check (the answers a user name
    /// under attack is slowed down for)? Acknowledging a message or an IdP
    /// approval checks nothing.
    pub fn awaits_code(&self) -> bool {
        matches!(self.state, State::Totp(_) | State::Enroll(_))
    }

    /// Refuse with the lock's message while the user's TOTP step is locked
    /// (on any node); `None` when it is not.
    async fn refuse_if_locked(&mut self) -> Option<Step> {
        match tokio::time::timeout(DB_WAIT, self.svc.lockout.totp_locked(&self.user)).await {
            Ok(Ok(false)) => None,
            Ok(Ok(true)) => Some(self.fail(
                AuthFailure::TotpLocked,
                "too many wrong TOTP codes; try again later or ask an admin",
            )),
            _ => Some(Step::Reject(AuthFailure::DatabaseUnavailable)),
        }
    }

    /// One TOTP code, checked while no other code of this user is being
    /// checked on this node, and refused unchecked while the user's TOTP
    /// step is locked (on any node).
    async fn check_totp(&mut self, pending: Pending, answer: &str) -> Step {
        let lockout = self.svc.lockout.clone();
        let gate = lockout.totp_gate(&self.user);
        let Ok(_serial) = tokio::time::timeout(DB_WAIT, gate.lock()).await else {
            return Step::Reject(AuthFailure::DatabaseUnavailable);
        };
        if let Some(refused) = self.refuse_if_locked().await {
            return refused;
        }
        let check = tokio::time::timeout(
            DB_WAIT,
            self.svc.totp.verify(&self.user, answer, SystemTime::now()),
        )
        .await;
        match check {
            Ok(Ok(TotpCheck::Ok)) => {
                if let Err(e) = lockout.totp_succeeded(&self.user).await {
                    tracing::warn!(error = %e, "cannot reset the TOTP failure count");
                }
                self.finish(pending).await
            }
            Ok(Ok(TotpCheck::Wrong)) => {
                let cfg = self.cfg().lockout.clone();
                match tokio::time::timeout(DB_WAIT, lockout.totp_failed(&self.user, &cfg)).await {
                    Ok(Ok(lock)) => self.user_lock = lock,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot count a wrong TOTP code");
                        return Step::Reject(AuthFailure::DatabaseUnavailable);
                    }
                    Err(_) => return Step::Reject(AuthFailure::DatabaseUnavailable),
                }
                Step::Reject(AuthFailure::TotpInvalid)
            }
            Ok(Ok(TotpCheck::Replayed)) => Step::Reject(AuthFailure::TotpReplayed),
            Ok(Ok(TotpCheck::NotEnrolled)) => Step::Reject(AuthFailure::TotpNotEnrolled),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "TOTP check failed");
                Step::Reject(AuthFailure::DatabaseUnavailable)
            }
            Err(_) => Step::Reject(AuthFailure::DatabaseUnavailable),
        }
    }

    /// The IdP part is done: TOTP unless the IdP did MFA itself (and that is
    /// trusted) or TOTP is off.
    async fn after_idp(&mut self, login: IdpLogin) -> Step {
        let idp_groups: BTreeSet<String> = login.groups.iter().cloned().collect();
        let mfa = self.cfg().mfa.clone();
        if mfa.totp == TotpMode::Off || (mfa.trust_idp_amr && login.has_mfa()) {
            return self
                .finish(Pending {
                    idp_groups,
                    method: AuthMethod::Oidc,
                })
                .await;
        }
        self.totp_step(Pending {
            idp_groups,
            method: AuthMethod::OidcTotp,
        })
        .await
    }

    async fn totp_step(&mut self, pending: Pending) -> Step {
        let enrolled =
            match tokio::time::timeout(DB_WAIT, self.svc.totp.is_enrolled(&self.user)).await {
                Ok(Ok(e)) => e,
                _ => return Step::Reject(AuthFailure::DatabaseUnavailable),
            };
        if enrolled {
            // A locked user is told at once rather than after typing a code
            // that will not be checked (the key or IdP login came first).
            if let Some(refused) = self.refuse_if_locked().await {
                return refused;
            }
            self.state = State::Totp(pending);
            return prompt(
                String::new(),
                "TOTP code from your authenticator app: ".into(),
                false,
            );
        }
        if pending.method != AuthMethod::OidcTotp || !self.cfg().mfa.self_enroll {
            return self.fail(
                AuthFailure::TotpNotEnrolled,
                "you have no TOTP secret yet; ask an admin to run `portvakt totp enroll` for you",
            );
        }
        let secret = match self
            .enroll_secret
            .clone()
            .map(Ok)
            .unwrap_or_else(Secret::generate)
        {
            Ok(s) => s,
            Err(_) => return Step::Reject(AuthFailure::TotpNotEnrolled),
        };
        let Ok(uri) = secret.uri(&self.user) else {
            return Step::Reject(AuthFailure::TotpNotEnrolled);
        };
        let qr = qr_text(&uri).unwrap_or_default();
        self.enroll_secret = Some(secret.clone());
        self.state = State::Enroll(pending);
        let text = format!(
            "portvakt: set up TOTP, once. Scan this QR code with your authenticator app:\n{qr}\n\
             or add this secret by hand: {}\n({uri})\n\
             TOTP code from your authenticator app, to finish setting it up: ",
            secret.base32()
        );
        prompt(String::new(), text, false)
    }

    /// Make the identity and the grant bound to the proven key.
    async fn finish(&mut self, pending: Pending) -> Step {
        let ttl = self.cfg().sessions.grant_ttl;
        let method = pending.method;
        // The grant keeps what the IdP said, never config groups.
        let groups: Vec<String> = pending.idp_groups.iter().cloned().collect();
        // start() asks the IdP only for clients that proved a key.
        let Some((key, _)) = self.proven_key.clone() else {
            return Step::Reject(AuthFailure::KeyRequired);
        };
        let fingerprint = fingerprint(&key);
        let new = NewGrant {
            user: &self.user,
            key_fingerprint: &fingerprint,
            groups: &groups,
            method: method.as_str(),
            node: &self.svc.node,
            source: &self.source,
            ttl,
        };
        match tokio::time::timeout(DB_WAIT, grants::create(&self.svc.store, &new)).await {
            Ok(Ok(grant)) => {
                let identity =
                    Identity::new(self.user.clone(), pending.idp_groups, method, fingerprint)
                        .with_credential(Credential::Key(key))
                        .with_expiry(grant.expires())
                        .with_grant(grant.id)
                        .with_detail(format!("grant {}", grant.id));
                Step::Accept {
                    identity: Box::new(identity),
                    grant: Some(Box::new(grant)),
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot store the login grant");
                Step::Reject(AuthFailure::DatabaseUnavailable)
            }
            Err(_) => Step::Reject(AuthFailure::DatabaseUnavailable),
        }
    }

    fn fail(&mut self, failure: AuthFailure, message: &str) -> Step {
        self.fail_with(failure, message.to_string())
    }

    /// Tell the user why, then refuse on their next answer.
    fn fail_with(&mut self, failure: AuthFailure, message: String) -> Step {
        self.state = State::Failed(failure);
        prompt(
            String::new(),
            format!("portvakt: login failed: {message}.\nPress Enter to close: "),
            true,
        )
    }
}

fn prompt(instructions: String, text: String, echo: bool) -> Step {
    Step::Prompt {
        instructions,
        prompts: vec![(text, echo)],
    }
}

/// The device-flow prompt. The URL and code are in the prompt text itself:
/// OpenSSH hides instruction lines at LogLevel ERROR.
fn device_prompt(flow: &DeviceFlow, note: Option<&str>) -> Step {
    let mut text = String::new();
    if let Some(n) = note {
        text.push_str(n);
        text.push('\n');
    }
    text.push_str(&format!(
        "portvakt: log in at your identity provider.\nOpen {}\nand check that it shows the code {}\nPress Enter once you have approved: ",
        crate::text::for_prompt(&flow.url, 512),
        crate::text::for_prompt(&flow.user_code, 64)
    ));
    prompt(String::new(), text, true)
}
