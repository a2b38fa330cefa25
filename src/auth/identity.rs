//! Who a connection is, once a login succeeded. Only `auth` makes one.

use std::collections::BTreeSet;
use std::time::SystemTime;

use russh::keys::ssh_key::{Certificate, public::KeyData};

use crate::config::Config;
use crate::policy::Subject;

pub use crate::reasons::AuthMethod;

/// What the client proved it holds, kept so that a reload can ask whether
/// the new config would still let it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Certificate(Box<Certificate>),
    Key(KeyData),
    /// An IdP login without a proven key (no grant).
    None,
}

/// An authenticated user. The fields are private and the constructor is
/// visible only inside `auth`, so holding an `Identity` proves a login.
///
/// It holds what the login proved, never what the config said then: groups
/// from `[[users]]` are added at each use ([`Identity::subject`]), from the
/// config in force at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    user: String,
    /// Groups the IdP gave (IdP logins, and grants made by one).
    idp_groups: BTreeSet<String>,
    method: AuthMethod,
    /// For grant logins: how the grant was made.
    grant_method: Option<AuthMethod>,
    credential: Credential,
    /// The login stops being valid at this time (certificate `valid_before`,
    /// grant expiry); `None` for logins without an end of their own.
    expires_at: Option<SystemTime>,
    /// SHA256 fingerprint of the key the client proved it holds.
    key_fingerprint: String,
    /// Certificates only: may the connection forward ports
    /// (the `permit-port-forwarding` extension)?
    may_forward: bool,
    /// A short description for the audit trail (certificate key id and
    /// serial, grant id, ...).
    detail: String,
    /// The login grant this connection rides on (revoking it ends the
    /// connection).
    grant_id: Option<i64>,
}

impl Identity {
    pub(in crate::auth) fn new(
        user: String,
        idp_groups: BTreeSet<String>,
        method: AuthMethod,
        key_fingerprint: String,
    ) -> Self {
        Identity {
            user,
            idp_groups,
            method,
            grant_method: None,
            credential: Credential::None,
            expires_at: None,
            key_fingerprint,
            may_forward: true,
            detail: String::new(),
            grant_id: None,
        }
    }

    pub(in crate::auth) fn with_grant(mut self, id: i64) -> Self {
        self.grant_id = Some(id);
        self
    }

    pub(in crate::auth) fn with_grant_method(mut self, method: Option<AuthMethod>) -> Self {
        self.grant_method = method;
        self
    }

    pub(in crate::auth) fn with_credential(mut self, credential: Credential) -> Self {
        self.credential = credential;
        self
    }

    pub(in crate::auth) fn with_expiry(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    pub(in crate::auth) fn with_detail(mut self, detail: String) -> Self {
        self.detail = detail;
        self
    }

    pub(in crate::auth) fn without_forwarding(mut self) -> Self {
        self.may_forward = false;
        self
    }

    /// An identity for unit tests of other modules.
    #[cfg(test)]
    pub fn for_test(user: &str, groups: &[&str]) -> Self {
        Identity::new(
            user.to_string(),
            groups.iter().map(|g| g.to_string()).collect(),
            AuthMethod::Certificate,
            "SHA256:test".into(),
        )
    }

    pub fn user(&self) -> &str {
        &self.user
    }
    /// Groups the IdP gave this login.
    pub fn idp_groups(&self) -> impl Iterator<Item = &str> + Clone {
        self.idp_groups.iter().map(String::as_str)
    }
    /// Who this is for a decision under `cfg` (the config in force now):
    /// the IdP's groups plus those of the `[[users]]` entry of this name.
    pub fn subject(&self, cfg: &Config) -> Subject {
        let from_config = cfg
            .user(&self.user)
            .into_iter()
            .flat_map(|u| u.groups.iter());
        let subject = Subject::new(
            self.user.clone(),
            self.idp_groups.iter().chain(from_config).cloned(),
        );
        if self.may_forward {
            subject
        } else {
            subject.without_forwarding()
        }
    }
    pub fn grant_method(&self) -> Option<AuthMethod> {
        self.grant_method
    }
    pub fn credential(&self) -> &Credential {
        &self.credential
    }
    pub fn method(&self) -> AuthMethod {
        self.method
    }
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }
    pub fn key_fingerprint(&self) -> &str {
        &self.key_fingerprint
    }
    pub fn may_forward(&self) -> bool {
        self.may_forward
    }
    pub fn detail(&self) -> &str {
        &self.detail
    }
    pub fn grant_id(&self) -> Option<i64> {
        self.grant_id
    }
}
