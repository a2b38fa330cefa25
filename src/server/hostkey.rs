//! The bastion's ed25519 host key: created on first start (mode 0600), then
//! kept, so clients' known_hosts stay valid. Nodes behind one load balancer
//! share it by sharing the file.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::{HashAlg, LineEnding};

pub const FILE_NAME: &str = "ssh_host_ed25519_key";

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("host key {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("host key {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Load `dir/ssh_host_ed25519_key`, creating it (and `dir`, mode 0700) if
/// missing. Returns the key and whether it was created.
pub fn load_or_create(dir: &Path) -> Result<(PrivateKey, bool), HostKeyError> {
    let path = dir.join(FILE_NAME);
    let io = |source| HostKeyError::Io {
        path: path.clone(),
        source,
    };
    if path.exists() {
        let mode = fs::metadata(&path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(HostKeyError::Invalid {
                path,
                message: format!("mode {:o} lets others read it; chmod 600 it", mode & 0o777),
            });
        }
        let key = PrivateKey::read_openssh_file(&path).map_err(|e| HostKeyError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        return Ok((key, false));
    }
    fs::create_dir_all(dir).map_err(io)?;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| HostKeyError::Invalid {
        path: path.clone(),
        message: format!("no randomness: {e}"),
    })?;
    let key = PrivateKey::new(
        KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed)),
        "portvakt host key",
    )
    .map_err(|e| HostKeyError::Invalid {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| HostKeyError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
    // Two nodes starting at once on a shared folder: the loser reads the
    // winner's key.
    if !crate::secret_file::create(&path, pem.as_bytes()).map_err(io)? {
        return load_or_create(dir);
    }
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| HostKeyError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
    fs::write(dir.join(format!("{FILE_NAME}.pub")), format!("{public}\n")).map_err(io)?;
    Ok((key, true))
}

/// `SHA256:...` of the host key, for the log.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let keydir = dir.path().join("keys");
        let (a, created) = load_or_create(&keydir).unwrap();
        assert!(created);
        let mode = fs::metadata(keydir.join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, created) = load_or_create(&keydir).unwrap();
        assert!(!created);
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let pubfile = fs::read_to_string(keydir.join(format!("{FILE_NAME}.pub"))).unwrap();
        assert!(pubfile.starts_with("ssh-ed25519 "));
    }

    #[test]
    fn refuses_a_readable_key() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        fs::set_permissions(
            dir.path().join(FILE_NAME),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(HostKeyError::Invalid { .. })
        ));
    }
}
