//! `/` (Now): the forwards open right now on every node, from the shared
//! database, refreshed by the browser every few seconds (a meta refresh:
//! no script).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::export::Format;
use super::sessions::{EXPORT, table};
use super::{ConsoleState, Viewer, export, internal, layout};
use crate::audit::query::{self, SessionFilter};

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
                (table(&rows))
            };
            layout::page(&viewer, "Now", Some(REFRESH), body).into_response()
        }
    }
}
