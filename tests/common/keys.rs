//! Keys, certificate authorities and an ssh-agent, all made by the real
//! OpenSSH tools (`ssh-keygen`, `ssh-agent`, `ssh-add`).

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::proc::{ChildGuard, READY_TIMEOUT, poll_until, run_ok};

/// A private key file made by `ssh-keygen`, with `.pub` beside it.
#[derive(Clone, Debug)]
pub struct UserKey {
    /// The private key file (what `IdentityFile` names).
    pub path: PathBuf,
}

impl UserKey {
    /// A new ed25519 key at `dir/name`.
    pub fn ed25519(dir: &Path, name: &str) -> UserKey {
        Self::generate(dir, name, &["-t", "ed25519"])
    }

    /// A new 2048-bit RSA key at `dir/name` (for the ssh-rsa SHA-1 case).
    pub fn rsa(dir: &Path, name: &str) -> UserKey {
        Self::generate(dir, name, &["-t", "rsa", "-b", "2048"])
    }

    fn generate(dir: &Path, name: &str, kind: &[&str]) -> UserKey {
        let path = dir.join(name);
        assert!(!path.exists(), "key {} exists already", path.display());
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-N", "", "-C"])
                .arg(format!("{name}@portvakt-test"))
                .args(kind)
                .arg("-f")
                .arg(&path),
        );
        UserKey { path }
    }

    /// The same key pair under another name (so that another certificate
    /// for it can sit beside the copy).
    pub fn copy_as(&self, name: &str) -> UserKey {
        let dir = self.path.parent().expect("key folder");
        let copy = UserKey {
            path: dir.join(name),
        };
        std::fs::copy(&self.path, &copy.path).expect("copy private key");
        std::fs::copy(self.public_path(), copy.public_path()).expect("copy public key");
        copy
    }

    /// The public key file.
    pub fn public_path(&self) -> PathBuf {
        with_suffix(&self.path, ".pub")
    }

    /// The public key line ("ssh-ed25519 AAAA... comment").
    pub fn public_line(&self) -> String {
        read_line(&self.public_path())
    }

    /// Where `ssh-keygen -s` writes this key's certificate, and where the
    /// OpenSSH client looks for it.
    pub fn cert_path(&self) -> PathBuf {
        with_suffix(&self.path, "-cert.pub")
    }

    /// The SHA256 fingerprint ("SHA256:...").
    pub fn fingerprint(&self) -> String {
        let out = run_ok(
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(self.public_path()),
        );
        out.stdout_text()
            .split_whitespace()
            .nth(1)
            .expect("fingerprint in ssh-keygen -l output")
            .to_string()
    }
}

/// What a certificate says; turned into `ssh-keygen -s` arguments.
#[derive(Clone, Debug)]
pub struct CertSpec {
    pub identity: String,
    pub principals: Vec<String>,
    /// `-V` validity interval; `None` means "valid forever".
    pub validity: Option<String>,
    pub serial: u64,
    /// `-O` options, e.g. "source-address=10.9.9.9/32", "force-command=x".
    pub options: Vec<String>,
    /// A host certificate (`-h`) instead of a user certificate.
    pub host: bool,
}

impl CertSpec {
    /// A user certificate for `principals`, valid from 5 minutes ago for an hour.
    pub fn user(principals: &[&str]) -> CertSpec {
        CertSpec {
            identity: format!("test-{}", principals.join("-")),
            principals: principals.iter().map(|p| p.to_string()).collect(),
            validity: Some("-5m:+1h".to_string()),
            serial: 1,
            options: Vec::new(),
            host: false,
        }
    }

    /// Sets the `-V` validity interval (ssh-keygen syntax, e.g. "-2d:-1d").
    pub fn validity(mut self, interval: &str) -> Self {
        self.validity = Some(interval.to_string());
        self
    }

    /// Sets the serial number (`-z`).
    pub fn serial(mut self, serial: u64) -> Self {
        self.serial = serial;
        self
    }

    /// Adds a `-O` option (critical option or extension).
    pub fn option(mut self, option: &str) -> Self {
        self.options.push(option.to_string());
        self
    }

    /// Makes it a host certificate (`-h`).
    pub fn host(mut self) -> Self {
        self.host = true;
        self
    }
}

/// A certificate authority: an ed25519 key used with `ssh-keygen -s`.
#[derive(Clone, Debug)]
pub struct UserCa {
    pub key: UserKey,
}

impl UserCa {
    /// A new CA key at `dir/name`.
    pub fn new(dir: &Path, name: &str) -> UserCa {
        UserCa {
            key: UserKey::ed25519(dir, name),
        }
    }

    /// The CA's public key file (what `trusted_user_ca_keys` and sshd's
    /// `TrustedUserCAKeys` name).
    pub fn public_path(&self) -> PathBuf {
        self.key.public_path()
    }

    /// Signs `key`, writing `<key>-cert.pub` beside it, and returns that path.
    pub fn sign(&self, key: &UserKey, spec: &CertSpec) -> PathBuf {
        let mut cmd = Command::new("ssh-keygen");
        cmd.arg("-q")
            .arg("-s")
            .arg(&self.key.path)
            .arg("-I")
            .arg(&spec.identity)
            .arg("-z")
            .arg(spec.serial.to_string());
        if !spec.principals.is_empty() {
            cmd.arg("-n").arg(spec.principals.join(","));
        }
        if let Some(validity) = &spec.validity {
            // "-5m:+1h" would look like an option to getopt: pass it glued to -V.
            cmd.arg(format!("-V{validity}"));
        }
        for option in &spec.options {
            cmd.arg("-O").arg(option);
        }
        if spec.host {
            cmd.arg("-h");
        }
        cmd.arg(key.public_path());
        run_ok(&mut cmd);
        let cert = key.cert_path();
        assert!(cert.exists(), "ssh-keygen wrote no {}", cert.display());
        cert
    }

    /// Writes a binary OpenSSH KRL at `path` that revokes this CA's
    /// certificates with the given serial numbers (`ssh-keygen -k`).
    pub fn write_krl_serials(&self, path: &Path, serials: &[u64]) {
        let spec = with_suffix(path, ".spec");
        let text: String = serials.iter().map(|s| format!("serial: {s}\n")).collect();
        fs::write(&spec, text).expect("write KRL spec");
        run_ok(
            Command::new("ssh-keygen")
                .arg("-q")
                .arg("-k")
                .arg("-f")
                .arg(path)
                .arg("-s")
                .arg(self.public_path())
                .arg(&spec),
        );
    }
}

/// A real `ssh-agent` on a socket in the test's folder, killed on drop.
///
/// Needed for the host-certificate case: the OpenSSH client itself refuses to
/// offer a host certificate from an `IdentityFile` or `CertificateFile`, but
/// offers whatever an agent holds.
pub struct SshAgent {
    pub socket: PathBuf,
    _process: ChildGuard,
}

impl SshAgent {
    /// Starts `ssh-agent -D -a dir/agent.sock` and waits until it listens
    /// (its socket file appears at bind(2), a moment before it listens, and
    /// a connect in between is refused).
    pub fn start(dir: &Path) -> SshAgent {
        let socket = dir.join("agent.sock");
        let log = dir.join("ssh-agent.log");
        let process = ChildGuard::spawn(
            "ssh-agent",
            Command::new("ssh-agent").arg("-D").arg("-a").arg(&socket),
            Some(&log),
        );
        let mut agent = SshAgent {
            socket,
            _process: process,
        };
        poll_until("the ssh-agent socket to accept", READY_TIMEOUT, || {
            agent._process.assert_running();
            UnixStream::connect(&agent.socket).ok().map(drop)
        });
        agent
    }

    /// `ssh-add key` (ssh-add also loads `key-cert.pub` when it exists).
    pub fn add(&self, key: &UserKey) {
        run_ok(
            Command::new("ssh-add")
                .env("SSH_AUTH_SOCK", &self.socket)
                .arg(&key.path),
        );
    }
}

/// `path` with `suffix` appended to its file name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The first line of a text file, trimmed.
pub fn read_line(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}
