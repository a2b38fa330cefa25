//! `audit verify` for recordings (DESIGN.md §11 item 3): each chained
//! `recording.end` event names its recording's SHA-256 and size; the stored
//! chunks must still decompress to exactly that content.

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::Row;

use super::store::{ContentError, get, stored};
use crate::audit::EventKind;
use crate::audit::verify::{Problem, ProblemKind};
use crate::store::Store;

/// Events read per query.
const PAGE: i64 = 500;
/// Problems reported per node; past them the check stops (fix, run again).
const MAX_PROBLEMS: usize = 100;

/// The check `audit verify` runs for `node` (an [`crate::audit::verify::ExtraCheck`]).
pub fn check<'a>(
    store: &'a Store,
    node: &'a str,
) -> BoxFuture<'a, Result<Vec<Problem>, sqlx::Error>> {
    check_node(store, node).boxed()
}

async fn check_node(store: &Store, node: &str) -> Result<Vec<Problem>, sqlx::Error> {
    let mut problems = Vec::new();
    let mut after = i64::MIN;
    loop {
        let page = sqlx::query(
            "SELECT id, seq, detail FROM audit_events WHERE node = $1 AND kind = $2 \
             AND seq IS NOT NULL AND seq > $3 ORDER BY seq LIMIT $4",
        )
        .bind(node)
        .bind(EventKind::RecordingEnd.as_str())
        .bind(after)
        .bind(PAGE)
        .fetch_all(store.pool())
        .await?;
        for r in &page {
            let id: i64 = r.try_get("id")?;
            let seq: i64 = r.try_get("seq")?;
            after = seq;
            let detail: Option<String> = r.try_get("detail")?;
            let detail: Value = detail
                .and_then(|d| serde_json::from_str(&d).ok())
                .unwrap_or(Value::Null);
            if let Some(p) = one(store, id, seq, &detail).await? {
                problems.push(p);
                if problems.len() >= MAX_PROBLEMS {
                    return Ok(problems);
                }
            }
        }
        if (page.len() as i64) < PAGE {
            return Ok(problems);
        }
    }
}

/// The recording an end event names, checked against it.
async fn one(
    store: &Store,
    id: i64,
    seq: i64,
    detail: &Value,
) -> Result<Option<Problem>, sqlx::Error> {
    // A failed recording's end names no content.
    let (Some(rec), Some(sha), Some(bytes)) = (
        detail.get("recording_id").and_then(Value::as_i64),
        detail.get("sha256").and_then(Value::as_str),
        detail.get("bytes").and_then(Value::as_u64),
    ) else {
        return Ok(None);
    };
    let problem = |kind, message: String| Problem {
        id,
        table: "recordings",
        row: rec.to_string(),
        seq: Some(seq),
        problem: kind,
        message,
    };
    let row = match get(store, rec).await {
        Ok(Some(row)) => row,
        Ok(None) => {
            return Ok(Some(problem(
                ProblemKind::RecordingMissing,
                format!(
                    "recording {rec} is gone; its recording.end event names {bytes} bytes, SHA-256 {sha}"
                ),
            )));
        }
        Err(e) => return Err(store_err(e)),
    };
    if row.sha256.as_deref() != Some(sha) || u64::try_from(row.bytes).ok() != Some(bytes) {
        return Ok(Some(problem(
            ProblemKind::RecordingChanged,
            format!(
                "recording {rec}: the row says {} bytes, SHA-256 {}; its recording.end event says {bytes} bytes, {sha}",
                row.bytes,
                row.sha256.as_deref().unwrap_or("(none)")
            ),
        )));
    }
    match stored(store, rec).await {
        Ok(c) if c.sha256 == sha && c.bytes.len() as u64 == bytes => Ok(None),
        Ok(c) => Ok(Some(problem(
            ProblemKind::RecordingChanged,
            format!(
                "recording {rec}: the stored chunks hold {} bytes with SHA-256 {}; its recording.end event says {bytes} bytes, {sha}",
                c.bytes.len(),
                c.sha256
            ),
        ))),
        Err(ContentError::Store(e)) => Err(store_err(e)),
        Err(e) => Ok(Some(problem(ProblemKind::RecordingChanged, e.to_string()))),
    }
}

fn store_err(e: crate::store::StoreError) -> sqlx::Error {
    match e {
        crate::store::StoreError::Query(e) => e,
        e => sqlx::Error::Protocol(e.to_string()),
    }
}
