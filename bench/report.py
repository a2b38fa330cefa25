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
AUDIT_BEGIN = "<!-- bench/run audit: begin (generated; edits between these markers are replaced) -->"
AUDIT_END = "<!-- bench/run audit: end -->"
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


def built(path):
    """When a binary was built (its mtime), or None when it is missing."""
    if not os.path.exists(path):
        return None
    return datetime.datetime.fromtimestamp(
        os.path.getmtime(path), datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


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


def _check(values, target):
    """" (met)" when every value meets the target, " (NOT met)" otherwise."""
    values = [v for v in values if v is not None]
    if not values or target is None:
        return ""
    op, goal = target
    met = all(v >= goal if op == ">=" else v <= goal for v in values)
    return " (met)" if met else " (NOT met)"


def paired(runs, key):
    """portvakt / OpenSSH of each A/B round (the two runs of a round ran back
    to back, in alternating order), or [] without both sides."""
    pv, os_ = runs.get("portvakt", []), runs.get("openssh", [])
    out = []
    for a, b in zip(pv, os_):
        x = a[key] if isinstance(a, dict) else a
        y = b[key] if isinstance(b, dict) else b
        out.append(ratio(x, y))
    return [r for r in out if r is not None]


def fmt_spread(rs):
    """Median of per-round ratios with their range: "1.22 (1.10-1.39)"."""
    if not rs:
        return "-"
    if len(rs) == 1:
        return fmt_ratio(rs[0])
    return f"{fmt_ratio(statistics.median(rs))} ({fmt_ratio(min(rs))}–{fmt_ratio(max(rs))})"


def stop_reason(run):
    """Why a hold run stopped opening connections: None when it tried all."""
    if run is None:
        return None
    return run["stopped"]


def rows(results, args):
    """(measure, portvakt, OpenSSH, ratio of medians, per-round ratios, target) rows."""
    out = []

    def add(label, pv, os_, digits, target=None, target_text="", rounds=None, on_ratio=True):
        r = ratio(pv, os_)
        if on_ratio:
            # Met only if the ratio of the medians and the median of the
            # per-round ratios both meet it.
            checked = [r] + ([statistics.median(rounds)] if rounds else [])
        else:
            checked = [pv]
        text = target_text + _check(checked, target) if target_text else ""
        out.append((label, fmt(pv, digits), fmt(os_, digits), fmt_ratio(r),
                     fmt_spread(rounds or []), text))

    gib = args.bytes / (1 << 30)
    size = f"{gib:g} GiB" if gib >= 1 else f"{args.bytes >> 20} MiB"
    for cipher, runs in results.get("throughput", {}).items():
        c = SHORT.get(cipher, cipher)
        get = lambda k, n: med(r[k] for r in runs.get(n, []))  # noqa: E731
        add(f"throughput {c}, MB/s ({size} into cat, wall clock)", get("mb_s", "portvakt"),
            get("mb_s", "openssh"), 1, (">=", 1.25), ">= 1.25", paired(runs, "mb_s"))
        add(f"throughput {c}, MB/s (streaming only)", get("stream_mb_s", "portvakt"),
            get("stream_mb_s", "openssh"), 1, rounds=paired(runs, "stream_mb_s"))
        add(f"jump host CPU s per GiB, {c}", get("jump_cpu_s_per_gib", "portvakt"),
            get("jump_cpu_s_per_gib", "openssh"), 2, ("<=", 0.75), "<= 0.75",
            paired(runs, "jump_cpu_s_per_gib"))
    lat = results.get("latency")
    if lat:
        n = max(len(xs) for xs in lat.values())
        add(f"latency `ssh -J ... true`, s (median of {n})", med(lat.get("portvakt", [])),
            med(lat.get("openssh", [])), 3, ("<=", 0.9), "<= 0.9", paired(lat, None))
    for size, runs in results.get("memory", {}).items():
        get = lambda k, n: med(r[k] for r in runs.get(n, []))  # noqa: E731
        add(f"memory per idle forward at {int(size):,}, KiB PSS", get("per_forward_pss_kib", "portvakt"),
            get("per_forward_pss_kib", "openssh"), 1, ("<=", 64), "portvakt <= 64 KiB",
            paired(runs, "per_forward_pss_kib"), on_ratio=False)
    scale = results.get("scale")
    if scale:
        pv, os_ = scale.get("portvakt"), scale.get("openssh")
        want = (pv or os_)["requested"]
        met = "" if pv is None else (" (met)" if _clean(pv) else " (NOT met)")
        # Counts compare only when both sides stopped for the same reason.
        if pv and os_ and stop_reason(pv) == stop_reason(os_):
            held_ratio = fmt_ratio(ratio(pv["open"], os_["open"]))
        elif pv and os_:
            held_ratio = "- (stopped for different reasons)"
        else:
            held_ratio = "-"
        out.append((f"scale: idle forwards held of {want:,}", _held(pv), _held(os_),
                    held_ratio, "-", f"{want:,}, no failure{met}"))
        get = lambda run, k, div=1: None if run is None or run[k] is None else run[k] / div  # noqa: E731
        rate = lambda run: None if run is None or not run["open_seconds"] else run["open"] / run["open_seconds"]  # noqa: E731
        add("scale: jump host PSS with them open, MiB", get(pv, "pss_kib", 1024), get(os_, "pss_kib", 1024), 0)
        add("scale: memory per idle forward, KiB PSS", get(pv, "per_forward_pss_kib"),
            get(os_, "per_forward_pss_kib"), 1)
        add("scale: forwards opened per second", rate(pv), rate(os_), 0)
        nodes = scale.get("portvakt-nodes")
        if nodes:
            n = nodes["nodes"]
            out.append((f"scale, portvakt as {n} nodes on one PostgreSQL: idle forwards held of "
                        f"{nodes['requested']:,}", _held(nodes), "-", "-", "-",
                        f"{nodes['requested']:,}, no failure" + (" (met)" if _clean(nodes) else " (NOT met)")))
            add(f"scale, {n} nodes: PSS of all nodes with them open, MiB", get(nodes, "pss_kib", 1024),
                None, 0)
            add(f"scale, {n} nodes: memory per idle forward, KiB PSS", get(nodes, "per_forward_pss_kib"),
                None, 1)
    lg = results.get("logins")
    if lg:
        get = lambda k, n: med(r[k] for r in lg.get(n, []))  # noqa: E731
        add(f"login rate, logins/s ({args.login_clients} parallel clients)", get("per_s", "portvakt"),
            get("per_s", "openssh"), 1, (">=", 2), ">= 2", paired(lg, "per_s"))
        add("server CPU per login, ms", get("server_cpu_ms_per_login", "portvakt"),
            get("server_cpu_ms_per_login", "openssh"), 2,
            rounds=paired(lg, "server_cpu_ms_per_login"))
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
    elif run["attempted"] == run["requested"] and run["open"] < run["requested"]:
        notes.append(f"all {run['attempted']:,} tried")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def table(results, args):
    header = ("measure", "portvakt", "OpenSSH", "portvakt / OpenSSH",
              "per round: median (min–max)", "target")
    body = rows(results, args)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * 4 + ["---"]) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def _first(rs):
    """Which rounds this side ran first in: " (first in rounds 1, 3, 5)"."""
    firsts = [str(i + 1) for i, r in enumerate(rs) if isinstance(r, dict) and r.get("first")]
    if not firsts:
        return ""
    return f" (ran first in round{'s' if len(firsts) > 1 else ''} {', '.join(firsts)})"


def _ratios(rs, digits=2):
    return ", ".join(f"{r:.{digits}f}" for r in rs)


def details(results):
    """Every run's numbers, in run order, so medians and ratios can be checked."""
    out = []
    for cipher, runs in results.get("throughput", {}).items():
        c = SHORT.get(cipher, cipher)
        for name, rs in runs.items():
            out.append(f"- throughput {c} {name}{_first(rs)}: MB/s "
                       + ", ".join(fmt(r["mb_s"]) for r in rs)
                       + "; streaming " + ", ".join(fmt(r["stream_mb_s"]) for r in rs)
                       + "; jump CPU s/GiB " + ", ".join(fmt(r["jump_cpu_s_per_gib"], 2) for r in rs))
        if paired(runs, "mb_s"):
            out.append(f"- throughput {c}, portvakt / OpenSSH by round: MB/s "
                       f"{_ratios(paired(runs, 'mb_s'))}; streaming {_ratios(paired(runs, 'stream_mb_s'))}; "
                       f"jump CPU s/GiB {_ratios(paired(runs, 'jump_cpu_s_per_gib'))}")
    lat = results.get("latency", {})
    for name, xs in lat.items():
        out.append(f"- latency {name}, s: " + ", ".join(fmt(x, 3) for x in xs))
    if paired(lat, None):
        out.append("- latency, portvakt / OpenSSH by pair (the side that runs first alternates): "
                   + _ratios(paired(lat, None)))
    for size, runs in results.get("memory", {}).items():
        for name, rs in runs.items():
            out.append(f"- memory {size} {name}{_first(rs)}: " + "; ".join(
                f"{r['open']} open, {r['failed']} failed, RSS {r['base_rss_kib']:,} -> {r['rss_kib']:,} KiB, "
                f"PSS {r['base_pss_kib']:,} -> {r['pss_kib']:,} KiB, {r['processes']} processes"
                for r in rs))
        if paired(runs, "per_forward_pss_kib"):
            out.append(f"- memory {size}, portvakt / OpenSSH by round, PSS per forward: "
                       + ", ".join(fmt_ratio(r) for r in paired(runs, "per_forward_pss_kib")))
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
    lg = results.get("logins", {})
    for name, rs in lg.items():
        out.append(f"- logins {name}{_first(rs)}: " + "; ".join(
            f"{r['ok']} in {r['seconds']} s = {r['per_s']}/s, {r['failed']} failed, server "
            f"{r['server_cpu_ms_per_login']} ms CPU/login, load client {r['client_cpu_ms_per_login']} ms CPU/login"
            + (f", errors {json.dumps(r['errors'])}" if r["errors"] else "")
            for r in rs))
    if paired(lg, "per_s"):
        out.append(f"- logins, portvakt / OpenSSH by round: logins/s {_ratios(paired(lg, 'per_s'))}; "
                   f"server CPU per login {_ratios(paired(lg, 'server_cpu_ms_per_login'), 3)}")
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
  both hops, `KexAlgorithms curve25519-sha256` on both jump hosts, so both run the same key
  exchange (portvakt with `classic_kex = true`: by default it offers only the post-quantum
  hybrids mlkem768x25519-sha256 and sntrup761x25519-sha512; OpenSSH 9.2 has no ML-KEM, and
  the asyncssh load client has no sntrup761, so no post-quantum exchange is common to all
  three), no compression.
- The jump hosts: portvakt with a generated config (SQLite, log level warn, a CIDR target
  for 127.0.0.1 on the target and sink ports, connection limits raised to the scale count);
  OpenSSH sshd with `TrustedUserCAKeys`, `AuthorizedPrincipalsFile none`, `ForceCommand
  /bin/false`, `PermitOpen` for the same two ports, `MaxStartups N:30:N`, `UsePAM no`,
  `LogLevel ERROR`, `ClientAliveInterval 30` (portvakt's keepalive interval).
- A/B rounds: each round runs both jump hosts back to back, and the side that runs first
  alternates (portvakt first in odd rounds, OpenSSH in even ones; latency alternates per
  pair of runs), so a load that rises or falls during the run does not always favour the
  same side. The table shows each side's median, the ratio of the two medians, and the
  median and range of the per-round ratios; a target on a ratio counts as met only when
  both the ratio of the medians and the median per-round ratio meet it.
  Everything the benchmark starts runs at nice {nice}, both jump hosts alike.
- Throughput: `head -c N /dev/zero | ssh -F cfg via-X 'cat >/dev/null'`; MB/s = 10^6 bytes/s.
  "Wall clock" includes both logins; "streaming" is timed by the target (date before and
  after cat). Jump CPU: portvakt's utime+stime, once it has closed its side of the run's
  connections; for sshd, once its per-connection processes have exited, the listener's utime+stime+cutime+cstime plus the cutime+cstime of
  bench/reaper.py, a subreaper it runs under (sshd's post-auth child, which moves the bytes,
  is not always reaped by its parent and would otherwise go uncounted).
- Memory: a fresh jump host per run; one warm-up forward is opened and closed, the jump
  host's memory is read (settled), then N connections each with one `direct-tcpip` channel to
  an idle TCP sink are opened and left idle, memory is read again once it settles; per
  forward = difference / N. Memory is PSS (proportional set size: a page shared by k
  processes counts 1/k in each), summed over portvakt's one process, or over the sshd
  listener and every process under it (two per connection). RSS, which counts a shared page
  once in every process and so overstates a forking server many times, is only in the
  per-run lines.
  The load client opens {opening} connections at a time and keeps them idle (it sends nothing;
  both jump hosts send keepalives every 30 s).
- Scale: the same as memory with the scale count, with a guard that stops opening
  connections when MemAvailable drops below {guard} MiB or the task count nears
  kernel.pid_max (sshd runs two processes per connection). The counts held are compared
  only when both sides stopped for the same reason (both tried every connection, or the
  same guard stopped both); otherwise the row says why each stopped. Then the same count once more
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
below 1 is better for latency, CPU and memory. "per round" is the median and range of the
ratios of single A/B rounds (the side that runs first alternates).

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


def write(path, text, begin=BEGIN, end=END):
    """Replace the generated part between `begin` and `end`, keep everything
    else. A part other than the main one goes at the end the first time."""
    old = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    if begin in old and end in old:
        new = old[:old.index(begin)] + text.rstrip("\n") + old[old.index(end) + len(end):]
    elif old and begin != BEGIN:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        new = ("# Benchmarks: portvakt against OpenSSH sshd as a jump host\n\n"
               "`bench/run` compares the two side by side on one machine (DESIGN.md §9). "
               "The parts between the markers below are written by it; text outside them is kept.\n\n"
               + text)
    with open(path, "w") as f:
        f.write(new)


# --- the audit section ------------------------------------------------------

UNCHAINED = "portvakt-unchained"


def chain_paired(runs, key):
    """chained / unchained of each A/B round."""
    out = [ratio(a[key], b[key]) for a, b in zip(runs.get("portvakt", []), runs.get(UNCHAINED, []))]
    return [r for r in out if r is not None]


def _spread(xs, digits=1):
    """Median (min–max) of a list of numbers."""
    if not xs:
        return "-"
    if len(xs) == 1:
        return fmt(xs[0], digits)
    return f"{fmt(statistics.median(xs), digits)} ({fmt(min(xs), digits)}–{fmt(max(xs), digits)})"


def audit_rows(res, args):
    """(measure, with the chain, without, ratio of medians, per-round ratios, target) rows."""
    out = []
    goal = (">=", 0.9)
    for part, unit, loops in [("logins", "login", f"{args.login_clients} parallel clients"),
                              ("forwards", "forward",
                               f"{args.forward_clients} parallel over "
                               f"{args.forward_connections * args.login_procs} connections")]:
        runs = res.get(part)
        if not runs:
            continue
        get = lambda k, n: med(r[k] for r in runs.get(n, []))  # noqa: E731
        a, b = get("per_s", "portvakt"), get("per_s", UNCHAINED)
        rounds = chain_paired(runs, "per_s")
        checked = [ratio(a, b)] + ([statistics.median(rounds)] if rounds else [])
        out.append((f"{unit} rate, {part}/s ({loops})", fmt(a), fmt(b), fmt_ratio(ratio(a, b)),
                    fmt_spread(rounds), ">= 0.90" + _check(checked, goal)))
        key = f"server_cpu_ms_per_{unit}"
        a, b = get(key, "portvakt"), get(key, UNCHAINED)
        out.append((f"server CPU per {unit}, ms", fmt(a, 3), fmt(b, 3), fmt_ratio(ratio(a, b)),
                    fmt_spread(chain_paired(runs, key)), ""))
    return out


def verify_rows(res):
    """(measure, with --key, without --key, target) rows."""
    v = res["verify"]
    g = v["generated"]
    k, nk = v["runs"]["key"], v["runs"]["no_key"]
    col = lambda rs, key, d=1: _spread([r[key] for r in rs], d)  # noqa: E731
    rates = [r["rows_per_s"] for r in k]
    met = _check([med(rates)], (">=", 200_000))
    return [
        ("chain checked (one node, SQLite)", f"{g['rows']:,} rows: {g['events']:,} events + "
         f"{g['checkpoints']:,} checkpoints, intact, {g['checkpoints']:,} checkpoints verified",
         "the same", ""),
        ("wall time, s", col(k, "wall_s", 2), col(nk, "wall_s", 2), ""),
        ("rows checked per second", col(k, "rows_per_s", 0), col(nk, "rows_per_s", 0),
         ">= 200,000" + met),
        ("CPU (user + system), s", col(k, "cpu_s", 2), col(nk, "cpu_s", 2), ""),
        ("peak RSS, MiB", col(k, "max_rss_mib"), col(nk, "max_rss_mib"), ""),
    ]


def _md(header, body, align):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def audit_table(res, args):
    parts = [_md(("audit verify --json", "with --key node.pub", "without --key", "target"),
                 verify_rows(res), ["---", "---:", "---:", "---"])]
    if res.get("chain_skipped"):
        parts.append(f"The chain's cost was not measured: {res['chain_skipped']}.")
    else:
        parts.append(_md(("measure", "portvakt", "without the chain", "with / without",
                          "per round: median (min–max)", "target"),
                         audit_rows(res, args), ["---"] + ["---:"] * 4 + ["---"]))
    return "\n\n".join(parts)


def audit_details(res, args):
    out = []
    v = res["verify"]
    g = v["generated"]
    out.append(f"- the chain: {g['rows']:,} rows written in {g['seconds']} s by bench/auditgen.py "
               f"(one transaction), database {g['db_mib']} MiB")
    for variant, rs in v["runs"].items():
        name = "with --key" if variant == "key" else "without --key"
        out.append(f"- audit verify {name}{_first(rs)}: " + "; ".join(
            f"{r['wall_s']} s, {r['rows_per_s']:,} rows/s, CPU {r['cpu_s']} s (user {r['user_s']}), "
            f"peak RSS {r['max_rss_mib']} MiB" for r in rs))
    for part, unit in [("logins", "login"), ("forwards", "forward")]:
        runs = res.get(part, {})
        for name, rs in runs.items():
            out.append(f"- {part} {name}{_first(rs)}: " + "; ".join(
                f"{r['ok']} in {r['seconds']} s = {r['per_s']}/s, {r['failed']} failed, server "
                f"{r[f'server_cpu_ms_per_{unit}']} ms CPU/{unit}, load client "
                f"{r[f'client_cpu_ms_per_{unit}']} ms CPU/{unit}"
                + (f", errors {json.dumps(r['errors'])}" if r["errors"] else "")
                for r in rs))
        if chain_paired(runs, "per_s"):
            out.append(f"- {part}, with / without the chain by round: {part}/s "
                       f"{_ratios(chain_paired(runs, 'per_s'), 3)}; server CPU per {unit} "
                       f"{_ratios(chain_paired(runs, f'server_cpu_ms_per_{unit}'), 3)}")
    w = res.get("written")
    if w:
        out.append(f"- audit rows the jump hosts wrote: portvakt {w['portvakt']['rows']:,} "
                   f"(`audit verify`: intact, {w['portvakt']['checkpoints']} checkpoints), "
                   f"without the chain {w[UNCHAINED]['rows']:,} (no hash, no checkpoint)")
    return "\n".join(out)


AUDIT_METHOD = """\
How it measures (bench/run --only audit; bench/auditgen.py, bench/bench.py):
- Verify: bench/auditgen.py writes {events:,} events of one node into a fresh SQLite
  database that portvakt's migrations created (`portvakt audit list` on it), with the
  documented canonical encoding and SHA-256, and after every 1,000 events an
  `audit.checkpoint` row (reason `checkpoint_events`) signing the row before it: a C2SP
  signed note made with a fresh Ed25519 key, as the writer makes them. The events repeat
  one connection's life (connection.open, auth.success, forward.open, forward.close,
  connection.close) with the server's detail fields. Only `audit_events` is filled, so
  the cross-checks of `forwards`, `connections` and `grants` have no rows to compare.
  Then `portvakt audit verify --json` runs {runs} time(s) with `--key` (the generated
  public key) and as often without, alternating which goes first; wall time from start
  to exit, CPU and peak RSS from GNU time. The database was just
  written, so it is in the page cache. Each run must report the chain intact, every row
  checked, every checkpoint verified and none unsigned, or the benchmark fails.
- The chain's cost: the release build against the same source built with
  `--cfg portvakt_bench_unchained` (target/bench-unchained), whose audit writer stores the
  same rows without hashes and signs no checkpoints; both run side by side with the
  config of the other sections (SQLite, log level warn). Logins: as in the logins
  section. Forwards: {procs} load client processes, each with {conns} logged-in
  connections kept open; {loops} loops in all, each opening a `direct-tcpip` channel to
  an echo target, sending 64 bytes, reading them back and closing the channel (each
  writes forward.open and forward.close). A/B rounds alternate the side that runs first;
  server CPU is the jump's utime+stime once it closed the run's connections. Afterwards
  the chained build's database must verify intact with checkpoints, and the unchained
  build's rows must carry no hash. Everything runs at nice {nice}.
"""


def audit_markdown(res, meta, args):
    m = meta
    return f"""{AUDIT_BEGIN}
## Audit chain

Issue 13: chaining and checkpoints cost at most 10 % of the login and forward rates;
`audit verify` checks at least 200,000 events per second. Run on {m['date']}, took
{m['duration']}:

    {m['command']}

{audit_table(res, args)}

"with / without" is the release build over the build without the chain: 0.90 or more
meets the target for rates (1 means the chain costs nothing); for CPU, above 1 is what the
chain costs. "per round" is the median and range of the ratios of single A/B rounds.

Machine: {m['cores']} cores, {m['cpu']}, {m['ram_gib']} GiB RAM, Linux {m['kernel']}.
Load average (1, 5, 15 min) at the start {m['load_start']}, at the end {m['load_end']}.
Versions: portvakt {m['portvakt']} (`{os.path.relpath(m['portvakt_bin'])}`, built
{m['portvakt_built']}; without the chain `{os.path.relpath(m['unchained_bin'])}`, built
{m['unchained_built'] or 'missing'}), {m['rustc']}, Python {m['python']}, asyncssh {m['asyncssh']}.

Every run:

{audit_details(res, args)}

{AUDIT_METHOD.format(events=args.audit_events, runs=args.verify_runs, procs=args.login_procs,
                     conns=args.forward_connections, loops=args.forward_clients, nice=args.nice)}
{AUDIT_END}
"""
