//! The console's connections: its own accept loop on hyper (HTTP/1.1), so
//! that a connection must send its request headers within
//! [`HEADER_TIMEOUT`], at most [`MAX_CONNECTIONS`] are open at once, a
//! connection is closed [`LIFETIME`] after it opened (once its request in
//! flight is answered; browsers open another), and a stop lets
//! requests in flight finish for up to [`DRAIN`]. (`axum::serve` offers
//! none of these limits.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// A request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Console connections open at once (reviewers are few; browsers open a
/// handful each).
const MAX_CONNECTIONS: usize = 512;
/// A connection is closed this long after it opened, so that an idle
/// keep-alive connection cannot hold a slot for ever.
const LIFETIME: Duration = Duration::from_secs(120);
/// On stop, requests in flight get this long.
const DRAIN: Duration = Duration::from_secs(5);

/// The browser's address, as the handlers read it (`ConnectInfo<Peer>`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Accept on `listener` and serve `app` until `stop`.
pub async fn run<L>(mut listener: L, app: Router, stop: CancellationToken)
where
    L: Listener<Addr = SocketAddr>,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tasks = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = stop.cancelled() => break,
        };
        let (io, peer) = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => break,
        };
        let app = app.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ConnectInfo(Peer(peer)));
                app.clone().oneshot(req)
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(io), service);
            let mut conn = std::pin::pin!(conn);
            let mut lifetime = std::pin::pin!(tokio::time::sleep(LIFETIME));
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "console connection ended");
                        }
                        return;
                    }
                    () = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(DRAIN, conn.as_mut()).await;
                        return;
                    }
                    () = &mut lifetime => {
                        // Let a request in flight finish, then close.
                        conn.as_mut().graceful_shutdown();
                        lifetime.set(tokio::time::sleep(DRAIN));
                    }
                }
            }
        });
    }
    tasks.close();
    let _ = tokio::time::timeout(DRAIN * 2, tasks.wait()).await;
}
