//! The stock OpenSSH client, driven through a generated `-F` config file.
//!
//! Options given with `-o` or `-i` do not reach the ProxyJump hop; only the
//! `-F` file does, so everything about the bastion hop lives in that file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::keys::{SshAgent, UserKey};
use super::portvakt::Portvakt;
use super::proc::{ChildGuard, RUN_TIMEOUT, RunOutput, run};
use super::sshd::Sshd;

/// The host alias of the first hop (portvakt, or an sshd in harness checks).
pub const BASTION: &str = "bastion";

static NEXT_CLIENT: AtomicUsize = AtomicUsize::new(0);

/// An `ssh` invocation recipe: who logs in to the first hop with what, and
/// which targets sit behind it.
#[derive(Clone, Debug)]
pub struct SshClient {
    /// Folder for this client's config and known_hosts files.
    pub dir: PathBuf,
    /// User name on the first hop.
    pub user: String,
    /// Port of the first hop on 127.0.0.1.
    pub port: u16,
    known_hosts: Vec<String>,
    identities: Vec<PathBuf>,
    certificates: Vec<PathBuf>,
    agent: Option<PathBuf>,
    bastion_options: Vec<String>,
    hosts: Vec<String>,
    /// `LogLevel` for every hop. ERROR keeps output clean; refused-forward
    /// texts ("open failed: administratively prohibited: ...") are logged at INFO.
    pub log_level: String,
    /// How long [`SshClient::run`] lets ssh run before killing it (a failure).
    pub timeout: Duration,
    /// Environment variables set for the ssh process (for `SendEnv`).
    envs: Vec<(String, String)>,
}

impl SshClient {
    /// A client of `portvakt` logging in as `user`.
    pub fn to_portvakt(parent: &Path, portvakt: &Portvakt, user: &str) -> SshClient {
        Self::new(parent, portvakt.port, portvakt.known_hosts_line(), user)
    }

    /// A client of a target sshd directly (harness checks), logging in as `user`.
    pub fn to_sshd(parent: &Path, sshd: &Sshd, user: &str) -> SshClient {
        Self::new(parent, sshd.port, sshd.known_hosts_line("127.0.0.1"), user)
    }

    /// A client of whatever listens on 127.0.0.1:`port` with the host key
    /// in `known_host` (a whole known_hosts line), logging in as `user`.
    pub fn new(parent: &Path, port: u16, known_host: String, user: &str) -> SshClient {
        let n = NEXT_CLIENT.fetch_add(1, Ordering::SeqCst);
        let dir = parent.join(format!("ssh-client-{n}"));
        fs::create_dir_all(&dir).expect("create client dir");
        SshClient {
            dir,
            user: user.to_string(),
            port,
            known_hosts: vec![known_host],
            identities: Vec::new(),
            certificates: Vec::new(),
            agent: None,
            bastion_options: Vec::new(),
            hosts: Vec::new(),
            log_level: "ERROR".to_string(),
            timeout: RUN_TIMEOUT,
            envs: Vec::new(),
        }
    }

    /// Trusts the bastion through `line` (a whole known_hosts line) instead
    /// of the line made from the server's own key file: one line for several
    /// nodes behind one load balancer (issue 6).
    pub fn bastion_known_host(mut self, line: &str) -> Self {
        self.known_hosts[0] = line.to_string();
        self
    }

    /// Offers `key` (and its `-cert.pub`, which the client picks up by itself).
    pub fn identity(mut self, key: &UserKey) -> Self {
        self.identities.push(key.path.clone());
        self
    }

    /// Offers the certificate at `path` (`CertificateFile`).
    pub fn certificate(mut self, path: &Path) -> Self {
        self.certificates.push(path.to_path_buf());
        self
    }

    /// Offers what `agent` holds instead of identity files.
    pub fn agent(mut self, agent: &SshAgent) -> Self {
        self.agent = Some(agent.socket.clone());
        self
    }

    /// Adds a raw option line to the bastion's `Host` block.
    pub fn bastion_option(mut self, line: &str) -> Self {
        self.bastion_options.push(line.to_string());
        self
    }

    /// Sets `LogLevel` for every hop.
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_string();
        self
    }

    /// Sets how long a run may take before it is killed (bulk transfers
    /// through a debug build need more than the default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Adds `Host alias` reached through the bastion with `ProxyJump`: the
    /// client asks the bastion for `alias:sshd.port`, so the portvakt target
    /// must be named `alias`. It logs into `sshd` as `login` with `key`.
    pub fn target(mut self, alias: &str, sshd: &Sshd, login: &str, key: &UserKey) -> Self {
        self.known_hosts.push(sshd.known_hosts_line(alias));
        self.hosts.push(format!(
            "Host {alias}\n  HostName {alias}\n  Port {port}\n  User {login}\n  \
             IdentityFile {key}\n  IdentitiesOnly yes\n  IdentityAgent none\n  ProxyJump {BASTION}\n",
            port = sshd.port,
            key = key.path.display(),
        ));
        self
    }

    /// Adds `Host alias`, a recorded target behind the bastion: trusted
    /// only through `known_hosts_line` (the `@cert-authority` line `portvakt
    /// ca show` prints), logged in to as `login` with no key of the client's own.
    pub fn recorded_target(
        mut self,
        alias: &str,
        port: u16,
        login: &str,
        known_hosts_line: &str,
    ) -> Self {
        self.known_hosts.push(known_hosts_line.trim().to_string());
        self.hosts.push(format!(
            "Host {alias}\n  HostName {alias}\n  Port {port}\n  User {login}\n  \
             IdentityFile {none}\n  IdentitiesOnly yes\n  IdentityAgent none\n  ProxyJump {BASTION}\n",
            none = self.dir.join("no-such-key").display(),
        ));
        self
    }

    /// Writes the `-F` file (a fresh one per call) and returns its path.
    pub fn write_config(&self) -> PathBuf {
        let n = NEXT_CLIENT.fetch_add(1, Ordering::SeqCst);
        let known_hosts = self.dir.join("known_hosts");
        let lines: String = self.known_hosts.iter().map(|l| format!("{l}\n")).collect();
        fs::write(&known_hosts, lines).expect("write known_hosts");

        let mut s = format!(
            "Host {BASTION}\n  HostName 127.0.0.1\n  Port {}\n  User {}\n",
            self.port, self.user
        );
        match &self.agent {
            Some(socket) => {
                // Only what the agent holds: a missing IdentityFile keeps the
                // client from also trying ~/.ssh/id_* defaults.
                s += &format!("  IdentityAgent {}\n", socket.display());
                s += "  IdentitiesOnly no\n";
                s += &format!(
                    "  IdentityFile {}\n",
                    self.dir.join("no-such-key").display()
                );
            }
            None => {
                s += "  IdentityAgent none\n  IdentitiesOnly yes\n";
                for identity in &self.identities {
                    s += &format!("  IdentityFile {}\n", identity.display());
                }
                if self.identities.is_empty() {
                    s += &format!(
                        "  IdentityFile {}\n",
                        self.dir.join("no-such-key").display()
                    );
                }
            }
        }
        for cert in &self.certificates {
            s += &format!("  CertificateFile {}\n", cert.display());
        }
        for line in &self.bastion_options {
            s += &format!("  {line}\n");
        }
        for host in &self.hosts {
            s += "\n";
            s += host;
        }
        s += &format!(
            "\nHost *\n  UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  \
             StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel {}\n  ConnectTimeout 20\n  \
             ControlMaster no\n  ControlPath none\n  UpdateHostKeys no\n  \
             PasswordAuthentication no\n  ForwardAgent no\n  ForwardX11 no\n",
            known_hosts.display(),
            self.log_level
        );
        let path = self.dir.join(format!("ssh-{n}.conf"));
        fs::write(&path, s).expect("write ssh config");
        path
    }

    /// Sets `name=value` in the ssh process's environment.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.envs.push((name.to_string(), value.to_string()));
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("/usr/bin/ssh");
        cmd.arg("-F").arg(self.write_config()).args(args);
        cmd.env_remove("SSH_AUTH_SOCK").env_remove("SSH_ASKPASS");
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `ssh -F CONFIG ARGS` to completion (killed after `self.timeout`).
    pub fn run(&self, args: &[&str]) -> RunOutput {
        run(&mut self.command(args), None, self.timeout)
    }

    /// Like [`SshClient::run`] with `input` on stdin.
    pub fn run_with_input(&self, args: &[&str], input: Vec<u8>) -> RunOutput {
        run(&mut self.command(args), Some(input), self.timeout)
    }

    /// Starts `ssh -F CONFIG ARGS` in the background with stdin and stdout
    /// piped and stderr in a log file; killed when the guard drops.
    pub fn spawn(&self, args: &[&str]) -> ChildGuard {
        let n = NEXT_CLIENT.fetch_add(1, Ordering::SeqCst);
        let log = self.dir.join(format!("ssh-{n}.stderr.log"));
        let file = fs::File::create(&log).expect("create ssh log");
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(file);
        ChildGuard::spawn_configured("ssh", &mut cmd, Some(&log))
    }
}
