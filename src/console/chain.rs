//! The chain status on `/audit`: `audit verify` (the same checker, with
//! the recordings' check) run by the console in the background, at start,
//! every [`EVERY`], and when a reviewer asks (the page's "Verify now", at
//! most once per [`AT_MOST_EVERY`]); its last report is kept for the page.
//! A page never waits for a verification: the whole chain takes seconds on
//! a big database (docs/BENCHMARKS.md "Audit chain").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use maud::{Markup, html};
use tokio_util::sync::CancellationToken;

use crate::audit::checkpoint::VerifyingKey;
use crate::audit::verify::{self, Options, Report};
use crate::config::SharedConfig;
use crate::store::Store;

/// How often the chain is verified again.
pub const EVERY: Duration = Duration::from_secs(600);

/// Verifications asked for on the page run at most this often (each reads
/// the whole chain).
pub const AT_MOST_EVERY: Duration = Duration::from_secs(10);

/// The newest verification: when it finished, and what it found (or why
/// it could not check).
#[derive(Debug, Clone)]
pub struct Status {
    pub at: String,
    /// Checked against `[console] audit_keys` (else the database's keys).
    pub pinned: bool,
    pub report: Result<Report, String>,
}

#[derive(Debug, Default)]
pub struct ChainStatus {
    last: RwLock<Option<Status>>,
    /// A reviewer asked for a verification that has not finished yet.
    asked: AtomicBool,
    wake: tokio::sync::Notify,
}

impl ChainStatus {
    pub fn get(&self) -> Option<Status> {
        self.last.read().ok().and_then(|s| s.clone())
    }

    /// Is a verification asked for and not done yet?
    pub fn pending(&self) -> bool {
        self.asked.load(Ordering::Relaxed)
    }

    /// Verify again soon (asks made before it starts count once; one made
    /// while a verification runs gets another after it).
    pub fn ask(&self) {
        self.asked.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Verify now (with the keys `[console] audit_keys` pins, if any) and
    /// keep the report.
    pub async fn check(&self, store: &Store, keys: Vec<VerifyingKey>) {
        let pinned = !keys.is_empty();
        let options = Options {
            extra: Some(crate::recording::verify::check),
            keys,
            ..Options::default()
        };
        let report = verify::verify_with(store, &options)
            .await
            .map_err(|e| e.to_string());
        if let Ok(r) = &report
            && !r.intact
        {
            tracing::warn!("console: audit verify found the chain tampered");
        }
        let status = Status {
            at: crate::clock::rfc3339(std::time::SystemTime::now()),
            pinned,
            report,
        };
        if let Ok(mut last) = self.last.write() {
            *last = Some(status);
        }
    }

    /// Verify at start and every [`EVERY`] until `stop`.
    pub async fn run(self: Arc<Self>, store: Store, config: SharedConfig, stop: CancellationToken) {
        loop {
            let started = tokio::time::Instant::now();
            let keys = config
                .load()
                .console
                .as_ref()
                .map(|c| c.audit_keys.clone())
                .unwrap_or_default();
            self.check(&store, keys).await;
            self.asked.store(false, Ordering::Relaxed);
            tokio::select! {
                () = tokio::time::sleep(EVERY) => {}
                () = self.wake.notified() => {
                    tokio::select! {
                        () = tokio::time::sleep_until(started + AT_MOST_EVERY) => {}
                        () = stop.cancelled() => return,
                    }
                }
                () = stop.cancelled() => return,
            }
        }
    }
}

/// The status as a table: one row per node, problems in red; and the
/// "Verify now" button.
pub fn render(status: Option<Status>, pending: bool, viewer: &super::Viewer) -> Markup {
    html! {
        section #chain {
            h2 { "Chain status (audit verify)" }
            form method="post" action="/audit/verify" {
                (super::layout::csrf_field(viewer))
                @if pending {
                    button type="submit" disabled { "Verifying…" }
                    " (reload the page in a moment)"
                } @else {
                    button type="submit" { "Verify now" }
                }
            }
            @match status {
                None => p { "Not verified yet (the console verifies at start, then every "
                    (EVERY.as_secs() / 60) " minutes)." },
                Some(Status { at, report: Err(e), .. }) => p.bad { "Could not verify at " (at) ": " (e) },
                Some(Status { at, pinned, report: Ok(r) }) => {
                    p class=(if r.intact { "" } else { "bad" }) {
                        @if r.intact { "Intact" } @else { "TAMPERED" }
                        " as verified at " (at) " (again every " (EVERY.as_secs() / 60) " minutes; "
                        @if pinned {
                            "checkpoints must be signed by a key of " code { "[console] audit_keys" } ")."
                        } @else {
                            "keys as the database states them: pin them with "
                            code { "[console] audit_keys" } " or " code { "portvakt audit verify --key" } ")."
                        }
                    }
                    table #chain-nodes {
                        thead { tr {
                            th { "Node" } th { "State" } th { "Rows" } th { "Last verified checkpoint" }
                            th { "Rows not signed yet" } th { "Problems" }
                        } }
                        tbody { @for n in &r.nodes { tr class=(if n.problems.is_empty() { "" } else { "refused" }) {
                            td { (n.node) }
                            td { @if n.problems.is_empty() { "intact" } @else { "TAMPERED" } }
                            td { (n.rows) }
                            td { @match &n.last_checkpoint {
                                Some(c) => { "seq " (c["seq"].to_string()) " (" (c["time"].as_str().unwrap_or("?")) ")" },
                                None => "none",
                            } }
                            td { (n.unsigned_rows) }
                            td { @for p in &n.problems { div { (p.problem.as_str()) ": " (p.message) } } }
                        } } }
                    }
                }
            }
        }
    }
}
