//! Legacy scp (the rcp protocol, `scp -O`): one side, the source, sends
//! `C`/`D`/`E`/`T` lines and file contents; the other, the sink, answers
//! each line and each file with `\0` or an error line. The source waits
//! for each answer before it goes on, so the answers are matched to what
//! they answer in order.

use std::collections::VecDeque;

use super::{FileOp, PATH_MAX, cut_str, join, path_from};

/// The longest line a source sends: mode, size and a name (longer is not
/// scp).
const LINE_MAX: usize = 64 + PATH_MAX;
/// Directories deeper than this are not scp.
const DEPTH_MAX: usize = 1024;
/// The command's paths kept (for `-f`, the sources).
const ARGS_MAX: usize = 256;
/// Answers awaited; a source waits for each, so more is not scp.
const AWAITED_MAX: usize = 16;

/// What the source's stream is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A line, kept in `line`.
    Line,
    /// An error message (`\x01`/`\x02` ... `\n`): skipped, not answered.
    Message,
    /// A `C` line was sent; its answer says whether the content follows.
    Accept,
    /// Content bytes still to come.
    Content(u64),
    /// The byte that ends the content: `\0`, or an error line.
    End,
    /// The error message after the content: skipped.
    EndMessage,
    Dead,
}

/// What the sink's stream is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Answer,
    /// An error answer's message: skipped.
    Message,
    Dead,
}

/// What the sink's next answer is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaited {
    /// The sink's first `\0`, or a `T` or `E` line.
    Nothing,
    /// A `D` line: refused, the directory is not entered.
    Directory,
    /// A `C` line: refused, no content follows.
    File,
    /// A file's content.
    Content,
}

/// The file being sent.
#[derive(Debug)]
struct Transfer {
    path: String,
    size: u64,
    /// Content bytes seen so far.
    moved: u64,
    /// The source ended the content with an error, or the sink refused
    /// the file after its content had begun.
    failed: bool,
}

/// Legacy scp (rcp protocol): the remote end runs `scp -t DIR` (upload:
/// the client sends C/D/E/T lines and file data) or `scp -f PATH`
/// (download: the server sends them).
pub struct Scp {
    /// `-t`: the client is the source.
    upload: bool,
    /// `-t`: the target; `-f`: the sources.
    args: Vec<String>,
    /// `-t`: the target is a directory for sure (`-d`, or so named).
    target_dir: bool,
    source: Source,
    line: Vec<u8>,
    sink: Sink,
    awaited: VecDeque<Awaited>,
    /// The directory the source is in (empty at the top).
    dir: String,
    /// `dir`'s length before each `D` entered.
    depth: Vec<usize>,
    file: Option<Transfer>,
}

impl Scp {
    /// From the exec command line (e.g. "scp -t -- /tmp" or
    /// "scp -v -f /etc/hosts"); None when it is not scp -t/-f.
    pub fn from_command(command: &str) -> Option<Scp> {
        let words = words(command)?;
        let (program, rest) = words.split_first()?;
        if basename(program) != "scp" {
            return None;
        }
        let (flags, args) = options(rest)?;
        let (upload, download) = (flags.contains(&'t'), flags.contains(&'f'));
        if upload == download || args.is_empty() || upload && args.len() != 1 {
            return None;
        }
        let args: Vec<String> = args
            .iter()
            .take(ARGS_MAX)
            .map(|a| cut_str(a.clone()))
            .collect();
        let target_dir = upload && (flags.contains(&'d') || is_dir_name(&args[0]));
        Some(Scp {
            upload,
            args,
            target_dir,
            source: Source::Line,
            line: Vec::new(),
            sink: Sink::Answer,
            awaited: VecDeque::from([Awaited::Nothing]),
            dir: String::new(),
            depth: Vec::new(),
            file: None,
        })
    }

    /// Bytes the client sent on the channel.
    pub fn client(&mut self, data: &[u8]) -> Vec<FileOp> {
        self.side(data, self.upload)
    }

    /// Bytes the server sent on the channel.
    pub fn server(&mut self, data: &[u8]) -> Vec<FileOp> {
        self.side(data, !self.upload)
    }

    /// The session ended: a file on its way is reported (ok: None).
    pub fn finish(&mut self) -> Vec<FileOp> {
        self.source = Source::Dead;
        self.sink = Sink::Dead;
        self.file
            .take()
            .map(|f| self.op(f, None))
            .into_iter()
            .collect()
    }

    /// Bytes from one side: the source's only move the state on, the
    /// sink's answers complete files.
    fn side(&mut self, data: &[u8], source: bool) -> Vec<FileOp> {
        let mut out = Vec::new();
        if source {
            self.source_bytes(data);
        } else {
            self.sink_bytes(data, &mut out);
        }
        out
    }

    fn op(&self, f: Transfer, ok: Option<bool>) -> FileOp {
        FileOp {
            op: if self.upload { "write" } else { "read" },
            path: f.path,
            to: None,
            bytes: f.moved,
            ok,
        }
    }

    fn source_bytes(&mut self, mut data: &[u8]) {
        while let Some((&b, rest)) = data.split_first() {
            match self.source {
                Source::Dead => return,
                Source::Line => {
                    data = rest;
                    self.line_byte(b);
                }
                Source::Message | Source::EndMessage => {
                    data = rest;
                    if b == b'\n' {
                        self.source = Source::Line;
                    }
                }
                // Content before the answer: the sink must have taken it.
                Source::Accept => self.accepted(),
                Source::Content(left) => {
                    let n = usize::try_from(left).map_or(data.len(), |l| l.min(data.len()));
                    data = &data[n..];
                    if let Some(f) = &mut self.file {
                        f.moved += n as u64;
                    }
                    self.source = match left - n as u64 {
                        0 => Source::End,
                        left => Source::Content(left),
                    };
                }
                Source::End => {
                    data = rest;
                    self.content_end(b);
                }
            }
        }
    }

    /// The byte after a file's content: `\0`, or an error line begins.
    fn content_end(&mut self, b: u8) {
        self.source = match b {
            0 => Source::Line,
            1 | 2 => Source::EndMessage,
            _ => return self.source = Source::Dead,
        };
        if let (1 | 2, Some(f)) = (b, &mut self.file) {
            f.failed = true;
        }
        self.await_answer(Awaited::Content);
    }

    /// One byte of a line from the source.
    fn line_byte(&mut self, b: u8) {
        if self.line.is_empty() {
            match b {
                b'C' | b'D' | b'E' | b'T' => {}
                1 | 2 => {
                    self.source = Source::Message;
                    return;
                }
                _ => {
                    self.source = Source::Dead;
                    return;
                }
            }
        }
        if b != b'\n' {
            self.line.push(b);
            if self.line.len() > LINE_MAX {
                self.source = Source::Dead;
            }
            return;
        }
        let line = std::mem::take(&mut self.line);
        if self.line_done(&line).is_none() {
            self.source = Source::Dead;
        }
    }

    /// A whole line from the source (without its newline); `None` when it
    /// is not scp.
    fn line_done(&mut self, line: &[u8]) -> Option<()> {
        match line[0] {
            b'C' => {
                let (size, name) = file_line(line)?;
                let path = self.path_of(&name);
                self.file = Some(Transfer {
                    path,
                    size,
                    moved: 0,
                    failed: false,
                });
                self.source = Source::Accept;
                self.await_answer(Awaited::File);
            }
            b'D' => {
                let (_, name) = file_line(line)?;
                if self.depth.len() >= DEPTH_MAX {
                    return None;
                }
                let path = self.path_of(&name);
                self.depth.push(self.dir.len());
                self.dir = path;
                self.await_answer(Awaited::Directory);
            }
            b'E' => {
                self.leave();
                self.await_answer(Awaited::Nothing);
            }
            _ => self.await_answer(Awaited::Nothing),
        }
        Some(())
    }

    fn leave(&mut self) {
        if let Some(len) = self.depth.pop() {
            self.dir.truncate(len);
        }
    }

    fn await_answer(&mut self, a: Awaited) {
        if self.awaited.len() >= AWAITED_MAX {
            self.awaited.pop_front();
        }
        self.awaited.push_back(a);
    }

    /// The sink took the file the `C` line announced: its content follows.
    fn accepted(&mut self) {
        let size = self.file.as_ref().map_or(0, |f| f.size);
        self.source = if size == 0 {
            Source::End
        } else {
            Source::Content(size)
        };
    }

    fn sink_bytes(&mut self, data: &[u8], out: &mut Vec<FileOp>) {
        for &b in data {
            match (self.sink, b) {
                (Sink::Dead, _) => return,
                (Sink::Answer, 0) => self.answer(true, out),
                (Sink::Answer, 1 | 2) => {
                    self.sink = Sink::Message;
                    self.answer(false, out);
                }
                (Sink::Answer, _) => self.sink = Sink::Dead,
                (Sink::Message, b'\n') => self.sink = Sink::Answer,
                (Sink::Message, _) => {}
            }
        }
    }

    /// The sink's answer to the oldest line or content awaiting one.
    fn answer(&mut self, ok: bool, out: &mut Vec<FileOp>) {
        match self.awaited.pop_front() {
            None | Some(Awaited::Nothing) => {}
            Some(Awaited::Directory) => {
                if !ok {
                    self.leave();
                }
            }
            Some(Awaited::File) if self.source == Source::Accept => {
                if ok {
                    self.accepted();
                } else if let Some(f) = self.file.take() {
                    self.source = Source::Line;
                    out.push(self.op(f, Some(false)));
                }
            }
            Some(Awaited::File) => {
                if let (false, Some(f)) = (ok, &mut self.file) {
                    f.failed = true;
                }
            }
            Some(Awaited::Content) => {
                if let Some(f) = self.file.take() {
                    let ok = ok && !f.failed;
                    out.push(self.op(f, Some(ok)));
                }
            }
        }
    }

    /// Where the file or directory `name` (as the source sent it) is.
    fn path_of(&self, name: &str) -> String {
        if !self.depth.is_empty() {
            return join(&self.dir, name);
        }
        if self.upload {
            // `scp -t /tmp/x`: a new file named x, or a file into the
            // directory x. Only the target's file system knows; a name
            // that is the target's own says the former, else the
            // directory is the likelier.
            let target = &self.args[0];
            if !self.target_dir && basename(target) == name {
                return target.clone();
            }
            return join(target, name);
        }
        if let Some(source) = self.args.iter().find(|a| basename(a) == name) {
            return source.clone();
        }
        match self.args.as_slice() {
            // A pattern the remote shell expanded.
            [one] => join(parent(one), name),
            _ => cut_str(name.to_string()),
        }
    }
}

/// `C0644 12 name` or `D0755 0 name`: the size and the name.
fn file_line(line: &[u8]) -> Option<(u64, String)> {
    let rest = &line[1..];
    let sp = rest.iter().position(|&b| b == b' ')?;
    let (mode, rest) = (&rest[..sp], &rest[sp + 1..]);
    if mode.is_empty() || mode.len() > 6 || !mode.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return None;
    }
    let sp = rest.iter().position(|&b| b == b' ')?;
    let (size, name) = (&rest[..sp], &rest[sp + 1..]);
    if size.is_empty() || !size.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let size = std::str::from_utf8(size).ok()?.parse().ok()?;
    Some((size, path_from(name)))
}

/// The last part of a path (`/etc/` -> `etc`).
fn basename(path: &str) -> &str {
    let p = path.trim_end_matches('/');
    p.rsplit('/').next().unwrap_or(p)
}

/// The directory part of a path (`/etc/hosts` -> `/etc`, `hosts` -> ``).
fn parent(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some(("", _)) => "/",
        Some((dir, _)) => dir,
        None => "",
    }
}

/// A path that can only name a directory.
fn is_dir_name(path: &str) -> bool {
    path.ends_with('/') || matches!(basename(path), "." | ".." | "~") || path.is_empty()
}

/// The options of scp (letters; those taking a value skip it) and the
/// paths after them; `None` when an option lacks its value.
fn options(words: &[String]) -> Option<(Vec<char>, &[String])> {
    let mut flags = Vec::new();
    let mut i = 0;
    while let Some(w) = words.get(i) {
        i += 1;
        if w == "--" {
            break;
        }
        let Some(letters) = w.strip_prefix('-').filter(|l| !l.is_empty()) else {
            i -= 1;
            break;
        };
        for (at, c) in letters.char_indices() {
            if "DFJMPSXcilo".contains(c) {
                // The value is the rest of the word, or the next word.
                if at + 1 == letters.len() {
                    words.get(i)?;
                    i += 1;
                }
                break;
            }
            flags.push(c);
        }
    }
    Some((flags, &words[i..]))
}

/// `command` split into words as a POSIX shell would (quotes and
/// backslashes); `None` when it is more than one plain command (`;`, `|`,
/// redirections, substitutions) or a quote is not closed.
fn words(command: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => out.extend(word.take()),
            ';' | '&' | '|' | '<' | '>' | '(' | ')' | '`' => return None,
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => w.push(c),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => w.push(c),
                            '\n' => {}
                            c => {
                                w.push('\\');
                                w.push(c);
                            }
                        },
                        '`' => return None,
                        c => w.push(c),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') | None => {}
                Some(c) => word.get_or_insert_with(String::new).push(c),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(word);
    Some(out)
}

#[cfg(test)]
#[path = "scp_tests.rs"]
mod tests;
