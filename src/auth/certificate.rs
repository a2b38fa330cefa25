//! OpenSSH user certificates: every check that makes a certificate mean
//! something. russh only proves that the client holds the certificate's key
//! and that the certificate is signed by the key written inside it; trust,
//! type, principals, options and revocation are checked here.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::{Algorithm, Certificate, Fingerprint, HashAlg};

use super::AuthFailure;
use crate::revocation::RevocationList;

/// The only critical option portvakt understands. Any other one is refused,
/// as PROTOCOL.certkeys requires of a server that does not know it.
const SOURCE_ADDRESS: &str = "source-address";
/// Without this extension a certificate may log in but not forward ports
/// (what sshd does with `ssh-keygen -O no-port-forwarding`).
const PERMIT_PORT_FORWARDING: &str = "permit-port-forwarding";

/// What a valid certificate tells about the login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertLogin {
    /// `valid_before`, or `None` for a certificate that never expires.
    pub valid_before: Option<SystemTime>,
    pub may_forward: bool,
    /// "key id \"alice@laptop\" serial 7 CA SHA256:..." for the audit trail.
    pub detail: String,
}

/// The trust anchors and revocations a certificate is checked against.
#[derive(Debug, Clone, Copy)]
pub struct CertPolicy<'a> {
    pub trusted_cas: &'a [Fingerprint],
    pub revoked: &'a RevocationList,
}

/// Check a certificate presented for `user` from `source` at `now`.
/// Ordered so that the reason names the first thing wrong.
pub fn check(
    cert: &Certificate,
    user: &str,
    source: IpAddr,
    now: SystemTime,
    policy: CertPolicy<'_>,
) -> Result<CertLogin, AuthFailure> {
    if cert.cert_type() != CertType::User {
        return Err(AuthFailure::CertificateNotUser);
    }
    let ca = cert.signature_key().fingerprint(HashAlg::Sha256);
    if !policy.trusted_cas.contains(&ca) {
        return Err(AuthFailure::CertificateUntrustedCa);
    }
    // Before the signature: this build cannot even verify DSA.
    if is_weak_ca_signature(cert) {
        return Err(AuthFailure::WeakAlgorithm);
    }
    if cert.verify_signature().is_err() {
        return Err(AuthFailure::CertificateBadSignature);
    }
    if policy.revoked.is_certificate_revoked(cert) {
        return Err(AuthFailure::CertificateRevoked);
    }
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now_s < cert.valid_after() {
        return Err(AuthFailure::CertificateNotYetValid);
    }
    if now_s >= cert.valid_before() {
        return Err(AuthFailure::CertificateExpired);
    }
    // No principals means "any user" to ssh-keygen but sshd refuses such
    // certificates for user logins; so do we.
    if !cert.valid_principals().iter().any(|p| p == user) {
        return Err(AuthFailure::CertificatePrincipalMismatch);
    }
    for (name, value) in cert.critical_options().iter() {
        match name.as_str() {
            SOURCE_ADDRESS => {
                if !source_allowed(value, source)? {
                    return Err(AuthFailure::CertificateSourceAddress);
                }
            }
            _ => return Err(AuthFailure::CertificateCriticalOption),
        }
    }
    // u64::MAX is ssh-keygen's "forever". Any u64 is legal on the wire; a
    // bound past the year 9999 is as good as forever too (and would not fit
    // an Instant or an RFC 3339 time): the connection stays capped by
    // `sessions.max_duration`.
    let valid_before = UNIX_EPOCH
        .checked_add(Duration::from_secs(cert.valid_before()))
        .filter(|at| *at <= crate::clock::last_rfc3339_second());
    Ok(CertLogin {
        valid_before,
        may_forward: cert.extensions().contains_key(PERMIT_PORT_FORWARDING),
        detail: format!(
            "key id {:?} serial {} CA {}",
            cert.key_id(),
            cert.serial(),
            ca
        ),
    })
}

/// A certificate signed with `ssh-rsa` (RSA with SHA-1), or by a DSA CA
/// (`ssh-dss`, SHA-1 and 1024-bit keys); OpenSSH refuses both
/// (CASignatureAlgorithms). Config validation refuses DSA CA keys too.
pub fn is_weak_ca_signature(cert: &Certificate) -> bool {
    matches!(
        cert.signature().algorithm(),
        Algorithm::Rsa { hash: None } | Algorithm::Dsa
    ) || cert.signature_key().algorithm() == Algorithm::Dsa
}

/// `source-address` holds a comma-separated list of addresses and CIDR
/// ranges. A list that does not parse refuses the login (fail closed).
fn source_allowed(list: &str, source: IpAddr) -> Result<bool, AuthFailure> {
    let source = source.to_canonical();
    let mut allowed = false;
    for item in list.split(',') {
        let item = item.trim();
        let net: IpNet = match item.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => item
                .parse::<IpAddr>()
                .map(IpNet::from)
                .map_err(|_| AuthFailure::CertificateSourceAddress)?,
        };
        allowed |= net.contains(&source);
    }
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_address_lists() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(source_allowed("127.0.0.1", ip("127.0.0.1")), Ok(true));
        assert_eq!(
            source_allowed("10.0.0.0/8,127.0.0.0/8", ip("127.0.0.9")),
            Ok(true)
        );
        assert_eq!(source_allowed("10.0.0.0/8", ip("127.0.0.1")), Ok(false));
        // A v4-mapped v6 peer address is its v4 address.
        assert_eq!(
            source_allowed("127.0.0.1/32", ip("::ffff:127.0.0.1")),
            Ok(true)
        );
        assert_eq!(
            source_allowed("not-an-address", ip("127.0.0.1")),
            Err(AuthFailure::CertificateSourceAddress)
        );
        assert_eq!(
            source_allowed("127.0.0.1,", ip("127.0.0.1")),
            Err(AuthFailure::CertificateSourceAddress)
        );
    }
}
