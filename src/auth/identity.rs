//! Who a connection is, once a login succeeded. Only `auth` makes one.

use std::collections::BTreeSet;
use std::fmt;
use std::time::SystemTime;

/// How the connection logged in; the names are the `auth_method` values of
/// the audit trail (DESIGN.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// An OpenSSH user certificate from a trusted CA.
    Certificate,
    /// A still-valid login grant for the key the client proved it holds.
    Grant,
    /// A `[[users]]` key followed by TOTP.
    PublickeyTotp,
    /// IdP device-flow login followed by TOTP.
    OidcTotp,
    /// IdP login whose ID token shows MFA (`trust_idp_amr`).
    Oidc,
    /// A `[[users]]` key of a service account (`mfa = "none"`).
    Publickey,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Certificate => "certificate",
            AuthMethod::Grant => "grant",
            AuthMethod::PublickeyTotp => "publickey+totp",
            AuthMethod::OidcTotp => "oidc+totp",
            AuthMethod::Oidc => "oidc",
            AuthMethod::Publickey => "publickey",
        }
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated user. The fields are private and the constructor is
/// visible only inside `auth`, so holding an `Identity` proves a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    user: String,
    groups: BTreeSet<String>,
    method: AuthMethod,
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
        groups: BTreeSet<String>,
        method: AuthMethod,
        key_fingerprint: String,
    ) -> Self {
        Identity {
            user,
            groups,
            method,
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
    pub fn groups(&self) -> impl Iterator<Item = &str> + Clone {
        self.groups.iter().map(String::as_str)
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
