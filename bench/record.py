"""The record section of bench/run (issue 12): a recorded target through
portvakt against the same target through OpenSSH sshd as a pass-through
jump host, in the same run; portvakt's own pass-through forward runs
alongside, so that what recording costs portvakt shows apart from what
forwarding costs.

Three jump hosts, one target sshd (it trusts the benchmark's user CA and
portvakt's recording target CA):

  openssh       sshd as a jump host: the client's SSH runs through it to the
                target (ProxyJump), as in the other sections
  portvakt      portvakt forwarding the same bytes (a CIDR target)
  portvakt-rec  portvakt with the target as the recorded target "rec"
                (mode = "record"): the client's SSH ends at portvakt, which
                logs in to the target with a certificate from its target CA,
                relays the session and stores it as asciicast in SQLite (or,
                with --record-database postgres, in a PostgreSQL database of
                its own on --postgres, as several nodes would)
"""

import json
import os
import sqlite3
import statistics
import subprocess
import time

import report
from procs import BenchError, run
from servers import (USER, OpensshJump, PortvaktJump, PostgresDatabase, Target, client_config,
                     keygen, known_hosts, recorded_target)

RECORDED = "portvakt-rec"
NAME = "rec"  # the recorded target, as the client dials it
JUMPS = ["openssh", "portvakt", RECORDED]
BEGIN = "<!-- bench/run record: begin (generated; edits between these markers are replaced) -->"
END = "<!-- bench/run record: end -->"
# With --record-database postgres the report is a part of its own: the run
# of record on SQLite stays.
PG_BEGIN = "<!-- bench/run record on PostgreSQL: begin (generated; edits between these markers are replaced) -->"
PG_END = "<!-- bench/run record on PostgreSQL: end -->"
PAYLOAD_MIB = 16
MIB = 1 << 20


def say(msg):
    print(f"bench: {msg}", flush=True)


def in_order(items, r):
    return list(items) if r % 2 == 0 else list(reversed(items))


class Record:
    """Runs the section with the peers of `bench` (keys, sink, load client)."""

    def __init__(self, bench):
        self.bench = bench
        self.args = bench.args
        self.keys = bench.keys
        self.work = os.path.join(bench.work, "record")
        os.makedirs(self.work)
        # The target's commands run as the benchmark user: it must reach
        # the payload file.
        os.chmod(bench.work, 0o711)
        os.chmod(self.work, 0o711)
        self.host_ca = os.path.join(self.work, "recording_host_ca")
        self.target_ca = os.path.join(self.work, "recording_target_ca")
        keygen(self.host_ca, "bench recording host CA")
        keygen(self.target_ca, "bench recording target CA")
        trusted = os.path.join(self.work, "trusted_user_ca_keys")
        with open(trusted, "w") as f:
            for path in (self.keys.ca, self.target_ca):
                with open(path + ".pub") as k:
                    f.write(k.read())
        self.sessions = self.args.record_sessions
        self.target = Target(os.path.join(self.work, "target"), self.keys, ca_pub=trusted,
                             max_startups=max(self.sessions) + 100)
        self.payload = self.make_payload()
        self.text_payload = self.make_text_payload()
        # Room for every byte of a run: the asciicast of N bytes of text is
        # a little larger than N (JSON escapes, event framing).
        self.max_bytes = 2 * self.args.record_bytes + 64 * MIB
        self.limit = max(self.sessions) + 1000
        self.instances = 0
        self.results = {}

    def make_payload(self):
        """What the target sends: 16 MiB of base64 text from /dev/urandom in
        lines of 100 bytes, read from the page cache over and over. Text,
        like a terminal's output, but zlib compresses it only to about 3/4
        (terminal output compresses more): the recorder's compression works
        as hard as text makes it."""
        path = os.path.join(self.work, "payload.txt")
        with open(path, "wb") as f:
            subprocess.run(f"base64 -w 99 /dev/urandom | head -c {PAYLOAD_MIB * MIB}",
                           shell=True, stdout=f, check=True)
        os.chmod(path, 0o644)
        return path

    def start(self, kind):
        self.instances += 1
        d = os.path.join(self.work, f"{kind}-{self.instances}")
        ports = [self.target.port, self.bench.sink.port]
        if kind == "openssh":
            reaper = [self.bench.python, os.path.join(self.bench_dir(), "reaper.py")]
            return OpensshJump(d, self.keys, ports, self.limit, reaper)
        if kind == "portvakt":
            return PortvaktJump(d, self.args.bin, self.keys, ports, self.limit)
        extra = recorded_target(NAME, self.target, self.keys, [USER], self.max_bytes,
                                self.host_ca, self.target_ca)
        database, url = None, None
        if self.args.record_database == "postgres":
            database = PostgresDatabase(self.args.postgres, f"_record_{self.instances}")
            url = database.__enter__()
        # Its CIDR target reaches only the sink: the target is "rec".
        try:
            jump = PortvaktJump(d, self.args.bin, self.keys, [self.bench.sink.port], self.limit,
                                database=url, name=RECORDED, extra=extra)
        except BaseException:
            if database:
                database.__exit__(None, None, None)
            raise
        jump.postgres = database
        return jump

    def stop(self, jump):
        """Stops `jump`, then drops its PostgreSQL database if it has one."""
        try:
            jump.stop()
        finally:
            database = getattr(jump, "postgres", None)
            if database:
                database.__exit__(None, None, None)

    def make_text_payload(self):
        """Terminal output as it usually is: source text (the machine's C
        headers under /usr/include, in name order, 16 MiB), which LZ4
        compresses to about a third, as `cat` of a file, a build log or
        `journalctl` would give."""
        path = os.path.join(self.work, "payload-text.txt")
        left = PAYLOAD_MIB * MIB
        with open(path, "wb") as out:
            files = sorted(os.path.join(d, f) for d, _, fs in os.walk("/usr/include")
                           for f in fs if f.endswith(".h"))
            while left > 0 and files:
                for name in files:
                    try:
                        with open(name, "rb") as f:
                            data = f.read(left)
                    except OSError:
                        continue
                    out.write(data)
                    left -= len(data)
                    if left <= 0:
                        break
        if left > 0:
            raise BenchError("no C headers under /usr/include for the text payload "
                             "(apt-get install libc6-dev)")
        os.chmod(path, 0o644)
        return path

    def bench_dir(self):
        return os.path.dirname(os.path.abspath(__file__))

    # --- the run ----------------------------------------------------------------

    def run(self):
        jumps = [self.start(kind) for kind in JUMPS]
        try:
            self.cfg = self.client_config(jumps)
            self.check(jumps)
            self.latency(jumps)
            self.throughput(jumps)
            rec = jumps[-1]
            self.results["log_excerpt"] = report.log_excerpt(rec.log_lines())
        finally:
            for j in jumps:
                self.stop(j)
        self.memory()
        return self.results

    def client_config(self, jumps):
        rec = jumps[-1]
        out = run([self.args.bin, "ca", "show", "--json", "--config", rec.config])
        if out.returncode != 0:
            raise BenchError(f"portvakt ca show failed: {out.stderr.strip()}")
        line = json.loads(out.stdout)["known_hosts_line"]
        kh = os.path.join(self.work, "known_hosts")
        known_hosts(kh, self.keys, [j.port for j in jumps], self.target.port, extra=[line])
        cfg = os.path.join(self.work, "ssh_config")
        client_config(cfg, self.keys, self.args.record_cipher, jumps, self.target.port, kh,
                      recorded={RECORDED: NAME})
        return cfg

    def ssh(self, jump, command, timeout=120, **kw):
        return subprocess.run(["ssh", "-F", self.cfg, f"via-{jump.name}", command],
                              capture_output=True, text=True, timeout=timeout, **kw)

    def check(self, jumps):
        """Each path reaches the target as the benchmark user, and the
        recorded one is recorded."""
        for jump in jumps:
            last = self.last_recording(jump)
            out = self.ssh(jump, "id -un", stdin=subprocess.DEVNULL)
            if out.returncode != 0 or out.stdout.strip() != USER:
                raise BenchError(f"ssh via-{jump.name} id -un: exit {out.returncode}, "
                                 f"{out.stdout.strip()!r} {out.stderr.strip()}\n"
                                 f"{jump.proc.log_tail()}")
            if jump.name == RECORDED:
                self.recording_after(jump, last, 0)

    # --- the recordings a run made -------------------------------------------------

    def query(self, jump, sql):
        """Rows of `sql` (no parameters: the callers format integers only) in
        the recorded jump's database. From PostgreSQL every value is text,
        NULL is None."""
        if getattr(jump, "postgres", None) is None:
            con = sqlite3.connect(os.path.join(os.path.dirname(jump.config), "portvakt.db"))
            try:
                return con.execute(sql).fetchall()
            finally:
                con.close()
        url = jump.postgres.url
        out = run(["psql", url, "-v", "ON_ERROR_STOP=1", "-AtF", "\t", "-P", "null=\\N",
                   "-c", sql])
        if out.returncode != 0:
            raise BenchError(f"psql {url} failed ({sql}): {out.stderr.strip()}")
        return [tuple(None if v == "\\N" else v for v in line.split("\t"))
                for line in out.stdout.splitlines()]

    def last_recording(self, jump):
        if jump.name != RECORDED:
            return None
        return int(self.query(jump, "SELECT coalesce(max(id), 0) FROM recordings")[0][0])

    def recording_after(self, jump, last, at_least):
        """The one recording made since `last`, once it has ended: it must
        hold at least `at_least` bytes of content and not be truncated."""
        deadline = time.monotonic() + 60
        while True:
            rows = self.query(jump, "SELECT id, kind, bytes, chunks, truncated, ended_at "
                                    f"FROM recordings WHERE id > {int(last)} ORDER BY id")
            if len(rows) == 1 and rows[0][5] is not None:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"no ended recording after {last}: {rows}")
            time.sleep(0.02)
        rid, kind, size, chunks, truncated = rows[0][:5]
        rid, size, chunks, truncated = int(rid), int(size), int(chunks), int(truncated)
        if kind != "exec" or truncated or size < at_least:
            raise BenchError(f"recording {rid}: kind {kind}, {size} bytes (want at least "
                             f"{at_least}), truncated {truncated}")
        return {"id": rid, "bytes": size, "chunks": chunks}

    # --- latency -----------------------------------------------------------------------

    def latency(self, jumps):
        runs = {j.name: [] for j in jumps}
        for r in range(self.args.latency_runs):
            for jump in in_order(jumps, r):
                t0 = time.monotonic()
                out = self.ssh(jump, "true", timeout=60, stdin=subprocess.DEVNULL)
                dt = time.monotonic() - t0
                if out.returncode != 0:
                    raise BenchError(f"ssh via-{jump.name} true failed: {out.stderr.strip()}")
                runs[jump.name].append(round(dt, 4))
                jump.wait_idle()
        for name, xs in runs.items():
            say(f"record latency {name}: median {statistics.median(xs):.3f} s of {len(xs)}")
        self.results["latency"] = runs

    # --- throughput and CPU per GiB ---------------------------------------------------

    def throughput(self, jumps):
        res = {}
        for direction in ("down", "down-text", "up"):
            runs = {j.name: [] for j in jumps}
            for r in range(self.args.rounds):
                for i, jump in enumerate(in_order(jumps, r)):
                    run = self.throughput_once(jump, direction)
                    run["first"] = i == 0
                    runs[jump.name].append(run)
                    say(f"record throughput {direction} round {r + 1} {jump.name}: "
                        f"{run['mb_s']} MB/s (streaming {run['stream_mb_s']}), jump CPU "
                        f"{run['jump_cpu_s_per_gib']} s/GiB"
                        + (f", recorded {run['recorded_bytes']:,} bytes" if 'recorded_bytes' in run else ""))
            res[direction] = runs
        self.results["throughput"] = res

    def throughput_once(self, jump, direction):
        """down: the target writes N bytes of text (recorded as output);
        up: the client sends N zero bytes into cat (input, which is not
        recorded unless [recording] input = true). The target prints the
        time before and after on stderr: the streaming time alone."""
        n = self.args.record_bytes
        last = self.last_recording(jump)
        cpu0 = jump.cpu()
        t0 = time.monotonic()
        argv = ["ssh", "-F", self.cfg, f"via-{jump.name}"]
        if direction in ("down", "down-text"):
            payload = self.payload if direction == "down" else self.text_payload
            cmd = (f"date +%s.%N >&2; {{ while cat {payload}; do :; done; }} | head -c {n}; "
                   "date +%s.%N >&2")
            p = subprocess.Popen(argv + [cmd], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
            got = 0
            fd = p.stdout.fileno()
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                got += len(chunk)
            err = p.stderr.read().decode(errors="replace")
            p.wait()
        else:
            cmd = "date +%s.%N >&2; cat >/dev/null; date +%s.%N >&2"
            head = subprocess.Popen(["head", "-c", str(n), "/dev/zero"], stdout=subprocess.PIPE)
            p = subprocess.Popen(argv + [cmd], stdin=head.stdout, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
            head.stdout.close()
            err = p.stderr.read().decode(errors="replace")
            p.wait()
            head.wait()
            got = n
        wall = time.monotonic() - t0
        if p.returncode != 0 or got != n:
            raise BenchError(f"throughput {direction} via {jump.name}: exit {p.returncode}, "
                             f"{got} of {n} bytes: {err.strip()}\n{jump.proc.log_tail()}")
        times = [float(x) for x in err.split() if x.replace(".", "", 1).isdigit()]
        start, end = times[-2], times[-1]
        out = {"wall_s": round(wall, 3), "mb_s": round(n / wall / 1e6, 1),
               "stream_mb_s": round(n / (end - start) / 1e6, 1)}
        if jump.name == RECORDED:
            # The recording is stored before the CPU is read: its last
            # chunk is part of the cost.
            rec = self.recording_after(jump, last, 0 if direction == "up" else n)
            out["recorded_bytes"] = rec["bytes"]
            out["chunks"] = rec["chunks"]
        jump.wait_idle()
        cpu = jump.cpu() - cpu0
        out["jump_cpu_s_per_gib"] = round(cpu * (1 << 30) / n, 3)
        return out

    # --- idle recorded sessions: memory, and 1,000 at once -----------------------------

    def memory(self):
        res = {}
        for size in self.sessions:
            runs = []
            for r in range(self.args.memory_rounds):
                jump = self.start(RECORDED)
                try:
                    run = self.bench.hold(jump, size, f"record-{size}-{r + 1}",
                                          target_port=self.target.port,
                                          extra=["--recorded", NAME, "--command", "cat"])
                    run["log_lines"] = len(jump.log_lines())
                    run["log_excerpt"] = report.log_excerpt(jump.log_lines())
                    run["recordings"] = int(
                        self.query(jump, "SELECT count(*) FROM recordings")[0][0])
                finally:
                    self.stop(jump)
                runs.append(run)
                say(f"record memory {size} round {r + 1}: {run['open']} open, {run['failed']} "
                    f"failed, {run['lost_after_open']} dropped, {run['per_forward_rss_kib']} KiB "
                    f"RSS / {run['per_forward_pss_kib']} KiB PSS per session; errors: "
                    f"{run['errors'] or 'none'}")
            res[str(size)] = runs
        self.results["memory"] = res


# --- the report -------------------------------------------------------------------------

def _runs(res, direction, name, key):
    return [r[key] for r in res["throughput"].get(direction, {}).get(name, [])]


def _paired(runs, a, b, key=None):
    """a / b of each round (the runs of a round ran back to back)."""
    out = []
    for x, y in zip(runs.get(a, []), runs.get(b, [])):
        x = x[key] if key else x
        y = y[key] if key else y
        if x is not None and y:
            out.append(x / y)
    return out


def rows(res, args):
    """(measure, recorded, OpenSSH, recorded / OpenSSH, per round, portvakt
    pass-through, recorded / pass-through, target) rows."""
    out = []
    fmt, med, ratio, fr = report.fmt, report.med, report.ratio, report.fmt_ratio

    def add(label, runs, key, digits, target=None, target_text=""):
        rec = med(x[key] if key else x for x in runs.get(RECORDED, []))
        ossh = med(x[key] if key else x for x in runs.get("openssh", []))
        pv = med(x[key] if key else x for x in runs.get("portvakt", []))
        rounds = _paired(runs, RECORDED, "openssh", key)
        checked = [ratio(rec, ossh)] + ([statistics.median(rounds)] if rounds else [])
        text = target_text + report._check(checked, target) if target_text else ""
        out.append((label, fmt(rec, digits), fmt(ossh, digits), fr(ratio(rec, ossh)),
                    report.fmt_spread(rounds), fmt(pv, digits), fr(ratio(rec, pv)), text))

    n = args.record_bytes
    size = f"{n / (1 << 30):g} GiB" if n >= 1 << 30 else f"{n >> 20} MiB"
    lat = res.get("latency")
    if lat:
        k = max(len(xs) for xs in lat.values())
        add(f"latency `ssh -J ... true`, s (median of {k})", lat, None, 3, ("<=", 1.0), "<= 1.0")
    tp = res.get("throughput", {})
    for direction, what in [("down", f"{size} of text from the target: recorded"),
                            ("down-text", f"{size} of source text from the target: recorded"),
                            ("up", f"{size} into cat: relayed, not recorded")]:
        runs = tp.get(direction)
        if not runs:
            continue
        add(f"throughput, MB/s ({what}; wall clock)", runs, "mb_s", 1, (">=", 0.75), ">= 0.75")
        add("throughput, MB/s (streaming only)", runs, "stream_mb_s", 1)
        add(f"jump host CPU s per GiB ({direction == 'up' and 'relayed' or 'recorded'})",
            runs, "jump_cpu_s_per_gib", 2)
    for size_, runs in res.get("memory", {}).items():
        per = med(r["per_forward_pss_kib"] for r in runs)
        rss = med(r["per_forward_rss_kib"] for r in runs)
        met = report._check([per], ("<=", 256))
        out.append((f"memory per idle recorded session at {int(size_):,}, KiB PSS (RSS)",
                     f"{fmt(per)} ({fmt(rss)})", "-", "-", _spread([r["per_forward_pss_kib"]
                                                                     for r in runs]),
                     "-", "-", "<= 256 KiB" + met))
    if res.get("memory"):
        top = max(res["memory"], key=int)
        runs = res["memory"][top]
        clean = all(r["open"] == r["requested"] and not r["failed"] and not r["lost_after_open"]
                    for r in runs)
        held = ", ".join(_held(r) for r in runs)
        out.append((f"concurrent idle recorded sessions held of {int(top):,}", held, "-", "-",
                    "-", "-", "-", f"{int(top):,}, no failure" + (" (met)" if clean else " (NOT met)")))
    return out


def _spread(xs):
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return "-"
    return f"{report.fmt(min(xs))}–{report.fmt(max(xs))}"


def _held(r):
    text = f"{r['open']:,}"
    notes = []
    if r["failed"]:
        notes.append(f"{r['failed']:,} failed")
    if r["lost_after_open"]:
        notes.append(f"{r['lost_after_open']:,} dropped")
    if r["stopped"]:
        notes.append("stopped: " + r["stopped"])
    return text + (f" ({'; '.join(notes)})" if notes else "")


def table(res, args):
    header = ("measure", "recorded target", "OpenSSH pass-through", "recorded / OpenSSH",
              "per round: median (min–max)", "portvakt pass-through", "recorded / pass-through",
              "target")
    return report._md(header, rows(res, args), ["---"] + ["---:"] * 6 + ["---"])


def details(res):
    out = []
    for name, xs in res.get("latency", {}).items():
        out.append(f"- latency {name}, s: " + ", ".join(report.fmt(x, 3) for x in xs))
    lat = res.get("latency", {})
    if _paired(lat, RECORDED, "openssh"):
        out.append("- latency, recorded / OpenSSH by pair: "
                   + report._ratios(_paired(lat, RECORDED, "openssh")))
    for direction, runs in res.get("throughput", {}).items():
        for name, rs in runs.items():
            line = (f"- throughput {direction} {name}{report._first(rs)}: MB/s "
                    + ", ".join(report.fmt(r["mb_s"]) for r in rs)
                    + "; streaming " + ", ".join(report.fmt(r["stream_mb_s"]) for r in rs)
                    + "; jump CPU s/GiB " + ", ".join(report.fmt(r["jump_cpu_s_per_gib"], 2)
                                                      for r in rs))
            if rs and "recorded_bytes" in rs[0]:
                line += ("; recording bytes (chunks) " + ", ".join(
                    f"{r['recorded_bytes']:,} ({r['chunks']:,})" for r in rs))
            out.append(line)
        if _paired(runs, RECORDED, "openssh", "mb_s"):
            out.append(f"- throughput {direction}, recorded / OpenSSH by round: MB/s "
                       f"{report._ratios(_paired(runs, RECORDED, 'openssh', 'mb_s'))}; recorded / "
                       f"portvakt pass-through jump CPU s/GiB "
                       f"{report._ratios(_paired(runs, RECORDED, 'portvakt', 'jump_cpu_s_per_gib'))}")
    for size, rs in res.get("memory", {}).items():
        for i, r in enumerate(rs):
            out.append(
                f"- memory {size} round {i + 1}: {r['open']:,} open of {r['requested']:,}, "
                f"{r['failed']} failed, {r['lost_after_open']} dropped after opening, "
                f"RSS {r['base_rss_kib']:,} -> {r['rss_kib']:,} KiB, PSS {r['base_pss_kib']:,} -> "
                f"{r['pss_kib']:,} KiB, {r['open_seconds']} s to open, {r['recordings']:,} "
                f"recordings in the database (with the warm-up's), MemAvailable at the end "
                f"{r['mem_available_mib_at_end']:,} MiB; errors: "
                f"{json.dumps(r['errors']) if r['errors'] else 'none'}; its log: "
                f"{r['log_lines']} lines at level warn"
                + "".join(f"; `{x}`" for x in r.get("log_excerpt", [])))
    if res.get("log_excerpt"):
        out.append("- the recording portvakt's log during latency and throughput (level warn): "
                   + "; ".join(f"`{x}`" for x in res["log_excerpt"]))
    return "\n".join(out)


METHOD = """\
How it measures (bench/run --only record; bench/record.py):
- One target sshd (`MaxStartups {startups}:30:{startups}`, `MaxSessions {startups}`) that
  trusts two user CAs: the benchmark's, for logins that pass through a jump host, and
  portvakt's recording target CA (`TrustedUserCAKeys`, `AuthorizedPrincipalsFile none`: the
  certificate's principal is the login, `{user}`). Three jump hosts side by side: OpenSSH
  sshd as a pass-through jump (as in the other sections), portvakt forwarding the same
  bytes (a CIDR target), and portvakt with the target as the recorded target `{name}`
  (`mode = "record"`, `logins = ["{user}"]`, `host_key` pinned, `[recording] max_bytes`
  {max_bytes:,}: room for every run, nothing is truncated; SQLite, log level warn).
- The client is `/usr/bin/ssh` with a `-F` config: cipher {cipher} and
  curve25519-sha256 on every hop, the same user certificate on every jump. To the recorded target it dials
  `{name}` through portvakt and checks portvakt's host certificate against the
  `@cert-authority` line of `portvakt ca show --json`; the inner login is "none" (portvakt
  accepts it for an allowed login), and portvakt logs in to the target with a fresh key and
  a certificate from its target CA. So the recorded path runs three SSH connections
  (client to portvakt, client to portvakt inside it, portvakt to the target) where the
  pass-through paths run two (client to jump, client to target inside it).
- Latency: `ssh -F cfg via-X true`, {runs} run(s) per jump host; the order of the three
  reverses from one run to the next.
- Throughput, {size} per run, {rounds} round(s) of the three, the order reversing each round:
  "down" runs `{{ while cat payload; do :; done; }} | head -c N` on the target (16 MiB of
  base64 text of /dev/urandom in 100-byte lines, from the page cache; zlib compresses it
  to about 3/4, LZ4 not at all: the hardest case for the recorder's storage) and the
  client reads N bytes: the recorded direction (asciicast "o" events). "down-text" does
  the same with 16 MiB of source text (the machine's C headers under /usr/include, in name
  order; LZ4 compresses it to about a third), as terminal output usually is. "up" pipes N zero bytes into `cat >/dev/null` on the target: keystroke input,
  which is relayed but not recorded (`[recording] input` is false by default). Wall clock
  includes the logins; "streaming" is timed by the target (date before and after, on
  stderr). After each recorded run the benchmark checks its recording: one exec
  recording, ended, not truncated, with at least N bytes of content for "down" and
  "down-text". Jump CPU is utime+stime of the jump host over the run, read once the recording has ended and the
  jump has closed the connections (for sshd with its per-connection processes, as in the
  other sections).
- Memory and concurrency: a fresh recorded portvakt per run; the asyncssh load client
  opens one recorded session as a warm-up and closes it, the memory of portvakt's process
  is read once it settles, then N connections are opened ({opening} at a time), each with a
  `direct-tcpip` channel to `{name}`, an SSH login inside it and one session running `cat`
  on the target, and left idle; memory is read again once it settles. Per session =
  difference / N, PSS (RSS in brackets). Each session holds a recording row and its
  open recorder; nothing is flushed while it is idle. The largest N is the concurrency
  test: every session must open and still be open at the end. The target sshd's own
  memory (two processes per session) is not counted.
"""


def markers(args):
    return (PG_BEGIN, PG_END) if args.record_database == "postgres" else (BEGIN, END)


def markdown(res, meta, args):
    m = meta
    method = METHOD.format(
        startups=max(args.record_sessions) + 100, user=USER, name=NAME,
        max_bytes=2 * args.record_bytes + 64 * MIB, cipher=args.record_cipher,
        runs=args.latency_runs,
        size=(f"{args.record_bytes / (1 << 30):g} GiB" if args.record_bytes >= 1 << 30
              else f"{args.record_bytes >> 20} MiB"),
        rounds=args.rounds, opening=args.open_concurrency)
    begin, end = markers(args)
    where = ""
    if args.record_database == "postgres":
        where = (" Here the recorded jump keeps its recordings on PostgreSQL (a database of its "
                 "own on the server of `--postgres`, as several nodes would), not in SQLite.")
    return f"""{begin}
## Recorded targets{" (recordings on PostgreSQL)" if where else ""}

Issue 12: through a recorded target, throughput at least 0.75x and `ssh -J ... true`
latency at most 1.0x of OpenSSH sshd as a pass-through jump host; at most 256 KiB per
idle recorded session; 1,000 concurrent recorded sessions without failure.{where} Run on
{m['date']}, took {m['duration']}:

    {m['command']}

{table(res, args)}

"recorded / OpenSSH" is the recorded target through portvakt over the same target through
OpenSSH sshd as a jump host: above 1 is better for throughput, below 1 for latency and CPU.
"per round" is the median and range of the ratios of single rounds (for memory: the range
over rounds). "recorded / pass-through" is what recording costs portvakt over forwarding
the same bytes.

Machine: {m['cores']} cores, {m['cpu']}, {m['ram_gib']} GiB RAM, Linux {m['kernel']}.
Load average (1, 5, 15 min) at the start {m['load_start']}, at the end {m['load_end']}.
Versions: portvakt {m['portvakt']} (`{os.path.relpath(m['portvakt_bin'])}`, built
{m['portvakt_built']}), {m['openssh']}, {m['rustc']}, Python {m['python']}, asyncssh
{m['asyncssh']}.

Every run:

{details(res)}

{method}
{end}
"""
