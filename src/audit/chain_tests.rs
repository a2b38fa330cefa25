//! The hash chain (DESIGN.md §11, docs/AUDIT.md "The hash chain"): what the
//! writer builds, and what `audit verify` finds after tampering by SQL.

use super::*;
use crate::audit::chain::{self, ChainFields, GENESIS};
use crate::audit::verify::{self, NodeReport, ProblemKind};

/// (id, seq, prev_hash, hash) of a node's chained rows, in seq order.
async fn chain_rows(store: &Store, node: &str) -> Vec<(i64, i64, String, String)> {
    sqlx::query(
        "SELECT id, seq, prev_hash, hash FROM audit_events WHERE node = $1 AND seq IS NOT NULL ORDER BY seq",
    )
    .bind(node)
    .fetch_all(store.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get("id"),
            r.get("seq"),
            r.get("prev_hash"),
            r.get("hash"),
        )
    })
    .collect()
}

/// The id of a node's row with `seq`.
async fn id_of(store: &Store, node: &str, seq: i64) -> i64 {
    chain_rows(store, node)
        .await
        .into_iter()
        .find(|r| r.1 == seq)
        .unwrap_or_else(|| panic!("no seq {seq} in {node}"))
        .0
}

/// `n` events of `node` through a writer of its own, in several batches:
/// every 100th is `record`ed, which waits until everything before is stored.
async fn write_events(store: &Store, node: &str, n: usize) {
    let (audit, writer) = Audit::start(store.clone(), node.into());
    write_events_with(audit, writer, n).await;
}

/// [`write_events`] through a given audit writer, which is then stopped.
pub(super) async fn write_events_with(audit: Audit, writer: tokio::task::JoinHandle<()>, n: usize) {
    for i in 0..n {
        let ev = Event::new(EventKind::AuthFailure)
            .connection(&format!("c{i}"), source())
            .user("alice")
            .reason(AuthFailure::UnknownKey)
            .detail("i", i);
        if i % 100 == 99 {
            assert!(audit.record(ev).await, "event {i} not stored");
        } else {
            audit.emit(ev);
        }
    }
    flush(audit, writer).await;
}

async fn report(store: &Store, node: &str) -> NodeReport {
    let mut r = verify::verify(store, Some(node)).await.unwrap();
    assert_eq!(r.nodes.len(), 1);
    r.nodes.remove(0)
}

/// The one problem `node` has, asserted to be `kind` at row `id`.
#[track_caller]
fn assert_problem(r: &NodeReport, kind: ProblemKind, id: i64) {
    assert_eq!(r.problems.len(), 1, "{r:#?}");
    let p = &r.problems[0];
    assert_eq!((p.problem, p.id), (kind, id), "{r:#?}");
    assert!(p.message.contains(&format!("row {id}")), "{p:?}");
}

pub(super) async fn sql(store: &Store, query: &'static str, a: &str, b: i64) {
    sqlx::query(query)
        .bind(a)
        .bind(b)
        .execute(store.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_chain_written_in_many_batches_is_gapless_and_verifies() {
    on_each_store(|store| async move {
        // More than one writer batch (256) and more than one verify page
        // (1000).
        write_events(&store, "node-a", 1200).await;
        let rows = chain_rows(&store, "node-a").await;
        let seqs: Vec<i64> = rows.iter().map(|r| r.1).collect();
        assert_eq!(seqs, (1..=1200).collect::<Vec<i64>>());
        assert_eq!(rows[0].2, GENESIS);
        for w in rows.windows(2) {
            assert_eq!(w[1].2, w[0].3, "seq {} does not link", w[1].1);
        }
        // A new writer of the node (a restart) goes on from the tail.
        write_events(&store, "node-a", 3).await;
        let r = report(&store, "node-a").await;
        assert!(r.problems.is_empty(), "{r:#?}");
        assert_eq!(
            (r.rows, r.first_seq, r.last_seq, r.unchained),
            (1203, Some(1), Some(1203), 0)
        );
        assert_eq!(r.last_checkpoint, None);
        assert!(verify::verify(&store, None).await.unwrap().intact);
    })
    .await;
}

#[tokio::test]
async fn every_hash_is_the_documented_encoding_of_the_stored_row() {
    on_each_store(|store| async move {
        write_events(&store, "node-a", 3).await;
        let rows = sqlx::query(
            "SELECT node, seq, at, kind, user_name, source, connection_id, reason, detail, prev_hash, hash \
             FROM audit_events ORDER BY seq",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        assert_eq!(rows.len(), 3);
        for r in &rows {
            let f = |c: &str| r.get::<Option<String>, _>(c);
            let (node, kind, detail, prev) = (
                f("node").unwrap(),
                f("kind").unwrap(),
                f("detail").unwrap(),
                f("prev_hash").unwrap(),
            );
            let want = chain::row_hash(&ChainFields {
                node: &node,
                seq: r.get("seq"),
                at: r.get("at"),
                kind: &kind,
                user: f("user_name").as_deref(),
                source: f("source").as_deref(),
                connection_id: f("connection_id").as_deref(),
                reason: f("reason").as_deref(),
                detail: &detail,
                prev_hash: &prev,
            });
            assert_eq!(f("hash").unwrap(), want);
        }
    })
    .await;
}

#[tokio::test]
async fn two_writers_of_two_nodes_on_one_database_verify_clean() {
    on_each_store(|store| async move {
        let (a, wa) = Audit::start(store.clone(), "node-a".into());
        let (b, wb) = Audit::start(store.clone(), "node-b".into());
        for i in 0..300 {
            a.emit(Event::new(EventKind::ConnectionOpen).detail("i", i));
            b.emit(Event::new(EventKind::ConnectionOpen).detail("i", i));
        }
        flush(a, wa).await;
        flush(b, wb).await;
        let r = verify::verify(&store, None).await.unwrap();
        assert!(r.intact, "{r:#?}");
        let nodes: Vec<(&str, i64, Option<i64>)> = r
            .nodes
            .iter()
            .map(|n| (n.node.as_str(), n.rows, n.last_seq))
            .collect();
        assert_eq!(
            nodes,
            vec![("node-a", 300, Some(300)), ("node-b", 300, Some(300))]
        );
    })
    .await;
}

#[tokio::test]
async fn rows_from_before_the_chain_are_reported_unchained() {
    on_each_store(|store| async move {
        // As written by a portvakt without the chain (before migration 0005).
        sqlx::query(
            "INSERT INTO audit_events (at, kind, node, detail) VALUES ($1, 'auth.failure', 'node-a', '{}')",
        )
        .bind(T0)
        .execute(store.pool())
        .await
        .unwrap();
        write_events(&store, "node-a", 5).await;
        let r = report(&store, "node-a").await;
        assert!(r.problems.is_empty(), "{r:#?}");
        assert_eq!((r.rows, r.first_seq, r.unchained), (5, Some(1), 1));
    })
    .await;
}

// ---- tampering ----

#[tokio::test]
async fn an_updated_detail_is_a_hash_mismatch_at_that_row() {
    on_each_store(|store| async move {
        write_events(&store, "node-t", 20).await;
        write_events(&store, "node-u", 5).await;
        let id = id_of(&store, "node-t", 10).await;
        sql(
            &store,
            "UPDATE audit_events SET detail = $1 WHERE id = $2",
            "{\"i\":999}",
            id,
        )
        .await;
        let all = verify::verify(&store, None).await.unwrap();
        assert!(!all.intact);
        assert_problem(&all.nodes[0], ProblemKind::HashMismatch, id);
        assert!(all.nodes[1].problems.is_empty(), "{all:#?}");
    })
    .await;
}

#[tokio::test]
async fn a_deleted_row_in_the_middle_is_a_seq_gap_at_the_next_row() {
    on_each_store(|store| async move {
        write_events(&store, "node-t", 20).await;
        let gone = id_of(&store, "node-t", 10).await;
        let next = id_of(&store, "node-t", 11).await;
        sql(
            &store,
            "DELETE FROM audit_events WHERE node = $1 AND id = $2",
            "node-t",
            gone,
        )
        .await;
        let r = report(&store, "node-t").await;
        assert_problem(&r, ProblemKind::SeqGap, next);
        assert!(
            r.problems[0].message.contains("seq 10 is missing"),
            "{r:#?}"
        );
        assert_eq!(r.rows, 19, "counting goes on past the break");
    })
    .await;
}

#[tokio::test]
async fn forged_rows_are_found() {
    on_each_store(|store| async move {
        for node in ["node-append", "node-dup", "node-null"] {
            write_events(&store, node, 20).await;
        }
        let forge = |node: &'static str, seq: Option<i64>, prev: String, hash: String| {
            let store = store.clone();
            async move {
                sqlx::query(
                    "INSERT INTO audit_events (at, kind, node, user_name, detail, seq, prev_hash, hash) \
                     VALUES ($1, 'auth.success', $2, 'mallory', '{}', $3, $4, $5) RETURNING id",
                )
                .bind(T0)
                .bind(node)
                .bind(seq)
                .bind(prev)
                .bind(hash)
                .fetch_one(store.pool())
                .await
                .unwrap()
                .get::<i64, _>("id")
            }
        };
        let honest = |node: &'static str, seq: i64, prev: &str| {
            chain::row_hash(&ChainFields {
                node,
                seq,
                at: T0,
                kind: "auth.success",
                user: Some("mallory"),
                source: None,
                connection_id: None,
                reason: None,
                detail: "{}",
                prev_hash: prev,
            })
        };

        // Appended after the tail with a hash that does not fit.
        let tail = chain_rows(&store, "node-append").await.pop().unwrap();
        let id = forge("node-append", Some(21), tail.3, "ab".repeat(32)).await;
        assert_problem(
            &report(&store, "node-append").await,
            ProblemKind::HashMismatch,
            id,
        );

        // In the middle, hashed by the documented encoding and linked to
        // the row before: the unique index refuses it, and when that is
        // dropped, verify still sees two rows with one seq.
        let before = chain_rows(&store, "node-dup").await[8].clone();
        assert_eq!(before.1, 9);
        let hash = honest("node-dup", 10, &before.3);
        let refused = sqlx::query(
            "INSERT INTO audit_events (at, kind, node, user_name, detail, seq, prev_hash, hash) \
             VALUES ($1, 'auth.success', 'node-dup', 'mallory', '{}', 10, $2, $3)",
        )
        .bind(T0)
        .bind(before.3.clone())
        .bind(hash.clone())
        .execute(store.pool())
        .await;
        assert!(refused.is_err(), "the unique index takes one row per (node, seq)");
        sqlx::query("DROP INDEX audit_events_chain")
            .execute(store.pool())
            .await
            .unwrap();
        let id = forge("node-dup", Some(10), before.3.clone(), hash).await;
        assert_problem(
            &report(&store, "node-dup").await,
            ProblemKind::DuplicateSeq,
            id,
        );

        // Without a seq, as if from before the chain, but written after.
        let id = forge("node-null", None, String::new(), String::new()).await;
        let r = report(&store, "node-null").await;
        assert_problem(&r, ProblemKind::UnchainedRow, id);
        assert_eq!(r.unchained, 1);

        let all = verify::verify(&store, None).await.unwrap();
        assert!(!all.intact);
        assert!(all.nodes.iter().all(|n| n.problems.len() == 1), "{all:#?}");
    })
    .await;
}

#[tokio::test]
async fn swapped_contents_of_two_rows_are_a_hash_mismatch_at_the_first() {
    on_each_store(|store| async move {
        write_events(&store, "node-t", 20).await;
        let (a, b) = (
            id_of(&store, "node-t", 10).await,
            id_of(&store, "node-t", 11).await,
        );
        let detail = |id: i64| {
            let store = store.clone();
            async move {
                sqlx::query("SELECT detail, connection_id FROM audit_events WHERE id = $1")
                    .bind(id)
                    .fetch_one(store.pool())
                    .await
                    .unwrap()
            }
        };
        let (ra, rb) = (detail(a).await, detail(b).await);
        for (id, r) in [(a, &rb), (b, &ra)] {
            sqlx::query("UPDATE audit_events SET detail = $1, connection_id = $2 WHERE id = $3")
                .bind(r.get::<String, _>("detail"))
                .bind(r.get::<String, _>("connection_id"))
                .bind(id)
                .execute(store.pool())
                .await
                .unwrap();
        }
        assert_problem(
            &report(&store, "node-t").await,
            ProblemKind::HashMismatch,
            a,
        );
    })
    .await;
}

/// A row replaced by one hashed by the documented encoding and linked to
/// the row before it: the row after no longer links.
#[tokio::test]
async fn a_replaced_row_with_an_honest_hash_breaks_the_next_link() {
    on_each_store(|store| async move {
        write_events(&store, "node-t", 20).await;
        let rows = chain_rows(&store, "node-t").await;
        let (nine, ten, eleven) = (&rows[8], &rows[9], &rows[10]);
        let hash = chain::row_hash(&ChainFields {
            node: "node-t",
            seq: 10,
            at: T0,
            kind: "auth.success",
            user: Some("mallory"),
            source: None,
            connection_id: None,
            reason: None,
            detail: "{}",
            prev_hash: &nine.3,
        });
        sqlx::query(
            "UPDATE audit_events SET at = $1, kind = 'auth.success', user_name = 'mallory', source = NULL, \
             connection_id = NULL, reason = NULL, detail = '{}', prev_hash = $2, hash = $3 WHERE id = $4",
        )
        .bind(T0)
        .bind(nine.3.clone())
        .bind(hash)
        .bind(ten.0)
        .execute(store.pool())
        .await
        .unwrap();
        let r = report(&store, "node-t").await;
        assert_problem(&r, ProblemKind::PrevHashMismatch, eleven.0);
    })
    .await;
}

// ---- the writer ----

/// A record the database refuses is retried, then written alone and
/// lost; it must take no seq with it.
#[tokio::test]
async fn a_refused_record_takes_no_seq() {
    on_each_store(|store| async move {
        let trigger = match store.backend() {
            Backend::Sqlite => vec![
                "CREATE TRIGGER refuse_marked BEFORE INSERT ON audit_events \
                 WHEN NEW.user_name = 'refused' BEGIN SELECT RAISE(ABORT, 'refused by test'); END",
            ],
            Backend::Postgres => vec![
                "CREATE FUNCTION refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 IF NEW.user_name = 'refused' THEN RAISE EXCEPTION 'refused by test'; END IF; \
                 RETURN NEW; END $$",
                "CREATE TRIGGER refuse_marked BEFORE INSERT ON audit_events \
                 FOR EACH ROW EXECUTE FUNCTION refuse_marked()",
            ],
        };
        for t in trigger {
            sqlx::raw_sql(t).execute(store.pool()).await.unwrap();
        }
        let (audit, writer) = Audit::start(store.clone(), "node-a".into());
        audit.emit(Event::new(EventKind::AuthFailure).user("alice"));
        audit.emit(Event::new(EventKind::AuthFailure).user("refused"));
        audit.emit(Event::new(EventKind::AuthFailure).user("bob"));
        assert!(
            !audit
                .record(Event::new(EventKind::AuthFailure).user("refused"))
                .await
        );
        assert!(
            audit
                .record(Event::new(EventKind::AuthFailure).user("carol"))
                .await
        );
        assert!(audit.dropped() >= 2);
        drop(audit);
        writer.await.unwrap();
        let users: Vec<(i64, String)> = sqlx::query(
            "SELECT seq, user_name FROM audit_events WHERE node = 'node-a' ORDER BY seq",
        )
        .fetch_all(store.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("seq"), r.get("user_name")))
        .collect();
        assert_eq!(
            users,
            vec![(1, "alice".into()), (2, "bob".into()), (3, "carol".into())]
        );
        let r = report(&store, "node-a").await;
        assert!(r.problems.is_empty(), "{r:#?}");
    })
    .await;
}

/// Another process appending to the same node (two `portvakt grants
/// revoke` at once write as "NODE (cli)"): the writer's tail is stale, the
/// unique index refuses its row, and the retry reads the tail again.
#[tokio::test]
async fn a_second_appender_of_one_node_is_caught_up_with() {
    on_each_store(|store| async move {
        let (first, w1) = Audit::start(store.clone(), "node-a (cli)".into());
        assert!(first.record(Event::new(EventKind::GrantRevoke)).await);
        // Started after the first's row: its tail is seq 1.
        let (second, w2) = Audit::start(store.clone(), "node-a (cli)".into());
        assert!(second.record(Event::new(EventKind::GrantRevoke)).await);
        // The first still believes the tail is seq 1.
        assert!(first.record(Event::new(EventKind::GrantRevoke)).await);
        flush(first, w1).await;
        flush(second, w2).await;
        let seqs: Vec<i64> = chain_rows(&store, "node-a (cli)")
            .await
            .iter()
            .map(|r| r.1)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        let r = report(&store, "node-a (cli)").await;
        assert!(r.problems.is_empty(), "{r:#?}");
    })
    .await;
}

// ---- retention ----

#[tokio::test]
async fn retention_prunes_a_signed_prefix_of_its_own_chain() {
    on_each_store(|store| async move {
        let old = 1_000;
        let young = T0;
        let (audit, writer) = Audit::start(store.clone(), "node-p".into());
        // `at` need not grow with seq: the old row after a young one stays
        // until the young one goes.
        for at in [old, old, young, old, young] {
            audit.emit(event_at(EventKind::AuthFailure, at));
        }
        flush(audit, writer).await;
        let (audit, writer) = Audit::start(store.clone(), "node-q".into());
        for at in [old, old, old] {
            audit.emit(event_at(EventKind::AuthFailure, at));
        }
        flush(audit, writer).await;
        let (audit, writer) = Audit::start_signed(
            store.clone(),
            "node-p".into(),
            Checkpoints::for_test(3, 1000),
        );
        let pruned = crate::audit::prune(&audit, 1_000_000, "retention 30d")
            .await
            .unwrap();
        assert_eq!(pruned.events, 2, "{pruned:?}");
        flush(audit, writer).await;
        let seqs = |node: &'static str| {
            let store = store.clone();
            async move {
                chain_rows(&store, node)
                    .await
                    .iter()
                    .map(|r| r.1)
                    .collect::<Vec<i64>>()
            }
        };
        // 6: the signed prune record; 7: the writer's checkpoint as it stopped.
        assert_eq!(seqs("node-p").await, vec![3, 4, 5, 6, 7]);
        // Another node's chain is that node's to prune.
        assert_eq!(seqs("node-q").await, vec![1, 2, 3]);
        let r = report(&store, "node-p").await;
        assert!(r.problems.is_empty(), "{r:#?}");
        assert_eq!(r.first_seq, Some(3));
        assert_eq!(r.pruned.len(), 1, "{r:#?}");
        assert_eq!(r.pruned[0].first_seq, 3);
        assert_eq!(r.pruned[0].rule, "retention 30d");
        // The chain goes on after the pruning.
        write_events(&store, "node-p", 2).await;
        assert_eq!(seqs("node-p").await, vec![3, 4, 5, 6, 7, 8, 9]);
        assert!(verify::verify(&store, None).await.unwrap().intact);
        // Deleting the oldest rows by hand is not pruning.
        sql(
            &store,
            "DELETE FROM audit_events WHERE node = $1 AND seq = $2",
            "node-p",
            3,
        )
        .await;
        let r = report(&store, "node-p").await;
        assert_problem(
            &r,
            ProblemKind::HeadDeleted,
            id_of(&store, "node-p", 4).await,
        );
    })
    .await;
}

#[tokio::test]
async fn without_a_signing_key_retention_keeps_the_chain_whole() {
    on_each_store(|store| async move {
        let (audit, writer) = Audit::start(store.clone(), "node-u".into());
        for at in [1_000, 1_000, T0] {
            audit.emit(event_at(EventKind::AuthFailure, at));
        }
        let pruned = crate::audit::prune(&audit, 1_000_000, "retention 30d")
            .await
            .unwrap();
        assert_eq!(pruned.events, 0, "{pruned:?}");
        flush(audit, writer).await;
        assert_eq!(chain_rows(&store, "node-u").await.len(), 3);
    })
    .await;
}
