//! Carrying bytes for an [`Authorized`] forward: dial with a timeout, pump
//! both ways with half-close and byte counters, stop on idle, deadline or
//! cancellation.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use prometheus_client::metrics::counter::Counter;

use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelReadHalf};

use crate::policy::Authorized;
use crate::reasons::{ForwardEnd, ForwardStop};

/// Bytes read from a target per step: one SSH packet's worth (the client's
/// direction needs no buffer of ours: its packets are written as they come).
const BUF: usize = 32 * 1024;

/// How long a quiet forward keeps its read buffer before giving it back.
const KEEP_BUF: Duration = Duration::from_secs(2);

/// The longest a write towards the target may make no progress (the idle
/// timeout, if shorter, is the bound instead). One write carries one SSH
/// packet's data, at most 32 KiB, so a write this slow means a target that
/// stopped reading. Without a bound, a stuck write holds the channel's queue
/// full and, once the queue is full, the connection's whole session loop.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why dialling a target failed; the names are audit reasons.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connect_refused")]
    Refused,
    #[error("connect_timeout")]
    Timeout,
    #[error("connect_failed")]
    Failed(#[source] io::Error),
}

impl DialError {
    /// The forward's close reason.
    pub fn reason(&self) -> ForwardStop {
        match self {
            DialError::Refused => ForwardStop::ConnectRefused,
            DialError::Timeout => ForwardStop::ConnectTimeout,
            DialError::Failed(_) => ForwardStop::ConnectFailed,
        }
    }

    /// What the client is told.
    pub fn user_text(&self) -> &'static str {
        match self {
            DialError::Refused => "connection refused",
            DialError::Timeout => "no answer in time",
            DialError::Failed(_) => "cannot connect",
        }
    }
}

/// Connect to the first address of `auth` that answers, within `timeout` in
/// all. Only an [`Authorized`] can be dialled.
pub async fn dial(
    auth: &Authorized,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), DialError> {
    let attempt = async {
        let mut last = DialError::Refused;
        for addr in auth.addrs() {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    // Interactive SSH traffic: do not let Nagle hold keystrokes.
                    let _ = s.set_nodelay(true);
                    return Ok((s, *addr));
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => last = DialError::Refused,
                Err(e) => last = DialError::Failed(e),
            }
        }
        Err(last)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(DialError::Timeout))
}

/// Byte counts of one forward, readable while it runs, and the process-wide
/// counters they add to.
#[derive(Debug, Default)]
pub struct Counters {
    pub to_target: AtomicU64,
    pub from_target: AtomicU64,
    /// Prometheus counters (to target, from target).
    pub totals: Option<(Counter, Counter)>,
}

/// When a pump must stop even though both sides are still open.
#[derive(Debug, Clone)]
pub struct Limits {
    /// No byte in either direction for this long.
    pub idle_timeout: Duration,
    /// A write towards the target that has not finished after this long
    /// ends the forward ([`End::WriteTimeout`]); see [`Limits::write_timeout`].
    pub write_timeout: Duration,
    /// The connection's end (certificate expiry, `max_duration`), with the
    /// reason to record when it is reached.
    pub deadline: Option<(Instant, ForwardEnd)>,
}

impl Limits {
    /// The write timeout for a given idle timeout: [`WRITE_TIMEOUT`], or
    /// the idle timeout if that is shorter.
    pub fn write_timeout(idle_timeout: Duration) -> Duration {
        idle_timeout.min(WRITE_TIMEOUT)
    }
}

/// Why a pump ended; the names are audit close reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Both sides finished (EOF both ways) or one side closed.
    Closed,
    IdleTimeout,
    /// The target took no bytes for [`Limits::write_timeout`] while the
    /// client had bytes for it.
    WriteTimeout,
    /// The deadline of [`Limits`] was reached.
    Deadline(ForwardEnd),
    /// The connection ended or the server is shutting down.
    Cancelled(ForwardEnd),
    /// A read or write failed (reset by a peer, for instance).
    Error(String),
}

impl End {
    pub fn reason(&self) -> ForwardEnd {
        match self {
            End::Closed => ForwardStop::Closed.into(),
            End::IdleTimeout => ForwardStop::IdleTimeout.into(),
            End::WriteTimeout => ForwardStop::WriteTimeout.into(),
            End::Deadline(r) | End::Cancelled(r) => *r,
            End::Error(_) => ForwardStop::Error.into(),
        }
    }
}

/// How the client's side of a forward ended (its EOF is signalled apart).
enum ClientSide {
    /// CHANNEL_CLOSE: the client is done with the channel.
    Closed,
    /// The channel vanished without EOF or CLOSE: the connection is gone.
    Gone,
    /// The target refused more bytes (it closed or reset).
    TargetGone,
    /// The target stopped taking bytes.
    TargetStuck,
}

/// Carry bytes between the client's channel and the target until both sides
/// are done, the forward is idle for too long, the deadline passes, or
/// `cancel` fires (with its reason from `cancel_reason`).
///
/// The client's side is read message by message, so that a clean end
/// (CHANNEL_EOF / CHANNEL_CLOSE) can be told from a connection that died, and
/// its data is written to the target without another copy.
pub async fn pump(
    channel: Channel<Msg>,
    target: TcpStream,
    limits: &Limits,
    cancel: &CancellationToken,
    cancel_reason: impl Fn() -> ForwardEnd,
    counters: &Counters,
) -> End {
    let start = Instant::now();
    // Milliseconds since `start` of the last byte moved, either way.
    let activity = AtomicU64::new(0);
    let (mut from_client, to_client) = channel.split();
    let (target_r, mut target_w) = target.into_split();
    let (total_to, total_from) = match &counters.totals {
        Some((to, from)) => (Some(to), Some(from)),
        None => (None, None),
    };
    // Set when the client sent EOF; it may still receive, and its CLOSE
    // (or the connection's end) comes later on the same stream.
    let client_eof = tokio::sync::Notify::new();
    let up = copy_from_client(
        &mut from_client,
        &mut target_w,
        limits.write_timeout,
        counters,
        total_to,
        (&activity, start),
        &client_eof,
    );
    let down = copy_from_target(
        target_r,
        to_client.make_writer(),
        &counters.from_target,
        total_from,
        &activity,
        start,
    );
    let deadline = deadline(limits.deadline);
    let end = {
        tokio::pin!(up, down, deadline);
        let (mut client_done, mut target_done) = (false, false);
        loop {
            tokio::select! {
                r = &mut up => match r {
                    Ok(ClientSide::Closed) | Ok(ClientSide::TargetGone) => break End::Closed,
                    Ok(ClientSide::Gone) => break End::Cancelled(cancel_reason()),
                    Ok(ClientSide::TargetStuck) => break End::WriteTimeout,
                    Err(e) => break End::Error(e.to_string()),
                },
                () = client_eof.notified(), if !client_done => {
                    client_done = true;
                    if target_done {
                        break End::Closed;
                    }
                }
                r = &mut down, if !target_done => match r {
                    Ok(()) if client_done => break End::Closed,
                    Ok(()) => target_done = true,
                    Err(e) => break End::Error(e.to_string()),
                },
                () = idle(limits.idle_timeout, &activity, start) => break End::IdleTimeout,
                reason = &mut deadline => break End::Deadline(reason),
                () = cancel.cancelled() => break End::Cancelled(cancel_reason()),
            }
        }
    };
    // Stop taking the client's data first: the session loop may be waiting
    // for room in this channel's queue, and must run to send the close.
    drop(from_client);
    // Tell the client the channel is over (a no-op if the connection is gone).
    let _ = to_client.close().await;
    end
}

/// Client to target: write each data message as it comes (no copy of
/// ours), count it; on the client's EOF shut the target's side and say so
/// through `client_eof`; end on CHANNEL_CLOSE or when the channel vanishes.
async fn copy_from_client(
    from_client: &mut ChannelReadHalf,
    target_w: &mut OwnedWriteHalf,
    write_timeout: Duration,
    counters: &Counters,
    total: Option<&Counter>,
    (activity, start): (&AtomicU64, Instant),
    client_eof: &tokio::sync::Notify,
) -> io::Result<ClientSide> {
    let mut eof = false;
    loop {
        match from_client.wait().await {
            Some(ChannelMsg::Data { data }) if !eof => {
                match tokio::time::timeout(write_timeout, target_w.write_all(&data)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if peer_gone(&e) => return Ok(ClientSide::TargetGone),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Ok(ClientSide::TargetStuck),
                }
                counters
                    .to_target
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                if let Some(t) = total {
                    t.inc_by(data.len() as u64);
                }
                activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
            Some(ChannelMsg::Eof) if !eof => {
                eof = true;
                let _ = target_w.shutdown().await;
                client_eof.notify_one();
            }
            Some(ChannelMsg::Close) => return Ok(ClientSide::Closed),
            Some(_) => {}
            None => return Ok(ClientSide::Gone),
        }
    }
}

/// Resolves with the reason when the connection's deadline passes.
async fn deadline(at: Option<(Instant, ForwardEnd)>) -> ForwardEnd {
    match at {
        Some((at, reason)) => {
            tokio::time::sleep_until(at).await;
            reason
        }
        None => std::future::pending().await,
    }
}

/// Target to client: read, write, count; on EOF pass the EOF on
/// (half-close). The buffer exists only while bytes flow, so an idle forward
/// holds none.
async fn copy_from_target<W>(
    r: OwnedReadHalf,
    mut w: W,
    counter: &AtomicU64,
    total: Option<&Counter>,
    activity: &AtomicU64,
    start: Instant,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if buf.is_empty() {
            match r.readable().await {
                Ok(()) => buf = vec![0u8; BUF],
                Err(e) if peer_gone(&e) => {
                    let _ = w.shutdown().await;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        let n = match r.try_read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Caught up. Traffic usually goes on: keep the buffer for a
                // moment, give it back once the target has gone quiet.
                match tokio::time::timeout(KEEP_BUF, r.readable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if peer_gone(&e) => {
                        let _ = w.shutdown().await;
                        return Ok(());
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) => buf = Vec::new(),
                }
                continue;
            }
            Err(e) if peer_gone(&e) => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            // The other side may already be gone entirely; that is a close.
            let _ = w.shutdown().await;
            return Ok(());
        }
        match w.write_all(&buf[..n]).await {
            Ok(()) => {}
            Err(e) if peer_gone(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(t) = total {
            t.inc_by(n as u64);
        }
        activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// A peer that closed or reset its connection ended the forward normally.
fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
    )
}

/// Resolves once no byte moved for `timeout`.
async fn idle(timeout: Duration, activity: &AtomicU64, start: Instant) {
    loop {
        let last = start + Duration::from_millis(activity.load(Ordering::Relaxed));
        let due = last + timeout;
        if Instant::now() >= due {
            return;
        }
        tokio::time::sleep_until(due).await;
    }
}
