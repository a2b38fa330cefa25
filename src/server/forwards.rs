//! Live forwards of this node, so that a config reload can close the ones
//! the new config no longer allows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::config::Config;
use crate::policy::{self, Refusal, Request, SystemResolver};
use crate::reasons::{ForwardEnd, ForwardStop};

/// One running forward.
#[derive(Debug)]
pub struct LiveForward {
    pub identity: Arc<Identity>,
    pub host: String,
    pub port: u32,
    /// Ends this forward only (a child of its connection's token).
    pub cancel: CancellationToken,
    /// Why it was ended from outside, if it was.
    reason: OnceLock<ForwardEnd>,
    /// The access request (id, target, window end in unix µs) whose
    /// window allowed it.
    window: OnceLock<(i64, String, i64)>,
    /// A recorded target's name and the login on it the engineer's inner
    /// connection was let in as (a reload re-checks it).
    recorded_login: OnceLock<(String, String)>,
}

impl LiveForward {
    pub fn close(&self, reason: ForwardEnd) {
        let _ = self.reason.set(reason);
        self.cancel.cancel();
    }
    pub fn reason(&self) -> Option<ForwardEnd> {
        self.reason.get().copied()
    }
    /// It runs in the approved window of request `id` on `target`, which
    /// ends at `end` (unix µs).
    pub fn set_window(&self, id: i64, target: &str, end: i64) {
        let _ = self.window.set((id, target.to_string(), end));
    }
    /// When its window ends (unix µs), if it runs in one.
    pub fn window_end(&self) -> Option<i64> {
        self.window.get().map(|w| w.2)
    }
    pub fn request_id(&self) -> Option<i64> {
        self.window.get().map(|w| w.0)
    }
    /// The inner connection of this recorded forward logged in to `target`
    /// as `login`.
    pub fn set_recorded_login(&self, target: &str, login: &str) {
        let _ = self
            .recorded_login
            .set((target.to_string(), login.to_string()));
    }
    /// Does `cfg` still let its user in as the recorded login it uses (true
    /// when it is not a recorded forward with a login)?
    fn login_allowed(&self, cfg: &Config) -> bool {
        let Some((target, login)) = self.recorded_login.get() else {
            return true;
        };
        cfg.policy
            .targets()
            .iter()
            .find(|t| &t.name == target)
            .and_then(|t| t.record.as_ref())
            .is_some_and(|r| r.allows_login(self.identity.user(), login))
    }
}

#[derive(Debug, Default)]
pub struct Forwards {
    live: Mutex<HashMap<u64, Arc<LiveForward>>>,
    next: AtomicU64,
}

/// Removes its forward from the registry when dropped.
pub struct Registered {
    forwards: Arc<Forwards>,
    id: u64,
    pub forward: Arc<LiveForward>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut m) = self.forwards.live.lock() {
            m.remove(&self.id);
        }
    }
}

impl Forwards {
    pub fn register(
        self: &Arc<Self>,
        identity: Arc<Identity>,
        host: String,
        port: u32,
        parent: &CancellationToken,
    ) -> Registered {
        let forward = Arc::new(LiveForward {
            identity,
            host,
            port,
            cancel: parent.child_token(),
            reason: OnceLock::new(),
            window: OnceLock::new(),
            recorded_login: OnceLock::new(),
        });
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.live.lock() {
            m.insert(id, forward.clone());
        }
        Registered {
            forwards: self.clone(),
            id,
            forward,
        }
    }

    pub fn len(&self) -> usize {
        self.live.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// End every forward that runs in the window of request `id` (revoked);
    /// returns how many.
    pub fn close_request(&self, id: i64) -> usize {
        let live: Vec<Arc<LiveForward>> = self
            .live
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let mut closed = 0;
        for f in live.iter().filter(|f| f.request_id() == Some(id)) {
            f.close(ForwardStop::RequestRevoked.into());
            closed += 1;
        }
        closed
    }

    /// Close every forward (open, or still being decided or dialled) the
    /// config `cfg` would refuse now (its user is denied, the policy says
    /// no for the user's groups under `cfg`, or the recorded target's
    /// `logins` no longer name the login its session uses). Returns how
    /// many were closed.
    pub async fn recheck(&self, cfg: &Config) -> usize {
        let live: Vec<Arc<LiveForward>> = self
            .live
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let mut closed = 0;
        for f in live {
            let user = f.identity.user();
            let denied_user = cfg
                .auth
                .deny_users
                .iter()
                .any(|d| d.eq_ignore_ascii_case(user));
            let req = Request {
                host: &f.host,
                port: f.port,
            };
            // Its window still holds (a revocation ends it on its own).
            let subject = f
                .identity
                .subject(cfg)
                .with_windows(f.window.get().map(|w| w.1.as_str()));
            let verdict = policy::decide(&cfg.policy, &subject, &req, &SystemResolver).await;
            // A name that no longer resolves is not a policy change: keep it.
            let refused = matches!(verdict, Err(ref d) if d.reason != Refusal::ResolveFailed);
            if denied_user || refused || !f.login_allowed(cfg) {
                f.close(ForwardStop::ConfigReload.into());
                closed += 1;
            }
        }
        closed
    }
}
