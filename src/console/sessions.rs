//! `/sessions` (forwards, filtered, newest first, keyset pages) and
//! `/sessions/ID` (one forward: its connection's audit timeline, bytes,
//! close reason, recordings and file operations).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::export::{self, Format};
use super::layout::{self, or_dash};
use super::{ConsoleState, Problem, Viewer, before_param, error_page, given, internal, time_param};
use crate::audit::query::{self, EventFilter, EventRow, SessionFilter, SessionRow};
use crate::audit::{Event, EventKind};

/// Rows on an HTML page unless `limit` says otherwise.
pub const PAGE: i64 = 50;
/// Rows in an export unless `limit` says otherwise.
pub const EXPORT: i64 = 10_000;
/// The most rows one answer holds.
pub const MAX: i64 = 100_000;

#[derive(Deserialize, Default)]
pub struct Filters {
    user: Option<String>,
    target: Option<String>,
    source: Option<String>,
    result: Option<String>,
    auth_method: Option<String>,
    since: Option<String>,
    until: Option<String>,
    before: Option<String>,
    limit: Option<String>,
    format: Option<String>,
}

/// The query string of `pairs` (blank values left out).
pub fn query_string(pairs: &[(&str, &Option<String>)]) -> String {
    pairs
        .iter()
        .filter_map(|(k, v)| given(v).map(|v| (k, v)))
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(&v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `limit`: the page size asked for, within bounds.
pub fn limit(v: &Option<String>, format: Format) -> Result<i64, Problem> {
    match given(v) {
        None if format == Format::Html => Ok(PAGE),
        None => Ok(EXPORT),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=MAX).contains(&n) => Ok(n),
            _ => Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "limit is a number from 1 to 100000",
            )),
        },
    }
}

pub async fn list(
    State(st): State<Arc<ConsoleState>>,
    viewer: Viewer,
    Query(q): Query<Filters>,
) -> Response {
    list_inner(&st, &viewer, &q)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn list_inner(st: &ConsoleState, viewer: &Viewer, q: &Filters) -> Result<Response, Problem> {
    let format = Format::parse(&q.format)?;
    let limit = limit(&q.limit, format)?;
    let filter = SessionFilter {
        user: given(&q.user),
        target: given(&q.target),
        source: given(&q.source),
        result: given(&q.result),
        auth_method: given(&q.auth_method),
        since: time_param(&q.since)?,
        until: time_param(&q.until)?,
        before: before_param(&q.before)?,
        limit: Some(limit),
        open: false,
    };
    let rows = query::sessions(&st.store, &filter)
        .await
        .map_err(internal)?;
    let filters = [
        ("user", &q.user),
        ("target", &q.target),
        ("source", &q.source),
        ("result", &q.result),
        ("auth_method", &q.auth_method),
        ("since", &q.since),
        ("until", &q.until),
    ];
    Ok(match format {
        Format::Json => export::json(&rows),
        Format::Csv => list_csv(&rows),
        Format::Html => {
            let base = query_string(&filters);
            let mut here = filters.to_vec();
            here.push(("before", &q.before));
            here.push(("limit", &q.limit));
            let next = (rows.len() as i64 == limit)
                .then(|| rows.last())
                .flatten()
                .map(|r| {
                    let cursor = Some(format!("{}.{}", r.started_micros, r.id));
                    let mut p = filters.to_vec();
                    p.push(("before", &cursor));
                    p.push(("limit", &q.limit));
                    query_string(&p)
                });
            let body = html! {
                form.filters method="get" action="/sessions" {
                    (field("user", "User", &q.user))
                    (field("target", "Target", &q.target))
                    (field("source", "Source", &q.source))
                    (field("result", "Result (allowed, denied, failed)", &q.result))
                    (field("auth_method", "Auth method", &q.auth_method))
                    (field("since", "Since (2h, 2026-12-01, RFC 3339)", &q.since))
                    (field("until", "Until", &q.until))
                    button type="submit" { "Filter" }
                }
                (layout::exports("/sessions", &query_string(&here)))
                (table(&rows, None))
                p.pager {
                    @if given(&q.before).is_some() {
                        a href={ "/sessions?" (base) } { "Newest" }
                    }
                    @if let Some(n) = next {
                        " " a #next href={ "/sessions?" (n) } { "Older →" }
                    }
                }
            };
            layout::page(viewer, "Sessions", None, body).into_response()
        }
    })
}

pub fn field(name: &str, label: &str, value: &Option<String>) -> Markup {
    html! {
        label { (label) input type="text" name=(name) value=(value.as_deref().unwrap_or("")); }
    }
}

/// The forwards table (also on the Now page, where `end` gives admins a
/// button that ends a row's connection).
pub fn table(rows: &[SessionRow], end: Option<&Viewer>) -> Markup {
    let end = end.filter(|v| v.role == super::Role::Admin);
    html! {
        table #sessions {
            thead { tr {
                th { "ID" } th { "Started" } th { "Ended" } th { "User" } th { "Auth" }
                th { "Source" } th { "Target" } th { "Address" } th { "Result" }
                th { "To target" } th { "From target" } th { "Close reason" } th { "Node" }
                @if end.is_some() { th { "End connection" } }
            } }
            tbody {
                @for r in rows {
                    tr class=(if r.result == "allowed" { "" } else { "refused" }) {
                        td { a href={ "/sessions/" (r.id) } { (r.id) } }
                        td { (r.started_at) }
                        td { (or_dash(&r.ended_at)) }
                        td.user { (r.user) }
                        td { (r.auth_method) }
                        td { (r.source) }
                        td { (or_dash(&r.target)) " (" (r.host) ":" (r.port) ")" }
                        td { (or_dash(&r.address)) }
                        td { (r.result) @if let Some(why) = &r.reason { " (" (why) ")" } }
                        td { (r.bytes_to_target) }
                        td { (r.bytes_from_target) }
                        td { (or_dash(&r.close_reason)) }
                        td { (r.node) }
                        @if let Some(v) = end { td {
                            form.end method="post" action={ "/connections/" (r.connection_id) "/end" } {
                                (layout::csrf_field(v))
                                input type="text" name="note" placeholder="why (audited)";
                                button type="submit" { "End" }
                            }
                        } }
                    }
                }
            }
        }
        @if rows.is_empty() { p { "No sessions match." } }
    }
}

pub fn list_csv(rows: &[SessionRow]) -> Response {
    export::csv(
        "sessions",
        &[
            "id",
            "connection_id",
            "node",
            "user",
            "auth_method",
            "source",
            "target",
            "host",
            "port",
            "address",
            "result",
            "reason",
            "started_at",
            "ended_at",
            "bytes_to_target",
            "bytes_from_target",
            "close_reason",
            "mode",
        ],
        rows.iter()
            .map(|r| {
                vec![
                    r.id.to_string(),
                    r.connection_id.clone(),
                    r.node.clone(),
                    r.user.clone(),
                    r.auth_method.clone(),
                    r.source.clone(),
                    export::opt(&r.target),
                    r.host.clone(),
                    r.port.to_string(),
                    export::opt(&r.address),
                    r.result.clone(),
                    export::opt(&r.reason),
                    r.started_at.clone(),
                    export::opt(&r.ended_at),
                    r.bytes_to_target.to_string(),
                    r.bytes_from_target.to_string(),
                    export::opt(&r.close_reason),
                    r.mode.clone(),
                ]
            })
            .collect(),
    )
}

/// `GET /sessions/ID`: audited as `console.view`.
pub async fn detail(
    State(st): State<Arc<ConsoleState>>,
    viewer: Viewer,
    Path(id): Path<i64>,
) -> Response {
    let row = match query::session(&st.store, id).await {
        Ok(Some(r)) => r,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, "No such session."),
        Err(e) => return internal(e).into_response(),
    };
    let events = match query::events(
        &st.store,
        &EventFilter {
            connection_id: Some(row.connection_id.clone()),
            limit: Some(10_000),
            ..Default::default()
        },
    )
    .await
    {
        Ok(e) => e,
        Err(e) => return internal(e).into_response(),
    };
    let recordings = match crate::recording::store::list(
        &st.store,
        &crate::recording::Filter {
            session_id: Some(row.id),
            ..Default::default()
        },
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return internal(e).into_response(),
    };
    let mut ev = Event::new(EventKind::ConsoleView)
        .user(viewer.name.as_str())
        .detail("page", "session")
        .detail("session_id", row.id)
        .detail("connection_id", row.connection_id.as_str());
    ev.source = Some(viewer.source.to_string());
    if !st.record(ev).await {
        // Who looked must be on record; without the row, no page.
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The audit trail cannot be written right now; the page is not shown.",
        );
    }
    let file_ops: Vec<&EventRow> = events
        .iter()
        .filter(|e| e.kind == EventKind::FileOp.as_str())
        .collect();
    let body = html! {
        dl #summary {
            dt { "User" } dd.user { (row.user) }
            dt { "Auth method" } dd { (row.auth_method) }
            dt { "Source" } dd { (row.source) }
            dt { "Target" } dd { (or_dash(&row.target)) " (" (row.host) ":" (row.port) ")" }
            dt { "Address dialled" } dd { (or_dash(&row.address)) }
            dt { "Result" } dd { (row.result) @if let Some(why) = &row.reason { " (" (why) ")" } }
            dt { "Started" } dd { (row.started_at) }
            dt { "Ended" } dd { (or_dash(&row.ended_at)) }
            dt { "Bytes to target" } dd #bytes-to { (row.bytes_to_target) }
            dt { "Bytes from target" } dd #bytes-from { (row.bytes_from_target) }
            dt { "Close reason" } dd #close-reason { (or_dash(&row.close_reason)) }
            dt { "Mode" } dd { (row.mode) }
            dt { "Node" } dd { (row.node) }
            dt { "Connection" } dd { code { (row.connection_id) } }
        }
        h2 { "Recordings" }
        @if recordings.is_empty() {
            p { "None (this target is not recorded)." }
        } @else {
            table #recordings {
                thead { tr {
                    th { "ID" } th { "Kind" } th { "Login" } th { "Command" } th { "Exit status" }
                    th { "Started" } th { "Ended" } th { "Bytes" } th { "SHA-256" }
                } }
                tbody { @for r in &recordings { tr {
                    td { a href={ "/recordings/" (r.id) } { (r.id) } }
                    td { (r.kind.as_str()) }
                    td { (r.login) }
                    td { code { (or_dash(&r.command)) } }
                    td { (export::opt(&r.exit_status)) }
                    td { (r.started_at) }
                    td { (or_dash(&r.ended_at)) }
                    td { (r.bytes) @if r.truncated { " (cut)" } }
                    td { code { (or_dash(&r.sha256)) } }
                } } }
            }
            p { "Each recording's page replays it in the terminal player and shows its output as plain text (in a terminal: "
                code { "portvakt recordings play ID" } " on the bastion host)." }
        }
        @if !file_ops.is_empty() {
            h2 { "File operations" }
            (events_table("file-ops", &file_ops))
        }
        h2 { "Timeline of the connection" }
        (events_table("timeline", &events.iter().collect::<Vec<_>>()))
    };
    layout::page(&viewer, &format!("Session {}", row.id), None, body).into_response()
}

/// Audit events as a table (also on the Audit page).
pub fn events_table(id: &str, rows: &[&EventRow]) -> Markup {
    html! {
        table id=(id) {
            thead { tr {
                th { "ID" } th { "At" } th { "Kind" } th { "User" } th { "Source" }
                th { "Reason" } th { "Detail" } th { "Node" }
            } }
            tbody { @for e in rows { tr {
                td { (e.id) }
                td { (e.at) }
                td { (e.kind) }
                td.user { (or_dash(&e.user)) }
                td { (or_dash(&e.source)) }
                td { (or_dash(&e.reason)) }
                td { code { (e.detail.to_string()) } }
                td { (e.node) }
            } } }
        }
        @if rows.is_empty() { p { "No events." } }
    }
}
