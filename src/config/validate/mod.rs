//! From [`RawConfig`] to [`Config`]: every problem is collected with its line.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::schema::*;
use super::*;

mod audit;
mod auth;
mod console;
mod recording;
mod targets;
use auth::{auth, oidc, users};
use targets::targets;

struct Ctx<'a> {
    file: &'a Path,
    dir: PathBuf,
    text: &'a str,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl<'a> Ctx<'a> {
    fn new(file: &'a Path, text: &'a str) -> Self {
        Ctx {
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
        }
    }
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
    let mut cx = Ctx::new(file, text);
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
    let audit = audit::audit(&mut cx, &raw.audit, &server.host_key_dir);
    let requests = audit::requests(&mut cx, &raw.requests);
    let recording = recording::recording(&mut cx, &raw.recording, &server.host_key_dir);
    let log = log(&mut cx, &raw.log);
    let auth = auth(&mut cx, &raw.auth);
    let oidc = raw.oidc.as_ref().map(|o| oidc(&mut cx, o.get_ref()));
    let mfa = mfa(&mut cx, &raw.mfa, &server.host_key_dir);
    let sessions = sessions(&mut cx, &raw.sessions);
    let lockout = lockout(&mut cx, &raw.lockout);
    let metrics = raw.metrics.as_ref().and_then(|m| metrics(&mut cx, m));
    let console = raw.console.as_ref().and_then(|c| {
        console::console(
            &mut cx,
            c,
            &console::Others {
                ssh: &server.listen,
                metrics: metrics.as_ref().map(|m| m.listen),
                oidc: oidc.is_some(),
            },
        )
    });
    let users = users(&mut cx, &raw.users);
    let policy = Policy::new(targets(&mut cx, &raw.targets));

    if cx.errors.is_empty() {
        Ok(Config {
            path: file.to_path_buf(),
            server,
            database,
            audit,
            requests,
            recording,
            log,
            auth,
            oidc,
            mfa,
            sessions,
            lockout,
            metrics,
            console,
            users,
            policy,
            warnings: cx.warnings,
        })
    } else {
        cx.errors.sort_by_key(|e| e.line);
        Err(ConfigErrors(cx.errors))
    }
}

fn sessions(cx: &mut Ctx<'_>, raw: &RawSessions) -> SessionsConfig {
    SessionsConfig {
        grant_ttl: cx.duration(
            "sessions.grant_ttl",
            &raw.grant_ttl,
            Duration::from_secs(8 * 3600),
        ),
        max_duration: cx.duration(
            "sessions.max_duration",
            &raw.max_duration,
            Duration::from_secs(12 * 3600),
        ),
        idle_timeout: cx.duration(
            "sessions.idle_timeout",
            &raw.idle_timeout,
            Duration::from_secs(30 * 60),
        ),
        connect_timeout: cx.duration(
            "sessions.connect_timeout",
            &raw.connect_timeout,
            Duration::from_secs(10),
        ),
    }
}

fn lockout(cx: &mut Ctx<'_>, raw: &RawLockout) -> LockoutConfig {
    LockoutConfig {
        max_failures: cx.int("lockout.max_failures", &raw.max_failures, 5, 1..1_000_001) as u32,
        window: cx.duration("lockout.window", &raw.window, Duration::from_secs(600)),
        ban: cx.duration("lockout.ban", &raw.ban, Duration::from_secs(900)),
        ipv6_prefix: cx.int("lockout.ipv6_prefix", &raw.ipv6_prefix, 64, 32..129) as u8,
        totp_max_failures: cx.int(
            "lockout.totp_max_failures",
            &raw.totp_max_failures,
            5,
            1..1001,
        ) as u32,
        totp_window: cx.duration(
            "lockout.totp_window",
            &raw.totp_window,
            Duration::from_secs(900),
        ),
        totp_lock: cx.duration(
            "lockout.totp_lock",
            &raw.totp_lock,
            Duration::from_secs(900),
        ),
    }
}

fn metrics(cx: &mut Ctx<'_>, m: &RawMetrics) -> Option<MetricsConfig> {
    match m.listen.get_ref().parse() {
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
    }
}

fn server(cx: &mut Ctx<'_>, raw: &RawServer) -> ServerConfig {
    let listen = listen(cx, raw);
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
    let node_name = node_name(raw);
    let proxy_protocol_from = proxy_protocol_from(cx, raw);
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

/// `server.listen`: 127.0.0.1:2222 when not given.
fn listen(cx: &mut Ctx<'_>, raw: &RawServer) -> Vec<SocketAddr> {
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
    listen
}

/// `server.node_name`, else the host name.
fn node_name(raw: &RawServer) -> String {
    match &raw.node_name {
        Some(n) => n.get_ref().clone(),
        // uname(2): works where /proc/sys is hidden (systemd ProcSubset=pid).
        None => gethostname::gethostname()
            .into_string()
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "portvakt".into()),
    }
}

/// `server.proxy_protocol_from`: addresses or CIDR ranges.
fn proxy_protocol_from(cx: &mut Ctx<'_>, raw: &RawServer) -> Vec<IpNet> {
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
    proxy_protocol_from
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
