//! Answering keyboard-interactive prompts of the stock OpenSSH client, as a
//! person at a browser and an authenticator app would: an `SSH_ASKPASS`
//! program (`SSH_ASKPASS_REQUIRE=force`) written into the test's folder.
//!
//! ssh runs the program once per prompt with the prompt text as argv[1] and
//! takes its stdout as the answer. The program:
//! - on the IdP device prompt ("... shows the code XXXX-XXXX ..."), takes the
//!   user code and calls the test IdP's `POST /test/approve` (approve as the
//!   configured IdP user, or deny, or leave it alone), once per code, then
//!   answers an empty line (Enter);
//! - on the TOTP enrolment prompt ("add this secret by hand: BASE32"), keeps
//!   the secret and answers its current code;
//! - on a "TOTP" prompt, answers the RFC 6238 code (SHA-1, 6 digits, 30 s) of
//!   the secret file: a fresh one (never a step it answered before; the next
//!   step, which one step of skew accepts, when the current one was used),
//!   the next step's (never answered before either), a wrong one, or a
//!   fixed one (a replay);
//! - on anything else (the "login failed ... Press Enter" prompt), Enter.
//!
//! Every prompt and answer is appended to a JSON-lines log the test reads
//! with [`Askpass::prompts`]. What the program does is read from a JSON
//! plan file at every prompt, so a test may change it between connections.
//!
//! ssh runs under a small wrapper that puts it in a new session (no
//! controlling terminal, like `setsid`) and takes it down when the wrapper is
//! killed, so the harness's process-group kill still reaches it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;
use serde_json::{Value, json};

use super::client::SshClient;
use super::idp::Idp;
use super::proc::{ChildGuard, RunOutput, run};

/// The askpass program (python3, standard library only).
const ASKPASS_PY: &str = r#"
import base64, errno, fcntl, hashlib, hmac, json, os, re, struct, sys, time
import urllib.error, urllib.request

PLAN = os.environ["PORTVAKT_ASKPASS_PLAN"]
prompt = sys.argv[1] if len(sys.argv) > 1 else ""
with open(PLAN) as f:
    plan = json.load(f)
state = plan["state_dir"]


def log(kind, answer, **extra):
    rec = {"at": time.time(), "kind": kind, "prompt": prompt, "answer": answer}
    rec.update(extra)
    with open(plan["log"], "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(rec) + "\n")


def reply(kind, answer, **extra):
    log(kind, answer, **extra)
    sys.stdout.write(answer + "\n")
    sys.stdout.flush()
    sys.exit(0)


def code_at(secret, step):
    key = base64.b32decode(secret + "=" * (-len(secret) % 8), casefold=True)
    mac = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    off = mac[-1] & 0x0F
    n = (struct.unpack(">I", mac[off:off + 4])[0] & 0x7FFFFFFF) % 1000000
    return "%06d" % n


def totp_answer(secret):
    """The code to answer and the step it belongs to (None if not a real one)."""
    mode = plan.get("totp", "fresh")
    now = time.time()
    step = int(now) // 30
    if mode.startswith("fixed:"):
        return mode[len("fixed:"):], None
    if mode == "wrong":
        near = {code_at(secret, s) for s in (step - 1, step, step + 1)}
        n = int(code_at(secret, step))
        while "%06d" % n in near:
            n = (n + 1) % 1000000
        return "%06d" % n, None
    # "fresh": a step this program never answered for this secret; the server
    # accepts the next step too (one step of clock skew). "next": always the
    # next step's code (also never answered before).
    used_file = os.path.join(state, "used-" + hashlib.sha256(secret.encode()).hexdigest()[:16])
    with open(used_file, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read().strip()
        last = int(text) if text else -1
        if last >= step + 1:
            # Both usable steps are spent: wait for the next one, as a person would.
            time.sleep(max(0.0, last * 30 - now) + 0.2)
            step = int(time.time()) // 30
        if mode == "next":
            use = step + 1
        else:
            use = step if step > last else step + 1
        f.seek(0)
        f.truncate()
        f.write(str(use))
    return code_at(secret, use), use


def approve(user_code):
    """Act at the IdP once per user code; returns (status, body) or None."""
    decision = plan.get("decision", "approve")
    if decision == "ignore":
        return None
    marker = os.path.join(state, "code-" + re.sub(r"[^A-Za-z0-9-]", "_", user_code))
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
    except OSError as e:
        if e.errno == errno.EEXIST:
            return None
        raise
    body = {"user_code": user_code, "decision": decision}
    if decision == "approve":
        body["username"] = plan["idp_user"]
        body["password"] = plan["idp_password"]
    req = urllib.request.Request(
        plan["idp"] + "/test/approve",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except Exception as e:  # the IdP is down: the test looks at the log
        return 0, repr(e)


try:
    enrol = re.search(r"add this secret by hand: ([A-Z2-7=]+)", prompt)
    device = re.search(r"shows the code ([A-Za-z0-9-]+)", prompt)
    if enrol:
        secret = enrol.group(1)
        with open(plan["secret_file"], "w") as f:
            f.write(secret + "\n")
        code, step = totp_answer(secret)
        reply("enroll", code, secret=secret, step=step)
    elif device:
        user_code = device.group(1)
        url = re.search(r"(https?://\S+)", prompt)
        result = approve(user_code)
        extra = {"user_code": user_code, "url": url.group(1) if url else None}
        if result is not None:
            extra["approve_status"], extra["approve_body"] = result
        reply("device", "", **extra)
    elif "login failed" in prompt:
        reply("failure", "")
    elif "TOTP" in prompt:
        with open(plan["secret_file"]) as f:
            secret = f.read().strip()
        code, step = totp_answer(secret)
        reply("totp", code, step=step)
    else:
        reply("other", "")
except SystemExit:
    raise
except BaseException as e:
    try:
        log("error", "", error=repr(e))
    finally:
        sys.stdout.write("\n")
        sys.exit(0)
"#;

/// Runs argv[1:] in a new session (setsid: no controlling terminal) and exits
/// as it did. The child gets SIGKILL when this wrapper dies, so killing the
/// wrapper's process group (what the harness does) takes ssh down too.
const DETACH_PY: &str = r#"
import ctypes, os, signal, sys

parent = os.getpid()
pid = os.fork()
if pid == 0:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(137)
        os.setsid()
        os.execv(sys.argv[1], sys.argv[1:])
    except BaseException as e:
        sys.stderr.write("detach: %r\n" % (e,))
        os._exit(127)


def forward(sig, _frame):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, forward)
while True:
    try:
        _, status = os.waitpid(pid, 0)
        break
    except InterruptedError:
        continue
if os.WIFEXITED(status):
    sys.exit(os.WEXITSTATUS(status))
sys.exit(128 + os.WTERMSIG(status))
"#;

/// The python interpreter for the helper scripts.
fn python() -> String {
    if Path::new("/usr/bin/python3").exists() {
        return "/usr/bin/python3".to_string();
    }
    let out = run(
        Command::new("python3").args(["-c", "import sys; print(sys.executable)"]),
        None,
        std::time::Duration::from_secs(30),
    );
    out.assert_success();
    out.stdout_text().trim().to_string()
}

/// What the askpass program does with a TOTP prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TotpAnswer {
    /// The current code of the secret (never a step answered before).
    Fresh,
    /// The code of the next 30 s step, which one step of clock skew accepts
    /// (never a step answered before): it stays acceptable for 60 to 90 s
    /// after it is typed, wherever in its step that happens.
    Next,
    /// A code that matches no step near now.
    Wrong,
    /// Exactly this code (to replay one).
    Fixed(String),
}

/// What the askpass program does at the IdP with a device prompt's user code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Log in as this IdP user with this password and approve.
    Approve { user: String, password: String },
    /// Deny at the IdP.
    Deny,
    /// Do nothing (let the code expire).
    Ignore,
}

impl Decision {
    pub fn approve(user: &str, password: &str) -> Decision {
        Decision::Approve {
            user: user.to_string(),
            password: password.to_string(),
        }
    }
}

/// One prompt the askpass program saw, with what it answered.
#[derive(Clone, Debug, Deserialize)]
pub struct Prompt {
    /// `device`, `enroll`, `totp`, `failure`, `other` or `error`.
    pub kind: String,
    /// The prompt text exactly as ssh passed it (with ssh's "(user@host) ").
    pub prompt: String,
    pub answer: String,
    /// Device prompts: the user code and URL found in the text.
    pub user_code: Option<String>,
    pub url: Option<String>,
    /// Device prompts: what `/test/approve` answered (status 0: no answer).
    pub approve_status: Option<u16>,
    pub approve_body: Option<String>,
    /// TOTP prompts: the step of the code answered (fresh codes only).
    pub step: Option<u64>,
    /// Enrolment prompts: the secret shown.
    pub secret: Option<String>,
    /// `error` entries: what went wrong in the program.
    pub error: Option<String>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// An askpass program with its plan, log and TOTP secret file.
pub struct Askpass {
    pub dir: PathBuf,
    script: PathBuf,
    detach: PathBuf,
    python: String,
    plan_path: PathBuf,
    pub log_path: PathBuf,
    pub secret_path: PathBuf,
    idp: String,
    decision: Decision,
    totp: TotpAnswer,
}

impl Askpass {
    /// An askpass program in a new folder under `parent`, acting at `idp`
    /// with `decision`, answering fresh TOTP codes.
    pub fn new(parent: &Path, idp: &Idp, decision: Decision) -> Askpass {
        Self::with_issuer(parent, &idp.issuer, decision)
    }

    /// Like [`Askpass::new`] for an IdP given by its issuer URL (or none
    /// that answers).
    pub fn with_issuer(parent: &Path, issuer: &str, decision: Decision) -> Askpass {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = parent.join(format!("askpass-{n}"));
        fs::create_dir_all(dir.join("state")).expect("create askpass dir");
        let python = python();
        let script = dir.join("askpass.py");
        fs::write(&script, format!("#!{python}\n{ASKPASS_PY}")).expect("write askpass");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod askpass");
        let detach = dir.join("detach.py");
        fs::write(&detach, DETACH_PY).expect("write detach wrapper");
        let askpass = Askpass {
            plan_path: dir.join("plan.json"),
            log_path: dir.join("prompts.jsonl"),
            secret_path: dir.join("totp-secret"),
            dir,
            script,
            detach,
            python,
            idp: issuer.to_string(),
            decision,
            totp: TotpAnswer::Fresh,
        };
        askpass.write_plan();
        askpass
    }

    fn write_plan(&self) {
        let (decision, user, password) = match &self.decision {
            Decision::Approve { user, password } => ("approve", user.as_str(), password.as_str()),
            Decision::Deny => ("deny", "", ""),
            Decision::Ignore => ("ignore", "", ""),
        };
        let totp = match &self.totp {
            TotpAnswer::Fresh => "fresh".to_string(),
            TotpAnswer::Next => "next".to_string(),
            TotpAnswer::Wrong => "wrong".to_string(),
            TotpAnswer::Fixed(code) => format!("fixed:{code}"),
        };
        let plan = json!({
            "idp": self.idp,
            "decision": decision,
            "idp_user": user,
            "idp_password": password,
            "totp": totp,
            "log": self.log_path,
            "secret_file": self.secret_path,
            "state_dir": self.dir.join("state"),
        });
        // Written whole, then renamed: a prompt never reads half a plan.
        let tmp = self.dir.join("plan.json.tmp");
        fs::write(&tmp, plan.to_string()).expect("write askpass plan");
        fs::rename(&tmp, &self.plan_path).expect("rename askpass plan");
    }

    /// From now on, act at the IdP like this.
    pub fn set_decision(&mut self, decision: Decision) {
        self.decision = decision;
        self.write_plan();
    }

    /// From now on, answer TOTP prompts like this.
    pub fn set_totp(&mut self, totp: TotpAnswer) {
        self.totp = totp;
        self.write_plan();
    }

    /// The base32 TOTP secret to answer with (e.g. from `portvakt totp enroll --json`).
    pub fn set_secret(&self, base32: &str) {
        fs::write(&self.secret_path, format!("{base32}\n")).expect("write TOTP secret");
    }

    /// The TOTP secret in use (after self-enrolment, the one portvakt showed).
    pub fn secret(&self) -> Option<String> {
        fs::read_to_string(&self.secret_path)
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Every prompt seen so far, oldest first.
    pub fn prompts(&self) -> Vec<Prompt> {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("bad askpass log line ({e}): {l}"))
            })
            .collect()
    }

    /// The prompts of one kind.
    pub fn prompts_of(&self, kind: &str) -> Vec<Prompt> {
        self.prompts()
            .into_iter()
            .filter(|p| p.kind == kind)
            .collect()
    }

    /// The whole log, for failure messages.
    pub fn describe(&self) -> String {
        self.prompts()
            .iter()
            .map(|p| {
                format!(
                    "  [{}] answer={:?} approve={:?} {:?}{}",
                    p.kind,
                    p.answer,
                    p.approve_status,
                    p.prompt,
                    p.error
                        .as_deref()
                        .map(|e| format!(" error={e}"))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `ssh` for `client` with its prompts answered by this program:
    /// `BatchMode no` on the bastion hop, `SSH_ASKPASS_REQUIRE=force`,
    /// `DISPLAY` set, stdin from /dev/null unless the caller pipes it, and
    /// no controlling terminal.
    pub fn command(&self, client: &SshClient, args: &[&str]) -> Command {
        let config = client
            .clone()
            .bastion_option("BatchMode no")
            .bastion_option("KbdInteractiveAuthentication yes")
            .write_config();
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.detach)
            .arg("/usr/bin/ssh")
            .arg("-F")
            .arg(config)
            .args(args)
            .env_remove("SSH_AUTH_SOCK")
            .env("SSH_ASKPASS", &self.script)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":portvakt-test")
            .env("PORTVAKT_ASKPASS_PLAN", &self.plan_path);
        cmd
    }

    /// Runs ssh to completion (killed after the client's timeout).
    pub fn run(&self, client: &SshClient, args: &[&str]) -> RunOutput {
        run(&mut self.command(client, args), None, client.timeout)
    }

    /// Like [`Askpass::run`] with `input` on stdin.
    pub fn run_with_input(&self, client: &SshClient, args: &[&str], input: &[u8]) -> RunOutput {
        run(
            &mut self.command(client, args),
            Some(input.to_vec()),
            client.timeout,
        )
    }

    /// Starts ssh in the background with stdin and stdout piped and stderr
    /// in a log file; killed when the guard drops.
    pub fn spawn(&self, client: &SshClient, args: &[&str]) -> ChildGuard {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let log = self.dir.join(format!("ssh-{n}.stderr.log"));
        let file = fs::File::create(&log).expect("create ssh log");
        let mut cmd = self.command(client, args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(file);
        ChildGuard::spawn_configured("ssh (askpass)", &mut cmd, Some(&log))
    }
}

/// The RFC 6238 code (SHA-1, 6 digits, 30 s) of `base32` at unix time `t`,
/// computed independently of portvakt (for assertions).
pub fn totp_code(base32: &str, t: u64) -> String {
    let key = base32_decode(base32);
    let step = (t / 30).to_be_bytes();
    let mac = hmac_sha1(&key, &step);
    let off = (mac[19] & 0x0f) as usize;
    let n = u32::from_be_bytes([mac[off], mac[off + 1], mac[off + 2], mac[off + 3]]) & 0x7fff_ffff;
    format!("{:06}", n % 1_000_000)
}

fn base32_decode(s: &str) -> Vec<u8> {
    let mut bits: u64 = 0;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in s.trim().trim_end_matches('=').chars() {
        let v = match c.to_ascii_uppercase() {
            c @ 'A'..='Z' => c as u64 - 'A' as u64,
            c @ '2'..='7' => c as u64 - '2' as u64 + 26,
            other => panic!("not base32: {other:?} in {s:?}"),
        };
        bits = (bits << 5) | v;
        nbits += 5;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    out
}

fn hmac_sha1(key: &[u8], msg: &[u8]) -> [u8; 20] {
    use sha1::{Digest, Sha1};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..20].copy_from_slice(&Sha1::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha1::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha1::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// A JSON value's string field, for assertions on CLI output.
pub fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string {key:?} in {v}"))
}
