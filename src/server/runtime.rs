//! The composition root: open the database, start the audit writer, the
//! login services and the background tasks, bind the listeners, serve until
//! told to stop, then drain. What to do is given by the caller as
//! [`Control`] messages (the CLI turns signals into them; tests and the
//! console can send them too).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::{ArcSwap, ArcSwapOption};
use russh::keys::PrivateKey;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::conn::CLOSE_WAIT;
use super::grant_watch::GrantWatch;
use super::shards::Shards;
use super::{ServerState, hostkey, listener, ssh_config};
use crate::audit::Audit;
use crate::auth::Services;
use crate::auth::lockout::Lockout;
use crate::auth::oidc::Idp;
use crate::auth::totp::Totp;
use crate::config::Config;
use crate::store::Store;

/// How long a stopping server lets forwards finish before closing them.
const DRAIN: Duration = Duration::from_secs(20);

/// What the running server is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Read the config file again (SIGHUP).
    Reload,
    /// Stop accepting, drain, exit (SIGTERM, SIGINT). A closed channel
    /// means the same.
    Shutdown,
}

/// Run the bastion until `control` says stop (or is closed).
pub async fn run(cfg: Config, mut control: mpsc::Receiver<Control>) -> anyhow::Result<()> {
    raise_open_files(&cfg);
    let host_key = host_key(&cfg)?;
    let (state, writer) = start(cfg, host_key).await?;
    // The ports are bound once everything behind them is ready (the
    // database, the TOTP key, ...), all together: a port in use stops the
    // start, and a client or probe that finds one port answering finds the
    // others answering too.
    let cfg = state.config.load_full();
    let mut listeners = Vec::new();
    for addr in &cfg.server.listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push(l);
    }
    let metrics = match &cfg.metrics {
        Some(m) => Some(
            TcpListener::bind(m.listen)
                .await
                .with_context(|| format!("cannot listen on {} for metrics", m.listen))?,
        ),
        None => None,
    };
    let console = match &cfg.console {
        Some(c) => Some(crate::console::Bound::bind(c).await?),
        None => None,
    };
    drop(cfg);
    let shards = Arc::new(Shards::start()?);
    let background = Background::start(&state, metrics, console);
    let terminate = CancellationToken::new();
    if russh::cipher::chacha20_poly1305_uses_libcrypto() {
        tracing::info!("chacha20-poly1305 with ChaCha20 and Poly1305 of OpenSSL's libcrypto");
    } else {
        tracing::warn!(
            "chacha20-poly1305 with the RustCrypto crates: libcrypto offers no ChaCha20 or \
             POLY1305 (an OpenSSL configuration without its default provider?); correct, \
             but slower"
        );
    }
    let mut accepting = Vec::new();
    for l in listeners {
        tracing::info!(addr = %l.local_addr()?, "listening");
        accepting.push(tokio::spawn(listener::accept_loop(
            state.clone(),
            l,
            shards.clone(),
            terminate.clone(),
        )));
    }
    while let Some(Control::Reload) = control.recv().await {
        super::reload::reload(&state).await;
    }
    drain(&state, &terminate).await;
    for a in accepting {
        // Returned at the shutdown drain() signalled.
        let _ = a.await;
    }
    background.stop().await;
    let store = state.audit.store().clone();
    drop(state);
    // The writer ends once the last Audit clone is gone and its queue is written.
    let _ = tokio::time::timeout(CLOSE_WAIT, writer).await;
    store.close().await;
    // Last: a database connection opened by a connection is registered with
    // its shard's runtime. The accept loops have returned, so this is the
    // only handle left.
    if let Some(shards) = Arc::into_inner(shards) {
        shards.stop().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Every forward holds two sockets: take all the descriptors allowed.
fn raise_open_files(cfg: &Config) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if (n as usize) < cfg.server.max_connections * 2 + 64 => tracing::warn!(
            open_files = n,
            max_connections = cfg.server.max_connections,
            "the open-file limit is below two per connection; raise LimitNOFILE"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

fn host_key(cfg: &Config) -> anyhow::Result<PrivateKey> {
    let (host_key, created) = hostkey::load_or_create(&cfg.server.host_key_dir)?;
    tracing::info!(
        fingerprint = %hostkey::fingerprint(&host_key),
        path = %cfg.server.host_key_dir.join(hostkey::FILE_NAME).display(),
        created,
        "host key"
    );
    Ok(host_key)
}

/// The database, the audit writer and the login services, in one state.
async fn start(
    cfg: Config,
    host_key: PrivateKey,
) -> anyhow::Result<(Arc<ServerState>, JoinHandle<()>)> {
    let store = Store::open(&cfg.database.url)
        .await
        .context("cannot open the audit database")?;
    let (checkpoints, created) = crate::audit::Checkpoints::load(&cfg.audit)?;
    tracing::info!(
        key = %checkpoints.signer.public_openssh(),
        path = %cfg.audit.signing_key.display(),
        created,
        "audit signing key"
    );
    let (audit, writer) =
        Audit::start_signed(store.clone(), cfg.server.node_name.clone(), checkpoints);
    let interrupted = crate::audit::mark_interrupted(&audit).await?;
    if interrupted > 0 {
        tracing::warn!(
            forwards = interrupted,
            "forwards left open by an earlier run marked interrupted"
        );
    }
    let idp = match &cfg.oidc {
        Some(o) => Some(Arc::new(Idp::new(o.clone())?)),
        None => None,
    };
    if let Some(idp) = &idp {
        // Discover now so that a broken [oidc] shows at start; logins retry.
        if let Err(e) = idp.check().await {
            tracing::warn!(issuer = %idp.config().issuer, error = %e, "identity provider not usable yet; IdP logins will retry");
        }
    }
    let lockout = Arc::new(Lockout::new(store.clone(), cfg.server.node_name.clone()));
    lockout.refresh(&cfg.lockout).await?;
    let services = Arc::new(Services {
        lockout,
        totp: Totp::open(store.clone(), &cfg.mfa.secret_key_file)?,
        store,
        idp: ArcSwapOption::new(idp),
        flows: Default::default(),
        node: cfg.server.node_name.clone(),
    });
    let recording = Arc::new(crate::recording::ca::CaCache::default());
    if cfg.policy.targets().iter().any(|t| t.record.is_some()) {
        let cas = recording
            .get(&cfg.recording, &cfg.auth)
            .context("recorded targets need the recording CAs")?;
        tracing::info!(
            host_ca = %cas.host_ca().fingerprint(russh::keys::HashAlg::Sha256),
            target_ca = %cas.target_ca().fingerprint(russh::keys::HashAlg::Sha256),
            "recording CAs"
        );
    }
    let max_connections = u32::try_from(cfg.server.max_connections).unwrap_or(u32::MAX);
    let webhook =
        crate::requests::webhook::Webhook::new(cfg.requests.webhook.as_ref(), audit.clone());
    let state = Arc::new(ServerState {
        webhook,
        ssh: Arc::new(ssh_config(&cfg, host_key)),
        connections: Arc::new(Semaphore::new(max_connections as usize)),
        max_connections,
        unauthenticated: Arc::new(Semaphore::new(cfg.server.max_unauthenticated)),
        unauthenticated_per_source: Arc::default(),
        config: Arc::new(ArcSwap::from_pointee(cfg)),
        audit,
        shutdown: CancellationToken::new(),
        services,
        grant_watch: Arc::new(GrantWatch::default()),
        forwards: Arc::default(),
        live: Default::default(),
        reloads: Default::default(),
        refusals: Arc::default(),
        recording,
    });
    Ok((state, writer))
}

/// The tasks that run beside the connections.
struct Background {
    stop: CancellationToken,
    /// Writes the counted refusals; awaited so they reach the audit.
    flusher: JoinHandle<()>,
}

impl Background {
    /// Start them; `metrics` is the bound `[metrics] listen` port,
    /// `console` the bound `[console] listen` port.
    fn start(
        state: &Arc<ServerState>,
        metrics: Option<TcpListener>,
        console: Option<crate::console::Bound>,
    ) -> Background {
        let stop = CancellationToken::new();
        let cfg = state.config.load_full();
        let store = state.services.store.clone();
        if let Some(listener) = metrics {
            let listen = listener
                .local_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string());
            let ready = Arc::new(Ready {
                state: state.clone(),
            });
            let server = crate::metrics::serve(listener, ready, stop.clone());
            tokio::spawn(async move {
                if let Err(e) = server.await {
                    tracing::error!(%listen, error = %e, "metrics endpoint failed");
                }
            });
        }
        if let Some(bound) = console {
            let listen = bound
                .local_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string());
            let console = Arc::new(crate::console::ConsoleState::new(
                state.config.clone(),
                state.audit.clone(),
                state.services.clone(),
                state.webhook.clone(),
            ));
            let server = crate::console::serve(bound, console, stop.clone());
            tokio::spawn(async move {
                if let Err(e) = server.await {
                    tracing::error!(%listen, error = %e, "review console failed");
                }
            });
        }
        let st = state.clone();
        tokio::spawn(state.grant_watch.clone().run(
            store.clone(),
            move |id| {
                st.live
                    .close(id, crate::reasons::CloseReason::EndedByReviewer)
            },
            stop.clone(),
        ));
        let forwards = state.forwards.clone();
        tokio::spawn(crate::requests::watch::run(
            store.clone(),
            state.audit.clone(),
            state.webhook.clone(),
            move |id| forwards.close_request(id),
            stop.clone(),
        ));
        let st = state.clone();
        let lockout = state.services.lockout.clone();
        tokio::spawn(lockout.run(move || st.config.load().lockout.clone(), stop.clone()));
        tokio::spawn(gauges(store.clone(), stop.clone()));
        tokio::spawn(store.clone().checkpoint_recordings(stop.clone()));
        tokio::spawn(store.watch_health(stop.clone()));
        if let Some(keep) = cfg.database.retention {
            let audit = state.audit.clone();
            tokio::spawn(crate::audit::retention_loop(audit, keep, stop.clone()));
        }
        let (refusals, audit, s) = (state.refusals.clone(), state.audit.clone(), stop.clone());
        let flusher = tokio::spawn(async move { refusals.run(audit, s).await });
        Background { stop, flusher }
    }

    async fn stop(self) {
        self.stop.cancel();
        // Counted refusals reach the audit before its writer is let go.
        let _ = self.flusher.await;
    }
}

/// Stop accepting; let forwards finish for up to [`DRAIN`], then close the
/// connections still open and wait (bounded) for them to go.
async fn drain(state: &ServerState, terminate: &CancellationToken) {
    tracing::info!("stopping: no new connections; letting forwards drain");
    state.shutdown.cancel();
    let max = state.max_connections;
    let all_closed = state.connections.clone().acquire_many_owned(max);
    if tokio::time::timeout(DRAIN, all_closed).await.is_err() {
        tracing::info!("drain time over; closing the remaining connections");
        terminate.cancel();
        let all_closed = state.connections.clone().acquire_many_owned(max);
        let _ = tokio::time::timeout(CLOSE_WAIT * 3, all_closed).await;
    }
}

/// `/readyz`: the database answers and, with `[oidc]`, the IdP was discovered.
struct Ready {
    state: Arc<ServerState>,
}

impl crate::metrics::Readiness for Ready {
    async fn check(&self) -> Result<(), String> {
        if self.state.shutdown.is_cancelled() {
            return Err("shutting down".into());
        }
        self.state
            .services
            .store
            .ping()
            .await
            .map_err(|e| format!("database: {e}"))?;
        if let Some(idp) = self.state.services.idp()
            && !idp.ready().await
        {
            return Err("identity provider discovery failed".into());
        }
        Ok(())
    }
}

/// Gauges read from the shared database (all nodes): grants and bans in force.
async fn gauges(store: Store, stop: CancellationToken) {
    loop {
        if let Ok(n) = crate::auth::grants::active_count(&store).await {
            crate::metrics::get().grants_active.set(n);
        }
        if let Ok(bans) = crate::auth::lockout::list(&store).await {
            crate::metrics::get().bans_active.set(bans.len() as i64);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `run` is driven by its `Control` input alone: it serves, reloads
    /// when asked, and stops (with its final rows written) when told to.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_serves_reloads_and_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\nhost_key_dir = \"keys\"\n\
             [database]\nurl = \"sqlite://portvakt.db\"\n"
        );
        let path = dir.path().join("portvakt.toml");
        std::fs::write(&path, &text).unwrap();
        let cfg = Config::load(&path).unwrap();
        let (control, rx) = mpsc::channel(4);
        let server = tokio::spawn(run(cfg, rx));
        // Serving: the SSH port answers with portvakt's version line.
        let mut banner = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !banner.starts_with(b"SSH-2.0-portvakt") {
            assert!(tokio::time::Instant::now() < deadline, "not serving");
            assert!(!server.is_finished(), "run() ended: {:?}", server.await);
            banner = read_banner(port).await.unwrap_or_default();
        }
        control.send(Control::Reload).await.unwrap();
        control.send(Control::Shutdown).await.unwrap();
        tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .expect("run() did not stop")
            .unwrap()
            .unwrap();
        // Stopped: the port is closed, and the reload was audited.
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
        );
        let store = Store::open(&format!(
            "sqlite://{}",
            dir.path().join("portvakt.db").display()
        ))
        .await
        .unwrap();
        let events = crate::audit::query::events(&store, &Default::default())
            .await
            .unwrap();
        assert!(
            events.iter().any(|e| e.kind == "config.reload"),
            "{events:?}"
        );
    }

    async fn read_banner(port: u16) -> std::io::Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut buf = vec![0; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("no banner"))??;
        buf.truncate(n);
        Ok(buf)
    }
}
