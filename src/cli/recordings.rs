//! `portvakt recordings list|show|export|play` (DESIGN.md §10).

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;

use super::{Outcome, print_json, time_arg};
use crate::config::Config;
use crate::recording::cast;
use crate::recording::store::{self, Content, ContentError, Filter, RecordingRow};
use crate::store::Store;
use crate::text::clean;

#[derive(Debug, Subcommand)]
pub enum RecordingsCmd {
    /// List recordings, newest first.
    List {
        #[arg(long)]
        user: Option<String>,
        /// Target name as configured.
        #[arg(long)]
        target: Option<String>,
        /// RFC 3339 time, a date, or an age like 2h or 7d.
        #[arg(long)]
        since: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One recording: who, where, what, exit status, size, SHA-256 and
    /// whether the stored content still matches it.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// The recording as asciicast v2 on stdout.
    Export {
        id: i64,
        /// The content exactly as stored (frames, docs/RECORDING.md):
        /// `sha256sum` of it is the SHA-256 the audit trail names.
        #[arg(long)]
        raw: bool,
    },
    /// Replay a recording's output with its original timing.
    Play {
        id: i64,
        /// Play this many times as fast.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Print the output at once, without the pauses.
        #[arg(long)]
        no_wait: bool,
    },
}

pub async fn run(cmd: &RecordingsCmd, _cfg: &Config, store: &Store) -> Outcome {
    match cmd {
        RecordingsCmd::List {
            user,
            target,
            since,
            limit,
            json,
        } => {
            let filter = Filter {
                user: user.clone(),
                target: target.clone(),
                since: match time_arg(since) {
                    Ok(v) => v,
                    Err(o) => return o,
                },
                session_id: None,
                limit: Some(*limit),
            };
            match store::list(store, &filter).await {
                Ok(rows) if *json => print_json(&rows),
                Ok(rows) => {
                    print_table(&rows);
                    Outcome::Ok
                }
                Err(e) => Outcome::Failed(e.to_string()),
            }
        }
        RecordingsCmd::Show { id, json } => show(store, *id, *json).await,
        RecordingsCmd::Export { id, raw } => match checked_content(store, *id, *raw).await {
            Ok(c) => write_stdout(&c.bytes),
            Err(o) => o,
        },
        RecordingsCmd::Play { id, speed, no_wait } => {
            if !(speed.is_finite() && *speed > 0.0) {
                return Outcome::Usage(format!("--speed {speed}: must be a number above 0"));
            }
            match checked_content(store, *id, false).await {
                Ok(c) => play(*id, &c.bytes, (!*no_wait).then_some(*speed)).await,
                Err(o) => o,
            }
        }
    }
}

async fn show(store: &Store, id: i64, json: bool) -> Outcome {
    let row = match store::get(store, id).await {
        Ok(Some(r)) => r,
        Ok(None) => return Outcome::Failed(format!("no recording {id}")),
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let (sha256_ok, content_error) = match store::content(store, id).await {
        Ok(c) => (c.sha256_ok, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let file_ops = match file_ops(store, &row.connection_id, id).await {
        Ok(ops) => ops,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let mut v = serde_json::to_value(&row).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("sha256_ok".into(), serde_json::json!(sha256_ok));
        o.insert("content_error".into(), serde_json::json!(content_error));
        o.insert("file_ops".into(), serde_json::json!(file_ops));
    }
    if json {
        return print_json(&v);
    }
    for (k, v) in v.as_object().cloned().unwrap_or_default() {
        if !matches!(k.as_str(), "sha256_ok" | "content_error" | "file_ops") {
            println!("{k:>16}: {}", plain(&v));
        }
    }
    for op in &file_ops {
        let d = &op["detail"];
        println!(
            "{:>16}: {} {} {}{} {} bytes, {}",
            "file op",
            op["at"].as_str().unwrap_or(""),
            d["op"].as_str().unwrap_or(""),
            d["path"].as_str().unwrap_or(""),
            d["to"]
                .as_str()
                .map(|t| format!(" -> {t},"))
                .unwrap_or_default(),
            d["bytes"],
            match d["ok"].as_bool() {
                Some(true) => "ok",
                Some(false) => "refused",
                None => "unfinished",
            }
        );
    }
    let verdict = match (&content_error, sha256_ok) {
        (Some(e), _) => format!("UNREADABLE: {e}"),
        (None, Some(true)) => "matches its SHA-256".to_string(),
        (None, Some(false)) => "DOES NOT MATCH its SHA-256 (changed since it was recorded)".into(),
        (None, None) => "not finished: no SHA-256 to check against".to_string(),
    };
    println!("{:>16}: {verdict}", "content");
    Outcome::Ok
}

/// The `file.op` events of recording `id` (sftp, scp), oldest first.
async fn file_ops(
    store: &Store,
    connection_id: &str,
    id: i64,
) -> Result<Vec<serde_json::Value>, crate::store::StoreError> {
    let filter = crate::audit::query::EventFilter {
        connection_id: Some(connection_id.to_string()),
        kind: Some(crate::audit::EventKind::FileOp.as_str().to_string()),
        ..Default::default()
    };
    let events = crate::audit::query::events(store, &filter).await?;
    let mut ops: Vec<serde_json::Value> = events
        .iter()
        .filter_map(|e| serde_json::to_value(e).ok())
        .filter(|e| e["detail"]["recording_id"].as_i64() == Some(id))
        .collect();
    ops.reverse();
    Ok(ops)
}

/// The content of recording `id` (as stored with `raw`, else asciicast),
/// refused when it cannot be read or no longer matches its SHA-256. An
/// unfinished recording (no SHA-256 yet) is given with a warning on stderr.
async fn checked_content(store: &Store, id: i64, raw: bool) -> Result<Content, Outcome> {
    let read = if raw {
        store::stored(store, id).await
    } else {
        store::content(store, id).await
    };
    let c = match read {
        Ok(c) => c,
        Err(e @ ContentError::NotFound(_)) => return Err(Outcome::Failed(e.to_string())),
        Err(e) => return Err(Outcome::Failed(format!("cannot read recording {id}: {e}"))),
    };
    match c.sha256_ok {
        Some(true) => Ok(c),
        Some(false) => Err(Outcome::Failed(format!(
            "recording {id}: the stored content does not match its SHA-256 (changed since it was recorded)"
        ))),
        None => {
            eprintln!("portvakt: recording {id} is not finished: its content cannot be checked");
            Ok(c)
        }
    }
}

/// Writes the "o" events of `content` to stdout, each at its time divided
/// by `speed` (at once without one); "i" and "r" print nothing.
async fn play(id: i64, content: &[u8], speed: Option<f64>) -> Outcome {
    let text = String::from_utf8_lossy(content);
    let events = match cast::parse(&text) {
        Ok((_, events)) => events,
        Err(e) => return Outcome::Failed(format!("recording {id}: {e}")),
    };
    let start = tokio::time::Instant::now();
    let mut out = std::io::stdout().lock();
    for ev in events.iter().filter(|e| e.code == "o") {
        if let Some(speed) = speed {
            let at = Duration::try_from_secs_f64(ev.time / speed).unwrap_or(Duration::ZERO);
            tokio::time::sleep_until(start + at).await;
        }
        if let Err(e) = out.write_all(ev.data.as_bytes()).and_then(|()| out.flush()) {
            return write_failed(e);
        }
    }
    Outcome::Ok
}

fn write_stdout(bytes: &[u8]) -> Outcome {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Outcome::Ok,
        Err(e) => write_failed(e),
    }
}

/// A reader that stopped reading (`| head`) is not a failure.
fn write_failed(e: std::io::Error) -> Outcome {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Outcome::Ok
    } else {
        Outcome::Failed(format!("cannot write to stdout: {e}"))
    }
}

fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_table(rows: &[RecordingRow]) {
    println!(
        "{:>6}  {:<20}  {:<12}  {:<16}  {:<12}  {:<5}  {:>10}  {:<9}  COMMAND",
        "ID", "STARTED", "USER", "TARGET", "LOGIN", "KIND", "BYTES", "END"
    );
    for r in rows {
        let end = match (&r.ended_at, r.exit_status) {
            (None, _) => "open".to_string(),
            (Some(_), Some(s)) => format!("exit {s}"),
            (Some(_), None) => "ended".to_string(),
        };
        let bytes = if r.truncated {
            format!("{}+", r.bytes)
        } else {
            r.bytes.to_string()
        };
        println!(
            "{:>6}  {:<20}  {:<12}  {:<16}  {:<12}  {:<5}  {:>10}  {:<9}  {}",
            r.id,
            r.started_at,
            r.user,
            r.target,
            r.login,
            r.kind.as_str(),
            bytes,
            end,
            r.command.as_deref().map_or("-".into(), |c| clean(c, 60))
        );
    }
}
