//! Login grants: a successful interactive login (IdP + TOTP, or key + TOTP)
//! bound to the SSH key the client proved it holds, valid for
//! `sessions.grant_ttl`. Kept in the database so every node honours them.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::clock::{from_micros, micros, now_micros, rfc3339_micros};
use crate::store::Store;

/// One grant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: i64,
    pub user: String,
    pub key_fingerprint: String,
    pub groups: Vec<String>,
    /// How the grant was earned (`oidc+totp`, `publickey+totp`, `oidc`).
    pub method: String,
    pub node: String,
    pub source: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
}

impl Grant {
    /// The `grant.revoke` event of an admin's revocation (`portvakt grants
    /// revoke` or the review console, whose admin `by` names), at the
    /// revocation's stored time (`audit verify` compares them).
    pub fn revoke_event(&self, by: Option<&str>) -> crate::audit::Event {
        let ev = crate::audit::Event::new(crate::audit::EventKind::GrantRevoke)
            .at(self.revoked_at.map_or_else(SystemTime::now, from_micros))
            .user(self.user.clone())
            .reason(crate::reasons::EventReason::RevokedByAdmin)
            .detail("grant_id", self.id)
            .detail("key_fingerprint", self.key_fingerprint.clone());
        match by {
            Some(by) => ev.detail("by", by),
            None => ev,
        }
    }

    pub fn expires(&self) -> SystemTime {
        from_micros(self.expires_at)
    }
}

/// `grants list --json` rows (DESIGN.md §5).
#[derive(Debug, Clone, Serialize)]
pub struct GrantRow {
    pub id: i64,
    pub user: String,
    pub key_fingerprint: String,
    pub method: String,
    pub groups: Vec<String>,
    pub node: String,
    pub source: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    pub revoked_at: Option<String>,
    pub revoked_reason: Option<String>,
}

impl From<&Grant> for GrantRow {
    fn from(g: &Grant) -> Self {
        GrantRow {
            id: g.id,
            user: g.user.clone(),
            key_fingerprint: g.key_fingerprint.clone(),
            method: g.method.clone(),
            groups: g.groups.clone(),
            node: g.node.clone(),
            source: g.source.clone(),
            created_at: rfc3339_micros(g.created_at),
            expires_at: rfc3339_micros(g.expires_at),
            revoked_at: g.revoked_at.map(rfc3339_micros),
            revoked_reason: g.revoked_reason.clone(),
        }
    }
}

const COLUMNS: &str = "SELECT id, user_name, key_fingerprint, groups, method, node, source, created_at, expires_at, revoked_at, revoked_reason FROM grants";

fn row(r: &AnyRow) -> Result<Grant, sqlx::Error> {
    let groups: String = r.try_get("groups")?;
    Ok(Grant {
        id: r.try_get("id")?,
        user: r.try_get("user_name")?,
        key_fingerprint: r.try_get("key_fingerprint")?,
        groups: serde_json::from_str(&groups).unwrap_or_default(),
        method: r.try_get("method")?,
        node: r.try_get("node")?,
        source: r.try_get("source")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        revoked_reason: r.try_get("revoked_reason")?,
    })
}

/// What a new grant is made of.
#[derive(Debug, Clone)]
pub struct NewGrant<'a> {
    pub user: &'a str,
    pub key_fingerprint: &'a str,
    pub groups: &'a [String],
    pub method: &'a str,
    pub node: &'a str,
    pub source: &'a str,
    pub ttl: Duration,
}

pub async fn create(store: &Store, g: &NewGrant<'_>) -> Result<Grant, sqlx::Error> {
    let now = now_micros();
    // A whole second, as the `grant.create` event writes it (RFC 3339), so
    // that `audit verify` can compare the two exactly.
    let expires = micros(SystemTime::now() + g.ttl) / 1_000_000 * 1_000_000;
    let groups = serde_json::to_string(g.groups).unwrap_or_else(|_| "[]".into());
    let r = sqlx::query(
        "INSERT INTO grants (user_name, key_fingerprint, groups, method, node, source, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(g.user)
    .bind(g.key_fingerprint)
    .bind(&groups)
    .bind(g.method)
    .bind(g.node)
    .bind(g.source)
    .bind(now)
    .bind(expires)
    .fetch_one(store.pool())
    .await?;
    Ok(Grant {
        id: r.try_get(0)?,
        user: g.user.to_string(),
        key_fingerprint: g.key_fingerprint.to_string(),
        groups: g.groups.to_vec(),
        method: g.method.to_string(),
        node: g.node.to_string(),
        source: Some(g.source.to_string()),
        created_at: now,
        expires_at: expires,
        revoked_at: None,
        revoked_reason: None,
    })
}

/// The newest valid grant of this user for this key, if any.
pub async fn find_valid(
    store: &Store,
    user: &str,
    key_fingerprint: &str,
) -> Result<Option<Grant>, sqlx::Error> {
    let sql = format!(
        "{COLUMNS} WHERE user_name = $1 AND key_fingerprint = $2 AND revoked_at IS NULL AND expires_at > $3 \
         ORDER BY expires_at DESC LIMIT 1"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(user)
        .bind(key_fingerprint)
        .bind(now_micros())
        .fetch_optional(store.pool())
        .await?
        .as_ref()
        .map(row)
        .transpose()
}

/// Grants, newest first; only those still valid unless `all`.
pub async fn list(store: &Store, user: Option<&str>, all: bool) -> Result<Vec<Grant>, sqlx::Error> {
    let mut sql = format!("{COLUMNS} WHERE 1 = 1");
    if !all {
        sql.push_str(" AND revoked_at IS NULL AND expires_at > $1");
    } else {
        sql.push_str(" AND $1 = $1");
    }
    if user.is_some() {
        sql.push_str(" AND user_name = $2");
    }
    sql.push_str(" ORDER BY created_at DESC, id DESC");
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now_micros());
    if let Some(u) = user {
        q = q.bind(u.to_string());
    }
    q.fetch_all(store.pool()).await?.iter().map(row).collect()
}

/// Revoke one grant or all of a user's valid grants; returns those revoked.
/// One UPDATE ... RETURNING: no read-then-write transaction that SQLite could
/// refuse (SQLITE_BUSY_SNAPSHOT) when another writer commits in between.
pub async fn revoke(
    store: &Store,
    id: Option<i64>,
    user: Option<&str>,
    reason: crate::reasons::EventReason,
) -> Result<Vec<Grant>, sqlx::Error> {
    let now = now_micros();
    let reason = reason.as_str();
    let returning = "RETURNING id, user_name, key_fingerprint, groups, method, node, source, created_at, expires_at, revoked_at, revoked_reason";
    let q = match (id, user) {
        (Some(id), _) => sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE grants SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL {returning}"
        )))
        .bind(now)
        .bind(reason)
        .bind(id),
        (None, Some(u)) => sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE grants SET revoked_at = $1, revoked_reason = $2 \
             WHERE user_name = $3 AND revoked_at IS NULL AND expires_at > $1 {returning}"
        )))
        .bind(now)
        .bind(reason)
        .bind(u.to_string()),
        (None, None) => return Ok(Vec::new()),
    };
    q.fetch_all(store.pool()).await?.iter().map(row).collect()
}

/// Ids of grants revoked at or after `since` (for the watcher that ends
/// their connections on every node).
pub async fn revoked_since(store: &Store, since: i64) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    sqlx::query(
        "SELECT id, revoked_at FROM grants WHERE revoked_at IS NOT NULL AND revoked_at >= $1",
    )
    .bind(since)
    .fetch_all(store.pool())
    .await?
    .iter()
    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
    .collect()
}

/// Number of grants valid now (a metric).
pub async fn active_count(store: &Store) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT COUNT(*) FROM grants WHERE revoked_at IS NULL AND expires_at > $1")
        .bind(now_micros())
        .fetch_one(store.pool())
        .await?
        .try_get(0)
}
