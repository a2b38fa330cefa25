//! `/` (Now): the forwards and connections open right now on every node, from the shared
//! database, refreshed by the browser every few seconds (a meta refresh:
//! no script). Admins end a connection from here: the `console.action`
//! row is both the record and the command every node's grant watcher
//! polls for (server/grant_watch.rs), so the node holding the connection
//! ends it within seconds and tells the engineer why.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::export::Format;
use super::sessions::{EXPORT, table};
use super::{ConsoleState, Role, Viewer, error_page, export, internal, layout};
use crate::audit::query::{self, SessionFilter};
use crate::audit::{Event, EventKind};

/// Seconds between refreshes.
const REFRESH: u32 = 10;

#[derive(Deserialize)]
pub struct NowQuery {
    format: Option<String>,
}

pub async fn page(
    State(st): State<Arc<ConsoleState>>,
    viewer: Viewer,
    Query(q): Query<NowQuery>,
) -> Response {
    let format = match Format::parse(&q.format) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let filter = SessionFilter {
        open: true,
        limit: Some(EXPORT),
        ..Default::default()
    };
    let (rows, connections) = match (
        query::sessions(&st.store, &filter).await,
        query::open_connections(&st.store, EXPORT).await,
    ) {
        (Ok(r), Ok(c)) => (r, c),
        (Err(e), _) | (_, Err(e)) => return internal(e).into_response(),
    };
    match format {
        Format::Json => export::json(&rows),
        Format::Csv => super::sessions::list_csv(&rows),
        Format::Html => {
            let admin = viewer.role == super::Role::Admin;
            let body = html! {
                p { (connections.len()) " open connection(s) and " (rows.len())
                    " open forward(s) on all nodes; this page refreshes every "
                    (REFRESH) " seconds." }
                h2 { "Forwards" }
                (layout::exports("/", ""))
                (table(&rows, Some(&viewer)))
                h2 { "Connections" }
                table #connections {
                    thead { tr {
                        th { "Opened" } th { "Logged in" } th { "User" } th { "Auth" } th { "Source" }
                        th { "Client" } th { "Node" } th { "Connection" }
                        @if admin { th { "End connection" } }
                    } }
                    tbody { @for c in &connections { tr {
                        td { (c.opened_at) }
                        td { (layout::or_dash(&c.authenticated_at)) }
                        td.user { (layout::or_dash(&c.user)) }
                        td { (layout::or_dash(&c.auth_method)) }
                        td { (c.source) }
                        td { (layout::or_dash(&c.client_version)) }
                        td { (c.node) }
                        td { code { (c.connection_id) } }
                        @if admin { td {
                            form.end method="post" action={ "/connections/" (c.connection_id) "/end" } {
                                (layout::csrf_field(&viewer))
                                input type="text" name="note" placeholder="why (audited)";
                                button type="submit" { "End" }
                            }
                        } }
                    } } }
                }
                @if connections.is_empty() { p { "No open connections." } }
            };
            layout::page(&viewer, "Now", Some(REFRESH), body).into_response()
        }
    }
}

#[derive(Deserialize)]
pub struct EndForm {
    csrf: Option<String>,
    note: Option<String>,
}

/// `POST /connections/ID/end` (admins): end a live connection on whichever
/// node holds it.
pub async fn end(
    State(st): State<Arc<ConsoleState>>,
    viewer: Viewer,
    Path(connection_id): Path<String>,
    Form(f): Form<EndForm>,
) -> Response {
    if let Err(r) = viewer
        .permit_action(
            &st,
            Role::Admin,
            "connection_end",
            &[("connection_id", crate::audit::clean(&connection_id).into())],
            f.csrf.as_deref(),
        )
        .await
    {
        return r;
    }
    let row = match query::open_connection(&st.store, &connection_id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                "No such open connection (it may have ended already).",
            );
        }
        Err(e) => return internal(e).into_response(),
    };
    let note = crate::text::clean(f.note.as_deref().unwrap_or("").trim(), 300);
    let mut ev = Event::new(EventKind::ConsoleAction)
        .user(viewer.name.as_str())
        .detail("action", "connection_end")
        .detail("connection_id", row.connection_id.as_str())
        .detail("connection_user", row.user.clone().unwrap_or_default())
        .detail("node", row.node.as_str())
        .detail("note", note);
    ev.source = Some(viewer.source.to_string());
    // The row is the command: without it stored, nothing would end.
    if !st.record(ev).await {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The audit trail cannot be written right now; the connection was not ended.",
        );
    }
    Redirect::to("/").into_response()
}
