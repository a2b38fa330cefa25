//! One node's chain walked in `seq` order, row by row, wherever the rows
//! come from (the database, or an export file): every hash recomputed, every
//! link followed, every checkpoint's signature checked, and at the end the
//! chain's start and end held against the signed checkpoints (its own
//! prune records, and those given from outside). Memory stays bounded: it
//! keeps the row before, and the hashes of the few rows a checkpoint names.

use std::collections::HashMap;

use serde_json::Value;

use super::chain::{Anchor, ChainFields, GENESIS, HexDigest, row_hash_hex};
use super::checkpoint::{self, VerifyingKey};
use super::verify::{EVENTS, NodeReport, Problem, ProblemKind, Pruned};
use crate::reasons::EventReason;

/// Past this many, a node's problems are counted, not listed.
const MAX_PROBLEMS: usize = 100;

/// One stored row of a chain, owned (an export's line, a page of sqlx
/// rows). The walker reads it through [`ChainRow::borrowed`].
#[derive(Debug, Clone)]
pub struct ChainRow {
    pub id: i64,
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub user: Option<String>,
    pub source: Option<String>,
    pub connection_id: Option<String>,
    pub reason: Option<String>,
    pub detail: String,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

impl ChainRow {
    pub fn borrowed(&self) -> RowRef<'_> {
        RowRef {
            id: self.id,
            seq: self.seq,
            at: self.at,
            kind: &self.kind,
            user: self.user.as_deref(),
            source: self.source.as_deref(),
            connection_id: self.connection_id.as_deref(),
            reason: self.reason.as_deref(),
            detail: &self.detail,
            prev_hash: self.prev_hash.as_deref(),
            hash: self.hash.as_deref(),
        }
    }

    /// `seq` a prune checkpoint row says it signs (read before the walk, to
    /// know which rows' hashes to keep).
    pub fn prune_claim_seq(&self) -> Option<i64> {
        self.borrowed().prune_claim_seq()
    }
}

/// One stored row of a chain, borrowed from where it was read: the walker
/// takes rows this way so that a reader can hand it the values of a row
/// still inside the database driver (`audit verify` on SQLite), with
/// nothing copied or allocated per row.
#[derive(Debug, Clone, Copy)]
pub struct RowRef<'a> {
    pub id: i64,
    pub seq: i64,
    pub at: i64,
    pub kind: &'a str,
    pub user: Option<&'a str>,
    pub source: Option<&'a str>,
    pub connection_id: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub detail: &'a str,
    pub prev_hash: Option<&'a str>,
    pub hash: Option<&'a str>,
}

impl RowRef<'_> {
    /// The hash the row's content gives (`None`: it has no `prev_hash`),
    /// encoded in `scratch`.
    fn computed_hash(&self, node: &str, scratch: &mut Vec<u8>) -> Option<HexDigest> {
        let fields = ChainFields {
            node,
            seq: self.seq,
            at: self.at,
            kind: self.kind,
            user: self.user,
            source: self.source,
            connection_id: self.connection_id,
            reason: self.reason,
            detail: self.detail,
            prev_hash: self.prev_hash?,
        };
        Some(row_hash_hex(&fields, scratch))
    }

    fn is_checkpoint(&self) -> bool {
        self.kind == super::EventKind::AuditCheckpoint.as_str()
    }

    fn is_prune_checkpoint(&self) -> bool {
        self.is_checkpoint() && self.reason == Some(EventReason::CheckpointPrune.as_str())
    }

    fn prune_claim_seq(&self) -> Option<i64> {
        if !self.is_prune_checkpoint() {
            return None;
        }
        serde_json::from_str::<Value>(self.detail).ok()?["seq"].as_i64()
    }
}

/// The row before, as the walker keeps it: its hash in a buffer reused
/// from row to row.
struct Prev {
    seq: i64,
    id: i64,
    hash: Option<String>,
}

/// `slot = value`, reusing the slot's allocation.
fn set_text(slot: &mut Option<String>, value: Option<&str>) {
    match (slot.as_mut(), value) {
        (Some(buf), Some(v)) => {
            buf.clear();
            buf.push_str(v);
        }
        (_, v) => *slot = v.map(str::to_string),
    }
}

/// The `seq` a signed note claims to sign (unverified: to know which
/// rows' hashes to keep for the check).
pub fn claimed_seq(note: &str) -> Option<i64> {
    note.lines().nth(1)?.parse().ok()
}

/// A checkpoint from outside the database (a log line, a checkpoint file).
#[derive(Debug, Clone)]
pub struct External {
    pub node: String,
    pub note: String,
    /// Where it was read (`FILE:LINE`), for the report.
    pub from: String,
}

/// Which keys a checkpoint may be signed with.
#[derive(Debug, Clone)]
pub enum Keys {
    /// Given by the verifier (`--key`): nothing else counts.
    Pinned(Vec<VerifyingKey>),
    /// The key each checkpoint names (the database's word for it).
    Stated,
}

/// A verified prune record: rows before `first_seq` were deleted.
struct PruneClaim {
    seq: i64,
    hash: String,
    id: i64,
    info: Pruned,
}

pub struct Walker {
    node: String,
    keys: Keys,
    /// The head is not checked (the walk starts mid-chain: `--since`).
    from_middle: bool,
    report: NodeReport,
    /// The row before.
    prev: Option<Prev>,
    /// `(seq, id, prev_hash)` of the first row.
    first: Option<(i64, i64, Option<String>)>,
    broken: bool,
    /// Rows whose hashes a checkpoint names: `seq` -> `(id, hash)`.
    wanted: HashMap<i64, Option<(i64, String)>>,
    prunes: Vec<PruneClaim>,
    /// Keys seen on verified checkpoints (OpenSSH format).
    stated: Vec<VerifyingKey>,
    /// The newest `seq` a verified checkpoint of the walk signed.
    signed_to: i64,
    omitted: usize,
    /// The newest verified anchor of the rows from before the chain, and
    /// the checkpoint row that signed it.
    anchor: Option<(i64, Anchor)>,
    /// Where each row's canonical encoding is built, reused.
    scratch: Vec<u8>,
}

impl Walker {
    /// `want`: the `seq`s whose hashes checkpoints name (prune records read
    /// beforehand, checkpoints from outside).
    pub fn new(
        node: &str,
        keys: Keys,
        from_middle: bool,
        want: impl IntoIterator<Item = i64>,
    ) -> Self {
        Walker {
            node: node.to_string(),
            keys,
            from_middle,
            report: NodeReport::new(node),
            prev: None,
            first: None,
            broken: false,
            wanted: want.into_iter().map(|s| (s, None)).collect(),
            prunes: Vec::new(),
            stated: Vec::new(),
            signed_to: 0,
            omitted: 0,
            anchor: None,
            scratch: Vec::new(),
        }
    }

    /// The newest verified anchor of the rows from before the chain, with
    /// the id of the checkpoint row that signed it.
    pub fn anchor(&self) -> Option<&(i64, Anchor)> {
        self.anchor.as_ref()
    }

    pub fn report_mut(&mut self) -> &mut NodeReport {
        &mut self.report
    }

    fn problem(&mut self, p: Problem) {
        if self.report.problems.len() < MAX_PROBLEMS {
            self.report.problems.push(p);
        } else {
            self.omitted += 1;
        }
    }

    pub fn push(&mut self, row: RowRef<'_>) {
        self.report.rows += 1;
        self.report.last_seq = Some(row.seq);
        if self.first.is_none() {
            self.report.first_seq = Some(row.seq);
            self.first = Some((row.seq, row.id, row.prev_hash.map(str::to_string)));
        }
        if !self.broken
            && let Some(p) = check(
                &self.node,
                &row,
                self.prev.as_ref(),
                self.from_middle,
                &mut self.scratch,
            )
        {
            self.problem(p);
            // Past the first divergence every link is suspect: report
            // that one, keep counting.
            self.broken = true;
        }
        if row.is_checkpoint() {
            self.checkpoint(&row);
        }
        if let Some(slot) = self.wanted.get_mut(&row.seq) {
            *slot = row.hash.map(|h| (row.id, h.to_string()));
        }
        match &mut self.prev {
            Some(p) => {
                (p.seq, p.id) = (row.seq, row.id);
                set_text(&mut p.hash, row.hash);
            }
            None => {
                self.prev = Some(Prev {
                    seq: row.seq,
                    id: row.id,
                    hash: row.hash.map(str::to_string),
                });
            }
        }
    }

    /// Check a checkpoint row's signature and what it signs.
    fn checkpoint(&mut self, row: &RowRef<'_>) {
        let bad = |message: String| Problem::event(row, ProblemKind::BadSignature, message);
        let detail: Value = serde_json::from_str(row.detail).unwrap_or(Value::Null);
        let Some(note) = detail["note"].as_str() else {
            let p = bad(format!("checkpoint row {} carries no signed note", row.id));
            return self.problem(p);
        };
        let verified = match &self.keys {
            Keys::Pinned(keys) => checkpoint::verify(note, &self.node, keys),
            Keys::Stated => VerifyingKey::parse(detail["key"].as_str().unwrap_or_default())
                .and_then(|k| {
                    let v = checkpoint::verify(note, &self.node, std::slice::from_ref(&k))?;
                    if !self.stated.contains(&k) {
                        self.stated.push(k);
                    }
                    Ok(v)
                }),
        };
        let v = match verified {
            Ok(v) => v,
            Err(e) => {
                return self.problem(bad(format!(
                    "checkpoint row {} (seq {}): {e}",
                    row.id, row.seq
                )));
            }
        };
        if let Some(a) = v.extension("unchained").and_then(Anchor::parse) {
            self.anchor = Some((row.id, a));
        }
        if row.is_prune_checkpoint() {
            let info = prune_info(&v, row);
            match info {
                Some(info) => self.prunes.push(PruneClaim {
                    seq: v.seq,
                    hash: v.hash,
                    id: row.id,
                    info,
                }),
                None => self.problem(bad(format!(
                    "checkpoint row {} is a prune record without a readable prune line",
                    row.id
                ))),
            }
            return;
        }
        let prev = self.prev.as_ref().filter(|p| p.seq == row.seq - 1);
        if v.seq != row.seq - 1 || prev.and_then(|p| p.hash.as_deref()) != Some(v.hash.as_str()) {
            let p = Problem::event(
                row,
                ProblemKind::CheckpointMismatch,
                format!(
                    "checkpoint row {} (seq {}) signs seq {} with a hash the chain does not have there: \
                     the rows it covers were changed",
                    row.id, row.seq, v.seq
                ),
            );
            return self.problem(p);
        }
        // Its own row holds the signature of everything before it.
        self.signed_to = self.signed_to.max(row.seq);
        self.report.checkpoints += 1;
        self.report.last_checkpoint = Some(serde_json::json!({
            "id": row.id,
            "seq": v.seq,
            "time": v.extension("time"),
        }));
    }

    /// Hold the chain's ends against the checkpoints and give the report.
    pub fn finish(mut self, external: &[External]) -> NodeReport {
        self.check_head();
        for c in external {
            if c.node == self.node {
                self.external(c);
            }
        }
        if self.omitted > 0 {
            let last = self.report.problems.last().cloned();
            if let Some(mut p) = last {
                p.message = format!("... and {} more problems", self.omitted);
                self.report.problems.push(p);
            }
        }
        self.report.keys = match &self.keys {
            Keys::Pinned(_) => Vec::new(),
            Keys::Stated => self.stated.iter().map(|k| k.openssh.clone()).collect(),
        };
        if let Some(last) = self.report.last_seq {
            self.report.unsigned_rows =
                last - self.signed_to.max(self.report.first_seq.unwrap_or(1) - 1);
        }
        self.report
    }

    /// A chain that starts above seq 1 must have a signed prune record that
    /// names exactly its first row's predecessor.
    fn check_head(&mut self) {
        let first = self.first.clone();
        let prunes = std::mem::take(&mut self.prunes);
        for c in &prunes {
            // A prune whose rows are (still) here: its hash must match.
            if let Some(Some((id, hash))) = self.wanted.get(&c.seq)
                && *hash != c.hash
            {
                let p = Problem {
                    id: c.id,
                    table: EVENTS,
                    row: id.to_string(),
                    seq: Some(c.seq),
                    problem: ProblemKind::CheckpointMismatch,
                    message: format!(
                        "row {id} (seq {}) differs from what prune record row {} signed for it",
                        c.seq, c.id
                    ),
                };
                self.problem(p);
            }
        }
        let Some((seq, id, prev_hash)) = first else {
            return;
        };
        if seq <= 1 || self.from_middle {
            return;
        }
        match prunes
            .iter()
            .rev()
            .find(|c| c.seq == seq - 1 && Some(&c.hash) == prev_hash.as_ref())
        {
            Some(c) => self.report.pruned.push(c.info.clone()),
            None => {
                let p = Problem {
                    id,
                    table: EVENTS,
                    row: id.to_string(),
                    seq: Some(seq),
                    problem: ProblemKind::HeadDeleted,
                    message: format!(
                        "the chain starts at row {id} (seq {seq}): seq 1 to {} are missing and no \
                         signed prune record explains it: the oldest rows were deleted",
                        seq - 1
                    ),
                };
                self.problem(p);
            }
        }
    }

    /// A checkpoint from outside: the chain must still hold what it signed.
    fn external(&mut self, c: &External) {
        let keys = match &self.keys {
            Keys::Pinned(k) => k.clone(),
            Keys::Stated => self.stated.clone(),
        };
        let problem = |kind, message| Problem {
            id: 0,
            table: "checkpoints",
            row: c.from.clone(),
            seq: None,
            problem: kind,
            message,
        };
        let v = match checkpoint::verify(&c.note, &self.node, &keys) {
            Ok(v) => v,
            Err(e) => {
                let p = problem(
                    ProblemKind::BadSignature,
                    format!("the checkpoint from {}: {e}", c.from),
                );
                return self.problem(p);
            }
        };
        let last = self.report.last_seq.unwrap_or(0);
        if v.seq > last {
            let p = Problem {
                seq: Some(v.seq),
                ..problem(
                    ProblemKind::Truncated,
                    format!(
                        "the chain ends at seq {last}, but the checkpoint from {} signs seq {}: \
                         rows {} to {} were deleted",
                        c.from,
                        v.seq,
                        last + 1,
                        v.seq
                    ),
                )
            };
            return self.problem(p);
        }
        self.report.complete_to = Some(self.report.complete_to.unwrap_or(0).max(v.seq));
        if let Some(Some((id, hash))) = self.wanted.get(&v.seq)
            && *hash != v.hash
        {
            let p = Problem {
                id: *id,
                table: EVENTS,
                row: id.to_string(),
                seq: Some(v.seq),
                problem: ProblemKind::CheckpointMismatch,
                message: format!(
                    "row {id} (seq {}) differs from what the checkpoint from {} signed for it: \
                     the chain was rewritten",
                    v.seq, c.from
                ),
            };
            self.problem(p);
        }
    }
}

/// The `prune FIRST_SEQ BEFORE RULE...` line of a prune record.
fn prune_info(v: &checkpoint::Verified, row: &RowRef<'_>) -> Option<Pruned> {
    let mut parts = v.extension("prune")?.splitn(3, ' ');
    let first_seq: i64 = parts.next()?.parse().ok()?;
    (first_seq == v.seq + 1).then(|| Pruned {
        first_seq,
        before: parts.next().unwrap_or_default().to_string(),
        rule: parts.next().unwrap_or_default().to_string(),
        at: v.extension("time").unwrap_or_default().to_string(),
        id: row.id,
    })
}

/// The first thing wrong with `row`, given the row before it in the chain.
fn check(
    node: &str,
    row: &RowRef<'_>,
    prev: Option<&Prev>,
    from_middle: bool,
    scratch: &mut Vec<u8>,
) -> Option<Problem> {
    let problem = |kind: ProblemKind, message: String| Some(Problem::event(row, kind, message));
    let (id, seq) = (row.id, row.seq);
    if let Some(p) = prev
        && p.seq == seq
    {
        let prev_id = p.id;
        return problem(
            ProblemKind::DuplicateSeq,
            format!("row {id} has seq {seq}, as row {prev_id} has: a forged or copied row"),
        );
    }
    if seq < 1 {
        return problem(
            ProblemKind::BadSeq,
            format!("row {id} has seq {seq}: sequence numbers start at 1"),
        );
    }
    let computed = row.computed_hash(node, scratch);
    if computed.is_none() || computed.as_ref().map(HexDigest::as_str) != row.hash {
        return problem(
            ProblemKind::HashMismatch,
            format!(
                "row {id} (seq {seq}): its hash does not match its content: the row was changed"
            ),
        );
    }
    let stored_prev = row.prev_hash.unwrap_or_default();
    match prev {
        Some(Prev {
            seq: prev_seq,
            id: prev_id,
            hash: prev_hash,
        }) => {
            if seq > prev_seq + 1 {
                let missing = if seq == prev_seq + 2 {
                    format!("seq {} is", prev_seq + 1)
                } else {
                    format!("seq {} to {} are", prev_seq + 1, seq - 1)
                };
                return problem(
                    ProblemKind::SeqGap,
                    format!(
                        "row {id} (seq {seq}) follows row {prev_id} (seq {prev_seq}): \
                         {missing} missing: rows were deleted"
                    ),
                );
            }
            if Some(stored_prev) != prev_hash.as_deref() {
                return problem(
                    ProblemKind::PrevHashMismatch,
                    format!(
                        "row {id} (seq {seq}) does not link to row {prev_id} (seq {prev_seq}) \
                         before it: rows were reordered, replaced or inserted"
                    ),
                );
            }
        }
        None if seq == 1 && stored_prev != GENESIS && !from_middle => {
            return problem(
                ProblemKind::PrevHashMismatch,
                format!(
                    "row {id} (seq 1) starts the chain but its prev_hash is not the genesis \
                     value: rows were reordered, replaced or inserted"
                ),
            );
        }
        None => {}
    }
    None
}
