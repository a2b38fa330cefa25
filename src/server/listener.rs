//! Accept loop, connection limits, login grace time, connection deadlines,
//! signals and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::{ArcSwap, ArcSwapOption};
use russh::Disconnect;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::connection::{ConnCtx, Connection};
use super::grant_watch::GrantWatch;
use super::limits::{self, LoginSlot};
use super::proxy::{self, Prefixed};
use super::refusals::Refusal;
use super::{ServerState, hostkey, ssh_config};
use crate::audit::{Audit, Event, EventKind};
use crate::auth::Services;
use crate::auth::lockout::Lockout;
use crate::auth::oidc::Idp;
use crate::auth::totp::Totp;
use crate::config::Config;
use crate::store::Store;

/// How long a trusted balancer has to send its PROXY header.
const PROXY_WAIT: Duration = Duration::from_secs(10);
/// How long a stopping server lets forwards finish before closing them.
const DRAIN: Duration = Duration::from_secs(20);
/// How long a connection's forwards may take to finish by themselves after
/// the client left.
const SETTLE: Duration = Duration::from_millis(250);
/// How long to wait for a connection to go after it was told to.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Run the bastion until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // Every forward holds two sockets: take all the descriptors allowed.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if (n as usize) < cfg.server.max_connections * 2 + 64 => tracing::warn!(
            open_files = n,
            max_connections = cfg.server.max_connections,
            "the open-file limit is below two per connection; raise LimitNOFILE"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let (host_key, created) = hostkey::load_or_create(&cfg.server.host_key_dir)?;
    tracing::info!(
        fingerprint = %hostkey::fingerprint(&host_key),
        path = %cfg.server.host_key_dir.join(hostkey::FILE_NAME).display(),
        created,
        "host key"
    );
    let store = Store::open(&cfg.database.url)
        .await
        .context("cannot open the audit database")?;
    let interrupted = crate::audit::mark_interrupted(&store, &cfg.server.node_name).await?;
    if interrupted > 0 {
        tracing::warn!(
            forwards = interrupted,
            "forwards left open by an earlier run marked interrupted"
        );
    }
    let (audit, writer) = Audit::start(store.clone(), cfg.server.node_name.clone());
    let idp = match &cfg.oidc {
        Some(o) => Some(Arc::new(Idp::new(o.clone())?)),
        None => None,
    };
    if let Some(idp) = &idp {
        // Discover now so that a broken [oidc] shows at start; logins retry.
        if let Err(e) = idp.check().await {
            tracing::warn!(issuer = %idp.config().issuer, error = %e, "identity provider not usable yet; IdP logins will retry");
        }
    }
    let lockout = Arc::new(Lockout::new(store.clone(), cfg.server.node_name.clone()));
    lockout.refresh(&cfg.lockout).await?;
    let services = Arc::new(Services {
        lockout: lockout.clone(),
        totp: Totp::open(store.clone(), &cfg.mfa.secret_key_file)?,
        store: store.clone(),
        idp: ArcSwapOption::new(idp.clone()),
        flows: Default::default(),
        node: cfg.server.node_name.clone(),
    });
    let grant_watch = Arc::new(GrantWatch::default());

    let mut listeners = Vec::new();
    for addr in &cfg.server.listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push(l);
    }
    let max_connections = u32::try_from(cfg.server.max_connections).unwrap_or(u32::MAX);
    let state = Arc::new(ServerState {
        ssh: Arc::new(ssh_config(&cfg, host_key)),
        connections: Arc::new(Semaphore::new(max_connections as usize)),
        max_connections,
        unauthenticated: Arc::new(Semaphore::new(cfg.server.max_unauthenticated)),
        unauthenticated_per_source: Arc::default(),
        config: Arc::new(ArcSwap::from_pointee(cfg)),
        audit,
        shutdown: CancellationToken::new(),
        services,
        grant_watch: grant_watch.clone(),
        forwards: Arc::default(),
        live: Default::default(),
        reloads: Default::default(),
        refusals: Arc::default(),
    });
    let watch_stop = CancellationToken::new();
    tokio::spawn(grant_watch.run(store.clone(), watch_stop.clone()));
    let st = state.clone();
    tokio::spawn(lockout.run(move || st.config.load().lockout.clone(), watch_stop.clone()));
    tokio::spawn(gauges(store.clone(), watch_stop.clone()));
    tokio::spawn(store.clone().watch_health(watch_stop.clone()));
    let refusals = state.refusals.clone();
    let (audit, stop) = (state.audit.clone(), watch_stop.clone());
    let flusher = tokio::spawn(async move { refusals.run(audit, stop).await });
    if let Some(keep) = state.config.load().database.retention {
        tokio::spawn(crate::audit::retention_loop(
            state.audit.clone(),
            keep,
            watch_stop.clone(),
        ));
    }
    if let Some(m) = &state.config.load().metrics {
        let ready = Arc::new(Ready {
            state: state.clone(),
        });
        let listen = m.listen;
        let stop = watch_stop.clone();
        // Bind errors show at start; a failing endpoint does not stop SSH.
        let server = crate::metrics::serve(listen, ready, stop);
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(%listen, error = %e, "metrics endpoint failed");
            }
        });
    }
    let terminate = CancellationToken::new();
    for l in listeners {
        let addr = l.local_addr()?;
        tracing::info!(%addr, "listening");
        tokio::spawn(accept_loop(state.clone(), l, terminate.clone()));
    }

    wait_for_stop(&state).await?;
    tracing::info!("stopping: no new connections; letting forwards drain");
    state.shutdown.cancel();
    let max = state.max_connections;
    let all_closed = state.connections.clone().acquire_many_owned(max);
    if tokio::time::timeout(DRAIN, all_closed).await.is_err() {
        tracing::info!("drain time over; closing the remaining connections");
        terminate.cancel();
        let all_closed = state.connections.clone().acquire_many_owned(max);
        let _ = tokio::time::timeout(CLOSE_WAIT * 3, all_closed).await;
    }
    watch_stop.cancel();
    // Counted refusals reach the audit before its writer is let go.
    let _ = flusher.await;
    let store = state.audit.store().clone();
    drop(state);
    // The writer ends once the last Audit clone is gone and its queue is written.
    let _ = tokio::time::timeout(CLOSE_WAIT, writer).await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Wait for SIGTERM/SIGINT; reload the config on SIGHUP meanwhile.
async fn wait_for_stop(state: &ServerState) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => super::reload::reload(state).await,
        }
    }
}

async fn accept_loop(state: Arc<ServerState>, listener: TcpListener, terminate: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = state.shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(conn_permit) = state.connections.clone().try_acquire_owned() else {
            state
                .refusals
                .record(&state.audit, peer, Refusal::MaxConnections);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(admit(
            state.clone(),
            stream,
            peer,
            conn_permit,
            terminate.clone(),
        ));
    }
}

/// Learn who the client is (a trusted balancer's PROXY header), then apply
/// bans and login limits to that address before any SSH byte is sent.
async fn admit(
    state: Arc<ServerState>,
    stream: TcpStream,
    peer: SocketAddr,
    conn_permit: OwnedSemaphorePermit,
    terminate: CancellationToken,
) {
    let cfg = state.config.load_full();
    let local = stream.local_addr().unwrap_or(peer);
    // Ends the russh session task for good once serve() is done with it.
    let kill = CancellationToken::new();
    let (client, stream) = if cfg
        .server
        .proxy_protocol_from
        .iter()
        .any(|n| n.contains(&peer.ip().to_canonical()))
    {
        match proxy::accept(stream, PROXY_WAIT, &kill).await {
            Ok((Some(client), stream)) => (client, stream),
            // The balancer's own health check: nothing to serve.
            Ok((None, _)) => return,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "connection from a PROXY-protocol balancer refused");
                state
                    .refusals
                    .record(&state.audit, peer, Refusal::ProxyHeader);
                return;
            }
        }
    } else {
        (peer, Prefixed::new(Vec::new(), stream, &kill))
    };
    // Banned sources are closed before the SSH handshake.
    if state.services.lockout.is_banned(client.ip()) {
        state.refusals.record(&state.audit, client, Refusal::Banned);
        return;
    }
    let login_permit = match limits::admit(
        &state.unauthenticated,
        &state.unauthenticated_per_source,
        client.ip(),
        cfg.server.max_unauthenticated_per_source,
        cfg.lockout.ipv6_prefix,
    ) {
        Ok(slot) => slot,
        Err(full) => {
            let why = match full {
                limits::Full::Global => Refusal::MaxUnauthenticated,
                limits::Full::Source => Refusal::MaxUnauthenticatedPerSource,
            };
            state.refusals.record(&state.audit, client, why);
            return;
        }
    };
    serve(
        state,
        stream,
        client,
        local,
        conn_permit,
        login_permit,
        terminate,
    )
    .await;
    // A client that never closed its end (it never finished the handshake,
    // or ignores our disconnect) loses the socket now.
    kill.cancel();
}

/// One connection from accept to the last audit row.
async fn serve(
    state: Arc<ServerState>,
    stream: Prefixed,
    peer: SocketAddr,
    local: SocketAddr,
    _conn_permit: OwnedSemaphorePermit,
    login_permit: LoginSlot,
    terminate: CancellationToken,
) {
    let ctx = Arc::new(ConnCtx::new(peer, local));
    // Known from the start: a ban ends it while it logs in, a reload once
    // it has.
    state.live.register(&ctx);
    let audit = state.audit.clone();
    audit.connection_open(ctx.id(), peer);
    let grace_end = ctx.opened() + state.config.load().server.login_grace_time;
    let handler = Connection::new(state.clone(), ctx.clone(), login_permit);

    let started = tokio::time::timeout_at(
        grace_end,
        russh::server::run_stream(state.ssh.clone(), stream, handler),
    )
    .await;
    let session = match started {
        Err(_) => {
            ctx.close("login_timeout");
            None
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "SSH handshake failed");
            ctx.close("protocol_error");
            None
        }
        Ok(Ok(s)) => Some(s),
    };
    if let Some(session) = session {
        let handle = session.handle();
        tokio::pin!(session);
        let mut auth_rx = ctx.subscribe();
        // Once told to go, the client has CLOSE_WAIT to leave.
        let mut told: Option<Instant> = None;
        let mut deadline: Option<Instant> = None;
        loop {
            let open = !ctx.is_closing();
            let idle_timeout = state.config.load().sessions.idle_timeout;
            let idle_at = ctx.idle_deadline(idle_timeout);
            tokio::select! {
                r = &mut session => {
                    // The reason only: forwards get a moment below to finish
                    // on their own (their EOFs may still be queued).
                    ctx.set_reason(match r {
                        Ok(()) => "client_closed",
                        // Clients often just close the socket after their last channel.
                        Err(russh::Error::IO(e)) if matches!(
                            e.kind(),
                            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                        ) => "client_closed",
                        Err(russh::Error::KeepaliveTimeout) | Err(russh::Error::InactivityTimeout) => "keepalive_timeout",
                        // The client ignored flow control (russh patch 6).
                        Err(e @ russh::Error::ChannelWindowExceeded { .. }) => {
                            tracing::info!(%peer, error = %e, "client sent data past its channel window");
                            "window_exceeded"
                        }
                        Err(e @ russh::Error::ChannelPacketTooLarge { .. }) => {
                            tracing::info!(%peer, error = %e, "client sent an oversized channel data packet");
                            "packet_too_large"
                        }
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "connection error");
                            "protocol_error"
                        }
                    });
                    break;
                }
                () = sleep_until(grace_end), if open && !ctx.is_authenticated() => ctx.close("login_timeout"),
                Ok(()) = auth_rx.changed() => deadline = ctx.deadline().map(|(at, _)| at),
                () = sleep_until(deadline.unwrap_or(grace_end)), if open && deadline.is_some() => {
                    ctx.close(ctx.deadline().map_or("max_duration", |(_, r)| r));
                }
                () = sleep_until(idle_at.unwrap_or(grace_end)), if open && idle_at.is_some() && ctx.is_authenticated() => {
                    // Re-checked: a forward may have moved bytes meanwhile.
                    if ctx.idle_deadline(idle_timeout).is_some_and(|at| at <= Instant::now()) {
                        ctx.close("idle_timeout");
                    }
                }
                () = terminate.cancelled(), if open => ctx.close("shutdown"),
                () = ctx.closing(), if told.is_none() => {
                    told = Some(Instant::now() + CLOSE_WAIT);
                    let message = disconnect_message(ctx.close_reason());
                    let handle = handle.clone();
                    let ctx = ctx.clone();
                    // Not awaited here: the session loop must keep running to
                    // send it. The forwards end once the message is queued
                    // before their channel closes.
                    tokio::spawn(async move {
                        let _ = handle.disconnect(Disconnect::ByApplication, message.into(), "en".into()).await;
                        ctx.end_forwards();
                    });
                }
                () = sleep_until(told.unwrap_or(grace_end)), if told.is_some() => break,
            }
        }
    }
    // Forwards whose channels the client closed before leaving finish by
    // themselves in a moment; the rest end now. Either way they write their
    // close rows before the connection's.
    state.live.remove(ctx.id());
    ctx.settle(SETTLE).await;
    ctx.close("connection_closed");
    ctx.end_forwards();
    ctx.finish().await;
    if ctx.login_abandoned() {
        let unknown = ctx.unknown_key();
        let mut ev = Event::new(EventKind::AuthFailure)
            .connection(ctx.id(), peer)
            .reason(if unknown.is_some() {
                "unknown_key"
            } else {
                "login_incomplete"
            })
            .detail("counts", false);
        if let Some(fp) = unknown {
            ev = ev
                .detail("key_fingerprint", fp)
                .detail("method", "publickey");
        }
        if let Some(u) = ctx.user_name() {
            ev = ev.user(u);
        }
        audit.emit(ev);
    }
    for (reason, repeated) in ctx.repeated_channel_refusals() {
        let mut ev = Event::new(EventKind::ChannelRefused)
            .connection(ctx.id(), peer)
            .reason(reason)
            .detail("repeated", repeated);
        if let Some(u) = ctx.user_name() {
            ev = ev.user(u);
        }
        audit.emit(ev);
    }
    audit.connection_close(
        ctx.id(),
        peer,
        ctx.user_name().as_deref(),
        ctx.close_reason(),
        ctx.opened().elapsed(),
        ctx.client_version(),
    );
}

/// What the client is told when portvakt ends its connection.
fn disconnect_message(reason: &str) -> &'static str {
    match reason {
        "login_timeout" => "portvakt: login took too long",
        "certificate_expired" => "portvakt: your certificate expired",
        "grant_expired" => "portvakt: your login grant expired; log in again",
        "grant_revoked" => "portvakt: your login grant was revoked",
        "config_revoked" => {
            "portvakt: the bastion's configuration no longer allows your login; log in again"
        }
        "max_duration" => "portvakt: maximum connection time reached",
        "idle_timeout" => "portvakt: connection idle for too long",
        "too_many_attempts" => "portvakt: too many authentication attempts",
        "banned" => "portvakt: too many failed logins from your address; try again later",
        "database_unavailable" => {
            "portvakt: the audit database is unavailable, so logins are refused for now; try again later"
        }
        "shutdown" => "portvakt: the bastion is restarting",
        _ => "portvakt: connection closed",
    }
}

/// `/readyz`: the database answers and, with `[oidc]`, the IdP was discovered.
struct Ready {
    state: Arc<ServerState>,
}

impl crate::metrics::Readiness for Ready {
    async fn check(&self) -> Result<(), String> {
        if self.state.shutdown.is_cancelled() {
            return Err("shutting down".into());
        }
        self.state
            .services
            .store
            .ping()
            .await
            .map_err(|e| format!("database: {e}"))?;
        if let Some(idp) = self.state.services.idp()
            && !idp.ready().await
        {
            return Err("identity provider discovery failed".into());
        }
        Ok(())
    }
}

/// Gauges read from the shared database (all nodes): grants and bans in force.
async fn gauges(store: Store, stop: CancellationToken) {
    loop {
        if let Ok(n) = crate::auth::grants::active_count(&store).await {
            crate::metrics::get().grants_active.set(n);
        }
        if let Ok(bans) = crate::auth::lockout::list(&store).await {
            crate::metrics::get().bans_active.set(bans.len() as i64);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
            () = stop.cancelled() => return,
        }
    }
}
