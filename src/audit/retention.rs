//! Crash recovery and retention: rows a crash left open are closed at the
//! next start; old rows are deleted under `[database] retention`.

use std::time::{Duration, SystemTime};

use sqlx::Row;

use super::{Audit, Event, EventKind};
use crate::clock::{micros, now_micros};
use crate::reasons::CloseReason;
use crate::store::{Store, StoreError};

/// Forwards and connections of `node` that a crash (kill -9, power loss) left
/// open are closed as `interrupted` at the next start. Returns the number of
/// forwards marked.
pub async fn mark_interrupted(store: &Store, node: &str) -> Result<u64, StoreError> {
    let now = now_micros();
    let interrupted = CloseReason::Interrupted.as_str();
    let forwards = sqlx::query(
        "UPDATE forwards SET ended_at = $1, close_reason = $3 WHERE ended_at IS NULL AND node = $2",
    )
    .bind(now)
    .bind(node)
    .bind(interrupted)
    .execute(store.pool())
    .await?
    .rows_affected();
    sqlx::query(
        "UPDATE connections SET closed_at = $1, close_reason = $3 WHERE closed_at IS NULL AND node = $2",
    )
    .bind(now)
    .bind(node)
    .bind(interrupted)
    .execute(store.pool())
    .await?;
    Ok(forwards)
}

/// Rows deleted by one retention pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    pub forwards: u64,
    pub connections: u64,
    pub grants: u64,
}

/// Delete audit data older than `before` (unix µs): events, ended forwards,
/// closed connections, grants that ended. Rows of open forwards stay.
///
/// Events of a node's hash chain go only as a prefix of the chain, so that
/// pruning never leaves a gap in it: the rows before the node's oldest row
/// that is not old yet (`at` need not grow with `seq` by a few
/// milliseconds, or more when the clock was set back: such a row waits
/// for the ones before it). The node's newest chained row always stays,
/// so the chain goes on from it.
pub async fn prune(store: &Store, before: i64) -> Result<Pruned, sqlx::Error> {
    let run = |sql: &'static str| async move {
        sqlx::query(sql)
            .bind(before)
            .execute(store.pool())
            .await
            .map(|r| r.rows_affected())
    };
    Ok(Pruned {
        events: run("DELETE FROM audit_events WHERE seq IS NULL AND at < $1").await?
            + prune_chains(store, before).await?,
        forwards: run("DELETE FROM forwards WHERE ended_at IS NOT NULL AND ended_at < $1").await?,
        connections: run("DELETE FROM connections WHERE closed_at IS NOT NULL AND closed_at < $1").await?,
        grants: run("DELETE FROM grants WHERE expires_at < $1 OR (revoked_at IS NOT NULL AND revoked_at < $1)").await?,
    })
}

/// Delete, per node, the prefix of its chain that is older than `before`.
async fn prune_chains(store: &Store, before: i64) -> Result<u64, sqlx::Error> {
    let nodes =
        sqlx::query("SELECT DISTINCT node FROM audit_events WHERE seq IS NOT NULL AND at < $1")
            .bind(before)
            .fetch_all(store.pool())
            .await?;
    let mut deleted = 0;
    for r in &nodes {
        let node: String = r.try_get("node")?;
        let keep = sqlx::query(
            "SELECT COALESCE( \
                 (SELECT MIN(seq) FROM audit_events WHERE node = $1 AND seq IS NOT NULL AND at >= $2), \
                 (SELECT MAX(seq) FROM audit_events WHERE node = $1 AND seq IS NOT NULL)) AS keep",
        )
        .bind(&node)
        .bind(before)
        .fetch_one(store.pool())
        .await?;
        let Some(keep) = keep.try_get::<Option<i64>, _>("keep")? else {
            continue;
        };
        deleted += sqlx::query("DELETE FROM audit_events WHERE node = $1 AND seq < $2")
            .bind(&node)
            .bind(keep)
            .execute(store.pool())
            .await?
            .rows_affected();
    }
    Ok(deleted)
}

/// Prune once an hour after start, then once a day, and audit each pass.
pub async fn retention_loop(
    audit: Audit,
    keep: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        wait = Duration::from_secs(24 * 3600);
        let before = micros(SystemTime::now() - keep);
        match prune(audit.store(), before).await {
            Ok(p) => audit.emit(
                Event::new(EventKind::AuditPrune)
                    .detail("before", crate::clock::rfc3339_micros(before))
                    .detail("events", p.events)
                    .detail("forwards", p.forwards)
                    .detail("connections", p.connections)
                    .detail("grants", p.grants),
            ),
            Err(e) => tracing::error!(error = %e, "audit retention pass failed"),
        }
    }
}
