//! Recorded targets (DESIGN.md §10): a `direct-tcpip` channel to a target
//! with `mode = "record"` is not dialled through as bytes; portvakt serves
//! SSH inside it ([`inner`]), logs in to the target itself ([`upstream`]),
//! relays each session and records it ([`relay`], [`store`], [`cast`]).

pub mod ca;
pub mod cast;
mod counted;
pub mod fileops;
pub mod frames;
mod inner;
mod inner_forward;
mod relay;
pub mod store;
mod upstream;
pub mod verify;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use russh::server::Msg;
use russh::{Channel, ChannelId, client};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use ca::{CaError, Cas};
pub use store::{
    Content, ContentError, Filter, Kind, Meta, Recorder, RecordingRow, Settings, Summary,
};

use crate::audit::{Audit, Event, EventKind, Totals};
use crate::auth::Identity;
use crate::config::Config;
use crate::policy::Recorded;
use crate::reasons::{ChannelRefusal, ForwardEnd, ForwardStop, Reason};
use crate::store::StoreError;

/// Audits a refused channel request of the connection (aggregated there).
pub type RefusalSink = Box<dyn Fn(ChannelRefusal, Option<&str>) + Send + Sync>;

/// Everything a recorded forward needs, from the connection that carries it.
pub struct RecordJob {
    pub audit: Audit,
    /// The config when the forward was decided (settings; decisions about
    /// the forward itself are the forward task's).
    pub config: Arc<Config>,
    /// The config in force, for forwards inside the session (`-L`).
    pub live_config: crate::config::SharedConfig,
    pub cas: Arc<Cas>,
    pub identity: Arc<Identity>,
    pub connection_id: String,
    pub source: SocketAddr,
    /// The forward's row (the recordings' `session_id`).
    pub forward_id: i64,
    pub target: String,
    pub recorded: Arc<Recorded>,
    /// Every name the target is dialled by.
    pub names: Vec<String>,
    pub kex: &'static [russh::kex::Name],
    pub refusals: RefusalSink,
    /// The forward in this node's registry (a reload re-checks the login
    /// set on it).
    pub live: Arc<crate::server::LiveForward>,
    /// Set when logging in to the target failed: the forward's end reason.
    upstream_failure: Mutex<Option<ForwardStop>>,
    upstream: Mutex<Option<Arc<client::Handle<upstream::Upstream>>>>,
    /// The engineer's agent, through the inner connection: set when the
    /// client asked for agent forwarding on a session and the target allows
    /// it; until then the target's agent channels are refused.
    agent: Mutex<Option<AgentRoute>>,
    /// The remote forwards (`-R`) the engineer asked for and the target
    /// opened: where the target's `forwarded-tcpip` channels go.
    remote: Mutex<Vec<RemoteRoute>>,
}

/// A remote forward of the engineer's, listening on the target.
#[derive(Clone)]
struct RemoteRoute {
    /// The inner connection (the engineer's `ssh` connects the channel to
    /// its local destination).
    inner: russh::server::Handle,
    login: String,
    /// As the client asked for it (the target names it so in its channels).
    address: String,
    /// The port the target bound (the one asked for, or the one it chose
    /// for port 0).
    port: u32,
}

/// A connection to a remote forward's port on the target.
struct RemoteConn {
    address: String,
    port: u32,
    originator_address: String,
    originator_port: u32,
}

/// Where a recorded target's agent channels go.
#[derive(Clone)]
struct AgentRoute {
    /// The inner connection (the engineer's `ssh` holds the agent).
    inner: russh::server::Handle,
    login: String,
}

/// When a recorded forward must end although both sides are open.
pub struct Stop<'a, F: Fn() -> ForwardEnd> {
    pub cancel: &'a CancellationToken,
    pub reason: F,
    pub deadline: Option<(Instant, ForwardEnd)>,
}

impl RecordJob {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        audit: Audit,
        config: Arc<Config>,
        live_config: crate::config::SharedConfig,
        cas: Arc<Cas>,
        identity: Arc<Identity>,
        connection_id: String,
        source: SocketAddr,
        forward_id: i64,
        target: String,
        recorded: Arc<Recorded>,
        names: Vec<String>,
        kex: &'static [russh::kex::Name],
        refusals: RefusalSink,
        live: Arc<crate::server::LiveForward>,
    ) -> RecordJob {
        RecordJob {
            audit,
            config,
            live_config,
            cas,
            identity,
            connection_id,
            source,
            forward_id,
            target,
            recorded,
            names,
            kex,
            refusals,
            live,
            upstream_failure: Mutex::new(None),
            upstream: Mutex::new(None),
            agent: Mutex::new(None),
            remote: Mutex::new(Vec::new()),
        }
    }

    /// May the target use the engineer's agent now (the config in force,
    /// not the copy the forward was decided under)?
    fn agent_allowed(&self) -> bool {
        self.recorded_now().is_some_and(|r| r.agent_forwarding)
    }

    /// The engineer forwarded their agent on a session and the target
    /// accepted it.
    fn lend_agent(&self, inner: russh::server::Handle, login: &str) {
        *self.agent.lock().unwrap_or_else(|e| e.into_inner()) = Some(AgentRoute {
            inner,
            login: login.to_string(),
        });
    }

    /// Where the target's agent channel goes: the engineer's agent, when
    /// they lent it and the target is (still) allowed to use it; `None`
    /// (refused, audited) otherwise.
    fn agent_route(&self) -> Option<AgentRoute> {
        let route = self
            .agent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|_| self.agent_allowed());
        if route.is_none() {
            self.refused(ChannelRefusal::AgentForward, Some("opened by the target"));
        }
        route
    }

    /// Relay the target's agent channel to the engineer's agent (opened
    /// here, off the caller's session loop), and audit it at its end.
    fn relay_agent(self: Arc<Self>, route: AgentRoute, up: Channel<client::Msg>) {
        tokio::spawn(async move {
            let inner = match route.inner.channel_open_agent().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "the client did not open its agent");
                    let _ = up.close().await;
                    return;
                }
            };
            let (mut a, mut b) = (up.into_stream(), inner.into_stream());
            let (to_agent, from_agent) = tokio::io::copy_bidirectional(&mut a, &mut b)
                .await
                .unwrap_or_default();
            self.audit.emit(
                self.event(EventKind::AgentForward)
                    .detail("login", route.login.as_str())
                    .detail("bytes_to_agent", to_agent)
                    .detail("bytes_from_agent", from_agent),
            );
        });
    }

    /// May the engineer forward ports through the target now (`-L` and
    /// `-R` inside the session; the config in force)?
    fn port_forwarding_allowed(&self) -> bool {
        self.recorded_now()
            .is_some_and(|r| r.permit_port_forwarding)
    }

    /// The target listens for the engineer's remote forward now.
    fn listen_remote(&self, inner: russh::server::Handle, login: &str, address: &str, port: u32) {
        self.remote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(RemoteRoute {
                inner,
                login: login.to_string(),
                address: address.to_string(),
                port,
            });
    }

    /// The engineer cancelled a remote forward.
    fn unlisten_remote(&self, address: &str, port: u32) {
        self.remote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|r| !(r.address == address && r.port == port));
    }

    /// Where a `forwarded-tcpip` channel the target opened goes: the remote
    /// forward it belongs to, when the engineer asked for one there and
    /// port forwarding is (still) allowed; `None` (refused, audited)
    /// otherwise: a target cannot open channels to the engineer unasked.
    fn remote_route(&self, address: &str, port: u32) -> Option<RemoteRoute> {
        let route = self
            .remote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|r| r.port == port && r.address == address)
            .cloned()
            .filter(|_| self.port_forwarding_allowed());
        if route.is_none() {
            self.refused(
                ChannelRefusal::RemoteForward,
                Some(&format!("opened by the target for {address}:{port}")),
            );
        }
        route
    }

    /// Relay a connection to a remote forward's port on the target to the
    /// engineer's `ssh` (opened here, off the caller's session loop), and
    /// audit it at its end.
    fn relay_remote(self: Arc<Self>, route: RemoteRoute, c: RemoteConn, up: Channel<client::Msg>) {
        tokio::spawn(async move {
            let inner = match route
                .inner
                .channel_open_forwarded_tcpip(
                    c.address.as_str(),
                    c.port,
                    c.originator_address.as_str(),
                    c.originator_port,
                )
                .await
            {
                Ok(ch) => ch,
                Err(e) => {
                    tracing::debug!(error = %e, "the client refused the remote forward's channel");
                    let _ = up.close().await;
                    return;
                }
            };
            let (mut a, mut b) = (up.into_stream(), inner.into_stream());
            let (to_client, from_client) = tokio::io::copy_bidirectional(&mut a, &mut b)
                .await
                .unwrap_or_default();
            self.audit.emit(
                self.event(EventKind::RemoteForward)
                    .detail("login", route.login.as_str())
                    .detail(
                        "listen",
                        format!("{}:{}", crate::audit::clean(&c.address), c.port),
                    )
                    .detail(
                        "originator",
                        format!(
                            "{}:{}",
                            crate::audit::clean(&c.originator_address),
                            c.originator_port
                        ),
                    )
                    .detail("bytes_to_client", to_client)
                    .detail("bytes_from_client", from_client),
            );
        });
    }

    /// The target's recording settings under the config in force (a reload
    /// may have changed its logins or forwarding, or removed it: `None`).
    fn recorded_now(&self) -> Option<Arc<Recorded>> {
        let cfg = self.live_config.load();
        cfg.policy
            .targets()
            .iter()
            .find(|t| t.name == self.target)
            .and_then(|t| t.record.clone())
    }

    fn event(&self, kind: EventKind) -> Event {
        Event::new(kind)
            .connection(&self.connection_id, self.source)
            .user(self.identity.user())
            .detail("target", self.target.as_str())
            .detail("session_id", self.forward_id)
    }

    fn refused(&self, what: ChannelRefusal, detail: Option<&str>) {
        (self.refusals)(what, detail);
    }

    fn upstream_ok(&self, login: &str, handle: Arc<client::Handle<upstream::Upstream>>) {
        tracing::info!(
            connection_id = %self.connection_id,
            target = %self.target,
            login,
            "logged in to recorded target"
        );
        *self.upstream.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    }

    fn upstream_failed(&self, login: &str, e: &upstream::UpstreamError) {
        let stop = match e {
            upstream::UpstreamError::HostKey(_) => ForwardStop::TargetHostKey,
            _ => ForwardStop::TargetLogin,
        };
        tracing::warn!(
            connection_id = %self.connection_id,
            target = %self.target,
            login,
            error = %e,
            "cannot log in to recorded target"
        );
        *self
            .upstream_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(stop);
    }

    /// The recording's row, and its `recording.start` event (awaited: a
    /// recording the audit trail does not know of is a failed one).
    async fn start_recording(
        &self,
        login: &str,
        channel: ChannelId,
        s: relay::SessionStart,
    ) -> Result<store::Recorder, StoreError> {
        let meta = store::Meta {
            node: self.audit.node().to_string(),
            connection_id: self.connection_id.clone(),
            session_id: self.forward_id,
            channel: u32::from(channel),
            user: self.identity.user().to_string(),
            target: self.target.clone(),
            login: login.to_string(),
            kind: s.kind,
            command: s.command.clone(),
            term: s.term,
            width: s.width,
            height: s.height,
        };
        let settings = store::Settings {
            max_bytes: self.config.recording.max_bytes,
            input: self.config.recording.input,
        };
        let recorder = store::Recorder::start(self.audit.store().clone(), meta, settings).await?;
        let mut ev = self
            .event(EventKind::RecordingStart)
            .detail("recording_id", recorder.id())
            .detail("login", login)
            .detail("kind", s.kind.as_str());
        if let Some(c) = &s.command {
            ev = ev.detail("command", crate::audit::clean(c));
        }
        if !self.audit.record(ev).await {
            return Err(StoreError::Unhealthy);
        }
        Ok(recorder)
    }

    fn file_op(&self, recording_id: Option<i64>, op: &fileops::FileOp) {
        let mut ev = self
            .event(EventKind::FileOp)
            .detail("op", op.op)
            .detail("path", crate::text::clean(&op.path, fileops::PATH_MAX))
            .detail("bytes", op.bytes);
        if let Some(to) = &op.to {
            ev = ev.detail("to", crate::text::clean(to, fileops::PATH_MAX));
        }
        if let Some(ok) = op.ok {
            ev = ev.detail("ok", ok);
        }
        if let Some(id) = recording_id {
            ev = ev.detail("recording_id", id);
        }
        self.audit.emit(ev);
    }

    fn truncated(&self, id: i64) {
        tracing::warn!(recording_id = id, target = %self.target, "recording reached max_bytes; the rest is not recorded");
    }

    fn recording_failed(&self, id: Option<i64>, e: &StoreError, closed: bool) {
        tracing::error!(recording_id = ?id, error = %e, closed, "cannot store recording");
        let mut ev = self
            .event(EventKind::RecordingEnd)
            .detail("failed", true)
            .detail("error", e.to_string())
            .detail("session_closed", closed);
        if let Some(id) = id {
            ev = ev.detail("recording_id", id);
        }
        self.audit.emit(ev);
    }

    fn recording_ended(&self, s: &store::Summary) {
        let mut ev = self
            .event(EventKind::RecordingEnd)
            .detail("recording_id", s.id)
            .detail("sha256", s.sha256.as_str())
            .detail("bytes", s.bytes)
            .detail("truncated", s.truncated);
        if let Some(x) = s.exit_status {
            ev = ev.detail("exit_status", x);
        }
        self.audit.emit(ev);
    }
}

/// Serve the engineer's SSH connection inside `channel`, log in to the
/// target over `tcp`, relay and record until either side ends or `stop`
/// says so. Returns the bytes carried on the channel and why it ended.
pub async fn serve<F: Fn() -> ForwardEnd>(
    job: RecordJob,
    ssh: Arc<russh::server::Config>,
    channel: Channel<Msg>,
    tcp: TcpStream,
    stop: Stop<'_, F>,
) -> (Totals, ForwardEnd) {
    let job = Arc::new(job);
    let counters = Arc::new(counted::Counters::default());
    let stream = counted::Counted::new(channel.into_stream(), counters.clone());
    let inner = inner::Inner::new(job.clone(), tcp);
    let end = match russh::server::run_stream(ssh, stream, inner).await {
        Err(e) => {
            tracing::debug!(error = %e, "recorded target: no SSH from the client");
            ForwardStop::Error.into()
        }
        Ok(mut running) => {
            let handle = running.handle();
            let deadline = stop.deadline.map(|(at, _)| at);
            let stopped = tokio::select! {
                r = &mut running => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "recorded session ended with an error");
                    }
                    None
                }
                () = stop.cancel.cancelled() => Some((stop.reason)()),
                () = sleep_until(deadline) => stop.deadline.map(|(_, why)| why),
            };
            if let Some(why) = stopped {
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        format!("portvakt: the session was ended ({})", why.as_str()),
                        String::new(),
                    )
                    .await;
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), running).await;
            }
            let failed = *job
                .upstream_failure
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            stopped.unwrap_or_else(|| failed.unwrap_or(ForwardStop::Closed).into())
        }
    };
    let upstream = job
        .upstream
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(up) = upstream {
        let _ = up
            .disconnect(russh::Disconnect::ByApplication, "", "")
            .await;
    }
    (counters.totals(), end)
}

/// The `@cert-authority` line engineers put in known_hosts to trust the
/// recorded targets of `cfg` (`host_ca`: the host CA's public key line).
/// Its pattern names every name they are dialled by (as `name` and, for
/// ports other than 22, `[name]:*`), or `*` when there is none yet.
pub fn known_hosts_line(cfg: &Config, host_ca: &str) -> String {
    let mut names: Vec<String> = Vec::new();
    for t in cfg.policy.targets().iter().filter(|t| t.record.is_some()) {
        for n in t.dial_names() {
            for p in [n.clone(), format!("[{n}]:*")] {
                if !names.contains(&p) {
                    names.push(p);
                }
            }
        }
    }
    let pattern = if names.is_empty() {
        "*".to_string()
    } else {
        names.join(",")
    };
    format!("@cert-authority {pattern} {}", host_ca.trim())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
