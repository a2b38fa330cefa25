//! The audit writer's side of signed checkpoints: when it signs its chain,
//! and where each checkpoint goes besides the database (the JSON log, the
//! optional `checkpoint_file` and `checkpoint_url`). See [`super::checkpoint`]
//! for the format.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use openidconnect::reqwest;
use serde_json::json;
use sqlx::Row;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::checkpoint::{Checkpoint, Signer};
use super::{Event, EventKind};
use crate::config::AuditConfig;
use crate::keyfile::{self, KeyFileError};
use crate::reasons::EventReason;
use crate::store::Store;

/// How a node signs its chain (`[audit]`).
#[derive(Debug)]
pub struct Checkpoints {
    pub signer: Signer,
    pub every: u64,
    pub interval: Duration,
    pub file: Option<PathBuf>,
    pub url: Option<String>,
}

impl Checkpoints {
    /// Load the signing key, creating it on first start. Returns whether
    /// it was created.
    pub fn load(cfg: &AuditConfig) -> Result<(Checkpoints, bool), KeyFileError> {
        let (key, created) = load_key(cfg)?;
        let signer = Signer::new(&key).map_err(|message| KeyFileError::Invalid {
            what: "audit signing key",
            path: cfg.signing_key.clone(),
            message,
        })?;
        Ok((
            Checkpoints {
                signer,
                every: cfg.checkpoint_every,
                interval: cfg.checkpoint_interval,
                file: cfg.checkpoint_file.clone(),
                url: cfg.checkpoint_url.clone(),
            },
            created,
        ))
    }
}

impl Checkpoints {
    /// For CLI commands that write rows (as node `NODE (cli)`): sign with
    /// the node's key if it exists and can be read; never create it (a
    /// root-owned key would lock the server out of its own file).
    pub fn existing(cfg: &AuditConfig) -> Result<Checkpoints, String> {
        if !cfg.signing_key.exists() {
            return Err(format!(
                "{} does not exist yet (the server creates it on first start)",
                cfg.signing_key.display()
            ));
        }
        Checkpoints::load(cfg)
            .map(|(c, _)| c)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
impl Checkpoints {
    /// A signer from a fixed seed, checkpoints every `every` events.
    pub fn for_test(seed: u8, every: u64) -> Checkpoints {
        use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
        let key = russh::keys::PrivateKey::new(
            KeypairData::Ed25519(Ed25519Keypair::from_seed(&[seed; 32])),
            "",
        )
        .expect("a key");
        Checkpoints {
            signer: Signer::new(&key).expect("a signer"),
            every,
            interval: Duration::from_secs(3600),
            file: None,
            url: None,
        }
    }
}

/// The signing key of `[audit] signing_key`, created if missing.
pub fn load_key(cfg: &AuditConfig) -> Result<(russh::keys::PrivateKey, bool), KeyFileError> {
    keyfile::load_or_create(
        &cfg.signing_key,
        "audit signing key",
        "portvakt audit signing key",
    )
}

/// The writer's checkpoint state.
#[derive(Debug)]
pub(super) struct Schedule {
    cfg: Checkpoints,
    /// `seq` of the node's newest checkpoint row: later rows are unsigned.
    own: i64,
    next_at: Instant,
    http: Option<reqwest::Client>,
}

impl Schedule {
    pub async fn new(cfg: Checkpoints, store: &Store, node: &str) -> Schedule {
        let own = sqlx::query(
            "SELECT MAX(seq) AS seq FROM audit_events WHERE node = $1 AND kind = $2 AND reason <> $3",
        )
        .bind(node)
        .bind(EventKind::AuditCheckpoint.as_str())
        .bind(EventReason::CheckpointPrune.as_str())
        .fetch_one(store.pool())
        .await
        .ok()
        .and_then(|r| r.try_get::<Option<i64>, _>("seq").ok().flatten())
        .unwrap_or(0);
        let http = cfg.url.as_ref().and_then(|_| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .ok()
        });
        Schedule {
            next_at: Instant::now() + cfg.interval,
            cfg,
            own,
            http,
        }
    }

    /// When the interval checkpoint is due.
    pub fn deadline(&self) -> Instant {
        self.next_at
    }

    /// Why a checkpoint is due now that the chain's tail is at `seq`
    /// (`timer`: the interval passed), if it is. Only rows after the newest
    /// checkpoint's own row count: an idle node signs nothing.
    pub fn due(&self, seq: i64, timer: bool) -> Option<EventReason> {
        let unsigned = seq - self.own;
        if unsigned >= self.cfg.every as i64 {
            Some(EventReason::CheckpointEvents)
        } else if timer && unsigned > 0 {
            Some(EventReason::CheckpointInterval)
        } else {
            None
        }
    }

    /// No checkpoint of this node's chain yet (its first anchors the rows
    /// from before the chain).
    pub fn is_first(&self) -> bool {
        self.own == 0
    }

    /// Are rows after the newest checkpoint?
    pub fn has_unsigned(&self, seq: i64) -> bool {
        seq > self.own
    }

    pub fn restart_timer(&mut self) {
        self.next_at = Instant::now() + self.cfg.interval;
    }

    /// A checkpoint of `node`'s chain at `(seq, hash)` and the event that
    /// stores it.
    pub fn sign(
        &self,
        node: &str,
        seq: i64,
        hash: &str,
        reason: EventReason,
        extra: &[String],
    ) -> (Checkpoint, Event) {
        let mut extensions = vec![format!("time {}", crate::clock::rfc3339(SystemTime::now()))];
        extensions.extend_from_slice(extra);
        let cp = self.cfg.signer.sign(node, seq, hash, &extensions);
        let ev = Event::new(EventKind::AuditCheckpoint)
            .reason(reason)
            .detail("seq", cp.seq)
            .detail("hash", cp.hash.clone())
            .detail("note", cp.note.clone())
            .detail("signature", cp.signature.clone())
            .detail("key", cp.key.clone());
        (cp, ev)
    }

    /// The checkpoint's row is stored at `row_seq`: it leaves the host.
    pub async fn stored(&mut self, cp: &Checkpoint, reason: EventReason, row_seq: i64) {
        if reason != EventReason::CheckpointPrune {
            self.own = row_seq;
            self.restart_timer();
        }
        let line = json!({
            "event": EventKind::AuditCheckpoint.as_str(),
            "node": cp.node,
            "seq": cp.seq,
            "hash": cp.hash,
            "signature": cp.signature,
            "note": cp.note,
            "key": cp.key,
            "reason": reason.as_str(),
            "timestamp": crate::clock::rfc3339(SystemTime::now()),
        });
        tracing::info!(
            target: "audit",
            event = EventKind::AuditCheckpoint.as_str(),
            node = %cp.node,
            seq = cp.seq,
            hash = %cp.hash,
            signature = %cp.signature,
            note = %cp.note,
            key = %cp.key,
            reason = reason.as_str(),
            "{}",
            EventKind::AuditCheckpoint.as_str()
        );
        if let Some(path) = &self.cfg.file
            && let Err(e) = append_line(path, &line.to_string()).await
        {
            crate::metrics::get().database_errors.inc();
            tracing::error!(error = %e, path = %path.display(), "cannot append the audit checkpoint to checkpoint_file");
        }
        if let (Some(url), Some(http)) = (&self.cfg.url, &self.http) {
            tokio::spawn(post(http.clone(), url.clone(), line));
        }
    }
}

async fn append_line(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    f.write_all(format!("{line}\n").as_bytes()).await?;
    f.sync_data().await
}

/// POST a checkpoint, retried with backoff; never holds up the writer.
async fn post(http: reqwest::Client, url: String, body: serde_json::Value) {
    let mut wait = Duration::from_secs(1);
    for attempt in 1..=5 {
        match http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => {
                tracing::warn!(status = %r.status(), attempt, url = %url, "checkpoint_url refused the audit checkpoint")
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, url = %url, "cannot POST the audit checkpoint")
            }
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
    tracing::error!(url = %url, seq = %body["seq"], "audit checkpoint not delivered to checkpoint_url (it is in the database and the log)");
}
