//! The bastion's ed25519 host key: created on first start (mode 0600), then
//! kept, so clients' known_hosts stay valid. Nodes behind one load balancer
//! share it by sharing the file.

use std::path::Path;

use russh::keys::PrivateKey;
use russh::keys::ssh_key::HashAlg;

use crate::keyfile::{self, KeyFileError};

pub const FILE_NAME: &str = "ssh_host_ed25519_key";

/// Load `dir/ssh_host_ed25519_key`, creating it (and `dir`, mode 0700) if
/// missing. Returns the key and whether it was created.
pub fn load_or_create(dir: &Path) -> Result<(PrivateKey, bool), KeyFileError> {
    keyfile::load_or_create(&dir.join(FILE_NAME), "host key", "portvakt host key")
}

/// `SHA256:...` of the host key, for the log.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}
