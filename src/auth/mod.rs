//! Logins. Only this module makes an [`Identity`].
//!
//! Each check returns a typed [`AuthFailure`] whose snake_case name is the
//! audit reason. The russh handler in `server::connection` only translates
//! callbacks into these calls.

pub mod certificate;
pub mod flow_limit;
pub mod grants;
mod identity;
pub mod interactive;
pub mod lockout;
pub mod login;
pub mod oidc;
pub mod totp;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use russh::keys::ssh_key::{Algorithm, Certificate, HashAlg, public::KeyData};
use russh::server::SignatureRefusal;

pub use identity::{AuthMethod, Credential, Identity};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::config::{Config, SharedConfig, UserMfa};
use crate::store::Store;

/// What logins need beyond the config; one per server, shared.
#[derive(Debug)]
pub struct Services {
    pub store: Store,
    pub totp: totp::Totp,
    /// `None` without `[oidc]`; replaced when a reload changes `[oidc]`.
    pub idp: ArcSwapOption<oidc::Idp>,
    /// This node's name (recorded on grants).
    pub node: String,
    /// Brute-force protection.
    pub lockout: Arc<lockout::Lockout>,
    /// Device flows started per source and in all.
    pub flows: flow_limit::FlowLimit,
}

impl Services {
    /// The identity provider in force now, if any.
    pub fn idp(&self) -> Option<Arc<oidc::Idp>> {
        self.idp.load_full()
    }
}

/// What a verified plain key leads to.
#[derive(Debug)]
pub enum KeyOutcome {
    /// Logged in (service account, or a valid grant for this key).
    Accept(Identity),
    /// The key is proven; keyboard-interactive must follow (TOTP for a
    /// `[[users]]` key, IdP login otherwise).
    SecondStep {
        key: KeyData,
        totp_user: bool,
    },
    Reject(AuthFailure),
}

/// A grant lookup may wait this long for the database.
const GRANT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

crate::reasons::reason_enum! {
    /// Why a login attempt was refused. Stable names: audit reason, log field,
    /// metric label, test assertion.
    pub enum AuthFailure {
        /// The user is in `deny_users` (root by default).
        UserDenied = "user_denied",
        /// Empty, overlong or non-printable user name.
        InvalidUserName = "invalid_user_name",
        PasswordRefused = "password_refused",
        CertificateUntrustedCa = "certificate_untrusted_ca",
        /// A host certificate offered as a user certificate.
        CertificateNotUser = "certificate_not_user",
        CertificatePrincipalMismatch = "certificate_principal_mismatch",
        CertificateExpired = "certificate_expired",
        CertificateNotYetValid = "certificate_not_yet_valid",
        CertificateBadSignature = "certificate_bad_signature",
        CertificateSourceAddress = "certificate_source_address",
        CertificateCriticalOption = "certificate_critical_option",
        CertificateRevoked = "certificate_revoked",
        KeyRevoked = "key_revoked",
        /// A key nobody configured. Not a failure for brute-force counting:
        /// clients offer every key they have.
        UnknownKey = "unknown_key",
        /// `ssh-rsa` (SHA-1) signatures, and certificates signed by an `ssh-rsa`
        /// or DSA CA.
        WeakAlgorithm = "weak_algorithm",
        /// The client's signature does not verify against the key it named.
        SignatureInvalid = "signature_invalid",
        /// The signature's algorithm is not the one the request named.
        SignatureAlgorithmMismatch = "signature_algorithm_mismatch",
        /// A FIDO (`sk-*`) signature that says nobody touched the key, and no
        /// certificate may waive that (`auth.allow_no_touch_required`).
        SkUserPresenceMissing = "sk_user_presence_missing",
        /// The key belongs to a `[[users]]` entry that needs a TOTP step.
        TotpRequired = "totp_required",
        TooManyAttempts = "too_many_attempts",
        /// Keyboard-interactive asked for, but there is nothing to ask (no IdP,
        /// no TOTP user).
        InteractiveUnavailable = "interactive_unavailable",
        IdpUnreachable = "idp_unreachable",
        IdpMisconfigured = "idp_misconfigured",
        IdpAccessDenied = "idp_access_denied",
        IdpCodeExpired = "idp_code_expired",
        IdpError = "idp_error",
        IdpTokenInvalid = "idp_token_invalid",
        /// The IdP's user name differs from the SSH user name.
        IdpUserMismatch = "idp_user_mismatch",
        /// This connection already started the most device flows it may, or its
        /// source or this node started too many in the last minute.
        IdpFlowLimit = "idp_flow_limit",
        /// An IdP login was asked for before the client proved it holds a key.
        KeyRequired = "key_required",
        /// An IdP login for a name whose `[[users]]` entry has keys: such an
        /// account logs in with its keys only.
        IdpKeyAccount = "idp_key_account",
        TotpInvalid = "totp_invalid",
        TotpReplayed = "totp_replayed",
        TotpNotEnrolled = "totp_not_enrolled",
        /// Too many wrong TOTP codes for this user: the TOTP step is locked.
        TotpLocked = "totp_locked",
        /// The database did not answer: logins that need it fail closed.
        DatabaseUnavailable = "database_unavailable",
        /// An IdP login (or a grant made by one) while `[oidc]` is not
        /// configured (any more).
        IdpDisabled = "idp_disabled",
        /// The client left (or was ended) without finishing a login and
        /// without any refusal recorded: gave up at a prompt, or had no
        /// usable key.
        LoginIncomplete = "login_incomplete",
    }
}

impl AuthFailure {
    /// Does this refusal count towards brute-force protection? Unknown keys
    /// do not (clients offer every key they have), nor do failures that are
    /// not the user's doing.
    pub fn counts(self) -> bool {
        !matches!(
            self,
            AuthFailure::UnknownKey
                | AuthFailure::IdpUnreachable
                | AuthFailure::IdpMisconfigured
                | AuthFailure::IdpError
                | AuthFailure::DatabaseUnavailable
                | AuthFailure::InteractiveUnavailable
                | AuthFailure::IdpDisabled
                | AuthFailure::KeyRequired
                | AuthFailure::LoginIncomplete
        )
    }

    pub fn from_oidc(e: &oidc::OidcError) -> Self {
        use oidc::OidcError::*;
        match e {
            Unreachable(_) => AuthFailure::IdpUnreachable,
            Misconfigured(_) => AuthFailure::IdpMisconfigured,
            Denied => AuthFailure::IdpAccessDenied,
            Expired => AuthFailure::IdpCodeExpired,
            Refused(_) => AuthFailure::IdpError,
            TokenInvalid(_) => AuthFailure::IdpTokenInvalid,
        }
    }
}

impl From<SignatureRefusal> for AuthFailure {
    fn from(reason: SignatureRefusal) -> Self {
        match reason {
            SignatureRefusal::AlgorithmMismatch => AuthFailure::SignatureAlgorithmMismatch,
            SignatureRefusal::NoUserPresence => AuthFailure::SkUserPresenceMissing,
            // BadSignature, and any reason a later russh adds: the
            // signature did not do.
            _ => AuthFailure::SignatureInvalid,
        }
    }
}

/// SHA256 fingerprint as OpenSSH prints it.
pub fn fingerprint(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The login checks of one connection, always against the config in force
/// at the moment of the check (a reload reaches the next one).
#[derive(Debug, Clone)]
pub struct Authenticator {
    cfg: SharedConfig,
    source: IpAddr,
    svc: Option<Arc<Services>>,
}

impl Authenticator {
    /// Checks against one fixed config (tests, tools).
    pub fn new(cfg: Arc<Config>, source: IpAddr) -> Self {
        Self::live(Arc::new(ArcSwap::new(cfg)), source)
    }

    /// Checks against whatever config `cfg` holds when each check runs.
    pub fn live(cfg: SharedConfig, source: IpAddr) -> Self {
        Authenticator {
            cfg,
            source,
            svc: None,
        }
    }

    /// With the database and IdP: grants, TOTP, IdP logins.
    pub fn with_services(mut self, svc: Arc<Services>) -> Self {
        self.svc = Some(svc);
        self
    }

    fn cfg(&self) -> arc_swap::Guard<Arc<Config>> {
        self.cfg.load()
    }

    /// May a plain key (not yet proven) lead anywhere? Refusing early saves
    /// the client a signature, as sshd does.
    pub fn offered_key(&self, user: &str, key: &KeyData) -> Result<(), AuthFailure> {
        match self.publickey(user, key) {
            Ok(_) | Err(AuthFailure::TotpRequired) => Ok(()),
            Err(AuthFailure::UnknownKey) if self.idp_enabled() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// IdP logins are on: `[oidc]` in the config in force, and its client built.
    pub fn idp_enabled(&self) -> bool {
        self.cfg().oidc.is_some() && self.svc.as_ref().is_some_and(|s| s.idp().is_some())
    }

    /// A plain key whose possession the client proved: a service account
    /// logs in, a valid grant logs in, anyone else goes on to
    /// keyboard-interactive with this key as first factor.
    pub async fn key_login(&self, user: &str, key: &KeyData) -> KeyOutcome {
        let totp_user = match self.publickey(user, key) {
            Ok(id) => return KeyOutcome::Accept(id),
            Err(AuthFailure::TotpRequired) => true,
            Err(AuthFailure::UnknownKey) if self.idp_enabled() => false,
            Err(e) => return KeyOutcome::Reject(e),
        };
        let Some(svc) = &self.svc else {
            return KeyOutcome::Reject(AuthFailure::TotpRequired);
        };
        let fp = fingerprint(key);
        let second_step = || KeyOutcome::SecondStep {
            key: key.clone(),
            totp_user,
        };
        match tokio::time::timeout(GRANT_WAIT, grants::find_valid(&svc.store, user, &fp)).await {
            Ok(Ok(Some(g))) => {
                let made_by = AuthMethod::parse(&g.method);
                // A grant made with a `[[users]]` key holds only while that
                // key is still listed; one made at the IdP only while IdP
                // logins are on.
                let holds = match made_by {
                    Some(AuthMethod::PublickeyTotp) => totp_user,
                    Some(m) if m.is_idp() => self.idp_enabled(),
                    _ => false,
                };
                if !holds {
                    return second_step();
                }
                KeyOutcome::Accept(
                    Identity::new(
                        user.to_string(),
                        g.groups.iter().cloned().collect(),
                        AuthMethod::Grant,
                        fp,
                    )
                    .with_expiry(g.expires())
                    .with_grant(g.id)
                    .with_grant_method(made_by)
                    .with_credential(Credential::Key(key.clone()))
                    .with_detail(format!("grant {} ({})", g.id, g.method)),
                )
            }
            Ok(Ok(None)) => second_step(),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "grant lookup failed");
                KeyOutcome::Reject(AuthFailure::DatabaseUnavailable)
            }
            Err(_) => KeyOutcome::Reject(AuthFailure::DatabaseUnavailable),
        }
    }

    /// Would the config in force now still let this login in? Asked of
    /// every live connection on reload (and once more right after a login,
    /// to close the race with a reload): `deny_users`, revocation, trusted
    /// CAs, `[[users]]` keys and `[oidc]` all count, as they would for a
    /// new login. Groups need no check here: they are recomputed at each
    /// decision.
    pub fn revalidate(&self, id: &Identity, now: SystemTime) -> Result<(), AuthFailure> {
        let user = id.user();
        self.check_user(user)?;
        let via_idp = id.method().is_idp() || id.grant_method().is_some_and(AuthMethod::is_idp);
        if via_idp && !self.idp_enabled() {
            return Err(AuthFailure::IdpDisabled);
        }
        match (id.method(), id.credential()) {
            (AuthMethod::Certificate, Credential::Certificate(cert)) => {
                self.certificate(user, cert, now).map(drop)
            }
            (AuthMethod::Publickey, Credential::Key(key)) => self.publickey(user, key).map(drop),
            (AuthMethod::PublickeyTotp, Credential::Key(key)) => self.listed_key(user, key),
            (AuthMethod::Grant, Credential::Key(key)) => match id.grant_method() {
                Some(AuthMethod::PublickeyTotp) => self.listed_key(user, key),
                Some(m) if m.is_idp() => self.not_revoked(key),
                _ => Err(AuthFailure::UnknownKey),
            },
            (AuthMethod::OidcTotp | AuthMethod::Oidc, Credential::Key(key)) => {
                self.not_revoked(key)
            }
            (AuthMethod::OidcTotp | AuthMethod::Oidc, Credential::None) => Ok(()),
            // A login of a shape no check knows: it does not hold.
            _ => Err(AuthFailure::UnknownKey),
        }
    }

    fn not_revoked(&self, key: &KeyData) -> Result<(), AuthFailure> {
        if self.cfg().auth.revoked.is_key_revoked(key) {
            return Err(AuthFailure::KeyRevoked);
        }
        Ok(())
    }

    /// A `[[users]]` key that needs TOTP, still listed and not revoked.
    fn listed_key(&self, user: &str, key: &KeyData) -> Result<(), AuthFailure> {
        match self.publickey(user, key) {
            Err(AuthFailure::TotpRequired) => Ok(()),
            Ok(_) => Err(AuthFailure::TotpRequired),
            Err(e) => Err(e),
        }
    }

    /// Checks that come before any other: a sane name, not a denied user.
    pub fn check_user(&self, user: &str) -> Result<(), AuthFailure> {
        let sane = !user.is_empty()
            && user.len() <= 64
            && user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@+".contains(c));
        if !sane {
            return Err(AuthFailure::InvalidUserName);
        }
        if self
            .cfg()
            .auth
            .deny_users
            .iter()
            .any(|d| d.eq_ignore_ascii_case(user))
        {
            return Err(AuthFailure::UserDenied);
        }
        Ok(())
    }

    /// A key offered before its signature: refuse what can be refused early.
    pub fn offered(&self, user: &str, algorithm: &Algorithm) -> Result<(), AuthFailure> {
        self.check_user(user)?;
        if matches!(algorithm, Algorithm::Rsa { hash: None } | Algorithm::Dsa) {
            return Err(AuthFailure::WeakAlgorithm);
        }
        Ok(())
    }

    /// A certificate whose key the client proved to hold.
    pub fn certificate(
        &self,
        user: &str,
        cert: &Certificate,
        now: SystemTime,
    ) -> Result<Identity, AuthFailure> {
        self.check_user(user)?;
        let cfg = self.cfg();
        let policy = certificate::CertPolicy {
            trusted_cas: &cfg.auth.trusted_cas,
            revoked: &cfg.auth.revoked,
        };
        let login = certificate::check(cert, user, self.source, now, policy)?;
        let mut id = Identity::new(
            user.to_string(),
            BTreeSet::new(),
            AuthMethod::Certificate,
            fingerprint(cert.public_key()),
        )
        .with_credential(Credential::Certificate(Box::new(cert.clone())))
        .with_detail(login.detail);
        if let Some(at) = login.valid_before {
            id = id.with_expiry(at);
        }
        if !login.may_forward {
            id = id.without_forwarding();
        }
        Ok(id)
    }

    /// Classify a refusal russh made on its own (validity window, signature).
    pub fn certificate_refused_early(
        &self,
        user: &str,
        cert: &Certificate,
        outside_validity: bool,
        now: SystemTime,
    ) -> AuthFailure {
        if let Err(e) = self.check_user(user) {
            return e;
        }
        if !outside_validity {
            // russh cannot verify a DSA CA's signature: name the real fault.
            return if certificate::is_weak_ca_signature(cert) {
                AuthFailure::WeakAlgorithm
            } else {
                AuthFailure::CertificateBadSignature
            };
        }
        let now_s = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if now_s < cert.valid_after() {
            AuthFailure::CertificateNotYetValid
        } else {
            AuthFailure::CertificateExpired
        }
    }

    /// A plain public key whose possession the client proved.
    pub fn publickey(&self, user: &str, key: &KeyData) -> Result<Identity, AuthFailure> {
        self.check_user(user)?;
        self.not_revoked(key)?;
        let cfg = self.cfg();
        let entry = cfg
            .user(user)
            .filter(|u| u.keys.iter().any(|k| k == key))
            .ok_or(AuthFailure::UnknownKey)?;
        match entry.mfa {
            UserMfa::None => Ok(Identity::new(
                user.to_string(),
                BTreeSet::new(),
                AuthMethod::Publickey,
                fingerprint(key),
            )
            .with_credential(Credential::Key(key.clone()))),
            UserMfa::Totp => Err(AuthFailure::TotpRequired),
        }
    }
}

#[cfg(test)]
mod tests;
