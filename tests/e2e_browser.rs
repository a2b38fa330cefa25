//! The review console (issue 14) in a real browser: headless Chromium
//! driven over WebDriver by chromedriver (tests/common/webdriver.rs),
//! against a real `portvakt serve` with `[console]`, the real test IdP
//! (npm `oidc-provider`, code flow: its HTML login and consent forms,
//! filled in by the browser), real `ssh` forwards and a real recorded sshd.
//!
//! The walk through the pages also saves screenshots of them in
//! `docs/console/` (embedded in docs/CONSOLE.md), so those stay true.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// One test's IdP, portvakt with a console, and chromedriver. Field order
/// is drop order.
struct World {
    driver: WebDriver,
    pv: Portvakt,
    idp: Idp,
    console: Console,
    env: TestEnv,
}

impl World {
    /// In `env`: `tweak` adds to the config (targets, CAs, `[mfa]`).
    fn start(env: TestEnv, tweak: impl FnOnce(Config) -> Config) -> World {
        let console = Console::new(&["security"], &["portvakt-admins"]);
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
        let driver = WebDriver::start(env.path());
        World {
            driver,
            pv,
            idp,
            console,
            env,
        }
    }

    /// A new browser, logged in at the IdP as `user`, on the console's `start`.
    fn logged_in(&self, user: &str, password: &str, start: &str) -> Chromium {
        let b = self.driver.browser(user);
        b.log_in(&self.console.url(), start, user, password);
        b
    }

    /// The console's address of `path`.
    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.console.url())
    }
}

/// Checks that the page's policy blocked nothing, then saves what the
/// browser shows as `docs/console/PAGE.png` (docs/CONSOLE.md shows them).
fn shot(b: &Chromium, page: &str) {
    let blocked = b.csp_violations();
    assert!(
        blocked.is_empty(),
        "the page's CSP blocked: {blocked:?}\n{}",
        b.describe()
    );
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join("console")
        .join(format!("{page}.png"));
    b.screenshot(&path);
}

/// Logging in through the IdP's own forms in Chromium: a reviewer lands
/// on the page they asked for (the `next` of the login) as a reviewer; a
/// user without a console role gets the 403 page, and no session cookie.
#[test]
fn chromium_logs_in_through_the_idp_forms_and_a_user_without_a_role_gets_403() {
    let w = World::start(TestEnv::new(), |c| c);

    let rita = w.logged_in("rita", "rita-pw", "/sessions?user=alice");
    rita.wait_for_title("Sessions");
    assert!(
        rita.url().ends_with("/sessions?user=alice"),
        "back at the page asked for: {}",
        rita.url()
    );
    assert_eq!(rita.find("#viewer").text(), "rita");
    assert!(
        rita.find("header .who").text().contains("(reviewer)"),
        "{}",
        rita.describe()
    );
    assert_eq!(
        rita.find("input[name=user]").attr("value").as_deref(),
        Some("alice"),
        "the filter kept in the form"
    );
    assert!(
        rita.cookie_names()
            .contains(&"portvakt_console".to_string())
    );
    // The navigation works from the page.
    rita.find("nav a[href=\"/audit\"]").click();
    rita.wait_for_title("Audit");
    assert_eq!(rita.csp_violations(), Vec::<String>::new());
    // The watch sees what the policy blocks: an inline script, here.
    rita.execute(
        "var s = document.createElement('script'); s.textContent = 'window.ran = 1;'; \
         document.body.appendChild(s);",
        vec![],
    );
    let blocked = rita.wait_until("the inline script reported blocked", |b| {
        let v = b.csp_violations();
        (!v.is_empty()).then_some(v)
    });
    assert!(blocked[0].contains("script-src"), "{blocked:?}");
    assert_eq!(rita.execute("return window.ran || 0;", vec![]), json!(0));

    let bob = w.logged_in("bob", "bob-pw", "/");
    assert!(
        bob.url().starts_with(&w.at("/auth/callback")),
        "{}",
        bob.describe()
    );
    assert_eq!(bob.status(), 403, "{}", bob.describe());
    assert!(
        bob.body_text()
            .contains("your groups do not give you access to the review console"),
        "{}",
        bob.describe()
    );
    assert!(
        !bob.cookie_names().contains(&"portvakt_console".to_string()),
        "no session for a refused login: {:?}",
        bob.cookie_names()
    );
    // Still not logged in: the console sends bob back to the IdP.
    bob.goto(&w.at("/sessions"));
    assert!(
        !bob.url().starts_with(&w.at("/sessions")),
        "{}",
        bob.describe()
    );
    let no = w.pv.wait_for_event("console.login", "no_console_role");
    assert_eq!(no.user.as_deref(), Some("bob"), "{no:?}");
}

/// An admin's walk through the console in Chromium, with screenshots of
/// each page: a live `ssh -J` forward on Now, ended from there (the `ssh`
/// exits); the sessions filter form; a recorded session's detail and its
/// recording, replayed by the asciinema player (its terminal shows the
/// recorded output); the audit trail; and a grant revoked from `/grants`
/// (the next `ssh` is refused).
#[test]
fn an_admin_in_chromium_ends_a_forward_filters_replays_a_recording_and_revokes_a_grant() {
    let env = TestEnv::new();
    let ca = env.ca("user_ca");
    let carol = env.signed_key(&ca, "carol", &CertSpec::user(&["carol"]));
    let echo = EchoServer::start();
    let keys = env.path().join("recording");
    std::fs::create_dir_all(&keys).unwrap();
    let host_ca = UserKey::ed25519(&keys, "host_ca");
    let target_ca = UserKey::ed25519(&keys, "target_ca");
    let login = target_login_user();
    let sshd = Sshd::start_trusting(env.path(), &target_ca.public_path(), &login);
    let w = World::start(env, |c| {
        let mut c = c
            .trust(&ca)
            .mfa(Mfa::new().totp("off"))
            .target(
                Target::host("echo", "127.0.0.1", echo.port)
                    .allow_users(&["carol"])
                    .allow_groups(&["sre"]),
            )
            .target(
                Target::host("db-1", "127.0.0.1", sshd.port)
                    .allow_users(&["carol"])
                    .recorded(&[&login], &sshd.host_key),
            );
        c.extra = format!(
            "[recording]\nhost_ca_key = {}\ntarget_ca_key = {}\n",
            common::config::toml_str(&host_ca.path.display().to_string()),
            common::config::toml_str(&target_ca.path.display().to_string()),
        );
        c
    });

    // A recorded session: the output (42) is not in the command's text,
    // so only a replay can show it.
    let known = w.pv.cli_json(&["ca", "show", "--json"])["known_hosts_line"]
        .as_str()
        .unwrap()
        .to_string();
    let carol_ssh = w.env.client(&w.pv, "carol").identity(&carol);
    let out = carol_ssh
        .clone()
        .recorded_target("db-1", sshd.port, &login, &known)
        .run(&["db-1", "echo replayed-$((6*7))-in-the-player"]);
    out.assert_success();
    let recorded = w.pv.wait_for_session("the recorded forward closed", |r| {
        r.target.as_deref() == Some("db-1") && r.ended_at.is_some()
    });
    let rec = poll_until("the ended recording", Duration::from_secs(20), || {
        match w.pv.cli_json(&["recordings", "list", "--json"]) {
            Value::Array(rows) => rows.into_iter().find(|r| !r["ended_at"].is_null()),
            _ => None,
        }
    });
    let rec_id = rec["id"].as_i64().unwrap();

    // alice logs in over SSH at the IdP (device flow) and gets a grant.
    let alice_key = w.env.key("alice");
    let alice = w.env.client(&w.pv, "alice").identity(&alice_key);
    let askpass = Askpass::new(w.env.path(), &w.idp, Decision::approve("alice", "alice-pw"));
    let dest = format!("echo:{}", echo.port);
    askpass
        .run_with_input(&alice, &["-W", &dest, BASTION], b"ping\n")
        .assert_success();
    let grant =
        w.pv.wait_for_audit("grant.create", |e| e.kind == "grant.create");
    let grant_id = grant.detail["grant_id"].as_i64().expect("grant_id");
    let alice_row = w.pv.wait_for_session("alice's forward closed", |r| {
        r.user.as_deref() == Some("alice") && r.ended_at.is_some()
    });

    // carol's live forward, open while the admin looks.
    let mut live = carol_ssh.spawn(&["-W", &dest, BASTION]);
    let live_row = w.pv.wait_for_session("carol's live forward", |r| {
        r.user.as_deref() == Some("carol") && r.target.as_deref() == Some("echo")
    });
    let conn = live_row.connection_id.as_str().unwrap().to_string();

    let adam = w.logged_in("adam", "adam-pw", "/");

    // Now: the live forward, with an End button for the admin.
    adam.wait_for_title("Now");
    let end_form = format!("form.end[action=\"/connections/{conn}/end\"]");
    // (alice's connection, closed just now, may take a moment to go.)
    adam.wait_until("only carol's live forward on Now", |b| {
        let rows = b.find_all("#sessions tbody tr");
        if rows.len() == 1
            && rows[0].text().contains("carol")
            && b.try_find(&end_form).is_some()
            && b.body_text()
                .contains("1 open connection(s) and 1 open forward(s)")
        {
            return Some(());
        }
        b.goto(&w.at("/"));
        None
    });
    shot(&adam, "now");
    let form = adam.find(&end_form);
    form.find("input[name=note]")
        .type_text("INC-7 browser test");
    assert!(live.try_wait().is_none(), "ssh ended before End");
    form.find("button[type=submit]").click();
    let status = poll_for(Duration::from_secs(30), || live.try_wait());
    assert!(
        status.is_some(),
        "ssh still running after End; log:\n{}",
        live.log_text()
    );
    let action = w.pv.wait_for_audit("console.action connection_end", |e| {
        e.kind == "console.action" && e.detail_str("action") == Some("connection_end")
    });
    assert_eq!(action.user.as_deref(), Some("adam"));
    assert_eq!(action.detail_str("connection_id"), Some(conn.as_str()));
    assert_eq!(action.detail_str("note"), Some("INC-7 browser test"));
    w.pv.wait_for_event("connection.close", "ended_by_reviewer");
    adam.goto(&w.at("/"));
    adam.wait_until("Now without the ended forward", |b| {
        if b.try_find(&end_form).is_none() {
            return Some(());
        }
        b.goto(&w.at("/"));
        None
    });

    // Sessions: the list, then the filter form.
    adam.find("nav a[href=\"/sessions\"]").click();
    adam.wait_for_title("Sessions");
    let link = |id: &Value| format!("#sessions a[href=\"/sessions/{id}\"]");
    for id in [&recorded.id, &alice_row.id, &live_row.id] {
        assert!(adam.try_find(&link(id)).is_some(), "{}", adam.describe());
    }
    shot(&adam, "sessions");
    let filters = adam.find("form.filters");
    filters.find("input[name=user]").type_text("carol");
    filters.find("input[name=target]").type_text("db-1");
    filters.find("button[type=submit]").click();
    adam.wait_until("the filtered list", |b| {
        let url = b.url();
        (url.contains("user=carol") && url.contains("target=db-1")).then_some(())
    });
    assert!(
        adam.try_find(&link(&recorded.id)).is_some(),
        "{}",
        adam.describe()
    );
    for id in [&alice_row.id, &live_row.id] {
        assert!(
            adam.try_find(&link(id)).is_none(),
            "session {id} filtered out\n{}",
            adam.describe()
        );
    }
    assert_eq!(adam.find_all("#sessions tbody tr").len(), 1);

    // The session's detail, then its recording in the player.
    adam.find(&link(&recorded.id)).click();
    adam.wait_for_title(&format!("Session {}", recorded.id));
    let rec_link = format!("a[href=\"/recordings/{rec_id}\"]");
    adam.find(&rec_link);
    assert!(
        adam.body_text().contains("replayed-$((6*7))-in-the-player"),
        "the command on the detail page\n{}",
        adam.describe()
    );
    shot(&adam, "session");
    adam.find(&rec_link).click();
    adam.wait_for("#player .ap-player");
    // The player fetches the cast when it starts; its start overlay (the
    // big play button) starts it.
    adam.wait_for("#player .ap-overlay-start").click();
    let shown = "replayed-42-in-the-player";
    let terminal = "return Array.from(document.querySelectorAll('#player .ap-term-text')).map(function (e) { return e.textContent; }).join('\\n');";
    adam.wait_until("the player's terminal showing the recorded output", |b| {
        b.execute(terminal, vec![])
            .as_str()
            .is_some_and(|t| t.contains(shown))
            .then_some(())
    });
    let player_text = adam.find("#player").text();
    assert!(
        player_text.contains(shown),
        "the output rendered visibly: {player_text:?}\n{}",
        adam.describe()
    );
    let fetched =
        w.pv.wait_for_audit("console.view of the cast by the player", |e| {
            e.kind == "console.view"
                && e.user.as_deref() == Some("adam")
                && e.detail_str("page") == Some("recording_export")
        });
    assert_eq!(fetched.detail.get("recording_id"), Some(&json!(rec_id)));
    shot(&adam, "recording");

    // Audit: the trail with the chain status (verified in the background).
    adam.find("nav a[href=\"/audit\"]").click();
    adam.wait_for_title("Audit");
    adam.wait_until("the chain verified on /audit", |b| {
        if b.body_text().contains("Intact as verified at") {
            return Some(());
        }
        b.goto(&w.at("/audit"));
        None
    });
    assert!(
        adam.body_text().contains("connection_end"),
        "{}",
        adam.describe()
    );
    shot(&adam, "audit");

    // Grants: alice's, revoked; her next ssh is refused.
    forward_stdio(&alice, "echo", echo.port, b"ping\n").assert_success();
    adam.find("nav a[href=\"/grants\"]").click();
    adam.wait_for_title("Grants");
    let revoke = format!("form[action=\"/grants/{grant_id}/revoke\"]");
    assert!(adam.body_text().contains("alice"), "{}", adam.describe());
    shot(&adam, "grants");
    adam.find(&revoke).find("button[type=submit]").click();
    adam.wait_until("the revoked grant gone from /grants", |b| {
        (b.url().ends_with("/grants") && b.try_find(&revoke).is_none()).then_some(())
    });
    assert_login_refused(&forward_stdio(&alice, "echo", echo.port, b"ping\n"));
    let revoked = w.pv.wait_for_event("grant.revoke", "revoked_by_admin");
    assert_eq!(revoked.user.as_deref(), Some("alice"));
    let action = w.pv.wait_for_audit("console.action grant_revoke", |e| {
        e.kind == "console.action" && e.detail_str("action") == Some("grant_revoke")
    });
    assert_eq!(action.user.as_deref(), Some("adam"));
}
