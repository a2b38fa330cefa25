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
pub mod checkpoint;
mod crosscheck;
mod events;
pub mod export;
mod forwards;
mod observe;
pub mod query;
mod retention;
mod signing;
#[cfg(test)]
pub(crate) mod tests;
pub mod verify;
mod verify_sqlite;
pub mod walk;
mod writer;

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
pub use signing::{Checkpoints, load_key};

use crate::clock::micros;
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
    /// Sign and store a checkpoint of `(seq, hash)` of this node's chain
    /// (not its tail: retention's record of what it deletes). The sender
    /// learns whether it was stored; without a signing key it is not.
    Sign {
        seq: i64,
        hash: String,
        extensions: Vec<String>,
        ack: Option<oneshot::Sender<bool>>,
    },
}

impl Audit {
    /// Start the writer task. It ends once every clone of the returned
    /// `Audit` is dropped and the queue is drained; await the handle to flush.
    /// It signs no checkpoints: see [`Audit::start_signed`].
    pub fn start(store: Store, node: String) -> (Audit, JoinHandle<()>) {
        Self::start_with(store, node, None)
    }

    /// Start the writer task, signing checkpoints of the node's chain as
    /// `checkpoints` says, and a last one as it ends.
    pub fn start_signed(
        store: Store,
        node: String,
        checkpoints: Checkpoints,
    ) -> (Audit, JoinHandle<()>) {
        Self::start_with(store, node, Some(checkpoints))
    }

    /// The writer of a CLI command that writes rows: node `NODE (cli)`,
    /// signed with the node's key when it can read it (else unsigned, said
    /// on stderr: `audit verify` then reports those rows as not covered).
    pub fn start_cli(store: Store, cfg: &crate::config::Config) -> (Audit, JoinHandle<()>) {
        let node = format!("{} (cli)", cfg.server.node_name);
        match Checkpoints::existing(&cfg.audit) {
            Ok(c) => Self::start_signed(store, node, c),
            Err(e) => {
                eprintln!("warning: audit rows of this command are not signed: {e}");
                Self::start(store, node)
            }
        }
    }

    fn start_with(
        store: Store,
        node: String,
        checkpoints: Option<Checkpoints>,
    ) -> (Audit, JoinHandle<()>) {
        // The benchmark's "without the chain" build signs nothing either.
        let checkpoints = checkpoints.filter(|_| !cfg!(portvakt_bench_unchained));
        let (tx, rx) = mpsc::channel(QUEUE);
        let inner = Arc::new(Inner {
            store: store.clone(),
            node: node.clone(),
            tx,
            dropped: AtomicU64::new(0),
        });
        let writer = tokio::spawn(writer::write_loop(
            store,
            node,
            rx,
            Arc::downgrade(&inner),
            checkpoints,
        ));
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
        match sent {
            // Queued: the writer counts it as dropped if the database
            // refuses it; if it only takes long, it may still be stored.
            Ok(Ok(())) => match tokio::time::timeout(RECORD_WAIT, stored).await {
                Ok(Ok(true)) => true,
                Ok(_) => false,
                Err(_) => {
                    tracing::error!("audit record not stored in time (kept in this log)");
                    false
                }
            },
            // Never queued: lost here.
            _ => {
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                crate::metrics::get().audit_dropped.inc();
                tracing::error!("audit record not queued in time (kept only in this log)");
                false
            }
        }
    }

    /// Sign a checkpoint of this node's chain at `(seq, hash)` with these
    /// extension lines, stored as an `audit.checkpoint` row (retention's
    /// record of the rows it deletes). `false`: not stored, or this writer
    /// has no signing key.
    pub async fn sign(&self, seq: i64, hash: String, extensions: Vec<String>) -> bool {
        let (ack, stored) = oneshot::channel();
        let record = Record::Sign {
            seq,
            hash,
            extensions,
            ack: Some(ack),
        };
        let sent = tokio::time::timeout(RECORD_WAIT, self.inner.tx.send(record)).await;
        matches!(sent, Ok(Ok(())))
            && matches!(
                tokio::time::timeout(RECORD_WAIT, stored).await,
                Ok(Ok(true))
            )
    }

    fn queue(&self, r: Record) {
        if let Err(e) = self.inner.tx.try_send(r) {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::get().audit_dropped.inc();
            tracing::error!(error = %e, "audit queue full: record kept only in this log");
        }
    }

    pub fn connection_open(&self, id: &str, source: SocketAddr) {
        // The row takes the event's time: `audit verify` compares them.
        let ev = Event::new(EventKind::ConnectionOpen).connection(id, source);
        let at = micros(ev.at);
        self.emit(ev);
        self.queue(Record::ConnectionOpen {
            id: id.to_string(),
            source: source.to_string(),
            at,
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
            at: micros(ev.at),
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
        let at = micros(ev.at);
        self.emit(ev);
        self.queue(Record::ConnectionClose {
            id: id.to_string(),
            reason: reason.as_str().to_string(),
            client_version,
            at,
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
