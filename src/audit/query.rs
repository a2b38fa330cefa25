//! Reading the audit trail back, for the CLI (`sessions`, `audit`).

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::clock::rfc3339_micros;
use crate::store::{Backend, Store};

/// One forward ("session" in the CLI), fields as DESIGN.md §5.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionRow {
    pub id: i64,
    pub connection_id: String,
    pub node: String,
    pub user: String,
    pub auth_method: String,
    pub source: String,
    pub target: Option<String>,
    pub host: String,
    pub port: i64,
    pub address: Option<String>,
    pub result: String,
    pub reason: Option<String>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_seconds: Option<f64>,
    pub bytes_to_target: i64,
    pub bytes_from_target: i64,
    pub close_reason: Option<String>,
    /// The access request whose window allowed it, if any.
    pub request_id: Option<i64>,
    /// "forward" (bytes relayed) or "record" (a recorded target).
    pub mode: String,
    /// The recordings of a recorded forward (filled by `sessions` commands).
    pub recordings: Vec<i64>,
    /// `started_at` in unix microseconds: the keyset cursor of a page.
    #[serde(skip)]
    pub started_micros: i64,
}

/// One audit event, fields as DESIGN.md §5 plus `node`, `connection_id`
/// and `reason`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventRow {
    pub id: i64,
    pub at: String,
    pub kind: String,
    pub node: String,
    pub connection_id: Option<String>,
    pub user: Option<String>,
    pub source: Option<String>,
    pub reason: Option<String>,
    pub detail: Value,
    /// `at` in unix microseconds: the keyset cursor of a page.
    #[serde(skip)]
    pub at_micros: i64,
}

/// A keyset page boundary: rows strictly older than this (time in unix
/// microseconds, then id), so a page costs the same however deep it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Before {
    pub at: i64,
    pub id: i64,
}

/// Filters of `sessions list` (and the console); times in unix microseconds.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub user: Option<String>,
    pub target: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: Option<i64>,
    /// The client address, `ip:port` or just the ip.
    pub source: Option<String>,
    /// `allowed`, `denied` or `failed`.
    pub result: Option<String>,
    pub auth_method: Option<String>,
    /// Only forwards still open (no `ended_at`, allowed).
    pub open: bool,
    pub before: Option<Before>,
}

/// Filters of `audit list` (and the console).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub user: Option<String>,
    pub kind: Option<String>,
    pub connection_id: Option<String>,
    pub limit: Option<i64>,
    /// The client address, `ip:port` or just the ip.
    pub source: Option<String>,
    pub before: Option<Before>,
}

enum Param {
    Text(String),
    Int(i64),
}

/// A WHERE clause with `$n` placeholders and its parameters, in order.
#[derive(Default)]
struct Where {
    sql: String,
    params: Vec<Param>,
}

impl Where {
    fn push(&mut self, cond: &str, p: Param) {
        self.params.push(p);
        self.sql.push_str(if self.sql.is_empty() {
            " WHERE "
        } else {
            " AND "
        });
        self.sql
            .push_str(&cond.replace('?', &format!("${}", self.params.len())));
    }
    fn text(&mut self, cond: &str, v: &Option<String>) {
        if let Some(v) = v {
            self.push(cond, Param::Text(v.clone()));
        }
    }
    fn int(&mut self, cond: &str, v: Option<i64>) {
        if let Some(v) = v {
            self.push(cond, Param::Int(v));
        }
    }
    /// `source` equal to an `ip:port`, or starting with `ip:` (IPv6
    /// sources are written `[ip]:port`). Compared byte by byte (PostgreSQL:
    /// `COLLATE "C"`, SQLite's default), so that the indexes on `source`
    /// (migration 0009) serve both: the prefix as the range from `ip:` up
    /// to `ip;` (`;` is the byte after `:`), which holds exactly the
    /// strings that start with `ip:`.
    fn source(&mut self, v: &Option<String>, backend: Backend) {
        let Some(v) = v else { return };
        let col = match backend {
            Backend::Postgres => "source COLLATE \"C\"",
            Backend::Sqlite => "source",
        };
        if v.parse::<std::net::SocketAddr>().is_ok() {
            self.push(&format!("{col} = ?"), Param::Text(v.clone()));
        } else if let Ok(ip) = v.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            let prefix = match ip {
                std::net::IpAddr::V4(ip) => format!("{ip}:"),
                std::net::IpAddr::V6(ip) => format!("[{ip}]:"),
            };
            let end = format!("{};", &prefix[..prefix.len() - 1]);
            self.push(&format!("{col} >= ?"), Param::Text(prefix));
            self.push(&format!("{col} < ?"), Param::Text(end));
        } else {
            // Nothing is stored under a source that is not an address.
            self.push(&format!("{col} = ?"), Param::Text(v.clone()));
        }
    }
    /// Rows before a keyset boundary on (`col`, id), newest first.
    fn before(&mut self, col: &str, b: Option<Before>) {
        let Some(b) = b else { return };
        self.params.push(Param::Int(b.at));
        let at = self.params.len();
        self.params.push(Param::Int(b.id));
        let id = self.params.len();
        self.sql.push_str(if self.sql.is_empty() {
            " WHERE "
        } else {
            " AND "
        });
        // `{col} <= at` selects nothing more than the OR does, but it is
        // a range an index on `col` can start from: without it the
        // planners walked the index from the newest row down past every
        // row of the pages before (measured by bench/run --only console).
        self.sql.push_str(&format!(
            "{col} <= ${at} AND ({col} < ${at} OR ({col} = ${at} AND id < ${id}))"
        ));
    }
    async fn fetch(
        self,
        store: &Store,
        head: &str,
        tail: &str,
    ) -> Result<Vec<AnyRow>, sqlx::Error> {
        let sql = format!("{head}{}{tail}", self.sql);
        // Only fixed column names and `$n` placeholders are formatted in.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for p in self.params {
            q = match p {
                Param::Text(s) => q.bind(s),
                Param::Int(i) => q.bind(i),
            };
        }
        q.fetch_all(store.pool()).await
    }
}

const SESSION_COLUMNS: &str = "SELECT id, connection_id, node, user_name, auth_method, source, target, host, port, address, \
     result, reason, started_at, ended_at, bytes_to_target, bytes_from_target, close_reason, request_id, mode FROM forwards";

fn session_row(r: &AnyRow) -> Result<SessionRow, sqlx::Error> {
    let started: i64 = r.try_get("started_at")?;
    let ended: Option<i64> = r.try_get("ended_at")?;
    Ok(SessionRow {
        id: r.try_get("id")?,
        connection_id: r.try_get("connection_id")?,
        node: r.try_get("node")?,
        user: r.try_get("user_name")?,
        auth_method: r.try_get("auth_method")?,
        source: r.try_get("source")?,
        target: r.try_get("target")?,
        host: r.try_get("host")?,
        port: r.try_get("port")?,
        address: r.try_get("address")?,
        result: r.try_get("result")?,
        reason: r.try_get("reason")?,
        started_at: rfc3339_micros(started),
        ended_at: ended.map(rfc3339_micros),
        duration_seconds: ended.map(|e| (e - started).max(0) as f64 / 1e6),
        bytes_to_target: r.try_get("bytes_to_target")?,
        bytes_from_target: r.try_get("bytes_from_target")?,
        close_reason: r.try_get("close_reason")?,
        request_id: r.try_get("request_id")?,
        mode: r.try_get("mode")?,
        recordings: Vec::new(),
        started_micros: started,
    })
}

/// Forwards, newest first.
pub async fn sessions(store: &Store, f: &SessionFilter) -> Result<Vec<SessionRow>, sqlx::Error> {
    let mut w = Where::default();
    w.text("user_name = ?", &f.user);
    w.text("target = ?", &f.target);
    w.int("started_at >= ?", f.since);
    w.int("started_at <= ?", f.until);
    w.source(&f.source, store.backend());
    w.text("result = ?", &f.result);
    w.text("auth_method = ?", &f.auth_method);
    if f.open {
        w.sql
            .push_str(if w.sql.is_empty() { " WHERE " } else { " AND " });
        w.sql.push_str("ended_at IS NULL AND result = 'allowed'");
    }
    w.before("started_at", f.before);
    let tail = format!(
        " ORDER BY started_at DESC, id DESC LIMIT {}",
        f.limit.unwrap_or(1000).max(0)
    );
    w.fetch(store, SESSION_COLUMNS, &tail)
        .await?
        .iter()
        .map(session_row)
        .collect()
}

pub async fn session(store: &Store, id: i64) -> Result<Option<SessionRow>, sqlx::Error> {
    let mut w = Where::default();
    w.int("id = ?", Some(id));
    w.fetch(store, SESSION_COLUMNS, "")
        .await?
        .first()
        .map(session_row)
        .transpose()
}

/// Events, oldest first (the order they happened).
pub async fn events(store: &Store, f: &EventFilter) -> Result<Vec<EventRow>, sqlx::Error> {
    let mut w = Where::default();
    w.int("at >= ?", f.since);
    w.int("at <= ?", f.until);
    w.text("user_name = ?", &f.user);
    w.text("kind = ?", &f.kind);
    w.text("connection_id = ?", &f.connection_id);
    w.source(&f.source, store.backend());
    w.before("at", f.before);
    // The newest `limit` events, shown oldest first.
    let head = "SELECT id, at, kind, node, connection_id, user_name, source, reason, detail FROM audit_events";
    let tail = format!(
        " ORDER BY at DESC, id DESC LIMIT {}",
        f.limit.unwrap_or(1000).max(0)
    );
    let mut rows = w
        .fetch(store, head, &tail)
        .await?
        .iter()
        .map(|r| {
            let detail: String = r.try_get("detail")?;
            let at: i64 = r.try_get("at")?;
            Ok(EventRow {
                id: r.try_get("id")?,
                at: rfc3339_micros(at),
                at_micros: at,
                kind: r.try_get("kind")?,
                node: r.try_get("node")?,
                connection_id: r.try_get("connection_id")?,
                user: r.try_get("user_name")?,
                source: r.try_get("source")?,
                reason: r.try_get("reason")?,
                detail: serde_json::from_str(&detail).unwrap_or(Value::String(detail)),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    rows.reverse();
    Ok(rows)
}

/// Connections a review console admin ended (`console.action` rows with
/// `action` `connection_end`) at or after `since` (unix microseconds):
/// every node polls this and ends those that are its own. A refused
/// action's row (it has a reason) is no command.
pub async fn connection_ends(store: &Store, since: i64) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT detail FROM audit_events WHERE at >= $1 AND kind = $2 AND reason IS NULL",
    )
    .bind(since)
    .bind(crate::audit::EventKind::ConsoleAction.as_str())
    .fetch_all(store.pool())
    .await?;
    let mut ids = Vec::new();
    for r in &rows {
        let detail: String = r.try_get("detail")?;
        let Ok(v) = serde_json::from_str::<Value>(&detail) else {
            continue;
        };
        if v.get("action").and_then(Value::as_str) == Some("connection_end")
            && let Some(id) = v.get("connection_id").and_then(Value::as_str)
        {
            ids.push(id.to_string());
        }
    }
    Ok(ids)
}

/// A connection still open (no `closed_at`), as the Now page shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConnectionRow {
    pub connection_id: String,
    pub node: String,
    pub source: String,
    /// Set once it logged in.
    pub user: Option<String>,
    pub auth_method: Option<String>,
    pub client_version: Option<String>,
    pub opened_at: String,
    pub authenticated_at: Option<String>,
}

const CONNECTION_COLUMNS: &str = "SELECT id, node, source, user_name, auth_method, client_version, opened_at, authenticated_at FROM connections";

fn connection_row(r: &AnyRow) -> Result<ConnectionRow, sqlx::Error> {
    let authenticated: Option<i64> = r.try_get("authenticated_at")?;
    Ok(ConnectionRow {
        connection_id: r.try_get("id")?,
        node: r.try_get("node")?,
        source: r.try_get("source")?,
        user: r.try_get("user_name")?,
        auth_method: r.try_get("auth_method")?,
        client_version: r.try_get("client_version")?,
        opened_at: rfc3339_micros(r.try_get("opened_at")?),
        authenticated_at: authenticated.map(rfc3339_micros),
    })
}

/// Connections open now on every node (logged in or not), newest first.
pub async fn open_connections(
    store: &Store,
    limit: i64,
) -> Result<Vec<ConnectionRow>, sqlx::Error> {
    let mut w = Where::default();
    w.sql.push_str(" WHERE closed_at IS NULL");
    w.fetch(
        store,
        CONNECTION_COLUMNS,
        &format!(" ORDER BY opened_at DESC, id DESC LIMIT {}", limit.max(0)),
    )
    .await?
    .iter()
    .map(connection_row)
    .collect()
}

/// Connection `id` if it is still open.
pub async fn open_connection(
    store: &Store,
    id: &str,
) -> Result<Option<ConnectionRow>, sqlx::Error> {
    let mut w = Where::default();
    w.text("id = ?", &Some(id.to_string()));
    w.sql.push_str(" AND closed_at IS NULL");
    w.fetch(store, CONNECTION_COLUMNS, "")
        .await?
        .first()
        .map(connection_row)
        .transpose()
}
