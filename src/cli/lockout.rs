//! `portvakt lockout list|clear`

use clap::Subcommand;

use super::{Outcome, print_json};
use crate::audit::{Event, EventKind};
use crate::auth::lockout;
use crate::config::Config;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum LockoutCmd {
    /// Banned sources (IPv4 addresses, IPv6 /64s), newest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Lift the ban of SOURCE (an address) and forget its failures; --all
    /// lifts every ban. Every node follows within seconds.
    Clear {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        source: Option<String>,
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(cmd: &LockoutCmd, cfg: &Config, store: &Store) -> Outcome {
    match cmd {
        LockoutCmd::List { json } => match lockout::list(store).await {
            Ok(rows) if *json => print_json(&rows),
            Ok(rows) => {
                println!(
                    "{:<28}  {:<20}  {:<20}  {:>8}  NODE",
                    "SOURCE", "SINCE", "UNTIL", "FAILURES"
                );
                for r in rows {
                    println!(
                        "{:<28}  {:<20}  {:<20}  {:>8}  {}",
                        r.source, r.created_at, r.until, r.failures, r.node
                    );
                }
                Outcome::Ok
            }
            Err(e) => Outcome::Failed(e.to_string()),
        },
        LockoutCmd::Clear { source, .. } => match lockout::clear(store, source.as_deref()).await {
            Ok(n) => {
                let ev = Event::new(EventKind::LockoutClear)
                    .detail("source", source.clone().unwrap_or_else(|| "all".into()))
                    .detail("lifted", n);
                if let Err(o) = super::record(cfg, store, ev).await {
                    return o;
                }
                println!("lifted {n} ban(s)");
                Outcome::Ok
            }
            Err(e) => Outcome::Failed(e.to_string()),
        },
    }
}
