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
    let list =
        RevocationList::parse(&krl_with(&[cert_section(&ca, &[bitmap(5, &[])])])).expect("parse");
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
