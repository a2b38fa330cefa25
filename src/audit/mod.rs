//! The audit trail: typed events written to the database and to the log as
//! JSON lines.
//!
//! Events that only record (logins, connections, refusals) go through a
//! bounded queue to one writer task, so nothing on the SSH session loop waits
//! for the database. A forward's row is different: it is inserted, and
//! awaited, before the target is dialled; if that fails the forward is
//! refused (fail closed).
//!
//! The writer task is the only one that appends events of its node: it
//! numbers them and links them into a hash chain (see [`chain`]), assigning
//! `seq` and `hash` per row inside the transaction that stores the batch.

pub mod chain;
mod events;
mod forwards;
mod observe;
pub mod query;
mod retention;
#[cfg(test)]
mod tests;
pub mod verify;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use events::{Event, EventKind, clean};
pub use forwards::{DialledForward, ForwardRecord, OpenForward, Totals};
pub use retention::{Pruned, mark_interrupted, prune, retention_loop};

use crate::clock::{micros, now_micros};
use crate::reasons::{AuthMethod, CloseReason};
use crate::store::Store;

/// How many records may wait for the writer before new ones are dropped
/// (they are still in the log). Bounded so a dead database cannot eat memory.
const QUEUE: usize = 65_536;
/// Records written per transaction at most.
const BATCH: usize = 256;
/// How long [`Audit::record`] waits for the database.
const RECORD_WAIT: Duration = Duration::from_secs(5);

/// Cheap to clone; all clones feed one writer.
#[derive(Debug, Clone)]
pub struct Audit {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    node: String,
    tx: mpsc::Sender<Record>,
    /// Records lost because the queue was full or the database refused them.
    dropped: AtomicU64,
}

/// What the writer task stores.
#[derive(Debug)]
enum Record {
    /// An event; the sender, if any, learns whether it reached the database.
    Event(Event, Option<oneshot::Sender<bool>>),
    ConnectionOpen {
        id: String,
        source: String,
        at: i64,
    },
    ConnectionAuthenticated {
        id: String,
        user: String,
        method: String,
        at: i64,
    },
    ConnectionClose {
        id: String,
        reason: String,
        client_version: Option<String>,
        at: i64,
    },
}

impl Audit {
    /// Start the writer task. It ends once every clone of the returned
    /// `Audit` is dropped and the queue is drained; await the handle to flush.
    pub fn start(store: Store, node: String) -> (Audit, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let inner = Arc::new(Inner {
            store: store.clone(),
            node: node.clone(),
            tx,
            dropped: AtomicU64::new(0),
        });
        let writer = tokio::spawn(write_loop(store, node, rx, Arc::downgrade(&inner)));
        (Audit { inner }, writer)
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Records lost so far (queue full or database errors).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Log an event and queue it for the database. Never waits.
    pub fn emit(&self, ev: Event) {
        log_event(&ev);
        observe::observe(&ev);
        self.queue(Record::Event(ev, None));
    }

    /// Log an event and wait until the database has it (or `RECORD_WAIT`
    /// passed). For the events a security team must never miss (logins,
    /// grants, bans, revocations, reloads): they wait for room in the
    /// queue instead of being dropped when it is full. `false`: not stored.
    pub async fn record(&self, ev: Event) -> bool {
        log_event(&ev);
        observe::observe(&ev);
        let (ack, stored) = oneshot::channel();
        let sent = tokio::time::timeout(
            RECORD_WAIT,
            self.inner.tx.send(Record::Event(ev, Some(ack))),
        )
        .await;
        let stored = match sent {
            Ok(Ok(())) => matches!(
                tokio::time::timeout(RECORD_WAIT, stored).await,
                Ok(Ok(true))
            ),
            _ => false,
        };
        if !stored {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::get().audit_dropped.inc();
            tracing::error!("audit record not stored in time (kept in this log)");
        }
        stored
    }

    fn queue(&self, r: Record) {
        if let Err(e) = self.inner.tx.try_send(r) {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::get().audit_dropped.inc();
            tracing::error!(error = %e, "audit queue full: record kept only in this log");
        }
    }

    pub fn connection_open(&self, id: &str, source: SocketAddr) {
        self.emit(Event::new(EventKind::ConnectionOpen).connection(id, source));
        self.queue(Record::ConnectionOpen {
            id: id.to_string(),
            source: source.to_string(),
            at: now_micros(),
        });
    }

    /// A login succeeded: the connection row gets its user, and
    /// `auth.success` is stored before this returns. `false`: it was not
    /// (the caller refuses the login).
    pub async fn login(
        &self,
        id: &str,
        source: SocketAddr,
        ev: Event,
        user: &str,
        method: AuthMethod,
        login_seconds: f64,
    ) -> bool {
        self.queue(Record::ConnectionAuthenticated {
            id: id.to_string(),
            user: user.to_string(),
            method: method.as_str().to_string(),
            at: now_micros(),
        });
        // The queue is written in order: once this is stored, so is the row.
        let stored = self
            .record(
                ev.connection(id, source)
                    .user(user)
                    .detail("method", method.as_str())
                    .detail("login_seconds", login_seconds),
            )
            .await;
        if stored {
            crate::metrics::get().login_succeeded(method, login_seconds);
        }
        stored
    }

    pub fn connection_close(
        &self,
        id: &str,
        source: SocketAddr,
        user: Option<&str>,
        reason: CloseReason,
        duration: Duration,
        client_version: Option<&str>,
    ) {
        let mut ev = Event::new(EventKind::ConnectionClose)
            .connection(id, source)
            .reason(reason)
            .detail("duration_seconds", duration.as_secs_f64());
        if let Some(u) = user {
            ev = ev.user(u);
        }
        let client_version = client_version.map(clean);
        if let Some(v) = &client_version {
            ev = ev.detail("client_version", v.clone());
        }
        self.emit(ev);
        self.queue(Record::ConnectionClose {
            id: id.to_string(),
            reason: reason.as_str().to_string(),
            client_version,
            at: now_micros(),
        });
    }

    fn note_error(&self, e: Option<sqlx::Error>) {
        if let Some(e) = e {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::get().audit_dropped.inc();
            crate::metrics::get().database_errors.inc();
            tracing::error!(error = %e, "audit database write failed");
        }
    }
}

/// One JSON log line per audit event, with stable top-level field names.
fn log_event(ev: &Event) {
    let str_field = |k: &str| ev.detail.get(k).and_then(Value::as_str);
    let forward_id = ev.detail.get("forward_id").and_then(Value::as_i64);
    let detail = Value::Object(ev.detail.clone());
    tracing::info!(
        target: "audit",
        event = ev.kind.as_str(),
        user = ev.user.as_deref(),
        source = ev.source.as_deref(),
        reason = ev.reason.as_deref(),
        connection_id = ev.connection_id.as_deref(),
        forward_id,
        target_name = str_field("target"),
        method = str_field("method"),
        detail = %detail,
        "{}",
        ev.kind.as_str()
    );
}

async fn write_loop(
    store: Store,
    node: String,
    mut rx: mpsc::Receiver<Record>,
    inner: std::sync::Weak<Inner>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    // The node's chain tail as committed; `None`: read it again (at the
    // next write, inside its transaction) because a write failed.
    let mut tail = chain::read_tail(store.pool(), &node).await.ok();
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut attempt = 0;
        loop {
            match write_batch(&store, &node, &batch, &mut tail).await {
                Ok(()) => {
                    acknowledge(&mut batch, |_| true);
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
                    for r in &batch {
                        let ok =
                            write_batch(&store, &node, std::slice::from_ref(r), &mut tail).await;
                        if let Err(e) = &ok {
                            lost += 1;
                            tracing::error!(error = %e, record = ?r, "audit record lost to the database (kept in this log)");
                        }
                        stored.push(ok.is_ok());
                    }
                    let mut each = stored.into_iter();
                    acknowledge(&mut batch, |_| each.next().unwrap_or(false));
                    if let Some(inner) = inner.upgrade() {
                        inner.dropped.fetch_add(lost, Ordering::Relaxed);
                    }
                    crate::metrics::get().audit_dropped.inc_by(lost);
                    crate::metrics::get().database_errors.inc();
                    break;
                }
            }
        }
        batch.clear();
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
    let mut tail = match tail {
        Some(t) => t,
        None => chain::read_tail(&mut *tx, node).await?,
    };
    for r in batch {
        match r {
            Record::Event(ev, _) => {
                let seq = tail.seq + 1;
                let at = micros(ev.at);
                let detail = Value::Object(ev.detail.clone()).to_string();
                let hash = chain::row_hash(&chain::ChainFields {
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
                });
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
                .execute(&mut *tx)
                .await?;
                tail = chain::Tail { seq, hash };
            }
            Record::ConnectionOpen { id, source, at } => {
                sqlx::query(
                    "INSERT INTO connections (id, node, source, opened_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(id)
                .bind(node)
                .bind(source)
                .bind(*at)
                .execute(&mut *tx)
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
                .execute(&mut *tx)
                .await?;
            }
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
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(tail)
}
