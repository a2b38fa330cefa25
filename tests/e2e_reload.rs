//! A config reload reaches connections that are already logged in. With
//! ControlMaster, one bastion connection carries every later `ssh -W` for
//! hours: each new forward must be decided under the config in force, and a
//! login the new config would refuse (denied user, revoked certificate,
//! no target left) ends at the reload.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ChildStdout;

use common::proc::read_exact_within;
use common::*;

/// alice (certificate), echo targets `echo` and `echo2` for her.
struct World {
    env: TestEnv,
    ca: UserCa,
    alice: UserKey,
    echo: TcpServer,
    echo2: TcpServer,
}

impl World {
    fn new() -> World {
        let env = TestEnv::new();
        let ca = env.ca("user_ca");
        let alice = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]).serial(7));
        World {
            env,
            ca,
            alice,
            echo: EchoServer::start(),
            echo2: EchoServer::start(),
        }
    }

    fn config(&self, targets: &[&str]) -> Config {
        let mut c = Config::new().trust(&self.ca);
        if targets.contains(&"echo") {
            c = c.target(Target::host("echo", "127.0.0.1", self.echo.port).allow_users(&["alice"]));
        }
        if targets.contains(&"echo2") {
            c = c
                .target(Target::host("echo2", "127.0.0.1", self.echo2.port).allow_groups(&["ops"]));
        }
        // alice is in `ops` through her [[users]] entry.
        c.user(User::groups("alice", &["ops"]))
    }

    fn client(&self, pv: &Portvakt) -> SshClient {
        self.env
            .client(pv, "alice")
            .identity(&self.alice)
            .log_level("INFO")
    }
}

/// A ControlMaster connection to the bastion, and `-W` forwards riding on it.
struct Master {
    client: SshClient,
    socket: PathBuf,
    process: ChildGuard,
}

impl Master {
    fn start(client: SshClient, dir: &Path) -> Master {
        let socket = dir.join("master.sock");
        let s = socket.display().to_string();
        let process = client.spawn(&["-M", "-S", &s, "-o", "ControlPersist=no", "-N", BASTION]);
        poll_until("the control socket", AUDIT_TIMEOUT, || {
            socket.exists().then_some(())
        });
        Master {
            client,
            socket,
            process,
        }
    }

    fn mux_args<'a>(&'a self, socket: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["-S", socket, "-o", "ControlMaster=no"];
        args.extend_from_slice(rest);
        args
    }

    /// `ssh -W host:port` through the master: one line echoed, then EOF.
    fn forward(&self, host: &str, port: u16) -> RunOutput {
        let s = self.socket.display().to_string();
        let w = format!("{host}:{port}");
        self.client
            .run_with_input(&self.mux_args(&s, &["-W", &w, BASTION]), b"ping\n".to_vec())
    }

    /// A `-W` forward through the master that stays open.
    fn open(&self, host: &str, port: u16) -> (ChildGuard, ChildStdout) {
        let s = self.socket.display().to_string();
        let w = format!("{host}:{port}");
        let mut ssh = self.client.spawn(&self.mux_args(&s, &["-W", &w, BASTION]));
        let stdout = ssh.take_stdout();
        ssh.stdin().write_all(b"hello\n").unwrap();
        ssh.stdin().flush().unwrap();
        let (stdout, back) = read_exact_within(stdout, 6, AUDIT_TIMEOUT);
        assert_eq!(back, b"hello\n");
        (ssh, stdout)
    }
}

/// A `-W` through the master was refused by the bastion (a mux client
/// only learns "refused by peer"; the reason went to the master).
fn assert_refused_on_master(out: &RunOutput) {
    out.assert_code(255);
    out.assert_stderr_contains("refused by peer");
}

/// The one connection alice's master holds (from its `auth.success`).
fn master_connection(pv: &Portvakt) -> String {
    let ev = pv.wait_for_audit("alice's login", |e| {
        e.kind == "auth.success" && e.user.as_deref() == Some("alice")
    });
    ev.connection_id
        .as_str()
        .expect("connection id")
        .to_string()
}

fn reload(pv: &Portvakt, config: &Config) -> AuditEvent {
    let ev = pv.reload(config);
    assert_eq!(ev.detail_str("result"), Some("applied"), "{ev:?}");
    ev
}

/// The master ends, and its connection's close row says why.
fn assert_master_ended(pv: &Portvakt, master: &mut Master, connection: &str) {
    master.process.wait_exit(AUDIT_TIMEOUT);
    let close = pv.wait_for_audit("the master's connection.close", |e| {
        e.kind == "connection.close" && e.connection_id.as_str() == Some(connection)
    });
    assert_eq!(close.reason.as_deref(), Some("config_revoked"), "{close:?}");
}

#[test]
fn a_reload_that_removes_a_target_refuses_the_next_forward_on_a_live_master() {
    let w = World::new();
    let pv = w.env.portvakt(&w.config(&["echo", "echo2"]));
    let master = Master::start(w.client(&pv), w.env.path());
    let conn = master_connection(&pv);
    master.forward("echo", w.echo.port).assert_success();
    let (_live_echo2, _out) = master.open("echo2", w.echo2.port);

    let ev = reload(&pv, &w.config(&["echo2"]));
    assert_eq!(ev.detail["closed_connections"], 0, "{ev:?}");

    assert_refused_on_master(&master.forward("echo", w.echo.port));
    let denied = pv.wait_for_event("forward.denied", "unknown_target");
    assert_eq!(
        denied.connection_id.as_str(),
        Some(conn.as_str()),
        "{denied:?}"
    );
    // The login itself still holds: echo2 works on the same master.
    master.forward("echo2", w.echo2.port).assert_success();
    assert_eq!(w.echo.connections(), 1, "echo was dialled after the reload");
}

#[test]
fn a_reload_that_removes_a_group_closes_its_forwards_and_refuses_new_ones() {
    let w = World::new();
    let pv = w.env.portvakt(&w.config(&["echo", "echo2"]));
    let master = Master::start(w.client(&pv), w.env.path());
    let (mut live, _out) = master.open("echo2", w.echo2.port);

    // alice leaves `ops`; she keeps echo.
    let config = w.config(&["echo", "echo2"]);
    let mut config = config;
    config.users.clear();
    let ev = reload(&pv, &config);
    assert_eq!(ev.detail["closed_forwards"], 1, "{ev:?}");
    live.wait_exit(AUDIT_TIMEOUT);
    assert_refused_on_master(&master.forward("echo2", w.echo2.port));
    pv.wait_for_event("forward.denied", "user_not_allowed");
    master.forward("echo", w.echo.port).assert_success();
}

#[test]
fn a_reload_that_removes_the_last_target_ends_the_master() {
    let w = World::new();
    let pv = w.env.portvakt(&w.config(&["echo"]));
    let mut master = Master::start(w.client(&pv), w.env.path());
    let conn = master_connection(&pv);
    master.forward("echo", w.echo.port).assert_success();

    let mut config = w.config(&["echo2"]);
    config.users.clear();
    let ev = reload(&pv, &config);
    assert_eq!(ev.detail["closed_connections"], 1, "{ev:?}");
    assert_master_ended(&pv, &mut master, &conn);
    // A fresh connection gets no further.
    assert_forward_prohibited(&master.forward("echo", w.echo.port), "alice");
}

#[test]
fn a_reload_that_denies_the_user_ends_the_master() {
    let w = World::new();
    let pv = w.env.portvakt(&w.config(&["echo"]));
    let mut master = Master::start(w.client(&pv), w.env.path());
    let conn = master_connection(&pv);
    master.forward("echo", w.echo.port).assert_success();

    let ev = reload(&pv, &w.config(&["echo"]).deny_users(&["root", "alice"]));
    assert_eq!(ev.detail["closed_connections"], 1, "{ev:?}");
    assert_master_ended(&pv, &mut master, &conn);
    assert_login_refused(&master.forward("echo", w.echo.port));
}

#[test]
fn a_reload_with_a_krl_revoking_the_certificate_ends_the_master() {
    let w = World::new();
    let pv = w.env.portvakt(&w.config(&["echo"]));
    let mut master = Master::start(w.client(&pv), w.env.path());
    let conn = master_connection(&pv);
    master.forward("echo", w.echo.port).assert_success();

    let krl = w.env.path().join("revoked.krl");
    w.ca.write_krl_serials(&krl, &[7]);
    let ev = reload(&pv, &w.config(&["echo"]).revoked_keys(&krl));
    assert_eq!(ev.detail["closed_connections"], 1, "{ev:?}");
    assert_master_ended(&pv, &mut master, &conn);
    assert_login_refused(&master.forward("echo", w.echo.port));
}

#[test]
fn a_reload_names_the_settings_that_need_a_restart() {
    let w = World::new();
    let pv = w.env.portvakt(&w.config(&["echo"]));
    let ev = reload(&pv, &w.config(&["echo"]).max_connections(77));
    assert_eq!(
        ev.detail_str("needs_restart"),
        Some("server.max_connections"),
        "{ev:?}"
    );
    let line = pv
        .log()
        .lines()
        .find(|l| l.contains("needs_restart"))
        .map(str::to_string);
    assert!(
        line.as_deref()
            .is_some_and(|l| l.contains("server.max_connections")),
        "no log line names it: {line:?}"
    );
}
