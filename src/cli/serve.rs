//! `portvakt serve`

use std::io::IsTerminal;
use std::path::Path;

use tracing_subscriber::EnvFilter;

use super::Outcome;
use crate::config::{Config, LogFormat};
use crate::server::Control;
use tokio::signal::unix::{SignalKind, signal};

pub fn run(path: &Path) -> Outcome {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return Outcome::Usage(e.to_string()),
    };
    init_logging(&cfg);
    for w in &cfg.warnings {
        tracing::warn!(problem = %w, "config warning");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let result = rt.block_on(async {
        let control = signals()?;
        crate::server::run(cfg, control).await
    });
    // Tasks still running (a stuck peer, say) must not keep the process.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => Outcome::Ok,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "portvakt stopped on an error");
            Outcome::Failed(format!("{e:#}"))
        }
    }
}

/// SIGHUP reloads the config; SIGTERM and SIGINT stop the server.
fn signals() -> anyhow::Result<tokio::sync::mpsc::Receiver<Control>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let what = tokio::select! {
                _ = term.recv() => Control::Shutdown,
                _ = int.recv() => Control::Shutdown,
                _ = hup.recv() => Control::Reload,
            };
            if tx.send(what).await.is_err() || what == Control::Shutdown {
                return;
            }
        }
    });
    Ok(rx)
}

/// JSON lines to stderr (for Loki, Splunk, journald), or a readable format on
/// a terminal.
fn init_logging(cfg: &Config) {
    let filter = EnvFilter::try_new(&cfg.log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let format = cfg
        .log
        .format
        .unwrap_or(if std::io::stderr().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        LogFormat::Pretty => builder.compact().init(),
    }
}
