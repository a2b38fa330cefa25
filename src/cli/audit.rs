//! `portvakt audit list`, `portvakt audit verify`

use clap::Subcommand;

use super::{Outcome, print_json, time_arg};
use crate::audit::query::{self, EventFilter};
use crate::config::Config;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// List audit events, oldest first.
    List {
        /// RFC 3339 time, a date, or an age like 2h or 7d.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        user: Option<String>,
        /// Event kind, e.g. auth.failure.
        #[arg(long)]
        kind: Option<String>,
        /// The newest this many events.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Check the hash chain of each node's events (exit 0 intact, 1
    /// tampered, 2 could not check).
    Verify {
        /// Only this node's chain.
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

impl AuditCmd {
    /// Commands whose every failure to run is "could not check" (exit 2).
    pub fn is_verify(&self) -> bool {
        matches!(self, AuditCmd::Verify { .. })
    }
}

/// What the human output says about what an intact chain proves.
const LIMITS: &str = "note: this proves that no row in the middle of a node's chain was changed, \
deleted, inserted or reordered since it was written. Without signed checkpoints (not yet \
implemented) it does NOT detect a chain tail that was rewritten consistently, nor one that \
was cut off, nor a deleted oldest part; rows from before the chain are not protected.";

pub async fn run(cmd: &AuditCmd, _cfg: &Config, store: &Store) -> Outcome {
    let (since, until, user, kind, limit, json) = match cmd {
        AuditCmd::List {
            since,
            until,
            user,
            kind,
            limit,
            json,
        } => (since, until, user, kind, limit, json),
        AuditCmd::Verify { node, json } => return verify(store, node.as_deref(), *json).await,
    };
    let filter = EventFilter {
        since: match time_arg(since) {
            Ok(v) => v,
            Err(o) => return o,
        },
        until: match time_arg(until) {
            Ok(v) => v,
            Err(o) => return o,
        },
        user: user.clone(),
        kind: kind.clone(),
        connection_id: None,
        limit: Some(*limit),
    };
    match query::events(store, &filter).await {
        Ok(rows) if *json => print_json(&rows),
        Ok(rows) => {
            println!(
                "{:>7}  {:<20}  {:<16}  {:<12}  {:<22}  {:<30}  DETAIL",
                "ID", "AT", "KIND", "USER", "SOURCE", "REASON"
            );
            for e in rows {
                println!(
                    "{:>7}  {:<20}  {:<16}  {:<12}  {:<22}  {:<30}  {}",
                    e.id,
                    e.at,
                    e.kind,
                    e.user.as_deref().unwrap_or("-"),
                    e.source.as_deref().unwrap_or("-"),
                    e.reason.as_deref().unwrap_or("-"),
                    e.detail
                );
            }
            Outcome::Ok
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

async fn verify(store: &Store, node: Option<&str>, json: bool) -> Outcome {
    let report = match crate::audit::verify::verify(store, node).await {
        Ok(r) => r,
        Err(e) => return Outcome::CannotCheck(e.to_string()),
    };
    if let Some(n) = node
        && report.nodes.iter().all(|r| r.rows == 0 && r.unchained == 0)
    {
        return Outcome::CannotCheck(format!("no audit events of node {n:?}"));
    }
    if json {
        if let Outcome::Failed(m) = print_json(&report) {
            return Outcome::CannotCheck(m);
        }
    } else {
        for n in &report.nodes {
            let span = match (n.first_seq, n.last_seq) {
                (Some(a), Some(b)) => format!("seq {a} to {b}"),
                _ => "no chained rows".to_string(),
            };
            let state = if n.problems.is_empty() {
                "intact"
            } else {
                "TAMPERED"
            };
            println!("{}: {state}: {} rows, {span}", n.node, n.rows);
            if n.first_seq.is_some_and(|s| s > 1) {
                println!(
                    "  the chain starts at seq {}: older rows were deleted (retention prunes them; \
                     without checkpoints this cannot be told from deleting them by hand)",
                    n.first_seq.unwrap_or_default()
                );
            }
            if n.unchained > 0 {
                println!(
                    "  {} rows unchained (before the chain): not checked",
                    n.unchained
                );
            }
            for p in &n.problems {
                println!("  {}: {}", p.problem.as_str(), p.message);
            }
        }
        if report.nodes.is_empty() {
            println!("no audit events");
        }
        println!("{LIMITS}");
    }
    if report.intact {
        Outcome::Ok
    } else {
        Outcome::Tampered
    }
}
