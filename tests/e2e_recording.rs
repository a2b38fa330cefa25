//! Recorded targets (issue 12, DESIGN.md §10) with the stock `ssh -J`: the
//! engineer's client trusts the target only through one `@cert-authority`
//! line and logs in with no second prompt; portvakt logs in to a real sshd
//! that trusts only its target CA, relays, and records what was done.

mod common;

use serde_json::Value;

use common::*;

/// alice (certificate login) may use the recorded target "db-1", a real
/// sshd that trusts only portvakt's recording target CA.
struct Recorded {
    env: TestEnv,
    pv: Portvakt,
    config: Config,
    sshd: Sshd,
    alice: UserKey,
    login: String,
    host_ca: String,
}

impl Recorded {
    fn start() -> Recorded {
        Self::start_with(|cfg, _| cfg)
    }

    /// `edit` may change the config (given the sshd) before portvakt starts.
    fn start_with(edit: impl FnOnce(Config, &Sshd) -> Config) -> Recorded {
        Self::start_on(None, edit)
    }

    /// On `db` (as node "node-a", so that more nodes can join), or on a
    /// fresh database of the test pass.
    fn start_on(db: Option<&Database>, edit: impl FnOnce(Config, &Sshd) -> Config) -> Recorded {
        let env = TestEnv::new();
        let ca = env.ca("user_ca");
        let alice = env.signed_key(&ca, "alice", &CertSpec::user(&["alice"]));
        // The recording CAs, made before portvakt starts so that the target
        // can trust the target CA from its first connection.
        let keys = env.path().join("recording");
        std::fs::create_dir_all(&keys).unwrap();
        let host_ca = UserKey::ed25519(&keys, "host_ca");
        let target_ca = UserKey::ed25519(&keys, "target_ca");
        let login = sshd::target_login_user();
        let sshd = Sshd::start_trusting(env.path(), &target_ca.public_path(), &login);
        let mut config = Config::new().trust(&ca).target(
            Target::host("db-1", "127.0.0.1", sshd.port)
                .allow_users(&["alice"])
                .recorded(&[&login], &sshd.host_key),
        );
        config.extra = format!(
            "[recording]\nhost_ca_key = {}\ntarget_ca_key = {}\n",
            config::toml_str(&host_ca.path.display().to_string()),
            config::toml_str(&target_ca.path.display().to_string()),
        );
        let config = edit(config, &sshd);
        let pv = match db {
            Some(db) => {
                let config = config.clone().node_name("node-a");
                Portvakt::start_node(&env.path().join("node-a"), &config, db)
            }
            None => env.portvakt(&config),
        };
        // What an engineer is told to put in known_hosts.
        let shown = pv.cli_json(&["ca", "show", "--json"]);
        assert_eq!(
            shown["host_ca"].as_str(),
            Some(host_ca.public_line().trim())
        );
        assert_eq!(
            shown["target_ca"].as_str(),
            Some(target_ca.public_line().trim())
        );
        let line = shown["known_hosts_line"].as_str().unwrap().to_string();
        assert!(line.starts_with("@cert-authority db-1,[db-1]:*,"), "{line}");
        Recorded {
            host_ca: line,
            env,
            pv,
            config,
            sshd,
            alice,
            login,
        }
    }

    fn client(&self) -> SshClient {
        self.env
            .client(&self.pv, "alice")
            .identity(&self.alice)
            .recorded_target("db-1", self.sshd.port, &self.login, &self.host_ca)
    }

    fn recordings(&self) -> Vec<Value> {
        match self.pv.cli_json(&["recordings", "list", "--json"]) {
            Value::Array(rows) => rows,
            other => panic!("recordings list --json is not an array: {other}"),
        }
    }

    /// The one recording of `kind`, once it has ended.
    fn wait_recording(&self, kind: &str) -> Value {
        proc::poll_until(
            &format!("an ended {kind} recording"),
            std::time::Duration::from_secs(20),
            || {
                self.recordings()
                    .into_iter()
                    .find(|r| r["kind"] == kind && !r["ended_at"].is_null())
            },
        )
    }

    /// A recording of `kind` has begun (its row exists).
    fn wait_recording_started(&self, kind: &str) -> Value {
        proc::poll_until(
            &format!("a {kind} recording"),
            std::time::Duration::from_secs(20),
            || self.recordings().into_iter().find(|r| r["kind"] == kind),
        )
    }

    fn export(&self, id: &Value) -> String {
        let out = self.pv.cli(&["recordings", "export", &id.to_string()]);
        out.assert_success();
        String::from_utf8(out.stdout).expect("asciicast is UTF-8")
    }
}

/// asciicast v2: a header object, then `[time, code, data]` events in time order.
fn parse_cast(text: &str) -> (Value, Vec<(f64, String, String)>) {
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().expect("header")).expect("header JSON");
    assert_eq!(header["version"], 2, "{header}");
    assert!(header["width"].as_u64().is_some(), "{header}");
    let mut events = Vec::new();
    let mut at = 0.0;
    for line in lines {
        let ev: Value = serde_json::from_str(line).expect("event JSON");
        let t = ev[0].as_f64().expect("event time");
        assert!(t >= at, "events out of order: {line}");
        at = t;
        events.push((
            t,
            ev[1].as_str().unwrap().to_string(),
            ev[2].as_str().unwrap().to_string(),
        ));
    }
    (header, events)
}

#[test]
fn an_exec_session_is_recorded_and_its_exit_status_reaches_the_client() {
    let r = Recorded::start();
    let out = r.client().run(&["db-1", "echo recorded-$((6*7)); exit 3"]);
    assert_eq!(out.code(), 3, "{out}");
    assert_eq!(out.stdout_text().trim(), "recorded-42", "{out}");

    let rec = r.wait_recording("exec");
    assert_eq!(rec["user"], "alice");
    assert_eq!(rec["target"], "db-1");
    assert_eq!(rec["login"], r.login.as_str());
    assert_eq!(rec["command"], "echo recorded-$((6*7)); exit 3");
    assert_eq!(rec["exit_status"], 3, "{rec}");
    assert_eq!(rec["truncated"], false);
    let cast = r.export(&rec["id"]);
    let (_, events) = parse_cast(&cast);
    let output: String = events
        .iter()
        .filter(|(_, code, _)| code == "o")
        .map(|(_, _, d)| d.as_str())
        .collect();
    assert!(output.contains("recorded-42"), "{cast}");
    // The stored hash is the stored content's: `export --raw` prints it
    // (the terminal's bytes in frames), and holds the output as it came.
    let sha = rec["sha256"].as_str().expect("sha256");
    let raw =
        r.pv.cli(&["recordings", "export", "--raw", &rec["id"].to_string()]);
    raw.assert_success();
    assert_eq!(sha, sha256_hex(&raw.stdout));
    assert_eq!(rec["bytes"], raw.stdout.len(), "{rec}");
    assert!(raw.stdout.starts_with(b"portvakt frames 1\n"));
    assert!(
        raw.stdout
            .windows(12)
            .any(|w| w == b"recorded-42\n" || w == b"recorded-42\r"),
        "{}",
        String::from_utf8_lossy(&raw.stdout)
    );

    // The audit trail has both ends, tied to the forward's row.
    let start =
        r.pv.wait_for_audit("recording.start", |e| e.kind == "recording.start");
    assert_eq!(start.detail_str("kind"), Some("exec"));
    let end =
        r.pv.wait_for_audit("recording.end", |e| e.kind == "recording.end");
    assert_eq!(end.detail_str("sha256"), Some(sha));
    assert_eq!(end.detail["exit_status"], 3);
    let session = r.pv.wait_for_session("the recorded forward closed", |s| {
        s.target.as_deref() == Some("db-1") && s.ended_at.is_some()
    });
    assert_eq!(start.detail["session_id"], session.id);
    assert!(session.bytes_from_target > 0, "{session:?}");
    // The session row says it was recorded, and by which recordings.
    let rows = r.pv.sessions_json(&[]);
    let row = rows.iter().find(|s| s["id"] == session.id).unwrap();
    assert_eq!(row["mode"], "record", "{row}");
    assert_eq!(row["recordings"], serde_json::json!([rec["id"]]), "{row}");

    // `ssh bastion` tells alice that db-1 is recorded, and the line to trust it.
    let out = r.client().run(&["bastion"]);
    assert!(
        out.stderr.contains("Sessions on db-1 are recorded"),
        "{out}"
    );
    assert!(out.stderr.contains(&r.host_ca), "{out}");

    // The target's log names the person and the connection.
    let key_id = format!("portvakt:alice:{}", session.connection_id.as_str().unwrap());
    proc::poll_until(
        &format!("{key_id} in the target's log"),
        std::time::Duration::from_secs(10),
        || r.sshd.log().contains(&key_id).then_some(()),
    );
}

#[test]
fn an_interactive_pty_session_is_recorded_as_asciicast_with_timing() {
    let r = Recorded::start();
    let out = r.client().run_with_input(
        &["-tt", "db-1"],
        b"echo pty-$((6*7))\nsleep 0.3\necho second-line\nexit\n".to_vec(),
    );
    assert!(out.status.success(), "{out}");
    let rec = r.wait_recording("shell");
    let cast = r.export(&rec["id"]);
    let (header, events) = parse_cast(&cast);
    assert!(header["height"].as_u64().is_some(), "{header}");
    let first = events
        .iter()
        .find(|(_, c, d)| c == "o" && d.contains("pty-42"))
        .unwrap_or_else(|| panic!("no pty-42 in {cast}"));
    let second = events
        .iter()
        .find(|(_, c, d)| {
            c == "o"
                && d.matches("second-line\r\n").count() > d.matches("echo second-line\r\n").count()
        })
        .unwrap_or_else(|| panic!("no second-line output in {cast}"));
    // The command's output (more lines than the echo of the typed
    // command); the sleep between them shows in the timing.
    assert!(second.0 - first.0 >= 0.25, "{first:?} {second:?}");
    // Keystrokes are not recorded by default.
    assert!(events.iter().all(|(_, c, _)| c != "i"), "{cast}");

    // The asciinema player plays the export (in a terminal: `script` gives
    // it one).
    let file = r.env.write("session.cast", &cast);
    let out = proc::run(
        std::process::Command::new("script").args([
            "-qec",
            &format!("asciinema cat {}", file.display()),
            "/dev/null",
        ]),
        Some(Vec::new()),
        proc::RUN_TIMEOUT,
    );
    out.assert_success();
    assert!(out.stdout_text().contains("second-line"), "{out}");

    // Played back without waiting, the terminal output comes out.
    let out =
        r.pv.cli(&["recordings", "play", &rec["id"].to_string(), "--no-wait"]);
    out.assert_success();
    assert!(out.stdout_text().contains("second-line"), "{out}");
}

#[test]
fn a_login_the_target_does_not_allow_is_refused_and_audited() {
    let r = Recorded::start();
    let out = r
        .client()
        .log_level("INFO")
        .run(&["-l", "nobody", "db-1", "true"]);
    assert_ne!(out.code(), 0, "{out}");
    // The banner names the logins that are allowed.
    assert!(
        out.stderr.contains(&format!("Logins: {}", r.login)),
        "{out}"
    );
    r.pv.wait_for_event("channel.refused", "target_login_refused");
    assert!(r.recordings().is_empty());
}

#[test]
fn a_target_with_another_host_key_is_refused_and_audited() {
    let r = Recorded::start_with(|mut cfg, _| {
        // Pin a key the target does not have.
        let other =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
        let t = cfg.targets.pop().unwrap();
        let mut t2 = Target::host("db-1", "127.0.0.1", t.port.unwrap()).allow_users(&["alice"]);
        let login = sshd::target_login_user();
        t2 = t2.recorded(&[&login], other);
        cfg.targets.push(t2);
        cfg
    });
    let out = r.client().run(&["db-1", "echo should-not-run"]);
    assert_ne!(out.code(), 0, "{out}");
    assert!(!out.stdout_text().contains("should-not-run"), "{out}");
    assert!(
        out.stderr.contains("host key the config does not trust"),
        "{out}"
    );
    let s =
        r.pv.wait_for_session("the refused forward closed", |s| s.ended_at.is_some());
    assert_eq!(s.close_reason.as_deref(), Some("target_host_key"), "{s:?}");
}

#[test]
fn without_the_cert_authority_line_the_client_does_not_trust_the_target() {
    let r = Recorded::start();
    // A known_hosts with the target's real key but not portvakt's host CA:
    // the certificate portvakt presents is not accepted.
    let client = r
        .env
        .client(&r.pv, "alice")
        .identity(&r.alice)
        .target("db-1", &r.sshd, &r.login, &r.alice);
    let out = client.run(&["db-1", "echo should-not-run"]);
    assert_ne!(out.code(), 0, "{out}");
    assert!(!out.stdout_text().contains("should-not-run"), "{out}");
}

fn sha256_hex(data: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn audit_verify_finds_an_edited_or_deleted_recording() {
    let r = Recorded::start();
    let out = r.client().run(&["db-1", "echo evidence"]);
    assert!(out.status.success(), "{out}");
    let rec = r.wait_recording("exec");
    let id = rec["id"].to_string();
    r.pv.wait_for_audit("recording.end", |e| e.kind == "recording.end");
    r.pv.cli(&["audit", "verify"]).assert_code(0);

    // Somebody rewrites what was recorded, and the row's hash and size to
    // match: the chained recording.end event still has the original's.
    let edit = |from: &str, to: &str| {
        let cast = r.export(&rec["id"]);
        let forged = cast.replace(from, to);
        forged_chunk(&r.pv, &id, forged.as_bytes())
    };
    database::execute(r.pv.database_url(), edit("evidence", "nothing!"));
    let out = r.pv.cli(&["audit", "verify", "--json"]);
    out.assert_code(1);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let problem = &report["nodes"][0]["problems"][0];
    assert_eq!(problem["problem"], "recording_changed", "{report}");
    assert_eq!(problem["table"], "recordings", "{report}");
    assert_eq!(problem["row"], id.as_str(), "{report}");

    // Deleted outright.
    database::execute(
        r.pv.database_url(),
        format!(
            "DELETE FROM recording_chunks WHERE recording_id = {id}; DELETE FROM recordings WHERE id = {id}"
        ),
    );
    let out = r.pv.cli(&["audit", "verify", "--json"]);
    out.assert_code(1);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["nodes"][0]["problems"][0]["problem"], "recording_missing",
        "{report}"
    );
}

/// SQL that replaces recording `id`'s content with `content` (one LZ4
/// block) and makes its row agree with it.
fn forged_chunk(pv: &Portvakt, id: &str, content: &[u8]) -> String {
    let data: String = lz4_flex::block::compress(content)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let blob = if pv.database_url().starts_with("sqlite") {
        format!("X'{data}'")
    } else {
        format!("'\\x{data}'::bytea")
    };
    format!(
        "DELETE FROM recording_chunks WHERE recording_id = {id}; \
         INSERT INTO recording_chunks (recording_id, seq, data, raw_bytes) VALUES ({id}, 0, {blob}, {n}); \
         UPDATE recordings SET bytes = {n}, chunks = 1, sha256 = '{sha}' WHERE id = {id}",
        n = content.len(),
        sha = sha256_hex(content),
    )
}

#[test]
fn a_session_whose_recording_cannot_be_stored_is_ended_with_a_message() {
    let r = Recorded::start();
    let mut ssh = r.client().spawn(&["-tt", "db-1"]);
    {
        use std::io::Write;
        let stdin = ssh.stdin();
        stdin.write_all(b"echo before\n").unwrap();
        stdin.flush().unwrap();
    }
    r.wait_recording_started("shell");
    // The database refuses the recording's chunks from now on.
    database::execute(
        r.pv.database_url(),
        "ALTER TABLE recording_chunks RENAME TO recording_chunks_gone".to_string(),
    );
    {
        use std::io::Write;
        let stdin = ssh.stdin();
        stdin
            .write_all(b"for i in 1 2 3 4 5 6 7 8 9 10; do echo tick-$i; sleep 1; done\n")
            .unwrap();
        stdin.flush().unwrap();
    }
    let status = ssh.wait_exit(std::time::Duration::from_secs(30));
    assert!(!status.success(), "{status:?}");
    let log = ssh.log_text();
    assert!(
        log.contains("the recording of this session cannot be stored, so the session is ended"),
        "{log}"
    );
    let end = r.pv.wait_for_audit("the failed recording's end", |e| {
        e.kind == "recording.end" && e.detail["failed"] == true
    });
    assert_eq!(end.detail["session_closed"], true, "{end:?}");
}

/// `scp`/`sftp` with the client's `-F` config.
fn transfer(client: &SshClient, program: &str, args: &[&str]) -> RunOutput {
    let cfg = client.write_config();
    let mut cmd = std::process::Command::new(program);
    cmd.arg("-F").arg(&cfg).args(args);
    cmd.env_remove("SSH_AUTH_SOCK");
    proc::run(&mut cmd, None, proc::RUN_TIMEOUT)
}

/// The `file.op` events of the test so far, as (op, path, bytes, ok).
fn file_ops(pv: &Portvakt) -> Vec<(String, String, u64, Option<bool>)> {
    pv.audit()
        .into_iter()
        .filter(|e| e.kind == "file.op")
        .map(|e| {
            (
                e.detail_str("op").unwrap_or("").to_string(),
                e.detail_str("path").unwrap_or("").to_string(),
                e.detail["bytes"].as_u64().unwrap_or(0),
                e.detail["ok"].as_bool(),
            )
        })
        .collect()
}

#[test]
fn scp_and_sftp_transfers_arrive_intact_and_their_file_operations_are_recorded() {
    let r = Recorded::start();
    let client = r.client();
    let dir = r.env.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let local = dir.join("up.bin");
    std::fs::write(&local, &payload).unwrap();
    let remote = dir.join("remote");
    std::fs::create_dir_all(&remote).unwrap();

    // scp (over sftp, OpenSSH 9's default) up, then the legacy protocol down.
    let up = remote.join("via-scp.bin");
    let out = transfer(
        &client,
        "scp",
        &[local.to_str().unwrap(), &format!("db-1:{}", up.display())],
    );
    out.assert_success();
    assert_eq!(std::fs::read(&up).unwrap(), payload);
    let down = dir.join("down-legacy.bin");
    let out = transfer(
        &client,
        "scp",
        &[
            "-O",
            &format!("db-1:{}", up.display()),
            down.to_str().unwrap(),
        ],
    );
    out.assert_success();
    assert_eq!(std::fs::read(&down).unwrap(), payload);

    // sftp: put, rename, mkdir, remove.
    let batch = dir.join("batch");
    let renamed = remote.join("renamed.bin");
    std::fs::write(
        &batch,
        format!(
            "put {} {}\nrename {} {}\nmkdir {}\nrm {}\n",
            local.display(),
            remote.join("via-sftp.bin").display(),
            remote.join("via-sftp.bin").display(),
            renamed.display(),
            remote.join("newdir").display(),
            up.display(),
        ),
    )
    .unwrap();
    let out = transfer(&client, "sftp", &["-b", batch.to_str().unwrap(), "db-1"]);
    out.assert_success();
    assert_eq!(std::fs::read(&renamed).unwrap(), payload);
    assert!(!up.exists());

    let n = payload.len() as u64;
    let up_s = up.display().to_string();
    let want = [
        ("write", up_s.clone(), n),
        ("read", up_s.clone(), n),
        (
            "write",
            remote.join("via-sftp.bin").display().to_string(),
            n,
        ),
        (
            "rename",
            remote.join("via-sftp.bin").display().to_string(),
            0,
        ),
        ("mkdir", remote.join("newdir").display().to_string(), 0),
        ("remove", up_s, 0),
    ];
    let ops = proc::poll_until(
        "the file operations",
        std::time::Duration::from_secs(20),
        || {
            let ops = file_ops(&r.pv);
            want.iter()
                .all(|(op, path, bytes)| {
                    ops.iter()
                        .any(|o| o.0 == *op && o.1 == *path && o.2 == *bytes && o.3 == Some(true))
                })
                .then_some(ops)
        },
    );
    // Each session is a recording of its kind, whose transcript lists them.
    let rows = r.recordings();
    let kinds: Vec<&str> = rows.iter().filter_map(|r| r["kind"].as_str()).collect();
    assert!(
        kinds.contains(&"sftp") && kinds.contains(&"scp"),
        "{rows:#?} {ops:?}"
    );
    let legacy = rows.iter().find(|r| r["kind"] == "scp").unwrap();
    // `recordings show` lists a session's file operations.
    let sftp = rows
        .iter()
        .find(|r| r["kind"] == "sftp" && r["command"] == "sftp")
        .unwrap();
    let shown =
        r.pv.cli_json(&["recordings", "show", &sftp["id"].to_string(), "--json"]);
    let ops = shown["file_ops"].as_array().expect("file_ops");
    assert!(!ops.is_empty(), "{shown}");
    assert!(
        ops.iter()
            .all(|o| o["detail"]["recording_id"] == sftp["id"]),
        "{shown}"
    );
    let (_, events) = parse_cast(&r.export(&legacy["id"]));
    assert!(
        events
            .iter()
            .any(|(_, _, d)| d.contains(&format!("read {}", up.display()))),
        "{events:?}"
    );
}

#[test]
fn forwards_inside_a_session_follow_the_policy_and_agent_forwarding_is_refused() {
    let echo = EchoServer::start();
    let r = Recorded::start_with(|mut cfg, _| {
        let t = cfg.targets.pop().unwrap();
        cfg.targets.push(t.line("permit_port_forwarding = true"));
        cfg.target(Target::host("echo", "127.0.0.1", echo.port).allow_users(&["alice"]))
    });
    // -L to a target alice may use works through the recorded session.
    let lport = proc::free_port();
    let mut ssh = r.client().spawn(&[
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        &format!("127.0.0.1:{lport}:echo:{}", echo.port),
        "db-1",
    ]);
    let mut stream = proc::poll_until("the -L port", std::time::Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", lport)).ok()
    });
    {
        use std::io::{Read, Write};
        stream.write_all(b"ping\n").unwrap();
        let mut buf = [0u8; 5];
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        stream.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping\n");
    }
    drop(stream);
    let fwd = r.pv.wait_for_session("the inner forward", |s| {
        s.target.as_deref() == Some("echo") && s.ended_at.is_some()
    });
    assert!(fwd.bytes_to_target >= 5, "{fwd:?}");
    ssh.kill();

    // A destination that is not a target of alice's: refused and audited.
    let out = r
        .client()
        .log_level("INFO")
        .run(&["-W", "127.0.0.1:9", "db-1"]);
    assert_ne!(out.code(), 0, "{out}");
    r.pv.wait_for_audit("the refused inner forward", |e| {
        e.kind == "forward.denied" && e.detail_str("host") == Some("127.0.0.1")
    });

    // -R inside the session: the target listens, and a connection to its
    // port there reaches the echo server through the engineer's ssh.
    let rport = proc::free_port();
    let script = format!("exec 3<>/dev/tcp/127.0.0.1/{rport}; printf 'pong\\n' >&3; head -c 5 <&3");
    let out = r.client().run(&[
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        &format!("127.0.0.1:{rport}:127.0.0.1:{}", echo.port),
        "db-1",
        &format!("bash -c \"{script}\""),
    ]);
    out.assert_success();
    assert_eq!(out.stdout_text(), "pong\n", "{out}");
    let ev = r.pv.wait_for_audit("the remote forward's connection", |e| {
        e.kind == "remote.forward"
    });
    assert_eq!(
        ev.detail_str("listen"),
        Some(format!("127.0.0.1:{rport}").as_str())
    );
    assert_eq!(ev.detail_str("target"), Some("db-1"), "{ev:?}");
    assert_eq!(ev.detail["bytes_from_client"].as_u64(), Some(5), "{ev:?}");
    assert_eq!(ev.detail["bytes_to_client"].as_u64(), Some(5), "{ev:?}");

    // -A: the agent is not forwarded to the recorded target.
    // (`-o` reaches the destination, not the jump: the agent is offered
    // to the recorded target only.)
    let agent = SshAgent::start(r.env.path());
    let identity_agent = format!("IdentityAgent={}", agent.socket.display());
    let out = r.client().run(&[
        "-A",
        "-o",
        &identity_agent,
        "db-1",
        "echo agent=${SSH_AUTH_SOCK:-none}",
    ]);
    out.assert_success();
    assert_eq!(out.stdout_text().trim(), "agent=none", "{out}");
    r.pv.wait_for_event("channel.refused", "agent_forward_refused");
}

#[test]
fn a_target_cannot_open_channels_to_the_engineer_unasked() {
    // The target is hostile: once portvakt logged in, it tries to open a
    // session, X11, direct-tcpip and a forwarded-tcpip for a port nobody
    // forwarded (russh's client accepts each by default). Even where port
    // and agent forwarding are allowed, every one is refused.
    let mut hostile = None;
    let r = Recorded::start_with(|mut cfg, _| {
        let t = common::hostile::HostileTarget::start();
        cfg.targets.pop();
        let cfg = cfg.target(
            Target::host("db-1", "127.0.0.1", t.port)
                .allow_users(&["alice"])
                .recorded(&[&sshd::target_login_user()], &t.host_key)
                .line("permit_port_forwarding = true")
                .line("agent_forwarding = true"),
        );
        hostile = Some(t);
        cfg
    });
    let hostile = hostile.unwrap();
    let out = r
        .env
        .client(&r.pv, "alice")
        .identity(&r.alice)
        .recorded_target("db-1", hostile.port, &r.login, &r.host_ca)
        .run(&["db-1", "anything"]);
    out.assert_success();
    assert_eq!(
        out.stdout_text().trim(),
        "session=refused x11=refused direct-tcpip=refused forwarded-tcpip=refused",
        "{out}"
    );
    let ev =
        r.pv.wait_for_event("channel.refused", "remote_forward_refused");
    assert!(
        ev.detail_str("request")
            .is_some_and(|q| q.contains("opened by the target for 127.0.0.1:9999")),
        "{ev:?}"
    );
    let ev =
        r.pv.wait_for_event("channel.refused", "target_channel_refused");
    assert_eq!(ev.detail_str("request"), Some("session"), "{ev:?}");
}

#[test]
fn a_target_with_agent_forwarding_uses_the_engineers_agent_through_the_recorded_session() {
    let r = Recorded::start_with(|mut cfg, _| {
        let t = cfg.targets.pop().unwrap();
        cfg.target(t.line("agent_forwarding = true"))
    });
    let agent = SshAgent::start(r.env.path());
    agent.add(&r.alice);
    let identity_agent = format!("IdentityAgent={}", agent.socket.display());
    // On the target, `ssh-add -l` asks the agent through the target's sshd,
    // portvakt's upstream connection and the engineer's inner connection.
    let out = r
        .client()
        .run(&["-A", "-o", &identity_agent, "db-1", "ssh-add -l"]);
    out.assert_success();
    assert!(
        out.stdout_text().contains(&r.alice.fingerprint()),
        "the target did not see alice's key in her agent: {out}"
    );
    let ev =
        r.pv.wait_for_audit("the agent channel", |e| e.kind == "agent.forward");
    assert_eq!(ev.detail_str("target"), Some("db-1"), "{ev:?}");
    assert!(
        ev.detail["bytes_from_agent"].as_u64().unwrap_or(0) > 0,
        "{ev:?}"
    );
    // This target does not permit port forwarding: -R is refused, audited.
    let out = r.client().run(&[
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        "127.0.0.1:0:127.0.0.1:9",
        "db-1",
        "true",
    ]);
    assert_ne!(out.code(), 0, "{out}");
    r.pv.wait_for_event("channel.refused", "remote_forward_refused");
    // Without -A the target sees no agent.
    let out = r.client().run(&[
        "-o",
        &identity_agent,
        "db-1",
        "echo agent=${SSH_AUTH_SOCK:-none}",
    ]);
    out.assert_success();
    assert_eq!(out.stdout_text().trim(), "agent=none", "{out}");
}

#[test]
fn a_reload_that_takes_the_login_away_ends_the_recorded_session() {
    let r = Recorded::start();
    let mut ssh = r.client().spawn(&["db-1", "echo started; sleep 120"]);
    let rec = r.wait_recording_started("exec");
    // Its first output is stored (a chunk at most FLUSH_EVERY later).
    proc::poll_until(
        "the recorded output",
        std::time::Duration::from_secs(20),
        || {
            let out = r.pv.cli(&["recordings", "export", &rec["id"].to_string()]);
            // An "o" event, not the command in the header.
            String::from_utf8_lossy(&out.stdout)
                .contains("\"o\", \"started")
                .then_some(())
        },
    );
    // db-1 stays alice's target, but no longer with this login.
    let mut config = r.config.clone();
    config.targets.pop();
    let config = config.target(
        Target::host("db-1", "127.0.0.1", r.sshd.port)
            .allow_users(&["alice"])
            .recorded(&["someone-else"], &r.sshd.host_key),
    );
    let ev = r.pv.reload(&config);
    assert_eq!(ev.detail["closed_forwards"], 1, "{ev:?}");
    let status = ssh.wait_exit(std::time::Duration::from_secs(20));
    assert!(
        !status.success(),
        "the recorded session went on: {status:?}"
    );
    let fwd = r.pv.wait_for_session("the recorded forward, ended", |s| {
        s.target.as_deref() == Some("db-1") && s.ended_at.is_some()
    });
    assert_eq!(
        fwd.close_reason.as_deref(),
        Some("config_reload"),
        "{fwd:?}"
    );
    // Its recording ended too, with what the session printed.
    let rec = r.wait_recording("exec");
    let text = r.export(&rec["id"]);
    let (_, events) = parse_cast(&text);
    assert!(
        events.iter().any(|(_, _, d)| d.contains("started")),
        "{text}\n{rec}\n{:?}",
        r.recordings()
    );
}

#[test]
fn only_the_locale_of_the_clients_environment_reaches_the_target() {
    let r = Recorded::start();
    // The target accepts every variable (AcceptEnv *); portvakt relays
    // only LANG and LC_*.
    let out = r
        .client()
        .env("LANG", "C.UTF-8")
        .env("LC_TIME", "C")
        .env("LD_PRELOAD", "/tmp/evil.so")
        .env("PORTVAKT_TEST_VAR", "x")
        .run(&[
            "-o",
            "SendEnv=LANG LC_TIME LD_PRELOAD PORTVAKT_TEST_VAR",
            "db-1",
            "echo \"$LANG|$LC_TIME|${LD_PRELOAD:-unset}|${PORTVAKT_TEST_VAR:-unset}\"",
        ]);
    out.assert_success();
    assert_eq!(out.stdout_text().trim(), "C.UTF-8|C|unset|unset", "{out}");
    let ev = r.pv.wait_for_event("channel.refused", "env_refused");
    assert!(
        matches!(
            ev.detail_str("request"),
            Some("LD_PRELOAD" | "PORTVAKT_TEST_VAR")
        ),
        "{ev:?}"
    );
}

#[test]
fn a_recording_made_through_one_node_is_played_from_another() {
    let db = Database::postgres_required("tests/e2e_recording.rs (two nodes on one database)");
    let r = Recorded::start_on(Some(&db), |cfg, _| cfg);
    let b = Portvakt::start_node(
        &r.env.path().join("node-b"),
        &r.config.clone().node_name("node-b"),
        &db,
    );
    // Through node B ...
    let client = SshClient::to_portvakt(r.env.path(), &b, "alice")
        .identity(&r.alice)
        .recorded_target("db-1", r.sshd.port, &r.login, &r.host_ca);
    let out = client.run(&["db-1", "echo via-node-b"]);
    assert_eq!(out.stdout_text().trim(), "via-node-b", "{out}");
    // ... played from node A.
    let rec = r.wait_recording("exec");
    assert_eq!(rec["node"], "node-b", "{rec}");
    let out =
        r.pv.cli(&["recordings", "play", &rec["id"].to_string(), "--no-wait"]);
    out.assert_success();
    assert!(out.stdout_text().contains("via-node-b"), "{out}");
}

#[test]
fn output_past_max_bytes_reaches_the_client_but_not_the_recording() {
    let r = Recorded::start_with(|mut cfg, _| {
        cfg.extra += "max_bytes = \"4KiB\"\n";
        cfg
    });
    let out = r.client().run(&[
        "db-1",
        "head -c 20000 /dev/zero | tr '\\0' x; echo; echo done",
    ]);
    out.assert_success();
    let text = out.stdout_text();
    assert_eq!(text.matches('x').count(), 20000, "the session goes on");
    assert!(text.ends_with("done\n"), "{text:?}");
    let rec = r.wait_recording("exec");
    assert_eq!(rec["truncated"], true, "{rec}");
    assert!(rec["bytes"].as_u64().unwrap() <= 4096, "{rec}");
    let end =
        r.pv.wait_for_audit("recording.end", |e| e.kind == "recording.end");
    assert_eq!(end.detail["truncated"], true, "{end:?}");
    // What was kept is still valid asciicast.
    parse_cast(&r.export(&rec["id"]));
}

#[test]
fn a_target_dialled_by_an_alias_presents_a_certificate_for_that_name() {
    let r = Recorded::start_with(|mut cfg, _| {
        let t = cfg.targets.pop().unwrap();
        cfg.targets
            .push(t.line("aliases = [\"db-1.corp.example\"]"));
        cfg
    });
    assert!(
        r.host_ca
            .contains("db-1.corp.example,[db-1.corp.example]:*"),
        "{}",
        r.host_ca
    );
    let client = r
        .env
        .client(&r.pv, "alice")
        .identity(&r.alice)
        .recorded_target("db-1.corp.example", r.sshd.port, &r.login, &r.host_ca);
    let out = client.run(&["db-1.corp.example", "echo by-alias"]);
    assert_eq!(out.stdout_text().trim(), "by-alias", "{out}");
    let rec = r.wait_recording("exec");
    assert_eq!(rec["target"], "db-1", "{rec}");
}

#[test]
fn keystrokes_are_recorded_only_when_input_is_on() {
    let r = Recorded::start_with(|mut cfg, _| {
        cfg.extra += "input = true\n";
        cfg
    });
    let out = r
        .client()
        .run_with_input(&["-tt", "db-1"], b"echo typed-$((2*21))\nexit\n".to_vec());
    assert!(out.status.success(), "{out}");
    let rec = r.wait_recording("shell");
    let (_, events) = parse_cast(&r.export(&rec["id"]));
    let typed: String = events
        .iter()
        .filter(|(_, c, _)| c == "i")
        .map(|(_, _, d)| d.as_str())
        .collect();
    assert!(typed.contains("echo typed-$((2*21))"), "{events:?}");
}

/// Sends `signal` (`-STOP`, `-CONT`) to `pids`.
fn signal_all(signal: &str, pids: &[u32]) {
    let mut cmd = std::process::Command::new("kill");
    cmd.arg(signal).args(pids.iter().map(|p| p.to_string()));
    proc::run_ok(&mut cmd);
}

/// The client's keepalives that the server answered, in an OpenSSH
/// client's DEBUG3 log (portvakt's inner server answers them with
/// SSH_MSG_REQUEST_FAILURE, type 82).
fn keepalives_answered(log: &str) -> usize {
    log.matches("receive packet: type 82").count()
}

/// `session` (running `echo <word>` on db-1) ends well, prints `word`,
/// and its exec recording names the command.
fn assert_echoed(r: &Recorded, session: &mut ChildGuard, word: &str) {
    let status = session.wait_exit(std::time::Duration::from_secs(20));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut session.take_stdout(), &mut out).unwrap();
    assert!(status.success(), "{status:?}: {}", session.log_text());
    assert_eq!(out.trim(), word);
    let rec = r.wait_recording("exec");
    assert_eq!(rec["command"], format!("echo {word}"));
}

/// While the target is slow to answer (its sshd stopped), the inner
/// connection's loop is not waiting for it: the client's keepalives are
/// still answered, so the client does not give up on portvakt, and the
/// session runs once the target answers. (Before the answers to channel
/// opens and requests were awaited beside the loop, vendor/russh patch 10,
/// the loop waited up to 20 s for the target and the client, which here
/// gives up after two unanswered keepalives, dropped the connection.)
#[test]
fn a_target_slow_to_answer_does_not_stall_the_engineers_connection() {
    let r = Recorded::start();
    let client = r.client().log_level("DEBUG3");
    let mux = r.env.path().join("mux");
    let control_path = format!("ControlPath={}", mux.display());
    // A master connection, logged in to portvakt's inner server and,
    // through it, to the target; no session yet.
    let mut master = client.spawn(&[
        "-N",
        "-o",
        "ControlMaster=yes",
        "-o",
        &control_path,
        "-o",
        "ServerAliveInterval=1",
        "-o",
        "ServerAliveCountMax=2",
        "db-1",
    ]);
    proc::poll_until(
        "the master connection",
        std::time::Duration::from_secs(20),
        || {
            master.assert_running();
            client
                .run(&["-o", &control_path, "-O", "check", "db-1"])
                .code()
                .eq(&0)
                .then_some(())
        },
    );
    let stopped = r.sshd.connection_pids();
    assert!(!stopped.is_empty(), "the target serves the master");
    signal_all("-STOP", &stopped);
    // The keepalives answered so far.
    let before = keepalives_answered(&master.full_log());
    let mut session = client.spawn(&["-o", &control_path, "db-1", "echo through-the-stall"]);
    // The session's channel open waits for the target, and three more
    // keepalives are answered meanwhile (two unanswered end the master).
    proc::poll_until(
        "keepalives answered while the target is stopped",
        std::time::Duration::from_secs(15),
        || {
            master.assert_running();
            (keepalives_answered(&master.full_log()) >= before + 3).then_some(())
        },
    );
    assert!(
        session.try_wait().is_none(),
        "the session waits for the target"
    );
    signal_all("-CONT", &stopped);
    assert_echoed(&r, &mut session, "through-the-stall");
    master.assert_running();
}

/// The same while portvakt logs in to the target: the engineer is logged
/// in to the inner server at once, the session waits for the target (its
/// sshd stopped before it greets portvakt) while the client's keepalives
/// are answered, and runs once the target is resumed.
#[test]
fn a_target_slow_to_log_in_to_does_not_stall_the_engineers_connection() {
    let r = Recorded::start();
    let client = r.client().log_level("DEBUG3");
    let listener = [r.sshd.listener_pid()];
    signal_all("-STOP", &listener);
    let mut session = client.spawn(&[
        "-o",
        "ServerAliveInterval=1",
        "-o",
        "ServerAliveCountMax=2",
        "db-1",
        "echo after-the-login",
    ]);
    proc::poll_until(
        "keepalives answered while the target is stopped",
        std::time::Duration::from_secs(20),
        || {
            session.assert_running();
            (keepalives_answered(&session.full_log()) >= 3).then_some(())
        },
    );
    assert!(
        r.recordings().is_empty(),
        "no session has reached the target yet"
    );
    signal_all("-CONT", &listener);
    assert_echoed(&r, &mut session, "after-the-login");
}

/// A client that keeps sending requests on a session while the target
/// does not answer them (its sshd stopped) is disconnected once 256
/// answers are owed, instead of portvakt queueing them without end.
#[test]
fn a_client_piling_up_requests_behind_a_silent_target_is_disconnected() {
    let r = Recorded::start();
    let ssh_config = r.client().write_config();
    let flood = raw_client::FloodRecorded {
        ssh_config: &ssh_config,
        target: "db-1",
        target_port: r.sshd.port,
        login: &r.login,
    };
    let mut stopped = Vec::new();
    let ended = flood.run(400, || {
        stopped = r.sshd.connection_pids();
        assert!(!stopped.is_empty(), "the target serves the session");
        signal_all("-STOP", &stopped);
    });
    signal_all("-CONT", &stopped);
    assert!(ended, "portvakt kept the flooding connection open");
    proc::poll_until(
        "the warning in portvakt's log",
        std::time::Duration::from_secs(10),
        || {
            r.pv.log()
                .contains("too many requests waiting for the target")
                .then_some(())
        },
    );
}
