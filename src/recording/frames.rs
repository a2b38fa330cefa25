//! How a recording is stored: the terminal's bytes as they came, each
//! piece in a small binary frame, turned into asciicast v2 ([`super::cast`])
//! only when the recording is read.
//!
//! The relay's path then only copies bytes: no UTF-8 decoding and no JSON
//! escaping per byte (source text through a pty needs an escape every 14
//! bytes), and the stored content is exactly what the target sent, bytes
//! that are not UTF-8 included (asciicast can only say U+FFFD for them).
//! docs/RECORDING.md ("How a recording is stored") describes the layout,
//! docs/BENCHMARKS.md what it saves.
//!
//! Layout: [`MAGIC`], the asciicast header line (JSON, ending in `\n`), then
//! frames of `code` (one byte), `time` (microseconds since the start, u64
//! little-endian), `length` (u32 little-endian) and `length` bytes:
//! - `o` output and `i` input: the bytes of one channel message;
//! - `r` resize: width and height, u32 little-endian each;
//! - `e` end: no bytes; a character still cut short is written as U+FFFD.
//!
//! Content that does not begin with [`MAGIC`] is asciicast as written by
//! portvakt before frames, and is read as it is.

use std::borrow::Cow;
use std::time::Duration;

use super::cast::Encoder;

/// The first bytes of a recording stored as frames.
pub const MAGIC: &[u8] = b"portvakt frames 1\n";
/// code, time, length.
const FRAME_HEAD: usize = 1 + 8 + 4;
/// The size of an end frame (a recorder keeps room for it).
pub const END_BYTES: u64 = FRAME_HEAD as u64;

/// The kinds of frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    Output,
    Input,
    Resize,
    End,
}

impl Frame {
    fn code(self) -> u8 {
        match self {
            Frame::Output => b'o',
            Frame::Input => b'i',
            Frame::Resize => b'r',
            Frame::End => b'e',
        }
    }
}

/// Appends one frame of `data` at `at` (since the start) to `out`. A piece
/// longer than a frame holds (4 GiB; no channel message is) takes several.
pub fn write(out: &mut Vec<u8>, at: Duration, frame: Frame, data: &[u8]) {
    let micros = u64::try_from(at.as_micros()).unwrap_or(u64::MAX);
    let mut pieces = data.chunks(u32::MAX as usize);
    let mut piece = pieces.next().unwrap_or_default();
    loop {
        out.reserve(FRAME_HEAD + piece.len());
        out.push(frame.code());
        out.extend_from_slice(&micros.to_le_bytes());
        // A piece of `chunks(u32::MAX)` always fits.
        out.extend_from_slice(&u32::try_from(piece.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(piece);
        match pieces.next() {
            Some(p) => piece = p,
            None => return,
        }
    }
}

/// Appends a resize frame.
pub fn write_resize(out: &mut Vec<u8>, at: Duration, width: u32, height: u32) {
    let mut size = [0u8; 8];
    size[..4].copy_from_slice(&width.to_le_bytes());
    size[4..].copy_from_slice(&height.to_le_bytes());
    write(out, at, Frame::Resize, &size);
}

/// Stored content that is not a valid recording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored content, byte {offset}: {problem}")]
pub struct FrameError {
    /// Offset in the stored content.
    pub offset: usize,
    pub problem: &'static str,
}

/// The asciicast v2 of stored content: frames converted (the same lines
/// the relay wrote before frames), older content as it is.
pub fn to_asciicast(stored: &[u8]) -> Result<Cow<'_, [u8]>, FrameError> {
    let Some(rest) = stored.strip_prefix(MAGIC) else {
        return Ok(Cow::Borrowed(stored));
    };
    let fail = |at: usize, problem| FrameError {
        offset: MAGIC.len() + at,
        problem,
    };
    let header = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(fail(rest.len(), "the header line has no end"))?
        + 1;
    // Escapes make text longer; an eighth more is what source text needs.
    let mut out = Vec::with_capacity(rest.len() + rest.len() / 8);
    out.extend_from_slice(&rest[..header]);
    let mut enc = Encoder::new();
    let mut pos = header;
    while pos < rest.len() {
        let head = rest
            .get(pos..pos + FRAME_HEAD)
            .ok_or(fail(pos, "a frame is cut short"))?;
        let mut time = [0u8; 8];
        time.copy_from_slice(&head[1..9]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&head[9..13]);
        let len = u32::from_le_bytes(len) as usize;
        let body = pos + FRAME_HEAD;
        let data = body
            .checked_add(len)
            .and_then(|end| rest.get(body..end))
            .ok_or(fail(pos, "a frame is cut short"))?;
        let at = Duration::from_micros(u64::from_le_bytes(time));
        match head[0] {
            b'o' => {
                enc.write_output(at, data, &mut out);
            }
            b'i' => {
                enc.write_input(at, data, &mut out);
            }
            b'r' => {
                let [w0, w1, w2, w3, h0, h1, h2, h3] = *data else {
                    return Err(fail(pos, "a resize frame is not 8 bytes"));
                };
                let (width, height) = (
                    u32::from_le_bytes([w0, w1, w2, w3]),
                    u32::from_le_bytes([h0, h1, h2, h3]),
                );
                out.extend_from_slice(enc.resize(at, width, height).as_bytes());
            }
            b'e' if data.is_empty() => {
                for line in enc.finish(at) {
                    out.extend_from_slice(line.as_bytes());
                }
            }
            b'e' => return Err(fail(pos, "an end frame has bytes")),
            _ => return Err(fail(pos, "unknown frame")),
        }
        pos = body + len;
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
#[path = "frames_tests.rs"]
mod tests;
