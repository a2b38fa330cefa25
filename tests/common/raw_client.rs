//! The russh client library, for the one case the OpenSSH client cannot
//! produce: an `ssh-rsa` (SHA-1) public-key attempt against a server that
//! does not list `ssh-rsa` in `server-sig-algs`. It is the same patched
//! vendor/russh the server is built on, so it proves nothing about
//! interoperability; the hand-written client of this harness is
//! `attack::RawSsh`.
//! OpenSSH 9.2 then gives up on the client side ("no mutual signature
//! algorithm") and never sends the attempt; a bastion must still refuse a
//! client that ignores the hint, and audit why.

use std::sync::Arc;

use russh::client;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate, load_secret_key};

use super::keys::UserKey;
use super::proc::local;

/// Accepts exactly the bastion's host key (as known_hosts would).
struct KnownHost {
    host_key: PublicKey,
}

impl client::Handler for KnownHost {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(matches!(
            server_key,
            PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.host_key.key_data()
        ))
    }
}

/// Connects to 127.0.0.1:`port` (whose host key line is `host_key`) and
/// tries to log in as `user` with the RSA `key` signing with `ssh-rsa`
/// (SHA-1). Returns whether the server accepted the login.
pub fn ssh_rsa_sha1_login(port: u16, host_key: &str, user: &str, key: &UserKey) -> bool {
    let host_key = PublicKey::from_openssh(host_key).expect("parse the bastion host key");
    let private = load_secret_key(&key.path, None).expect("load the RSA key");
    assert!(
        private.algorithm().is_rsa(),
        "{} is not an RSA key",
        key.path.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let attempt = async {
            let config = Arc::new(client::Config::default());
            let mut session = client::connect(config, local(port), KnownHost { host_key })
                .await
                .expect("SSH handshake with the bastion");
            // `None` as the hash means the legacy `ssh-rsa` signature (SHA-1).
            let key = PrivateKeyWithHashAlg::new(Arc::new(private), None);
            let result = session
                .authenticate_publickey(user, key)
                .await
                .map(|r| r.success())
                // The server may end the connection instead of answering.
                .unwrap_or(false);
            let _ = session
                .disconnect(russh::Disconnect::ByApplication, "", "en")
                .await;
            result
        };
        tokio::time::timeout(super::proc::RUN_TIMEOUT, attempt)
            .await
            .expect("the ssh-rsa login attempt did not finish in time")
    })
}
