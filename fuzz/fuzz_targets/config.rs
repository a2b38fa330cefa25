//! `Config::parse` on arbitrary text: returns Ok or Err, never panics, and an
//! accepted config holds what validation promises.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use portvakt::config::Config;
use portvakt::policy::{Destination, canonical_ip};

/// Relative paths in the text resolve into this folder, which does not exist.
const PATH: &str = "/nonexistent/fuzz.toml";

/// Names of files that never end or block when read; the fuzzer is not meant
/// to find those (an admin who names /dev/zero gets what they asked for).
const SPECIAL: &[&str] = &["/dev", "/proc", "/sys", "/run"];

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@+".contains(c))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if SPECIAL.iter().any(|s| text.contains(s)) {
        return;
    }
    let path = Path::new(PATH);
    match Config::parse(path, &text) {
        Err(errors) => {
            assert!(!errors.0.is_empty(), "Err without a problem");
            let lines = text.lines().count() + 1;
            for e in &errors.0 {
                assert_eq!(e.file, path);
                assert!(e.line <= lines, "line {} of {lines}: {e}", e.line);
                assert!(!e.message.is_empty());
            }
        }
        Ok(cfg) => {
            assert!(!cfg.server.listen.is_empty());
            let mut names = HashSet::new();
            for t in cfg.policy.targets() {
                assert!(valid_name(&t.name), "target name {:?}", t.name);
                assert!(canonical_ip(&t.name).is_none(), "target name {:?}", t.name);
                assert!(
                    t.name.parse::<std::net::IpAddr>().is_err(),
                    "target {:?}",
                    t.name
                );
                assert!(
                    names.insert(t.name.to_ascii_lowercase()),
                    "twice: {:?}",
                    t.name
                );
                assert!(!(t.allow_users.is_empty() && t.allow_groups.is_empty()));
                for n in t.allow_users.iter().chain(&t.allow_groups) {
                    assert!(valid_name(n), "allow list entry {n:?}");
                }
                match &t.destination {
                    Destination::Host { host, port } => {
                        assert!(!host.is_empty() && !host.contains(char::is_whitespace));
                        assert_ne!(*port, 0);
                    }
                    Destination::Cidr { net, ports } => {
                        assert_eq!(net.trunc(), *net, "host bits in {net}");
                        assert!(!ports.is_empty() && !ports.contains(&0));
                    }
                }
            }
            for (name, u) in &cfg.users {
                assert_eq!(name, &u.name);
                assert!(valid_name(name), "user name {name:?}");
                assert!(u.groups.iter().all(|g| valid_name(g)));
            }
            assert!(
                cfg.auth
                    .deny_users
                    .iter()
                    .any(|u| u.eq_ignore_ascii_case("root"))
            );
        }
    }
});
