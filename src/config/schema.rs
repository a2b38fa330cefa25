//! The config file as written: serde types that keep source spans so that
//! validation can point at `file:line`. Nothing here is trusted; `validate`
//! turns it into [`super::Config`].

use serde::Deserialize;
use toml::Spanned;

/// Top level of the TOML file. Unknown keys are errors everywhere.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub database: RawDatabase,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub requests: RawRequests,
    #[serde(default)]
    pub recording: RawRecording,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub auth: RawAuth,
    pub oidc: Option<Spanned<RawOidc>>,
    #[serde(default)]
    pub mfa: RawMfa,
    #[serde(default)]
    pub sessions: RawSessions,
    #[serde(default)]
    pub lockout: RawLockout,
    pub metrics: Option<RawMetrics>,
    pub console: Option<Spanned<RawConsole>>,
    #[serde(default)]
    pub users: Vec<Spanned<RawUser>>,
    #[serde(default)]
    pub targets: Vec<Spanned<RawTarget>>,
}

pub type SString = Spanned<String>;
pub type SInt = Spanned<i64>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<Vec<SString>>>,
    pub host_key_dir: Option<SString>,
    pub banner: Option<SString>,
    pub max_connections: Option<SInt>,
    pub max_unauthenticated: Option<SInt>,
    pub max_unauthenticated_per_source: Option<SInt>,
    pub max_channels_per_connection: Option<SInt>,
    pub login_grace_time: Option<SString>,
    pub keepalive_interval: Option<SString>,
    pub node_name: Option<SString>,
    pub public_name: Option<SString>,
    pub classic_kex: Option<bool>,
    pub proxy_protocol_from: Option<Vec<SString>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub url: Option<SString>,
    pub retention: Option<SString>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub signing_key: Option<SString>,
    pub checkpoint_every: Option<SInt>,
    pub checkpoint_interval: Option<SString>,
    pub checkpoint_file: Option<SString>,
    pub checkpoint_url: Option<SString>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<SString>,
    pub level: Option<SString>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub trusted_user_ca_keys: Option<Vec<SString>>,
    pub revoked_keys: Option<SString>,
    pub deny_users: Option<Vec<SString>>,
    pub max_auth_tries: Option<SInt>,
    pub allow_no_touch_required: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    pub issuer: SString,
    pub client_id: SString,
    pub client_secret_file: Option<SString>,
    pub scopes: Option<Vec<SString>>,
    pub username_claim: Option<SString>,
    pub groups_claim: Option<SString>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMfa {
    pub totp: Option<SString>,
    pub trust_idp_amr: Option<bool>,
    pub self_enroll: Option<bool>,
    pub secret_key_file: Option<SString>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSessions {
    pub grant_ttl: Option<SString>,
    pub max_duration: Option<SString>,
    pub idle_timeout: Option<SString>,
    pub connect_timeout: Option<SString>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLockout {
    pub max_failures: Option<SInt>,
    pub window: Option<SString>,
    pub ban: Option<SString>,
    pub ipv6_prefix: Option<SInt>,
    pub totp_max_failures: Option<SInt>,
    pub totp_window: Option<SString>,
    pub totp_lock: Option<SString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: SString,
}

/// `[console]`: the review console (DESIGN.md §12).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsole {
    pub listen: SString,
    pub tls_cert: Option<SString>,
    pub tls_key: Option<SString>,
    pub public_url: SString,
    #[serde(default)]
    pub reviewer_groups: Vec<SString>,
    #[serde(default)]
    pub admin_groups: Vec<SString>,
    pub session_idle: Option<SString>,
    pub session_max: Option<SString>,
    /// Public key files the chain check on `/audit` pins (`--key`).
    #[serde(default)]
    pub audit_keys: Vec<SString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub name: SString,
    #[serde(default)]
    pub groups: Vec<SString>,
    #[serde(default)]
    pub keys: Vec<SString>,
    pub mfa: Option<SString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub name: SString,
    pub host: Option<SString>,
    pub port: Option<SInt>,
    pub cidr: Option<SString>,
    pub ports: Option<Spanned<Vec<SInt>>>,
    #[serde(default)]
    pub allow_users: Vec<SString>,
    #[serde(default)]
    pub allow_groups: Vec<SString>,
    /// "standing" (default) or "request".
    pub access: Option<SString>,
    pub approvers: Option<Vec<SString>>,
    pub max_request: Option<SString>,
    pub approvals: Option<SInt>,
    /// "forward" (default) or "record" (DESIGN.md §10).
    pub mode: Option<SString>,
    pub logins: Option<Vec<SString>>,
    pub host_key: Option<SString>,
    pub host_ca: Option<SString>,
    pub aliases: Option<Vec<SString>>,
    pub agent_forwarding: Option<Spanned<bool>>,
    pub permit_port_forwarding: Option<Spanned<bool>>,
}

/// `[recording]` (DESIGN.md §10).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecording {
    pub host_ca_key: Option<SString>,
    pub target_ca_key: Option<SString>,
    pub certificate_validity: Option<SString>,
    pub input: Option<bool>,
    pub max_bytes: Option<SString>,
    pub on_failure: Option<SString>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequests {
    pub pending_ttl: Option<SString>,
    pub webhook_url: Option<SString>,
    pub webhook_secret_file: Option<SString>,
}
