//! `/lockouts`: banned sources and TOTP-locked users on every node; admins
//! clear one. The same as `portvakt lockout clear SOURCE` and
//! `portvakt lockout clear --user USER` (row changes and `lockout.clear`).

use std::sync::Arc;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::{Deserialize, Serialize};

use super::export::{self, Format};
use super::layout::{self, csrf_field};
use super::{ConsoleState, Role, Viewer, error_page, given, internal};
use crate::audit::{Event, EventKind};
use crate::auth::lockout;

#[derive(Deserialize)]
pub struct ListQuery {
    format: Option<String>,
}

/// One row of the list and its exports: a banned source or a locked user.
#[derive(Serialize)]
struct Row {
    what: &'static str,
    /// The source (ban) or user name (TOTP lock).
    who: String,
    since: Option<String>,
    until: String,
    failures: i64,
    node: String,
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
    let (bans, users) = match (
        lockout::list(&st.store).await,
        lockout::user_locks(&st.store).await,
    ) {
        (Ok(b), Ok(u)) => (b, u),
        (Err(e), _) | (_, Err(e)) => return internal(e).into_response(),
    };
    let mut rows: Vec<Row> = bans
        .into_iter()
        .map(|b| Row {
            what: "source",
            who: b.source,
            since: Some(b.created_at),
            until: b.until,
            failures: b.failures,
            node: b.node,
        })
        .collect();
    rows.extend(users.into_iter().map(|u| Row {
        what: "user",
        who: u.user,
        since: None,
        until: u.until,
        failures: u.failures,
        node: u.node,
    }));
    match format {
        Format::Json => export::json(&rows),
        Format::Csv => export::csv(
            "lockouts",
            &["what", "who", "since", "until", "failures", "node"],
            rows.iter()
                .map(|r| {
                    vec![
                        r.what.to_string(),
                        r.who.clone(),
                        export::opt(&r.since),
                        r.until.clone(),
                        r.failures.to_string(),
                        r.node.clone(),
                    ]
                })
                .collect(),
        ),
        Format::Html => {
            let admin = viewer.role == Role::Admin;
            let body = html! {
                (layout::exports("/lockouts", ""))
                table #lockouts {
                    thead { tr {
                        th { "Banned" } th { "Who" } th { "Since" } th { "Until" } th { "Failures" } th { "Node" }
                        @if admin { th { "" } }
                    } }
                    tbody { @for r in &rows { tr {
                        td { (r.what) }
                        td.user { (r.who) }
                        td { (export::opt(&r.since)) }
                        td { (r.until) }
                        td { (r.failures) }
                        td { (r.node) }
                        @if admin { td {
                            form method="post" action="/lockouts/clear" {
                                (csrf_field(&viewer))
                                input type="hidden" name=(r.what) value=(r.who);
                                button type="submit" { "Clear" }
                            }
                        } }
                    } } }
                }
                @if rows.is_empty() { p { "No bans or locks in force." } }
            };
            layout::page(&viewer, "Lockouts", None, body).into_response()
        }
    }
}

#[derive(Deserialize)]
pub struct ClearForm {
    csrf: Option<String>,
    source: Option<String>,
    user: Option<String>,
}

/// `POST /lockouts/clear` with `source` or `user` (admins).
pub async fn clear(
    State(st): State<Arc<ConsoleState>>,
    viewer: Viewer,
    Form(f): Form<ClearForm>,
) -> Response {
    let on: Vec<(&str, serde_json::Value)> = [("source", &f.source), ("user", &f.user)]
        .into_iter()
        .filter_map(|(k, v)| Some((k, crate::audit::clean(&given(v)?).into())))
        .collect();
    if let Err(r) = viewer
        .permit_action(&st, Role::Admin, "lockout_clear", &on, f.csrf.as_deref())
        .await
    {
        return r;
    }
    let cfg = st.config.load_full();
    let (cleared, lifted) = match (given(&f.source), given(&f.user)) {
        (Some(source), None) => {
            match lockout::clear(&st.store, Some(&source), cfg.lockout.ipv6_prefix).await {
                Ok(n) => {
                    st.audit.emit(
                        Event::new(EventKind::LockoutClear)
                            .detail("source", source.as_str())
                            .detail("lifted", n)
                            .detail("by", viewer.name.as_str()),
                    );
                    (("source", source), n)
                }
                Err(e) => return internal(e).into_response(),
            }
        }
        (None, Some(user)) => match lockout::clear_user(&st.store, &user).await {
            Ok(was) => {
                st.audit.emit(
                    Event::new(EventKind::LockoutClear)
                        .user(user.as_str())
                        .detail("lifted", u64::from(was))
                        .detail("by", viewer.name.as_str()),
                );
                (("user", user), u64::from(was))
            }
            Err(e) => return internal(e).into_response(),
        },
        _ => {
            return error_page(StatusCode::BAD_REQUEST, "Give a source or a user to clear.");
        }
    };
    // This node forgets the ban now; the others at their next refresh.
    if let Err(e) = st.services.lockout.refresh(&cfg.lockout).await {
        tracing::warn!(error = %e, "console: cannot refresh the bans after a clear");
    }
    let mut ev = Event::new(EventKind::ConsoleAction)
        .user(viewer.name.as_str())
        .detail("action", "lockout_clear")
        .detail(cleared.0, cleared.1.as_str())
        .detail("lifted", lifted);
    ev.source = Some(viewer.source.to_string());
    st.record(ev).await;
    Redirect::to("/lockouts").into_response()
}
