//! A forward's row in the audit trail, as a value that follows its life.
//!
//! [`Audit::forward_open`] inserts the row of an allowed forward (awaited,
//! before the target is dialled) and returns an [`OpenForward`]. That handle
//! is consumed by exactly one of [`OpenForward::failed`] (the dial failed or
//! the forward was ended before it connected) or [`OpenForward::dialled`],
//! whose [`DialledForward`] is consumed by [`DialledForward::closed`]. No row
//! id travels bare, so a forward cannot be closed twice or closed after it
//! failed; a handle dropped without either (a panic, a forgotten path) still
//! closes its row, as `error`, and says so in the log.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use sqlx::Row;

use super::{Audit, Event, EventKind, clean};
use crate::clock::micros;
use crate::reasons::{ForwardEnd, ForwardResult, ForwardStop, Reason};
use crate::store::StoreError;

/// The request side of a forward, as the audit trail records it.
#[derive(Debug, Clone)]
pub struct ForwardRecord {
    pub connection_id: String,
    pub user: String,
    pub auth_method: String,
    pub source: SocketAddr,
    /// The matched target's name (`None` when nothing matched).
    pub target: Option<String>,
    pub host: String,
    pub port: u32,
    /// The access request whose approved window allowed it (a target used
    /// on request).
    pub request_id: Option<i64>,
    /// A recorded target (`mode = "record"`): portvakt serves SSH inside
    /// the channel instead of relaying its bytes.
    pub recorded: bool,
}

impl ForwardRecord {
    /// The `mode` column: "record" or "forward".
    pub fn mode(&self) -> &'static str {
        if self.recorded { "record" } else { "forward" }
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

impl ForwardRecord {
    /// Bind the request's columns, `$1` to `$8`, in the order of the
    /// `forwards` inserts.
    fn bind<'q>(&'q self, q: AnyQuery<'q>, node: &'q str) -> AnyQuery<'q> {
        q.bind(&self.connection_id)
            .bind(node)
            .bind(&self.user)
            .bind(&self.auth_method)
            .bind(self.source.to_string())
            .bind(self.target.as_deref())
            .bind(clean(&self.host))
            .bind(i64::from(self.port))
    }

    fn event(&self, kind: EventKind, id: Option<i64>) -> Event {
        let mut ev = Event::new(kind)
            .connection(&self.connection_id, self.source)
            .user(self.user.clone())
            .detail("host", clean(&self.host))
            .detail("port", self.port)
            .detail("auth_method", self.auth_method.clone());
        if let Some(t) = &self.target {
            ev = ev.detail("target", t.clone());
        }
        if let Some(id) = id {
            ev = ev.detail("forward_id", id);
        }
        if let Some(r) = self.request_id {
            ev = ev.detail("request_id", r);
        }
        if self.recorded {
            ev = ev.detail("mode", self.mode());
        }
        ev
    }
}

/// Bytes a forward carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub to_target: u64,
    pub from_target: u64,
}

/// An allowed forward whose row is stored and open, not yet connected.
#[must_use = "a forward's row must be closed: call failed() or dialled()"]
#[derive(Debug)]
pub struct OpenForward {
    row: Option<Row_>,
}

/// A forward connected to its target; its row closes with [`Self::closed`].
#[must_use = "a forward's row must be closed: call closed()"]
#[derive(Debug)]
pub struct DialledForward {
    row: Option<Row_>,
    started: Instant,
}

/// What both handles hold; taken out when the row is closed.
#[derive(Debug)]
struct Row_ {
    audit: Audit,
    id: i64,
    rec: ForwardRecord,
    /// Where the forward goes: planned, then the address dialled. The
    /// close event carries it, so that `audit verify` can check the row's.
    address: String,
}

impl Audit {
    /// Insert an allowed forward's row before dialling; `address` is where
    /// it will be dialled. The row id is the session id of the CLI. An error
    /// (also a database known to be unhealthy) means: refuse the forward.
    pub async fn forward_open(
        &self,
        rec: ForwardRecord,
        address: &str,
    ) -> Result<OpenForward, StoreError> {
        if !self.store().is_healthy() {
            return Err(StoreError::Unhealthy);
        }
        // One clock read for the row and its event: `audit verify`
        // compares them exactly.
        let at = SystemTime::now();
        let row = rec
            .bind(
                sqlx::query(
                    "INSERT INTO forwards (connection_id, node, user_name, auth_method, source, target, host, port, address, result, started_at, request_id, mode) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
                ),
                self.node(),
            )
        .bind(address)
        .bind(ForwardResult::Allowed.as_str())
        .bind(micros(at))
        .bind(rec.request_id)
        .bind(rec.mode())
        .fetch_one(self.store().pool())
        .await?;
        let id: i64 = row.try_get(0)?;
        self.emit(
            rec.event(EventKind::ForwardOpen, Some(id))
                .at(at)
                .detail("address", address),
        );
        Ok(OpenForward {
            row: Some(Row_ {
                audit: self.clone(),
                id,
                rec,
                address: address.to_string(),
            }),
        })
    }

    /// [`Audit::forward_open`], or, when the row cannot be stored, the
    /// forward audited as refused (`audit_unavailable`) and `None`: fail
    /// closed, the caller refuses the forward.
    pub async fn forward_open_or_refuse(
        &self,
        rec: &ForwardRecord,
        planned: &str,
    ) -> Option<OpenForward> {
        match self.forward_open(rec.clone(), planned).await {
            Ok(open) => Some(open),
            Err(e) => {
                tracing::error!(error = %e, "cannot record forward; refusing it");
                self.forward_refused(
                    rec,
                    crate::reasons::ForwardResult::Denied,
                    crate::reasons::ForwardRefusal::AuditUnavailable,
                )
                .await;
                None
            }
        }
    }

    /// A refused forward: a row with its `result` (`denied` by the policy,
    /// `failed` when allowed but not possible) and a `forward.denied` event.
    pub async fn forward_refused(
        &self,
        rec: &ForwardRecord,
        result: ForwardResult,
        reason: impl Reason,
    ) {
        let at = SystemTime::now();
        let id = rec
            .bind(
                sqlx::query(
                    "INSERT INTO forwards (connection_id, node, user_name, auth_method, source, target, host, port, result, reason, started_at, ended_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING id",
                ),
                self.node(),
            )
        .bind(result.as_str())
        .bind(reason.as_str())
        .bind(micros(at))
        .fetch_one(self.store().pool())
        .await
        .and_then(|row| row.try_get::<i64, _>(0));
        if let Err(e) = &id {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::get().audit_dropped.inc();
            crate::metrics::get().database_errors.inc();
            tracing::error!(error = %e, "cannot store refused forward");
        }
        self.emit(
            rec.event(EventKind::ForwardDenied, id.ok())
                .at(at)
                .reason(reason)
                .detail("result", result.as_str()),
        );
    }
}

impl OpenForward {
    /// The row id (the CLI's session id).
    pub fn id(&self) -> i64 {
        self.row.as_ref().map_or(0, |r| r.id)
    }

    /// Drop the handle and leave the row open, as a crash would.
    #[cfg(test)]
    pub(crate) fn leave_open(mut self) -> i64 {
        self.row.take().map_or(0, |r| r.id)
    }

    /// The forward never carried a byte: its row becomes `failed`.
    pub async fn failed(mut self, why: ForwardEnd) {
        if let Some(row) = self.row.take() {
            row.fail(why).await;
        }
    }

    /// Connected to `addr`; recorded if it differs from the planned address
    /// (a name with several addresses). Bytes start to flow now.
    pub async fn dialled(mut self, addr: SocketAddr, planned: &str) -> DialledForward {
        let mut row = self.row.take();
        if let Some(r) = &mut row
            && addr.to_string() != planned
        {
            r.address = addr.to_string();
            let q = sqlx::query("UPDATE forwards SET address = $1 WHERE id = $2")
                .bind(addr.to_string())
                .bind(r.id)
                .execute(r.audit.store().pool())
                .await;
            r.audit.note_error(q.err());
        }
        DialledForward {
            row,
            started: Instant::now(),
        }
    }
}

impl DialledForward {
    pub fn id(&self) -> i64 {
        self.row.as_ref().map_or(0, |r| r.id)
    }

    /// The forward ended: bytes, end time and why.
    pub async fn closed(mut self, totals: Totals, why: ForwardEnd) {
        if let Some(row) = self.row.take() {
            row.close(totals, why, self.started.elapsed()).await;
        }
    }
}

impl Row_ {
    async fn fail(self, why: ForwardEnd) {
        let at = SystemTime::now();
        let r = sqlx::query(
            "UPDATE forwards SET result = $1, reason = $2, ended_at = $3, close_reason = $2 WHERE id = $4",
        )
        .bind(ForwardResult::Failed.as_str())
        .bind(why.as_str())
        .bind(micros(at))
        .bind(self.id)
        .execute(self.audit.store().pool())
        .await;
        self.audit.note_error(r.err());
        self.audit.emit(
            self.rec
                .event(EventKind::ForwardClose, Some(self.id))
                .at(at)
                .reason(why)
                .detail("result", ForwardResult::Failed.as_str()),
        );
    }

    async fn close(self, totals: Totals, why: ForwardEnd, duration: Duration) {
        let to = i64::try_from(totals.to_target).unwrap_or(i64::MAX);
        let from = i64::try_from(totals.from_target).unwrap_or(i64::MAX);
        let at = SystemTime::now();
        let r = sqlx::query(
            "UPDATE forwards SET ended_at = $1, bytes_to_target = $2, bytes_from_target = $3, close_reason = $4 WHERE id = $5",
        )
        .bind(micros(at))
        .bind(to)
        .bind(from)
        .bind(why.as_str())
        .bind(self.id)
        .execute(self.audit.store().pool())
        .await;
        self.audit.note_error(r.err());
        self.audit.emit(
            self.rec
                .event(EventKind::ForwardClose, Some(self.id))
                .at(at)
                .reason(why)
                .detail("address", self.address.clone())
                .detail("bytes_to_target", totals.to_target)
                .detail("bytes_from_target", totals.from_target)
                .detail("duration_seconds", duration.as_secs_f64()),
        );
    }

    /// A handle dropped without being closed: close its row as `error`
    /// from a task (a drop cannot wait), so no row stays open.
    fn abandon(self, dialled: Option<Instant>) {
        tracing::error!(
            forward_id = self.id,
            "forward handle dropped without closing its row; closing it as an error"
        );
        let why = ForwardEnd::Stop(ForwardStop::Error);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                match dialled {
                    Some(at) => self.close(Totals::default(), why, at.elapsed()).await,
                    None => self.fail(why).await,
                }
            });
        }
    }
}

impl Drop for OpenForward {
    fn drop(&mut self) {
        if let Some(row) = self.row.take() {
            row.abandon(None);
        }
    }
}

impl Drop for DialledForward {
    fn drop(&mut self) {
        if let Some(row) = self.row.take() {
            row.abandon(Some(self.started));
        }
    }
}
