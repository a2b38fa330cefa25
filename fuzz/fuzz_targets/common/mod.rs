//! Shared by the fuzz targets: the trusted CAs and a signing CA.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::UNIX_EPOCH;

use portvakt::auth::certificate::CertLogin;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{Certificate, Fingerprint, HashAlg, PrivateKey, PublicKey};

/// CA public keys the seed certificates in corpus/certificate are signed with
/// (make-corpus.sh writes them).
const CA_KEYS: &[&str] = &[
    include_str!("../../keys/ca-ed25519.pub"),
    include_str!("../../keys/ca-ecdsa.pub"),
    include_str!("../../keys/ca-rsa.pub"),
];

/// A CA whose private key is derived from a fixed seed, so that `cert_check`
/// can sign the certificates it builds. Trusted by every target.
pub fn signing_ca() -> &'static PrivateKey {
    static CA: OnceLock<PrivateKey> = OnceLock::new();
    CA.get_or_init(|| PrivateKey::from(Ed25519Keypair::from_seed(&[7; 32])))
}

/// A CA that no target trusts, with the same key type as [`signing_ca`].
pub fn untrusted_ca() -> &'static PrivateKey {
    static CA: OnceLock<PrivateKey> = OnceLock::new();
    CA.get_or_init(|| PrivateKey::from(Ed25519Keypair::from_seed(&[9; 32])))
}

/// SHA256 fingerprints of every trusted CA, as `[auth] trusted_user_ca_keys` yields.
pub fn trusted_cas() -> &'static [Fingerprint] {
    static CAS: OnceLock<Vec<Fingerprint>> = OnceLock::new();
    CAS.get_or_init(|| {
        let mut cas: Vec<Fingerprint> = CA_KEYS
            .iter()
            .map(|line| {
                PublicKey::from_openssh(line.trim())
                    .expect("keys/*.pub is a public key")
                    .fingerprint(HashAlg::Sha256)
            })
            .collect();
        cas.push(signing_ca().public_key().fingerprint(HashAlg::Sha256));
        cas
    })
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z): a certificate
/// valid past it counts as valid forever (src/auth/certificate.rs).
pub const LAST_SECOND: u64 = 253_402_300_799;

/// The expiry `check` must report for a certificate's `valid_before`.
pub fn expected_valid_before(valid_before: u64) -> Option<u64> {
    (valid_before <= LAST_SECOND).then_some(valid_before)
}

/// What an accepted certificate login must carry over from the certificate:
/// port forwarding as its extensions say, and the expiry of
/// [`expected_valid_before`].
pub fn assert_login_matches(login: &CertLogin, cert: &Certificate) {
    assert_eq!(
        login.may_forward,
        cert.extensions().contains_key("permit-port-forwarding")
    );
    assert_eq!(
        login
            .valid_before
            .map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs()),
        expected_valid_before(cert.valid_before())
    );
}
