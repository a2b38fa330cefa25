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

    /// An "o" event at `at` (since the start), or nothing while `data`
    /// holds only the beginning of a character.
    pub fn output(&mut self, at: Duration, data: &[u8]) -> Option<String> {
        let text = self.output.decode(data);
        (!text.is_empty()).then(|| event(at, Code::Output, &text))
    }

    /// An "i" event, as `output`.
    pub fn input(&mut self, at: Duration, data: &[u8]) -> Option<String> {
        let text = self.input.decode(data);
        (!text.is_empty()).then(|| event(at, Code::Input, &text))
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
    // A `&str` always serialises.
    let text = serde_json::to_string(text).unwrap_or_default();
    format!(
        "[{}.{:06}, \"{}\", {text}]\n",
        at.as_secs(),
        at.subsec_micros(),
        code.as_str()
    )
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
    fn decode(&mut self, data: &[u8]) -> String {
        let joined;
        let mut input: &[u8] = if self.pending.is_empty() {
            data
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(data);
            joined = buf;
            &joined
        };
        let mut text = String::with_capacity(input.len());
        loop {
            match std::str::from_utf8(input) {
                Ok(s) => {
                    text.push_str(s);
                    return text;
                }
                Err(e) => {
                    let (valid, rest) = input.split_at(e.valid_up_to());
                    text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            text.push('\u{FFFD}');
                            input = &rest[bad..];
                        }
                        None => {
                            self.pending = rest.to_vec();
                            return text;
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
