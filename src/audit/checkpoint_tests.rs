//! Signed checkpoints (DESIGN.md §11, docs/AUDIT.md "Signed checkpoints"):
//! what the writer signs, and what `audit verify` finds with them after
//! tampering by SQL, with and without checkpoints from outside and pinned
//! keys; exports verified on their own.

use super::*;
use crate::audit::chain::{self, ChainFields};
use crate::audit::checkpoint::VerifyingKey;
use crate::audit::export::{self, Range};
use crate::audit::verify::{self, NodeReport, Options, ProblemKind};
use crate::audit::walk::External;

/// `n` events of `node`, each stored before the next is sent (so every
/// batch holds one and a checkpoint comes exactly every `every`), through a
/// writer signing with `seed`'s key.
async fn signed_events(store: &Store, node: &str, n: usize, seed: u8, every: u64) {
    let (audit, writer) = Audit::start_signed(
        store.clone(),
        node.into(),
        Checkpoints::for_test(seed, every),
    );
    for i in 0..n {
        let ev = Event::new(EventKind::AuthFailure)
            .connection(&format!("c{i}"), source())
            .user("alice")
            .reason(AuthFailure::UnknownKey)
            .detail("i", i);
        assert!(audit.record(ev).await, "event {i} not stored");
    }
    flush(audit, writer).await;
}

fn key(seed: u8) -> VerifyingKey {
    VerifyingKey::parse(Checkpoints::for_test(seed, 1).signer.public_openssh()).unwrap()
}

/// (id, seq, reason, detail) of the node's checkpoint rows.
async fn checkpoint_rows(store: &Store, node: &str) -> Vec<(i64, i64, String, Value)> {
    sqlx::query(
        "SELECT id, seq, reason, detail FROM audit_events WHERE node = $1 AND kind = 'audit.checkpoint' ORDER BY seq",
    )
    .bind(node)
    .fetch_all(store.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let detail: String = r.get("detail");
        (
            r.get("id"),
            r.get("seq"),
            r.get("reason"),
            serde_json::from_str(&detail).unwrap(),
        )
    })
    .collect()
}

async fn report_with(store: &Store, options: Options) -> NodeReport {
    let mut r = verify::verify_with(store, &options).await.unwrap();
    assert_eq!(r.nodes.len(), 1, "{r:#?}");
    r.nodes.remove(0)
}

fn only(node: &str) -> Options {
    Options {
        node: Some(node.into()),
        ..Options::default()
    }
}

#[track_caller]
fn assert_one(r: &NodeReport, kind: ProblemKind) -> &verify::Problem {
    assert_eq!(r.problems.len(), 1, "{r:#?}");
    assert_eq!(r.problems[0].problem, kind, "{r:#?}");
    &r.problems[0]
}

#[tokio::test]
async fn the_writer_signs_every_n_events_and_as_it_stops() {
    on_each_store(|store| async move {
        signed_events(&store, "node-s", 25, 1, 10).await;
        let cps = checkpoint_rows(&store, "node-s").await;
        let at: Vec<(i64, &str)> = cps.iter().map(|c| (c.1, c.2.as_str())).collect();
        // 10 events, a checkpoint (seq 11); 10 more (12-21), one (22); the
        // last 5 (23-27), and the one as the writer stopped (28).
        assert_eq!(
            at,
            [
                (11, "checkpoint_events"),
                (22, "checkpoint_events"),
                (28, "checkpoint_shutdown")
            ]
        );
        for (_, seq, _, detail) in &cps {
            assert_eq!(
                detail["seq"],
                seq - 1,
                "a checkpoint signs the row before it"
            );
            let note = detail["note"].as_str().unwrap();
            assert!(
                note.starts_with(&format!("portvakt/node-s\n{}\n", seq - 1)),
                "{note}"
            );
            assert_eq!(detail["key"], key(1).openssh);
        }
        let r = report_with(&store, only("node-s")).await;
        assert!(r.problems.is_empty(), "{r:#?}");
        assert_eq!((r.checkpoints, r.unsigned_rows), (3, 0), "{r:#?}");
        assert_eq!(r.keys, [key(1).openssh]);
        // Pinned to the right key: the same; to another: every checkpoint fails.
        let pinned = Options {
            keys: vec![key(1)],
            ..only("node-s")
        };
        let r = report_with(&store, pinned).await;
        assert!(r.problems.is_empty() && r.keys.is_empty(), "{r:#?}");
        let wrong = Options {
            keys: vec![key(2)],
            ..only("node-s")
        };
        let r = report_with(&store, wrong).await;
        assert_eq!(r.problems.len(), 3, "{r:#?}");
        assert!(
            r.problems
                .iter()
                .all(|p| p.problem == ProblemKind::BadSignature)
        );
        assert_eq!(r.checkpoints, 0);
        // An idle writer signs nothing more.
        let (audit, writer) =
            Audit::start_signed(store.clone(), "node-s".into(), Checkpoints::for_test(1, 10));
        flush(audit, writer).await;
        assert_eq!(checkpoint_rows(&store, "node-s").await.len(), 3);
    })
    .await;
}

#[tokio::test]
async fn a_chain_re_signed_with_another_key_is_caught_with_the_pinned_key() {
    on_each_store(|store| async move {
        signed_events(&store, "node-k", 5, 1, 1000).await;
        // Someone with the database and a key of their own goes on.
        signed_events(&store, "node-k", 5, 9, 1000).await;
        let r = report_with(&store, only("node-k")).await;
        assert!(r.problems.is_empty(), "{r:#?}");
        assert_eq!(
            r.keys,
            [key(1).openssh, key(9).openssh],
            "both keys are shown"
        );
        let pinned = Options {
            keys: vec![key(1)],
            ..only("node-k")
        };
        let r = report_with(&store, pinned).await;
        let p = assert_one(&r, ProblemKind::BadSignature);
        let last = checkpoint_rows(&store, "node-k").await.last().unwrap().0;
        assert_eq!(p.id, last, "{r:#?}");
    })
    .await;
}

#[tokio::test]
async fn a_tail_cut_off_is_caught_only_with_checkpoints_from_outside() {
    on_each_store(|store| async move {
        signed_events(&store, "node-t", 30, 1, 10).await;
        let cps = checkpoint_rows(&store, "node-t").await;
        let newest = cps.last().unwrap();
        let outside = External {
            node: "node-t".into(),
            note: newest.3["note"].as_str().unwrap().into(),
            from: "log.jsonl:7".into(),
        };
        // Cut the chain after the second checkpoint (its last rows and the
        // newest checkpoint go).
        let cut = cps[1].1;
        super::chain_tests::sql(
            &store,
            "DELETE FROM audit_events WHERE node = $1 AND seq > $2",
            "node-t",
            cut,
        )
        .await;
        let r = report_with(&store, only("node-t")).await;
        assert!(
            r.problems.is_empty(),
            "the database alone cannot tell: {r:#?}"
        );
        let with = Options {
            checkpoints: vec![outside.clone()],
            ..only("node-t")
        };
        let r = report_with(&store, with).await;
        let p = assert_one(&r, ProblemKind::Truncated);
        assert_eq!(p.row, "log.jsonl:7");
        assert!(p.message.contains(&format!("ends at seq {cut}")), "{p:?}");
        // A forged note is refused, not trusted.
        let signed = newest.1 - 1;
        let forged = External {
            note: outside.note.replacen(
                &format!("\n{signed}\n"),
                &format!("\n{}\n", signed + 1),
                1,
            ),
            ..outside
        };
        assert_ne!(forged.note, outside.note);
        let r = report_with(
            &store,
            Options {
                checkpoints: vec![forged],
                ..only("node-t")
            },
        )
        .await;
        assert_one(&r, ProblemKind::BadSignature);
    })
    .await;
}

#[tokio::test]
async fn a_chain_rewritten_with_honest_hashes_breaks_its_checkpoint() {
    on_each_store(|store| async move {
        signed_events(&store, "node-w", 12, 1, 10).await;
        // Change row 3 and recompute every hash after it, as anyone can.
        super::chain_tests::sql(
            &store,
            "UPDATE audit_events SET detail = '{}' WHERE node = $1 AND seq = $2",
            "node-w",
            3,
        )
        .await;
        let rows = sqlx::query(
            "SELECT id, seq, at, kind, user_name, source, connection_id, reason, detail, prev_hash \
             FROM audit_events WHERE node = 'node-w' AND seq >= 3 ORDER BY seq",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        let mut prev: String = rows[0].get("prev_hash");
        for r in &rows {
            let (detail, kind): (String, String) = (r.get("detail"), r.get("kind"));
            let (user, src, conn, reason): (
                Option<String>,
                Option<String>,
                Option<String>,
                Option<String>,
            ) = (
                r.get("user_name"),
                r.get("source"),
                r.get("connection_id"),
                r.get("reason"),
            );
            let hash = chain::row_hash(&ChainFields {
                node: "node-w",
                seq: r.get("seq"),
                at: r.get("at"),
                kind: &kind,
                user: user.as_deref(),
                source: src.as_deref(),
                connection_id: conn.as_deref(),
                reason: reason.as_deref(),
                detail: &detail,
                prev_hash: &prev,
            });
            sqlx::query("UPDATE audit_events SET prev_hash = $1, hash = $2 WHERE id = $3")
                .bind(&prev)
                .bind(&hash)
                .bind(r.get::<i64, _>("id"))
                .execute(store.pool())
                .await
                .unwrap();
            prev = hash;
        }
        let r = report_with(&store, only("node-w")).await;
        let first_cp = checkpoint_rows(&store, "node-w").await[0].0;
        let p = &r.problems[0];
        assert_eq!(
            (p.problem, p.id),
            (ProblemKind::CheckpointMismatch, first_cp),
            "{r:#?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_deleted_checkpoint_row_is_a_gap() {
    on_each_store(|store| async move {
        signed_events(&store, "node-d", 25, 1, 10).await;
        let cp = checkpoint_rows(&store, "node-d").await[0].clone();
        super::chain_tests::sql(
            &store,
            "DELETE FROM audit_events WHERE node = $1 AND seq = $2",
            "node-d",
            cp.1,
        )
        .await;
        let r = report_with(&store, only("node-d")).await;
        let p = &r.problems[0];
        assert_eq!(p.problem, ProblemKind::SeqGap, "{r:#?}");
        assert!(
            p.message.contains(&format!("seq {} is missing", cp.1)),
            "{p:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn an_export_verifies_on_its_own_and_edits_of_it_are_caught() {
    on_each_store(|store| async move {
        signed_events(&store, "node-e", 15, 1, 10).await;
        let mut out = Vec::new();
        let wrote = export::export(&store, &Range::default(), &mut out)
            .await
            .unwrap();
        assert_eq!(
            wrote,
            export::Exported {
                rows: 17,
                unsigned: 0
            }
        );
        let text = String::from_utf8(out).unwrap();
        let verify = |text: &str, keys: &[VerifyingKey]| {
            export::verify_file(text.as_bytes(), "export.jsonl", keys, &[]).unwrap()
        };
        let r = verify(&text, &[key(1)]);
        assert!(r.intact, "{r:#?}");
        assert_eq!((r.nodes[0].rows, r.nodes[0].checkpoints), (17, 2));
        // Another key: nothing in it is signed.
        let r = verify(&text, &[key(2)]);
        assert!(!r.intact);
        // An edited row.
        let edited = text.replacen("\\\"i\\\":4}", "\\\"i\\\":40}", 1);
        assert_ne!(edited, text);
        let r = verify(&edited, &[key(1)]);
        assert_eq!(
            r.nodes[0].problems[0].problem,
            ProblemKind::HashMismatch,
            "{r:#?}"
        );
        // Rows appended after the last checkpoint prove nothing.
        let lines: Vec<&str> = text.lines().collect();
        let last_row: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        let mut extra = last_row.clone();
        extra["seq"] = json!(last_row["seq"].as_i64().unwrap() + 1);
        extra["prev_hash"] = last_row["hash"].clone();
        extra["kind"] = json!("auth.success");
        extra["reason"] = Value::Null;
        extra["detail"] = json!("{}");
        let hash = chain::row_hash(&ChainFields {
            node: "node-e",
            seq: extra["seq"].as_i64().unwrap(),
            at: extra["at"].as_i64().unwrap(),
            kind: "auth.success",
            user: extra["user_name"].as_str(),
            source: extra["source"].as_str(),
            connection_id: extra["connection_id"].as_str(),
            reason: None,
            detail: "{}",
            prev_hash: last_row["hash"].as_str().unwrap(),
        });
        extra["hash"] = json!(hash);
        let appended = format!("{text}{extra}\n");
        let r = verify(&appended, &[key(1)]);
        let p = &r.nodes[0].problems;
        assert_eq!(p.len(), 1, "{r:#?}");
        assert_eq!(p[0].problem, ProblemKind::Unsigned);
        // Not an export at all.
        assert!(export::verify_file(&b"{\"x\":1}\n"[..], "x", &[key(1)], &[]).is_err());
    })
    .await;
}

#[tokio::test]
async fn checkpoints_leave_the_host_through_the_checkpoint_file_and_the_interval() {
    on_each_store(|store| async move {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("checkpoints.jsonl");
        let mut cfg = Checkpoints::for_test(1, 1_000_000);
        cfg.file = Some(file.clone());
        cfg.interval = Duration::from_millis(100);
        let (audit, writer) = Audit::start_signed(store.clone(), "node-f".into(), cfg);
        audit.emit(Event::new(EventKind::AuthSuccess).user("alice"));
        // The interval, not the count, signs this one: wait for its row.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while checkpoint_rows(&store, "node-f").await.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "no interval checkpoint"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            checkpoint_rows(&store, "node-f").await[0].2,
            "checkpoint_interval"
        );
        flush(audit, writer).await;
        let found = export::read_checkpoints(
            std::io::BufReader::new(std::fs::File::open(&file).unwrap()),
            "checkpoints.jsonl",
        )
        .unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].from, "checkpoints.jsonl:1");
        let r = report_with(
            &store,
            Options {
                checkpoints: found,
                keys: vec![key(1)],
                ..only("node-f")
            },
        )
        .await;
        assert!(r.problems.is_empty(), "{r:#?}");
        assert_eq!(r.complete_to, Some(1));
    })
    .await;
}

#[tokio::test]
async fn the_first_checkpoint_anchors_the_rows_from_before_the_chain() {
    on_each_store(|store| async move {
        // As written by a portvakt without the chain (before migration 0005).
        for at in [1_000, 2_000, T0] {
            sqlx::query(
                "INSERT INTO audit_events (at, kind, node, detail) VALUES ($1, 'auth.failure', 'node-o', '{}')",
            )
            .bind(at)
            .execute(store.pool())
            .await
            .unwrap();
        }
        signed_events(&store, "node-o", 5, 1, 1000).await;
        let first = &checkpoint_rows(&store, "node-o").await[0];
        assert!(
            first.3["note"].as_str().unwrap().contains("\nunchained 3 "),
            "{first:?}"
        );
        let r = report_with(&store, only("node-o")).await;
        assert!(r.problems.is_empty(), "{r:#?}");
        assert_eq!((r.unchained, r.anchored), (3, Some(3)));

        // Retention deletes two of them, after signing the one left.
        let (audit, writer) =
            Audit::start_signed(store.clone(), "node-o".into(), Checkpoints::for_test(1, 1000));
        let pruned = crate::audit::prune(&audit, 1_000_000, "retention 30d")
            .await
            .unwrap();
        flush(audit, writer).await;
        assert_eq!(pruned.events, 2, "{pruned:?}");
        let r = report_with(&store, only("node-o")).await;
        assert!(r.problems.is_empty(), "{r:#?}");
        assert_eq!((r.unchained, r.anchored), (1, Some(1)));

        // The one left, changed by hand.
        sqlx::query("UPDATE audit_events SET detail = '{\"x\":1}' WHERE node = 'node-o' AND seq IS NULL")
            .execute(store.pool())
            .await
            .unwrap();
        let r = report_with(&store, only("node-o")).await;
        assert_one(&r, ProblemKind::UnchainedChanged);
    })
    .await;
}

/// One HTTP request read on `listener`, answered `200`: its body.
fn one_post(listener: std::net::TcpListener) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        use std::io::{BufRead, Read, Write};
        let (stream, _) = listener.accept().unwrap();
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let (mut length, mut request) = (0usize, String::new());
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if request.is_empty() {
                request = line.clone();
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        assert!(request.starts_with("POST /checkpoints "), "{request}");
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        (&stream)
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .unwrap();
        String::from_utf8(body).unwrap()
    })
}

#[tokio::test]
async fn each_checkpoint_is_posted_to_the_checkpoint_url() {
    on_each_store(|store| async move {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/checkpoints", listener.local_addr().unwrap());
        let received = one_post(listener);
        let mut cfg = Checkpoints::for_test(1, 1_000_000);
        cfg.url = Some(url);
        let (audit, writer) = Audit::start_signed(store.clone(), "node-h".into(), cfg);
        assert!(
            audit
                .record(Event::new(EventKind::AuthSuccess).user("alice"))
                .await
        );
        flush(audit, writer).await;
        // The POST leaves off the writer's path; the thread answers it.
        let body = tokio::task::spawn_blocking(move || received.join().unwrap())
            .await
            .unwrap();
        let posted: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(posted["event"], "audit.checkpoint");
        assert_eq!(posted["reason"], "checkpoint_shutdown");
        let found = export::read_checkpoints(format!("{body}\n").as_bytes(), "posted").unwrap();
        let r = report_with(
            &store,
            Options {
                checkpoints: found,
                keys: vec![key(1)],
                ..only("node-h")
            },
        )
        .await;
        assert!(r.problems.is_empty(), "{r:#?}");
        assert_eq!(r.complete_to, Some(1));
    })
    .await;
}

#[tokio::test]
async fn since_starts_mid_chain_and_checks_from_there() {
    on_each_store(|store| async move {
        let (audit, writer) = Audit::start_signed(
            store.clone(),
            "node-m".into(),
            Checkpoints::for_test(1, 1000),
        );
        for at in [1_000, 2_000, T0, T0 + 1] {
            assert!(audit.record(event_at(EventKind::AuthFailure, at)).await);
        }
        flush(audit, writer).await;
        // The old rows go by hand: from the start, the chain's head is missing...
        super::chain_tests::sql(
            &store,
            "DELETE FROM audit_events WHERE node = $1 AND seq <= $2",
            "node-m",
            2,
        )
        .await;
        let r = report_with(&store, only("node-m")).await;
        assert_one(&r, ProblemKind::HeadDeleted);
        // ...but --since T0 checks only what is at or after T0.
        let since = Options {
            since: Some(T0),
            ..only("node-m")
        };
        let r = report_with(&store, since).await;
        assert!(r.problems.is_empty(), "{r:#?}");
        assert_eq!((r.first_seq, r.rows, r.checkpoints), (Some(3), 3, 1));
    })
    .await;
}
