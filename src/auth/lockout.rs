//! Brute-force protection, like fail2ban but inside the bastion and shared
//! by every node through the database.
//!
//! Counted login failures (see [`super::AuthFailure::counts`]) are stored;
//! a source with `max_failures` within `window` is banned for `ban`: its
//! connections are closed before the SSH handshake. A user name under attack
//! is slowed down (each attempt waits), never locked out, so a stranger cannot
//! lock a real user out. A source is an IPv4 address or an IPv6 prefix
//! (`ipv6_prefix`, a /64 by default: one host, or one customer of a
//! provider, usually holds a whole /64; a /48 gives an attacker 65,536 of
//! them, so a site that sees attacks from IPv6 may set 48).
//!
//! TOTP is different: a wrong code is only possible after the first factor
//! (a key, or an IdP login), so too many wrong codes for one user, from any
//! source and node, lock that user's TOTP step for a while (`lockout.user`),
//! and one user's codes are checked one at a time on each node.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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

/// The key a source is counted and banned under: an IPv4 address, or the
/// IPv6 prefix of `v6_prefix` bits it lies in.
pub fn source_key(ip: IpAddr, v6_prefix: u8) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match ipnet::Ipv6Net::new(v6, v6_prefix.min(128)) {
            Ok(net) => net.trunc().to_string(),
            Err(_) => v6.to_string(),
        },
    }
}

/// A user whose TOTP step was just locked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLock {
    pub user: String,
    pub failures: i64,
    pub until: i64,
}

/// A TOTP lock in force, as `lockout list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UserLockRow {
    pub user: String,
    pub until: String,
    pub failures: i64,
    pub node: String,
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
    /// `lockout.ipv6_prefix` of the config in force.
    v6_prefix: AtomicU8,
    /// One lock per user whose TOTP code is being checked on this node.
    totp_gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Lockout {
    pub fn new(store: Store, node: String) -> Self {
        Lockout {
            store,
            node,
            banned: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
            v6_prefix: AtomicU8::new(64),
            totp_gates: Mutex::new(HashMap::new()),
        }
    }

    /// The key `ip` is counted under with the config in force.
    pub fn key_of(&self, ip: IpAddr) -> String {
        source_key(ip, self.v6_prefix.load(Ordering::Relaxed))
    }

    /// Is this source banned right now? Cheap: no database access.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let key = self.key_of(ip);
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
        self.v6_prefix.store(cfg.ipv6_prefix, Ordering::Relaxed);
        let key = self.key_of(ip);
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
        self.v6_prefix.store(cfg.ipv6_prefix, Ordering::Relaxed);
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

    /// Held while one TOTP code of `user` is checked and its outcome stored,
    /// so that a user's codes are checked one at a time on this node.
    pub fn totp_gate(&self, user: &str) -> Arc<tokio::sync::Mutex<()>> {
        let Ok(mut gates) = self.totp_gates.lock() else {
            return Arc::default();
        };
        // Forget gates nobody holds any more.
        gates.retain(|_, g| Arc::strong_count(g) > 1);
        gates.entry(user.to_string()).or_default().clone()
    }

    /// Is `user`'s TOTP step locked now (on any node)?
    pub async fn totp_locked(&self, user: &str) -> Result<bool, sqlx::Error> {
        let until: Option<Option<i64>> =
            sqlx::query("SELECT until FROM user_lockouts WHERE user_name = $1")
                .bind(user)
                .fetch_optional(self.store.pool())
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
        Ok(until.flatten().is_some_and(|u| u > now_micros()))
    }

    /// Count a wrong TOTP code of `user`; the code that reaches the limit
    /// locks the user's TOTP step (returned, to be audited).
    pub async fn totp_failed(
        &self,
        user: &str,
        cfg: &LockoutConfig,
    ) -> Result<Option<UserLock>, sqlx::Error> {
        let now = now_micros();
        let since = now - cfg.totp_window.as_micros() as i64;
        // One statement, so that nodes counting at once never lose a count.
        let failures: i64 = sqlx::query(
            "INSERT INTO user_lockouts (user_name, failures, window_start, until, node) \
             VALUES ($1, 1, $2, NULL, $4) \
             ON CONFLICT (user_name) DO UPDATE SET \
             failures = CASE WHEN user_lockouts.window_start < $3 THEN 1 ELSE user_lockouts.failures + 1 END, \
             window_start = CASE WHEN user_lockouts.window_start < $3 THEN $2 ELSE user_lockouts.window_start END \
             RETURNING failures",
        )
        .bind(user)
        .bind(now)
        .bind(since)
        .bind(&self.node)
        .fetch_one(self.store.pool())
        .await?
        .try_get(0)?;
        if failures < i64::from(cfg.totp_max_failures) {
            return Ok(None);
        }
        let until = now + cfg.totp_lock.as_micros() as i64;
        // Only the code that makes the lock reports it (an expired lock
        // is made anew).
        let locked = sqlx::query(
            "UPDATE user_lockouts SET until = $2, node = $4 \
             WHERE user_name = $1 AND (until IS NULL OR until <= $3)",
        )
        .bind(user)
        .bind(until)
        .bind(now)
        .bind(&self.node)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        Ok((locked > 0).then(|| UserLock {
            user: user.to_string(),
            failures,
            until,
        }))
    }

    /// A right TOTP code: the user's count starts over (a lock in force
    /// stays).
    pub async fn totp_succeeded(&self, user: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "DELETE FROM user_lockouts WHERE user_name = $1 AND (until IS NULL OR until <= $2)",
        )
        .bind(user)
        .bind(now_micros())
        .execute(self.store.pool())
        .await?;
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
                let _ = sqlx::query(
                    "DELETE FROM user_lockouts WHERE (until IS NULL OR until < $1) AND window_start < $2",
                )
                .bind(now_micros())
                .bind(now_micros() - c.totp_window.as_micros() as i64)
                .execute(self.store.pool())
                .await;
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

/// TOTP locks in force.
pub async fn user_locks(store: &Store) -> Result<Vec<UserLockRow>, sqlx::Error> {
    sqlx::query(
        "SELECT user_name, until, failures, node FROM user_lockouts WHERE until > $1 ORDER BY until DESC",
    )
    .bind(now_micros())
    .fetch_all(store.pool())
    .await?
    .iter()
    .map(|r| {
        Ok(UserLockRow {
            user: r.try_get(0)?,
            until: rfc3339_micros(r.try_get(1)?),
            failures: r.try_get(2)?,
            node: r.try_get(3)?,
        })
    })
    .collect()
}

/// Lift the TOTP lock of `user` (and forget the wrong codes counted).
/// Returns whether a lock was in force.
pub async fn clear_user(store: &Store, user: &str) -> Result<bool, sqlx::Error> {
    let locked = sqlx::query("SELECT 1 FROM user_lockouts WHERE user_name = $1 AND until > $2")
        .bind(user)
        .bind(now_micros())
        .fetch_optional(store.pool())
        .await?
        .is_some();
    sqlx::query("DELETE FROM user_lockouts WHERE user_name = $1")
        .bind(user)
        .execute(store.pool())
        .await?;
    Ok(locked)
}

/// Lift the ban of one source (and forget its failures), or all bans.
/// Returns the number of bans lifted.
pub async fn clear(store: &Store, source: Option<&str>, v6_prefix: u8) -> Result<u64, sqlx::Error> {
    match source {
        Some(s) => {
            let key = s
                .parse::<IpAddr>()
                .map(|ip| source_key(ip, v6_prefix))
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
        let k = |s: &str| source_key(s.parse().unwrap(), 64);
        assert_eq!(k("192.0.2.7"), "192.0.2.7");
        assert_eq!(k("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(k("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(k("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::/64");
        // The prefix is the config's: a /48 puts a whole site in one bucket.
        let ip = "2001:db8:1:2:aaaa::1".parse().unwrap();
        assert_eq!(source_key(ip, 48), "2001:db8:1::/48");
        assert_eq!(source_key(ip, 128), "2001:db8:1:2:aaaa::1/128");
    }

    /// Wrong TOTP codes lock the user's TOTP step after the limit, once;
    /// the lock is shared (another Lockout on the same database sees it)
    /// and `clear_user` lifts it.
    #[tokio::test]
    async fn wrong_totp_codes_lock_the_user_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("u.db").display()))
            .await
            .unwrap();
        let a = Lockout::new(store.clone(), "a".into());
        let b = Lockout::new(store.clone(), "b".into());
        let c = cfg();
        for n in 1..c.totp_max_failures {
            assert_eq!(a.totp_failed("alice", &c).await.unwrap(), None, "code {n}");
            assert!(!b.totp_locked("alice").await.unwrap());
        }
        let lock = b.totp_failed("alice", &c).await.unwrap().expect("locked");
        assert_eq!(lock.failures, i64::from(c.totp_max_failures));
        assert!(
            a.totp_locked("alice").await.unwrap(),
            "node a sees node b's lock"
        );
        assert!(
            !a.totp_locked("bob").await.unwrap(),
            "another user is not locked"
        );
        // Further codes do not lock it again (one audit row per lock).
        assert_eq!(a.totp_failed("alice", &c).await.unwrap(), None);
        // A right code does not lift a lock in force.
        a.totp_succeeded("alice").await.unwrap();
        assert!(a.totp_locked("alice").await.unwrap());
        assert_eq!(user_locks(&store).await.unwrap().len(), 1);
        assert!(clear_user(&store, "alice").await.unwrap());
        assert!(!b.totp_locked("alice").await.unwrap());
        assert!(!clear_user(&store, "alice").await.unwrap());
    }

    fn cfg() -> LockoutConfig {
        LockoutConfig {
            max_failures: 3,
            window: Duration::from_secs(600),
            ban: Duration::from_secs(900),
            ipv6_prefix: 64,
            totp_max_failures: 5,
            totp_window: Duration::from_secs(900),
            totp_lock: Duration::from_secs(900),
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
        assert_eq!(clear(&store, Some("192.0.2.7"), 64).await.unwrap(), 1);
        other.refresh(&cfg()).await.unwrap();
        assert!(!other.is_banned(attacker));
        assert!(list(&store).await.unwrap().is_empty());
    }
}
