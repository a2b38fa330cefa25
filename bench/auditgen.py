"""A chained, signed audit trail for bench/run's `audit` section: rows as a
node's writer stores them (docs/AUDIT.md "The hash chain", "Signed
checkpoints"), written straight into a SQLite database that portvakt's
migrations created, so that `portvakt audit verify` has a long chain to
check without a server having to log in a million times first.

    python3 auditgen.py DB NODE EVENTS [EVERY]    # also writes DB.pub

The events repeat one connection's life (connection.open, auth.success,
forward.open, forward.close, connection.close) with the details the server
writes; after every EVERY events (1000, the default `checkpoint_every`) an
`audit.checkpoint` row signs the row before it, with reason
`checkpoint_events`, as the writer does. Only `audit_events` is filled:
the `forwards` and `connections` tables stay empty, so verify's
cross-checks find nothing to compare.
"""

import base64
import hashlib
import json
import sqlite3
import struct
import sys
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ZERO = "0" * 64
COLUMNS = "at, kind, node, connection_id, user_name, source, reason, detail, seq, prev_hash, hash"


# The canonical encoding, as docs/AUDIT.md gives it.
def text(s):
    b = s.encode()
    return b"\x01" + struct.pack(">Q", len(b)) + b


def opt(s):
    return b"\x00" if s is None else text(s)


def row_hash(node, seq, at, kind, user, source, connection_id, reason, detail, prev_hash):
    m = (text("portvakt.audit.v1") + text(node) + struct.pack(">q", seq)
         + struct.pack(">q", at) + text(kind) + opt(user) + opt(source)
         + opt(connection_id) + opt(reason) + text(detail) + text(prev_hash))
    return hashlib.sha256(m).hexdigest()


def detail_json(d):
    """As serde_json writes the server's detail map: keys sorted, compact."""
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Signer:
    """A node's Ed25519 checkpoint key and the C2SP signed note it writes
    (src/audit/checkpoint.rs)."""

    def __init__(self, node):
        self.key = Ed25519PrivateKey.generate()
        pub = self.key.public_key()
        self.raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.openssh = pub.public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH).decode()
        self.origin = f"portvakt/{node}"
        self.name = "".join("_" if c.isspace() or c == "+" else c for c in self.origin)
        self.key_id = hashlib.sha256(self.name.encode() + b"\n\x01" + self.raw).digest()[:4]

    def detail(self, seq, hash_hex, at):
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at // 1_000_000))
        body = (f"{self.origin}\n{seq}\n{base64.b64encode(bytes.fromhex(hash_hex)).decode()}\n"
                f"time {when}\n")
        signature = base64.b64encode(self.key_id + self.key.sign(body.encode())).decode()
        note = f"{body}\n\u2014 {self.name} {signature}\n"
        return {"hash": hash_hex, "key": self.openssh, "note": note, "seq": seq,
                "signature": signature}


def connection_events(i, at):
    """One connection's events: (kind, user, source, connection_id, reason,
    detail), at microsecond offsets from `at`."""
    cid = f"{i:016x}"
    user = f"user{i % 200}"
    source = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:{40000 + i % 20000}"
    fwd = {"auth_method": "certificate", "host": "10.0.1.5", "port": 22, "target": "db-1",
           "forward_id": i + 1}
    return [
        (at, "connection.open", None, source, cid, None, {}),
        (at + 40_000, "auth.success", user, source, cid, None,
         {"detail": "certificate bench (serial 1)", "key_fingerprint":
          "SHA256:GMmLjlpVRO9EiEnbX4xA0KsB7rkaXoQdXUBQWNNV6QM", "login_seconds": 0.0391,
          "method": "certificate"}),
        (at + 41_000, "forward.open", user, source, cid, None, dict(fwd, address="10.0.1.5:22")),
        (at + 900_000, "forward.close", user, source, cid, "client_closed",
         dict(fwd, address="10.0.1.5:22", bytes_to_target=3021 + i % 977,
              bytes_from_target=41327 + i % 3011, duration_seconds=0.859)),
        (at + 901_000, "connection.close", user, source, cid, "client_closed",
         {"client_version": "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10",
          "duration_seconds": 0.901}),
    ]


def events(count, start):
    """`count` events from unix µs `start` on, one connection a second."""
    i = 0
    while True:
        for ev in connection_events(i, start + i * 1_000_000):
            if count == 0:
                return
            count -= 1
            yield ev
        i += 1


def rows(node, count, every, signer, start):
    """The rows of the chain, as tuples in COLUMNS order."""
    prev, seq, unsigned = ZERO, 0, 0
    for at, kind, user, source, cid, reason, d in events(count, start):
        seq += 1
        detail = detail_json(d)
        h = row_hash(node, seq, at, kind, user, source, cid, reason, detail, prev)
        yield (at, kind, node, cid, user, source, reason, detail, seq, prev, h)
        prev, unsigned = h, unsigned + 1
        if unsigned >= every:
            # The writer signs the tail after the batch, in the next row.
            seq, at = seq + 1, at + 1
            detail = detail_json(signer.detail(seq - 1, prev, at))
            h = row_hash(node, seq, at, "audit.checkpoint", None, None, None,
                         "checkpoint_events", detail, prev)
            yield (at, "audit.checkpoint", node, None, None, None, "checkpoint_events", detail,
                   seq, prev, h)
            prev, unsigned = h, 0


def fill(db, node, count, every=1000):
    """Append `count` events (and their checkpoints) to `node`'s chain in
    `db`, which must hold no chain of that node yet; writes the public key
    to DB.pub. Returns what it wrote."""
    signer = Signer(node)
    with open(db + ".pub", "w") as f:
        f.write(signer.openssh + "\n")
    t0 = time.monotonic()
    start = (int(time.time()) - count // 5 - 86400) * 1_000_000
    con = sqlite3.connect(db)
    con.execute("PRAGMA synchronous = OFF")
    with con:
        con.executemany(f"INSERT INTO audit_events ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        rows(node, count, every, signer, start))
    total, checkpoints = con.execute(
        "SELECT count(*), sum(kind = 'audit.checkpoint') FROM audit_events WHERE node = ?",
        (node,)).fetchone()
    con.close()
    return {"events": count, "rows": total, "checkpoints": checkpoints,
            "key": db + ".pub", "seconds": round(time.monotonic() - t0, 1)}


if __name__ == "__main__":
    a = sys.argv[1:]
    print(json.dumps(fill(a[0], a[1], int(a[2]), int(a[3]) if len(a) > 3 else 1000)))
