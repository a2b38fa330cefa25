//! From [`RawConfig`] to [`Config`]: every problem is collected with its line.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use russh::keys::ssh_key::{Algorithm, HashAlg, PublicKey};

use super::schema::*;
use super::*;
use crate::policy::{Destination, Target, canonical_ip};
use toml::Spanned;

/// Users that can never log in, whatever `deny_users` says.
const ALWAYS_DENIED: &[&str] = &["root"];

struct Ctx<'a> {
    file: &'a Path,
    dir: PathBuf,
    text: &'a str,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn problem(&self, span: &Range<usize>, message: String) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: self.line(span),
            message,
        }
    }

    fn err(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let e = self.problem(span, message.into());
        self.errors.push(e);
    }

    fn warn(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let e = self.problem(span, message.into());
        self.warnings.push(e);
    }

    /// A path from the file: relative paths are relative to its folder.
    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    fn duration(&mut self, key: &str, v: &Option<SString>, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.err(&v.span(), format!("{key}: must be longer than zero"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.err(
                    &v.span(),
                    format!(
                        "{key}: bad duration {:?} ({e}); write e.g. \"90s\", \"30m\", \"8h\"",
                        v.get_ref()
                    ),
                );
                default
            }
        }
    }

    fn int(&mut self, key: &str, v: &Option<SInt>, default: i64, range: Range<i64>) -> i64 {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if range.contains(&n) {
            n
        } else {
            self.err(
                &v.span(),
                format!(
                    "{key}: {n} is out of range ({}..={})",
                    range.start,
                    range.end - 1
                ),
            );
            default
        }
    }

    fn one_of<T: Copy>(
        &mut self,
        key: &str,
        v: &Option<SString>,
        default: T,
        choices: &[(&str, T)],
    ) -> T {
        let Some(v) = v else { return default };
        match choices.iter().find(|(name, _)| *name == v.get_ref()) {
            Some((_, value)) => *value,
            None => {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                self.err(
                    &v.span(),
                    format!(
                        "{key}: {:?} is not one of {}",
                        v.get_ref(),
                        names.join(", ")
                    ),
                );
                default
            }
        }
    }

    /// Read a file named in the config, reporting at the key's line.
    fn read(&mut self, key: &str, v: &SString) -> Option<String> {
        let path = self.path(v.get_ref());
        match std::fs::read_to_string(&path) {
            Ok(s) => Some(s),
            Err(e) => {
                self.err(
                    &v.span(),
                    format!("{key}: cannot read {}: {e}", path.display()),
                );
                None
            }
        }
    }
}

pub(super) fn validate(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let mut cx = Ctx {
        file,
        // Absolute, so that what the file names stays put whatever the
        // working folder of the process that reads it.
        dir: {
            let dir = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
        },
        text,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let line = e.span().map(|s| cx.line(&s)).unwrap_or(0);
            return Err(ConfigErrors(vec![ConfigError {
                file: file.to_path_buf(),
                line,
                message: e.message().trim().to_string(),
            }]));
        }
    };

    let server = server(&mut cx, &raw.server);
    let database = database(&mut cx, &raw.database, &server.host_key_dir);
    let log = log(&mut cx, &raw.log);
    let auth = auth(&mut cx, &raw.auth);
    let oidc = raw.oidc.as_ref().map(|o| oidc(&mut cx, o.get_ref()));
    let mfa = mfa(&mut cx, &raw.mfa, &server.host_key_dir);
    let sessions = SessionsConfig {
        grant_ttl: cx.duration(
            "sessions.grant_ttl",
            &raw.sessions.grant_ttl,
            Duration::from_secs(8 * 3600),
        ),
        max_duration: cx.duration(
            "sessions.max_duration",
            &raw.sessions.max_duration,
            Duration::from_secs(12 * 3600),
        ),
        idle_timeout: cx.duration(
            "sessions.idle_timeout",
            &raw.sessions.idle_timeout,
            Duration::from_secs(30 * 60),
        ),
        connect_timeout: cx.duration(
            "sessions.connect_timeout",
            &raw.sessions.connect_timeout,
            Duration::from_secs(10),
        ),
    };
    let lockout = LockoutConfig {
        max_failures: cx.int(
            "lockout.max_failures",
            &raw.lockout.max_failures,
            5,
            1..1_000_001,
        ) as u32,
        window: cx.duration(
            "lockout.window",
            &raw.lockout.window,
            Duration::from_secs(600),
        ),
        ban: cx.duration("lockout.ban", &raw.lockout.ban, Duration::from_secs(900)),
        ipv6_prefix: cx.int("lockout.ipv6_prefix", &raw.lockout.ipv6_prefix, 64, 32..129) as u8,
        totp_max_failures: cx.int(
            "lockout.totp_max_failures",
            &raw.lockout.totp_max_failures,
            5,
            1..1001,
        ) as u32,
        totp_window: cx.duration(
            "lockout.totp_window",
            &raw.lockout.totp_window,
            Duration::from_secs(900),
        ),
        totp_lock: cx.duration(
            "lockout.totp_lock",
            &raw.lockout.totp_lock,
            Duration::from_secs(900),
        ),
    };
    let metrics = raw
        .metrics
        .as_ref()
        .and_then(|m| match m.listen.get_ref().parse() {
            Ok(listen) => Some(MetricsConfig { listen }),
            Err(_) => {
                cx.err(
                    &m.listen.span(),
                    format!(
                        "metrics.listen: {:?} is not an address like 127.0.0.1:9102",
                        m.listen.get_ref()
                    ),
                );
                None
            }
        });
    let users = users(&mut cx, &raw.users);
    let policy = Policy::new(targets(&mut cx, &raw.targets));

    if cx.errors.is_empty() {
        Ok(Config {
            path: file.to_path_buf(),
            server,
            database,
            log,
            auth,
            oidc,
            mfa,
            sessions,
            lockout,
            metrics,
            users,
            policy,
            warnings: cx.warnings,
        })
    } else {
        cx.errors.sort_by_key(|e| e.line);
        Err(ConfigErrors(cx.errors))
    }
}

fn server(cx: &mut Ctx<'_>, raw: &RawServer) -> ServerConfig {
    let mut listen = Vec::new();
    match &raw.listen {
        None => listen.push(SocketAddr::from(([127, 0, 0, 1], 2222))),
        Some(list) => {
            if list.get_ref().is_empty() {
                cx.err(&list.span(), "server.listen: give at least one address");
            }
            for a in list.get_ref() {
                match a.get_ref().parse::<SocketAddr>() {
                    Ok(addr) => listen.push(addr),
                    Err(_) => cx.err(
                        &a.span(),
                        format!(
                            "server.listen: {:?} is not an address like 0.0.0.0:2222 or [::]:2222",
                            a.get_ref()
                        ),
                    ),
                }
            }
        }
    }
    let host_key_dir = raw
        .host_key_dir
        .as_ref()
        .map(|d| cx.path(d.get_ref()))
        .unwrap_or_else(|| PathBuf::from("/var/lib/portvakt"));
    let max_connections = cx.int(
        "server.max_connections",
        &raw.max_connections,
        10_000,
        1..10_000_001,
    ) as usize;
    let max_unauthenticated = cx.int(
        "server.max_unauthenticated",
        &raw.max_unauthenticated,
        100,
        1..10_000_001,
    ) as usize;
    if let Some(v) = &raw.max_unauthenticated
        && max_unauthenticated > max_connections
    {
        cx.warn(
            &v.span(),
            "server.max_unauthenticated is above max_connections; max_connections is the limit",
        );
    }
    let node_name = match &raw.node_name {
        Some(n) => n.get_ref().clone(),
        // uname(2): works where /proc/sys is hidden (systemd ProcSubset=pid).
        None => gethostname::gethostname()
            .into_string()
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "portvakt".into()),
    };
    let mut proxy_protocol_from = Vec::new();
    for p in raw.proxy_protocol_from.iter().flatten() {
        let parsed = p
            .get_ref()
            .parse::<IpNet>()
            .or_else(|_| p.get_ref().parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => proxy_protocol_from.push(net),
            Err(_) => cx.err(
                &p.span(),
                format!(
                    "server.proxy_protocol_from: {:?} is not an address or CIDR range",
                    p.get_ref()
                ),
            ),
        }
    }
    ServerConfig {
        public_name: raw.public_name.as_ref().map(|n| n.get_ref().clone()),
        classic_kex: raw.classic_kex.unwrap_or(false),
        proxy_protocol_from,
        listen,
        host_key_dir,
        banner: raw.banner.as_ref().map(|b| b.get_ref().clone()),
        max_connections,
        max_unauthenticated,
        max_unauthenticated_per_source: cx.int(
            "server.max_unauthenticated_per_source",
            &raw.max_unauthenticated_per_source,
            10,
            1..10_000_001,
        ) as usize,
        max_channels_per_connection: cx.int(
            "server.max_channels_per_connection",
            &raw.max_channels_per_connection,
            64,
            1..100_001,
        ) as usize,
        login_grace_time: cx.duration(
            "server.login_grace_time",
            &raw.login_grace_time,
            Duration::from_secs(300),
        ),
        keepalive_interval: cx.duration(
            "server.keepalive_interval",
            &raw.keepalive_interval,
            Duration::from_secs(30),
        ),
        node_name,
    }
}

fn database(cx: &mut Ctx<'_>, raw: &RawDatabase, host_key_dir: &Path) -> DatabaseConfig {
    let default = || format!("sqlite://{}", host_key_dir.join("portvakt.db").display());
    let url = match &raw.url {
        None => default(),
        Some(u) => {
            let s = u.get_ref();
            if let Some(rest) = s
                .strip_prefix("sqlite://")
                .or_else(|| s.strip_prefix("sqlite:"))
            {
                let (path, query) = rest
                    .split_once('?')
                    .map_or((rest, None), |(p, q)| (p, Some(q)));
                if path.is_empty() || path == ":memory:" {
                    cx.err(&u.span(), "database.url: give a file for SQLite, e.g. sqlite://./data/portvakt.db (an in-memory database would lose the audit trail)");
                }
                let abs = cx.path(path);
                match query {
                    Some(q) => format!("sqlite://{}?{q}", abs.display()),
                    None => format!("sqlite://{}", abs.display()),
                }
            } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
                s.clone()
            } else {
                cx.err(
                    &u.span(),
                    format!(
                        "database.url: {s:?} is neither sqlite://PATH nor postgres://USER@HOST/DB"
                    ),
                );
                default()
            }
        }
    };
    let retention = raw.retention.as_ref().map(|_| {
        cx.duration(
            "database.retention",
            &raw.retention,
            Duration::from_secs(400 * 86400),
        )
    });
    DatabaseConfig { url, retention }
}

fn log(cx: &mut Ctx<'_>, raw: &RawLog) -> LogConfig {
    let format = raw.format.as_ref().map(|_| {
        cx.one_of(
            "log.format",
            &raw.format,
            LogFormat::Json,
            &[("json", LogFormat::Json), ("pretty", LogFormat::Pretty)],
        )
    });
    let level = match &raw.level {
        None => "info".to_string(),
        Some(l) => {
            if tracing_subscriber::EnvFilter::try_new(l.get_ref()).is_err() {
                cx.err(&l.span(), format!("log.level: {:?} is not a level (error, warn, info, debug, trace) or filter", l.get_ref()));
            }
            l.get_ref().clone()
        }
    };
    LogConfig { format, level }
}

fn auth(cx: &mut Ctx<'_>, raw: &RawAuth) -> AuthConfig {
    let mut trusted_cas = Vec::new();
    for file in raw.trusted_user_ca_keys.iter().flatten() {
        let Some(text) = cx.read("auth.trusted_user_ca_keys", file) else {
            continue;
        };
        let mut keys = 0;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = PublicKey::from_openssh(line);
            keys += usize::from(key.is_ok());
            match key {
                Ok(k) if k.algorithm() == Algorithm::Dsa => cx.err(
                    &file.span(),
                    format!(
                        "auth.trusted_user_ca_keys: {} line {}: a DSA (ssh-dss) key cannot be a CA: \
                         DSA signs with SHA-1, and OpenSSH refuses it too",
                        file.get_ref(),
                        n + 1
                    ),
                ),
                Ok(k) => trusted_cas.push(k.fingerprint(HashAlg::Sha256)),
                Err(e) => cx.err(
                    &file.span(),
                    format!(
                        "auth.trusted_user_ca_keys: {} line {}: not an OpenSSH public key ({e})",
                        file.get_ref(),
                        n + 1
                    ),
                ),
            }
        }
        if keys == 0 {
            cx.err(
                &file.span(),
                format!(
                    "auth.trusted_user_ca_keys: {} holds no public key",
                    file.get_ref()
                ),
            );
        }
    }
    let revoked = match &raw.revoked_keys {
        None => RevocationList::empty(),
        Some(p) => match RevocationList::load(&cx.path(p.get_ref())) {
            Ok(r) => r,
            Err(e) => {
                cx.err(
                    &p.span(),
                    format!("auth.revoked_keys: {}: {e}", p.get_ref()),
                );
                RevocationList::empty()
            }
        },
    };
    let mut deny_users: Vec<String> = match &raw.deny_users {
        None => ALWAYS_DENIED.iter().map(|s| s.to_string()).collect(),
        Some(list) => list.iter().map(|u| u.get_ref().clone()).collect(),
    };
    for always in ALWAYS_DENIED {
        if !deny_users.iter().any(|u| u.eq_ignore_ascii_case(always)) {
            if let Some(first) = raw.deny_users.as_ref().and_then(|l| l.first()) {
                cx.warn(
                    &first.span(),
                    format!("auth.deny_users: {always} is always denied, even when not listed"),
                );
            }
            deny_users.push(always.to_string());
        }
    }
    AuthConfig {
        trusted_cas,
        revoked,
        deny_users,
        max_auth_tries: cx.int("auth.max_auth_tries", &raw.max_auth_tries, 6, 1..101) as usize,
        allow_no_touch_required: raw.allow_no_touch_required.unwrap_or(false),
    }
}

fn oidc(cx: &mut Ctx<'_>, raw: &RawOidc) -> OidcConfig {
    let issuer = raw.issuer.get_ref().clone();
    if !issuer.starts_with("https://") {
        if crate::auth::oidc::is_secure_url(&issuer) {
            cx.warn(
                &raw.issuer.span(),
                "oidc.issuer: plain http is only acceptable for a local test identity provider",
            );
        } else {
            cx.err(
                &raw.issuer.span(),
                format!("oidc.issuer: {issuer:?} must be an https:// URL"),
            );
        }
    }
    let client_secret = raw
        .client_secret_file
        .as_ref()
        .and_then(|f| cx.read("oidc.client_secret_file", f))
        .map(|s| s.trim().to_string());
    let scopes: Vec<String> = match &raw.scopes {
        Some(s) => s.iter().map(|s| s.get_ref().clone()).collect(),
        None => ["openid", "profile", "email", "groups"]
            .map(String::from)
            .to_vec(),
    };
    if !scopes.iter().any(|s| s == "openid") {
        cx.err(
            &raw.client_id.span(),
            "oidc.scopes: must include \"openid\"",
        );
    }
    OidcConfig {
        issuer,
        client_id: raw.client_id.get_ref().clone(),
        client_secret,
        scopes,
        username_claim: raw
            .username_claim
            .as_ref()
            .map_or("preferred_username".into(), |c| c.get_ref().clone()),
        groups_claim: raw
            .groups_claim
            .as_ref()
            .map_or("groups".into(), |c| c.get_ref().clone()),
    }
}

fn mfa(cx: &mut Ctx<'_>, raw: &RawMfa, host_key_dir: &Path) -> MfaConfig {
    MfaConfig {
        totp: cx.one_of(
            "mfa.totp",
            &raw.totp,
            TotpMode::Required,
            &[("required", TotpMode::Required), ("off", TotpMode::Off)],
        ),
        trust_idp_amr: raw.trust_idp_amr.unwrap_or(false),
        // Off unless asked for: enrolment at the first IdP login trusts
        // whoever completes that login (docs/SECURITY.md).
        self_enroll: raw.self_enroll.unwrap_or(false),
        secret_key_file: raw
            .secret_key_file
            .as_ref()
            .map(|f| cx.path(f.get_ref()))
            .unwrap_or_else(|| host_key_dir.join("totp.key")),
    }
}

/// Names of users, groups and targets: letters, digits and `._-@+`.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@+".contains(c))
}

fn users(cx: &mut Ctx<'_>, raw: &[Spanned<RawUser>]) -> HashMap<String, UserEntry> {
    let mut users = HashMap::new();
    for u in raw {
        let u = u.get_ref();
        let name = u.name.get_ref();
        if !valid_name(name) {
            cx.err(
                &u.name.span(),
                format!("users.name: {name:?} is not a valid user name"),
            );
        }
        let mut keys = Vec::new();
        for k in &u.keys {
            match PublicKey::from_openssh(k.get_ref().trim()) {
                Ok(key) => keys.push(key.key_data().clone()),
                Err(e) => cx.err(
                    &k.span(),
                    format!("users.keys: not an OpenSSH public key line ({e})"),
                ),
            }
        }
        let mfa = cx.one_of(
            "users.mfa",
            &u.mfa,
            UserMfa::Totp,
            &[("totp", UserMfa::Totp), ("none", UserMfa::None)],
        );
        if mfa == UserMfa::None {
            cx.warn(&u.name.span(), format!("user {name}: mfa = \"none\": its key alone logs in; use only for service accounts"));
        }
        for g in &u.groups {
            if !valid_name(g.get_ref()) {
                cx.err(
                    &g.span(),
                    format!("users.groups: {:?} is not a valid group name", g.get_ref()),
                );
            }
        }
        let entry = UserEntry {
            name: name.clone(),
            groups: u.groups.iter().map(|g| g.get_ref().clone()).collect(),
            keys,
            mfa,
        };
        if users.insert(name.clone(), entry).is_some() {
            cx.err(
                &u.name.span(),
                format!("users.name: user {name} is defined twice"),
            );
        }
    }
    users
}

fn port(cx: &mut Ctx<'_>, key: &str, v: &SInt) -> Option<u16> {
    match u16::try_from(*v.get_ref()) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            cx.err(
                &v.span(),
                format!("{key}: {} is not a port (1..=65535)", v.get_ref()),
            );
            None
        }
    }
}

fn targets(cx: &mut Ctx<'_>, raw: &[Spanned<RawTarget>]) -> Vec<Target> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for t in raw {
        let span = t.span();
        let t = t.get_ref();
        let name = t.name.get_ref();
        let mut ok = true;
        if !valid_name(name)
            || canonical_ip(name).is_some()
            || name.parse::<std::net::IpAddr>().is_ok()
        {
            cx.err(&t.name.span(), format!("targets.name: {name:?} is not a valid target name (letters, digits, . _ -; not an address)"));
            ok = false;
        }
        if !seen.insert(name.to_ascii_lowercase()) {
            cx.err(
                &t.name.span(),
                format!("targets.name: target {name} is defined twice"),
            );
            ok = false;
        }
        if t.allow_users.is_empty() && t.allow_groups.is_empty() {
            cx.err(
                &t.name.span(),
                format!("target {name}: nobody may use it; set allow_users or allow_groups"),
            );
            ok = false;
        }
        let destination = match &t.cidr {
            Some(cidr) => {
                if let Some(h) = &t.host {
                    cx.err(
                        &h.span(),
                        format!("target {name}: host and cidr exclude each other"),
                    );
                    ok = false;
                }
                if let Some(p) = &t.port {
                    cx.err(
                        &p.span(),
                        format!("target {name}: a cidr target takes ports = [...], not port"),
                    );
                    ok = false;
                }
                let net = match cidr.get_ref().parse::<IpNet>() {
                    Ok(net) if net.trunc() == net => {
                        let broad = match net {
                            IpNet::V4(n) => n.prefix_len() < 8,
                            IpNet::V6(n) => n.prefix_len() < 16,
                        };
                        if broad {
                            cx.warn(
                                &cidr.span(),
                                format!(
                                    "target {name}: cidr {net} is very broad; loopback, link-local, multicast and unspecified addresses stay out unless a range names them"
                                ),
                            );
                        }
                        Some(net)
                    }
                    Ok(net) => {
                        cx.err(
                            &cidr.span(),
                            format!(
                                "target {name}: cidr {} has host bits set; did you mean {}?",
                                cidr.get_ref(),
                                net.trunc()
                            ),
                        );
                        None
                    }
                    Err(_) => {
                        cx.err(
                            &cidr.span(),
                            format!(
                                "target {name}: {:?} is not a CIDR range like 10.20.0.0/24",
                                cidr.get_ref()
                            ),
                        );
                        None
                    }
                };
                let mut ports = BTreeSet::new();
                match &t.ports {
                    None => {
                        cx.err(
                            &span,
                            format!("target {name}: a cidr target needs ports = [...]"),
                        );
                        ok = false;
                    }
                    Some(list) if list.get_ref().is_empty() => {
                        cx.err(&list.span(), format!("target {name}: ports is empty"));
                        ok = false;
                    }
                    Some(list) => {
                        for p in list.get_ref() {
                            match port(cx, "targets.ports", p) {
                                Some(p) => {
                                    ports.insert(p);
                                }
                                None => ok = false,
                            }
                        }
                    }
                }
                net.map(|net| Destination::Cidr { net, ports })
            }
            None => {
                if let Some(p) = &t.ports {
                    cx.err(
                        &p.span(),
                        format!("target {name}: ports = [...] is for cidr targets; use port"),
                    );
                    ok = false;
                }
                let host = t
                    .host
                    .as_ref()
                    .map_or(name.clone(), |h| h.get_ref().clone());
                // What portvakt dials must be what the admin meant: glibc
                // reads "010.0.0.1" as 8.0.0.1 and a name "127.1" as
                // 127.0.0.1.
                if canonical_ip(&host).is_none() && !crate::policy::is_dns_name(&host) {
                    cx.err(
                        &t.host.as_ref().map_or(span.clone(), |h| h.span()),
                        format!(
                            "target {name}: host {host:?} is neither an IP address in canonical form (like 10.0.1.5 or fd00::5) nor a DNS name"
                        ),
                    );
                    ok = false;
                }
                let port = match &t.port {
                    None => Some(22),
                    Some(p) => port(cx, "targets.port", p),
                };
                port.map(|port| Destination::Host { host, port })
            }
        };
        for u in t.allow_users.iter().chain(&t.allow_groups) {
            if !valid_name(u.get_ref()) {
                cx.err(
                    &u.span(),
                    format!(
                        "target {name}: {:?} is not a valid user or group name",
                        u.get_ref()
                    ),
                );
                ok = false;
            }
        }
        if let (true, Some(destination)) = (ok, destination) {
            out.push(Target {
                name: name.clone(),
                destination,
                allow_users: t.allow_users.iter().map(|u| u.get_ref().clone()).collect(),
                allow_groups: t.allow_groups.iter().map(|g| g.get_ref().clone()).collect(),
            });
        }
    }
    out
}
