//! The audit writer task: the only appender of its node's chain. It
//! stores records in batches (one transaction each), numbers and hashes
//! events into the chain (see [`super::chain`]), and signs checkpoints (see
//! [`super::signing`]).

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use super::{BATCH, Checkpoints, Inner, Record, chain, signing};
use crate::clock::micros;
use crate::reasons::EventReason;
use crate::store::Store;

pub(super) async fn write_loop(
    store: Store,
    node: String,
    mut rx: mpsc::Receiver<Record>,
    inner: Weak<Inner>,
    checkpoints: Option<Checkpoints>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    // The node's chain tail as committed; `None`: read it again (at the
    // next write, inside its transaction) because a write failed.
    let mut tail = chain::read_tail(store.pool(), &node).await.ok();
    let mut schedule = match checkpoints {
        Some(c) => Some(signing::Schedule::new(c, &store, &node).await),
        None => None,
    };
    loop {
        let (received, timer) = match schedule.as_ref().map(signing::Schedule::deadline) {
            Some(at) => tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => (n, false),
                () = tokio::time::sleep_until(at) => (usize::MAX, true),
            },
            None => (rx.recv_many(&mut batch, BATCH).await, false),
        };
        if received == 0 {
            break;
        }
        sign_requests(&mut batch, schedule.as_ref(), &node);
        if !batch.is_empty() {
            write_or_count(&store, &node, &mut batch, &mut tail, &inner).await;
        }
        batch.clear();
        if let Some(s) = schedule.as_mut() {
            checkpoint_if_due(&store, &node, s, &mut tail, timer).await;
        }
    }
    if let Some(s) = schedule.as_mut() {
        checkpoint(&store, &node, s, &mut tail, None).await;
    }
}

/// Sign a checkpoint when one is due (`timer`: the interval passed).
async fn checkpoint_if_due(
    store: &Store,
    node: &str,
    schedule: &mut signing::Schedule,
    tail: &mut Option<chain::Tail>,
    timer: bool,
) {
    let seq = match tail {
        Some(t) => t.seq,
        None => i64::MAX,
    };
    if let Some(reason) = schedule.due(seq, timer) {
        checkpoint(store, node, schedule, tail, Some(reason)).await;
    } else if timer {
        schedule.restart_timer();
    }
}

/// Sign the chain's tail and append the checkpoint to it (`reason` `None`:
/// the writer stops; only if rows are unsigned).
async fn checkpoint(
    store: &Store,
    node: &str,
    schedule: &mut signing::Schedule,
    tail: &mut Option<chain::Tail>,
    reason: Option<EventReason>,
) {
    let t = match tail.clone() {
        Some(t) => t,
        None => match chain::read_tail(store.pool(), node).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the audit chain to sign it");
                schedule.restart_timer();
                return;
            }
        },
    };
    if !schedule.has_unsigned(t.seq) {
        return;
    }
    let reason = reason.unwrap_or(EventReason::CheckpointShutdown);
    // The node's first checkpoint also anchors its rows from before the
    // chain (docs/AUDIT.md "Rows from before the chain").
    let mut extra = Vec::new();
    if schedule.is_first() {
        match chain::unchained_anchor(store.pool(), node, i64::MIN).await {
            Ok(a) if a.rows > 0 => extra.push(a.line()),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot read the rows from before the chain to anchor them");
                schedule.restart_timer();
                return;
            }
        }
    }
    let (cp, ev) = schedule.sign(node, t.seq, &t.hash, reason, &extra);
    *tail = Some(t);
    let record = [Record::Event(ev, None)];
    match write_batch(store, node, &record, tail).await {
        Ok(()) => {
            let row_seq = tail.as_ref().map_or(0, |t| t.seq);
            schedule.stored(&cp, reason, row_seq).await;
        }
        Err(e) => {
            crate::metrics::get().database_errors.inc();
            tracing::error!(error = %e, "cannot store the audit checkpoint; the next one covers these rows");
            schedule.restart_timer();
        }
    }
}

/// Turn retention's requests to sign into checkpoint events (or refuse
/// them, without a signing key).
fn sign_requests(batch: &mut Vec<Record>, schedule: Option<&signing::Schedule>, node: &str) {
    for r in batch.iter_mut() {
        let Record::Sign {
            seq,
            hash,
            extensions,
            ack,
        } = r
        else {
            continue;
        };
        let ack = ack.take();
        match schedule {
            Some(s) => {
                let (_, ev) = s.sign(node, *seq, hash, EventReason::CheckpointPrune, extensions);
                *r = Record::Event(ev, ack);
            }
            None => {
                if let Some(ack) = ack {
                    let _ = ack.send(false);
                }
            }
        }
    }
    batch.retain(|r| !matches!(r, Record::Sign { .. }));
}

/// Write a batch, retried; on a lasting error, record by record, counting
/// what is lost.
async fn write_or_count(
    store: &Store,
    node: &str,
    batch: &mut [Record],
    tail: &mut Option<chain::Tail>,
    inner: &Weak<Inner>,
) {
    let mut attempt = 0;
    loop {
        match write_batch(store, node, batch, tail).await {
            Ok(()) => {
                acknowledge(batch, |_| true);
                break;
            }
            Err(e) if attempt < 3 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "audit write failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(_) => {
                store.set_healthy(store.ping().await.is_ok());
                // One bad record must not take the others with it.
                let mut lost = 0u64;
                let mut stored = Vec::with_capacity(batch.len());
                for r in batch.iter() {
                    let ok = write_batch(store, node, std::slice::from_ref(r), tail).await;
                    if let Err(e) = &ok {
                        lost += 1;
                        tracing::error!(error = %e, record = ?r, "audit record lost to the database (kept in this log)");
                    }
                    stored.push(ok.is_ok());
                }
                // Counted before anyone waiting learns of the loss, so that
                // `Audit::dropped` already includes it then.
                if let Some(inner) = inner.upgrade() {
                    inner.dropped.fetch_add(lost, Ordering::Relaxed);
                }
                crate::metrics::get().audit_dropped.inc_by(lost);
                let mut each = stored.into_iter();
                acknowledge(batch, |_| each.next().unwrap_or(false));
                crate::metrics::get().database_errors.inc();
                break;
            }
        }
    }
}

/// Tell whoever waits for a record of `batch` whether it was stored.
fn acknowledge(batch: &mut [Record], mut stored: impl FnMut(&Record) -> bool) {
    for r in batch.iter_mut() {
        let ok = stored(r);
        if let Record::Event(_, ack) = r
            && let Some(ack) = ack.take()
        {
            let _ = ack.send(ok);
        }
    }
}

/// Store `batch` in one transaction. Each event gets the next `seq` of the
/// node's chain and its hash; `tail` moves on only when the transaction
/// commits, so a failed batch (retried, or split into single records) costs
/// no sequence numbers. After a failure `tail` is read again, inside the
/// next transaction: another process may have appended to the same node
/// (the unique index on (node, seq) refused our rows then).
async fn write_batch(
    store: &Store,
    node: &str,
    batch: &[Record],
    tail: &mut Option<chain::Tail>,
) -> Result<(), sqlx::Error> {
    let written = write_chained(store, node, batch, tail.clone()).await;
    match written {
        Ok(next) => {
            *tail = Some(next);
            Ok(())
        }
        Err(e) => {
            *tail = None;
            Err(e)
        }
    }
}

async fn write_chained(
    store: &Store,
    node: &str,
    batch: &[Record],
    tail: Option<chain::Tail>,
) -> Result<chain::Tail, sqlx::Error> {
    let mut tx = store.pool().begin().await?;
    match insert_batch(&mut tx, node, batch, tail).await {
        Ok(tail) => {
            tx.commit().await?;
            Ok(tail)
        }
        Err(e) => {
            // Else the next write could find the database locked and lose
            // its record.
            crate::store::roll_back(tx, "audit write").await;
            Err(e)
        }
    }
}

/// The statements of [`write_chained`], inside its transaction.
async fn insert_batch(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    node: &str,
    batch: &[Record],
    tail: Option<chain::Tail>,
) -> Result<chain::Tail, sqlx::Error> {
    let mut tail = match tail {
        Some(t) => t,
        None => chain::read_tail(&mut **tx, node).await?,
    };
    for r in batch {
        match r {
            Record::Event(ev, _) => {
                tail = insert_event(tx, node, &tail, ev).await?;
            }
            Record::ConnectionOpen { id, source, at } => {
                sqlx::query(
                    "INSERT INTO connections (id, node, source, opened_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(id)
                .bind(node)
                .bind(source)
                .bind(*at)
                .execute(&mut **tx)
                .await?;
            }
            Record::ConnectionAuthenticated {
                id,
                user,
                method,
                at,
            } => {
                sqlx::query(
                    "UPDATE connections SET user_name = $1, auth_method = $2, authenticated_at = $3 WHERE id = $4",
                )
                .bind(user)
                .bind(method)
                .bind(*at)
                .bind(id)
                .execute(&mut **tx)
                .await?;
            }
            // Turned into events (or refused) before a batch is written.
            Record::Sign { .. } => {}
            Record::ConnectionClose {
                id,
                reason,
                client_version,
                at,
            } => {
                sqlx::query("UPDATE connections SET closed_at = $1, close_reason = $2, client_version = $3 WHERE id = $4")
                    .bind(*at)
                    .bind(reason)
                    .bind(client_version.as_deref())
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
            }
        }
    }
    Ok(tail)
}

/// Append one event to the chain after `tail`; the new tail.
async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    node: &str,
    tail: &chain::Tail,
    ev: &super::Event,
) -> Result<chain::Tail, sqlx::Error> {
    let seq = tail.seq + 1;
    let at = micros(ev.at);
    let detail = Value::Object(ev.detail.clone()).to_string();
    let fields = chain::ChainFields {
        node,
        seq,
        at,
        kind: ev.kind.as_str(),
        user: ev.user.as_deref(),
        source: ev.source.as_deref(),
        connection_id: ev.connection_id.as_deref(),
        reason: ev.reason.as_deref(),
        detail: &detail,
        prev_hash: &tail.hash,
    };
    // The benchmark's "without the chain" build (bench/run
    // --only audit): the same writes, no hash.
    let hash = if cfg!(portvakt_bench_unchained) {
        String::new()
    } else {
        chain::row_hash(&fields)
    };
    sqlx::query(
            "INSERT INTO audit_events (at, kind, node, connection_id, user_name, source, reason, detail, \
             seq, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(at)
        .bind(ev.kind.as_str())
        .bind(node)
        .bind(ev.connection_id.as_deref())
        .bind(ev.user.as_deref())
        .bind(ev.source.as_deref())
        .bind(ev.reason.as_deref())
        .bind(detail)
        .bind(seq)
        .bind(tail.hash.as_str())
        .bind(hash.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(chain::Tail { seq, hash })
}
