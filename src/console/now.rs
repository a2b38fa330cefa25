//! `/` (Now): the forwards open right now on every node, from the shared
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
use super::{ConsoleState, Viewer, error_page, export, internal, layout};
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
    let rows = match query::sessions(&st.store, &filter).await {
        Ok(r) => r,
        Err(e) => return internal(e).into_response(),
    };
    match format {
        Format::Json => export::json(&rows),
        Format::Csv => super::sessions::list_csv(&rows),
        Format::Html => {
            let body = html! {
                p { (rows.len()) " open forward(s) on all nodes; this page refreshes every "
                    (REFRESH) " seconds." }
                (layout::exports("/", ""))
                (table(&rows, Some(&viewer)))
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
    if let Err(r) = viewer.check_csrf(f.csrf.as_deref()) {
        return r.into_response();
    }
    if let Err(r) = viewer.require_admin() {
        return r.into_response();
    }
    let row = match query::open_connection(&st.store, &connection_id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                "No open forward of that connection (it may have ended already).",
            );
        }
        Err(e) => return internal(e).into_response(),
    };
    let note = crate::text::clean(f.note.as_deref().unwrap_or("").trim(), 300);
    let mut ev = Event::new(EventKind::ConsoleAction)
        .user(viewer.name.as_str())
        .detail("action", "connection_end")
        .detail("connection_id", row.connection_id.as_str())
        .detail("connection_user", row.user.as_str())
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
