//! `portvakt requests list|approve|deny|revoke` (DESIGN.md §13), on the
//! host. A decision made here is the CLI user's (`NAME@cli`, from
//! `SUDO_USER` or `USER`); it is audited and notified like one over SSH.

use clap::Subcommand;

use super::{Outcome, print_json};
use crate::audit::{Audit, EventKind};
use crate::clock::now_micros;
use crate::config::Config;
use crate::requests::store::{self, Approval, Filter};
use crate::requests::webhook::Webhook;
use crate::requests::{AccessRequest, RequestRow, State, check_reason};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum RequestsCmd {
    /// Access requests, newest first.
    List {
        /// pending, approved, denied, expired or revoked.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending request (counts as one approver).
    Approve { id: i64 },
    /// Deny a pending request.
    Deny {
        id: i64,
        /// Why (shown to the requester).
        reason: String,
    },
    /// Revoke a request: pending, or approved with its window still open.
    /// Forwards in its window end within seconds, on every node.
    Revoke { id: i64 },
}

/// Who decides from the host.
fn cli_user() -> String {
    let name = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "root".into());
    format!("{}@cli", crate::text::user_name(&name))
}

pub async fn run(cmd: &RequestsCmd, cfg: &Config, store: &Store) -> Outcome {
    match cmd {
        RequestsCmd::List { state, user, json } => list(store, state, user, *json).await,
        RequestsCmd::Approve { id } => {
            let by = cli_user();
            decide(cfg, store, EventKind::RequestApprove, &by, async {
                match store::approve(store, *id, &by, now_micros()).await? {
                    Approval::Opened(r) | Approval::Recorded(r) => Ok(r),
                }
            })
            .await
        }
        RequestsCmd::Deny { id, reason } => {
            let reason = match check_reason(reason) {
                Ok(r) => r,
                Err(e) => return Outcome::Usage(format!("portvakt: {e}")),
            };
            let by = cli_user();
            decide(cfg, store, EventKind::RequestDeny, &by, async {
                store::deny(store, *id, &by, &reason, now_micros()).await
            })
            .await
        }
        RequestsCmd::Revoke { id } => {
            let by = cli_user();
            decide(cfg, store, EventKind::RequestRevoke, &by, async {
                store::revoke(store, *id, &by, now_micros()).await
            })
            .await
        }
    }
}

async fn list(store: &Store, state: &Option<String>, user: &Option<String>, json: bool) -> Outcome {
    let state = match state.as_deref().map(|s| State::parse(s).ok_or(s)) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(s)) => {
            return Outcome::Usage(format!(
                "portvakt: --state {s:?}: one of pending, approved, denied, expired, revoked"
            ));
        }
    };
    let filter = Filter {
        user: user.clone(),
        state,
        ..Filter::default()
    };
    let rows: Vec<RequestRow> = match store::list(store, &filter).await {
        Ok(l) => l.iter().map(AccessRequest::row).collect(),
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    if json {
        return print_json(&rows);
    }
    println!(
        "{:>6}  {:<12}  {:<16}  {:<8}  {:<9}  {:<20}  {:<20}  REASON",
        "ID", "USER", "TARGET", "FOR", "STATE", "CREATED", "WINDOW END"
    );
    for r in rows {
        println!(
            "{:>6}  {:<12}  {:<16}  {:<8}  {:<9}  {:<20}  {:<20}  {}",
            r.id,
            r.user,
            r.target,
            r.duration,
            r.state.as_str(),
            r.created_at,
            r.window_end.as_deref().unwrap_or("-"),
            crate::text::clean(&r.reason, 200)
        );
    }
    Outcome::Ok
}

/// Run a decision, then audit it and tell the webhook.
async fn decide(
    cfg: &Config,
    store: &Store,
    kind: EventKind,
    by: &str,
    change: impl Future<Output = Result<AccessRequest, store::DecideError>>,
) -> Outcome {
    let req = match change.await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let (audit, writer) = Audit::start_cli(store.clone(), cfg);
    let stored = audit
        .record(crate::requests::event(kind, &req, Some(by)))
        .await;
    let webhook = Webhook::new(cfg.requests.webhook.as_ref(), audit.clone());
    webhook.deliver(kind, &req, Some(by)).await;
    drop(webhook);
    drop(audit);
    let _ = writer.await;
    println!(
        "request {} ({} for {}): {}{}",
        req.id,
        req.user,
        req.target,
        req.state,
        match (req.state, req.window_end) {
            (State::Approved, Some(end)) =>
                format!(", usable until {}", crate::clock::rfc3339_micros(end)),
            (State::Pending, _) => format!(
                " ({}/{} approvals)",
                req.approvals.len(),
                req.approvals_needed
            ),
            _ => String::new(),
        }
    );
    if stored {
        Outcome::Ok
    } else {
        Outcome::Failed("the decision is stored, but its audit row is not".into())
    }
}
