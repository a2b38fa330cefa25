//! TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps, one step of clock skew).
//! Secrets are stored encrypted (AES-256-GCM, key in `mfa.secret_key_file`);
//! a code is accepted once only, also across nodes: accepting a step moves
//! the user's `last_step` forward in one atomic UPDATE.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;
use sqlx::Row;
use totp_rs::{Algorithm, Builder};

use crate::clock::now_micros;
use crate::store::Store;

/// Name shown in authenticator apps.
const ISSUER: &str = "portvakt";

#[derive(Debug, thiserror::Error)]
pub enum TotpError {
    #[error("TOTP key file {path}: {message}")]
    KeyFile { path: PathBuf, message: String },
    #[error("TOTP secret of {0} cannot be decrypted (wrong mfa.secret_key_file?)")]
    Decrypt(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The result of checking a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpCheck {
    Ok,
    Wrong,
    /// Right code, but its step was already used (or an older one).
    Replayed,
    NotEnrolled,
}

/// A TOTP secret (20 random bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn generate() -> Result<Self, TotpError> {
        let mut b = vec![0u8; 20];
        getrandom::fill(&mut b).map_err(|e| TotpError::Invalid(format!("no randomness: {e}")))?;
        Ok(Secret(b))
    }

    pub fn from_bytes(b: Vec<u8>) -> Self {
        Secret(b)
    }

    fn totp(&self, user: &str) -> Result<totp_rs::Totp, TotpError> {
        Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(6)
            .with_skew(1)
            .with_step_duration(30)
            .with_secret(self.0.clone())
            .with_issuer(Some(ISSUER))
            .with_account_name(user.replace(':', "_"))
            .build()
            .map_err(|e| TotpError::Invalid(e.to_string()))
    }

    pub fn base32(&self) -> String {
        totp_rs::Secret::from(self.0.clone()).to_base32()
    }

    /// `otpauth://totp/portvakt:alice?secret=...` for authenticator apps.
    pub fn uri(&self, user: &str) -> Result<String, TotpError> {
        self.totp(user)?
            .to_url()
            .map_err(|e| TotpError::Invalid(e.to_string()))
    }

    /// The step a code matches at `now`, if any (one step of skew).
    pub fn matching_step(&self, user: &str, code: &str, now: SystemTime) -> Option<u64> {
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        if code.len() != 6 || !code.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let t = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
        self.totp(user).ok()?.check(&code, t)
    }

    /// The code for `now` (tests, and the CLI's self-check).
    pub fn code(&self, user: &str, now: SystemTime) -> Result<String, TotpError> {
        let t = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(self.totp(user)?.generate(t).to_string())
    }
}

/// A QR code of `text` drawn with Unicode half blocks, for a terminal.
pub fn qr_text(text: &str) -> Result<String, TotpError> {
    let code = QrCode::new(text.as_bytes()).map_err(|e| TotpError::Invalid(e.to_string()))?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// TOTP secrets in the database.
#[derive(Clone)]
pub struct Totp {
    store: Store,
    key: Arc<LessSafeKey>,
}

impl std::fmt::Debug for Totp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Totp(..)")
    }
}

impl Totp {
    /// Open with the key in `key_file` (32 random bytes, hex), creating it
    /// (mode 0600) if missing. All nodes must share the same key file.
    pub fn open(store: Store, key_file: &Path) -> Result<Totp, TotpError> {
        let bytes = load_or_create_key(key_file)?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| TotpError::KeyFile {
            path: key_file.to_path_buf(),
            message: "not an AES-256 key".into(),
        })?;
        Ok(Totp {
            store,
            key: Arc::new(LessSafeKey::new(key)),
        })
    }

    fn seal(&self, user: &str, secret: &Secret) -> Result<String, TotpError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| TotpError::Invalid(e.to_string()))?;
        let mut data = secret.0.clone();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(user.as_bytes()),
                &mut data,
            )
            .map_err(|_| TotpError::Invalid("encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(STANDARD.encode(out))
    }

    fn open_secret(&self, user: &str, sealed: &str) -> Result<Secret, TotpError> {
        let raw = STANDARD
            .decode(sealed)
            .map_err(|_| TotpError::Decrypt(user.into()))?;
        if raw.len() < NONCE_LEN {
            return Err(TotpError::Decrypt(user.into()));
        }
        let (nonce, data) = raw.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| TotpError::Decrypt(user.into()))?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(user.as_bytes()), &mut data)
            .map_err(|_| TotpError::Decrypt(user.into()))?;
        Ok(Secret(plain.to_vec()))
    }

    async fn load(&self, user: &str) -> Result<Option<(Secret, i64)>, TotpError> {
        let row = sqlx::query("SELECT secret, last_step FROM totp_secrets WHERE user_name = $1")
            .bind(user)
            .fetch_optional(self.store.pool())
            .await?;
        match row {
            None => Ok(None),
            Some(r) => {
                let sealed: String = r.try_get("secret")?;
                let last: i64 = r.try_get("last_step")?;
                Ok(Some((self.open_secret(user, &sealed)?, last)))
            }
        }
    }

    pub async fn is_enrolled(&self, user: &str) -> Result<bool, TotpError> {
        Ok(
            sqlx::query("SELECT 1 FROM totp_secrets WHERE user_name = $1")
                .bind(user)
                .fetch_optional(self.store.pool())
                .await?
                .is_some(),
        )
    }

    /// Check a code and, if right, spend its step.
    pub async fn verify(
        &self,
        user: &str,
        code: &str,
        now: SystemTime,
    ) -> Result<TotpCheck, TotpError> {
        let Some((secret, _)) = self.load(user).await? else {
            return Ok(TotpCheck::NotEnrolled);
        };
        let Some(step) = secret.matching_step(user, code, now) else {
            return Ok(TotpCheck::Wrong);
        };
        self.spend(user, step).await
    }

    /// Move `last_step` forward to `step`; refused if it is not newer.
    async fn spend(&self, user: &str, step: u64) -> Result<TotpCheck, TotpError> {
        let step =
            i64::try_from(step).map_err(|_| TotpError::Invalid("step out of range".into()))?;
        let n = sqlx::query(
            "UPDATE totp_secrets SET last_step = $1 WHERE user_name = $2 AND last_step < $1",
        )
        .bind(step)
        .bind(user)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        Ok(if n == 1 {
            TotpCheck::Ok
        } else {
            TotpCheck::Replayed
        })
    }

    /// Store a new secret, confirmed by a first code (self-enrolment), or
    /// without one (`portvakt totp enroll`). Refuses to replace a secret.
    pub async fn enroll(
        &self,
        user: &str,
        secret: &Secret,
        first_code: Option<(&str, SystemTime)>,
    ) -> Result<TotpCheck, TotpError> {
        let step = match first_code {
            Some((code, now)) => match secret.matching_step(user, code, now) {
                Some(s) => i64::try_from(s).unwrap_or(0),
                None => return Ok(TotpCheck::Wrong),
            },
            None => 0,
        };
        let sealed = self.seal(user, secret)?;
        let n = sqlx::query(
            "INSERT INTO totp_secrets (user_name, secret, created_at, last_step) VALUES ($1, $2, $3, $4) ON CONFLICT (user_name) DO NOTHING",
        )
        .bind(user)
        .bind(sealed)
        .bind(now_micros())
        .bind(step)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        Ok(if n == 1 {
            TotpCheck::Ok
        } else {
            TotpCheck::Replayed
        })
    }

    /// Remove a user's secret; true if there was one.
    pub async fn reset(&self, user: &str) -> Result<bool, TotpError> {
        Ok(sqlx::query("DELETE FROM totp_secrets WHERE user_name = $1")
            .bind(user)
            .execute(self.store.pool())
            .await?
            .rows_affected()
            > 0)
    }
}

fn load_or_create_key(path: &Path) -> Result<Vec<u8>, TotpError> {
    let err = |message: String| TotpError::KeyFile {
        path: path.to_path_buf(),
        message,
    };
    match fs::read_to_string(path) {
        Ok(text) => {
            let mode = fs::metadata(path)
                .map_err(|e| err(e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(err(format!(
                    "mode {:o} lets others read it; chmod 600 it",
                    mode & 0o777
                )));
            }
            let text = text.trim();
            if text.len() != 64 {
                return Err(err("must hold 64 hex digits (32 bytes)".into()));
            }
            (0..32)
                .map(|i| u8::from_str_radix(&text[i * 2..i * 2 + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| err("must hold 64 hex digits (32 bytes)".into()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| err(e.to_string()))?;
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            match crate::secret_file::create(path, format!("{hex}\n").as_bytes()) {
                Ok(true) => Ok(key.to_vec()),
                // Another process created it first: use theirs.
                Ok(false) => load_or_create_key(path),
                Err(e) => Err(err(e.to_string())),
            }
        }
        Err(e) => Err(err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn codes_match_their_step_with_one_step_of_skew() {
        let s = Secret::from_bytes(b"12345678901234567890".to_vec());
        // RFC 6238 test vector (SHA-1): T = 59 s gives 94287082 (8 digits);
        // its 6-digit form is 287082.
        let t = UNIX_EPOCH + Duration::from_secs(59);
        assert_eq!(s.code("u", t).unwrap(), "287082");
        assert_eq!(s.matching_step("u", "287082", t), Some(1));
        assert_eq!(s.matching_step("u", "287 082", t), Some(1));
        // One step later still accepted (skew), two steps later not.
        assert_eq!(
            s.matching_step("u", "287082", t + Duration::from_secs(30)),
            Some(1)
        );
        assert_eq!(
            s.matching_step("u", "287082", t + Duration::from_secs(61)),
            None
        );
        for bad in ["", "28708", "2870821", "abcdef", "28708x"] {
            assert_eq!(s.matching_step("u", bad, t), None, "{bad:?}");
        }
    }

    #[test]
    fn uri_and_qr() {
        let s = Secret::from_bytes(b"12345678901234567890".to_vec());
        let uri = s.uri("alice").unwrap();
        assert!(uri.starts_with("otpauth://totp/portvakt:alice?"), "{uri}");
        assert!(uri.contains(&format!("secret={}", s.base32())), "{uri}");
        let qr = qr_text(&uri).unwrap();
        assert!(qr.lines().count() > 10);
    }

    #[tokio::test]
    async fn replay_and_encryption_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
        let totp = Totp::open(store.clone(), &dir.path().join("totp.key")).unwrap();
        let mode = fs::metadata(dir.path().join("totp.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let s = Secret::generate().unwrap();
        let now = SystemTime::now();
        assert_eq!(
            totp.verify("alice", "123456", now).await.unwrap(),
            TotpCheck::NotEnrolled
        );
        assert_eq!(
            totp.enroll("alice", &s, Some(("000000x", now)))
                .await
                .unwrap(),
            TotpCheck::Wrong
        );
        assert_eq!(totp.enroll("alice", &s, None).await.unwrap(), TotpCheck::Ok);
        assert_eq!(
            totp.enroll("alice", &s, None).await.unwrap(),
            TotpCheck::Replayed,
            "no silent replacement"
        );
        let code = s.code("alice", now).unwrap();
        assert_eq!(
            totp.verify("alice", &code, now).await.unwrap(),
            TotpCheck::Ok
        );
        assert_eq!(
            totp.verify("alice", &code, now).await.unwrap(),
            TotpCheck::Replayed
        );
        let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
        assert_eq!(
            totp.verify("alice", &wrong, now).await.unwrap(),
            TotpCheck::Wrong
        );
        // The stored secret is not the secret.
        let sealed: String = sqlx::query("SELECT secret FROM totp_secrets")
            .fetch_one(store.pool())
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert!(!sealed.contains(&s.base32()));
        // Another key cannot read it.
        let other = Totp::open(store.clone(), &dir.path().join("other.key")).unwrap();
        assert!(matches!(
            other.verify("alice", &code, now).await,
            Err(TotpError::Decrypt(_))
        ));
        assert!(totp.reset("alice").await.unwrap());
        assert!(!totp.is_enrolled("alice").await.unwrap());
    }
}
