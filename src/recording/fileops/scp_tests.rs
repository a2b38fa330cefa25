//! Hand-built scp streams; each is also fed in every chunking that
//! `check` makes, and must give the same operations.

use super::*;
use crate::recording::fileops::testing::{Side, plans};

fn c(b: &[u8]) -> (Side, Vec<u8>) {
    (Side::Client, b.to_vec())
}
fn s(b: &[u8]) -> (Side, Vec<u8>) {
    (Side::Server, b.to_vec())
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

fn run(command: &str, plan: &[(Side, Vec<u8>)]) -> Vec<FileOp> {
    let mut p = Scp::from_command(command).expect("an scp command");
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
fn check(command: &str, events: &[(Side, Vec<u8>)]) -> Vec<FileOp> {
    let all = plans(events);
    let want = run(command, &all[0]);
    for (i, plan) in all.iter().enumerate().skip(1) {
        assert_eq!(run(command, plan), want, "plan {i}");
    }
    want
}

#[test]
fn upload_into_a_directory() {
    let ops = check(
        "scp -p -t -- /tmp",
        &[
            s(b"\0"),
            c(b"T1700000000 0 1700000000 0\n"),
            s(b"\0"),
            c(b"C0644 5 a.txt\n"),
            s(b"\0"),
            c(b"hello"),
            c(b"\0"),
            s(b"\0"),
            c(b"C0600 0 empty\n"),
            s(b"\0"),
            c(b"\0"),
            s(b"\0"),
        ],
    );
    assert_eq!(
        ops,
        [
            op("write", "/tmp/a.txt", 5, Some(true)),
            op("write", "/tmp/empty", 0, Some(true)),
        ]
    );
}

#[test]
fn an_op_comes_out_with_the_sinks_last_answer() {
    let mut p = Scp::from_command("scp -t /tmp").unwrap();
    assert_eq!(p.server(b"\0"), []);
    assert_eq!(p.client(b"C0644 3 x\n"), []);
    assert_eq!(p.server(b"\0"), []);
    assert_eq!(p.client(b"abc\0"), []);
    assert_eq!(p.server(b"\0"), [op("write", "/tmp/x", 3, Some(true))]);
    assert_eq!(p.finish(), []);
}

#[test]
fn recursive_upload_joins_directories() {
    let ops = check(
        "scp -r -d -t /srv",
        &[
            s(b"\0"),
            c(b"D0755 0 site\n"),
            s(b"\0"),
            c(b"C0644 2 index.html\n"),
            s(b"\0"),
            c(b"hi\0"),
            s(b"\0"),
            c(b"D0755 0 img\n"),
            s(b"\0"),
            c(b"C0644 1 a.png\n"),
            s(b"\0"),
            c(b"x\0"),
            s(b"\0"),
            c(b"E\n"),
            s(b"\0"),
            // Refused: not entered.
            c(b"D0755 0 locked\n"),
            s(b"\x01scp: /srv/site/locked: Permission denied\n"),
            c(b"E\n"),
            s(b"\0"),
            c(b"C0644 1 top\n"),
            s(b"\0"),
            c(b"t\0"),
            s(b"\0"),
        ],
    );
    assert_eq!(
        ops,
        [
            op("write", "/srv/site/index.html", 2, Some(true)),
            op("write", "/srv/site/img/a.png", 1, Some(true)),
            op("write", "/srv/top", 1, Some(true)),
        ]
    );
}

#[test]
fn refusals_and_failures() {
    let ops = check(
        "scp -t /etc",
        &[
            s(b"\0"),
            // Refused before the content: none follows.
            c(b"C0644 5 passwd\n"),
            s(b"\x01scp: /etc/passwd: Permission denied\n"),
            // The sink fails to write (disk full) and says so at the end.
            c(b"C0644 3 a\n"),
            s(b"\0"),
            c(b"abc\0"),
            s(b"\x01scp: /etc/a: No space left on device\n"),
            // The source fails to read its file.
            c(b"C0644 3 b\n"),
            s(b"\0"),
            c(b"ab\0\x01scp: b: Input/output error\n"),
            s(b"\0"),
            // A source error line is not answered.
            c(b"\x01scp: c: No such file or directory\n"),
            c(b"C0644 1 d\n"),
            s(b"\0"),
            c(b"d\0"),
            s(b"\0"),
        ],
    );
    assert_eq!(
        ops,
        [
            op("write", "/etc/passwd", 0, Some(false)),
            op("write", "/etc/a", 3, Some(false)),
            op("write", "/etc/b", 3, Some(false)),
            op("write", "/etc/d", 1, Some(true)),
        ]
    );
}

#[test]
fn download_names_the_source_path() {
    let file = |name: &[u8], data: &[u8]| {
        let mut b = format!("C0644 {} ", data.len()).into_bytes();
        b.extend_from_slice(name);
        b.push(b'\n');
        b
    };
    let stream = |names: &[&[u8]]| {
        let mut ev = vec![c(b"\0")];
        for n in names {
            ev.extend([s(&file(n, b"data")), c(b"\0"), s(b"data\0"), c(b"\0")]);
        }
        ev
    };
    let ops = check("scp -v -f /etc/hosts", &stream(&[b"hosts"]));
    assert_eq!(ops, [op("read", "/etc/hosts", 4, Some(true))]);
    let ops = check("scp -f /a/x /b/y", &stream(&[b"y", b"x", b"z"]));
    let want = [
        op("read", "/b/y", 4, Some(true)),
        op("read", "/a/x", 4, Some(true)),
        op("read", "z", 4, Some(true)),
    ];
    assert_eq!(ops, want);
    // A pattern, expanded by the remote shell.
    let ops = check("scp -f /var/log/*.log", &stream(&[b"syslog.log"]));
    assert_eq!(ops, [op("read", "/var/log/syslog.log", 4, Some(true))]);
    // The source cannot read one; the sink refuses another.
    let ops = check(
        "scp -r -f /home/me/docs",
        &[
            c(b"\0"),
            s(b"\x01scp: /home/me/docs/secret: Permission denied\n"),
            s(b"D0700 0 docs\n"),
            c(b"\0"),
            s(&file(b"a", b"1")),
            c(b"\x01scp: a: Permission denied\n"),
            s(&file(b"b", b"22")),
            c(b"\0"),
            s(b"22\0"),
            c(b"\0"),
            s(b"E\n"),
            c(b"\0"),
        ],
    );
    let want = [
        op("read", "/home/me/docs/a", 0, Some(false)),
        op("read", "/home/me/docs/b", 2, Some(true)),
    ];
    assert_eq!(ops, want);
}

#[test]
fn the_target_names_a_file_or_a_directory() {
    let one = |cmd: &str, name: &str| {
        let mut line = format!("C0644 1 {name}\n").into_bytes();
        line.extend(b"x\0");
        let ops = check(cmd, &[s(b"\0"), c(&line), s(b"\0")]);
        ops[0].path.clone()
    };
    assert_eq!(one("scp -t /tmp/a.txt", "a.txt"), "/tmp/a.txt");
    assert_eq!(one("scp -t /tmp/new", "a.txt"), "/tmp/new/a.txt");
    assert_eq!(one("scp -d -t /tmp/a.txt", "a.txt"), "/tmp/a.txt/a.txt");
    assert_eq!(one("scp -t a.txt/", "a.txt"), "a.txt/a.txt");
    assert_eq!(one("scp -t .", "."), "./.");
    assert_eq!(one("scp -t '/tmp/my dir'", "f"), "/tmp/my dir/f");
}

#[test]
fn the_session_ends_midway() {
    let ops = check(
        "scp -t /tmp",
        &[s(b"\0"), c(b"C0644 10 half\n"), s(b"\0"), c(b"12345")],
    );
    assert_eq!(ops, [op("write", "/tmp/half", 5, None)]);
    let ops = check("scp -t /tmp", &[s(b"\0"), c(b"C0644 10 unanswered\n")]);
    assert_eq!(ops, [op("write", "/tmp/unanswered", 0, None)]);
}

#[test]
fn a_huge_file_is_counted_not_kept() {
    const N: u64 = 100 * 1024 * 1024;
    let mut p = Scp::from_command("scp -t /tmp").unwrap();
    p.server(b"\0");
    p.client(format!("C0644 {N} big\n").as_bytes());
    p.server(b"\0");
    let chunk = vec![b'\n'; 32 * 1024];
    for _ in 0..N / chunk.len() as u64 {
        assert_eq!(p.client(&chunk), []);
        assert!(p.line.capacity() <= 1024);
    }
    p.client(b"\0");
    assert_eq!(p.server(b"\0"), [op("write", "/tmp/big", N, Some(true))]);
}

#[test]
fn commands() {
    let parsed = |cmd: &str| Scp::from_command(cmd).map(|s| (s.upload, s.args, s.target_dir));
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(parsed("scp -t -- /tmp"), Some((true, v(&["/tmp"]), false)));
    assert_eq!(
        parsed("scp -v -f /etc/hosts"),
        Some((false, v(&["/etc/hosts"]), false))
    );
    assert_eq!(
        parsed("/usr/bin/scp -pt /tmp/"),
        Some((true, v(&["/tmp/"]), true))
    );
    assert_eq!(parsed("scp -r -d -t x"), Some((true, v(&["x"]), true)));
    assert_eq!(parsed("scp -l 100 -t x"), Some((true, v(&["x"]), false)));
    assert_eq!(parsed("scp -l100 -t x"), Some((true, v(&["x"]), false)));
    assert_eq!(
        parsed("scp -t -- -dash"),
        Some((true, v(&["-dash"]), false))
    );
    assert_eq!(
        parsed(r#"scp -f "a b" c\ d 'e"f'"#),
        Some((false, v(&["a b", "c d", "e\"f"]), false))
    );
    for not in [
        "scp -t /a /b",
        "scp -t -f x",
        "scp -t",
        "scp -f",
        "scp /a /b",
        "scp",
        "",
        "ls -la",
        "sftp-server",
        "scp -t /tmp; rm -rf /",
        "scp -t /tmp | tee x",
        "scp -f `id`",
        "scp -t 'unclosed",
        "scp -t -l",
    ] {
        assert!(Scp::from_command(not).is_none(), "{not}");
    }
}

#[test]
fn garbage_stops_the_direction() {
    let after = [c(b"C0644 1 f\n"), s(b"\0"), c(b"x\0"), s(b"\0")];
    for bad in [
        c(b"hello\n"),
        c(b"C0644 abc f\n"),
        c(b"C06x4 1 f\n"),
        c(b"C0644 99999999999999999999999 f\n"),
        c(b"C\n"),
        c(&[b'T'; LINE_MAX + 2]),
    ] {
        let mut events = vec![s(b"\0"), bad.clone()];
        events.extend(after.clone());
        assert_eq!(check("scp -t /tmp", &events), [], "{bad:?}");
    }
    // The sink's garbage: its answers are no longer read.
    let ops = check(
        "scp -t /tmp",
        &[
            s(b"\0"),
            c(b"C0644 1 f\n"),
            s(b"what\0"),
            c(b"x\0"),
            s(b"\0"),
        ],
    );
    assert_eq!(ops, [op("write", "/tmp/f", 1, None)]);
    // Too deep.
    let mut p = Scp::from_command("scp -r -t /").unwrap();
    for _ in 0..DEPTH_MAX + 10 {
        p.client(b"D0755 0 d\n");
        p.server(b"\0");
    }
    assert!(p.depth.len() <= DEPTH_MAX && p.dir.len() <= PATH_MAX);
    assert_eq!(p.source, Source::Dead);
}

#[test]
fn random_bytes_never_panic() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..2000 {
        let cmd = if round % 2 == 0 {
            "scp -r -t /t"
        } else {
            "scp -r -f /f"
        };
        let mut p = Scp::from_command(cmd).unwrap();
        for _ in 0..8 {
            let mut b = vec![0u8; (x % 64) as usize];
            for byte in &mut b {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Protocol bytes are likelier than chance.
                *byte = match x % 4 {
                    0 => b"CDET0 \n\x00\x01"[(x >> 8) as usize % 9],
                    _ => (x >> 16) as u8,
                };
            }
            p.client(&b);
            p.server(&b);
        }
        p.finish();
    }
}
