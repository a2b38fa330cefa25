//! The end-to-end test harness: real OpenSSH programs, real TCP peers, and
//! portvakt itself, each test in its own temporary folder on 127.0.0.1
//! ports chosen at run time.
//!
//! Building blocks:
//! - [`TestEnv`]: the per-test folder, with shortcuts for keys and CAs;
//! - [`UserKey`], [`UserCa`] + [`CertSpec`], [`SshAgent`] (keys.rs);
//! - [`Sshd`], a real target sshd (sshd.rs);
//! - [`EchoServer`], [`SinkServer`], [`SourceServer`], [`StallServer`], [`DeadTarget`] (net.rs);
//! - [`Config`], [`Target`], [`User`]: the portvakt config file (config.rs);
//! - [`Browser`], a cookie-keeping HTTP client for the review console and
//!   the IdP's login pages (console.rs);
//! - [`Portvakt`] and the audit rows read back through its CLI (portvakt.rs),
//!   on SQLite or a fresh PostgreSQL database (database.rs);
//! - [`SshClient`], `ssh -F` with a generated config (client.rs);
//! - [`Idp`], the test identity provider (idp.rs), and [`Askpass`], the
//!   `SSH_ASKPASS` program that approves there and types TOTP codes (askpass.rs);
//! - `raw_client::ssh_rsa_sha1_login`, the one attempt OpenSSH cannot make (raw_client.rs);
//! - [`WebDriver`] and [`Chromium`], headless Chromium over WebDriver (webdriver.rs);
//! - [`ChildGuard`], [`run`], [`poll_until`], [`free_port`] (proc.rs).
//!
//! Each test binary uses only part of this, hence the allowances.
#![allow(dead_code, unused_imports)]

pub mod askpass;
pub mod attack;
pub mod client;
pub mod config;
pub mod console;
pub mod database;
pub mod hostile;
pub mod idp;
pub mod keys;
pub mod net;
pub mod portvakt;
pub mod proc;
pub mod raw_client;
pub mod sshd;
pub mod webdriver;

use std::path::{Path, PathBuf};

pub use askpass::{Askpass, Decision, Prompt, TotpAnswer};
pub use client::{BASTION, SshClient};
pub use config::{Config, Console, Mfa, Oidc, Target, User};
pub use console::Browser;
pub use idp::{Idp, IdpOptions};
pub use keys::{CertSpec, SshAgent, UserCa, UserKey};
pub use net::{
    DeadTarget, EchoServer, SinkServer, SourceServer, StallServer, TcpServer, random_bytes,
};
pub use portvakt::{
    AUDIT_KEYS, AUDIT_TIMEOUT, AuditEvent, Portvakt, SESSION_KEYS, SessionRow, check_config,
};
pub use proc::{ChildGuard, RunOutput, free_port, poll_for, poll_until, port_accepts, run};
pub use sshd::{Sshd, target_login_user};
pub use webdriver::{Chromium, WebDriver};
// Several nodes and metrics (issue 6).
pub use database::Database;
pub use portvakt::{HttpResponse, http_get, scrape_metrics, try_http_get};

/// One test's world: a temporary folder that everything the test creates
/// lives in, removed when the test ends.
pub struct TestEnv {
    dir: tempfile::TempDir,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        TestEnv {
            dir: tempfile::Builder::new()
                .prefix("portvakt-e2e-")
                .tempdir()
                .expect("create temp dir"),
        }
    }

    /// The test's folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A new ed25519 key named `name` in the test's folder.
    pub fn key(&self, name: &str) -> UserKey {
        UserKey::ed25519(self.path(), name)
    }

    /// A new RSA key named `name` in the test's folder.
    pub fn rsa_key(&self, name: &str) -> UserKey {
        UserKey::rsa(self.path(), name)
    }

    /// A new certificate authority named `name`.
    pub fn ca(&self, name: &str) -> UserCa {
        UserCa::new(self.path(), name)
    }

    /// A new key named `name`, signed by `ca` as `spec` says; the client
    /// picks up the certificate beside the key.
    pub fn signed_key(&self, ca: &UserCa, name: &str, spec: &CertSpec) -> UserKey {
        let key = self.key(name);
        ca.sign(&key, spec);
        key
    }

    /// Writes `contents` to `name` in the test's folder.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    /// Starts portvakt with `config`.
    pub fn portvakt(&self, config: &Config) -> Portvakt {
        Portvakt::start(self.path(), config)
    }

    /// An `ssh` client of `portvakt`, logging in as `user`.
    pub fn client(&self, portvakt: &Portvakt, user: &str) -> SshClient {
        SshClient::to_portvakt(self.path(), portvakt, user)
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        TestEnv::new()
    }
}

/// Asserts that the OpenSSH client was refused at login: exit 255 and
/// "Permission denied" on stderr.
pub fn assert_login_refused(out: &RunOutput) {
    out.assert_code(255);
    out.assert_stderr_contains("Permission denied");
}

/// Asserts that a `direct-tcpip` open was refused with the policy text:
/// exit 255, "administratively prohibited" and "is not allowed for USER".
pub fn assert_forward_prohibited(out: &RunOutput, user: &str) {
    out.assert_code(255);
    out.assert_stderr_contains("administratively prohibited");
    out.assert_stderr_contains(&format!("is not allowed for {user}"));
}

/// Asserts that the audit trail holds no `auth.success` at all.
pub fn assert_no_login(portvakt: &Portvakt) {
    let events = portvakt.audit();
    assert!(
        !events.iter().any(|e| e.kind == "auth.success"),
        "expected no successful login, audit has:\n{}",
        portvakt::describe_events(&events)
    );
}

/// `ssh -W host:port bastion` with `input` on stdin: what `ssh -J` does for
/// its jump hop, with the target's bytes on stdout.
pub fn forward_stdio(client: &SshClient, host: &str, port: u16, input: &[u8]) -> RunOutput {
    client.run_with_input(&["-W", &format!("{host}:{port}"), BASTION], input.to_vec())
}

/// Sends a short line through `ssh -W host:port` to an echo target and
/// asserts it comes back: the login worked and the forward was allowed.
pub fn assert_echo_works(client: &SshClient, host: &str, port: u16) {
    let out = forward_stdio(client, host, port, b"ping through portvakt\n");
    out.assert_success();
    assert_eq!(
        out.stdout_text(),
        "ping through portvakt\n",
        "echo mismatch: {out}"
    );
}

/// Asserts a login was refused, that `auth.failure` with `reason` for `user`
/// was audited, and that no login succeeded at all.
pub fn assert_refused_and_audited(portvakt: &Portvakt, out: &RunOutput, user: &str, reason: &str) {
    assert_login_refused(out);
    let event = portvakt.wait_for_event("auth.failure", reason);
    assert_eq!(
        event.user.as_deref(),
        Some(user),
        "auth.failure {reason} names the wrong user: {event:?}"
    );
    assert_no_login(portvakt);
}
