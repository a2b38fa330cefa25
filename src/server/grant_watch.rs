//! Ends connections whose login grant was revoked, on whichever node the
//! revocation happened: revocations are read from the shared database every
//! couple of seconds. The same poll ends connections a review console admin
//! ended (their `console.action` rows), on the node that holds them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::conn::ConnCtx;
use crate::auth::grants;
use crate::clock::now_micros;
use crate::reasons::CloseReason;
use crate::store::Store;

/// How often the database is asked for new revocations.
const POLL: Duration = Duration::from_secs(2);
/// Revocations are re-read this far back, so that clock skew between nodes
/// cannot hide one; handling one twice does nothing.
const OVERLAP: Duration = Duration::from_secs(60);

/// Live connections by the grant they ride on.
#[derive(Debug, Default)]
pub struct GrantWatch {
    conns: Mutex<HashMap<i64, Vec<Weak<ConnCtx>>>>,
}

impl GrantWatch {
    pub fn register(&self, grant: i64, ctx: &Arc<ConnCtx>) {
        if let Ok(mut m) = self.conns.lock() {
            m.entry(grant).or_default().push(Arc::downgrade(ctx));
        }
    }

    /// Close every live connection of this grant; returns how many.
    pub fn revoked(&self, grant: i64) -> usize {
        let conns = self
            .conns
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&grant))
            .unwrap_or_default();
        let mut n = 0;
        for c in conns.iter().filter_map(Weak::upgrade) {
            c.close(CloseReason::GrantRevoked);
            n += 1;
        }
        n
    }

    /// Like [`Self::revoked`], sparing one connection (the one that asked).
    pub fn revoked_except(&self, grant: i64, keep: &Arc<ConnCtx>) -> usize {
        let conns = self
            .conns
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&grant))
            .unwrap_or_default();
        let mut n = 0;
        for c in conns.iter().filter_map(Weak::upgrade) {
            if !Arc::ptr_eq(&c, keep) {
                c.close(CloseReason::GrantRevoked);
                n += 1;
            }
        }
        n
    }

    /// Forget connections that are gone.
    fn prune(&self) {
        if let Ok(mut m) = self.conns.lock() {
            m.retain(|_, v| {
                v.retain(|w| w.strong_count() > 0);
                !v.is_empty()
            });
        }
    }

    /// Poll for revocations until `stop` fires.
    /// `end` ends a connection by id if this node holds it (and says so).
    pub async fn run(
        self: Arc<Self>,
        store: Store,
        end: impl Fn(&str) -> bool + Send + 'static,
        stop: CancellationToken,
    ) {
        let mut since = now_micros();
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = stop.cancelled() => return,
            }
            self.prune();
            let now = now_micros();
            let from = since - OVERLAP.as_micros() as i64;
            match grants::revoked_since(&store, from).await {
                Ok(ids) => {
                    for (id, _) in ids {
                        let n = self.revoked(id);
                        if n > 0 {
                            tracing::info!(
                                grant_id = id,
                                connections = n,
                                "grant revoked: closing its connections"
                            );
                        }
                    }
                    since = now;
                }
                Err(e) => tracing::warn!(error = %e, "cannot read grant revocations"),
            }
            match crate::audit::query::connection_ends(&store, from).await {
                Ok(ids) => {
                    for id in ids {
                        if end(&id) {
                            tracing::info!(
                                connection_id = %id,
                                "ended by a review console admin: closing the connection"
                            );
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the console's connection ends"),
            }
        }
    }
}
