use super::*;

const HEADER: &[u8] = b"{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":1}\n";

/// The magic and a header line: stored content with no frames yet.
fn framed() -> Vec<u8> {
    [MAGIC, HEADER].concat()
}

/// Why `stored` cannot be read.
fn problem(stored: &[u8]) -> &'static str {
    to_asciicast(stored).unwrap_err().problem
}

fn at(us: u64) -> Duration {
    Duration::from_micros(us)
}

/// A small deterministic generator (xorshift64*), so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Terminal-like bytes: text, line ends, tabs, quotes, escapes, multi-byte
/// characters (cut anywhere by the pieces), and bytes that are not UTF-8.
fn terminal_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    const PIECES: &[&[u8]] = &[
        b"fn main() {",
        b"\r\n",
        b"\t",
        b"\"q\"",
        b"\\",
        b"\x1b[1;32m",
        "åäö→€𝄞".as_bytes(),
        b"\xff\xfe",
        b"\xe2\x82",
        b"\r",
        b"\n",
        b"\x00\x07",
        b"plain words here ",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(PIECES[rng.below(PIECES.len() as u64) as usize]);
    }
    out
}

#[test]
fn frames_read_back_as_the_lines_the_encoder_writes_directly() {
    for seed in 1..=200_u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut stored = framed();
        let mut direct = HEADER.to_vec();
        let mut enc = Encoder::new();
        let mut t = 0;
        for _ in 0..rng.below(12) {
            t += rng.below(3_000_000);
            match rng.below(4) {
                0 | 1 => {
                    let len = rng.below(40) as usize;
                    let data = terminal_bytes(&mut rng, len);
                    write(&mut stored, at(t), Frame::Output, &data);
                    enc.write_output(at(t), &data, &mut direct);
                }
                2 => {
                    let len = rng.below(8) as usize;
                    let data = terminal_bytes(&mut rng, len);
                    write(&mut stored, at(t), Frame::Input, &data);
                    enc.write_input(at(t), &data, &mut direct);
                }
                _ => {
                    let (w, h) = (rng.below(300) as u32, rng.below(100) as u32);
                    write_resize(&mut stored, at(t), w, h);
                    direct.extend_from_slice(enc.resize(at(t), w, h).as_bytes());
                }
            }
        }
        if rng.below(2) == 0 {
            write(&mut stored, at(t + 1), Frame::End, &[]);
            for line in enc.finish(at(t + 1)) {
                direct.extend_from_slice(line.as_bytes());
            }
        }
        let cast = to_asciicast(&stored).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&cast),
            String::from_utf8_lossy(&direct),
            "seed {seed}"
        );
        // And it is asciicast v2.
        let (_, events) = super::super::cast::parse(std::str::from_utf8(&cast).unwrap())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(
            events
                .iter()
                .all(|e| ["o", "i", "r"].contains(&e.code.as_str()))
        );
    }
}

#[test]
fn the_stored_frames_keep_the_terminals_bytes_exactly() {
    let data = b"ok \xff\xfe not UTF-8, a cut \xe2\x82";
    let mut stored = framed();
    write(&mut stored, at(1_500_000), Frame::Output, data);
    let frame = &stored[MAGIC.len() + HEADER.len()..];
    assert_eq!(frame[0], b'o');
    assert_eq!(frame[1..9], 1_500_000_u64.to_le_bytes());
    assert_eq!(frame[9..13], (data.len() as u32).to_le_bytes());
    assert_eq!(&frame[13..], data);
    // Read back: the invalid bytes as U+FFFD, the cut character waits.
    let cast = to_asciicast(&stored).unwrap();
    let text = std::str::from_utf8(&cast).unwrap();
    assert!(
        text.ends_with("[1.500000, \"o\", \"ok \u{FFFD}\u{FFFD} not UTF-8, a cut \"]\n"),
        "{text}"
    );
}

#[test]
fn a_character_cut_at_the_end_is_written_at_the_end_frame() {
    let mut stored = framed();
    write(&mut stored, at(1), Frame::Output, b"a\xe2\x82");
    write(&mut stored, at(2), Frame::Output, b"\xacb");
    write(&mut stored, at(3), Frame::Output, b"\xe2");
    write(&mut stored, at(9), Frame::End, &[]);
    let cast = to_asciicast(&stored).unwrap();
    let text = std::str::from_utf8(&cast).unwrap();
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(
        lines,
        [
            "[0.000001, \"o\", \"a\"]",
            "[0.000002, \"o\", \"€b\"]",
            "[0.000009, \"o\", \"\u{FFFD}\"]",
        ]
    );
}

#[test]
fn content_without_the_magic_is_read_as_it_is() {
    let legacy = b"{\"version\":2,\"width\":80,\"height\":24}\n[0.5, \"o\", \"hi\"]\n";
    assert!(matches!(to_asciicast(legacy), Ok(Cow::Borrowed(b)) if b == legacy));
    assert!(matches!(to_asciicast(b""), Ok(Cow::Borrowed(b"")))); // empty: nothing to read
}

#[test]
fn damaged_frames_are_an_error_never_a_panic() {
    let mut stored = framed();
    let frames_at = stored.len();
    write(&mut stored, at(5), Frame::Output, b"hello\r\n");
    write_resize(&mut stored, at(6), 100, 30);
    write(&mut stored, at(7), Frame::End, &[]);
    assert!(to_asciicast(&stored).is_ok());
    // Cut anywhere inside the frames (or the header): an error.
    for cut in MAGIC.len()..stored.len() {
        if cut == frames_at || cut == frames_at + FRAME_HEAD + 7 || cut == stored.len() - FRAME_HEAD
        {
            // Between frames: a shorter, valid recording.
            assert!(to_asciicast(&stored[..cut]).is_ok(), "cut at {cut}");
            continue;
        }
        let e = to_asciicast(&stored[..cut]).unwrap_err();
        assert!(e.offset <= cut, "cut at {cut}: {e}");
    }
    // Every byte changed in turn: read or refused, never a panic.
    for i in MAGIC.len()..stored.len() {
        for b in [0x00, b'o', b'e', b'r', 0xff] {
            let mut bad = stored.clone();
            bad[i] = b;
            let _ = to_asciicast(&bad);
        }
    }
    let unknown = {
        let mut s = stored.clone();
        s[frames_at] = b'x';
        s
    };
    assert_eq!(
        to_asciicast(&unknown).unwrap_err(),
        FrameError {
            offset: frames_at,
            problem: "unknown frame"
        }
    );
    // A length past the end is cut short, not an allocation.
    let mut huge = framed();
    huge.push(b'o');
    huge.extend_from_slice(&0_u64.to_le_bytes());
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(problem(&huge), "a frame is cut short");
    let mut resize = framed();
    write(&mut resize, at(1), Frame::Resize, b"80x24");
    assert_eq!(problem(&resize), "a resize frame is not 8 bytes");
    let mut end = framed();
    write(&mut end, at(1), Frame::End, b"x");
    assert_eq!(problem(&end), "an end frame has bytes");
    let headless = [MAGIC, b"{\"version\":2"].concat();
    assert_eq!(problem(&headless), "the header line has no end");
}
