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
mod tests;
