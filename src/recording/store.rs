//! Recordings in the database: a `recordings` row per recorded channel and
//! its content (frames, [`super::frames`]) in `recording_chunks`, each
//! chunk compressed (LZ4 blocks) unless LZ4 cannot shrink it. A
//! [`Recorder`] writes one recording; `list`, `get`, `stored` and `content`
//! (asciicast) read them back for the CLI and the console.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Semaphore;

use aws_lc_rs::digest;
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::cast::Header;
use super::frames::{self, Frame};
use crate::clock::{now_micros, rfc3339_micros};
use crate::store::{Store, StoreError};
use crate::text::clean;

/// Content framed but not stored past this asks for a flush.
pub const FLUSH_BYTES: usize = 1024 * 1024;
/// Room for a chunk and the event that completes it (no regrowth).
const PENDING_CAPACITY: usize = FLUSH_BYTES + 256 * 1024;
/// No chunk a recorder writes is larger (a flush after each event: one
/// event is at most a 32 KiB packet, escaped).
const MAX_CHUNK: u64 = 16 << 20;

/// The longest command kept (in the row and the header); the client chose it.
pub const COMMAND_MAX: usize = 4096;
/// The longest `TERM` kept.
const TERM_MAX: usize = 64;

/// What was recorded: the channel's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Shell,
    Exec,
    Sftp,
    Scp,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Shell, Kind::Exec, Kind::Sftp, Kind::Scp];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Shell => "shell",
            Kind::Exec => "exec",
            Kind::Sftp => "sftp",
            Kind::Scp => "scp",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Who recorded what, stored once at the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub node: String,
    pub connection_id: String,
    /// The `forwards` row of the recorded session.
    pub session_id: i64,
    pub channel: u32,
    pub user: String,
    pub target: String,
    /// The account on the target.
    pub login: String,
    pub kind: Kind,
    pub command: Option<String>,
    pub term: Option<String>,
    pub width: u32,
    pub height: u32,
}

/// `[recording]` settings that shape the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Content past this is dropped and the recording marked truncated.
    pub max_bytes: u64,
    /// Also record keystrokes ("i" events).
    pub input: bool,
}

/// What a finished recording ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub id: i64,
    /// Size of the uncompressed content.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the uncompressed content.
    pub sha256: String,
    pub truncated: bool,
    pub exit_status: Option<u32>,
}

/// Writes one recording. Events are framed at once (`super::frames`) and
/// stored in chunks: the caller awaits `flush` when `wants_flush` says so,
/// and `finish` at the end. A recorder dropped without `finish` leaves a
/// row without `ended_at` whose stored chunks stay readable.
pub struct Recorder {
    store: Store,
    id: i64,
    /// Event times count from here (monotonic, unlike `started_at`).
    started: Instant,
    settings: Settings,
    /// Content framed but not yet stored.
    pending: Vec<u8>,
    /// Content accepted so far, stored or pending: what `max_bytes` bounds.
    bytes: u64,
    /// Over the stored chunks, in order; passed along the chunks' writers
    /// while any is in flight (they hash, off the relay's path).
    hash: Option<digest::Context>,
    /// Buffers of stored chunks, for the next ones (output that fills
    /// chunks does not allocate per chunk; emptied at a partial flush, so
    /// an idle session holds no more than it needs).
    spares: Arc<Mutex<Vec<Vec<u8>>>>,
    /// One permit per chunk in flight.
    slots: Arc<Semaphore>,
    /// Set by a writer whose chunk failed (the next flush reports it).
    failed: Arc<AtomicBool>,
    /// Whether the chunk LZ4 saw last shrank (its output is most likely
    /// still text): the next one then skips the sample, see [`encode`].
    shrank: Arc<AtomicBool>,
    /// Chunks handed to the writer, and the seq of the next.
    chunks: i64,
    truncated: bool,
    /// The writer of the last chunk handed over. Each writer waits for the
    /// one before it (order holds, the hash runs through them in turn), and
    /// at most [`IN_FLIGHT`] are queued (memory holds).
    in_flight: Option<tokio::task::JoinHandle<Stored>>,
}

impl Recorder {
    /// Inserts the `recordings` row (started_at now) and remembers the
    /// start instant. The header line is the first content.
    pub async fn start(
        store: Store,
        meta: Meta,
        settings: Settings,
    ) -> Result<Recorder, StoreError> {
        // The client's text, made safe to store and show (crate::text).
        let command = meta.command.as_deref().map(|c| clean(c, COMMAND_MAX));
        let term = meta.term.as_deref().map(|t| clean(t, TERM_MAX));
        let started_at = now_micros();
        let started = Instant::now();
        let id: i64 = sqlx::query(
            "INSERT INTO recordings (node, connection_id, session_id, channel, user_name, target, login, \
             kind, command, term, width, height, started_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
        )
        .bind(&meta.node)
        .bind(&meta.connection_id)
        .bind(meta.session_id)
        .bind(i64::from(meta.channel))
        .bind(&meta.user)
        .bind(&meta.target)
        .bind(&meta.login)
        .bind(meta.kind.as_str())
        .bind(&command)
        .bind(&term)
        .bind(i64::from(meta.width))
        .bind(i64::from(meta.height))
        .bind(started_at)
        .fetch_one(store.pool())
        .await?
        .try_get("id")?;
        let header = Header {
            width: meta.width,
            height: meta.height,
            timestamp: started_at.div_euclid(1_000_000),
            term,
            title: Some(format!("{} as {}@{}", meta.user, meta.login, meta.target)),
            command,
        }
        .line();
        Ok(Recorder {
            store,
            id,
            started,
            settings,
            bytes: (frames::MAGIC.len() + header.len()) as u64,
            pending: [frames::MAGIC, header.as_bytes()].concat(),
            hash: Some(digest::Context::new(&digest::SHA256)),
            spares: Arc::default(),
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
            failed: Arc::default(),
            shrank: Arc::default(),
            chunks: 0,
            truncated: false,
            in_flight: None,
        })
    }

    pub fn id(&self) -> i64 {
        self.id
    }

    /// An "o" event now. Returns true exactly once: when this call made the
    /// recording reach max_bytes (the event that does not fit is dropped,
    /// later events too; the recording is marked truncated).
    pub fn output(&mut self, data: &[u8]) -> bool {
        self.frame(Frame::Output, data)
    }

    /// An "i" event now, recorded only when `settings.input`; returns as
    /// `output`.
    pub fn input(&mut self, data: &[u8]) -> bool {
        self.settings.input && self.frame(Frame::Input, data)
    }

    /// A frame of `data` now (none for no bytes); returns as `output`.
    fn frame(&mut self, frame: Frame, data: &[u8]) -> bool {
        if self.truncated || data.is_empty() {
            return false;
        }
        let mark = self.pending.len();
        frames::write(&mut self.pending, self.started.elapsed(), frame, data);
        self.keep(mark)
    }

    /// An "r" event now; returns as `output`.
    pub fn resize(&mut self, width: u32, height: u32) -> bool {
        if self.truncated {
            return false;
        }
        let mark = self.pending.len();
        frames::write_resize(&mut self.pending, self.started.elapsed(), width, height);
        self.keep(mark)
    }

    /// Bytes framed but not yet stored >= FLUSH_BYTES (the caller then awaits
    /// `flush`).
    pub fn wants_flush(&self) -> bool {
        self.pending.len() >= FLUSH_BYTES
    }

    /// Has max_bytes been reached?
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The frame written to `pending` from `mark` on stays if it fits in
    /// max_bytes (less the room the end frame is sure of); true when it is
    /// the first that does not (it is removed).
    fn keep(&mut self, mark: usize) -> bool {
        let size = (self.pending.len() - mark) as u64;
        let room = self.settings.max_bytes.saturating_sub(frames::END_BYTES);
        if self.bytes.saturating_add(size) > room {
            self.pending.truncate(mark);
            self.truncated = true;
            return true;
        }
        self.bytes += size;
        false
    }

    /// Hands pending content to a writer as the next chunk (nothing when
    /// empty): compression, hashing and the database write run beside the
    /// relay, one chunk after the other, up to [`IN_FLIGHT`] queued (and
    /// [`IN_FLIGHT_PER_PROCESS`] for all recordings together; a database
    /// write that stalls stalls the relay only when they are all taken).
    /// Keeps a running SHA-256 and byte count. An error is that of a chunk
    /// handed over before (or of this one, from [`Recorder::settle`] or
    /// [`Recorder::finish`]); a chunk that failed is lost, and the recording
    /// is then failed.
    pub async fn flush(&mut self) -> Result<(), StoreError> {
        if self.failed.load(Ordering::Acquire) {
            self.settle().await?;
        }
        if self.pending.is_empty() {
            // Idle: keep no spare buffer.
            lock(&self.spares).clear();
            return Ok(());
        }
        let next = if self.pending.len() >= FLUSH_BYTES {
            let mut next = lock(&self.spares).pop().unwrap_or_default();
            next.reserve(PENDING_CAPACITY);
            next
        } else {
            lock(&self.spares).clear();
            Vec::new()
        };
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unhealthy)?;
        let budget = BUDGET.acquire().await.map_err(|_| StoreError::Unhealthy)?;
        let mut raw = std::mem::replace(&mut self.pending, next);
        let before = match self.in_flight.take() {
            Some(h) => Before::Writer(h),
            None => Before::Hash(self.hash.take()),
        };
        let (store, id, seq) = (self.store.clone(), self.id, self.chunks);
        let (spares, failed) = (self.spares.clone(), self.failed.clone());
        let shrank = self.shrank.clone();
        let stored = self.bytes;
        self.chunks += 1;
        // Off the connection's thread (crate::server::spawn_work): LZ4 and
        // SHA-256 of a chunk take milliseconds the relay need not wait for.
        self.in_flight = Some(crate::server::spawn_work(async move {
            // LZ4 before the wait for the chunk before: a recording's chunks
            // are hashed and stored in turn, but compressed side by side,
            // so the compression of one overlaps the database write of the
            // one before it instead of adding to it.
            let (codec, packed) = encode(&raw, !shrank.load(Ordering::Acquire));
            shrank.store(codec == Codec::Lz4, Ordering::Release);
            let packed = match packed {
                Cow::Owned(packed) => Some(packed),
                Cow::Borrowed(_) => None,
            };
            let done = match before.wait().await {
                Stored {
                    result: Ok(()),
                    hash: Some(mut hash),
                } => {
                    hash.update(&raw);
                    let (result, spare) =
                        store_chunk(&store, id, seq, (raw, packed, codec), stored).await;
                    raw = spare.unwrap_or_default();
                    Stored {
                        result,
                        hash: Some(hash),
                    }
                }
                Stored {
                    result: Ok(()),
                    hash: None,
                } => Stored {
                    result: Err(StoreError::Unhealthy),
                    hash: None,
                },
                before => before,
            };
            if done.result.is_err() {
                failed.store(true, Ordering::Release);
            }
            raw.clear();
            let mut spares = lock(&spares);
            // A buffer moved to the driver left an empty one behind.
            if spares.len() < 2 && raw.capacity() > 0 {
                spares.push(raw);
            }
            drop((slot, budget));
            done
        }));
        Ok(())
    }

    /// Waits until every chunk handed over is stored.
    pub async fn settle(&mut self) -> Result<(), StoreError> {
        let Some(h) = self.in_flight.take() else {
            return Ok(());
        };
        let done = Before::Writer(h).wait().await;
        self.hash = done.hash;
        done.result
    }

    /// Flushes, then sets ended_at, bytes, sha256, truncated, exit_status,
    /// chunks.
    pub async fn finish(mut self, exit_status: Option<u32>) -> Result<Summary, StoreError> {
        // Room for it is kept (`keep`), truncated or not.
        let mark = self.pending.len();
        frames::write(&mut self.pending, self.started.elapsed(), Frame::End, &[]);
        self.bytes += (self.pending.len() - mark) as u64;
        self.flush().await?;
        self.settle().await?;
        let sha256 = hex(self
            .hash
            .take()
            .ok_or(StoreError::Unhealthy)?
            .finish()
            .as_ref());
        sqlx::query(
            "UPDATE recordings SET ended_at = $1, bytes = $2, sha256 = $3, truncated = $4, \
             exit_status = $5, chunks = $6 WHERE id = $7",
        )
        .bind(now_micros())
        .bind(i64::try_from(self.bytes).unwrap_or(i64::MAX))
        .bind(&sha256)
        .bind(i64::from(self.truncated))
        .bind(exit_status.map(i64::from))
        .bind(self.chunks)
        .bind(self.id)
        .execute(self.store.pool())
        .await?;
        Ok(Summary {
            id: self.id,
            bytes: self.bytes,
            sha256,
            truncated: self.truncated,
            exit_status,
        })
    }
}

/// Chunks (about 1 MiB each) one recording may have handed over and not yet
/// stored. A database write can stall for tens of milliseconds (a
/// checkpoint's fsync holds up the filesystem's journal, and the write that
/// appends to the WAL waits on it); at 100 MB/s that is several chunks, and
/// with fewer slots the relay, and the session, would stand still meanwhile.
const IN_FLIGHT: usize = 16;

/// Chunks all recordings of this process may have in flight together: what
/// bounds the memory that recordings waiting for the database hold
/// (64 MiB of content, and beside a chunk LZ4 shrank its smaller LZ4 block,
/// so under 128 MiB), however many sessions print at once. A recording
/// waits for a permit here after one of its own [`IN_FLIGHT`] slots.
const IN_FLIGHT_PER_PROCESS: usize = 64;

static BUDGET: Semaphore = Semaphore::const_new(IN_FLIGHT_PER_PROCESS);

/// What a chunk's writer hands on: its result (or the first error before
/// it) and the running hash (`None` if a writer was lost).
struct Stored {
    result: Result<(), StoreError>,
    hash: Option<digest::Context>,
}

/// What a chunk's writer waits for.
enum Before {
    /// The first chunk after a settle: the hash so far.
    Hash(Option<digest::Context>),
    Writer(tokio::task::JoinHandle<Stored>),
}

impl Before {
    async fn wait(self) -> Stored {
        match self {
            Before::Hash(hash) => Stored {
                result: Ok(()),
                hash,
            },
            Before::Writer(h) => h.await.unwrap_or_else(|e| Stored {
                result: Err(StoreError::Query(sqlx::Error::Protocol(e.to_string()))),
                hash: None,
            }),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Store chunk `seq` of recording `id`, as [`encode`] made it (`raw`, and
/// `packed` if LZ4 shrank it), with the row's running size (`stored`:
/// content up to its end). Returns `raw` back for reuse unless it was
/// stored as it is (then it is moved to the database driver, not copied).
async fn store_chunk(
    store: &Store,
    id: i64,
    seq: i64,
    (raw, packed, codec): (Vec<u8>, Option<Vec<u8>>, Codec),
    stored: u64,
) -> (Result<(), StoreError>, Option<Vec<u8>>) {
    let len = raw.len() as i64;
    let (data, spare) = match packed {
        Some(packed) => (packed, Some(raw)),
        None => (raw, None),
    };
    let result = async {
        // The chunk first, then the row that counts it, each committed on
        // its own: on SQLite they are in two files
        // (crate::store::recordings_file), whose commits are not atomic
        // together. A crash between them leaves a chunk the row does not
        // count yet (read as usual), never a row that counts a chunk that
        // is not there.
        let chunk = Chunk {
            id,
            seq,
            data,
            raw_bytes: len,
            codec,
        };
        match store.chunk_pool() {
            Some(chunks) => {
                chunk.insert().execute(chunks).await?;
            }
            None => {
                chunk.insert().execute(store.pool()).await?;
            }
        }
        sqlx::query("UPDATE recordings SET bytes = $1, chunks = $2 WHERE id = $3")
            .bind(i64::try_from(stored).unwrap_or(i64::MAX))
            .bind(seq + 1)
            .bind(id)
            .execute(store.pool())
            .await?;
        Ok(())
    }
    .await;
    (result, spare)
}

/// A `recording_chunks` row to insert.
struct Chunk {
    id: i64,
    seq: i64,
    data: Vec<u8>,
    raw_bytes: i64,
    codec: Codec,
}

impl Chunk {
    /// The INSERT for either pool ([`Store::chunk_pool`] or the `Any` one).
    fn insert<DB: sqlx::Database>(self) -> sqlx::query::Query<'static, DB, DB::Arguments>
    where
        i64: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
        Vec<u8>: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
        &'static str: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
    {
        sqlx::query(
            "INSERT INTO recording_chunks (recording_id, seq, data, raw_bytes, codec) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(self.id)
        .bind(self.seq)
        .bind(self.data)
        .bind(self.raw_bytes)
        .bind(self.codec.as_str())
    }
}

/// How a chunk is stored (`recording_chunks.codec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    /// An LZ4 block (the block format, without a frame).
    Lz4,
    /// The content as it is.
    None,
}

impl Codec {
    fn as_str(self) -> &'static str {
        match self {
            Codec::Lz4 => "lz4",
            Codec::None => "none",
        }
    }

    fn parse(s: &str) -> Option<Codec> {
        match s {
            "lz4" => Some(Codec::Lz4),
            "none" => Some(Codec::None),
            _ => None,
        }
    }
}

/// LZ4 tries this much of a chunk first: if that does not shrink by a
/// sixteenth, the chunk is stored as it is.
const SAMPLE: usize = 64 * 1024;

/// A chunk as stored. LZ4 blocks: fast enough that the relay's other work,
/// not the compression, bounds a recorded session's throughput (zlib, even
/// at its fastest level, did not keep up: docs/BENCHMARKS.md "Recorded
/// targets"). Output LZ4 cannot shrink (compressed or random data, base64
/// of it) is stored as it is, after LZ4 has seen only its first 64 KiB
/// (as filesystems that compress abort early): compressing it would cost
/// CPU beside the relay and save nothing. Such a chunk is borrowed, not
/// copied (and then moved to the database driver, see [`store_chunk`]).
/// Without `sample` (the recording's last chunk shrank: its output is most
/// likely still text) LZ4 goes straight to the whole chunk, instead of
/// compressing its first 64 KiB twice; a chunk that then does not shrink is
/// stored as it is, and the next one is sampled again.
fn encode(raw: &[u8], sample: bool) -> (Codec, Cow<'_, [u8]>) {
    let start = &raw[..raw.len().min(SAMPLE)];
    if sample && lz4_flex::block::compress(start).len() * 16 > start.len() * 15 {
        return (Codec::None, Cow::Borrowed(raw));
    }
    let packed = lz4_flex::block::compress(raw);
    if packed.len() >= raw.len() {
        return (Codec::None, Cow::Borrowed(raw));
    }
    (Codec::Lz4, Cow::Owned(packed))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A recording's `recording.end` event is written right after its row ends;
/// retention looks this far past `before` for the events that still name
/// a recording.
const END_EVENT_SLACK: i64 = 3_600_000_000;

/// Retention: delete the recordings (rows and chunks) that ended before
/// `before` (unix µs), and those a crash left unended that began before it
/// and whose forward is no longer open. A recording whose `recording.end`
/// event is still in the audit trail stays (`audit verify` checks the
/// content against that event; the recording goes at a later pass, after
/// the event was pruned). Returns the number deleted.
pub async fn prune(store: &Store, before: i64) -> Result<u64, sqlx::Error> {
    let candidates: Vec<i64> = sqlx::query(
        "SELECT r.id FROM recordings r WHERE (r.ended_at IS NOT NULL AND r.ended_at < $1) \
         OR (r.ended_at IS NULL AND r.started_at < $1 AND NOT EXISTS \
             (SELECT 1 FROM forwards f WHERE f.id = r.session_id AND f.ended_at IS NULL))",
    )
    .bind(before)
    .fetch_all(store.pool())
    .await?
    .iter()
    .map(|r| r.try_get("id"))
    .collect::<Result<_, _>>()?;
    if candidates.is_empty() {
        return Ok(0);
    }
    let mut named = std::collections::HashSet::new();
    for r in sqlx::query("SELECT detail FROM audit_events WHERE kind = $1 AND at < $2")
        .bind(crate::audit::EventKind::RecordingEnd.as_str())
        .bind(before.saturating_add(END_EVENT_SLACK))
        .fetch_all(store.pool())
        .await?
    {
        let detail: Option<String> = r.try_get("detail")?;
        let id = detail
            .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
            .and_then(|d| d.get("recording_id").and_then(serde_json::Value::as_i64));
        named.extend(id);
    }
    let mut deleted = 0;
    for id in candidates.into_iter().filter(|id| !named.contains(id)) {
        let mut tx = store.pool().begin().await?;
        let gone = async {
            sqlx::query("DELETE FROM recording_chunks WHERE recording_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM recordings WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
        }
        .await;
        match gone {
            Ok(gone) => {
                tx.commit().await?;
                deleted += gone.rows_affected();
            }
            Err(e) => {
                crate::store::roll_back(tx, "recording prune").await;
                return Err(e);
            }
        }
    }
    Ok(deleted)
}

/// One `recordings` row, fields as DESIGN.md §10 (`recordings list --json`)
/// plus node, channel, term, size, exit status and chunk count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordingRow {
    pub id: i64,
    pub node: String,
    pub connection_id: String,
    pub session_id: i64,
    pub channel: i64,
    pub user: String,
    pub target: String,
    pub login: String,
    pub kind: Kind,
    pub command: Option<String>,
    pub term: Option<String>,
    pub width: i64,
    pub height: i64,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_seconds: Option<f64>,
    /// Size of the uncompressed content (so far, while it records).
    pub bytes: i64,
    /// Set when the recording ended.
    pub sha256: Option<String>,
    pub truncated: bool,
    pub exit_status: Option<i64>,
    pub chunks: i64,
}

const COLUMNS: &str = "SELECT id, node, connection_id, session_id, channel, user_name, target, login, kind, \
     command, term, width, height, started_at, ended_at, bytes, sha256, truncated, exit_status, chunks \
     FROM recordings";

fn row(r: &AnyRow) -> Result<RecordingRow, sqlx::Error> {
    let started: i64 = r.try_get("started_at")?;
    let ended: Option<i64> = r.try_get("ended_at")?;
    let kind: String = r.try_get("kind")?;
    let kind = Kind::parse(&kind).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: "kind".into(),
        source: format!("unknown recording kind {kind:?}").into(),
    })?;
    let truncated: i64 = r.try_get("truncated")?;
    Ok(RecordingRow {
        id: r.try_get("id")?,
        node: r.try_get("node")?,
        connection_id: r.try_get("connection_id")?,
        session_id: r.try_get("session_id")?,
        channel: r.try_get("channel")?,
        user: r.try_get("user_name")?,
        target: r.try_get("target")?,
        login: r.try_get("login")?,
        kind,
        command: r.try_get("command")?,
        term: r.try_get("term")?,
        width: r.try_get("width")?,
        height: r.try_get("height")?,
        started_at: rfc3339_micros(started),
        ended_at: ended.map(rfc3339_micros),
        duration_seconds: ended.map(|e| (e - started).max(0) as f64 / 1e6),
        bytes: r.try_get("bytes")?,
        sha256: r.try_get("sha256")?,
        truncated: truncated != 0,
        exit_status: r.try_get("exit_status")?,
        chunks: r.try_get("chunks")?,
    })
}

/// Filters of `recordings list`; times in unix microseconds.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub user: Option<String>,
    pub target: Option<String>,
    pub since: Option<i64>,
    pub session_id: Option<i64>,
    /// At most this many rows (default 1000).
    pub limit: Option<i64>,
}

/// Recordings, newest first.
pub async fn list(store: &Store, f: &Filter) -> Result<Vec<RecordingRow>, StoreError> {
    enum Param {
        Text(String),
        Int(i64),
    }
    let mut params = Vec::new();
    let mut conds = Vec::new();
    let mut cond = |column_op: &str, p: Option<Param>| {
        if let Some(p) = p {
            params.push(p);
            conds.push(format!("{column_op} ${}", params.len()));
        }
    };
    cond("user_name =", f.user.clone().map(Param::Text));
    cond("target =", f.target.clone().map(Param::Text));
    cond("started_at >=", f.since.map(Param::Int));
    cond("session_id =", f.session_id.map(Param::Int));
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    let sql = format!(
        "{COLUMNS}{filter} ORDER BY started_at DESC, id DESC LIMIT {}",
        f.limit.unwrap_or(1000).max(0)
    );
    // Only fixed column names, `$n` placeholders and a number are formatted in.
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for p in params {
        q = match p {
            Param::Text(s) => q.bind(s),
            Param::Int(i) => q.bind(i),
        };
    }
    let rows = q.fetch_all(store.pool()).await?;
    Ok(rows.iter().map(row).collect::<Result<_, _>>()?)
}

pub async fn get(store: &Store, id: i64) -> Result<Option<RecordingRow>, StoreError> {
    let sql = format!("{COLUMNS} WHERE id = $1");
    let r = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(store.pool())
        .await?;
    Ok(r.as_ref().map(row).transpose()?)
}

/// A recording's content, uncompressed: as stored ([`stored`]) or as
/// asciicast v2 ([`content`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub bytes: Vec<u8>,
    /// Lowercase hex SHA-256 of the stored content (what the recording's
    /// row and its `recording.end` event name).
    pub sha256: String,
    /// Does it match the SHA-256 stored at the end? None while the
    /// recording has none (not finished, or its node stopped first).
    pub sha256_ok: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("no recording {0}")]
    NotFound(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A chunk is missing, cannot be decompressed or has another size than
    /// stored with it.
    #[error("recording {id}: chunk {seq}: {problem}")]
    Corrupt { id: i64, seq: i64, problem: String },
    /// The chunks are whole but their frames are not.
    #[error("recording {id}: {source}")]
    Frames {
        id: i64,
        source: super::frames::FrameError,
    },
}

/// The content of recording `id` as asciicast v2 ([`stored`], converted
/// by [`super::frames::to_asciicast`]); `sha256` stays that of the stored
/// content.
pub async fn content(store: &Store, id: i64) -> Result<Content, ContentError> {
    let mut c = stored(store, id).await?;
    match frames::to_asciicast(&c.bytes) {
        Ok(Cow::Borrowed(_)) => {}
        Ok(Cow::Owned(cast)) => c.bytes = cast,
        Err(source) => return Err(ContentError::Frames { id, source }),
    }
    Ok(c)
}

/// The stored content of recording `id`: its chunks decompressed in seq
/// order, checked against the stored chunk count, sizes and SHA-256.
pub async fn stored(store: &Store, id: i64) -> Result<Content, ContentError> {
    let rec = get(store, id).await?.ok_or(ContentError::NotFound(id))?;
    let chunks = sqlx::query(
        "SELECT seq, data, raw_bytes, codec FROM recording_chunks WHERE recording_id = $1 \
         ORDER BY seq",
    )
    .bind(id)
    .fetch_all(store.pool())
    .await
    .map_err(StoreError::from)?;
    let corrupt = |seq, problem: &str| ContentError::Corrupt {
        id,
        seq,
        problem: problem.to_string(),
    };
    let mut bytes = Vec::with_capacity(usize::try_from(rec.bytes).unwrap_or(0));
    for (expected, c) in (0_i64..).zip(&chunks) {
        let seq: i64 = c.try_get("seq").map_err(StoreError::from)?;
        let data: Vec<u8> = c.try_get("data").map_err(StoreError::from)?;
        let raw: i64 = c.try_get("raw_bytes").map_err(StoreError::from)?;
        let codec: String = c.try_get("codec").map_err(StoreError::from)?;
        if seq != expected {
            return Err(corrupt(expected, "missing"));
        }
        let raw = u64::try_from(raw).map_err(|_| corrupt(seq, "negative size"))?;
        // Never inflate past the stored size, nor trust a size no writer
        // makes (a bomb stops there).
        if raw > MAX_CHUNK {
            return Err(corrupt(seq, "larger than any chunk a recorder writes"));
        }
        match Codec::parse(&codec) {
            Some(Codec::Lz4) => {
                let before = bytes.len();
                bytes.resize(before + raw as usize, 0);
                match lz4_flex::block::decompress_into(&data, &mut bytes[before..]) {
                    Ok(n) if n as u64 == raw => {}
                    Ok(_) => return Err(corrupt(seq, "size differs from the stored size")),
                    Err(e) => return Err(corrupt(seq, &format!("cannot decompress: {e}"))),
                }
            }
            Some(Codec::None) if data.len() as u64 == raw => bytes.extend_from_slice(&data),
            Some(Codec::None) => return Err(corrupt(seq, "size differs from the stored size")),
            None => {
                return Err(corrupt(
                    seq,
                    &format!("unknown codec {:?}", clean(&codec, 16)),
                ));
            }
        }
    }
    let count = chunks.len() as i64;
    if count < rec.chunks {
        return Err(corrupt(count, "missing"));
    }
    let sha256 = hex(digest::digest(&digest::SHA256, &bytes).as_ref());
    let sha256_ok = rec.sha256.as_ref().map(|s| *s == sha256);
    Ok(Content {
        bytes,
        sha256,
        sha256_ok,
    })
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
