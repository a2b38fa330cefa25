//! The hash chain of audit events (DESIGN.md §11, docs/AUDIT.md "The hash
//! chain"): each node's writer numbers its events `seq` = 1, 2, 3, ... and
//! stores with each `hash` = SHA-256 of the row's canonical encoding, which
//! includes `prev_hash`, the hash of the row before.

use aws_lc_rs::digest;
use sqlx::Row;

/// `prev_hash` of a chain's first row (`seq` 1): 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Names the encoding; the first field of every encoded row.
pub const ENCODING: &str = "portvakt.audit.v1";

/// The hashed fields of one row, as stored (`detail` is the stored text).
#[derive(Debug, Clone, Copy)]
pub struct ChainFields<'a> {
    pub node: &'a str,
    pub seq: i64,
    pub at: i64,
    pub kind: &'a str,
    pub user: Option<&'a str>,
    pub source: Option<&'a str>,
    pub connection_id: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub detail: &'a str,
    pub prev_hash: &'a str,
}

/// The canonical encoding: every field in a fixed order, texts as
/// `0x01 || u64 BE byte length || UTF-8 bytes`, a missing (NULL) text as
/// `0x00`, integers as 8 bytes big-endian two's complement.
pub fn encode(f: &ChainFields<'_>, out: &mut Vec<u8>) {
    fn text(out: &mut Vec<u8>, s: &str) {
        out.push(1);
        out.extend_from_slice(&(s.len() as u64).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn opt(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            Some(s) => text(out, s),
            None => out.push(0),
        }
    }
    text(out, ENCODING);
    text(out, f.node);
    out.extend_from_slice(&f.seq.to_be_bytes());
    out.extend_from_slice(&f.at.to_be_bytes());
    text(out, f.kind);
    opt(out, f.user);
    opt(out, f.source);
    opt(out, f.connection_id);
    opt(out, f.reason);
    text(out, f.detail);
    text(out, f.prev_hash);
}

/// Lowercase hex SHA-256 of the row's canonical encoding.
pub fn row_hash(f: &ChainFields<'_>) -> String {
    let mut buf = Vec::with_capacity(encoded_len(f));
    row_hash_hex(f, &mut buf).as_str().to_string()
}

/// [`row_hash`] encoded in `scratch` (cleared first) and returned on the
/// stack: no allocation once `scratch` has grown, for walks of millions
/// of rows (`audit verify`).
pub fn row_hash_hex(f: &ChainFields<'_>, scratch: &mut Vec<u8>) -> HexDigest {
    scratch.clear();
    scratch.reserve(encoded_len(f));
    encode(f, scratch);
    let digest = digest::digest(&digest::SHA256, scratch);
    let mut out = [0u8; 64];
    hex_into(digest.as_ref(), &mut out);
    HexDigest(out)
}

/// About the length of the canonical encoding, to size its buffer once.
fn encoded_len(f: &ChainFields<'_>) -> usize {
    128 + f.node.len()
        + f.kind.len()
        + f.detail.len()
        + f.user.map_or(0, str::len)
        + f.source.map_or(0, str::len)
        + f.connection_id.map_or(0, str::len)
        + f.reason.map_or(0, str::len)
}

/// A SHA-256 as 64 lowercase hex digits, as `hash` columns store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HexDigest([u8; 64]);

impl HexDigest {
    pub fn as_str(&self) -> &str {
        // Only hex digits are ever written into it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Two hex digits per byte of `bytes` into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

/// The newest row of a node's chain: the next row gets `seq + 1` and
/// `prev_hash = hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    pub seq: i64,
    pub hash: String,
}

impl Tail {
    /// Before a node's first chained row.
    pub fn empty() -> Tail {
        Tail {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

/// Read a node's tail from the database (the unique index on (node, seq)
/// makes this one index lookup).
pub async fn read_tail<'e, E>(db: E, node: &str) -> Result<Tail, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(
        "SELECT seq, hash FROM audit_events WHERE node = $1 AND seq IS NOT NULL \
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(node)
    .fetch_optional(db)
    .await?;
    match row {
        None => Ok(Tail::empty()),
        Some(r) => Ok(Tail {
            seq: r.try_get("seq")?,
            hash: r.try_get::<Option<String>, _>("hash")?.unwrap_or_default(),
        }),
    }
}

/// What anchors a node's rows from before the chain (migration 0005): how
/// many there are and a digest of them, signed in an `unchained` line of
/// a checkpoint (docs/AUDIT.md "Rows from before the chain").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub rows: i64,
    /// Hex SHA-256 over, per row in `id` order, its `id` (8 bytes big
    /// endian) and its row hash as if it were `seq` 0 after the genesis.
    pub digest: String,
}

impl Anchor {
    /// The checkpoint extension line.
    pub fn line(&self) -> String {
        format!("unchained {} {}", self.rows, self.digest)
    }

    /// Read an `unchained ROWS DIGEST` line's value.
    pub fn parse(value: &str) -> Option<Anchor> {
        let (rows, digest) = value.split_once(' ')?;
        Some(Anchor {
            rows: rows.parse().ok()?,
            digest: digest.to_string(),
        })
    }
}

/// The anchor of `node`'s rows without `seq` that are at or after `from`
/// (unix µs; `i64::MIN` for all), read a page at a time.
pub async fn unchained_anchor(
    db: &sqlx::Pool<sqlx::Any>,
    node: &str,
    from: i64,
) -> Result<Anchor, sqlx::Error> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let (mut rows, mut after) = (0i64, i64::MIN);
    loop {
        let page = sqlx::query(
            "SELECT id, at, kind, user_name, source, connection_id, reason, detail FROM audit_events \
             WHERE node = $1 AND seq IS NULL AND at >= $2 AND id > $3 ORDER BY id LIMIT 1000",
        )
        .bind(node)
        .bind(from)
        .bind(after)
        .fetch_all(db)
        .await?;
        for r in &page {
            let id: i64 = r.try_get("id")?;
            let (kind, detail): (String, String) = (r.try_get("kind")?, r.try_get("detail")?);
            let text = |c: &str| r.try_get::<Option<String>, _>(c);
            let (user, source, conn, reason) = (
                text("user_name")?,
                text("source")?,
                text("connection_id")?,
                text("reason")?,
            );
            let hash = row_hash(&ChainFields {
                node,
                seq: 0,
                at: r.try_get("at")?,
                kind: &kind,
                user: user.as_deref(),
                source: source.as_deref(),
                connection_id: conn.as_deref(),
                reason: reason.as_deref(),
                detail: &detail,
                prev_hash: GENESIS,
            });
            ctx.update(&id.to_be_bytes());
            ctx.update(hash.as_bytes());
            rows += 1;
            after = id;
        }
        if page.len() < 1000 {
            break;
        }
    }
    Ok(Anchor {
        rows,
        digest: hex(ctx.finish().as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> ChainFields<'static> {
        ChainFields {
            node: "node-a",
            seq: 1,
            at: 1_800_000_000_000_000,
            kind: "auth.success",
            user: Some("alice"),
            source: Some("192.0.2.10:50022"),
            connection_id: Some("c1"),
            reason: None,
            detail: "{\"method\":\"certificate\"}",
            prev_hash: GENESIS,
        }
    }

    /// The encoding as docs/AUDIT.md spells it, byte for byte, so a change
    /// of either shows here.
    #[test]
    fn encoding_is_as_documented() {
        let mut got = Vec::new();
        encode(&fields(), &mut got);
        let mut want = Vec::new();
        let text = |w: &mut Vec<u8>, s: &str| {
            w.push(1);
            w.extend_from_slice(&(s.len() as u64).to_be_bytes());
            w.extend_from_slice(s.as_bytes());
        };
        text(&mut want, "portvakt.audit.v1");
        text(&mut want, "node-a");
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&1_800_000_000_000_000i64.to_be_bytes());
        text(&mut want, "auth.success");
        text(&mut want, "alice");
        text(&mut want, "192.0.2.10:50022");
        text(&mut want, "c1");
        want.push(0);
        text(&mut want, "{\"method\":\"certificate\"}");
        text(&mut want, GENESIS);
        assert_eq!(got, want);
        // Computed independently with the Python script in docs/AUDIT.md.
        assert_eq!(
            row_hash(&fields()),
            "96a624e84551227b2743f3586317e0c1c0ab168457b95f36731ba406b1b3ce97"
        );
    }

    /// Moving text between neighbouring fields changes the hash (what the
    /// length prefixes are for), and so does NULL versus empty.
    #[test]
    fn field_boundaries_and_null_count() {
        let base = fields();
        let a = ChainFields {
            user: Some("alice1"),
            source: Some("92.0.2.10:50022"),
            ..base
        };
        let b = ChainFields {
            user: Some("alice"),
            source: Some("192.0.2.10:50022"),
            ..base
        };
        assert_ne!(row_hash(&a), row_hash(&b));
        let null = ChainFields {
            reason: None,
            ..base
        };
        let empty = ChainFields {
            reason: Some(""),
            ..base
        };
        assert_ne!(row_hash(&null), row_hash(&empty));
        let other_seq = ChainFields { seq: 2, ..base };
        assert_ne!(row_hash(&base), row_hash(&other_seq));
    }

    #[test]
    fn hex_is_lowercase_and_complete() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }

    /// A scratch buffer left over from a longer row changes nothing.
    #[test]
    fn reused_scratch_gives_the_same_hash() {
        let long = ChainFields {
            detail: "{\"padding\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}",
            ..fields()
        };
        let mut scratch = Vec::new();
        let a = row_hash_hex(&long, &mut scratch);
        assert_eq!(a.as_str(), row_hash(&long));
        let b = row_hash_hex(&fields(), &mut scratch);
        assert_eq!(
            b.as_str(),
            "96a624e84551227b2743f3586317e0c1c0ab168457b95f36731ba406b1b3ce97"
        );
    }
}
