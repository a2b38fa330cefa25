//! `portvakt audit verify`: walk each node's hash chain in `seq` order,
//! recompute every hash and report the first divergence per node
//! (docs/AUDIT.md "The hash chain").
//!
//! Without signed checkpoints (a later slice) this proves that no row in
//! the middle of a chain was changed, deleted, inserted or reordered; it does
//! not detect a chain whose tail was rewritten consistently, or cut off.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::chain::{ChainFields, GENESIS, row_hash};
use crate::store::Store;

/// The table of the chained events.
pub const EVENTS: &str = "audit_events";

/// Rows read per query: memory stays bounded whatever the chain's length.
const PAGE: i64 = 1000;

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
    /// Signed checkpoints come in a later slice: always `None` for now.
    pub last_checkpoint: Option<serde_json::Value>,
    /// The oldest `seq` present: above 1 when retention pruned the oldest
    /// rows (which, without checkpoints, cannot be told from deleting them).
    pub first_seq: Option<i64>,
    /// Rows written before the chain existed (migration 0005): not checked.
    pub unchained: i64,
    /// The first divergence found, if any (and any unchained row written
    /// after the chain began).
    pub problems: Vec<Problem>,
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
        }
    }
}

/// Verify every node's chain, or only `node`'s.
pub async fn verify(store: &Store, node: Option<&str>) -> Result<Report, sqlx::Error> {
    let nodes: Vec<String> = match node {
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
        reports.push(verify_node(store, &n).await?);
    }
    Ok(Report {
        intact: reports.iter().all(|r| r.problems.is_empty()),
        nodes: reports,
    })
}

/// One stored row of a chain.
struct ChainRow {
    id: i64,
    seq: i64,
    at: i64,
    kind: String,
    user: Option<String>,
    source: Option<String>,
    connection_id: Option<String>,
    reason: Option<String>,
    detail: String,
    prev_hash: Option<String>,
    hash: Option<String>,
}

impl ChainRow {
    fn read(r: &AnyRow) -> Result<ChainRow, sqlx::Error> {
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

    fn computed_hash(&self, node: &str) -> Option<String> {
        Some(row_hash(&ChainFields {
            node,
            seq: self.seq,
            at: self.at,
            kind: &self.kind,
            user: self.user.as_deref(),
            source: self.source.as_deref(),
            connection_id: self.connection_id.as_deref(),
            reason: self.reason.as_deref(),
            detail: &self.detail,
            prev_hash: self.prev_hash.as_deref()?,
        }))
    }
}

async fn verify_node(store: &Store, node: &str) -> Result<NodeReport, sqlx::Error> {
    let counts = sqlx::query(
        "SELECT COUNT(*) - COUNT(seq) AS unchained, MIN(CASE WHEN seq IS NOT NULL THEN id END) AS first_id \
         FROM audit_events WHERE node = $1",
    )
    .bind(node)
    .fetch_one(store.pool())
    .await?;
    let unchained: i64 = counts.try_get("unchained")?;
    let first_id: Option<i64> = counts.try_get("first_id")?;
    let mut report = NodeReport {
        node: node.to_string(),
        rows: 0,
        last_seq: None,
        last_checkpoint: None,
        first_seq: None,
        unchained,
        problems: Vec::new(),
    };

    // (seq, id, hash) of the row before.
    let mut prev: Option<(i64, i64, Option<String>)> = None;
    let mut broken = false;
    let (mut after_seq, mut after_id) = (i64::MIN, i64::MIN);
    loop {
        let page = sqlx::query(
            "SELECT id, seq, at, kind, connection_id, user_name, source, reason, detail, prev_hash, hash \
             FROM audit_events WHERE node = $1 AND seq IS NOT NULL AND (seq > $2 OR (seq = $2 AND id > $3)) \
             ORDER BY seq, id LIMIT $4",
        )
        .bind(node)
        .bind(after_seq)
        .bind(after_id)
        .bind(PAGE)
        .fetch_all(store.pool())
        .await?;
        for r in &page {
            let row = ChainRow::read(r)?;
            report.rows += 1;
            report.last_seq = Some(row.seq);
            if report.first_seq.is_none() {
                report.first_seq = Some(row.seq);
            }
            if !broken && let Some(p) = check(node, &row, prev.as_ref()) {
                report.problems.push(p);
                // Past the first divergence every link is suspect: report
                // that one, keep counting.
                broken = true;
            }
            (after_seq, after_id) = (row.seq, row.id);
            prev = Some((row.seq, row.id, row.hash));
        }
        if (page.len() as i64) < PAGE {
            break;
        }
    }

    // Rows without seq are the ones written before the chain began; one
    // written after the node's first chained row was put there by hand.
    if let Some(first_id) = first_id
        && let Some(r) = sqlx::query(
            "SELECT id FROM audit_events WHERE node = $1 AND seq IS NULL AND id > $2 ORDER BY id LIMIT 1",
        )
        .bind(node)
        .bind(first_id)
        .fetch_optional(store.pool())
        .await?
    {
        let id: i64 = r.try_get("id")?;
        report.problems.push(Problem {
            id,
            table: EVENTS,
            row: id.to_string(),
            seq: None,
            problem: ProblemKind::UnchainedRow,
            message: format!(
                "row {id} has no seq but was written after the chain began (row {first_id}): \
                 inserted outside portvakt's writer"
            ),
        });
    }
    Ok(report)
}

/// The first thing wrong with `row`, given the row before it in the chain.
fn check(node: &str, row: &ChainRow, prev: Option<&(i64, i64, Option<String>)>) -> Option<Problem> {
    let problem = |kind: ProblemKind, message: String| {
        Some(Problem {
            id: row.id,
            table: EVENTS,
            row: row.id.to_string(),
            seq: Some(row.seq),
            problem: kind,
            message,
        })
    };
    let (id, seq) = (row.id, row.seq);
    if let Some((prev_seq, prev_id, _)) = prev
        && *prev_seq == seq
    {
        return problem(
            ProblemKind::DuplicateSeq,
            format!("row {id} has seq {seq}, as row {prev_id} has: a forged or copied row"),
        );
    }
    if seq < 1 {
        return problem(
            ProblemKind::BadSeq,
            format!("row {id} has seq {seq}: sequence numbers start at 1"),
        );
    }
    let computed = row.computed_hash(node);
    if computed.is_none() || computed != row.hash {
        return problem(
            ProblemKind::HashMismatch,
            format!(
                "row {id} (seq {seq}): its hash does not match its content: the row was changed"
            ),
        );
    }
    let stored_prev = row.prev_hash.as_deref().unwrap_or_default();
    match prev {
        Some((prev_seq, prev_id, prev_hash)) => {
            if seq > prev_seq + 1 {
                let missing = if seq == prev_seq + 2 {
                    format!("seq {} is", prev_seq + 1)
                } else {
                    format!("seq {} to {} are", prev_seq + 1, seq - 1)
                };
                return problem(
                    ProblemKind::SeqGap,
                    format!(
                        "row {id} (seq {seq}) follows row {prev_id} (seq {prev_seq}): \
                         {missing} missing: rows were deleted"
                    ),
                );
            }
            if Some(stored_prev) != prev_hash.as_deref() {
                return problem(
                    ProblemKind::PrevHashMismatch,
                    format!(
                        "row {id} (seq {seq}) does not link to row {prev_id} (seq {prev_seq}) \
                         before it: rows were reordered, replaced or inserted"
                    ),
                );
            }
        }
        None if seq == 1 && stored_prev != GENESIS => {
            return problem(
                ProblemKind::PrevHashMismatch,
                format!(
                    "row {id} (seq 1) starts the chain but its prev_hash is not the genesis \
                     value: rows were reordered, replaced or inserted"
                ),
            );
        }
        None => {}
    }
    None
}
