//! `portvakt audit list`

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
}

pub async fn run(cmd: &AuditCmd, _cfg: &Config, store: &Store) -> Outcome {
    let AuditCmd::List {
        since,
        until,
        user,
        kind,
        limit,
        json,
    } = cmd;
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
