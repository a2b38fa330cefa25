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
    /// lifts every ban; --user U lifts U's TOTP lock. Every node follows
    /// within seconds.
    Clear {
        #[arg(required_unless_present_any = ["all", "user"], conflicts_with_all = ["all", "user"])]
        source: Option<String>,
        #[arg(long, conflicts_with = "user")]
        all: bool,
        #[arg(long)]
        user: Option<String>,
    },
}

pub async fn run(cmd: &LockoutCmd, cfg: &Config, store: &Store) -> Outcome {
    match cmd {
        LockoutCmd::List { json } => match lockout::list(store).await {
            Ok(rows) if *json => print_json(&rows),
            Ok(rows) => {
                if let Ok(users) = lockout::user_locks(store).await {
                    for u in users {
                        println!(
                            "TOTP of {} locked until {} after {} wrong codes (node {})",
                            u.user, u.until, u.failures, u.node
                        );
                    }
                }
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
        LockoutCmd::Clear {
            user: Some(user), ..
        } => match lockout::clear_user(store, user).await {
            Ok(was_locked) => {
                let ev = Event::new(EventKind::LockoutClear)
                    .user(user.as_str())
                    .detail("lifted", u64::from(was_locked));
                if let Err(o) = super::record(cfg, store, ev).await {
                    return o;
                }
                if was_locked {
                    println!("lifted the TOTP lock of {user}");
                } else {
                    println!("{user} had no TOTP lock; its wrong codes are forgotten");
                }
                Outcome::Ok
            }
            Err(e) => Outcome::Failed(e.to_string()),
        },
        LockoutCmd::Clear { source, .. } => {
            match lockout::clear(store, source.as_deref(), cfg.lockout.ipv6_prefix).await {
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
            }
        }
    }
}
