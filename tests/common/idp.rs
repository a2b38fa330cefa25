//! The test identity provider (tests/idp/, npm `oidc-provider` run by node):
//! started per test on a port it picks itself, stopped when dropped.
//!
//! It prints exactly one line on stdout, `IDP READY <issuer>`; its request log
//! (stderr) goes to a file in the test's folder and is shown when a test fails.
//! `POST /test/approve` drives the provider's own device pages, as a browser
//! would; [`Idp::approve`] and [`Idp::deny`] call it.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use super::config::Oidc;
use super::proc::{ChildGuard, READY_TIMEOUT, run};

/// The client the test IdP knows (its default `IDP_CLIENT_ID`).
pub const CLIENT_ID: &str = "portvakt";
/// Its default secret (`IDP_CLIENT_SECRET`).
pub const CLIENT_SECRET: &str = "portvakt-secret";

/// The folder of the test IdP (package.json, server.mjs).
pub fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("idp")
}

/// Runs `npm ci` in tests/idp once per test binary, when its packages are
/// not installed yet (the committed package-lock.json pins them).
fn ensure_installed() {
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    let mut done = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return;
    }
    let dir = idp_dir();
    if !dir.join("node_modules").join("oidc-provider").is_dir() {
        let out = run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir),
            None,
            Duration::from_secs(600),
        );
        assert!(
            out.status.success(),
            "npm ci in {} failed: {out}",
            dir.display()
        );
    }
    *done = true;
}

/// How a test wants its IdP (the environment of tests/idp/README.md).
#[derive(Clone, Debug, Default)]
pub struct IdpOptions {
    /// `IDP_ID_TOKEN_ALG`: `RS256` (default) or `ES256`.
    pub id_token_alg: Option<String>,
    /// `IDP_CLIENT_SECRET`: `Some("")` makes the client public.
    pub client_secret: Option<String>,
    /// `IDP_DEVICE_TTL` in seconds.
    pub device_ttl: Option<u32>,
    /// `IDP_DEVICE_INTERVAL` in seconds (the server's default is 1).
    pub device_interval: Option<u32>,
    /// `IDP_USERS`, a JSON object replacing the static users.
    pub users: Option<Value>,
    /// `IDP_REDIRECT_URIS`: the code flow (browser logins) for these.
    pub redirect_uris: Vec<String>,
}

impl IdpOptions {
    pub fn new() -> IdpOptions {
        IdpOptions::default()
    }

    pub fn id_token_alg(mut self, alg: &str) -> Self {
        self.id_token_alg = Some(alg.to_string());
        self
    }

    /// A public client: no secret at the token endpoint.
    pub fn public_client(mut self) -> Self {
        self.client_secret = Some(String::new());
        self
    }

    pub fn device_ttl(mut self, seconds: u32) -> Self {
        self.device_ttl = Some(seconds);
        self
    }

    /// `IDP_USERS`: these users instead of the static ones.
    pub fn users(mut self, users: Value) -> Self {
        self.users = Some(users);
        self
    }

    /// Let the client log browsers in (code flow) back to `uri`.
    pub fn redirect_uri(mut self, uri: &str) -> Self {
        self.redirect_uris.push(uri.to_string());
        self
    }
}

/// What `POST /test/approve` answered.
#[derive(Clone, Debug)]
pub struct ApproveResult {
    pub status: u16,
    pub body: Value,
}

impl ApproveResult {
    pub fn ok(&self) -> bool {
        self.status == 200 && self.body.get("ok") == Some(&Value::Bool(true))
    }
}

/// A running test IdP, killed when dropped.
pub struct Idp {
    process: ChildGuard,
    /// `http://127.0.0.1:PORT`, exactly as the provider names itself.
    pub issuer: String,
    pub port: u16,
    pub log_path: PathBuf,
    /// The client secret file for portvakt's `[oidc]` (confidential client).
    secret_file: Option<PathBuf>,
}

impl Idp {
    /// Starts the IdP with its defaults (confidential client, RS256).
    pub fn start(dir: &Path) -> Idp {
        Idp::start_with(dir, &IdpOptions::default())
    }

    /// Starts the IdP as `options` say and waits for its READY line.
    pub fn start_with(dir: &Path, options: &IdpOptions) -> Idp {
        ensure_installed();
        let idp_dir = idp_dir();
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::SeqCst);
        let log_path = dir.join(format!("idp-{n}.stderr.log"));
        let log = fs::File::create(&log_path).expect("create IdP log");
        let mut cmd = Command::new("node");
        cmd.arg(idp_dir.join("server.mjs"))
            .current_dir(&idp_dir)
            .env("IDP_PORT", "0")
            .env_remove("IDP_USERS")
            .env_remove("IDP_CLIENT_ID")
            .env_remove("IDP_CLIENT_SECRET")
            .env_remove("IDP_ID_TOKEN_ALG")
            .env_remove("IDP_DEVICE_TTL")
            .env_remove("IDP_DEVICE_INTERVAL")
            .env_remove("IDP_REDIRECT_URIS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(alg) = &options.id_token_alg {
            cmd.env("IDP_ID_TOKEN_ALG", alg);
        }
        if let Some(secret) = &options.client_secret {
            cmd.env("IDP_CLIENT_SECRET", secret);
        }
        if let Some(ttl) = options.device_ttl {
            cmd.env("IDP_DEVICE_TTL", ttl.to_string());
        }
        if let Some(interval) = options.device_interval {
            cmd.env("IDP_DEVICE_INTERVAL", interval.to_string());
        }
        if !options.redirect_uris.is_empty() {
            cmd.env("IDP_REDIRECT_URIS", options.redirect_uris.join(","));
        }
        if let Some(users) = &options.users {
            cmd.env("IDP_USERS", users.to_string());
        }
        let mut process = ChildGuard::spawn_configured("idp", &mut cmd, Some(&log_path));

        // The READY line; stdout stays drained afterwards (nothing more comes).
        let stdout = process.take_stdout();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let first = reader.read_line(&mut line).map(|_| line.clone());
            let _ = tx.send(first);
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
        });
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => panic!("reading the IdP's stdout: {e}"),
            Err(_) => {
                process.assert_running();
                panic!(
                    "the IdP printed no READY line within {READY_TIMEOUT:?}; log:\n{}",
                    process.log_text()
                );
            }
        };
        let issuer = line
            .trim()
            .strip_prefix("IDP READY ")
            .unwrap_or_else(|| {
                process.assert_running();
                panic!(
                    "unexpected first line from the IdP: {line:?}; log:\n{}",
                    process.log_text()
                )
            })
            .to_string();
        let port: u16 = issuer
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in issuer {issuer:?}"));

        let secret_file = match options.client_secret.as_deref() {
            Some("") => None,
            other => {
                let path = dir.join(format!("oidc_secret-{port}"));
                fs::write(&path, format!("{}\n", other.unwrap_or(CLIENT_SECRET)))
                    .expect("write oidc secret");
                Some(path)
            }
        };
        Idp {
            process,
            issuer,
            port,
            log_path,
            secret_file,
        }
    }

    /// portvakt's `[oidc]` for this IdP: the issuer, the static client and,
    /// for a confidential client, a file holding its secret.
    pub fn oidc(&self) -> Oidc {
        let oidc = Oidc::new(&self.issuer, CLIENT_ID);
        match &self.secret_file {
            Some(path) => oidc.client_secret_file(path),
            None => oidc,
        }
    }

    /// What the IdP logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Stops the IdP (SIGKILL): it is unreachable from now on.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Panics with the log if the IdP has exited.
    pub fn assert_running(&mut self) {
        self.process.assert_running();
    }

    /// Approves `user_code` as `username` with `password` at the provider's
    /// own pages.
    pub fn approve(&self, user_code: &str, username: &str, password: &str) -> ApproveResult {
        self.test_approve(json!({
            "user_code": user_code,
            "username": username,
            "password": password,
            "decision": "approve",
        }))
    }

    /// Denies `user_code` at the provider's own pages.
    pub fn deny(&self, user_code: &str) -> ApproveResult {
        self.test_approve(json!({"user_code": user_code, "decision": "deny"}))
    }

    fn test_approve(&self, body: Value) -> ApproveResult {
        let (status, text) = http_request(self.port, "POST", "/test/approve", Some(&body));
        ApproveResult {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    /// `GET path` on the IdP, parsed as JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let (status, text) = http_request(self.port, "GET", path, None);
        assert_eq!(status, 200, "GET {path} answered {status}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"))
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port` (Connection: close); returns the
/// status and the body. Enough for the IdP's small JSON answers.
pub fn http_request(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to the IdP on port {port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .expect("send the HTTP request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .unwrap_or_else(|e| panic!("read the answer to {method} {path}: {e}"));
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, rest) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header end in {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
