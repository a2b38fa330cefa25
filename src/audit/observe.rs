//! The metrics that follow from audit events, so that a metric label and
//! an audit reason are the same word.

use serde_json::Value;

use super::{Event, EventKind};
use crate::metrics::{LoginLabels, Metrics, ReasonLabels, ResultLabels};

/// Update the metrics for an audit event.
pub fn observe(ev: &Event) {
    let m = crate::metrics::get();
    match ev.kind {
        EventKind::ConnectionOpen => {
            m.connections_total.inc();
            m.connections_open.inc();
        }
        EventKind::ConnectionClose => {
            m.connections_open.dec();
            m.connections_closed.get_or_create(&reason(ev)).inc();
        }
        // Counted with its method's type by `Audit::login`.
        EventKind::AuthSuccess => {}
        EventKind::AuthFailure => {
            let labels = LoginLabels {
                method: text(ev, "method"),
                result: "failure".into(),
                reason: reason(ev).reason,
            };
            m.logins.get_or_create(&labels).inc();
        }
        EventKind::ForwardOpen | EventKind::ForwardDenied | EventKind::ForwardClose => {
            forward(m, ev);
        }
        EventKind::GrantCreate => {
            m.grants_created.inc();
        }
        EventKind::LockoutBan => {
            m.bans.inc();
        }
        EventKind::ConfigReload => {
            let labels = ResultLabels {
                result: text(ev, "result"),
                reason: reason(ev).reason,
            };
            m.config_reloads.get_or_create(&labels).inc();
        }
        EventKind::ChannelRefused => {
            // A connection's repeats of one refusal come as one summary row.
            let n = ev
                .detail
                .get("repeated")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            m.channels_refused.get_or_create(&reason(ev)).inc_by(n);
        }
        // Counted as they happen (server/refusals.rs), not per audit row.
        EventKind::AuditPrune | EventKind::ConnectionRefused => {}
        // Written by the audit writer itself, never observed.
        EventKind::AuditCheckpoint => {}
        // The requests table and the audit trail are their record.
        EventKind::RequestCreate
        | EventKind::RequestApprove
        | EventKind::RequestDeny
        | EventKind::RequestExpire
        | EventKind::RequestRevoke
        | EventKind::RequestNotifyFailed
        | EventKind::RequestRefused => {}
        // The recordings table and the audit trail are their record.
        EventKind::RecordingStart
        | EventKind::RecordingEnd
        | EventKind::FileOp
        | EventKind::AgentForward
        | EventKind::RemoteForward => {}
        // The review console's own trail (who looked, who acted).
        EventKind::ConsoleLogin | EventKind::ConsoleView | EventKind::ConsoleAction => {}
        // Rare admin and account events: the audit trail is their record.
        EventKind::GrantRevoke
        | EventKind::TotpEnroll
        | EventKind::TotpReset
        | EventKind::LockoutClear
        | EventKind::LockoutUser => {}
    }
}

/// `forwards_open`, `forwards_total{result, reason}`, `forwards_closed_total`.
fn forward(m: &Metrics, ev: &Event) {
    let result = |result: &str, reason: String| ResultLabels {
        result: result.into(),
        reason,
    };
    match ev.kind {
        EventKind::ForwardOpen => {
            m.forwards_open.inc();
            m.forwards
                .get_or_create(&result("allowed", String::new()))
                .inc();
        }
        EventKind::ForwardDenied => {
            let labels = result(&text(ev, "result"), reason(ev).reason);
            m.forwards.get_or_create(&labels).inc();
        }
        _ => {
            m.forwards_open.dec();
            if text(ev, "result") == "failed" {
                let labels = result("failed", reason(ev).reason);
                m.forwards.get_or_create(&labels).inc();
            }
            m.forwards_closed.get_or_create(&reason(ev)).inc();
        }
    }
}

fn reason(ev: &Event) -> ReasonLabels {
    ReasonLabels {
        reason: ev.reason.clone().unwrap_or_default(),
    }
}

fn text(ev: &Event, key: &str) -> String {
    ev.detail
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}
