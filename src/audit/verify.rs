//! `portvakt audit verify`: walk each node's hash chain in `seq` order (see
//! [`super::walk`]), recompute every hash, check every signed checkpoint,
//! and report per node what diverges (docs/AUDIT.md "The hash chain",
//! "Signed checkpoints").

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::checkpoint::VerifyingKey;
use super::crosscheck::crosscheck;
use super::walk::{ChainRow, External, Keys, RowRef, Walker};
use crate::store::Store;

/// The table of the chained events.
pub const EVENTS: &str = "audit_events";

/// Rows read per query: memory stays bounded whatever the chain's length,
/// and no read transaction stays open for the whole walk (on SQLite that
/// would keep the writer's WAL from being checkpointed).
pub(super) const PAGE: i64 = 1000;

/// The columns the walker needs, in the order [`read_row`] and
/// [`super::verify_sqlite`] read them.
macro_rules! columns {
    () => {
        "id, seq, at, kind, connection_id, user_name, source, reason, detail, prev_hash, hash"
    };
}

/// A page of a node's chain in walk order: `$1` node, after (`$2` seq,
/// `$3` id), `$4` rows at most. One text for both readers.
pub(super) const CHAIN_PAGE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM audit_events WHERE node = $1 AND seq IS NOT NULL \
     AND (seq > $2 OR (seq = $2 AND id > $3)) ORDER BY seq, id LIMIT $4"
);

/// Why `audit verify` could not check a chain (what it found wrong is in
/// the [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Query(#[from] sqlx::Error),
    /// Reading the chain from the SQLite file directly.
    #[error("reading the audit chain from {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    /// A chained row's column holds a value of another type than the
    /// schema's: written outside portvakt.
    #[error("audit_events row {id}: column {column}: {source}")]
    Column {
        id: i64,
        column: &'static str,
        #[source]
        source: rusqlite::types::FromSqlError,
    },
    /// The thread that read the chain from SQLite failed.
    #[error("the audit chain reader stopped: {0}")]
    Reader(#[from] tokio::task::JoinError),
}

/// What `audit verify` found, as DESIGN.md §11's `--json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub intact: bool,
    pub nodes: Vec<NodeReport>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeReport {
    pub node: String,
    /// Chained rows checked.
    pub rows: i64,
    /// The newest `seq` seen (`None`: no chained row).
    pub last_seq: Option<i64>,
    /// The newest checkpoint in the chain that verified: `{"id", "seq",
    /// "time"}`.
    pub last_checkpoint: Option<serde_json::Value>,
    /// The oldest `seq` present: above 1 when retention pruned the oldest
    /// rows (then `pruned` says when and why).
    pub first_seq: Option<i64>,
    /// Rows written before the chain existed (migration 0005): not checked.
    pub unchained: i64,
    /// Checkpoints in the chain whose signature and hash verified.
    pub checkpoints: u64,
    /// Rows after the newest verified checkpoint: intact as far as the
    /// chain shows, but no signature covers them yet.
    pub unsigned_rows: i64,
    /// The newest `seq` a checkpoint from outside (`--checkpoints`) signed:
    /// no row up to it was removed.
    pub complete_to: Option<i64>,
    /// Without `--key`: the keys the checkpoints were signed with, as the
    /// database states them (pin them with `--key`).
    pub keys: Vec<String>,
    /// What retention deleted from the chain's start, by its signed record.
    pub pruned: Vec<Pruned>,
    /// How many rows from before the chain a verified checkpoint anchors
    /// (`None`: none does, and they are not protected).
    pub anchored: Option<i64>,
    /// The first divergence found, if any (and any unchained row written
    /// after the chain began).
    pub problems: Vec<Problem>,
}

/// A signed prune record: rows before `first_seq` were deleted.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Pruned {
    pub first_seq: i64,
    /// Rows older than this went (RFC 3339).
    pub before: String,
    /// Why: `retention 90d`.
    pub rule: String,
    /// When (RFC 3339).
    pub at: String,
    /// The record's row.
    pub id: i64,
}

impl NodeReport {
    pub fn new(node: &str) -> Self {
        NodeReport {
            node: node.to_string(),
            rows: 0,
            last_seq: None,
            last_checkpoint: None,
            first_seq: None,
            unchained: 0,
            checkpoints: 0,
            unsigned_rows: 0,
            complete_to: None,
            keys: Vec::new(),
            pruned: Vec::new(),
            anchored: None,
            problems: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    /// `id` of the audit event row where the chain breaks, or of the event
    /// a row of another table disagrees with (0: no such event).
    pub id: i64,
    /// The table of the row found wrong: `audit_events`, or for the
    /// cross-checks `forwards`, `connections`, `grants`.
    pub table: &'static str,
    /// That row's key in `table` (its `id`).
    pub row: String,
    pub seq: Option<i64>,
    pub problem: ProblemKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The row's hash does not match its content: the row was changed.
    HashMismatch,
    /// Sequence numbers are missing before this row: rows were deleted.
    SeqGap,
    /// The row does not link to the row before it: rows were reordered,
    /// replaced or inserted.
    PrevHashMismatch,
    /// A second row with the same `seq`: a forged or copied row.
    DuplicateSeq,
    /// A row without `seq` written after the node's chain began: inserted
    /// by hand.
    UnchainedRow,
    /// A `seq` below 1.
    BadSeq,
    /// A checkpoint whose signature is missing, malformed, or not by a key
    /// of this node (or not by a `--key` given).
    BadSignature,
    /// A signed checkpoint names a hash the chain does not have at its
    /// `seq`: the rows it covers were rewritten.
    CheckpointMismatch,
    /// A checkpoint from outside signs a `seq` past the chain's end: the
    /// newest rows were deleted.
    Truncated,
    /// The chain starts above seq 1 with no signed prune record for it.
    HeadDeleted,
    /// Rows of an export that no checkpoint signed by the keys given
    /// covers (`verify --file`).
    Unsigned,
    /// The rows from before the chain differ from what a checkpoint
    /// anchored.
    UnchainedChanged,
    /// A row of `forwards`, `connections` or `grants` that no chained
    /// event backs: inserted or changed by hand.
    RowUnbacked,
    /// A row of `forwards`, `connections` or `grants` that disagrees with
    /// the chained event backing it: changed by hand.
    RowMismatch,
    /// A recording whose content, size or SHA-256 is not what its chained
    /// `recording.end` event says: chunks edited, replaced or deleted.
    RecordingChanged,
    /// A recording a chained `recording.end` event names is gone.
    RecordingMissing,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::HashMismatch => "hash_mismatch",
            ProblemKind::SeqGap => "seq_gap",
            ProblemKind::PrevHashMismatch => "prev_hash_mismatch",
            ProblemKind::DuplicateSeq => "duplicate_seq",
            ProblemKind::UnchainedRow => "unchained_row",
            ProblemKind::BadSeq => "bad_seq",
            ProblemKind::BadSignature => "bad_signature",
            ProblemKind::CheckpointMismatch => "checkpoint_mismatch",
            ProblemKind::Truncated => "truncated",
            ProblemKind::HeadDeleted => "head_deleted",
            ProblemKind::Unsigned => "unsigned",
            ProblemKind::UnchainedChanged => "unchained_changed",
            ProblemKind::RowUnbacked => "row_unbacked",
            ProblemKind::RowMismatch => "row_mismatch",
            ProblemKind::RecordingChanged => "recording_changed",
            ProblemKind::RecordingMissing => "recording_missing",
        }
    }
}

impl Problem {
    /// A problem at an audit event row.
    pub(super) fn event(row: &RowRef<'_>, problem: ProblemKind, message: String) -> Problem {
        Problem {
            id: row.id,
            table: EVENTS,
            row: row.id.to_string(),
            seq: Some(row.seq),
            problem,
            message,
        }
    }
}

/// What to verify, and against what.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub node: Option<String>,
    /// Start at the first row at or after this time (unix µs): the chain's
    /// head is then not checked.
    pub since: Option<i64>,
    /// `--key`: checkpoints must be signed by one of these.
    pub keys: Vec<VerifyingKey>,
    /// `--checkpoints`: checkpoints collected outside the database.
    pub checkpoints: Vec<External>,
    /// Checks of tables kept by modules above `audit` (the recordings),
    /// run for each node after the cross-checks.
    pub extra: Option<ExtraCheck>,
    /// How the chain's rows are read.
    pub reader: ChainReader,
}

/// How [`verify_with`] reads a chain's rows. Either way every row goes
/// through the same [`Walker`]; only the reading differs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ChainReader {
    /// On SQLite, straight from the database file on a blocking thread
    /// ([`super::verify_sqlite`]: about twice as fast as the pool,
    /// docs/BENCHMARKS.md "Audit chain"); on PostgreSQL, the pool.
    #[default]
    Direct,
    /// Always through the sqlx pool (the tests hold the two readers to the
    /// same reports).
    Pool,
}

/// A check of a node's rows elsewhere against its chained events.
pub type ExtraCheck =
    for<'a> fn(
        &'a Store,
        &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Vec<Problem>, sqlx::Error>>;

impl Options {
    fn keys(&self) -> Keys {
        if self.keys.is_empty() {
            Keys::Stated
        } else {
            Keys::Pinned(self.keys.clone())
        }
    }
}

/// Verify every node's chain, or only `node`'s, trusting the keys the
/// database states.
pub async fn verify(store: &Store, node: Option<&str>) -> Result<Report, VerifyError> {
    let options = Options {
        node: node.map(str::to_string),
        ..Options::default()
    };
    verify_with(store, &options).await
}

/// Verify as `options` say.
pub async fn verify_with(store: &Store, options: &Options) -> Result<Report, VerifyError> {
    let nodes: Vec<String> = match &options.node {
        Some(n) => vec![n.to_string()],
        None => sqlx::query("SELECT DISTINCT node FROM audit_events ORDER BY node")
            .fetch_all(store.pool())
            .await?
            .iter()
            .map(|r| r.try_get("node"))
            .collect::<Result<_, _>>()?,
    };
    let mut reports = Vec::with_capacity(nodes.len());
    for n in nodes {
        reports.push(verify_node(store, &n, options).await?);
    }
    Ok(Report {
        intact: reports.iter().all(|r| r.problems.is_empty()),
        nodes: reports,
    })
}

fn read_row(r: &AnyRow) -> Result<ChainRow, sqlx::Error> {
    Ok(ChainRow {
        id: r.try_get("id")?,
        seq: r.try_get("seq")?,
        at: r.try_get("at")?,
        kind: r.try_get("kind")?,
        user: r.try_get("user_name")?,
        source: r.try_get("source")?,
        connection_id: r.try_get("connection_id")?,
        reason: r.try_get("reason")?,
        detail: r.try_get("detail")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

async fn verify_node(
    store: &Store,
    node: &str,
    options: &Options,
) -> Result<NodeReport, VerifyError> {
    let pool = store.pool();
    let counts = sqlx::query(
        "SELECT COUNT(*) - COUNT(seq) AS unchained, MIN(CASE WHEN seq IS NOT NULL THEN id END) AS first_id \
         FROM audit_events WHERE node = $1",
    )
    .bind(node)
    .fetch_one(pool)
    .await?;
    let first_id: Option<i64> = counts.try_get("first_id")?;
    let mut walker = Walker::new(
        node,
        options.keys(),
        options.since.is_some(),
        wanted(store, node, options).await?,
    );
    walker.report_mut().unchained = counts.try_get("unchained")?;
    let after = match options.since {
        Some(t) => (first_seq_since(store, node, t).await? - 1, i64::MAX),
        None => (i64::MIN, i64::MIN),
    };
    let walker = match (options.reader, store.sqlite_file()) {
        (ChainReader::Direct, Some(file)) => {
            let (file, node) = (file.to_path_buf(), node.to_string());
            tokio::task::spawn_blocking(move || {
                super::verify_sqlite::walk(&file, &node, after, &mut walker).map(|()| walker)
            })
            .await??
        }
        _ => {
            walk_pool(store, node, after, &mut walker).await?;
            walker
        }
    };
    let anchor = walker.anchor().cloned().filter(|_| options.since.is_none());
    let mut report = walker.finish(&options.checkpoints);
    if let Some((id, signed)) = anchor {
        report.anchored = Some(signed.rows);
        report
            .problems
            .extend(check_anchor(store, node, id, &signed).await?);
    }
    if let Some(p) = unchained_after(store, node, first_id).await? {
        report.problems.push(p);
    }
    report.problems.extend(crosscheck(store, node).await?);
    if let Some(extra) = options.extra {
        report.problems.extend(extra(store, node).await?);
    }
    Ok(report)
}

/// Feed `walker` the node's chain after `(seq, id)` through the sqlx pool.
async fn walk_pool(
    store: &Store,
    node: &str,
    (mut after_seq, mut after_id): (i64, i64),
    walker: &mut Walker,
) -> Result<(), sqlx::Error> {
    loop {
        let page = sqlx::query(CHAIN_PAGE)
            .bind(node)
            .bind(after_seq)
            .bind(after_id)
            .bind(PAGE)
            .fetch_all(store.pool())
            .await?;
        for r in &page {
            let row = read_row(r)?;
            (after_seq, after_id) = (row.seq, row.id);
            walker.push(row.borrowed());
        }
        if (page.len() as i64) < PAGE {
            return Ok(());
        }
    }
}

/// The `seq`s whose hashes checkpoints name: those of the node's prune
/// records, and those of the checkpoints given from outside.
async fn wanted(store: &Store, node: &str, options: &Options) -> Result<Vec<i64>, sqlx::Error> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM audit_events WHERE node = $1 AND kind = $2 AND reason = $3"
    ))
    .bind(node)
    .bind(super::EventKind::AuditCheckpoint.as_str())
    .bind(crate::reasons::EventReason::CheckpointPrune.as_str())
    .fetch_all(store.pool())
    .await?;
    let mut want = Vec::new();
    for r in &rows {
        want.extend(read_row(r)?.prune_claim_seq());
    }
    want.extend(
        options
            .checkpoints
            .iter()
            .filter(|c| c.node == node)
            .filter_map(|c| super::walk::claimed_seq(&c.note)),
    );
    Ok(want)
}

/// The rows from before the chain must still be what the checkpoint row
/// `id` anchored.
async fn check_anchor(
    store: &Store,
    node: &str,
    id: i64,
    signed: &super::chain::Anchor,
) -> Result<Option<Problem>, sqlx::Error> {
    let now = super::chain::unchained_anchor(store.pool(), node, i64::MIN).await?;
    if now == *signed {
        return Ok(None);
    }
    Ok(Some(Problem {
        id,
        table: EVENTS,
        row: id.to_string(),
        seq: None,
        problem: ProblemKind::UnchainedChanged,
        message: format!(
            "the node's {} rows from before the chain are not the {} that checkpoint row {id} \
             anchored: rows without seq were changed, added, reordered or deleted",
            now.rows, signed.rows
        ),
    }))
}

/// The `seq` of the node's first row at or after `since`.
async fn first_seq_since(store: &Store, node: &str, since: i64) -> Result<i64, sqlx::Error> {
    let r = sqlx::query(
        "SELECT MIN(seq) AS seq FROM audit_events WHERE node = $1 AND seq IS NOT NULL AND at >= $2",
    )
    .bind(node)
    .bind(since)
    .fetch_one(store.pool())
    .await?;
    Ok(r.try_get::<Option<i64>, _>("seq")?.unwrap_or(i64::MAX))
}

/// Rows without seq are the ones written before the chain began; one
/// written after the node's first chained row was put there by hand.
async fn unchained_after(
    store: &Store,
    node: &str,
    first_id: Option<i64>,
) -> Result<Option<Problem>, sqlx::Error> {
    let Some(first_id) = first_id else {
        return Ok(None);
    };
    let Some(r) = sqlx::query(
        "SELECT id FROM audit_events WHERE node = $1 AND seq IS NULL AND id > $2 ORDER BY id LIMIT 1",
    )
    .bind(node)
    .bind(first_id)
    .fetch_optional(store.pool())
    .await?
    else {
        return Ok(None);
    };
    let id: i64 = r.try_get("id")?;
    Ok(Some(Problem {
        id,
        table: EVENTS,
        row: id.to_string(),
        seq: None,
        problem: ProblemKind::UnchainedRow,
        message: format!(
            "row {id} has no seq but was written after the chain began (row {first_id}): \
             inserted outside portvakt's writer"
        ),
    }))
}
