//! The asciicast v2 format (<https://docs.asciinema.org/manual/asciicast/v2/>):
//! a JSON header line, then one JSON array per event,
//! `[seconds, "o" | "i" | "r", "text"]`. Pure: bytes in, lines out.
//!
//! The terminal's bytes arrive in arbitrary pieces while the format wants
//! text, so each direction keeps its own incremental UTF-8 decoder: a
//! sequence cut at the end of a piece waits for the next piece, and bytes
//! that are not UTF-8 become U+FFFD.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The size a terminal is written with when the client asked for none
/// (exec without a pty): players refuse a zero size.
const DEFAULT_SIZE: (u32, u32) = (80, 24);

/// What the header line says about the recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    /// Start of the recording, unix seconds.
    pub timestamp: i64,
    /// `env.TERM`.
    pub term: Option<String>,
    pub title: Option<String>,
    /// The command of an exec.
    pub command: Option<String>,
}

#[derive(Serialize)]
struct HeaderJson<'a> {
    version: u8,
    width: u32,
    height: u32,
    timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    env: Option<Env<'a>>,
}

#[derive(Serialize)]
struct Env<'a> {
    #[serde(rename = "TERM")]
    term: &'a str,
}

impl Header {
    /// The header line, newline included.
    pub fn line(&self) -> String {
        let (width, height) = size(self.width, self.height);
        let json = HeaderJson {
            version: 2,
            width,
            height,
            timestamp: self.timestamp,
            command: self.command.as_deref(),
            title: self.title.as_deref(),
            env: self.term.as_deref().map(|term| Env { term }),
        };
        // A struct of numbers and strings always serialises.
        let mut line = serde_json::to_string(&json).unwrap_or_default();
        line.push('\n');
        line
    }
}

fn size(width: u32, height: u32) -> (u32, u32) {
    if width == 0 || height == 0 {
        DEFAULT_SIZE
    } else {
        (width, height)
    }
}

/// The event codes of asciicast v2 that portvakt writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Output to the terminal.
    Output,
    /// Keystrokes.
    Input,
    /// The terminal was resized; the text is `WxH`.
    Resize,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Output => "o",
            Code::Input => "i",
            Code::Resize => "r",
        }
    }
}

/// Turns one channel's bytes into event lines.
#[derive(Debug, Default)]
pub struct Encoder {
    output: Utf8Decoder,
    input: Utf8Decoder,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// Appends an "o" event at `at` (since the start) to `out`; false (and
    /// nothing appended) while `data` holds only the beginning of a
    /// character. Written in place, byte runs at a time: this is the
    /// recorded relay's hot path.
    pub fn write_output(&mut self, at: Duration, data: &[u8], out: &mut Vec<u8>) -> bool {
        write_decoded(&mut self.output, at, Code::Output, data, out)
    }

    /// Appends an "i" event, as `write_output`.
    pub fn write_input(&mut self, at: Duration, data: &[u8], out: &mut Vec<u8>) -> bool {
        write_decoded(&mut self.input, at, Code::Input, data, out)
    }

    /// An "o" event as a line of its own (`write_output`).
    pub fn output(&mut self, at: Duration, data: &[u8]) -> Option<String> {
        let mut out = Vec::new();
        self.write_output(at, data, &mut out)
            .then(|| String::from_utf8_lossy(&out).into_owned())
    }

    /// An "i" event as a line of its own.
    pub fn input(&mut self, at: Duration, data: &[u8]) -> Option<String> {
        let mut out = Vec::new();
        self.write_input(at, data, &mut out)
            .then(|| String::from_utf8_lossy(&out).into_owned())
    }

    pub fn resize(&mut self, at: Duration, width: u32, height: u32) -> String {
        event(at, Code::Resize, &format!("{width}x{height}"))
    }

    /// The end of the stream: a character still cut short is written as
    /// U+FFFD (one event per direction that had one).
    pub fn finish(&mut self, at: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        if self.output.finish() {
            lines.push(event(at, Code::Output, "\u{FFFD}"));
        }
        if self.input.finish() {
            lines.push(event(at, Code::Input, "\u{FFFD}"));
        }
        lines
    }
}

/// One event line, newline included. The time has microsecond precision.
pub fn event(at: Duration, code: Code, text: &str) -> String {
    let mut out = Vec::with_capacity(text.len() + 32);
    open_event(at, code, &mut out);
    escape_into(text.as_bytes(), &mut out);
    out.extend_from_slice(b"\"]\n");
    // Only ASCII and the bytes of `text` (valid UTF-8) were written.
    String::from_utf8(out).unwrap_or_default()
}

/// `[secs.micros, "code", "` of an event line.
fn open_event(at: Duration, code: Code, out: &mut Vec<u8>) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "[{}.{:06}, \"{}\", \"",
        at.as_secs(),
        at.subsec_micros(),
        code.as_str()
    );
}

/// The event of `data` decoded by `dec`, appended to `out` (false: nothing
/// to write yet).
fn write_decoded(
    dec: &mut Utf8Decoder,
    at: Duration,
    code: Code,
    data: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    let start = out.len();
    open_event(at, code, out);
    let body = out.len();
    dec.decode_into(data, out);
    if out.len() == body {
        out.truncate(start);
        return false;
    }
    out.extend_from_slice(b"\"]\n");
    true
}

/// Appends `text` (valid UTF-8) as the inside of a JSON string: `"`, `\\`
/// and control characters escaped as serde_json does, runs of other bytes
/// copied whole. Eight bytes are looked at a time, and only the bytes that
/// need an escape are visited (terminal output is mostly long runs that
/// need none, text a newline every few dozen bytes): this is the recorded
/// relay's hot path. A terminal ends its lines with `\r\n`, which is
/// written as one escape of four bytes (source text through a pty: an
/// escape every 14 bytes, two in five of them such a pair; it saves a
/// tenth of this function's time on it, docs/BENCHMARKS.md).
fn escape_into(text: &[u8], out: &mut Vec<u8>) {
    out.reserve(text.len() + 16);
    // Start of the bytes not yet copied.
    let mut run = 0;
    let mut words = text.chunks_exact(8);
    let mut base = 0;
    let mut visit = |base: usize, mut mask: u64, out: &mut Vec<u8>| {
        while mask != 0 {
            let j = base + (mask.trailing_zeros() / 8) as usize;
            mask &= mask - 1;
            if j < run {
                // The `\n` of a pair written with its `\r`.
                continue;
            }
            out.extend_from_slice(&text[run..j]);
            if text[j] == b'\r' && text.get(j + 1) == Some(&b'\n') {
                out.extend_from_slice(b"\\r\\n");
                run = j + 2;
            } else {
                push_escape(text[j], out);
                run = j + 1;
            }
        }
    };
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let mask = escape_mask(u64::from_le_bytes(w));
        if mask != 0 {
            visit(base, mask, out);
        }
        base += 8;
    }
    // The last bytes, padded with a byte that needs no escape.
    let rest = words.remainder();
    let mut w = [b' '; 8];
    w[..rest.len()].copy_from_slice(rest);
    visit(base, escape_mask(u64::from_le_bytes(w)), out);
    out.extend_from_slice(&text[run..]);
}

/// The JSON escape of `b` (below 0x20, `"` or `\\`), as serde_json writes it.
fn push_escape(b: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]),
    }
}

/// The bytes of `w` that need an escape (below 0x20, `"` or `\\`): the
/// high bit of each such byte set, every other bit clear. Exact (no carry
/// crosses from one byte into the next), so a set bit is always an escape.
fn escape_mask(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    // High bit of each byte of `v` that is zero.
    let zero = |v: u64| !((v & LOW7).wrapping_add(LOW7) | v | LOW7);
    zero(w & (ONES * 0xe0))
        | zero(w ^ (ONES * u64::from(b'"')))
        | zero(w ^ (ONES * u64::from(b'\\')))
}

/// One event read back from a recording.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Event {
    /// Seconds since the start.
    pub time: f64,
    /// "o", "i", "r", or a code of a newer writer.
    pub code: String,
    pub data: String,
}

/// The header and the events of a recording; lines that are not events
/// (blank ones) are skipped, a line that is not JSON is an error.
pub fn parse(content: &str) -> Result<(serde_json::Value, Vec<Event>), ParseError> {
    let mut lines = content.lines().enumerate();
    let (_, first) = lines.next().ok_or(ParseError { line: 1 })?;
    let header: serde_json::Value =
        serde_json::from_str(first).map_err(|_| ParseError { line: 1 })?;
    if header.get("version").and_then(|v| v.as_u64()) != Some(2) {
        return Err(ParseError { line: 1 });
    }
    let mut events = Vec::new();
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let (time, code, data): (f64, String, String) =
            serde_json::from_str(line).map_err(|_| ParseError { line: n + 1 })?;
        events.push(Event { time, code, data });
    }
    Ok((header, events))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} is not asciicast v2")]
pub struct ParseError {
    pub line: usize,
}

/// UTF-8 decoding across pieces.
#[derive(Debug, Default)]
struct Utf8Decoder {
    /// The start of a character cut at the end of the last piece (at most
    /// three bytes).
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// Appends what `data` (after what was pending) decodes to, escaped
    /// for a JSON string; bytes that are not UTF-8 become U+FFFD, a
    /// character cut at the end waits for the next piece.
    fn decode_into(&mut self, data: &[u8], out: &mut Vec<u8>) {
        // A character cut at the end of the last piece: decode it together
        // with this piece (a copy, only then).
        let joined;
        let mut data = if self.pending.is_empty() {
            data
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(data);
            joined = buf;
            &joined[..]
        };
        loop {
            match std::str::from_utf8(data) {
                Ok(_) => {
                    escape_into(data, out);
                    return;
                }
                Err(e) => {
                    let (valid, rest) = data.split_at(e.valid_up_to());
                    escape_into(valid, out);
                    match e.error_len() {
                        Some(bad) => {
                            out.extend_from_slice("\u{FFFD}".as_bytes());
                            data = &rest[bad..];
                        }
                        None => {
                            self.pending.extend_from_slice(rest);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Was a character left unfinished? (It is dropped.)
    fn finish(&mut self) -> bool {
        let cut = !self.pending.is_empty();
        self.pending.clear();
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(us: u64) -> Duration {
        Duration::from_micros(us)
    }

    fn data_of(line: &str) -> (f64, String, String) {
        assert!(line.ends_with('\n'));
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn header_has_version_size_time_term_and_title() {
        let h = Header {
            width: 120,
            height: 40,
            timestamp: 1_764_410_000,
            term: Some("xterm-256color".into()),
            title: Some("alice as root@db-1".into()),
            command: None,
        };
        let line = h.line();
        assert!(line.starts_with("{\"version\":2,\"width\":120,\"height\":40,"));
        assert!(line.ends_with("}\n") && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["timestamp"], 1_764_410_000);
        assert_eq!(v["env"]["TERM"], "xterm-256color");
        assert_eq!(v["title"], "alice as root@db-1");
        assert!(v.get("command").is_none());
    }

    #[test]
    fn header_without_a_terminal_gets_a_default_size_and_no_env() {
        let h = Header {
            width: 0,
            height: 0,
            timestamp: 1,
            term: None,
            title: None,
            command: Some("uptime".into()),
        };
        let v: serde_json::Value = serde_json::from_str(&h.line()).unwrap();
        assert_eq!(
            (v["width"].as_u64(), v["height"].as_u64()),
            (Some(80), Some(24))
        );
        assert!(v.get("env").is_none() && v.get("title").is_none());
        assert_eq!(v["command"], "uptime");
    }

    #[test]
    fn output_event_has_time_in_seconds_with_six_decimals() {
        let mut e = Encoder::new();
        let line = e.output(at(1_500_000), b"hi\r\n").unwrap();
        assert_eq!(line, "[1.500000, \"o\", \"hi\\r\\n\"]\n");
        let line = e.output(at(62_000_007), b"x").unwrap();
        assert!(line.starts_with("[62.000007, "), "{line}");
    }

    #[test]
    fn control_characters_quotes_and_backslashes_are_escaped() {
        let mut e = Encoder::new();
        let line = e.output(at(0), b"\x1b[31m\"a\\b\"\x07\t\x00").unwrap();
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(data_of(&line).2, "\x1b[31m\"a\\b\"\x07\t\x00");
        assert!(line.contains("\\u001b[31m"), "{line}");
    }

    #[test]
    fn a_character_split_across_pieces_waits_for_its_end() {
        let mut e = Encoder::new();
        let euro = "€".as_bytes(); // three bytes
        let first = e.output(at(1), &[b'a', euro[0]]).unwrap();
        assert_eq!(data_of(&first).2, "a");
        assert_eq!(e.output(at(2), &euro[1..2]), None);
        let last = e.output(at(3), &[euro[2], b'b']).unwrap();
        assert_eq!(data_of(&last).2, "€b");
        // A four-byte character one byte at a time.
        let crab = "🦀".as_bytes();
        for b in &crab[..3] {
            assert_eq!(e.output(at(4), &[*b]), None);
        }
        assert_eq!(data_of(&e.output(at(5), &crab[3..]).unwrap()).2, "🦀");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut e = Encoder::new();
        let line = e.output(at(0), b"a\xffb\xc3(").unwrap();
        assert_eq!(data_of(&line).2, "a\u{FFFD}b\u{FFFD}(");
        // A cut sequence that the next piece does not complete.
        assert_eq!(data_of(&e.output(at(1), b"x\xe2\x82").unwrap()).2, "x");
        assert_eq!(data_of(&e.output(at(2), b"y").unwrap()).2, "\u{FFFD}y");
    }

    #[test]
    fn a_character_cut_at_the_end_is_finished_as_a_replacement() {
        let mut e = Encoder::new();
        assert_eq!(data_of(&e.output(at(0), b"ok\xe2").unwrap()).2, "ok");
        let lines = e.finish(at(9));
        assert_eq!(lines, vec!["[0.000009, \"o\", \"\u{FFFD}\"]\n".to_string()]);
        assert!(e.finish(at(10)).is_empty());
    }

    /// Any bytes cut anywhere decode as the whole stream would
    /// (`from_utf8_lossy`), and every line is the JSON serde_json writes.
    #[test]
    fn pieces_decode_like_the_whole_stream() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet: Vec<&[u8]> = vec![
            b"a",
            b"\r\n",
            b"\x1b[0m",
            b"\"",
            b"\\",
            b"\x00",
            b"\x7f",
            b"\xff",
            b"\xc3",
            "é".as_bytes(),
            "€".as_bytes(),
            "🦀".as_bytes(),
            &"🦀".as_bytes()[..2],
            b"\t\x08\x0c",
        ];
        for _ in 0..300 {
            let mut stream = Vec::new();
            for _ in 0..(next() % 120) {
                stream.extend_from_slice(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            let mut e = Encoder::new();
            let mut text = String::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let n = 1 + (next() as usize % rest.len().min(48));
                if let Some(line) = e.output(at(1), &rest[..n]) {
                    let (_, code, data) = data_of(&line);
                    assert_eq!(code, "o");
                    assert_eq!(
                        serde_json::to_string(&data).unwrap(),
                        line[line.find(", \"o\", ").unwrap() + 7..line.len() - 2]
                    );
                    text.push_str(&data);
                }
                rest = &rest[n..];
            }
            for line in e.finish(at(2)) {
                text.push_str(&data_of(&line).2);
            }
            assert_eq!(text, String::from_utf8_lossy(&stream), "{stream:?}");
        }
    }

    /// `escape_into(text)` is what serde_json writes inside the quotes.
    fn assert_escapes_like_serde_json(text: &[u8], what: &dyn std::fmt::Display) {
        let mut out = Vec::new();
        escape_into(text, &mut out);
        let want = serde_json::to_string(std::str::from_utf8(text).unwrap()).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            &want[1..want.len() - 1],
            "{what}"
        );
    }

    /// Every ASCII byte, at every position of a word, escaped exactly as
    /// serde_json does.
    #[test]
    fn escaping_matches_serde_json_at_every_position() {
        for b in 0u8..0x80 {
            for pos in 0..24 {
                let mut text = vec![b'x'; 24];
                text[pos] = b;
                assert_escapes_like_serde_json(&text, &format_args!("byte {b:#04x} at {pos}"));
            }
        }
    }

    /// A line end (`\r\n`, written as one escape) at every position, within
    /// a word, across two, at the end; and the neighbours that are not
    /// one (`\r` alone, `\n\r`, `\r\r\n`).
    #[test]
    fn line_ends_match_serde_json_at_every_position() {
        for end in [
            &b"\r\n"[..],
            b"\r",
            b"\n\r",
            b"\r\r\n",
            b"\r\n\r\n",
            b"\"\r\n\\",
        ] {
            for len in 0..26 {
                for pos in 0..=len {
                    let mut text = vec![b'x'; len];
                    text.splice(pos..pos, end.iter().copied());
                    assert_escapes_like_serde_json(
                        &text,
                        &format_args!("{end:?} at {pos} of {len}"),
                    );
                }
            }
        }
    }

    #[test]
    fn escaping_matches_serde_json_for_mixed_text_of_any_length() {
        // Escapes side by side, in one word and across words, between
        // characters of two to four bytes whose bytes are all above 0x7f.
        let pieces = [
            "a", "\"", "\\", "\n", "\u{1}", "\u{1f}", "é", "€", "𝄞", "\u{7f}", " ", "\r\n",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..64 {
            for _ in 0..50 {
                let mut text = String::new();
                for _ in 0..len {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    text.push_str(pieces[(seed % pieces.len() as u64) as usize]);
                }
                assert_escapes_like_serde_json(text.as_bytes(), &format_args!("{text:?}"));
            }
        }
    }

    #[test]
    fn input_and_output_decode_separately() {
        let mut e = Encoder::new();
        assert!(e.output(at(0), &[0xc3]).is_none());
        let i = e.input(at(1), b"ls\r").unwrap();
        assert_eq!(data_of(&i), (0.000001, "i".into(), "ls\r".into()));
        assert_eq!(data_of(&e.output(at(2), &[0xa9]).unwrap()).2, "é");
    }

    #[test]
    fn resize_is_width_x_height() {
        let mut e = Encoder::new();
        assert_eq!(
            e.resize(at(250_000), 100, 30),
            "[0.250000, \"r\", \"100x30\"]\n"
        );
    }

    #[test]
    fn what_is_written_parses_back() {
        let mut e = Encoder::new();
        let mut content = Header {
            width: 80,
            height: 24,
            timestamp: 5,
            term: None,
            title: None,
            command: None,
        }
        .line();
        content += &e.output(at(10), "a\nb€".as_bytes()).unwrap();
        content += &e.resize(at(20), 90, 30);
        content += &e.input(at(30), b"q").unwrap();
        let (header, events) = parse(&content).unwrap();
        assert_eq!(header["version"], 2);
        let codes: Vec<&str> = events.iter().map(|e| e.code.as_str()).collect();
        assert_eq!(codes, ["o", "r", "i"]);
        assert_eq!(events[0].data, "a\nb€");
        assert_eq!(events[1].time, 0.00002);
        assert_eq!(
            parse("{\"version\":2}\nnot json\n"),
            Err(ParseError { line: 2 })
        );
        assert_eq!(parse("{\"version\":1}\n"), Err(ParseError { line: 1 }));
    }
}
