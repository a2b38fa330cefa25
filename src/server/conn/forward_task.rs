//! One `direct-tcpip` channel, off the session loop: decide (policy), open
//! its audit row (before dialling: no row, no forward), dial, pump, close
//! the row. A dead target never holds up the connection's other channels.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelOpenFailure};

use super::ConnCtx;
use crate::audit::{Audit, DialledForward, ForwardRecord, OpenForward, Totals};
use crate::auth::Identity;
use crate::config::{Config, SharedConfig};
use crate::forward::{self, Counters, Limits};
use crate::policy::{self, Authorized, Refusal, Request, SystemResolver};
use crate::reasons::{ForwardEnd, ForwardStop};
use crate::requests::{self, AccessRequest};
use crate::server::forwards::{Forwards, Registered};

/// How long reading a user's access request windows may take.
const WINDOWS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Everything a forward task needs, moved off the session loop.
pub struct ForwardJob {
    pub audit: Audit,
    /// This node's live forwards (reload re-checks them).
    pub forwards: Arc<Forwards>,
    /// The config in force; loaded when the decision is made.
    pub config: SharedConfig,
    pub ctx: Arc<ConnCtx>,
    pub identity: Arc<Identity>,
    pub host: String,
    pub port: u32,
    pub channel: Channel<Msg>,
    pub reply: ChannelOpenHandle,
    /// The recording CAs, for targets with `mode = "record"`.
    pub recording: Arc<crate::recording::ca::CaCache>,
}

/// Decide, audit (before dialling), dial, pump, audit the end.
pub async fn forward(job: ForwardJob) {
    // Registered before deciding: a reload from here on re-checks this
    // forward too (and ends it through `live.forward.cancel`); one that came
    // before is seen by loading the config below.
    let live = job.forwards.register(
        job.identity.clone(),
        job.host.clone(),
        job.port,
        job.ctx.forwards_token(),
    );
    let cfg = job.config.load_full();
    let (authorized, rec) = match decide(&job, &cfg, &live, request_record(&job)).await {
        Ok(allowed) => allowed,
        Err(Some(message)) => return job.reply.reject(message).await,
        Err(None) => return,
    };
    let planned = authorized
        .addrs()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let Some(open) = job.audit.forward_open_or_refuse(&rec, &planned).await else {
        let text = "portvakt: the audit trail is unavailable, so forwarding is refused";
        return job.reply.reject(prohibited(text.into())).await;
    };
    // A recorded target needs its CAs before anything is dialled.
    let cas = match authorized.record() {
        None => None,
        Some(_) => match job.recording.get(&cfg.recording, &cfg.auth) {
            Ok(cas) => Some(cas),
            Err(e) => {
                tracing::error!(error = %e, "recording CAs unavailable; recorded target refused");
                open.failed(ForwardStop::TargetLogin.into()).await;
                let text = format!(
                    "portvakt: {} is recorded, and recording is not available (see the bastion's log)",
                    authorized.target()
                );
                job.reply.reject(prohibited(text)).await;
                return;
            }
        },
    };
    let ForwardJob {
        ctx,
        channel,
        reply,
        audit,
        identity,
        config,
        ..
    } = job;
    let Some((tcp, row)) = dial(&ctx, &cfg, &live, &authorized, open, &planned, reply).await else {
        return;
    };
    match (authorized.record(), cas) {
        (Some((recorded, names)), Some(cas)) => {
            let rec = RecordedForward {
                audit,
                live_config: config,
                identity,
                cas,
                recorded: recorded.clone(),
                names: names.to_vec(),
                target: authorized.target().to_string(),
            };
            record(&ctx, cfg, &live, channel, tcp, row, rec).await;
        }
        _ => pump(&ctx, &cfg, &live, channel, tcp, row).await,
    }
}

/// The audit record of the forward `job` asks for, before it is decided.
fn request_record(job: &ForwardJob) -> ForwardRecord {
    ForwardRecord {
        connection_id: job.ctx.id().to_string(),
        user: job.identity.user().to_string(),
        auth_method: job.identity.method().as_str().to_string(),
        source: job.ctx.source(),
        target: None,
        host: job.host.clone(),
        port: job.port,
        request_id: None,
        recorded: false,
    }
}

/// What a recorded forward carries beyond a plain one.
struct RecordedForward {
    audit: Audit,
    live_config: SharedConfig,
    identity: Arc<Identity>,
    cas: Arc<crate::recording::Cas>,
    recorded: Arc<crate::policy::Recorded>,
    names: Vec<String>,
    target: String,
}

/// Serve SSH inside the channel, log in to the target and record, until
/// either side ends; then close the row.
async fn record(
    ctx: &Arc<ConnCtx>,
    cfg: Arc<Config>,
    live: &Registered,
    channel: Channel<Msg>,
    tcp: tokio::net::TcpStream,
    row: DialledForward,
    rec: RecordedForward,
) {
    let validity = cfg.recording.certificate_validity;
    let cert = match rec.cas.host_certificate(&rec.target, &rec.names, validity) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot sign a host certificate for a recorded target");
            row.closed(Totals::default(), ForwardStop::TargetLogin.into())
                .await;
            return;
        }
    };
    let ssh = Arc::new(crate::server::recorded_ssh_config(
        &cfg,
        rec.cas.inner_host_key().clone(),
        cert,
    ));
    let refusals: crate::recording::RefusalSink = {
        let ctx = ctx.clone();
        let audit = rec.audit.clone();
        let user = rec.identity.user().to_string();
        Box::new(move |what, detail| {
            if !ctx.channel_refused(what) {
                return;
            }
            let mut ev = crate::audit::Event::new(crate::audit::EventKind::ChannelRefused)
                .connection(ctx.id(), ctx.source())
                .user(user.as_str())
                .reason(what);
            if let Some(d) = detail {
                ev = ev.detail("request", crate::audit::clean(d));
            }
            audit.emit(ev);
        })
    };
    let job = crate::recording::RecordJob::new(
        rec.audit,
        cfg.clone(),
        rec.live_config,
        rec.cas,
        rec.identity,
        ctx.id().to_string(),
        ctx.source(),
        row.id(),
        rec.target,
        rec.recorded,
        rec.names,
        crate::server::kex_list(&cfg),
        refusals,
        live.forward.clone(),
    );
    let stop = crate::recording::Stop {
        cancel: &live.forward.cancel,
        reason: || {
            live.forward
                .reason()
                .unwrap_or_else(|| ctx.forward_close_reason())
        },
        deadline: deadline(ctx, live),
    };
    let (totals, end) = crate::recording::serve(job, ssh, channel, tcp, stop).await;
    row.closed(totals, end).await;
}

/// When the forward must end: the connection's deadline or the request
/// window's end, whichever comes first.
fn deadline(ctx: &ConnCtx, live: &Registered) -> Option<(tokio::time::Instant, ForwardEnd)> {
    // A window's end (unix time) as an instant of this clock.
    let window_end = live.forward.window_end().map(|end| {
        let left = end.saturating_sub(crate::clock::now_micros()).max(0);
        tokio::time::Instant::now() + std::time::Duration::from_micros(left as u64)
    });
    earliest(
        ctx.deadline().map(|(at, why)| (at, why.for_forwards())),
        window_end.map(|at| (at, ForwardStop::RequestWindowEnded.into())),
    )
}

/// The policy's answer under the config in force. A refusal is audited and
/// comes with what to tell the client (nothing when the forward was ended
/// while being decided).
async fn decide(
    job: &ForwardJob,
    cfg: &Config,
    live: &Registered,
    mut rec: ForwardRecord,
) -> Result<(Authorized, ForwardRecord), Option<ChannelOpenFailure>> {
    let req = Request {
        host: &job.host,
        port: job.port,
    };
    let windows = tokio::select! {
        w = open_windows(job, cfg) => w,
        () = live.forward.cancel.cancelled() => return Err(None),
    };
    let subject = job
        .identity
        .subject(cfg)
        .with_windows(windows.iter().map(|w| w.target.as_str()));
    let decided = tokio::select! {
        d = policy::decide(&cfg.policy, &subject, &req, &SystemResolver) => d,
        () = live.forward.cancel.cancelled() => return Err(None),
    };
    let denied = match decided {
        Ok(a) => {
            rec.target = Some(a.target().to_string());
            rec.recorded = a.record().is_some();
            if let Some(w) = window_of(cfg, &a, &windows) {
                rec.request_id = Some(w.id);
                live.forward
                    .set_window(w.id, &w.target, w.window_end.unwrap_or(0));
            }
            return Ok((a, rec));
        }
        Err(denied) => denied,
    };
    let refusal = denied.reason;
    rec.target = denied.target;
    job.audit
        .forward_refused(&rec, refusal.result(), refusal)
        .await;
    let message = match refusal {
        Refusal::ForwardingNotPermitted => prohibited(format!(
            "portvakt: your certificate does not permit port forwarding ({req})"
        )),
        Refusal::RequestRequired => {
            let ssh = super::session_text::ssh_command(&job.identity, cfg, job.ctx.local());
            let name = rec.target.as_deref().unwrap_or(job.host.as_str());
            prohibited(format!(
                "portvakt: {name} is used on request; ask with: {ssh} request {name} 1h \"REASON\""
            ))
        }
        // The name is known and allowed; only DNS failed.
        Refusal::ResolveFailed => ChannelOpenFailure::Other {
            code: 2,
            reason: format!("portvakt: cannot resolve the address of {}", job.host),
        },
        // Same words for every policy refusal: nothing leaks about which
        // targets exist.
        _ => prohibited(format!(
            "portvakt: target {req} is not allowed for {}",
            job.identity.user()
        )),
    };
    Err(Some(message))
}

/// The user's approved windows open now, when the config has targets used
/// on request (else none are needed). A database error gives none: such
/// targets are refused (fail closed), the others are not affected.
async fn open_windows(job: &ForwardJob, cfg: &Config) -> Vec<AccessRequest> {
    if !cfg
        .policy
        .targets()
        .iter()
        .any(|t| t.request_rule().is_some())
    {
        return Vec::new();
    }
    let store = job.audit.store();
    let found = tokio::time::timeout(
        WINDOWS_WAIT,
        requests::store::open_windows(store, job.identity.user(), crate::clock::now_micros()),
    )
    .await;
    match found {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read access request windows; request-only targets refused");
            Vec::new()
        }
        Err(_) => {
            tracing::error!(
                "access request windows not read in time; request-only targets refused"
            );
            Vec::new()
        }
    }
}

/// The window that allowed a forward to a target used on request.
fn window_of<'w>(
    cfg: &Config,
    a: &Authorized,
    windows: &'w [AccessRequest],
) -> Option<&'w AccessRequest> {
    let target = cfg.policy.targets().iter().find(|t| t.name == a.target())?;
    target.request_rule()?;
    windows
        .iter()
        .find(|w| w.target.eq_ignore_ascii_case(&target.name))
}

/// Connect to the target; a failure closes the row and tells the client.
async fn dial(
    ctx: &ConnCtx,
    cfg: &Config,
    live: &Registered,
    authorized: &Authorized,
    open: OpenForward,
    planned: &str,
    reply: ChannelOpenHandle,
) -> Option<(tokio::net::TcpStream, DialledForward)> {
    let dial_start = Instant::now();
    let dialled = tokio::select! {
        d = forward::dial(authorized, cfg.sessions.connect_timeout) => d,
        () = live.forward.cancel.cancelled() => {
            let why = live.forward.reason().unwrap_or_else(|| ctx.forward_close_reason());
            open.failed(why).await;
            return None;
        }
    };
    crate::metrics::get()
        .dial_seconds
        .observe(dial_start.elapsed().as_secs_f64());
    match dialled {
        Ok((tcp, addr)) => {
            let row = open.dialled(addr, planned).await;
            reply.accept().await;
            Some((tcp, row))
        }
        Err(e) => {
            open.failed(e.reason().into()).await;
            reply
                .reject(ChannelOpenFailure::Other {
                    code: 2,
                    reason: format!("portvakt: {} ({})", authorized.target(), e.user_text()),
                })
                .await;
            None
        }
    }
}

/// Carry bytes until either side ends, then close the row.
async fn pump(
    ctx: &ConnCtx,
    cfg: &Config,
    live: &Registered,
    channel: Channel<Msg>,
    tcp: tokio::net::TcpStream,
    row: DialledForward,
) {
    let counters = Counters {
        totals: Some(crate::metrics::bytes_counters()),
        ..Default::default()
    };
    let limits = Limits {
        idle_timeout: cfg.sessions.idle_timeout,
        write_timeout: Limits::write_timeout(cfg.sessions.idle_timeout),
        deadline: deadline(ctx, live),
    };
    let end = forward::pump(
        channel,
        tcp,
        &limits,
        &live.forward.cancel,
        || {
            live.forward
                .reason()
                .unwrap_or_else(|| ctx.forward_close_reason())
        },
        &counters,
    )
    .await;
    if let forward::End::Error(e) = &end {
        tracing::debug!(forward_id = row.id(), error = %e, "forward ended with an error");
    }
    let totals = Totals {
        to_target: counters.to_target.load(Ordering::Relaxed),
        from_target: counters.from_target.load(Ordering::Relaxed),
    };
    row.closed(totals, end.reason()).await;
}

/// The earlier of two deadlines.
fn earliest<T>(
    a: Option<(tokio::time::Instant, T)>,
    b: Option<(tokio::time::Instant, T)>,
) -> Option<(tokio::time::Instant, T)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

fn prohibited(reason: String) -> ChannelOpenFailure {
    ChannelOpenFailure::Other { code: 1, reason }
}
