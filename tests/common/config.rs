//! The config file a test's portvakt runs with: a builder for the parts
//! of DESIGN.md §4 the tests vary, rendered to TOML.

use std::path::{Path, PathBuf};

use super::keys::{UserCa, UserKey};

/// A TOML string literal (JSON string escapes are valid TOML basic strings).
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

fn toml_list<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<String> = items.iter().map(|s| toml_str(s.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

/// One `[[targets]]` entry.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub cidr: Option<String>,
    pub ports: Vec<u16>,
    pub allow_users: Vec<String>,
    pub allow_groups: Vec<String>,
    /// `access = "request"`: (approvers, max_request, approvals).
    pub on_request: Option<(Vec<String>, String, u32)>,
    /// More `key = value` lines, as written (recording keys, say).
    pub lines: Vec<String>,
}

impl Target {
    /// A named target: `name` dialled at `host:port`.
    pub fn host(name: &str, host: &str, port: u16) -> Target {
        Target {
            name: name.to_string(),
            host: Some(host.to_string()),
            port: Some(port),
            cidr: None,
            ports: Vec::new(),
            allow_users: Vec::new(),
            allow_groups: Vec::new(),
            on_request: None,
            lines: Vec::new(),
        }
    }

    /// A CIDR target: any IP literal in `cidr` on one of `ports`.
    pub fn cidr(name: &str, cidr: &str, ports: &[u16]) -> Target {
        Target {
            name: name.to_string(),
            host: None,
            port: None,
            cidr: Some(cidr.to_string()),
            ports: ports.to_vec(),
            allow_users: Vec::new(),
            allow_groups: Vec::new(),
            on_request: None,
            lines: Vec::new(),
        }
    }

    pub fn allow_users(mut self, users: &[&str]) -> Self {
        self.allow_users.extend(users.iter().map(|u| u.to_string()));
        self
    }

    pub fn allow_groups(mut self, groups: &[&str]) -> Self {
        self.allow_groups
            .extend(groups.iter().map(|g| g.to_string()));
        self
    }

    /// Used on request only: `approvers` decide, windows up to
    /// `max_request`, `approvals` distinct approvers needed.
    pub fn on_request(mut self, approvers: &[&str], max_request: &str, approvals: u32) -> Self {
        self.on_request = Some((
            approvers.iter().map(|a| a.to_string()).collect(),
            max_request.to_string(),
            approvals,
        ));
        self
    }

    /// A `key = value` line as written.
    pub fn line(mut self, line: &str) -> Self {
        self.lines.push(line.to_string());
        self
    }

    /// `mode = "record"` with these logins, checking the target's host key.
    pub fn recorded(self, logins: &[&str], host_key: &str) -> Self {
        self.line("mode = \"record\"")
            .line(&format!("logins = {}", toml_list(logins)))
            .line(&format!("host_key = {}", toml_str(host_key)))
    }

    fn render(&self) -> String {
        let mut s = format!("[[targets]]\nname = {}\n", toml_str(&self.name));
        for l in &self.lines {
            s += l;
            s += "\n";
        }
        if let Some((approvers, max, n)) = &self.on_request {
            s += &format!(
                "access = \"request\"\napprovers = {}\nmax_request = {}\napprovals = {n}\n",
                toml_list(approvers),
                toml_str(max)
            );
        }
        if let Some(host) = &self.host {
            s += &format!("host = {}\n", toml_str(host));
        }
        if let Some(port) = self.port {
            s += &format!("port = {port}\n");
        }
        if let Some(cidr) = &self.cidr {
            s += &format!("cidr = {}\n", toml_str(cidr));
        }
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
            s += &format!("ports = [{}]\n", ports.join(", "));
        }
        if !self.allow_users.is_empty() {
            s += &format!("allow_users = {}\n", toml_list(&self.allow_users));
        }
        if !self.allow_groups.is_empty() {
            s += &format!("allow_groups = {}\n", toml_list(&self.allow_groups));
        }
        s
    }
}

/// One `[[users]]` entry.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub keys: Vec<String>,
    pub mfa: Option<String>,
}

impl User {
    /// An entry that only adds groups to logins of `name`.
    pub fn groups(name: &str, groups: &[&str]) -> User {
        User {
            name: name.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            keys: Vec::new(),
            mfa: None,
        }
    }

    /// A service account: `key` alone logs in (`mfa = "none"`).
    pub fn service(name: &str, key: &UserKey) -> User {
        User {
            name: name.to_string(),
            groups: Vec::new(),
            keys: vec![key.public_line()],
            mfa: Some("none".to_string()),
        }
    }

    /// A key user who needs TOTP as a second factor (`mfa = "totp"`).
    pub fn totp(name: &str, key: &UserKey) -> User {
        User {
            name: name.to_string(),
            groups: Vec::new(),
            keys: vec![key.public_line()],
            mfa: Some("totp".to_string()),
        }
    }

    pub fn with_groups(mut self, groups: &[&str]) -> Self {
        self.groups.extend(groups.iter().map(|g| g.to_string()));
        self
    }

    fn render(&self) -> String {
        let mut s = format!("[[users]]\nname = {}\n", toml_str(&self.name));
        if !self.groups.is_empty() {
            s += &format!("groups = {}\n", toml_list(&self.groups));
        }
        if !self.keys.is_empty() {
            s += &format!("keys = {}\n", toml_list(&self.keys));
        }
        if let Some(mfa) = &self.mfa {
            s += &format!("mfa = {}\n", toml_str(mfa));
        }
        s
    }
}

/// What goes into a test's portvakt config file (DESIGN.md §4). The
/// listen address, host key folder and database are filled in by
/// [`Portvakt::start`].
#[derive(Clone, Debug)]
pub struct Config {
    pub trusted_user_ca_keys: Vec<PathBuf>,
    pub revoked_keys: Option<PathBuf>,
    pub deny_users: Option<Vec<String>>,
    pub max_auth_tries: Option<u32>,
    pub login_grace_time: String,
    pub idle_timeout: String,
    pub connect_timeout: String,
    pub max_duration: Option<String>,
    /// Lockout is its own feature with its own tests; elsewhere a test's
    /// deliberate failures must not ban 127.0.0.1, so the default is high.
    pub lockout_max_failures: Option<u32>,
    pub users: Vec<User>,
    pub targets: Vec<Target>,
    /// Raw TOML appended at the end (for keys this builder does not know).
    pub extra: String,
    /// `[oidc]`: the IdP login (issue 3).
    pub oidc: Option<Oidc>,
    /// `[mfa]`: TOTP settings (issue 3).
    pub mfa: Option<Mfa>,
    /// `sessions.grant_ttl` (issue 3).
    pub grant_ttl: Option<String>,
    /// Limits, lockout, metrics and a database URL override (issue 4).
    pub hardening: Hardening,
    /// `[server] node_name`: this node's name in the audit trail (issue 6).
    pub node_name: Option<String>,
    /// `[console]`: the review console (issue 14).
    pub console: Option<Console>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            trusted_user_ca_keys: Vec::new(),
            revoked_keys: None,
            deny_users: None,
            max_auth_tries: None,
            login_grace_time: "30s".to_string(),
            idle_timeout: "30m".to_string(),
            connect_timeout: "10s".to_string(),
            max_duration: None,
            lockout_max_failures: Some(1000),
            users: Vec::new(),
            targets: Vec::new(),
            extra: String::new(),
            oidc: None,
            mfa: None,
            grant_ttl: None,
            hardening: Hardening::default(),
            node_name: None,
            console: None,
        }
    }
}

impl Config {
    pub fn new() -> Config {
        Config::default()
    }

    pub fn trust(mut self, ca: &UserCa) -> Self {
        self.trusted_user_ca_keys.push(ca.public_path());
        self
    }

    pub fn revoked_keys(mut self, path: &Path) -> Self {
        self.revoked_keys = Some(path.to_path_buf());
        self
    }

    pub fn deny_users(mut self, users: &[&str]) -> Self {
        self.deny_users = Some(users.iter().map(|u| u.to_string()).collect());
        self
    }

    pub fn max_auth_tries(mut self, tries: u32) -> Self {
        self.max_auth_tries = Some(tries);
        self
    }

    pub fn login_grace_time(mut self, duration: &str) -> Self {
        self.login_grace_time = duration.to_string();
        self
    }

    pub fn idle_timeout(mut self, duration: &str) -> Self {
        self.idle_timeout = duration.to_string();
        self
    }

    pub fn connect_timeout(mut self, duration: &str) -> Self {
        self.connect_timeout = duration.to_string();
        self
    }

    pub fn max_duration(mut self, duration: &str) -> Self {
        self.max_duration = Some(duration.to_string());
        self
    }

    pub fn user(mut self, user: User) -> Self {
        self.users.push(user);
        self
    }

    pub fn oidc(mut self, oidc: Oidc) -> Self {
        self.oidc = Some(oidc);
        self
    }

    pub fn mfa(mut self, mfa: Mfa) -> Self {
        self.mfa = Some(mfa);
        self
    }

    /// `[server] node_name`.
    pub fn node_name(mut self, name: &str) -> Self {
        self.node_name = Some(name.to_string());
        self
    }

    pub fn grant_ttl(mut self, duration: &str) -> Self {
        self.grant_ttl = Some(duration.to_string());
        self
    }

    pub fn target(mut self, target: Target) -> Self {
        self.targets.push(target);
        self
    }

    /// `[console]` (the review console).
    pub fn console(mut self, console: Console) -> Self {
        self.console = Some(console);
        self
    }

    /// The config file text for a server on `listen_port`.
    pub fn render(&self, listen_port: u16, host_key_dir: &Path, database_url: &str) -> String {
        let mut s = String::new();
        s += "[server]\n";
        s += &format!(
            "listen = [{}]\n",
            toml_str(&format!("127.0.0.1:{listen_port}"))
        );
        s += &format!(
            "host_key_dir = {}\n",
            toml_str(&host_key_dir.display().to_string())
        );
        s += &format!("login_grace_time = {}\n", toml_str(&self.login_grace_time));
        s += &self.hardening.server_lines();
        if let Some(node) = &self.node_name {
            s += &format!("node_name = {}\n", toml_str(node));
        }
        s += "\n[database]\n";
        let database_url = self
            .hardening
            .database_url
            .as_deref()
            .unwrap_or(database_url);
        s += &format!("url = {}\n", toml_str(database_url));
        s += "\n[log]\nformat = \"json\"\nlevel = \"info\"\n";
        s += "\n[auth]\n";
        let cas: Vec<String> = self
            .trusted_user_ca_keys
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        s += &format!("trusted_user_ca_keys = {}\n", toml_list(&cas));
        if let Some(revoked) = &self.revoked_keys {
            s += &format!(
                "revoked_keys = {}\n",
                toml_str(&revoked.display().to_string())
            );
        }
        if let Some(deny) = &self.deny_users {
            s += &format!("deny_users = {}\n", toml_list(deny));
        }
        if let Some(tries) = self.max_auth_tries {
            s += &format!("max_auth_tries = {tries}\n");
        }
        s += "\n[sessions]\n";
        s += &format!("idle_timeout = {}\n", toml_str(&self.idle_timeout));
        s += &format!("connect_timeout = {}\n", toml_str(&self.connect_timeout));
        if let Some(max) = &self.max_duration {
            s += &format!("max_duration = {}\n", toml_str(max));
        }
        if let Some(ttl) = &self.grant_ttl {
            s += &format!("grant_ttl = {}\n", toml_str(ttl));
        }
        if let Some(oidc) = &self.oidc {
            s += &oidc.render();
        }
        // portvakt's default is no self-enrolment; the IdP tests enrol
        // through the login unless they say otherwise.
        let mut mfa = self.mfa.clone();
        if self.oidc.is_some() {
            let m = mfa.get_or_insert_with(Mfa::new);
            m.self_enroll = m.self_enroll.or(Some(true));
        }
        if let Some(mfa) = &mfa {
            s += &mfa.render();
        }
        if let Some(max) = self.lockout_max_failures {
            s += &format!("\n[lockout]\nmax_failures = {max}\n");
            s += &self.hardening.lockout_lines();
        }
        s += &self.hardening.metrics_section();
        if let Some(console) = &self.console {
            s += &console.render();
        }
        for user in &self.users {
            s += "\n";
            s += &user.render();
        }
        for target in &self.targets {
            s += "\n";
            s += &target.render();
        }
        if !self.extra.is_empty() {
            s += "\n";
            s += &self.extra;
            s += "\n";
        }
        s
    }
}

/// The `[oidc]` section (DESIGN.md §4).
#[derive(Clone, Debug)]
pub struct Oidc {
    pub issuer: String,
    pub client_id: String,
    pub client_secret_file: Option<PathBuf>,
    pub scopes: Option<Vec<String>>,
    pub username_claim: Option<String>,
    pub groups_claim: Option<String>,
}

impl Oidc {
    /// `issuer` with client `client_id`; a public client until
    /// [`Oidc::client_secret_file`] is set.
    pub fn new(issuer: &str, client_id: &str) -> Oidc {
        Oidc {
            issuer: issuer.to_string(),
            client_id: client_id.to_string(),
            client_secret_file: None,
            scopes: None,
            username_claim: None,
            groups_claim: None,
        }
    }

    pub fn client_secret_file(mut self, path: &Path) -> Self {
        self.client_secret_file = Some(path.to_path_buf());
        self
    }

    fn render(&self) -> String {
        let mut s = format!(
            "\n[oidc]\nissuer = {}\nclient_id = {}\n",
            toml_str(&self.issuer),
            toml_str(&self.client_id)
        );
        if let Some(file) = &self.client_secret_file {
            s += &format!(
                "client_secret_file = {}\n",
                toml_str(&file.display().to_string())
            );
        }
        if let Some(scopes) = &self.scopes {
            s += &format!("scopes = {}\n", toml_list(scopes));
        }
        if let Some(claim) = &self.username_claim {
            s += &format!("username_claim = {}\n", toml_str(claim));
        }
        if let Some(claim) = &self.groups_claim {
            s += &format!("groups_claim = {}\n", toml_str(claim));
        }
        s
    }
}

/// The `[mfa]` section (DESIGN.md §4); `None` fields keep portvakt's defaults.
#[derive(Clone, Debug, Default)]
pub struct Mfa {
    /// `required` | `off`
    pub totp: Option<String>,
    pub trust_idp_amr: Option<bool>,
    pub self_enroll: Option<bool>,
    pub secret_key_file: Option<PathBuf>,
}

impl Mfa {
    pub fn new() -> Mfa {
        Mfa::default()
    }

    pub fn totp(mut self, mode: &str) -> Self {
        self.totp = Some(mode.to_string());
        self
    }

    pub fn trust_idp_amr(mut self, trust: bool) -> Self {
        self.trust_idp_amr = Some(trust);
        self
    }

    /// `secret_key_file`: the key that encrypts TOTP secrets (shared by nodes).
    pub fn secret_key_file(mut self, path: &Path) -> Self {
        self.secret_key_file = Some(path.to_path_buf());
        self
    }

    pub fn self_enroll(mut self, on: bool) -> Self {
        self.self_enroll = Some(on);
        self
    }

    fn render(&self) -> String {
        let mut s = "\n[mfa]\n".to_string();
        if let Some(totp) = &self.totp {
            s += &format!("totp = {}\n", toml_str(totp));
        }
        if let Some(trust) = self.trust_idp_amr {
            s += &format!("trust_idp_amr = {trust}\n");
        }
        if let Some(on) = self.self_enroll {
            s += &format!("self_enroll = {on}\n");
        }
        if let Some(file) = &self.secret_key_file {
            s += &format!(
                "secret_key_file = {}\n",
                toml_str(&file.display().to_string())
            );
        }
        s
    }
}

/// Issue 4 settings: `[server]` limits and keepalives, the rest of
/// `[lockout]`, `[metrics]`, and a database URL that replaces the test's
/// own (a TCP proxy in front of PostgreSQL). `None` keeps portvakt's default.
#[derive(Clone, Debug, Default)]
pub struct Hardening {
    pub max_connections: Option<u32>,
    pub max_unauthenticated: Option<u32>,
    pub max_unauthenticated_per_source: Option<u32>,
    pub max_channels_per_connection: Option<u32>,
    pub keepalive_interval: Option<String>,
    pub lockout_window: Option<String>,
    pub lockout_ban: Option<String>,
    /// `[metrics] listen` on 127.0.0.1 at this port.
    pub metrics_port: Option<u16>,
    pub database_url: Option<String>,
    /// `[server] classic_kex`: also offer curve25519 (for the raw test client).
    pub classic_kex: bool,
    /// `[server] proxy_protocol_from`: balancers that send PROXY headers.
    pub proxy_protocol_from: Vec<String>,
}

impl Hardening {
    fn server_lines(&self) -> String {
        let mut s = String::new();
        let ints = [
            ("max_connections", self.max_connections),
            ("max_unauthenticated", self.max_unauthenticated),
            (
                "max_unauthenticated_per_source",
                self.max_unauthenticated_per_source,
            ),
            (
                "max_channels_per_connection",
                self.max_channels_per_connection,
            ),
        ];
        for (key, value) in ints {
            if let Some(v) = value {
                s += &format!("{key} = {v}\n");
            }
        }
        if let Some(every) = &self.keepalive_interval {
            s += &format!("keepalive_interval = {}\n", toml_str(every));
        }
        if self.classic_kex {
            s += "classic_kex = true\n";
        }
        if !self.proxy_protocol_from.is_empty() {
            s += &format!(
                "proxy_protocol_from = {}\n",
                toml_list(&self.proxy_protocol_from)
            );
        }
        s
    }

    fn lockout_lines(&self) -> String {
        let mut s = String::new();
        if let Some(window) = &self.lockout_window {
            s += &format!("window = {}\n", toml_str(window));
        }
        if let Some(ban) = &self.lockout_ban {
            s += &format!("ban = {}\n", toml_str(ban));
        }
        s
    }

    fn metrics_section(&self) -> String {
        match self.metrics_port {
            Some(port) => format!(
                "\n[metrics]\nlisten = {}\n",
                toml_str(&format!("127.0.0.1:{port}"))
            ),
            None => String::new(),
        }
    }
}

/// Builders for [`Hardening`].
impl Config {
    pub fn max_connections(mut self, n: u32) -> Self {
        self.hardening.max_connections = Some(n);
        self
    }

    pub fn max_unauthenticated(mut self, n: u32) -> Self {
        self.hardening.max_unauthenticated = Some(n);
        self
    }

    pub fn max_unauthenticated_per_source(mut self, n: u32) -> Self {
        self.hardening.max_unauthenticated_per_source = Some(n);
        self
    }

    pub fn max_channels_per_connection(mut self, n: u32) -> Self {
        self.hardening.max_channels_per_connection = Some(n);
        self
    }

    /// Also offer curve25519 key exchange: the raw test client
    /// (`common::attack::RawSsh`) speaks only that.
    pub fn classic_kex(mut self) -> Self {
        self.hardening.classic_kex = true;
        self
    }

    pub fn proxy_protocol_from(mut self, nets: &[&str]) -> Self {
        self.hardening.proxy_protocol_from = nets.iter().map(|n| n.to_string()).collect();
        self
    }

    pub fn keepalive_interval(mut self, every: &str) -> Self {
        self.hardening.keepalive_interval = Some(every.to_string());
        self
    }

    /// `[lockout]`: ban a source after `max_failures` within `window`, for `ban`.
    pub fn lockout(mut self, max_failures: u32, window: &str, ban: &str) -> Self {
        self.lockout_max_failures = Some(max_failures);
        self.hardening.lockout_window = Some(window.to_string());
        self.hardening.lockout_ban = Some(ban.to_string());
        self
    }

    /// `[metrics] listen = "127.0.0.1:PORT"`.
    pub fn metrics(mut self, port: u16) -> Self {
        self.hardening.metrics_port = Some(port);
        self
    }

    /// Uses `url` as `[database] url` instead of the test's own database.
    pub fn database_url(mut self, url: &str) -> Self {
        self.hardening.database_url = Some(url.to_string());
        self
    }
}

/// The `[console]` section (DESIGN.md §12): plain HTTP on 127.0.0.1.
#[derive(Clone, Debug)]
pub struct Console {
    pub port: u16,
    pub reviewer_groups: Vec<String>,
    pub admin_groups: Vec<String>,
    pub session_idle: Option<String>,
    pub session_max: Option<String>,
    /// `tls_cert` and `tls_key` (PEM): HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `audit_keys`: public key files the chain check pins.
    pub audit_keys: Vec<PathBuf>,
}

impl Console {
    /// A console on a free port of 127.0.0.1 for these groups.
    pub fn new(reviewer_groups: &[&str], admin_groups: &[&str]) -> Console {
        Console {
            port: super::proc::free_port(),
            reviewer_groups: reviewer_groups.iter().map(|g| g.to_string()).collect(),
            admin_groups: admin_groups.iter().map(|g| g.to_string()).collect(),
            session_idle: None,
            session_max: None,
            tls: None,
            audit_keys: Vec::new(),
        }
    }

    /// Pin the chain check on `/audit` to the keys in these files.
    pub fn audit_keys(mut self, files: &[&Path]) -> Self {
        self.audit_keys = files.iter().map(|f| f.to_path_buf()).collect();
        self
    }

    /// Serve HTTPS with this certificate and key.
    pub fn tls(mut self, cert: &Path, key: &Path) -> Self {
        self.tls = Some((cert.to_path_buf(), key.to_path_buf()));
        self
    }

    pub fn session_idle(mut self, d: &str) -> Self {
        self.session_idle = Some(d.to_string());
        self
    }

    pub fn session_max(mut self, d: &str) -> Self {
        self.session_max = Some(d.to_string());
        self
    }

    /// `http(s)://127.0.0.1:PORT`: where the test's browser goes.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The OIDC redirect URI the IdP must allow.
    pub fn redirect_uri(&self) -> String {
        format!("{}/auth/callback", self.url())
    }

    pub fn render(&self) -> String {
        let mut s = String::from("\n[console]\n");
        s += &format!(
            "listen = {}\n",
            toml_str(&format!("127.0.0.1:{}", self.port))
        );
        s += &format!("public_url = {}\n", toml_str(&self.url()));
        s += &format!("reviewer_groups = {}\n", toml_list(&self.reviewer_groups));
        s += &format!("admin_groups = {}\n", toml_list(&self.admin_groups));
        if let Some(d) = &self.session_idle {
            s += &format!("session_idle = {}\n", toml_str(d));
        }
        if let Some(d) = &self.session_max {
            s += &format!("session_max = {}\n", toml_str(d));
        }
        if !self.audit_keys.is_empty() {
            let files: Vec<String> = self
                .audit_keys
                .iter()
                .map(|f| f.display().to_string())
                .collect();
            s += &format!("audit_keys = {}\n", toml_list(&files));
        }
        if let Some((cert, key)) = &self.tls {
            s += &format!("tls_cert = {}\n", toml_str(&cert.display().to_string()));
            s += &format!("tls_key = {}\n", toml_str(&key.display().to_string()));
        }
        s
    }
}
