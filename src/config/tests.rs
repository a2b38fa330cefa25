//! Config validation: every error names its file and line.

use std::path::Path;

use super::*;

const CA: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test-ca\n";
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl deploy@ci";

/// Write `text` as portvakt.toml (plus a CA file) in a temp dir and load it.
fn load(text: &str) -> (tempfile::TempDir, Result<Config, ConfigErrors>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("user_ca.pub"), CA).unwrap();
    let path = dir.path().join("portvakt.toml");
    std::fs::write(&path, text).unwrap();
    let r = Config::load(&path);
    (dir, r)
}

/// The `(line, message)` of each error.
fn errors(text: &str) -> Vec<(usize, String)> {
    match load(text).1 {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.0.into_iter().map(|e| (e.line, e.message)).collect(),
    }
}

fn has_error(text: &str, line: usize, needle: &str) {
    let errs = errors(text);
    assert!(
        errs.iter().any(|(l, m)| *l == line && m.contains(needle)),
        "expected line {line} containing {needle:?}, got {errs:?}"
    );
}

#[test]
fn defaults_and_relative_paths() {
    let (dir, cfg) = load(
        r#"
[server]
host_key_dir = "keys"
[database]
url = "sqlite://./data/pv.db"
[auth]
trusted_user_ca_keys = ["user_ca.pub"]
[[targets]]
name = "db-1"
allow_users = ["alice"]
"#,
    );
    let cfg = cfg.unwrap();
    assert_eq!(cfg.server.listen, vec!["127.0.0.1:2222".parse().unwrap()]);
    assert_eq!(cfg.server.host_key_dir, dir.path().join("keys"));
    assert_eq!(
        cfg.database.url,
        format!("sqlite://{}", dir.path().join("./data/pv.db").display())
    );
    assert_eq!(cfg.server.max_connections, 10_000);
    assert_eq!(cfg.server.max_unauthenticated, 100);
    assert_eq!(cfg.server.login_grace_time, Duration::from_secs(300));
    assert_eq!(cfg.sessions.grant_ttl, Duration::from_secs(8 * 3600));
    assert_eq!(cfg.sessions.max_duration, Duration::from_secs(12 * 3600));
    assert_eq!(cfg.sessions.idle_timeout, Duration::from_secs(1800));
    assert_eq!(cfg.sessions.connect_timeout, Duration::from_secs(10));
    assert_eq!(cfg.auth.deny_users, vec!["root".to_string()]);
    assert_eq!(cfg.auth.max_auth_tries, 6);
    assert!(!cfg.auth.allow_no_touch_required);
    assert_eq!(cfg.auth.trusted_cas.len(), 1);
    assert_eq!(cfg.mfa.totp, TotpMode::Required);
    assert!(
        !cfg.mfa.self_enroll,
        "self-enrolment is off unless asked for"
    );
    assert_eq!(cfg.lockout.max_failures, 5);
    let t = &cfg.policy.targets()[0];
    assert_eq!(
        t.destination,
        crate::policy::Destination::Host {
            host: "db-1".into(),
            port: 22
        }
    );
}

#[test]
fn the_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/portvakt.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // The example names files an installation has; give it some.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("user_ca.pub"), CA).unwrap();
    std::fs::write(dir.path().join("revoked_keys"), "").unwrap();
    std::fs::write(dir.path().join("oidc_secret"), "s3cret\n").unwrap();
    let cfg = Config::parse(&dir.path().join("portvakt.toml"), &text).unwrap();
    assert!(cfg.oidc.is_some());
    assert!(cfg.policy.targets().len() >= 2);
}

#[test]
fn syntax_and_unknown_keys_have_lines() {
    has_error(
        "[server]\nlisten = [\"127.0.0.1:2222\"]\nlisen = 1\n",
        3,
        "unknown field `lisen`",
    );
    has_error("[server]\n\n[nope]\nx = 1\n", 3, "unknown field `nope`");
    has_error(
        "[[targets]]\nname = \"a\"\nallow_users = [\"x\"]\ncolour = \"red\"\n",
        4,
        "unknown field `colour`",
    );
    has_error("[server\n", 1, "");
    has_error("[server]\nmax_connections = \"many\"\n", 2, "invalid type");
}

#[test]
fn bad_values_have_lines() {
    has_error(
        "[server]\nlisten = [\"0.0.0.0:2222\", \"nowhere\"]\n",
        2,
        "not an address",
    );
    has_error("[server]\nlisten = []\n", 2, "at least one");
    has_error(
        "[server]\nlogin_grace_time = \"5 parsecs\"\n",
        2,
        "bad duration",
    );
    has_error(
        "[sessions]\n\nidle_timeout = \"0s\"\n",
        3,
        "longer than zero",
    );
    has_error("[auth]\nmax_auth_tries = 0\n", 2, "out of range");
    has_error(
        "[mfa]\ntotp = \"sometimes\"\n",
        2,
        "not one of required, off",
    );
    has_error("[log]\nformat = \"xml\"\n", 2, "not one of json, pretty");
    has_error("[database]\nurl = \"mysql://x\"\n", 2, "neither sqlite");
    has_error("[metrics]\nlisten = \"9102\"\n", 2, "not an address");
}

#[test]
fn bad_targets_have_lines() {
    has_error(
        "[[targets]]\nname = \"lab\"\ncidr = \"10.20.0.0/33\"\nports = [22]\nallow_users = [\"a\"]\n",
        3,
        "not a CIDR",
    );
    has_error(
        "[[targets]]\nname = \"lab\"\ncidr = \"10.20.0.5/24\"\nports = [22]\nallow_users = [\"a\"]\n",
        3,
        "did you mean 10.20.0.0/24",
    );
    has_error(
        "[[targets]]\nname = \"db\"\nport = 70000\nallow_users = [\"a\"]\n",
        3,
        "70000 is not a port",
    );
    has_error(
        "[[targets]]\nname = \"db\"\nport = 0\nallow_users = [\"a\"]\n",
        3,
        "0 is not a port",
    );
    has_error(
        "[[targets]]\nname = \"lab\"\ncidr = \"10.0.0.0/8\"\nports = [22, -1]\nallow_users = [\"a\"]\n",
        4,
        "-1 is not a port",
    );
    has_error(
        "[[targets]]\nname = \"db\"\nallow_users = [\"a\"]\n\n[[targets]]\nname = \"DB\"\nallow_users = [\"a\"]\n",
        6,
        "defined twice",
    );
    has_error(
        "[[targets]]\nname = \"db\"\nhost = \"10.0.0.1\"\n",
        2,
        "nobody may use it",
    );
    has_error(
        "[[targets]]\nname = \"10.0.0.1\"\nallow_users = [\"a\"]\n",
        2,
        "not a valid target name",
    );
    has_error(
        "[[targets]]\nname = \"lab\"\nhost = \"x\"\ncidr = \"10.0.0.0/8\"\nports = [22]\nallow_users = [\"a\"]\n",
        3,
        "exclude each other",
    );
    has_error(
        "[[targets]]\nname = \"lab\"\ncidr = \"10.0.0.0/8\"\nallow_users = [\"a\"]\n",
        1,
        "needs ports",
    );
    has_error(
        "[[targets]]\nname = \"db\"\nports = [22]\nallow_users = [\"a\"]\n",
        3,
        "for cidr targets",
    );
}

#[test]
fn files_and_users() {
    has_error(
        "[auth]\ntrusted_user_ca_keys = [\"missing.pub\"]\n",
        2,
        "cannot read",
    );
    has_error(
        "[auth]\n\nrevoked_keys = \"missing\"\n",
        3,
        "auth.revoked_keys",
    );
    has_error(
        "[[users]]\nname = \"deploy\"\nkeys = [\"ssh-ed25519 garbage\"]\n",
        3,
        "not an OpenSSH public key",
    );
    has_error(
        &format!("[[users]]\nname = \"a\"\nkeys = [\"{KEY}\"]\n[[users]]\nname = \"a\"\n"),
        5,
        "defined twice",
    );
    has_error("[[users]]\nname = \"a b\"\n", 2, "not a valid user name");
    has_error(
        "[[users]]\nname = \"a\"\nmfa = \"maybe\"\n",
        3,
        "not one of totp, none",
    );
}

#[test]
fn dsa_ca_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // OpenSSH 9.2 `ssh-keygen -t dsa`.
    let dsa = concat!(
        "ssh-dss AAAAB3NzaC1kc3MAAACBAIncsn8xCEg0cBqSgLMr3qASlq41XlAvdLwhd0uydxarW+1hEw+TdQrMhjQ6",
        "HZainGX3zlno6C1UJjgZ8GiJkIUoY4egncQNmyMqSdPxdufoYChOnFShQ51ioFKTt8ya4Lv1P8gUFzUauXVWJhHT",
        "aOg8uTyqFSVUXwdze8CBds4HAAAAFQCPgYHMb9TK+E7Zsp0V7+iO1F3+DQAAAIEAhuCUjLmXpiYaogNuawTGQxv/",
        "9wQGdjq/6f4P4Gq8a1MQzm86IPH9sHbUAfs37/oycSmK4EohxewXxnJjj1QC3HTKLxWjOH5VKpyT59me/f+gTTU9",
        "GlglhOG5LLiq+hKt5WKgr/uyR3JZYXZ/MOxl/JEClA94A/p29f5FEm35zPMAAACAA+4U6Ph/kuL6MW7xtiMtIVzq",
        "TNQ0c3o3vSVCGqlxsuUTyDHo+ELzBa7nQiLwpqlAXoghm33Ot66M085xxLBR6eOvwkzVSg4ThBueMZ13pP4BuYsI",
        "UU38SuMW0J5+PCLd4YqZxWqTA/A4DGQ3boFpfAuw35BKoU20LB/Jho8JYYc= dsa-ca",
    );
    std::fs::write(dir.path().join("cas.pub"), format!("{CA}{dsa}\n")).unwrap();
    let path = dir.path().join("portvakt.toml");
    let text = "[auth]\n\ntrusted_user_ca_keys = [\"cas.pub\"]\n";
    let errs: Vec<(usize, String)> = match Config::parse(&path, text) {
        Ok(_) => panic!("a DSA CA was accepted"),
        Err(e) => e.0.into_iter().map(|e| (e.line, e.message)).collect(),
    };
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, 3, "{errs:?}");
    assert!(
        errs[0]
            .1
            .contains("cas.pub line 2: a DSA (ssh-dss) key cannot be a CA"),
        "{errs:?}"
    );
}

#[test]
fn allow_no_touch_required_is_a_bool() {
    let (_d, cfg) = load("[auth]\nallow_no_touch_required = true\n");
    assert!(cfg.unwrap().auth.allow_no_touch_required);
    has_error(
        "[auth]\n\nallow_no_touch_required = \"yes\"\n",
        3,
        "invalid type",
    );
}

#[test]
fn every_problem_is_reported_in_line_order() {
    let errs = errors(
        "[server]\nlogin_grace_time = \"soon\"\n[[targets]]\nname = \"db\"\nport = 99999\n[[targets]]\nname = \"x\"\n",
    );
    let lines: Vec<usize> = errs.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, vec![2, 4, 5, 7], "{errs:?}");
}

#[test]
fn root_is_always_denied_and_service_accounts_warn() {
    let (_d, cfg) = load(&format!(
        "[auth]\ndeny_users = [\"guest\"]\n[[users]]\nname = \"deploy\"\nkeys = [\"{KEY}\"]\nmfa = \"none\"\n"
    ));
    let cfg = cfg.unwrap();
    assert!(cfg.auth.deny_users.contains(&"root".to_string()));
    assert!(cfg.auth.deny_users.contains(&"guest".to_string()));
    let warnings: Vec<&str> = cfg.warnings.iter().map(|w| w.message.as_str()).collect();
    assert!(
        warnings.iter().any(|w| w.contains("root is always denied")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("service accounts")),
        "{warnings:?}"
    );
    assert_eq!(cfg.user("deploy").unwrap().mfa, UserMfa::None);
}

#[test]
fn display_is_file_colon_line() {
    let e = ConfigError {
        file: "/etc/portvakt/portvakt.toml".into(),
        line: 7,
        message: "bad".into(),
    };
    assert_eq!(e.to_string(), "/etc/portvakt/portvakt.toml:7: bad");
}

#[test]
fn recorded_targets() {
    let base = "[[targets]]\nname = \"db-1\"\nhost = \"10.0.1.5\"\nallow_users = [\"alice\"]\n";
    // Valid: logins, a pinned host key, aliases reach the same target.
    let text = format!(
        "{base}mode = \"record\"\nlogins = [\"admin\", \"{{user}}\"]\nhost_key = \"{KEY}\"\naliases = [\"db-1.corp.example\"]\n"
    );
    let (_dir, cfg) = load(&text);
    let cfg = cfg.unwrap();
    let t = &cfg.policy.targets()[0];
    let rec = t.record.as_ref().expect("recorded");
    assert!(rec.allows_login("alice", "admin"));
    assert!(rec.allows_login("alice", "alice"));
    assert!(!rec.allows_login("alice", "bob"));
    assert!(t.has_name("DB-1.corp.example"));
    assert_eq!(t.dial_names(), ["db-1", "10.0.1.5", "db-1.corp.example"]);
    assert_eq!(cfg.recording.max_bytes, 64 << 20);
    assert!(cfg.recording.close_on_failure);
    // No way to check the target's key: never trust on first use.
    has_error(
        &format!("{base}mode = \"record\"\nlogins = [\"admin\"]\n"),
        1,
        "needs the target's host_key or its host_ca",
    );
    has_error(
        &format!("{base}mode = \"record\"\nhost_key = \"{KEY}\"\n"),
        1,
        "needs logins",
    );
    has_error(
        &format!("{base}logins = [\"admin\"]\n"),
        5,
        "applies only with mode = \"record\"",
    );
    has_error(
        &format!("{base}mode = \"record\"\nlogins = [\"admin\"]\nhost_key = \"nope\"\n"),
        7,
        "not an OpenSSH public key",
    );
    has_error(
        "[[targets]]\nname = \"net\"\ncidr = \"10.0.0.0/24\"\nports = [22]\nallow_users = [\"a\"]\nmode = \"record\"\nlogins = [\"x\"]\nhost_key = \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\"\n",
        1,
        "cidr target cannot be recorded",
    );
    has_error(
        &format!(
            "{base}\n[[targets]]\nname = \"db-2\"\nhost = \"10.0.1.6\"\nallow_users = [\"a\"]\nmode = \"record\"\nlogins = [\"x\"]\nhost_key = \"{KEY}\"\naliases = [\"db-1\"]\n"
        ),
        13,
        "already names another target",
    );
    has_error(
        "[recording]\nmax_bytes = \"lots\"\n",
        2,
        "recording.max_bytes",
    );
    has_error(
        "[recording]\nhost_ca_key = \"k\"\ntarget_ca_key = \"k\"\n",
        3,
        "must be different keys",
    );
}

#[tokio::test]
async fn a_recorded_target_is_reached_by_its_aliases() {
    let text = format!(
        "[[targets]]\nname = \"db-1\"\nhost = \"10.0.1.5\"\nallow_users = [\"alice\"]\nmode = \"record\"\nlogins = [\"admin\"]\nhost_key = \"{KEY}\"\naliases = [\"db-1.corp.example\"]\n"
    );
    let (_dir, cfg) = load(&text);
    let cfg = cfg.unwrap();
    let alice = crate::policy::Subject::new("alice", Vec::<String>::new());
    for host in ["db-1", "DB-1.corp.example"] {
        let req = crate::policy::Request { host, port: 22 };
        let a = crate::policy::decide(&cfg.policy, &alice, &req, &crate::policy::SystemResolver)
            .await
            .unwrap();
        assert_eq!(a.target(), "db-1");
        let (_, names) = a.record().expect("recorded");
        assert_eq!(names, ["db-1", "10.0.1.5", "db-1.corp.example"]);
    }
}

/// `[oidc]` plus `[console]` with `console` as its body, at line 4.
fn console(body: &str) -> String {
    format!(
        "[oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"portvakt\"\n[console]\n{body}"
    )
}

#[test]
fn the_console_is_off_without_its_section_and_read_with_defaults() {
    let (_dir, cfg) = load("");
    assert!(cfg.unwrap().console.is_none());
    let (_dir, cfg) = load(&console(
        "listen = \"127.0.0.1:8443\"\npublic_url = \"https://bastion.example.com:8443/\"\nreviewer_groups = [\"security\"]\nadmin_groups = [\"portvakt-admins\"]\ntls_cert = \"\"\ntls_key = \"\"\n",
    ));
    let c = cfg.unwrap().console.unwrap();
    assert_eq!(c.listen, "127.0.0.1:8443".parse().unwrap());
    assert_eq!(c.tls, None, "empty tls_cert and tls_key: plain HTTP");
    assert_eq!(c.public_url, "https://bastion.example.com:8443");
    assert_eq!(c.reviewer_groups, ["security"]);
    assert_eq!(c.admin_groups, ["portvakt-admins"]);
    assert_eq!(c.session_idle, Duration::from_secs(1800));
    assert_eq!(c.session_max, Duration::from_secs(8 * 3600));
    assert!(c.secure_cookies());
}

#[test]
fn the_console_serves_https_with_a_readable_cert_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.pem"), "cert").unwrap();
    std::fs::write(dir.path().join("k.pem"), "key").unwrap();
    let path = dir.path().join("portvakt.toml");
    std::fs::write(
        &path,
        console(
            "listen = \"0.0.0.0:8443\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\npublic_url = \"https://b.example.com:8443\"\nreviewer_groups = [\"security\"]\nsession_idle = \"5m\"\nsession_max = \"1h\"\n",
        ),
    )
    .unwrap();
    let c = Config::load(&path).unwrap().console.unwrap();
    let tls = c.tls.unwrap();
    assert_eq!(tls.cert, dir.path().join("c.pem"));
    assert_eq!(tls.key, dir.path().join("k.pem"));
    assert_eq!(c.session_idle, Duration::from_secs(300));
    assert_eq!(c.session_max, Duration::from_secs(3600));
}

#[test]
fn the_console_refuses_plain_http_off_loopback() {
    has_error(
        &console("listen = \"0.0.0.0:8443\"\npublic_url = \"https://b.example.com\"\n"),
        5,
        "plain HTTP on 0.0.0.0:8443",
    );
    has_error(
        &console("listen = \"10.0.0.5:8443\"\npublic_url = \"https://b.example.com\"\n"),
        5,
        "listen on loopback",
    );
}

#[test]
fn the_console_refuses_half_a_tls_pair_and_unreadable_files() {
    has_error(
        &console(
            "listen = \"127.0.0.1:8443\"\npublic_url = \"https://b.example.com\"\ntls_cert = \"user_ca.pub\"\n",
        ),
        7,
        "give both tls_cert and tls_key",
    );
    has_error(
        &console(
            "listen = \"127.0.0.1:8443\"\npublic_url = \"https://b.example.com\"\ntls_key = \"user_ca.pub\"\n",
        ),
        7,
        "give both tls_cert and tls_key",
    );
    has_error(
        &console(
            "listen = \"127.0.0.1:8443\"\npublic_url = \"https://b.example.com\"\ntls_cert = \"user_ca.pub\"\ntls_key = \"missing.pem\"\n",
        ),
        8,
        "console.tls_key: cannot read",
    );
}

#[test]
fn the_console_needs_oidc() {
    has_error(
        "[console]\nlisten = \"127.0.0.1:8443\"\npublic_url = \"https://b.example.com\"\n",
        1,
        "add an [oidc] section",
    );
}

#[test]
fn the_console_needs_its_own_port() {
    has_error(
        &format!(
            "[server]\nlisten = [\"0.0.0.0:2222\"]\n{}",
            console("listen = \"127.0.0.1:2222\"\npublic_url = \"https://b.example.com\"\n")
        ),
        7,
        "is an SSH port",
    );
    has_error(
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:9102\"\n{}",
            console("listen = \"127.0.0.1:9102\"\npublic_url = \"https://b.example.com\"\n")
        ),
        7,
        "is the metrics port",
    );
    // Another address on the same port is another socket.
    let (_dir, cfg) = load(&format!(
        "[server]\nlisten = [\"127.0.0.1:2222\"]\n{}",
        console("listen = \"127.0.0.2:2222\"\npublic_url = \"https://b.example.com\"\n")
    ));
    assert!(cfg.is_ok(), "{cfg:?}");
}

#[test]
fn the_console_public_url_is_https_unless_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.pem"), "cert").unwrap();
    std::fs::write(dir.path().join("k.pem"), "key").unwrap();
    let path = dir.path().join("portvakt.toml");
    std::fs::write(
        &path,
        console("listen = \"0.0.0.0:8443\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\npublic_url = \"http://b.example.com:8443\"\n"),
    )
    .unwrap();
    let errs = Config::load(&path).unwrap_err().0;
    assert!(
        errs.iter()
            .any(|e| e.line == 8 && e.message.contains("must be https://")),
        "{errs:?}"
    );
    // On loopback (behind a proxy, or a test) plain http is allowed.
    let (_dir, cfg) = load(&console(
        "listen = \"127.0.0.1:8443\"\npublic_url = \"http://127.0.0.1:8443\"\n",
    ));
    assert!(!cfg.unwrap().console.unwrap().secure_cookies());
    has_error(
        &console("listen = \"127.0.0.1:8443\"\npublic_url = \"b.example.com\"\n"),
        6,
        "console.public_url",
    );
    has_error(
        &console("listen = \"127.0.0.1:8443\"\npublic_url = \"https://b.example.com/?x=1\"\n"),
        6,
        "console.public_url",
    );
}

#[test]
fn the_console_session_times_are_checked() {
    has_error(
        &console(
            "listen = \"127.0.0.1:8443\"\npublic_url = \"https://b.example.com\"\nsession_idle = \"9h\"\n",
        ),
        7,
        "longer than console.session_max",
    );
    has_error(
        &console(
            "listen = \"127.0.0.1:8443\"\npublic_url = \"https://b.example.com\"\nsession_max = \"0s\"\n",
        ),
        7,
        "console.session_max",
    );
    has_error(
        &console("listen = \"localhost:8443\"\npublic_url = \"https://b.example.com\"\n"),
        5,
        "console.listen",
    );
}

#[test]
fn the_console_pins_audit_keys_from_readable_key_files() {
    use russh::keys::PrivateKey;
    use russh::keys::ssh_key::private::Ed25519Keypair;
    let dir = tempfile::tempdir().unwrap();
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&[7; 32]));
    let line = key.public_key().to_openssh().unwrap();
    std::fs::write(
        dir.path().join("node-a.pub"),
        format!("# node-a\n{line} node-a\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("not-a-key.pub"), "hello\n").unwrap();
    let body = |keys: &str| {
        console(&format!(
            "listen = \"127.0.0.1:8443\"\npublic_url = \"http://127.0.0.1:8443\"\nreviewer_groups = [\"security\"]\naudit_keys = [{keys}]\n"
        ))
    };
    let path = dir.path().join("portvakt.toml");
    std::fs::write(&path, body("\"node-a.pub\"")).unwrap();
    let c = Config::load(&path).unwrap().console.unwrap();
    assert_eq!(c.audit_keys.len(), 1);
    assert_eq!(
        c.audit_keys[0],
        crate::audit::checkpoint::VerifyingKey::parse(&line).unwrap()
    );
    for (keys, want) in [
        ("\"missing.pub\"", "console.audit_keys: "),
        ("\"not-a-key.pub\"", "not-a-key.pub:1"),
    ] {
        std::fs::write(&path, body(keys)).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains(want), "{keys}: {e}");
    }
}
