//! `portvakt audit export` and `portvakt audit verify --file`: a slice of
//! the hash chains as JSON Lines that can be checked offline, on another
//! machine, without the database (format: docs/AUDIT.md "Export").

use std::collections::HashMap;
use std::io::{BufRead, Write};

use serde_json::{Value, json};
use sqlx::Row;

use super::EventKind;
use super::checkpoint::VerifyingKey;
use super::verify::{EVENTS, NodeReport, Problem, ProblemKind, Report};
use super::walk::{ChainRow, External, Keys, Walker};
use crate::reasons::EventReason;
use crate::store::Store;

/// Names the format; the first line of every export.
pub const FORMAT: &str = "portvakt.audit.export.v1";

const PAGE: i64 = 1000;

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct Range {
    pub node: Option<String>,
    /// Unix µs.
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exported {
    pub rows: u64,
    /// Rows after the last checkpoint written (not covered by a signature
    /// yet: `verify --file` refuses them).
    pub unsigned: u64,
}

/// Write the chains' rows in `range` to `out`, each node's followed by the
/// rows up to the first checkpoint that covers them.
pub async fn export(
    store: &Store,
    range: &Range,
    out: &mut impl Write,
) -> Result<Exported, ExportError> {
    let nodes: Vec<String> = match &range.node {
        Some(n) => vec![n.clone()],
        None => sqlx::query(
            "SELECT DISTINCT node FROM audit_events WHERE seq IS NOT NULL ORDER BY node",
        )
        .fetch_all(store.pool())
        .await?
        .iter()
        .map(|r| r.try_get("node"))
        .collect::<Result<_, _>>()?,
    };
    let header = json!({
        "type": "header",
        "format": FORMAT,
        "encoding": super::chain::ENCODING,
        "exported_at": crate::clock::rfc3339(std::time::SystemTime::now()),
        "since": range.since.map(crate::clock::rfc3339_micros),
        "until": range.until.map(crate::clock::rfc3339_micros),
    });
    writeln!(out, "{header}")?;
    let mut total = Exported::default();
    for node in nodes {
        let e = export_node(store, &node, range, out).await?;
        total.rows += e.rows;
        total.unsigned += e.unsigned;
    }
    out.flush()?;
    Ok(total)
}

async fn export_node(
    store: &Store,
    node: &str,
    range: &Range,
    out: &mut impl Write,
) -> Result<Exported, ExportError> {
    let keys = sqlx::query("SELECT detail FROM audit_events WHERE node = $1 AND kind = $2")
        .bind(node)
        .bind(EventKind::AuditCheckpoint.as_str())
        .fetch_all(store.pool())
        .await?;
    let mut seen: Vec<String> = Vec::new();
    for r in &keys {
        let detail: String = r.try_get("detail")?;
        let v: Value = serde_json::from_str(&detail).unwrap_or(Value::Null);
        if let Some(k) = v["key"].as_str()
            && !seen.iter().any(|s| s == k)
        {
            seen.push(k.to_string());
            writeln!(out, "{}", json!({"type": "key", "node": node, "key": k}))?;
        }
    }
    let bounds = sqlx::query(
        "SELECT (SELECT MIN(seq) FROM audit_events WHERE node = $1 AND seq IS NOT NULL AND at >= $2) AS first, \
                (SELECT MAX(seq) FROM audit_events WHERE node = $1 AND seq IS NOT NULL AND at <= $3) AS last",
    )
    .bind(node)
    .bind(range.since.unwrap_or(i64::MIN))
    .bind(range.until.unwrap_or(i64::MAX))
    .fetch_one(store.pool())
    .await?;
    let (Some(first), Some(last)) = (
        bounds.try_get::<Option<i64>, _>("first")?,
        bounds.try_get::<Option<i64>, _>("last")?,
    ) else {
        return Ok(Exported::default());
    };
    let mut done = Exported::default();
    let mut unsigned = 0u64;
    let mut after = first - 1;
    loop {
        let page = sqlx::query(
            "SELECT id, seq, at, kind, connection_id, user_name, source, reason, detail, prev_hash, hash \
             FROM audit_events WHERE node = $1 AND seq > $2 ORDER BY seq, id LIMIT $3",
        )
        .bind(node)
        .bind(after)
        .bind(PAGE)
        .fetch_all(store.pool())
        .await?;
        for r in &page {
            let (row, seq, covers) = row_line(node, r)?;
            writeln!(out, "{row}")?;
            done.rows += 1;
            unsigned += 1;
            after = seq;
            // Past the range, the rows up to the checkpoint that covers it.
            if covers {
                unsigned = 0;
                if seq > last {
                    return Ok(done);
                }
            }
        }
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    done.unsigned = unsigned;
    Ok(done)
}

/// A row as an export line, its `seq`, and whether it is a checkpoint
/// that covers the rows before it.
fn row_line(node: &str, r: &sqlx::any::AnyRow) -> Result<(Value, i64, bool), sqlx::Error> {
    let seq: i64 = r.try_get("seq")?;
    let kind: String = r.try_get("kind")?;
    let reason: Option<String> = r.try_get("reason")?;
    let covers = kind == EventKind::AuditCheckpoint.as_str()
        && reason.as_deref() != Some(EventReason::CheckpointPrune.as_str());
    let row = json!({
        "type": "row",
        "node": node,
        "id": r.try_get::<i64, _>("id")?,
        "seq": seq,
        "at": r.try_get::<i64, _>("at")?,
        "kind": kind,
        "user_name": r.try_get::<Option<String>, _>("user_name")?,
        "source": r.try_get::<Option<String>, _>("source")?,
        "connection_id": r.try_get::<Option<String>, _>("connection_id")?,
        "reason": reason,
        "detail": r.try_get::<String, _>("detail")?,
        "prev_hash": r.try_get::<Option<String>, _>("prev_hash")?,
        "hash": r.try_get::<Option<String>, _>("hash")?,
    });
    Ok((row, seq, covers))
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot write: {0}")]
    Io(#[from] std::io::Error),
}

/// Verify an export read from `input` (named `name` in messages) against
/// the pinned `keys`, and the checkpoints collected elsewhere. `Err`: the
/// file cannot be read as an export at all.
pub fn verify_file(
    input: impl BufRead,
    name: &str,
    keys: &[VerifyingKey],
    checkpoints: &[External],
) -> Result<Report, String> {
    let want: HashMap<&str, Vec<i64>> = checkpoints.iter().fold(HashMap::new(), |mut m, c| {
        m.entry(c.node.as_str())
            .or_default()
            .extend(super::walk::claimed_seq(&c.note));
        m
    });
    let mut walkers: Vec<Walker> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut header = false;
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("{name}: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(&line).map_err(|e| format!("{name}:{}: not JSON: {e}", n + 1))?;
        match v["type"].as_str() {
            Some("header") if v["format"] == FORMAT => header = true,
            Some("header") => {
                return Err(format!("{name}:{}: not a {FORMAT} export", n + 1));
            }
            Some("key") => {}
            Some("row") if header => {
                let (node, row) =
                    row_of(&v).ok_or(format!("{name}:{}: a row without its fields", n + 1))?;
                let i = *index.entry(node.clone()).or_insert_with(|| {
                    let seqs = want.get(node.as_str()).cloned().unwrap_or_default();
                    walkers.push(Walker::new(&node, Keys::Pinned(keys.to_vec()), true, seqs));
                    walkers.len() - 1
                });
                walkers[i].push(row.borrowed());
            }
            _ => return Err(format!("{name}:{}: not a line of a {FORMAT} export", n + 1)),
        }
    }
    if !header {
        return Err(format!("{name}: empty, or not a {FORMAT} export"));
    }
    let nodes: Vec<NodeReport> = walkers
        .into_iter()
        .map(|w| unsigned_is_a_problem(w.finish(checkpoints)))
        .collect();
    Ok(Report {
        intact: nodes.iter().all(|r| r.problems.is_empty()),
        nodes,
    })
}

/// In an export, rows no signature covers prove nothing: anyone may have
/// appended them.
fn unsigned_is_a_problem(mut r: NodeReport) -> NodeReport {
    if r.unsigned_rows > 0
        && let Some(last) = r.last_seq
    {
        let from = last - r.unsigned_rows + 1;
        r.problems.push(Problem {
            id: 0,
            table: EVENTS,
            row: String::new(),
            seq: Some(from),
            problem: ProblemKind::Unsigned,
            message: format!(
                "rows seq {from} to {last} are not covered by a checkpoint signed by the keys \
                 given: they prove nothing (export again after the node's next checkpoint)"
            ),
        });
    }
    r
}

fn row_of(v: &Value) -> Option<(String, ChainRow)> {
    let text = |k: &str| v[k].as_str().map(str::to_string);
    Some((
        text("node")?,
        ChainRow {
            id: v["id"].as_i64()?,
            seq: v["seq"].as_i64()?,
            at: v["at"].as_i64()?,
            kind: text("kind")?,
            user: text("user_name"),
            source: text("source"),
            connection_id: text("connection_id"),
            reason: text("reason"),
            detail: text("detail")?,
            prev_hash: text("prev_hash"),
            hash: text("hash"),
        },
    ))
}

/// Checkpoints collected outside the database, from a file of JSON lines:
/// portvakt's own JSON log (lines with `"event":"audit.checkpoint"`), or a
/// `checkpoint_file`. Other lines are skipped.
pub fn read_checkpoints(input: impl BufRead, name: &str) -> Result<Vec<External>, String> {
    let mut found = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("{name}: {e}"))?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["event"] != EventKind::AuditCheckpoint.as_str() {
            continue;
        }
        let (Some(node), Some(note)) = (v["node"].as_str(), v["note"].as_str()) else {
            continue;
        };
        found.push(External {
            node: node.to_string(),
            note: note.to_string(),
            from: format!("{name}:{}", n + 1),
        });
    }
    Ok(found)
}
