"""The console section of bench/run (issue 14): how fast the review
console's pages answer on a large database.

A PostgreSQL database of its own (`portvakt_bench_console_PID` on --postgres)
is migrated by portvakt, then filled in bulk by bench/console.sql
(--console-sessions forwards and --console-events audit rows, spread over
six weeks, with connections, recordings, grants, bans and access
requests). `portvakt serve` runs with a `[console]` on plain HTTP on
127.0.0.1 and the test identity provider (tests/idp, node) as its
`[oidc]`; the benchmark logs in through the IdP's HTML login and consent
forms as a browser would (the code flow with PKCE, as
tests/common/console.rs does), waits for the console's first chain
verification to end, warms up, then requests every page in turn, round
after round, over one kept-alive HTTP connection, and times each answer
until its last byte. Goal: p95 under 100 ms for every list and detail page.
"""

import datetime
import hashlib
import http.client
import http.cookiejar
import json
import math
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import report
from procs import BenchError, LineReader, Proc, free_port, poll_until, run

BEGIN = "<!-- bench/run console: begin (generated; edits between these markers are replaced) -->"
END = "<!-- bench/run console: end -->"
# Its own name per run: several runs may share one server (scripts/test's
# smoke run on the test server, say), and each drops its database at the end.
DB_NAME = f"portvakt_bench_console_{os.getpid()}"
GOAL_MS = 100.0
SPAN_DAYS = 42
IDP_USER, IDP_PASSWORD = "alice", "alice-pw"  # groups sre, dba (tests/idp/README.md)
CLIENT_ID, CLIENT_SECRET = "portvakt", "portvakt-secret"


def say(msg):
    print(f"bench: {msg}", flush=True)


def percentile(xs, p):
    """Nearest rank."""
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def lz4_literals(raw):
    """`raw` as one LZ4 block of literals only (a valid block that any LZ4
    decoder, lz4_flex's too, decompresses back to `raw`)."""
    n = len(raw)
    out = bytearray([min(n, 15) << 4])
    if n >= 15:
        rest = n - 15
        while rest >= 255:
            out.append(255)
            rest -= 255
        out.append(rest)
    return bytes(out) + raw


def asciicast(start_s):
    """A small shell session as asciicast v2."""
    lines = [json.dumps({"version": 2, "width": 120, "height": 40, "timestamp": start_s,
                         "env": {"TERM": "xterm-256color", "SHELL": "/bin/bash"}})]
    t = 0.0
    for i in range(60):
        t += 0.25 + (i % 7) * 0.1
        lines.append(json.dumps([round(t, 6), "o",
                                 f"deploy@app-{i % 5}:~$ tail -n 1 /var/log/app.log\r\n"
                                 f"2026-11-{1 + i % 28:02d} 12:{i:02d}:00 INFO request {i} "
                                 f"served in {i * 3 % 97} ms\r\n"]))
    return ("\n".join(lines) + "\n").encode()


class Console:
    def __init__(self, bench):
        self.bench = bench
        self.args = bench.args
        self.work = os.path.join(bench.work, "console")
        os.makedirs(self.work)
        base, _, _ = self.args.postgres.rpartition("/")
        self.admin_url = self.args.postgres
        self.db_url = f"{base}/{DB_NAME}"
        self.cookie = None
        self.conn = None

    # --- the database -----------------------------------------------------------

    def psql(self, url, *argv, timeout=1800):
        out = subprocess.run(["psql", url, "-X", "-q", "-v", "ON_ERROR_STOP=1", *argv],
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise BenchError(f"psql {url} {' '.join(argv)[:200]} failed: {out.stderr.strip()}")
        return out.stdout

    def values(self, sql):
        return [line for line in self.psql(self.db_url, "-At", "-c", sql).splitlines() if line]

    def create_db(self):
        self.psql(self.admin_url, "-c", f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        self.psql(self.admin_url, "-c", f"CREATE DATABASE {DB_NAME}")

    def drop_db(self):
        try:
            self.psql(self.admin_url, "-c", f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        except BenchError as exc:
            say(f"console: {exc}")

    def fill(self):
        now = int(time.time())
        start = now - SPAN_DAYS * 86400
        raw = asciicast(start)
        t0 = time.monotonic()
        self.psql(self.db_url, "-v", f"sessions={self.args.console_sessions}",
                  "-v", f"events={self.args.console_events}",
                  "-v", f"start={start * 1_000_000}", "-v", f"span={SPAN_DAYS * 86400 * 1_000_000}",
                  "-v", f"now={now * 1_000_000}", "-v", f"chunk={lz4_literals(raw).hex()}",
                  "-v", f"chunk_bytes={len(raw)}",
                  "-v", f"chunk_sha={hashlib.sha256(raw).hexdigest()}",
                  "-f", os.path.join(os.path.dirname(__file__), "console.sql"))
        seconds = time.monotonic() - t0
        counts = self.values(
            "SELECT (SELECT count(*) FROM audit_events), (SELECT count(*) FROM forwards), "
            "(SELECT count(*) FROM connections), (SELECT count(*) FROM recordings), "
            "(SELECT count(*) FROM grants), (SELECT count(*) FROM bans), "
            "(SELECT count(*) FROM access_requests), "
            "(SELECT pg_size_pretty(pg_database_size(current_database())))")[0].split("|")
        keys = ["audit_events", "forwards", "connections", "recordings", "grants", "bans",
                "access_requests"]
        data = {k: int(v) for k, v in zip(keys, counts)}
        data["size"] = counts[-1]
        data["fill_seconds"] = round(seconds, 1)
        data["span_days"] = SPAN_DAYS
        if data["audit_events"] != self.args.console_events or \
                data["forwards"] != self.args.console_sessions:
            raise BenchError(f"console: the fill wrote {data}, not {self.args.console_events} "
                             f"audit rows and {self.args.console_sessions} sessions")
        say(f"console: filled {DB_NAME} in {seconds:.1f} s: " + ", ".join(
            f"{v:,} {k}" if isinstance(v, int) else f"{k} {v}" for k, v in data.items()
            if k not in ("fill_seconds", "span_days")))
        return data

    # --- the identity provider and the server -------------------------------------

    def start_idp(self, redirect_uri):
        idp_dir = os.path.join(self.bench_repo(), "tests", "idp")
        if not os.path.isdir(os.path.join(idp_dir, "node_modules", "oidc-provider")):
            say("console: npm ci in tests/idp")
            out = run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], timeout=600,
                      cwd=idp_dir)
            if out.returncode != 0:
                raise BenchError(f"npm ci in {idp_dir} failed: {out.stderr.strip()}")
        env = dict(os.environ, IDP_PORT="0", IDP_REDIRECT_URIS=redirect_uri)
        for k in ("IDP_USERS", "IDP_CLIENT_ID", "IDP_CLIENT_SECRET", "IDP_ID_TOKEN_ALG"):
            env.pop(k, None)
        proc = Proc("idp", ["node", os.path.join(idp_dir, "server.mjs")],
                    os.path.join(self.work, "idp.log"), stdout=subprocess.PIPE, env=env,
                    cwd=idp_dir)
        line = LineReader(proc).readline(60).strip()
        if not line.startswith("IDP READY "):
            raise BenchError(f"the IdP said {line!r}:\n{proc.log_tail()}")
        return proc, line[len("IDP READY "):]

    def bench_repo(self):
        return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def config(self, port, issuer):
        secret = os.path.join(self.work, "oidc_secret")
        with open(secret, "w") as f:
            f.write(CLIENT_SECRET + "\n")
        os.chmod(secret, 0o600)
        key_dir = os.path.join(self.work, "keys")
        os.makedirs(key_dir, mode=0o700, exist_ok=True)
        host_key = os.path.join(key_dir, "ssh_host_ed25519_key")
        shutil.copy(self.bench.keys.jump_host, host_key)
        os.chmod(host_key, 0o600)
        path = os.path.join(self.work, "portvakt.toml")
        with open(path, "w") as f:
            f.write(f"""[server]
listen = ["127.0.0.1:{free_port()}"]
host_key_dir = "{key_dir}"
node_name = "console-bench"

[database]
url = "{self.db_url}"

[log]
format = "json"
level = "warn"

[auth]
trusted_user_ca_keys = ["{self.bench.keys.ca}.pub"]

[[targets]]
name = "bench"
cidr = "127.0.0.1/32"
ports = [22]
allow_users = ["bench"]

[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret_file = "{secret}"

[console]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
reviewer_groups = ["dba"]
admin_groups = ["sre"]
""")
        return path

    # --- HTTP -----------------------------------------------------------------

    def login(self, base):
        """The OIDC code flow through the IdP's login and consent forms."""
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

        def fetch(url, form=None):
            data = None if form is None else urllib.parse.urlencode(form).encode()
            with opener.open(url, data=data, timeout=60) as r:
                return r.geturl(), r.status, r.read().decode(errors="replace")

        url, status, text = fetch(f"{base}/auth/login?next=%2F")
        for _ in range(4):
            m = re.search(r'<form id="(login|consent)"[^>]*action="([^"]*)"', text)
            if not m:
                break
            action = urllib.parse.urljoin(url, m.group(2).replace("&amp;", "&"))
            form = {"login": IDP_USER, "password": IDP_PASSWORD} if m.group(1) == "login" else {}
            url, status, text = fetch(action, form)
        if not url.startswith(f"{base}/auth/callback") or status != 200:
            raise BenchError(f"console login: ended at {url} ({status}):\n{text[:2000]}")
        m = re.search(r'id="continue"[^>]*href="([^"]*)"', text) or \
            re.search(r'href="([^"]*)"[^>]*id="continue"', text)
        if not m:
            raise BenchError(f"console login: no continue link:\n{text[:2000]}")
        cookie = next((c for c in jar if c.name == "portvakt_console"), None)
        if cookie is None:
            raise BenchError("console login: no portvakt_console cookie")
        self.cookie = f"portvakt_console={cookie.value}"

    def get(self, path):
        """GET `path` on the kept-alive connection: (status, body, seconds
        until the last byte)."""
        for attempt in range(2):
            try:
                t0 = time.perf_counter()
                self.conn.request("GET", path, headers={"Cookie": self.cookie})
                r = self.conn.getresponse()
                body = r.read()
                return r.status, body, time.perf_counter() - t0
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def ok(self, path, want=None):
        status, body, _ = self.get(path)
        text = body.decode(errors="replace")
        if status != 200 or (want and want not in text):
            raise BenchError(f"console: GET {path} answered {status}"
                             + (f" without {want!r}" if want else "") + f":\n{text[:1500]}")
        return text

    def older(self, path, times):
        """The page `times` "Older →" links after `path`."""
        for _ in range(times):
            text = self.ok(path)
            m = re.search(r'id="next" href="([^"]*)"', text) or \
                re.search(r'href="([^"]*)"[^>]*id="next"', text)
            if not m:
                raise BenchError(f"console: no Older link on {path}")
            path = m.group(1).replace("&amp;", "&")
        return path

    # --- what is timed ------------------------------------------------------------

    def pages(self, data):
        """(label, [paths], kind): the paths are taken in turn; kind False: a
        page, "slow": a page sampled a tenth as often, True: an export."""
        q = urllib.parse.quote
        n = 20
        users = self.values("SELECT user_name FROM forwards ORDER BY random() LIMIT 20")
        targets = self.values("SELECT target FROM forwards ORDER BY random() LIMIT 20")
        ips = [x.rsplit(":", 1)[0] for x in
               self.values("SELECT source FROM forwards ORDER BY random() LIMIT 20")]
        ids = self.values(f"SELECT id FROM forwards ORDER BY random() LIMIT {self.args.console_samples}")
        recs = self.values(f"SELECT id FROM recordings ORDER BY random() LIMIT {self.args.console_samples}")
        first, last = (int(x) for x in self.values(
            "SELECT min(started_at), max(started_at) FROM forwards")[0].split("|"))

        def day(i):
            t = first + (last - first) * ((i * 7) % n + 1) // (n + 2)
            d = datetime.datetime.fromtimestamp(t / 1e6, datetime.timezone.utc).replace(
                hour=0, minute=0, second=0, microsecond=0)
            fmt = "%Y-%m-%dT%H:%M:%SZ"
            return q(d.strftime(fmt)), q((d + datetime.timedelta(days=1)).strftime(fmt))

        days = [day(i) for i in range(n)]
        # What is timed must be the real page: a recording whose content
        # decompresses and matches its SHA-256, a session with its timeline.
        self.ok(f"/recordings/{recs[0]}", "matches its SHA-256")
        self.ok(f"/sessions/{ids[0]}", "connection.open")
        deep = self.args.console_depth
        pages = [
            ("Now `/`", ["/"], False),
            ("`/sessions`", ["/sessions"], False),
            ("`/sessions?user=U`", [f"/sessions?user={q(u)}" for u in users], False),
            ("`/sessions?target=T`", [f"/sessions?target={q(t)}" for t in targets], False),
            ("`/sessions?result=failed`", ["/sessions?result=failed"], False),
            ("`/sessions?source=IP`", [f"/sessions?source={q(x)}" for x in ips], False),
            ("`/sessions?since=D&until=D+1d` (one day)",
             [f"/sessions?since={a}&until={b}" for a, b in days], False),
            ("`/sessions?user=U&result=denied&since=D`",
             [f"/sessions?user={q(u)}&result=denied&since={d[0]}" for u, d in zip(users, days)],
             False),
            (f"`/sessions` page {deep + 1} (Older → ×{deep})", [self.older("/sessions", deep)],
             False),
            ("`/sessions/ID` (detail)", [f"/sessions/{i}" for i in ids], False),
            ("`/audit`", ["/audit"], False),
            ("`/audit?kind=K`", [f"/audit?kind={k}" for k in
                                 ("auth.failure", "forward.denied", "file.op", "grant.create")],
             False),
            ("`/audit?user=U`", [f"/audit?user={q(u)}" for u in users], False),
            ("`/audit?kind=auth.success&user=U`",
             [f"/audit?kind=auth.success&user={q(u)}" for u in users], False),
            (f"`/audit` page {deep + 1} (Older → ×{deep})", [self.older("/audit", deep)], False),
            ("`/audit?source=IP`", [f"/audit?source={q(x)}" for x in ips], False),
            ("`/grants`", ["/grants"], False),
            ("`/lockouts`", ["/lockouts"], False),
            ("`/requests`", ["/requests"], False),
            ("`/recordings/ID`", [f"/recordings/{i}" for i in recs], False),
            ("`/sessions?format=csv` (10,000 rows)", ["/sessions?format=csv"], True),
            ("`/sessions?format=json` (10,000 rows)", ["/sessions?format=json"], True),
            ("`/sessions?user=U&format=csv`",
             [f"/sessions?user={q(u)}&format=csv" for u in users], True),
            ("`/audit?format=csv` (10,000 rows)", ["/audit?format=csv"], True),
            ("`/audit?format=json` (10,000 rows)", ["/audit?format=json"], True),
        ]
        return pages

    def wait_verified(self, timeout):
        t0 = time.monotonic()
        poll_until("the console's first chain verification",
                   lambda: "Not verified yet" not in self.ok("/audit"), timeout, interval=1.0)
        return round(time.monotonic() - t0, 1)

    def measure(self, pages):
        a = self.args
        for label, paths, export in pages:  # warm-up, and every path answers
            for i in range(max(a.console_warmup, 1) if not export else 1):
                status, body, _ = self.get(paths[i % len(paths)])
                if status != 200:
                    raise BenchError(f"console: {label}: {paths[i % len(paths)]} answered "
                                     f"{status}: {body[:500]!r}")
        times = {label: [] for label, _, _ in pages}
        sizes = {label: [] for label, _, _ in pages}
        export_samples = max(1, a.console_samples // 10)
        for r in range(a.console_samples):
            for label, paths, export in pages:
                if export and r >= export_samples:  # exports and "slow" pages
                    continue
                path = paths[r % len(paths)]
                status, body, dt = self.get(path)
                if status != 200:
                    raise BenchError(f"console: {path} answered {status}: {body[:500]!r}")
                times[label].append(dt * 1000)
                sizes[label].append(len(body))
        out = []
        for label, paths, export in pages:
            xs = times[label]
            out.append({"page": label, "example": paths[0], "export": export,
                        "samples": len(xs), "p50_ms": round(percentile(xs, 50), 1),
                        "p95_ms": round(percentile(xs, 95), 1), "max_ms": round(max(xs), 1),
                        "bytes": int(sum(sizes[label]) / len(sizes[label]))})
            say(f"console: {label}: p50 {out[-1]['p50_ms']} ms, p95 {out[-1]['p95_ms']} ms, "
                f"max {out[-1]['max_ms']} ms ({len(xs)} samples)")
        return out

    def run(self):
        a = self.args
        self.create_db()
        try:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            idp, issuer = self.start_idp(f"{base}/auth/callback")
            try:
                cfg = self.config(port, issuer)
                # portvakt's migrations make the schema (as at a first start).
                out = run([a.bin, "grants", "list", "--config", cfg], timeout=120)
                if out.returncode != 0:
                    raise BenchError(f"portvakt grants list (migrating): {out.stderr.strip()}")
                data = self.fill()
                server = Proc("portvakt console", [a.bin, "serve", "--config", cfg],
                              os.path.join(self.work, "portvakt.log"))
                try:
                    server.wait_port(port)
                    self.login(base)
                    self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                    verify_s = self.wait_verified(1800)
                    say(f"console: logged in; the first chain verification had ended "
                        f"{verify_s} s after")
                    pages = self.pages(data)
                    results = self.measure(pages)
                finally:
                    if self.conn:
                        self.conn.close()
                    server.stop()
            finally:
                idp.stop()
        finally:
            if not a.keep:
                self.drop_db()
        return {"data": data, "verify_wait_s": verify_s, "pages": results,
                "samples": a.console_samples, "warmup": a.console_warmup,
                "depth": a.console_depth}


def rows(res):
    out = []
    for p in res["pages"]:
        goal = "–" if p["export"] is True else ("yes" if p["p95_ms"] < GOAL_MS else "**no**")
        out.append((p["page"], f"{p['samples']}", report.fmt(p["p50_ms"]),
                    report.fmt(p["p95_ms"]), report.fmt(p["max_ms"]), f"{p['bytes']:,}", goal))
    return out


def table(res, args):
    return report._md(("page", "samples", "p50 ms", "p95 ms", "max ms", "bytes", "p95 < 100 ms"),
                      rows(res), ["---", "---:", "---:", "---:", "---:", "---:", "---"])


def markdown(res, meta, args):
    m, d = meta, res["data"]
    slow = ("" if not any(p["export"] == "slow" for p in res["pages"]) else
            " Pages marked \"known slow\" are held to it but sampled as often as exports.")
    return f"""{BEGIN}
## Review console

Issue 14: with 1,000,000 audit rows and 100,000 sessions in PostgreSQL, list and detail
pages answer in under 100 ms at the 95th percentile. Run on {m['date']}, took
{m['duration']}:

    {m['command']}

{table(res, args)}

Times are from sending the request to the last byte of the answer, over one kept-alive
HTTP/1.1 connection from Python on the same machine; {res['samples']} samples per page
({max(1, res['samples'] // 10)} per export), the pages taken in turn round after round,
after {res['warmup']} warm-up requests of each. Where a row names `U`, `T`, `D` or `ID`,
the samples take turns over 20 users, 20 targets, 20 days, or as many sessions and
recordings as samples, drawn at random from the data. "bytes": the answer's mean size.
Exports are reported but are not held to the goal (10,000 rows each).{slow}

The data ({d['size']} on disk, filled by `bench/console.sql` in {d['fill_seconds']} s):
{d['audit_events']:,} audit rows, {d['forwards']:,} sessions (forwards) in as many
connections and {d['connections'] - d['forwards']:,} more connections of failed logins,
{d['recordings']:,} recordings, {d['grants']:,} grants, {d['bans']:,} bans,
{d['access_requests']:,} access requests, spread over {d['span_days']} days: 500 users
and 200 targets (both skewed), 90 % allowed, 8 % denied, 2 % failed, the newest 20
forwards still open. The audit rows are outside the hash chain (`seq` NULL); the
console's first chain verification (of them all) had ended {res['verify_wait_s']} s after
the login, before the warm-up. PostgreSQL on the same machine; portvakt `serve` with log
level warn, the reviewer an admin (the pages show their forms).

Machine: {m['cores']} cores, {m['cpu']}, {m['ram_gib']} GiB RAM, Linux {m['kernel']}.
Load average (1, 5, 15 min) at the start {m['load_start']}, at the end {m['load_end']}.
portvakt {m['portvakt']} (`{os.path.relpath(m['portvakt_bin'])}`, built
{m['portvakt_built']}), {m['rustc']}, Python {m['python']}.
{END}
"""
