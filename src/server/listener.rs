//! Accept and admit: the connection limits, a trusted balancer's PROXY
//! header, bans and the login limits, all before any SSH byte is sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::ServerState;
use super::conn;
use super::limits;
use super::proxy::{self, Prefixed};
use super::shards::Shards;
use crate::reasons::ConnRefusal;

/// How long a trusted balancer has to send its PROXY header.
const PROXY_WAIT: Duration = Duration::from_secs(10);

/// Accept connections on `listener` until the server stops accepting, each
/// served on one of the `shards`. `terminate` ends the connections still
/// open when the drain time is over.
pub async fn accept_loop(
    state: Arc<ServerState>,
    listener: TcpListener,
    shards: Arc<Shards>,
    terminate: CancellationToken,
) {
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
                .record(&state.audit, peer, ConnRefusal::MaxConnections);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // The socket moves to the shard's runtime (a descriptor, still
        // non-blocking), registered there by `from_std`.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand an accepted connection on");
                continue;
            }
        };
        let (state, terminate) = (state.clone(), terminate.clone());
        shards.spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => admit(state, stream, peer, conn_permit, terminate).await,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot take over an accepted connection");
                }
            }
        });
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
    let local = stream.local_addr().unwrap_or(peer);
    // Ends the russh session task for good once serve() is done with it.
    let kill = CancellationToken::new();
    let Some((client, stream)) = client_of(&state, stream, peer, &kill).await else {
        return;
    };
    if let Err(why) = admissible(&state, client) {
        state.refusals.record(&state.audit, client, why);
        return;
    }
    let cfg = state.config.load_full();
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
                limits::Full::Global => ConnRefusal::MaxUnauthenticated,
                limits::Full::Source => ConnRefusal::MaxUnauthenticatedPerSource,
            };
            state.refusals.record(&state.audit, client, why);
            return;
        }
    };
    drop(cfg);
    conn::serve(
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

/// The client's address: the peer's, or the one a trusted balancer's PROXY
/// header gives. `None`: nothing to serve (a health check, a bad header).
async fn client_of(
    state: &ServerState,
    stream: TcpStream,
    peer: SocketAddr,
    kill: &CancellationToken,
) -> Option<(SocketAddr, Prefixed)> {
    let trusted = state
        .config
        .load()
        .server
        .proxy_protocol_from
        .iter()
        .any(|n| n.contains(&peer.ip().to_canonical()));
    if !trusted {
        return Some((peer, Prefixed::new(Vec::new(), stream, kill)));
    }
    match proxy::accept(stream, PROXY_WAIT, kill).await {
        Ok((Some(client), stream)) => Some((client, stream)),
        // The balancer's own health check: nothing to serve.
        Ok((None, _)) => None,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "connection from a PROXY-protocol balancer refused");
            state
                .refusals
                .record(&state.audit, peer, ConnRefusal::ProxyHeader);
            None
        }
    }
}

/// Banned sources are closed before the SSH handshake.
fn admissible(state: &ServerState, client: SocketAddr) -> Result<(), ConnRefusal> {
    if state.services.lockout.is_banned(client.ip()) {
        return Err(ConnRefusal::Banned);
    }
    Ok(())
}
