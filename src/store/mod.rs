//! The database: one schema in two dialects (SQLite embedded, PostgreSQL for
//! several nodes), reached through sqlx's `Any` driver so that one query text
//! serves both. Placeholders are `$1`, times are unix microseconds.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A health check that takes longer than this counts as a failure.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AnyPool, Executor};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create database folder {path}: {source}")]
    Folder {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    /// The health probe found the database not answering: writes that must
    /// succeed are refused without trying (fail closed).
    #[error("database unavailable (health check failing)")]
    Unhealthy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A pool on the audit database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Did the last health check reach the database? Logins are refused
    /// while it is false (fail closed: no audit trail, no access).
    healthy: Arc<AtomicBool>,
    /// The SQLite database's file as the filesystem resolved it (`None`
    /// on PostgreSQL, or for a SQLite URL with `mode=memory`): readers
    /// that go to SQLite directly, outside the pool, open this.
    sqlite_file: Option<Arc<Path>>,
    /// SQLite in a file: one connection straight to the recordings file,
    /// for the chunk writes ([`Store::chunk_pool`]).
    chunks: Option<SqlitePool>,
}

/// How many `recording_chunks` tables the main file and the recordings
/// file have (0 or 1 each).
async fn chunk_tables(c: &mut sqlx::AnyConnection) -> Result<(i64, i64), sqlx::Error> {
    use sqlx::Row;
    let row = sqlx::query(
        "SELECT \
         (SELECT COUNT(*) FROM main.sqlite_master \
          WHERE type = 'table' AND name = 'recording_chunks') AS in_main, \
         (SELECT COUNT(*) FROM recording_data.sqlite_master \
          WHERE type = 'table' AND name = 'recording_chunks') AS in_file",
    )
    .fetch_one(&mut *c)
    .await?;
    Ok((row.try_get("in_main")?, row.try_get("in_file")?))
}

/// Recording chunks in the recordings file (the columns of
/// migrations/sqlite 0007 and 0010; a migration that changes
/// `recording_chunks` must change this and [`Store::move_chunks`] too).
const CHUNKS_TABLE: &str = "CREATE TABLE IF NOT EXISTS recording_data.recording_chunks (\
    recording_id BIGINT NOT NULL, \
    seq BIGINT NOT NULL, \
    data BLOB NOT NULL, \
    raw_bytes BIGINT NOT NULL, \
    codec TEXT NOT NULL DEFAULT 'lz4', \
    PRIMARY KEY (recording_id, seq))";

/// Where a SQLite database keeps its recordings' content: beside it,
/// `portvakt.db` → `portvakt-recordings.db` (with its own `-wal` and `-shm`).
///
/// A file of its own with 64 KiB pages: a 1 MiB chunk is 16 pages to write
/// (and to copy again at each checkpoint) instead of 256 overflow pages of
/// 4 KiB, which cuts what storing a recorded session's output costs
/// (docs/BENCHMARKS.md "Recorded targets"), while the main file keeps its
/// small pages for audit rows (a page is the unit every commit writes).
pub fn recordings_file(main: &Path) -> PathBuf {
    let stem = main.file_stem().unwrap_or_default().to_string_lossy();
    let name = match main.extension() {
        Some(ext) => format!("{stem}-recordings.{}", ext.to_string_lossy()),
        None => format!("{stem}-recordings"),
    };
    main.with_file_name(name)
}

/// Attach the recordings file to a new connection as `recording_data`:
/// the query text names `recording_chunks` alone, which SQLite finds there
/// once the main file has none (see [`Store::move_chunks`]). The page size
/// takes effect when the file is new, and must be set before WAL mode.
async fn attach_recordings(conn: &mut sqlx::AnyConnection, file: &str) -> Result<(), sqlx::Error> {
    sqlx::query("ATTACH DATABASE $1 AS recording_data")
        .bind(file)
        .execute(&mut *conn)
        .await?;
    for pragma in [
        "PRAGMA recording_data.page_size = 65536",
        "PRAGMA recording_data.journal_mode = WAL",
        "PRAGMA recording_data.synchronous = NORMAL",
    ] {
        conn.execute(pragma).await?;
    }
    Ok(())
}

/// A SQLite URL made ready for sqlx, and the file it names.
struct SqliteUrl {
    url: String,
    file: PathBuf,
    /// `mode=memory`: nothing on disk another reader could open.
    in_memory: bool,
}

/// The URL sqlx needs for a SQLite file given as a plain filesystem path
/// (what follows `sqlite://`, with optional `?options`). The folder is made
/// and resolved by the filesystem first: a URL parser would resolve `..`
/// against the URL's root, or take the first folder for a host name.
fn sqlite_url(path: &str) -> Result<SqliteUrl, StoreError> {
    use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
    /// Characters that would end or change the path part of the URL.
    const PATH: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b'?').add(b'#');
    let (file, query) = path.split_once('?').unwrap_or((path, ""));
    let folder_err = |dir: &Path, source| StoreError::Folder {
        path: dir.display().to_string(),
        source,
    };
    let file = Path::new(file);
    let absolute = std::path::absolute(file).map_err(|e| folder_err(file, e))?;
    let (Some(dir), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return Err(folder_err(
            &absolute,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
        ));
    };
    std::fs::create_dir_all(dir).map_err(|e| folder_err(dir, e))?;
    let dir = dir.canonicalize().map_err(|e| folder_err(dir, e))?;
    let resolved = dir.join(name);
    let Some(text) = resolved.to_str() else {
        return Err(folder_err(
            &resolved,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path is not UTF-8"),
        ));
    };
    let encoded = utf8_percent_encode(text, PATH);
    let url = if query.contains("mode=") {
        format!("sqlite://{encoded}?{query}")
    } else if query.is_empty() {
        format!("sqlite://{encoded}?mode=rwc")
    } else {
        format!("sqlite://{encoded}?{query}&mode=rwc")
    };
    Ok(SqliteUrl {
        url,
        in_memory: query.split('&').any(|o| o == "mode=memory"),
        file: resolved,
    })
}

impl Store {
    /// Connect, create the SQLite file if needed, and bring the schema up to
    /// date. Several nodes may run this at once: sqlx takes an advisory lock
    /// on PostgreSQL.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let store = Self::connect(url).await?;
        let migrator = match store.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        if let Err(e) = migrator.run(&store.pool).await {
            // SQLite has no migration lock: another process (serve and a CLI
            // command started together) may have applied the same migration
            // a moment earlier and ours rolled back. Look again.
            if store.backend != Backend::Sqlite {
                return Err(e.into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            migrator.run(&store.pool).await?;
        }
        if store.sqlite_file.is_some() {
            store.move_chunks().await?;
        }
        Ok(store)
    }

    /// SQLite in a file: recording chunks live in the recordings file
    /// ([`recordings_file`]), created here; chunks still in the main file
    /// (the migrations create the table there, and databases made before
    /// migration 0010 kept them there) are moved over, once, in one
    /// transaction.
    /// Nothing to do (the usual case) takes no write lock.
    async fn move_chunks(&self) -> Result<(), StoreError> {
        let mut c = self.pool.acquire().await?;
        let (in_main, in_file) = chunk_tables(&mut c).await?;
        if in_main == 0 && in_file > 0 {
            return Ok(());
        }
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *c).await?;
        let moved = async {
            sqlx::query(CHUNKS_TABLE).execute(&mut *c).await?;
            // Again under the lock: another process may have moved them.
            let (in_main, _) = chunk_tables(&mut c).await?;
            if in_main > 0 {
                sqlx::query(
                    "INSERT INTO recording_data.recording_chunks \
                     (recording_id, seq, data, raw_bytes, codec) \
                     SELECT recording_id, seq, data, raw_bytes, codec FROM main.recording_chunks",
                )
                .execute(&mut *c)
                .await?;
                sqlx::query("DROP TABLE main.recording_chunks")
                    .execute(&mut *c)
                    .await?;
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        let end = if moved.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = sqlx::query(end).execute(&mut *c).await;
        if ended.is_err() {
            // Maybe still in the transaction: not back to the pool.
            c.close_on_drop();
        }
        moved?;
        ended?;
        Ok(())
    }

    /// Connect without migrating (read-only CLI commands on a live database
    /// still migrate through `open`; this is for tests of failure paths).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let connect_err = |source| StoreError::Connect {
            url: redact(url),
            source,
        };
        let (backend, url, sqlite_file) = if let Some(path) = url.strip_prefix("sqlite://") {
            let u = sqlite_url(path)?;
            let file = (!u.in_memory).then(|| Arc::from(u.file));
            (Backend::Sqlite, u.url, file)
        } else {
            (Backend::Postgres, url.to_string(), None)
        };
        let options = AnyConnectOptions::from_str(&url).map_err(connect_err)?;
        let chunk_file: Option<Arc<str>> = match &sqlite_file {
            Some(main) => {
                let file = recordings_file(main);
                let Some(text) = file.to_str() else {
                    return Err(StoreError::Folder {
                        path: file.display().to_string(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            "the path is not UTF-8",
                        ),
                    });
                };
                Some(Arc::from(text))
            }
            None => None,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                // One writer at a time anyway; a few readers.
                Backend::Sqlite => 4,
                Backend::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                let chunk_file = chunk_file.clone();
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        if let Some(file) = chunk_file {
                            attach_recordings(conn, &file).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(connect_err)?;
        // Opened at the first chunk, after the pool above has made the file
        // (its first connection attaches it) and `open` the table.
        let chunks = sqlite_file.as_deref().map(|main| {
            let options = SqliteConnectOptions::new()
                .filename(recordings_file(main))
                .create_if_missing(false)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5));
            SqlitePoolOptions::new()
                // Chunk writes take the file's one write lock in turn anyway:
                // waiting here is in order, at the lock it is SQLite's
                // back-off sleeps.
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy_with(options)
        });
        Ok(Store {
            pool,
            backend,
            healthy: Arc::new(AtomicBool::new(true)),
            sqlite_file,
            chunks,
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// SQLite in a file: a connection to the recordings file alone
    /// ([`recordings_file`]), typed, for writing recording chunks. Through
    /// `sqlx::Any` a chunk bound to a query is copied twice before SQLite
    /// copies it (`Any` owns a copy, and converts it to the driver's own);
    /// here the chunk's buffer is moved in. `None` on PostgreSQL and in
    /// memory (the pool then does the writes).
    pub fn chunk_pool(&self) -> Option<&SqlitePool> {
        self.chunks.as_ref()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The SQLite database's file, for a reader that opens it directly
    /// (`audit verify`); `None` on PostgreSQL or in memory.
    pub fn sqlite_file(&self) -> Option<&Path> {
        self.sqlite_file.as_deref()
    }

    /// Is the database answering, and can it be written? (`/readyz`, and a
    /// clear refusal of new logins otherwise.) On SQLite a `SELECT 1` never
    /// touches the file, so the probe takes the write lock and lets go.
    ///
    /// The probe runs in a task of its own: if this call is cancelled (a
    /// timeout), the probe still finishes, and never hands a connection back
    /// to the pool in the middle of a transaction.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let probe = tokio::spawn(self.clone().probe());
        let r = match tokio::time::timeout(PING_TIMEOUT, probe).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) | Err(_) => Err(sqlx::Error::PoolTimedOut),
        };
        self.set_healthy(r.is_ok());
        r.map_err(StoreError::Query)
    }

    async fn probe(self) -> Result<(), sqlx::Error> {
        match self.backend {
            Backend::Postgres => sqlx::query("SELECT 1").execute(&self.pool).await.map(drop),
            Backend::Sqlite => {
                let mut c = self.pool.acquire().await?;
                // Wait for the write lock briefly, not the 5 s writes may wait.
                sqlx::query("PRAGMA busy_timeout = 1000")
                    .execute(&mut *c)
                    .await?;
                let locked = sqlx::query("BEGIN IMMEDIATE").execute(&mut *c).await;
                let locked_ok = locked.is_ok();
                let rolled_back = match locked {
                    Ok(_) => sqlx::query("ROLLBACK").execute(&mut *c).await.map(drop),
                    Err(e) => Err(e),
                };
                let restored = sqlx::query("PRAGMA busy_timeout = 5000")
                    .execute(&mut *c)
                    .await
                    .map(drop);
                if (locked_ok && rolled_back.is_err()) || restored.is_err() {
                    // Maybe still in the transaction (holding the write
                    // lock), or with the short timeout: this connection
                    // does not go back to the pool.
                    c.close_on_drop();
                }
                rolled_back.and(restored)
            }
        }
    }

    /// The result of the last health check (or failed write).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, ok: bool) {
        let was = self.healthy.swap(ok, Ordering::Relaxed);
        if was && !ok {
            tracing::error!(
                "database unreachable: new logins and forwards are refused until it answers again"
            );
        } else if !was && ok {
            tracing::info!("database reachable again");
        }
    }

    /// Check the database every couple of seconds until `stop`.
    pub async fn watch_health(self, stop: tokio_util::sync::CancellationToken) {
        loop {
            let _ = self.ping().await;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// SQLite in a file: checkpoint the recordings file's WAL every
    /// [`CHECKPOINT_EVERY`] on a pool connection of its own, until `stop`
    /// (nothing to do otherwise). Left to SQLite, the checkpoint runs in the
    /// commit that fills the WAL to 1,000 pages (64 MiB with the file's
    /// 64 KiB pages): copying those and the fsyncs took over 100 ms, during
    /// which a recorded session's chunk writer, and soon the session,
    /// stood still. A passive checkpoint beside the writer does the same
    /// work without holding it up.
    pub async fn checkpoint_recordings(self, stop: tokio_util::sync::CancellationToken) {
        if self.sqlite_file.is_none() {
            return;
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(CHECKPOINT_EVERY) => {}
                () = stop.cancelled() => return,
            }
            if let Err(e) = self.checkpoint_recordings_once().await {
                tracing::debug!(error = %e, "checkpoint of the recordings file");
            }
        }
    }

    /// One passive checkpoint of the recordings file: the frames in its WAL
    /// and how many of them are now in the file. Then the file's pages
    /// leave the page cache ([`drop_cached`]).
    pub async fn checkpoint_recordings_once(&self) -> Result<(i64, i64), sqlx::Error> {
        use sqlx::Row;
        let row = sqlx::query("PRAGMA recording_data.wal_checkpoint(PASSIVE)")
            .fetch_one(&self.pool)
            .await?;
        let (log, done): (i64, i64) = (row.try_get(1)?, row.try_get(2)?);
        if let Some(main) = &self.sqlite_file
            && done > 0
        {
            let file = recordings_file(main);
            let dropped = tokio::task::spawn_blocking(move || drop_cached(&file)).await;
            if let Ok(Err(e)) = dropped {
                tracing::debug!(error = %e, "dropping the recordings file from the page cache");
            }
        }
        Ok((log, done))
    }

    pub async fn close(&self) {
        if let Some(chunks) = &self.chunks {
            chunks.close().await;
        }
        self.pool.close().await;
    }
}

/// How often the recordings file's WAL is checkpointed
/// ([`Store::checkpoint_recordings`]).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Drop behind: ask the kernel to let go of the cached pages of `file` (the
/// recordings file, after a checkpoint has written and synced its pages).
/// Recorded output is written once and read rarely, and every page kept
/// cached would be a fresh one: on this project's benchmark machines (VMs)
/// a write into new page-cache pages cost about four times one into pages
/// just freed, and storing a recorded session's output took a fifth of
/// the machine's CPU (docs/BENCHMARKS.md, "Recorded targets"). Freed at
/// once, the same pages serve the next chunks, and gigabytes of recordings
/// do not push out what the page cache holds for everything else. Pages
/// still dirty (a checkpoint that has not synced yet) are only queued for
/// writeback by the kernel and dropped at a later call; SQLite's own cache
/// and the WAL's pages are not touched.
pub fn drop_cached(file: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(file)?;
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)?;
    Ok(())
}

/// Roll a failed transaction back now, not when sqlx gets its connection
/// back (it does that in a task of its own): until then the transaction
/// holds SQLite's write lock, and the next write, which the pool may give
/// another connection, finds the database locked. `what` names the write
/// in the debug line a failed rollback leaves.
pub async fn roll_back(tx: sqlx::Transaction<'_, sqlx::Any>, what: &str) {
    if let Err(e) = tx.rollback().await {
        tracing::debug!(error = %e, "rollback of a failed {what}");
    }
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:///x/y.db"), "sqlite:///x/y.db");
    }

    /// `config/../data/x.db` read as a URL makes `config` a host name and
    /// drops the `..`: the filesystem must resolve it first.
    #[tokio::test]
    async fn sqlite_paths_are_resolved_by_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::create_dir(&config).unwrap();
        let odd = dir.path().join("with space#%");
        let path = format!("{}/../with space#%/pv.db", config.display());
        let url = sqlite_url(&path).unwrap().url;
        assert!(!url.contains(".."), "{url}");
        let store = Store::open(&format!("sqlite://{path}")).await.unwrap();
        let file = odd.canonicalize().unwrap().join("pv.db");
        assert_eq!(store.sqlite_file(), Some(file.as_path()));
        store.close().await;
        assert!(
            odd.join("pv.db").is_file(),
            "the file is where the path said"
        );
        assert!(!dir.path().join("data").exists());
    }

    /// A new SQLite database `pv.db` in `dir`, and its URL.
    async fn open_in(dir: &Path) -> (Store, String) {
        let url = format!("sqlite://{}", dir.join("pv.db").display());
        (Store::open(&url).await.unwrap(), url)
    }

    /// The `recording_chunks` tables of the main file and of the
    /// recordings file.
    async fn tables(store: &Store) -> (i64, i64) {
        let mut c = store.pool().acquire().await.unwrap();
        chunk_tables(&mut c).await.unwrap()
    }

    async fn count(store: &Store, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(store.pool())
            .await
            .unwrap()
    }

    #[test]
    fn the_recordings_file_is_named_after_the_database() {
        let f = |p: &str| recordings_file(Path::new(p)).display().to_string();
        assert_eq!(
            f("/var/lib/portvakt/portvakt.db"),
            "/var/lib/portvakt/portvakt-recordings.db"
        );
        assert_eq!(f("/x/audit.sqlite3"), "/x/audit-recordings.sqlite3");
        assert_eq!(f("/x/audit"), "/x/audit-recordings");
    }

    /// Recording chunks go to a file of their own with 64 KiB pages; the
    /// main file keeps SQLite's 4 KiB pages and has no chunk table.
    #[tokio::test]
    async fn recording_chunks_live_in_a_file_of_their_own_with_large_pages() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_in(dir.path()).await;
        assert!(dir.path().join("pv-recordings.db").is_file());
        assert_eq!(
            count(&store, "PRAGMA recording_data.page_size").await,
            65536
        );
        assert_eq!(count(&store, "PRAGMA main.page_size").await, 4096);
        assert_eq!(tables(&store).await, (0, 1), "(main file, recordings file)");
        // Every connection of the pool finds it by its plain name.
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut c = store.pool().acquire().await.unwrap();
            sqlx::query("SELECT COUNT(*) FROM recording_chunks")
                .execute(&mut *c)
                .await
                .unwrap();
            held.push(c);
        }
        drop(held);
        // The chunk writers' own connection (Store::chunk_pool) writes the
        // table the pool reads.
        let chunks = store.chunk_pool().expect("SQLite in a file");
        sqlx::query(
            "INSERT INTO recording_chunks (recording_id, seq, data, raw_bytes, codec) \
             VALUES (1, 0, $1, 3, 'none')",
        )
        .bind(b"abc".to_vec())
        .execute(chunks)
        .await
        .unwrap();
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM recording_chunks").await,
            1
        );
        store.close().await;
    }

    /// The background checkpoint copies what the WAL of the recordings
    /// file holds into the file, beside the writers.
    #[tokio::test]
    async fn the_recordings_wal_is_checkpointed_beside_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open_in(dir.path()).await;
        for seq in 0..3 {
            sqlx::query(
                "INSERT INTO recording_chunks (recording_id, seq, data, raw_bytes, codec) \
                 VALUES (1, $1, $2, 1048576, 'none')",
            )
            .bind(seq)
            .bind(vec![b'x'; 1 << 20])
            .execute(store.pool())
            .await
            .unwrap();
        }
        let (log, done) = store.checkpoint_recordings_once().await.unwrap();
        // 3 MiB in 64 KiB pages: at least 48 frames, all copied.
        assert!(log >= 48 && done == log, "{log} {done}");
        store.close().await;
    }

    /// Bytes of `file` in the page cache, as util-linux's `fincore` reads
    /// them (scripts/test installs it).
    fn cached_bytes(file: &Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(file)
            .output()
            .expect("fincore (util-linux-extra) runs");
        assert!(out.status.success(), "fincore: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("fincore printed {out:?}: {e}"))
    }

    /// Drop behind: once a checkpoint has written chunks into the
    /// recordings file, its pages leave the page cache. In a folder under
    /// target/, on the disk's filesystem: a tmpfs /tmp keeps every page.
    #[tokio::test]
    async fn checkpointed_chunks_leave_the_page_cache() {
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap();
        let (store, _) = open_in(dir.path()).await;
        let file = recordings_file(&dir.path().join("pv.db"));
        let chunks = store.chunk_pool().expect("SQLite in a file");
        for seq in 0..8 {
            sqlx::query(
                "INSERT INTO recording_chunks (recording_id, seq, data, raw_bytes, codec) \
                 VALUES (1, $1, $2, 1048576, 'none')",
            )
            .bind(seq)
            .bind(vec![u8::try_from(seq).unwrap(); 1 << 20])
            .execute(chunks)
            .await
            .unwrap();
        }
        let size = std::fs::metadata(&file).unwrap().len();
        let (log, done) = store.checkpoint_recordings_once().await.unwrap();
        assert!(log >= 128 && done == log, "{log} {done}");
        let size_after = std::fs::metadata(&file).unwrap().len();
        assert!(size_after >= size + (8 << 20), "{size} -> {size_after}");
        let cached = cached_bytes(&file);
        assert!(
            cached < 1 << 20,
            "{cached} of {size_after} bytes still cached"
        );
        // Read back in full, the pages are cached again (the check above
        // can see them), and the chunks are intact.
        assert_eq!(
            count(
                &store,
                "SELECT COUNT(*) FROM recording_chunks WHERE length(data) = 1048576 \
                 AND substr(data, 1048576, 1) = substr(data, 1, 1)"
            )
            .await,
            8
        );
        std::fs::read(&file).unwrap();
        assert!(cached_bytes(&file) >= size_after / 2);
        drop_cached(&file).unwrap();
        assert!(cached_bytes(&file) < 1 << 20);
        store.close().await;
    }

    /// A database from before keeps its chunks in the main file: opening
    /// it moves them, in one go, and nothing is lost or left behind.
    #[tokio::test]
    async fn chunks_in_the_main_file_are_moved_to_the_recordings_file() {
        let dir = tempfile::tempdir().unwrap();
        let (store, url) = open_in(dir.path()).await;
        store.close().await;
        {
            let c = rusqlite::Connection::open(dir.path().join("pv.db")).unwrap();
            c.execute_batch(
                "CREATE TABLE recording_chunks (recording_id BIGINT NOT NULL, seq BIGINT NOT NULL, \
                 data BLOB NOT NULL, raw_bytes BIGINT NOT NULL, codec TEXT NOT NULL DEFAULT 'lz4', \
                 PRIMARY KEY (recording_id, seq)); \
                 INSERT INTO recording_chunks (recording_id, seq, data, raw_bytes) \
                 VALUES (7, 0, x'0102', 9), (7, 1, x'03', 4);",
            )
            .unwrap();
        }
        let store = Store::open(&url).await.unwrap();
        assert_eq!(tables(&store).await.0, 0, "none left in the main file");
        assert_eq!(
            count(
                &store,
                "SELECT COUNT(*) FROM recording_chunks WHERE recording_id = 7 AND codec = 'lz4' \
                 AND ((seq = 0 AND data = x'0102' AND raw_bytes = 9) \
                 OR (seq = 1 AND data = x'03' AND raw_bytes = 4))"
            )
            .await,
            2
        );
        store.close().await;
        // Opened again: nothing more to move, nothing doubled.
        let store = Store::open(&url).await.unwrap();
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM recording_chunks").await,
            2
        );
        store.close().await;
    }

    /// A relative path is taken from the working folder, never as a host.
    #[test]
    fn relative_sqlite_paths_become_absolute() {
        let url = sqlite_url("target/../target/store-test/x.db").unwrap().url;
        let cwd = std::env::current_dir().unwrap().canonicalize().unwrap();
        assert_eq!(
            url,
            format!("sqlite://{}/target/store-test/x.db?mode=rwc", cwd.display())
        );
    }
}
