//! Console sessions and pending logins, kept in this process's memory.
//!
//! Why memory and not the database: a console session is a browser's
//! login to one node's console, short (`session_idle`, `session_max`),
//! and nothing else needs it. Keeping it in memory means a stolen database
//! copy holds no live session ids and no table has to be cleaned. The cost:
//! a reviewer logs in once per node (behind a load balancer, pin the
//! console port to one node), and a restart logs everyone out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

use crate::auth::oidc::CodeFlow;
use crate::config::ConsoleConfig;

/// The console session cookie.
pub const SESSION_COOKIE: &str = "portvakt_console";
/// The cookie that ties an IdP callback to the browser that started it.
pub const LOGIN_COOKIE: &str = "portvakt_login";
/// A login started must come back from the IdP within this.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Logins pending at once (unauthenticated callers can start them).
const MAX_PENDING: usize = 10_000;
/// Console sessions at once.
const MAX_SESSIONS: usize = 10_000;

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `reviewer_groups`: read every page.
    Reviewer,
    /// `admin_groups`: read, and act (revoke grants, clear lockouts).
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reviewer => "reviewer",
            Role::Admin => "admin",
        }
    }
}

/// The role `groups` give under `cfg` (admin wins), or none.
pub fn role(cfg: &ConsoleConfig, groups: &[String]) -> Option<Role> {
    let member = |list: &[String]| groups.iter().any(|g| list.contains(g));
    if member(&cfg.admin_groups) {
        Some(Role::Admin)
    } else if member(&cfg.reviewer_groups) {
        Some(Role::Reviewer)
    } else {
        None
    }
}

/// One logged-in reviewer's session.
#[derive(Debug)]
pub struct Session {
    /// SHA-256 of the cookie value: the map key (the id itself is kept
    /// nowhere but in the browser).
    key: String,
    /// The IdP user name (`username_claim`).
    pub name: String,
    /// IdP groups at login; the role is derived from them per request
    /// under the config in force.
    pub groups: Vec<String>,
    /// Sent in every form; a POST without it changes nothing.
    pub csrf: String,
    created: Instant,
    last_used: Mutex<Instant>,
}

/// A login sent to the IdP and not yet back.
#[derive(Debug)]
pub struct Pending {
    pub flow: CodeFlow,
    /// Where to go after the login (a path of the console).
    pub next: String,
    created: Instant,
}

#[derive(Debug, Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    pending: Mutex<HashMap<String, Pending>>,
}

fn key(id: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    /// Remember a started login; returns the pre-login cookie's value.
    pub fn add_pending(&self, flow: CodeFlow, next: String) -> Result<String, String> {
        let id = crate::auth::oidc::random_token()?;
        let mut m = self.pending.lock().map_err(|_| "poisoned".to_string())?;
        m.retain(|_, p| p.created.elapsed() < LOGIN_TTL);
        if m.len() >= MAX_PENDING {
            return Err("too many logins in progress".into());
        }
        m.insert(
            key(&id),
            Pending {
                flow,
                next,
                created: Instant::now(),
            },
        );
        Ok(id)
    }

    /// Take (once) the login the pre-login cookie names, if not expired.
    pub fn take_pending(&self, id: &str) -> Option<Pending> {
        let p = self.pending.lock().ok()?.remove(&key(id))?;
        (p.created.elapsed() < LOGIN_TTL).then_some(p)
    }

    /// A new session; returns the cookie value (256 random bits).
    pub fn create(
        &self,
        name: String,
        groups: Vec<String>,
        cfg: &ConsoleConfig,
    ) -> Result<String, String> {
        let id = crate::auth::oidc::random_token()?;
        let csrf = crate::auth::oidc::random_token()?;
        let now = Instant::now();
        let s = Arc::new(Session {
            key: key(&id),
            name,
            groups,
            csrf,
            created: now,
            last_used: Mutex::new(now),
        });
        let mut m = self.sessions.lock().map_err(|_| "poisoned".to_string())?;
        m.retain(|_, s| s.alive(cfg, now));
        if m.len() >= MAX_SESSIONS {
            return Err("too many console sessions".into());
        }
        m.insert(s.key.clone(), s);
        Ok(id)
    }

    /// The live session of cookie value `id`, marked used now; an expired
    /// one (idle or absolute) is removed.
    pub fn find(&self, id: &str, cfg: &ConsoleConfig) -> Option<Arc<Session>> {
        let mut m = self.sessions.lock().ok()?;
        let k = key(id);
        let s = m.get(&k)?.clone();
        let now = Instant::now();
        if !s.alive(cfg, now) {
            m.remove(&k);
            return None;
        }
        if let Ok(mut last) = s.last_used.lock() {
            *last = now;
        }
        Some(s)
    }

    pub fn remove(&self, s: &Session) {
        if let Ok(mut m) = self.sessions.lock() {
            m.remove(&s.key);
        }
    }
}

impl Session {
    fn alive(&self, cfg: &ConsoleConfig, now: Instant) -> bool {
        let last = self.last_used.lock().map(|l| *l).unwrap_or(self.created);
        now.duration_since(self.created) < cfg.session_max
            && now.duration_since(last) < cfg.session_idle
    }
}

/// The value of cookie `name` in the request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_string())
}

/// A `Set-Cookie` value: always `HttpOnly`, `Path`; `Secure` when the
/// browser speaks HTTPS; `same_site` as given (`Strict` for the session;
/// `Lax` for the pre-login cookie, which must come back on the IdP's
/// cross-site redirect to the callback).
pub fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    same_site: &str,
    max_age: Option<Duration>,
    secure: bool,
) -> String {
    let mut c = format!("{name}={value}; HttpOnly; SameSite={same_site}; Path={path}");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={}", age.as_secs()));
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(idle: u64, max: u64) -> ConsoleConfig {
        ConsoleConfig {
            listen: "127.0.0.1:8443".parse().unwrap(),
            tls: None,
            public_url: "http://127.0.0.1:8443".into(),
            reviewer_groups: vec!["security".into()],
            admin_groups: vec!["admins".into()],
            session_idle: Duration::from_secs(idle),
            session_max: Duration::from_secs(max),
            audit_keys: Vec::new(),
        }
    }

    #[test]
    fn roles_come_from_groups_admin_first() {
        let c = cfg(60, 600);
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(role(&c, &g(&["security"])), Some(Role::Reviewer));
        assert_eq!(role(&c, &g(&["security", "admins"])), Some(Role::Admin));
        assert_eq!(role(&c, &g(&["dev"])), None);
        assert_eq!(role(&c, &[]), None);
    }

    #[test]
    fn a_session_is_found_by_its_cookie_only_until_it_expires() {
        let s = Sessions::default();
        let c = cfg(60, 600);
        let id = s.create("alice".into(), vec![], &c).unwrap();
        assert_eq!(id.len(), 43, "256 bits, base64url");
        assert!(s.find(&id, &c).is_some());
        assert!(s.find("not-the-id", &c).is_none());
        let expired = cfg(0, 600);
        assert!(s.find(&id, &expired).is_none(), "idle timeout");
        assert!(s.find(&id, &c).is_none(), "removed once expired");
        let id = s.create("alice".into(), vec![], &c).unwrap();
        assert!(s.find(&id, &cfg(60, 0)).is_none(), "absolute timeout");
    }

    #[test]
    fn a_pending_login_is_taken_once() {
        let s = Sessions::default();
        let flow = CodeFlow {
            url: "u".into(),
            state: "s".into(),
            nonce: "n".into(),
            pkce_verifier: "v".into(),
        };
        let id = s.add_pending(flow, "/".into()).unwrap();
        assert!(s.take_pending(&id).is_some());
        assert!(s.take_pending(&id).is_none());
    }

    #[test]
    fn cookies_are_read_and_written_with_their_flags() {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "a=1; portvakt_console=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
        assert_eq!(
            set_cookie("n", "v", "/", "Strict", None, true),
            "n=v; HttpOnly; SameSite=Strict; Path=/; Secure"
        );
    }
}
