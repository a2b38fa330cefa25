//! Brute-force protection, like fail2ban but inside the bastion and shared
//! by every node through the database.
//!
//! Counted login failures (see [`super::AuthFailure::counts`]) are stored;
//! a source with `max_failures` within `window` is banned for `ban`: its
//! connections are closed before the SSH handshake. A user name under attack
//! is slowed down (each attempt waits), never locked out, so a stranger cannot
//! lock a real user out. A source is an IPv4 address or an IPv6 /64 (one
//! host usually holds a whole /64).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::clock::{now_micros, rfc3339_micros};
use crate::config::LockoutConfig;
use crate::store::Store;

/// How often bans and per-user counts are re-read from the database.
const REFRESH: Duration = Duration::from_secs(2);
/// The longest a slowed-down user name waits per attempt.
const MAX_DELAY: Duration = Duration::from_secs(10);

/// The key a source is counted and banned under.
pub fn source_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// A ban, as `lockout list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BanRow {
    pub source: String,
    pub created_at: String,
    pub until: String,
    pub failures: i64,
    pub node: String,
}

/// What recording a failure led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBan {
    pub source: String,
    pub failures: i64,
    pub until: i64,
}

/// Cached view of the lockout tables, refreshed from the database.
#[derive(Debug)]
pub struct Lockout {
    store: Store,
    node: String,
    /// Banned sources and when each ban ends (unix µs).
    banned: RwLock<HashMap<String, i64>>,
    /// Failures per user name within the window, for names at or past the limit.
    users: RwLock<HashMap<String, i64>>,
}

impl Lockout {
    pub fn new(store: Store, node: String) -> Self {
        Lockout {
            store,
            node,
            banned: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
        }
    }

    /// Is this source banned right now? Cheap: no database access.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let key = source_key(ip);
        let now = now_micros();
        self.banned
            .read()
            .map(|b| b.get(&key).is_some_and(|until| *until > now))
            .unwrap_or(false)
    }

    /// How long an attempt for `user` must wait: nothing below the limit,
    /// then one more second per failure past it, up to [`MAX_DELAY`].
    pub fn user_delay(&self, user: &str, cfg: &LockoutConfig) -> Duration {
        let n = self
            .users
            .read()
            .ok()
            .and_then(|u| u.get(user).copied())
            .unwrap_or(0);
        let over = n - i64::from(cfg.max_failures) + 1;
        if over <= 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(over as u64).min(MAX_DELAY)
        }
    }

    /// Store a counted failure; ban the source if it crossed the limit.
    pub async fn record_failure(
        &self,
        ip: IpAddr,
        user: Option<&str>,
        reason: &str,
        cfg: &LockoutConfig,
    ) -> Result<Option<NewBan>, sqlx::Error> {
        let key = source_key(ip);
        let now = now_micros();
        let since = now - cfg.window.as_micros() as i64;
        // A name of any length and content can be tried; the index takes 64
        // clean characters (a longer one can never log in anyway).
        let user = user.map(crate::text::user_name);
        let user = user.as_deref();
        sqlx::query(
            "INSERT INTO auth_failures (at, source, user_name, reason) VALUES ($1, $2, $3, $4)",
        )
        .bind(now)
        .bind(&key)
        .bind(user)
        .bind(reason)
        .execute(self.store.pool())
        .await?;
        if let Some(u) = user {
            let n: i64 =
                sqlx::query("SELECT COUNT(*) FROM auth_failures WHERE user_name = $1 AND at >= $2")
                    .bind(u)
                    .bind(since)
                    .fetch_one(self.store.pool())
                    .await?
                    .try_get(0)?;
            if n >= i64::from(cfg.max_failures)
                && let Ok(mut users) = self.users.write()
            {
                users.insert(u.to_string(), n);
            }
        }
        let failures: i64 =
            sqlx::query("SELECT COUNT(*) FROM auth_failures WHERE source = $1 AND at >= $2")
                .bind(&key)
                .bind(since)
                .fetch_one(self.store.pool())
                .await?
                .try_get(0)?;
        if failures < i64::from(cfg.max_failures) || self.is_banned(ip) {
            return Ok(None);
        }
        let until = now + cfg.ban.as_micros() as i64;
        // One row per source; a later ban extends an earlier one.
        sqlx::query(
            "INSERT INTO bans (source, created_at, until, failures, node) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (source) DO UPDATE SET created_at = excluded.created_at, until = excluded.until, \
             failures = excluded.failures, node = excluded.node",
        )
        .bind(&key)
        .bind(now)
        .bind(until)
        .bind(failures)
        .bind(&self.node)
        .execute(self.store.pool())
        .await?;
        if let Ok(mut b) = self.banned.write() {
            b.insert(key.clone(), until);
        }
        Ok(Some(NewBan {
            source: key,
            failures,
            until,
        }))
    }

    /// Re-read bans and per-user counts (bans made or cleared elsewhere).
    pub async fn refresh(&self, cfg: &LockoutConfig) -> Result<(), sqlx::Error> {
        let now = now_micros();
        let bans = sqlx::query("SELECT source, until FROM bans WHERE until > $1")
            .bind(now)
            .fetch_all(self.store.pool())
            .await?
            .iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
            .collect::<Result<HashMap<_, _>, sqlx::Error>>()?;
        let since = now - cfg.window.as_micros() as i64;
        let users = sqlx::query(
            "SELECT user_name, COUNT(*) FROM auth_failures WHERE at >= $1 AND user_name IS NOT NULL \
             GROUP BY user_name HAVING COUNT(*) >= $2",
        )
        .bind(since)
        .bind(i64::from(cfg.max_failures))
        .fetch_all(self.store.pool())
        .await?
        .iter()
        .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
        .collect::<Result<HashMap<_, _>, sqlx::Error>>()?;
        if let Ok(mut b) = self.banned.write() {
            *b = bans;
        }
        if let Ok(mut u) = self.users.write() {
            *u = users;
        }
        Ok(())
    }

    /// Keep the cache fresh and old failures pruned until `stop`.
    pub async fn run(
        self: Arc<Self>,
        cfg: impl Fn() -> LockoutConfig + Send + 'static,
        stop: CancellationToken,
    ) {
        let mut ticks: u32 = 0;
        loop {
            let c = cfg();
            if let Err(e) = self.refresh(&c).await {
                tracing::warn!(error = %e, "cannot read bans");
            }
            ticks = ticks.wrapping_add(1);
            if ticks.is_multiple_of(30) {
                let horizon = now_micros() - c.window.as_micros() as i64 * 2;
                let _ = sqlx::query("DELETE FROM auth_failures WHERE at < $1")
                    .bind(horizon)
                    .execute(self.store.pool())
                    .await;
                let _ = sqlx::query("DELETE FROM bans WHERE until < $1")
                    .bind(now_micros())
                    .execute(self.store.pool())
                    .await;
            }
            tokio::select! {
                () = tokio::time::sleep(REFRESH) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// Bans in force.
pub async fn list(store: &Store) -> Result<Vec<BanRow>, sqlx::Error> {
    sqlx::query("SELECT source, created_at, until, failures, node FROM bans WHERE until > $1 ORDER BY created_at DESC")
        .bind(now_micros())
        .fetch_all(store.pool())
        .await?
        .iter()
        .map(|r| {
            Ok(BanRow {
                source: r.try_get(0)?,
                created_at: rfc3339_micros(r.try_get(1)?),
                until: rfc3339_micros(r.try_get(2)?),
                failures: r.try_get(3)?,
                node: r.try_get(4)?,
            })
        })
        .collect()
}

/// Lift the ban of one source (and forget its failures), or all bans.
/// Returns the number of bans lifted.
pub async fn clear(store: &Store, source: Option<&str>) -> Result<u64, sqlx::Error> {
    match source {
        Some(s) => {
            let key = s
                .parse::<IpAddr>()
                .map(source_key)
                .unwrap_or_else(|_| s.to_string());
            sqlx::query("DELETE FROM auth_failures WHERE source = $1")
                .bind(&key)
                .execute(store.pool())
                .await?;
            Ok(sqlx::query("DELETE FROM bans WHERE source = $1")
                .bind(&key)
                .execute(store.pool())
                .await?
                .rows_affected())
        }
        None => {
            sqlx::query("DELETE FROM auth_failures")
                .execute(store.pool())
                .await?;
            Ok(sqlx::query("DELETE FROM bans")
                .execute(store.pool())
                .await?
                .rows_affected())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_v4_addresses_or_v6_64s() {
        let k = |s: &str| source_key(s.parse().unwrap());
        assert_eq!(k("192.0.2.7"), "192.0.2.7");
        assert_eq!(k("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(k("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(k("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::/64");
    }

    fn cfg() -> LockoutConfig {
        LockoutConfig {
            max_failures: 3,
            window: Duration::from_secs(600),
            ban: Duration::from_secs(900),
        }
    }

    #[tokio::test]
    async fn bans_after_max_failures_and_slows_the_user_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("l.db").display()))
            .await
            .unwrap();
        let l = Lockout::new(store.clone(), "n1".into());
        let attacker: IpAddr = "192.0.2.7".parse().unwrap();
        let user: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            l.record_failure(attacker, Some("alice"), "x", &cfg())
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            l.record_failure(attacker, Some("alice"), "x", &cfg())
                .await
                .unwrap(),
            None
        );
        assert_eq!(l.user_delay("alice", &cfg()), Duration::ZERO);
        let ban = l
            .record_failure(attacker, Some("alice"), "x", &cfg())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ban.source, "192.0.2.7");
        assert_eq!(ban.failures, 3);
        assert!(l.is_banned(attacker));
        assert!(!l.is_banned(user), "another source is not banned");
        assert_eq!(l.user_delay("alice", &cfg()), Duration::from_secs(1));
        assert_eq!(l.user_delay("bob", &cfg()), Duration::ZERO);
        // A second node sees the ban after a refresh.
        let other = Lockout::new(store.clone(), "n2".into());
        assert!(!other.is_banned(attacker));
        other.refresh(&cfg()).await.unwrap();
        assert!(other.is_banned(attacker));
        assert_eq!(other.user_delay("alice", &cfg()), Duration::from_secs(1));
        assert_eq!(list(&store).await.unwrap().len(), 1);
        assert_eq!(clear(&store, Some("192.0.2.7")).await.unwrap(), 1);
        other.refresh(&cfg()).await.unwrap();
        assert!(!other.is_banned(attacker));
        assert!(list(&store).await.unwrap().is_empty());
    }
}
