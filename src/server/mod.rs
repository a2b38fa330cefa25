//! The SSH side, by lifecycle: [`runtime`] (the composition root: start,
//! serve until told to stop, drain), [`listener`] (accept and admit), `conn`
//! (one connection: driver, handler, forward task, session text), and what
//! the connections share: reload, live connections and forwards, grant
//! revocation, refusals before the handshake; [`shards`] (the threads the
//! connections run on). See docs/ARCHITECTURE.md.

mod conn;
mod forwards;
mod grant_watch;
pub mod hostkey;
mod limits;
mod listener;
mod live;
mod proxy;
mod refusals;
mod reload;
mod runtime;
mod shards;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::keys::ssh_key::{Algorithm, EcdsaCurve, HashAlg};
use russh::server::SkUserPresence;
use russh::{MethodKind, MethodSet, Preferred, SshId, cipher, compression, kex, mac};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use forwards::LiveForward;
pub use runtime::{Control, run};
pub use shards::spawn_work;

use crate::audit::Audit;
use crate::auth::Services;
use crate::config::{Config, SharedConfig, UserMfa};

/// What every connection of this server shares.
#[derive(Debug)]
pub struct ServerState {
    /// The config in force; swapped whole on reload. Every decision loads
    /// it when it is made.
    pub config: SharedConfig,
    pub audit: Audit,
    /// russh settings (host key, algorithms, windows); fixed for the process.
    pub ssh: Arc<russh::server::Config>,
    /// Fires when the server stops accepting and drains.
    pub shutdown: CancellationToken,
    /// `max_connections`: a permit per open connection.
    pub connections: Arc<Semaphore>,
    /// The number of permits `connections` was made with (a reload does
    /// not resize it; the drain waits for all of them).
    pub max_connections: u32,
    /// `max_unauthenticated`: a permit per connection still logging in.
    pub unauthenticated: Arc<Semaphore>,
    /// `max_unauthenticated_per_source`.
    pub unauthenticated_per_source: Arc<limits::PerSource>,
    /// Database, TOTP and IdP for logins.
    pub services: Arc<Services>,
    /// Connections by login grant, to end them when it is revoked.
    pub grant_watch: Arc<grant_watch::GrantWatch>,
    /// Live forwards (and those being decided or dialled), re-checked on
    /// reload.
    pub forwards: Arc<forwards::Forwards>,
    /// `[requests] webhook_url` (read at start).
    pub webhook: crate::requests::webhook::Webhook,
    /// Open connections: a reload asks their logins again, a ban ends
    /// those of its source still logging in.
    pub live: live::LiveConnections,
    /// Reloads applied so far (a login that spans one is checked again).
    pub reloads: std::sync::atomic::AtomicU64,
    /// Connections refused before the handshake, audited in batches.
    pub refusals: Arc<refusals::Refusals>,
    /// The recording CAs (loaded once a config has a recorded target).
    pub recording: Arc<crate::recording::ca::CaCache>,
}

/// Key exchanges: post-quantum hybrids only (ML-KEM for OpenSSH 9.9+,
/// Streamlined NTRU Prime for 8.5+); the two `*-s` names announce extension
/// negotiation and strict KEX (Terrapin).
const KEX: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::SNTRUP761X25519_SHA512,
    kex::SNTRUP761X25519_SHA512_OPENSSH,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];
/// [`KEX`] plus curve25519 for older clients (`[server] classic_kex`).
const KEX_CLASSIC: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::SNTRUP761X25519_SHA512,
    kex::SNTRUP761X25519_SHA512_OPENSSH,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];
/// AEAD ciphers first; CTR only with the encrypt-then-MAC MACs below. No CBC.
const CIPHERS: &[cipher::Name] = &[
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_GCM,
    cipher::AES_128_GCM,
    cipher::AES_256_CTR,
    cipher::AES_128_CTR,
];
/// portvakt's own connections to recorded targets pick the cipher (the
/// client's first choice wins): AES-GCM first where the CPU has AES and
/// carry-less multiply instructions (several times faster there than
/// ChaCha20-Poly1305, and as safe), else ChaCha20-Poly1305. Same set as
/// the server's.
pub fn upstream_ciphers() -> &'static [cipher::Name] {
    const AES_FIRST: &[cipher::Name] = &[
        cipher::AES_256_GCM,
        cipher::AES_128_GCM,
        cipher::CHACHA20_POLY1305,
        cipher::AES_256_CTR,
        cipher::AES_128_CTR,
    ];
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
        {
            return AES_FIRST;
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
        {
            return AES_FIRST;
        }
    }
    CIPHERS
}

/// Encrypt-then-MAC with SHA-2 only.
pub const MACS: &[mac::Name] = &[mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM];
/// No compression at all (none before authentication, as asked, and none
/// after: forwarded SSH is already encrypted and incompressible).
pub const COMPRESSION: &[compression::Name] = &[compression::NONE];
/// Host key and client key algorithms; `ssh-rsa` (SHA-1) is left out.
const KEYS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
];

/// The key exchanges of this config, also for portvakt's own logins to
/// recorded targets.
pub fn kex_list(cfg: &Config) -> &'static [kex::Name] {
    if cfg.server.classic_kex {
        KEX_CLASSIC
    } else {
        KEX
    }
}

/// The settings of the SSH server portvakt runs inside a recorded target's
/// channel: the outer server's algorithms, the node's recording host key
/// with its certificate for this target, and logins by `none` or the
/// outer login's key only.
pub fn recorded_ssh_config(
    cfg: &Config,
    key: PrivateKey,
    cert: russh::keys::Certificate,
) -> russh::server::Config {
    let mut c = ssh_config(cfg, key);
    c.methods = MethodSet::from(&[MethodKind::None, MethodKind::PublicKey][..]);
    c.certificates = vec![cert];
    c.auth_rejection_time_initial = Some(Duration::ZERO);
    c.max_auth_attempts = 6;
    c
}

/// russh's server settings for this config and host key.
pub fn ssh_config(cfg: &Config, host_key: PrivateKey) -> russh::server::Config {
    let mut methods = vec![MethodKind::PublicKey];
    if cfg.oidc.is_some()
        || cfg
            .users
            .values()
            .any(|u| u.mfa == UserMfa::Totp && !u.keys.is_empty())
    {
        methods.push(MethodKind::KeyboardInteractive);
    }
    russh::server::Config {
        server_id: SshId::Standard(Cow::Borrowed("SSH-2.0-portvakt")),
        methods: MethodSet::from(&methods[..]),
        // Every refusal takes the same short time, so its timing tells
        // nothing (sshd waits 5-9 ms); brute force is the lockout's job.
        // The "none" probe every client starts with costs nothing.
        auth_rejection_time: Duration::from_millis(10),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        preferred: Preferred {
            kex: Cow::Borrowed(kex_list(cfg)),
            key: Cow::Borrowed(KEYS),
            host_key_certificates: Cow::Borrowed(&[]),
            cipher: Cow::Borrowed(CIPHERS),
            mac: Cow::Borrowed(MACS),
            compression: Cow::Borrowed(COMPRESSION),
        },
        // portvakt counts attempts itself (auth::AuthFailure::TooManyAttempts,
        // audited); this is only a backstop.
        max_auth_attempts: cfg.auth.max_auth_tries * 4 + 10,
        // portvakt's own idle timeout ends idle connections (russh's timer is
        // reset by keepalive replies) and keepalives find dead peers; this is
        // a backstop, also for a peer that never closes after a disconnect.
        inactivity_timeout: Some(cfg.sessions.idle_timeout + Duration::from_secs(60)),
        keepalive_interval: Some(cfg.server.keepalive_interval),
        keepalive_max: 3,
        nodelay: true,
        // Messages a channel may queue for its reader. The receive window
        // (paced by what the reader takes, and enforced: data past it ends
        // the connection, see vendor/russh/PATCHES.md patches 3 and 6) is
        // what bounds a channel's queued bytes, to window_size (2 MiB). This
        // exceeds window_size / packet size (64), so full-size packets never
        // make the session loop wait on it; a client sending tiny packets
        // to a target that stopped reading can fill it, and then the loop
        // waits until the forward's write timeout (forward::WRITE_TIMEOUT).
        channel_buffer_size: 1024,
        // A FIDO key must be touched for each login (russh patch 7); only a
        // certificate may waive that, and only when the config allows it.
        sk_user_presence: if cfg.auth.allow_no_touch_required {
            SkUserPresence::RequiredUnlessCertificateWaives
        } else {
            SkUserPresence::Required
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fido_user_presence_follows_allow_no_touch_required() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
            &[7; 32],
        ));
        for (allow, expected) in [
            (false, SkUserPresence::Required),
            (true, SkUserPresence::RequiredUnlessCertificateWaives),
        ] {
            let text = format!("[auth]\nallow_no_touch_required = {allow}\n");
            let cfg = Config::parse(&dir.path().join("portvakt.toml"), &text).unwrap();
            assert_eq!(ssh_config(&cfg, key.clone()).sk_user_presence, expected);
        }
    }
}
