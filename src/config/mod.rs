//! The config file: loaded once into immutable values, validated with
//! `file:line: message` errors, swapped whole on reload.

mod schema;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use russh::keys::ssh_key::{Fingerprint, public::KeyData};

use crate::policy::Policy;
use crate::revocation::RevocationList;

/// Where `portvakt` looks when `--config` and `$PORTVAKT_CONFIG` are absent.
pub const DEFAULT_PATH: &str = "/etc/portvakt/portvakt.toml";

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no place in the file (unreadable file).
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The config in force, swapped whole on reload. Decisions load it at the
/// moment they are made; nothing keeps a copy across them.
pub type SharedConfig = Arc<ArcSwap<Config>>;

/// A validated config. Immutable: a reload builds a new one.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub audit: AuditConfig,
    pub requests: RequestsConfig,
    pub recording: RecordingConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub oidc: Option<OidcConfig>,
    pub mfa: MfaConfig,
    pub sessions: SessionsConfig,
    pub lockout: LockoutConfig,
    pub metrics: Option<MetricsConfig>,
    /// `[console]`; `None`: the review console is off.
    pub console: Option<ConsoleConfig>,
    pub users: HashMap<String, UserEntry>,
    pub policy: Policy,
    /// Things that work but deserve a second look (`check-config` prints them).
    pub warnings: Vec<ConfigError>,
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                message: format!("cannot read config file: {e}"),
            }])
        })?;
        Self::parse(path, &text)
    }

    /// Validate config text as if read from `path` (relative paths in it are
    /// relative to `path`'s folder).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        validate::validate(path, text)
    }

    /// The `[[users]]` entry of this name.
    pub fn user(&self, name: &str) -> Option<&UserEntry> {
        self.users.get(name)
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub host_key_dir: PathBuf,
    pub banner: Option<String>,
    pub max_connections: usize,
    pub max_unauthenticated: usize,
    /// Concurrent unauthenticated connections from one source address.
    pub max_unauthenticated_per_source: usize,
    pub max_channels_per_connection: usize,
    pub login_grace_time: Duration,
    /// SSH keepalive probes so that dead clients are noticed.
    pub keepalive_interval: Duration,
    /// This node's name in the audit trail (defaults to the host name).
    pub node_name: String,
    /// How users reach the bastion (`bastion.example.com:2222`), for the
    /// `ssh -J` hint; defaults to the address the client connected to.
    pub public_name: Option<String>,
    /// Load balancers whose connections start with a PROXY protocol header
    /// naming the real client. Nobody else may send one.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// Also offer curve25519 key exchange (no post-quantum protection) for
    /// clients older than OpenSSH 8.5.
    pub classic_kex: bool,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub retention: Option<Duration>,
}

/// `[requests]`: access requests (DESIGN.md §13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestsConfig {
    /// A request nobody decided expires after this.
    pub pending_ttl: Duration,
    /// JSON POSTs on create, approve, deny, expire, revoke.
    pub webhook: Option<WebhookConfig>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: String,
    /// The HMAC-SHA256 key (`webhook_secret_file`).
    pub secret: Vec<u8>,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// `[recording]`: targets with `mode = "record"` (DESIGN.md §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingConfig {
    /// Signs the short-lived host certificates clients see for recorded
    /// targets (created on first start, mode 0600).
    pub host_ca_key: PathBuf,
    /// Signs the short-lived user certificates portvakt logs in to targets
    /// with; never one of `trusted_user_ca_keys`.
    pub target_ca_key: PathBuf,
    pub certificate_validity: Duration,
    /// Also record keystrokes (asciicast "i"); they contain passwords.
    pub input: bool,
    /// Per recording; past it the recording is cut (audited), the session goes on.
    pub max_bytes: u64,
    /// End the session when its recording cannot be stored (else go on and
    /// note the gap).
    pub close_on_failure: bool,
}

/// `[audit]`: the signed checkpoints of the hash chain (DESIGN.md §11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// The node's Ed25519 checkpoint signing key (OpenSSH format), created
    /// on first start like the host key.
    pub signing_key: PathBuf,
    /// Sign a checkpoint after this many events...
    pub checkpoint_every: u64,
    /// ...or this long after the last one, whichever comes first.
    pub checkpoint_interval: Duration,
    /// Also append each checkpoint here (JSON Lines), e.g. on another mount.
    pub checkpoint_file: Option<PathBuf>,
    /// Also POST each checkpoint here (JSON).
    pub checkpoint_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `None`: pretty on a terminal, else JSON.
    pub format: Option<LogFormat>,
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// SHA256 fingerprints of the trusted user CA keys.
    pub trusted_cas: Vec<Fingerprint>,
    pub revoked: RevocationList,
    pub deny_users: Vec<String>,
    pub max_auth_tries: usize,
    /// A FIDO (`sk-*`) signature without user presence (nobody touched the
    /// key) is refused; with this set, a certificate carrying the
    /// `no-touch-required` extension is exempt, as in sshd.
    pub allow_no_touch_required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub scopes: Vec<String>,
    pub username_claim: String,
    pub groups_claim: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpMode {
    Required,
    Off,
}

#[derive(Debug, Clone)]
pub struct MfaConfig {
    pub totp: TotpMode,
    pub trust_idp_amr: bool,
    pub self_enroll: bool,
    pub secret_key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SessionsConfig {
    pub grant_ttl: Duration,
    pub max_duration: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct LockoutConfig {
    pub max_failures: u32,
    pub window: Duration,
    pub ban: Duration,
    /// IPv6 sources are counted and banned by this prefix (one host or one
    /// customer usually holds a whole /64).
    pub ipv6_prefix: u8,
    /// Wrong TOTP codes for one user, from any source and node, within
    /// `totp_window` lock that user's TOTP step for `totp_lock`.
    pub totp_max_failures: u32,
    pub totp_window: Duration,
    pub totp_lock: Duration,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

/// `[console]`: the review console (DESIGN.md §12, docs/CONSOLE.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Its own port, never an SSH or metrics port.
    pub listen: SocketAddr,
    /// HTTPS with these; `None`: plain HTTP, which validation allows only on
    /// a loopback `listen` (behind a reverse proxy).
    pub tls: Option<ConsoleTls>,
    /// Where browsers reach it, without a trailing slash; the OIDC redirect
    /// URI is `<public_url>/auth/callback`.
    pub public_url: String,
    /// IdP groups that may read every page.
    pub reviewer_groups: Vec<String>,
    /// IdP groups that may also act (revoke grants, clear lockouts).
    pub admin_groups: Vec<String>,
    /// A console session unused this long ends.
    pub session_idle: Duration,
    /// A console session ends this long after its login, used or not.
    pub session_max: Duration,
    /// `audit_keys`: the chain check on `/audit` trusts only checkpoints
    /// signed by these (as `audit verify --key`); empty: the keys the
    /// database states.
    pub audit_keys: Vec<crate::audit::checkpoint::VerifyingKey>,
}

impl ConsoleConfig {
    /// Cookies carry `Secure` when the browser speaks HTTPS to us or to
    /// the proxy in front.
    pub fn secure_cookies(&self) -> bool {
        self.tls.is_some() || self.public_url.starts_with("https://")
    }
}

/// The console's certificate chain and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserMfa {
    Totp,
    /// Service accounts: the key alone logs in.
    None,
}

#[derive(Debug, Clone)]
pub struct UserEntry {
    pub name: String,
    pub groups: Vec<String>,
    pub keys: Vec<KeyData>,
    pub mfa: UserMfa,
}

/// Is `url` https, or plain http to this machine (a local test IdP)?
pub fn is_secure_url(url: &str) -> bool {
    let Ok(u) = openidconnect::url::Url::parse(url) else {
        return false;
    };
    match u.scheme() {
        "https" => u.host().is_some(),
        "http" => match u.host() {
            Some(openidconnect::url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(openidconnect::url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(openidconnect::url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        },
        _ => false,
    }
}
