//! The audit store, on every database portvakt supports.
//!
//! Each case is an async fn run on SQLite (a file in a temp dir) and then on
//! PostgreSQL when `PORTVAKT_TEST_POSTGRES_URL` names a server (CI sets it):
//! every case gets a database of its own there, dropped afterwards, also
//! when the case panics.
//!
//! Events go through the writer task; cases drop every `Audit` clone and
//! await the writer's handle, which flushes, before reading them back.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection, Row};
use tokio::task::JoinHandle;

use super::query::{self, EventFilter, EventRow, SessionFilter, SessionRow};
use super::{Audit, Checkpoints, Event, EventKind, ForwardRecord, Totals, mark_interrupted};
use crate::auth::AuthFailure;
use crate::policy::Refusal;
use crate::reasons::{CloseReason, ForwardResult, ForwardStop};
use crate::store::{Backend, Store};

#[path = "chain_tests.rs"]
mod chain_tests;
#[path = "checkpoint_tests.rs"]
mod checkpoint_tests;
#[path = "crosscheck_tests.rs"]
mod crosscheck_tests;
#[path = "verify_sqlite_tests.rs"]
mod verify_sqlite_tests;

const POSTGRES_ENV: &str = "PORTVAKT_TEST_POSTGRES_URL";

/// 2027-01-15T08:00:00Z in unix microseconds: the base of fixed times.
const T0: i64 = 1_800_000_000_000_000;
const SECOND: i64 = 1_000_000;
const T0_TEXT: &str = "2027-01-15T08:00:00Z";

// ---- databases ----

/// A PostgreSQL database of one test, dropped (connections and all) when
/// this guard is.
struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    async fn create(admin_url: &str) -> PgDatabase {
        let name = format!("portvakt_u_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(admin_url)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_ENV}={admin_url}: {e}"));
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        PgDatabase {
            admin_url: admin_url.to_string(),
            url: with_database(admin_url, &name),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop may run inside the test's runtime (and during a panic): do the
        // async work on a thread with a runtime of its own.
        let admin = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin).await?;
                sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await?;
                conn.close().await
            })
            .map_err(|e| e.to_string())
        })
        .join();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("cannot drop test database {}: {e}", self.name),
            Err(_) => eprintln!("cannot drop test database {}: thread panicked", self.name),
        }
    }
}

/// `url` with its database name replaced by `name`, query string kept.
fn with_database(url: &str, name: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((u, q)) => (u, format!("?{q}")),
        None => (url, String::new()),
    };
    let host_start = url.find("://").map_or(0, |i| i + 3);
    let base = match url[host_start..].find('/') {
        Some(slash) => &url[..host_start + slash],
        None => url,
    };
    format!("{base}/{name}{query}")
}

#[test]
fn with_database_replaces_the_name() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/db?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://h:5432", "x"),
        "postgres://h:5432/x"
    );
}

/// A fresh, empty database: its URL, and whatever removes it.
struct TestDb {
    backend: Backend,
    url: String,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<PgDatabase>,
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        TestDb {
            backend: Backend::Sqlite,
            url,
            _dir: Some(dir),
            _pg: None,
        }
    }

    /// `None` when `PORTVAKT_TEST_POSTGRES_URL` is unset.
    async fn postgres() -> Option<TestDb> {
        let admin = std::env::var(POSTGRES_ENV).ok().filter(|u| !u.is_empty())?;
        let pg = PgDatabase::create(&admin).await;
        Some(TestDb {
            backend: Backend::Postgres,
            url: pg.url.clone(),
            _dir: None,
            _pg: Some(pg),
        })
    }

    /// SQLite, then PostgreSQL if configured.
    async fn all() -> Vec<TestDb> {
        let mut dbs = vec![TestDb::sqlite()];
        dbs.extend(TestDb::postgres().await);
        dbs
    }
}

/// Run `case` on a fresh database URL of each backend.
async fn on_each_url<F, Fut>(case: F)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = ()>,
{
    for db in TestDb::all().await {
        eprintln!("-- on {:?}", db.backend);
        case(db.url.clone()).await;
    }
}

/// Run `case` on a freshly opened (migrated) store of each backend.
pub(crate) async fn on_each_store<F, Fut>(case: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    for db in TestDb::all().await {
        eprintln!("-- on {:?}", db.backend);
        let store = Store::open(&db.url).await.unwrap();
        assert_eq!(store.backend(), db.backend);
        case(store.clone()).await;
        store.close().await;
    }
}

// ---- helpers ----

fn source() -> SocketAddr {
    "192.0.2.10:50022".parse().unwrap()
}

fn record(connection: &str, user: &str, target: Option<&str>, host: &str) -> ForwardRecord {
    ForwardRecord {
        connection_id: connection.to_string(),
        user: user.to_string(),
        auth_method: "certificate".to_string(),
        source: source(),
        target: target.map(str::to_string),
        host: host.to_string(),
        port: 22,
        request_id: None,
        recorded: false,
    }
}

/// Drop the last `Audit` and wait until the writer has stored everything.
async fn flush(audit: Audit, writer: JoinHandle<()>) {
    assert_eq!(audit.dropped(), 0, "audit records were lost");
    drop(audit);
    tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("the writer flushes once every Audit is dropped")
        .expect("writer task");
}

async fn exec(store: &Store, sql: &'static str, a: i64, b: i64) {
    sqlx::query(sql)
        .bind(a)
        .bind(b)
        .execute(store.pool())
        .await
        .unwrap();
}

/// Give a forward a fixed start time.
async fn set_started(store: &Store, id: i64, at: i64) {
    exec(
        store,
        "UPDATE forwards SET started_at = $1 WHERE id = $2",
        at,
        id,
    )
    .await;
}

async fn sessions(store: &Store, f: SessionFilter) -> Vec<SessionRow> {
    query::sessions(store, &f).await.unwrap()
}

async fn session(store: &Store, id: i64) -> SessionRow {
    query::session(store, id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no session {id}"))
}

async fn events(store: &Store, f: EventFilter) -> Vec<EventRow> {
    query::events(store, &f).await.unwrap()
}

fn ids(rows: &[SessionRow]) -> Vec<i64> {
    rows.iter().map(|r| r.id).collect()
}

fn kinds(rows: &[EventRow]) -> Vec<&str> {
    rows.iter().map(|r| r.kind.as_str()).collect()
}

/// An event at a fixed time (unix microseconds).
fn event_at(kind: EventKind, at: i64) -> Event {
    let mut ev = Event::new(kind);
    ev.at = UNIX_EPOCH + Duration::from_micros(at as u64);
    ev
}

/// RFC 3339 in UTC, as DESIGN.md §5 promises; returns the unix seconds.
#[track_caller]
fn rfc3339_secs(text: &str) -> u64 {
    assert!(text.ends_with('Z'), "{text:?} is not UTC");
    humantime::parse_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---- forwards ----

#[tokio::test]
async fn forward_full_life() {
    on_each_store(|store| async move {
        let (audit, writer) = Audit::start(store.clone(), "node-a".into());
        assert_eq!(audit.node(), "node-a");
        let before = now_secs();
        let f = record("conn-1", "alice", Some("db-1"), "db-1");
        let fw = audit.forward_open(f.clone(), "10.0.1.5:22").await.unwrap();
        let id = fw.id();

        // Open: a row at once, not waiting for the writer.
        let open = session(&store, id).await;
        assert_eq!(open.result, "allowed");
        assert_eq!(open.ended_at, None);
        assert_eq!(open.duration_seconds, None);
        assert_eq!(open.close_reason, None);
        assert_eq!((open.bytes_to_target, open.bytes_from_target), (0, 0));

        let fw = fw
            .dialled("10.0.1.6:22".parse().unwrap(), "10.0.1.5:22")
            .await;
        fw.closed(
            Totals {
                to_target: 1234,
                from_target: 5_000_000_000,
            },
            CloseReason::ClientClosed.for_forwards(),
        )
        .await;
        let after = now_secs();
        flush(audit, writer).await;

        let row = session(&store, id).await;
        assert_eq!(row.id, id);
        assert_eq!(row.connection_id, "conn-1");
        assert_eq!(row.node, "node-a");
        assert_eq!(row.user, "alice");
        assert_eq!(row.auth_method, "certificate");
        assert_eq!(row.source, "192.0.2.10:50022");
        assert_eq!(row.target.as_deref(), Some("db-1"));
        assert_eq!(row.host, "db-1");
        assert_eq!(row.port, 22);
        assert_eq!(row.address.as_deref(), Some("10.0.1.6:22"));
        assert_eq!(row.result, "allowed");
        assert_eq!(row.reason, None);
        assert_eq!(row.bytes_to_target, 1234);
        assert_eq!(row.bytes_from_target, 5_000_000_000);
        assert_eq!(row.close_reason.as_deref(), Some("connection_closed"));
        let started = rfc3339_secs(&row.started_at);
        let ended = rfc3339_secs(row.ended_at.as_deref().unwrap());
        assert!(before <= started && started <= ended && ended <= after);
        let duration = row.duration_seconds.unwrap();
        assert!((0.0..60.0).contains(&duration), "{duration}");

        // The same row in the list, and as the JSON of `sessions list --json`.
        assert_eq!(
            sessions(&store, SessionFilter::default()).await,
            vec![row.clone()]
        );
        let json = serde_json::to_value(&row).unwrap();
        for field in [
            "id",
            "connection_id",
            "user",
            "auth_method",
            "source",
            "target",
            "host",
            "port",
            "address",
            "result",
            "reason",
            "started_at",
            "ended_at",
            "bytes_to_target",
            "bytes_from_target",
            "close_reason",
        ] {
            assert!(json.get(field).is_some(), "no {field} in {json}");
        }
        assert_eq!(json["reason"], Value::Null);
        assert_eq!(json["port"], json!(22));

        // Events: forward.open then forward.close, tied to the row.
        let evs = events(&store, EventFilter::default()).await;
        assert_eq!(kinds(&evs), ["forward.open", "forward.close"]);
        let (open_ev, close_ev) = (&evs[0], &evs[1]);
        assert_eq!(open_ev.node, "node-a");
        assert_eq!(open_ev.connection_id.as_deref(), Some("conn-1"));
        assert_eq!(open_ev.user.as_deref(), Some("alice"));
        assert_eq!(open_ev.source.as_deref(), Some("192.0.2.10:50022"));
        assert_eq!(open_ev.reason, None);
        assert_eq!(
            open_ev.detail,
            json!({
                "forward_id": id,
                "target": "db-1",
                "host": "db-1",
                "port": 22,
                "address": "10.0.1.5:22",
                "auth_method": "certificate",
            })
        );
        assert_eq!(close_ev.reason.as_deref(), Some("connection_closed"));
        assert_eq!(close_ev.detail["forward_id"], json!(id));
        assert_eq!(close_ev.detail["bytes_to_target"], json!(1234));
        assert_eq!(
            close_ev.detail["bytes_from_target"],
            json!(5_000_000_000u64)
        );
        let secs = close_ev.detail["duration_seconds"].as_f64().unwrap();
        assert!((0.0..60.0).contains(&secs), "{secs}");
        rfc3339_secs(&open_ev.at);
    })
    .await;
}

/// A forward handle dropped without being closed (a panic, a forgotten
/// path) does not leave its row open: it is closed as `error`.
#[tokio::test]
async fn a_forward_handle_dropped_unclosed_closes_its_row_as_an_error() {
    on_each_store(|store| async move {
        let (audit, writer) = Audit::start(store.clone(), "node-a".into());
        let f = record("conn-1", "alice", Some("db-1"), "db-1");
        let open = audit.forward_open(f.clone(), "10.0.1.5:22").await.unwrap();
        let never_dialled = open.id();
        drop(open);
        let open = audit.forward_open(f, "10.0.1.5:22").await.unwrap();
        let dialled = open
            .dialled("10.0.1.5:22".parse().unwrap(), "10.0.1.5:22")
            .await;
        let was_dialled = dialled.id();
        drop(dialled);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for id in [never_dialled, was_dialled] {
            while session(&store, id).await.ended_at.is_none() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "forward {id} left open"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let row = session(&store, never_dialled).await;
        assert_eq!(
            (row.result.as_str(), row.close_reason.as_deref()),
            ("failed", Some("error"))
        );
        let row = session(&store, was_dialled).await;
        assert_eq!(
            (row.result.as_str(), row.close_reason.as_deref()),
            ("allowed", Some("error"))
        );
        flush(audit, writer).await;
    })
    .await;
}

#[tokio::test]
async fn forward_close_saturates_huge_byte_counts() {
    on_each_store(|store| async move {
        let (audit, writer) = Audit::start(store.clone(), "node-a".into());
        let f = record("conn-1", "alice", Some("db-1"), "db-1");
        let fw = audit.forward_open(f, "10.0.1.5:22").await.unwrap();
        let id = fw.id();
        let fw = fw
            .dialled("10.0.1.5:22".parse().unwrap(), "10.0.1.5:22")
            .await;
        let totals = Totals {
            to_target: u64::MAX,
            from_target: 0,
        };
        fw.closed(totals, ForwardStop::Closed.into()).await;
        flush(audit, writer).await;
        assert_eq!(session(&store, id).await.bytes_to_target, i64::MAX);
    })
    .await;
}

#[tokio::test]
async fn forward_denied() {
    on_each_store(|store| async move {
        let (audit, writer) = Audit::start(store.clone(), "node-a".into());
        let nothing = record("conn-1", "alice", None, "10.9.9.9");
        audit
            .forward_refused(&nothing, ForwardResult::Denied, Refusal::UnknownTarget)
            .await;
        let not_hers = record("conn-1", "alice", Some("web"), "web");
        audit
            .forward_refused(&not_hers, ForwardResult::Denied, Refusal::UserNotAllowed)
            .await;
        flush(audit, writer).await;

        let rows = sessions(&store, SessionFilter::default()).await;
        assert_eq!(rows.len(), 2);
        let by_target = |t: Option<&str>| rows.iter().find(|r| r.target.as_deref() == t).unwrap();
        let row = by_target(None);
        assert_eq!(row.result, "denied");
        assert_eq!(row.reason.as_deref(), Some("unknown_target"));
        assert_eq!(row.host, "10.9.9.9");
        assert_eq!(row.address, None);
        // Refused at once: ended when it started.
        assert_eq!(row.ended_at.as_deref(), Some(row.started_at.as_str()));
        assert_eq!(row.duration_seconds, Some(0.0));
        assert_eq!(row.close_reason, None);
        assert_eq!((row.bytes_to_target, row.bytes_from_target), (0, 0));
        assert_eq!(
            by_target(Some("web")).reason.as_deref(),
            Some("user_not_allowed")
        );

        let evs = events(&store, EventFilter::default()).await;
        assert_eq!(kinds(&evs), ["forward.denied", "forward.denied"]);
        assert_eq!(evs[0].reason.as_deref(), Some("unknown_target"));
        assert_eq!(evs[0].detail["result"], json!("denied"));
        assert_eq!(evs[0].detail["host"], json!("10.9.9.9"));
        assert_eq!(evs[0].detail.get("target"), None);
        assert_eq!(evs[0].detail["forward_id"], json!(row.id));
        assert_eq!(evs[1].detail["target"], json!("web"));
    })
    .await;
}

#[tokio::test]
async fn forward_failed() {
    on_each_store(|store| async move {
        let (audit, writer) = Audit::start(store.clone(), "node-a".into());
        // Allowed, audited, then the dial failed.
        let f = record("conn-1", "alice", Some("db-1"), "db-1");
        let fw = audit.forward_open(f, "10.0.1.5:22").await.unwrap();
        let id = fw.id();
        fw.failed(ForwardStop::ConnectTimeout.into()).await;
        // Allowed but refused before any row (e.g. name did not resolve).
        let g = record("conn-1", "alice", Some("db-2"), "db-2");
        audit
            .forward_refused(&g, ForwardResult::Failed, Refusal::ResolveFailed)
            .await;
        flush(audit, writer).await;

        let row = session(&store, id).await;
        assert_eq!(row.result, "failed");
        assert_eq!(row.reason.as_deref(), Some("connect_timeout"));
        assert_eq!(row.close_reason.as_deref(), Some("connect_timeout"));
        assert_eq!(row.address.as_deref(), Some("10.0.1.5:22"));
        assert!(row.ended_at.is_some());

        let rows = sessions(
            &store,
            SessionFilter {
                target: Some("db-2".into()),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].result, "failed");
        assert_eq!(rows[0].reason.as_deref(), Some("resolve_failed"));
        assert!(rows[0].ended_at.is_some());

        let evs = events(&store, EventFilter::default()).await;
        assert_eq!(
            kinds(&evs),
            ["forward.open", "forward.close", "forward.denied"]
        );
        assert_eq!(evs[1].reason.as_deref(), Some("connect_timeout"));
        assert_eq!(evs[1].detail["result"], json!("failed"));
        assert_eq!(evs[1].detail["forward_id"], json!(id));
        assert_eq!(evs[2].reason.as_deref(), Some("resolve_failed"));
        assert_eq!(evs[2].detail["result"], json!("failed"));
    })
    .await;
}

// ---- sessions: filters and order ----

/// Five forwards at fixed times; returns their ids in insertion order:
/// 0 alice db-1 T0, 1 bob db-1 T0+1s, 2 alice web T0+2s,
/// 3 bob (no target) T0+2s, 4 alice db-1 T0+3s.
async fn five_forwards(store: &Store) -> Vec<i64> {
    let (audit, writer) = Audit::start(store.clone(), "node-a".into());
    let rows = [
        ("alice", Some("db-1"), 0),
        ("bob", Some("db-1"), SECOND),
        ("alice", Some("web"), 2 * SECOND),
        ("bob", None, 2 * SECOND),
        ("alice", Some("db-1"), 3 * SECOND),
    ];
    let mut ids = Vec::new();
    for (user, target, offset) in rows {
        let f = record("conn-x", user, target, target.unwrap_or("10.0.0.1"));
        let id = match target {
            Some(_) => audit
                .forward_open(f, "10.0.1.5:22")
                .await
                .unwrap()
                .leave_open(),
            None => {
                audit
                    .forward_refused(&f, ForwardResult::Denied, Refusal::UnknownTarget)
                    .await;
                let all = sessions(store, SessionFilter::default()).await;
                all.iter().map(|r| r.id).max().unwrap()
            }
        };
        set_started(store, id, T0 + offset).await;
        ids.push(id);
    }
    flush(audit, writer).await;
    ids
}

#[tokio::test]
async fn sessions_newest_first() {
    on_each_store(|store| async move {
        let id = five_forwards(&store).await;
        let rows = sessions(&store, SessionFilter::default()).await;
        // Same start time: the later row (higher id) first.
        assert_eq!(ids(&rows), [id[4], id[3], id[2], id[1], id[0]]);
        assert_eq!(rows[4].started_at, T0_TEXT);
        assert_eq!(rows[0].started_at, "2027-01-15T08:00:03Z");
    })
    .await;
}

#[tokio::test]
async fn sessions_filter_by_user_and_target() {
    on_each_store(|store| async move {
        let id = five_forwards(&store).await;
        let by = |user: Option<&str>, target: Option<&str>| SessionFilter {
            user: user.map(str::to_string),
            target: target.map(str::to_string),
            ..Default::default()
        };
        let alice = sessions(&store, by(Some("alice"), None)).await;
        assert_eq!(ids(&alice), [id[4], id[2], id[0]]);
        assert!(alice.iter().all(|r| r.user == "alice"));
        assert_eq!(
            ids(&sessions(&store, by(Some("bob"), None)).await),
            [id[3], id[1]]
        );
        assert_eq!(
            ids(&sessions(&store, by(None, Some("db-1"))).await),
            [id[4], id[1], id[0]]
        );
        assert_eq!(
            ids(&sessions(&store, by(Some("alice"), Some("db-1"))).await),
            [id[4], id[0]]
        );
        assert_eq!(
            ids(&sessions(&store, by(Some("bob"), Some("web"))).await),
            Vec::<i64>::new()
        );
        // Exact matches only.
        assert_eq!(
            ids(&sessions(&store, by(Some("ALICE"), None)).await),
            Vec::<i64>::new()
        );
        assert_eq!(
            ids(&sessions(&store, by(Some("ali%"), None)).await),
            Vec::<i64>::new()
        );
        assert_eq!(
            ids(&sessions(&store, by(None, Some("db"))).await),
            Vec::<i64>::new()
        );
        assert_eq!(
            ids(&sessions(&store, by(Some("carol"), None)).await),
            Vec::<i64>::new()
        );
    })
    .await;
}

#[tokio::test]
async fn sessions_filter_by_time_with_inclusive_bounds() {
    on_each_store(|store| async move {
        let id = five_forwards(&store).await;
        let window = |since: Option<i64>, until: Option<i64>| SessionFilter {
            since,
            until,
            ..Default::default()
        };
        let got = |f| {
            let store = store.clone();
            async move { ids(&sessions(&store, f).await) }
        };
        assert_eq!(
            got(window(Some(T0 + SECOND), None)).await,
            [id[4], id[3], id[2], id[1]]
        );
        assert_eq!(
            got(window(Some(T0 + SECOND + 1), None)).await,
            [id[4], id[3], id[2]]
        );
        assert_eq!(
            got(window(None, Some(T0 + 2 * SECOND))).await,
            [id[3], id[2], id[1], id[0]]
        );
        assert_eq!(
            got(window(None, Some(T0 + 2 * SECOND - 1))).await,
            [id[1], id[0]]
        );
        assert_eq!(
            got(window(Some(T0 + 2 * SECOND), Some(T0 + 2 * SECOND))).await,
            [id[3], id[2]]
        );
        assert_eq!(
            got(window(Some(T0 + SECOND), Some(T0 + 2 * SECOND))).await,
            [id[3], id[2], id[1]]
        );
        assert_eq!(
            got(window(Some(T0 + 3 * SECOND + 1), None)).await,
            Vec::<i64>::new()
        );
        assert_eq!(got(window(None, Some(T0 - 1))).await, Vec::<i64>::new());
        // An empty window.
        assert_eq!(
            got(window(Some(T0 + 3 * SECOND), Some(T0))).await,
            Vec::<i64>::new()
        );
        // Combined with a user.
        let f = SessionFilter {
            user: Some("alice".into()),
            since: Some(T0 + SECOND),
            until: Some(T0 + 3 * SECOND),
            ..Default::default()
        };
        assert_eq!(got(f).await, [id[4], id[2]]);
    })
    .await;
}

#[tokio::test]
async fn sessions_limit_keeps_the_newest() {
    on_each_store(|store| async move {
        let id = five_forwards(&store).await;
        let limit = |n| SessionFilter {
            limit: Some(n),
            ..Default::default()
        };
        assert_eq!(ids(&sessions(&store, limit(2)).await), [id[4], id[3]]);
        assert_eq!(ids(&sessions(&store, limit(5)).await).len(), 5);
        assert_eq!(ids(&sessions(&store, limit(100)).await).len(), 5);
        let f = SessionFilter {
            user: Some("alice".into()),
            limit: Some(2),
            ..Default::default()
        };
        assert_eq!(ids(&sessions(&store, f).await), [id[4], id[2]]);
    })
    .await;
}

/// The console pages: keyset pages walk every row once, newest first,
/// however the start times tie; and the result, source and open filters.
#[tokio::test]
async fn sessions_keyset_pages_and_console_filters() {
    on_each_store(|store| async move {
        let id = five_forwards(&store).await;
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = sessions(
                &store,
                SessionFilter {
                    limit: Some(2),
                    before,
                    ..Default::default()
                },
            )
            .await;
            seen.extend(ids(&page));
            match page.last() {
                Some(r) if page.len() == 2 => {
                    before = Some(query::Before {
                        at: r.started_micros,
                        id: r.id,
                    })
                }
                _ => break,
            }
        }
        assert_eq!(seen, [id[4], id[3], id[2], id[1], id[0]]);
        let by = |f: SessionFilter| {
            let store = store.clone();
            async move { ids(&sessions(&store, f).await) }
        };
        let denied = SessionFilter {
            result: Some("denied".into()),
            ..Default::default()
        };
        assert_eq!(by(denied).await, [id[3]]);
        let open = SessionFilter {
            open: true,
            ..Default::default()
        };
        assert_eq!(by(open).await, [id[4], id[2], id[1], id[0]]);
        let source = all_sources(&store).await;
        let ip = source.rsplit_once(':').unwrap().0.to_string();
        for s in [source.clone(), ip] {
            let f = SessionFilter {
                source: Some(s),
                ..Default::default()
            };
            assert_eq!(by(f).await.len(), 5);
        }
        let other = SessionFilter {
            source: Some("192.0.2.1".into()),
            ..Default::default()
        };
        assert!(by(other).await.is_empty());
    })
    .await;
}

/// The source filter by address matches whole addresses only (10.0.0.1
/// is not 10.0.0.10), IPv6 in brackets or not; by `ip:port` exactly.
#[tokio::test]
async fn sessions_by_source_address() {
    on_each_store(|store| async move {
        let id = five_forwards(&store).await;
        let sources = [
            "10.0.0.1:5",
            "10.0.0.10:5",
            "[2001:db8::1]:22",
            "[2001:db8::10]:22",
            "10.0.0.1:6",
        ];
        for (i, src) in id.iter().zip(sources) {
            sqlx::query("UPDATE forwards SET source = $1 WHERE id = $2")
                .bind(src)
                .bind(*i)
                .execute(store.pool())
                .await
                .unwrap();
        }
        let by = |s: &str| {
            let store = store.clone();
            let f = SessionFilter {
                source: Some(s.to_string()),
                ..Default::default()
            };
            async move { ids(&sessions(&store, f).await) }
        };
        assert_eq!(by("10.0.0.1").await, [id[4], id[0]]);
        assert_eq!(by("10.0.0.10").await, [id[1]]);
        assert_eq!(by("10.0.0.1:5").await, [id[0]]);
        assert_eq!(by("2001:db8::1").await, [id[2]]);
        assert_eq!(by("[2001:db8::1]").await, [id[2]]);
        assert_eq!(by("[2001:db8::10]:22").await, [id[3]]);
        assert!(by("10.0.0").await.is_empty());
    })
    .await;
}

async fn all_sources(store: &Store) -> String {
    sessions(store, SessionFilter::default()).await[0]
        .source
        .clone()
}

#[tokio::test]
async fn session_by_id() {
    on_each_store(|store| async move {
        let id = five_forwards(&store).await;
        let all = sessions(&store, SessionFilter::default()).await;
        for row in &all {
            assert_eq!(&session(&store, row.id).await, row);
        }
        let missing = id.iter().max().unwrap() + 1000;
        assert_eq!(query::session(&store, missing).await.unwrap(), None);
        assert_eq!(query::session(&store, 0).await.unwrap(), None);
        assert_eq!(query::session(&store, -1).await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn empty_store_has_no_sessions_and_no_events() {
    on_each_store(|store| async move {
        assert_eq!(sessions(&store, SessionFilter::default()).await, []);
        assert_eq!(query::session(&store, 1).await.unwrap(), None);
        assert_eq!(events(&store, EventFilter::default()).await, []);
    })
    .await;
}

// ---- events ----

/// Six events of two connections, emitted out of time order, at T0..T0+4s.
async fn some_events(store: &Store) {
    let (audit, writer) = Audit::start(store.clone(), "node-b".into());
    let src = source();
    // Emitted in this order; `at` decides the order they are read in.
    audit.emit(
        event_at(EventKind::AuthFailure, T0 + 2 * SECOND)
            .connection("c2", src)
            .user("bob")
            .reason(AuthFailure::UnknownKey),
    );
    audit.emit(event_at(EventKind::ConnectionOpen, T0).connection("c1", src));
    audit.emit(
        event_at(EventKind::AuthSuccess, T0 + SECOND)
            .connection("c1", src)
            .user("alice")
            .detail("method", "certificate"),
    );
    audit.emit(event_at(EventKind::ConnectionOpen, T0 + 2 * SECOND).connection("c2", src));
    audit.emit(event_at(EventKind::ConfigReload, T0 + 3 * SECOND).detail("targets", 4));
    audit.emit(
        event_at(EventKind::ConnectionClose, T0 + 4 * SECOND)
            .connection("c1", src)
            .user("alice")
            .reason(CloseReason::ClientClosed),
    );
    flush(audit, writer).await;
}

fn summary(rows: &[EventRow]) -> Vec<(&str, Option<&str>, Option<&str>)> {
    rows.iter()
        .map(|r| {
            (
                r.kind.as_str(),
                r.user.as_deref(),
                r.connection_id.as_deref(),
            )
        })
        .collect()
}

#[tokio::test]
async fn events_oldest_first() {
    on_each_store(|store| async move {
        some_events(&store).await;
        let rows = events(&store, EventFilter::default()).await;
        assert_eq!(
            summary(&rows),
            [
                ("connection.open", None, Some("c1")),
                ("auth.success", Some("alice"), Some("c1")),
                // Same time: in the order they were written.
                ("auth.failure", Some("bob"), Some("c2")),
                ("connection.open", None, Some("c2")),
                ("config.reload", None, None),
                ("connection.close", Some("alice"), Some("c1")),
            ]
        );
        assert_eq!(rows[0].at, T0_TEXT);
        assert_eq!(rows[5].at, "2027-01-15T08:00:04Z");
        assert!(rows.iter().all(|r| r.node == "node-b"));
        assert_eq!(rows[2].reason.as_deref(), Some("unknown_key"));
        assert_eq!(rows[2].source.as_deref(), Some("192.0.2.10:50022"));
        assert_eq!(rows[4].source, None);
        assert_eq!(rows[1].detail, json!({"method": "certificate"}));
        assert_eq!(rows[0].detail, json!({}));
    })
    .await;
}

#[tokio::test]
async fn events_filter_by_kind_user_connection() {
    on_each_store(|store| async move {
        some_events(&store).await;
        let f = |kind: Option<&str>, user: Option<&str>, conn: Option<&str>| EventFilter {
            kind: kind.map(str::to_string),
            user: user.map(str::to_string),
            connection_id: conn.map(str::to_string),
            ..Default::default()
        };
        let rows = events(&store, f(Some("connection.open"), None, None)).await;
        assert_eq!(
            summary(&rows),
            [
                ("connection.open", None, Some("c1")),
                ("connection.open", None, Some("c2"))
            ]
        );
        let rows = events(&store, f(None, Some("alice"), None)).await;
        assert_eq!(kinds(&rows), ["auth.success", "connection.close"]);
        let rows = events(&store, f(None, None, Some("c2"))).await;
        assert_eq!(kinds(&rows), ["auth.failure", "connection.open"]);
        let rows = events(&store, f(Some("auth.success"), Some("alice"), Some("c1"))).await;
        assert_eq!(kinds(&rows), ["auth.success"]);
        assert_eq!(
            events(&store, f(Some("auth.success"), Some("bob"), None)).await,
            []
        );
        assert_eq!(events(&store, f(Some("auth"), None, None)).await, []);
        assert_eq!(events(&store, f(None, Some("nobody"), None)).await, []);
    })
    .await;
}

#[tokio::test]
async fn events_filter_by_time_and_limit() {
    on_each_store(|store| async move {
        some_events(&store).await;
        let f = |since: Option<i64>, until: Option<i64>, limit: Option<i64>| EventFilter {
            since,
            until,
            limit,
            ..Default::default()
        };
        let rows = events(&store, f(Some(T0 + 2 * SECOND), None, None)).await;
        assert_eq!(
            kinds(&rows),
            [
                "auth.failure",
                "connection.open",
                "config.reload",
                "connection.close"
            ]
        );
        let rows = events(&store, f(Some(T0 + 2 * SECOND + 1), None, None)).await;
        assert_eq!(kinds(&rows), ["config.reload", "connection.close"]);
        let rows = events(&store, f(None, Some(T0 + SECOND), None)).await;
        assert_eq!(kinds(&rows), ["connection.open", "auth.success"]);
        let rows = events(&store, f(None, Some(T0 + SECOND - 1), None)).await;
        assert_eq!(kinds(&rows), ["connection.open"]);
        let rows = events(&store, f(Some(T0 + SECOND), Some(T0 + 3 * SECOND), None)).await;
        assert_eq!(kinds(&rows).len(), 4);
        assert_eq!(
            events(&store, f(Some(T0 + 5 * SECOND), None, None)).await,
            []
        );
        // The newest `limit`, still oldest first.
        let rows = events(&store, f(None, None, Some(2))).await;
        assert_eq!(kinds(&rows), ["config.reload", "connection.close"]);
        let rows = events(&store, f(None, Some(T0 + 2 * SECOND), Some(2))).await;
        assert_eq!(kinds(&rows), ["auth.failure", "connection.open"]);
        // since with a kind.
        let g = EventFilter {
            since: Some(T0 + SECOND),
            kind: Some("connection.open".into()),
            ..Default::default()
        };
        assert_eq!(
            summary(&events(&store, g).await),
            [("connection.open", None, Some("c2"))]
        );
    })
    .await;
}

#[tokio::test]
async fn event_detail_round_trips_as_json() {
    on_each_store(|store| async move {
        let (audit, writer) = Audit::start(store.clone(), "node-a".into());
        let nested = json!({
            "list": [1, "two", null, true, 2.5],
            "deep": {"a": {"b": []}},
        });
        audit.emit(
            Event::new(EventKind::GrantCreate)
                .user("alice")
                .detail(
                    "text",
                    "quote \" backslash \\ newline \n tab \t unicode åäö ✓ \u{1F600}",
                )
                .detail("sql", "'); DROP TABLE audit_events; --")
                .detail("big", i64::MAX)
                .detail("negative", -42)
                .detail("float", 0.1)
                .detail("yes", true)
                .detail("nothing", Value::Null)
                .detail("nested", nested.clone()),
        );
        audit.emit(Event::new(EventKind::LockoutBan));
        flush(audit, writer).await;
        let rows = events(&store, EventFilter::default()).await;
        assert_eq!(kinds(&rows), ["grant.create", "lockout.ban"]);
        assert_eq!(
            rows[0].detail,
            json!({
                "text": "quote \" backslash \\ newline \n tab \t unicode åäö ✓ \u{1F600}",
                "sql": "'); DROP TABLE audit_events; --",
                "big": i64::MAX,
                "negative": -42,
                "float": 0.1,
                "yes": true,
                "nothing": null,
                "nested": nested,
            })
        );
        assert_eq!(rows[1].detail, json!({}));
        // The whole row serializes as `audit list --json` prints it.
        let json = serde_json::to_value(&rows[0]).unwrap();
        for field in ["id", "at", "kind", "user", "source", "detail"] {
            assert!(json.get(field).is_some(), "no {field} in {json}");
        }
        assert_eq!(json["detail"]["nested"], nested);
    })
    .await;
}

#[tokio::test]
async fn every_event_kind_is_stored_under_its_name() {
    on_each_store(|store| async move {
        let (audit, writer) = Audit::start(store.clone(), "node-a".into());
        for (i, kind) in EventKind::ALL.iter().enumerate() {
            audit.emit(event_at(*kind, T0 + i as i64));
        }
        flush(audit, writer).await;
        let rows = events(&store, EventFilter::default()).await;
        // DESIGN.md §5's twelve, then the ones added since (docs/AUDIT.md).
        assert_eq!(
            kinds(&rows),
            [
                "auth.success",
                "auth.failure",
                "connection.open",
                "connection.close",
                "forward.open",
                "forward.denied",
                "forward.close",
                "grant.create",
                "grant.revoke",
                "lockout.ban",
                "config.reload",
                "channel.refused",
                "audit.prune",
                "connection.refused",
                "totp.enroll",
                "totp.reset",
                "lockout.clear",
                "lockout.user",
                "audit.checkpoint",
                "request.create",
                "request.approve",
                "request.deny",
                "request.expire",
                "request.revoke",
                "request.notify_failed",
                "request.refused",
                "recording.start",
                "recording.end",
                "file.op",
                "agent.forward",
                "remote.forward",
                "console.login",
                "console.view",
                "console.action",
            ]
        );
    })
    .await;
}

// ---- connections ----

/// (node, source, user, method, opened, authenticated, closed, close_reason, client_version)
type ConnRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

async fn connection_row(store: &Store, id: &str) -> Option<ConnRow> {
    let row = sqlx::query(
        "SELECT node, source, user_name, auth_method, opened_at, authenticated_at, closed_at, close_reason, client_version \
         FROM connections WHERE id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(store.pool())
    .await
    .unwrap()?;
    Some((
        row.try_get(0).unwrap(),
        row.try_get(1).unwrap(),
        row.try_get(2).unwrap(),
        row.try_get(3).unwrap(),
        row.try_get(4).unwrap(),
        row.try_get(5).unwrap(),
        row.try_get(6).unwrap(),
        row.try_get(7).unwrap(),
        row.try_get(8).unwrap(),
    ))
}

#[tokio::test]
async fn connection_open_login_close() {
    on_each_store(|store| async move {
        let (audit, writer) = Audit::start(store.clone(), "node-a".into());
        let src: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
        let before = crate::clock::now_micros();
        audit.connection_open("c1", src);
        assert!(
            audit
                .login(
                    "c1",
                    src,
                    Event::new(EventKind::AuthSuccess).detail("key_fingerprint", "SHA256:x"),
                    "alice",
                    crate::reasons::AuthMethod::Certificate,
                    0.25,
                )
                .await,
            "the login's row is stored before login() returns"
        );
        audit.connection_close(
            "c1",
            src,
            Some("alice"),
            CloseReason::ClientClosed,
            Duration::from_secs(3),
            Some("SSH-2.0-OpenSSH_9.2p1"),
        );
        // One that never logged in.
        audit.connection_open("c2", src);
        audit.connection_close(
            "c2",
            src,
            None,
            CloseReason::LoginTimeout,
            Duration::from_secs(300),
            None,
        );
        flush(audit, writer).await;
        let after = crate::clock::now_micros();

        let (node, source, user, method, opened, authed, closed, reason, version) =
            connection_row(&store, "c1").await.unwrap();
        assert_eq!(node, "node-a");
        assert_eq!(source, "[2001:db8::7]:40000");
        assert_eq!(user.as_deref(), Some("alice"));
        assert_eq!(method.as_deref(), Some("certificate"));
        let (authed, closed) = (authed.unwrap(), closed.unwrap());
        assert!(before <= opened && opened <= authed && authed <= closed && closed <= after);
        assert_eq!(reason.as_deref(), Some("client_closed"));
        assert_eq!(version.as_deref(), Some("SSH-2.0-OpenSSH_9.2p1"));

        let c2 = connection_row(&store, "c2").await.unwrap();
        assert_eq!((c2.2, c2.3, c2.5), (None, None, None));
        assert_eq!(c2.7.as_deref(), Some("login_timeout"));
        assert_eq!(c2.8, None);

        let rows = events(
            &store,
            EventFilter {
                connection_id: Some("c1".into()),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            kinds(&rows),
            ["connection.open", "auth.success", "connection.close"]
        );
        assert!(
            rows.iter()
                .all(|r| r.source.as_deref() == Some("[2001:db8::7]:40000"))
        );
        assert_eq!(rows[0].user, None);
        assert_eq!(rows[1].user.as_deref(), Some("alice"));
        assert_eq!(
            rows[1].detail,
            json!({"key_fingerprint": "SHA256:x", "method": "certificate", "login_seconds": 0.25})
        );
        assert_eq!(rows[2].user.as_deref(), Some("alice"));
        assert_eq!(rows[2].reason.as_deref(), Some("client_closed"));
        assert_eq!(
            rows[2].detail,
            json!({"duration_seconds": 3.0, "client_version": "SSH-2.0-OpenSSH_9.2p1"})
        );
        let c2 = events(
            &store,
            EventFilter {
                connection_id: Some("c2".into()),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(kinds(&c2), ["connection.open", "connection.close"]);
        assert_eq!(c2[1].user, None);
        assert_eq!(c2[1].reason.as_deref(), Some("login_timeout"));
    })
    .await;
}

// ---- crash recovery ----

/// Start `node`'s writer, close what a crash left open, flush.
async fn interrupt(store: &Store, node: &str) -> u64 {
    let (audit, writer) = Audit::start(store.clone(), node.into());
    let n = mark_interrupted(&audit).await.unwrap();
    flush(audit, writer).await;
    n
}

#[tokio::test]
async fn mark_interrupted_closes_only_open_forwards_of_the_node() {
    on_each_store(|store| async move {
        let (a, a_writer) = Audit::start(store.clone(), "node-a".into());
        let (b, b_writer) = Audit::start(store.clone(), "node-b".into());
        let f = record("conn-a", "alice", Some("db-1"), "db-1");
        let open_a = a.forward_open(f.clone(), "10.0.1.5:22").await.unwrap();
        let open_a = open_a.leave_open();
        let fw = a.forward_open(f.clone(), "10.0.1.5:22").await.unwrap();
        let closed_a = fw.id();
        let fw = fw
            .dialled("10.0.1.5:22".parse().unwrap(), "10.0.1.5:22")
            .await;
        let totals = Totals {
            to_target: 1,
            from_target: 2,
        };
        fw.closed(totals, ForwardStop::Closed.into()).await;
        let fw = a.forward_open(f.clone(), "10.0.1.5:22").await.unwrap();
        let failed_a = fw.id();
        fw.failed(ForwardStop::ConnectRefused.into()).await;
        a.forward_refused(&f, ForwardResult::Denied, Refusal::UserNotAllowed)
            .await;
        let g = record("conn-b", "bob", Some("db-1"), "db-1");
        let open_b = b.forward_open(g, "10.0.1.5:22").await.unwrap();
        let open_b = open_b.leave_open();
        a.connection_open("conn-a", source());
        a.connection_open("conn-a2", source());
        a.connection_close(
            "conn-a2",
            source(),
            None,
            CloseReason::ClientClosed,
            Duration::ZERO,
            None,
        );
        b.connection_open("conn-b", source());
        flush(a, a_writer).await;
        flush(b, b_writer).await;

        let before: Vec<SessionRow> = sessions(&store, SessionFilter::default()).await;
        let was = |id: i64| before.iter().find(|r| r.id == id).unwrap().clone();

        let t = crate::clock::now_micros();
        assert_eq!(interrupt(&store, "node-a").await, 1);

        let row = session(&store, open_a).await;
        assert_eq!(row.close_reason.as_deref(), Some("interrupted"));
        assert!(rfc3339_secs(row.ended_at.as_deref().unwrap()) >= (t / SECOND) as u64);
        assert_eq!(row.result, "allowed");
        // Everything else is as it was.
        for id in [closed_a, failed_a, open_b] {
            assert_eq!(session(&store, id).await, was(id), "forward {id}");
        }
        let denied = before.iter().find(|r| r.result == "denied").unwrap();
        assert_eq!(&session(&store, denied.id).await, denied);
        assert_eq!(session(&store, open_b).await.ended_at, None);

        // Connections: the open one of node-a is closed, the others untouched.
        let conn = connection_row(&store, "conn-a").await.unwrap();
        assert!(conn.6.is_some());
        assert_eq!(conn.7.as_deref(), Some("interrupted"));
        let a2 = connection_row(&store, "conn-a2").await.unwrap();
        assert_eq!(a2.7.as_deref(), Some("client_closed"));
        let b_conn = connection_row(&store, "conn-b").await.unwrap();
        assert_eq!((b_conn.6, b_conn.7), (None, None));

        // Each row closed has its close event, at the row's time.
        let closes = events(
            &store,
            EventFilter {
                kind: Some("forward.close".into()),
                ..Default::default()
            },
        )
        .await;
        let interrupted: Vec<_> = closes
            .iter()
            .filter(|e| e.reason.as_deref() == Some("interrupted"))
            .collect();
        assert_eq!(interrupted.len(), 1, "{closes:#?}");
        assert_eq!(interrupted[0].detail["forward_id"], json!(open_a));
        assert_eq!(interrupted[0].at, row.ended_at.clone().unwrap());
        let conn_closes = events(
            &store,
            EventFilter {
                kind: Some("connection.close".into()),
                ..Default::default()
            },
        )
        .await;
        assert!(
            conn_closes
                .iter()
                .any(|e| e.connection_id.as_deref() == Some("conn-a")
                    && e.reason.as_deref() == Some("interrupted")),
            "{conn_closes:#?}"
        );

        // Nothing left to mark: idempotent.
        assert_eq!(interrupt(&store, "node-a").await, 0);
        assert_eq!(interrupt(&store, "node-c").await, 0);
        assert_eq!(interrupt(&store, "node-b").await, 1);
        assert_eq!(
            session(&store, open_b).await.close_reason.as_deref(),
            Some("interrupted")
        );
    })
    .await;
}

// ---- opening the store ----

#[tokio::test]
async fn store_open_twice_is_fine() {
    on_each_url(|url| async move {
        let first = Store::open(&url).await.unwrap();
        let (audit, writer) = Audit::start(first.clone(), "node-a".into());
        let f = record("conn-1", "alice", Some("db-1"), "db-1");
        let id = audit
            .forward_open(f.clone(), "10.0.1.5:22")
            .await
            .unwrap()
            .leave_open();
        flush(audit, writer).await;

        // A second open (restart, or a CLI command) while the first is live.
        let second = Store::open(&url).await.unwrap();
        second.ping().await.unwrap();
        assert_eq!(session(&second, id).await.user, "alice");
        assert_eq!(events(&second, EventFilter::default()).await.len(), 1);
        let applied: i64 = sqlx::query("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(second.pool())
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        let dialect = match second.backend() {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(dialect);
        let files = std::fs::read_dir(folder).unwrap().count();
        assert_eq!(applied as usize, files);
        // And the new pool writes too.
        let (audit, writer) = Audit::start(second.clone(), "node-a".into());
        let id2 = audit
            .forward_open(f, "10.0.1.5:22")
            .await
            .unwrap()
            .leave_open();
        flush(audit, writer).await;
        assert!(id2 > id);
        assert_eq!(sessions(&first, SessionFilter::default()).await.len(), 2);
        first.close().await;
        second.close().await;
        // A third open after both closed.
        let third = Store::open(&url).await.unwrap();
        assert_eq!(sessions(&third, SessionFilter::default()).await.len(), 2);
        third.close().await;
    })
    .await;
}

/// Several nodes starting at once against one fresh PostgreSQL database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_store_open_on_fresh_postgres() {
    for round in 0..3 {
        let Some(db) = TestDb::postgres().await else {
            eprintln!("{POSTGRES_ENV} is not set: skipped");
            return;
        };
        let opens = (0..4).map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { Store::open(&url).await })
        });
        let mut stores = Vec::new();
        for open in futures::future::join_all(opens).await {
            match open.unwrap() {
                Ok(store) => stores.push(store),
                Err(e) => panic!("round {round}: concurrent Store::open failed: {e}"),
            }
        }
        // All of them work on the one schema.
        for (i, store) in stores.iter().enumerate() {
            let (audit, writer) = Audit::start(store.clone(), format!("node-{i}"));
            let f = record(&format!("conn-{i}"), "alice", Some("db-1"), "db-1");
            audit
                .forward_open(f, "10.0.1.5:22")
                .await
                .unwrap()
                .leave_open();
            flush(audit, writer).await;
        }
        assert_eq!(
            sessions(&stores[0], SessionFilter::default()).await.len(),
            4
        );
        for store in stores {
            store.close().await;
        }
    }
}

/// Two processes opening one fresh SQLite file at once (`portvakt serve`
/// and a CLI command on a new installation). sqlx takes no lock for SQLite
/// migrations, so both apply them and the slower one fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_store_open_on_fresh_sqlite() {
    for round in 0..5 {
        let db = TestDb::sqlite();
        let opens = (0..4).map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { Store::open(&url).await })
        });
        for open in futures::future::join_all(opens).await {
            if let Err(e) = open.unwrap() {
                panic!("round {round}: concurrent Store::open failed: {e}");
            }
        }
    }
}

// ---- hostile input ----

/// The client's SSH version string is any UTF-8 after `SSH-2.0-`: a NUL in
/// it must not cost the connection its close row (PostgreSQL refuses NUL).
#[tokio::test]
async fn a_nul_in_the_client_version_keeps_the_close_row() {
    on_each_store(|store| async move {
        let (audit, writer) = Audit::start(store.clone(), "node-a".into());
        let src = source();
        audit.connection_open("c-nul", src);
        audit.connection_close(
            "c-nul",
            src,
            Some("alice"),
            CloseReason::ClientClosed,
            Duration::from_secs(1),
            Some("SSH-2.0-evil\0x\u{202E}"),
        );
        flush(audit, writer).await;
        let row = connection_row(&store, "c-nul").await.unwrap();
        assert_eq!(
            row.7.as_deref(),
            Some("client_closed"),
            "the close row is missing"
        );
        assert_eq!(row.8.as_deref(), Some("SSH-2.0-evil\u{FFFD}x\u{FFFD}"));
    })
    .await;
}

/// Client-controlled text (an SSH user name, a requested host) may hold any
/// character, NUL included: `auth.failure` records the user name as sent,
/// even when the refusal is `invalid_user_name`. Such a record must not
/// cost the audit trail the other records written with it.
#[tokio::test]
async fn a_nul_byte_in_client_text_loses_no_other_record() {
    on_each_store(|store| async move {
        let (audit, writer) = Audit::start(store.clone(), "node-a".into());
        let src = source();
        audit.emit(Event::new(EventKind::ConnectionOpen).connection("c1", src));
        audit.emit(
            Event::new(EventKind::AuthFailure)
                .connection("c1", src)
                .user("evil\0user")
                .reason(AuthFailure::InvalidUserName),
        );
        audit.emit(
            Event::new(EventKind::AuthFailure)
                .connection("c1", src)
                .user("alice")
                .reason(AuthFailure::UnknownKey),
        );
        drop(audit);
        writer.await.unwrap();
        let rows = events(&store, EventFilter::default()).await;
        let users: Vec<Option<&str>> = rows.iter().map(|r| r.user.as_deref()).collect();
        assert!(
            users.contains(&Some("alice")) && rows.iter().any(|r| r.kind == "connection.open"),
            "records lost next to one with a NUL byte: {users:?}"
        );
        assert_eq!(
            rows.len(),
            3,
            "the hostile record itself is kept too: {users:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_nul_byte_in_a_denied_host_keeps_the_row() {
    on_each_store(|store| async move {
        let (audit, writer) = Audit::start(store.clone(), "node-a".into());
        let f = record("c1", "alice", None, "db-1\0.evil");
        audit
            .forward_refused(&f, ForwardResult::Denied, Refusal::UnknownTarget)
            .await;
        let dropped = audit.dropped();
        drop(audit);
        writer.await.unwrap();
        let rows = sessions(&store, SessionFilter::default()).await;
        assert_eq!(
            rows.len(),
            1,
            "denied forward not stored (dropped {dropped})"
        );
    })
    .await;
}

#[tokio::test]
async fn retention_prunes_old_rows_but_never_open_forwards() {
    on_each_store(|store| async move {
        let (audit, writer) = Audit::start(store.clone(), "node-r".into());
        // First in the chain: retention deletes a prefix of each chain.
        audit.emit(event_at(EventKind::AuthFailure, 1_000));
        // Two forwards: one long over, one still open; both started long ago.
        let fw = audit
            .forward_open(
                record("c-old", "alice", Some("db-1"), "db-1"),
                "10.0.0.1:22",
            )
            .await
            .unwrap();
        let old = fw.id();
        let fw = fw
            .dialled("10.0.0.1:22".parse().unwrap(), "10.0.0.1:22")
            .await;
        let totals = Totals {
            to_target: 1,
            from_target: 2,
        };
        fw.closed(totals, ForwardStop::Closed.into()).await;
        let open = audit
            .forward_open(record("c-open", "bob", Some("db-1"), "db-1"), "10.0.0.1:22")
            .await
            .unwrap()
            .leave_open();
        audit.emit(event_at(EventKind::AuthSuccess, 9_000_000_000_000_000));
        flush(audit, writer).await;
        exec(
            &store,
            "UPDATE forwards SET started_at = $1, ended_at = $1 WHERE id = $2",
            2_000,
            old,
        )
        .await;
        exec(
            &store,
            "UPDATE forwards SET started_at = $1 WHERE id = $2",
            2_000,
            open,
        )
        .await;

        let (audit, writer) = Audit::start_signed(
            store.clone(),
            "node-r".into(),
            Checkpoints::for_test(1, 1000),
        );
        let pruned = crate::audit::prune(&audit, 1_000_000, "retention test")
            .await
            .unwrap();
        assert_eq!(pruned.forwards, 1, "{pruned:?}");
        assert!(pruned.events >= 1, "{pruned:?}");
        let left = ids(&sessions(&store, SessionFilter::default()).await);
        assert_eq!(
            left,
            vec![open],
            "the open forward stays, the old closed one goes"
        );
        let kinds_left: Vec<String> = events(&store, EventFilter::default())
            .await
            .iter()
            .map(|e| e.kind.clone())
            .collect();
        assert!(
            !kinds_left.contains(&"auth.failure".to_string()),
            "{kinds_left:?}"
        );
        assert!(
            kinds_left.contains(&"auth.success".to_string()),
            "{kinds_left:?}"
        );
        // A second pass finds nothing more.
        let again = crate::audit::prune(&audit, 1_000_000, "retention test")
            .await
            .unwrap();
        assert_eq!(again.forwards, 0);
        flush(audit, writer).await;
    })
    .await;
}

/// A record the database refuses is counted once as dropped (by the
/// writer), not again by the `record` that waited for it.
#[tokio::test]
async fn a_refused_record_is_counted_once() {
    on_each_store(|store| async move {
        let (audit, writer) = Audit::start(store.clone(), "node-x".into());
        assert!(
            audit
                .record(Event::new(EventKind::AuthSuccess).user("a"))
                .await
        );
        sqlx::query("ALTER TABLE audit_events RENAME TO audit_events_away")
            .execute(store.pool())
            .await
            .unwrap();
        let stored = audit
            .record(Event::new(EventKind::AuthSuccess).user("b"))
            .await;
        assert!(!stored, "stored without its table");
        assert_eq!(audit.dropped(), 1, "counted once");
        drop(audit);
        writer.await.unwrap();
        sqlx::query("ALTER TABLE audit_events_away RENAME TO audit_events")
            .execute(store.pool())
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn only_an_allowed_connection_end_is_a_command_for_the_nodes() {
    on_each_store(|store| async move {
        let (audit, writer) = Audit::start(store.clone(), "node-a".into());
        let end = |id: &str| {
            event_at(EventKind::ConsoleAction, T0)
                .user("adam")
                .detail("action", "connection_end")
                .detail("connection_id", id)
        };
        audit.emit(end("c-ended"));
        // Refused (no CSRF token, or a reviewer): on record, but no command.
        audit.emit(
            end("c-csrf")
                .reason(crate::reasons::ActionRefusal::CsrfInvalid)
                .detail("result", "refused"),
        );
        audit.emit(
            end("c-reviewer")
                .reason(crate::reasons::ActionRefusal::NotConsoleAdmin)
                .detail("result", "refused"),
        );
        flush(audit, writer).await;
        let ids = crate::audit::query::connection_ends(&store, T0)
            .await
            .unwrap();
        assert_eq!(ids, ["c-ended"]);
    })
    .await;
}
