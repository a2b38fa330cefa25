//! The review console (issue 14), end to end: a real `portvakt serve` with
//! `[console]`, the real test IdP (npm `oidc-provider`, code flow with
//! PKCE through its HTML login and consent forms), a browser made of
//! reqwest with a cookie store, and real `ssh -J` forwards to a real sshd.

mod common;

use std::time::Duration;

use common::console::Page;
use common::*;
use serde_json::{Value, json};

/// One test's IdP and portvakt with a console. Field order is drop order.
struct World {
    pv: Portvakt,
    idp: Idp,
    console: Console,
    env: TestEnv,
}

impl World {
    /// In `env`: `tweak` adds to the config (targets, CAs, `[mfa]`).
    fn start(env: TestEnv, console: Console, tweak: impl FnOnce(Config) -> Config) -> World {
        let idp = Idp::start_with(
            env.path(),
            &IdpOptions::new()
                .users(common::console::users())
                .redirect_uri(&console.redirect_uri()),
        );
        let config = tweak(Config::new().oidc(idp.oidc()).console(console.clone()));
        let mut pv = env.portvakt(&config);
        // Bound before the SSH port; polled all the same (a loaded machine).
        pv.wait_for_port(console.port);
        World {
            pv,
            idp,
            console,
            env,
        }
    }

    fn new() -> World {
        World::start(TestEnv::new(), default_console(), |c| c)
    }

    fn browser(&self) -> Browser {
        Browser::new(&self.console.url())
    }

    /// A browser logged in as `user`, on the console's Now page.
    fn logged_in(&self, user: &str, password: &str) -> (Browser, Page) {
        let b = self.browser();
        let page = b.login(user, password);
        assert_eq!(page.status, 200, "login of {user}: {page:?}");
        (b, page)
    }
}

fn default_console() -> Console {
    Console::new(&["security"], &["portvakt-admins"])
}

fn assert_security_headers(page: &Page) {
    let csp = page
        .header("content-security-policy")
        .unwrap_or_else(|| panic!("no CSP on {}", page.url));
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.header("x-frame-options"), Some("DENY"), "{page:?}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
}

#[test]
fn reviewers_and_admins_log_in_through_the_idp_and_others_get_403() {
    let w = World::new();

    let (rita, now) = w.logged_in("rita", "rita-pw");
    assert!(now.text.contains("<h1>Now</h1>"), "{}", now.text);
    assert!(now.text.contains("rita"), "{}", now.text);
    assert!(now.text.contains("(reviewer)"), "{}", now.text);
    for path in ["/sessions", "/audit", "/grants", "/lockouts"] {
        let p = rita.get(path);
        assert_eq!(p.status, 200, "{path}: {p:?}");
    }

    let (_adam, now) = w.logged_in("adam", "adam-pw");
    assert!(now.text.contains("(admin)"), "{}", now.text);

    let bob = w.browser();
    let refused = bob.login("bob", "bob-pw");
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(
        refused
            .headers_all("set-cookie")
            .iter()
            .all(|c| !c.starts_with("portvakt_console=")),
        "no session for a refused login: {refused:?}"
    );
    // Still not logged in: pages send bob to the login.
    let again = bob.get_raw("/sessions");
    assert_eq!(again.status, 303, "{again:?}");

    let ok = w.pv.wait_for_audit("console.login of rita", |e| {
        e.kind == "console.login" && e.user.as_deref() == Some("rita")
    });
    assert_eq!(ok.detail_str("result"), Some("allowed"), "{ok:?}");
    assert_eq!(ok.detail_str("role"), Some("reviewer"), "{ok:?}");
    assert!(
        ok.source
            .as_deref()
            .is_some_and(|s| s.starts_with("127.0.0.1:")),
        "{ok:?}"
    );
    let no = w.pv.wait_for_event("console.login", "no_console_role");
    assert_eq!(no.user.as_deref(), Some("bob"), "{no:?}");
    assert_eq!(no.detail_str("result"), Some("refused"), "{no:?}");
}

#[test]
fn headers_cookie_flags_and_the_login_redirect() {
    let w = World::new();
    let b = w.browser();
    // Not logged in: a page redirects to the login, with the way back.
    let first = b.get_raw("/sessions?user=alice");
    assert_eq!(first.status, 303, "{first:?}");
    assert_eq!(
        first.header("location"),
        Some("/auth/login?next=%2Fsessions%3Fuser%3Dalice")
    );
    assert_security_headers(&first);
    // A POST without a session is refused outright.
    let post = b.post("/grants/1/revoke", &[("csrf", "x")]);
    assert_eq!(post.status, 403, "{post:?}");

    let callback = b.login_from(first.header("location").unwrap(), "rita", "rita-pw");
    assert_eq!(callback.status, 200, "{callback:?}");
    let cookies = callback.headers_all("set-cookie");
    let session = cookies
        .iter()
        .find(|c| c.starts_with("portvakt_console="))
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(session.contains(flag), "{flag} missing: {session}");
    }
    // The id: 256 bits, base64url.
    let id = session["portvakt_console=".len()..]
        .split(';')
        .next()
        .unwrap();
    assert_eq!(id.len(), 43, "{session}");
    // public_url is plain http (loopback): no Secure, or the browser would
    // never send it back.
    assert!(!session.contains("Secure"), "{session}");
    assert_security_headers(&callback);

    let page = b.get(&callback.attr_after("id=\"continue\"", "href").unwrap());
    assert_eq!(page.status, 200);
    assert!(page.url.ends_with("/sessions?user=alice"), "{}", page.url);
    assert_security_headers(&page);
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert_eq!(page.header("strict-transport-security"), None, "plain HTTP");
    assert!(!page.text.contains("<script"), "no scripts: {}", page.text);
    let css = b.get("/static/console.css");
    assert_eq!(css.status, 200);
    assert_security_headers(&css);
}

#[test]
fn a_forward_made_by_ssh_j_shows_in_sessions_its_detail_and_the_exports() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let alice = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]));
    let target_key = env.key("target_key");
    let sshd = Sshd::start(env.path(), &[&target_key], None);
    let w = World::start(env, default_console(), |c| {
        c.trust(&ca)
            .target(Target::host("db-1", "127.0.0.1", sshd.port).allow_users(&["alice"]))
    });
    let out = w
        .env
        .client(&w.pv, "alice")
        .identity(&alice)
        .target("db-1", &sshd, &target_login_user(), &target_key)
        .run(&["db-1", "echo", "hello"]);
    out.assert_success();
    let row = w.pv.wait_for_session("the db-1 forward closed", |r| {
        r.target.as_deref() == Some("db-1") && r.ended_at.is_some()
    });

    let (b, _) = w.logged_in("rita", "rita-pw");
    let list = b.get("/sessions?user=alice&target=db-1&result=allowed");
    assert_eq!(list.status, 200, "{list:?}");
    let link = format!("href=\"/sessions/{}\"", row.id);
    assert!(list.text.contains(&link), "{}", list.text);
    assert!(list.text.contains("certificate"), "{}", list.text);
    let none = b.get("/sessions?user=nobody");
    assert!(!none.text.contains(&link), "filtered out: {}", none.text);
    assert!(none.text.contains("No sessions match."), "{}", none.text);
    let by_source = b.get("/sessions?source=127.0.0.1");
    assert!(by_source.text.contains(&link), "{}", by_source.text);
    let other_source = b.get("/sessions?source=192.0.2.1");
    assert!(!other_source.text.contains(&link), "{}", other_source.text);

    // The exports hold exactly the filtered rows.
    let json = b.get("/sessions?user=alice&format=json");
    assert_eq!(json.header("content-type"), Some("application/json"));
    let rows: Vec<Value> = serde_json::from_str(&json.text).expect("JSON export");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["id"], json!(row.id));
    assert_eq!(rows[0]["user"], "alice");
    assert_eq!(rows[0]["target"], "db-1");
    let csv = b.get("/sessions?user=alice&format=csv");
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    let lines: Vec<&str> = csv.text.lines().collect();
    assert_eq!(lines.len(), 2, "{}", csv.text);
    assert!(
        lines[0].starts_with("id,connection_id,node,user,"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&format!("{},", row.id)),
        "{}",
        lines[1]
    );
    let empty: Vec<Value> =
        serde_json::from_str(&b.get("/sessions?user=nobody&format=json").text).unwrap();
    assert!(empty.is_empty());

    // The detail: bytes both ways, close reason, the connection's timeline.
    let detail = b.get(&format!("/sessions/{}", row.id));
    assert_eq!(detail.status, 200, "{detail:?}");
    let to = row.bytes_to_target.to_string();
    assert!(
        detail
            .text
            .contains(&format!("<dd id=\"bytes-to\">{to}</dd>")),
        "{}",
        detail.text
    );
    assert!(detail.text.contains(&format!(
        "<dd id=\"bytes-from\">{}</dd>",
        row.bytes_from_target
    )));
    let close = row.close_reason.clone().unwrap_or_default();
    assert!(
        detail
            .text
            .contains(&format!("<dd id=\"close-reason\">{close}</dd>")),
        "{}",
        detail.text
    );
    for kind in ["auth.success", "forward.open", "forward.close"] {
        assert!(
            detail.text.contains(kind),
            "{kind} in the timeline: {}",
            detail.text
        );
    }
    let viewed = w.pv.wait_for_audit("console.view of the session", |e| {
        e.kind == "console.view" && e.user.as_deref() == Some("rita")
    });
    assert_eq!(viewed.detail.get("session_id"), Some(&json!(row.id)));

    // The audit page finds the forward's events; its exports parse.
    let audit = b.get("/audit?kind=forward.open&user=alice");
    assert!(audit.text.contains("forward.open"), "{}", audit.text);
    let events: Vec<Value> = serde_json::from_str(
        &b.get("/audit?kind=forward.open&user=alice&format=json")
            .text,
    )
    .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let csv = b.get("/audit?kind=forward.open&user=alice&format=csv");
    assert_eq!(csv.text.lines().count(), 2, "{}", csv.text);
    let grants: Vec<Value> = serde_json::from_str(&b.get("/grants?format=json").text).unwrap();
    assert!(grants.is_empty());
    let locks: Vec<Value> = serde_json::from_str(&b.get("/lockouts?format=json").text).unwrap();
    assert!(locks.is_empty());
    let now: Vec<Value> = serde_json::from_str(&b.get("/?format=json").text).unwrap();
    assert!(now.is_empty(), "the forward is closed: {now:?}");
}

#[test]
fn a_live_forward_shows_on_now_and_an_admin_ends_its_connection() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let alice = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]));
    let echo = EchoServer::start();
    let w = World::start(env, default_console(), |c| {
        c.trust(&ca)
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["alice"]))
    });
    let client = w.env.client(&w.pv, "alice").identity(&alice);
    let mut live = client.spawn(&["-W", &format!("echo:{}", echo.port), BASTION]);
    let (rita, _) = w.logged_in("rita", "rita-pw");
    let rows = poll_until("the live forward on /", Duration::from_secs(30), || {
        let rows: Vec<Value> = serde_json::from_str(&rita.get("/?format=json").text).ok()?;
        (!rows.is_empty()).then_some(rows)
    });
    assert_eq!(rows[0]["user"], "alice");
    assert!(rows[0]["ended_at"].is_null());
    let conn = rows[0]["connection_id"].as_str().unwrap().to_string();
    let page = rita.get("/");
    assert!(
        page.text.contains("http-equiv=\"refresh\""),
        "{}",
        page.text
    );
    assert!(
        page.text
            .contains("1 open connection(s) and 1 open forward(s)"),
        "{}",
        page.text
    );
    assert!(
        page.text.contains(&format!("<code>{conn}</code>")),
        "{}",
        page.text
    );
    // A reviewer has no End button, and may not end it.
    let end = format!("/connections/{conn}/end");
    assert!(!page.text.contains(&end), "{}", page.text);
    assert_eq!(rita.post(&end, &[("csrf", &page.csrf())]).status, 403);

    let (adam, now) = w.logged_in("adam", "adam-pw");
    assert!(
        now.text.contains(&format!("action=\"{end}\"")),
        "{}",
        now.text
    );
    assert_eq!(
        adam.post(&end, &[("note", "INC-1")]).status,
        403,
        "no CSRF token"
    );
    assert!(live.try_wait().is_none(), "ended without a CSRF token");
    let done = adam.post(&end, &[("csrf", &now.csrf()), ("note", "INC-1 <b>")]);
    assert_eq!(done.status, 200, "{done:?}");
    let status = poll_for(Duration::from_secs(30), || live.try_wait());
    assert!(
        status.is_some(),
        "ssh still running; log:\n{}",
        live.log_text()
    );
    let closed = w.pv.wait_for_event("connection.close", "ended_by_reviewer");
    assert_eq!(closed.connection_id.as_str(), Some(conn.as_str()));
    let row =
        w.pv.wait_for_session("the forward ended by the reviewer", |r| {
            r.ended_at.is_some()
        });
    assert_eq!(
        row.close_reason.as_deref(),
        Some("ended_by_reviewer"),
        "{row:?}"
    );
    let action = w.pv.wait_for_audit("console.action connection_end", |e| {
        e.kind == "console.action"
            && e.detail_str("action") == Some("connection_end")
            && e.reason.is_none()
    });
    assert_eq!(action.user.as_deref(), Some("adam"));
    assert_eq!(action.detail_str("connection_id"), Some(conn.as_str()));
    assert_eq!(action.detail_str("connection_user"), Some("alice"));
    assert_eq!(action.detail_str("note"), Some("INC-1 <b>"));
    // The reviewer's try and the admin's without a token are refused rows,
    // which no node takes for the command.
    let refused: Vec<(Option<String>, Option<String>)> =
        w.pv.audit()
            .into_iter()
            .filter(|e| e.kind == "console.action" && e.reason.is_some())
            .map(|e| (e.user, e.reason))
            .collect();
    assert_eq!(
        refused,
        [
            (Some("rita".into()), Some("not_console_admin".into())),
            (Some("adam".into()), Some("csrf_invalid".into())),
        ],
    );
    let after: Vec<Value> = serde_json::from_str(&adam.get("/?format=json").text).unwrap();
    assert!(after.is_empty(), "{after:?}");
}

#[test]
fn a_script_in_a_user_name_is_shown_escaped() {
    let w = World::new();
    let (b, now) = w.logged_in("mallory", "mallory-pw");
    assert!(
        now.text.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        now.text
    );
    assert!(!now.text.contains("<script>alert(1)"), "{}", now.text);
    // The console.login row names the user; the audit page shows it escaped.
    let audit = b.get("/audit?kind=console.login");
    assert!(
        audit.text.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        audit.text
    );
    assert!(!audit.text.contains("<script>alert(1)"), "{}", audit.text);
    // And a CSV cell of it is quoted text, not markup or a formula.
    let csv = b.get("/audit?kind=console.login&format=csv");
    assert!(
        csv.text.contains("<script>alert(1)</script>"),
        "{}",
        csv.text
    );
}

#[test]
fn an_expired_console_session_sends_the_browser_to_log_in_again() {
    let console = default_console().session_idle("2s").session_max("3s");
    let w = World::start(TestEnv::new(), console, |c| c);
    let (b, _) = w.logged_in("rita", "rita-pw");
    assert_eq!(b.get_raw("/sessions").status, 200);
    // Each poll uses the session (so the idle time never runs out); the
    // absolute limit ends it, and the next page is the login.
    let page = poll_until("the session to expire", Duration::from_secs(30), || {
        let p = b.get_raw("/sessions");
        (p.status != 200).then_some(p)
    });
    assert_eq!(page.status, 303, "{page:?}");
    assert_eq!(
        page.header("location"),
        Some("/auth/login?next=%2Fsessions")
    );
}

#[test]
fn admins_revoke_a_grant_and_clear_a_lockout_with_a_csrf_token_only() {
    let env = TestEnv::new();
    let echo = EchoServer::start();
    let w = World::start(env, default_console(), |c| {
        c.mfa(Mfa::new().totp("off"))
            .target(Target::host("echo", "127.0.0.1", echo.port).allow_groups(&["sre"]))
    });
    // alice logs in over SSH at the IdP (device flow) and gets a grant.
    let key = w.env.key("alice");
    let client = w.env.client(&w.pv, "alice").identity(&key);
    let askpass = Askpass::new(w.env.path(), &w.idp, Decision::approve("alice", "alice-pw"));
    let dest = format!("echo:{}", echo.port);
    let out = askpass.run_with_input(&client, &["-W", &dest, BASTION], b"ping\n");
    out.assert_success();
    let grant =
        w.pv.wait_for_audit("grant.create", |e| e.kind == "grant.create");
    let grant_id = grant
        .detail
        .get("grant_id")
        .and_then(Value::as_i64)
        .expect("grant_id");
    forward_stdio(&client, "echo", echo.port, b"ping\n").assert_success();

    // A reviewer sees it but may not revoke it.
    let (rita, page) = w.logged_in("rita", "rita-pw");
    let grants = rita.get("/grants");
    assert!(grants.text.contains("alice"), "{}", grants.text);
    assert!(!grants.text.contains("Revoke"), "{}", grants.text);
    let path = format!("/grants/{grant_id}/revoke");
    let refused = rita.post(&path, &[("csrf", &page.csrf())]);
    assert_eq!(refused.status, 403, "{refused:?}");
    // The attempt is audited: who tried what on which grant, and why not.
    let tried = w.pv.wait_for_audit("refused console.action of rita", |e| {
        e.kind == "console.action" && e.user.as_deref() == Some("rita")
    });
    assert_eq!(tried.reason.as_deref(), Some("not_console_admin"));
    assert_eq!(tried.detail_str("action"), Some("grant_revoke"));
    assert_eq!(tried.detail_str("result"), Some("refused"));
    assert_eq!(tried.detail.get("grant_id"), Some(&json!(grant_id)));

    // An admin without the CSRF token, or with a wrong one: 403, nothing changed.
    let (adam, _) = w.logged_in("adam", "adam-pw");
    let grants = adam.get("/grants");
    assert!(
        grants.text.contains(&format!("action=\"{path}\"")),
        "{}",
        grants.text
    );
    let token = grants.csrf();
    assert_eq!(adam.post(&path, &[]).status, 403);
    assert_eq!(adam.post(&path, &[("csrf", "wrong")]).status, 403);
    assert_eq!(
        adam.post(&path, &[("csrf", &page.csrf())]).status,
        403,
        "another session's token"
    );
    forward_stdio(&client, "echo", echo.port, b"ping\n").assert_success();
    let valid: Vec<Value> = serde_json::from_str(&adam.get("/grants?format=json").text).unwrap();
    assert_eq!(valid.len(), 1, "{valid:?}");
    let csrf_refusals = || {
        w.pv.audit()
            .iter()
            .filter(|e| {
                e.kind == "console.action"
                    && e.user.as_deref() == Some("adam")
                    && e.reason.as_deref() == Some("csrf_invalid")
            })
            .count()
    };
    assert!(
        poll_for(AUDIT_TIMEOUT, || (csrf_refusals() == 3).then_some(())).is_some(),
        "each post without the right token is a refused console.action row"
    );

    // With it: revoked, and the next ssh is refused.
    let done = adam.post(&path, &[("csrf", &token)]);
    assert_eq!(done.status, 200, "{done:?}");
    assert!(done.url.ends_with("/grants"), "{}", done.url);
    let valid: Vec<Value> = serde_json::from_str(&adam.get("/grants?format=json").text).unwrap();
    assert!(valid.is_empty(), "{valid:?}");
    assert_login_refused(&forward_stdio(&client, "echo", echo.port, b"ping\n"));
    let revoke = w.pv.wait_for_event("grant.revoke", "revoked_by_admin");
    assert_eq!(revoke.user.as_deref(), Some("alice"));
    let action = w.pv.wait_for_audit("console.action grant_revoke", |e| {
        e.kind == "console.action"
            && e.detail_str("action") == Some("grant_revoke")
            && e.reason.is_none()
    });
    assert_eq!(action.user.as_deref(), Some("adam"));
    assert_eq!(action.detail.get("grant_id"), Some(&json!(grant_id)));

    // Lockouts: clearing needs the token too.
    assert_eq!(
        adam.post("/lockouts/clear", &[("source", "192.0.2.7")])
            .status,
        403
    );
    let cleared = adam.post(
        "/lockouts/clear",
        &[("csrf", &token), ("source", "192.0.2.7")],
    );
    assert_eq!(cleared.status, 200, "{cleared:?}");
    let action = w.pv.wait_for_audit("console.action lockout_clear", |e| {
        e.kind == "console.action"
            && e.detail_str("action") == Some("lockout_clear")
            && e.reason.is_none()
    });
    assert_eq!(action.detail_str("source"), Some("192.0.2.7"));
    assert_eq!(action.user.as_deref(), Some("adam"));
    assert_eq!(
        csrf_refusals(),
        4,
        "the clear without a token is audited too"
    );

    // Logging out needs it as well, and ends the session.
    assert_eq!(adam.post("/auth/logout", &[]).status, 403);
    assert_eq!(adam.post("/auth/logout", &[("csrf", &token)]).status, 200);
    assert_eq!(adam.get_raw("/grants").status, 303);

    // The console's rows joined the node's hash chain: it verifies intact.
    let verify = w.pv.cli(&["audit", "verify"]);
    verify.assert_success();
    for kind in ["console.login", "console.action"] {
        assert!(
            w.pv.audit().iter().any(|e| e.kind == kind),
            "{kind} rows in the chain"
        );
    }
}

#[test]
fn the_console_serves_https_with_its_certificate_and_secure_cookies() {
    let env = TestEnv::new();
    let cert = env.path().join("console.crt");
    let key = env.path().join("console.key");
    let out = run(
        std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            // A leaf, not a CA: rustls refuses a CA certificate as a server's.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        None,
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "openssl: {out}");
    let console = default_console().tls(&cert, &key);
    let w = World::start(env, console, |c| c);
    let pem = std::fs::read(&cert).unwrap();
    let b = Browser::trusting(&w.console.url(), Some(&pem));
    let callback = b.login_callback("rita", "rita-pw");
    assert_eq!(callback.status, 200, "{callback:?}");
    let cookies = callback.headers_all("set-cookie");
    let session = cookies
        .iter()
        .find(|c| c.starts_with("portvakt_console="))
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    assert!(session.contains("; Secure"), "{session}");
    let now = b.get("/");
    assert_eq!(now.status, 200, "{now:?}");
    assert!(now.text.contains("<h1>Now</h1>"));
    assert_eq!(
        now.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    assert_security_headers(&now);
    // Plain HTTP to the HTTPS port gets no page.
    let plain = reqwest::blocking::get(format!("http://127.0.0.1:{}/", w.console.port));
    assert!(
        plain.as_ref().map_or(true, |r| !r.status().is_success()),
        "{plain:?}"
    );
}

/// A recorded target (DESIGN.md §10; set up as `Recorded` in
/// tests/e2e_recording.rs): the session's detail lists the recording, and
/// the recording's page shows its command (escaped) and exit status, and
/// its output as text.
#[test]
fn a_recorded_session_shows_its_recording_with_command_and_exit_status_escaped() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let alice = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]));
    let keys = env.path().join("recording");
    std::fs::create_dir_all(&keys).unwrap();
    let host_ca = UserKey::ed25519(&keys, "host_ca");
    let target_ca = UserKey::ed25519(&keys, "target_ca");
    let login = target_login_user();
    let sshd = Sshd::start_trusting(env.path(), &target_ca.public_path(), &login);
    let w = World::start(env, default_console(), |c| {
        let mut c = c.trust(&ca).target(
            Target::host("db-1", "127.0.0.1", sshd.port)
                .allow_users(&["alice"])
                .recorded(&[&login], &sshd.host_key),
        );
        c.extra = format!(
            "[recording]\nhost_ca_key = {}\ntarget_ca_key = {}\n",
            common::config::toml_str(&host_ca.path.display().to_string()),
            common::config::toml_str(&target_ca.path.display().to_string()),
        );
        c
    });
    let shown = w.pv.cli_json(&["ca", "show", "--json"]);
    let known = shown["known_hosts_line"].as_str().unwrap().to_string();
    let command = "echo '<script>alert(2)</script>'; exit 3";
    let out = w
        .env
        .client(&w.pv, "alice")
        .identity(&alice)
        .recorded_target("db-1", sshd.port, &login, &known)
        .run(&["db-1", command]);
    assert_eq!(out.code(), 3, "{out}");
    let row = w.pv.wait_for_session("the recorded forward closed", |r| {
        r.target.as_deref() == Some("db-1") && r.ended_at.is_some()
    });
    let rec = poll_until("the ended recording", Duration::from_secs(20), || {
        match w.pv.cli_json(&["recordings", "list", "--json"]) {
            Value::Array(rows) => rows.into_iter().find(|r| !r["ended_at"].is_null()),
            _ => None,
        }
    });
    let rec_id = rec["id"].as_i64().unwrap();

    let (b, _) = w.logged_in("rita", "rita-pw");
    let detail = b.get(&format!("/sessions/{}", row.id));
    assert!(
        detail
            .text
            .contains(&format!("href=\"/recordings/{rec_id}\"")),
        "{}",
        detail.text
    );
    let escaped = "&lt;script&gt;alert(2)&lt;/script&gt;";
    assert!(detail.text.contains(escaped), "{}", detail.text);
    assert!(!detail.text.contains("<script>alert(2)"), "{}", detail.text);

    let page = b.get(&format!("/recordings/{rec_id}"));
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.text.contains("<dd id=\"exit-status\">3</dd>"),
        "{}",
        page.text
    );
    assert!(
        page.text.contains(escaped),
        "command and output: {}",
        page.text
    );
    assert!(!page.text.contains("<script>alert(2)"), "{}", page.text);
    assert!(page.text.contains("matches its SHA-256"), "{}", page.text);
    assert_player(&b, &page, rec_id);
    let cast = b.get(&format!("/recordings/{rec_id}?format=cast"));
    assert_eq!(cast.status, 200);
    assert!(cast.text.starts_with("{\"version\":2"), "{}", cast.text);
    let views: Vec<AuditEvent> =
        w.pv.audit()
            .into_iter()
            .filter(|e| e.kind == "console.view")
            .collect();
    for page in ["session", "recording", "recording_export"] {
        assert!(
            views
                .iter()
                .any(|e| e.detail_str("page") == Some(page) && e.user.as_deref() == Some("rita")),
            "console.view of {page}: {views:?}"
        );
    }
}

/// The recording page replays with the vendored asciinema-player: its
/// script and stylesheet and `player-init.js` are external files served by
/// the console with their content types (the vendored ones cached for a
/// year under a path with their version), the page has no inline script,
/// the player's element points at the cast export, and the policy allows
/// no inline script or style (only WebAssembly compilation besides).
fn assert_player(b: &Browser, page: &Page, rec_id: i64) {
    assert_security_headers(page);
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self' 'wasm-unsafe-eval';"),
        "{csp}"
    );
    assert!(csp.contains("style-src 'self';"), "{csp}");
    assert!(!csp.contains(" 'unsafe-eval'"), "{csp}");
    assert_eq!(
        page.attr_after("id=\"player\"", "data-cast-url").as_deref(),
        Some(format!("/recordings/{rec_id}?format=cast").as_str()),
        "{}",
        page.text
    );
    // Every <script> has a src (the CSP would block an inline one anyway).
    let mut scripts = Vec::new();
    let mut rest = page.text.as_str();
    while let Some(at) = rest.find("<script") {
        let end = rest[at..].find('>').unwrap() + at;
        let tag = &rest[at..=end];
        assert!(tag.contains(" src=\""), "inline script: {tag}");
        let close = rest[end..].find("</script>").unwrap() + end;
        assert_eq!(close, end + 1, "a script with a body: {}", &rest[at..close]);
        scripts.push(page.attr_after(tag, "src").unwrap());
        rest = &rest[close..];
    }
    assert_eq!(scripts.len(), 2, "{scripts:?}");
    assert!(scripts.contains(&"/static/player-init.js".to_string()));
    let player_js = scripts
        .iter()
        .find(|s| s.starts_with("/static/asciinema-player/"))
        .unwrap_or_else(|| panic!("{scripts:?}"));
    let player_css = page
        .attr_after("href=\"/static/asciinema-player/", "href")
        .unwrap_or_else(|| panic!("no player stylesheet: {}", page.text));
    let version = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/console/assets/asciinema-player/VERSION"
    ))
    .unwrap();
    let version = version.lines().next().unwrap();
    assert!(player_js.contains(&format!("/{version}/")), "{player_js}");

    for (url, ctype, marker) in [
        (player_js.as_str(), "text/javascript", "AsciinemaPlayer"),
        (player_css.as_str(), "text/css", ".ap-player"),
        ("/static/player-init.js", "text/javascript", "data-cast-url"),
    ] {
        let asset = b.get(url);
        assert_eq!(asset.status, 200, "{url}");
        assert!(
            asset.header("content-type").unwrap().starts_with(ctype),
            "{url}: {:?}",
            asset.header("content-type")
        );
        assert!(asset.text.contains(marker), "{url}");
        assert_security_headers(&asset);
        if url.starts_with("/static/asciinema-player/") {
            assert_eq!(
                asset.header("cache-control"),
                Some("public, max-age=31536000, immutable"),
                "{url}"
            );
        }
    }
    // Another version's path is not served.
    assert_eq!(
        b.get("/static/asciinema-player/0.0.0/asciinema-player.min.js")
            .status,
        404
    );
    // Pages other than a recording keep the policy without WebAssembly.
    let other = b.get("/sessions");
    let csp = other.header("content-security-policy").unwrap();
    assert!(!csp.contains("wasm"), "{csp}");
}

/// `/audit` shows what `audit verify` found (the console verifies at start
/// and every 10 minutes): intact, then, after a row was changed in the
/// database and the node restarted, TAMPERED in red.
#[test]
fn the_audit_page_shows_the_chain_status_and_a_tampered_chain_in_red() {
    let mut w = World::new();
    let (b, _) = w.logged_in("rita", "rita-pw");
    let page = poll_until(
        "a verified chain on /audit",
        Duration::from_secs(30),
        || {
            let p = b.get("/audit");
            p.text.contains("Intact as verified at").then_some(p)
        },
    );
    assert!(page.text.contains("id=\"chain-nodes\""), "{}", page.text);

    common::database::execute(
        w.pv.database_url(),
        "UPDATE audit_events SET user_name = 'someone-else' WHERE kind = 'console.login'".into(),
    );
    // "Verify now" (any reviewer, with the page's CSRF token) checks again
    // without waiting for the next round.
    assert_eq!(b.post("/audit/verify", &[]).status, 403, "no CSRF token");
    let asked = b.post("/audit/verify", &[("csrf", &page.csrf())]);
    assert_eq!(asked.status, 200, "{asked:?}");
    for refused in [Some("csrf_invalid"), None] {
        w.pv.wait_for_audit("chain_verify rows", |e| {
            e.kind == "console.action"
                && e.detail_str("action") == Some("chain_verify")
                && e.user.as_deref() == Some("rita")
                && e.reason.as_deref() == refused
        });
    }
    assert!(
        asked.url.ends_with("/audit#chain") || asked.url.ends_with("/audit"),
        "{}",
        asked.url
    );
    let page = poll_until(
        "a tampered chain on /audit",
        Duration::from_secs(40),
        || {
            let p = b.get("/audit");
            p.text.contains("TAMPERED as verified at").then_some(p)
        },
    );
    assert!(page.text.contains("Verify now"), "{}", page.text);
    assert!(
        page.text.contains("<p class=\"bad\">TAMPERED"),
        "{}",
        page.text
    );
    assert!(
        page.text.contains("hash_mismatch") || page.text.contains("mismatch"),
        "{}",
        page.text
    );

    // And at start, after a restart.
    w.pv.restart();
    w.pv.wait_for_port(w.console.port);
    let (b, _) = w.logged_in("rita", "rita-pw");
    poll_until(
        "a tampered chain on /audit after a restart",
        Duration::from_secs(30),
        || {
            let p = b.get("/audit");
            p.text.contains("TAMPERED as verified at").then_some(p)
        },
    );
}

/// `[console] audit_keys` pins the keys the chain check trusts (as
/// `audit verify --key`): checkpoints signed by the node's own key verify
/// against its public key, and not against another one.
#[test]
fn the_audit_page_checks_the_chain_against_pinned_keys() {
    let env = TestEnv::new();
    let foreign = UserKey::ed25519(env.path(), "foreign");
    let mut console = default_console().audit_keys(&[&foreign.public_path()]);
    let extra = "[audit]\ncheckpoint_every = 1\n";
    let w = World::start(env, console.clone(), |mut c| {
        c.extra = extra.into();
        c
    });
    let own = w.env.path().join("node.pub");
    let key = w.pv.cli(&["audit", "key"]);
    key.assert_success();
    std::fs::write(&own, &key.stdout).unwrap();

    let (b, page) = w.logged_in("rita", "rita-pw");
    // Rows are signed after every event here; the foreign key signed none.
    let verify_until = |b: &Browser, page: &common::console::Page, want: &str| {
        poll_until(want, Duration::from_secs(40), || {
            b.post("/audit/verify", &[("csrf", &page.csrf())]);
            let p = b.get("/audit");
            p.text.contains(want).then_some(p)
        })
    };
    let tampered = verify_until(&b, &page, "TAMPERED as verified at");
    assert!(
        tampered
            .text
            .contains("signed by a key of <code>[console] audit_keys</code>"),
        "{}",
        tampered.text
    );

    // Pinned to the node's own key: intact.
    console = console.audit_keys(&[&own]);
    let mut cfg = Config::new().oidc(w.idp.oidc()).console(console.clone());
    cfg.extra = extra.into();
    let reload = w.pv.reload(&cfg);
    assert_eq!(reload.detail_str("result"), Some("applied"), "{reload:?}");
    let intact = verify_until(&b, &page, "Intact as verified at");
    assert!(
        intact
            .text
            .contains("signed by a key of <code>[console] audit_keys</code>"),
        "{}",
        intact.text
    );
}

/// The callback takes a login only with the `state` it started with, from
/// the browser that started it, once.
#[test]
fn a_callback_with_an_unknown_or_used_state_is_refused() {
    let w = World::new();
    let b = w.browser();
    let forged = b.get_raw("/auth/callback?code=x&state=y");
    assert_eq!(forged.status, 403, "{forged:?}");
    w.pv.wait_for_event("console.login", "login_state_invalid");

    // A started login, answered with another state: refused, and used up.
    let started = b.get_raw("/auth/login");
    assert_eq!(started.status, 303);
    let wrong = b.get_raw("/auth/callback?code=x&state=not-the-state");
    assert_eq!(wrong.status, 403, "{wrong:?}");

    // A real login's callback, replayed: its login was taken once.
    let callback = b.login_callback("rita", "rita-pw");
    assert_eq!(callback.status, 200, "{callback:?}");
    assert!(callback.url.contains("state="), "{}", callback.url);
    let again = Browser::new(&w.console.url()).get_raw(&callback.url);
    assert_eq!(again.status, 403, "replayed in another browser: {again:?}");
    let replay = b.get_raw(&callback.url);
    assert_eq!(replay.status, 403, "replayed: {replay:?}");
    // Refusals are queued, not awaited (anyone can call the callback).
    poll_until(
        "four login_state_invalid rows",
        Duration::from_secs(20),
        || {
            let n =
                w.pv.audit()
                    .into_iter()
                    .filter(|e| e.is("console.login", "login_state_invalid"))
                    .count();
            (n == 4).then_some(())
        },
    );
}

/// `/requests`: a request made with a real `ssh bastion request` is listed
/// (its reason escaped) and exported; a reviewer cannot decide; an admin
/// who is an approver of the target (here through a `[[users]]` entry of
/// their IdP name) approves with the CSRF token only, and counts as one
/// person of a two-person rule whose other approval comes over SSH; then
/// revokes it, and denies a second request only with a reason. Each is a
/// `request.*` row by the admin and a `console.action` row.
#[test]
fn access_requests_are_listed_and_decided_by_admins_with_a_csrf_token_only() {
    let env = TestEnv::new();
    let echo = EchoServer::start();
    let ca = env.ca("user_ca");
    let carl = env.signed_key(&ca, "carl", &CertSpec::user(&["carl"]));
    let bob = env.signed_key(&ca, "bob", &CertSpec::user(&["bob"]));
    let w = World::start(env, default_console(), |c| {
        c.trust(&ca)
            .user(User::groups("carl", &["dba"]))
            .user(User::groups("bob", &["leads"]))
            // adam logs in to the console at the IdP; this entry makes that
            // name an approver, as it would over SSH.
            .user(User::groups("adam", &["leads"]))
            .target(
                Target::host("prod", "127.0.0.1", echo.port)
                    .allow_groups(&["dba"])
                    .on_request(&["leads"], "4h", 2),
            )
    });
    let ssh = |user: &str, key: &UserKey, args: &[&str]| {
        let mut all = vec![BASTION];
        all.extend_from_slice(args);
        w.env.client(&w.pv, user).identity(key).run(&all)
    };
    let request = |reason: &str| -> i64 {
        let out = ssh("carl", &carl, &["request", "prod", "1h", reason]);
        out.assert_success();
        let text = out.stdout_text();
        text.split_whitespace()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no request id in {out}"))
    };
    let id = request("INC-1 <b>disk</b> full");

    let rows = |b: &Browser, query: &str| -> Vec<Value> {
        let page = b.get(&format!("/requests?{query}format=json"));
        assert_eq!(page.status, 200, "{page:?}");
        serde_json::from_str(&page.text).unwrap()
    };
    let one = |b: &Browser| -> Value {
        rows(b, "")
            .into_iter()
            .find(|r| r["id"] == json!(id))
            .unwrap_or_else(|| panic!("request {id} not listed"))
    };

    // A reviewer sees it, escaped, with no buttons, and may not decide.
    let (rita, rita_page) = w.logged_in("rita", "rita-pw");
    let list = rita.get("/requests");
    assert_eq!(list.status, 200);
    assert!(
        list.text.contains("INC-1 &lt;b&gt;disk&lt;/b&gt; full"),
        "{}",
        list.text
    );
    assert!(!list.text.contains("<b>disk"), "{}", list.text);
    assert!(!list.text.contains("Approve"), "{}", list.text);
    let approve = format!("/requests/{id}/approve");
    assert_eq!(
        rita.post(&approve, &[("csrf", &rita_page.csrf())]).status,
        403
    );
    assert_eq!(one(&rita)["state"], "pending");

    // The admin: without the token (or with another session's) 403 and
    // nothing changed; with it, one approval of the two needed.
    let (adam, _) = w.logged_in("adam", "adam-pw");
    let list = adam.get("/requests?state=pending");
    assert!(
        list.text.contains(&format!("action=\"{approve}\"")),
        "{}",
        list.text
    );
    let token = list.csrf();
    assert_eq!(adam.post(&approve, &[]).status, 403);
    assert_eq!(
        adam.post(&approve, &[("csrf", &rita_page.csrf())]).status,
        403
    );
    let r = one(&adam);
    assert_eq!(r["state"], "pending");
    assert_eq!(r["approvals"], json!([]));
    let done = adam.post(&approve, &[("csrf", &token)]);
    assert_eq!(done.status, 200, "{done:?}");
    assert!(done.url.contains("/requests"), "{}", done.url);
    let r = one(&adam);
    assert_eq!(r["state"], "pending", "two approvals needed: {r}");
    assert_eq!(r["approvals"], json!(["adam"]));
    // The same person again: refused (the two-person rule counts names).
    let again = adam.post(&approve, &[("csrf", &token)]);
    assert_eq!(again.status, 409, "{again:?}");
    assert!(again.text.contains("approved request"), "{}", again.text);
    // The second approver over SSH opens it.
    ssh("bob", &bob, &["approve", &id.to_string()]).assert_success();
    let r = one(&adam);
    assert_eq!(r["state"], "approved", "{r}");
    assert_eq!(r["approvals"], json!(["adam", "bob"]));
    forward_stdio(
        &w.env.client(&w.pv, "carl").identity(&carl),
        "prod",
        echo.port,
        b"ping\n",
    )
    .assert_success();

    // Revoke: only with the token.
    let revoke = format!("/requests/{id}/revoke");
    assert_eq!(adam.post(&revoke, &[]).status, 403);
    assert_eq!(one(&adam)["state"], "approved");
    assert_eq!(adam.post(&revoke, &[("csrf", &token)]).status, 200);
    let r = one(&adam);
    assert_eq!(r["state"], "revoked", "{r}");
    assert_eq!(r["decided_by"], "adam");

    // Deny a second one: a reason is required.
    let id2 = request("INC-2");
    let deny = format!("/requests/{id2}/deny");
    assert_eq!(adam.post(&deny, &[("reason", "no")]).status, 403);
    assert_eq!(adam.post(&deny, &[("csrf", &token)]).status, 400);
    assert_eq!(
        adam.post(&deny, &[("csrf", &token), ("reason", "  ")])
            .status,
        400
    );
    let denied = adam.post(
        &deny,
        &[("csrf", &token), ("reason", "not during the freeze")],
    );
    assert_eq!(denied.status, 200, "{denied:?}");
    let d = rows(&adam, "state=denied&");
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["id"], json!(id2));
    assert_eq!(d[0]["decision_reason"], "not during the freeze");
    assert_eq!(rows(&adam, "state=pending&").len(), 0);
    assert_eq!(rows(&adam, "user=carl&").len(), 2);
    assert_eq!(rows(&adam, "user=bob&").len(), 0);
    assert_eq!(adam.get("/requests?state=bogus").status, 400);

    // CSV: a header and one line per request, reasons quoted as needed.
    let csv = adam.get("/requests?format=csv");
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    let lines: Vec<&str> = csv.text.lines().collect();
    assert_eq!(lines.len(), 3, "{}", csv.text);
    assert!(
        lines[0].starts_with("id,user,target,duration,reason,state,"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&format!("{id2},carl,prod,1h,INC-2,denied,")),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with(&format!("{id},carl,prod,1h,")),
        "{}",
        lines[2]
    );
    assert!(lines[2].contains(",revoked,"), "{}", lines[2]);

    // The audit rows: the decisions by adam (from the console) and the
    // console's own rows; the chain verifies.
    for (kind, action) in [
        ("request.approve", "request_approve"),
        ("request.revoke", "request_revoke"),
        ("request.deny", "request_deny"),
    ] {
        let ev = w.pv.wait_for_audit(kind, |e| {
            e.kind == kind && e.user.as_deref() == Some("adam")
        });
        assert_eq!(ev.detail_str("via"), Some("console"), "{ev:?}");
        let a = w.pv.wait_for_audit(action, |e| {
            e.kind == "console.action"
                && e.detail_str("action") == Some(action)
                && e.reason.is_none()
        });
        assert_eq!(a.user.as_deref(), Some("adam"));
    }
    let refused = w.pv.wait_for_audit("request.refused", |e| {
        e.kind == "request.refused" && e.user.as_deref() == Some("adam")
    });
    assert_eq!(refused.detail_str("via"), Some("console"));
    w.pv.cli(&["audit", "verify"]).assert_success();
}
