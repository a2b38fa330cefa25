//! `/requests`: access requests (DESIGN.md §13) on every node, newest
//! first, filtered by state and user; admins approve, deny (with a reason)
//! and revoke them.
//!
//! A decision here is the same as one over SSH (`ssh bastion approve ID`):
//! the reviewer is the portvakt user of their IdP name (`username_claim`,
//! as for SSH logins), with their IdP groups plus those of a `[[users]]`
//! entry of that name, so the target's `approvers` apply, a request is
//! never decided by whom it is for, and a two-person rule counts each name
//! once, whether it approved over SSH or here. Revoke needs only the admin
//! role, like `portvakt requests revoke` on the host. Each decision writes
//! its `request.*` row (with the browser's address), tells the webhook, and
//! writes a `console.action` row.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::export::{self, Format};
use super::layout::{self, csrf_field};
use super::{ConsoleState, Problem, Role, Viewer, given, internal};
use crate::audit::{Event, EventKind};
use crate::clock::{now_micros, rfc3339_micros};
use crate::policy::Subject;
use crate::requests::store::{self, Approval, DecideError, Filter};
use crate::requests::{self as access, AccessRequest, RequestRow, State as ReqState};

#[derive(Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    user: Option<String>,
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
    let state = match given(&q.state) {
        None => None,
        Some(s) => match ReqState::parse(&s) {
            Some(s) => Some(s),
            None => {
                return Problem::new(
                    StatusCode::BAD_REQUEST,
                    "state is one of pending, approved, denied, expired, revoked",
                )
                .into_response();
            }
        },
    };
    let user = given(&q.user);
    let filter = Filter {
        user: user.clone(),
        state,
        limit: if format == Format::Html { 200 } else { 10_000 },
        ..Filter::default()
    };
    let reqs = match store::list(&st.store, &filter).await {
        Ok(r) => r,
        Err(e) => return internal(e).into_response(),
    };
    let rows: Vec<RequestRow> = reqs.iter().map(AccessRequest::row).collect();
    match format {
        Format::Json => export::json(&rows),
        Format::Csv => export::csv(
            "requests",
            &[
                "id",
                "user",
                "target",
                "duration",
                "reason",
                "state",
                "approvals_needed",
                "approvals",
                "created_at",
                "pending_until",
                "decided_by",
                "decided_at",
                "decision_reason",
                "window_start",
                "window_end",
            ],
            rows.iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        r.user.clone(),
                        r.target.clone(),
                        r.duration.clone(),
                        r.reason.clone(),
                        r.state.as_str().to_string(),
                        r.approvals_needed.to_string(),
                        r.approvals.join(" "),
                        r.created_at.clone(),
                        r.pending_until.clone(),
                        export::opt(&r.decided_by),
                        export::opt(&r.decided_at),
                        export::opt(&r.decision_reason),
                        export::opt(&r.window_start),
                        export::opt(&r.window_end),
                    ]
                })
                .collect(),
        ),
        Format::Html => {
            let admin = viewer.role == Role::Admin;
            let cfg = st.config.load();
            let subject = subject(&viewer, &cfg);
            let now = now_micros();
            let mut query = Vec::new();
            if let Some(s) = state {
                query.push(format!("state={}", s.as_str()));
            }
            if let Some(u) = &user {
                query.push(format!(
                    "user={}",
                    percent_encoding::utf8_percent_encode(u, percent_encoding::NON_ALPHANUMERIC)
                ));
            }
            let body = html! {
                form.filters method="get" action="/requests" {
                    label { "State"
                        select name="state" {
                            option value="" selected[state.is_none()] { "any" }
                            @for s in ReqState::ALL {
                                option value=(s.as_str()) selected[state == Some(s)] { (s.as_str()) }
                            }
                        }
                    }
                    label { "User" input name="user" value=(user.as_deref().unwrap_or("")); }
                    button type="submit" { "Filter" }
                }
                (layout::exports("/requests", &query.join("&")))
                table #requests {
                    thead { tr {
                        th { "ID" } th { "User" } th { "Target" } th { "For" } th { "Reason" }
                        th { "State" } th { "Approvals" } th { "Created" } th { "Pending until" }
                        th { "Decided by" } th { "Decision reason" } th { "Window" }
                        @if admin { th { "" } }
                    } }
                    tbody { @for r in &reqs { tr id={ "request-" (r.id) } {
                        td { (r.id) }
                        td.user { (r.user) }
                        td { (r.target) }
                        td { (humantime::format_duration(r.duration).to_string()) }
                        td.reason { (r.reason) }
                        td.state { (state_text(r, now)) }
                        td { (r.approvals.len()) "/" (r.approvals_needed)
                            @if !r.approvals.is_empty() { " (" (r.approvals.join(", ")) ")" } }
                        td { (rfc3339_micros(r.created_at)) }
                        td { (rfc3339_micros(r.pending_until)) }
                        td { (layout::or_dash(&r.decided_by)) }
                        td { (layout::or_dash(&r.decision_reason)) }
                        td { @match (r.window_start, r.window_end) {
                            (Some(s), Some(e)) => { (rfc3339_micros(s)) " – " (rfc3339_micros(e)) }
                            _ => { "–" }
                        } }
                        @if admin { td.actions {
                            @if r.state == ReqState::Pending && r.pending_until > now {
                                @if may_decide(&cfg, &subject, r) {
                                    form method="post" action={ "/requests/" (r.id) "/approve" } {
                                        (csrf_field(&viewer))
                                        button type="submit" { "Approve" }
                                    }
                                    form method="post" action={ "/requests/" (r.id) "/deny" } {
                                        (csrf_field(&viewer))
                                        input name="reason" required placeholder="why (shown to the requester)"
                                            maxlength=(access::MAX_REASON);
                                        button type="submit" { "Deny" }
                                    }
                                } @else {
                                    span.note { (why_not(&cfg, &subject, r)) }
                                }
                            }
                            @if revocable(r, now) {
                                form method="post" action={ "/requests/" (r.id) "/revoke" } {
                                    (csrf_field(&viewer))
                                    button type="submit" { "Revoke" }
                                }
                            }
                        } }
                    } } }
                }
                @if reqs.is_empty() { p { "No access requests." } }
            };
            layout::page(&viewer, "Access requests", None, body).into_response()
        }
    }
}

/// The reviewer as a portvakt user: their IdP name, their IdP groups and
/// those of a `[[users]]` entry of that name (as an SSH login's subject).
fn subject(viewer: &Viewer, cfg: &crate::config::Config) -> Subject {
    let from_config = cfg
        .user(&viewer.name)
        .into_iter()
        .flat_map(|u| u.groups.iter());
    Subject::new(
        viewer.name.clone(),
        viewer.session.groups.iter().chain(from_config).cloned(),
    )
}

/// Is `subject` an approver of the request's target (in the config in
/// force), and not its requester, and not one of its approvers already?
fn may_decide(cfg: &crate::config::Config, subject: &Subject, r: &AccessRequest) -> bool {
    approver_of(cfg, subject, &r.target)
        && !r.user.eq_ignore_ascii_case(subject.user())
        && !r.approvals.iter().any(|a| a == subject.user())
}

fn approver_of(cfg: &crate::config::Config, subject: &Subject, target: &str) -> bool {
    cfg.policy
        .targets()
        .iter()
        .find(|t| t.name.eq_ignore_ascii_case(target))
        .is_some_and(|t| access::approves(subject, t))
}

fn why_not(cfg: &crate::config::Config, subject: &Subject, r: &AccessRequest) -> &'static str {
    if r.user.eq_ignore_ascii_case(subject.user()) {
        "your own request"
    } else if r.approvals.iter().any(|a| a == subject.user()) {
        "you approved it; it needs another approver"
    } else if !approver_of(cfg, subject, &r.target) {
        "you are not an approver of this target"
    } else {
        ""
    }
}

/// Pending, or approved with its window not yet ended (as `store::revoke`).
fn revocable(r: &AccessRequest, now: i64) -> bool {
    match r.state {
        ReqState::Pending => true,
        ReqState::Approved => r.window_end.is_some_and(|e| e > now),
        _ => false,
    }
}

fn state_text(r: &AccessRequest, now: i64) -> String {
    match r.state {
        ReqState::Approved if r.open_at(now) => "approved (open)".into(),
        ReqState::Approved => "approved (window ended)".into(),
        ReqState::Pending if r.pending_until <= now => "pending (expiring)".into(),
        s => s.as_str().into(),
    }
}

#[derive(Deserialize)]
pub struct DecideForm {
    csrf: Option<String>,
    reason: Option<String>,
}

/// `POST /requests/ID/approve` (admins who are approvers of its target).
pub async fn approve(
    State(st): State<Arc<ConsoleState>>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(f): Form<DecideForm>,
) -> Response {
    decide(&st, &viewer, id, &f, Decision::Approve).await
}

/// `POST /requests/ID/deny` with a `reason` (admins who are approvers).
pub async fn deny(
    State(st): State<Arc<ConsoleState>>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(f): Form<DecideForm>,
) -> Response {
    decide(&st, &viewer, id, &f, Decision::Deny).await
}

/// `POST /requests/ID/revoke` (admins).
pub async fn revoke(
    State(st): State<Arc<ConsoleState>>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Form(f): Form<DecideForm>,
) -> Response {
    decide(&st, &viewer, id, &f, Decision::Revoke).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Decision {
    Approve,
    Deny,
    Revoke,
}

impl Decision {
    fn kind(self) -> EventKind {
        match self {
            Decision::Approve => EventKind::RequestApprove,
            Decision::Deny => EventKind::RequestDeny,
            Decision::Revoke => EventKind::RequestRevoke,
        }
    }

    fn action(self) -> &'static str {
        match self {
            Decision::Approve => "request_approve",
            Decision::Deny => "request_deny",
            Decision::Revoke => "request_revoke",
        }
    }
}

async fn decide(
    st: &ConsoleState,
    viewer: &Viewer,
    id: i64,
    f: &DecideForm,
    decision: Decision,
) -> Response {
    if let Err(r) = viewer
        .permit_action(
            st,
            Role::Admin,
            decision.action(),
            &[("request_id", id.into())],
            f.csrf.as_deref(),
        )
        .await
    {
        return r;
    }
    let reason = if decision == Decision::Deny {
        match access::check_reason(f.reason.as_deref().unwrap_or("")) {
            Ok(r) => Some(r),
            Err(e) => return refused(st, viewer, id, decision, StatusCode::BAD_REQUEST, e).await,
        }
    } else {
        None
    };
    let by = viewer.name.as_str();
    let now = now_micros();
    let done = match decision {
        Decision::Approve | Decision::Deny => {
            let cfg = st.config.load();
            let req = match store::get(&st.store, id).await {
                Ok(Some(r)) => r,
                Ok(None) => {
                    return refused(
                        st,
                        viewer,
                        id,
                        decision,
                        StatusCode::NOT_FOUND,
                        format!("there is no request {id}"),
                    )
                    .await;
                }
                Err(e) => return internal(e).into_response(),
            };
            if !approver_of(&cfg, &subject(viewer, &cfg), &req.target) {
                return refused(
                    st,
                    viewer,
                    id,
                    decision,
                    StatusCode::FORBIDDEN,
                    format!(
                        "you may not decide request {id}: only the approvers of {} may",
                        req.target
                    ),
                )
                .await;
            }
            if decision == Decision::Approve {
                store::approve(&st.store, id, by, now)
                    .await
                    .map(|a| match a {
                        Approval::Opened(r) | Approval::Recorded(r) => r,
                    })
            } else {
                store::deny(&st.store, id, by, reason.as_deref().unwrap_or(""), now).await
            }
        }
        Decision::Revoke => store::revoke(&st.store, id, by, now).await,
    };
    let req = match done {
        Ok(r) => r,
        Err(DecideError::Database(e)) => return internal(e).into_response(),
        Err(e) => {
            let status = match e {
                DecideError::NotFound(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::CONFLICT,
            };
            return refused(st, viewer, id, decision, status, e.to_string()).await;
        }
    };
    let mut ev = access::event(decision.kind(), &req, Some(by)).detail("via", "console");
    ev.source = Some(viewer.source.to_string());
    let stored = st.record(ev).await;
    st.webhook.notify(decision.kind(), &req, Some(by));
    let mut action = Event::new(EventKind::ConsoleAction)
        .user(by)
        .detail("action", decision.action())
        .detail("request_id", req.id)
        .detail("requester", req.user.as_str())
        .detail("target", req.target.as_str())
        .detail("state", req.state.as_str());
    if let Some(r) = &reason {
        action = action.detail("reason", r.as_str());
    }
    action.source = Some(viewer.source.to_string());
    let stored = st.record(action).await && stored;
    if !stored {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The decision is stored, but the audit trail could not be written; tell an admin.",
        )
        .into_response();
    }
    Redirect::to(&format!("/requests#request-{}", req.id)).into_response()
}

/// A decision refused: audited as `request.refused` (as over SSH), and
/// the admin is told why.
async fn refused(
    st: &ConsoleState,
    viewer: &Viewer,
    id: i64,
    decision: Decision,
    status: StatusCode,
    text: String,
) -> Response {
    let text = crate::text::clean(&text, 300);
    let verb = match decision {
        Decision::Approve => "approve",
        Decision::Deny => "deny",
        Decision::Revoke => "revoke",
    };
    let mut ev = Event::new(EventKind::RequestRefused)
        .user(viewer.name.as_str())
        .detail("command", verb)
        .detail("via", "console")
        .detail("request_id", id)
        .detail("message", text.clone());
    ev.source = Some(viewer.source.to_string());
    st.record(ev).await;
    Problem::new(status, text).into_response()
}
