//! SFTP version 3 (draft-ietf-secsh-filexfer-02, what OpenSSH speaks):
//! requests are matched to their replies by id, opened files to their
//! handles, and one [`FileOp`] comes out when a file is closed or a
//! one-shot request (remove, rename ...) is answered.

use std::collections::{HashMap, VecDeque};

use super::{FileOp, path_from};

/// Packets longer than this are skipped unread, except WRITE and DATA
/// (their payload is counted, never kept). OpenSSH's own limit.
const PACKET_MAX: u32 = 256 * 1024;
/// The longest handle (the draft's limit); longer is not sftp.
const HANDLE_MAX: usize = 256;
/// What is kept of a WRITE or DATA packet: all that comes before the
/// payload (type, id, handle, offset, payload length).
const HEAD_MAX: usize = 1 + 4 + 4 + HANDLE_MAX + 8 + 4;
/// Requests waiting for their reply; the oldest are dropped beyond this.
const PENDING_MAX: usize = 1024;
/// Open file handles; the oldest are reported and dropped beyond this.
const HANDLES_MAX: usize = 1024;

const INIT: u8 = 1;
const VERSION: u8 = 2;
const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const READ: u8 = 5;
const WRITE: u8 = 6;
const SETSTAT: u8 = 9;
const FSETSTAT: u8 = 10;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const RENAME: u8 = 18;
const SYMLINK: u8 = 20;
const EXTENDED: u8 = 200;
/// Requests that are no file operation (LSTAT, FSTAT, OPENDIR, READDIR,
/// REALPATH, STAT, READLINK): known, so not garbage, and ignored.
const IGNORED: [u8; 7] = [7, 8, 11, 12, 16, 17, 19];

const STATUS: u8 = 101;
const HANDLE: u8 = 102;
const DATA: u8 = 103;
/// Replies that answer no request tracked here (NAME, ATTRS,
/// EXTENDED_REPLY).
const OTHER_REPLIES: [u8; 3] = [104, 105, 201];

const FX_OK: u32 = 0;
const FX_EOF: u32 = 1;
const PFLAG_WRITE: u32 = 0x02;
const PFLAG_TRUNC: u32 = 0x10;

/// One direction's packets, of whatever chunking. A packet is kept whole
/// up to [`PACKET_MAX`]; of a longer one, or of a `streamed` one (WRITE
/// from the client, DATA from the server), only the first [`HEAD_MAX`]
/// bytes are kept and the rest is dropped as it passes.
struct Framer {
    streamed: u8,
    len_buf: [u8; 4],
    len_have: usize,
    /// The current packet's length, once its prefix is in.
    len: Option<u32>,
    /// The current packet's bytes kept so far (after the length).
    body: Vec<u8>,
    /// How many bytes of the current packet to keep.
    keep: usize,
    /// Bytes of the current packet still to drop.
    skip: u64,
    /// A malformed packet was seen: this direction is not parsed further.
    dead: bool,
}

/// A packet as kept: `body` is all of it, or (when shorter than `len`)
/// its head.
struct Packet {
    body: Vec<u8>,
    len: u32,
}

impl Framer {
    fn new(streamed: u8) -> Framer {
        Framer {
            streamed,
            len_buf: [0; 4],
            len_have: 0,
            len: None,
            body: Vec::new(),
            keep: 0,
            skip: 0,
            dead: false,
        }
    }

    fn push(&mut self, mut data: &[u8], out: &mut Vec<Packet>) {
        while !data.is_empty() && !self.dead {
            if self.skip > 0 {
                let n = usize::try_from(self.skip).map_or(data.len(), |s| s.min(data.len()));
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let Some(len) = self.len else {
                let n = (4 - self.len_have).min(data.len());
                self.len_buf[self.len_have..self.len_have + n].copy_from_slice(&data[..n]);
                self.len_have += n;
                data = &data[n..];
                if self.len_have == 4 {
                    self.len_have = 0;
                    let len = u32::from_be_bytes(self.len_buf);
                    // Not even a type byte: no sftp peer sends that.
                    self.dead = len == 0;
                    self.len = Some(len);
                    self.keep = (len as usize).min(HEAD_MAX);
                }
                continue;
            };
            let n = (self.keep - self.body.len()).min(data.len());
            self.body.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.body.len() < self.keep {
                continue;
            }
            if self.keep < len as usize && self.body[0] != self.streamed && len <= PACKET_MAX {
                self.keep = len as usize;
                continue;
            }
            self.skip = u64::from(len) - self.keep as u64;
            self.len = None;
            out.push(Packet {
                body: std::mem::take(&mut self.body),
                len,
            });
        }
    }
}

/// Reads the fields of a packet; `None` when the packet is too short.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(b)
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.bytes(4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from(self.u32()?) << 32 | u64::from(self.u32()?))
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()?;
        self.bytes(usize::try_from(n).ok()?)
    }
    fn path(&mut self) -> Option<String> {
        self.string().map(path_from)
    }
    fn handle(&mut self) -> Option<&'a [u8]> {
        self.string().filter(|h| h.len() <= HANDLE_MAX)
    }
}

/// A file opened for a handle.
#[derive(Debug)]
struct File {
    path: String,
    pflags: u32,
    read: u64,
    written: u64,
    /// A READ or WRITE on it was refused.
    failed: bool,
    /// When it was opened, in handles bound so far: the oldest is dropped
    /// first.
    seq: u64,
}

impl File {
    /// What the file was opened for, judged by what moved. A truncating
    /// open for writing counts as a write even with nothing written: the
    /// file's old content is gone (an empty file uploaded).
    fn op(&self, ok: Option<bool>) -> FileOp {
        let truncated = self.pflags & PFLAG_WRITE != 0 && self.pflags & PFLAG_TRUNC != 0;
        let (op, bytes) = if self.written > 0 || truncated {
            ("write", self.written)
        } else if self.read > 0 {
            ("read", self.read)
        } else {
            ("open", 0)
        };
        FileOp {
            bytes,
            ok,
            ..FileOp::new(op, self.path.clone())
        }
    }
}

/// A request waiting for its reply.
#[derive(Debug)]
enum Pending {
    Open {
        path: String,
        pflags: u32,
    },
    /// The file leaves the handle table when CLOSE is sent.
    Close(File),
    Read(Vec<u8>),
    Write(Vec<u8>),
    /// Done when its STATUS comes.
    Simple(FileOp),
}

impl Pending {
    /// The operation reported when the reply never comes.
    fn unanswered(self) -> Option<FileOp> {
        match self {
            Pending::Open { path, .. } => Some(FileOp::new("open", path)),
            Pending::Close(f) => Some(f.op(None)),
            Pending::Simple(op) => Some(op),
            Pending::Read(_) | Pending::Write(_) => None,
        }
    }
}

/// A reply, as far as it matters here.
enum Reply<'a> {
    Status(u32),
    Handle(&'a [u8]),
    Data(u32),
    Other,
}

/// SFTP v3 (draft-ietf-secsh-filexfer-02, what OpenSSH speaks).
pub struct Sftp {
    client: Framer,
    server: Framer,
    /// The first packet of each side must be INIT / VERSION.
    client_started: bool,
    server_started: bool,
    /// Oldest first; replies mostly come in order, so a search from the
    /// front is short.
    pending: VecDeque<(u32, Pending)>,
    handles: HashMap<Vec<u8>, File>,
    next_seq: u64,
}

impl Default for Sftp {
    fn default() -> Sftp {
        Sftp::new()
    }
}

impl Sftp {
    pub fn new() -> Sftp {
        Sftp {
            client: Framer::new(WRITE),
            server: Framer::new(DATA),
            client_started: false,
            server_started: false,
            pending: VecDeque::new(),
            handles: HashMap::new(),
            next_seq: 0,
        }
    }

    /// Bytes the client sent on the channel (requests), in any chunking.
    pub fn client(&mut self, data: &[u8]) -> Vec<FileOp> {
        let mut packets = Vec::new();
        self.client.push(data, &mut packets);
        let mut out = Vec::new();
        for p in packets {
            if self.request(&p, &mut out).is_none() {
                self.client.dead = true;
                break;
            }
        }
        out
    }

    /// Bytes the server sent (replies: SSH_FXP_HANDLE, SSH_FXP_STATUS,
    /// SSH_FXP_DATA ...).
    pub fn server(&mut self, data: &[u8]) -> Vec<FileOp> {
        let mut packets = Vec::new();
        self.server.push(data, &mut packets);
        let mut out = Vec::new();
        for p in packets {
            if self.reply(&p, &mut out).is_none() {
                self.server.dead = true;
                break;
            }
        }
        out
    }

    /// The session ended: files still open are reported (ok: None), and
    /// so are requests never answered.
    pub fn finish(&mut self) -> Vec<FileOp> {
        let mut files: Vec<File> = self.handles.drain().map(|(_, f)| f).collect();
        files.sort_by_key(|f| f.seq);
        let mut out: Vec<FileOp> = files.iter().map(|f| f.op(None)).collect();
        out.extend(self.pending.drain(..).filter_map(|(_, p)| p.unanswered()));
        out
    }

    /// One client packet; `None` when it is not sftp.
    fn request(&mut self, p: &Packet, out: &mut Vec<FileOp>) -> Option<()> {
        let mut r = Reader(&p.body);
        let kind = r.u8()?;
        if !self.client_started {
            self.client_started = true;
            return (kind == INIT).then_some(());
        }
        if p.body.len() < p.len as usize && kind != WRITE {
            // Too long to read: skipped, if it is a request at all.
            return is_request(kind).then_some(());
        }
        if IGNORED.contains(&kind) || kind == INIT {
            return Some(());
        }
        let id = r.u32()?;
        let pending = match kind {
            OPEN => {
                let path = r.path()?;
                let pflags = r.u32()?;
                Some(Pending::Open { path, pflags })
            }
            CLOSE => self.handles.remove(r.handle()?).map(Pending::Close),
            READ => self.file_request(r.handle()?, 0).map(Pending::Read),
            WRITE => {
                let handle = r.handle()?;
                r.u64()?;
                let n = r.u32()?;
                let head = 1 + 4 + 4 + handle.len() + 8 + 4;
                if head as u64 + u64::from(n) != u64::from(p.len) {
                    return None;
                }
                self.file_request(handle, n).map(Pending::Write)
            }
            FSETSTAT => {
                let path = self.handles.get(r.handle()?).map(|f| f.path.clone());
                path.map(|p| Pending::Simple(FileOp::new("setstat", p)))
            }
            _ => simple(kind, &mut r)?.map(Pending::Simple),
        };
        if let Some(pending) = pending {
            self.wait(id, pending, out);
        }
        Some(())
    }

    /// A READ (`written` 0) or WRITE of `written` bytes on `handle`: the
    /// handle to wait for the reply with, if it is an open file.
    fn file_request(&mut self, handle: &[u8], written: u32) -> Option<Vec<u8>> {
        let file = self.handles.get_mut(handle)?;
        file.written += u64::from(written);
        Some(handle.to_vec())
    }

    fn wait(&mut self, id: u32, pending: Pending, out: &mut Vec<FileOp>) {
        // An id used again: the first request will not be answered now.
        if let Some(old) = self.take_pending(id) {
            out.extend(old.unanswered());
        }
        if self.pending.len() >= PENDING_MAX
            && let Some((_, old)) = self.pending.pop_front()
        {
            out.extend(old.unanswered());
        }
        self.pending.push_back((id, pending));
    }

    fn take_pending(&mut self, id: u32) -> Option<Pending> {
        let at = self.pending.iter().position(|(i, _)| *i == id)?;
        self.pending.remove(at).map(|(_, p)| p)
    }

    /// One server packet; `None` when it is not sftp.
    fn reply(&mut self, p: &Packet, out: &mut Vec<FileOp>) -> Option<()> {
        let mut r = Reader(&p.body);
        let kind = r.u8()?;
        if !self.server_started {
            self.server_started = true;
            return (kind == VERSION).then_some(());
        }
        if p.body.len() < p.len as usize && kind != DATA {
            return is_reply(kind).then_some(());
        }
        if kind == VERSION {
            return Some(());
        }
        let id = r.u32()?;
        let reply = match kind {
            STATUS => Reply::Status(r.u32()?),
            HANDLE => Reply::Handle(r.handle()?),
            DATA => {
                let n = r.u32()?;
                if 1 + 4 + 4 + u64::from(n) > u64::from(p.len) {
                    return None;
                }
                Reply::Data(n)
            }
            k if OTHER_REPLIES.contains(&k) => Reply::Other,
            _ => return None,
        };
        if let Some(pending) = self.take_pending(id) {
            self.answered(pending, reply, out);
        }
        Some(())
    }

    fn answered(&mut self, pending: Pending, reply: Reply<'_>, out: &mut Vec<FileOp>) {
        match (pending, reply) {
            (Pending::Open { path, pflags }, Reply::Handle(h)) => self.bind(h, path, pflags, out),
            (Pending::Open { path, .. }, Reply::Status(code)) => out.push(FileOp {
                ok: Some(code == FX_OK),
                ..FileOp::new("open", path)
            }),
            (Pending::Close(f), Reply::Status(code)) => {
                out.push(f.op(Some(code == FX_OK && !f.failed)));
            }
            (Pending::Read(h), Reply::Data(n)) => {
                if let Some(f) = self.handles.get_mut(&h) {
                    f.read += u64::from(n);
                }
            }
            (Pending::Read(h), Reply::Status(code)) => self.refused(&h, code, FX_EOF),
            (Pending::Write(h), Reply::Status(code)) => self.refused(&h, code, FX_OK),
            (Pending::Simple(op), Reply::Status(code)) => out.push(FileOp {
                ok: Some(code == FX_OK),
                ..op
            }),
            // A reply of the wrong kind: the answer is not known.
            (pending, _) => out.extend(pending.unanswered()),
        }
    }

    /// A READ or WRITE answered by STATUS `code`; `fine` is the code that
    /// is no failure (EOF for READ, OK for WRITE).
    fn refused(&mut self, handle: &[u8], code: u32, fine: u32) {
        if code != fine
            && let Some(f) = self.handles.get_mut(handle)
        {
            f.failed = true;
        }
    }

    fn bind(&mut self, handle: &[u8], path: String, pflags: u32, out: &mut Vec<FileOp>) {
        if self.handles.len() >= HANDLES_MAX
            && !self.handles.contains_key(handle)
            && let Some(oldest) = self.handles.values().map(|f| f.seq).min()
        {
            self.handles.retain(|_, f| {
                if f.seq == oldest {
                    out.push(f.op(None));
                }
                f.seq != oldest
            });
        }
        let file = File {
            path,
            pflags,
            read: 0,
            written: 0,
            failed: false,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        // A handle given out again without a CLOSE: the old file's end is
        // not known.
        if let Some(old) = self.handles.insert(handle.to_vec(), file) {
            out.push(old.op(None));
        }
    }
}

/// The one-shot request `kind` (its id read): the operation it asks for,
/// `Some(None)` when it is no file operation, `None` when malformed.
fn simple(kind: u8, r: &mut Reader<'_>) -> Option<Option<FileOp>> {
    let op = match kind {
        REMOVE => FileOp::new("remove", r.path()?),
        MKDIR => FileOp::new("mkdir", r.path()?),
        RMDIR => FileOp::new("rmdir", r.path()?),
        SETSTAT => FileOp::new("setstat", r.path()?),
        // OpenSSH sends RENAME's order (the existing path, then the new
        // one) for SYMLINK too, against the draft: the link is the new
        // path.
        RENAME | SYMLINK => {
            let from = r.path()?;
            FileOp {
                to: Some(r.path()?),
                ..FileOp::new(if kind == RENAME { "rename" } else { "symlink" }, from)
            }
        }
        EXTENDED => return extended(r),
        _ => return None,
    };
    Some(Some(op))
}

/// OpenSSH's extensions that are file operations under another name.
fn extended(r: &mut Reader<'_>) -> Option<Option<FileOp>> {
    let op = match r.string()? {
        b"posix-rename@openssh.com" => {
            let from = r.path()?;
            FileOp {
                to: Some(r.path()?),
                ..FileOp::new("rename", from)
            }
        }
        b"lsetstat@openssh.com" => FileOp::new("setstat", r.path()?),
        _ => return Some(None),
    };
    Some(Some(op))
}

fn is_request(kind: u8) -> bool {
    (INIT..=SYMLINK).contains(&kind) && kind != VERSION || kind == EXTENDED
}

fn is_reply(kind: u8) -> bool {
    kind == VERSION || (STATUS..=DATA).contains(&kind) || OTHER_REPLIES.contains(&kind)
}

#[cfg(test)]
#[path = "sftp_tests.rs"]
mod tests;
