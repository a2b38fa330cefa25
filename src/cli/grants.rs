//! `portvakt grants list|revoke`

use clap::Subcommand;

use super::{Outcome, print_json};
use crate::auth::grants::{self, GrantRow};
use crate::config::Config;
use crate::reasons::EventReason;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum GrantsCmd {
    /// Login grants still valid (all of them with --all), newest first.
    List {
        #[arg(long)]
        user: Option<String>,
        /// Also expired and revoked grants.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a grant, or every grant of a user. Their live connections end
    /// within seconds, on every node.
    Revoke {
        #[arg(conflicts_with = "user", required_unless_present = "user")]
        id: Option<i64>,
        #[arg(long)]
        user: Option<String>,
    },
}

pub async fn run(cmd: &GrantsCmd, cfg: &Config, store: &Store) -> Outcome {
    match cmd {
        GrantsCmd::List { user, all, json } => {
            match grants::list(store, user.as_deref(), *all).await {
                Ok(list) => {
                    let rows: Vec<GrantRow> = list.iter().map(GrantRow::from).collect();
                    if *json {
                        return print_json(&rows);
                    }
                    println!(
                        "{:>6}  {:<12}  {:<52}  {:<15}  {:<20}  {:<20}  REVOKED",
                        "ID", "USER", "KEY", "METHOD", "CREATED", "EXPIRES"
                    );
                    for r in rows {
                        println!(
                            "{:>6}  {:<12}  {:<52}  {:<15}  {:<20}  {:<20}  {}",
                            r.id,
                            r.user,
                            r.key_fingerprint,
                            r.method,
                            r.created_at,
                            r.expires_at,
                            r.revoked_at.as_deref().unwrap_or("-")
                        );
                    }
                    Outcome::Ok
                }
                Err(e) => Outcome::Failed(e.to_string()),
            }
        }
        GrantsCmd::Revoke { id, user } => {
            let revoked = match grants::revoke(
                store,
                *id,
                user.as_deref(),
                EventReason::RevokedByAdmin,
            )
            .await
            {
                Ok(r) => r,
                Err(e) => return Outcome::Failed(e.to_string()),
            };
            if revoked.is_empty() {
                return Outcome::Failed(match (id, user) {
                    (Some(id), _) => format!("no valid grant {id}"),
                    (_, Some(u)) => format!("{u} has no valid grant"),
                    _ => "nothing to revoke".into(),
                });
            }
            let (audit, writer) = crate::audit::Audit::start_cli(store.clone(), cfg);
            for g in &revoked {
                audit.emit(g.revoke_event(None));
                println!(
                    "revoked grant {} of {} ({})",
                    g.id, g.user, g.key_fingerprint
                );
            }
            drop(audit);
            let _ = writer.await;
            Outcome::Ok
        }
    }
}
