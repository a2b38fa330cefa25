"""portvakt against OpenSSH sshd as a jump host, side by side: see bench/run."""

import argparse
import datetime
import json
import os
import resource
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

import auditgen
import console
import record
import report
from procs import (BenchError, LineReader, Proc, mem_available_mib, run, settle_memory,
                   stop_all)
from servers import (Keys, OpensshJump, PortvaktJump, PortvaktNodes, PostgresDatabase, Sink,
                     Target, cli_config, client_config, ensure_bench_user, known_hosts)

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
SECTIONS = ["throughput", "latency", "memory", "scale", "logins", "audit", "record", "console"]
# Sections with a report of their own (the rest share the main table).
OWN_REPORT = ["audit", "record", "console"]
UNCHAINED = "portvakt-unchained"
TIME = "/usr/bin/time"  # GNU time (bench/run installs it)
CIPHERS = ["chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com"]
MIB = 1 << 20


def say(msg):
    print(f"bench: {msg}", flush=True)


def in_order(items, r):
    """The A/B order of round r (from 0): as given in even rounds, reversed in
    odd ones, so that neither side always runs first (a load that rises or
    falls during a round would otherwise favour one side every time)."""
    return list(items) if r % 2 == 0 else list(reversed(items))


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="bench/run",
        description="Compare portvakt with OpenSSH sshd as a jump host (DESIGN.md §9).")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (smoke test): 8 MiB, 3 latency runs, 10 and 20 "
                        "connections, 2 s of logins and forwards, 20,000 audit events, "
                        "2 MiB and 5 sessions through the recorded target, 1,000 sessions and "
                        "10,000 audit rows for the console; writes no docs")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run (default all): {','.join(SECTIONS)}")
    p.add_argument("--jumps", default="portvakt,openssh",
                   help="jump hosts to run (default both): portvakt,openssh")
    p.add_argument("--bin", help="portvakt binary (default: target/release/portvakt, built by bench/run)")
    p.add_argument("--rounds", type=int, help="A/B rounds for throughput and logins; the side that runs first "
                        "alternates from round to round [5; quick 1]")
    p.add_argument("--bytes", type=int, help="bytes per throughput run [1 GiB; quick 8 MiB]")
    p.add_argument("--latency-runs", type=int, help="ssh -J ... true runs per jump host [20; quick 3]")
    p.add_argument("--memory-sizes", help="idle forwards per memory run [100,1000; quick 10,20]")
    p.add_argument("--memory-rounds", type=int, help="A/B rounds per memory size [3; quick 1]")
    p.add_argument("--scale", type=int, help="concurrent idle forwards in the scale run [10000; quick 50]")
    p.add_argument("--login-seconds", type=float, help="seconds per login-rate run [15; quick 2]")
    p.add_argument("--login-clients", type=int, default=32, help="parallel login loops [32]")
    p.add_argument("--login-procs", type=int, default=2,
                   help="load client processes the login loops are spread over [2]")
    p.add_argument("--unchained-bin", help="audit: the same source built with --cfg "
                        "portvakt_bench_unchained, whose writer skips hashes and checkpoints "
                        "(default: target/bench-unchained/release/portvakt, built by bench/run)")
    p.add_argument("--audit-events", type=int,
                   help="audit: events in the chain audit verify checks [1000000; quick 20000]")
    p.add_argument("--verify-runs", type=int, help="audit: A/B rounds of audit verify with and "
                        "without --key [3; quick 1]")
    p.add_argument("--forward-seconds", type=float, help="seconds per forward-rate run [15; quick 2]")
    p.add_argument("--forward-connections", type=int, default=4,
                   help="logged-in connections per load client process in the forward-rate run [4]")
    p.add_argument("--forward-clients", type=int, default=32,
                   help="parallel forward loops (open, echo 64 bytes, close) [32]")
    p.add_argument("--record-bytes", type=int,
                   help="record: bytes per throughput run through the recorded target "
                        "[1 GiB; quick 2 MiB]")
    p.add_argument("--record-sessions",
                   help="record: idle recorded sessions per memory run; the largest is the "
                        "concurrency test [100,1000; quick 5]")
    p.add_argument("--record-database", choices=["sqlite", "postgres"], default="sqlite",
                   help="record: where the recorded jump keeps its recordings: SQLite (a file "
                        "beside it) or a database of its own on --postgres [sqlite]")
    p.add_argument("--record-cipher", default=CIPHERS[0],
                   help=f"record: the cipher on every hop [{CIPHERS[0]}]")
    p.add_argument("--console-sessions", type=int,
                   help="console: sessions (forwards) in its PostgreSQL database "
                        "[100000; quick 1000]")
    p.add_argument("--console-events", type=int,
                   help="console: audit rows in its PostgreSQL database [1000000; quick 10000]")
    p.add_argument("--console-samples", type=int,
                   help="console: timed requests per page (a tenth of it per export) "
                        "[200; quick 3]")
    p.add_argument("--console-warmup", type=int,
                   help="console: untimed requests per page first [10; quick 1]")
    p.add_argument("--console-depth", type=int,
                   help="console: the keyset page timed is reached by following "
                        "\"Older\" this often [20; quick 2]")
    p.add_argument("--open-concurrency", type=int, default=32,
                   help="connections being opened at once in memory/scale runs [32]")
    p.add_argument("--scale-nodes", type=int, default=2,
                   help="also run the scale test on this many portvakt nodes sharing one "
                        "PostgreSQL database, the connections spread over them (0: don't) [2]")
    p.add_argument("--postgres", default=os.environ.get(
                       "PORTVAKT_BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
                   help="PostgreSQL server for --scale-nodes and the console section; the "
                        "benchmark creates and drops databases of its own there [$PORTVAKT_BENCH_POSTGRES_URL or "
                        "postgres://postgres@127.0.0.1:5432/postgres]")
    p.add_argument("--mem-guard-mib", type=int, default=4096,
                   help="stop adding connections when MemAvailable drops below this [4096]")
    p.add_argument("--out", help="write the report here (default: docs/BENCHMARKS.md for a "
                                 "full run of every section, else nowhere)")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--nice", type=int, default=0,
                   help="run the benchmark (both jump hosts, clients) at this nice value; a "
                        "negative one keeps other work on a shared machine from skewing it [0]")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, configs)")
    args = p.parse_args(argv)
    q = args.quick
    args.rounds = args.rounds or (1 if q else 5)
    args.bytes = args.bytes or (8 * MIB if q else 1024 * MIB)
    args.latency_runs = args.latency_runs or (3 if q else 20)
    args.memory_sizes = [int(x) for x in (args.memory_sizes or ("10,20" if q else "100,1000")).split(",")]
    args.memory_rounds = args.memory_rounds or (1 if q else 3)
    args.scale = args.scale or (50 if q else 10000)
    args.login_seconds = args.login_seconds or (2.0 if q else 15.0)
    args.forward_seconds = args.forward_seconds or (2.0 if q else 15.0)
    args.audit_events = args.audit_events or (20_000 if q else 1_000_000)
    args.verify_runs = args.verify_runs or (1 if q else 3)
    args.record_bytes = args.record_bytes or (2 * MIB if q else 1024 * MIB)
    args.record_sessions = [int(x) for x in (args.record_sessions or ("5" if q else "100,1000")).split(",")]
    args.console_sessions = args.console_sessions or (1000 if q else 100_000)
    args.console_events = args.console_events or (10_000 if q else 1_000_000)
    args.console_samples = args.console_samples or (3 if q else 200)
    args.console_warmup = args.console_warmup or (1 if q else 10)
    args.console_depth = args.console_depth or (2 if q else 20)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in args.only:
        if s not in SECTIONS:
            p.error(f"unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    args.jumps = [s.strip() for s in args.jumps.split(",") if s.strip()]
    for s in args.jumps:
        if s not in ("portvakt", "openssh"):
            p.error(f"unknown jump host {s!r}; choose from portvakt, openssh")
    if args.out is None and not q and (args.only == SECTIONS and len(args.jumps) == 2
                                       or args.only in (["audit"], ["record"], ["console"])):
        args.out = os.path.join(REPO, "docs", "BENCHMARKS.md")
    args.bin = os.path.abspath(args.bin or os.path.join(REPO, "target", "release", "portvakt"))
    args.unchained_bin = os.path.abspath(args.unchained_bin or os.path.join(
        REPO, "target", "bench-unchained", "release", "portvakt"))
    return args


class Bench:
    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.python = sys.executable
        self.keys = Keys(os.path.join(work, "keys"))
        self.target = Target(os.path.join(work, "target"), self.keys)
        self.sink = Sink(work, self.python, BENCH_DIR)
        self.target_ports = [self.target.port, self.sink.port]
        self.instances = 0
        self.results = {}

    # --- jump hosts ---------------------------------------------------------

    def start(self, kind):
        """A fresh jump host of `kind` ("portvakt", "openssh", or
        "portvakt-unchained": the build whose audit writer skips the chain)."""
        self.instances += 1
        d = os.path.join(self.work, f"{kind}-{self.instances}")
        limit = self.args.scale + 1000
        if kind == "portvakt":
            return PortvaktJump(d, self.args.bin, self.keys, self.target_ports, limit)
        if kind == UNCHAINED:
            return PortvaktJump(d, self.args.unchained_bin, self.keys, self.target_ports, limit,
                                name=UNCHAINED)
        reaper = [self.python, os.path.join(BENCH_DIR, "reaper.py")]
        return OpensshJump(d, self.keys, self.target_ports, limit, reaper)

    def configs(self, jumps):
        kh = os.path.join(self.work, "known_hosts")
        known_hosts(kh, self.keys, [j.port for j in jumps], self.target.port)
        out = {}
        for cipher in CIPHERS:
            path = os.path.join(self.work, f"ssh_config.{cipher.split('-')[0]}")
            client_config(path, self.keys, cipher, jumps, self.target.port, kh)
            out[cipher] = path
        return out

    # --- throughput and latency ----------------------------------------------

    def ssh(self, cfg, jump, command, stdin=subprocess.DEVNULL, timeout=600):
        return subprocess.run(["ssh", "-F", cfg, f"via-{jump.name}", command], stdin=stdin,
                              capture_output=True, text=True, timeout=timeout)

    def throughput_once(self, jump, cfg):
        n = self.args.bytes
        cpu0 = jump.cpu()
        t0 = time.monotonic()
        head = subprocess.Popen(["head", "-c", str(n), "/dev/zero"], stdout=subprocess.PIPE)
        # The target prints when cat starts and ends: the streaming time alone.
        out = self.ssh(cfg, jump, "date +%s.%N; cat >/dev/null; date +%s.%N", stdin=head.stdout)
        wall = time.monotonic() - t0
        head.stdout.close()
        head.wait()
        if out.returncode != 0:
            raise BenchError(f"throughput via {jump.name} failed ({out.returncode}): "
                             f"{out.stderr.strip()}\n{jump.proc.log_tail()}")
        start, end = (float(x) for x in out.stdout.split())
        jump.wait_idle()
        cpu = jump.cpu() - cpu0
        return {"wall_s": round(wall, 3), "mb_s": round(n / wall / 1e6, 1),
                "stream_mb_s": round(n / (end - start) / 1e6, 1),
                "jump_cpu_s_per_gib": round(cpu * (1 << 30) / n, 3)}

    def throughput(self, jumps, cfgs):
        res = {}
        for cipher in CIPHERS:
            runs = {j.name: [] for j in jumps}
            for r in range(self.args.rounds):
                for i, jump in enumerate(in_order(jumps, r)):
                    run = self.throughput_once(jump, cfgs[cipher])
                    run["first"] = i == 0
                    runs[jump.name].append(run)
                    say(f"throughput {cipher} round {r + 1} {jump.name}: {run['mb_s']} MB/s "
                        f"(streaming {run['stream_mb_s']}), jump CPU {run['jump_cpu_s_per_gib']} s/GiB")
            res[cipher] = runs
        self.results["throughput"] = res

    def latency(self, jumps, cfgs):
        cfg = cfgs[CIPHERS[0]]
        runs = {j.name: [] for j in jumps}
        for r in range(self.args.latency_runs):
            for jump in in_order(jumps, r):
                t0 = time.monotonic()
                out = self.ssh(cfg, jump, "true", timeout=60)
                dt = time.monotonic() - t0
                if out.returncode != 0:
                    raise BenchError(f"ssh -J via {jump.name} true failed: {out.stderr.strip()}")
                runs[jump.name].append(round(dt, 4))
                jump.wait_idle()
        for name, xs in runs.items():
            say(f"latency {name}: median {statistics.median(xs):.3f} s of {len(xs)}")
        self.results["latency"] = runs

    # --- idle forwards: memory and scale --------------------------------------

    def loadclient(self, mode, jump, extra, log_name):
        argv = [self.python, os.path.join(BENCH_DIR, "loadclient.py"), mode,
                *[a for port in getattr(jump, "ports", [jump.port]) for a in ("--port", str(port))],
                "--key", self.keys.user, "--cert", self.keys.cert,
                "--cipher", CIPHERS[0]] + extra
        return Proc(f"load client ({jump.name})", argv, os.path.join(self.work, log_name),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def hold(self, jump, count, tag, target_port=None, extra=()):
        """Open `count` idle forwards through `jump` (to the sink, or to
        `target_port`; `extra`: more load client options, e.g. --recorded);
        measure the jump host's memory before (after one warm-up forward)
        and with them open."""
        client = self.loadclient("hold", jump, [
            "--count", str(count), "--concurrency", str(self.args.open_concurrency),
            "--target-port", str(target_port or self.sink.port), "--warmup",
            "--mem-guard-mib", str(self.args.mem_guard_mib)] + list(extra),
            f"loadclient-{tag}.log")
        events = LineReader(client)
        try:
            expect(events.readline(120), "warm")
            jump.wait_idle()
            base = settle_memory(jump.memory)
            client.popen.stdin.write(b"go\n")
            client.popen.stdin.flush()
            while True:
                ev = json.loads(events.readline(1800))
                if ev["event"] == "held":
                    break
                say(f"  {tag}: {ev['open']} open, {ev['failed']} failed, {ev['seconds']} s")
            held = settle_memory(jump.memory)
            client.popen.stdin.write(b"check\n")
            client.popen.stdin.flush()
            alive = json.loads(events.readline(120))
            client.popen.stdin.write(b"close\n")
            client.popen.stdin.flush()
            client.popen.wait(300)
        finally:
            client.stop()
        n = ev["open"]
        per = lambda i: round((held[i] - base[i]) / n, 1) if n else None  # noqa: E731
        out = {"requested": count, "attempted": ev["attempted"], "open": n,
               "failed": ev["failed"], "errors": ev["errors"], "stopped": ev["stopped"],
               "open_seconds": ev["seconds"],
               "lost_after_open": alive["connections_lost"] + alive["forwards_closed"],
               "base_rss_kib": base[0], "rss_kib": held[0], "base_pss_kib": base[1],
               "pss_kib": held[1], "processes": held[2],
               "per_forward_rss_kib": per(0), "per_forward_pss_kib": per(1),
               "mem_available_mib_at_end": ev["mem_available_mib"]}
        return out

    def memory(self):
        res = {}
        for size in self.args.memory_sizes:
            runs = {kind: [] for kind in self.args.jumps}
            for r in range(self.args.memory_rounds):
                for i, kind in enumerate(in_order(runs, r)):
                    jump = self.start(kind)
                    try:
                        run = self.hold(jump, size, f"memory-{size}-{kind}-{r + 1}")
                        run["log_lines"] = len(jump.log_lines())
                        run["first"] = i == 0
                    finally:
                        jump.stop()
                    runs[kind].append(run)
                    say(f"memory {size} round {r + 1} {kind}: {run['open']} open, "
                        f"{run['per_forward_rss_kib']} KiB RSS / {run['per_forward_pss_kib']} KiB PSS "
                        f"per forward ({run['processes']} processes)")
            res[str(size)] = runs
        self.results["memory"] = res

    def scale(self):
        res = {}
        for kind in self.args.jumps:
            jump = self.start(kind)
            try:
                t0 = time.monotonic()
                run = self.hold(jump, self.args.scale, f"scale-{kind}")
                run["seconds"] = round(time.monotonic() - t0, 1)
                lines = jump.log_lines()
                run["log_lines"] = len(lines)
                run["log_excerpt"] = report.log_excerpt(lines)
            finally:
                jump.stop()
            res[kind] = run
            say(f"scale {kind}: {run['open']} of {run['requested']} open, {run['failed']} failed, "
                f"{run['lost_after_open']} dropped, stopped: {run['stopped']}, "
                f"{run['rss_kib'] // 1024} MiB RSS; errors: {run['errors'] or 'none'}")
        if "portvakt" in self.args.jumps and self.args.scale_nodes > 1:
            with PostgresDatabase(self.args.postgres) as url:
                d = os.path.join(self.work, "portvakt-nodes")
                jump = PortvaktNodes(d, self.args.bin, self.keys, self.target_ports,
                                     self.args.scale + 1000, url, self.args.scale_nodes)
                try:
                    t0 = time.monotonic()
                    run = self.hold(jump, self.args.scale, "scale-portvakt-nodes")
                    run["seconds"] = round(time.monotonic() - t0, 1)
                    lines = jump.log_lines()
                    run["log_lines"] = len(lines)
                    run["log_excerpt"] = report.log_excerpt(lines)
                    run["nodes"] = self.args.scale_nodes
                finally:
                    jump.stop()
            res[jump.name] = run
            say(f"scale {jump.label}: {run['open']} of {run['requested']} open, "
                f"{run['failed']} failed, {run['lost_after_open']} dropped, "
                f"{run['rss_kib'] // 1024} MiB RSS; errors: {run['errors'] or 'none'}")
        self.results["scale"] = res

    # --- logins -----------------------------------------------------------------

    def logins(self, jumps):
        self.results["logins"] = self.rate_rounds(jumps, "logins", "login", self.args.login_seconds,
                                                  self.args.login_clients, [])

    def rate_rounds(self, jumps, mode, unit, seconds, loops, extra):
        """A/B rounds of the load client's `mode` (logins or forwards):
        `loops` parallel loops over --login-procs processes, for `seconds`;
        per run the rate, and server and client CPU per `unit`."""
        procs = self.args.login_procs
        per = loops // procs
        runs = {j.name: [] for j in jumps}
        for r in range(self.args.rounds):
            for i, jump in enumerate(in_order(jumps, r)):
                jump.wait_idle()
                cpu0 = jump.cpu()
                start_at = time.time() + 2.0
                clients = [self.loadclient(mode, jump, [
                    "--concurrency", str(per), "--seconds", str(seconds),
                    "--start-at", str(start_at)] + extra, f"{mode}-{jump.name}-{r + 1}-{i + 1}.log")
                    for i in range(procs)]
                try:
                    evs = [json.loads(LineReader(c).readline(seconds + 300)) for c in clients]
                    for c in clients:
                        c.popen.wait(60)
                finally:
                    for c in clients:
                        c.stop()
                jump.wait_idle()
                cpu = jump.cpu() - cpu0
                ok = sum(ev["ok"] for ev in evs)
                took = max(ev["seconds"] for ev in evs)
                errors = {}
                for ev in evs:
                    for k, v in ev["errors"].items():
                        errors[k] = errors.get(k, 0) + v
                client_cpu = sum(ev["client_cpu_seconds"] for ev in evs)
                run = {"ok": ok, "failed": sum(ev["failed"] for ev in evs), "errors": errors,
                       "seconds": took, "per_s": round(ok / took, 1),
                       "server_cpu_s": round(cpu, 2),
                       f"server_cpu_ms_per_{unit}": round(1000 * cpu / ok, 3) if ok else None,
                       f"client_cpu_ms_per_{unit}": round(1000 * client_cpu / ok, 2) if ok else None,
                       "first": i == 0}
                runs[jump.name].append(run)
                say(f"{mode} round {r + 1} {jump.name}: {run['per_s']}/s, {run['failed']} failed, "
                    f"server {run[f'server_cpu_ms_per_{unit}']} ms CPU per {unit}, "
                    f"load client {run[f'client_cpu_ms_per_{unit}']} ms")
        return runs

    # --- audit: verify rate, and what the chain costs ---------------------------

    def audit(self):
        res = {"verify": self.audit_verify()}
        if os.access(self.args.unchained_bin, os.X_OK):
            res.update(self.audit_chain())
        else:
            res["chain_skipped"] = f"no unchained build at {self.args.unchained_bin}"
            say(f"audit: SKIPPED the chain's cost: {res['chain_skipped']} (bench/run builds it; "
                "or give --unchained-bin)")
        self.results["audit"] = res

    def audit_verify(self):
        """A chain of --audit-events events with a checkpoint every 1000, in a
        fresh SQLite database; then `audit verify` with and without --key."""
        d = os.path.join(self.work, "audit-verify")
        os.makedirs(d)
        db = os.path.join(d, "audit.db")
        cfg = cli_config(os.path.join(d, "portvakt.toml"), f"sqlite://{db}", self.keys.ca + ".pub")
        out = run([self.args.bin, "audit", "list", "--config", cfg])  # runs the migrations
        if out.returncode != 0:
            raise BenchError(f"portvakt audit list (to create {db}) failed: {out.stderr.strip()}")
        n = self.args.audit_events
        gen = auditgen.fill(db, "bench-1", n)
        gen["db_mib"] = round(os.path.getsize(db) / MIB, 1)
        say(f"audit: wrote {gen['rows']:,} rows ({gen['checkpoints']:,} checkpoints) in "
            f"{gen['seconds']} s, {gen['db_mib']} MiB")
        with open(gen["key"]) as f:
            key = f.read().strip()
        runs = {"key": [], "no_key": []}
        for r in range(self.args.verify_runs):
            for i, variant in enumerate(in_order(["key", "no_key"], r)):
                argv = ["audit", "verify", "--config", cfg, "--json"]
                if variant == "key":
                    argv += ["--key", gen["key"]]
                v = self.timed(argv, os.path.join(d, f"verify-{variant}-{r + 1}.json"))
                check_verify(v.pop("report"), gen, key, variant)
                v["rows_per_s"] = round(gen["rows"] / v["wall_s"])
                v["first"] = i == 0
                runs[variant].append(v)
                say(f"audit verify {'--key' if variant == 'key' else 'without --key'} round "
                    f"{r + 1}: {v['wall_s']} s, {v['rows_per_s']:,} rows/s, CPU {v['cpu_s']} s, "
                    f"peak RSS {v['max_rss_mib']} MiB")
        return {"generated": gen, "runs": runs}

    def timed(self, argv, out_path):
        """Run portvakt with `argv`: its JSON output, wall time, CPU and peak
        RSS. Under GNU time, because a child of this process would count
        this process's own RSS (copied at fork) in its peak."""
        usage = out_path + ".time"
        with open(out_path, "w") as out:
            t0 = time.monotonic()
            p = subprocess.run([TIME, "-f", "%U %S %M", "-o", usage, self.args.bin] + argv,
                               stdout=out, stderr=subprocess.PIPE, text=True)
            wall = time.monotonic() - t0
        with open(out_path) as f:
            text = f.read()
        if p.returncode != 0:
            raise BenchError(f"portvakt {' '.join(argv)} exited {p.returncode}: "
                             f"{p.stderr.strip()}\n{text[:2000]}")
        with open(usage) as f:
            user, system, rss_kib = f.read().split()[-3:]
        return {"report": json.loads(text), "wall_s": round(wall, 3),
                "cpu_s": round(float(user) + float(system), 2), "user_s": float(user),
                "max_rss_mib": round(int(rss_kib) / 1024, 1)}

    def audit_chain(self):
        """Login and forward rates of the release build against the same
        source built without the chain (--cfg portvakt_bench_unchained)."""
        echo = Sink(self.work, self.python, BENCH_DIR, echo=True)
        self.target_ports.append(echo.port)
        jumps = [self.start("portvakt"), self.start(UNCHAINED)]
        try:
            logins = self.rate_rounds(jumps, "logins", "login", self.args.login_seconds,
                                      self.args.login_clients, [])
            forwards = self.rate_rounds(jumps, "forwards", "forward", self.args.forward_seconds,
                                        self.args.forward_clients, [
                                            "--connections", str(self.args.forward_connections),
                                            "--target-port", str(echo.port), "--bytes", "64"])
        finally:
            for j in jumps:
                j.stop()
        chained = self.chain_written(jumps[0], True)
        unchained = self.chain_written(jumps[1], False)
        say(f"audit: the chained build's rows verify intact ({chained['rows']:,} rows, "
            f"{chained['checkpoints']} checkpoints); the unchained build wrote "
            f"{unchained['rows']:,} rows without hashes")
        return {"logins": logins, "forwards": forwards,
                "written": {"portvakt": chained, UNCHAINED: unchained}}

    def chain_written(self, jump, chained):
        """What a jump host's audit writer stored: the chained build's chain
        must verify intact and be signed; the unchained build's rows must
        have no hash (else the comparison compares nothing)."""
        db = os.path.join(os.path.dirname(jump.config), "portvakt.db")
        con = sqlite3.connect(db)
        rows, hashed, cps = con.execute(
            "SELECT count(*), sum(hash <> ''), sum(kind = 'audit.checkpoint') "
            "FROM audit_events").fetchone()
        con.close()
        if not chained:
            if hashed or cps:
                raise BenchError(f"{jump.name} wrote {hashed} hashed rows and {cps} checkpoints: "
                                 "not an unchained build")
            return {"rows": rows}
        v = self.timed(["audit", "verify", "--config", jump.config, "--json"],
                       os.path.join(os.path.dirname(jump.config), "verify.json"))
        node = v["report"]["nodes"][0]
        if not v["report"]["intact"] or node["rows"] != rows or not node["checkpoints"]:
            raise BenchError(f"the chain {jump.name} wrote does not verify: {v['report']}")
        return {"rows": rows, "checkpoints": node["checkpoints"]}

    # --- the run ------------------------------------------------------------------

    def run(self):
        only = self.args.only
        if any(s in only for s in ["throughput", "latency", "logins"]):
            jumps = [self.start(kind) for kind in self.args.jumps]
            try:
                cfgs = self.configs(jumps)
                if "latency" in only:
                    self.latency(jumps, cfgs)
                if "throughput" in only:
                    self.throughput(jumps, cfgs)
                if "logins" in only:
                    self.logins(jumps)
                self.results["log_excerpt"] = report.log_excerpt(jumps[0].log_lines())
            finally:
                for j in jumps:
                    j.stop()
        if "memory" in only:
            self.memory()
        if "scale" in only:
            self.scale()
        if "audit" in only:
            self.audit()
        if "record" in only:
            self.results["record"] = record.Record(self).run()
        if "console" in only:
            self.results["console"] = console.Console(self).run()


def check_verify(rep, gen, key, variant):
    """A benchmark of a verify that fails proves nothing: the chain must be
    intact, every row checked, every checkpoint verified, none unsigned."""
    nodes = rep.get("nodes", [])
    node = nodes[0] if len(nodes) == 1 else {}
    want = {"intact": True, "rows": gen["rows"], "checkpoints": gen["checkpoints"],
            "unsigned_rows": 0, "problems": []}
    got = {"intact": rep.get("intact"), "rows": node.get("rows"),
           "checkpoints": node.get("checkpoints"), "unsigned_rows": node.get("unsigned_rows"),
           "problems": node.get("problems")}
    if got != want:
        raise BenchError(f"audit verify ({variant}) did not report the chain intact: got {got}, "
                         f"want {want}")
    if variant == "no_key" and [" ".join(k.split()[:2]) for k in node.get("keys", [])] != [key]:
        raise BenchError(f"audit verify without --key lists keys {node.get('keys')}, want [{key}]")


def expect(line, event):
    ev = json.loads(line)
    if ev.get("event") != event:
        raise BenchError(f"expected {event!r} from the load client, got {line}")
    return ev


def raise_file_limit(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv):
    args = parse_args(argv)
    command = "bench/run" + ("" if not argv else " " + shlex.join(argv))
    if not os.access(args.bin, os.X_OK):
        raise SystemExit(f"bench: no portvakt binary at {args.bin} (build it, or pass --bin)")
    # Both ends of each forward, the jump's sockets and the sink's: 4 per forward.
    files = raise_file_limit(max(65536, 4 * args.scale + 4096))
    # SIGINT explicitly too: a shell's background job starts with it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    ensure_bench_user()
    if ("scale" in args.only and "portvakt" in args.jumps and args.scale_nodes > 1
            or "console" in args.only
            or "record" in args.only and args.record_database == "postgres"):
        try:  # fail now, not after the rest of the run
            PostgresDatabase(args.postgres).psql("SELECT 1")
        except BenchError as exc:
            raise SystemExit(f"bench: {exc}")
    if args.nice:
        os.nice(args.nice)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = report.loadavg()
    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix="portvakt-bench-")
    say(f"work folder {work}; file limit {files}; MemAvailable {mem_available_mib()} MiB")
    if "scale" in args.only and files < 2 * args.scale + 64:
        say(f"note: the open-file limit ({files}) is below the {2 * args.scale + 64} descriptors "
            f"that {args.scale} forwards need in one jump process (two sockets each)")
    ok = False
    try:
        bench = Bench(args, work)
        bench.run()
        ok = True
    except KeyboardInterrupt:
        say("interrupted; stopping everything")
        raise SystemExit(130)
    except BenchError as exc:
        say(f"failed: {exc}")
        raise SystemExit(1)
    finally:
        stop_all()
        if ok and not args.keep:
            subprocess.run(["rm", "-rf", work])
        else:
            say(f"logs and configs kept in {work}")
    meta = report.metadata(REPO, args, command, started, time.monotonic() - t0)
    meta["file_limit"] = files
    meta["load_start"] = load_start
    meta["unchained_bin"] = args.unchained_bin
    meta["unchained_built"] = report.built(args.unchained_bin)
    main_part = any(s in args.only for s in SECTIONS if s not in OWN_REPORT)
    print()
    if main_part:
        print(report.table(bench.results, args))
        print()
    if "audit" in bench.results:
        print(report.audit_table(bench.results["audit"], args))
        print()
    if "record" in bench.results:
        print(record.table(bench.results["record"], args))
        print()
    if "console" in bench.results:
        print(console.table(bench.results["console"], args))
        print()
    say(f"took {meta['duration']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": bench.results}, f, indent=1)
    if args.out:
        if main_part:
            report.write(args.out, report.markdown(bench.results, meta, args))
        if "audit" in bench.results:
            report.write(args.out, report.audit_markdown(bench.results["audit"], meta, args),
                         report.AUDIT_BEGIN, report.AUDIT_END)
        if "record" in bench.results:
            report.write(args.out, record.markdown(bench.results["record"], meta, args),
                         *record.markers(args))
        if "console" in bench.results:
            report.write(args.out, console.markdown(bench.results["console"], meta, args),
                         console.BEGIN, console.END)
        say(f"wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
