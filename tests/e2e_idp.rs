//! IdP device-flow logins, TOTP and login grants (issue 3), end to end: the
//! stock OpenSSH client answers keyboard-interactive prompts through an
//! `SSH_ASKPASS` program that approves at the test identity provider (npm
//! `oidc-provider`, tests/idp/) and types TOTP codes; portvakt's verdicts are
//! read back through its CLI (`audit list`, `sessions list`, `grants list`).

mod common;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::askpass::str_field;
use common::idp::CLIENT_ID;
use common::*;
use serde_json::Value;

/// The first line sent through a forward.
const PING: &[u8] = b"ping through portvakt\n";
/// How long a live forward may take to be closed after its grant ends (the
/// grant watcher polls every 2 s; a debug build on a busy machine is slow).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// One test's IdP, echo target and portvakt. Field order is drop order:
/// processes first, the folder last.
struct World {
    pv: Portvakt,
    /// `None` for a portvakt without `[oidc]`.
    idp: Option<Idp>,
    echo: TcpServer,
    env: TestEnv,
}

impl World {
    /// In `env`: an IdP started with `options`, an echo target named `echo`
    /// allowed for group `sre` only, and portvakt with `[oidc]` for that IdP
    /// plus what `tweak` adds.
    fn start_in(
        env: TestEnv,
        options: &IdpOptions,
        tweak: impl FnOnce(Config, &Idp, &TcpServer) -> Config,
    ) -> World {
        let idp = Idp::start_with(env.path(), options);
        let echo = EchoServer::start();
        let config = Config::new()
            .oidc(idp.oidc())
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_groups(&["sre"]));
        let config = tweak(config, &idp, &echo);
        let pv = env.portvakt(&config);
        World {
            pv,
            idp: Some(idp),
            echo,
            env,
        }
    }

    fn idp(&self) -> &Idp {
        self.idp.as_ref().expect("this test has an IdP")
    }

    fn start(
        options: &IdpOptions,
        tweak: impl FnOnce(Config, &Idp, &TcpServer) -> Config,
    ) -> World {
        World::start_in(TestEnv::new(), options, tweak)
    }

    fn new() -> World {
        World::start(&IdpOptions::new(), |c, _, _| c)
    }

    /// An askpass program approving at this IdP as `user` / `password`.
    fn askpass(&self, user: &str, password: &str) -> Askpass {
        Askpass::new(
            self.env.path(),
            self.idp(),
            Decision::approve(user, password),
        )
    }

    /// A client logging in as `user` with `key` (BatchMode yes unless run
    /// through an askpass program).
    fn client(&self, user: &str, key: &UserKey) -> SshClient {
        self.env.client(&self.pv, user).identity(key)
    }

    /// `ssh -W echo:PORT bastion` through `askpass`, with one line of input.
    fn askpass_forward(&self, askpass: &Askpass, client: &SshClient) -> RunOutput {
        askpass.run_with_input(client, &["-W", &self.echo_dest(), BASTION], PING)
    }

    /// The same without prompts (BatchMode yes): what a grant allows.
    fn batch_forward(&self, client: &SshClient) -> RunOutput {
        forward_stdio(client, "echo", self.echo.port, PING)
    }

    fn echo_dest(&self) -> String {
        format!("echo:{}", self.echo.port)
    }

    /// A full interactive login of `client` through `askpass` that reaches
    /// the echo target; returns the output.
    fn login(&self, askpass: &Askpass, client: &SshClient) -> RunOutput {
        let out = self.askpass_forward(askpass, client);
        assert_echoed(&out, &format!("prompts:\n{}", askpass.describe()));
        out
    }

    /// `grants list --json` (valid grants only unless `all`).
    fn grants(&self, all: bool) -> Vec<Value> {
        let mut args = vec!["grants", "list", "--json"];
        if all {
            args.push("--all");
        }
        match self.pv.cli_json(&args) {
            Value::Array(rows) => rows,
            other => panic!("grants list --json is not an array: {other}"),
        }
    }

    /// Waits for `auth.success` of `user` with login method `method`.
    fn wait_login(&self, user: &str, method: &str) -> AuditEvent {
        self.pv
            .wait_for_audit(&format!("auth.success of {user} by {method}"), |e| {
                e.kind == "auth.success"
                    && e.user.as_deref() == Some(user)
                    && e.detail_str("method") == Some(method)
            })
    }

    /// Waits for `auth.failure` of `user` with `reason`.
    fn wait_failure(&self, user: &str, reason: &str) -> AuditEvent {
        let event = self.pv.wait_for_event("auth.failure", reason);
        assert_eq!(event.user.as_deref(), Some(user), "{event:?}");
        event
    }

    /// How many events of `kind` the audit trail holds whose detail `method` is `method`.
    fn count(&self, kind: &str, method: &str) -> usize {
        self.pv
            .audit()
            .iter()
            .filter(|e| e.kind == kind && e.detail_str("method") == Some(method))
            .count()
    }
}

impl World {
    /// Polls until `count(kind, method)` reaches `n`; returns the count.
    fn wait_count(&self, kind: &str, method: &str, n: usize) -> usize {
        let mut last = 0;
        let found = poll_for(AUDIT_TIMEOUT, || {
            last = self.count(kind, method);
            (last >= n).then_some(last)
        });
        found.unwrap_or_else(|| {
            panic!(
                "expected {n} {kind} events with method {method} within {AUDIT_TIMEOUT:?}, saw {last}:\n{}",
                common::portvakt::describe_events(&self.pv.audit())
            )
        })
    }

    /// How many `kind` events with `reason` for `user` the audit trail holds.
    fn count_reason(&self, kind: &str, reason: &str, user: &str) -> usize {
        self.pv
            .audit()
            .iter()
            .filter(|e| e.is(kind, reason) && e.user.as_deref() == Some(user))
            .count()
    }

    /// Polls until there are `n` `kind` events with `reason` for `user`.
    fn wait_count_reason(&self, kind: &str, reason: &str, user: &str, n: usize) {
        let found = poll_for(AUDIT_TIMEOUT, || {
            (self.count_reason(kind, reason, user) >= n).then_some(())
        });
        assert!(
            found.is_some(),
            "expected {n} {kind} {reason} events for {user}:\n{}",
            common::portvakt::describe_events(&self.pv.audit())
        );
    }

    /// `portvakt totp enroll USER --json`: the new base32 secret.
    fn enrol(&self, user: &str) -> String {
        let enrolled = self.pv.cli_json(&["totp", "enroll", user, "--json"]);
        assert_eq!(str_field(&enrolled, "user"), user, "{enrolled}");
        let secret = str_field(&enrolled, "secret").to_string();
        let uri = str_field(&enrolled, "uri");
        assert!(
            uri.starts_with(&format!("otpauth://totp/portvakt:{user}?"))
                && uri.contains(&format!("secret={secret}")),
            "{enrolled}"
        );
        secret
    }

    /// The id of the one valid grant of `user`.
    fn grant_id(&self, user: &str) -> i64 {
        let grants: Vec<Value> = self
            .grants(false)
            .into_iter()
            .filter(|g| g["user"] == user)
            .collect();
        assert_eq!(grants.len(), 1, "one valid grant of {user}: {grants:?}");
        grants[0]["id"].as_i64().expect("grant id")
    }
}

/// A login attempt that was refused; `prompts` explains what the helper saw.
fn assert_refused(out: &RunOutput, prompts: &Askpass) {
    assert!(
        out.code() == 255 && out.stderr.contains("Permission denied"),
        "expected a refused login: {out}\nprompts:\n{}",
        prompts.describe()
    );
}

/// The echo target sent back exactly the ping.
fn assert_echoed(out: &RunOutput, context: &str) {
    assert!(
        out.code() == 0 && out.stdout == PING,
        "expected the ping echoed back through portvakt: {out}\n{context}"
    );
}

/// A `ssh -W` forward that stays open: started, and proven to carry bytes.
struct LiveForward {
    ssh: ChildGuard,
    /// What the target sent back, chunk by chunk (read on a helper thread).
    from_target: mpsc::Receiver<Vec<u8>>,
}

impl LiveForward {
    fn start(mut ssh: ChildGuard, context: &str) -> LiveForward {
        let mut stdout = ssh.take_stdout();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let mut forward = LiveForward {
            ssh,
            from_target: rx,
        };
        forward.ping(context);
        forward
    }

    /// Sends a line and waits for its echo (the forward carries bytes).
    fn ping(&mut self, context: &str) {
        self.ssh
            .stdin()
            .write_all(PING)
            .expect("write to the live forward");
        self.ssh.stdin().flush().expect("flush the live forward");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = Vec::new();
        while got.len() < PING.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from_target.recv_timeout(left) {
                Ok(chunk) => got.extend_from_slice(&chunk),
                Err(_) => {
                    self.ssh.assert_running();
                    panic!(
                        "no echo through the live forward (got {:?}); ssh log:\n{}\n{context}",
                        String::from_utf8_lossy(&got),
                        self.ssh.log_text()
                    );
                }
            }
        }
        assert_eq!(got, PING, "echo mismatch through the live forward");
    }

    /// Waits until portvakt has closed the forward and ssh has exited.
    fn wait_closed(&mut self, why: &str) {
        let ssh = &mut self.ssh;
        let status = poll_for(CLOSE_TIMEOUT, || ssh.try_wait());
        assert!(
            status.is_some(),
            "the live forward was still open {CLOSE_TIMEOUT:?} after {why}; ssh log:\n{}",
            self.ssh.log_text()
        );
    }
}

// ------------------------------------------------------------------ 1

#[test]
fn idp_and_totp_login_self_enrols_and_reaches_a_group_target() {
    let w = World::new();
    let key = w.env.key("alice");
    let askpass = w.askpass("alice", "alice-pw");

    w.login(&askpass, &w.client("alice", &key));
    let enrolled =
        w.pv.wait_for_audit("totp.enroll", |e| e.kind == "totp.enroll");
    assert_eq!(enrolled.user.as_deref(), Some("alice"), "{enrolled:?}");
    assert_eq!(enrolled.detail_str("by"), Some("self"), "{enrolled:?}");
    assert!(
        enrolled.source.is_some(),
        "self-enrolment names the source: {enrolled:?}"
    );

    // The device prompt as the client showed it: URL with the code, the
    // code itself, and the Enter instruction, in the prompt text itself.
    let devices = askpass.prompts_of("device");
    assert_eq!(devices.len(), 1, "one device flow:\n{}", askpass.describe());
    let device = &devices[0];
    let code = device.user_code.clone().expect("a user code in the prompt");
    assert!(
        device
            .prompt
            .contains(&format!("{}/device?user_code={code}", w.idp().issuer)),
        "the prompt lacks the complete verification URL: {:?}",
        device.prompt
    );
    assert!(
        device.prompt.contains(&format!("shows the code {code}")),
        "{:?}",
        device.prompt
    );
    assert!(
        device
            .prompt
            .trim_end()
            .ends_with("Press Enter once you have approved:"),
        "{:?}",
        device.prompt
    );
    assert_eq!(device.approve_status, Some(200), "{device:?}");

    // Self-enrolment: QR code, URI and secret, confirmed with a first code.
    let enrols = askpass.prompts_of("enroll");
    assert_eq!(enrols.len(), 1, "{}", askpass.describe());
    let enrol = &enrols[0];
    let secret = enrol
        .secret
        .clone()
        .expect("secret in the enrolment prompt");
    assert!(enrol.prompt.contains("TOTP"), "{:?}", enrol.prompt);
    assert!(
        enrol.prompt.contains("otpauth://totp/portvakt:alice?")
            && enrol.prompt.contains(&format!("secret={secret}")),
        "no otpauth URI with the secret: {:?}",
        enrol.prompt
    );
    assert!(
        enrol.prompt.contains('▀') || enrol.prompt.contains('▄') || enrol.prompt.contains('█'),
        "no QR code drawn: {:?}",
        enrol.prompt
    );
    // The code the helper typed is the RFC 6238 code of that secret (checked
    // here independently of both portvakt and the helper).
    let step = enrol.step.expect("a fresh code's step");
    assert_eq!(enrol.answer, common::askpass::totp_code(&secret, step * 30));
    assert!(
        askpass.prompts_of("totp").is_empty(),
        "{}",
        askpass.describe()
    );

    // Audited: the grant, bound to the key, and the login by IdP + TOTP.
    let fp = key.fingerprint();
    let created = w.pv.wait_for_audit("grant.create for alice", |e| {
        e.kind == "grant.create" && e.user.as_deref() == Some("alice")
    });
    assert_eq!(
        created.detail_str("method"),
        Some("oidc+totp"),
        "{created:?}"
    );
    assert_eq!(
        created.detail_str("key_fingerprint"),
        Some(fp.as_str()),
        "{created:?}"
    );
    let success = w.wait_login("alice", "oidc+totp");
    assert_eq!(
        success.detail.get("grant_id"),
        created.detail.get("grant_id"),
        "{success:?} vs {created:?}"
    );
    let row = w.pv.wait_for_session("alice's forward", |r| {
        r.user.as_deref() == Some("alice") && r.ended_at.is_some()
    });
    assert_eq!(row.auth_method.as_deref(), Some("oidc+totp"), "{row:?}");
    assert_eq!(row.target.as_deref(), Some("echo"), "{row:?}");
    assert_eq!(row.result, "allowed", "{row:?}");

    let grants = w.grants(false);
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(str_field(&grants[0], "user"), "alice");
    assert_eq!(str_field(&grants[0], "method"), "oidc+totp");
    assert_eq!(str_field(&grants[0], "key_fingerprint"), fp);
    assert!(grants[0]["revoked_at"].is_null(), "{:?}", grants[0]);
    assert_eq!(
        Some(&grants[0]["id"]),
        created.detail.get("grant_id"),
        "{grants:?}"
    );

    // The secret was stored: an admin cannot enrol alice a second time.
    let again = w.pv.cli(&["totp", "enroll", "alice", "--json"]);
    assert_eq!(again.code(), 1, "{again}");
    assert!(
        again.stderr.contains("already has a TOTP secret"),
        "{again}"
    );
}

// ------------------------------------------------------------------ 2

#[test]
fn a_grant_logs_the_same_key_in_again_and_again_without_prompts() {
    let env = TestEnv::new();
    let login_user = target_login_user();
    let target_key = env.key("target");
    let sshd = Sshd::start(env.path(), &[&target_key], None);
    let sshd_port = sshd.port;
    let w = World::start_in(env, &IdpOptions::new(), |c, _, echo| {
        c.target(Target::host("db-1", "127.0.0.1", sshd_port).allow_groups(&["sre"]))
            .target(Target::host("dev-echo", "127.0.0.1", echo.port).allow_groups(&["dev"]))
    });
    let key = w.env.key("alice");
    let askpass = w.askpass("alice", "alice-pw");

    // `ssh -J alice@bastion db-1` as the README has it: the IdP login and
    // TOTP happen on the jump hop, answered through askpass.
    let jump = w
        .client("alice", &key)
        .target("db-1", &sshd, &login_user, &target_key);
    let out = askpass.run(&jump, &["db-1", "echo", "hello"]);
    assert!(
        out.code() == 0 && out.stdout_text() == "hello\n",
        "ProxyJump with an IdP login: {out}\nprompts:\n{}",
        askpass.describe()
    );
    w.wait_login("alice", "oidc+totp");
    let grant = w.grant_id("alice");
    let prompts = askpass.prompts().len();
    assert_eq!(
        askpass.prompts_of("device").len(),
        1,
        "{}",
        askpass.describe()
    );

    // BatchMode yes: the client cannot answer any prompt, so only the key
    // and its grant can log in. Repeated use, as scp or Ansible would.
    let batch = w.client("alice", &key);
    let batch_jump = batch
        .clone()
        .target("db-1", &sshd, &login_user, &target_key);
    for _ in 0..3 {
        assert_echoed(&w.batch_forward(&batch), "forward by grant");
        let out = batch_jump.run(&["db-1", "echo", "again"]);
        assert!(
            out.code() == 0 && out.stdout_text() == "again\n",
            "ProxyJump by grant: {out}"
        );
    }
    // With the askpass program at hand (BatchMode no), still no prompt.
    w.login(&askpass, &w.client("alice", &key));
    assert_eq!(
        askpass.prompts().len(),
        prompts,
        "a grant login asked something:\n{}",
        askpass.describe()
    );
    w.wait_count("auth.success", "grant", 7);
    for e in
        w.pv.audit()
            .iter()
            .filter(|e| e.kind == "auth.success" && e.detail_str("method") == Some("grant"))
    {
        assert_eq!(e.detail.get("grant_id"), Some(&Value::from(grant)), "{e:?}");
        assert_eq!(e.user.as_deref(), Some("alice"), "{e:?}");
    }
    assert_eq!(w.count("auth.success", "oidc+totp"), 1);
    assert_eq!(w.grants(false).len(), 1, "no new grant for grant logins");
    let rows =
        w.pv.sessions_filtered(&["--user", "alice"])
            .into_iter()
            .filter(|r| r.auth_method.as_deref() == Some("grant"))
            .count();
    assert!(
        rows >= 6,
        "forwards by grant recorded with auth_method grant: {rows}"
    );

    // `ssh alice@bastion`: who, until when (the grant's expiry), where to.
    let expires = str_field(&w.grants(false)[0], "expires_at").to_string();
    let out = batch.run(&[BASTION]);
    out.assert_code(1);
    for needle in [
        "You are alice (login: grant; groups: dba, sre)",
        &format!("Your login grant is valid until {expires}."),
        "Targets you may use:",
        "db-1",
    ] {
        assert!(out.stderr.contains(needle), "{needle:?} missing: {out}");
    }
    assert!(!out.stderr.contains("dev-echo"), "{out}");

    // Groups come from the IdP: sre opens `echo` and `db-1` (above); dev
    // (bob's group, not alice's) does not open `dev-echo`.
    let out = forward_stdio(
        &batch.clone().log_level("INFO"),
        "dev-echo",
        w.echo.port,
        PING,
    );
    assert_forward_prohibited(&out, "alice");
    let denied = w.pv.wait_for_event("forward.denied", "user_not_allowed");
    assert_eq!(denied.detail_str("target"), Some("dev-echo"), "{denied:?}");
}

// ------------------------------------------------------------------ 3

#[test]
fn revoking_a_users_grants_ends_live_forwards_and_asks_for_a_full_login() {
    let w = World::new();
    let key = w.env.key("alice");
    let askpass = w.askpass("alice", "alice-pw");
    w.login(&askpass, &w.client("alice", &key));
    let grant = w.grant_id("alice");

    let batch = w.client("alice", &key);
    let mut live = LiveForward::start(
        batch.spawn(&["-W", &w.echo_dest(), BASTION]),
        "forward by grant",
    );
    w.wait_login("alice", "grant");

    let out = w.pv.cli(&["grants", "revoke", "--user", "alice"]);
    out.assert_success();
    assert!(
        out.stdout_text()
            .contains(&format!("revoked grant {grant} of alice")),
        "{out}"
    );

    // (The SSH disconnect text "your login grant was revoked" is not
    // asserted: portvakt may close the forward's channel before the
    // DISCONNECT goes out, and `ssh -W` then ends without reading it.)
    live.wait_closed("grants revoke --user alice");
    let row =
        w.pv.wait_for_session("the forward closed by the revocation", |r| {
            r.auth_method.as_deref() == Some("grant") && r.ended_at.is_some()
        });
    assert_eq!(
        row.close_reason.as_deref(),
        Some("grant_revoked"),
        "{row:?}"
    );
    w.pv.wait_for_event("connection.close", "grant_revoked");
    let revoke = w.pv.wait_for_event("grant.revoke", "revoked_by_admin");
    assert_eq!(revoke.detail.get("grant_id"), Some(&Value::from(grant)));
    assert_eq!(revoke.user.as_deref(), Some("alice"));
    assert!(w.grants(false).is_empty(), "{:?}", w.grants(false));
    let all = w.grants(true);
    assert!(!all[0]["revoked_at"].is_null(), "{all:?}");

    // The key alone no longer logs in.
    let incomplete = w.count_reason("auth.failure", "login_incomplete", "alice");
    assert_refused(&w.batch_forward(&batch), &askpass);
    w.wait_count_reason("auth.failure", "login_incomplete", "alice", incomplete + 1);
    assert_eq!(
        w.count("auth.success", "grant"),
        1,
        "no login by the revoked grant"
    );

    // A full login (a second device flow and a TOTP code) makes a new grant.
    w.login(&askpass, &w.client("alice", &key));
    assert_eq!(
        askpass.prompts_of("device").len(),
        2,
        "{}",
        askpass.describe()
    );
    assert_eq!(
        askpass.prompts_of("totp").len(),
        1,
        "{}",
        askpass.describe()
    );
    assert!(w.grant_id("alice") != grant);
}

#[test]
fn revoking_one_grant_by_id_leaves_the_other_keys_grant() {
    let w = World::new();
    let laptop = w.env.key("laptop");
    let desktop = w.env.key("desktop");
    let askpass = w.askpass("alice", "alice-pw");
    w.login(&askpass, &w.client("alice", &laptop));
    let laptop_grant = w.grant_id("alice");
    w.login(&askpass, &w.client("alice", &desktop));
    let grants = w.grants(false);
    assert_eq!(grants.len(), 2, "{grants:?}");
    let desktop_fp = desktop.fingerprint();
    assert!(
        grants
            .iter()
            .any(|g| g["key_fingerprint"] == desktop_fp.as_str() && g["id"] != laptop_grant),
        "{grants:?}"
    );

    w.pv.cli(&["grants", "revoke", &laptop_grant.to_string()])
        .assert_success();
    let revoke = w.pv.wait_for_event("grant.revoke", "revoked_by_admin");
    assert_eq!(
        revoke.detail.get("grant_id"),
        Some(&Value::from(laptop_grant))
    );
    assert_eq!(
        revoke.detail_str("key_fingerprint"),
        Some(laptop.fingerprint().as_str())
    );

    assert_refused(&w.batch_forward(&w.client("alice", &laptop)), &askpass);
    assert_echoed(
        &w.batch_forward(&w.client("alice", &desktop)),
        "the other key's grant still holds",
    );
    // Revoking it again: nothing valid to revoke.
    let again = w.pv.cli(&["grants", "revoke", &laptop_grant.to_string()]);
    assert_eq!(again.code(), 1, "{again}");
}

#[test]
fn logout_revokes_the_grant_and_ends_its_other_connections() {
    let w = World::new();
    let key = w.env.key("alice");
    let askpass = w.askpass("alice", "alice-pw");
    w.login(&askpass, &w.client("alice", &key));
    let grant = w.grant_id("alice");
    let batch = w.client("alice", &key);
    let mut live = LiveForward::start(
        batch.spawn(&["-W", &w.echo_dest(), BASTION]),
        "forward by grant",
    );

    let out = batch.run(&[BASTION, "logout"]);
    out.assert_success();
    assert!(
        out.stdout_text().contains("your login grant is revoked"),
        "{out}"
    );
    let revoke = w.pv.wait_for_event("grant.revoke", "logout");
    assert_eq!(revoke.detail.get("grant_id"), Some(&Value::from(grant)));
    assert_eq!(revoke.user.as_deref(), Some("alice"));

    live.wait_closed("logout");
    let row = w.pv.wait_for_session("the forward ended by logout", |r| {
        r.auth_method.as_deref() == Some("grant") && r.ended_at.is_some()
    });
    assert_eq!(
        row.close_reason.as_deref(),
        Some("grant_revoked"),
        "{row:?}"
    );
    assert!(w.grants(false).is_empty(), "{:?}", w.grants(false));
    assert_refused(&w.batch_forward(&batch), &askpass);
}

// ------------------------------------------------------------------ 4

#[test]
fn an_expired_grant_ends_its_forward_and_needs_the_full_login_again() {
    let w = World::start(&IdpOptions::new(), |c, _, _| c.grant_ttl("5s"));
    let key = w.env.key("alice");
    let askpass = w.askpass("alice", "alice-pw");
    let client = w.client("alice", &key);

    // The login's own connection lives on its grant: it ends when the grant does.
    let mut live = LiveForward::start(
        askpass.spawn(&client, &["-W", &w.echo_dest(), BASTION]),
        &askpass.describe(),
    );
    let created =
        w.pv.wait_for_audit("grant.create", |e| e.kind == "grant.create");
    // (The disconnect text is not asserted; see the revocation test.)
    live.wait_closed("the 5 s grant expired");
    let row = w.pv.wait_for_session("the forward ended by expiry", |r| {
        r.user.as_deref() == Some("alice") && r.ended_at.is_some()
    });
    assert_eq!(row.auth_method.as_deref(), Some("oidc+totp"), "{row:?}");
    assert_eq!(
        row.close_reason.as_deref(),
        Some("grant_expired"),
        "{row:?}"
    );
    w.pv.wait_for_event("connection.close", "grant_expired");

    // Expired: not listed as valid, and the key alone is refused.
    assert!(w.grants(false).is_empty(), "{:?}", w.grants(false));
    assert_refused(&w.batch_forward(&w.client("alice", &key)), &askpass);

    // The full login again: device flow and TOTP, and a new grant.
    w.login(&askpass, &client);
    assert_eq!(
        askpass.prompts_of("device").len(),
        2,
        "{}",
        askpass.describe()
    );
    assert_eq!(
        askpass.prompts_of("totp").len(),
        1,
        "{}",
        askpass.describe()
    );
    w.wait_count("grant.create", "oidc+totp", 2);
    let second =
        w.pv.audit()
            .into_iter()
            .rfind(|e| e.kind == "grant.create")
            .expect("second grant");
    assert_ne!(
        second.detail.get("grant_id"),
        created.detail.get("grant_id")
    );
}

// ------------------------------------------------------------------ 5

#[test]
fn a_wrong_totp_code_is_refused_without_a_second_browser_round() {
    let w = World::new();
    let secret = w.enrol("alice");
    let key = w.env.key("alice");
    let mut askpass = w.askpass("alice", "alice-pw");
    askpass.set_secret(&secret);
    askpass.set_totp(TotpAnswer::Wrong);

    let out = w.askpass_forward(&askpass, &w.client("alice", &key));
    assert_refused(&out, &askpass);
    w.wait_failure("alice", "totp_invalid");

    // One IdP login serves every retry of the client; each TOTP try fails.
    let totps = askpass.prompts_of("totp");
    assert_eq!(
        askpass.prompts_of("device").len(),
        1,
        "{}",
        askpass.describe()
    );
    assert!(!totps.is_empty(), "{}", askpass.describe());
    assert!(totps.iter().all(|p| p.prompt.contains("TOTP")), "{totps:?}");
    w.wait_count_reason("auth.failure", "totp_invalid", "alice", totps.len());
    assert_no_login(&w.pv);
    assert!(w.grants(true).is_empty(), "{:?}", w.grants(true));
}

#[test]
fn a_replayed_totp_code_is_refused_on_another_connection() {
    let w = World::new();
    let secret = w.enrol("alice");
    let first_key = w.env.key("first");
    let second_key = w.env.key("second");
    let mut askpass = w.askpass("alice", "alice-pw");
    askpass.set_secret(&secret);
    // The next step's code, which one step of clock skew accepts: a replay
    // of it is a replay (not a stale code) for at least 60 s after it was
    // first typed, wherever in its 30 s step the test happens to run.
    askpass.set_totp(TotpAnswer::Next);

    w.login(&askpass, &w.client("alice", &first_key));
    let used = askpass.prompts_of("totp");
    assert_eq!(used.len(), 1, "{}", askpass.describe());
    let code = used[0].answer.clone();
    w.wait_login("alice", "oidc+totp");

    // The very same code, typed again on a new connection (another key, so no
    // grant helps): refused as a replay.
    askpass.set_totp(TotpAnswer::Fixed(code.clone()));
    let out = w.askpass_forward(&askpass, &w.client("alice", &second_key));
    assert_refused(&out, &askpass);
    w.wait_failure("alice", "totp_replayed");
    assert_eq!(
        w.count_reason("auth.failure", "totp_invalid", "alice"),
        0,
        "the replay was judged as a wrong code (too slow?)"
    );
    let replays = askpass.prompts_of("totp");
    assert!(replays[1..].iter().all(|p| p.answer == code), "{replays:?}");
    assert_eq!(w.count("auth.success", "oidc+totp"), 1);
    assert_eq!(w.grants(false).len(), 1, "no grant for the second key");
}

#[test]
fn a_device_code_denied_at_the_idp_is_refused() {
    let w = World::new();
    let key = w.env.key("alice");
    let askpass = Askpass::new(w.env.path(), w.idp(), Decision::Deny);

    let out = w.askpass_forward(&askpass, &w.client("alice", &key));
    assert_refused(&out, &askpass);
    w.wait_failure("alice", "idp_access_denied");

    let devices = askpass.prompts_of("device");
    assert!(!devices.is_empty(), "{}", askpass.describe());
    assert!(
        devices.iter().all(|p| p.approve_status == Some(200)),
        "the IdP did not take the denial: {devices:?}"
    );
    let failures = askpass.prompts_of("failure");
    assert!(
        failures
            .iter()
            .any(|p| p.prompt.contains("declined at the identity provider")),
        "{}",
        askpass.describe()
    );
    assert_no_login(&w.pv);
}

#[test]
fn an_expired_device_code_is_refused() {
    let w = World::start(&IdpOptions::new().device_ttl(3), |c, _, _| c);
    let key = w.env.key("alice");
    let askpass = Askpass::new(w.env.path(), w.idp(), Decision::Ignore);
    let client = w
        .client("alice", &key)
        .bastion_option("NumberOfPasswordPrompts 1");

    let out = w.askpass_forward(&askpass, &client);
    assert_refused(&out, &askpass);
    w.wait_failure("alice", "idp_code_expired");
    assert!(
        askpass
            .prompts_of("failure")
            .iter()
            .any(|p| p.prompt.contains("expired before it was approved")),
        "{}",
        askpass.describe()
    );
    assert_no_login(&w.pv);
}

#[test]
fn an_idp_user_other_than_the_ssh_user_is_refused() {
    let w = World::new();
    let key = w.env.key("carol");
    // carol's IdP account says preferred_username "carol-idp".
    let askpass = w.askpass("carol", "carol-pw");
    let client = w
        .client("carol", &key)
        .bastion_option("NumberOfPasswordPrompts 1");

    let out = w.askpass_forward(&askpass, &client);
    assert_refused(&out, &askpass);
    w.wait_failure("carol", "idp_user_mismatch");
    assert!(
        askpass
            .prompts_of("failure")
            .iter()
            .any(|p| p.prompt.contains("as carol-idp, not as carol")),
        "{}",
        askpass.describe()
    );
    assert!(
        askpass.prompts_of("enroll").is_empty(),
        "{}",
        askpass.describe()
    );
    assert_no_login(&w.pv);
    assert!(w.grants(true).is_empty());
}

#[test]
fn an_unreachable_idp_is_refused() {
    let env = TestEnv::new();
    let echo = EchoServer::start();
    // Nothing listens there.
    let issuer = format!("http://127.0.0.1:{}", free_port());
    let pv = env.portvakt(
        &Config::new()
            .oidc(Oidc::new(&issuer, CLIENT_ID))
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_groups(&["sre"])),
    );
    let key = env.key("alice");
    let askpass = Askpass::with_issuer(env.path(), &issuer, Decision::approve("alice", "alice-pw"));
    let client = env
        .client(&pv, "alice")
        .identity(&key)
        .bastion_option("NumberOfPasswordPrompts 1");

    let out = askpass.run_with_input(
        &client,
        &["-W", &format!("echo:{}", echo.port), BASTION],
        PING,
    );
    assert_refused(&out, &askpass);
    let event = pv.wait_for_event("auth.failure", "idp_unreachable");
    assert_eq!(event.user.as_deref(), Some("alice"), "{event:?}");
    assert!(
        askpass.prompts_of("device").is_empty(),
        "{}",
        askpass.describe()
    );
    assert!(
        askpass
            .prompts_of("failure")
            .iter()
            .any(|p| p.prompt.contains("cannot be reached")),
        "{}",
        askpass.describe()
    );
    assert_no_login(&pv);
}

#[test]
fn a_connection_starts_at_most_three_device_flows() {
    let w = World::new();
    let key = w.env.key("alice");
    let askpass = Askpass::new(w.env.path(), w.idp(), Decision::Deny);
    // More keyboard-interactive rounds than portvakt allows device flows.
    let client = w
        .client("alice", &key)
        .bastion_option("NumberOfPasswordPrompts 5");

    let out = w.askpass_forward(&askpass, &client);
    assert_refused(&out, &askpass);
    w.wait_failure("alice", "idp_flow_limit");
    let codes: std::collections::BTreeSet<String> = askpass
        .prompts_of("device")
        .into_iter()
        .filter_map(|p| p.user_code)
        .collect();
    assert_eq!(codes.len(), 3, "{}", askpass.describe());
    w.wait_count_reason("auth.failure", "idp_access_denied", "alice", 3);
    assert_no_login(&w.pv);
}

#[test]
fn a_wrong_client_secret_is_refused_as_an_idp_error() {
    let env = TestEnv::new();
    let wrong = env.write("wrong_secret", "not-the-secret\n");
    let w = World::start_in(env, &IdpOptions::new(), |c, idp, _| {
        c.oidc(idp.oidc().client_secret_file(&wrong))
    });
    let key = w.env.key("alice");
    let askpass = w.askpass("alice", "alice-pw");
    let client = w
        .client("alice", &key)
        .bastion_option("NumberOfPasswordPrompts 1");

    assert_refused(&w.askpass_forward(&askpass, &client), &askpass);
    w.wait_failure("alice", "idp_error");
    assert!(
        askpass.prompts_of("device").is_empty(),
        "{}",
        askpass.describe()
    );
    assert_no_login(&w.pv);
}

// ------------------------------------------------------------------ 6

#[test]
fn trusted_idp_mfa_skips_totp_but_a_password_only_login_does_not() {
    let w = World::start(&IdpOptions::new(), |c, _, _| {
        c.mfa(Mfa::new().trust_idp_amr(true))
    });
    // mfa-dave's IdP login reports amr ["pwd", "otp"], username "dave".
    let dave_key = w.env.key("dave");
    let dave = w.askpass("mfa-dave", "dave-pw");
    w.login(&dave, &w.client("dave", &dave_key));
    let success = w.wait_login("dave", "oidc");
    assert!(success.detail.get("grant_id").is_some(), "{success:?}");
    assert_eq!(dave.prompts_of("device").len(), 1, "{}", dave.describe());
    assert_eq!(
        dave.prompts().len(),
        1,
        "no TOTP step for dave:\n{}",
        dave.describe()
    );
    let grants = w.grants(false);
    assert_eq!(str_field(&grants[0], "method"), "oidc", "{grants:?}");
    assert_echoed(
        &w.batch_forward(&w.client("dave", &dave_key)),
        "dave's grant",
    );

    // alice's IdP login is password only (amr ["pwd"]): TOTP still applies.
    let alice_key = w.env.key("alice");
    let alice = w.askpass("alice", "alice-pw");
    w.login(&alice, &w.client("alice", &alice_key));
    w.wait_login("alice", "oidc+totp");
    assert_eq!(alice.prompts_of("enroll").len(), 1, "{}", alice.describe());
}

#[test]
fn totp_off_logs_in_with_the_idp_alone() {
    let w = World::start(&IdpOptions::new(), |c, _, _| c.mfa(Mfa::new().totp("off")));
    let key = w.env.key("alice");
    let askpass = w.askpass("alice", "alice-pw");
    w.login(&askpass, &w.client("alice", &key));
    w.wait_login("alice", "oidc");
    assert_eq!(askpass.prompts().len(), 1, "{}", askpass.describe());
    assert_eq!(
        askpass.prompts_of("device").len(),
        1,
        "{}",
        askpass.describe()
    );
    let created =
        w.pv.wait_for_audit("grant.create", |e| e.kind == "grant.create");
    assert_eq!(created.detail_str("method"), Some("oidc"), "{created:?}");
}

// ------------------------------------------------------------------ 7

#[test]
fn a_users_key_with_totp_logs_in_with_key_and_code_and_gets_a_grant() {
    let env = TestEnv::new();
    let echo = EchoServer::start();
    let key = env.key("deploy");
    let pv = env.portvakt(
        &Config::new()
            .user(User::totp("deploy", &key).with_groups(&["ops"]))
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_groups(&["ops"])),
    );
    // No IdP at all: keyboard-interactive only asks for the TOTP code.
    let w = World {
        pv,
        idp: None,
        echo,
        env,
    };
    let secret = w.enrol("deploy");
    let askpass = Askpass::with_issuer(w.env.path(), "http://127.0.0.1:9", Decision::Ignore);
    askpass.set_secret(&secret);

    w.login(&askpass, &w.client("deploy", &key));
    let success = w.wait_login("deploy", "publickey+totp");
    assert_eq!(
        success.detail_str("key_fingerprint"),
        Some(key.fingerprint().as_str())
    );
    let totps = askpass.prompts_of("totp");
    assert_eq!(askpass.prompts().len(), 1, "{}", askpass.describe());
    assert_eq!(totps.len(), 1, "{}", askpass.describe());
    let step = totps[0].step.expect("fresh code");
    assert_eq!(
        totps[0].answer,
        common::askpass::totp_code(&secret, step * 30)
    );
    let created =
        w.pv.wait_for_audit("grant.create", |e| e.kind == "grant.create");
    assert_eq!(
        created.detail_str("method"),
        Some("publickey+totp"),
        "{created:?}"
    );

    // The grant: the key alone, BatchMode.
    assert_echoed(
        &w.batch_forward(&w.client("deploy", &key)),
        "deploy's grant",
    );
    w.wait_login("deploy", "grant");

    // `totp reset` removes the secret: with the grant gone, no login.
    let out = w.pv.cli(&["totp", "reset", "deploy"]);
    out.assert_success();
    assert!(
        out.stdout_text()
            .contains("removed the TOTP secret of deploy"),
        "{out}"
    );
    w.pv.cli(&["grants", "revoke", "--user", "deploy"])
        .assert_success();
    let out = w.askpass_forward(&askpass, &w.client("deploy", &key));
    assert_refused(&out, &askpass);
    w.wait_failure("deploy", "totp_not_enrolled");
    assert!(
        askpass
            .prompts_of("failure")
            .iter()
            .any(|p| p.prompt.contains("no TOTP secret")),
        "{}",
        askpass.describe()
    );
    let again = w.pv.cli(&["totp", "reset", "deploy"]);
    assert_eq!(again.code(), 1, "{again}");
    // Both CLI actions are in the audit trail.
    for kind in ["totp.enroll", "totp.reset"] {
        let ev = w.pv.wait_for_audit(kind, |e| e.kind == kind);
        assert_eq!(ev.user.as_deref(), Some("deploy"), "{ev:?}");
        assert_eq!(ev.detail_str("by"), Some("cli"), "{ev:?}");
    }
}

// ------------------------------------------------------------------ 8

#[test]
fn a_certificate_logs_in_while_the_idp_is_down() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let cert_key = env.signed_key(&ca, "alice-cert", &CertSpec::user(&["alice"]));
    let mut w = World::start_in(env, &IdpOptions::new(), |c, _, echo| {
        c.trust(&ca)
            .target(Target::host("cert-echo", "127.0.0.1", echo.port).allow_users(&["alice"]))
    });
    // portvakt discovered the IdP at start; now it goes away.
    w.idp.as_mut().expect("IdP").kill();

    let out = forward_stdio(
        &w.client("alice", &cert_key),
        "cert-echo",
        w.echo.port,
        PING,
    );
    assert_echoed(&out, "certificate login with the IdP down");
    w.wait_login("alice", "certificate");

    // An IdP login meanwhile is refused as unreachable.
    let key = w.env.key("alice");
    let askpass = w.askpass("alice", "alice-pw");
    let client = w
        .client("alice", &key)
        .bastion_option("NumberOfPasswordPrompts 1");
    assert_refused(&w.askpass_forward(&askpass, &client), &askpass);
    w.wait_failure("alice", "idp_unreachable");
}

// ------------------------------------------------------------------ 9

#[test]
fn es256_id_tokens_are_accepted() {
    let w = World::start(&IdpOptions::new().id_token_alg("ES256"), |c, _, _| c);
    let jwks = w.idp().get_json("/jwks");
    let keys = jwks["keys"].as_array().expect("keys");
    assert!(
        keys.len() == 1 && keys[0]["kty"] == "EC" && keys[0]["alg"] == "ES256",
        "the IdP does not sign with ES256 only: {jwks}"
    );
    let key = w.env.key("alice");
    let askpass = w.askpass("alice", "alice-pw");
    w.login(&askpass, &w.client("alice", &key));
    w.wait_login("alice", "oidc+totp");
}

#[test]
fn a_public_client_without_a_secret_logs_in() {
    let w = World::start(&IdpOptions::new().public_client(), |c, _, _| c);
    let config = std::fs::read_to_string(&w.pv.config_path).expect("config");
    assert!(
        config.contains("[oidc]") && !config.contains("client_secret_file"),
        "{config}"
    );
    let key = w.env.key("alice");
    let askpass = w.askpass("alice", "alice-pw");
    w.login(&askpass, &w.client("alice", &key));
    w.wait_login("alice", "oidc+totp");
}

// ------------------------------------------------------------------ reload

/// A grant keeps what the IdP said; groups from `[[users]]` count only while
/// the config says so (they are not frozen into the grant).
#[test]
fn a_grant_follows_the_config_groups_in_force() {
    let ops_echo = EchoServer::start();
    let ops_port = ops_echo.port;
    let config = |idp: &Idp, echo: &TcpServer, with_ops: bool| {
        let c = Config::new()
            .oidc(idp.oidc())
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_groups(&["sre"]))
            .target(Target::host("ops-echo", "127.0.0.1", ops_port).allow_groups(&["ops"]));
        if with_ops {
            c.user(User::groups("alice", &["ops"]))
        } else {
            c
        }
    };
    let w = World::start(&IdpOptions::new(), |_, idp, echo| config(idp, echo, true));
    let key = w.env.key("alice");
    w.login(&w.askpass("alice", "alice-pw"), &w.client("alice", &key));
    let batch = w.client("alice", &key).log_level("INFO");
    assert_echoed(
        &forward_stdio(&batch, "ops-echo", ops_port, PING),
        "ops-echo by grant while alice is in ops",
    );

    w.pv.reload(&config(w.idp(), &w.echo, false));
    let out = forward_stdio(&batch, "ops-echo", ops_port, PING);
    assert_forward_prohibited(&out, "alice");
    w.pv.wait_for_event("forward.denied", "user_not_allowed");
    // The IdP's groups still hold: sre opens echo by the same grant.
    assert_echoed(&w.batch_forward(&batch), "echo by grant (sre from the IdP)");
}

/// A grant made with a `[[users]]` key and TOTP holds only while that key is
/// listed, also where an IdP is configured (the key then counts as
/// "unknown, the IdP may follow").
#[test]
fn a_key_and_totp_grant_ends_when_its_key_is_removed_from_the_config() {
    let deploy = TestEnv::new();
    let key = deploy.key("deploy");
    let config = |idp: &Idp, echo: &TcpServer, listed: bool| {
        let user = if listed {
            User::totp("deploy", &key).with_groups(&["sre"])
        } else {
            User::groups("deploy", &["sre"])
        };
        Config::new()
            .oidc(idp.oidc())
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_groups(&["sre"]))
            .user(user)
    };
    let w = World::start_in(deploy, &IdpOptions::new(), |_, idp, echo| {
        config(idp, echo, true)
    });
    let secret = w.enrol("deploy");
    let askpass = Askpass::new(w.env.path(), w.idp(), Decision::Deny);
    askpass.set_secret(&secret);
    w.login(&askpass, &w.client("deploy", &key));
    w.wait_login("deploy", "publickey+totp");
    let batch = w.client("deploy", &key);
    let mut live = LiveForward::start(
        batch.spawn(&["-W", &w.echo_dest(), BASTION]),
        "deploy's grant",
    );
    w.wait_login("deploy", "grant");

    let ev = w.pv.reload(&config(w.idp(), &w.echo, false));
    assert_eq!(ev.detail["closed_connections"], 1, "{ev:?}");
    live.wait_closed("its key was removed from [[users]]");
    w.pv.wait_for_audit("connection.close config_revoked", |e| {
        e.is("connection.close", "config_revoked")
    });
    // The grant no longer logs the key in: BatchMode cannot do the IdP part.
    let out = w.batch_forward(&batch);
    assert_login_refused(&out);
    assert_eq!(
        w.count("auth.success", "grant"),
        1,
        "no grant login after the reload"
    );
}

/// Removing `[oidc]` and reloading stops IdP logins at once: new device
/// flows, grants made at the IdP, and connections riding on them.
#[test]
fn removing_oidc_and_reloading_stops_idp_logins_without_a_restart() {
    let w = World::new();
    let key = w.env.key("alice");
    let askpass = w.askpass("alice", "alice-pw");
    w.login(&askpass, &w.client("alice", &key));
    let batch = w.client("alice", &key);
    let mut live = LiveForward::start(
        batch.spawn(&["-W", &w.echo_dest(), BASTION]),
        "alice's grant",
    );

    let ev = w.pv.reload(
        &Config::new()
            .target(Target::host("echo", "127.0.0.1", w.echo.port).allow_groups(&["sre"])),
    );
    assert_eq!(ev.detail_str("result"), Some("applied"), "{ev:?}");
    assert_eq!(ev.detail["closed_connections"], 1, "{ev:?}");
    live.wait_closed("[oidc] was removed");

    // The grant is not honoured, and no device flow starts.
    assert_login_refused(&w.batch_forward(&batch));
    let flows = askpass.prompts_of("device").len();
    let other = w.env.key("alice-2");
    let out = w.askpass_forward(&askpass, &w.client("alice", &other));
    assert_refused(&out, &askpass);
    assert_eq!(
        askpass.prompts_of("device").len(),
        flows,
        "a device flow started after [oidc] was removed:\n{}",
        askpass.describe()
    );
}

/// The IdP is asked only for clients that proved a key (the grant is bound
/// to it): a client without any key gets a clear message, and no device
/// flow is started at the IdP.
#[test]
fn an_idp_login_needs_a_proven_key_first() {
    let w = World::new();
    let askpass = w.askpass("alice", "alice-pw");
    // No identity at all: the client's config names a key file that is not there.
    let keyless = w.env.client(&w.pv, "alice");
    let out = w.askpass_forward(&askpass, &keyless);
    assert_refused(&out, &askpass);
    w.wait_failure("alice", "key_required");
    assert!(
        askpass.prompts_of("device").is_empty(),
        "{}",
        askpass.describe()
    );
    assert!(
        askpass
            .prompts_of("failure")
            .iter()
            .any(|p| p.prompt.contains("offer an SSH key first")),
        "{}",
        askpass.describe()
    );
}

/// One source starts at most six device flows a minute, whatever the
/// number of connections.
#[test]
fn one_source_starts_at_most_six_device_flows_a_minute() {
    let w = World::new();
    let askpass = Askpass::new(w.env.path(), w.idp(), Decision::Deny);
    for i in 0..3 {
        let key = w.env.key(&format!("k{i}"));
        let client = w
            .client("alice", &key)
            .bastion_option("NumberOfPasswordPrompts 5");
        assert_refused(&w.askpass_forward(&askpass, &client), &askpass);
    }
    let codes: std::collections::BTreeSet<String> = askpass
        .prompts_of("device")
        .into_iter()
        .filter_map(|p| p.user_code)
        .collect();
    assert_eq!(codes.len(), 6, "{}", askpass.describe());
    w.wait_count_reason("auth.failure", "idp_flow_limit", "alice", 3);
}

/// A name whose `[[users]]` entry has keys logs in with those keys only: an
/// IdP identity of the same name cannot log in as it (nor enrol TOTP for it).
#[test]
fn an_idp_login_cannot_take_over_an_account_with_configured_keys() {
    let owner = TestEnv::new();
    let alice_key = owner.key("alice-configured");
    let w = World::start_in(owner, &IdpOptions::new(), |c, _, _| {
        c.user(User::totp("alice", &alice_key))
    });
    let askpass = w.askpass("alice", "alice-pw");
    let other = w.env.key("another-key");
    let out = w.askpass_forward(&askpass, &w.client("alice", &other));
    assert_refused(&out, &askpass);
    w.wait_failure("alice", "idp_key_account");
    assert!(
        askpass.prompts_of("device").is_empty(),
        "{}",
        askpass.describe()
    );
}

/// Someone holding a key+TOTP user's key guesses TOTP codes from eight
/// addresses at once: after `totp_max_failures` (5) wrong codes in all, the
/// user's TOTP step is locked (audited once as lockout.user), no further
/// code is even checked, the real code is refused too until an admin
/// clears the lock, and other users log in all along.
#[test]
fn parallel_totp_guessing_locks_the_user_not_the_bastion() {
    let env = TestEnv::new();
    let echo = EchoServer::start();
    let key = env.key("deploy");
    let ca = env.ca("user_ca");
    let alice = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]));
    let pv = env.portvakt(
        &Config::new()
            .trust(&ca)
            .user(User::totp("deploy", &key).with_groups(&["ops"]))
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_groups(&["ops"]))
            .target(Target::host("echo2", "127.0.0.1", echo.port).allow_users(&["alice"])),
    );
    let w = World {
        pv,
        idp: None,
        echo,
        env,
    };
    let secret = w.enrol("deploy");
    let mut guesser = Askpass::with_issuer(w.env.path(), "http://127.0.0.1:9", Decision::Ignore);
    guesser.set_secret(&secret);
    guesser.set_totp(TotpAnswer::Wrong);

    std::thread::scope(|s| {
        for n in 2..=9u8 {
            let client = w
                .client("deploy", &key)
                .bastion_option(&format!("BindAddress 127.0.0.{n}"));
            let guesser = &guesser;
            let w = &w;
            s.spawn(move || assert_refused(&w.askpass_forward(guesser, &client), guesser));
        }
        // Meanwhile another user logs in as usual.
        assert_echo_works(&w.client("alice", &alice), "echo2", w.echo.port);
    });
    let lock =
        w.pv.wait_for_event("lockout.user", "too_many_totp_failures");
    assert_eq!(lock.user.as_deref(), Some("deploy"), "{lock:?}");
    assert_eq!(lock.detail["failures"], 5, "{lock:?}");
    // Refusal rows are queued as each attempt ends: wait for the five.
    let count = |events: &[AuditEvent], reason: &str| {
        events
            .iter()
            .filter(|e| e.is("auth.failure", reason) && e.user.as_deref() == Some("deploy"))
            .count()
    };
    let events = poll_until("five totp_invalid and a totp_locked", AUDIT_TIMEOUT, || {
        let events = w.pv.audit();
        (count(&events, "totp_invalid") >= 5 && count(&events, "totp_locked") >= 1)
            .then_some(events)
    });
    assert_eq!(
        count(&events, "totp_invalid"),
        5,
        "codes checked past the limit"
    );
    assert_eq!(
        events.iter().filter(|e| e.kind == "lockout.user").count(),
        1,
        "one lock, audited once"
    );
    assert!(
        w.pv.cli_json(&["lockout", "list", "--json"])
            .as_array()
            .unwrap()
            .is_empty(),
        "no source was banned for TOTP guesses"
    );

    // While the lock holds the owner is told at once, with no code asked
    // (it would not be checked), and refused; an admin lifts the lock.
    let mut owner = Askpass::with_issuer(w.env.path(), "http://127.0.0.1:9", Decision::Ignore);
    owner.set_secret(&secret);
    owner.set_totp(TotpAnswer::Fresh);
    assert_refused(
        &w.askpass_forward(&owner, &w.client("deploy", &key)),
        &owner,
    );
    let told = owner.prompts_of("failure");
    assert!(
        owner.prompts_of("totp").is_empty()
            && !told.is_empty()
            && told
                .iter()
                .all(|p| p.prompt.contains("too many wrong TOTP codes")),
        "{}",
        owner.describe()
    );
    w.pv.cli(&["lockout", "clear", "--user", "deploy"])
        .assert_success();
    let cleared = w.pv.wait_for_audit("lockout.clear of deploy", |e| {
        e.kind == "lockout.clear" && e.user.as_deref() == Some("deploy")
    });
    assert_eq!(cleared.detail["lifted"], 1, "{cleared:?}");
    w.login(&owner, &w.client("deploy", &key));
    w.wait_login("deploy", "publickey+totp");
}
