//! Prometheus metrics, `/healthz` and `/readyz` on `[metrics] listen`.
//!
//! Most metrics are derived from the audit events as they are emitted
//! (`audit::observe`), so a metric label and an audit reason are the same
//! word.
//! Labels take values from fixed sets only (methods, results, reasons):
//! never user names or addresses.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get as route_get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::reasons::{AuthMethod, ConnRefusal, SshMethod};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    pub method: String,
    pub result: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    pub connections_open: Gauge,
    pub connections_total: Counter,
    pub connections_closed: Family<ReasonLabels, Counter>,
    pub logins: Family<LoginLabels, Counter>,
    pub forwards_open: Gauge,
    pub forwards: Family<ResultLabels, Counter>,
    pub forwards_closed: Family<ReasonLabels, Counter>,
    pub bytes: Family<DirectionLabels, Counter>,
    pub grants_active: Gauge,
    pub grants_created: Counter,
    pub bans: Counter,
    pub bans_active: Gauge,
    pub channels_refused: Family<ReasonLabels, Counter>,
    pub connections_refused: Family<ReasonLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub login_seconds: Family<MethodLabels, Histogram>,
    pub dial_seconds: Histogram,
    pub database_errors: Counter,
    pub audit_dropped: Counter,
}

fn seconds_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::with_prefix("portvakt");
        let m = Metrics {
            connections_open: Gauge::default(),
            connections_total: Counter::default(),
            connections_closed: Family::default(),
            logins: Family::default(),
            forwards_open: Gauge::default(),
            forwards: Family::default(),
            forwards_closed: Family::default(),
            bytes: Family::default(),
            grants_active: Gauge::default(),
            grants_created: Counter::default(),
            bans: Counter::default(),
            bans_active: Gauge::default(),
            channels_refused: Family::default(),
            connections_refused: Family::default(),
            config_reloads: Family::default(),
            login_seconds: Family::new_with_constructor(seconds_histogram),
            dial_seconds: seconds_histogram(),
            database_errors: Counter::default(),
            audit_dropped: Counter::default(),
            registry: Registry::default(),
        };
        m.register(&mut r);
        m.register_service(&mut r);
        m.create_series();
        Metrics { registry: r, ..m }
    }

    /// Connections, logins and forwards under their names and help texts.
    fn register(&self, r: &mut Registry) {
        r.register(
            "connections_open",
            "SSH connections open now",
            self.connections_open.clone(),
        );
        r.register(
            "connections",
            "SSH connections accepted",
            self.connections_total.clone(),
        );
        r.register(
            "connections_closed",
            "SSH connections closed, by reason",
            self.connections_closed.clone(),
        );
        r.register(
            "logins",
            "Login attempts by method, result and refusal reason",
            self.logins.clone(),
        );
        r.register(
            "forwards_open",
            "Forwards open now",
            self.forwards_open.clone(),
        );
        r.register(
            "forwards",
            "Forward requests by result (allowed, denied, failed) and reason",
            self.forwards.clone(),
        );
        r.register(
            "forwards_closed",
            "Forwards ended, by close reason",
            self.forwards_closed.clone(),
        );
        r.register(
            "forwarded_bytes",
            "Bytes forwarded, by direction",
            self.bytes.clone(),
        );
    }

    /// Grants, bans, refusals, reloads, timings and the database.
    fn register_service(&self, r: &mut Registry) {
        r.register(
            "grants_active",
            "Login grants valid now (all nodes)",
            self.grants_active.clone(),
        );
        r.register(
            "grants_created",
            "Login grants created on this node",
            self.grants_created.clone(),
        );
        r.register("bans", "Source bans made by this node", self.bans.clone());
        r.register(
            "bans_active",
            "Source bans in force (all nodes)",
            self.bans_active.clone(),
        );
        r.register(
            "channels_refused",
            "Channel requests refused, by reason",
            self.channels_refused.clone(),
        );
        r.register(
            "connections_refused",
            "Connections refused before the SSH handshake, by reason",
            self.connections_refused.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads by result",
            self.config_reloads.clone(),
        );
        r.register(
            "login_duration_seconds",
            "Time from connection to login, by method",
            self.login_seconds.clone(),
        );
        r.register(
            "dial_duration_seconds",
            "Time to connect to a target",
            self.dial_seconds.clone(),
        );
        r.register(
            "database_errors",
            "Database operations that failed",
            self.database_errors.clone(),
        );
        r.register(
            "audit_records_dropped",
            "Audit records that only reached the log",
            self.audit_dropped.clone(),
        );
    }

    /// Families with labels only show up in a scrape once they have a
    /// series: create the usual ones at zero, so that rate() and
    /// increase() see the first event after a start.
    fn create_series(&self) {
        for method in [
            SshMethod::Certificate,
            SshMethod::Publickey,
            SshMethod::KeyboardInteractive,
        ] {
            let _ = self.logins.get_or_create(&LoginLabels {
                method: method.as_str().into(),
                result: "success".into(),
                reason: String::new(),
            });
        }
        for why in ConnRefusal::ALL {
            let _ = self.connections_refused.get_or_create(&ReasonLabels {
                reason: why.as_str().into(),
            });
        }
        for direction in ["to_target", "from_target"] {
            let _ = self.bytes.get_or_create(&DirectionLabels {
                direction: direction.into(),
            });
        }
        let _ = self.forwards.get_or_create(&ResultLabels {
            result: "allowed".into(),
            reason: String::new(),
        });
        for result in ["applied", "rejected"] {
            let _ = self.config_reloads.get_or_create(&ResultLabels {
                result: result.into(),
                reason: if result == "rejected" {
                    "invalid_config".into()
                } else {
                    String::new()
                },
            });
        }
    }

    /// A connection refused before the SSH handshake.
    pub fn connection_refused(&self, reason: ConnRefusal) {
        self.connections_refused
            .get_or_create(&ReasonLabels {
                reason: reason.as_str().into(),
            })
            .inc();
    }

    /// A login succeeded. `logins_total{method}` names the SSH method, as
    /// for failures, so both series of one method can be joined;
    /// `login_duration_seconds{method}` names the login method.
    pub fn login_succeeded(&self, method: AuthMethod, seconds: f64) {
        self.logins
            .get_or_create(&LoginLabels {
                method: method.ssh_method().as_str().into(),
                result: "success".into(),
                reason: String::new(),
            })
            .inc();
        self.login_seconds
            .get_or_create(&MethodLabels {
                method: method.as_str().into(),
            })
            .observe(seconds);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// Bytes moved by a forward, counted as they move.
pub fn bytes_counters() -> (Counter, Counter) {
    // One statement per family lookup: `get_or_create` holds the family's
    // lock until its guard is dropped, and a second lookup in the same
    // expression may need the write lock (deadlock).
    let to = direction("to_target");
    let from = direction("from_target");
    (to, from)
}

fn direction(d: &str) -> Counter {
    get()
        .bytes
        .get_or_create(&DirectionLabels {
            direction: d.into(),
        })
        .clone()
}

/// What `/readyz` asks.
pub trait Readiness: Send + Sync + 'static {
    /// `Err(why)` when not ready.
    fn check(&self) -> impl Future<Output = Result<(), String>> + Send;
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        get().render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz<R: Readiness>(State(r): State<Arc<R>>) -> (StatusCode, String) {
    match tokio::time::timeout(Duration::from_secs(3), r.check()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(why)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: checks timed out\n".into(),
        ),
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until `stop`.
/// The caller binds the port first, so that a port in use stops the start
/// and the endpoint answers as soon as the server says it is listening.
pub async fn serve<R: Readiness>(
    listener: tokio::net::TcpListener,
    ready: Arc<R>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", route_get(metrics))
        .route("/healthz", route_get(healthz))
        .route("/readyz", route_get(readyz::<R>))
        .with_state(ready);
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
