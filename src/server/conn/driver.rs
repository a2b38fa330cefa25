//! One connection from accept to its last audit row: the handshake within
//! `login_grace_time`, the deadlines (login grace, credential expiry,
//! `max_duration`, idle), telling the client why it is ended, and the rows
//! written when it is over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::Disconnect;
use russh::server::RunningSession;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::ConnCtx;
use super::handler::Connection;
use crate::audit::{Event, EventKind};
use crate::reasons::CloseReason;
use crate::server::ServerState;
use crate::server::limits::LoginSlot;
use crate::server::proxy::Prefixed;

/// How long to wait for a connection to go after it was told to.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// One connection from accept to the last audit row.
pub async fn serve(
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
    state.audit.connection_open(ctx.id(), peer);
    let grace_end = ctx.opened() + state.config.load().server.login_grace_time;
    let handler = Connection::new(state.clone(), ctx.clone(), login_permit, grace_end);
    let started = tokio::time::timeout_at(
        grace_end,
        russh::server::run_stream(state.ssh.clone(), stream, handler),
    )
    .await;
    match started {
        Err(_) => ctx.close(CloseReason::LoginTimeout),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "SSH handshake failed");
            ctx.close(CloseReason::ProtocolError);
        }
        Ok(Ok(session)) => drive(&state, &ctx, session, grace_end, &terminate).await,
    }
    state.live.remove(ctx.id());
    ctx.wind_down().await;
    last_rows(&state, &ctx);
}

/// Run the session until the client leaves, or until portvakt ends it and
/// the client was told why (or had `CLOSE_WAIT` to read it).
async fn drive(
    state: &ServerState,
    ctx: &Arc<ConnCtx>,
    session: RunningSession<Connection>,
    grace_end: Instant,
    terminate: &CancellationToken,
) {
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
                // The reason only: forwards get a moment to finish on their
                // own (their EOFs may still be queued).
                ctx.set_reason(session_end(ctx.source(), r));
                return;
            }
            () = sleep_until(grace_end), if open && !ctx.is_authenticated() => {
                ctx.close(CloseReason::LoginTimeout);
            }
            Ok(()) = auth_rx.changed() => deadline = ctx.deadline().map(|(at, _)| at),
            () = sleep_until(deadline.unwrap_or(grace_end)), if open && deadline.is_some() => {
                ctx.close(ctx.deadline().map_or(CloseReason::MaxDuration, |(_, r)| r));
            }
            () = sleep_until(idle_at.unwrap_or(grace_end)), if open && idle_at.is_some() && ctx.is_authenticated() => {
                // Re-checked: a forward may have moved bytes meanwhile.
                if ctx.idle_deadline(idle_timeout).is_some_and(|at| at <= Instant::now()) {
                    ctx.close(CloseReason::IdleTimeout);
                }
            }
            () = terminate.cancelled(), if open => ctx.close(CloseReason::Shutdown),
            () = ctx.closing(), if told.is_none() => {
                told = Some(Instant::now() + CLOSE_WAIT);
                tell(ctx.clone(), handle.clone());
            }
            () = sleep_until(told.unwrap_or(grace_end)), if told.is_some() => return,
        }
    }
}

/// Tell the client why it is ended, then end the forwards. Not awaited by
/// the driver: the session loop must keep running to send the message, and
/// the forwards end once it is queued, before their channels close.
fn tell(ctx: Arc<ConnCtx>, handle: russh::server::Handle) {
    let message = ctx.close_reason().user_text();
    tokio::spawn(async move {
        let _ = handle
            .disconnect(Disconnect::ByApplication, message.into(), "en".into())
            .await;
        ctx.end_forwards();
    });
}

/// Why the session ended when it ended by itself.
fn session_end(peer: SocketAddr, r: Result<(), russh::Error>) -> CloseReason {
    use std::io::ErrorKind;
    match r {
        Ok(()) => CloseReason::ClientClosed,
        // Clients often just close the socket after their last channel.
        Err(russh::Error::IO(e))
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            ) =>
        {
            CloseReason::ClientClosed
        }
        Err(russh::Error::KeepaliveTimeout) | Err(russh::Error::InactivityTimeout) => {
            CloseReason::KeepaliveTimeout
        }
        // The client ignored flow control (russh patch 6).
        Err(e @ russh::Error::ChannelWindowExceeded { .. }) => {
            tracing::info!(%peer, error = %e, "client sent data past its channel window");
            CloseReason::WindowExceeded
        }
        Err(e @ russh::Error::ChannelPacketTooLarge { .. }) => {
            tracing::info!(%peer, error = %e, "client sent an oversized channel data packet");
            CloseReason::PacketTooLarge
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection error");
            CloseReason::ProtocolError
        }
    }
}

/// A login left unfinished, the repeats of refused channel requests, and
/// the connection's close.
fn last_rows(state: &ServerState, ctx: &ConnCtx) {
    let audit = &state.audit;
    let peer = ctx.source();
    if !ctx.is_authenticated()
        && let Some(left) = ctx.trail().abandoned()
    {
        let mut ev = Event::new(EventKind::AuthFailure)
            .connection(ctx.id(), peer)
            .reason(left.reason())
            .detail("counts", false);
        if let Some(fp) = left.unknown_key {
            ev = ev
                .detail("key_fingerprint", fp)
                .detail("method", crate::reasons::SshMethod::Publickey.as_str());
        }
        if let Some(u) = left.user {
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
