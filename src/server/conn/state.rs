//! [`ConnCtx`]: what one connection's handler, its forward tasks, its driver
//! and the server-wide registries (reload, bans, grant revocation) share.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

use crate::auth::login::Trail;
use crate::auth::{AuthMethod, Identity};
use crate::reasons::{ChannelRefusal, CloseReason, ForwardEnd};

/// How long a closing connection waits for its forwards to record their end.
const FINISH_WAIT: Duration = Duration::from_secs(10);
/// How long a connection's forwards may take to finish by themselves after
/// the client left.
const SETTLE: Duration = Duration::from_millis(250);

/// State of one connection shared by its handler, its forward tasks and the
/// task that drives it.
#[derive(Debug)]
pub struct ConnCtx {
    id: String,
    source: SocketAddr,
    /// The address the client connected to (shown in the `ssh -J` hint).
    local: SocketAddr,
    opened: Instant,
    /// Fires when the connection must end (wakes the driving task).
    cancel: CancellationToken,
    /// Fires when the forwards must end; every forward task listens. Fired
    /// after `cancel`, once the client was told why.
    forwards_cancel: CancellationToken,
    /// The first reason given for ending, which is the one recorded.
    reason: OnceLock<CloseReason>,
    /// Shared with the connection's forwards (a certificate is not small).
    identity: OnceLock<Arc<Identity>>,
    /// When the login stops being valid, and the reason to record then.
    deadline: OnceLock<(Instant, CloseReason)>,
    /// Flips to true on login (wakes the driving task to arm the deadline).
    authenticated: watch::Sender<bool>,
    /// The login's attempts, for the row of a connection that never logged in.
    trail: Arc<Trail>,
    /// Forward tasks; waited for so their close rows are written.
    tasks: TaskTracker,
    /// Open (or opening) forwards; an idle connection has none.
    forwards: AtomicUsize,
    /// Milliseconds after `opened` of the last channel activity.
    last_activity: AtomicU64,
    /// The client's SSH version string, known after login.
    client_version: OnceLock<String>,
    /// Channel refusals by reason: the first of each is audited at once,
    /// the rest counted and audited as one row when the connection ends,
    /// so a client flooding requests cannot crowd out other rows.
    channel_refusals: Mutex<HashMap<ChannelRefusal, u64>>,
}

impl ConnCtx {
    pub fn new(source: SocketAddr, local: SocketAddr) -> Self {
        ConnCtx {
            id: uuid::Uuid::now_v7().to_string(),
            source,
            local,
            opened: Instant::now(),
            cancel: CancellationToken::new(),
            forwards_cancel: CancellationToken::new(),
            reason: OnceLock::new(),
            identity: OnceLock::new(),
            deadline: OnceLock::new(),
            authenticated: watch::Sender::new(false),
            trail: Arc::default(),
            tasks: TaskTracker::new(),
            forwards: AtomicUsize::new(0),
            last_activity: AtomicU64::new(0),
            client_version: OnceLock::new(),
            channel_refusals: Mutex::default(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn source(&self) -> SocketAddr {
        self.source
    }
    pub fn local(&self) -> SocketAddr {
        self.local
    }
    pub fn opened(&self) -> Instant {
        self.opened
    }
    pub fn trail(&self) -> Arc<Trail> {
        self.trail.clone()
    }

    /// Count a channel refusal; true for the first of its kind.
    pub fn channel_refused(&self, reason: ChannelRefusal) -> bool {
        let mut m = self
            .channel_refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = m.entry(reason).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Refusals after the first of each kind, by reason.
    pub fn repeated_channel_refusals(&self) -> Vec<(ChannelRefusal, u64)> {
        let m = self
            .channel_refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        m.iter()
            .filter(|(_, n)| **n > 1)
            .map(|(r, n)| (*r, n - 1))
            .collect()
    }

    /// Record why the connection ends (first reason wins), without ending
    /// it: the client left by itself.
    pub fn set_reason(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
    }

    /// End the connection (first reason wins). The driving task tells the
    /// client why, then ends the forwards ([`Self::end_forwards`]): the other
    /// way round `ssh -W` would leave with its channel, before reading why.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.cancel.cancel();
    }

    /// End every forward of this connection now.
    pub fn end_forwards(&self) {
        self.forwards_cancel.cancel();
    }
    pub fn is_closing(&self) -> bool {
        self.cancel.is_cancelled()
    }
    pub fn closing(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }
    /// Fires when this connection's forwards must end.
    pub fn forwards_token(&self) -> &CancellationToken {
        &self.forwards_cancel
    }
    pub fn close_reason(&self) -> CloseReason {
        self.reason
            .get()
            .copied()
            .unwrap_or(CloseReason::ConnectionClosed)
    }
    /// The close reason of a forward that ends because its connection does.
    pub fn forward_close_reason(&self) -> ForwardEnd {
        self.close_reason().for_forwards()
    }

    /// Who the connection is, or tried to be.
    pub fn user_name(&self) -> Option<String> {
        match self.identity() {
            Some(id) => Some(id.user().to_string()),
            None => self.trail.user(),
        }
    }

    pub fn client_version(&self) -> Option<&str> {
        self.client_version.get().map(String::as_str)
    }
    pub fn set_client_version(&self, version: &[u8]) {
        let version = String::from_utf8_lossy(version);
        let _ = self.client_version.set(crate::text::clean(&version, 200));
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.authenticated.subscribe()
    }
    pub fn is_authenticated(&self) -> bool {
        self.identity.get().is_some()
    }
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.get().map(|id| &**id)
    }
    /// The login, for a forward to hold without a copy.
    pub fn shared_identity(&self) -> Option<Arc<Identity>> {
        self.identity.get().cloned()
    }
    pub fn deadline(&self) -> Option<(Instant, CloseReason)> {
        self.deadline.get().copied()
    }

    /// The login succeeded: the connection ends when its credential expires
    /// or at `max_duration`, whichever comes first.
    pub fn authenticated(&self, id: Identity, max_duration: Duration) {
        let cap = self.opened + max_duration;
        let expiry = id.expires_at().map(|at| {
            let left = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            Instant::now().checked_add(left)
        });
        let deadline = match expiry {
            Some(Some(at)) if at <= cap => (at, expiry_reason(&id)),
            _ => (cap, CloseReason::MaxDuration),
        };
        let _ = self.deadline.set(deadline);
        let _ = self.identity.set(Arc::new(id));
        self.authenticated.send_replace(true);
    }

    /// Run a task that belongs to this connection.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(fut);
    }

    /// The session is over: forwards whose channels the client closed before
    /// leaving get a moment to finish by themselves, the rest end now. Either
    /// way they write their close rows before this returns (bounded).
    pub async fn wind_down(&self) {
        self.tasks.close();
        let _ = tokio::time::timeout(SETTLE, self.tasks.wait()).await;
        self.close(CloseReason::ConnectionClosed);
        self.end_forwards();
        if tokio::time::timeout(FINISH_WAIT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(connection_id = %self.id, "forward tasks did not finish in time");
        }
    }

    pub fn touch(&self) {
        self.last_activity
            .store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    pub fn forward_started(&self) -> usize {
        self.touch();
        self.forwards.fetch_add(1, Ordering::Relaxed) + 1
    }
    pub fn forward_ended(&self) {
        self.touch();
        self.forwards.fetch_sub(1, Ordering::Relaxed);
    }
    /// When the connection counts as idle: `None` while a forward is open.
    pub fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        (self.forwards.load(Ordering::Relaxed) == 0).then(|| {
            self.opened + Duration::from_millis(self.last_activity.load(Ordering::Relaxed)) + idle
        })
    }
}

fn expiry_reason(id: &Identity) -> CloseReason {
    match id.method() {
        AuthMethod::Certificate => CloseReason::CertificateExpired,
        _ => CloseReason::GrantExpired,
    }
}
