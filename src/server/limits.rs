//! Limits on connections still logging in: in all (`max_unauthenticated`,
//! a semaphore) and per source (`max_unauthenticated_per_source`), so one
//! address cannot use up the slots of everyone else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::lockout::source_key;

/// Counts of connections still logging in, per source.
#[derive(Debug, Default)]
pub struct PerSource {
    counts: Mutex<HashMap<String, usize>>,
}

/// Held while a connection logs in; dropping it frees both slots.
#[derive(Debug)]
pub struct LoginSlot {
    _global: OwnedSemaphorePermit,
    per_source: Arc<PerSource>,
    key: String,
}

impl Drop for LoginSlot {
    fn drop(&mut self) {
        if let Ok(mut c) = self.per_source.counts.lock()
            && let Some(n) = c.get_mut(&self.key)
        {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.key);
            }
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `max_unauthenticated` connections are logging in.
    Global,
    /// This source has `max_unauthenticated_per_source` logging in.
    Source,
}

/// Take a login slot for a connection from `ip`.
pub fn admit(
    global: &Arc<Semaphore>,
    per_source: &Arc<PerSource>,
    ip: std::net::IpAddr,
    max_per_source: usize,
    v6_prefix: u8,
) -> Result<LoginSlot, Full> {
    let key = source_key(ip, v6_prefix);
    {
        let mut c = per_source.counts.lock().map_err(|_| Full::Source)?;
        let n = c.entry(key.clone()).or_insert(0);
        if *n >= max_per_source {
            return Err(Full::Source);
        }
        *n += 1;
    }
    // From here on the LoginSlot's Drop gives the per-source count back.
    let slot = |g| LoginSlot {
        _global: g,
        per_source: per_source.clone(),
        key: key.clone(),
    };
    match global.clone().try_acquire_owned() {
        Ok(g) => Ok(slot(g)),
        Err(_) => {
            if let Ok(mut c) = per_source.counts.lock()
                && let Some(n) = c.get_mut(&key)
            {
                *n -= 1;
                if *n == 0 {
                    c.remove(&key);
                }
            }
            Err(Full::Global)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_and_global_limits() {
        let global = Arc::new(Semaphore::new(3));
        let ps = Arc::new(PerSource::default());
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let b: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = admit(&global, &ps, a, 2, 64).unwrap();
        let _a2 = admit(&global, &ps, a, 2, 64).unwrap();
        assert_eq!(admit(&global, &ps, a, 2, 64).unwrap_err(), Full::Source);
        let _b1 = admit(&global, &ps, b, 2, 64).unwrap();
        assert_eq!(admit(&global, &ps, b, 2, 64).unwrap_err(), Full::Global);
        drop(a1);
        assert!(
            admit(&global, &ps, a, 2, 64).is_ok(),
            "a slot freed by drop"
        );
        assert_eq!(ps.counts.lock().unwrap().get("192.0.2.2"), Some(&1));
    }
}
