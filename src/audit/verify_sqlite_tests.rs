//! `audit verify` on SQLite reads the chain straight from the file
//! ([`crate::audit::verify_sqlite`]); it must report exactly what the pool
//! reader reports, on an intact chain and on tampered ones.

use super::*;
use crate::audit::checkpoint::VerifyingKey;
use crate::audit::verify::{self, ChainReader, Options, ProblemKind, Report, VerifyError};

/// Signing key seed of the chains here.
const SEED: u8 = 7;

/// `n` events of `node`, in batches, signed with a checkpoint about every
/// 100 events.
async fn signed_chain(store: &Store, node: &str, n: usize) {
    let (audit, writer) =
        Audit::start_signed(store.clone(), node.into(), Checkpoints::for_test(SEED, 100));
    super::chain_tests::write_events_with(audit, writer, n).await;
}

/// The id of `node`'s row with `seq`.
async fn id_at(store: &Store, node: &str, seq: i64) -> i64 {
    sqlx::query("SELECT id FROM audit_events WHERE node = $1 AND seq = $2")
        .bind(node)
        .bind(seq)
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get("id")
}

async fn exec(store: &Store, query: &'static str, id: i64) {
    sqlx::query(query)
        .bind(id)
        .execute(store.pool())
        .await
        .unwrap();
}

/// Verify with each reader; both reports, after asserting they are equal.
async fn both_readers(store: &Store, options: Options) -> Report {
    let direct = Options {
        reader: ChainReader::Direct,
        ..options.clone()
    };
    let pool = Options {
        reader: ChainReader::Pool,
        ..options
    };
    let a = verify::verify_with(store, &direct).await.unwrap();
    let b = verify::verify_with(store, &pool).await.unwrap();
    assert_eq!(a, b, "the SQLite reader and the pool reader disagree");
    a
}

/// A changed row, a deleted row and two reordered rows, each in a chain of
/// its own longer than one page (1000 rows), next to an intact chain:
/// the same reports from both readers, with keys pinned and stated, from
/// the head and from the middle (`--since`).
#[tokio::test]
async fn the_sqlite_reader_reports_what_the_pool_reader_reports() {
    let db = TestDb::sqlite();
    let store = Store::open(&db.url).await.unwrap();
    assert!(store.sqlite_file().is_some(), "the direct reader is in use");
    for node in [
        "node-changed",
        "node-deleted",
        "node-intact",
        "node-reordered",
    ] {
        signed_chain(&store, node, 1200).await;
    }

    let changed = id_at(&store, "node-changed", 1050).await;
    exec(
        &store,
        "UPDATE audit_events SET detail = '{\"i\":-1}' WHERE id = $1",
        changed,
    )
    .await;
    let deleted = id_at(&store, "node-deleted", 700).await;
    exec(&store, "DELETE FROM audit_events WHERE id = $1", deleted).await;
    // Rows 500 and 501 trade places in seq order (through a free seq: the
    // unique index on (node, seq) holds at every step).
    let (a, b) = (
        id_at(&store, "node-reordered", 500).await,
        id_at(&store, "node-reordered", 501).await,
    );
    exec(
        &store,
        "UPDATE audit_events SET seq = -500 WHERE id = $1",
        a,
    )
    .await;
    exec(&store, "UPDATE audit_events SET seq = 500 WHERE id = $1", b).await;
    exec(&store, "UPDATE audit_events SET seq = 501 WHERE id = $1", a).await;

    let key = VerifyingKey::parse(Checkpoints::for_test(SEED, 1).signer.public_openssh()).unwrap();
    let pinned = Options {
        keys: vec![key],
        ..Options::default()
    };
    let r = both_readers(&store, pinned).await;
    let stated = both_readers(&store, Options::default()).await;
    assert_eq!(r.nodes.len(), 4);
    assert!(!r.intact && !stated.intact);
    let found: Vec<(&str, Vec<ProblemKind>)> = r
        .nodes
        .iter()
        .map(|n| {
            assert!(n.checkpoints >= 10, "{n:#?}");
            (
                n.node.as_str(),
                n.problems.iter().map(|p| p.problem).collect(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("node-changed", vec![ProblemKind::HashMismatch]),
            ("node-deleted", vec![ProblemKind::SeqGap]),
            ("node-intact", vec![]),
            ("node-reordered", vec![ProblemKind::HashMismatch]),
        ]
    );
    assert_eq!(r.nodes[0].problems[0].id, changed);
    assert_eq!(r.nodes[3].problems[0].id, b);

    let mid = sqlx::query("SELECT at FROM audit_events WHERE node = 'node-intact' AND seq = 600")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get::<i64, _>("at");
    let since = both_readers(
        &store,
        Options {
            node: Some("node-intact".into()),
            since: Some(mid),
            ..Options::default()
        },
    )
    .await;
    assert!(since.intact, "{since:#?}");
    store.close().await;
}

/// A chained row whose column holds a value of another type than the
/// schema's cannot be checked: both readers refuse it rather than guess.
#[tokio::test]
async fn a_value_of_the_wrong_type_is_refused_by_both_readers() {
    let db = TestDb::sqlite();
    let store = Store::open(&db.url).await.unwrap();
    signed_chain(&store, "node-t", 20).await;
    let id = id_at(&store, "node-t", 10).await;
    exec(
        &store,
        "UPDATE audit_events SET at = 'yesterday' WHERE id = $1",
        id,
    )
    .await;
    for reader in [ChainReader::Direct, ChainReader::Pool] {
        let options = Options {
            reader,
            ..Options::default()
        };
        let e = verify::verify_with(&store, &options).await.unwrap_err();
        if reader == ChainReader::Direct {
            assert!(
                matches!(e, VerifyError::Column { id: i, column: "at", .. } if i == id),
                "{e}"
            );
        }
    }
    store.close().await;
}
