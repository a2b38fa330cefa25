//! The text shown on `ssh user@bastion`: who you are, until when, where you
//! may go and how to get there. There is no shell.

use std::fmt::Write;
use std::net::SocketAddr;

use crate::auth::Identity;
use crate::clock::rfc3339;
use crate::config::Config;
use crate::policy::{Destination, Target};

/// `host_ca`: the recording host CA's public key line, when the config has
/// recorded targets.
pub fn render(
    id: &Identity,
    cfg: &Config,
    local: SocketAddr,
    pty: bool,
    host_ca: Option<&str>,
) -> String {
    let mut t = String::new();
    let subject = id.subject(cfg);
    let groups: Vec<&str> = subject.groups().collect();
    let _ = writeln!(
        t,
        "portvakt: this bastion has no shell; it only forwards to allowed targets."
    );
    who(&mut t, id, &groups);
    let bastion = bastion(id, cfg, local);
    let mine: Vec<_> = cfg.policy.targets_for(&subject).collect();
    if mine.is_empty() {
        let _ = writeln!(t, "No target is allowed for you; ask the bastion's admins.");
    } else {
        targets(&mut t, &mine);
        how_to_connect(&mut t, &mine, &bastion);
        recorded(&mut t, &mine, cfg, host_ca);
    }
    if pty { t.replace('\n', "\r\n") } else { t }
}

/// "You are alice (login: ...; groups: ...)." and until when.
fn who(t: &mut String, id: &Identity, groups: &[&str]) {
    let _ = write!(t, "You are {} (login: {}", id.user(), id.method());
    if !groups.is_empty() {
        let _ = write!(t, "; groups: {}", groups.join(", "));
    }
    let _ = writeln!(t, ").");
    match id.expires_at() {
        Some(at) => {
            let what = match id.method() {
                crate::auth::AuthMethod::Certificate => "Your certificate",
                _ => "Your login grant",
            };
            let _ = writeln!(t, "{what} is valid until {}.", rfc3339(at));
        }
        None => {
            let _ = writeln!(t, "Your login has no expiry of its own.");
        }
    }
}

/// The `ssh` command that reaches this bastion as this user, for the
/// requests commands (`ssh -p 2222 alice@bastion.example.com`).
pub fn ssh_command(id: &Identity, cfg: &Config, local: SocketAddr) -> String {
    let (host, port) = match cfg.server.public_name.as_deref() {
        Some(name) => match name.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && p.parse::<u16>().is_ok() => {
                (h.to_string(), p.parse().unwrap_or(22))
            }
            _ => (name.to_string(), 22),
        },
        None if local.ip().is_unspecified() => ("BASTION".to_string(), local.port()),
        None => (host_of(local), local.port()),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match port {
        22 => format!("ssh {}@{host}", id.user()),
        p => format!("ssh -p {p} {}@{host}", id.user()),
    }
}

/// How the client reaches this bastion, for the `-J` line.
fn bastion(id: &Identity, cfg: &Config, local: SocketAddr) -> String {
    match (local.ip().is_unspecified(), local.port()) {
        _ if cfg.server.public_name.is_some() => {
            format!(
                "{}@{}",
                id.user(),
                cfg.server.public_name.as_deref().unwrap_or_default()
            )
        }
        (true, p) => format!("{}@BASTION:{p}", id.user()),
        (false, 22) => format!("{}@{}", id.user(), host_of(local)),
        (false, p) => format!("{}@{}:{p}", id.user(), host_of(local)),
    }
}

/// One line per target the user may use.
fn targets(t: &mut String, mine: &[&Target]) {
    let _ = writeln!(t, "Targets you may use:");
    for target in mine {
        match &target.destination {
            Destination::Host { port, .. } => {
                let _ = write!(t, "  {:<20} port {port}", target.name);
            }
            Destination::Cidr { net, ports } => {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                let _ = write!(
                    t,
                    "  {:<20} any address in {net}, ports {}",
                    target.name,
                    ports.join(", ")
                );
            }
        }
        match target.request_rule() {
            Some(r) => {
                let _ = writeln!(
                    t,
                    "  (on request, up to {}: `request {} DURATION \"REASON\"`)",
                    humantime::format_duration(r.max_request),
                    target.name
                );
            }
            None => t.push('\n'),
        }
    }
}

/// For users with recorded targets: that they are recorded, and the one
/// known_hosts line their `ssh` needs to trust them.
fn recorded(t: &mut String, mine: &[&Target], cfg: &Config, host_ca: Option<&str>) {
    let names: Vec<&str> = mine
        .iter()
        .filter(|t| t.record.is_some())
        .map(|t| t.name.as_str())
        .collect();
    if names.is_empty() {
        return;
    }
    let _ = writeln!(
        t,
        "Sessions on {} are recorded (terminal output, commands, file transfers).",
        names.join(", ")
    );
    if let Some(ca) = host_ca {
        let _ = writeln!(t, "Trust them with this line in ~/.ssh/known_hosts:");
        let _ = writeln!(t, "  {}", crate::recording::known_hosts_line(cfg, ca));
    }
}

/// The `ssh -J` line and the `~/.ssh/config` block, for the first named target.
fn how_to_connect(t: &mut String, mine: &[&Target], bastion: &str) {
    let (example, port) = mine
        .iter()
        .find_map(|t| match t.destination {
            Destination::Host { port, .. } => Some((t.name.as_str(), port)),
            Destination::Cidr { .. } => None,
        })
        .unwrap_or(("TARGET", 22));
    // The client asks for name:port; a target on another port than 22
    // needs it said.
    let p = if port == 22 {
        String::new()
    } else {
        format!("-p {port} ")
    };
    let _ = writeln!(t, "Connect with:");
    let _ = writeln!(t, "  ssh -J {bastion} {p}USER@{example}");
    let _ = writeln!(t, "or put this in ~/.ssh/config and run `ssh {example}`:");
    let _ = writeln!(t, "  Host {example}");
    let _ = writeln!(t, "    ProxyJump {bastion}");
    if port != 22 {
        let _ = writeln!(t, "    Port {port}");
    }
}

fn host_of(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
        SocketAddr::V4(a) => a.ip().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;

    /// The `ssh -J` line names the target's port when it is not 22: the
    /// client asks the bastion for `name:port`, and 22 is what it assumes.
    #[test]
    fn the_jump_line_names_a_port_other_than_22() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        let cfg = Config::parse(
            &path,
            r#"
[[users]]
name = "alice"
keys = []
mfa = "none"
[[targets]]
name = "demo"
host = "127.0.0.1"
port = 2200
allow_users = ["alice"]
"#,
        )
        .unwrap();
        let id = Identity::for_test("alice", &[]);
        let text = render(&id, &cfg, "127.0.0.1:2222".parse().unwrap(), false, None);
        assert!(
            text.contains("ssh -J alice@127.0.0.1:2222 -p 2200 USER@demo"),
            "{text}"
        );
        assert!(text.contains("    Port 2200"), "{text}");
    }
}
