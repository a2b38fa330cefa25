//! Keys and certificates that must not log in: `[auth] revoked_keys` (DESIGN.md §4).
//!
//! The file is either an OpenSSH KRL (binary, `PROTOCOL.krl`) or a text list of
//! public keys, one a line, exactly what sshd's `RevokedKeys` accepts. Matching
//! follows OpenSSH's `ssh_krl_check_key` and `sshkey_in_file`, so a list that
//! revokes a key for sshd revokes it here too:
//!
//! * a plain key is revoked when its wire blob, its SHA-1 or its SHA-256 hash is listed;
//! * a certificate is revoked when its serial or key ID is listed under its CA or
//!   under "any CA", or when its own key or its CA key is revoked as a plain key.
//!
//! Parsing fails closed: truncation, trailing bytes, unknown section types and
//! critical extensions are errors, never skipped.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use russh::keys::ssh_encoding::{Decode, Encode};
use russh::keys::ssh_key::sha2::Sha256;
use russh::keys::ssh_key::{self, Certificate, PublicKey, public::KeyData};
use sha1::{Digest, Sha1};

const KRL_MAGIC: &[u8] = b"SSHKRL\n\0";
const KRL_FORMAT_VERSION: u32 = 1;

const SECTION_CERTIFICATES: u8 = 1;
const SECTION_EXPLICIT_KEY: u8 = 2;
const SECTION_FINGERPRINT_SHA1: u8 = 3;
const SECTION_SIGNATURE: u8 = 4;
const SECTION_FINGERPRINT_SHA256: u8 = 5;
const SECTION_EXTENSION: u8 = 255;

const CERT_SERIAL_LIST: u8 = 0x20;
const CERT_SERIAL_RANGE: u8 = 0x21;
const CERT_SERIAL_BITMAP: u8 = 0x22;
const CERT_KEY_ID: u8 = 0x23;
const CERT_EXTENSION: u8 = 0x39;

/// sshd reads at most this much of a file (`SSHBUF_SIZE_MAX`); a bigger one is a mistake.
const MAX_FILE_SIZE: u64 = 128 << 20;
/// Largest serial bitmap sshd accepts, in bytes (`SSHBUF_MAX_BIGNUM`, 16384 bits).
const MAX_BITMAP_BYTES: usize = 2048;

/// Keys and certificates that must not log in. Immutable once loaded.
#[derive(Debug, Default, Clone)]
pub struct RevocationList {
    /// Wire blobs of revoked plain keys (KRL explicit-key sections, or the text list).
    keys: HashSet<Vec<u8>>,
    /// SHA-1 hashes of revoked plain key blobs.
    sha1: HashSet<[u8; 20]>,
    /// SHA-256 hashes of revoked plain key blobs.
    sha256: HashSet<[u8; 32]>,
    /// Certificate revocations by CA key blob; `None` applies to certificates of any CA.
    certs: HashMap<Option<Vec<u8>>, CertRules>,
}

/// Revoked serials and key IDs of the certificates of one CA (or of any CA).
#[derive(Debug, Default, Clone)]
struct CertRules {
    /// Inclusive ranges, sorted and merged by [`CertRules::normalize`], so a lookup
    /// is a binary search however many serials a KRL lists.
    serials: Vec<(u64, u64)>,
    /// Raw bytes: the KRL does not promise UTF-8, and a byte compare is what sshd does.
    key_ids: HashSet<Vec<u8>>,
}

/// Why a revoked keys file could not be loaded. Every variant means "no list":
/// the caller must not fall back to an empty one.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file named by `[auth] revoked_keys`.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The file is bigger than sshd would read.
    #[error("{} is larger than {max} bytes, the most sshd reads", path.display())]
    TooLarge {
        /// The file named by `[auth] revoked_keys`.
        path: PathBuf,
        /// The limit, in bytes.
        max: u64,
    },
    /// The file starts like an OpenSSH KRL but is not a valid one.
    #[error("malformed OpenSSH KRL at byte {offset}: {what}")]
    BadKrl {
        /// Offset from the start of the file where the problem was found.
        offset: usize,
        /// What is wrong there.
        what: KrlFault,
    },
    /// A line of a text key list is not an OpenSSH public key or certificate.
    #[error("line {line}: not an OpenSSH public key or certificate: {error}")]
    BadKeyLine {
        /// 1-based line number.
        line: usize,
        /// Why the key did not parse.
        error: ssh_key::Error,
    },
    /// A line of a file without the KRL magic is not text.
    #[error("line {line} is not text: the file is neither an OpenSSH KRL nor a list of keys")]
    NotText {
        /// 1-based line number.
        line: usize,
    },
}

/// What is wrong in a KRL, for [`RevocationError::BadKrl`].
#[derive(Debug, thiserror::Error)]
pub enum KrlFault {
    /// The file or a section ends in the middle of this field.
    #[error("truncated: {0} is cut off")]
    Truncated(&'static str),
    /// This section or subsection holds bytes after its last field.
    #[error("unexpected bytes at the end of the {0}")]
    TrailingData(&'static str),
    /// The KRL format version is not 1.
    #[error("unsupported KRL format version {0} (only 1 exists)")]
    UnsupportedVersion(u32),
    /// A top-level section type this reader (and OpenSSH) does not know.
    #[error("unknown section type {0}")]
    UnknownSection(u8),
    /// A certificate subsection type this reader (and OpenSSH) does not know.
    #[error("unknown certificate subsection type {0:#04x}")]
    UnknownCertSection(u8),
    /// A non-signature section follows a signature section.
    #[error("a section follows the signature section, which must come last")]
    SectionAfterSignature,
    /// An extension marked critical: its meaning is unknown, so the KRL can't be trusted.
    #[error("unsupported critical extension {0:?}")]
    CriticalExtension(String),
    /// The CA key of a certificate section is not a valid public key.
    #[error("the CA key of a certificate section is not a valid public key: {0}")]
    BadCaKey(ssh_key::Error),
    /// This text field contains a NUL byte (OpenSSH refuses these).
    #[error("{0} contains a NUL byte")]
    NulInString(&'static str),
    /// Serial 0 means "no serial" in certificates; OpenSSH refuses to revoke it.
    #[error("serial number 0 cannot be revoked")]
    SerialZero,
    /// A serial range whose start is after its end.
    #[error("serial range {lo}-{hi} starts after it ends")]
    SerialRangeInverted {
        /// Start of the range.
        lo: u64,
        /// End of the range.
        hi: u64,
    },
    /// A serial bitmap is a negative mpint.
    #[error("serial bitmap is negative")]
    BitmapNegative,
    /// A serial bitmap is longer than OpenSSH accepts.
    #[error("serial bitmap is longer than {MAX_BITMAP_BYTES} bytes")]
    BitmapTooLarge,
    /// A serial bitmap reaches past the largest serial number.
    #[error("serial bitmap reaches past serial 2^64-1")]
    BitmapWraps,
    /// A fingerprint of the wrong length for its hash.
    #[error("{hash} fingerprint is {found} bytes long, not {expected}")]
    BadHashLength {
        /// "SHA1" or "SHA256".
        hash: &'static str,
        /// The hash's length.
        expected: usize,
        /// The length found.
        found: usize,
    },
}

impl RevocationList {
    /// A list that revokes nothing (no `revoked_keys` configured).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads and parses the file named by `[auth] revoked_keys`.
    pub fn load(path: &Path) -> Result<Self, RevocationError> {
        let io = |error| RevocationError::Io {
            path: path.to_owned(),
            error,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|file| file.take(MAX_FILE_SIZE + 1).read_to_end(&mut bytes))
            .map_err(io)?;
        if bytes.len() as u64 > MAX_FILE_SIZE {
            return Err(RevocationError::TooLarge {
                path: path.to_owned(),
                max: MAX_FILE_SIZE,
            });
        }
        Self::parse(&bytes)
    }

    /// Parses a KRL (recognised by its magic, as sshd does) or else a text key list.
    pub fn parse(bytes: &[u8]) -> Result<Self, RevocationError> {
        let mut list = if bytes.starts_with(KRL_MAGIC) {
            parse_krl(bytes)?
        } else {
            parse_text(bytes)?
        };
        for rules in list.certs.values_mut() {
            rules.normalize();
        }
        Ok(list)
    }

    /// The plain key is revoked (explicit key or its SHA1/SHA256 fingerprint listed).
    /// A certificate passed as `KeyData` is checked as by [`Self::is_certificate_revoked`].
    pub fn is_key_revoked(&self, key: &KeyData) -> bool {
        if self.is_empty() {
            return false;
        }
        if let Some(cert) = key.certificate() {
            return self.is_certificate_revoked(cert);
        }
        // Encoding a parsed key can't fail in practice; if it did, refuse the key.
        let Ok(blob) = key.encode_vec() else {
            return true;
        };
        self.keys.contains(&blob)
            || (!self.sha1.is_empty() && self.sha1.contains(&<[u8; 20]>::from(Sha1::digest(&blob))))
            || (!self.sha256.is_empty()
                && self
                    .sha256
                    .contains(&<[u8; 32]>::from(Sha256::digest(&blob))))
    }

    /// The certificate is revoked: its serial or key id under its CA (or any CA), or its
    /// signing CA key itself, or the certificate's public key as a plain key.
    pub fn is_certificate_revoked(&self, cert: &Certificate) -> bool {
        if self.is_empty() {
            return false;
        }
        if self.is_key_revoked(cert.public_key()) || self.is_key_revoked(cert.signature_key()) {
            return true;
        }
        let Ok(ca) = cert.signature_key().encode_vec() else {
            return true;
        };
        [Some(ca), None]
            .into_iter()
            .filter_map(|ca| self.certs.get(&ca))
            .any(|rules| rules.matches(cert))
    }

    /// Number of entries (keys, hashes, serial ranges, key IDs), for a log line.
    pub fn len(&self) -> usize {
        let certs: usize = self
            .certs
            .values()
            .map(|rules| rules.serials.len() + rules.key_ids.len())
            .sum();
        self.keys.len() + self.sha1.len() + self.sha256.len() + certs
    }

    /// True when nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CertRules {
    fn matches(&self, cert: &Certificate) -> bool {
        if self.key_ids.contains(cert.key_id().as_bytes()) {
            return true;
        }
        // Serial 0 is what a CA writes when it assigns none: never revoked by serial.
        let serial = cert.serial();
        if serial == 0 {
            return false;
        }
        let i = self.serials.partition_point(|&(_, hi)| hi < serial);
        self.serials.get(i).is_some_and(|&(lo, _)| lo <= serial)
    }

    fn is_empty(&self) -> bool {
        self.serials.is_empty() && self.key_ids.is_empty()
    }

    /// Sorts the ranges and merges overlapping or adjacent ones.
    fn normalize(&mut self) {
        self.serials.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.serials.len());
        for &(lo, hi) in &self.serials {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        self.serials = merged;
    }
}

/// Parses a text key list like sshd's `sshkey_in_file`: blank lines and `#` comments
/// are skipped, every other line must be a public key or a certificate (whose key is
/// then revoked). Keys are compared by their plain wire blob, as sshd compares them.
fn parse_text(bytes: &[u8]) -> Result<RevocationList, RevocationError> {
    let mut list = RevocationList::default();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let text = std::str::from_utf8(raw).map_err(|_| RevocationError::NotText { line })?;
        let text = text.trim_start_matches([' ', '\t']).trim_end();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let key = match PublicKey::from_openssh(text) {
            Ok(key) => key.key_data().clone(),
            Err(error) => match Certificate::from_openssh(text) {
                Ok(cert) => cert.public_key().clone(),
                Err(_) => return Err(RevocationError::BadKeyLine { line, error }),
            },
        };
        let blob = key
            .encode_vec()
            .map_err(|error| RevocationError::BadKeyLine {
                line,
                error: error.into(),
            })?;
        list.keys.insert(blob);
    }
    Ok(list)
}

fn parse_krl(bytes: &[u8]) -> Result<RevocationList, RevocationError> {
    let mut r = Wire::new(bytes, 0);
    r.take(KRL_MAGIC.len(), "magic")?;
    let at = r.offset();
    let version = r.u32("format version")?;
    if version != KRL_FORMAT_VERSION {
        return Err(bad(at, KrlFault::UnsupportedVersion(version)));
    }
    r.u64("KRL version")?;
    r.u64("generation date")?;
    r.u64("flags")?;
    r.string("reserved header field")?;
    r.cstring("comment")?;

    let mut list = RevocationList::default();
    let mut signed = false;
    while !r.is_empty() {
        let at = r.offset();
        let kind = r.u8("section type")?;
        if signed && kind != SECTION_SIGNATURE {
            return Err(bad(at, KrlFault::SectionAfterSignature));
        }
        let mut sect = r.sub("section")?;
        match kind {
            SECTION_CERTIFICATES => parse_cert_section(&mut sect, &mut list)?,
            SECTION_EXPLICIT_KEY => {
                // Kept as raw blobs, as sshd does: a lookup compares wire encodings.
                while !sect.is_empty() {
                    list.keys
                        .insert(sect.string("revoked public key")?.to_vec());
                }
            }
            SECTION_FINGERPRINT_SHA1 => hashes(&mut sect, "SHA1", &mut list.sha1)?,
            SECTION_FINGERPRINT_SHA256 => hashes(&mut sect, "SHA256", &mut list.sha256)?,
            SECTION_SIGNATURE => {
                // `sect` was the signing key; the signature string follows. Signatures
                // are not checked (sshd does not require them): the file is trusted.
                signed = true;
                sect.skip_rest();
                r.string("signature")?;
            }
            SECTION_EXTENSION => extension(&mut sect)?,
            other => return Err(bad(at, KrlFault::UnknownSection(other))),
        }
        sect.finish("section")?;
    }
    Ok(list)
}

fn parse_cert_section(s: &mut Wire<'_>, list: &mut RevocationList) -> Result<(), RevocationError> {
    let at = s.offset();
    let ca_blob = s.string("CA key")?;
    s.string("reserved certificate section field")?;
    // An empty CA key means "certificates of any CA". Otherwise store the key's
    // canonical encoding, the form a certificate's signature key is compared in.
    let ca = if ca_blob.is_empty() {
        None
    } else {
        Some(canonical_key(ca_blob).map_err(|e| bad(at, KrlFault::BadCaKey(e)))?)
    };
    let mut rules = CertRules::default();
    while !s.is_empty() {
        let at = s.offset();
        let kind = s.u8("certificate subsection type")?;
        let mut sub = s.sub("certificate subsection")?;
        match kind {
            CERT_SERIAL_LIST => {
                while !sub.is_empty() {
                    let at = sub.offset();
                    let serial = sub.u64("revoked serial")?;
                    rules.revoke_serials(at, serial, serial)?;
                }
            }
            CERT_SERIAL_RANGE => {
                let at = sub.offset();
                let lo = sub.u64("serial range start")?;
                let hi = sub.u64("serial range end")?;
                rules.revoke_serials(at, lo, hi)?;
            }
            CERT_SERIAL_BITMAP => {
                let offset = sub.u64("serial bitmap offset")?;
                let at = sub.offset();
                let bitmap = sub.string("serial bitmap")?;
                rules.revoke_bitmap(at, offset, bitmap)?;
            }
            CERT_KEY_ID => {
                while !sub.is_empty() {
                    rules
                        .key_ids
                        .insert(sub.cstring("revoked key ID")?.to_vec());
                }
            }
            CERT_EXTENSION => extension(&mut sub)?,
            other => return Err(bad(at, KrlFault::UnknownCertSection(other))),
        }
        sub.finish("certificate subsection")?;
    }
    // Several sections may name the same CA; sshd merges them, so do we.
    if !rules.is_empty() {
        let entry = list.certs.entry(ca).or_default();
        entry.serials.extend(rules.serials);
        entry.key_ids.extend(rules.key_ids);
    }
    Ok(())
}

impl CertRules {
    fn revoke_serials(&mut self, at: usize, lo: u64, hi: u64) -> Result<(), RevocationError> {
        if lo == 0 {
            return Err(bad(at, KrlFault::SerialZero));
        }
        if lo > hi {
            return Err(bad(at, KrlFault::SerialRangeInverted { lo, hi }));
        }
        self.serials.push((lo, hi));
        Ok(())
    }

    /// Bit N of the big-endian `mpint` bitmap revokes serial `offset + N`; the limits
    /// are sshd's (`sshbuf_get_bignum2_bytes_direct` and `parse_revoked_certs`).
    fn revoke_bitmap(
        &mut self,
        at: usize,
        offset: u64,
        mpint: &[u8],
    ) -> Result<(), RevocationError> {
        if mpint.first().is_some_and(|&b| b & 0x80 != 0) {
            return Err(bad(at, KrlFault::BitmapNegative));
        }
        // One leading zero byte may be there for the sign bit.
        if mpint.len() > MAX_BITMAP_BYTES + 1
            || (mpint.len() == MAX_BITMAP_BYTES + 1 && mpint.first() != Some(&0))
        {
            return Err(bad(at, KrlFault::BitmapTooLarge));
        }
        let start = mpint.iter().position(|&b| b != 0).unwrap_or(mpint.len());
        let bits = mpint.get(start..).unwrap_or_default();
        let Some(&top) = bits.first() else {
            return Ok(());
        };
        let nbits = (bits.len() as u64 - 1) * 8 + u64::from(8 - top.leading_zeros());
        if offset.checked_add(nbits - 1).is_none() {
            return Err(bad(at, KrlFault::BitmapWraps));
        }
        for (byte_index, &byte) in bits.iter().rev().enumerate() {
            for bit in (0..8).filter(|bit| byte & (1 << bit) != 0) {
                let serial = offset + byte_index as u64 * 8 + bit;
                self.revoke_serials(at, serial, serial)?;
            }
        }
        Ok(())
    }
}

/// Decodes a plain public key blob and re-encodes it, so that equal keys compare equal.
fn canonical_key(blob: &[u8]) -> Result<Vec<u8>, ssh_key::Error> {
    let mut rest = blob;
    let key = KeyData::decode(&mut rest)?;
    if !rest.is_empty() {
        return Err(ssh_key::Error::TrailingData {
            remaining: rest.len(),
        });
    }
    Ok(key.encode_vec()?)
}

fn hashes<const N: usize>(
    sect: &mut Wire<'_>,
    hash: &'static str,
    into: &mut HashSet<[u8; N]>,
) -> Result<(), RevocationError> {
    while !sect.is_empty() {
        let at = sect.offset();
        let value = sect.string("fingerprint")?;
        let value = <[u8; N]>::try_from(value).map_err(|_| {
            let found = value.len();
            bad(
                at,
                KrlFault::BadHashLength {
                    hash,
                    expected: N,
                    found,
                },
            )
        })?;
        into.insert(value);
    }
    Ok(())
}

/// An extension section or subsection (PROTOCOL.krl §2.5, §5): none is defined, so
/// a non-critical one is ignored and a critical one refuses the KRL, as sshd does.
fn extension(s: &mut Wire<'_>) -> Result<(), RevocationError> {
    let at = s.offset();
    let name = s.cstring("extension name")?;
    let critical = s.u8("extension criticality")? != 0;
    s.string("extension contents")?;
    if critical {
        let name = String::from_utf8_lossy(name).into_owned();
        return Err(bad(at, KrlFault::CriticalExtension(name)));
    }
    Ok(())
}

fn bad(offset: usize, what: KrlFault) -> RevocationError {
    RevocationError::BadKrl { offset, what }
}

/// Bounds-checked reader of SSH wire types that knows each byte's offset in the file.
/// Hand-written rather than `ssh_encoding`'s reader, which caps strings at 1 MiB (a
/// large KRL's explicit-key section is bigger) and can't say where it failed.
struct Wire<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf[0]` in the file, for error messages.
    base: usize,
}

impl<'a> Wire<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn skip_rest(&mut self) {
        self.pos = self.buf.len();
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], RevocationError> {
        let bytes = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or_else(|| bad(self.offset(), KrlFault::Truncated(field)))?;
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], RevocationError> {
        let at = self.offset();
        <[u8; N]>::try_from(self.take(N, field)?).map_err(|_| bad(at, KrlFault::Truncated(field)))
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, RevocationError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, RevocationError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, RevocationError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn string(&mut self, field: &'static str) -> Result<&'a [u8], RevocationError> {
        Ok(self.sub(field)?.buf)
    }

    /// A string that OpenSSH reads as a C string: no NUL inside.
    fn cstring(&mut self, field: &'static str) -> Result<&'a [u8], RevocationError> {
        let at = self.offset();
        let s = self.string(field)?;
        if s.contains(&0) {
            return Err(bad(at, KrlFault::NulInString(field)));
        }
        Ok(s)
    }

    /// A string read as a nested buffer, keeping file offsets.
    fn sub(&mut self, field: &'static str) -> Result<Wire<'a>, RevocationError> {
        let len = usize::try_from(self.u32(field)?).unwrap_or(usize::MAX);
        let base = self.offset();
        Ok(Wire::new(self.take(len, field)?, base))
    }

    fn finish(&self, section: &'static str) -> Result<(), RevocationError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(bad(self.offset(), KrlFault::TrailingData(section)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Keys, certificates and KRLs made by the real `ssh-keygen` in a temporary folder.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn run(&self, args: &[&str]) -> std::process::Output {
            Command::new("ssh-keygen")
                .args(args)
                .current_dir(self.dir.path())
                .output()
                .expect("run ssh-keygen")
        }

        fn ok(&self, args: &[&str]) {
            let out = self.run(args);
            assert!(
                out.status.success(),
                "ssh-keygen {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        /// A key pair `name` / `name.pub`; `kind` is an `ssh-keygen -t` type.
        fn key(&self, name: &str, kind: &str) -> KeyData {
            let mut args = vec!["-q", "-t", kind, "-N", "", "-C", name, "-f", name];
            if kind == "rsa" {
                args.extend(["-b", "2048"]);
            }
            self.ok(&args);
            self.public(name)
        }

        fn public(&self, name: &str) -> KeyData {
            let path = self.path(&format!("{name}.pub"));
            PublicKey::read_openssh_file(&path)
                .expect("read public key")
                .key_data()
                .clone()
        }

        fn pub_line(&self, name: &str) -> String {
            std::fs::read_to_string(self.path(&format!("{name}.pub"))).expect("read .pub")
        }

        /// Certificate for `key`, signed by `ca`, written as `<cert>-cert.pub`.
        fn cert(&self, ca: &str, key: &str, cert: &str, id: &str, serial: u64) -> Certificate {
            std::fs::copy(
                self.path(&format!("{key}.pub")),
                self.path(&format!("{cert}.pub")),
            )
            .expect("copy");
            let serial = serial.to_string();
            self.ok(&[
                "-q",
                "-s",
                ca,
                "-I",
                id,
                "-n",
                "alice",
                "-z",
                &serial,
                &format!("{cert}.pub"),
            ]);
            Certificate::read_file(&self.path(&format!("{cert}-cert.pub"))).expect("read cert")
        }

        /// `ssh-keygen -k` from spec lines; `scope` is the `-s` argument (a CA's
        /// `.pub` file, or `none` for any CA). Returns the KRL's path.
        fn krl(&self, name: &str, scope: Option<&str>, spec: &[String]) -> PathBuf {
            let spec_name = format!("{name}.spec");
            std::fs::write(self.path(&spec_name), spec.join("\n") + "\n").expect("write spec");
            let mut args = vec!["-k", "-f", name];
            if let Some(scope) = scope {
                args.extend(["-s", scope]);
            }
            args.push(&spec_name);
            self.ok(&args);
            self.path(name)
        }

        /// What OpenSSH says: `ssh-keygen -Q` exits 1 for a revoked key, 0 for an ok one.
        fn oracle(&self, krl: &Path, file: &str) -> bool {
            let out = self.run(&["-Q", "-f", krl.to_str().expect("utf-8"), file]);
            match out.status.code() {
                Some(0) => false,
                Some(1) => true,
                _ => panic!(
                    "ssh-keygen -Q {file}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
        }
    }

    fn load(path: &Path) -> RevocationList {
        RevocationList::load(path).expect("load revocation list")
    }

    fn krl_fault(bytes: &[u8]) -> KrlFault {
        match RevocationList::parse(bytes) {
            Err(RevocationError::BadKrl { what, .. }) => what,
            other => panic!("expected BadKrl, got {other:?}"),
        }
    }

    // --- Hand-built KRLs, for the paths ssh-keygen never writes. ---

    fn string(bytes: &[u8]) -> Vec<u8> {
        let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    fn header() -> Vec<u8> {
        let mut out = KRL_MAGIC.to_vec();
        out.extend(1u32.to_be_bytes());
        out.extend([0u8; 24]); // krl_version, generated_date, flags
        out.extend(string(b""));
        out.extend(string(b"comment"));
        out
    }

    fn section(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend(string(body));
        out
    }

    fn krl_with(sections: &[Vec<u8>]) -> Vec<u8> {
        let mut out = header();
        sections.iter().for_each(|s| out.extend(s));
        out
    }

    /// A certificate section for `ca` (empty: any CA) holding `subsections`.
    fn cert_section(ca: &[u8], subsections: &[Vec<u8>]) -> Vec<u8> {
        let mut body = string(ca);
        body.extend(string(b""));
        subsections.iter().for_each(|s| body.extend(s));
        section(SECTION_CERTIFICATES, &body)
    }

    fn serial_list(serials: &[u64]) -> Vec<u8> {
        let body: Vec<u8> = serials.iter().flat_map(|s| s.to_be_bytes()).collect();
        section(CERT_SERIAL_LIST, &body)
    }

    fn bitmap(offset: u64, mpint: &[u8]) -> Vec<u8> {
        let mut body = offset.to_be_bytes().to_vec();
        body.extend(string(mpint));
        section(CERT_SERIAL_BITMAP, &body)
    }

    fn extension_body(name: &str, critical: bool) -> Vec<u8> {
        let mut body = string(name.as_bytes());
        body.push(u8::from(critical));
        body.extend(string(b"contents"));
        body
    }

    /// The certificate subsection types in a KRL, to show which encodings a test covers.
    fn cert_subsection_kinds(bytes: &[u8]) -> Vec<u8> {
        let mut r = Wire::new(bytes, 0);
        r.take(KRL_MAGIC.len() + 4 + 24, "header").expect("header");
        r.string("reserved")
            .and_then(|_| r.string("comment"))
            .expect("header");
        let mut kinds = Vec::new();
        while !r.is_empty() {
            let kind = r.u8("type").expect("type");
            let mut sect = r.sub("section").expect("section");
            if kind == SECTION_CERTIFICATES {
                sect.string("ca")
                    .and_then(|_| sect.string("reserved"))
                    .expect("cert header");
                while !sect.is_empty() {
                    kinds.push(sect.u8("type").expect("type"));
                    sect.sub("sub").expect("subsection");
                }
            }
        }
        kinds
    }

    // --- KRLs from ssh-keygen, checked against ssh-keygen -Q. ---

    #[test]
    fn serial_list_range_and_bitmap_match_openssh() {
        let f = Fixture::new();
        f.key("ca", "ed25519");
        f.key("other_ca", "ed25519");
        f.key("user", "ed25519");
        // Odd serials close together make ssh-keygen write a bitmap, a long run a
        // range, and far apart serials a list.
        let mut spec: Vec<String> = [1, 3, 5, 7, 9, 11]
            .iter()
            .map(|s| format!("serial: {s}"))
            .collect();
        spec.extend([
            "serial: 100-100000".into(),
            "serial: 5000000".into(),
            "serial: 9000000".into(),
        ]);
        let krl = f.krl("krl", Some("ca.pub"), &spec);
        let list = load(&krl);
        let kinds = cert_subsection_kinds(&std::fs::read(&krl).expect("read krl"));
        for kind in [CERT_SERIAL_BITMAP, CERT_SERIAL_RANGE, CERT_SERIAL_LIST] {
            assert!(
                kinds.contains(&kind),
                "no subsection {kind:#x} in {kinds:x?}"
            );
        }

        let revoked = [1, 3, 11, 100, 5000, 100000, 5000000, 9000000];
        let not_revoked = [0, 2, 4, 12, 99, 100001, 4999999, 5000001, u64::MAX];
        for serial in revoked.iter().chain(&not_revoked) {
            let name = format!("c{serial}");
            let cert = f.cert("ca", "user", &name, "alice", *serial);
            let expected = revoked.contains(serial);
            assert_eq!(
                f.oracle(&krl, &format!("{name}-cert.pub")),
                expected,
                "oracle, serial {serial}"
            );
            assert_eq!(
                list.is_certificate_revoked(&cert),
                expected,
                "serial {serial}"
            );
            // The same serial from another CA is not covered by this CA's section.
            let other = f.cert("other_ca", "user", &format!("o{serial}"), "alice", *serial);
            assert!(
                !list.is_certificate_revoked(&other),
                "other CA, serial {serial}"
            );
            assert!(!f.oracle(&krl, &format!("o{serial}-cert.pub")));
        }
        assert!(!list.is_key_revoked(&f.public("user")));
    }

    #[test]
    fn key_id_under_one_ca_and_under_any_ca() {
        let f = Fixture::new();
        f.key("ca", "ed25519");
        f.key("ca2", "ecdsa");
        f.key("user", "ed25519");
        let scoped = f.krl("scoped", Some("ca.pub"), &["id: alice-laptop".into()]);
        let wildcard = f.krl("wildcard", Some("none"), &["id: alice-laptop".into()]);
        let scoped_list = load(&scoped);
        let wildcard_list = load(&wildcard);

        let cases = [
            ("ca", "alice-laptop", true, true),
            ("ca2", "alice-laptop", false, true),
            ("ca", "alice-desktop", false, false),
        ];
        for (i, (ca, id, by_scoped, by_wildcard)) in cases.into_iter().enumerate() {
            let name = format!("c{i}");
            let cert = f.cert(ca, "user", &name, id, 7);
            let file = format!("{name}-cert.pub");
            assert_eq!(
                f.oracle(&scoped, &file),
                by_scoped,
                "oracle scoped {ca} {id}"
            );
            assert_eq!(
                f.oracle(&wildcard, &file),
                by_wildcard,
                "oracle wildcard {ca} {id}"
            );
            assert_eq!(
                scoped_list.is_certificate_revoked(&cert),
                by_scoped,
                "scoped {ca} {id}"
            );
            assert_eq!(
                wildcard_list.is_certificate_revoked(&cert),
                by_wildcard,
                "wildcard {ca} {id}"
            );
        }
    }

    #[test]
    fn explicit_keys_revoke_plain_keys_certified_keys_and_ca_keys() {
        let f = Fixture::new();
        f.key("ca", "ed25519");
        f.key("ca2", "ed25519");
        let rsa = f.key("rsa", "rsa");
        let ecdsa = f.key("ecdsa", "ecdsa");
        let ok = f.key("ok", "ed25519");
        let krl = f.krl(
            "krl",
            None,
            &[
                format!("key: {}", f.pub_line("rsa")),
                format!("key: {}", f.pub_line("ecdsa")),
                format!("key: {}", f.pub_line("ca2")),
            ],
        );
        let list = load(&krl);
        assert!(list.is_key_revoked(&rsa));
        assert!(list.is_key_revoked(&ecdsa));
        assert!(!list.is_key_revoked(&ok));
        let cases = [
            ("ca", "rsa", true),
            ("ca", "ok", false),
            ("ca2", "ok", true),
        ];
        for (i, (ca, key, expected)) in cases.into_iter().enumerate() {
            let name = format!("c{i}");
            let cert = f.cert(ca, key, &name, "id", 42);
            assert_eq!(
                f.oracle(&krl, &format!("{name}-cert.pub")),
                expected,
                "oracle {ca} {key}"
            );
            assert_eq!(list.is_certificate_revoked(&cert), expected, "{ca} {key}");
            // The same check through KeyData, as a caller holding a parsed cert key might.
            assert_eq!(
                list.is_key_revoked(&KeyData::Certificate(Box::new(cert))),
                expected
            );
        }
        for key in ["rsa", "ecdsa", "ok"] {
            assert_eq!(
                f.oracle(&krl, &format!("{key}.pub")),
                key != "ok",
                "oracle {key}"
            );
        }
    }

    #[test]
    fn sha1_and_sha256_fingerprints_match_openssh() {
        let f = Fixture::new();
        f.key("ca", "ed25519");
        let by_sha1 = f.key("by_sha1", "rsa");
        let by_sha256 = f.key("by_sha256", "ecdsa");
        let by_hash = f.key("by_hash", "ed25519");
        let ok = f.key("ok", "ed25519");
        let fingerprint = by_hash.fingerprint(ssh_key::HashAlg::Sha256).to_string();
        let krl = f.krl(
            "krl",
            None,
            &[
                format!("sha1: {}", f.pub_line("by_sha1")),
                format!("sha256: {}", f.pub_line("by_sha256")),
                format!("hash: {fingerprint}"),
            ],
        );
        let list = load(&krl);
        assert_eq!((list.sha1.len(), list.sha256.len(), list.len()), (1, 2, 3));
        for (name, key, expected) in [
            ("by_sha1", &by_sha1, true),
            ("by_sha256", &by_sha256, true),
            ("by_hash", &by_hash, true),
            ("ok", &ok, false),
        ] {
            assert_eq!(
                f.oracle(&krl, &format!("{name}.pub")),
                expected,
                "oracle {name}"
            );
            assert_eq!(list.is_key_revoked(key), expected, "{name}");
        }
        // A certificate of a key revoked by hash is revoked too.
        let cert = f.cert("ca", "by_sha1", "cert", "id", 1);
        assert!(f.oracle(&krl, "cert-cert.pub"));
        assert!(list.is_certificate_revoked(&cert));
        let cert = f.cert("ca", "ok", "okcert", "id", 1);
        assert!(!list.is_certificate_revoked(&cert));
    }

    #[test]
    fn key_and_certificate_files_given_to_ssh_keygen() {
        // `ssh-keygen -k -f krl key.pub cert.pub`: a plain key is revoked explicitly,
        // a certificate by its serial under its CA.
        let f = Fixture::new();
        f.key("ca", "ed25519");
        let plain = f.key("plain", "ed25519");
        f.key("user", "ed25519");
        let revoked = f.cert("ca", "user", "revoked", "id", 77);
        let sibling = f.cert("ca", "user", "sibling", "id", 78);
        f.ok(&["-k", "-f", "krl", "plain.pub", "revoked-cert.pub"]);
        let list = load(&f.path("krl"));
        assert!(list.is_key_revoked(&plain));
        assert!(list.is_certificate_revoked(&revoked));
        assert!(!list.is_certificate_revoked(&sibling));
        assert!(!list.is_key_revoked(&f.public("user")));
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn empty_krl_and_empty_list_revoke_nothing() {
        let f = Fixture::new();
        let key = f.key("user", "ed25519");
        f.key("ca", "ed25519");
        let cert = f.cert("ca", "user", "cert", "id", 1);
        f.ok(&["-k", "-f", "krl"]);
        for list in [
            load(&f.path("krl")),
            RevocationList::empty(),
            RevocationList::parse(b"").expect("empty text"),
        ] {
            assert!(list.is_empty());
            assert_eq!(list.len(), 0);
            assert!(!list.is_key_revoked(&key));
            assert!(!list.is_certificate_revoked(&cert));
        }
    }

    // --- Text key lists (no oracle: ssh-keygen -Q reads KRLs only). ---

    #[test]
    fn text_list_revokes_listed_keys_their_certificates_and_listed_cas() {
        let f = Fixture::new();
        f.key("ca", "ed25519");
        f.key("ca2", "rsa");
        let listed = f.key("listed", "ecdsa");
        let ok = f.key("ok", "ed25519");
        f.key("via_cert", "ed25519");
        let via_cert_cert = f.cert("ca", "via_cert", "vc", "id", 3);
        let text = format!(
            "# revoked after the laptop theft\n\n   {}\r\n\t# indented comment\n{}{}",
            f.pub_line("listed").trim_end(),
            f.pub_line("ca2"),
            std::fs::read_to_string(f.path("vc-cert.pub")).expect("read cert"),
        );
        std::fs::write(f.path("revoked_keys"), text).expect("write list");
        let list = load(&f.path("revoked_keys"));
        assert_eq!(list.len(), 3);
        assert!(list.is_key_revoked(&listed));
        assert!(!list.is_key_revoked(&ok));
        // A certificate line revokes its key, whatever certificate carries it.
        assert!(list.is_key_revoked(&f.public("via_cert")));
        assert!(list.is_certificate_revoked(&via_cert_cert));
        assert!(list.is_certificate_revoked(&f.cert("ca", "via_cert", "vc2", "other", 9)));
        assert!(list.is_certificate_revoked(&f.cert("ca", "listed", "c1", "id", 1)));
        assert!(!list.is_certificate_revoked(&f.cert("ca", "ok", "c2", "id", 1)));
        assert!(list.is_certificate_revoked(&f.cert("ca2", "ok", "c3", "id", 1)));
    }

    #[test]
    fn refuses_bad_key_line_with_its_line_number() {
        let err = RevocationList::parse(b"# ok\n\nssh-ed25519 AAAAnotbase64!!! x\n").unwrap_err();
        assert!(
            matches!(err, RevocationError::BadKeyLine { line: 3, .. }),
            "{err:?}"
        );
        let err = RevocationList::parse(b"no-such-type AAAAC3NzaC1lZDI1NTE5 x\n").unwrap_err();
        assert!(
            matches!(err, RevocationError::BadKeyLine { line: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn refuses_binary_file_without_krl_magic() {
        let err = RevocationList::parse(b"# x\n\xff\xfe\x00\x01").unwrap_err();
        assert!(
            matches!(err, RevocationError::NotText { line: 2 }),
            "{err:?}"
        );
        // A KRL whose magic is damaged is not silently read as an empty key list.
        let mut bytes = krl_with(&[]);
        bytes[0] = b's';
        assert!(RevocationList::parse(&bytes).is_err());
    }

    #[test]
    fn refuses_missing_file() {
        let f = Fixture::new();
        let err = RevocationList::load(&f.path("absent")).unwrap_err();
        assert!(matches!(err, RevocationError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("absent"), "{err}");
    }

    // --- Hand-built KRLs: each refusal path by name. ---

    fn ca_blob(f: &Fixture) -> Vec<u8> {
        f.key("ca", "ed25519").encode_vec().expect("encode")
    }

    #[test]
    fn bitmap_bits_revoke_offset_plus_index() {
        let f = Fixture::new();
        let ca = ca_blob(&f);
        f.key("user", "ed25519");
        // 0x00 sign byte, then 0b1_0000_1011: bits 0, 1, 3 and 8.
        let list = RevocationList::parse(&krl_with(&[cert_section(
            &ca,
            &[bitmap(100, &[0x00, 0x01, 0x0b])],
        )]))
        .expect("parse");
        assert_eq!(list.len(), 3); // ranges 100-101, 103, 108
        for serial in [99, 100, 101, 102, 103, 104, 107, 108, 109] {
            let cert = f.cert("ca", "user", &format!("c{serial}"), "id", serial);
            assert_eq!(
                list.is_certificate_revoked(&cert),
                [100, 101, 103, 108].contains(&serial),
                "serial {serial}"
            );
        }
        // An empty bitmap revokes nothing and is valid.
        let list = RevocationList::parse(&krl_with(&[cert_section(&ca, &[bitmap(5, &[])])]))
            .expect("parse");
        assert!(list.is_empty());
    }

    #[test]
    fn sections_for_the_same_ca_are_merged() {
        let f = Fixture::new();
        let ca = ca_blob(&f);
        f.key("user", "ed25519");
        let list = RevocationList::parse(&krl_with(&[
            cert_section(&ca, &[serial_list(&[5, 6])]),
            cert_section(&ca, &[serial_list(&[7, 9])]),
        ]))
        .expect("parse");
        assert_eq!(list.len(), 2); // 5-7 and 9
        for serial in [5, 7, 9] {
            assert!(list.is_certificate_revoked(&f.cert(
                "ca",
                "user",
                &format!("c{serial}"),
                "id",
                serial
            )));
        }
        assert!(!list.is_certificate_revoked(&f.cert("ca", "user", "c8", "id", 8)));
    }

    #[test]
    fn ignores_signature_section_and_noncritical_extensions() {
        let f = Fixture::new();
        let ca = ca_blob(&f);
        let mut ext_sub = vec![CERT_EXTENSION];
        ext_sub.extend(string(&extension_body("cert-bloom-serial", false)));
        let mut signature = section(SECTION_SIGNATURE, &ca);
        signature.extend(string(b"not checked"));
        let bytes = krl_with(&[
            section(
                SECTION_EXTENSION,
                &extension_body("bloom-explicit-key", false),
            ),
            cert_section(&ca, &[ext_sub, serial_list(&[1])]),
            signature.clone(),
            signature,
        ]);
        assert_eq!(RevocationList::parse(&bytes).expect("parse").len(), 1);
    }

    #[test]
    fn refuses_critical_extension() {
        let bytes = krl_with(&[section(
            SECTION_EXTENSION,
            &extension_body("future@example.com", true),
        )]);
        assert!(
            matches!(krl_fault(&bytes), KrlFault::CriticalExtension(name) if name == "future@example.com")
        );
        let mut sub = vec![CERT_EXTENSION];
        sub.extend(string(&extension_body("cert-future", true)));
        assert!(matches!(
            krl_fault(&krl_with(&[cert_section(b"", &[sub])])),
            KrlFault::CriticalExtension(_)
        ));
    }

    #[test]
    fn refuses_section_after_signature() {
        let f = Fixture::new();
        let mut signature = section(SECTION_SIGNATURE, &ca_blob(&f));
        signature.extend(string(b"sig"));
        let bytes = krl_with(&[signature, section(SECTION_EXPLICIT_KEY, &[])]);
        assert!(matches!(krl_fault(&bytes), KrlFault::SectionAfterSignature));
    }

    #[test]
    fn refuses_unknown_section() {
        let bytes = krl_with(&[section(6, b"")]);
        assert!(matches!(krl_fault(&bytes), KrlFault::UnknownSection(6)));
        let err = RevocationList::parse(&bytes).unwrap_err();
        assert!(matches!(err, RevocationError::BadKrl { offset, .. } if offset == header().len()));
    }

    #[test]
    fn refuses_unknown_cert_subsection() {
        let bytes = krl_with(&[cert_section(b"", &[section(0x24, b"")])]);
        assert!(matches!(
            krl_fault(&bytes),
            KrlFault::UnknownCertSection(0x24)
        ));
    }

    #[test]
    fn refuses_unsupported_format_version() {
        let mut bytes = krl_with(&[]);
        bytes[11] = 2;
        assert!(matches!(krl_fault(&bytes), KrlFault::UnsupportedVersion(2)));
    }

    #[test]
    fn refuses_trailing_data() {
        // After a fixed-size subsection.
        let mut range = 1u64.to_be_bytes().to_vec();
        range.extend(2u64.to_be_bytes());
        range.push(0);
        let bytes = krl_with(&[cert_section(b"", &[section(CERT_SERIAL_RANGE, &range)])]);
        assert!(matches!(krl_fault(&bytes), KrlFault::TrailingData(_)));
        // Inside a list: a partial serial.
        let bytes = krl_with(&[cert_section(
            b"",
            &[section(CERT_SERIAL_LIST, &[0, 0, 0, 0, 0, 0, 0, 1, 0])],
        )]);
        assert!(matches!(krl_fault(&bytes), KrlFault::Truncated(_)));
        // After the last section: a lone byte is a section type with no body.
        let mut bytes = krl_with(&[]);
        bytes.push(SECTION_EXPLICIT_KEY);
        assert!(matches!(krl_fault(&bytes), KrlFault::Truncated(_)));
    }

    #[test]
    fn refuses_serial_zero() {
        assert!(matches!(
            krl_fault(&krl_with(&[cert_section(b"", &[serial_list(&[0])])])),
            KrlFault::SerialZero
        ));
        assert!(matches!(
            krl_fault(&krl_with(&[cert_section(b"", &[bitmap(0, &[1])])])),
            KrlFault::SerialZero
        ));
    }

    #[test]
    fn refuses_inverted_serial_range() {
        let mut range = 9u64.to_be_bytes().to_vec();
        range.extend(3u64.to_be_bytes());
        let bytes = krl_with(&[cert_section(b"", &[section(CERT_SERIAL_RANGE, &range)])]);
        assert!(matches!(
            krl_fault(&bytes),
            KrlFault::SerialRangeInverted { lo: 9, hi: 3 }
        ));
    }

    #[test]
    fn refuses_negative_bitmap() {
        let bytes = krl_with(&[cert_section(b"", &[bitmap(1, &[0x80])])]);
        assert!(matches!(krl_fault(&bytes), KrlFault::BitmapNegative));
    }

    #[test]
    fn refuses_oversized_bitmap() {
        let mut big = vec![0u8; MAX_BITMAP_BYTES + 1];
        big[1] = 1;
        assert!(RevocationList::parse(&krl_with(&[cert_section(b"", &[bitmap(1, &big)])])).is_ok());
        big[0] = 1;
        assert!(matches!(
            krl_fault(&krl_with(&[cert_section(b"", &[bitmap(1, &big)])])),
            KrlFault::BitmapTooLarge
        ));
    }

    #[test]
    fn refuses_wrapping_bitmap() {
        // Bit 1 from u64::MAX is serial 2^64.
        let bytes = krl_with(&[cert_section(b"", &[bitmap(u64::MAX, &[0x02])])]);
        assert!(matches!(krl_fault(&bytes), KrlFault::BitmapWraps));
        let bytes = krl_with(&[cert_section(b"", &[bitmap(u64::MAX, &[0x01])])]);
        assert_eq!(RevocationList::parse(&bytes).expect("last serial").len(), 1);
    }

    #[test]
    fn refuses_bad_hash_length() {
        let bytes = krl_with(&[section(SECTION_FINGERPRINT_SHA1, &string(&[0u8; 32]))]);
        assert!(matches!(
            krl_fault(&bytes),
            KrlFault::BadHashLength {
                expected: 20,
                found: 32,
                ..
            }
        ));
        let bytes = krl_with(&[section(SECTION_FINGERPRINT_SHA256, &string(&[0u8; 20]))]);
        assert!(matches!(
            krl_fault(&bytes),
            KrlFault::BadHashLength {
                expected: 32,
                found: 20,
                ..
            }
        ));
    }

    #[test]
    fn refuses_nul_in_key_id() {
        let bytes = krl_with(&[cert_section(
            b"",
            &[section(CERT_KEY_ID, &string(b"alice\0bob"))],
        )]);
        assert!(matches!(
            krl_fault(&bytes),
            KrlFault::NulInString("revoked key ID")
        ));
    }

    #[test]
    fn refuses_bad_ca_key() {
        let bytes = krl_with(&[cert_section(
            b"\0\0\0\x0bssh-ed25519\0\0\0\x03abc",
            &[serial_list(&[1])],
        )]);
        assert!(matches!(krl_fault(&bytes), KrlFault::BadCaKey(_)));
    }

    #[test]
    fn truncated_real_krl_is_an_error_unless_cut_between_sections() {
        let f = Fixture::new();
        f.key("ca", "ed25519");
        f.key("user", "rsa");
        let mut spec: Vec<String> = [1, 3, 5, 100]
            .iter()
            .map(|s| format!("serial: {s}"))
            .collect();
        spec.extend([
            "serial: 10-20".into(),
            "id: alice".into(),
            format!("key: {}", f.pub_line("user")),
        ]);
        spec.push(format!("sha1: {}", f.pub_line("ca")));
        let bytes = std::fs::read(f.krl("krl", Some("ca.pub"), &spec)).expect("read krl");
        assert!(RevocationList::parse(&bytes).is_ok());
        // A KRL has no end marker: cut exactly between sections it is a shorter valid KRL
        // (for sshd too). Cut anywhere else it must be refused.
        let boundaries = section_ends(&bytes);
        assert_eq!(boundaries.len(), 4, "header, certificates, keys, SHA1");
        for len in 1..bytes.len() {
            let parsed = RevocationList::parse(&bytes[..len]);
            assert_eq!(
                parsed.is_ok(),
                boundaries.contains(&len),
                "prefix of {len} bytes: {parsed:?}"
            );
        }
    }

    /// Offsets where the KRL header and each top-level section end.
    fn section_ends(bytes: &[u8]) -> Vec<usize> {
        let mut r = Wire::new(bytes, 0);
        r.take(KRL_MAGIC.len() + 4 + 24, "header").expect("header");
        r.string("reserved")
            .and_then(|_| r.string("comment"))
            .expect("header");
        let mut ends = vec![r.offset()];
        while !r.is_empty() {
            r.u8("type")
                .and_then(|_| r.sub("section"))
                .expect("section");
            ends.push(r.offset());
        }
        ends
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        // xorshift64: deterministic, so a failure reproduces.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let f = Fixture::new();
        let ca = ca_blob(&f);
        let real = krl_with(&[
            cert_section(
                &ca,
                &[
                    serial_list(&[1, 2]),
                    bitmap(50, &[0x0f]),
                    section(CERT_KEY_ID, &string(b"id")),
                ],
            ),
            cert_section(b"", &[section(CERT_KEY_ID, &string(b"x"))]),
            section(SECTION_EXPLICIT_KEY, &string(&ca)),
            section(SECTION_FINGERPRINT_SHA256, &string(&[7u8; 32])),
        ]);
        assert!(RevocationList::parse(&real).is_ok());
        for _ in 0..2000 {
            let len = (next() % 200) as usize;
            let mut random: Vec<u8> = KRL_MAGIC.to_vec();
            random.extend((0..len).map(|_| next() as u8));
            assert!(RevocationList::parse(&random).is_err(), "{random:?}");
            let mut mutated = real.clone();
            for _ in 0..1 + next() % 4 {
                let i = KRL_MAGIC.len() + (next() as usize) % (mutated.len() - KRL_MAGIC.len());
                mutated[i] = next() as u8;
            }
            let _ = RevocationList::parse(&mutated);
        }
    }

    #[test]
    fn error_messages_name_the_problem() {
        let message = |bytes: &[u8]| RevocationList::parse(bytes).unwrap_err().to_string();
        let at = header().len();
        assert_eq!(
            message(&krl_with(&[section(9, b"")])),
            format!("malformed OpenSSH KRL at byte {at}: unknown section type 9")
        );
        assert_eq!(
            message(&header()[..15]),
            "malformed OpenSSH KRL at byte 12: truncated: KRL version is cut off"
        );
        let mut range = 9u64.to_be_bytes().to_vec();
        range.extend(3u64.to_be_bytes());
        assert!(
            message(&krl_with(&[cert_section(
                b"",
                &[section(CERT_SERIAL_RANGE, &range)]
            )]))
            .ends_with("serial range 9-3 starts after it ends")
        );
        assert!(message(b"\nssh-ed25519 AAAA\n").starts_with("line 2: not an OpenSSH public key"));
        assert!(message(b"\xff").starts_with("line 1 is not text"));
    }
}
