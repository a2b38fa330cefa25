//! Processes, ports and polling: the plumbing every other harness piece uses.
//!
//! Every child a test starts is held by a [`ChildGuard`] (or run to completion
//! by [`run`]), so it is killed and reaped also when the test panics. Children
//! get their own process group, so helpers they fork (the jump-hop `ssh` of a
//! ProxyJump, sshd's per-connection children) die with them.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long a started server may take to accept TCP.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client command may run before it is killed and the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval between two looks while polling for a condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A free TCP port on 127.0.0.1, never handed out twice by this test binary.
///
/// The port is found by binding port 0 and releasing it, so another program
/// could still take it before the test binds it; remembering what we handed
/// out at least keeps parallel tests of one binary from colliding.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// The socket address 127.0.0.1:`port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// True when something accepts TCP on 127.0.0.1:`port` right now.
pub fn port_accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&local(port), Duration::from_millis(500)).is_ok()
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub fn poll_until<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    poll_for(timeout, check)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls `check` until it returns `Some`, or returns `None` after `timeout`.
pub fn poll_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// The last `max` bytes of a log file, for failure messages.
pub fn log_tail(path: &Path, max: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

/// Sends SIGKILL to the process group led by `pid` (the child was started
/// with its own group), then to the process itself in case it had none.
fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A running child process that is killed and reaped when dropped.
///
/// When the drop happens during a panic (a failing test), the tail of the
/// child's log file is printed, so the failure shows what the program said.
pub struct ChildGuard {
    /// What this process is, for messages ("portvakt", "sshd", "ssh -N").
    name: String,
    child: Child,
    /// Where the child's stderr goes, if it goes to a file.
    log: Option<PathBuf>,
    /// Kept open so the child does not see end-of-input before the test wants it to.
    stdin: Option<ChildStdin>,
}

impl ChildGuard {
    /// Spawns `cmd` in its own process group. If `log` is given, stdout and
    /// stderr are appended to it; otherwise they are discarded (unless the
    /// caller configured them on `cmd` already and `keep_stdio` is true).
    pub fn spawn(name: &str, cmd: &mut Command, log: Option<&Path>) -> ChildGuard {
        match log {
            Some(path) => {
                let file = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap_or_else(|e| panic!("open log {}: {e}", path.display()));
                let file2 = file.try_clone().expect("clone log handle");
                cmd.stdout(file).stderr(file2);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        cmd.stdin(Stdio::null());
        Self::spawn_configured(name, cmd, log)
    }

    /// Spawns `cmd` with whatever stdio the caller set on it. Piped stdin is
    /// kept by the guard (see [`ChildGuard::stdin`]).
    pub fn spawn_configured(name: &str, cmd: &mut Command, log: Option<&Path>) -> ChildGuard {
        cmd.process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let stdin = child.stdin.take();
        ChildGuard {
            name: name.to_string(),
            child,
            log: log.map(Path::to_path_buf),
            stdin,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdin, if it was piped.
    pub fn stdin(&mut self) -> &mut ChildStdin {
        self.stdin.as_mut().expect("child stdin was not piped")
    }

    /// Closes the child's stdin (end-of-input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Takes the child's stdout, if it was piped.
    pub fn take_stdout(&mut self) -> ChildStdout {
        self.child
            .stdout
            .take()
            .expect("child stdout was not piped")
    }

    /// The exit status if the child has ended, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the child to end on its own, panicking after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let name = self.name.clone();
        poll_until(&format!("{name} to exit"), timeout, || self.try_wait())
    }

    /// Panics with the log tail if the child has already exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_wait() {
            panic!(
                "{} exited early with {status}; its log ends with:\n{}",
                self.name,
                self.log_text()
            );
        }
    }

    /// The child's whole log (empty when it has none).
    pub fn full_log(&self) -> String {
        self.log
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The tail of the child's log (empty when it has none).
    pub fn log_text(&self) -> String {
        self.log
            .as_deref()
            .map(|p| log_tail(p, 16 * 1024))
            .unwrap_or_default()
    }

    /// Waits until 127.0.0.1:`port` accepts TCP, failing fast with the log
    /// if the child exits first.
    pub fn wait_for_port(&mut self, port: u16) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.assert_running();
            if port_accepts(port) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not accept TCP on 127.0.0.1:{port} within {READY_TIMEOUT:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Kills the child (and its process group) and reaps it.
    pub fn kill(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            kill_group(self.child.id());
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stdin = None;
        self.kill();
        if thread::panicking() && self.log.is_some() {
            eprintln!(
                "----- {} log (tail) -----\n{}\n----- end of {} log -----",
                self.name,
                self.log_text(),
                self.name
            );
        }
    }
}

/// What a finished command did.
pub struct RunOutput {
    /// The command line, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl RunOutput {
    /// The exit code (-1 when killed by a signal).
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// stdout as (lossy) text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panics with the whole output unless the exit code is `code`.
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code(), code, "unexpected exit code from {self}");
        self
    }

    /// Panics with the whole output unless the command succeeded.
    pub fn assert_success(&self) -> &Self {
        self.assert_code(0)
    }

    /// Panics unless stderr contains `needle`.
    pub fn assert_stderr_contains(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr of {} lacks {needle:?}:\n{self}",
            self.command
        );
        self
    }
}

impl fmt::Display for RunOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stdout = self.stdout_text();
        let stdout = if stdout.len() > 4000 {
            format!(
                "{}... ({} bytes)",
                stdout.chars().take(4000).collect::<String>(),
                self.stdout.len()
            )
        } else {
            stdout
        };
        write!(
            f,
            "`{}` exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.command, self.status, stdout, self.stderr
        )
    }
}

/// Reads a pipe to the end into a shared buffer, then marks it done.
fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<(Vec<u8>, bool)>> {
    let buf = Arc::new(Mutex::new((Vec::new(), false)));
    let shared = Arc::clone(&buf);
    thread::spawn(move || {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => shared.lock().unwrap().0.extend_from_slice(&chunk[..n]),
            }
        }
        shared.lock().unwrap().1 = true;
    });
    buf
}

/// Runs `cmd` to completion with `stdin` as its input, killing it (and its
/// process group) if it runs longer than `timeout`; that is a test failure.
pub fn run(cmd: &mut Command, stdin: Option<Vec<u8>>, timeout: Duration) -> RunOutput {
    let command = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        thread::spawn(move || {
            // The program may exit before reading everything; that shows in its output.
            let _ = pipe.write_all(&input);
        });
    }
    let out = collect(child.stdout.take().expect("stdout piped"));
    let err = collect(child.stderr.take().expect("stderr piped"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            kill_group(child.id());
            let _ = child.kill();
            let status = child.wait().expect("wait");
            let output = RunOutput {
                command,
                status,
                stdout: out.lock().unwrap().0.clone(),
                stderr: String::from_utf8_lossy(&err.lock().unwrap().0).into_owned(),
            };
            panic!("killed after running longer than {timeout:?}: {output}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    // A forked helper (the ProxyJump hop) may hold the pipes a little longer;
    // give the readers a bounded time to see end-of-file. (No group kill here:
    // the child is reaped, so its id may already belong to someone else.)
    let drained = Instant::now() + Duration::from_secs(10);
    while !(out.lock().unwrap().1 && err.lock().unwrap().1) && Instant::now() < drained {
        thread::sleep(Duration::from_millis(10));
    }
    let stdout = out.lock().unwrap().0.clone();
    let stderr = String::from_utf8_lossy(&err.lock().unwrap().0).into_owned();
    RunOutput {
        command,
        status,
        stdout,
        stderr,
    }
}

/// Runs a short helper program (ssh-keygen, psql) that must succeed.
pub fn run_ok(cmd: &mut Command) -> RunOutput {
    let output = run(cmd, None, RUN_TIMEOUT);
    output.assert_success();
    output
}

/// Reads exactly `n` bytes from `reader` on a helper thread and hands the
/// reader back with them; panics if they have not all arrived within
/// `timeout` (a hung peer must fail the test, not hang it).
pub fn read_exact_within<R: Read + Send + 'static>(
    mut reader: R,
    n: usize,
    timeout: Duration,
) -> (R, Vec<u8>) {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut buf = vec![0u8; n];
        let result = reader.read_exact(&mut buf).map(|()| buf);
        let _ = tx.send((reader, result));
    });
    match rx.recv_timeout(timeout) {
        Ok((reader, Ok(buf))) => (reader, buf),
        Ok((_, Err(e))) => panic!("reading {n} bytes failed: {e}"),
        Err(_) => panic!("{n} bytes did not arrive within {timeout:?}"),
    }
}
