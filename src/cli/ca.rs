//! `portvakt ca show`: the lines engineers and target admins need for
//! recorded targets (DESIGN.md §10).

use std::path::Path;

use clap::Subcommand;
use serde::Serialize;

use super::{Outcome, print_json};
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// The @cert-authority line for engineers' known_hosts, and the
    /// TrustedUserCAKeys key for recorded targets' sshd.
    Show {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Serialize)]
struct Shown {
    host_ca: String,
    known_hosts_line: String,
    target_ca: String,
    sshd_config: Vec<String>,
}

/// Where targets are told to keep the target CA's public key.
const TARGET_CA_FILE: &str = "/etc/ssh/portvakt_target_ca.pub";

pub fn run(cmd: &CaCmd, cfg: &Config) -> Outcome {
    let CaCmd::Show { json } = cmd;
    let read = |key: &Path| -> Result<String, String> {
        let mut p = key.as_os_str().to_owned();
        p.push(".pub");
        let p = std::path::PathBuf::from(p);
        std::fs::read_to_string(&p)
            .map(|s| s.trim().to_string())
            .map_err(|e| {
                format!(
                    "{}: {e} (portvakt serve makes the recording CAs at its first start with a recorded target)",
                    p.display()
                )
            })
    };
    let (host_ca, target_ca) = match (
        read(&cfg.recording.host_ca_key),
        read(&cfg.recording.target_ca_key),
    ) {
        (Ok(h), Ok(t)) => (h, t),
        (Err(e), _) | (_, Err(e)) => return Outcome::Failed(e),
    };
    let shown = Shown {
        known_hosts_line: crate::recording::known_hosts_line(cfg, &host_ca),
        host_ca,
        sshd_config: vec![
            format!("TrustedUserCAKeys {TARGET_CA_FILE}"),
            "AuthorizedPrincipalsFile /etc/ssh/auth_principals/%u".to_string(),
        ],
        target_ca,
    };
    if *json {
        return print_json(&shown);
    }
    println!("# Engineers: this line in ~/.ssh/known_hosts (or /etc/ssh/ssh_known_hosts)");
    println!("{}", shown.known_hosts_line);
    println!();
    println!("# Recorded targets: the target CA's public key in {TARGET_CA_FILE}:");
    println!("{}", shown.target_ca);
    println!("# and in their sshd_config (each file under auth_principals/ lists the");
    println!("# logins that account may be entered as, one per line):");
    for l in &shown.sshd_config {
        println!("{l}");
    }
    Outcome::Ok
}
