//! `[requests] webhook_url`: a JSON POST on every change of a request, with
//! a Slack- and Mattermost-compatible `text` and the structured request,
//! signed with HMAC-SHA256 (`X-Portvakt-Signature: sha256=<hex>` over the
//! body, key from `webhook_secret_file`). Sent off the SSH path, retried
//! with backoff; a notification that cannot be delivered is audited
//! (`request.notify_failed`).

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use openidconnect::reqwest;
use serde_json::{Value, json};

use super::AccessRequest;
use crate::audit::{Audit, Event, EventKind};
use crate::config::WebhookConfig;

/// Attempts per notification, and the first wait between two.
const ATTEMPTS: u32 = 5;
const FIRST_WAIT: Duration = Duration::from_secs(1);

/// Cheap to clone; does nothing when no webhook is configured.
#[derive(Clone)]
pub struct Webhook {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    url: String,
    key: hmac::Key,
    http: reqwest::Client,
    audit: Audit,
    first_wait: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.inner.as_ref().map(|i| i.url.as_str()))
            .finish()
    }
}

impl Webhook {
    pub fn new(cfg: Option<&WebhookConfig>, audit: Audit) -> Webhook {
        Self::with_first_wait(cfg, audit, FIRST_WAIT)
    }

    /// As [`Webhook::new`], with the first wait between two attempts (tests
    /// shorten it).
    pub fn with_first_wait(
        cfg: Option<&WebhookConfig>,
        audit: Audit,
        first_wait: Duration,
    ) -> Webhook {
        let inner = cfg.and_then(|c| {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .ok()?;
            Some(Arc::new(Inner {
                url: c.url.clone(),
                key: hmac::Key::new(hmac::HMAC_SHA256, &c.secret),
                http,
                audit,
                first_wait,
            }))
        });
        Webhook { inner }
    }

    /// Like [`Webhook::notify`], but waits until it is delivered or given
    /// up (a CLI command, which exits right after).
    pub async fn deliver(&self, kind: EventKind, req: &AccessRequest, by: Option<&str>) {
        if let Some(inner) = &self.inner {
            inner
                .deliver(kind, req.id, body(kind, req, by).to_string())
                .await;
        }
    }

    /// Tell the webhook that `kind` happened to `req` (by `by`, if a person
    /// did it). Never waits.
    pub fn notify(&self, kind: EventKind, req: &AccessRequest, by: Option<&str>) {
        let Some(inner) = self.inner.clone() else {
            return;
        };
        let body = body(kind, req, by).to_string();
        let id = req.id;
        tokio::spawn(async move { inner.deliver(kind, id, body).await });
    }
}

/// `sha256=<hex of HMAC-SHA256(key, body)>`.
pub fn signature(key: &hmac::Key, body: &[u8]) -> String {
    let tag = hmac::sign(key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl Inner {
    async fn deliver(&self, kind: EventKind, id: i64, body: String) {
        let sig = signature(&self.key, body.as_bytes());
        let mut wait = self.first_wait;
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            let sent = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .header("x-portvakt-event", kind.as_str())
                .header("x-portvakt-signature", &sig)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            tracing::warn!(request_id = id, attempt, error = %last, "request webhook not delivered; retrying");
            if attempt < ATTEMPTS {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
        self.audit.emit(
            Event::new(EventKind::RequestNotifyFailed)
                .detail("request_id", id)
                .detail("event", kind.as_str())
                .detail("attempts", ATTEMPTS)
                .detail("error", crate::audit::clean(&last)),
        );
    }
}

/// The JSON body: `text` for chat tools, then the structured fields.
pub fn body(kind: EventKind, req: &AccessRequest, by: Option<&str>) -> Value {
    json!({
        "text": text(kind, req, by),
        "event": kind.as_str(),
        "by": by,
        "request": req.row(),
    })
}

fn text(kind: EventKind, req: &AccessRequest, by: Option<&str>) -> String {
    let d = humantime::format_duration(req.duration);
    let (id, user, target) = (req.id, &req.user, &req.target);
    let by = by.unwrap_or("portvakt");
    match kind {
        EventKind::RequestCreate => format!(
            "portvakt: {user} asks for {target} for {d}: \"{}\" (request {id}; decide with `approve {id}` or `deny {id} \"why\"`)",
            req.reason
        ),
        EventKind::RequestApprove if req.state == super::State::Approved => {
            format!("portvakt: {by} approved request {id}: {user} may use {target} for {d}")
        }
        EventKind::RequestApprove => format!(
            "portvakt: {by} approved request {id} ({user}, {target}); it needs {} approvals",
            req.approvals_needed
        ),
        EventKind::RequestDeny => format!(
            "portvakt: {by} denied request {id} ({user}, {target}): \"{}\"",
            req.decision_reason.as_deref().unwrap_or("")
        ),
        EventKind::RequestExpire => {
            format!("portvakt: request {id} ({user}, {target}) expired undecided")
        }
        EventKind::RequestRevoke => {
            format!("portvakt: {by} revoked request {id} ({user}, {target})")
        }
        other => format!("portvakt: {} for request {id}", other.as_str()),
    }
}
