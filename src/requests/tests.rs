use super::commands::{Command, parse};
use super::*;

#[test]
fn commands_parse_with_and_without_quotes() {
    assert_eq!(
        parse("request db-1 2h INC-123 disk full"),
        Some(Ok(Command::Request {
            target: "db-1".into(),
            duration: "2h".into(),
            reason: "INC-123 disk full".into()
        }))
    );
    assert_eq!(
        parse("request db-1 30m \"INC-1\""),
        Some(Ok(Command::Request {
            target: "db-1".into(),
            duration: "30m".into(),
            reason: "INC-1".into()
        }))
    );
    assert_eq!(parse("requests"), Some(Ok(Command::List)));
    assert_eq!(parse("approve 12"), Some(Ok(Command::Approve(12))));
    assert_eq!(
        parse("deny 12 'not now'"),
        Some(Ok(Command::Deny(12, "not now".into())))
    );
    assert_eq!(parse("logout"), None);
    assert_eq!(parse("ls -l"), None);
    for bad in [
        "request db-1",
        "request",
        "approve",
        "approve x",
        "approve 0",
        "approve 1 2",
        "deny 3",
        "requests all",
    ] {
        assert!(matches!(parse(bad), Some(Err(_))), "{bad}");
    }
}

#[test]
fn reasons_are_bounded_and_printable() {
    assert_eq!(check_reason("  INC-1  ").unwrap(), "INC-1");
    assert!(check_reason("").is_err());
    assert!(check_reason("   ").is_err());
    assert!(check_reason(&"x".repeat(MAX_REASON)).is_ok());
    assert!(check_reason(&"x".repeat(MAX_REASON + 1)).is_err());
    assert!(check_reason("a\u{1b}[2Jb").is_err());
    assert!(check_reason("a\nb").is_err());
}

#[test]
fn states_round_trip() {
    for s in State::ALL {
        assert_eq!(State::parse(s.as_str()), Some(s));
    }
    assert_eq!(State::parse("open"), None);
}

mod stored {
    use std::time::Duration;

    use super::super::store::{self, Approval, DecideError, NewRequest};
    use super::super::webhook::Webhook;
    use super::super::*;
    use crate::audit::tests::on_each_store;
    use crate::audit::{Audit, EventKind};
    use crate::config::WebhookConfig;
    use crate::store::Store;

    const T: i64 = 1_800_000_000_000_000;

    async fn new(store: &Store, approvals: u32) -> AccessRequest {
        let r = NewRequest {
            user: "alice",
            target: "prod",
            duration: Duration::from_secs(3600),
            reason: "INC-1",
            approvals_needed: approvals,
            node: "node-a",
            pending_ttl: Duration::from_secs(600),
        };
        store::create(store, &r, T).await.unwrap()
    }

    /// A list carries each request's own approvers, in the order they
    /// approved (read for the whole page at once).
    #[tokio::test]
    async fn a_list_carries_each_requests_approvers() {
        on_each_store(|store| async move {
            let two = new(&store, 3).await;
            let none = new(&store, 2).await;
            let one = new(&store, 2).await;
            store::approve(&store, two.id, "carol", T + 2_000_000)
                .await
                .unwrap();
            store::approve(&store, two.id, "bob", T + 3_000_000)
                .await
                .unwrap();
            store::approve(&store, one.id, "dave", T + 2_000_000)
                .await
                .unwrap();
            let listed = store::list(&store, &store::Filter::default())
                .await
                .unwrap();
            let got: Vec<(i64, Vec<String>)> =
                listed.into_iter().map(|r| (r.id, r.approvals)).collect();
            assert_eq!(
                got,
                [
                    (one.id, vec!["dave".to_string()]),
                    (none.id, vec![]),
                    (two.id, vec!["carol".to_string(), "bob".to_string()]),
                ]
            );
        })
        .await;
    }

    /// Two approvers at once on a one-approval request (two nodes, or the
    /// CLI and ssh): exactly one opens the window.
    #[tokio::test]
    async fn concurrent_approvals_open_the_window_once() {
        on_each_store(|store| async move {
            let req = new(&store, 1).await;
            let (a, b) = tokio::join!(
                store::approve(&store, req.id, "bob", T + 1_000_000),
                store::approve(&store, req.id, "carol", T + 1_000_000)
            );
            let opened = [&a, &b]
                .iter()
                .filter(|r| matches!(r, Ok(Approval::Opened(_))))
                .count();
            assert_eq!(opened, 1, "{a:?} {b:?}");
            let got = store::get(&store, req.id).await.unwrap().unwrap();
            assert_eq!(got.state, State::Approved);
            assert_eq!(got.window_end, Some(T + 1_000_000 + 3_600_000_000));
            assert!(got.open_at(T + 2_000_000) && !got.open_at(T + 3_602_000_000));
            // Open windows are the user's own, while they last.
            assert_eq!(
                store::open_windows(&store, "alice", T + 2_000_000)
                    .await
                    .unwrap()
                    .len(),
                1
            );
            assert!(
                store::open_windows(&store, "bob", T + 2_000_000)
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert!(
                store::open_windows(&store, "alice", T + 3_602_000_000)
                    .await
                    .unwrap()
                    .is_empty()
            );
        })
        .await;
    }

    #[tokio::test]
    async fn decisions_that_cannot_be_made_change_nothing() {
        on_each_store(|store| async move {
            let req = new(&store, 2).await;
            assert!(matches!(
                store::approve(&store, req.id, "alice", T).await,
                Err(DecideError::Own(_))
            ));
            assert!(matches!(
                store::approve(&store, req.id, "bob", T).await,
                Ok(Approval::Recorded(_))
            ));
            assert!(matches!(
                store::approve(&store, req.id, "bob", T).await,
                Err(DecideError::ApprovedAlready(_))
            ));
            assert!(matches!(
                store::approve(&store, 999, "bob", T).await,
                Err(DecideError::NotFound(999))
            ));
            // Past pending_ttl nobody decides it; the watch expires it once.
            let late = T + 601_000_000;
            assert!(matches!(
                store::approve(&store, req.id, "carol", late).await,
                Err(DecideError::Expired(_))
            ));
            let expired = store::expire_due(&store, late).await.unwrap();
            assert_eq!(expired.iter().map(|r| r.id).collect::<Vec<_>>(), [req.id]);
            assert!(store::expire_due(&store, late).await.unwrap().is_empty());
            assert!(matches!(
                store::deny(&store, req.id, "carol", "no", late).await,
                Err(DecideError::Decided {
                    state: State::Expired,
                    ..
                })
            ));
            assert!(matches!(
                store::revoke(&store, req.id, "root@cli", late).await,
                Err(DecideError::Decided {
                    state: State::Expired,
                    ..
                })
            ));
            // A window that ended cannot be revoked; one still open can.
            let r2 = new(&store, 1).await;
            store::approve(&store, r2.id, "bob", T).await.unwrap();
            let ended = T + 3_601_000_000;
            assert!(matches!(
                store::revoke(&store, r2.id, "root@cli", ended).await,
                Err(DecideError::Ended(_))
            ));
            let r3 = new(&store, 1).await;
            store::approve(&store, r3.id, "bob", T).await.unwrap();
            let revoked = store::revoke(&store, r3.id, "root@cli", T + 5_000_000)
                .await
                .unwrap();
            assert_eq!(revoked.state, State::Revoked);
            assert_eq!(store::revoked_since(&store, T).await.unwrap(), vec![r3.id]);
            let open = store::open_windows(&store, "alice", T + 6_000_000)
                .await
                .unwrap();
            let ids: Vec<i64> = open.iter().map(|r| r.id).collect();
            assert_eq!(ids, [r2.id], "r3's window is gone, r2's is not");
        })
        .await;
    }

    /// A webhook that never takes a notification: retried, then audited.
    #[tokio::test]
    async fn an_undeliverable_notification_is_audited() {
        on_each_store(|store| async move {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/hook", listener.local_addr().unwrap());
            let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counted = hits.clone();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                for s in listener.incoming() {
                    let Ok(mut s) = s else { return };
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = s.write_all(
                        b"HTTP/1.1 500 X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                }
            });
            let (audit, writer) = Audit::start(store.clone(), "node-w".into());
            let cfg = WebhookConfig {
                url,
                secret: b"0123456789abcdef".to_vec(),
            };
            let hook =
                Webhook::with_first_wait(Some(&cfg), audit.clone(), Duration::from_millis(10));
            let req = new(&store, 1).await;
            hook.deliver(EventKind::RequestCreate, &req, Some("alice"))
                .await;
            drop(hook);
            drop(audit);
            writer.await.unwrap();
            assert_eq!(
                hits.load(std::sync::atomic::Ordering::SeqCst),
                5,
                "five attempts"
            );
            let rows = crate::audit::query::events(
                &store,
                &crate::audit::query::EventFilter {
                    kind: Some("request.notify_failed".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            assert_eq!(rows.len(), 1, "{rows:?}");
            assert_eq!(rows[0].detail["event"], "request.create");
            assert_eq!(rows[0].detail["request_id"], req.id);
        })
        .await;
    }
}
