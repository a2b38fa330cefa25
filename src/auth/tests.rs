//! Logins against real OpenSSH certificates, built and signed in-process.
//!
//! Every refusal is asserted by its stable name (`AuthFailure::as_str`), the
//! same text the audit trail and the metrics carry.

use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::keys::signature::{self, Signer};
use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::{Ed25519Keypair, RsaKeypair};
use russh::keys::ssh_key::public::{KeyData, RsaPublicKey};
use russh::keys::ssh_key::{Algorithm, Certificate, HashAlg, PrivateKey, Signature, SigningKey};

use super::certificate::{self, CertPolicy};
use super::{AuthFailure, AuthMethod, Authenticator};
use crate::config::Config;
use crate::revocation::RevocationList;

/// The tests' "now": 2027-01-15T08:00:00Z.
const NOW_S: u64 = 1_800_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_S)
}

fn at(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

/// A 2048-bit RSA key made by `ssh-keygen -t rsa`, used only here as a CA
/// (generating one in a debug build takes too long).
const RSA_CA_PEM: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAABFwAAAAdzc2gtcn
NhAAAAAwEAAQAAAQEAuf4LAEBhvFHhfQLV46XPW+mJE5lFfCDYbc1Zl1Y8fdag4eNwEQLN
lOkf7E1ZZwa+rR61uDn2zmWO/FLStF8fhEN8Ry7BzgWaoKCictmJaSVAqzjV62PLiURA4w
PaLru3/x7NameLbLM9xmqK6+lq8QeHPA+TWPGl4PZ0WCIOXxsDX/LyfpwUFRvO1mAAbQRd
hCR8QOSYVbZbcddKHHxHtHYsSWa+8wV0fFj8k7Gx6dlPdojFa096Es1U8ZoAnxi5MY2Kmk
Sze6+eKogwVQF2I1ZnhmIexXvyHY6rGq31LGNr4h+Atmdp4M/rA7nZPqsiOaw6ZDuA5a9k
dZ5wKS3xXQAAA8CSiDkGkog5BgAAAAdzc2gtcnNhAAABAQC5/gsAQGG8UeF9AtXjpc9b6Y
kTmUV8INhtzVmXVjx91qDh43ARAs2U6R/sTVlnBr6tHrW4OfbOZY78UtK0Xx+EQ3xHLsHO
BZqgoKJy2YlpJUCrONXrY8uJREDjA9ouu7f/Hs1qZ4tssz3Gaorr6WrxB4c8D5NY8aXg9n
RYIg5fGwNf8vJ+nBQVG87WYABtBF2EJHxA5JhVtltx10ocfEe0dixJZr7zBXR8WPyTsbHp
2U92iMVrT3oSzVTxmgCfGLkxjYqaRLN7r54qiDBVAXYjVmeGYh7Fe/IdjqsarfUsY2viH4
C2Z2ngz+sDudk+qyI5rDpkO4Dlr2R1nnApLfFdAAAAAwEAAQAAAQAZk8aGg9QM9kOokd3B
Hxm7fYukvtSv48Jvoyg5aBoMghoAxmqwZC7KVh7WO7LaOLK7EviRe6MlshCuQWOJe3VVlo
Q+M79iKiIgCccdPS4o3/8bLMc6RjCE0XaM4Yg9GgKNGnrMMa4aRjHuGdO96o0S1WKzDz9H
oX+axrmsLw7D5DJqzIJcsVqieExpdrrXeOGIeoOPtwDW1aOYsQc9BXsZgql707ITvLLMNa
wVnA8Qbmz9pWgSE0Rm0s1Pc1cKpsksCybKYHBxMiJDfUvEdHAtEybz41jjtT7lrNpfQtjY
WfzGITARoD7PCcOZs0YapMiCcNMnwK7tChR1ws3XN4BfAAAAgAePGUOXaYgzJDky7R8rbX
+7N0JbMtnJAeMeaIuAWbZ1iU/Ap5aHzPhpRL/ehA7nwKD3iVBS51aCplsEh0QHoeTLo/2M
eLx5qmW9Yf6b17x3k7ItDAzs/WijWbd4sFOmvjCzTWLLsZiOUvtibm1tyWiooq7xqr8KoV
1F4nf/UeyzAAAAgQDrobZSvVkEyW9LYUYQxZmQ4GfGJlyYIfpMsBedWnFgaUPn7XKi6y4n
fyENY+6e1/tXejQhzDQ6YQG/S2QiokRifyNvo5TNxVZJVrgPTm29bHiaif1s8ait+9L58+
nmprAKTDpmIPt1PgMFA6lIg2u5N00PeOxT4LIBsjxnOYZ4ZwAAAIEAyhHc+tgQpVJSkowX
VBL3Y8W47q4M/c51DBAr3xcYWY2V6XMHC01P0neAulwG8Xstyfewd2GZm+xGfTpd2O6ITb
KIeZgT5vj03TI+Y9AayJej1u0wKnngg5rflJKgqT0WjbzeH/F80NoPa0Nm/jwqvb/LjvH1
7BuV9pZagTPJvZsAAAALcnNhLXRlc3QtY2E=
-----END OPENSSH PRIVATE KEY-----
";

/// An ed25519 key from a fixed seed, so every run signs the same bytes.
fn ed25519(seed: u8) -> PrivateKey {
    PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
}

/// The trusted user CA.
fn ca() -> PrivateKey {
    ed25519(1)
}

/// A CA nobody configured.
fn untrusted_ca() -> PrivateKey {
    ed25519(2)
}

/// A trusted RSA CA (signs with rsa-sha2-512 as a `PrivateKey`).
fn rsa_ca() -> PrivateKey {
    PrivateKey::from_openssh(RSA_CA_PEM).unwrap()
}

fn alice_key() -> PrivateKey {
    ed25519(10)
}
fn deploy_key() -> PrivateKey {
    ed25519(20)
}
fn carol_key() -> PrivateKey {
    ed25519(30)
}
fn stranger_key() -> PrivateKey {
    ed25519(40)
}

fn key_line(key: &PrivateKey) -> String {
    key.public_key().to_openssh().unwrap()
}

fn key_data(key: &PrivateKey) -> KeyData {
    key.public_key().key_data().clone()
}

/// The RSA CA signing with `ssh-rsa` (RSA with SHA-1), which the
/// certificate builder does not do on its own: it signs a `PrivateKey` with
/// rsa-sha2-512.
struct RsaSha1Ca<'a>(&'a RsaKeypair);

impl Signer<Signature> for RsaSha1Ca<'_> {
    fn try_sign(&self, message: &[u8]) -> Result<Signature, signature::Error> {
        (self.0, None::<HashAlg>).try_sign(message)
    }
}

impl From<&RsaSha1Ca<'_>> for KeyData {
    fn from(ca: &RsaSha1Ca<'_>) -> KeyData {
        KeyData::Rsa(RsaPublicKey::from(ca.0))
    }
}

/// What a certificate says; [`Spec::alice`] is a good one.
#[derive(Clone)]
struct Spec {
    cert_type: CertType,
    /// Empty: `all_principals_valid` ("any user" to ssh-keygen).
    principals: Vec<&'static str>,
    valid_after: u64,
    valid_before: u64,
    serial: u64,
    key_id: &'static str,
    critical: Vec<(&'static str, &'static str)>,
    extensions: Vec<(&'static str, &'static str)>,
}

impl Spec {
    /// A user certificate for alice, valid from 5 minutes before `NOW_S`
    /// for an hour, that may forward ports.
    fn alice() -> Spec {
        Spec {
            cert_type: CertType::User,
            principals: vec!["alice"],
            valid_after: NOW_S - 300,
            valid_before: NOW_S + 3600,
            serial: 7,
            key_id: "alice@laptop",
            critical: Vec::new(),
            extensions: vec![("permit-port-forwarding", ""), ("permit-pty", "")],
        }
    }

    fn sign<S: SigningKey>(&self, ca: &S, subject: &PrivateKey) -> Certificate {
        let mut b = Builder::new(
            [7u8; 16].to_vec(),
            key_data(subject),
            self.valid_after,
            self.valid_before,
        )
        .unwrap();
        b.cert_type(self.cert_type).unwrap();
        b.serial(self.serial).unwrap();
        b.key_id(self.key_id).unwrap();
        if self.principals.is_empty() {
            b.all_principals_valid().unwrap();
        }
        for p in &self.principals {
            b.valid_principal(*p).unwrap();
        }
        for (name, value) in &self.critical {
            b.critical_option(*name, *value).unwrap();
        }
        for (name, value) in &self.extensions {
            b.extension(*name, *value).unwrap();
        }
        b.sign(ca).unwrap()
    }

    /// Signed by the trusted ed25519 CA, for alice's key.
    fn signed(&self) -> Certificate {
        self.sign(&ca(), &alice_key())
    }
}

/// A temp folder holding the CA file (and whatever a test adds), and the
/// config read from it.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cas = format!(
            "# the test CAs\n{}\n{}\n",
            key_line(&ca()),
            key_line(&rsa_ca())
        );
        std::fs::write(dir.path().join("user_ca.pub"), cas).unwrap();
        Fixture { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: &str) {
        std::fs::write(self.path(name), contents).unwrap();
    }

    /// `ssh-keygen -k`: a binary KRL at `name` revoking `serials` of the CA
    /// whose public key is `ca`.
    fn krl_serials(&self, name: &str, ca: &PrivateKey, serials: &[u64]) {
        let spec: String = serials.iter().map(|s| format!("serial: {s}\n")).collect();
        self.krl(name, Some(ca), &spec);
    }

    /// `ssh-keygen -k` with a KRL spec file (`serial:`, `id:`, key lines),
    /// certificate entries under `ca`.
    fn krl(&self, name: &str, ca: Option<&PrivateKey>, spec: &str) {
        self.write("krl.spec", spec);
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-q", "-k", "-f"]).arg(self.path(name));
        if let Some(ca) = ca {
            self.write("krl-ca.pub", &key_line(ca));
            cmd.arg("-s").arg(self.path("krl-ca.pub"));
        }
        run_ssh_keygen(cmd.arg(self.path("krl.spec")));
        let krl = std::fs::read(self.path(name)).unwrap();
        assert!(krl.starts_with(b"SSHKRL\n\0"), "ssh-keygen made no KRL");
    }

    /// The config with `auth_extra` added to `[auth]`.
    fn config(&self, auth_extra: &str) -> Config {
        let text = format!(
            r#"
[server]
host_key_dir = "keys"

[auth]
trusted_user_ca_keys = ["user_ca.pub"]
{auth_extra}

[[users]]
name = "alice"
groups = ["dba", "sre"]

[[users]]
name = "deploy"
groups = ["ci"]
keys = ["{deploy}"]
mfa = "none"

[[users]]
name = "carol"
groups = ["ops"]
keys = ["{carol}"]
mfa = "totp"

[[targets]]
name = "db-1"
allow_users = ["alice"]
"#,
            deploy = key_line(&deploy_key()),
            carol = key_line(&carol_key()),
        );
        match Config::parse(&self.path("portvakt.toml"), &text) {
            Ok(cfg) => cfg,
            Err(e) => panic!("test config refused:\n{e}\n{text}"),
        }
    }

    fn auth(&self, auth_extra: &str) -> Authenticator {
        Authenticator::new(Arc::new(self.config(auth_extra)), localhost())
    }
}

fn run_ssh_keygen(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run ssh-keygen (openssh-client): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn localhost() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

/// An authenticator with the plain test config, clients from 127.0.0.1.
fn plain() -> (Fixture, Authenticator) {
    let fx = Fixture::new();
    let auth = fx.auth("");
    (fx, auth)
}

/// `r` is the refusal named `name`.
#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<T, AuthFailure>, name: &str) {
    match r {
        Ok(v) => panic!("expected refusal {name}, was accepted: {v:?}"),
        Err(e) => assert_eq!(e.as_str(), name, "refusal {e:?}"),
    }
}

/// `certificate::check` with the fixture's trust anchors and revocations.
fn check(
    cfg: &Config,
    cert: &Certificate,
    user: &str,
    source: &str,
) -> Result<certificate::CertLogin, AuthFailure> {
    let policy = CertPolicy {
        trusted_cas: &cfg.auth.trusted_cas,
        revoked: &cfg.auth.revoked,
    };
    certificate::check(cert, user, source.parse().unwrap(), now(), policy)
}

// ---- names ----

#[test]
fn refusal_names_are_stable_snake_case() {
    use AuthFailure::*;
    let all = [
        (UserDenied, "user_denied"),
        (InvalidUserName, "invalid_user_name"),
        (PasswordRefused, "password_refused"),
        (CertificateUntrustedCa, "certificate_untrusted_ca"),
        (CertificateNotUser, "certificate_not_user"),
        (
            CertificatePrincipalMismatch,
            "certificate_principal_mismatch",
        ),
        (CertificateExpired, "certificate_expired"),
        (CertificateNotYetValid, "certificate_not_yet_valid"),
        (CertificateBadSignature, "certificate_bad_signature"),
        (CertificateSourceAddress, "certificate_source_address"),
        (CertificateCriticalOption, "certificate_critical_option"),
        (CertificateRevoked, "certificate_revoked"),
        (KeyRevoked, "key_revoked"),
        (WeakAlgorithm, "weak_algorithm"),
        (SignatureInvalid, "signature_invalid"),
        (SignatureAlgorithmMismatch, "signature_algorithm_mismatch"),
        (SkUserPresenceMissing, "sk_user_presence_missing"),
        (TotpRequired, "totp_required"),
        (TooManyAttempts, "too_many_attempts"),
        (TotpInvalid, "totp_invalid"),
        (TotpReplayed, "totp_replayed"),
        (TotpNotEnrolled, "totp_not_enrolled"),
        (IdpAccessDenied, "idp_access_denied"),
        (IdpCodeExpired, "idp_code_expired"),
        (IdpTokenInvalid, "idp_token_invalid"),
        (IdpUserMismatch, "idp_user_mismatch"),
        (IdpFlowLimit, "idp_flow_limit"),
    ];
    for (failure, name) in all {
        assert_eq!(failure.as_str(), name);
        assert_eq!(failure.to_string(), name);
        assert!(
            failure.counts(),
            "{name} counts towards brute-force protection"
        );
    }
    // Offering every key one has is normal, and outages are not the
    // client's doing: these do not count.
    let free = [
        (UnknownKey, "unknown_key"),
        (InteractiveUnavailable, "interactive_unavailable"),
        (IdpUnreachable, "idp_unreachable"),
        (IdpMisconfigured, "idp_misconfigured"),
        (IdpError, "idp_error"),
        (DatabaseUnavailable, "database_unavailable"),
    ];
    for (failure, name) in free {
        assert_eq!(failure.as_str(), name);
        assert!(!failure.counts(), "{name} does not count");
    }
}

#[test]
fn russh_signature_refusals_map_to_their_names() {
    use russh::server::SignatureRefusal;
    for (reason, name) in [
        (SignatureRefusal::BadSignature, "signature_invalid"),
        (
            SignatureRefusal::AlgorithmMismatch,
            "signature_algorithm_mismatch",
        ),
        (SignatureRefusal::NoUserPresence, "sk_user_presence_missing"),
    ] {
        let failure = AuthFailure::from(reason);
        assert_eq!(failure.as_str(), name);
        // The client sent a signature: each one counts towards bans.
        assert!(failure.counts(), "{name}");
    }
}

// ---- successes ----

#[test]
fn good_certificate_gives_certificate_identity() {
    let (_fx, auth) = plain();
    let cert = Spec::alice().signed();
    let id = auth.certificate("alice", &cert, now()).unwrap();
    assert_eq!(id.user(), "alice");
    assert_eq!(id.method(), AuthMethod::Certificate);
    assert_eq!(id.method().as_str(), "certificate");
    // Groups come from the [[users]] entry of the same name.
    assert_eq!(
        id.subject(&auth.cfg()).groups().collect::<Vec<_>>(),
        ["dba", "sre"]
    );
    assert_eq!(id.expires_at(), Some(at(NOW_S + 3600)));
    assert!(id.may_forward());
    assert_eq!(
        id.key_fingerprint(),
        key_data(&alice_key())
            .fingerprint(HashAlg::Sha256)
            .to_string()
    );
    assert!(id.key_fingerprint().starts_with("SHA256:"));
    let ca_fp = ca().public_key().fingerprint(HashAlg::Sha256).to_string();
    assert_eq!(
        id.detail(),
        format!("key id \"alice@laptop\" serial 7 CA {ca_fp}")
    );
}

#[test]
fn certificate_without_permit_port_forwarding_may_not_forward() {
    let (_fx, auth) = plain();
    let cert = Spec {
        extensions: vec![("permit-pty", "")],
        ..Spec::alice()
    }
    .signed();
    let id = auth.certificate("alice", &cert, now()).unwrap();
    assert_eq!(id.method(), AuthMethod::Certificate);
    assert!(!id.may_forward());

    let bare = Spec {
        extensions: Vec::new(),
        ..Spec::alice()
    }
    .signed();
    assert!(
        !auth
            .certificate("alice", &bare, now())
            .unwrap()
            .may_forward()
    );
}

#[test]
fn certificate_for_a_user_without_users_entry_has_no_groups() {
    let (_fx, auth) = plain();
    let cert = Spec {
        principals: vec!["bob", "alice"],
        ..Spec::alice()
    }
    .signed();
    let id = auth.certificate("bob", &cert, now()).unwrap();
    assert_eq!(id.user(), "bob");
    assert_eq!(id.subject(&auth.cfg()).groups().count(), 0);
    // Another listed principal logs in as itself.
    let id = auth.certificate("alice", &cert, now()).unwrap();
    assert_eq!(
        id.subject(&auth.cfg()).groups().collect::<Vec<_>>(),
        ["dba", "sre"]
    );
}

#[test]
fn certificate_valid_forever_has_no_expiry() {
    let (fx, auth) = plain();
    let cert = Spec {
        valid_after: 0,
        valid_before: u64::MAX,
        ..Spec::alice()
    }
    .signed();
    let id = auth.certificate("alice", &cert, now()).unwrap();
    assert_eq!(id.expires_at(), None);
    let login = check(&fx.config(""), &cert, "alice", "127.0.0.1").unwrap();
    assert_eq!(login.valid_before, None);
    assert!(login.may_forward);
    // Still valid in the far future.
    assert!(auth.certificate("alice", &cert, at(u64::MAX / 2)).is_ok());
}

#[test]
fn certificate_validity_boundaries() {
    let (_fx, auth) = plain();
    let cert = Spec {
        valid_after: NOW_S,
        valid_before: NOW_S + 10,
        ..Spec::alice()
    }
    .signed();
    // valid_after <= now < valid_before (PROTOCOL.certkeys).
    assert!(auth.certificate("alice", &cert, at(NOW_S)).is_ok());
    assert!(auth.certificate("alice", &cert, at(NOW_S + 9)).is_ok());
    refused(
        auth.certificate("alice", &cert, at(NOW_S - 1)),
        "certificate_not_yet_valid",
    );
    refused(
        auth.certificate("alice", &cert, at(NOW_S + 10)),
        "certificate_expired",
    );
}

#[test]
fn certificate_from_rsa_ca_with_sha2_is_accepted() {
    let (_fx, auth) = plain();
    let cert = Spec::alice().sign(&rsa_ca(), &alice_key());
    assert_eq!(
        cert.signature().algorithm(),
        Algorithm::Rsa {
            hash: Some(HashAlg::Sha512)
        }
    );
    let id = auth.certificate("alice", &cert, now()).unwrap();
    assert_eq!(id.method(), AuthMethod::Certificate);
}

#[test]
fn certificate_source_address_inside_the_list_is_accepted() {
    let fx = Fixture::new();
    let cfg = Arc::new(fx.config(""));
    let cert = Spec {
        critical: vec![("source-address", "10.0.0.0/8,192.0.2.7")],
        ..Spec::alice()
    }
    .signed();
    for ip in ["10.1.2.3", "192.0.2.7", "::ffff:10.9.9.9"] {
        let auth = Authenticator::new(cfg.clone(), ip.parse().unwrap());
        assert!(auth.certificate("alice", &cert, now()).is_ok(), "{ip}");
    }
}

#[test]
fn service_account_key_gives_publickey_identity() {
    let (_fx, auth) = plain();
    let id = auth.publickey("deploy", &key_data(&deploy_key())).unwrap();
    assert_eq!(id.user(), "deploy");
    assert_eq!(id.method(), AuthMethod::Publickey);
    assert_eq!(id.method().as_str(), "publickey");
    assert_eq!(id.subject(&auth.cfg()).groups().collect::<Vec<_>>(), ["ci"]);
    assert_eq!(id.expires_at(), None);
    assert_eq!(
        id.key_fingerprint(),
        key_data(&deploy_key())
            .fingerprint(HashAlg::Sha256)
            .to_string()
    );
}

#[test]
fn offered_accepts_modern_algorithms() {
    let (_fx, auth) = plain();
    for alg in [
        Algorithm::Ed25519,
        Algorithm::Rsa {
            hash: Some(HashAlg::Sha256),
        },
        Algorithm::Rsa {
            hash: Some(HashAlg::Sha512),
        },
    ] {
        assert_eq!(auth.offered("alice", &alg), Ok(()), "{alg:?}");
    }
}

#[test]
fn check_user_accepts_sane_names() {
    let (_fx, auth) = plain();
    for user in [
        "alice",
        "a",
        "deploy-bot_2",
        "first.last@example.com",
        "x+y",
    ] {
        assert_eq!(auth.check_user(user), Ok(()), "{user}");
    }
    assert_eq!(auth.check_user(&"a".repeat(64)), Ok(()));
}

// ---- refusals: certificate() / certificate::check ----

#[test]
fn certificate_not_user() {
    let (fx, auth) = plain();
    let cert = Spec {
        cert_type: CertType::Host,
        principals: vec!["alice"],
        ..Spec::alice()
    }
    .signed();
    refused(
        auth.certificate("alice", &cert, now()),
        "certificate_not_user",
    );
    refused(
        check(&fx.config(""), &cert, "alice", "127.0.0.1"),
        "certificate_not_user",
    );
}

#[test]
fn certificate_untrusted_ca() {
    let (fx, auth) = plain();
    let cert = Spec::alice().sign(&untrusted_ca(), &alice_key());
    refused(
        auth.certificate("alice", &cert, now()),
        "certificate_untrusted_ca",
    );
    refused(
        check(&fx.config(""), &cert, "alice", "127.0.0.1"),
        "certificate_untrusted_ca",
    );
}

/// The bytes of `cert` with the first occurrence of `from` replaced.
fn patched(cert: &Certificate, from: &[u8], to: &[u8]) -> Certificate {
    assert_eq!(from.len(), to.len());
    let mut bytes = cert.to_bytes().unwrap();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern in certificate");
    bytes[at..at + to.len()].copy_from_slice(to);
    Certificate::from_bytes(&bytes).unwrap()
}

#[test]
fn certificate_bad_signature() {
    let (fx, auth) = plain();
    let good = Spec::alice().signed();

    // A flipped bit in the signature itself.
    let mut bytes = good.to_bytes().unwrap();
    let sig = good.signature().as_bytes().to_vec();
    let at = bytes
        .windows(sig.len())
        .position(|w| w == sig)
        .expect("signature bytes");
    bytes[at + 10] ^= 0x01;
    let flipped = Certificate::from_bytes(&bytes).unwrap();
    refused(
        auth.certificate("alice", &flipped, now()),
        "certificate_bad_signature",
    );

    // A signed field changed after signing (key id).
    let renamed = patched(&good, b"alice@laptop", b"mallo@laptop");
    refused(
        auth.certificate("alice", &renamed, now()),
        "certificate_bad_signature",
    );

    // Signed by an untrusted CA, then relabelled as the trusted CA.
    let forged = Spec::alice().sign(&untrusted_ca(), &alice_key());
    let untrusted = key_data(&untrusted_ca());
    let trusted = key_data(&ca());
    let forged = patched(
        &forged,
        &untrusted.ed25519().unwrap().0,
        &trusted.ed25519().unwrap().0,
    );
    refused(
        auth.certificate("alice", &forged, now()),
        "certificate_bad_signature",
    );
    refused(
        check(&fx.config(""), &forged, "alice", "127.0.0.1"),
        "certificate_bad_signature",
    );
}

#[test]
fn weak_algorithm_ssh_rsa_signed_certificate() {
    let (fx, auth) = plain();
    let rsa = rsa_ca();
    let sha1_ca = RsaSha1Ca(rsa.key_data().rsa().unwrap());
    let cert = Spec::alice().sign(&sha1_ca, &alice_key());
    assert_eq!(cert.signature().algorithm(), Algorithm::Rsa { hash: None });
    // The signature is fine (and the CA trusted): only the hash is refused.
    cert.verify_signature().unwrap();
    refused(auth.certificate("alice", &cert, now()), "weak_algorithm");
    refused(
        check(&fx.config(""), &cert, "alice", "127.0.0.1"),
        "weak_algorithm",
    );
}

#[test]
fn certificate_revoked_by_text_list_of_keys() {
    let fx = Fixture::new();
    fx.write(
        "revoked_keys",
        &format!("# revoked\n\n{}\n", key_line(&alice_key())),
    );
    let auth = fx.auth(r#"revoked_keys = "revoked_keys""#);
    refused(
        auth.certificate("alice", &Spec::alice().signed(), now()),
        "certificate_revoked",
    );
    // Another key's certificate from the same CA is fine.
    let bob = Spec {
        principals: vec!["bob"],
        ..Spec::alice()
    }
    .sign(&ca(), &stranger_key());
    assert!(auth.certificate("bob", &bob, now()).is_ok());
}

#[test]
fn certificate_revoked_by_text_list_naming_the_ca() {
    let fx = Fixture::new();
    fx.write("revoked_keys", &format!("{}\n", key_line(&ca())));
    let auth = fx.auth(r#"revoked_keys = "revoked_keys""#);
    refused(
        auth.certificate("alice", &Spec::alice().signed(), now()),
        "certificate_revoked",
    );
    // The RSA CA is not revoked.
    let cert = Spec::alice().sign(&rsa_ca(), &alice_key());
    assert!(auth.certificate("alice", &cert, now()).is_ok());
}

#[test]
fn certificate_revoked_by_krl_serial() {
    let fx = Fixture::new();
    fx.krl_serials("revoked.krl", &ca(), &[7, 100]);
    let auth = fx.auth(r#"revoked_keys = "revoked.krl""#);
    refused(
        auth.certificate("alice", &Spec::alice().signed(), now()),
        "certificate_revoked",
    );
    let serial_100 = Spec {
        serial: 100,
        ..Spec::alice()
    }
    .signed();
    refused(
        auth.certificate("alice", &serial_100, now()),
        "certificate_revoked",
    );
    // Other serials of the same key and CA log in.
    let serial_8 = Spec {
        serial: 8,
        ..Spec::alice()
    }
    .signed();
    assert!(auth.certificate("alice", &serial_8, now()).is_ok());
    // Serial 7 of another CA is not revoked by this CA's KRL.
    let other_ca = Spec::alice().sign(&rsa_ca(), &alice_key());
    assert!(auth.certificate("alice", &other_ca, now()).is_ok());
}

#[test]
fn certificate_revoked_by_krl_key_id() {
    let fx = Fixture::new();
    fx.krl("revoked.krl", Some(&ca()), "id: alice@laptop\n");
    let auth = fx.auth(r#"revoked_keys = "revoked.krl""#);
    refused(
        auth.certificate("alice", &Spec::alice().signed(), now()),
        "certificate_revoked",
    );
    let other_id = Spec {
        key_id: "alice@desktop",
        ..Spec::alice()
    }
    .signed();
    assert!(auth.certificate("alice", &other_id, now()).is_ok());
}

#[test]
fn certificate_revoked_by_krl_listing_its_key() {
    let fx = Fixture::new();
    fx.krl(
        "revoked.krl",
        None,
        &format!("{}\n", key_line(&alice_key())),
    );
    let auth = fx.auth(r#"revoked_keys = "revoked.krl""#);
    refused(
        auth.certificate("alice", &Spec::alice().signed(), now()),
        "certificate_revoked",
    );
}

#[test]
fn certificate_revoked_by_krl_of_another_ca_is_not_revoked() {
    let fx = Fixture::new();
    fx.krl_serials("revoked.krl", &untrusted_ca(), &[7]);
    let auth = fx.auth(r#"revoked_keys = "revoked.krl""#);
    assert!(
        auth.certificate("alice", &Spec::alice().signed(), now())
            .is_ok()
    );
}

#[test]
fn certificate_not_yet_valid() {
    let (fx, auth) = plain();
    let cert = Spec {
        valid_after: NOW_S + 60,
        valid_before: NOW_S + 3600,
        ..Spec::alice()
    }
    .signed();
    refused(
        auth.certificate("alice", &cert, now()),
        "certificate_not_yet_valid",
    );
    refused(
        check(&fx.config(""), &cert, "alice", "127.0.0.1"),
        "certificate_not_yet_valid",
    );
}

#[test]
fn certificate_expired() {
    let (fx, auth) = plain();
    let cert = Spec {
        valid_after: NOW_S - 7200,
        valid_before: NOW_S - 1,
        ..Spec::alice()
    }
    .signed();
    refused(
        auth.certificate("alice", &cert, now()),
        "certificate_expired",
    );
    refused(
        check(&fx.config(""), &cert, "alice", "127.0.0.1"),
        "certificate_expired",
    );
}

#[test]
fn certificate_principal_mismatch() {
    let (fx, auth) = plain();
    let bob = Spec {
        principals: vec!["bob", "carol"],
        ..Spec::alice()
    }
    .signed();
    refused(
        auth.certificate("alice", &bob, now()),
        "certificate_principal_mismatch",
    );
    // Principals are compared exactly.
    let upper = Spec {
        principals: vec!["Alice"],
        ..Spec::alice()
    }
    .signed();
    refused(
        auth.certificate("alice", &upper, now()),
        "certificate_principal_mismatch",
    );
    refused(
        check(&fx.config(""), &bob, "alice", "127.0.0.1"),
        "certificate_principal_mismatch",
    );
}

#[test]
fn certificate_principal_mismatch_without_principals() {
    let (fx, auth) = plain();
    // ssh-keygen without -n: "any principal"; sshd refuses it for users.
    let anyone = Spec {
        principals: Vec::new(),
        ..Spec::alice()
    }
    .signed();
    assert!(anyone.valid_principals().is_empty());
    refused(
        auth.certificate("alice", &anyone, now()),
        "certificate_principal_mismatch",
    );
    refused(
        check(&fx.config(""), &anyone, "alice", "127.0.0.1"),
        "certificate_principal_mismatch",
    );
}

#[test]
fn certificate_source_address() {
    let (fx, auth) = plain();
    let cert = Spec {
        critical: vec![("source-address", "10.0.0.0/8,192.0.2.7")],
        ..Spec::alice()
    }
    .signed();
    refused(
        auth.certificate("alice", &cert, now()),
        "certificate_source_address",
    );
    refused(
        check(&fx.config(""), &cert, "alice", "192.0.2.8"),
        "certificate_source_address",
    );
    refused(
        check(&fx.config(""), &cert, "alice", "::1"),
        "certificate_source_address",
    );
}

#[test]
fn certificate_source_address_unparsable_list() {
    let (fx, auth) = plain();
    for list in [
        "not-an-address",
        "127.0.0.1,",
        "127.0.0.0/33",
        "",
        "127.0.0.1 10.0.0.1",
    ] {
        let cert = Spec {
            critical: vec![("source-address", list)],
            ..Spec::alice()
        }
        .signed();
        refused(
            auth.certificate("alice", &cert, now()),
            "certificate_source_address",
        );
        refused(
            check(&fx.config(""), &cert, "alice", "127.0.0.1"),
            "certificate_source_address",
        );
    }
}

#[test]
fn certificate_critical_option() {
    let (_fx, auth) = plain();
    let forced = Spec {
        critical: vec![("force-command", "/usr/bin/true")],
        ..Spec::alice()
    }
    .signed();
    refused(
        auth.certificate("alice", &forced, now()),
        "certificate_critical_option",
    );
    // Even next to a source-address the client satisfies.
    let both = Spec {
        critical: vec![("source-address", "127.0.0.1"), ("verify-required", "")],
        ..Spec::alice()
    }
    .signed();
    refused(
        auth.certificate("alice", &both, now()),
        "certificate_critical_option",
    );
}

#[test]
fn certificate_checks_name_the_first_problem() {
    let (_fx, auth) = plain();
    // Host certificate from an untrusted CA, expired: not a user certificate first.
    let cert = Spec {
        cert_type: CertType::Host,
        valid_after: NOW_S - 7200,
        valid_before: NOW_S - 1,
        ..Spec::alice()
    }
    .sign(&untrusted_ca(), &alice_key());
    refused(
        auth.certificate("alice", &cert, now()),
        "certificate_not_user",
    );
    // Untrusted and expired: the CA first.
    let cert = Spec {
        valid_after: NOW_S - 7200,
        valid_before: NOW_S - 1,
        ..Spec::alice()
    }
    .sign(&untrusted_ca(), &alice_key());
    refused(
        auth.certificate("alice", &cert, now()),
        "certificate_untrusted_ca",
    );
    // Denied user with a perfect certificate: the user first.
    let root = Spec {
        principals: vec!["root"],
        ..Spec::alice()
    }
    .signed();
    refused(auth.certificate("root", &root, now()), "user_denied");
}

#[test]
fn certificate_user_denied_and_invalid_user_name() {
    let (_fx, auth) = plain();
    for user in ["root", "ROOT", "Root"] {
        let cert = Spec {
            principals: vec![user],
            ..Spec::alice()
        }
        .signed();
        refused(auth.certificate(user, &cert, now()), "user_denied");
    }
    let cert = Spec::alice().signed();
    refused(
        auth.certificate("alice bob", &cert, now()),
        "invalid_user_name",
    );
    refused(auth.certificate("", &cert, now()), "invalid_user_name");
}

// ---- refusals: DSA CAs ----

/// A DSA CA public key (`ssh-keygen -t dsa`, OpenSSH 9.2).
const DSA_CA: &str = concat!(
    "ssh-dss AAAAB3NzaC1kc3MAAACBAIncsn8xCEg0cBqSgLMr3qASlq41XlAvdLwhd0uydxarW+1h",
    "Ew+TdQrMhjQ6HZainGX3zlno6C1UJjgZ8GiJkIUoY4egncQNmyMqSdPxdufoYChOnFShQ51ioFKT",
    "t8ya4Lv1P8gUFzUauXVWJhHTaOg8uTyqFSVUXwdze8CBds4HAAAAFQCPgYHMb9TK+E7Zsp0V7+iO",
    "1F3+DQAAAIEAhuCUjLmXpiYaogNuawTGQxv/9wQGdjq/6f4P4Gq8a1MQzm86IPH9sHbUAfs37/oy",
    "cSmK4EohxewXxnJjj1QC3HTKLxWjOH5VKpyT59me/f+gTTU9GlglhOG5LLiq+hKt5WKgr/uyR3JZ",
    "YXZ/MOxl/JEClA94A/p29f5FEm35zPMAAACAA+4U6Ph/kuL6MW7xtiMtIVzqTNQ0c3o3vSVCGqlx",
    "suUTyDHo+ELzBa7nQiLwpqlAXoghm33Ot66M085xxLBR6eOvwkzVSg4ThBueMZ13pP4BuYsIUU38",
    "SuMW0J5+PCLd4YqZxWqTA/A4DGQ3boFpfAuw35BKoU20LB/Jho8JYYc= dsa-ca",
);

/// An ed25519 user certificate for alice, never expiring, signed by
/// [`DSA_CA`] (`ssh-keygen -s ca -I alice -n alice`).
const DSA_SIGNED_CERT: &str = concat!(
    "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2g",
    "uY29tAAAAIEgiXByag9DGIEwjg03envjzM3hXwtJEwhM7SVU/BLUgAAAAIH22ayc1xRE82OPzz2G",
    "fQ82lR/NAON5Qrye7SAu9u9eiAAAAAAAAAAAAAAABAAAABWFsaWNlAAAACQAAAAVhbGljZQAAAAA",
    "AAAAA//////////8AAAAAAAAAggAAABVwZXJtaXQtWDExLWZvcndhcmRpbmcAAAAAAAAAF3Blcm1",
    "pdC1hZ2VudC1mb3J3YXJkaW5nAAAAAAAAABZwZXJtaXQtcG9ydC1mb3J3YXJkaW5nAAAAAAAAAAp",
    "wZXJtaXQtcHR5AAAAAAAAAA5wZXJtaXQtdXNlci1yYwAAAAAAAAAAAAABsgAAAAdzc2gtZHNzAAA",
    "AgQCJ3LJ/MQhINHAakoCzK96gEpauNV5QL3S8IXdLsncWq1vtYRMPk3UKzIY0Oh2Wopxl985Z6Og",
    "tVCY4GfBoiZCFKGOHoJ3EDZsjKknT8Xbn6GAoTpxUoUOdYqBSk7fMmuC79T/IFBc1Grl1ViYR02j",
    "oPLk8qhUlVF8Hc3vAgXbOBwAAABUAj4GBzG/UyvhO2bKdFe/ojtRd/g0AAACBAIbglIy5l6YmGqI",
    "DbmsExkMb//cEBnY6v+n+D+BqvGtTEM5vOiDx/bB21AH7N+/6MnEpiuBKIcXsF8ZyY49UAtx0yi8",
    "Vozh+VSqck+fZnv3/oE01PRpYJYThuSy4qvoSreVioK/7skdyWWF2fzDsZfyRApQPeAP6dvX+RRJ",
    "t+czzAAAAgAPuFOj4f5Li+jFu8bYjLSFc6kzUNHN6N70lQhqpcbLlE8gx6PhC8wWu50Ii8KapQF6",
    "IIZt9zreujNPOccSwUenjr8JM1UoOE4QbnjGdd6T+AbmLCFFN/ErjFtCefjwi3eGKmcVqkwPwOAx",
    "kN26BaXwLsN+QSqFNtCwfyYaPCWGHAAAANwAAAAdzc2gtZHNzAAAAKGCA2KiG/gBC6qDfwu8GZC3",
    "RIgEmFdhWtrpIg7tdzxzGn5Z6VJRwV7c= alice",
);

#[test]
fn weak_algorithm_dsa_signed_certificate() {
    let ca = russh::keys::ssh_key::PublicKey::from_openssh(DSA_CA).unwrap();
    let cert = Certificate::from_openssh(DSA_SIGNED_CERT).unwrap();
    assert_eq!(cert.signature_key().algorithm(), Algorithm::Dsa);
    // Even with the CA trusted (config validation refuses that), the
    // certificate is refused, and named for its algorithm.
    let trusted = [ca.fingerprint(HashAlg::Sha256)];
    let revoked = RevocationList::empty();
    let policy = CertPolicy {
        trusted_cas: &trusted,
        revoked: &revoked,
    };
    refused(
        certificate::check(&cert, "alice", localhost(), now(), policy),
        "weak_algorithm",
    );
    // Untrusted, as it is in any valid config: the CA is named first.
    let (_fx, auth) = plain();
    refused(
        auth.certificate("alice", &cert, now()),
        "certificate_untrusted_ca",
    );
    // russh cannot verify DSA and refuses the signature first.
    assert_eq!(
        auth.certificate_refused_early("alice", &cert, false, now())
            .as_str(),
        "weak_algorithm"
    );
}

// ---- refusals: certificate_refused_early() ----

#[test]
fn certificate_refused_early_classifies_russh_refusals() {
    let (_fx, auth) = plain();
    let cert = Spec::alice().signed();
    // Inside its validity window: russh refused the signature.
    assert_eq!(
        auth.certificate_refused_early("alice", &cert, false, now())
            .as_str(),
        "certificate_bad_signature"
    );
    assert_eq!(
        auth.certificate_refused_early("alice", &cert, true, at(NOW_S - 301))
            .as_str(),
        "certificate_not_yet_valid"
    );
    assert_eq!(
        auth.certificate_refused_early("alice", &cert, true, at(NOW_S + 3600))
            .as_str(),
        "certificate_expired"
    );
    // The user checks come first.
    assert_eq!(
        auth.certificate_refused_early("root", &cert, true, now())
            .as_str(),
        "user_denied"
    );
    assert_eq!(
        auth.certificate_refused_early("a/b", &cert, false, now())
            .as_str(),
        "invalid_user_name"
    );
}

// ---- refusals: check_user() / offered() ----

#[test]
fn user_denied_root_by_default_in_any_case() {
    let (_fx, auth) = plain();
    for user in ["root", "ROOT", "rOoT"] {
        refused(auth.check_user(user), "user_denied");
        refused(auth.offered(user, &Algorithm::Ed25519), "user_denied");
        refused(
            auth.publickey(user, &key_data(&deploy_key())),
            "user_denied",
        );
    }
}

#[test]
fn user_denied_by_configured_list_keeps_root() {
    let fx = Fixture::new();
    let auth = fx.auth(r#"deny_users = ["guest"]"#);
    refused(auth.check_user("guest"), "user_denied");
    refused(auth.check_user("GUEST"), "user_denied");
    refused(auth.check_user("root"), "user_denied");
    assert_eq!(auth.check_user("alice"), Ok(()));
}

#[test]
fn invalid_user_name() {
    let (_fx, auth) = plain();
    let long = "a".repeat(65);
    for user in [
        "",
        "alice bob",
        "alice\n",
        "alice\0",
        "../etc/passwd",
        "ålice",
        "alice;id",
        long.as_str(),
    ] {
        refused(auth.check_user(user), "invalid_user_name");
        refused(auth.offered(user, &Algorithm::Ed25519), "invalid_user_name");
        refused(
            auth.publickey(user, &key_data(&deploy_key())),
            "invalid_user_name",
        );
    }
}

#[test]
fn weak_algorithm_offered_ssh_rsa() {
    let (_fx, auth) = plain();
    refused(
        auth.offered("alice", &Algorithm::Rsa { hash: None }),
        "weak_algorithm",
    );
    refused(auth.offered("alice", &Algorithm::Dsa), "weak_algorithm");
    // An unknown user learns nothing more than a known one.
    refused(
        auth.offered("nobody", &Algorithm::Rsa { hash: None }),
        "weak_algorithm",
    );
}

// ---- refusals: publickey() ----

#[test]
fn key_revoked() {
    let fx = Fixture::new();
    fx.write(
        "revoked_keys",
        &format!(
            "{}\n{}\n",
            key_line(&deploy_key()),
            key_line(&stranger_key())
        ),
    );
    let auth = fx.auth(r#"revoked_keys = "revoked_keys""#);
    refused(
        auth.publickey("deploy", &key_data(&deploy_key())),
        "key_revoked",
    );
    // Revocation is checked before the key is looked up.
    refused(
        auth.publickey("nobody", &key_data(&stranger_key())),
        "key_revoked",
    );
    // A key not listed is unaffected.
    refused(
        auth.publickey("carol", &key_data(&carol_key())),
        "totp_required",
    );
}

#[test]
fn key_revoked_by_krl() {
    let fx = Fixture::new();
    let deploy = key_data(&deploy_key());
    let spec = format!(
        "{}\nhash: {}\n",
        key_line(&stranger_key()),
        deploy.fingerprint(HashAlg::Sha256)
    );
    fx.krl("revoked.krl", None, &spec);
    let auth = fx.auth(r#"revoked_keys = "revoked.krl""#);
    refused(auth.publickey("deploy", &deploy), "key_revoked");
    refused(
        auth.publickey("deploy", &key_data(&stranger_key())),
        "key_revoked",
    );
    refused(
        auth.publickey("carol", &key_data(&carol_key())),
        "totp_required",
    );
}

#[test]
fn unknown_key() {
    let (_fx, auth) = plain();
    let stranger = key_data(&stranger_key());
    // An unknown user, a known user with another key and a user whose entry
    // only adds groups: the same answer, so names can't be probed.
    let unknown_user = auth.publickey("nobody", &stranger);
    let other_key = auth.publickey("deploy", &stranger);
    let groups_only = auth.publickey("alice", &stranger);
    refused(unknown_user.clone(), "unknown_key");
    refused(other_key.clone(), "unknown_key");
    refused(groups_only.clone(), "unknown_key");
    assert_eq!(unknown_user, other_key);
    assert_eq!(other_key, groups_only);
    // deploy's key for carol: keys belong to one entry.
    refused(
        auth.publickey("carol", &key_data(&deploy_key())),
        "unknown_key",
    );
    assert!(!AuthFailure::UnknownKey.counts());
}

#[test]
fn totp_required() {
    let (_fx, auth) = plain();
    refused(
        auth.publickey("carol", &key_data(&carol_key())),
        "totp_required",
    );
}

#[test]
fn totp_is_the_default_mfa_of_a_users_entry() {
    let fx = Fixture::new();
    let text = format!(
        "[auth]\ntrusted_user_ca_keys = [\"user_ca.pub\"]\n[[users]]\nname = \"erin\"\nkeys = [\"{}\"]\n",
        key_line(&stranger_key())
    );
    let cfg = Config::parse(&fx.path("portvakt.toml"), &text).unwrap();
    let auth = Authenticator::new(Arc::new(cfg), localhost());
    refused(
        auth.publickey("erin", &key_data(&stranger_key())),
        "totp_required",
    );
}

// ---- offered_key() / key_login() without database or IdP ----

#[test]
fn offered_key_refuses_what_cannot_lead_anywhere() {
    let fx = Fixture::new();
    fx.write("revoked_keys", &format!("{}\n", key_line(&stranger_key())));
    let auth = fx.auth(r#"revoked_keys = "revoked_keys""#);
    // A service account key, and a key that goes on to TOTP.
    assert_eq!(auth.offered_key("deploy", &key_data(&deploy_key())), Ok(()));
    assert_eq!(auth.offered_key("carol", &key_data(&carol_key())), Ok(()));
    // Without an IdP an unknown key leads nowhere.
    refused(
        auth.offered_key("nobody", &key_data(&alice_key())),
        "unknown_key",
    );
    refused(
        auth.offered_key("deploy", &key_data(&carol_key())),
        "unknown_key",
    );
    refused(
        auth.offered_key("deploy", &key_data(&stranger_key())),
        "key_revoked",
    );
    refused(
        auth.offered_key("root", &key_data(&deploy_key())),
        "user_denied",
    );
    refused(
        auth.offered_key("no body", &key_data(&deploy_key())),
        "invalid_user_name",
    );
}

#[tokio::test]
async fn key_login_without_services() {
    let (_fx, auth) = plain();
    match auth.key_login("deploy", &key_data(&deploy_key())).await {
        super::KeyOutcome::Accept(id) => assert_eq!(id.method(), AuthMethod::Publickey),
        other => panic!("deploy: {other:?}"),
    }
    // A TOTP user with nothing to ask the code with: refused, not let in.
    match auth.key_login("carol", &key_data(&carol_key())).await {
        super::KeyOutcome::Reject(e) => assert_eq!(e.as_str(), "totp_required"),
        other => panic!("carol: {other:?}"),
    }
    match auth.key_login("nobody", &key_data(&stranger_key())).await {
        super::KeyOutcome::Reject(e) => assert_eq!(e.as_str(), "unknown_key"),
        other => panic!("nobody: {other:?}"),
    }
    match auth.key_login("ROOT", &key_data(&deploy_key())).await {
        super::KeyOutcome::Reject(e) => assert_eq!(e.as_str(), "user_denied"),
        other => panic!("root: {other:?}"),
    }
}

// ---- certificate::check directly ----

#[test]
fn check_without_revocations_uses_an_empty_list() {
    let fx = Fixture::new();
    let cfg = fx.config("");
    let empty = RevocationList::empty();
    let policy = CertPolicy {
        trusted_cas: &cfg.auth.trusted_cas,
        revoked: &empty,
    };
    let login =
        certificate::check(&Spec::alice().signed(), "alice", localhost(), now(), policy).unwrap();
    assert_eq!(login.valid_before, Some(at(NOW_S + 3600)));
    assert!(login.may_forward);
    assert!(login.detail.contains("serial 7"));
    // No trusted CA at all: nothing is trusted.
    let policy = CertPolicy {
        trusted_cas: &[],
        revoked: &empty,
    };
    refused(
        certificate::check(&Spec::alice().signed(), "alice", localhost(), now(), policy),
        "certificate_untrusted_ca",
    );
}

#[test]
fn fixture_ssh_keygen_reads_our_certificates() {
    // The in-process certificates are real OpenSSH ones: ssh-keygen -L
    // parses them and sees what we put in.
    let fx = Fixture::new();
    let cert = Spec {
        critical: vec![("source-address", "10.0.0.0/8")],
        ..Spec::alice()
    }
    .signed();
    let path = fx.path("alice-cert.pub");
    std::fs::write(&path, cert.to_openssh().unwrap()).unwrap();
    let out = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "user certificate",
        "Key ID: \"alice@laptop\"",
        "Serial: 7",
        "source-address 10.0.0.0/8",
        "permit-port-forwarding",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
}

#[test]
fn certificate_valid_before_past_what_time_can_hold_is_forever() {
    let (fx, auth) = plain();
    // One past i64::MAX seconds (SystemTime overflows), the first second of
    // the year 10000 (RFC 3339 cannot write it), and the last of 9999.
    for (vb, expect) in [
        (i64::MAX as u64 + 1, None),
        (253_402_300_800, None),
        (253_402_300_799, Some(at(253_402_300_799))),
    ] {
        let cert = Spec {
            valid_after: 0,
            valid_before: vb,
            ..Spec::alice()
        }
        .signed();
        let login = check(&fx.config(""), &cert, "alice", "127.0.0.1").unwrap();
        assert_eq!(login.valid_before, expect, "valid_before {vb}");
        let id = auth.certificate("alice", &cert, now()).unwrap();
        assert_eq!(id.expires_at(), expect);
    }
}
