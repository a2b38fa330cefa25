//! The PROXY protocol (v1 and v2, as HAProxy and cloud load balancers send
//! it) from trusted load balancers only (`[server] proxy_protocol_from`): the
//! client's real address is what bans, limits and the audit trail must see,
//! not the balancer's.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Longest header accepted (v2 with a few TLVs; v1 is at most 107 bytes).
const MAX_HEADER: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY header in time")]
    Timeout,
    #[error("bad PROXY header: {0}")]
    Invalid(String),
    #[error("connection closed before the PROXY header ended")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Read the header; returns the client address it names (`None` for a
/// balancer's own health check: `LOCAL` / `UNKNOWN`) and the stream with any
/// bytes read past the header put back in front.
pub async fn accept(
    mut stream: TcpStream,
    wait: Duration,
    kill: &CancellationToken,
) -> Result<(Option<SocketAddr>, Prefixed), ProxyError> {
    let mut buf = Vec::with_capacity(256);
    let read = async {
        loop {
            let mut chunk = [0u8; 256];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(ProxyError::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
            let parsed = HeaderResult::parse(&buf);
            if parsed.is_incomplete() {
                if buf.len() > MAX_HEADER {
                    return Err(ProxyError::Invalid("header too long".into()));
                }
                continue;
            }
            return match parsed {
                HeaderResult::V2(Ok(h)) => Ok((v2_source(&h), h.len())),
                HeaderResult::V1(Ok(h)) => Ok((v1_source(&h), h.header.len())),
                HeaderResult::V2(Err(e)) => Err(ProxyError::Invalid(e.to_string())),
                HeaderResult::V1(Err(e)) => Err(ProxyError::Invalid(e.to_string())),
            };
        }
    };
    let (source, used) = tokio::time::timeout(wait, read)
        .await
        .map_err(|_| ProxyError::Timeout)??;
    let rest = buf.split_off(used.min(buf.len()));
    Ok((source, Prefixed::new(rest, stream, kill)))
}

fn v2_source(h: &v2::Header<'_>) -> Option<SocketAddr> {
    if h.command != v2::Command::Proxy {
        return None;
    }
    match h.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        _ => None,
    }
}

fn v1_source(h: &v1::Header<'_>) -> Option<SocketAddr> {
    match h.addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    }
}

/// A client's TCP stream, with bytes already read put back in front of it,
/// and a kill switch: once `kill` fires, waiting reads and writes fail, so
/// the russh session task that owns the stream ends (dropping a russh
/// session handle does not stop its task).
pub struct Prefixed {
    prefix: Vec<u8>,
    at: usize,
    inner: TcpStream,
    kill: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl std::fmt::Debug for Prefixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefixed")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Prefixed {
    pub fn new(prefix: Vec<u8>, inner: TcpStream, kill: &CancellationToken) -> Self {
        Prefixed {
            prefix,
            at: 0,
            inner,
            kill: Box::pin(kill.clone().cancelled_owned()),
        }
    }

    /// After a `Pending` from the socket: has the stream been killed?
    fn killed(&mut self, cx: &mut Context<'_>) -> bool {
        self.kill.as_mut().poll(cx).is_ready()
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Pending if self.killed(cx) => {
                Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending if self.killed(cx) => {
                Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()))
            }
            other => other,
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending if self.killed(cx) => {
                Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()))
            }
            other => other,
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    async fn through(header: &[u8]) -> Result<(Option<SocketAddr>, Vec<u8>), ProxyError> {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut payload = header.to_vec();
        payload.extend_from_slice(b"SSH-2.0-client\r\n");
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&payload).await.unwrap();
            c.shutdown().await.unwrap();
        });
        let (s, _) = l.accept().await.unwrap();
        let r = accept(s, Duration::from_secs(5), &CancellationToken::new()).await;
        client.await.unwrap();
        let (src, mut stream) = r?;
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        Ok((src, rest))
    }

    #[tokio::test]
    async fn v1_and_v2_headers_give_the_client_address_and_keep_the_rest() {
        let (src, rest) = through(b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 2222\r\n")
            .await
            .unwrap();
        assert_eq!(src, Some("192.0.2.7:51234".parse().unwrap()));
        assert_eq!(rest, b"SSH-2.0-client\r\n");

        let v2 = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (
                "[2001:db8::7]:4000".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:2222".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let (src, rest) = through(&v2).await.unwrap();
        assert_eq!(src, Some("[2001:db8::7]:4000".parse().unwrap()));
        assert_eq!(rest, b"SSH-2.0-client\r\n");

        let (src, _) = through(b"PROXY UNKNOWN\r\n").await.unwrap();
        assert_eq!(src, None);
    }

    #[tokio::test]
    async fn a_missing_or_bad_header_is_refused() {
        assert!(matches!(through(b"").await, Err(ProxyError::Invalid(_))));
        // Refused one way or another: invalid, or never complete.
        assert!(through(b"PROXY TCP4 nonsense\r\n").await.is_err());
        assert!(through(b"PROXY TCP4 192.0.2.7\r\n").await.is_err());
    }
}
