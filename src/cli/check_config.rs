//! `portvakt check-config`

use std::path::Path;

use super::Outcome;
use crate::config::Config;

pub fn run(path: &Path) -> Outcome {
    match Config::load(path) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                println!("{}:{}: warning: {}", w.file.display(), w.line, w.message);
            }
            println!(
                "{}: OK ({} targets, {} users, {} trusted CA keys)",
                path.display(),
                cfg.policy.targets().len(),
                cfg.users.len(),
                cfg.auth.trusted_cas.len()
            );
            Outcome::Ok
        }
        Err(errors) => {
            for e in &errors.0 {
                println!("{e}");
            }
            Outcome::Usage(format!("{}: {} problem(s)", path.display(), errors.0.len()))
        }
    }
}
