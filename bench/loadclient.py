"""Many-connection SSH load client for bench/run (one process, asyncssh).

Two modes, both talking to one jump host with the benchmark's user
certificate:

  hold    open COUNT connections, each with one direct-tcpip channel to an
          idle TCP target, and keep them open. With --recorded NAME, the
          channel goes to the recorded target NAME instead, an SSH login
          runs inside it, and one session runs --command there (an idle
          recorded session). Protocol on stdout (one JSON
          object per line) and stdin (one word per line):
            -> {"event": "warm"}            after one warm-up connection was
                                             opened, forwarded and closed
                                             (only with --warmup)
            <- go                            start opening COUNT connections
            -> {"event": "progress", ...}   every 500 connections
            -> {"event": "held", ...}       all attempted (or a guard tripped)
            <- check                         -> {"event": "alive", ...}
            <- close (or end of input)       close everything and exit
  logins  for SECONDS, CONCURRENCY loops of connect + authenticate +
          disconnect; prints {"event": "logins", ...} at the end.
  forwards
          over CONNECTIONS logged-in connections (opened first, kept open),
          for SECONDS, CONCURRENCY loops of open a direct-tcpip channel to
          an echo target + send BYTES + read them back + close it; prints
          {"event": "forwards", ...} at the end.

Guards (hold): stop opening new connections when MemAvailable drops below
--mem-guard-mib, or when the number of tasks (processes + threads) nears
kernel.pid_max (OpenSSH forks two processes per connection).
"""

import argparse
import asyncio
import itertools
import json
import resource
import sys
import time
from collections import Counter

import asyncssh


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def mem_available_mib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 1 << 30


def tasks_in_use():
    # /proc/loadavg: "0.00 0.01 0.05 1/234 5678": the 234 counts every task.
    with open("/proc/loadavg") as f:
        return int(f.read().split()[3].split("/")[1])


def pid_max():
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read())


def own_cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def short_error(exc):
    text = f"{type(exc).__name__}: {exc}".strip()
    return text[:200]


class Options:
    """Connection options built once (key, certificate and algorithms)."""

    def __init__(self, args):
        key = asyncssh.read_private_key(args.key)
        cert = asyncssh.read_certificate(args.cert)
        self.host = args.host
        # Several ports (nodes behind a balancer): connections take turns.
        self.ports = itertools.cycle(args.port)
        self.options = asyncssh.SSHClientConnectionOptions(
            username=args.user,
            client_keys=[(key, cert)],
            known_hosts=None,
            agent_path=None,
            preferred_auth="publickey",
            kex_algs=[args.kex],
            encryption_algs=[args.cipher],
            compression_algs=None,
            gss_host=None,
            login_timeout=args.timeout,
            connect_timeout=args.timeout,
        )
        # The login to a recorded target, inside the forward: portvakt
        # accepts "none" for an allowed login (the outer login proved who
        # it is), or the same key. Its host certificate is not checked here
        # (the ssh client checks it in the throughput and latency runs).
        self.inner_options = asyncssh.SSHClientConnectionOptions(
            username=args.user,
            client_keys=[(key, cert)],
            known_hosts=None,
            agent_path=None,
            kex_algs=[args.kex],
            encryption_algs=[args.cipher],
            compression_algs=None,
            gss_host=None,
            login_timeout=args.timeout,
            connect_timeout=args.timeout,
        )

    async def connect(self):
        return await asyncssh.connect(self.host, next(self.ports), options=self.options, config=None)

    async def connect_watched(self):
        return await asyncssh.create_connection(
            Watched, self.host, next(self.ports), options=self.options, config=None)


class Idle(asyncssh.SSHTCPSession):
    """A forwarded connection that never sends; notes when it is closed."""

    def __init__(self):
        self.closed = False

    def data_received(self, data, datatype):
        pass

    def connection_lost(self, exc):
        self.closed = True


class IdleSession(asyncssh.SSHClientSession):
    """A session that never sends; notes when it is closed."""

    def __init__(self):
        self.closed = False

    def data_received(self, data, datatype):
        pass

    def connection_lost(self, exc):
        self.closed = True


class Watched(asyncssh.SSHClient):
    """Notes when the server (or the network) ended the connection."""

    def __init__(self):
        self.lost = False

    def connection_lost(self, exc):
        self.lost = True


async def read_command(reader):
    line = await reader.readline()
    return line.decode().strip() if line else "close"


async def stdin_reader():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


class Held:
    """What one held connection keeps open: its connections (the outer
    one first), their client objects, and the idle channel or session."""

    def __init__(self, conns, clients, session):
        self.conns = conns
        self.clients = clients
        self.session = session

    @property
    def lost(self):
        return any(c.lost for c in self.clients)

    def close(self):
        for conn in reversed(self.conns):
            conn.close()


async def open_forward(opts, args):
    """An SSH connection with one idle direct-tcpip channel; with
    --recorded, an SSH login through that channel with one idle session."""
    conn, client = await opts.connect_watched()
    try:
        if not args.recorded:
            _, session = await asyncio.wait_for(
                conn.create_connection(Idle, args.target_host, args.target_port),
                args.timeout,
            )
            return Held([conn], [client], session)
        inner, inner_client = await asyncio.wait_for(asyncssh.create_connection(
            Watched, args.recorded, args.target_port, tunnel=conn,
            options=opts.inner_options, config=None), args.timeout)
        try:
            _, session = await asyncio.wait_for(
                inner.create_session(IdleSession, args.command), args.timeout)
        except BaseException:
            inner.close()
            raise
        return Held([conn, inner], [client, inner_client], session)
    except BaseException:
        conn.close()
        raise


async def hold(args):
    opts = Options(args)
    commands = await stdin_reader()
    if args.warmup:
        h = await open_forward(opts, args)
        h.close()
        await asyncio.gather(*(c.wait_closed() for c in h.conns))
        emit({"event": "warm"})
        if await read_command(commands) != "go":
            return

    held = []
    errors = Counter()
    failed = 0
    stopped = None
    limit = pid_max() - args.pid_reserve
    sem = asyncio.Semaphore(args.concurrency)
    started = time.monotonic()

    async def one():
        nonlocal failed
        try:
            held.append(await open_forward(opts, args))
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            failed += 1
            errors[short_error(exc)] += 1
        finally:
            sem.release()
            done = len(held) + failed
            if done % 500 == 0:
                emit({"event": "progress", "open": len(held), "failed": failed,
                      "seconds": round(time.monotonic() - started, 1)})

    tasks = []
    for i in range(args.count):
        await sem.acquire()
        if i % 8 == 0:
            avail = mem_available_mib()
            if avail < args.mem_guard_mib:
                stopped = f"MemAvailable {avail} MiB < {args.mem_guard_mib} MiB"
            elif tasks_in_use() > limit:
                stopped = f"{tasks_in_use()} tasks, near kernel.pid_max {pid_max()}"
            if stopped:
                sem.release()
                break
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    emit({
        "event": "held",
        "attempted": len(tasks),
        "open": len(held),
        "failed": failed,
        "errors": dict(errors.most_common(10)),
        "stopped": stopped,
        "seconds": round(time.monotonic() - started, 2),
        "client_cpu_seconds": round(own_cpu_seconds(), 2),
        "mem_available_mib": mem_available_mib(),
    })

    while True:
        cmd = await read_command(commands)
        if cmd == "check":
            emit({"event": "alive", "open": len(held),
                  "connections_lost": sum(h.lost for h in held),
                  "forwards_closed": sum(h.session.closed for h in held)})
        else:
            break
    for h in held:
        h.close()
    await asyncio.gather(*(c.wait_closed() for h in held for c in h.conns), return_exceptions=True)


class Echoed(asyncssh.SSHTCPSession):
    """A forward that waits for its bytes to come back from an echo target."""

    def __init__(self, want):
        self.want = want
        self.got = 0
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data, datatype):
        self.got += len(data)
        if self.got >= self.want and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed before the echo"))


async def forwards(args):
    opts = Options(args)
    conns = [await opts.connect() for _ in range(args.connections)]
    payload = b"x" * args.bytes
    ok = 0
    errors = Counter()
    if args.start_at:
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
    cpu0 = own_cpu_seconds()
    start = time.monotonic()
    deadline = start + args.seconds

    async def loop(conn):
        nonlocal ok
        while time.monotonic() < deadline:
            try:
                chan, session = await asyncio.wait_for(conn.create_connection(
                    lambda: Echoed(len(payload)), args.target_host, args.target_port), args.timeout)
                chan.write(payload)
                await asyncio.wait_for(session.done, args.timeout)
                chan.close()
                await chan.wait_closed()
                ok += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                errors[short_error(exc)] += 1

    await asyncio.gather(*(loop(conns[i % len(conns)]) for i in range(args.concurrency)))
    seconds = time.monotonic() - start
    cpu = own_cpu_seconds() - cpu0
    for conn in conns:
        conn.close()
    await asyncio.gather(*(conn.wait_closed() for conn in conns), return_exceptions=True)
    emit({
        "event": "forwards",
        "ok": ok,
        "failed": sum(errors.values()),
        "errors": dict(errors.most_common(10)),
        "seconds": round(seconds, 3),
        "client_cpu_seconds": round(cpu, 3),
    })


async def logins(args):
    opts = Options(args)
    ok = 0
    errors = Counter()
    if args.start_at:
        # Several client processes start together (python startup varies).
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
    cpu0 = own_cpu_seconds()
    start = time.monotonic()
    deadline = start + args.seconds

    async def loop():
        nonlocal ok
        while time.monotonic() < deadline:
            try:
                conn = await opts.connect()
                conn.close()
                await conn.wait_closed()
                ok += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                errors[short_error(exc)] += 1

    await asyncio.gather(*(loop() for _ in range(args.concurrency)))
    emit({
        "event": "logins",
        "ok": ok,
        "failed": sum(errors.values()),
        "errors": dict(errors.most_common(10)),
        "seconds": round(time.monotonic() - start, 3),
        "client_cpu_seconds": round(own_cpu_seconds() - cpu0, 3),
    })


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["hold", "logins", "forwards"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, action="append", required=True,
                   help="jump host port; repeat it to spread connections over several")
    p.add_argument("--user", default="bench")
    p.add_argument("--key", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--kex", default="curve25519-sha256")
    p.add_argument("--cipher", default="chacha20-poly1305@openssh.com")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--concurrency", type=int, default=32)
    # hold; forwards too: --target-host, --target-port
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--target-host", default="127.0.0.1")
    p.add_argument("--target-port", type=int, default=0)
    p.add_argument("--warmup", action="store_true")
    p.add_argument("--recorded", help="hold: the recorded target to log in to inside each "
                   "forward (by name; --target-port is its port)")
    p.add_argument("--command", default="cat",
                   help="hold --recorded: what the idle session runs on the target [cat]")
    p.add_argument("--mem-guard-mib", type=int, default=4096)
    p.add_argument("--pid-reserve", type=int, default=2000)
    # logins, forwards
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=4, help="forwards: connections the loops share")
    p.add_argument("--bytes", type=int, default=64, help="forwards: bytes each forward echoes")
    p.add_argument("--start-at", type=float, default=0.0, help="wall-clock time to start at")
    args = p.parse_args()
    asyncio.run({"hold": hold, "logins": logins, "forwards": forwards}[args.mode](args))


if __name__ == "__main__":
    main()
