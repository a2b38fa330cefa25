//! `/grants`: login grants in force on every node; admins revoke one. The
//! revocation is the one `portvakt grants revoke ID` makes (the same row
//! change and `grant.revoke` event), so every node's grant watcher ends
//! that grant's live connections within seconds.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::export::{self, Format};
use super::layout::{self, csrf_field};
use super::{ConsoleState, Role, Viewer, error_page, internal};
use crate::audit::{Event, EventKind};
use crate::auth::grants::{self, GrantRow};
use crate::reasons::EventReason;

#[derive(Deserialize)]
pub struct ListQuery {
    format: Option<String>,
}

pub async fn list(
    State(st): State<Arc<ConsoleState>>,
    viewer: Viewer,
    Query(q): Query<ListQuery>,
) -> Response {
    let format = match Format::parse(&q.format) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let rows: Vec<GrantRow> = match grants::list(&st.store, None, false).await {
        Ok(list) => list.iter().map(GrantRow::from).collect(),
        Err(e) => return internal(e).into_response(),
    };
    match format {
        Format::Json => export::json(&rows),
        Format::Csv => export::csv(
            "grants",
            &[
                "id",
                "user",
                "key_fingerprint",
                "method",
                "groups",
                "node",
                "source",
                "created_at",
                "expires_at",
            ],
            rows.iter()
                .map(|g| {
                    vec![
                        g.id.to_string(),
                        g.user.clone(),
                        g.key_fingerprint.clone(),
                        g.method.clone(),
                        g.groups.join(" "),
                        g.node.clone(),
                        export::opt(&g.source),
                        g.created_at.clone(),
                        g.expires_at.clone(),
                    ]
                })
                .collect(),
        ),
        Format::Html => {
            let admin = viewer.role == Role::Admin;
            let body = html! {
                (layout::exports("/grants", ""))
                table #grants {
                    thead { tr {
                        th { "ID" } th { "User" } th { "Key" } th { "Method" } th { "Groups" }
                        th { "Source" } th { "Created" } th { "Expires" } th { "Node" }
                        @if admin { th { "" } }
                    } }
                    tbody { @for g in &rows { tr {
                        td { (g.id) }
                        td.user { (g.user) }
                        td { code { (g.key_fingerprint) } }
                        td { (g.method) }
                        td { (g.groups.join(", ")) }
                        td { (export::opt(&g.source)) }
                        td { (g.created_at) }
                        td { (g.expires_at) }
                        td { (g.node) }
                        @if admin { td {
                            form method="post" action={ "/grants/" (g.id) "/revoke" } {
                                (csrf_field(&viewer))
                                button type="submit" { "Revoke" }
                            }
                        } }
                    } } }
                }
                @if rows.is_empty() { p { "No grants in force." } }
            };
            layout::page(&viewer, "Grants", None, body).into_response()
        }
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

/// `POST /grants/ID/revoke` (admins).
pub async fn revoke(
    State(st): State<Arc<ConsoleState>>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = viewer
        .permit_action(
            &st,
            Role::Admin,
            "grant_revoke",
            &[("grant_id", id.into())],
            f.csrf.as_deref(),
        )
        .await
    {
        return r;
    }
    let revoked = match grants::revoke(&st.store, Some(id), None, EventReason::RevokedByAdmin).await
    {
        Ok(r) => r,
        Err(e) => return internal(e).into_response(),
    };
    let Some(g) = revoked.first() else {
        return error_page(
            StatusCode::NOT_FOUND,
            "No such grant in force (expired or revoked already).",
        );
    };
    st.audit.emit(g.revoke_event(Some(&viewer.name)));
    let mut ev = Event::new(EventKind::ConsoleAction)
        .user(viewer.name.as_str())
        .detail("action", "grant_revoke")
        .detail("grant_id", g.id)
        .detail("grant_user", g.user.as_str());
    ev.source = Some(viewer.source.to_string());
    st.record(ev).await;
    Redirect::to("/grants").into_response()
}
