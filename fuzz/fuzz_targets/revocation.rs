//! `RevocationList::parse` on arbitrary bytes (a KRL when it starts with the
//! KRL magic, else a text key list): Ok or Err, never a panic; a parsed list
//! then answers for a few real certificates and keys without panicking, and
//! an empty list revokes nothing.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portvakt::revocation::RevocationList;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Certificate, PublicKey};

/// alice (serial 7, CA ed25519) and bob (serial 8, source-address) from
/// make-corpus.sh, which the KRL seeds revoke in several ways.
fn certificates() -> &'static [Certificate] {
    static CERTS: OnceLock<Vec<Certificate>> = OnceLock::new();
    CERTS.get_or_init(|| {
        [
            include_str!("../keys/alice-cert.pub"),
            include_str!("../keys/bob-cert.pub"),
        ]
        .iter()
        .map(|s| Certificate::from_openssh(s.trim()).expect("keys/*-cert.pub"))
        .collect()
    })
}

fn keys() -> &'static [KeyData] {
    static KEYS: OnceLock<Vec<KeyData>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut keys: Vec<KeyData> = [
            include_str!("../keys/user-rsa.pub"),
            include_str!("../keys/ca-ed25519.pub"),
            include_str!("../keys/ca-ecdsa.pub"),
        ]
        .iter()
        .map(|s| {
            PublicKey::from_openssh(s.trim())
                .expect("keys/*.pub")
                .key_data()
                .clone()
        })
        .collect();
        // A certificate passed as a key is checked as a certificate.
        keys.push(KeyData::Certificate(Box::new(certificates()[0].clone())));
        keys
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(list) = RevocationList::parse(data) else {
        return;
    };
    let mut any = false;
    for cert in certificates() {
        any |= list.is_certificate_revoked(cert);
    }
    for key in keys() {
        any |= list.is_key_revoked(key);
    }
    if list.is_empty() {
        assert!(!any, "an empty list revoked something");
        assert_eq!(list.len(), 0);
    }
});
