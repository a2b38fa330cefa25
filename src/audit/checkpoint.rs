//! Signed checkpoints of a node's hash chain (DESIGN.md §11, docs/AUDIT.md
//! "Signed checkpoints"): the node's Ed25519 key signs `(seq, hash)` of its
//! chain in the text format transparency logs use (C2SP tlog-checkpoint in
//! a C2SP signed note), so any tool that reads those can check one:
//!
//! ```text
//! portvakt/node-a
//! 1042
//! 3q2+7w...=            (base64 of the 32-byte hash of row seq 1042)
//! time 2026-12-02T10:00:00Z
//!
//! — portvakt/node-a AAAAAB3...
//! ```
//!
//! `seq` is the chain's length (it numbers rows gaplessly from 1), as a
//! tree size is a log's.

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use russh::keys::PrivateKey;
use russh::keys::ssh_key::PublicKey;
use russh::keys::ssh_key::public::{Ed25519PublicKey, KeyData};

/// The signed-note signature type byte of Ed25519 keys.
const ED25519_TYPE: u8 = 0x01;

/// The origin line of `node`'s checkpoints.
pub fn origin(node: &str) -> String {
    format!("portvakt/{node}")
}

/// The signed-note key name of `node`'s key: its origin, with the
/// characters a key name may not hold (white space, `+`) as `_`.
pub fn key_name(node: &str) -> String {
    origin(node)
        .chars()
        .map(|c| {
            if c.is_whitespace() || c == '+' {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// The 4-byte key id: the first bytes of SHA-256(name || "\n" || 0x01 ||
/// public key).
fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut m = Vec::with_capacity(name.len() + 34);
    m.extend_from_slice(name.as_bytes());
    m.push(b'\n');
    m.push(ED25519_TYPE);
    m.extend_from_slice(public);
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &m);
    let mut id = [0u8; 4];
    id.copy_from_slice(&d.as_ref()[..4]);
    id
}

/// A node's signing key.
pub struct Signer {
    pair: Ed25519KeyPair,
    public: [u8; 32],
    /// The public key in OpenSSH format (`ssh-ed25519 AAAA...`).
    openssh: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("public", &self.openssh)
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(key: &PrivateKey) -> Result<Signer, String> {
        let ed = key
            .key_data()
            .ed25519()
            .ok_or_else(|| format!("a {} key cannot sign checkpoints", key.algorithm()))?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&ed.private.to_bytes())
            .map_err(|e| format!("bad ed25519 key: {e}"))?;
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| "bad ed25519 public key".to_string())?;
        if public != ed.public.0 {
            return Err("the key file's public half does not match its private half".into());
        }
        let openssh = PublicKey::from(KeyData::Ed25519(Ed25519PublicKey(public)))
            .to_openssh()
            .map_err(|e| e.to_string())?;
        Ok(Signer {
            pair,
            public,
            openssh,
        })
    }

    /// `ssh-ed25519 AAAA...`
    pub fn public_openssh(&self) -> &str {
        &self.openssh
    }

    /// Sign `node`'s chain at `seq`, whose row hash is `hash` (hex), with
    /// extension lines (each without a newline).
    pub fn sign(&self, node: &str, seq: i64, hash: &str, extensions: &[String]) -> Checkpoint {
        let mut text = format!("{}\n{seq}\n{}\n", origin(node), hex_to_b64(hash));
        for e in extensions {
            text.push_str(e);
            text.push('\n');
        }
        let name = key_name(node);
        let mut sig = key_id(&name, &self.public).to_vec();
        sig.extend_from_slice(self.pair.sign(text.as_bytes()).as_ref());
        let signature = B64.encode(&sig);
        let note = format!("{text}\n\u{2014} {name} {signature}\n");
        Checkpoint {
            node: node.to_string(),
            seq,
            hash: hash.to_string(),
            note,
            signature,
            key: self.openssh.clone(),
        }
    }
}

/// One signed checkpoint, as stored in its `audit.checkpoint` event and
/// logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub node: String,
    pub seq: i64,
    /// Hex, as the chain stores hashes.
    pub hash: String,
    /// The whole signed note.
    pub note: String,
    /// base64(key id || Ed25519 signature), as on the note's signature line.
    pub signature: String,
    /// The signer's public key, OpenSSH format.
    pub key: String,
}

fn hex_to_b64(hex: &str) -> String {
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    B64.encode(bytes)
}

fn b64_to_hex(b64: &str) -> Option<String> {
    let bytes = B64.decode(b64).ok()?;
    (bytes.len() == 32).then(|| bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// An Ed25519 public key a checkpoint may be signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    pub public: [u8; 32],
    /// As given (OpenSSH format), for messages.
    pub openssh: String,
}

impl VerifyingKey {
    /// From an OpenSSH public key line (`ssh-ed25519 AAAA... comment`).
    pub fn parse(line: &str) -> Result<VerifyingKey, String> {
        let key = PublicKey::from_openssh(line.trim()).map_err(|e| e.to_string())?;
        let Some(ed) = key.key_data().ed25519() else {
            return Err(format!(
                "a {} key: checkpoints are signed with ed25519 keys",
                key.algorithm()
            ));
        };
        Ok(VerifyingKey {
            public: ed.0,
            openssh: PublicKey::from(key.key_data().clone())
                .to_openssh()
                .map_err(|e| e.to_string())?,
        })
    }
}

/// What a checkpoint's note says, once its signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub seq: i64,
    /// Hex.
    pub hash: String,
    pub extensions: Vec<String>,
    /// Which of the keys given signed it.
    pub key: usize,
}

impl Verified {
    /// The value of the extension line `name value...`, if any.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find_map(|e| e.strip_prefix(name)?.strip_prefix(' '))
    }
}

/// Check `note` as a checkpoint of `node`'s chain signed by one of `keys`.
/// The error says what is wrong, for the verify report.
pub fn verify(note: &str, node: &str, keys: &[VerifyingKey]) -> Result<Verified, String> {
    let Some((text, sigs)) = note.rsplit_once("\n\n") else {
        return Err("not a signed note (no blank line before the signatures)".into());
    };
    let text = format!("{text}\n");
    let mut lines = text.lines();
    let want = origin(node);
    let got_origin = lines.next().unwrap_or_default();
    if got_origin != want {
        return Err(format!(
            "its origin is {got_origin:?}, not {want:?}: a checkpoint of another chain"
        ));
    }
    let seq: i64 = lines
        .next()
        .and_then(|l| l.parse().ok())
        .filter(|s| *s >= 0)
        .ok_or("its second line is not a sequence number")?;
    let hash = lines
        .next()
        .and_then(b64_to_hex)
        .ok_or("its third line is not a base64 SHA-256 hash")?;
    let extensions: Vec<String> = lines.map(str::to_string).collect();
    let name = key_name(node);
    let mut signed_by_other = false;
    for line in sigs.lines() {
        let Some(rest) = line.strip_prefix("\u{2014} ") else {
            return Err(format!("malformed signature line {line:?}"));
        };
        let Some((sig_name, sig)) = rest.split_once(' ') else {
            return Err(format!("malformed signature line {line:?}"));
        };
        if sig_name != name {
            continue;
        }
        let Ok(sig) = B64.decode(sig) else {
            return Err("a signature that is not base64".into());
        };
        if sig.len() != 68 {
            return Err("a signature of the wrong length".into());
        }
        for (i, k) in keys.iter().enumerate() {
            if sig[..4] != key_id(&name, &k.public) {
                continue;
            }
            let public = signature::UnparsedPublicKey::new(&signature::ED25519, &k.public);
            if public.verify(text.as_bytes(), &sig[4..]).is_ok() {
                return Ok(Verified {
                    seq,
                    hash,
                    extensions,
                    key: i,
                });
            }
            return Err(format!(
                "its signature does not verify with key {}",
                k.openssh
            ));
        }
        signed_by_other = true;
    }
    if signed_by_other {
        Err("it is signed by a key that is not a verification key of this node".into())
    } else {
        Err(format!("it carries no signature of {name}"))
    }
}

/// Public key files (`audit verify --key`, `[console] audit_keys`): one
/// OpenSSH Ed25519 public key per line, blank lines and `#` comments
/// skipped. Files that hold no key at all are an error.
pub fn read_key_files(files: &[std::path::PathBuf]) -> Result<Vec<VerifyingKey>, String> {
    let mut keys = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            keys.push(
                VerifyingKey::parse(line).map_err(|e| format!("{}:{}: {e}", f.display(), n + 1))?,
            );
        }
    }
    if keys.is_empty() && !files.is_empty() {
        return Err("the key files hold no key".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::new(
            KeypairData::Ed25519(Ed25519Keypair::from_seed(&[seed; 32])),
            "",
        )
        .unwrap()
    }

    const HASH: &str = "96a624e84551227b2743f3586317e0c1c0ab168457b95f36731ba406b1b3ce97";

    #[test]
    fn a_signed_checkpoint_verifies_and_says_what_it_signed() {
        let signer = Signer::new(&key(7)).unwrap();
        let cp = signer.sign("node-a", 42, HASH, &["time 2026-12-02T10:00:00Z".into()]);
        assert!(cp.note.starts_with(
            "portvakt/node-a\n42\nlqYk6EVRInsnQ/NYYxfgwcCrFoRXuV82cxukBrGzzpc=\ntime 2026-12-02T10:00:00Z\n\n\u{2014} portvakt/node-a "
        ), "{}", cp.note);
        let k = VerifyingKey::parse(signer.public_openssh()).unwrap();
        let v = verify(&cp.note, "node-a", &[k]).unwrap();
        assert_eq!((v.seq, v.hash.as_str()), (42, HASH));
        assert_eq!(v.extension("time"), Some("2026-12-02T10:00:00Z"));
    }

    #[test]
    fn edits_other_chains_and_other_keys_are_refused() {
        let signer = Signer::new(&key(7)).unwrap();
        let k = VerifyingKey::parse(signer.public_openssh()).unwrap();
        let other = VerifyingKey::parse(Signer::new(&key(8)).unwrap().public_openssh()).unwrap();
        let cp = signer.sign("node-a", 42, HASH, &[]);
        let edited = cp.note.replacen("\n42\n", "\n43\n", 1);
        assert!(verify(&edited, "node-a", std::slice::from_ref(&k)).is_err());
        let e = verify(&cp.note, "node-b", std::slice::from_ref(&k)).unwrap_err();
        assert!(e.contains("another chain"), "{e}");
        let e = verify(&cp.note, "node-a", &[other]).unwrap_err();
        assert!(e.contains("not a verification key"), "{e}");
        let unsigned = cp.note.split("\n\n").next().unwrap().to_string() + "\n\n";
        assert!(verify(&unsigned, "node-a", &[k]).is_err());
    }

    /// The key id as C2SP signed-note defines it for Ed25519, and a key
    /// name without the characters names may not hold.
    #[test]
    fn key_names_and_ids_follow_signed_note() {
        assert_eq!(key_name("db 1 (cli)"), "portvakt/db_1_(cli)");
        assert_eq!(key_name("a+b"), "portvakt/a_b");
        let public = [1u8; 32];
        let mut m = b"portvakt/a\n\x01".to_vec();
        m.extend_from_slice(&public);
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &m);
        assert_eq!(key_id("portvakt/a", &public), d.as_ref()[..4]);
    }
}
