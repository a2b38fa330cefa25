//! Crash recovery and retention: rows a crash left open are closed at the
//! next start; old rows are deleted under `[database] retention`.

use std::time::{Duration, SystemTime};

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
pub async fn prune(store: &Store, before: i64) -> Result<Pruned, sqlx::Error> {
    let run = |sql: &'static str| async move {
        sqlx::query(sql)
            .bind(before)
            .execute(store.pool())
            .await
            .map(|r| r.rows_affected())
    };
    Ok(Pruned {
        events: run("DELETE FROM audit_events WHERE at < $1").await?,
        forwards: run("DELETE FROM forwards WHERE ended_at IS NOT NULL AND ended_at < $1").await?,
        connections: run("DELETE FROM connections WHERE closed_at IS NOT NULL AND closed_at < $1").await?,
        grants: run("DELETE FROM grants WHERE expires_at < $1 OR (revoked_at IS NOT NULL AND revoked_at < $1)").await?,
    })
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
