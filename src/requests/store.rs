//! Access requests in the database: created, approved (by one or two
//! people), denied, expired, revoked. Each change is one conditional
//! update on the row's state, so concurrent deciders (two nodes, the CLI)
//! cannot both win, and an approval by the same person twice is refused by
//! the approvals table's key.

use std::time::Duration;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{AccessRequest, State};
use crate::store::Store;

/// A request to store.
#[derive(Debug, Clone)]
pub struct NewRequest<'a> {
    pub user: &'a str,
    pub target: &'a str,
    pub duration: Duration,
    pub reason: &'a str,
    pub approvals_needed: u32,
    pub node: &'a str,
    pub pending_ttl: Duration,
}

/// Why a decision changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("there is no request {0}")]
    NotFound(i64),
    #[error("request {id} is {state} already")]
    Decided { id: i64, state: State },
    #[error("request {0} expired before it was decided")]
    Expired(i64),
    #[error("you asked for request {0} yourself: somebody else must decide it")]
    Own(i64),
    #[error("you approved request {0} already: it needs another approver")]
    ApprovedAlready(i64),
    #[error("request {0}'s window has ended already")]
    Ended(i64),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// What an approval did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// Enough approvers: the window is open now.
    Opened(AccessRequest),
    /// Recorded; more approvers are needed (a two-person rule).
    Recorded(AccessRequest),
}

const COLUMNS: &str = "SELECT id, user_name, target, duration_seconds, reason, state, approvals_needed, node, \
     created_at, pending_until, decided_by, decided_at, decision_reason, window_start, window_end \
     FROM access_requests";

fn row(r: &AnyRow) -> Result<AccessRequest, sqlx::Error> {
    let state: String = r.try_get("state")?;
    let seconds: i64 = r.try_get("duration_seconds")?;
    Ok(AccessRequest {
        id: r.try_get("id")?,
        user: r.try_get("user_name")?,
        target: r.try_get("target")?,
        duration: Duration::from_secs(seconds.max(0) as u64),
        reason: r.try_get("reason")?,
        state: State::parse(&state).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "state".into(),
            source: format!("unknown request state {state:?}").into(),
        })?,
        approvals_needed: r.try_get("approvals_needed")?,
        approvals: Vec::new(),
        node: r.try_get("node")?,
        created_at: r.try_get("created_at")?,
        pending_until: r.try_get("pending_until")?,
        decided_by: r.try_get("decided_by")?,
        decided_at: r.try_get("decided_at")?,
        decision_reason: r.try_get("decision_reason")?,
        window_start: r.try_get("window_start")?,
        window_end: r.try_get("window_end")?,
    })
}

/// Whole seconds, as the audit trail and the texts show times.
fn second(us: i64) -> i64 {
    us / 1_000_000 * 1_000_000
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub async fn create(
    store: &Store,
    r: &NewRequest<'_>,
    now: i64,
) -> Result<AccessRequest, sqlx::Error> {
    let now = second(now);
    let pending_until = now.saturating_add(micros(r.pending_ttl));
    let id: i64 = sqlx::query(
        "INSERT INTO access_requests (user_name, target, duration_seconds, reason, state, approvals_needed, \
         node, created_at, pending_until) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(r.user)
    .bind(r.target)
    .bind(r.duration.as_secs() as i64)
    .bind(r.reason)
    .bind(State::Pending.as_str())
    .bind(i64::from(r.approvals_needed))
    .bind(r.node)
    .bind(now)
    .bind(pending_until)
    .fetch_one(store.pool())
    .await?
    .try_get(0)?;
    get(store, id).await?.ok_or(sqlx::Error::RowNotFound)
}

/// One request with its approvers.
pub async fn get(store: &Store, id: i64) -> Result<Option<AccessRequest>, sqlx::Error> {
    let found = sqlx::query(sqlx::AssertSqlSafe(format!("{COLUMNS} WHERE id = $1")))
        .bind(id)
        .fetch_optional(store.pool())
        .await?;
    let Some(r) = found else { return Ok(None) };
    let mut req = row(&r)?;
    req.approvals = approvers(store, id).await?;
    Ok(Some(req))
}

async fn approvers(store: &Store, id: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query("SELECT approver FROM access_approvals WHERE request_id = $1 ORDER BY at, approver")
        .bind(id)
        .fetch_all(store.pool())
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect()
}

/// Which requests to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub user: Option<String>,
    pub state: Option<State>,
    /// Only requests for these targets (names as configured); `None`: any.
    pub targets: Option<Vec<String>>,
    pub limit: i64,
}

pub async fn list(store: &Store, f: &Filter) -> Result<Vec<AccessRequest>, sqlx::Error> {
    // Only fixed texts go into the SQL; the values are bound.
    let (sql, user, state) = match (&f.user, f.state) {
        (Some(u), Some(s)) => (
            format!("{COLUMNS} WHERE user_name = $2 AND state = $3 ORDER BY id DESC LIMIT $1"),
            Some(u.as_str()),
            Some(s.as_str()),
        ),
        (Some(u), None) => (
            format!("{COLUMNS} WHERE user_name = $2 ORDER BY id DESC LIMIT $1"),
            Some(u.as_str()),
            None,
        ),
        (None, Some(s)) => (
            format!("{COLUMNS} WHERE state = $2 ORDER BY id DESC LIMIT $1"),
            None,
            Some(s.as_str()),
        ),
        (None, None) => (format!("{COLUMNS} ORDER BY id DESC LIMIT $1"), None, None),
    };
    let mut q =
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(if f.limit > 0 { f.limit } else { 1000 });
    for v in [user, state].into_iter().flatten() {
        q = q.bind(v);
    }
    let rows = q.fetch_all(store.pool()).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let req = row(r)?;
        if let Some(t) = &f.targets
            && !t.iter().any(|t| t.eq_ignore_ascii_case(&req.target))
        {
            continue;
        }
        out.push(req);
    }
    // Their approvers a page at a time (not a query per request; pages
    // stay far below the databases' limits on bound values).
    let mut by_id: std::collections::HashMap<i64, Vec<String>> = std::collections::HashMap::new();
    for page in out.chunks(1000) {
        let marks: Vec<String> = (1..=page.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT request_id, approver FROM access_approvals WHERE request_id IN ({}) \
             ORDER BY request_id, at, approver",
            marks.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for req in page {
            q = q.bind(req.id);
        }
        for r in q.fetch_all(store.pool()).await? {
            by_id.entry(r.try_get(0)?).or_default().push(r.try_get(1)?);
        }
    }
    for req in &mut out {
        req.approvals = by_id.remove(&req.id).unwrap_or_default();
    }
    Ok(out)
}

/// The user's approved requests whose window is open at `now`.
pub async fn open_windows(
    store: &Store,
    user: &str,
    now: i64,
) -> Result<Vec<AccessRequest>, sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "{COLUMNS} WHERE user_name = $1 AND state = $2 AND window_start <= $3 AND window_end > $3 \
         ORDER BY window_end DESC"
    )))
    .bind(user)
    .bind(State::Approved.as_str())
    .bind(now)
    .fetch_all(store.pool())
    .await?
    .iter()
    .map(row)
    .collect()
}

/// A pending request, checked for being decidable by `by` at `now`.
async fn pending(store: &Store, id: i64, by: &str, now: i64) -> Result<AccessRequest, DecideError> {
    let req = get(store, id).await?.ok_or(DecideError::NotFound(id))?;
    if req.state != State::Pending {
        return Err(DecideError::Decided {
            id,
            state: req.state,
        });
    }
    if req.pending_until <= now {
        return Err(DecideError::Expired(id));
    }
    if req.user.eq_ignore_ascii_case(by) {
        return Err(DecideError::Own(id));
    }
    Ok(req)
}

/// `by` approves request `id`: recorded, and once enough distinct people
/// approved, the window opens now for the requested duration.
pub async fn approve(store: &Store, id: i64, by: &str, now: i64) -> Result<Approval, DecideError> {
    let now = second(now);
    let req = pending(store, id, by, now).await?;
    let inserted = sqlx::query(
        "INSERT INTO access_approvals (request_id, approver, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(by)
    .bind(now)
    .execute(store.pool())
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(DecideError::ApprovedAlready(id));
    }
    let approvers = approvers(store, id).await?;
    if (approvers.len() as i64) < req.approvals_needed {
        let mut req = req;
        req.approvals = approvers;
        return Ok(Approval::Recorded(req));
    }
    let end = now.saturating_add(micros(req.duration));
    let changed = sqlx::query(
        "UPDATE access_requests SET state = $1, decided_by = $2, decided_at = $3, window_start = $3, \
         window_end = $4 WHERE id = $5 AND state = $6",
    )
    .bind(State::Approved.as_str())
    .bind(approvers.join(","))
    .bind(now)
    .bind(end)
    .bind(id)
    .bind(State::Pending.as_str())
    .execute(store.pool())
    .await?
    .rows_affected();
    if changed == 0 {
        let state = get(store, id).await?.map_or(State::Pending, |r| r.state);
        return Err(DecideError::Decided { id, state });
    }
    get(store, id)
        .await?
        .map(Approval::Opened)
        .ok_or(DecideError::NotFound(id))
}

/// `by` denies request `id`, saying why.
pub async fn deny(
    store: &Store,
    id: i64,
    by: &str,
    reason: &str,
    now: i64,
) -> Result<AccessRequest, DecideError> {
    let now = second(now);
    pending(store, id, by, now).await?;
    let changed = sqlx::query(
        "UPDATE access_requests SET state = $1, decided_by = $2, decided_at = $3, decision_reason = $4 \
         WHERE id = $5 AND state = $6",
    )
    .bind(State::Denied.as_str())
    .bind(by)
    .bind(now)
    .bind(reason)
    .bind(id)
    .bind(State::Pending.as_str())
    .execute(store.pool())
    .await?
    .rows_affected();
    finish(store, id, changed).await
}

/// Revoke request `id` (pending, or approved with its window not yet
/// ended): forwards it allowed end on every node.
pub async fn revoke(
    store: &Store,
    id: i64,
    by: &str,
    now: i64,
) -> Result<AccessRequest, DecideError> {
    let now = second(now);
    let req = get(store, id).await?.ok_or(DecideError::NotFound(id))?;
    match req.state {
        State::Pending => {}
        State::Approved if req.window_end.is_some_and(|e| e > now) => {}
        State::Approved => return Err(DecideError::Ended(id)),
        state => return Err(DecideError::Decided { id, state }),
    }
    let changed = sqlx::query(
        "UPDATE access_requests SET state = $1, decided_by = $2, decided_at = $3, revoked_at = $3, \
         window_end = CASE WHEN window_end IS NULL THEN NULL ELSE $3 END WHERE id = $4 AND state = $5",
    )
    .bind(State::Revoked.as_str())
    .bind(by)
    .bind(now)
    .bind(id)
    .bind(req.state.as_str())
    .execute(store.pool())
    .await?
    .rows_affected();
    finish(store, id, changed).await
}

async fn finish(store: &Store, id: i64, changed: u64) -> Result<AccessRequest, DecideError> {
    let req = get(store, id).await?.ok_or(DecideError::NotFound(id))?;
    if changed == 0 {
        return Err(DecideError::Decided {
            id,
            state: req.state,
        });
    }
    Ok(req)
}

/// Pending requests past their time become `expired`; returns those this
/// call expired (another node may have taken some).
pub async fn expire_due(store: &Store, now: i64) -> Result<Vec<AccessRequest>, sqlx::Error> {
    let due = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{COLUMNS} WHERE state = $1 AND pending_until <= $2 ORDER BY id LIMIT 500"
    )))
    .bind(State::Pending.as_str())
    .bind(now)
    .fetch_all(store.pool())
    .await?;
    let mut expired = Vec::new();
    for r in &due {
        let req = row(r)?;
        let changed = sqlx::query(
            "UPDATE access_requests SET state = $1, decided_at = $2 WHERE id = $3 AND state = $4",
        )
        .bind(State::Expired.as_str())
        .bind(second(now))
        .bind(req.id)
        .bind(State::Pending.as_str())
        .execute(store.pool())
        .await?
        .rows_affected();
        if changed == 1 {
            expired.push(AccessRequest {
                state: State::Expired,
                decided_at: Some(second(now)),
                ..req
            });
        }
    }
    Ok(expired)
}

/// Requests revoked at or after `since` (unix µs).
pub async fn revoked_since(store: &Store, since: i64) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query("SELECT id FROM access_requests WHERE revoked_at IS NOT NULL AND revoked_at >= $1")
        .bind(since)
        .fetch_all(store.pool())
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect()
}
