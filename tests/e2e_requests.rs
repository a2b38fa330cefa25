//! Just-in-time access (issue 15, DESIGN.md §13) with the stock `ssh`:
//! a target used on request is refused with the line to run, requested
//! with `ssh bastion request`, decided by another user with `ssh bastion
//! approve|deny` (or a two-person rule, or the host's CLI), usable within
//! its window only, and ended on every node when the window ends or is
//! revoked; pending requests expire; a webhook gets signed bodies.

mod common;

use std::io::{BufRead, Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use common::*;
use common::{portvakt, proc};

/// alice (dba) may ask for "prod"; bob and carol (leads) decide; eve
/// (leads too) asked for nothing. All log in with certificates.
struct Team {
    env: TestEnv,
    pv: Portvakt,
    echo: TcpServer,
    keys: Vec<(String, UserKey)>,
}

impl Team {
    fn start(approvals: u32, max: &str, extra: &str) -> Team {
        let env = TestEnv::new();
        let echo = EchoServer::start();
        let ca = env.ca("user_ca");
        let keys: Vec<(String, UserKey)> = ["alice", "bob", "carol", "eve"]
            .iter()
            .map(|u| (u.to_string(), env.signed_key(&ca, u, &CertSpec::user(&[u]))))
            .collect();
        let mut config = Config::new()
            .trust(&ca)
            .user(User::groups("alice", &["dba"]))
            .user(User::groups("bob", &["leads"]))
            .user(User::groups("carol", &["leads"]))
            .user(User::groups("eve", &["leads", "dba"]))
            .target(
                Target::host("prod", "127.0.0.1", echo.port)
                    .allow_groups(&["dba"])
                    .on_request(&["leads"], max, approvals),
            );
        config.extra = extra.to_string();
        let pv = env.portvakt(&config);
        Team {
            env,
            pv,
            echo,
            keys,
        }
    }

    fn client(&self, user: &str) -> SshClient {
        let key = &self.keys.iter().find(|(u, _)| u == user).unwrap().1;
        self.env.client(&self.pv, user).identity(key)
    }

    /// `ssh bastion ARGS...` as `user`.
    fn ssh(&self, user: &str, args: &[&str]) -> RunOutput {
        let mut all = vec![BASTION];
        all.extend_from_slice(args);
        self.client(user).run(&all)
    }

    /// `ssh bastion request prod DURATION REASON` as alice: the new id.
    fn request(&self, duration: &str, reason: &str) -> i64 {
        let out = self.ssh("alice", &["request", "prod", duration, reason]);
        out.assert_success();
        let text = out.stdout_text();
        assert!(text.contains("is pending"), "{out}");
        text.split_whitespace()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no request id in {out}"))
    }

    fn forward(&self, user: &str) -> RunOutput {
        forward_stdio(&self.client(user), "prod", self.echo.port, b"hi\n")
    }

    fn state(&self, id: i64) -> Value {
        let all = self.pv.cli_json(&["requests", "list", "--json"]);
        all.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no request {id}: {all}"))
    }

    /// `ssh -W prod` as alice, held open once a line came back.
    fn live_forward(&self) -> ChildGuard {
        let mut ssh =
            self.client("alice")
                .spawn(&["-W", &format!("prod:{}", self.echo.port), BASTION]);
        ssh.stdin().write_all(b"hi\n").unwrap();
        ssh.stdin().flush().unwrap();
        let (_stdout, back) = proc::read_exact_within(ssh.take_stdout(), 3, AUDIT_TIMEOUT);
        assert_eq!(&back, b"hi\n");
        ssh
    }
}

#[track_caller]
fn assert_fails_with(out: &RunOutput, code: i32, text: &str) {
    assert!(
        out.code() == code && out.stderr.clone().contains(text),
        "expected exit {code} and {text:?}: {out}"
    );
}

#[test]
fn a_request_approved_by_another_opens_the_target_until_its_window_ends() {
    let t = Team::start(1, "1h", "");
    // Before any request: refused, with the exact line to run (shown at
    // OpenSSH's default LogLevel, INFO).
    let out = forward_stdio(
        &t.client("alice").log_level("INFO"),
        "prod",
        t.echo.port,
        b"hi\n",
    );
    assert_eq!(out.code(), 255, "{out}");
    let line = format!(
        "ssh -p {} alice@127.0.0.1 request prod 1h \"REASON\"",
        t.pv.port
    );
    assert!(out.stderr.clone().contains(&line), "the line to run: {out}");
    let row = t.pv.wait_for_session("the refused forward", |r| {
        r.reason.as_deref() == Some("request_required")
    });
    assert_eq!(row.result, "denied", "{row:?}");
    // The info text says how.
    let info = t.ssh("alice", &[]);
    assert!(
        info.stderr
            .clone()
            .contains("(on request, up to 1h: `request prod DURATION \"REASON\"`)"),
        "{info}"
    );

    // Bad requests change nothing.
    assert_fails_with(
        &t.ssh("alice", &["request", "prod", "2h", "too long"]),
        1,
        "longer than this target allows (1h at most)",
    );
    assert_fails_with(
        &t.ssh("alice", &["request", "nope", "1h", "x"]),
        1,
        "\"nope\" is not a target you may ask for",
    );
    assert_fails_with(
        &t.ssh("bob", &["request", "prod", "1h", "x"]),
        1,
        "\"prod\" is not a target you may ask for",
    );
    assert_fails_with(
        &t.ssh("alice", &["request", "prod", "0s", "x"]),
        1,
        "longer than zero",
    );
    let long = "x".repeat(501);
    assert_fails_with(
        &t.ssh("alice", &["request", "prod", "1h", &long]),
        1,
        "longer than 500 characters",
    );
    assert_fails_with(
        &t.ssh("alice", &["request", "prod", "1h", "a\u{1b}[2Jb"]),
        1,
        "control characters",
    );
    assert_fails_with(
        &t.ssh("alice", &["request", "prod"]),
        2,
        "usage: request TARGET DURATION",
    );
    assert!(
        t.pv.cli_json(&["requests", "list", "--json"])
            .as_array()
            .unwrap()
            .is_empty(),
        "no request was stored"
    );

    let id = t.request("15s", "INC-123 disk full");
    let pending = t.state(id);
    assert_eq!(pending["state"], "pending", "{pending}");
    assert_eq!(pending["reason"], "INC-123 disk full", "{pending}");
    assert_fails_with(
        &t.ssh("alice", &["request", "prod", "1h", "again"]),
        1,
        &format!("request {id} for prod pending already"),
    );
    assert_eq!(t.forward("alice").code(), 255, "pending is not approved");

    // Nobody decides their own request, nor a request for a target they
    // do not approve; approvers see what waits for them.
    assert_fails_with(
        &t.ssh("alice", &["approve", &id.to_string()]),
        1,
        "you may not decide",
    );
    let refused = t.pv.wait_for_audit("request.refused", |e| {
        e.kind == "request.refused" && e.detail["command"] == "approve"
    });
    assert_eq!(refused.user.as_deref(), Some("alice"), "{refused:?}");
    assert_eq!(refused.detail["request_id"], id, "{refused:?}");
    assert_fails_with(
        &t.ssh("eve", &["approve", "999"]),
        1,
        "there is no request 999",
    );
    let list = t.ssh("bob", &["requests"]);
    list.assert_success();
    assert!(
        list.stdout_text().contains("Waiting for your decision:"),
        "{list}"
    );
    assert!(list.stdout_text().contains("INC-123 disk full"), "{list}");

    let out = t.ssh("bob", &["approve", &id.to_string()]);
    out.assert_success();
    // At once, a forward that stays open until the window's end (15 s:
    // the checks below must fit in it on a loaded machine).
    let mut live = t.live_forward();
    assert!(
        out.stdout_text().contains(&format!(
            "request {id} is approved: alice may use prod until"
        )),
        "{out}"
    );
    assert_fails_with(
        &t.ssh("carol", &["approve", &id.to_string()]),
        1,
        &format!("request {id} is approved already"),
    );
    let approved = t.state(id);
    assert_eq!(approved["state"], "approved", "{approved}");
    assert_eq!(approved["decided_by"], "bob", "{approved}");

    // Within the window: the forward works, its row names the request.
    let out = t.forward("alice");
    out.assert_success();
    assert_eq!(out.stdout_text(), "hi\n");
    let used = t.pv.wait_for_session("the one-shot forward", |r| {
        r.result == "allowed" && r.ended_at.is_some()
    });
    let json = t.pv.sessions_json(&[]);
    let row = json.iter().find(|r| r["id"] == used.id).unwrap();
    assert_eq!(row["request_id"], id, "{row}");
    // Only alice's window: eve (dba too) has none.
    assert_eq!(t.forward("eve").code(), 255);

    // The window ends: the live forward ends with it, and the next is refused.
    // Its ssh exits when the window's end closes the forward.
    live.wait_exit(Duration::from_secs(30));
    let closed =
        t.pv.wait_for_session("the forward ended by its window", |r| {
            r.close_reason.as_deref() == Some("request_window_ended")
        });
    assert_eq!(closed.user.as_deref(), Some("alice"));
    assert_eq!(t.forward("alice").code(), 255, "after the window");

    let kinds: Vec<String> = t.pv.audit().iter().map(|e| e.kind.clone()).collect();
    for k in ["request.create", "request.approve"] {
        assert!(kinds.iter().any(|x| x == k), "{k} audited: {kinds:?}");
    }
    let approve =
        t.pv.wait_for_audit("request.approve", |e| e.kind == "request.approve");
    assert_eq!(approve.user.as_deref(), Some("bob"));
    assert_eq!(approve.detail["requester"], "alice");
    assert_eq!(approve.detail["request_id"], id);
}

#[test]
fn a_two_person_rule_denials_revocations_and_expiry() {
    let t = Team::start(2, "1h", "[requests]\npending_ttl = \"10s\"\n");
    let id = t.request("30m", "deploy 4.2");
    let out = t.ssh("bob", &["approve", &id.to_string()]);
    out.assert_success();
    assert!(
        out.stdout_text()
            .contains("it needs 2 approvals by different people (it has 1)"),
        "{out}"
    );
    assert_fails_with(
        &t.ssh("bob", &["approve", &id.to_string()]),
        1,
        "you approved request",
    );
    assert_eq!(
        t.forward("alice").code(),
        255,
        "one approval of two opens nothing"
    );
    t.ssh("carol", &["approve", &id.to_string()])
        .assert_success();
    let approved = t.state(id);
    assert_eq!(approved["state"], "approved", "{approved}");
    assert_eq!(
        approved["approvals"],
        serde_json::json!(["bob", "carol"]),
        "{approved}"
    );

    // Revoked from the host: the live forward ends within seconds.
    let mut live = t.live_forward();
    t.pv.cli(&["requests", "revoke", &id.to_string()])
        .assert_success();
    let ended = poll_for(Duration::from_secs(15), || live.try_wait());
    assert!(
        ended.is_some(),
        "the forward still runs after the revocation"
    );
    t.pv.wait_for_session("the forward ended by the revocation", |r| {
        r.close_reason.as_deref() == Some("request_revoked")
    });
    assert_eq!(t.state(id)["state"], "revoked");
    assert_eq!(t.forward("alice").code(), 255, "after the revocation");
    let revoke =
        t.pv.wait_for_audit("request.revoke", |e| e.kind == "request.revoke");
    assert!(
        revoke.user.as_deref().unwrap_or_default().ends_with("@cli"),
        "{revoke:?}"
    );

    // Denied, with the reason; deciding again changes nothing.
    let id = t.request("10m", "again");
    assert_fails_with(
        &t.ssh("bob", &["deny", &id.to_string()]),
        2,
        "usage: deny ID",
    );
    let out = t.ssh("bob", &["deny", &id.to_string(), "not during the freeze"]);
    out.assert_success();
    let denied = t.state(id);
    assert_eq!(denied["state"], "denied", "{denied}");
    assert_eq!(denied["decision_reason"], "not during the freeze");
    assert_fails_with(
        &t.ssh("carol", &["approve", &id.to_string()]),
        1,
        "is denied already",
    );

    // An approver who asks cannot approve their own request.
    let out = t.ssh("eve", &["request", "prod", "10m", "my own"]);
    out.assert_success();
    let own: i64 = out
        .stdout_text()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_fails_with(
        &t.ssh("eve", &["approve", &own.to_string()]),
        1,
        &format!("you asked for request {own} yourself: somebody else must decide it"),
    );
    assert_eq!(t.state(own)["state"], "pending");

    // Undecided, it expires after pending_ttl.
    let id = t.request("10m", "will expire");
    let expired = t.pv.wait_for_audit("request.expire", |e| {
        e.kind == "request.expire" && e.detail["request_id"] == id
    });
    assert_eq!(expired.detail["state"], "expired");
    assert_eq!(t.state(id)["state"], "expired");
    assert_fails_with(&t.ssh("bob", &["approve", &id.to_string()]), 1, "expired");
    let out = t.pv.cli(&["requests", "approve", &id.to_string()]);
    assert_eq!(out.code(), 1, "{out}");
}

/// One HTTP request per connection: answered with the next status of
/// `statuses` (then 200), its headers and body sent to the test.
/// One POST as received: its headers (names lower-cased) and body.
type Posted = (Vec<(String, String)>, String);

fn webhook_receiver(statuses: Vec<u16>) -> (u16, mpsc::Receiver<Posted>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut statuses = statuses.into_iter();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut headers = Vec::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.trim_end().split_once(':') {
                    let (k, v) = (k.to_ascii_lowercase(), v.trim().to_string());
                    if k == "content-length" {
                        length = v.parse().unwrap_or(0);
                    }
                    headers.push((k, v));
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let status = statuses.next().unwrap_or(200);
            let _ = (&stream).write_all(
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
            let _ = tx.send((headers, String::from_utf8(body).unwrap()));
        }
    });
    (port, rx)
}

#[test]
fn the_webhook_gets_signed_bodies_and_a_retry_after_a_500() {
    let secret = "a webhook secret of some length";
    let (port, bodies) = webhook_receiver(vec![500]);
    let env_dir = tempfile::tempdir().unwrap();
    let secret_file = env_dir.path().join("webhook.secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let extra = format!(
        "[requests]\nwebhook_url = \"http://127.0.0.1:{port}/hook\"\nwebhook_secret_file = {:?}\n",
        secret_file.display().to_string()
    );
    let t = Team::start(1, "1h", &extra);
    let id = t.request("5m", "INC-9");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let next = || {
        bodies
            .recv_timeout(Duration::from_secs(30))
            .expect("a webhook POST")
    };
    let check = |(headers, body): &Posted, event: &str| -> Value {
        let header = |k: &str| headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.clone());
        let tag = aws_lc_rs::hmac::sign(&key, body.as_bytes());
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            header("x-portvakt-signature"),
            Some(format!("sha256={hex}")),
            "{body}"
        );
        assert_eq!(header("x-portvakt-event").as_deref(), Some(event));
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["event"], event, "{v}");
        assert_eq!(v["request"]["id"], id, "{v}");
        assert!(v["text"].as_str().unwrap().starts_with("portvakt: "), "{v}");
        v
    };
    // The first POST got a 500: the same body comes again.
    let first = next();
    let again = next();
    assert_eq!(first.1, again.1, "the retry sends the same body");
    let created = check(&again, "request.create");
    assert!(
        created["text"]
            .as_str()
            .unwrap()
            .contains("alice asks for prod for 5m: \"INC-9\""),
        "{created}"
    );
    t.ssh("bob", &["approve", &id.to_string()]).assert_success();
    let approved = check(&next(), "request.approve");
    assert_eq!(approved["by"], "bob");
    assert_eq!(approved["request"]["state"], "approved");
    assert!(
        !t.pv
            .audit()
            .iter()
            .any(|e| e.kind == "request.notify_failed"),
        "delivered in the end: nothing to audit"
    );
}

#[test]
fn check_config_explains_bad_request_settings() {
    let env = TestEnv::new();
    let bad = env.write(
        "bad.toml",
        "[[targets]]\nname = \"prod\"\nhost = \"10.0.0.1\"\nport = 22\nallow_groups = [\"dba\"]\n\
         access = \"request\"\nmax_request = \"30d\"\napprovals = 3\n\
         [[targets]]\nname = \"dev\"\nhost = \"10.0.0.2\"\nport = 22\nallow_groups = [\"dba\"]\napprovers = [\"leads\"]\n\
         [requests]\nwebhook_url = \"http://hooks.example.com/x\"\n",
    );
    let out = portvakt::check_config(&bad);
    assert_eq!(out.code(), 2, "{out}");
    let text = out.stderr.clone() + &out.stdout_text();
    for want in [
        "needs approvers",
        "max_request is at most 7d",
        "approvals: 3 is out of range (1..=2)",
        "approvers applies only with access = \"request\"",
        "set webhook_secret_file too",
    ] {
        assert!(text.contains(want), "{want:?} in {out}");
    }
}
