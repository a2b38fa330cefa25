//! Open connections of this node: a config reload asks of each logged-in
//! one whether its login still holds; a ban ends those of the banned source
//! that are still logging in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::conn::ConnCtx;

#[derive(Debug, Default)]
pub struct LiveConnections {
    conns: Mutex<HashMap<String, Weak<ConnCtx>>>,
}

impl LiveConnections {
    /// Add a connection that just opened.
    pub fn register(&self, ctx: &Arc<ConnCtx>) {
        if let Ok(mut m) = self.conns.lock() {
            m.insert(ctx.id().to_string(), Arc::downgrade(ctx));
        }
    }

    pub fn remove(&self, id: &str) {
        if let Ok(mut m) = self.conns.lock() {
            m.remove(id);
        }
    }

    /// End connection `id` if it is open on this node; whether it was.
    pub fn close(&self, id: &str, reason: crate::reasons::CloseReason) -> bool {
        let found = self
            .conns
            .lock()
            .ok()
            .and_then(|m| m.get(id).and_then(Weak::upgrade));
        match found {
            Some(c) => {
                c.close(reason);
                true
            }
            None => false,
        }
    }

    /// Every open connection now.
    pub fn snapshot(&self) -> Vec<Arc<ConnCtx>> {
        self.conns
            .lock()
            .map(|m| m.values().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }
}
