//! Just-in-time access (DESIGN.md §13): a user asks for a request-only
//! target for a while, approvers decide, and the user may use it within the
//! approved window. Requests live in the shared database, so every node
//! sees each decision; every state change is a conditional update, so two
//! nodes deciding at once cannot both win.
//!
//! - [`store`]: the rows and their state changes;
//! - [`commands`]: `ssh bastion request|requests|approve|deny` on the
//!   engineer's own login;
//! - [`watch`]: pending requests expiring, revoked windows ending live
//!   forwards;
//! - [`webhook`]: the signed JSON POSTs.

pub mod commands;
pub mod store;
pub mod watch;
pub mod webhook;

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::clock::rfc3339_micros;

/// Longest reason a request may carry, in characters.
pub const MAX_REASON: usize = 500;

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Approved,
    Denied,
    Expired,
    Revoked,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Pending,
        State::Approved,
        State::Denied,
        State::Expired,
        State::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    pub id: i64,
    pub user: String,
    pub target: String,
    pub duration: Duration,
    pub reason: String,
    pub state: State,
    pub approvals_needed: i64,
    /// Who approved so far (a two-person rule needs two).
    pub approvals: Vec<String>,
    pub node: String,
    pub created_at: i64,
    /// A pending request expires at this time (unix µs).
    pub pending_until: i64,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    pub decision_reason: Option<String>,
    pub window_start: Option<i64>,
    pub window_end: Option<i64>,
}

impl AccessRequest {
    /// Is the approved window open at `now` (unix µs)?
    pub fn open_at(&self, now: i64) -> bool {
        self.state == State::Approved
            && self.window_start.is_some_and(|s| s <= now)
            && self.window_end.is_some_and(|e| now < e)
    }

    /// `requests list --json` (DESIGN.md §13).
    pub fn row(&self) -> RequestRow {
        RequestRow {
            id: self.id,
            user: self.user.clone(),
            target: self.target.clone(),
            duration: humantime::format_duration(self.duration).to_string(),
            duration_seconds: self.duration.as_secs(),
            reason: self.reason.clone(),
            state: self.state,
            approvals_needed: self.approvals_needed,
            approvals: self.approvals.clone(),
            created_at: rfc3339_micros(self.created_at),
            pending_until: rfc3339_micros(self.pending_until),
            decided_by: self.decided_by.clone(),
            decided_at: self.decided_at.map(rfc3339_micros),
            decision_reason: self.decision_reason.clone(),
            window_start: self.window_start.map(rfc3339_micros),
            window_end: self.window_end.map(rfc3339_micros),
        }
    }
}

/// A request as `requests list --json` prints it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RequestRow {
    pub id: i64,
    pub user: String,
    pub target: String,
    /// As typed, e.g. `2h`.
    pub duration: String,
    pub duration_seconds: u64,
    pub reason: String,
    pub state: State,
    pub approvals_needed: i64,
    pub approvals: Vec<String>,
    pub created_at: String,
    pub pending_until: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub decision_reason: Option<String>,
    pub window_start: Option<String>,
    pub window_end: Option<String>,
}

/// A reason as given: at most [`MAX_REASON`] characters, no control
/// characters, not blank.
pub fn check_reason(reason: &str) -> Result<String, String> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err("give a reason (e.g. a ticket number)".into());
    }
    if reason.chars().count() > MAX_REASON {
        return Err(format!("the reason is longer than {MAX_REASON} characters"));
    }
    if reason.chars().any(char::is_control) {
        return Err("the reason may not contain control characters".into());
    }
    Ok(reason.to_string())
}

#[cfg(test)]
mod tests;

/// May `subject` decide (approve or deny) requests for `target`: is one of
/// their groups among its `approvers`? (Over SSH and in the console; the
/// store refuses their own requests and a second approval by one name.)
pub fn approves(subject: &crate::policy::Subject, target: &crate::policy::Target) -> bool {
    target
        .request_rule()
        .is_some_and(|r| subject.groups().any(|g| r.approvers.contains(g)))
}

/// The audit event of a change to `req`, done by `by` (a person), or by
/// portvakt itself (an expiry): `user` is who acted, `requester` whose
/// access it is.
pub fn event(
    kind: crate::audit::EventKind,
    req: &AccessRequest,
    by: Option<&str>,
) -> crate::audit::Event {
    let mut ev = crate::audit::Event::new(kind)
        .user(by.unwrap_or(&req.user))
        .detail("request_id", req.id)
        .detail("requester", req.user.clone())
        .detail("target", req.target.clone())
        .detail(
            "duration",
            humantime::format_duration(req.duration).to_string(),
        )
        .detail("reason", req.reason.clone())
        .detail("state", req.state.as_str())
        .detail("approvals", req.approvals.clone())
        .detail("approvals_needed", req.approvals_needed);
    if let Some(s) = req.window_start {
        ev = ev.detail("window_start", rfc3339_micros(s));
    }
    if let Some(e) = req.window_end {
        ev = ev.detail("window_end", rfc3339_micros(e));
    }
    if let Some(r) = &req.decision_reason {
        ev = ev.detail("decision_reason", r.clone());
    }
    ev
}
