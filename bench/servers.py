"""The peers of a benchmark run: keys, the target sshd, the idle TCP sink,
the two jump hosts (portvakt and OpenSSH sshd) and the ssh client config."""

import os
import shutil
import subprocess

from procs import (BenchError, Proc, cpu_seconds, descendants, free_port,
                   memory_kib, poll_until, run, tcp_connections)

USER = "bench"
KEX = "curve25519-sha256"
SSHD = "/usr/sbin/sshd"


def keygen(path, comment):
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path]).check_returncode()


class Keys:
    """User CA, the user's key and certificate, and host keys. The two jump
    hosts share one host key, so a client sees the same thing at both."""

    def __init__(self, d):
        os.makedirs(d, mode=0o700, exist_ok=True)
        self.dir = d
        self.ca = os.path.join(d, "user_ca")
        self.user = os.path.join(d, "id_bench")
        self.cert = self.user + "-cert.pub"
        self.jump_host = os.path.join(d, "jump_host_ed25519_key")
        self.target_host = os.path.join(d, "target_host_ed25519_key")
        for path, comment in [(self.ca, "bench user CA"), (self.user, "bench"),
                              (self.jump_host, "bench jump"), (self.target_host, "bench target")]:
            keygen(path, comment)
        run(["ssh-keygen", "-q", "-s", self.ca, "-I", "bench", "-n", USER, "-V", "+1d",
             self.user + ".pub"]).check_returncode()

    def public(self, path):
        with open(path + ".pub") as f:
            return " ".join(f.read().split()[:2])


def sshd_common(port, host_key, ca_pub):
    return (f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile none\n"
            "StrictModes no\nUsePAM no\nUseDNS no\nPermitRootLogin no\n"
            f"TrustedUserCAKeys {ca_pub}\nAuthorizedPrincipalsFile none\n"
            "AuthorizedKeysFile none\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPrintMotd no\nPrintLastLog no\n"
            "X11Forwarding no\nAllowAgentForwarding no\nPermitTTY no\n"
            "Ciphers chacha20-poly1305@openssh.com,aes256-gcm@openssh.com\n"
            "LogLevel ERROR\n")


def start_sshd(name, d, config, wrapper=()):
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "sshd_config")
    with open(path, "w") as f:
        f.write(config)
    test = run([SSHD, "-t", "-f", path])
    if test.returncode != 0:
        raise BenchError(f"{name}: sshd -t: {test.stderr.strip()}")
    return Proc(name, list(wrapper) + [SSHD, "-D", "-e", "-f", path], os.path.join(d, "sshd.log"))


class Target:
    """The sshd behind both jump hosts: `cat >/dev/null` and `true` run here.
    `ca_pub`: the file of the user CAs it trusts (default the benchmark's);
    `max_startups`: for many sessions opened at once (the record section)."""

    def __init__(self, d, keys, ca_pub=None, max_startups=None):
        self.port = free_port()
        config = sshd_common(self.port, keys.target_host, ca_pub or keys.ca + ".pub")
        config += "AllowTcpForwarding no\n"
        if max_startups:
            config += f"MaxStartups {max_startups}:30:{max_startups}\nMaxSessions {max_startups}\n"
        else:
            config += "MaxStartups 100:30:200\n"
        self.proc = start_sshd("target sshd", d, config)
        self.proc.wait_port(self.port)


class Sink:
    """Idle TCP target for the forwards of the memory and scale runs; with
    `echo`, one that sends back what arrives (the audit section's forwards)."""

    def __init__(self, d, python, bench_dir, echo=False):
        self.port = free_port()
        name = "echo" if echo else "sink"
        self.proc = Proc(name, [python, os.path.join(bench_dir, "sink.py"), str(self.port)]
                         + (["--echo"] if echo else []), os.path.join(d, f"{name}.log"))
        self.proc.wait_port(self.port)


class Jump:
    """Common face of the two jump hosts."""

    name = ""
    label = ""

    def cpu(self):
        raise NotImplementedError

    def memory(self):
        raise NotImplementedError

    def wait_idle(self, timeout=30):
        """Wait until the connections of a finished run are gone."""

    def stop(self):
        self.proc.stop()

    def log_lines(self):
        return self.proc.log_text().splitlines()


class PortvaktJump(Jump):
    name = "portvakt"
    label = "portvakt"

    def __init__(self, d, binary, keys, target_ports, max_connections, database=None, node=None,
                 name=None, extra=""):
        # name: another build or config of portvakt, side by side (the audit
        # and record sections); extra: more config (a recorded target).
        if name:
            self.name = self.label = name
        os.makedirs(d, exist_ok=True)
        self.port = free_port()
        database = database or f"sqlite://{d}/portvakt.db"
        node = f'node_name = "{node}"\n' if node else ""
        key_dir = os.path.join(d, "keys")
        os.makedirs(key_dir, mode=0o700, exist_ok=True)
        shutil.copy(keys.jump_host, os.path.join(key_dir, "ssh_host_ed25519_key"))
        os.chmod(os.path.join(key_dir, "ssh_host_ed25519_key"), 0o600)
        ports = ", ".join(str(p) for p in target_ports)
        config = f"""[server]
listen = ["127.0.0.1:{self.port}"]
host_key_dir = "{key_dir}"
max_connections = {max_connections}
max_unauthenticated = {max_connections}
max_unauthenticated_per_source = {max_connections}
login_grace_time = "2m"
# The comparison runs curve25519 on both jump hosts (OpenSSH 9.2 would
# otherwise pick sntrup761 and has no ML-KEM; the asyncssh load client has
# ML-KEM but no sntrup761).
classic_kex = true
{node}
[database]
url = "{database}"

[log]
format = "json"
level = "warn"

[auth]
trusted_user_ca_keys = ["{keys.ca}.pub"]

[[targets]]
name = "bench"
cidr = "127.0.0.1/32"
ports = [{ports}]
allow_users = ["{USER}"]
{extra}"""
        path = os.path.join(d, "portvakt.toml")
        with open(path, "w") as f:
            f.write(config)
        self.config = path
        self.proc = Proc(self.name, [binary, "serve", "--config", path],
                         os.path.join(d, "portvakt.log"))
        self.proc.wait_port(self.port)
        self.pid = self.proc.pid

    def cpu(self):
        return cpu_seconds(self.pid)

    def memory(self):
        return memory_kib(self.pid)

    def wait_idle(self, timeout=60):
        """Until portvakt has closed its side of every connection of the run
        just finished, as OpenSSH's wait_idle waits for its processes to
        exit; so the work at a connection's end (its audit rows) is counted
        in the CPU read next."""
        poll_until("portvakt to close the connections of the last run",
                   lambda: tcp_connections(self.port) == 0, timeout, interval=0.02)


def cli_config(path, database, ca_pub):
    """A config for portvakt's CLI commands on `database` (SQLite URL)."""
    d = os.path.dirname(path)
    with open(path, "w") as f:
        f.write(f"""[server]
listen = ["127.0.0.1:{free_port()}"]
host_key_dir = "{os.path.join(d, 'keys')}"

[database]
url = "{database}"

[auth]
trusted_user_ca_keys = ["{ca_pub}"]
""")
    return path


class PortvaktNodes(Jump):
    """Several portvakt nodes sharing one PostgreSQL database, as behind a
    load balancer (docs/DEPLOYING.md); the load client spreads connections
    over their ports. Memory and CPU are the sum over the nodes."""
    name = "portvakt-nodes"

    def __init__(self, d, binary, keys, target_ports, max_connections, database, count):
        self.label = f"portvakt, {count} nodes"
        self.nodes = []
        try:
            for i in range(count):
                self.nodes.append(PortvaktJump(os.path.join(d, f"node-{i + 1}"), binary, keys,
                                               target_ports, max_connections, database,
                                               f"bench-{i + 1}"))
        except BaseException:
            self.stop()
            raise
        self.port = self.nodes[0].port
        self.ports = [n.port for n in self.nodes]

    def cpu(self):
        return sum(n.cpu() for n in self.nodes)

    def memory(self):
        parts = [n.memory() for n in self.nodes]
        return tuple(sum(p[i] for p in parts) for i in range(3))

    def wait_idle(self, *a, **kw):
        for n in self.nodes:
            n.wait_idle(*a, **kw)

    def stop(self):
        for n in self.nodes:
            n.stop()

    def log_lines(self):
        return [line for n in self.nodes for line in n.log_lines()]


class OpensshJump(Jump):
    name = "openssh"
    label = "OpenSSH sshd"

    def __init__(self, d, keys, target_ports, max_startups, reaper):
        self.port = free_port()
        config = sshd_common(self.port, keys.jump_host, keys.ca + ".pub")
        permit = " ".join(f"127.0.0.1:{p}" for p in target_ports)
        # Only a jump: forwards to the same targets portvakt allows, no
        # sessions; keepalives as often as portvakt's (30 s, 3 misses).
        config += (f"AllowTcpForwarding local\nPermitOpen {permit}\n"
                   "AllowStreamLocalForwarding no\nPermitTunnel no\nGatewayPorts no\n"
                   "ForceCommand /bin/false\n"
                   f"MaxStartups {max_startups}:30:{max_startups}\nMaxSessions 1000\n"
                   "LoginGraceTime 120\nClientAliveInterval 30\nClientAliveCountMax 3\n")
        # Under a subreaper (bench/reaper.py): see there why.
        self.proc = start_sshd("OpenSSH jump", d, config, wrapper=reaper)
        self.proc.wait_port(self.port)
        self.pid = poll_until("the sshd listener", lambda: descendants(self.proc.pid), 10)[0]

    def cpu(self):
        """The listener with every process it reaped, plus the processes
        re-parented to the subreaper and reaped there. Processes still
        running are not counted: wait_idle() first."""
        return (cpu_seconds(self.pid, with_children=True)
                + cpu_seconds(self.proc.pid, with_children=True) - cpu_seconds(self.proc.pid))

    def memory(self):
        return memory_kib(self.pid, tree=True)

    def wait_idle(self, timeout=60):
        poll_until("OpenSSH jump's per-connection processes to exit",
                   lambda: descendants(self.proc.pid) == [self.pid], timeout, interval=0.02)


def recorded_target(name, target, keys, logins, max_bytes, host_ca, target_ca):
    """portvakt config: the target sshd as the recorded target `name` (the
    benchmark user may log in as `logins`), and the [recording] section."""
    return f"""
[[targets]]
name = "{name}"
host = "127.0.0.1"
port = {target.port}
allow_users = ["{USER}"]
mode = "record"
logins = [{", ".join(f'"{l}"' for l in logins)}]
host_key = "{keys.public(keys.target_host)}"

[recording]
host_ca_key = "{host_ca}"
target_ca_key = "{target_ca}"
max_bytes = "{max_bytes}"
"""


def client_config(path, keys, cipher, jumps, target_port, known_hosts, recorded=None):
    """An ssh_config: `via-NAME` reaches the target through jump NAME. Every
    option that must reach the jump hop is here (-o does not reach it).
    `recorded` maps a jump's name to the recorded target it dials by name
    (its host certificate is checked against known_hosts' @cert-authority
    line). The first value of an option wins, so `Host *` comes last."""
    recorded = recorded or {}
    lines = []
    for jump in jumps:
        lines += [f"Host jump-{jump.name}", f"  Port {jump.port}", ""]
        if jump.name in recorded:
            lines += [f"Host via-{jump.name}", f"  HostName {recorded[jump.name]}",
                      f"  Port {target_port}", f"  ProxyJump jump-{jump.name}",
                      "  HostKeyAlgorithms ssh-ed25519-cert-v01@openssh.com", ""]
        else:
            lines += [f"Host via-{jump.name}", f"  Port {target_port}",
                      f"  ProxyJump jump-{jump.name}", ""]
    lines += [
        "Host *",
        "  HostName 127.0.0.1",
        f"  User {USER}",
        f"  IdentityFile {keys.user}",
        f"  CertificateFile {keys.cert}",
        "  IdentitiesOnly yes",
        "  IdentityAgent none",
        f"  UserKnownHostsFile {known_hosts}",
        "  GlobalKnownHostsFile /dev/null",
        "  StrictHostKeyChecking yes",
        "  UpdateHostKeys no",
        "  BatchMode yes",
        "  Compression no",
        f"  Ciphers {cipher}",
        f"  KexAlgorithms {KEX}",
        "  HostKeyAlgorithms ssh-ed25519",
        "  ControlMaster no",
        "  ControlPath none",
        "  AddressFamily inet",
        "  ConnectTimeout 30",
        "  LogLevel ERROR",
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def known_hosts(path, keys, jump_ports, target_port, extra=()):
    """`extra`: more lines (a recorded target's @cert-authority line)."""
    with open(path, "w") as f:
        for port in jump_ports:
            f.write(f"[127.0.0.1]:{port} {keys.public(keys.jump_host)}\n")
        f.write(f"[127.0.0.1]:{target_port} {keys.public(keys.target_host)}\n")
        for line in extra:
            f.write(line.strip() + "\n")


def ensure_bench_user():
    """sshd needs a real account for the jump login and the target login."""
    try:
        import pwd
        pwd.getpwnam(USER)
    except KeyError:
        if os.geteuid() != 0:
            raise BenchError(f"user {USER!r} is missing; create it as root: "
                             f"useradd --create-home --shell /bin/sh {USER}")
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True)
    if os.geteuid() == 0:
        # Without PAM, sshd refuses accounts whose password field starts
        # with "!" (locked), which is what useradd writes.
        with open("/etc/shadow") as f:
            locked = any(line.startswith(USER + ":!") for line in f)
        if locked:
            subprocess.run(["usermod", "-p", "*", USER], check=True)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)


class PostgresDatabase:
    """A database of the benchmark's own on a PostgreSQL server (psql must be
    on PATH); dropped again on exit. Yields the URL for portvakt."""

    def __init__(self, admin_url, suffix=""):
        self.admin = admin_url
        self.name = f"portvakt_bench_{os.getpid()}{suffix}"

    def psql(self, sql):
        out = subprocess.run(["psql", self.admin, "-v", "ON_ERROR_STOP=1", "-qc", sql],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise BenchError(f"psql {self.admin} failed ({sql}): {out.stderr.strip()}; "
                             "give --postgres URL, or --scale-nodes 0 to skip the nodes run")

    @property
    def url(self):
        """The URL of this database (on the server of `admin_url`)."""
        base, _, _ = self.admin.rpartition("/")
        return f"{base}/{self.name}"

    def __enter__(self):
        self.psql(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        self.psql(f"CREATE DATABASE {self.name}")
        return self.url

    def __exit__(self, *exc):
        self.psql(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        return False
