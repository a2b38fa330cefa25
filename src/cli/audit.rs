//! `portvakt audit list`, `verify`, `export`, `key`

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::{Outcome, print_json, time_arg};
use crate::audit::checkpoint::VerifyingKey;
use crate::audit::query::{self, EventFilter};
use crate::audit::verify::{ChainReader, Options, Report};
use crate::audit::walk::External;
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
    /// Check the hash chain and the signed checkpoints of each node's
    /// events (exit 0 intact, 1 tampered, 2 could not check).
    Verify {
        /// Only this node's chain.
        #[arg(long)]
        node: Option<String>,
        /// Start at the first row at or after this time (RFC 3339, a date,
        /// or an age like 7d); the chain's start is then not checked.
        #[arg(long)]
        since: Option<String>,
        /// Checkpoints collected outside the database: portvakt's JSON log,
        /// or a checkpoint_file (repeatable). A chain cut off before the
        /// newest of them is caught.
        #[arg(long = "checkpoints", value_name = "FILE")]
        checkpoints: Vec<PathBuf>,
        /// A node's public verification key (`portvakt audit key`), OpenSSH
        /// format (repeatable): checkpoints must be signed by one of these.
        #[arg(long = "key", value_name = "PUBFILE")]
        keys: Vec<PathBuf>,
        /// Verify an export (`portvakt audit export`) instead of the
        /// database; needs --key.
        #[arg(long, value_name = "EXPORT", requires = "keys")]
        file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Write the hash chains, their checkpoints and the nodes' public keys
    /// as JSON Lines to stdout, for `audit verify --file` elsewhere.
    Export {
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        node: Option<String>,
    },
    /// Print this node's public verification key (OpenSSH format), to pin
    /// in a SIEM or give to `audit verify --key`.
    Key,
}

impl AuditCmd {
    /// Commands whose every failure to run is "could not check" (exit 2).
    pub fn is_verify(&self) -> bool {
        matches!(self, AuditCmd::Verify { .. })
    }

    /// Run a command that needs no database (`key`, `verify --file`);
    /// `None` for the others.
    pub fn run_offline(&self, config: &Path) -> Option<Outcome> {
        match self {
            AuditCmd::Key => Some(key(config)),
            AuditCmd::Verify {
                file: Some(file),
                keys,
                checkpoints,
                json,
                ..
            } => Some(verify_file(file, keys, checkpoints, *json)),
            _ => None,
        }
    }
}

fn key(config: &Path) -> Outcome {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return Outcome::Usage(e.to_string()),
    };
    let path = &cfg.audit.signing_key;
    let mut public = path.as_os_str().to_owned();
    public.push(".pub");
    // The private key when this user may read it, else the .pub beside it.
    let key = match russh::keys::PrivateKey::read_openssh_file(path) {
        Ok(k) => k.public_key().to_openssh().map_err(|e| e.to_string()),
        Err(_) => std::fs::read_to_string(&public)
            .map_err(|e| {
                format!(
                    "{}: {e} (the server creates the key on first start)",
                    PathBuf::from(&public).display()
                )
            })
            .and_then(|t| crate::audit::checkpoint::VerifyingKey::parse(&t).map(|k| k.openssh)),
    };
    match key {
        Ok(k) => {
            let name = crate::audit::checkpoint::key_name(&cfg.server.node_name);
            let k = k.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            println!("{k} {name}");
            Outcome::Ok
        }
        Err(e) => Outcome::Failed(e),
    }
}

/// `--key` files: one OpenSSH public key per line.
fn read_keys(files: &[PathBuf]) -> Result<Vec<VerifyingKey>, String> {
    crate::audit::checkpoint::read_key_files(files)
}

/// `--checkpoints` files.
fn read_checkpoints(files: &[PathBuf]) -> Result<Vec<External>, String> {
    let mut all = Vec::new();
    for f in files {
        let file = std::fs::File::open(f).map_err(|e| format!("{}: {e}", f.display()))?;
        all.extend(crate::audit::export::read_checkpoints(
            std::io::BufReader::new(file),
            &f.display().to_string(),
        )?);
    }
    Ok(all)
}

fn verify_file(file: &Path, keys: &[PathBuf], checkpoints: &[PathBuf], json: bool) -> Outcome {
    let inputs = read_keys(keys).and_then(|k| Ok((k, read_checkpoints(checkpoints)?)));
    let (keys, checkpoints) = match inputs {
        Ok(v) => v,
        Err(e) => return Outcome::CannotCheck(e),
    };
    let input = match std::fs::File::open(file) {
        Ok(f) => std::io::BufReader::new(f),
        Err(e) => return Outcome::CannotCheck(format!("{}: {e}", file.display())),
    };
    match crate::audit::export::verify_file(input, &file.display().to_string(), &keys, &checkpoints)
    {
        Ok(report) if report.nodes.is_empty() => {
            Outcome::CannotCheck(format!("{}: no rows", file.display()))
        }
        Ok(report) => print_report(&report, json, true),
        Err(e) => Outcome::CannotCheck(e),
    }
}

/// What the human output says about what an intact trail proves.
const LIMITS: &str = "note: intact means no row in a node's chain was changed, deleted, inserted or \
reordered since it was written, up to its newest checkpoint that verified; rows after it are linked but \
not signed yet. A chain cut off at its end is caught only against checkpoints from outside the database \
(--checkpoints with portvakt's JSON log or checkpoint_file), and a re-signed chain only against pinned \
keys (--key). Events a compromised node never wrote cannot be found; rows from before the chain are \
protected only once a checkpoint anchors them (docs/AUDIT.md).";

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
        AuditCmd::Verify {
            node,
            since,
            checkpoints,
            keys,
            json,
            ..
        } => {
            let since = match time_arg(since) {
                Ok(v) => v,
                Err(o) => return o,
            };
            let options =
                match read_keys(keys).and_then(|k| Ok((k, read_checkpoints(checkpoints)?))) {
                    Ok((keys, checkpoints)) => Options {
                        node: node.clone(),
                        since,
                        keys,
                        checkpoints,
                        extra: Some(crate::recording::verify::check),
                        reader: ChainReader::Direct,
                    },
                    Err(e) => return Outcome::CannotCheck(e),
                };
            return verify(store, &options, *json).await;
        }
        AuditCmd::Export { since, until, node } => return export(store, since, until, node).await,
        AuditCmd::Key => return key(&_cfg.path),
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
        ..Default::default()
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

async fn export(
    store: &Store,
    since: &Option<String>,
    until: &Option<String>,
    node: &Option<String>,
) -> Outcome {
    let range = match (time_arg(since), time_arg(until)) {
        (Ok(since), Ok(until)) => crate::audit::export::Range {
            node: node.clone(),
            since,
            until,
        },
        (Err(o), _) | (_, Err(o)) => return o,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match crate::audit::export::export(store, &range, &mut out).await {
        Ok(e) => {
            if e.unsigned > 0 {
                eprintln!(
                    "portvakt: the newest {} rows are not signed by a checkpoint yet: `audit verify --file` \
                     will refuse them (export again after the next checkpoint)",
                    e.unsigned
                );
            }
            Outcome::Ok
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

async fn verify(store: &Store, options: &Options, json: bool) -> Outcome {
    let report = match crate::audit::verify::verify_with(store, options).await {
        Ok(r) => r,
        Err(e) => return Outcome::CannotCheck(e.to_string()),
    };
    if let Some(n) = &options.node
        && report.nodes.iter().all(|r| r.rows == 0 && r.unchained == 0)
    {
        return Outcome::CannotCheck(format!("no audit events of node {n:?}"));
    }
    print_report(&report, json, false)
}

fn print_report(report: &Report, json: bool, export: bool) -> Outcome {
    if json {
        if let Outcome::Failed(m) = print_json(report) {
            return Outcome::CannotCheck(m);
        }
    } else {
        for n in &report.nodes {
            print_node(n);
        }
        if report.nodes.is_empty() {
            println!("no audit events");
        }
        if !export {
            println!("{LIMITS}");
        }
    }
    if report.intact {
        Outcome::Ok
    } else {
        Outcome::Tampered
    }
}

fn print_node(n: &crate::audit::verify::NodeReport) {
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
    match &n.last_checkpoint {
        Some(c) => println!(
            "  {} checkpoints verified, the newest signs seq {} ({}); {} rows after it not signed yet",
            n.checkpoints,
            c["seq"],
            c["time"].as_str().unwrap_or("?"),
            n.unsigned_rows
        ),
        None => println!(
            "  no signed checkpoint: {} rows not signed yet",
            n.unsigned_rows
        ),
    }
    if let Some(c) = n.complete_to {
        println!("  complete up to seq {c} (checkpoints from outside the database)");
    }
    for p in &n.pruned {
        println!(
            "  rows before seq {} were pruned at {} ({}, rows older than {}), by signed record row {}",
            p.first_seq, p.at, p.rule, p.before, p.id
        );
    }
    if !n.keys.is_empty() {
        println!(
            "  signed by (as the database states; pin with --key): {}",
            n.keys.join(", ")
        );
    }
    match n.anchored {
        Some(a) => println!(
            "  {} rows from before the chain, anchored by a signed checkpoint ({a} when signed)",
            n.unchained
        ),
        None if n.unchained > 0 => println!(
            "  {} rows unchained (before the chain): not protected (no checkpoint anchors them)",
            n.unchained
        ),
        None => {}
    }
    for p in &n.problems {
        println!("  {}: {}", p.problem.as_str(), p.message);
    }
}
