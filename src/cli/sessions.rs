//! `portvakt sessions list|show`

use clap::Subcommand;

use super::{Outcome, print_json, time_arg};
use crate::audit::query::{self, EventFilter, SessionFilter, SessionRow};
use crate::config::Config;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum SessionsCmd {
    /// List forwards, newest first.
    List {
        #[arg(long)]
        user: Option<String>,
        /// Target name as configured.
        #[arg(long)]
        target: Option<String>,
        /// RFC 3339 time, a date, or an age like 2h or 7d.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One forward, with the audit events of its connection.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: &SessionsCmd, _cfg: &Config, store: &Store) -> Outcome {
    match cmd {
        SessionsCmd::List {
            user,
            target,
            since,
            until,
            limit,
            json,
        } => {
            let filter = SessionFilter {
                user: user.clone(),
                target: target.clone(),
                since: match time_arg(since) {
                    Ok(v) => v,
                    Err(o) => return o,
                },
                until: match time_arg(until) {
                    Ok(v) => v,
                    Err(o) => return o,
                },
                limit: Some(*limit),
                ..Default::default()
            };
            let rows = match query::sessions(store, &filter).await {
                Ok(mut rows) => with_recordings(store, &mut rows).await.map(|()| rows),
                Err(e) => Err(e.to_string()),
            };
            match rows {
                Ok(rows) if *json => print_json(&rows),
                Ok(rows) => {
                    print_table(&rows);
                    Outcome::Ok
                }
                Err(e) => Outcome::Failed(e),
            }
        }
        SessionsCmd::Show { id, json } => show(store, *id, *json).await,
    }
}

/// `sessions show ID`: the row, its recordings and its connection's events.
async fn show(store: &Store, id: i64, json: bool) -> Outcome {
    let row = match query::session(store, id).await {
        Ok(Some(mut r)) => {
            if let Err(e) = with_recordings(store, std::slice::from_mut(&mut r)).await {
                return Outcome::Failed(e);
            }
            r
        }
        Ok(None) => return Outcome::Failed(format!("no session {id}")),
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let events = match query::events(
        store,
        &EventFilter {
            connection_id: Some(row.connection_id.clone()),
            ..Default::default()
        },
    )
    .await
    {
        Ok(e) => e,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    if json {
        let mut v = serde_json::to_value(&row).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "events".into(),
                serde_json::to_value(&events).unwrap_or_default(),
            );
        }
        return print_json(&v);
    }
    for (k, v) in serde_json::to_value(&row)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
    {
        println!("{k:>18}: {}", plain(&v));
    }
    println!("\nevents of connection {}:", row.connection_id);
    for e in events {
        println!(
            "  {}  {:<16} {:<10} {}",
            e.at,
            e.kind,
            e.reason.as_deref().unwrap_or("-"),
            e.detail
        );
    }
    Outcome::Ok
}

/// The recordings of each recorded forward.
async fn with_recordings(store: &Store, rows: &mut [SessionRow]) -> Result<(), String> {
    for r in rows.iter_mut().filter(|r| r.mode == "record") {
        let filter = crate::recording::Filter {
            session_id: Some(r.id),
            ..Default::default()
        };
        let found = crate::recording::store::list(store, &filter)
            .await
            .map_err(|e| e.to_string())?;
        r.recordings = found.iter().rev().map(|rec| rec.id).collect();
    }
    Ok(())
}

fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_table(rows: &[SessionRow]) {
    println!(
        "{:>6}  {:<20}  {:<12}  {:<15}  {:<22}  {:<21}  {:<8}  {:>10}  {:>10}  REASON",
        "ID", "STARTED", "USER", "METHOD", "SOURCE", "TARGET", "RESULT", "TO", "FROM"
    );
    for r in rows {
        let target = match &r.target {
            Some(t) if t == &r.host => format!("{t}:{}", r.port),
            Some(t) => format!("{t} ({}:{})", r.host, r.port),
            None => format!("{}:{}", r.host, r.port),
        };
        let reason = r
            .reason
            .as_deref()
            .or(r.close_reason.as_deref())
            .unwrap_or(if r.ended_at.is_none() { "open" } else { "-" });
        println!(
            "{:>6}  {:<20}  {:<12}  {:<15}  {:<22}  {:<21}  {:<8}  {:>10}  {:>10}  {}",
            r.id,
            r.started_at,
            r.user,
            r.auth_method,
            r.source,
            target,
            r.result,
            r.bytes_to_target,
            r.bytes_from_target,
            reason
        );
    }
}
