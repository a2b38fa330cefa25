//! Crash recovery and retention: rows a crash left open are closed at the
//! next start; old rows are deleted under `[database] retention`.

use std::time::{Duration, SystemTime};

use sqlx::Row;

use super::{Audit, Event, EventKind, chain};
use crate::clock::micros;
use crate::reasons::CloseReason;
use crate::store::StoreError;

/// Forwards and connections of this node that a crash (kill -9, power
/// loss) left open are closed as `interrupted` at the next start, each with
/// its `forward.close` or `connection.close` event (taking the row's time),
/// so that `audit verify` finds every closed row backed by the chain.
/// Returns the number of forwards marked.
pub async fn mark_interrupted(audit: &Audit) -> Result<u64, StoreError> {
    let (store, node) = (audit.store(), audit.node());
    let at = SystemTime::now();
    let now = micros(at);
    let interrupted = CloseReason::Interrupted.as_str();
    let forwards = sqlx::query(
        "UPDATE forwards SET ended_at = $1, close_reason = $3 WHERE ended_at IS NULL AND node = $2 \
         RETURNING id, connection_id, user_name, auth_method, source, target, host, port, address, \
         bytes_to_target, bytes_from_target",
    )
    .bind(now)
    .bind(node)
    .bind(interrupted)
    .fetch_all(store.pool())
    .await?;
    let connections = sqlx::query(
        "UPDATE connections SET closed_at = $1, close_reason = $3 WHERE closed_at IS NULL AND node = $2 \
         RETURNING id, source, user_name",
    )
    .bind(now)
    .bind(node)
    .bind(interrupted)
    .fetch_all(store.pool())
    .await?;
    let mut events = Vec::with_capacity(forwards.len() + connections.len());
    for r in &forwards {
        events.push(forward_interrupted(r, at)?);
    }
    for r in &connections {
        let mut ev = Event::new(EventKind::ConnectionClose)
            .at(at)
            .reason(CloseReason::Interrupted);
        ev.connection_id = Some(r.try_get("id")?);
        ev.source = Some(r.try_get("source")?);
        ev.user = r.try_get("user_name")?;
        events.push(ev);
    }
    let last = events.len();
    for (i, ev) in events.into_iter().enumerate() {
        // Every 256th, and the last, waits for the database: the queue
        // never fills, and the events are stored before serving begins.
        if i % 256 == 255 || i + 1 == last {
            audit.record(ev).await;
        } else {
            audit.emit(ev);
        }
    }
    Ok(forwards.len() as u64)
}

/// The `forward.close` of a forward row closed as interrupted.
fn forward_interrupted(r: &sqlx::any::AnyRow, at: SystemTime) -> Result<Event, sqlx::Error> {
    let mut ev = Event::new(EventKind::ForwardClose)
        .at(at)
        .reason(CloseReason::Interrupted.for_forwards())
        .detail("forward_id", r.try_get::<i64, _>("id")?)
        .detail("host", r.try_get::<String, _>("host")?)
        .detail("port", r.try_get::<i64, _>("port")?)
        .detail("auth_method", r.try_get::<String, _>("auth_method")?)
        .detail("bytes_to_target", r.try_get::<i64, _>("bytes_to_target")?)
        .detail(
            "bytes_from_target",
            r.try_get::<i64, _>("bytes_from_target")?,
        );
    if let Some(t) = r.try_get::<Option<String>, _>("target")? {
        ev = ev.detail("target", t);
    }
    if let Some(a) = r.try_get::<Option<String>, _>("address")? {
        ev = ev.detail("address", a);
    }
    ev.connection_id = Some(r.try_get("connection_id")?);
    ev.source = Some(r.try_get("source")?);
    ev.user = Some(r.try_get("user_name")?);
    Ok(ev)
}

/// Rows deleted by one retention pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    pub forwards: u64,
    pub connections: u64,
    pub grants: u64,
    pub recordings: u64,
}

/// Delete audit data older than `before` (unix µs): events, ended forwards,
/// closed connections, grants that ended, recordings (after their events:
/// [`crate::recording::store::prune`]). Rows of open forwards stay.
/// `rule` names why (`retention 90d`), for the signed record.
///
/// Of the audit events, only this node's go, by its writer's key: first a
/// signed `audit.checkpoint` (reason `checkpoint_prune`) says where the
/// chain will start, what the last deleted row's hash was, and (when rows
/// from before the chain go too) the anchor of those that stay; then the
/// rows go, so the rest verifies (docs/AUDIT.md). Without a signing key no
/// event is deleted. Other nodes prune their own; events of CLI commands
/// (`NODE (cli)`) and of nodes that no longer run are kept.
pub async fn prune(audit: &Audit, before: i64, rule: &str) -> Result<Pruned, sqlx::Error> {
    let store = audit.store();
    let run = |sql: &'static str| async move {
        sqlx::query(sql)
            .bind(before)
            .execute(store.pool())
            .await
            .map(|r| r.rows_affected())
    };
    let events = prune_events(audit, before, rule).await?;
    Ok(Pruned {
        events,
        recordings: crate::recording::store::prune(store, before).await?,
        forwards: run("DELETE FROM forwards WHERE ended_at IS NOT NULL AND ended_at < $1").await?,
        connections: run("DELETE FROM connections WHERE closed_at IS NOT NULL AND closed_at < $1").await?,
        grants: run("DELETE FROM grants WHERE expires_at < $1 OR (revoked_at IS NOT NULL AND revoked_at < $1)").await?,
    })
}

/// Delete this node's events older than `before`: the prefix of its chain
/// before its oldest row that is not old yet (`at` need not grow with `seq`
/// by a few milliseconds, or more when the clock was set back: such a row
/// waits for the ones before it; the newest row always stays, so the chain
/// goes on from it), and its old rows from before the chain.
async fn prune_events(audit: &Audit, before: i64, rule: &str) -> Result<u64, sqlx::Error> {
    let (pool, node) = (audit.store().pool(), audit.node());
    let bounds = sqlx::query(
        "SELECT MIN(seq) AS first, COALESCE( \
             (SELECT MIN(seq) FROM audit_events WHERE node = $1 AND seq IS NOT NULL AND at >= $2), \
             (SELECT MAX(seq) FROM audit_events WHERE node = $1 AND seq IS NOT NULL)) AS keep, \
             (SELECT COUNT(*) FROM audit_events WHERE node = $1 AND seq IS NULL AND at < $2) AS old_unchained \
         FROM audit_events WHERE node = $1 AND seq IS NOT NULL",
    )
    .bind(node)
    .bind(before)
    .fetch_one(pool)
    .await?;
    let first: Option<i64> = bounds.try_get("first")?;
    let keep: Option<i64> = bounds.try_get("keep")?;
    let old_unchained: i64 = bounds.try_get("old_unchained")?;
    let cut = first.zip(keep).filter(|(f, k)| k > f).map(|(_, k)| k);
    if cut.is_none() && old_unchained == 0 {
        return Ok(0);
    }
    // The record signs the chain just before its (new) first row.
    let (seq, hash) = match cut.or(first) {
        Some(start) => {
            let prev: Option<String> =
                sqlx::query("SELECT prev_hash FROM audit_events WHERE node = $1 AND seq = $2")
                    .bind(node)
                    .bind(start)
                    .fetch_one(pool)
                    .await?
                    .try_get("prev_hash")?;
            (start - 1, prev.unwrap_or_default())
        }
        None => (0, chain::GENESIS.to_string()),
    };
    let mut lines = vec![format!(
        "prune {} {} {rule}",
        seq + 1,
        crate::clock::rfc3339_micros(before)
    )];
    if old_unchained > 0 {
        lines.push(chain::unchained_anchor(pool, node, before).await?.line());
    }
    if !audit.sign(seq, hash, lines).await {
        tracing::error!(
            node,
            "cannot sign the record of the audit rows retention would delete; none are deleted"
        );
        return Ok(0);
    }
    let mut deleted =
        sqlx::query("DELETE FROM audit_events WHERE node = $1 AND seq IS NULL AND at < $2")
            .bind(node)
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected();
    if let Some(keep) = cut {
        deleted += sqlx::query("DELETE FROM audit_events WHERE node = $1 AND seq < $2")
            .bind(node)
            .bind(keep)
            .execute(pool)
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
        let rule = format!("retention {}", humantime::format_duration(keep));
        match prune(&audit, before, &rule).await {
            Ok(p) => audit.emit(
                Event::new(EventKind::AuditPrune)
                    .detail("before", crate::clock::rfc3339_micros(before))
                    .detail("events", p.events)
                    .detail("forwards", p.forwards)
                    .detail("connections", p.connections)
                    .detail("grants", p.grants)
                    .detail("recordings", p.recordings),
            ),
            Err(e) => tracing::error!(error = %e, "audit retention pass failed"),
        }
    }
}
