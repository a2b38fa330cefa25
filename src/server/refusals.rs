//! Connections refused before the SSH handshake (a banned source, a full
//! connection limit, a bad PROXY header) are audited as `connection.refused`.
//!
//! A flood must not become a flood of database writes, and no refusal may go
//! uncounted: the first refusal of a source for a reason is written at once
//! (`refused: 1`); further ones within the same minute are counted and
//! written by [`Refusals::flush`] as one row with their number. Every refusal
//! also counts in `portvakt_connections_refused_total{reason}` at once.
//! At most [`MAX_SOURCES`] sources are tracked apiece; past that, refusals of
//! further sources are counted under one row without a source.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::audit::{Audit, Event, EventKind};
use crate::reasons::ConnRefusal;

/// How often counted refusals are written.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked one by one.
pub const MAX_SOURCES: usize = 4096;

/// The overflow key: refusals of sources past [`MAX_SOURCES`].
const OTHERS: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

#[derive(Debug)]
struct Pending {
    /// Refusals since the last row.
    count: u64,
    /// The latest refused client.
    last: SocketAddr,
}

#[derive(Debug, Default)]
pub struct Refusals {
    pending: Mutex<HashMap<(IpAddr, ConnRefusal), Pending>>,
}

impl Refusals {
    /// Count a refusal; write its row now if it is the first of this source
    /// and reason in the current window.
    pub fn record(&self, audit: &Audit, peer: SocketAddr, why: ConnRefusal) {
        crate::metrics::get().connection_refused(why);
        if let Some(ev) = self.count(peer, why) {
            audit.emit(ev);
        }
    }

    /// Write a row for each source and reason with refusals counted since
    /// the last one; forget those that had none.
    pub fn flush(&self, audit: &Audit) {
        for ev in self.take() {
            audit.emit(ev);
        }
    }

    fn count(&self, peer: SocketAddr, why: ConnRefusal) -> Option<Event> {
        let ip = peer.ip().to_canonical();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let key = if pending.len() >= MAX_SOURCES && !pending.contains_key(&(ip, why)) {
            (OTHERS, why)
        } else {
            (ip, why)
        };
        if let Some(p) = pending.get_mut(&key) {
            p.count += 1;
            p.last = peer;
            return None;
        }
        let first = key.0 != OTHERS;
        pending.insert(
            key,
            Pending {
                count: u64::from(!first),
                last: peer,
            },
        );
        first.then(|| row(Some(peer), why, 1))
    }

    fn take(&self) -> Vec<Event> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows = Vec::new();
        pending.retain(|(ip, why), p| {
            if p.count == 0 {
                return false;
            }
            let source = (*ip != OTHERS).then_some(p.last);
            rows.push(row(source, *why, p.count));
            p.count = 0;
            true
        });
        rows
    }

    /// Flush every [`WINDOW`] until `stop`, then once more.
    pub async fn run(&self, audit: Audit, stop: CancellationToken) {
        let mut tick = tokio::time::interval(WINDOW);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush(&audit),
                () = stop.cancelled() => break,
            }
        }
        self.flush(&audit);
    }
}

fn row(source: Option<SocketAddr>, why: ConnRefusal, count: u64) -> Event {
    let mut ev = Event::new(EventKind::ConnectionRefused)
        .reason(why)
        .detail("refused", count);
    match source {
        Some(peer) => ev.source = Some(peer.to_string()),
        None => ev = ev.detail("sources", "many"),
    }
    if count > 1 || source.is_none() {
        ev = ev.detail("window_seconds", WINDOW.as_secs());
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], port))
    }

    fn rows(evs: impl IntoIterator<Item = Event>) -> Vec<(Option<String>, String, u64)> {
        evs.into_iter()
            .map(|e| {
                assert_eq!(e.kind, EventKind::ConnectionRefused);
                (
                    e.source.clone(),
                    e.reason.clone().unwrap(),
                    e.detail["refused"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn first_refusal_is_written_at_once_and_the_rest_counted() {
        let r = Refusals::default();
        let now: Vec<Event> = [
            (peer(1, 1000), ConnRefusal::Banned),
            (peer(1, 1001), ConnRefusal::Banned),
            (peer(1, 1002), ConnRefusal::Banned),
            (peer(1, 1003), ConnRefusal::MaxConnections),
            (peer(2, 1004), ConnRefusal::Banned),
        ]
        .into_iter()
        .filter_map(|(p, why)| r.count(p, why))
        .collect();
        assert_eq!(
            rows(now),
            [
                (Some("10.0.0.1:1000".into()), "banned".into(), 1),
                (Some("10.0.0.1:1003".into()), "max_connections".into(), 1),
                (Some("10.0.0.2:1004".into()), "banned".into(), 1),
            ]
        );
        let flushed = r.take();
        assert_eq!(flushed[0].detail["window_seconds"], 60);
        assert_eq!(
            rows(flushed),
            [(Some("10.0.0.1:1002".into()), "banned".into(), 2)]
        );
        // A counted bucket stays for one more window, then goes; after a
        // quiet window the next refusal is written at once again.
        assert!(r.count(peer(1, 1005), ConnRefusal::Banned).is_none());
        assert_eq!(rows(r.take()).len(), 1);
        assert!(r.take().is_empty());
        assert!(r.count(peer(1, 1006), ConnRefusal::Banned).is_some());
    }

    #[test]
    fn sources_past_the_cap_are_counted_under_one_row() {
        let r = Refusals::default();
        let written = (0..(MAX_SOURCES as u32 + 10))
            .filter_map(|i| {
                let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
                r.count(SocketAddr::new(ip, 22), ConnRefusal::MaxUnauthenticated)
            })
            .count();
        assert_eq!(written, MAX_SOURCES);
        let flushed = r.take();
        assert_eq!(flushed.len(), 1, "{flushed:?}");
        assert_eq!(flushed[0].source, None);
        assert_eq!(flushed[0].detail["refused"], 10);
        assert_eq!(flushed[0].detail["sources"], "many");
        // The tracked sources had one refusal each (written at once) and are
        // forgotten now; the overflow row is kept for one more window.
        assert_eq!(r.pending.lock().unwrap().len(), 1);
        assert!(r.take().is_empty());
        assert!(r.pending.lock().unwrap().is_empty());
    }

    #[test]
    fn ipv4_mapped_sources_count_as_their_ipv4_address() {
        let r = Refusals::default();
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:5".parse().unwrap();
        assert!(r.count(peer(1, 4), ConnRefusal::Banned).is_some());
        assert!(r.count(mapped, ConnRefusal::Banned).is_none());
    }
}
