//! `recording::frames::to_asciicast` on stored content: damaged content
//! read from a database is an error, never a panic, and whatever it accepts
//! is asciicast v2 that `cast::parse` reads. The input is taken as it is
//! (content of any kind) and, behind the magic and a header line, as frames
//! (so the fuzzer need not find the magic first).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portvakt::recording::{cast, frames};

const HEADER: &[u8] = b"{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":1}\n";

fuzz_target!(|data: &[u8]| {
    // Content of any kind: read or refused.
    let _ = frames::to_asciicast(data);
    // Frames behind a valid header: what is read is asciicast v2.
    let mut stored = [frames::MAGIC, HEADER].concat();
    stored.extend_from_slice(data);
    if let Ok(out) = frames::to_asciicast(&stored) {
        let text = std::str::from_utf8(&out).expect("converted frames are UTF-8");
        cast::parse(text).expect("converted frames are asciicast v2");
    }
});
