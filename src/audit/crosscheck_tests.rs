//! `audit verify`'s cross-checks (docs/AUDIT.md "Cross-checks"): real
//! traffic through the real writer verifies clean, and a row of
//! `forwards`, `connections` or `grants` changed or inserted by SQL is
//! named, with its table and the event it disagrees with.

use super::*;
use crate::audit::crosscheck::crosscheck_settled;
use crate::audit::verify::{self, Problem, ProblemKind};
use crate::auth::grants::{self, NewGrant};
use crate::clock::from_micros;
use crate::reasons::{AuthMethod, EventReason};

/// What [`traffic`] left in the tables.
struct Traffic {
    /// Dialled (to the second of two planned addresses) and closed.
    closed: i64,
    /// Allowed, then the dial failed.
    failed: i64,
    /// Refused by the policy.
    denied: i64,
    /// Left open by a crash, closed by `mark_interrupted` at the restart.
    interrupted: i64,
    /// Granted, then revoked by the CLI.
    revoked_grant: i64,
    /// Granted, still valid.
    grant: i64,
}

/// A node's day: a connection that logs in, forwards every way and
/// closes, one a crash leaves open, two grants of which the CLI revokes
/// one (as `node-a (cli)`, as `portvakt grants revoke` does).
async fn traffic(store: &Store) -> Traffic {
    let (audit, writer) = Audit::start(store.clone(), "node-a".into());
    audit.connection_open("c1", source());
    let login = Event::new(EventKind::AuthSuccess);
    assert!(
        audit
            .login("c1", source(), login, "alice", AuthMethod::Certificate, 0.5)
            .await
    );
    let f = record("c1", "alice", Some("db-1"), "db-1");
    let fw = audit
        .forward_open(f.clone(), "10.0.1.5:22,10.0.1.6:22")
        .await
        .unwrap();
    let closed = fw.id();
    let totals = Totals {
        to_target: 10,
        from_target: 20,
    };
    fw.dialled("10.0.1.6:22".parse().unwrap(), "10.0.1.5:22,10.0.1.6:22")
        .await
        .closed(totals, ForwardStop::Closed.into())
        .await;
    let fw = audit.forward_open(f.clone(), "10.0.1.5:22").await.unwrap();
    let failed = fw.id();
    fw.failed(ForwardStop::ConnectRefused.into()).await;
    audit
        .forward_refused(&f, ForwardResult::Denied, Refusal::UserNotAllowed)
        .await;
    let interrupted = audit
        .forward_open(f.clone(), "10.0.1.5:22")
        .await
        .unwrap()
        .leave_open();
    audit.connection_close(
        "c1",
        source(),
        Some("alice"),
        CloseReason::ClientClosed,
        Duration::from_secs(3),
        Some("SSH-2.0-OpenSSH_9.6"),
    );
    audit.connection_open("c2", source());
    let revoked_grant = grant(&audit, "c2").await;
    let grant = grant(&audit, "c2").await;
    flush(audit, writer).await;
    let revoked = grants::revoke(
        store,
        Some(revoked_grant),
        None,
        EventReason::RevokedByAdmin,
    )
    .await
    .unwrap();
    let (cli, cli_writer) = Audit::start(store.clone(), "node-a (cli)".into());
    for g in &revoked {
        cli.emit(
            Event::new(EventKind::GrantRevoke)
                .at(from_micros(g.revoked_at.unwrap()))
                .user(g.user.clone())
                .reason(EventReason::RevokedByAdmin)
                .detail("grant_id", g.id)
                .detail("key_fingerprint", g.key_fingerprint.clone()),
        );
    }
    flush(cli, cli_writer).await;
    // The restart after a crash: c2 and the forward left open are closed.
    assert_eq!(interrupt(store, "node-a").await, 1);
    let denied = sqlx::query("SELECT id FROM forwards WHERE result = 'denied'")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get("id");
    Traffic {
        closed,
        failed,
        denied,
        interrupted,
        revoked_grant,
        grant,
    }
}

/// A grant and its `grant.create`, as an IdP login stores them.
async fn grant(audit: &Audit, connection: &str) -> i64 {
    let g = grants::create(
        audit.store(),
        &NewGrant {
            user: "alice",
            key_fingerprint: "SHA256:abc",
            groups: &["ops".to_string()],
            method: "oidc+totp",
            node: audit.node(),
            source: &source().to_string(),
            ttl: Duration::from_secs(3600),
        },
    )
    .await
    .unwrap();
    let ev = Event::new(EventKind::GrantCreate)
        .connection(connection, source())
        .at(from_micros(g.created_at))
        .user(g.user.clone())
        .detail("grant_id", g.id)
        .detail("key_fingerprint", g.key_fingerprint.clone())
        .detail("method", g.method.clone())
        .detail("expires_at", crate::clock::rfc3339(g.expires()));
    assert!(audit.record(ev).await);
    g.id
}

/// The cross-checks' problems of `node-a`, every row settled.
async fn problems(store: &Store) -> Vec<Problem> {
    crosscheck_settled(store, "node-a", i64::MAX).await.unwrap()
}

/// The one problem found, asserted to be `kind` for `table` row `row`,
/// naming `field` when it is a mismatch.
#[track_caller]
fn assert_one(found: &[Problem], kind: ProblemKind, table: &str, row: &str, field: &str) {
    assert_eq!(found.len(), 1, "{found:#?}");
    let p = &found[0];
    assert_eq!(
        (p.problem, p.table, p.row.as_str()),
        (kind, table, row),
        "{p:#?}"
    );
    assert!(
        p.message.contains(&format!("{table} row {row}: {field}")),
        "{p:#?}"
    );
    assert_eq!(kind == ProblemKind::RowMismatch, p.id > 0, "{p:#?}");
}

async fn update(store: &Store, sql: &'static str, value: impl ToString, id: impl ToString) {
    let (value, id) = (value.to_string(), id.to_string());
    // Both bound as text or integer, as the column wants.
    let q = sqlx::query(sql);
    let q = match value.parse::<i64>() {
        Ok(n) => q.bind(n),
        Err(_) => q.bind(value),
    };
    let q = match id.parse::<i64>() {
        Ok(n) => q.bind(n),
        Err(_) => q.bind(id),
    };
    q.execute(store.pool()).await.unwrap();
}

#[tokio::test]
async fn untouched_traffic_verifies_clean() {
    on_each_store(|store| async move {
        let t = traffic(&store).await;
        assert_eq!(problems(&store).await, vec![]);
        let r = verify::verify(&store, None).await.unwrap();
        assert!(r.intact, "{r:#?}");
        // Every kind of row was there to be checked.
        let row = |id: i64| {
            let store = store.clone();
            async move { session(&store, id).await }
        };
        assert_eq!(row(t.closed).await.address.as_deref(), Some("10.0.1.6:22"));
        assert_eq!(row(t.failed).await.result, "failed");
        assert_eq!(row(t.denied).await.result, "denied");
        let interrupted = row(t.interrupted).await;
        assert_eq!(interrupted.close_reason.as_deref(), Some("interrupted"));
        let revoked: Option<i64> = sqlx::query("SELECT revoked_at FROM grants WHERE id = $1")
            .bind(t.revoked_grant)
            .fetch_one(store.pool())
            .await
            .unwrap()
            .get("revoked_at");
        assert!(revoked.is_some());
    })
    .await;
}

#[tokio::test]
async fn changed_forward_rows_are_named() {
    on_each_store(|store| async move {
        let t = traffic(&store).await;
        let cases: [(&'static str, &'static str, String, i64, &str); 6] = [
            (
                "UPDATE forwards SET bytes_to_target = $1 WHERE id = $2",
                "bytes_to_target",
                "9".into(),
                t.closed,
                "9",
            ),
            (
                "UPDATE forwards SET user_name = $1 WHERE id = $2",
                "user_name",
                "mallory".into(),
                t.closed,
                "mallory",
            ),
            (
                "UPDATE forwards SET address = $1 WHERE id = $2",
                "address",
                "10.0.1.5:22".into(),
                t.closed,
                "10.0.1.5:22",
            ),
            (
                "UPDATE forwards SET ended_at = ended_at + $1 WHERE id = $2",
                "ended_at",
                "1".into(),
                t.closed,
                "",
            ),
            (
                "UPDATE forwards SET reason = $1 WHERE id = $2",
                "reason",
                "connect_timeout".into(),
                t.failed,
                "connect_timeout",
            ),
            (
                "UPDATE forwards SET host = $1 WHERE id = $2",
                "host",
                "db-2".into(),
                t.denied,
                "db-2",
            ),
        ];
        for (sql, field, value, id, shown) in cases {
            // Each case on the untouched row: keep a copy, change, check,
            // put the copy back.
            let save = format!("CREATE TABLE saved AS SELECT * FROM forwards WHERE id = {id}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(save))
                .execute(store.pool())
                .await
                .unwrap();
            update(&store, sql, &value, id).await;
            let found = problems(&store).await;
            assert_one(
                &found,
                ProblemKind::RowMismatch,
                "forwards",
                &id.to_string(),
                field,
            );
            assert!(found[0].message.contains(shown), "{found:#?}");
            let cols =
                "user_name, host, address, reason, ended_at, bytes_to_target, bytes_from_target";
            let restore = format!(
                "UPDATE forwards SET ({cols}) = (SELECT {cols} FROM saved) WHERE id = {id}"
            );
            for sql in [restore.as_str(), "DROP TABLE saved"] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                    .execute(store.pool())
                    .await
                    .unwrap();
            }
            assert_eq!(problems(&store).await, vec![], "{field} put back");
        }
        // And through `audit verify`: not intact, naming the table.
        update(
            &store,
            "UPDATE forwards SET bytes_from_target = $1 WHERE id = $2",
            0,
            t.closed,
        )
        .await;
        let r = verify::verify(&store, Some("node-a")).await.unwrap();
        assert!(!r.intact);
        let p = &r.nodes[0].problems;
        assert_eq!(p.len(), 1, "{r:#?}");
        assert_eq!(
            (p[0].table, p[0].problem.as_str()),
            ("forwards", "row_mismatch")
        );
    })
    .await;
}

#[tokio::test]
async fn a_forward_row_inserted_by_hand_is_unbacked() {
    on_each_store(|store| async move {
        traffic(&store).await;
        let id: i64 = sqlx::query(
            "INSERT INTO forwards (connection_id, node, user_name, auth_method, source, target, host, port, \
             address, result, started_at, ended_at, close_reason) VALUES ('c1', 'node-a', 'alice', \
             'certificate', '192.0.2.10:50022', 'db-1', 'db-1', 22, '10.0.1.5:22', 'allowed', $1, $1, 'closed') \
             RETURNING id",
        )
        .bind(crate::clock::now_micros())
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get("id");
        let found = problems(&store).await;
        assert_one(&found, ProblemKind::RowUnbacked, "forwards", &id.to_string(), "no forward.open");
        // While it is recent, its event may still be on the way: `audit
        // verify` does not report it yet.
        assert!(verify::verify(&store, None).await.unwrap().intact);
    })
    .await;
}

#[tokio::test]
async fn a_changed_connection_row_is_named() {
    on_each_store(|store| async move {
        traffic(&store).await;
        update(
            &store,
            "UPDATE connections SET user_name = $1 WHERE id = $2",
            "mallory",
            "c1",
        )
        .await;
        let found = problems(&store).await;
        assert_one(
            &found,
            ProblemKind::RowMismatch,
            "connections",
            "c1",
            "user_name",
        );
        assert!(
            found[0]
                .message
                .contains("\"mallory\" in the row but \"alice\" in its auth.success"),
            "{found:#?}"
        );
        update(
            &store,
            "UPDATE connections SET user_name = $1 WHERE id = $2",
            "alice",
            "c1",
        )
        .await;
        update(
            &store,
            "UPDATE connections SET close_reason = $1 WHERE id = $2",
            "shutdown",
            "c2",
        )
        .await;
        assert_one(
            &problems(&store).await,
            ProblemKind::RowMismatch,
            "connections",
            "c2",
            "close_reason",
        );
        // A login that never happened.
        update(
            &store,
            "UPDATE connections SET close_reason = $1 WHERE id = $2",
            "interrupted",
            "c2",
        )
        .await;
        update(
            &store,
            "UPDATE connections SET user_name = $1 WHERE id = $2",
            "mallory",
            "c2",
        )
        .await;
        assert_one(
            &problems(&store).await,
            ProblemKind::RowUnbacked,
            "connections",
            "c2",
            "no auth.success",
        );
    })
    .await;
}

#[tokio::test]
async fn changed_grant_rows_are_named() {
    on_each_store(|store| async move {
        let t = traffic(&store).await;
        let (grant, revoked) = (t.grant.to_string(), t.revoked_grant.to_string());
        // Longer than granted.
        exec(
            &store,
            "UPDATE grants SET expires_at = expires_at + $1 WHERE id = $2",
            3600 * SECOND,
            t.grant,
        )
        .await;
        assert_one(
            &problems(&store).await,
            ProblemKind::RowMismatch,
            "grants",
            &grant,
            "expires_at",
        );
        exec(
            &store,
            "UPDATE grants SET expires_at = expires_at - $1 WHERE id = $2",
            3600 * SECOND,
            t.grant,
        )
        .await;
        assert_eq!(problems(&store).await, vec![]);
        // Revoked by hand, without an event.
        exec(
            &store,
            "UPDATE grants SET revoked_at = created_at + $1 WHERE id = $2",
            SECOND,
            t.grant,
        )
        .await;
        assert_one(
            &problems(&store).await,
            ProblemKind::RowUnbacked,
            "grants",
            &grant,
            "no grant.revoke",
        );
        exec(
            &store,
            "UPDATE grants SET revoked_at = NULL WHERE id = $2 AND $1 = $1",
            0,
            t.grant,
        )
        .await;
        // A revoked grant made valid again: its revocation is in the CLI's chain.
        exec(
            &store,
            "UPDATE grants SET revoked_at = NULL WHERE id = $2 AND $1 = $1",
            0,
            t.revoked_grant,
        )
        .await;
        let found = problems(&store).await;
        assert_one(
            &found,
            ProblemKind::RowMismatch,
            "grants",
            &revoked,
            "revoked_at",
        );
        assert!(
            found[0].message.contains("is NULL in the row"),
            "{found:#?}"
        );
        let node: String = sqlx::query("SELECT node FROM audit_events WHERE id = $1")
            .bind(found[0].id)
            .fetch_one(store.pool())
            .await
            .unwrap()
            .get("node");
        assert_eq!(node, "node-a (cli)");
    })
    .await;
}

/// Rows whose events retention pruned, and rows from before the chain,
/// have nothing to be compared with: they are not reported.
#[tokio::test]
async fn pruned_and_pre_chain_rows_are_not_checked() {
    on_each_store(|store| async move {
        let t = traffic(&store).await;
        // As before migration 0005: a row long before the chain began.
        sqlx::query(
            "INSERT INTO forwards (connection_id, node, user_name, auth_method, source, host, port, result, \
             started_at) VALUES ('old', 'node-a', 'alice', 'certificate', '192.0.2.10:50022', 'db-1', 22, \
             'allowed', $1)",
        )
        .bind(SECOND)
        .execute(store.pool())
        .await
        .unwrap();
        assert_eq!(problems(&store).await, vec![]);
        // Retention deletes a prefix of the chain: up to the first
        // forward's open event (connection.open, auth.success,
        // forward.open of c1).
        let opened: i64 = sqlx::query(
            "SELECT seq FROM audit_events WHERE node = 'node-a' AND kind = 'forward.open' ORDER BY seq LIMIT 1",
        )
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get("seq");
        exec(&store, "DELETE FROM audit_events WHERE seq <= $1 AND node = 'node-a' AND $2 = $2", opened, 0).await;
        assert_eq!(problems(&store).await, vec![]);
        // Later rows are still checked.
        exec(&store, "UPDATE forwards SET bytes_to_target = $1 WHERE id = $2", 1, t.failed).await;
        assert_one(&problems(&store).await, ProblemKind::RowMismatch, "forwards", &t.failed.to_string(), "bytes_to_target");
    })
    .await;
}
