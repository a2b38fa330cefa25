//! `/audit`: the audit trail of every node, searched by kind, user,
//! source and time, newest first, in keyset pages.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::export::{self, Format};
use super::sessions::{events_table, field, limit, query_string};
use super::{
    ConsoleState, Problem, Role, Viewer, before_param, given, internal, layout, time_param,
};
use crate::audit::query::{self, EventFilter, EventRow};

#[derive(Deserialize)]
pub struct Filters {
    kind: Option<String>,
    user: Option<String>,
    source: Option<String>,
    since: Option<String>,
    until: Option<String>,
    before: Option<String>,
    limit: Option<String>,
    format: Option<String>,
}

pub async fn list(
    State(st): State<Arc<ConsoleState>>,
    viewer: Viewer,
    Query(q): Query<Filters>,
) -> Response {
    inner(&st, &viewer, &q)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn inner(st: &ConsoleState, viewer: &Viewer, q: &Filters) -> Result<Response, Problem> {
    let format = Format::parse(&q.format)?;
    let limit = limit(&q.limit, format)?;
    let filter = EventFilter {
        kind: given(&q.kind),
        user: given(&q.user),
        source: given(&q.source),
        since: time_param(&q.since)?,
        until: time_param(&q.until)?,
        before: before_param(&q.before)?,
        limit: Some(limit),
        connection_id: None,
    };
    let mut rows = query::events(&st.store, &filter).await.map_err(internal)?;
    // Newest first, like the other lists.
    rows.reverse();
    let filters = [
        ("kind", &q.kind),
        ("user", &q.user),
        ("source", &q.source),
        ("since", &q.since),
        ("until", &q.until),
    ];
    Ok(match format {
        Format::Json => export::json(&rows),
        Format::Csv => csv(&rows),
        Format::Html => {
            let mut here = filters.to_vec();
            here.push(("before", &q.before));
            here.push(("limit", &q.limit));
            let next = (rows.len() as i64 == limit)
                .then(|| rows.last())
                .flatten()
                .map(|e| {
                    let cursor = Some(format!("{}.{}", e.at_micros, e.id));
                    let mut p = filters.to_vec();
                    p.push(("before", &cursor));
                    p.push(("limit", &q.limit));
                    query_string(&p)
                });
            let body = html! {
                (super::chain::render(st.chain.get(), st.chain.pending(), viewer))
                h2 { "Events" }
                form.filters method="get" action="/audit" {
                    (field("kind", "Kind (e.g. auth.failure)", &q.kind))
                    (field("user", "User", &q.user))
                    (field("source", "Source", &q.source))
                    (field("since", "Since (2h, 2026-12-01, RFC 3339)", &q.since))
                    (field("until", "Until", &q.until))
                    button type="submit" { "Search" }
                }
                (layout::exports("/audit", &query_string(&here)))
                (events_table("events", &rows.iter().collect::<Vec<_>>()))
                p.pager {
                    @if given(&q.before).is_some() {
                        a href={ "/audit?" (query_string(&filters)) } { "Newest" }
                    }
                    @if let Some(n) = next {
                        " " a #next href={ "/audit?" (n) } { "Older →" }
                    }
                }
            };
            layout::page(viewer, "Audit", None, body).into_response()
        }
    })
}

fn csv(rows: &[EventRow]) -> Response {
    export::csv(
        "audit",
        &[
            "id",
            "at",
            "kind",
            "node",
            "connection_id",
            "user",
            "source",
            "reason",
            "detail",
        ],
        rows.iter()
            .map(|e| {
                vec![
                    e.id.to_string(),
                    e.at.clone(),
                    e.kind.clone(),
                    e.node.clone(),
                    export::opt(&e.connection_id),
                    export::opt(&e.user),
                    export::opt(&e.source),
                    export::opt(&e.reason),
                    e.detail.to_string(),
                ]
            })
            .collect(),
    )
}

#[derive(serde::Deserialize)]
pub struct VerifyForm {
    csrf: Option<String>,
}

/// `POST /audit/verify`: verify the chain again now (any reviewer; it
/// changes nothing, but needs the CSRF token like every form, and is a
/// `console.action` row like every action). The verification runs in the
/// background; the page shows it when done.
pub async fn verify(
    State(st): State<Arc<ConsoleState>>,
    viewer: Viewer,
    axum::Form(f): axum::Form<VerifyForm>,
) -> Response {
    if let Err(r) = viewer
        .permit_action(&st, Role::Reviewer, "chain_verify", &[], f.csrf.as_deref())
        .await
    {
        return r;
    }
    let mut ev = crate::audit::Event::new(crate::audit::EventKind::ConsoleAction)
        .user(viewer.name.as_str())
        .detail("action", "chain_verify");
    ev.source = Some(viewer.source.to_string());
    st.record(ev).await;
    st.chain.ask();
    axum::response::Redirect::to("/audit#chain").into_response()
}
