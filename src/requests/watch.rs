//! On every node, every couple of seconds: pending requests past their
//! `pending_ttl` expire (one node wins each, by the conditional update),
//! and forwards running in the window of a request revoked anywhere end.
//! Windows that end by their time end their forwards by themselves (each
//! forward's deadline is its window's end).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::store;
use super::webhook::Webhook;
use crate::audit::{Audit, EventKind};
use crate::clock::now_micros;
use crate::store::Store;

/// How often the database is asked.
pub const POLL: Duration = Duration::from_secs(2);
/// Revocations are re-read this far back, so that clock skew between nodes
/// cannot hide one; handling one twice does nothing.
const OVERLAP: Duration = Duration::from_secs(60);

/// Poll until `stop` fires; `close_forwards(id)` ends this node's forwards
/// in request `id`'s window and says how many.
pub async fn run(
    store: Store,
    audit: Audit,
    webhook: Webhook,
    close_forwards: impl Fn(i64) -> usize + Send,
    stop: CancellationToken,
) {
    let mut since = now_micros();
    loop {
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = stop.cancelled() => return,
        }
        let now = now_micros();
        match store::expire_due(&store, now).await {
            Ok(expired) => {
                for req in expired {
                    audit
                        .record(super::event(EventKind::RequestExpire, &req, None))
                        .await;
                    webhook.notify(EventKind::RequestExpire, &req, None);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot expire pending access requests"),
        }
        match store::revoked_since(&store, since - OVERLAP.as_micros() as i64).await {
            Ok(ids) => {
                for id in ids {
                    let n = close_forwards(id);
                    if n > 0 {
                        tracing::info!(
                            request_id = id,
                            forwards = n,
                            "access request revoked: its forwards end"
                        );
                    }
                }
                since = now;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read revoked access requests"),
        }
    }
}
