//! portvakt itself: the running server, and the audit data read back
//! through its own CLI.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::config::Config;
use super::database::Database;
use super::keys::read_line;
use super::proc::{ChildGuard, RUN_TIMEOUT, RunOutput, free_port, poll_for, poll_until, run};

/// How long to wait for an asynchronous audit write to show up.
pub const AUDIT_TIMEOUT: Duration = Duration::from_secs(20);

/// The portvakt binary under test.
pub fn portvakt_bin() -> &'static str {
    env!("CARGO_BIN_EXE_portvakt")
}

/// One row of `portvakt sessions list --json` (DESIGN.md §5).
#[derive(Clone, Debug, Deserialize)]
pub struct SessionRow {
    pub id: Value,
    pub connection_id: Value,
    pub user: Option<String>,
    pub auth_method: Option<String>,
    pub source: Option<String>,
    pub target: Option<String>,
    pub host: String,
    pub port: u16,
    pub address: Option<String>,
    pub result: String,
    pub reason: Option<String>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub bytes_to_target: u64,
    pub bytes_from_target: u64,
    pub close_reason: Option<String>,
}

/// One event of `portvakt audit list --json` (DESIGN.md §5).
#[derive(Clone, Debug, Deserialize)]
pub struct AuditEvent {
    pub id: Value,
    pub at: String,
    pub kind: String,
    pub user: Option<String>,
    pub source: Option<String>,
    pub detail: Value,
    pub reason: Option<String>,
    pub connection_id: Value,
}

impl AuditEvent {
    /// True for an event of `kind` whose reason is `reason`.
    pub fn is(&self, kind: &str, reason: &str) -> bool {
        self.kind == kind && self.reason.as_deref() == Some(reason)
    }

    /// A string field of `detail`.
    pub fn detail_str(&self, key: &str) -> Option<&str> {
        self.detail.get(key).and_then(Value::as_str)
    }
}

/// The keys every sessions row must have (DESIGN.md §5).
pub const SESSION_KEYS: &[&str] = &[
    "id",
    "connection_id",
    "user",
    "auth_method",
    "source",
    "target",
    "host",
    "port",
    "address",
    "result",
    "reason",
    "started_at",
    "ended_at",
    "bytes_to_target",
    "bytes_from_target",
    "close_reason",
    "mode",
    "recordings",
];

/// The keys every audit event must have (DESIGN.md §5 plus reason and connection_id).
pub const AUDIT_KEYS: &[&str] = &[
    "id",
    "at",
    "kind",
    "user",
    "source",
    "detail",
    "reason",
    "connection_id",
];

/// A running `portvakt serve`, killed on drop, with its database.
pub struct Portvakt {
    // Field order is drop order: stop the server before dropping its database.
    process: ChildGuard,
    pub port: u16,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    /// The host public key line ("ssh-ed25519 AAAA...").
    pub host_key: String,
    pub stderr_path: PathBuf,
    _database: Database,
}

impl Portvakt {
    /// Writes `config` into a new folder under `parent`, starts
    /// `portvakt serve`, and waits until its port accepts TCP.
    pub fn start(parent: &Path, config: &Config) -> Portvakt {
        let port = free_port();
        let dir = parent.join(format!("portvakt-{port}"));
        let host_key_dir = dir.join("hostkey");
        fs::create_dir_all(&dir).expect("create portvakt dir");
        let database = Database::fresh(&dir);
        let config_path = dir.join("portvakt.toml");
        fs::write(
            &config_path,
            config.render(port, &host_key_dir, database.url()),
        )
        .expect("write portvakt.toml");
        Self::start_with_file(dir, config_path, port, database)
    }

    /// Starts one node of a bastion (issue 6) in `dir` on `database`, which
    /// stays the caller's so several nodes can share it. The host key folder
    /// is `dir/hostkey`: a key put there beforehand (the same key on every
    /// node) is used, else portvakt creates one. Waits until the port
    /// accepts TCP.
    pub fn start_node(dir: &Path, config: &Config, database: &Database) -> Portvakt {
        let port = free_port();
        fs::create_dir_all(dir).expect("create node dir");
        let config_path = dir.join("portvakt.toml");
        fs::write(
            &config_path,
            config.render(port, &dir.join("hostkey"), database.url()),
        )
        .expect("write portvakt.toml");
        Self::start_with_file(dir.to_path_buf(), config_path, port, database.shared())
    }

    fn start_with_file(
        dir: PathBuf,
        config_path: PathBuf,
        port: u16,
        database: Database,
    ) -> Portvakt {
        let stderr_path = dir.join("portvakt.stderr.log");
        let mut process = ChildGuard::spawn(
            "portvakt",
            Command::new(portvakt_bin())
                .arg("serve")
                .arg("--config")
                .arg(&config_path)
                .env_remove("PORTVAKT_CONFIG"),
            Some(&stderr_path),
        );
        process.wait_for_port(port);
        let host_key_pub = dir.join("hostkey").join("ssh_host_ed25519_key.pub");
        let host_key = poll_until("the host public key file", Duration::from_secs(10), || {
            host_key_pub.exists().then(|| read_line(&host_key_pub))
        });
        Portvakt {
            process,
            port,
            dir,
            config_path,
            host_key,
            stderr_path,
            _database: database,
        }
    }

    /// The known_hosts line for this bastion as the client names it.
    pub fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}", self.port, self.host_key)
    }

    /// What the server logged so far (JSON lines).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Panics (with the log) if the server has exited.
    pub fn assert_running(&mut self) {
        self.process.assert_running();
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends `signal` ("HUP", "TERM", "KILL", ...) to the server process only.
    pub fn signal(&self, signal: &str) {
        super::proc::run_ok(
            Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(self.pid().to_string()),
        );
    }

    /// Waits for the server to exit by itself; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.process.wait_exit(timeout)
    }

    /// The folder of its host key (and of its audit signing key).
    pub fn host_key_dir(&self) -> PathBuf {
        self.dir.join("hostkey")
    }

    /// The `[database] url` of the test's own database.
    pub fn database_url(&self) -> &str {
        self._database.url()
    }

    /// Rewrites the config file from `config` (same port, host key and
    /// database); the running server reads it on SIGHUP.
    pub fn write_config(&self, config: &Config) {
        let text = config.render(self.port, &self.dir.join("hostkey"), self._database.url());
        fs::write(&self.config_path, text).expect("rewrite portvakt.toml");
    }

    /// Rewrites the config from `config`, sends SIGHUP and waits for the
    /// reload's `config.reload` event, which it returns.
    pub fn reload(&self, config: &Config) -> AuditEvent {
        let reloads = || -> Vec<AuditEvent> {
            self.audit()
                .into_iter()
                .filter(|e| e.kind == "config.reload")
                .collect()
        };
        let before = reloads().len();
        self.write_config(config);
        self.signal("HUP");
        poll_until("the config.reload event", AUDIT_TIMEOUT, || {
            let now = reloads();
            (now.len() > before).then(|| now[now.len() - 1].clone())
        })
    }

    /// Starts `portvakt serve` again on the same folder, config and
    /// database (after it exited or was killed; a running one is killed).
    pub fn restart(&mut self) {
        self.process.kill();
        let stderr_path = self.stderr_path.clone();
        let mut process = ChildGuard::spawn(
            "portvakt",
            Command::new(portvakt_bin())
                .arg("serve")
                .arg("--config")
                .arg(&self.config_path)
                .env_remove("PORTVAKT_CONFIG"),
            Some(&stderr_path),
        );
        process.wait_for_port(self.port);
        self.process = process;
    }

    /// Waits until another of this server's ports (the console's, the
    /// metrics') accepts TCP, failing with the log if it does not in time
    /// or the server exits.
    pub fn wait_for_port(&mut self, port: u16) {
        self.process.wait_for_port(port);
    }

    /// Runs `portvakt ARGS --config FILE` against this instance.
    pub fn cli(&self, args: &[&str]) -> RunOutput {
        run(
            Command::new(portvakt_bin())
                .args(args)
                .arg("--config")
                .arg(&self.config_path),
            None,
            RUN_TIMEOUT,
        )
    }

    /// Runs a `--json` read command and parses its stdout.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        out.assert_success();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {out}"))
    }

    /// `sessions list --json` with extra filter arguments, as raw JSON objects.
    pub fn sessions_json(&self, filters: &[&str]) -> Vec<Value> {
        let mut args = vec!["sessions", "list", "--json"];
        args.extend_from_slice(filters);
        match self.cli_json(&args) {
            Value::Array(rows) => rows,
            other => panic!("sessions list --json is not an array: {other}"),
        }
    }

    /// `sessions list --json` with extra filter arguments.
    pub fn sessions_filtered(&self, filters: &[&str]) -> Vec<SessionRow> {
        self.sessions_json(filters)
            .into_iter()
            .map(|row| {
                serde_json::from_value(row.clone())
                    .unwrap_or_else(|e| panic!("bad sessions row ({e}): {row}"))
            })
            .collect()
    }

    /// All sessions rows.
    pub fn sessions(&self) -> Vec<SessionRow> {
        self.sessions_filtered(&[])
    }

    /// `audit list --json`, as raw JSON objects.
    pub fn audit_json(&self) -> Vec<Value> {
        match self.cli_json(&["audit", "list", "--json"]) {
            Value::Array(rows) => rows,
            other => panic!("audit list --json is not an array: {other}"),
        }
    }

    /// All audit events.
    pub fn audit(&self) -> Vec<AuditEvent> {
        self.audit_json()
            .into_iter()
            .map(|event| {
                serde_json::from_value(event.clone())
                    .unwrap_or_else(|e| panic!("bad audit event ({e}): {event}"))
            })
            .collect()
    }

    /// Polls the audit trail until an event matches `pred` (audit writes are
    /// asynchronous); panics after [`AUDIT_TIMEOUT`] listing what was there.
    pub fn wait_for_audit(&self, what: &str, pred: impl Fn(&AuditEvent) -> bool) -> AuditEvent {
        let mut last = Vec::new();
        let found = poll_for(AUDIT_TIMEOUT, || {
            last = self.audit();
            last.iter().find(|e| pred(e)).cloned()
        });
        match found {
            Some(event) => event,
            None => panic!(
                "no audit event {what} within {AUDIT_TIMEOUT:?}; events were:\n{}",
                describe_events(&last)
            ),
        }
    }

    /// Polls until an event of `kind` with `reason` exists.
    pub fn wait_for_event(&self, kind: &str, reason: &str) -> AuditEvent {
        self.wait_for_audit(&format!("{kind} with reason {reason}"), |e| {
            e.is(kind, reason)
        })
    }

    /// Polls the sessions list until a row matches `pred`; panics after
    /// [`AUDIT_TIMEOUT`] listing what was there.
    pub fn wait_for_session(&self, what: &str, pred: impl Fn(&SessionRow) -> bool) -> SessionRow {
        let mut last = Vec::new();
        let found = poll_for(AUDIT_TIMEOUT, || {
            last = self.sessions();
            last.iter().find(|r| pred(r)).cloned()
        });
        match found {
            Some(row) => row,
            None => {
                panic!("no sessions row {what} within {AUDIT_TIMEOUT:?}; rows were:\n{last:#?}")
            }
        }
    }
}

/// One line per event, for failure messages.
pub fn describe_events(events: &[AuditEvent]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "  {} {} user={:?} reason={:?} detail={}",
                e.at, e.kind, e.user, e.reason, e.detail
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `portvakt check-config --config FILE`.
pub fn check_config(path: &Path) -> RunOutput {
    run(
        Command::new(portvakt_bin())
            .arg("check-config")
            .arg("--config")
            .arg(path)
            .env_remove("PORTVAKT_CONFIG"),
        None,
        RUN_TIMEOUT,
    )
}

/// What an HTTP GET answered.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first header of this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.1, `Connection: close`), or an
/// error when nothing answers (the metrics listener is not up yet).
pub fn try_http_get(port: u16, path: &str) -> std::io::Result<HttpResponse> {
    use std::io::{Error, Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let bad = |why: &str| Error::other(format!("{why}: {:?}", String::from_utf8_lossy(&raw)));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("bad chunk"))?;
            let size_text = String::from_utf8_lossy(&rest[..eol]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size + 2 {
                return Err(bad("short chunk"));
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `GET path` on 127.0.0.1:`port`, waiting (up to a minute) for the listener
/// to come up; panics if it never answers.
pub fn http_get(port: u16, path: &str) -> HttpResponse {
    let mut last = None;
    poll_for(Duration::from_secs(60), || match try_http_get(port, path) {
        Ok(r) => Some(r),
        Err(e) => {
            last = Some(e);
            None
        }
    })
    .unwrap_or_else(|| panic!("GET http://127.0.0.1:{port}{path} never answered: {last:?}"))
}

/// The `/metrics` text of the node whose `[metrics] listen` port is `port`.
pub fn scrape_metrics(port: u16) -> String {
    let r = http_get(port, "/metrics");
    assert_eq!(r.status, 200, "GET /metrics: {r:?}");
    r.body
}
