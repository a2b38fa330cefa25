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
        Ok(store)
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
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                // One writer at a time anyway; a few readers.
                Backend::Sqlite => 4,
                Backend::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(connect_err)?;
        Ok(Store {
            pool,
            backend,
            healthy: Arc::new(AtomicBool::new(true)),
            sqlite_file,
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
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
                let rolled_back = match locked {
                    Ok(_) => sqlx::query("ROLLBACK").execute(&mut *c).await.map(drop),
                    Err(e) => Err(e),
                };
                sqlx::query("PRAGMA busy_timeout = 5000")
                    .execute(&mut *c)
                    .await?;
                rolled_back
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

    pub async fn close(&self) {
        self.pool.close().await;
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
