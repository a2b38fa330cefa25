//! `audit verify`'s cross-checks (docs/AUDIT.md "Cross-checks"): the
//! tables updated in place (`forwards`, `connections`, `grants`) are not
//! chained themselves, so each of their rows is compared with the chained
//! events that back it. `sessions list` must never show what the chain
//! does not back.
//!
//! The writers give a row and its event one clock read, so times compare
//! exactly, and the events are found by time through the `(kind, at)`
//! index: a page of rows, then one query for the events at their times.
//! An event not at the row's time is looked for by its id (`forward_id`,
//! `connection_id`, `grant_id`), which scans, but only for rows already
//! found wrong (at most [`MAX_PROBLEMS`] per table).

use std::collections::HashMap;

use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::verify::{Problem, ProblemKind};

#[path = "crosscheck_tables.rs"]
mod tables;
use crate::clock::{now_micros, rfc3339_micros};
use crate::store::Store;

/// Rows read per query.
const PAGE: i64 = 500;
/// Problems reported per table and node; past them the table is not read
/// further (fix those, run again).
pub const MAX_PROBLEMS: usize = 100;
/// Row changes this recent may still have their event on the way to the
/// database (the writer queues, batches and retries): a missing event is
/// not reported for them. An event that disagrees always is.
pub const SETTLE_MICROS: i64 = 60 * 1_000_000;

/// Compare the `forwards`, `connections` and `grants` rows of `node` with
/// the chained events that back them.
pub async fn crosscheck(store: &Store, node: &str) -> Result<Vec<Problem>, sqlx::Error> {
    crosscheck_settled(store, node, now_micros() - SETTLE_MICROS).await
}

/// [`crosscheck`], treating row changes from `settled` (unix µs) on as
/// possibly still unwritten.
pub(crate) async fn crosscheck_settled(
    store: &Store,
    node: &str,
    settled: i64,
) -> Result<Vec<Problem>, sqlx::Error> {
    // Rows from before the node's oldest chained event (pruned, or from
    // before the chain) have nothing left to be compared with.
    let first = sqlx::query(
        "SELECT at FROM audit_events WHERE node = $1 AND seq IS NOT NULL ORDER BY seq LIMIT 1",
    )
    .bind(node)
    .fetch_optional(store.pool())
    .await?;
    let Some(first) = first else {
        return Ok(Vec::new());
    };
    let mut c = Checker {
        store,
        node,
        since: first.try_get("at")?,
        settled,
        problems: Vec::new(),
    };
    c.forwards().await?;
    c.connections().await?;
    c.grants().await?;
    Ok(c.problems)
}

struct Checker<'a> {
    store: &'a Store,
    node: &'a str,
    /// Rows that began before this (unix µs) are not checked.
    since: i64,
    settled: i64,
    problems: Vec<Problem>,
}

/// A chained event, as far as the cross-checks read it.
struct Ev {
    id: i64,
    seq: i64,
    at: i64,
    kind: String,
    connection_id: Option<String>,
    user: Option<String>,
    source: Option<String>,
    reason: Option<String>,
    detail: Map<String, Value>,
}

const EVENT_COLUMNS: &str =
    "SELECT id, seq, at, kind, connection_id, user_name, source, reason, detail FROM audit_events";

impl Ev {
    fn read(r: &AnyRow) -> Result<Ev, sqlx::Error> {
        let detail: String = r.try_get("detail")?;
        Ok(Ev {
            id: r.try_get("id")?,
            seq: r.try_get("seq")?,
            at: r.try_get("at")?,
            kind: r.try_get("kind")?,
            connection_id: r.try_get("connection_id")?,
            user: r.try_get("user_name")?,
            source: r.try_get("source")?,
            reason: r.try_get("reason")?,
            // A detail that is not an object was changed: the chain
            // check reports that row.
            detail: serde_json::from_str(&detail).unwrap_or_default(),
        })
    }

    /// A detail field as text (numbers in decimal); `None` when absent.
    fn text(&self, key: &str) -> Option<String> {
        match self.detail.get(key)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            v => Some(v.to_string()),
        }
    }

    fn reason(&self) -> Option<String> {
        self.reason.clone()
    }

    fn user(&self) -> Option<String> {
        self.user.clone()
    }

    fn source(&self) -> Option<String> {
        self.source.clone()
    }

    fn connection_id(&self) -> Option<String> {
        self.connection_id.clone()
    }

    fn at(&self) -> i64 {
        self.at
    }
}

/// How a table's rows name their events.
#[derive(Clone, Copy)]
enum Key {
    /// `detail.forward_id`
    Forward,
    /// The event's `connection_id`.
    Connection,
    /// `detail.grant_id`
    Grant,
}

impl Key {
    fn of(self, ev: &Ev) -> Option<String> {
        match self {
            Key::Forward => ev.text("forward_id"),
            Key::Connection => ev.connection_id.clone(),
            Key::Grant => ev.text("grant_id"),
        }
    }

    fn table(self) -> &'static str {
        match self {
            Key::Forward => "forwards",
            Key::Connection => "connections",
            Key::Grant => "grants",
        }
    }
}

/// The events of one page of rows found at the rows' times, by
/// (kind, key).
struct Found {
    key: Key,
    /// Whose chain the events are in (`None`: any node's).
    node: Option<String>,
    events: HashMap<(String, String), Ev>,
}

/// A time as a message shows it.
fn time(us: i64) -> String {
    format!("{} ({us} µs)", rfc3339_micros(us))
}

impl<'a> Checker<'a> {
    fn node(&self) -> &'a str {
        self.node
    }

    fn since(&self) -> i64 {
        self.since
    }

    /// Whether `table` has all the problems it may report.
    fn full(&self, table: &str) -> bool {
        self.problems.iter().filter(|p| p.table == table).count() >= MAX_PROBLEMS
    }

    /// One page of rows of `sql` (with `$1` node, `$2` since, `$3` the
    /// last id of the page before, `$4` the page size).
    async fn page<K>(&self, sql: &'static str, after: K) -> Result<Vec<AnyRow>, sqlx::Error>
    where
        K: for<'q> sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + Send + 'a,
    {
        sqlx::query(sql)
            .bind(self.node)
            .bind(self.since)
            .bind(after)
            .bind(PAGE)
            .fetch_all(self.store.pool())
            .await
    }

    fn last_page(rows: &[AnyRow]) -> bool {
        (rows.len() as i64) < PAGE
    }

    /// The chained events of `kinds` at any of `ats`, in `node`'s chain (or
    /// any node's): one indexed query per few hundred times.
    async fn events_at(
        &self,
        key: Key,
        node: Option<&str>,
        kinds: &[&'static str],
        mut ats: Vec<i64>,
    ) -> Result<Found, sqlx::Error> {
        ats.sort_unstable();
        ats.dedup();
        let mut events = HashMap::new();
        let kinds = kinds.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>();
        for chunk in ats.chunks(PAGE as usize) {
            let first = if node.is_some() { 2 } else { 1 };
            let places = (0..chunk.len())
                .map(|i| format!("${}", first + i))
                .collect::<Vec<_>>()
                .join(", ");
            let node_clause = if node.is_some() { "node = $1 AND " } else { "" };
            // Only placeholders and the constant kind names go in the text.
            let sql = format!(
                "{EVENT_COLUMNS} WHERE {node_clause}seq IS NOT NULL AND kind IN ({}) AND at IN ({places}) ORDER BY id",
                kinds.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            if let Some(n) = node {
                q = q.bind(n.to_string());
            }
            for at in chunk {
                q = q.bind(*at);
            }
            for r in q.fetch_all(self.store.pool()).await? {
                let ev = Ev::read(&r)?;
                if let Some(k) = key.of(&ev) {
                    events.entry((ev.kind.clone(), k)).or_insert(ev);
                }
            }
        }
        Ok(Found {
            key,
            node: node.map(str::to_string),
            events,
        })
    }

    /// The `kind` event backing row `id`: found at the row's time, or
    /// else looked for by its id anywhere at or after `from` (then its
    /// time differs from the row's). The newest, if several.
    async fn backing(
        &self,
        found: &mut Found,
        kind: &str,
        id: &str,
        from: i64,
    ) -> Result<Option<Ev>, sqlx::Error> {
        if let Some(ev) = found.events.remove(&(kind.to_string(), id.to_string())) {
            return Ok(Some(ev));
        }
        let (clause, pattern) = match found.key {
            Key::Connection => ("(connection_id = $3 OR connection_id = $4)", None),
            Key::Forward => ("(detail LIKE $3 OR detail LIKE $4)", Some("forward_id")),
            Key::Grant => ("(detail LIKE $3 OR detail LIKE $4)", Some("grant_id")),
        };
        let node_clause = if found.node.is_some() {
            "node = $5 AND "
        } else {
            ""
        };
        let sql = format!(
            "{EVENT_COLUMNS} WHERE {node_clause}seq IS NOT NULL AND kind = $1 AND at >= $2 AND {clause} \
             ORDER BY id DESC LIMIT 1"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(kind.to_string())
            .bind(from);
        match pattern {
            None => q = q.bind(id.to_string()).bind(id.to_string()),
            // The stored detail is compact JSON: the id ends at `,` or `}`.
            Some(field) => {
                q = q
                    .bind(format!("%\"{field}\":{id},%"))
                    .bind(format!("%\"{field}\":{id}}}%"))
            }
        }
        if let Some(n) = &found.node {
            q = q.bind(n.clone());
        }
        q.fetch_optional(self.store.pool())
            .await?
            .as_ref()
            .map(Ev::read)
            .transpose()
    }

    /// The row is backed by no `kind` event; not reported while the row's
    /// change at `changed` (unix µs) may still be on its way.
    fn unbacked(&mut self, key: Key, row: &str, kind: &str, changed: i64, why: &str) {
        if changed >= self.settled {
            return;
        }
        self.problems.push(Problem {
            id: 0,
            table: key.table(),
            row: row.to_string(),
            seq: None,
            problem: ProblemKind::RowUnbacked,
            message: format!(
                "{} row {row}: no {kind} event backs it ({why}): the row was changed or inserted by hand",
                key.table()
            ),
        });
    }

    /// An event that backs a row, but that a closed row does not know
    /// (e.g. a close on a row that is open again): reported once settled.
    fn settled(&self, at: i64) -> bool {
        at < self.settled
    }

    /// Report `field` when the row and the event disagree on it.
    fn compare(
        &mut self,
        key: Key,
        row: &str,
        ev: &Ev,
        field: &str,
        in_row: Option<String>,
        in_event: Option<String>,
    ) {
        if in_row == in_event {
            return;
        }
        let show = |v: &Option<String>| v.as_ref().map_or("NULL".to_string(), |s| format!("{s:?}"));
        self.problems.push(Problem {
            id: ev.id,
            table: key.table(),
            row: row.to_string(),
            seq: Some(ev.seq),
            problem: ProblemKind::RowMismatch,
            message: format!(
                "{} row {row}: {field} is {} in the row but {} in its {} event (id {}, seq {})",
                key.table(),
                show(&in_row),
                show(&in_event),
                ev.kind,
                ev.id,
                ev.seq
            ),
        });
    }

    /// [`Self::compare`] each `(field, in the row, in the event)`.
    fn compare_each<const N: usize>(
        &mut self,
        key: Key,
        row: &str,
        ev: &Ev,
        fields: [(&str, Option<String>, Option<String>); N],
    ) {
        for (field, in_row, in_event) in fields {
            self.compare(key, row, ev, field, in_row, in_event);
        }
    }

    /// Report a time the row and the event disagree on.
    fn compare_time(&mut self, key: Key, row: &str, ev: &Ev, field: &str, in_row: Option<i64>) {
        if in_row != Some(ev.at) {
            self.compare(key, row, ev, field, in_row.map(time), Some(time(ev.at)));
        }
    }
}
