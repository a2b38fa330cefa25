//! Prometheus metrics, `/healthz` and `/readyz` on `[metrics] listen`.
//!
//! Most metrics are derived from the audit events as they are emitted
//! ([`observe`]), so a metric label and an audit reason are the same word.
//! Labels take values from fixed sets only (methods, results, reasons):
//! never user names or addresses.

use std::net::SocketAddr;
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
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::audit::{Event, EventKind};

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
        r.register(
            "connections_open",
            "SSH connections open now",
            m.connections_open.clone(),
        );
        r.register(
            "connections",
            "SSH connections accepted",
            m.connections_total.clone(),
        );
        r.register(
            "connections_closed",
            "SSH connections closed, by reason",
            m.connections_closed.clone(),
        );
        r.register(
            "logins",
            "Login attempts by method, result and refusal reason",
            m.logins.clone(),
        );
        r.register(
            "forwards_open",
            "Forwards open now",
            m.forwards_open.clone(),
        );
        r.register(
            "forwards",
            "Forward requests by result (allowed, denied, failed) and reason",
            m.forwards.clone(),
        );
        r.register(
            "forwards_closed",
            "Forwards ended, by close reason",
            m.forwards_closed.clone(),
        );
        r.register(
            "forwarded_bytes",
            "Bytes forwarded, by direction",
            m.bytes.clone(),
        );
        r.register(
            "grants_active",
            "Login grants valid now (all nodes)",
            m.grants_active.clone(),
        );
        r.register(
            "grants_created",
            "Login grants created on this node",
            m.grants_created.clone(),
        );
        r.register("bans", "Source bans made by this node", m.bans.clone());
        r.register(
            "bans_active",
            "Source bans in force (all nodes)",
            m.bans_active.clone(),
        );
        r.register(
            "channels_refused",
            "Channel requests refused, by reason",
            m.channels_refused.clone(),
        );
        r.register(
            "connections_refused",
            "Connections refused before the SSH handshake, by reason",
            m.connections_refused.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads by result",
            m.config_reloads.clone(),
        );
        r.register(
            "login_duration_seconds",
            "Time from connection to login, by method",
            m.login_seconds.clone(),
        );
        r.register(
            "dial_duration_seconds",
            "Time to connect to a target",
            m.dial_seconds.clone(),
        );
        r.register(
            "database_errors",
            "Database operations that failed",
            m.database_errors.clone(),
        );
        r.register(
            "audit_records_dropped",
            "Audit records that only reached the log",
            m.audit_dropped.clone(),
        );
        // Families with labels only show up in a scrape once they have a
        // series: create the usual ones at zero, so that rate() and
        // increase() see the first event after a start.
        for method in [
            "certificate",
            "grant",
            "publickey+totp",
            "oidc+totp",
            "oidc",
            "publickey",
        ] {
            let _ = m.logins.get_or_create(&LoginLabels {
                method: method.into(),
                result: "success".into(),
                reason: String::new(),
            });
        }
        for why in crate::server::refusals::Refusal::ALL {
            let _ = m.connections_refused.get_or_create(&ReasonLabels {
                reason: why.as_str().into(),
            });
        }
        for direction in ["to_target", "from_target"] {
            let _ = m.bytes.get_or_create(&DirectionLabels {
                direction: direction.into(),
            });
        }
        let _ = m.forwards.get_or_create(&ResultLabels {
            result: "allowed".into(),
            reason: String::new(),
        });
        for result in ["applied", "rejected"] {
            let _ = m.config_reloads.get_or_create(&ResultLabels {
                result: result.into(),
                reason: if result == "rejected" {
                    "invalid_config".into()
                } else {
                    String::new()
                },
            });
        }
        Metrics { registry: r, ..m }
    }

    /// A connection refused before the SSH handshake.
    pub fn connection_refused(&self, reason: &str) {
        self.connections_refused
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
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

fn s(v: Option<&str>) -> String {
    v.unwrap_or("").to_string()
}

/// Update the metrics for an audit event.
pub fn observe(ev: &Event) {
    let m = get();
    let detail = |k: &str| ev.detail.get(k).and_then(Value::as_str);
    match ev.kind {
        EventKind::ConnectionOpen => {
            m.connections_total.inc();
            m.connections_open.inc();
        }
        EventKind::ConnectionClose => {
            m.connections_open.dec();
            m.connections_closed
                .get_or_create(&ReasonLabels {
                    reason: s(ev.reason.as_deref()),
                })
                .inc();
        }
        EventKind::AuthSuccess => {
            m.logins
                .get_or_create(&LoginLabels {
                    method: s(detail("method")),
                    result: "success".into(),
                    reason: String::new(),
                })
                .inc();
            if let Some(secs) = ev.detail.get("login_seconds").and_then(Value::as_f64) {
                m.login_seconds
                    .get_or_create(&MethodLabels {
                        method: s(detail("method")),
                    })
                    .observe(secs);
            }
        }
        EventKind::AuthFailure => {
            m.logins
                .get_or_create(&LoginLabels {
                    method: s(detail("method")),
                    result: "failure".into(),
                    reason: s(ev.reason.as_deref()),
                })
                .inc();
        }
        EventKind::ForwardOpen => {
            m.forwards_open.inc();
            m.forwards
                .get_or_create(&ResultLabels {
                    result: "allowed".into(),
                    reason: String::new(),
                })
                .inc();
        }
        EventKind::ForwardDenied => {
            m.forwards
                .get_or_create(&ResultLabels {
                    result: s(detail("result")),
                    reason: s(ev.reason.as_deref()),
                })
                .inc();
        }
        EventKind::ForwardClose => {
            m.forwards_open.dec();
            if detail("result") == Some("failed") {
                m.forwards
                    .get_or_create(&ResultLabels {
                        result: "failed".into(),
                        reason: s(ev.reason.as_deref()),
                    })
                    .inc();
            }
            m.forwards_closed
                .get_or_create(&ReasonLabels {
                    reason: s(ev.reason.as_deref()),
                })
                .inc();
        }
        EventKind::GrantCreate => {
            m.grants_created.inc();
        }
        EventKind::GrantRevoke => {}
        EventKind::LockoutBan => {
            m.bans.inc();
        }
        EventKind::ConfigReload => {
            m.config_reloads
                .get_or_create(&ResultLabels {
                    result: s(detail("result")),
                    reason: s(ev.reason.as_deref()),
                })
                .inc();
        }
        // Counted as they happen (server::refusals), not per audit row.
        EventKind::AuditPrune | EventKind::ConnectionRefused => {}
        // Rare admin and account events: the audit trail is their record.
        EventKind::TotpEnroll
        | EventKind::TotpReset
        | EventKind::LockoutClear
        | EventKind::LockoutUser => {}
        EventKind::ChannelRefused => {
            // A connection's repeats of one refusal come as one summary row.
            let n = ev
                .detail
                .get("repeated")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            m.channels_refused
                .get_or_create(&ReasonLabels {
                    reason: s(ev.reason.as_deref()),
                })
                .inc_by(n);
        }
    }
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

/// Serve `/metrics`, `/healthz` and `/readyz` until `stop`.
pub async fn serve<R: Readiness>(
    listen: SocketAddr,
    ready: Arc<R>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", route_get(metrics))
        .route("/healthz", route_get(healthz))
        .route("/readyz", route_get(readyz::<R>))
        .with_state(ready);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
