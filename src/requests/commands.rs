//! The requests commands on the engineer's own bastion login (an exec
//! request; there is no shell):
//!
//! ```text
//! ssh bastion request TARGET DURATION "REASON"
//! ssh bastion requests
//! ssh bastion approve ID
//! ssh bastion deny ID "REASON"
//! ```

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use super::store::{self, Approval, DecideError, Filter, NewRequest};
use super::webhook::Webhook;
use super::{AccessRequest, State, check_reason};
use crate::audit::{Audit, Event, EventKind};
use crate::clock::{now_micros, rfc3339_micros};
use crate::config::Config;
use crate::policy::{Subject, Target};
use crate::store::Store;

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Request {
        target: String,
        duration: String,
        reason: String,
    },
    List,
    Approve(i64),
    Deny(i64, String),
}

/// `None` when `line` is not a requests command; `Some(Err(usage))` when
/// it is one, badly formed.
pub fn parse(line: &str) -> Option<Result<Command, String>> {
    let line = line.trim();
    let (verb, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    let id = |s: &str| {
        s.parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{s:?} is not a request number"))
    };
    Some(match verb {
        "request" => {
            let mut it = rest.splitn(3, char::is_whitespace);
            match (it.next(), it.next(), it.next()) {
                (Some(t), Some(d), Some(r)) if !t.is_empty() && !d.is_empty() => Ok(Command::Request {
                    target: t.to_string(),
                    duration: d.to_string(),
                    reason: unquote(r).to_string(),
                }),
                _ => Err("usage: request TARGET DURATION \"REASON\" (e.g. request db-1 2h \"INC-123 disk full\")".into()),
            }
        }
        "requests" if rest.is_empty() => Ok(Command::List),
        "requests" => Err("usage: requests".into()),
        "approve" => match rest.split_whitespace().collect::<Vec<_>>()[..] {
            [n] => id(n).map(Command::Approve),
            _ => Err("usage: approve ID".into()),
        },
        "deny" => {
            let (n, r) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            if n.is_empty() || r.trim().is_empty() {
                Err("usage: deny ID \"REASON\"".into())
            } else {
                id(n).map(|n| Command::Deny(n, unquote(r).to_string()))
            }
        }
        _ => return None,
    })
}

/// A reason typed with quotes the remote side kept (`'"..."'`).
fn unquote(s: &str) -> &str {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

/// What a command needs.
pub struct Env<'a> {
    pub cfg: &'a Config,
    pub store: &'a Store,
    pub audit: &'a Audit,
    pub webhook: &'a Webhook,
    /// Who runs it, as the config in force sees them.
    pub subject: &'a Subject,
    pub node: &'a str,
    /// How to reach this bastion (`ssh -p 2222 alice@bastion`), for texts.
    pub ssh: &'a str,
    /// The connection it came on, for the audit rows.
    pub connection: Option<(&'a str, SocketAddr)>,
}

impl Env<'_> {
    fn user(&self) -> &str {
        self.subject.user()
    }

    /// Audit a change (awaited: a request the trail does not show must not
    /// be acted on silently) and tell the webhook.
    async fn record(&self, kind: EventKind, req: &AccessRequest, by: Option<&str>) -> bool {
        let mut ev = super::event(kind, req, by);
        if let Some((id, source)) = self.connection {
            ev = ev.connection(id, source);
        }
        let stored = self.audit.record(ev).await;
        self.webhook.notify(kind, req, by);
        stored
    }

    /// May this user decide requests for `target`?
    fn approves(&self, target: &Target) -> bool {
        super::approves(self.subject, target)
    }
}

impl Command {
    fn verb(&self) -> &'static str {
        match self {
            Command::Request { .. } => "request",
            Command::List => "requests",
            Command::Approve(_) => "approve",
            Command::Deny(..) => "deny",
        }
    }
}

/// Run a command; the text to show and the exit status. A refusal is
/// audited (`request.refused`), the text bounded and cleaned.
pub async fn execute(cmd: Command, env: &Env<'_>) -> (String, u32) {
    let verb = cmd.verb();
    let id = match &cmd {
        Command::Approve(id) | Command::Deny(id, _) => Some(*id),
        _ => None,
    };
    let done = match cmd {
        Command::Request {
            target,
            duration,
            reason,
        } => request(env, &target, &duration, &reason).await,
        Command::List => Ok(list(env).await),
        Command::Approve(id) => approve(env, id).await,
        Command::Deny(id, reason) => deny(env, id, &reason).await,
    };
    match done {
        Ok(text) => (text, 0),
        Err(e) => {
            let e = crate::text::clean(&e, 300);
            let mut ev = Event::new(EventKind::RequestRefused)
                .user(env.user())
                .detail("command", verb)
                .detail("message", e.clone());
            if let Some(id) = id {
                ev = ev.detail("request_id", id);
            }
            if let Some((conn, source)) = env.connection {
                ev = ev.connection(conn, source);
            }
            env.audit.emit(ev);
            (format!("portvakt: {e}\n"), 1)
        }
    }
}

/// A target the user may ask for, by name.
fn askable<'c>(env: &Env<'c>, name: &str) -> Result<&'c Target, String> {
    let t = env
        .cfg
        .policy
        .targets()
        .iter()
        .find(|t| t.name.eq_ignore_ascii_case(name))
        .filter(|t| t.allows(env.user(), env.subject.groups()));
    match t {
        Some(t) if t.request_rule().is_some() => Ok(t),
        Some(t) => Err(format!(
            "you may use {} already; it needs no request",
            t.name
        )),
        // The same words for unknown targets and others' targets.
        None => Err(format!("{name:?} is not a target you may ask for")),
    }
}

async fn request(
    env: &Env<'_>,
    name: &str,
    duration: &str,
    reason: &str,
) -> Result<String, String> {
    let target = askable(env, name)?;
    let rule = target.request_rule().ok_or("no request rule")?;
    let duration = parse_duration(duration, rule.max_request)?;
    let reason = check_reason(reason)?;
    let now = now_micros();
    let mine = store::list(
        env.store,
        &Filter {
            user: Some(env.user().to_string()),
            state: Some(State::Pending),
            ..Filter::default()
        },
    )
    .await
    .map_err(db)?;
    if let Some(p) = mine
        .iter()
        .find(|r| r.target.eq_ignore_ascii_case(&target.name))
    {
        return Err(format!(
            "you have request {} for {} pending already; see `requests`",
            p.id, p.target
        ));
    }
    let new = NewRequest {
        user: env.user(),
        target: &target.name,
        duration,
        reason: &reason,
        approvals_needed: rule.approvals,
        node: env.node,
        pending_ttl: env.cfg.requests.pending_ttl,
    };
    let req = store::create(env.store, &new, now).await.map_err(db)?;
    if !env
        .record(EventKind::RequestCreate, &req, Some(env.user()))
        .await
    {
        return Err(
            "the audit trail is unavailable; the request was stored, but ask an admin".into(),
        );
    }
    let groups: Vec<&str> = rule.approvers.iter().map(String::as_str).collect();
    Ok(format!(
        "portvakt: request {} for {} for {} is pending: it needs {} from {} (until {}).\n\
         See it with: {} requests\n",
        req.id,
        req.target,
        humantime::format_duration(req.duration),
        approvals_text(req.approvals_needed),
        groups.join(", "),
        rfc3339_micros(req.pending_until),
        env.ssh
    ))
}

fn approvals_text(n: i64) -> String {
    if n == 1 {
        "1 approval".into()
    } else {
        format!("{n} approvals by different people")
    }
}

/// `2h`, `30m`, `1h30m`: more than zero, at most the target's `max_request`.
fn parse_duration(s: &str, max: Duration) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30m, 2h, 1h30m)"))?;
    if d.is_zero() {
        return Err("the duration must be longer than zero".into());
    }
    if d > max {
        return Err(format!(
            "{s} is longer than this target allows ({} at most)",
            humantime::format_duration(max)
        ));
    }
    Ok(Duration::from_secs(d.as_secs().max(1)))
}

async fn list(env: &Env<'_>) -> String {
    let mut t = String::new();
    let mine = store::list(
        env.store,
        &Filter {
            user: Some(env.user().to_string()),
            limit: 20,
            ..Filter::default()
        },
    )
    .await;
    let now = now_micros();
    match mine {
        Ok(m) if m.is_empty() => t.push_str("You have no access requests.\n"),
        Ok(m) => {
            t.push_str("Your access requests:\n");
            for r in &m {
                line(&mut t, r, now);
            }
        }
        Err(e) => return format!("portvakt: {}\n", db(e)),
    }
    let decidable: Vec<&Target> = env
        .cfg
        .policy
        .targets()
        .iter()
        .filter(|t| env.approves(t))
        .collect();
    if decidable.is_empty() {
        return t;
    }
    let pending = store::list(
        env.store,
        &Filter {
            state: Some(State::Pending),
            targets: Some(decidable.iter().map(|t| t.name.clone()).collect()),
            ..Filter::default()
        },
    )
    .await;
    match pending {
        Ok(p) => {
            let p: Vec<&AccessRequest> = p
                .iter()
                .filter(|r| !r.user.eq_ignore_ascii_case(env.user()))
                .collect();
            if p.is_empty() {
                t.push_str("No requests wait for your decision.\n");
            } else {
                t.push_str("Waiting for your decision:\n");
                for r in p {
                    line(&mut t, r, now);
                }
                let _ = writeln!(
                    t,
                    "Decide with: {0} approve ID   or   {0} deny ID \"why\"",
                    env.ssh
                );
            }
        }
        Err(e) => {
            let _ = writeln!(t, "portvakt: {}", db(e));
        }
    }
    t
}

fn line(t: &mut String, r: &AccessRequest, now: i64) {
    let state = match r.state {
        State::Approved if r.open_at(now) => format!(
            "approved, usable until {}",
            r.window_end.map(rfc3339_micros).unwrap_or_default()
        ),
        State::Approved => "approved, window ended".to_string(),
        State::Pending => format!(
            "pending ({}/{} approvals, expires {})",
            r.approvals.len(),
            r.approvals_needed,
            rfc3339_micros(r.pending_until)
        ),
        s => s.to_string(),
    };
    let _ = writeln!(
        t,
        "  {:>5}  {:<12} {:<16} {:>8}  {}  \"{}\"",
        r.id,
        crate::text::clean(&r.user, 12),
        r.target,
        humantime::format_duration(r.duration).to_string(),
        state,
        crate::text::clean(&r.reason, 200)
    );
}

/// The pending request `id` and its target, if this user may decide it.
async fn decidable(env: &Env<'_>, id: i64) -> Result<AccessRequest, String> {
    let req = store::get(env.store, id)
        .await
        .map_err(db)?
        .ok_or_else(|| format!("there is no request {id}"))?;
    let target = env
        .cfg
        .policy
        .targets()
        .iter()
        .find(|t| t.name.eq_ignore_ascii_case(&req.target));
    if !target.is_some_and(|t| env.approves(t)) {
        return Err(format!(
            "you may not decide request {id}: only the approvers of {} may",
            req.target
        ));
    }
    Ok(req)
}

async fn approve(env: &Env<'_>, id: i64) -> Result<String, String> {
    decidable(env, id).await?;
    let approval = store::approve(env.store, id, env.user(), now_micros())
        .await
        .map_err(decide_error)?;
    match approval {
        Approval::Opened(req) => {
            env.record(EventKind::RequestApprove, &req, Some(env.user()))
                .await;
            Ok(format!(
                "portvakt: request {id} is approved: {} may use {} until {}.\n",
                req.user,
                req.target,
                req.window_end.map(rfc3339_micros).unwrap_or_default()
            ))
        }
        Approval::Recorded(req) => {
            env.record(EventKind::RequestApprove, &req, Some(env.user()))
                .await;
            Ok(format!(
                "portvakt: your approval of request {id} is recorded; it needs {} (it has {}).\n",
                approvals_text(req.approvals_needed),
                req.approvals.len()
            ))
        }
    }
}

async fn deny(env: &Env<'_>, id: i64, reason: &str) -> Result<String, String> {
    let reason = check_reason(reason)?;
    decidable(env, id).await?;
    let req = store::deny(env.store, id, env.user(), &reason, now_micros())
        .await
        .map_err(decide_error)?;
    env.record(EventKind::RequestDeny, &req, Some(env.user()))
        .await;
    Ok(format!("portvakt: request {id} is denied.\n"))
}

fn decide_error(e: DecideError) -> String {
    match e {
        DecideError::Database(e) => db(e),
        e => e.to_string(),
    }
}

fn db(e: sqlx::Error) -> String {
    tracing::error!(error = %e, "access requests: database error");
    "the request database is unavailable right now; try again".into()
}
