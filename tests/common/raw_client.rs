//! The russh client library, for what the OpenSSH client cannot produce:
//! an `ssh-rsa` (SHA-1) public-key attempt against a server that does not
//! list `ssh-rsa` in `server-sig-algs`, and a client that keeps sending
//! channel requests without waiting for their answers. It is the same
//! patched vendor/russh the server is built on, so it proves nothing about
//! interoperability; the hand-written client of this harness is
//! `attack::RawSsh`.
//! For the first: OpenSSH 9.2 gives up on the client side ("no mutual
//! signature algorithm") and never sends the attempt; a bastion must still
//! refuse a client that ignores the hint, and audit why.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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

/// Trusts whatever the server presents: for portvakt's inner server, whose
/// trust through the `@cert-authority` line other tests check.
struct AnyHost;

impl client::Handler for AnyHost {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// A recorded target reached the way `ssh -J` reaches it (the stock
/// OpenSSH client as the jump's `ssh -W`), with russh inside as a client
/// that does not wait for answers.
pub struct FloodRecorded<'a> {
    /// The `-F` file of an OpenSSH client that logs in to the bastion.
    pub ssh_config: &'a Path,
    /// The target as the client dials it, and the login on it.
    pub target: &'a str,
    pub target_port: u16,
    pub login: &'a str,
}

impl FloodRecorded<'_> {
    /// Runs `ssh -W target:port bastion`, logs in to portvakt's inner
    /// server over it with "none", opens a session, runs `stall` (which
    /// may stop the target), then asks for a pty and sends `env_requests`
    /// `LANG` requests, each wanting an answer, without waiting for any.
    /// Returns whether the inner connection was ended by the other side
    /// within 20 s.
    pub fn run(&self, env_requests: usize, stall: impl FnOnce()) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(async {
            let mut jump = tokio::process::Command::new("/usr/bin/ssh")
                .arg("-F")
                .arg(self.ssh_config)
                .arg("-W")
                .arg(format!("{}:{}", self.target, self.target_port))
                .arg(super::client::BASTION)
                .env_remove("SSH_AUTH_SOCK")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("start ssh -W");
            let tunnel = tokio::io::join(
                jump.stdout.take().expect("ssh stdout"),
                jump.stdin.take().expect("ssh stdin"),
            );
            let inner_config = Arc::new(client::Config {
                preferred: russh::Preferred {
                    host_key_certificates: std::borrow::Cow::Borrowed(&[
                        russh::keys::Algorithm::Ed25519,
                    ]),
                    ..russh::Preferred::default()
                },
                ..client::Config::default()
            });
            let mut inner = client::connect_stream(inner_config, tunnel, AnyHost)
                .await
                .expect("SSH handshake with the inner server");
            let auth = inner
                .authenticate_none(self.login)
                .await
                .expect("inner login");
            assert!(
                auth.success(),
                "the inner server refused login {}",
                self.login
            );
            let mut session = inner
                .channel_open_session()
                .await
                .expect("a session on the target");
            stall();
            // Sends fail once the connection is gone; that is the point.
            let _ = session.request_pty(true, "xterm", 80, 24, 0, 0, &[]).await;
            for _ in 0..env_requests {
                if session.set_env(true, "LANG", "C.UTF-8").await.is_err() {
                    break;
                }
            }
            let ended = async {
                while session.wait().await.is_some() {}
                while !inner.is_closed() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(20), ended)
                .await
                .is_ok()
        })
    }
}
