//! A real OpenSSH sshd as a target behind portvakt.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::keys::{UserCa, UserKey, read_line};
use super::proc::{ChildGuard, free_port};

/// The user that tests log into a target sshd as: whoever runs the tests
/// (root in CI; sshd can only switch to other users when it runs as root).
pub fn target_login_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            let out = super::proc::run_ok(Command::new("id").arg("-un"));
            out.stdout_text().trim().to_string()
        })
}

/// A running `/usr/sbin/sshd -D -e -f CONFIG` on 127.0.0.1, killed on drop.
pub struct Sshd {
    pub port: u16,
    /// The sshd host public key line ("ssh-ed25519 AAAA...").
    pub host_key: String,
    /// The folder with its config, keys and log.
    pub dir: PathBuf,
    process: ChildGuard,
}

impl Sshd {
    /// Starts an sshd that accepts the `authorized` keys and, if given,
    /// certificates from `trusted_ca` (principals must name the login user).
    /// It runs as the current user with `PermitRootLogin yes`: it is only a
    /// test peer, never the bastion.
    pub fn start(parent: &Path, authorized: &[&UserKey], trusted_ca: Option<&UserCa>) -> Sshd {
        let extra = trusted_ca
            .map(|ca| format!("TrustedUserCAKeys {}\n", ca.public_path().display()))
            .unwrap_or_default();
        Self::start_with(parent, authorized, &extra)
    }

    /// An sshd that trusts only user certificates of the CA whose public
    /// key file is `ca_pub` (portvakt's recording target CA), for `login`
    /// through an AuthorizedPrincipalsFile, as DESIGN.md §10 asks targets.
    pub fn start_trusting(parent: &Path, ca_pub: &Path, login: &str) -> Sshd {
        let principals = parent.join(format!("principals-{}", free_port()));
        fs::create_dir_all(&principals).expect("create principals dir");
        fs::write(principals.join(login), format!("{login}\n")).expect("write principals");
        let extra = format!(
            // AcceptEnv *: what portvakt relays, and only that, arrives.
            "TrustedUserCAKeys {}\nAuthorizedPrincipalsFile {}/%u\nSubsystem sftp internal-sftp\nAcceptEnv *\n",
            ca_pub.display(),
            principals.display()
        );
        Self::start_with(parent, &[], &extra)
    }

    /// An sshd with `extra` lines in its config.
    pub fn start_with(parent: &Path, authorized: &[&UserKey], extra: &str) -> Sshd {
        let port = free_port();
        let dir = parent.join(format!("sshd-{port}"));
        fs::create_dir_all(&dir).expect("create sshd dir");
        // As root, sshd insists on its privilege-separation folder. Failing to
        // create it as another user is fine: sshd then does not need it.
        let _ = fs::create_dir_all("/run/sshd");

        let host_key = UserKey::ed25519(&dir, "ssh_host_ed25519_key");
        let authorized_keys = dir.join("authorized_keys");
        let lines: String = authorized
            .iter()
            .map(|k| format!("{}\n", k.public_line()))
            .collect();
        fs::write(&authorized_keys, lines).expect("write authorized_keys");

        let mut config = format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {host_key}\n\
             PidFile none\n\
             StrictModes no\n\
             UsePAM no\n\
             PermitRootLogin yes\n\
             AuthorizedKeysFile {authorized_keys}\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             AllowTcpForwarding yes\n\
             LogLevel VERBOSE\n",
            host_key = host_key.path.display(),
            authorized_keys = authorized_keys.display(),
        );
        config.push_str(extra);
        let config_path = dir.join("sshd_config");
        fs::write(&config_path, config).expect("write sshd_config");

        let log = dir.join("sshd.log");
        let mut process = ChildGuard::spawn(
            "sshd",
            Command::new("/usr/sbin/sshd")
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config_path),
            Some(&log),
        );
        process.wait_for_port(port);
        Sshd {
            port,
            host_key: read_line(&host_key.public_path()),
            dir,
            process,
        }
    }

    /// A known_hosts line for this sshd as the client names it: `[alias]:port key`.
    pub fn known_hosts_line(&self, alias: &str) -> String {
        format!("[{alias}]:{} {}", self.port, self.host_key)
    }

    /// What sshd logged so far.
    pub fn log(&self) -> String {
        self.process.log_text()
    }

    /// The listening sshd's process.
    pub fn listener_pid(&self) -> u32 {
        self.process.pid()
    }

    /// The processes sshd runs for its connections (every descendant of
    /// the listener), for tests that stop and resume them.
    pub fn connection_pids(&self) -> Vec<u32> {
        let mut parents: Vec<(u32, u32)> = Vec::new();
        for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces, so after the last ')'.
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
        let mut found = vec![self.process.pid()];
        let mut i = 0;
        while i < found.len() {
            let parent = found[i];
            found.extend(
                parents
                    .iter()
                    .filter(|(_, pp)| *pp == parent)
                    .map(|(p, _)| *p),
            );
            i += 1;
        }
        found.remove(0);
        found
    }
}
