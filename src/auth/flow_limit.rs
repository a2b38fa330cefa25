//! How many IdP device flows may start: per source and in all, over a
//! sliding minute. Each start costs a request at the IdP, whose own rate
//! limits are shared by every user; anonymous clients must not be able to
//! use them up (a flow also needs a proven key first, see `interactive`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window both limits count in.
const WINDOW: Duration = Duration::from_secs(60);
/// Device flows one source (an IPv4 address, an IPv6 prefix) may start per
/// minute: a person needs one, the client retries three times.
pub const PER_SOURCE: usize = 6;
/// Device flows this node starts per minute in all.
pub const GLOBAL: usize = 120;

#[derive(Debug, Default)]
pub struct FlowLimit {
    starts: Mutex<Starts>,
}

#[derive(Debug, Default)]
struct Starts {
    all: VecDeque<Instant>,
    by_source: HashMap<String, VecDeque<Instant>>,
}

impl FlowLimit {
    /// May `source` start a device flow now? Counts the start if so.
    pub fn try_start(&self, source: &str) -> bool {
        self.try_start_at(source, Instant::now())
    }

    fn try_start_at(&self, source: &str, now: Instant) -> bool {
        let Ok(mut s) = self.starts.lock() else {
            return false;
        };
        let old = |q: &mut VecDeque<Instant>| {
            while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
                q.pop_front();
            }
        };
        old(&mut s.all);
        s.by_source.retain(|_, q| {
            old(q);
            !q.is_empty()
        });
        let mine = s.by_source.get(source).map_or(0, VecDeque::len);
        if s.all.len() >= GLOBAL || mine >= PER_SOURCE {
            return false;
        }
        s.all.push_back(now);
        s.by_source
            .entry(source.to_string())
            .or_default()
            .push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_and_global_limits_slide_with_the_minute() {
        let l = FlowLimit::default();
        let t0 = Instant::now();
        for _ in 0..PER_SOURCE {
            assert!(l.try_start_at("10.0.0.1", t0));
        }
        assert!(!l.try_start_at("10.0.0.1", t0), "a seventh from one source");
        assert!(
            l.try_start_at("10.0.0.2", t0),
            "another source is not held up"
        );
        assert!(l.try_start_at("10.0.0.1", t0 + WINDOW), "a minute later");
        let g = FlowLimit::default();
        for i in 0..GLOBAL {
            assert!(g.try_start_at(&format!("s{}", i % 50), t0));
        }
        assert!(!g.try_start_at("fresh", t0), "past the node's limit");
    }
}
