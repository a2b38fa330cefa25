//! Arbitrary bytes as an OpenSSH certificate: binary (`Certificate::from_bytes`)
//! and text (`Certificate::from_openssh` on the lossy string). Whatever
//! parses goes through `auth::certificate::check` for several users, source
//! addresses and times, against the trusted CAs of keys/ (the seed
//! certificates are signed by them) and against "whatever CA signed it", so
//! that mutated certificates reach the checks after the trust anchor too.
//! An accepted certificate must satisfy every rule of the check.
#![no_main]

mod common;

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use portvakt::auth::certificate::{CertPolicy, check};
use portvakt::revocation::RevocationList;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::{Certificate, HashAlg};

fn exercise(cert: &Certificate) {
    let revoked = RevocationList::empty();
    let own_ca = cert.signature_key().fingerprint(HashAlg::Sha256);
    let mut with_own = common::trusted_cas().to_vec();
    with_own.push(own_ca);
    let users: Vec<&str> = cert
        .valid_principals()
        .iter()
        .take(2)
        .map(String::as_str)
        .chain(["alice"])
        .collect();
    let sources: [IpAddr; 3] = [
        "127.0.0.1".parse().unwrap(),
        "::ffff:10.1.2.3".parse().unwrap(),
        "2001:db8::1".parse().unwrap(),
    ];
    let times: Vec<SystemTime> = [
        1_750_000_000,
        cert.valid_after(),
        cert.valid_before().saturating_sub(1),
        cert.valid_before(),
    ]
    .into_iter()
    .filter_map(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
    .collect();

    // Every user at every time; the source address rotates (it only matters
    // to a source-address option), which keeps signature checks few.
    let mut i = 0;
    for cas in [common::trusted_cas(), &with_own[..]] {
        for user in &users {
            for now in &times {
                {
                    let source = sources[i % sources.len()];
                    i += 1;
                    let policy = CertPolicy {
                        trusted_cas: cas,
                        revoked: &revoked,
                    };
                    let Ok(login) = check(cert, user, source, *now, policy) else {
                        continue;
                    };
                    assert_eq!(cert.cert_type(), CertType::User);
                    assert!(cas.contains(&own_ca));
                    assert!(cert.verify_signature().is_ok(), "accepted a bad signature");
                    assert!(cert.valid_principals().iter().any(|p| p == user));
                    let now_s = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
                    assert!(cert.valid_after() <= now_s && now_s < cert.valid_before());
                    assert!(
                        cert.critical_options()
                            .keys()
                            .all(|k| k == "source-address"),
                        "accepted critical options {:?}",
                        cert.critical_options()
                    );
                    common::assert_login_matches(&login, cert);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(cert) = Certificate::from_bytes(data) {
        exercise(&cert);
    }
    if let Ok(cert) = Certificate::from_openssh(&String::from_utf8_lossy(data)) {
        exercise(&cert);
    }
});
