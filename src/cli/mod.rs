//! The command line (DESIGN.md §5). Exit codes: 0 ok, 1 failure, 2 usage or
//! config error. Read commands with `--json` print one JSON document to
//! stdout and nothing else.

mod audit;
mod ca;
mod check_config;
mod grants;
mod lockout;
mod recordings;
mod requests;
mod serve;
mod sessions;
mod totp;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_PATH};
use crate::store::Store;

#[derive(Debug, Parser)]
#[command(
    name = "portvakt",
    version,
    about = "An SSH bastion: certificate and IdP logins, allow-listed targets, audit trail"
)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, env = "PORTVAKT_CONFIG", default_value = DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bastion (SIGHUP reloads the config, SIGTERM drains and stops).
    Serve,
    /// Validate the config file; print "file:line: message" for each problem.
    CheckConfig,
    /// Forwards ("sessions"): who went where, when, how many bytes, why refused.
    #[command(subcommand)]
    Sessions(sessions::SessionsCmd),
    /// Audit events: logins, connections, forwards, refusals.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Login grants (time-limited logins bound to an SSH key).
    #[command(subcommand)]
    Grants(grants::GrantsCmd),
    /// TOTP secrets of users.
    #[command(subcommand)]
    Totp(totp::TotpCmd),
    /// Brute-force bans of source addresses.
    #[command(subcommand)]
    Lockout(lockout::LockoutCmd),
    /// Access requests for targets used on request (just in time).
    #[command(subcommand)]
    Requests(requests::RequestsCmd),
    /// Recorded sessions of targets with mode = "record".
    #[command(subcommand)]
    Recordings(recordings::RecordingsCmd),
    /// The recording CAs: what engineers and recorded targets must trust.
    #[command(subcommand)]
    Ca(ca::CaCmd),
}

/// What a command ends with.
pub enum Outcome {
    Ok,
    /// Something failed (exit 1); the message is printed to stderr.
    Failed(String),
    /// Usage or config error (exit 2).
    Usage(String),
    /// `audit verify` found the trail tampered with (exit 1; the report
    /// is on stdout).
    Tampered,
    /// `audit verify` could not check (exit 2), e.g. no database.
    CannotCheck(String),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Serve => serve::run(&cli.config),
        Command::CheckConfig => check_config::run(&cli.config),
        Command::Sessions(cmd) => with_store(&cli.config, async |cfg, store| {
            sessions::run(cmd, cfg, store).await
        }),
        Command::Audit(cmd) => {
            let out = cmd.run_offline(&cli.config).unwrap_or_else(|| {
                with_store(&cli.config, async |cfg, store| {
                    audit::run(cmd, cfg, store).await
                })
            });
            match out {
                // `audit verify`: 1 means tampered, nothing else.
                Outcome::Failed(m) if cmd.is_verify() => Outcome::CannotCheck(m),
                out => out,
            }
        }
        Command::Grants(cmd) => with_store(&cli.config, async |cfg, store| {
            grants::run(cmd, cfg, store).await
        }),
        Command::Totp(cmd) => with_store(&cli.config, async |cfg, store| {
            totp::run(cmd, cfg, store).await
        }),
        Command::Lockout(cmd) => with_store(&cli.config, async |cfg, store| {
            lockout::run(cmd, cfg, store).await
        }),
        Command::Requests(cmd) => with_store(&cli.config, async |cfg, store| {
            requests::run(cmd, cfg, store).await
        }),
        Command::Recordings(cmd) => with_store(&cli.config, async |cfg, store| {
            recordings::run(cmd, cfg, store).await
        }),
        Command::Ca(cmd) => match Config::load(&cli.config) {
            Ok(cfg) => ca::run(cmd, &cfg),
            Err(e) => Outcome::Usage(e.to_string()),
        },
    };
    match outcome {
        Outcome::Ok => ExitCode::SUCCESS,
        Outcome::Failed(m) => {
            eprintln!("portvakt: {m}");
            ExitCode::from(1)
        }
        Outcome::Usage(m) => {
            eprintln!("{m}");
            ExitCode::from(2)
        }
        Outcome::Tampered => {
            eprintln!("portvakt: the audit trail was tampered with");
            ExitCode::from(1)
        }
        Outcome::CannotCheck(m) => {
            eprintln!("portvakt: could not check the audit trail: {m}");
            ExitCode::from(2)
        }
    }
}

/// Load the config, open the database, run a read command on a small runtime.
fn with_store<F>(path: &std::path::Path, f: F) -> Outcome
where
    F: AsyncFnOnce(&Config, &Store) -> Outcome,
{
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return Outcome::Usage(e.to_string()),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    rt.block_on(async {
        let store = match Store::open(&cfg.database.url).await {
            Ok(s) => s,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let out = f(&cfg, &store).await;
        store.close().await;
        out
    })
}

/// Print `value` as one JSON document.
/// Store one event from a CLI command and wait for it (the command fails
/// if its audit row cannot be written).
async fn record(
    cfg: &crate::config::Config,
    store: &Store,
    ev: crate::audit::Event,
) -> Result<(), Outcome> {
    let (audit, writer) = crate::audit::Audit::start_cli(store.clone(), cfg);
    let stored = audit.record(ev).await;
    drop(audit);
    let _ = writer.await;
    if stored {
        Ok(())
    } else {
        Err(Outcome::Failed("cannot write the audit row".into()))
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> Outcome {
    match serde_json::to_string_pretty(value) {
        Ok(s) => {
            println!("{s}");
            Outcome::Ok
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Parse a `--since`/`--until` argument into unix microseconds.
fn time_arg(v: &Option<String>) -> Result<Option<i64>, Outcome> {
    v.as_deref()
        .map(|s| {
            crate::clock::parse_time_arg(s, std::time::SystemTime::now())
                .map(crate::clock::micros)
                .map_err(Outcome::Usage)
        })
        .transpose()
}
