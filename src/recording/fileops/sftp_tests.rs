//! Hand-built SFTP v3 sessions; each is also fed in every chunking that
//! `check` makes, and must give the same operations.

use super::*;
use crate::recording::fileops::testing::{Side, plans};

const R: u32 = 0x01;
const W_CREAT_TRUNC: u32 = 0x02 | 0x08 | 0x10;
const DENIED: u32 = 3;
const FAILURE: u32 = 4;

/// A packet: type, then fields, length prefixed when done.
struct P(Vec<u8>);

impl P {
    fn new(kind: u8) -> P {
        P(vec![kind])
    }
    fn u32(mut self, v: u32) -> P {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> P {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn s(self, v: &[u8]) -> P {
        let mut p = self.u32(v.len() as u32);
        p.0.extend_from_slice(v);
        p
    }
    fn done(self) -> Vec<u8> {
        let mut out = (self.0.len() as u32).to_be_bytes().to_vec();
        out.extend(self.0);
        out
    }
}

fn c(b: Vec<u8>) -> (Side, Vec<u8>) {
    (Side::Client, b)
}
fn s(b: Vec<u8>) -> (Side, Vec<u8>) {
    (Side::Server, b)
}
fn init() -> (Side, Vec<u8>) {
    c(P::new(INIT).u32(3).done())
}
fn version() -> (Side, Vec<u8>) {
    s(P::new(VERSION)
        .u32(3)
        .s(b"posix-rename@openssh.com")
        .s(b"1")
        .done())
}
fn open(id: u32, path: &str, pflags: u32) -> (Side, Vec<u8>) {
    c(P::new(OPEN)
        .u32(id)
        .s(path.as_bytes())
        .u32(pflags)
        .u32(0)
        .done())
}
fn handle(id: u32, h: &[u8]) -> (Side, Vec<u8>) {
    s(P::new(HANDLE).u32(id).s(h).done())
}
fn status(id: u32, code: u32) -> (Side, Vec<u8>) {
    s(P::new(STATUS).u32(id).u32(code).s(b"msg").s(b"").done())
}
fn close(id: u32, h: &[u8]) -> (Side, Vec<u8>) {
    c(P::new(CLOSE).u32(id).s(h).done())
}
fn read(id: u32, h: &[u8]) -> (Side, Vec<u8>) {
    c(P::new(READ).u32(id).s(h).u64(0).u32(32768).done())
}
fn data(id: u32, n: usize) -> (Side, Vec<u8>) {
    s(P::new(DATA).u32(id).s(&vec![b'x'; n]).done())
}
fn write(id: u32, h: &[u8], n: usize) -> (Side, Vec<u8>) {
    c(P::new(WRITE).u32(id).s(h).u64(0).s(&vec![b'y'; n]).done())
}
fn path_req(kind: u8, id: u32, path: &str) -> (Side, Vec<u8>) {
    c(P::new(kind).u32(id).s(path.as_bytes()).u32(0).done())
}
fn two_paths(kind: u8, id: u32, a: &str, b: &str) -> (Side, Vec<u8>) {
    c(P::new(kind).u32(id).s(a.as_bytes()).s(b.as_bytes()).done())
}

fn op(op: &'static str, path: &str, bytes: u64, ok: Option<bool>) -> FileOp {
    FileOp {
        op,
        path: path.into(),
        to: None,
        bytes,
        ok,
    }
}

fn run(plan: &[(Side, Vec<u8>)]) -> Vec<FileOp> {
    let mut p = Sftp::new();
    let mut out = Vec::new();
    for (side, bytes) in plan {
        out.extend(match side {
            Side::Client => p.client(bytes),
            Side::Server => p.server(bytes),
        });
    }
    out.extend(p.finish());
    out
}

/// The operations of `events`, the same in every chunking.
fn check(events: &[(Side, Vec<u8>)]) -> Vec<FileOp> {
    let all = plans(events);
    let want = run(&all[0]);
    for (i, plan) in all.iter().enumerate().skip(1) {
        assert_eq!(run(plan), want, "plan {i}");
    }
    want
}

#[test]
fn download_counts_data_and_reports_at_close() {
    let h = b"h1".as_slice();
    let mut p = Sftp::new();
    for (side, b) in [
        init(),
        version(),
        open(1, "/etc/hosts", R),
        handle(1, h),
        read(2, h),
        read(3, h),
        data(2, 100),
        data(3, 28),
        read(4, h),
        status(4, FX_EOF),
        close(5, h),
    ] {
        let ops = match side {
            Side::Client => p.client(&b),
            Side::Server => p.server(&b),
        };
        assert_eq!(ops, []);
    }
    let done = vec![op("read", "/etc/hosts", 128, Some(true))];
    assert_eq!(p.server(&status(5, FX_OK).1), done);
    assert_eq!(p.finish(), []);
}

#[test]
fn every_file_operation() {
    let (h, f) = (b"h1".as_slice(), b"file-2".as_slice());
    let ops = check(&[
        init(),
        version(),
        open(1, "/tmp/up", W_CREAT_TRUNC),
        handle(1, h),
        write(2, h, 10),
        write(3, h, 5),
        status(3, FX_OK),
        status(2, FX_OK),
        c(P::new(FSETSTAT).u32(4).s(h).u32(0).done()),
        status(4, FX_OK),
        close(5, h),
        status(5, FX_OK),
        open(6, "/etc/shadow", R),
        status(6, DENIED),
        open(7, "/etc/motd", R),
        handle(7, f),
        close(8, f),
        status(8, FX_OK),
        path_req(REMOVE, 9, "/tmp/a"),
        status(9, FX_OK),
        path_req(MKDIR, 10, "/tmp/d"),
        status(10, FAILURE),
        path_req(RMDIR, 11, "/tmp/e"),
        status(11, FX_OK),
        path_req(SETSTAT, 12, "/tmp/f"),
        status(12, FX_OK),
        two_paths(RENAME, 13, "/tmp/old", "/tmp/new"),
        status(13, FX_OK),
        two_paths(SYMLINK, 14, "/etc/passwd", "/tmp/link"),
        status(14, DENIED),
    ]);
    let to = |mut o: FileOp, to: &str| {
        o.to = Some(to.into());
        o
    };
    assert_eq!(
        ops,
        [
            op("setstat", "/tmp/up", 0, Some(true)),
            op("write", "/tmp/up", 15, Some(true)),
            op("open", "/etc/shadow", 0, Some(false)),
            op("open", "/etc/motd", 0, Some(true)),
            op("remove", "/tmp/a", 0, Some(true)),
            op("mkdir", "/tmp/d", 0, Some(false)),
            op("rmdir", "/tmp/e", 0, Some(true)),
            op("setstat", "/tmp/f", 0, Some(true)),
            to(op("rename", "/tmp/old", 0, Some(true)), "/tmp/new"),
            to(op("symlink", "/etc/passwd", 0, Some(false)), "/tmp/link"),
        ]
    );
}

#[test]
fn openssh_extensions() {
    let ext = |id: u32, name: &[u8], paths: &[&str]| {
        let mut p = P::new(EXTENDED).u32(id).s(name);
        for path in paths {
            p = p.s(path.as_bytes());
        }
        c(p.done())
    };
    let ops = check(&[
        init(),
        version(),
        ext(1, b"posix-rename@openssh.com", &["/a", "/b"]),
        status(1, FX_OK),
        ext(2, b"lsetstat@openssh.com", &["/c"]),
        status(2, FX_OK),
        ext(3, b"statvfs@openssh.com", &["/"]),
        s(P::new(201).u32(3).u64(1).done()),
    ]);
    let mut rename = op("rename", "/a", 0, Some(true));
    rename.to = Some("/b".into());
    assert_eq!(ops, [rename, op("setstat", "/c", 0, Some(true))]);
}

#[test]
fn failures_of_reads_writes_and_closes() {
    let (a, b, d) = (b"a".as_slice(), b"b".as_slice(), b"d".as_slice());
    let ops = check(&[
        init(),
        version(),
        open(1, "/full", W_CREAT_TRUNC),
        handle(1, a),
        write(2, a, 7),
        status(2, FAILURE),
        close(3, a),
        status(3, FX_OK),
        open(4, "/bad", R),
        handle(4, b),
        read(5, b),
        data(5, 3),
        read(6, b),
        status(6, FAILURE),
        close(7, b),
        status(7, FX_OK),
        open(8, "/empty", W_CREAT_TRUNC),
        handle(8, d),
        close(9, d),
        status(9, FAILURE),
    ]);
    assert_eq!(
        ops,
        [
            op("write", "/full", 7, Some(false)),
            op("read", "/bad", 3, Some(false)),
            // Truncated: a write, although nothing was written.
            op("write", "/empty", 0, Some(false)),
        ]
    );
}

#[test]
fn directories_are_no_file_operations() {
    let d = b"dir".as_slice();
    let ops = check(&[
        init(),
        version(),
        path_req(17, 1, "/tmp"),
        s(P::new(105).u32(1).u32(0).done()),
        c(P::new(11).u32(2).s(b"/tmp").done()),
        handle(2, d),
        c(P::new(12).u32(3).s(d).done()),
        s(P::new(104).u32(3).u32(1).s(b"f").s(b"-rw f").u32(0).done()),
        c(P::new(12).u32(4).s(d).done()),
        status(4, FX_EOF),
        close(5, d),
        status(5, FX_OK),
        c(P::new(16).u32(6).s(b".").done()),
        s(P::new(104).u32(6).u32(1).s(b"/root").s(b"").u32(0).done()),
    ]);
    assert_eq!(ops, []);
}

#[test]
fn what_the_session_left_unanswered() {
    let (a, b) = (b"a".as_slice(), b"b".as_slice());
    let ops = check(&[
        init(),
        version(),
        open(1, "/open", R),
        handle(1, a),
        read(2, a),
        data(2, 9),
        open(3, "/closing", W_CREAT_TRUNC),
        handle(3, b),
        write(4, b, 4),
        close(5, b),
        path_req(REMOVE, 6, "/gone"),
        open(7, "/opening", R),
    ]);
    assert_eq!(
        ops,
        [
            op("read", "/open", 9, None),
            op("write", "/closing", 4, None),
            op("remove", "/gone", 0, None),
            op("open", "/opening", 0, None),
        ]
    );
}

#[test]
fn a_huge_write_and_read_are_counted_not_kept() {
    const N: u64 = 100 * 1024 * 1024;
    let mut p = Sftp::new();
    p.client(&init().1);
    p.server(&version().1);
    p.client(&open(1, "/big", W_CREAT_TRUNC).1);
    p.server(&handle(1, b"h").1);
    p.client(&open(2, "/big2", R).1);
    p.server(&handle(2, b"g").1);
    // A WRITE packet announcing N bytes, fed in 32 KiB chunks.
    let head = P::new(WRITE).u32(3).s(b"h").u64(0).u32(N as u32).0;
    let mut prefix = ((head.len() as u64 + N) as u32).to_be_bytes().to_vec();
    prefix.extend(head);
    p.client(&prefix);
    let chunk = vec![0u8; 32 * 1024];
    for _ in 0..N / chunk.len() as u64 {
        assert_eq!(p.client(&chunk), []);
        assert!(p.client.body.capacity() <= 1024);
    }
    // A DATA reply of N bytes for a READ.
    p.client(&read(4, b"g").1);
    let mut reply = ((9 + N) as u32).to_be_bytes().to_vec();
    reply.extend(P::new(DATA).u32(4).u32(N as u32).0);
    p.server(&reply);
    for _ in 0..N / chunk.len() as u64 {
        p.server(&chunk);
        assert!(p.server.body.capacity() <= 1024);
    }
    p.server(&status(3, FX_OK).1);
    p.client(&close(5, b"h").1);
    p.client(&close(6, b"g").1);
    let mut ops = p.server(&status(5, FX_OK).1);
    ops.extend(p.server(&status(6, FX_OK).1));
    assert_eq!(
        ops,
        [
            op("write", "/big", N, Some(true)),
            op("read", "/big2", N, Some(true)),
        ]
    );
}

#[test]
fn a_packet_too_long_to_keep_is_skipped() {
    let mut big = P::new(SETSTAT)
        .u32(2)
        .s(&vec![b'p'; 300 * 1024])
        .u32(0)
        .done();
    big.extend(path_req(REMOVE, 3, "/after").1);
    let ops = check(&[
        init(),
        version(),
        c(big),
        status(2, FX_OK),
        status(3, FX_OK),
    ]);
    assert_eq!(ops, [op("remove", "/after", 0, Some(true))]);
}

#[test]
fn paths_are_cut_and_decoded_lossily() {
    let long = "p".repeat(5000);
    let ops = check(&[
        init(),
        version(),
        path_req(REMOVE, 1, &long),
        c(P::new(REMOVE).u32(2).s(b"/bad\xff").done()),
        status(1, FX_OK),
        status(2, FX_OK),
    ]);
    assert_eq!(ops[0].path.len(), super::super::PATH_MAX);
    assert_eq!(ops[1].path, "/bad\u{FFFD}");
}

#[test]
fn tables_are_bounded() {
    let mut p = Sftp::new();
    p.client(&init().1);
    p.server(&version().1);
    let mut ops = Vec::new();
    for id in 0..3000u32 {
        ops.extend(p.client(&open(id, &format!("/f{id}"), R).1));
        ops.extend(p.server(&handle(id, &id.to_be_bytes()).1));
        assert!(p.handles.len() <= HANDLES_MAX);
    }
    // The oldest files were dropped, and reported as not known.
    assert_eq!(ops.len(), 3000 - HANDLES_MAX);
    assert_eq!(ops[0], op("open", "/f0", 0, None));
    for id in 0..5000u32 {
        ops.extend(p.client(&path_req(REMOVE, 10_000 + id, "/x").1));
        assert!(p.pending.len() <= PENDING_MAX);
    }
    assert_eq!(ops.len(), 3000 - HANDLES_MAX + 5000 - PENDING_MAX);
    assert_eq!(p.finish().len(), HANDLES_MAX + PENDING_MAX);
}

#[test]
fn a_request_id_used_again_ends_the_first() {
    let ops = check(&[
        init(),
        version(),
        path_req(REMOVE, 1, "/first"),
        path_req(MKDIR, 1, "/second"),
        status(1, FX_OK),
    ]);
    assert_eq!(
        ops,
        [
            op("remove", "/first", 0, None),
            op("mkdir", "/second", 0, Some(true))
        ]
    );
}

#[test]
fn garbage_stops_the_direction() {
    let after = [path_req(REMOVE, 9, "/after"), status(9, FX_OK)];
    let bad: [Vec<u8>; 6] = [
        b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
        b"ls -la\n".to_vec(),
        // Not INIT first.
        path_req(REMOVE, 1, "/x").1,
        // Empty packet.
        vec![0, 0, 0, 0],
        // Unknown type.
        P::new(99).u32(1).done(),
        // A handle longer than the draft allows.
        c(P::new(CLOSE).u32(1).s(&[0; 300]).done()).1,
    ];
    for (i, b) in bad.iter().enumerate() {
        let mut events = vec![];
        if i >= 3 {
            events.extend([init(), version()]);
        }
        events.push(c(b.clone()));
        events.extend(after.clone());
        assert_eq!(check(&events), [], "case {i}");
    }
    // A reply too short for its fields stops the server side only.
    let ops = check(&[
        init(),
        version(),
        path_req(REMOVE, 1, "/x"),
        s(P::new(STATUS).u32(1).done()),
        status(1, FX_OK),
    ]);
    assert_eq!(ops, [op("remove", "/x", 0, None)]);
}

#[test]
fn random_bytes_never_panic() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..2000 {
        let mut p = Sftp::new();
        if round % 2 == 0 {
            p.client(&init().1);
            p.server(&version().1);
        }
        for _ in 0..8 {
            let mut b = vec![0u8; (x % 64) as usize];
            for byte in &mut b {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Small lengths and known types are likelier than chance.
                *byte = if x.is_multiple_of(3) {
                    (x >> 8) as u8 % 21
                } else {
                    (x >> 16) as u8
                };
            }
            p.client(&b);
            p.server(&b);
        }
        p.finish();
    }
}
