"""The table, the machine, the versions: text for the terminal and for
docs/BENCHMARKS.md."""

import datetime
import json
import os
import platform
import re
import statistics
import subprocess
from collections import Counter

BEGIN = "<!-- bench/run: begin (generated; edits between these markers are replaced) -->"
END = "<!-- bench/run: end -->"
SHORT = {"chacha20-poly1305@openssh.com": "chacha20-poly1305",
         "aes256-gcm@openssh.com": "aes256-gcm"}


def _out(argv, stderr=False):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (p.stderr if stderr else p.stdout).strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_gib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1 << 20), 1)
    return 0


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def metadata(repo, args, command, started, seconds):
    commit = _out(["git", "-C", repo, "rev-parse", "--short=12", "HEAD"])
    # Uncommitted edits count only if they are older than the binary.
    built = os.path.getmtime(args.bin)
    changed = [line[3:] for line in _out(["git", "-C", repo, "status", "--porcelain",
                                          "--untracked-files=no"]).splitlines() if line[3:]]
    before = [p for p in changed if os.path.exists(os.path.join(repo, p))
              and os.path.getmtime(os.path.join(repo, p)) <= built]
    if before:
        commit += " with uncommitted changes to " + ", ".join(before)
    try:
        import asyncssh
        asyncssh_version = asyncssh.__version__
    except ImportError:
        asyncssh_version = "unknown"
    minutes, secs = divmod(int(seconds), 60)
    return {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "duration": f"{minutes} min {secs} s",
        "command": command,
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "ram_gib": _mem_total_gib(),
        "portvakt": commit,
        "portvakt_bin": args.bin,
        "portvakt_built": datetime.datetime.fromtimestamp(
            built, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "openssh": _out(["ssh", "-V"], stderr=True),
        "openssh_server": _out(["dpkg-query", "-W", "-f", "${Version}", "openssh-server"]),
        "rustc": _out(["rustc", "--version"]),
        "python": platform.python_version(),
        "asyncssh": asyncssh_version,
        "load_end": loadavg(),
    }


def log_excerpt(lines, limit=8):
    """Distinct portvakt log messages (json lines) with their counts."""
    counts = Counter()
    for line in lines:
        if "kex_exchange_identification: Connection closed by remote host" in line:
            continue  # sshd noting bench/run's port probe
        try:
            ev = json.loads(line)
            fields = ev.get("fields") or ev
            key = f"{ev.get('level', '?')} {fields.get('message', '')}"
            extra = fields.get("error") or fields.get("reason")
            if extra:
                key += f" ({extra})"
        except (ValueError, AttributeError):
            key = line.strip()
        counts[re.sub(r"\d{4,}", "N", key)[:300]] += 1
    return [f"{n} x {msg}" for msg, n in counts.most_common(limit)]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=1):
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return f"{x:,.{digits}f}"


def fmt_ratio(r):
    """Two decimals, or two significant digits for small ratios (0.0048)."""
    if r is None:
        return "-"
    if r >= 0.1:
        return f"{r:.2f}"
    return f"{r:.2g}"


def ratio(a, b):
    if a is None or not b:
        return None
    return a / b


def _check(value, target):
    if value is None or target is None:
        return ""
    op, goal = target
    met = value >= goal if op == ">=" else value <= goal
    return " (met)" if met else " (NOT met)"


def rows(results, args):
    """(measure, portvakt, OpenSSH, ratio, target) rows of medians."""
    out = []

    def add(label, pv, os_, digits, target=None, target_text="", ratio_target=True):
        r = ratio(pv, os_)
        value = r if ratio_target else pv
        text = target_text + _check(value, target) if target_text else ""
        out.append((label, fmt(pv, digits), fmt(os_, digits), fmt_ratio(r), text))

    gib = args.bytes / (1 << 30)
    size = f"{gib:g} GiB" if gib >= 1 else f"{args.bytes >> 20} MiB"
    for cipher, runs in results.get("throughput", {}).items():
        c = SHORT.get(cipher, cipher)
        get = lambda k, n: med(r[k] for r in runs.get(n, []))  # noqa: E731
        add(f"throughput {c}, MB/s ({size} into cat, wall clock)", get("mb_s", "portvakt"),
            get("mb_s", "openssh"), 1, (">=", 1.25), ">= 1.25")
        add(f"throughput {c}, MB/s (streaming only)", get("stream_mb_s", "portvakt"),
            get("stream_mb_s", "openssh"), 1)
        add(f"jump host CPU s per GiB, {c}", get("jump_cpu_s_per_gib", "portvakt"),
            get("jump_cpu_s_per_gib", "openssh"), 2)
    lat = results.get("latency")
    if lat:
        n = max(len(xs) for xs in lat.values())
        add(f"latency `ssh -J ... true`, s (median of {n})", med(lat.get("portvakt", [])),
            med(lat.get("openssh", [])), 3, ("<=", 0.9), "<= 0.9")
    for size, runs in results.get("memory", {}).items():
        get = lambda k, n: med(r[k] for r in runs.get(n, []))  # noqa: E731
        add(f"memory per idle forward at {int(size):,}, KiB RSS", get("per_forward_rss_kib", "portvakt"),
            get("per_forward_rss_kib", "openssh"), 1, ("<=", 64), "portvakt <= 64 KiB", ratio_target=False)
        add(f"memory per idle forward at {int(size):,}, KiB PSS", get("per_forward_pss_kib", "portvakt"),
            get("per_forward_pss_kib", "openssh"), 1)
    scale = results.get("scale")
    if scale:
        pv, os_ = scale.get("portvakt"), scale.get("openssh")
        want = (pv or os_)["requested"]
        met = "" if pv is None else (" (met)" if _clean(pv) else " (NOT met)")
        out.append((f"scale: idle forwards held of {want:,}", _held(pv), _held(os_),
                    fmt_ratio(ratio(pv and pv["open"], os_ and os_["open"])),
                    f"{want:,}, no failure{met}"))
        get = lambda run, k, div=1: None if run is None or run[k] is None else run[k] / div  # noqa: E731
        add("scale: jump host RSS with them open, MiB", get(pv, "rss_kib", 1024), get(os_, "rss_kib", 1024), 0)
        add("scale: jump host PSS with them open, MiB", get(pv, "pss_kib", 1024), get(os_, "pss_kib", 1024), 0)
        add("scale: memory per idle forward, KiB RSS", get(pv, "per_forward_rss_kib"),
            get(os_, "per_forward_rss_kib"), 1)
        add("scale: seconds to open them", get(pv, "open_seconds"), get(os_, "open_seconds"), 1)
        nodes = scale.get("portvakt-nodes")
        if nodes:
            n = nodes["nodes"]
            out.append((f"scale, portvakt as {n} nodes on one PostgreSQL: idle forwards held of "
                        f"{nodes['requested']:,}", _held(nodes), "-", "-",
                        f"{nodes['requested']:,}, no failure" + (" (met)" if _clean(nodes) else " (NOT met)")))
            add(f"scale, {n} nodes: RSS of all nodes with them open, MiB", get(nodes, "rss_kib", 1024),
                None, 0)
            add(f"scale, {n} nodes: memory per idle forward, KiB RSS", get(nodes, "per_forward_rss_kib"),
                None, 1)
    lg = results.get("logins")
    if lg:
        get = lambda k, n: med(r[k] for r in lg.get(n, []))  # noqa: E731
        add(f"login rate, logins/s ({args.login_clients} parallel clients)", get("per_s", "portvakt"),
            get("per_s", "openssh"), 1, (">=", 2), ">= 2")
        add("server CPU per login, ms", get("server_cpu_ms_per_login", "portvakt"),
            get("server_cpu_ms_per_login", "openssh"), 2)
    return out


def _clean(run):
    return run["open"] == run["requested"] and not run["failed"] and not run["lost_after_open"]


def _held(run):
    if run is None:
        return "-"
    text = f"{run['open']:,}"
    notes = []
    if run["failed"]:
        notes.append(f"{run['failed']:,} failed")
    if run["lost_after_open"]:
        notes.append(f"{run['lost_after_open']:,} dropped")
    if run["stopped"]:
        notes.append("stopped: " + run["stopped"])
    return text + (f" ({'; '.join(notes)})" if notes else "")


def table(results, args):
    header = ("measure", "portvakt", "OpenSSH", "portvakt / OpenSSH", "target")
    body = rows(results, args)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * 3 + ["---"]) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def details(results):
    """Every run's numbers, in run order, so medians can be checked."""
    out = []
    for cipher, runs in results.get("throughput", {}).items():
        for name, rs in runs.items():
            out.append(f"- throughput {SHORT.get(cipher, cipher)} {name}: MB/s "
                       + ", ".join(fmt(r["mb_s"]) for r in rs)
                       + "; streaming " + ", ".join(fmt(r["stream_mb_s"]) for r in rs)
                       + "; jump CPU s/GiB " + ", ".join(fmt(r["jump_cpu_s_per_gib"], 2) for r in rs))
    for name, xs in results.get("latency", {}).items():
        out.append(f"- latency {name}, s: " + ", ".join(fmt(x, 3) for x in xs))
    for size, runs in results.get("memory", {}).items():
        for name, rs in runs.items():
            out.append(f"- memory {size} {name}: " + "; ".join(
                f"{r['open']} open, {r['failed']} failed, RSS {r['base_rss_kib']:,} -> {r['rss_kib']:,} KiB, "
                f"PSS {r['base_pss_kib']:,} -> {r['pss_kib']:,} KiB, {r['processes']} processes"
                for r in rs))
    for name, r in results.get("scale", {}).items():
        out.append(f"- scale {name}: {r['open']:,} open of {r['requested']:,} ({r['attempted']:,} attempted), "
                   f"{r['failed']} failed, {r['lost_after_open']} dropped after opening, stopped: "
                   f"{r['stopped'] or 'no'}, RSS {r['base_rss_kib']:,} -> {r['rss_kib']:,} KiB, "
                   f"PSS {r['base_pss_kib']:,} -> {r['pss_kib']:,} KiB, {r['processes']:,} processes, "
                   f"MemAvailable at the end {r['mem_available_mib_at_end']:,} MiB, "
                   f"{r['open_seconds']} s to open; errors: {json.dumps(r['errors']) if r['errors'] else 'none'}")
        if name == "portvakt" or r.get("log_excerpt"):
            out.append(f"  - its log: {r['log_lines']} lines at level warn"
                       + "".join(f"; `{x}`" for x in r.get("log_excerpt", [])))
    for name, rs in results.get("logins", {}).items():
        out.append(f"- logins {name}: " + "; ".join(
            f"{r['ok']} in {r['seconds']} s = {r['per_s']}/s, {r['failed']} failed, server "
            f"{r['server_cpu_ms_per_login']} ms CPU/login, load client {r['client_cpu_ms_per_login']} ms CPU/login"
            + (f", errors {json.dumps(r['errors'])}" if r["errors"] else "")
            for r in rs))
    if results.get("log_excerpt"):
        out.append("- portvakt log during throughput, latency and logins (level warn): "
                   + "; ".join(f"`{x}`" for x in results["log_excerpt"]))
    return "\n".join(out)


def method(args):
    return METHOD.format(nice=args.nice, guard=args.mem_guard_mib, clients=args.login_clients,
                         procs=args.login_procs, opening=args.open_concurrency)


METHOD = """\
How it measures (bench/run, bench/*.py):
- One machine, everything on 127.0.0.1. The same client (`/usr/bin/ssh` with a `-F` config
  whose `ProxyJump` reaches the jump hop; the asyncssh load client in bench/loadclient.py for
  the many-connection parts), the same target sshd, the same user certificate (principal
  `bench`, signed by a throwaway CA), the same host key on both jump hosts, the same cipher on
  both hops, `KexAlgorithms curve25519-sha256` on both jump hosts (portvakt with
  `classic_kex = true`; by default it offers only sntrup761x25519, which the asyncssh load
  client does not speak), no compression.
- The jump hosts: portvakt with a generated config (SQLite, log level warn, a CIDR target
  for 127.0.0.1 on the target and sink ports, connection limits raised to the scale count);
  OpenSSH sshd with `TrustedUserCAKeys`, `AuthorizedPrincipalsFile none`, `ForceCommand
  /bin/false`, `PermitOpen` for the same two ports, `MaxStartups N:30:N`, `UsePAM no`,
  `LogLevel ERROR`, `ClientAliveInterval 30` (portvakt's keepalive interval).
- A/B runs alternate (portvakt, OpenSSH, portvakt, OpenSSH, ...); the table shows medians.
  Everything the benchmark starts runs at nice {nice}, both jump hosts alike.
- Throughput: `head -c N /dev/zero | ssh -F cfg via-X 'cat >/dev/null'`; MB/s = 10^6 bytes/s.
  "Wall clock" includes both logins; "streaming" is timed by the target (date before and
  after cat). Jump CPU: portvakt's utime+stime; for sshd, once its per-connection processes
  have exited, the listener's utime+stime+cutime+cstime plus the cutime+cstime of
  bench/reaper.py, a subreaper it runs under (sshd's post-auth child, which moves the bytes,
  is not always reaped by its parent and would otherwise go uncounted).
- Memory: a fresh jump host per run; one warm-up forward is opened and closed, the jump
  host's memory is read (settled), then N connections each with one `direct-tcpip` channel to
  an idle TCP sink are opened and left idle, memory is read again once it settles; per
  forward = difference / N. RSS for portvakt is its one process; for OpenSSH the listener and
  every process under it (two per connection). RSS counts shared pages once per process,
  which overstates a forking server; PSS (proportional) splits them and is shown too.
  The load client opens {opening} connections at a time and keeps them idle (it sends nothing;
  both jump hosts send keepalives every 30 s).
- Scale: the same as memory with the scale count, with a guard that stops opening
  connections when MemAvailable drops below {guard} MiB or the task count nears
  kernel.pid_max (sshd runs two processes per connection). Then the same count once more
  through portvakt deployed as several nodes (`--scale-nodes`, 2 by default) sharing one
  PostgreSQL database, as behind a load balancer (docs/DEPLOYING.md): the load client takes
  the nodes' ports in turn, and memory is the sum over the nodes. This is how portvakt gets
  past a per-process open-file limit, the way sshd does by forking.
- Logins: {clients} loops spread over {procs} asyncssh processes, each connect + certificate
  login + disconnect, for a fixed time; CPU per login as for throughput. The load client
  shares the 2 cores with the server, so the rate is a whole-machine number; server CPU per
  login is not. A login to portvakt writes its audit rows (SQLite); sshd at LogLevel ERROR
  writes nothing.
"""


def _fd_note(meta, args):
    need = 2 * args.scale + 64
    if meta["file_limit"] >= need or "scale" not in args.only:
        return ""
    return (f" That is also the hard limit here, and it cannot be raised (no CAP_SYS_RESOURCE);"
            f" a jump process holds two sockets per forward, so {args.scale:,} forwards need about"
            f" {need:,} descriptors: portvakt, one process, runs out just short of"
            f" {meta['file_limit'] // 2:,} (EMFILE). sshd forks, so its limit is per connection.")


def markdown(results, meta, args):
    m = meta
    return f"""{BEGIN}
## Latest run

Run on {m['date']}, took {m['duration']}:

    {m['command']}

{table(results, args)}

Ratios are portvakt / OpenSSH: above 1 is better for throughput, logins/s and forwards held;
below 1 is better for latency, CPU and memory.

Machine: {m['cores']} cores, {m['cpu']}, {m['ram_gib']} GiB RAM, Linux {m['kernel']},
open-file limit {m['file_limit']:,}.{_fd_note(m, args)}
Load average (1, 5, 15 min) at the start {m['load_start']}, at the end {m['load_end']}: the
machine is shared, and anything else running shows up as noise in both columns.
Versions: portvakt {m['portvakt']} (`{os.path.relpath(m['portvakt_bin'])}`, built
{m['portvakt_built']}), {m['openssh']}
(openssh-server {m['openssh_server']}), {m['rustc']}, Python {m['python']}, asyncssh {m['asyncssh']}.

Every run:

{details(results)}

{method(args)}
{END}
"""


def write(path, text):
    """Replace the generated part of the file, keep everything else."""
    old = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + text.rstrip("\n") + old[old.index(END) + len(END):]
    else:
        new = ("# Benchmarks: portvakt against OpenSSH sshd as a jump host\n\n"
               "`bench/run` compares the two side by side on one machine (DESIGN.md §9). "
               "The part between the markers below is written by it; text outside them is kept.\n\n"
               + text)
    with open(path, "w") as f:
        f.write(new)
