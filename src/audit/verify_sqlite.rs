//! `audit verify` on SQLite: a node's chain read straight from the database
//! file on the calling (blocking) thread, each row's values handed to the
//! [`Walker`] where SQLite holds them, nothing copied per row.
//!
//! Through sqlx every row crossed from sqlx's SQLite worker thread to ours
//! and was copied into an `AnyRow` of owned strings: most of verify's time
//! went there, not into the checks (docs/BENCHMARKS.md, "Audit chain"). The
//! checks are the walker's either way; this only reads.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Row};

use super::verify::{CHAIN_PAGE, PAGE, VerifyError};
use super::walk::{RowRef, Walker};

/// As long as the pool's connections wait for a lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Feed `walker` the chain of `node` after `(seq, id)`, from the SQLite
/// database `file`, opened read-only. Pages of [`PAGE`] rows, as the pool
/// reads them: no read transaction spans the walk.
pub(super) fn walk(
    file: &Path,
    node: &str,
    (mut after_seq, mut after_id): (i64, i64),
    walker: &mut Walker,
) -> Result<(), VerifyError> {
    let sqlite = |source| VerifyError::Sqlite {
        path: file.display().to_string(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(file, flags).map_err(sqlite)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
    let mut page = conn.prepare(CHAIN_PAGE).map_err(sqlite)?;
    loop {
        let mut rows = page
            .query((node, after_seq, after_id, PAGE))
            .map_err(sqlite)?;
        let mut read = 0;
        while let Some(r) = rows.next().map_err(sqlite)? {
            let row = chain_row(r, file)?;
            (after_seq, after_id) = (row.seq, row.id);
            walker.push(row);
            read += 1;
        }
        if read < PAGE {
            return Ok(());
        }
    }
}

/// The row's values in place, typed as the schema has them (the column
/// order of [`CHAIN_PAGE`]). `file` names the database in errors.
fn chain_row<'r>(r: &'r Row<'_>, file: &Path) -> Result<RowRef<'r>, VerifyError> {
    let value = |i: usize| {
        r.get_ref(i).map_err(|source| VerifyError::Sqlite {
            path: file.display().to_string(),
            source,
        })
    };
    let id = value(0)?.as_i64().map_err(|source| VerifyError::Column {
        id: 0,
        column: "id",
        source,
    })?;
    // A value of another type than the schema's is refused, as sqlx
    // refuses it: written outside portvakt, and not to be guessed at.
    let column = |column: &'static str| move |source| VerifyError::Column { id, column, source };
    Ok(RowRef {
        id,
        seq: value(1)?.as_i64().map_err(column("seq"))?,
        at: value(2)?.as_i64().map_err(column("at"))?,
        kind: value(3)?.as_str().map_err(column("kind"))?,
        connection_id: value(4)?
            .as_str_or_null()
            .map_err(column("connection_id"))?,
        user: value(5)?.as_str_or_null().map_err(column("user_name"))?,
        source: value(6)?.as_str_or_null().map_err(column("source"))?,
        reason: value(7)?.as_str_or_null().map_err(column("reason"))?,
        detail: value(8)?.as_str().map_err(column("detail"))?,
        prev_hash: value(9)?.as_str_or_null().map_err(column("prev_hash"))?,
        hash: value(10)?.as_str_or_null().map_err(column("hash"))?,
    })
}
