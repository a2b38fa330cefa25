//! The database one portvakt instance writes to.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use super::proc::{RUN_TIMEOUT, run, run_ok};

/// The database one portvakt instance writes to: a SQLite file in the test's
/// folder, or (with `PORTVAKT_TEST_DB=postgres`) a fresh PostgreSQL database
/// that is dropped again with the instance.
pub enum Database {
    Sqlite {
        url: String,
    },
    Postgres {
        url: String,
        admin_url: String,
        name: String,
    },
    /// Another handle on a database someone else owns (and drops): the
    /// nodes of one bastion sharing one PostgreSQL database (issue 6).
    Shared {
        url: String,
    },
}

impl Database {
    /// A fresh database for an instance whose files live in `dir`.
    pub fn fresh(dir: &Path) -> Database {
        match std::env::var("PORTVAKT_TEST_DB").as_deref() {
            Ok("postgres") => {
                let admin_url = std::env::var("PORTVAKT_TEST_POSTGRES_URL").unwrap_or_else(|_| {
                    panic!(
                        "PORTVAKT_TEST_DB=postgres runs against a PostgreSQL server: run \
                         scripts/test, which starts one and sets PORTVAKT_TEST_POSTGRES_URL"
                    )
                });
                Database::create_postgres(&admin_url)
            }
            Ok("sqlite") | Ok("") | Err(_) => Database::Sqlite {
                url: format!("sqlite://{}", dir.join("portvakt.db").display()),
            },
            Ok(other) => panic!("PORTVAKT_TEST_DB must be sqlite or postgres, not {other:?}"),
        }
    }

    /// The `[database] url` value.
    pub fn url(&self) -> &str {
        match self {
            Database::Sqlite { url }
            | Database::Postgres { url, .. }
            | Database::Shared { url } => url,
        }
    }

    /// A fresh PostgreSQL database whatever `PORTVAKT_TEST_DB` says: several
    /// nodes can share only PostgreSQL. Panics, naming `purpose`, when
    /// `PORTVAKT_TEST_POSTGRES_URL` is not set.
    pub fn postgres_required(purpose: &str) -> Database {
        let admin_url = std::env::var("PORTVAKT_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| {
                panic!(
                    "{purpose} runs against a PostgreSQL server: run scripts/test, which \
                     starts a throw-away one and sets PORTVAKT_TEST_POSTGRES_URL (or point \
                     that variable at a server of your own)"
                )
            });
        Database::create_postgres(&admin_url)
    }

    /// Creates a database with a random name beside the one `admin_url` names.
    fn create_postgres(admin_url: &str) -> Database {
        let mut random = [0u8; 8];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .expect("read /dev/urandom");
        let name = format!("portvakt_t_{:016x}", u64::from_le_bytes(random));
        // Create and drop through the maintenance database, so the
        // database named in the URL need not exist.
        let admin_url = replace_database(admin_url, "postgres");
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        let url = replace_database(&admin_url, &name);
        Database::Postgres {
            url,
            admin_url,
            name,
        }
    }

    /// A handle on this database that does not drop it (a second node on it).
    pub fn shared(&self) -> Database {
        Database::Shared {
            url: self.url().to_string(),
        }
    }

    /// Runs one SQL query with `psql -At` on this PostgreSQL database and
    /// returns its output (rows as lines, columns separated by `|`).
    pub fn psql_query(&self, sql: &str) -> String {
        match self {
            Database::Postgres { url, .. } | Database::Shared { url }
                if url.starts_with("postgres") =>
            {
                run_ok(
                    Command::new("psql")
                        .arg(url.as_str())
                        .args(["-v", "ON_ERROR_STOP=1", "-At", "-c"])
                        .arg(sql),
                )
                .stdout_text()
            }
            _ => panic!("psql_query needs a PostgreSQL database, not {}", self.url()),
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Database::Postgres {
            admin_url, name, ..
        } = self
        {
            let out = run(
                Command::new("psql")
                    .arg(admin_url.as_str())
                    .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
                    .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")),
                None,
                RUN_TIMEOUT,
            );
            if out.code() != 0 {
                eprintln!("could not drop test database {name}: {out}");
            }
        }
    }
}

fn psql(url: &str, sql: &str) {
    run_ok(
        Command::new("psql")
            .arg(url)
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
            .arg(sql),
    );
}

/// `postgres://user@host:port/db?opts` with the database name replaced.
fn replace_database(url: &str, name: &str) -> String {
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let authority_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    format!("{}/{}{}", &base[..authority_end], name, query)
}

/// Runs `sql` on the database at `url` (SQLite or PostgreSQL) directly, as
/// somebody with write access to it would: tampering, or breaking it.
pub fn execute(url: &str, sql: String) {
    use sqlx::{AssertSqlSafe, Connection};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if let Some(path) = url.strip_prefix("sqlite://") {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            // The recordings' chunks are in a file of their own, which
            // portvakt attaches to each connection (src/store/mod.rs).
            let main = std::path::Path::new(path.split('?').next().unwrap_or(path));
            let chunks = portvakt::store::recordings_file(main);
            sqlx::query("ATTACH DATABASE ?1 AS recording_data")
                .bind(chunks.to_str().unwrap())
                .execute(&mut c)
                .await
                .unwrap();
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
        } else {
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
        }
    });
}
