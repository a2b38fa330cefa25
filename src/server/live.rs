//! Logged-in connections of this node, so that a config reload can ask of
//! each whether its login still holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::connection::ConnCtx;

#[derive(Debug, Default)]
pub struct LiveConnections {
    conns: Mutex<HashMap<String, Weak<ConnCtx>>>,
}

impl LiveConnections {
    /// Add a connection that just logged in.
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

    /// Every live, logged-in connection now.
    pub fn snapshot(&self) -> Vec<Arc<ConnCtx>> {
        self.conns
            .lock()
            .map(|m| m.values().filter_map(Weak::upgrade).collect())
            .unwrap_or_default()
    }
}
