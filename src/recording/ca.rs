//! The two recording CAs (DESIGN.md §10): the host CA signs the short-lived
//! host certificate the engineer's `ssh` sees for a recorded target; the
//! target CA signs the short-lived user certificate portvakt logs in to the
//! target with. Both keys are made on first start (mode 0600, `.pub` beside)
//! and then kept; nodes share them by sharing the files.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::{Certificate, HashAlg};
use russh::keys::{PrivateKey, PublicKey};

use crate::config::{AuthConfig, RecordingConfig};
use crate::keyfile::{self, KeyFileError};

/// Certificates are valid from this long before they are made (clocks of
/// targets and clients drift).
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error(
        "recording target CA {0} is also in trusted_user_ca_keys: a CA that logs portvakt in to targets must not log users in to portvakt"
    )]
    TargetCaTrusted(String),
    #[error("cannot sign a certificate: {0}")]
    Sign(String),
}

/// The recording CAs of this node, and the key its recorded targets'
/// host certificates certify (made at start, never written anywhere).
pub struct Cas {
    host_ca: PrivateKey,
    target_ca: PrivateKey,
    inner_host_key: PrivateKey,
}

/// What a user certificate for a target allows beyond a shell.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserCertRights {
    pub port_forwarding: bool,
    pub agent_forwarding: bool,
}

impl Cas {
    /// Load (or make) both CA keys. The target CA may not be one of the
    /// CAs users log in to portvakt with.
    pub fn load_or_create(cfg: &RecordingConfig, auth: &AuthConfig) -> Result<Cas, CaError> {
        let (host_ca, _) = keyfile::load_or_create(
            &cfg.host_ca_key,
            "recording host CA key",
            "portvakt recording host CA",
        )?;
        let (target_ca, _) = keyfile::load_or_create(
            &cfg.target_ca_key,
            "recording target CA key",
            "portvakt recording target CA",
        )?;
        let fp = target_ca.public_key().fingerprint(HashAlg::Sha256);
        if auth.trusted_cas.contains(&fp) {
            return Err(CaError::TargetCaTrusted(fp.to_string()));
        }
        let inner_host_key =
            keyfile::generate("portvakt recorded target").map_err(CaError::Sign)?;
        Ok(Cas {
            host_ca,
            target_ca,
            inner_host_key,
        })
    }

    pub fn host_ca(&self) -> &PublicKey {
        self.host_ca.public_key()
    }

    pub fn target_ca(&self) -> &PublicKey {
        self.target_ca.public_key()
    }

    /// The key behind [`Cas::host_certificate`]s.
    pub fn inner_host_key(&self) -> &PrivateKey {
        &self.inner_host_key
    }

    /// A host certificate for a recorded target, naming every name it is
    /// dialled by.
    pub fn host_certificate(
        &self,
        target: &str,
        principals: &[String],
        validity: Duration,
    ) -> Result<Certificate, CaError> {
        let mut b = builder(self.inner_host_key.public_key(), validity)?;
        b.cert_type(CertType::Host).map_err(sign_err)?;
        b.key_id(format!("portvakt:host:{target}"))
            .map_err(sign_err)?;
        for p in principals {
            b.valid_principal(p.as_str()).map_err(sign_err)?;
        }
        b.sign(&self.host_ca).map_err(sign_err)
    }

    /// A user certificate for `key`, to log in to a target as `login`;
    /// `key_id` names the person in the target's log.
    pub fn user_certificate(
        &self,
        key: &PublicKey,
        login: &str,
        key_id: &str,
        validity: Duration,
        rights: UserCertRights,
    ) -> Result<Certificate, CaError> {
        let mut b = builder(key, validity)?;
        b.cert_type(CertType::User).map_err(sign_err)?;
        b.key_id(key_id).map_err(sign_err)?;
        b.valid_principal(login).map_err(sign_err)?;
        b.extension("permit-pty", "").map_err(sign_err)?;
        if rights.port_forwarding {
            b.extension("permit-port-forwarding", "")
                .map_err(sign_err)?;
        }
        if rights.agent_forwarding {
            b.extension("permit-agent-forwarding", "")
                .map_err(sign_err)?;
        }
        b.sign(&self.target_ca).map_err(sign_err)
    }
}

fn builder(key: &PublicKey, validity: Duration) -> Result<Builder, CaError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| CaError::Sign(e.to_string()))?;
    let mut b = Builder::new(
        nonce.to_vec(),
        key.key_data().clone(),
        now.saturating_sub(BACKDATE).as_secs(),
        (now + validity).as_secs(),
    )
    .map_err(sign_err)?;
    let mut serial = [0u8; 8];
    getrandom::fill(&mut serial).map_err(|e| CaError::Sign(e.to_string()))?;
    b.serial(u64::from_le_bytes(serial)).map_err(sign_err)?;
    Ok(b)
}

fn sign_err(e: russh::keys::ssh_key::Error) -> CaError {
    CaError::Sign(e.to_string())
}

/// The node's recording CAs, loaded when the first config with a recorded
/// target needs them (at start, or at the reload that adds one), and again
/// when a reload names other key files.
#[derive(Default)]
pub struct CaCache {
    loaded: std::sync::Mutex<Option<(RecordingConfig, std::sync::Arc<Cas>)>>,
}

impl std::fmt::Debug for CaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaCache").finish_non_exhaustive()
    }
}

impl CaCache {
    pub fn get(
        &self,
        cfg: &RecordingConfig,
        auth: &AuthConfig,
    ) -> Result<std::sync::Arc<Cas>, CaError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((c, cas)) = loaded.as_ref()
            && c.host_ca_key == cfg.host_ca_key
            && c.target_ca_key == cfg.target_ca_key
        {
            let fp = cas.target_ca().fingerprint(HashAlg::Sha256);
            if auth.trusted_cas.contains(&fp) {
                return Err(CaError::TargetCaTrusted(fp.to_string()));
            }
            return Ok(cas.clone());
        }
        let cas = std::sync::Arc::new(Cas::load_or_create(cfg, auth)?);
        *loaded = Some((cfg.clone(), cas.clone()));
        Ok(cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cas(dir: &std::path::Path) -> Cas {
        let text = "[server]\nhost_key_dir = \"keys\"\n";
        let cfg = Config::parse(&dir.join("portvakt.toml"), text).unwrap();
        Cas::load_or_create(&cfg.recording, &cfg.auth).unwrap()
    }

    #[test]
    fn host_certificates_name_every_principal_and_verify_under_the_host_ca() {
        let dir = tempfile::tempdir().unwrap();
        let cas = cas(dir.path());
        let names = vec!["db-1".to_string(), "10.0.1.5".to_string()];
        let cert = cas
            .host_certificate("db-1", &names, Duration::from_secs(300))
            .unwrap();
        assert_eq!(cert.cert_type(), CertType::Host);
        assert_eq!(cert.valid_principals(), &names[..]);
        let fp = cas.host_ca().fingerprint(HashAlg::Sha256);
        cert.validate(&[fp]).unwrap();
        let other = cas.target_ca().fingerprint(HashAlg::Sha256);
        assert!(cert.validate(&[other]).is_err());
        // Short-lived.
        assert!(cert.valid_before() - cert.valid_after() <= 360);
    }

    #[test]
    fn user_certificates_carry_the_login_the_key_id_and_only_the_rights_given() {
        let dir = tempfile::tempdir().unwrap();
        let cas = cas(dir.path());
        let key = keyfile::generate("k").unwrap();
        let cert = cas
            .user_certificate(
                key.public_key(),
                "admin",
                "portvakt:alice:c-1",
                Duration::from_secs(120),
                UserCertRights::default(),
            )
            .unwrap();
        assert_eq!(cert.cert_type(), CertType::User);
        assert_eq!(cert.key_id(), "portvakt:alice:c-1");
        assert_eq!(cert.valid_principals(), &["admin".to_string()][..]);
        let ext: Vec<&String> = cert.extensions().keys().collect();
        assert_eq!(ext, ["permit-pty"]);
        let fp = cas.target_ca().fingerprint(HashAlg::Sha256);
        cert.validate(&[fp]).unwrap();
    }

    #[test]
    fn the_target_ca_may_not_be_a_trusted_user_ca() {
        let dir = tempfile::tempdir().unwrap();
        let _ = cas(dir.path());
        let target_pub = dir.path().join("keys/recording_target_ca.pub");
        let text = format!(
            "[server]\nhost_key_dir = \"keys\"\n[auth]\ntrusted_user_ca_keys = [{:?}]\n",
            target_pub.display().to_string()
        );
        let cfg = Config::parse(&dir.path().join("portvakt.toml"), &text).unwrap();
        let e = Cas::load_or_create(&cfg.recording, &cfg.auth)
            .err()
            .unwrap();
        assert!(matches!(e, CaError::TargetCaTrusted(_)), "{e}");
    }
}
