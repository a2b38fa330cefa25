//! The file operations of a recorded sftp or scp session, read from the
//! channel's bytes as they pass: which files were downloaded, uploaded,
//! removed, renamed ... and whether the target allowed it.
//!
//! Pure parsers: no I/O, no clocks. The relay feeds each direction's bytes
//! in the order they travel; a reply can only be matched to its request if
//! the request was fed first, so feed a direction's bytes *before*
//! forwarding them (then the peer cannot have answered yet). Feed channel
//! data only, never extended data (stderr).
//!
//! Memory is bounded whatever the peers send: file contents are counted,
//! never kept, and every table has a cap. Bytes that do not follow the
//! protocol stop the parsing of that direction (no panic, no error: the
//! session is still recorded, only its file operations are not known).

mod scp;
mod sftp;

use serde::Serialize;

pub use scp::Scp;
pub use sftp::Sftp;

/// The longest path kept, in bytes (longer ones are cut).
pub const PATH_MAX: usize = 4096;

/// One file operation seen in an sftp or scp session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileOp {
    /// "read" (download), "write" (upload), "open" (opened, nothing moved),
    /// "remove", "rename", "mkdir", "rmdir", "setstat", "symlink".
    pub op: &'static str,
    pub path: String,
    /// rename/symlink: the new path.
    pub to: Option<String>,
    /// Bytes read or written (0 for the others).
    pub bytes: u64,
    /// The server's answer: true = ok, false = refused/failed, None = not
    /// known (the session ended first).
    pub ok: Option<bool>,
}

/// The parser of a session's file operations, shared by the two
/// directions of its relay.
pub enum Parser {
    Sftp(Sftp),
    Scp(Scp),
}

impl Parser {
    /// For a session of `kind` started with `command`: sftp, or `scp -t/-f`.
    pub fn for_session(kind: crate::recording::Kind, command: Option<&str>) -> Option<Parser> {
        match kind {
            crate::recording::Kind::Sftp => Some(Parser::Sftp(Sftp::new())),
            crate::recording::Kind::Scp => command.and_then(Scp::from_command).map(Parser::Scp),
            _ => None,
        }
    }

    pub fn client(&mut self, data: &[u8]) -> Vec<FileOp> {
        match self {
            Parser::Sftp(p) => p.client(data),
            Parser::Scp(p) => p.client(data),
        }
    }

    pub fn server(&mut self, data: &[u8]) -> Vec<FileOp> {
        match self {
            Parser::Sftp(p) => p.server(data),
            Parser::Scp(p) => p.server(data),
        }
    }

    pub fn finish(&mut self) -> Vec<FileOp> {
        match self {
            Parser::Sftp(p) => p.finish(),
            Parser::Scp(p) => p.finish(),
        }
    }
}

impl FileOp {
    /// One line of the session's transcript: `write /tmp/x (1048576 bytes): ok`.
    pub fn line(&self) -> String {
        let mut s = format!("{} {}", self.op, crate::text::clean(&self.path, PATH_MAX));
        if let Some(to) = &self.to {
            s += &format!(" -> {}", crate::text::clean(to, PATH_MAX));
        }
        if self.bytes > 0 || matches!(self.op, "read" | "write") {
            s += &format!(" ({} bytes)", self.bytes);
        }
        s += match self.ok {
            Some(true) => ": ok",
            Some(false) => ": refused",
            None => ": unfinished",
        };
        s
    }

    fn new(op: &'static str, path: String) -> FileOp {
        FileOp {
            op,
            path,
            to: None,
            bytes: 0,
            ok: None,
        }
    }
}

/// `raw` as a path: at most [`PATH_MAX`] bytes, invalid UTF-8 replaced.
fn path_from(raw: &[u8]) -> String {
    let cut = &raw[..raw.len().min(PATH_MAX)];
    cut_str(String::from_utf8_lossy(cut).into_owned())
}

/// `s` cut to at most [`PATH_MAX`] bytes, on a character boundary (lossy
/// decoding can lengthen a string: U+FFFD takes three bytes).
fn cut_str(mut s: String) -> String {
    if s.len() > PATH_MAX {
        let mut at = PATH_MAX;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
    s
}

/// `name` inside directory `dir` (cut to [`PATH_MAX`]).
fn join(dir: &str, name: &str) -> String {
    let s = if dir.is_empty() {
        name.to_string()
    } else if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    };
    cut_str(s)
}

/// Feeding a session in every chunking, for the parsers' tests.
#[cfg(test)]
mod testing {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Side {
        Client,
        Server,
    }

    /// Ways to feed `events` (bytes as each side sent them, in order):
    /// first as they are, then with each side's consecutive events in one
    /// chunk, split at every byte boundary (or 64 of them, in a long run),
    /// in single bytes, and in random small chunks.
    pub fn plans(events: &[(Side, Vec<u8>)]) -> Vec<Vec<(Side, Vec<u8>)>> {
        let mut runs: Vec<(Side, Vec<u8>)> = Vec::new();
        for (side, b) in events {
            match runs.last_mut() {
                Some((s, run)) if s == side => run.extend_from_slice(b),
                _ => runs.push((*side, b.clone())),
            }
        }
        let mut plans = vec![events.to_vec(), runs.clone()];
        for (i, (side, run)) in runs.iter().enumerate() {
            let step = (run.len() / 64).max(1);
            for k in (1..run.len()).step_by(step) {
                let mut plan = runs.clone();
                plan[i] = (*side, run[..k].to_vec());
                plan.insert(i + 1, (*side, run[k..].to_vec()));
                plans.push(plan);
            }
        }
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for max in [1, 3, 9, 200] {
            let mut plan = Vec::new();
            for (side, run) in &runs {
                let mut rest = &run[..];
                while !rest.is_empty() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let n = (1 + (seed % max) as usize).min(rest.len());
                    plan.push((*side, rest[..n].to_vec()));
                    rest = &rest[n..];
                }
            }
            plans.push(plan);
        }
        plans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cut_on_a_character_boundary() {
        assert_eq!(path_from(b"/etc/hosts"), "/etc/hosts");
        assert_eq!(path_from(b"/tmp/\xff"), "/tmp/\u{FFFD}");
        let long = vec![b'a'; PATH_MAX + 10];
        assert_eq!(path_from(&long).len(), PATH_MAX);
        // Every byte invalid: each becomes a 3-byte U+FFFD.
        let bad = vec![0xffu8; PATH_MAX];
        let p = path_from(&bad);
        assert!(p.len() <= PATH_MAX && p.chars().all(|c| c == '\u{FFFD}'));
        assert_eq!(join("/tmp", "a"), "/tmp/a");
        assert_eq!(join("/tmp/", "a"), "/tmp/a");
        assert_eq!(join("", "a"), "a");
        assert_eq!(join(&"d".repeat(PATH_MAX), "a").len(), PATH_MAX);
    }
}
