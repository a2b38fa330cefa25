"""Processes for bench/run: start, poll, measure (CPU, memory), stop.

Every process started here is registered and stopped by stop_all(), which
bench.py calls on normal exit, on failure and on SIGINT/SIGTERM.
"""

import os
import select
import signal
import socket
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
_started = []


class BenchError(Exception):
    pass


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def poll_until(what, check, timeout, interval=0.05):
    """Call check() until it returns a true value; the value is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Proc:
    """A started process with its output in a log file."""

    def __init__(self, name, argv, log_path, stdin=subprocess.DEVNULL,
                 stdout=None, env=None, cwd=None):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            argv, stdin=stdin, stdout=stdout if stdout is not None else self._log,
            stderr=self._log, env=env, cwd=cwd, start_new_session=True)
        self.pid = self.popen.pid
        _started.append(self)

    def alive(self):
        return self.popen.poll() is None

    def wait_port(self, port, timeout=60):
        def ready():
            if not self.alive():
                raise BenchError(f"{self.name} exited ({self.popen.returncode}) before "
                                 f"listening on {port}:\n{self.log_tail()}")
            return port_open(port)
        poll_until(f"{self.name} on port {port}", ready, timeout)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines=20):
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout=15):
        """SIGTERM, then SIGKILL; then kill whatever it left behind (sshd's
        per-connection processes live in their own sessions)."""
        if self in _started:
            _started.remove(self)
        leftovers = descendants(self.pid) if self.alive() else []
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self._log.close()


def stop_all():
    for proc in reversed(list(_started)):
        try:
            proc.stop()
        except Exception as exc:  # noqa: BLE001 - keep stopping the rest
            print(f"bench: could not stop {proc.name}: {exc}")


class LineReader:
    """Reads JSON-lines events from a child's stdout, with a timeout."""

    def __init__(self, proc):
        self.proc = proc
        self.fd = proc.popen.stdout.fileno()
        self.buf = b""

    def readline(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.proc.name}: no output for {timeout:.0f}s\n"
                                 f"{self.proc.log_tail()}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise BenchError(f"{self.proc.name} exited:\n{self.proc.log_tail()}")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


# --- /proc readings -------------------------------------------------------

def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # The command name may hold spaces and parentheses: split after the last ")".
    return text[text.rindex(")") + 2:].split()


def cpu_seconds(pid, with_children=False):
    """utime+stime (and cutime+cstime: reaped descendants) in seconds."""
    fields = _stat_fields(pid)
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def children_map():
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(entry)[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pid):
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kib(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_kib(pid, tree=False):
    """(RSS, PSS, process count) in KiB, of pid alone or of its whole tree."""
    pids = [pid] + (descendants(pid) if tree else [])
    rss = sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in pids)
    pss = sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
    return rss, pss, len(pids)


def settle_memory(read, timeout=20, interval=1.0, tolerance=0.005):
    """Read memory until two readings in a row agree within tolerance: idle
    connections finish their last allocations (buffers, keepalive timers)."""
    last = read()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = read()
        if abs(now[0] - last[0]) <= tolerance * max(last[0], 1):
            return now
        last = now
    return last


def tcp_connections(port):
    """Open TCP connections whose local end is 127.0.0.1:port (ESTABLISHED
    or CLOSE_WAIT: the server has not closed its side yet)."""
    want = f"0100007F:{port:04X}"
    n = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == want and fields[3] in ("01", "08"):
                n += 1
    return n


def mem_available_mib():
    return _kib("/proc/meminfo", "MemAvailable:") // 1024


def run(argv, timeout=120, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
