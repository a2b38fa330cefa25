//! Ed25519 key files that portvakt creates on first start (mode 0600, in
//! OpenSSH format, with a `.pub` beside them) and then keeps: the host key
//! and the audit signing key. Nodes that should share one share the file.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use russh::keys::PrivateKey;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: {message}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
}

/// Load the key at `path`, creating it (and its folder, mode 0700) if
/// missing. `what` names it in errors ("host key"), `comment` goes into
/// the new file. Returns the key and whether it was created. A key that
/// others may read is refused.
pub fn load_or_create(
    path: &Path,
    what: &'static str,
    comment: &str,
) -> Result<(PrivateKey, bool), KeyFileError> {
    let io = |source| KeyFileError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let invalid = |message: String| KeyFileError::Invalid {
        what,
        path: path.to_path_buf(),
        message,
    };
    if path.exists() {
        let mode = fs::metadata(path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(invalid(format!(
                "mode {:o} lets others read it; chmod 600 it",
                mode & 0o777
            )));
        }
        let key = PrivateKey::read_openssh_file(path).map_err(|e| invalid(e.to_string()))?;
        if key.key_data().ed25519().is_none() {
            return Err(invalid(format!(
                "is a {} key; portvakt makes and uses ed25519 keys",
                key.algorithm()
            )));
        }
        return Ok((key, false));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io)?;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    let key = generate(comment).map_err(invalid)?;
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| invalid(e.to_string()))?;
    // Two nodes starting at once on a shared folder: the loser reads the
    // winner's key.
    if !crate::secret_file::create(path, pem.as_bytes()).map_err(io)? {
        return load_or_create(path, what, comment);
    }
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| invalid(e.to_string()))?;
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    fs::write(PathBuf::from(pub_path), format!("{public}\n")).map_err(io)?;
    Ok((key, true))
}

/// A new ed25519 key, kept in memory only.
pub fn generate(comment: &str) -> Result<PrivateKey, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness: {e}"))?;
    PrivateKey::new(
        KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed)),
        comment,
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("k");
        let (a, created) = load_or_create(&path, "test key", "c").unwrap();
        assert!(created);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, created) = load_or_create(&path, "test key", "c").unwrap();
        assert!(!created);
        assert_eq!(a.public_key(), b.public_key());
        let pubfile = fs::read_to_string(dir.path().join("keys").join("k.pub")).unwrap();
        assert!(pubfile.starts_with("ssh-ed25519 "));
    }

    #[test]
    fn refuses_a_readable_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        load_or_create(&path, "test key", "c").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&path, "test key", "c").unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
}
